//! The benchmark behind `cargo xtask bench`: export, import and rebuild timed side by side
//! with what they replace (bare `docker save` / `docker load`, and the v1.0 guide's manual
//! steps).
//!
//! Everything runs on two private engines of the lab (an export machine and an offline
//! target, each with its own data root on disk, socket, bridge and no iptables, as in the
//! integration tests; the target in a network namespace with only loopback, which it
//! proves before anything is measured), against the xtask binary that runs the bench:
//! `cargo xtask bench` measures `target/debug/xtask`, the binary users run. Workloads: a
//! synthetic image of several GB (`docker import` of a generated rootfs, half
//! incompressible, half text) and the application's own compose project on Debian
//! stand-ins of its base images. Ours and the baseline run in turns (ours first on even
//! runs, the baseline first on odd ones) so that page cache and background load fall on
//! both. The baseline commands are the ones
//! a user types, run through the lab's [`Engine::docker`].
//!
//! - `measure`: the order of the figures, and the quick commands (figure 7);
//! - `images`: the synthetic image (figures 1, 3, 5, 6 and the chart);
//! - `app`: the application stack (figures 0, 2, 4, 8);
//! - `carry`: from the app's bundle, a fleet of builders from one publish (figure 9) and
//!   the packed and delta bundles (figure 10);
//! - `timing`, `stats`, `render`, `machine`, `files`: the parts they use.

mod app;
mod carry;
mod files;
mod images;
mod machine;
mod measure;
mod render;
mod stats;
mod timing;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use camino::Utf8PathBuf;
use xshell::Shell;

use crate::bundle::human_bytes;
use crate::lab::{Engine, EngineOptions, OfflineProof, Site};
use machine::Machine;
use stats::Row;

/// Where the benchmark's engines live: apart from the tests' (`/tmp/xtd`, `xtd*`).
const BENCH_SITE: Site = Site {
    dir: "/tmp/xtb",
    prefix: "xtb",
    bridge_net: 215,
    pool_net: 216,
    label: "benchmark engine",
};

const MIB: u64 = 1 << 20;

/// `cache-import` of `bundle` into the target engine, as every import the bench times runs it
/// (the host's caches left alone).
fn import_into_target<'a>(b: &'a Bench, bundle: &camino::Utf8Path) -> xshell::Cmd<'a> {
    let (tsh, xtask) = (&b.tsh, &b.xtask);
    xshell::cmd!(
        tsh,
        "{xtask} cache-import --bundle {bundle} --no-host-caches"
    )
}

/// What to measure, from the command line.
pub struct Settings {
    /// The short CI run (only changes what the report says).
    pub quick: bool,
    /// Runs of each measurement.
    pub runs: usize,
    /// Size of the synthetic image, in bytes.
    pub size: u64,
    /// Measure the application stack too.
    pub with_app: bool,
    /// The figures to produce (and expect): all of them, or those `--figures` names.
    pub figures: Figures,
    /// Where to write the report (Markdown, and an SVG chart beside it); absolute.
    pub output: Option<Utf8PathBuf>,
}

