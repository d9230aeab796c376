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

/// One timed run of a command: wall time, the peak RSS (VmHWM) of the process itself, and
/// the peak of the sum of the RSS of it and every process below it (npm, pip, the docker
/// CLI; not dockerd, which is no child), sampled every 10 ms.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) secs: f64,
    pub(super) peak_rss: Option<u64>,
    pub(super) tree_peak_rss: Option<u64>,
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
    let tree_peak = AtomicU64::new(0);
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
        // The tree's RSS is a sum at one moment: sampled, so a peak shorter than the
        // period can be missed (the report says so).
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                tree_peak.fetch_max(tree_rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
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
    let tree_peak = tree_peak.load(Ordering::Relaxed).max(peak);
    Ok(Sample {
        secs,
        peak_rss: (peak > 0).then_some(peak),
        tree_peak_rss: (tree_peak > 0).then_some(tree_peak),
    })
}

/// The RSS of `root` and every process below it, now, in bytes.
fn tree_rss(root: u32) -> u64 {
    tree(root).iter().map(|(_, rss)| rss).sum()
}

/// `root` and every process below it, each with its RSS in bytes; empty when `root` is gone.
fn tree(root: u32) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // (pid, parent pid, rss pages) of every process
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((ppid, rss)) = parse_stat(&stat) {
            procs.push((pid, ppid, rss));
        }
    }
    let page = 4096;
    if !procs.iter().any(|(pid, _, _)| *pid == root) {
        return Vec::new();
    }
    let mut inside = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid, _) in &procs {
            if inside.contains(ppid) && !inside.contains(pid) {
                inside.push(*pid);
                grew = true;
            }
        }
    }
    procs
        .iter()
        .filter(|(pid, _, _)| inside.contains(pid))
        .map(|(pid, _, rss)| (*pid, rss * page))
        .collect()
}

/// The parent pid and the RSS (in pages) of a `/proc/PID/stat` line. The command name, in
/// parentheses, may hold spaces and parentheses itself: the fields start after the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // after the name: state (3), ppid (4), …, rss (24); numbered from 1 in proc(5)
    let ppid = fields.get(1)?.parse().ok()?;
    let rss = fields.get(21)?.parse().ok()?;
    Some((ppid, rss))
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
/// Runs `ours` and `baseline` `runs` times each, in turns (ours first, then the baseline
/// first, and so on). With more than one run, each runs once untimed before: the first
/// command of a series pays for what the phase before left to settle (its writeback, the
/// engine's clean-up of removed images), 1.3-1.5× its later runs in the runs of
/// 2026-12-05, and that would always be ours.
pub(super) fn alternate(
    runs: usize,
    mut ours: impl FnMut() -> anyhow::Result<Sample>,
    mut baseline: impl FnMut() -> anyhow::Result<Sample>,
) -> anyhow::Result<(Vec<Sample>, Vec<Sample>)> {
    if runs > 1 {
        let (warm_ours, warm_base) = (ours()?, baseline()?);
        eprintln!(
            "        warm-up (not counted): ours {:.2}s, baseline {:.2}s",
            warm_ours.secs, warm_base.secs
        );
    }
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

/// The peak memory of runs of one command: of the process itself, and of its process tree.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Peaks {
    pub(super) own: Option<u64>,
    pub(super) tree: Option<u64>,
}

pub(super) fn peaks_of(samples: &[Sample]) -> Peaks {
    Peaks {
        own: samples.iter().filter_map(|s| s.peak_rss).max(),
        tree: samples.iter().filter_map(|s| s.tree_peak_rss).max(),
    }
}

/// Figure 6's rows for one command: its own peak RSS (the target: under 100 MiB) and, for
/// information, its whole process tree's.
pub(super) fn peak_rows(what: &str, peaks: Peaks) -> Vec<super::stats::Row> {
    use super::stats::{Row, Stat, Target, Unit};
    let mut rows = Vec::new();
    if let Some(own) = peaks.own {
        rows.push(Row::new(
            &format!("6. Peak RSS of {what}"),
            Stat::of(&[own as f64], Unit::Bytes),
            None,
            Target::AtMost(100.0 * super::MIB as f64),
        ));
    }
    if let Some(tree) = peaks.tree {
        rows.push(Row::new(
            &format!("6. Peak RSS of {what}, whole process tree (npm, pip, docker CLI; sampled every 10 ms)"),
            Stat::of(&[tree as f64], Unit::Bytes),
            None,
            Target::None,
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names() {
        let line = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    500 1000000 321 18446744073709551615";
        assert_eq!(parse_stat(line), Some((17, 321)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_tree_of_this_process_holds_its_child() {
        let me = std::process::id();
        let mut child = Command::new("sleep").arg("5").spawn().expect("sleep");
        std::thread::sleep(Duration::from_millis(50));
        let now = tree(me);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(now.first().map(|(pid, _)| *pid).or(Some(me)), Some(me));
        let child_rss = now.iter().find(|(pid, _)| *pid == child.id()).map(|p| p.1);
        assert!(child_rss.is_some_and(|rss| rss > 0), "{now:?}");
        assert!(tree_rss(me) > child_rss.unwrap_or(0));
        assert_eq!(tree(child.id()), Vec::new(), "a gone process has no tree");
    }
}
