//! Progress of long transfers on stderr: a line rewritten in place on a terminal, a plain
//! line every few seconds otherwise (CI logs), as Docker and Cargo do.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::bundle::human_bytes;

pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
    terminal: bool,
    printed: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            total,
            done: 0,
            started: now,
            last: now,
            // Not in place under the live step lines (steps.rs): a plain line then.
            terminal: std::io::stderr().is_terminal() && !crate::steps::live(),
            printed: false,
        }
    }

    pub fn set(&mut self, done: u64) {
        self.done = done;
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.print();
        }
    }

    fn print(&mut self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        let rate = human_bytes((self.done as f64 / secs) as u64);
        let amount = match self.total {
            Some(total) if total > 0 => format!(
                "{} / {} ({:.0}%)",
                human_bytes(self.done),
                human_bytes(total),
                self.done as f64 * 100.0 / total as f64
            ),
            _ => human_bytes(self.done),
        };
        let line = format!("{:>12} {amount}, {rate}/s", self.label);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            drop(err);
            crate::steps::say(&line);
        }
        self.printed = true;
    }

    /// Clears the in-place line on a terminal.
    pub fn done(self) {
        if self.terminal && self.printed {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