/// Runs the benchmark, prints the table and writes the report. Exits 1 when a figure it
/// should have produced is missing (a workload failed), and, for the full run, when a
/// target is missed. The quick run (CI, a 200 MB image under the load of the test suite)
/// checks that every figure it can produce was produced; its targets are reported.
pub fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // busybox: the stand-in with which the target engine proves it is offline
    let mut tools = vec!["tar", "sha256sum", "busybox", "nsenter"];
    if settings.with_app {
        tools.extend(["debootstrap", "npm"]);
    }
    crate::lab::check_prerequisites(&tools)?;
    let xtask = Utf8PathBuf::try_from(std::env::current_exe()?)
        .context("the xtask binary's path is not UTF-8")?;
    eprintln!(
        "   Benchmark of {xtask} ({} build): {} synthetic image, {} run(s) each{}",
        profile(),
        human_bytes(settings.size),
        settings.runs,
        if settings.with_app { ", app stack" } else { "" }
    );
    let bench = Bench::start(xtask, repo_root()?, settings.runs)?;
    let report = measure::measure_all(&bench, settings.size, settings.with_app, &settings.figures);
    let machine = Machine::describe(&bench.export, &bench.work);
    drop(bench);
    let (mut report, machine) = (report?, machine?);
    let verdict = Verdict::of(&report.rows, &settings.figures.expected(settings.with_app));
    if !verdict.missing.is_empty() {
        report.notes.push(format!(
            "Missing figures (their workload failed; see the notes above and the log): {}.",
            verdict.missing.join(", ")
        ));
    }
    publish(&report, &machine, settings)?;
    eprintln!(
        "    Finished benchmark in {:.0}s: {} of {} targets met, {} figure(s) missing",
        started.elapsed().as_secs_f64(),
        verdict.met,
        verdict.met + verdict.missed,
        verdict.missing.len()
    );
    if !verdict.missing.is_empty() {
        eprintln!(
            "error: figures {} were not produced: a workload failed (see the notes)",
            verdict.missing.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    if verdict.missed > 0 {
        if settings.quick {
            eprintln!(
                "warning: {} target(s) missed in the quick run (small image, shared machine): \
                 the full `cargo xtask bench` is the one that decides",
                verdict.missed
            );
        } else {
            eprintln!("error: {} target(s) missed: see the table", verdict.missed);
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The figures (by number) each workload produces: the app stack's, the synthetic
/// image's, the quick commands'.
const APP_FIGURES: [&str; 6] = ["0", "2", "4", "8", "9", "10"];
const IMAGE_FIGURES: [&str; 4] = ["1", "3", "5", "6"];
const COMMAND_FIGURES: [&str; 1] = ["7"];

/// The figures a run produces: every one (the default), or those `--figures` named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    only: Option<Vec<&'static str>>,
}

impl Figures {
    /// `9,10`: figure numbers, each one the benchmark produces.
    pub fn parse(text: &str) -> Result<Figures, String> {
        let known = || {
            APP_FIGURES
                .iter()
                .chain(&IMAGE_FIGURES)
                .chain(&COMMAND_FIGURES)
        };
        let mut only: Vec<&'static str> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let figure = known().find(|k| **k == part).ok_or_else(|| {
                let mut all: Vec<&str> = known().copied().collect();
                all.sort_by_key(|n| n.parse::<u32>().unwrap_or(u32::MAX));
                format!("no figure `{part}`: the figures are {}", all.join(", "))
            })?;
            if !only.contains(figure) {
                only.push(figure);
            }
        }
        if only.is_empty() {
            return Err("name at least one figure, e.g. --figures 9,10".into());
        }
        Ok(Figures { only: Some(only) })
    }

    /// Whether the run produces figure `n`.
    pub fn wants(&self, n: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&n))
    }

    pub fn wants_any(&self, ns: &[&str]) -> bool {
        ns.iter().any(|n| self.wants(n))
    }

    /// Whether a figure of the application stack is asked for.
    pub fn needs_app(&self) -> bool {
        self.wants_any(&APP_FIGURES)
    }

    /// The figures that must be in the report: those asked for, of the workloads that run.
    fn expected(&self, with_app: bool) -> Vec<&'static str> {
        IMAGE_FIGURES
            .iter()
            .chain(&COMMAND_FIGURES)
            .chain(if with_app { &APP_FIGURES[..] } else { &[] })
            .copied()
            .filter(|n| self.wants(n))
            .collect()
    }
}

/// What a run's rows say: targets met and missed, and the figures that should be there and
/// are not.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    met: usize,
    missed: usize,
    missing: Vec<&'static str>,
}

