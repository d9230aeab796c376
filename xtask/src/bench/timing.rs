//! Timing a command: wall time and peak memory of one run, and runs of ours and the
//! baseline in turns.

use std::fs::File;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use camino::Utf8Path;

use crate::lab::fs::tail;

/// One timed run of a command: wall time, and the peak RSS (VmHWM) of the process itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) secs: f64,
    pub(super) peak_rss: Option<u64>,
}

/// Runs `cmd` to completion with its output appended to `log`; fails (showing the log's
/// tail) when its exit code is not in `ok`.
pub(super) fn timed(cmd: xshell::Cmd<'_>, log: &Utf8Path, ok: &[i32]) -> anyhow::Result<Sample> {
    let shown = cmd.to_string();
    let mut command: Command = cmd.into();
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {log}"))?;
    writeln!(&out, "\n$ {shown}")?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let pid = child.id();
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let (status, secs) = std::thread::scope(|scope| {
        // VmHWM only grows, so the last reading before the exit is the peak (to the ms).
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(bytes) = vm_hwm(pid) {
                    peak.fetch_max(bytes, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let status = child.wait();
        let secs = started.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        (status, secs)
    });
    let status = status?;
    let code = status.code().unwrap_or(-1);
    if !ok.contains(&code) {
        bail!(
            "`{shown}` failed ({status}); the end of its log {log}:\n{}",
            tail(log, 30)
        );
    }
    let peak = peak.load(Ordering::Relaxed);
    Ok(Sample {
        secs,
        peak_rss: (peak > 0).then_some(peak),
    })
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
/// Runs `ours` and `baseline` `runs` times each, in turns.
pub(super) fn alternate(
    runs: usize,
    mut ours: impl FnMut() -> anyhow::Result<Sample>,
    mut baseline: impl FnMut() -> anyhow::Result<Sample>,
) -> anyhow::Result<(Vec<Sample>, Vec<Sample>)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for run in 0..runs {
        if run % 2 == 0 {
            a.push(ours()?);
            b.push(baseline()?);
        } else {
            b.push(baseline()?);
            a.push(ours()?);
        }
        eprintln!(
            "        run {}/{runs}: ours {:.2}s, baseline {:.2}s",
            run + 1,
            a[run].secs,
            b[run].secs
        );
    }
    Ok((a, b))
}

pub(super) fn series(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.secs).collect()
}

pub(super) fn peak_of(samples: &[Sample]) -> Option<u64> {
    samples.iter().filter_map(|s| s.peak_rss).max()
}
