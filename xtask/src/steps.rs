//! Steps that run at once (the export's wheelhouse, npm cache, builds, tool), each shown
//! the way users expect of concurrent work: on a terminal, one live line per running step
//! (`indicatif`'s `MultiProgress`, the Rust ecosystem's standard for that), with the
//! command's other lines printed above them; otherwise (CI logs, tests reading stderr) the
//! same Cargo-style status lines as ever, one per event, nothing rewritten in place.
//!
//! Also the steps' shared stop flag: when one fails, the others stop at their next step
//! boundary rather than start more work whose result is thrown away.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The live lines of the steps now running, while [`Steps`] is alive on a terminal.
static LIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Prints a line of the command's output on stderr: above the live step lines while
/// there are some, else as `eprintln!` does.
pub fn say(line: &str) {
    let live = LIVE.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match live {
        Some(multi) => {
            if multi.println(line).is_err() {
                eprintln!("{line}");
            }
        }
        None => eprintln!("{line}"),
    }
}

/// `eprintln!` that keeps clear of the live step lines ([`say`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::steps::say(&format!($($arg)*))
    };
}

/// Whether live step lines are on screen: a child process must then not write to the
/// terminal itself (its own progress display would be drawn over them).
pub fn live() -> bool {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
}

/// The steps of one command that run at once.
pub struct Steps {
    multi: Option<MultiProgress>,
    stopped: AtomicBool,
}

impl Steps {
    /// Live lines when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Steps {
        Steps::with_terminal(std::io::stderr().is_terminal())
    }

    fn with_terminal(terminal: bool) -> Steps {
        let multi = terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        *LIVE.lock().unwrap_or_else(PoisonError::into_inner) = multi.clone();
        Steps {
            multi,
            stopped: AtomicBool::new(false),
        }
    }

    /// Starts a step that prints its own plain lines: only its live line, on a terminal.
    pub fn live(&self, status: &str, label: &str) -> Step {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>12.cyan.bold} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(status.to_string());
            bar.set_message(label.to_string());
            // Added once it says what it is: its first drawing is already right.
            let bar = multi.add(bar);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Step {
            bar,
            multi: self.multi.clone(),
            started: Instant::now(),
        }
    }

    /// Tells every step to stop at its next boundary (one has failed).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

impl Default for Steps {
    fn default() -> Self {
        Steps::new()
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
        *LIVE.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// A running step's line.
pub struct Step {
    bar: Option<ProgressBar>,
    multi: Option<MultiProgress>,
    started: Instant,
}

impl Step {
    /// Seconds since the step started.
    pub fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Ends the step: its live line goes, `line` (if any) is printed.
    pub fn finish(self, line: Option<String>) {
        if let (Some(bar), Some(multi)) = (&self.bar, &self.multi) {
            bar.finish_and_clear();
            multi.remove(bar);
        }
        if let Some(line) = line {
            say(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test: `LIVE` is shared by the whole process.
    #[test]
    fn live_lines_on_a_terminal_only_one_per_running_step() {
        let steps = Steps::with_terminal(false);
        assert!(!live());
        let step = steps.live("Building", "api");
        assert!(step.bar.is_none());
        assert!(!steps.stopped());
        steps.stop();
        assert!(steps.stopped());
        step.finish(Some("       Built api".to_string()));
        drop(steps);

        let steps = Steps::with_terminal(true);
        assert!(live());
        let a = steps.live("Wheelhouse", "backend");
        let b = steps.live("npm cache", "frontend");
        assert!(a.bar.is_some() && b.bar.is_some());
        assert_eq!(
            steps.multi.as_ref().map(|m| m.is_hidden()),
            Some(!std::io::stderr().is_terminal())
        );
        a.finish(None);
        b.finish(None);
        drop(steps);
        assert!(!live());
    }
}