impl Verdict {
    fn of(rows: &[Row], expected: &[&'static str]) -> Verdict {
        let mut missing: Vec<&'static str> = expected
            .iter()
            .filter(|n| {
                !rows
                    .iter()
                    .any(|r| r.figure.split_once(". ").map(|(num, _)| num) == Some(**n))
            })
            .copied()
            .collect();
        missing.sort_by_key(|n| n.parse::<u32>().unwrap_or(u32::MAX));
        Verdict {
            met: rows.iter().filter(|r| r.met == Some(true)).count(),
            missed: rows.iter().filter(|r| r.met == Some(false)).count(),
            missing,
        }
    }
}

/// Prints the table, and writes the Markdown report and its chart when asked to.
fn publish(report: &Report, machine: &Machine, settings: &Settings) -> anyhow::Result<()> {
    let svg = render::render_chart(&report.points);
    let chart = settings.output.as_ref().map(|file| {
        let stem = file.file_stem().unwrap_or("benchmarks");
        file.with_file_name(format!("{stem}-throughput.svg"))
    });
    let text = render::render_markdown(
        report,
        machine,
        settings.runs,
        settings.size,
        settings.quick,
        chart.as_ref().and_then(|c| c.file_name()),
    );
    println!("{}", render::render_table(&report.rows));
    println!("{}", render::render_points(&report.points));
    for line in &report.notes {
        println!("  - {line}");
    }
    if let Some(file) = &settings.output {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        }
        std::fs::write(file, text).with_context(|| format!("writing {file}"))?;
        eprintln!("      Wrote {file}");
        if let Some(chart) = &chart {
            std::fs::write(chart, &svg).with_context(|| format!("writing {chart}"))?;
            eprintln!("      Wrote {chart}");
        }
    }
    Ok(())
}

/// The two engines, the work folder and what every measurement needs. Dropping it stops
/// the engines and removes every file of the run.
struct Bench {
    /// The xtask binary measured (the one running).
    xtask: Utf8PathBuf,
    /// The repository, whose compose project is the app stack.
    repo: Utf8PathBuf,
    runs: usize,
    /// `/tmp/xtb/<pid>-work`: bundles, archives, project copies, the log.
    work: Utf8PathBuf,
    /// Every command's output, appended.
    log: Utf8PathBuf,
    /// The export machine, and a shell pointed at it.
    export: Engine,
    esh: Shell,
    /// The offline target, and a shell pointed at it.
    target: Engine,
    tsh: Shell,
    /// What the target engine showed when it proved it cannot reach out.
    offline_proof: OfflineProof,
}

/// Proves that `target` cannot reach out (with the busybox stand-in, removed again).
fn prove_offline(target: &Engine) -> anyhow::Result<OfflineProof> {
    use crate::lab::standins::{load_busybox, BUSYBOX};
    load_busybox(target)?;
    let proof = target
        .prove_offline(Some(BUSYBOX))
        .context("the target engine is not offline")?;
    let sh = Shell::new()?;
    target
        .docker(&sh, ["image", "rm", "--force", BUSYBOX])
        .quiet()
        .ignore_stdout()
        .run()?;
    Ok(proof)
}

impl Bench {
    fn start(xtask: Utf8PathBuf, repo: Utf8PathBuf, runs: usize) -> anyhow::Result<Bench> {
        // before this run makes anything under the site: it removes what killed runs left
        BENCH_SITE.clean_once();
        // on disk, as on a server (and as the report says)
        let on_disk = EngineOptions {
            containerd_store: true,
            data_in_memory: false,
            network_namespace: false,
            private_containerd: false,
            ..EngineOptions::default()
        };
        let export = Engine::start(&BENCH_SITE, "export", on_disk.clone())
            .context("starting the private engine `export`")?;
        // the offline server: its own network namespace, and proof that nothing leaves it
        let offline = EngineOptions {
            network_namespace: true,
            ..on_disk
        };
        let target = Engine::start(&BENCH_SITE, "target", offline)
            .context("starting the private engine `target`")?;
        let proof = prove_offline(&target)?;
        let work = BENCH_SITE.process_dir("work");
        std::fs::create_dir_all(&work).with_context(|| format!("creating {work}"))?;
        let log = work.join("bench.log");
        eprintln!("        log of every command: {log}");
        Ok(Bench {
            offline_proof: proof,
            xtask,
            repo,
            runs,
            log,
            esh: export.shell()?,
            export,
            tsh: target.shell()?,
            target,
            work,
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        eprintln!("   Cleaning up {}", self.work);
        if let Err(err) = crate::lab::remove_tree(&self.work) {
            eprintln!("warning: {err:#}");
        }
        // the engines stop and remove themselves as the fields drop
    }
}

struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    /// Throughput against bundle size, one point per synthetic image size.
    points: Vec<Point>,
}

/// One synthetic image size: bytes carried, and throughput (bytes/s) of each command.
#[derive(Debug, Clone)]
struct Point {
    bytes: u64,
    export: f64,
    save: f64,
    import: f64,
    load: f64,
    verify: f64,
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The repository whose application the benchmark measures: the one cargo runs this xtask
/// from (`cargo xtask bench`). Not a path fixed at compile time: the bundle's bin/xtask
/// runs on machines where the build machine's path means nothing.
pub fn repo_root() -> anyhow::Result<Utf8PathBuf> {
    crate::tool::sources_root().context(
        "the benchmark measures this repository's application: run it as `cargo xtask \
         bench` in the repository (this xtask was not started by cargo)",
    )
}

/// `3G`, `500M`, `64K`, `1000` (bytes; binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let value: f64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 3G or 500M"))?;
    let scale = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches(['B', 'I'])
    {
        "" => 1u64,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        other => return Err(format!("unknown unit `{other}` in `{text}` (use K, M, G)")),
    };
    Ok((value * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(figure: &str, ours: f64, target: stats::Target) -> Row {
        Row::new(
            figure,
            stats::Stat::of(&[ours], stats::Unit::Secs),
            None,
            target,
        )
    }

    #[test]
    fn a_missing_figure_and_a_missed_target_are_counted() {
        use stats::Target::{AtMost, None as Shown};
        let all_figures = Figures::default();
        let all: Vec<Row> = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
            .iter()
            .map(|n| row(&format!("{n}. thing"), 1.0, AtMost(2.0)))
            .collect();
        assert_eq!(
            Verdict::of(&all, &all_figures.expected(true)),
            Verdict {
                met: 11,
                missed: 0,
                missing: vec![]
            }
        );
        // the app stack failed: its rows are gone, and the verdict says which
        let app = ["0.", "2.", "4.", "8.", "9.", "10."];
        let no_app: Vec<Row> = all
            .iter()
            .filter(|r| !app.iter().any(|p| r.figure.starts_with(p)))
            .cloned()
            .collect();
        assert_eq!(
            Verdict::of(&no_app, &all_figures.expected(true)).missing,
            ["0", "2", "4", "8", "9", "10"]
        );
        assert_eq!(
            Verdict::of(&no_app, &all_figures.expected(false)).missing,
            Vec::<&str>::new()
        );
        let mut slow = no_app.clone();
        slow.push(row("7. slow", 3.0, AtMost(2.0)));
        slow.push(row("7. shown", 3.0, Shown));
        assert_eq!(
            Verdict::of(&slow, &all_figures.expected(false)),
            Verdict {
                met: 5,
                missed: 1,
                missing: vec![]
            }
        );
        // "10." is not figure 1
        let ten = vec![row("10. other", 1.0, Shown)];
        assert!(Verdict::of(&ten, &all_figures.expected(false))
            .missing
            .contains(&"1"));
        // only figure 10 made, of 9 and 10 asked for
        let some = Figures::parse("9,10").unwrap();
        assert_eq!(Verdict::of(&ten, &some.expected(true)).missing, ["9"]);
    }

    #[test]
    fn figures_asked_for() {
        let some = Figures::parse("10, 9,10").unwrap();
        assert_eq!(some.expected(true), ["9", "10"]);
        assert!(some.needs_app() && some.wants("9") && !some.wants("1") && !some.wants("2"));
        assert!(!some.wants_any(&["2", "4", "8"]));
        let images = Figures::parse("3").unwrap();
        assert!(!images.needs_app());
        assert_eq!(images.expected(false), ["3"]);
        let all = Figures::default();
        assert!(all.needs_app() && all.wants("7"));
        assert_eq!(all.expected(false), ["1", "3", "5", "6", "7"]);
        let err = Figures::parse("11").unwrap_err();
        assert!(
            err.contains("no figure `11`: the figures are 0, 1, 2"),
            "{err}"
        );
        assert!(Figures::parse(",").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("3G"), Ok(3 << 30));
        assert_eq!(parse_size("200M"), Ok(200 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3X").is_err());
    }
}
