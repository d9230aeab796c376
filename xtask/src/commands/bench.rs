//! `cargo xtask bench`: export, import and rebuild timed side by side with what they
//! replace (bare `docker save` / `docker load`, and the seed guide's manual steps).
//!
//! Everything runs on two private engines started here (an export machine and an offline
//! target, each with its own data root on disk, socket, bridge and no iptables, as in the
//! integration tests), against the xtask binary that runs the bench: `cargo xtask bench`
//! measures `target/debug/xtask`, the binary users run. Workloads: a synthetic image of
//! several GB (`docker import` of a generated rootfs, half incompressible, half text) and
//! the application's own compose project on Debian stand-ins of its base images. Ours and
//! the baseline run in turns (ours first on even runs, the baseline first on odd ones) so
//! that page cache and background load fall on both. The baseline commands are spelled
//! here as a user types them, which is why this module, too, says `docker`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write as _};
use std::os::unix::fs::symlink;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::bundle::human_bytes;
use crate::project::ProjectArgs;

/// Time export, import and rebuild against `docker save`/`docker load` and the seed guide
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    cargo xtask bench                   # 3 GB image + app stack, 3 runs; writes docs/benchmarks.md\n  \
    cargo xtask bench --quick           # CI: 200 MB image, 1 run, no app stack, writes nothing\n  \
    cargo xtask bench --size 1G --runs 5 --no-app --output /tmp/bench.md\n\n\
    Needs root, dockerd, buildx and compose v2 (scripts/install-test-deps.sh); the app stack \
    also needs debootstrap and the package registries. It measures the xtask binary that runs \
    it (`cargo xtask` runs target/debug/xtask), on private engines under /tmp/xtb that it \
    removes when done.")]
pub struct Args {
    /// Short run for CI: a 200 MB synthetic image, one run of each, no app stack
    #[arg(long)]
    pub quick: bool,
    /// Runs of each measurement (default 3, 1 with --quick)
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
    /// Size of the synthetic image, e.g. 3G or 500M (default 3G, 200M with --quick)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Leave out the application stack (whole export, offline rebuild)
    #[arg(long)]
    pub no_app: bool,
    /// Include the application stack even with --quick
    #[arg(long, conflicts_with = "no_app")]
    pub app: bool,
    /// Write the results here (default docs/benchmarks.md; with --quick, nothing)
    #[arg(long, value_name = "FILE")]
    pub output: Option<Utf8PathBuf>,
}

const BIG_IMAGE: &str = "bench/big:latest";
const APP_BUILT: [&str; 2] = ["llm-chat-backend:latest", "llm-chat-frontend:latest"];
/// The seed guide's names of the build-cache images.
const SEED_CACHE_IMAGES: [&str; 2] = [
    "llm-chat-backend-cache:latest",
    "llm-chat-frontend-cache:latest",
];
const MIB: u64 = 1 << 20;

impl Args {
    pub fn run(self, sh: &Shell, _project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        let runs = self.runs.unwrap_or(if self.quick { 1 } else { 3 }).max(1);
        let size = self
            .size
            .unwrap_or(if self.quick { 200 * MIB } else { 3 << 30 });
        let with_app = self.app || !(self.quick || self.no_app);
        let repo = repo_root();
        let output = match (&self.output, self.quick) {
            (Some(file), _) => Some(crate::project::absolute(
                &crate::project::current_dir(sh)?,
                file,
            )),
            (None, false) => Some(repo.join("docs/benchmarks.md")),
            (None, true) => None,
        };
        check_prerequisites(sh, with_app)?;
        let xtask = Utf8PathBuf::try_from(std::env::current_exe()?)
            .context("the xtask binary's path is not UTF-8")?;
        eprintln!(
            "   Benchmark of {xtask} ({} build): {} synthetic image, {runs} run(s) each{}",
            profile(),
            human_bytes(size),
            if with_app { ", app stack" } else { "" }
        );

        let mut lab = Lab::open()?;
        let result = measure_all(&mut lab, &xtask, &repo, runs, size, with_app);
        let machine = lab.describe_machine();
        lab.close();
        let report = result?;
        let machine = machine?;
        let svg = render_chart(&report.points);
        let chart = output.as_ref().map(|file| {
            let stem = file.file_stem().unwrap_or("benchmarks");
            file.with_file_name(format!("{stem}-throughput.svg"))
        });
        let text = render_markdown(
            &report,
            &machine,
            runs,
            size,
            self.quick,
            chart.as_ref().and_then(|c| c.file_name()),
        );
        println!("{}", render_table(&report.rows));
        println!("{}", render_points(&report.points));
        for line in &report.notes {
            println!("  - {line}");
        }
        if let Some(file) = &output {
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
        let missed = report.rows.iter().filter(|r| r.met == Some(false)).count();
        eprintln!(
            "    Finished benchmark in {:.0}s: {} of {} targets met",
            started.elapsed().as_secs_f64(),
            report.rows.iter().filter(|r| r.met == Some(true)).count(),
            report.rows.iter().filter(|r| r.met.is_some()).count()
        );
        if missed > 0 {
            eprintln!("        {missed} target(s) missed: see the table (a benchmark reports, it does not fail)");
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

fn repo_root() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Utf8Path::new("."))
        .to_owned()
}

fn check_prerequisites(sh: &Shell, with_app: bool) -> anyhow::Result<()> {
    let uid = cmd!(sh, "id -u").quiet().read()?;
    if uid.trim() != "0" {
        bail!("the benchmark starts private Docker engines, which needs root (uid is {uid})");
    }
    let mut tools = vec!["dockerd", "docker", "ip", "tar", "sha256sum"];
    if with_app {
        tools.extend(["debootstrap", "busybox", "npm"]);
    }
    for tool in tools {
        if which(tool).is_none() {
            bail!("`{tool}` not found: run scripts/install-test-deps.sh");
        }
    }
    for plugin in ["buildx", "compose"] {
        cmd!(sh, "docker {plugin} version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .with_context(|| {
                format!("docker {plugin} is missing: run scripts/install-test-deps.sh")
            })?;
    }
    Ok(())
}

fn which(tool: &str) -> Option<Utf8PathBuf> {
    let path = std::env::var("PATH").ok()?;
    path.split(':')
        .map(|dir| Utf8Path::new(dir).join(tool))
        .find(|candidate| candidate.is_file())
}

/// `3G`, `500M`, `64K`, `1000` (bytes; binary units).
fn parse_size(text: &str) -> Result<u64, String> {
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

// ---------------------------------------------------------------------------------------
// Measurements

/// One timed run of a command: wall time, and the peak RSS (VmHWM) of the process itself.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    peak_rss: Option<u64>,
}

/// Runs `cmd` to completion with its output appended to `log`; fails (showing the log's
/// tail) when its exit code is not in `ok`.
fn timed(cmd: xshell::Cmd<'_>, log: &Utf8Path, ok: &[i32]) -> anyhow::Result<Sample> {
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

fn tail(path: &Utf8Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `ours` and `baseline` `runs` times each, in turns.
fn alternate(
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

fn series(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.secs).collect()
}

fn peak_of(samples: &[Sample]) -> Option<u64> {
    samples.iter().filter_map(|s| s.peak_rss).max()
}

// ---------------------------------------------------------------------------------------
// Statistics and the table (no I/O)

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    Secs,
    Millis,
    /// Bytes per second.
    Rate,
    Bytes,
}

/// Median and range of one side of a figure, in its unit.
#[derive(Debug, Clone, PartialEq)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    unit: Unit,
}

impl Stat {
    fn of(values: &[f64], unit: Unit) -> Stat {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stat {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            unit,
        }
    }

    fn render(&self) -> String {
        let one = |v: f64| format_value(v, self.unit);
        if self.min == self.max {
            one(self.median)
        } else {
            format!("{} [{}–{}]", one(self.median), one(self.min), one(self.max))
        }
    }
}

fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Secs if v < 10.0 => format!("{v:.2} s"),
        Unit::Secs => format!("{v:.1} s"),
        Unit::Millis => format!("{:.1} ms", v * 1000.0),
        Unit::Rate => format!("{:.2} GB/s", v / 1e9),
        Unit::Bytes => human_bytes(v as u64),
    }
}

/// What a figure must reach.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// ours / baseline at most this.
    RatioAtMost(f64),
    /// baseline / ours at least this ("N× faster").
    SpeedupAtLeast(f64),
    /// ours' median at most this (in the unit's base: seconds, bytes).
    AtMost(f64),
    /// ours' median at least this.
    AtLeast(f64),
    /// Shown for information.
    None,
}

#[derive(Debug, Clone)]
struct Row {
    figure: String,
    ours: Stat,
    baseline: Option<(String, Stat)>,
    ratio: String,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(figure: &str, ours: Stat, baseline: Option<(&str, Stat)>, target: Target) -> Row {
        let base = baseline.as_ref().map(|(_, s)| s.median);
        let ratio_of = |ours: f64, base: f64| ours / base;
        let (ratio, target_text, met) = match (target, base) {
            (Target::RatioAtMost(max), Some(b)) => {
                let r = ratio_of(ours.median, b);
                (format!("{r:.2}×"), format!("≤ {max:.2}×"), Some(r <= max))
            }
            (Target::SpeedupAtLeast(min), Some(b)) => {
                let r = ratio_of(b, ours.median);
                (
                    format!("{r:.1}× faster"),
                    format!("≥ {min:.0}× faster"),
                    Some(r >= min),
                )
            }
            (Target::AtMost(max), b) => (
                plain_ratio(ours.median, b, ours.unit),
                format!("< {}", format_value(max, ours.unit)),
                Some(ours.median < max),
            ),
            (Target::AtLeast(min), b) => (
                plain_ratio(ours.median, b, ours.unit),
                format!("≥ {}", format_value(min, ours.unit)),
                Some(ours.median >= min),
            ),
            (_, b) => (plain_ratio(ours.median, b, ours.unit), "—".into(), None),
        };
        Row {
            figure: figure.to_string(),
            ours,
            baseline: baseline.map(|(name, s)| (name.to_string(), s)),
            ratio,
            target: target_text,
            met,
        }
    }
}

/// ours / baseline, or "N× faster" for rates, for rows whose target is absolute.
fn plain_ratio(ours: f64, base: Option<f64>, unit: Unit) -> String {
    match base {
        None => "—".into(),
        Some(b) if unit == Unit::Rate => format!("{:.1}× faster", ours / b),
        Some(b) => format!("{:.2}×", ours / b),
    }
}

fn render_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| Figure | Ours: median [min–max] | Baseline: median [min–max] | Ratio | Target | Met? |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in rows {
        let baseline = match &row.baseline {
            Some((name, stat)) => format!("{} ({name})", stat.render()),
            None => "—".into(),
        };
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {baseline} | {} | {} | {met} |",
            row.figure,
            row.ours.render(),
            row.ratio,
            row.target
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// The benchmark itself

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

fn measure_all(
    lab: &mut Lab,
    xtask: &Utf8Path,
    repo: &Utf8Path,
    runs: usize,
    size: u64,
    with_app: bool,
) -> anyhow::Result<Report> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let work = lab.work.clone();
    let log = work.join("bench.log");
    eprintln!("        log of every command: {log}");
    let export = lab.start_engine("export")?;
    let target = lab.start_engine("target")?;
    notes.push(format!(
        "Load average when the benchmark started: {} (other work on the machine shows here).",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    ));
    // The app first: it needs the network (wheelhouse, npm cache) and fails earliest.
    if with_app {
        let app = measure_app(
            lab, xtask, repo, runs, &mut rows, &mut notes, export, target,
        );
        if let Err(err) = app {
            eprintln!("error: the app stack's figures failed: {err:#}");
            notes.push(format!("The app stack's figures (2, 4) failed: {err:#}"));
        }
    } else {
        notes.push(
            "The application stack (figures 2 and 4) was left out (--quick or --no-app).".into(),
        );
    }
    let esh = lab.engines[export].shell()?;
    let tsh = lab.engines[target].shell()?;

    // -- the synthetic image
    let started = Instant::now();
    import_synthetic_image(&lab.engines[export], size)?;
    notes.push(format!(
        "Synthetic image `{BIG_IMAGE}`: one {} layer (half random bytes, half generated text), \
         made with `docker import` in {:.0}s.",
        human_bytes(size),
        started.elapsed().as_secs_f64()
    ));
    let big = work.join("big");
    std::fs::create_dir_all(&big)?;
    let big_compose = big.join("compose.yaml");
    std::fs::write(
        &big_compose,
        format!("name: bench-big\nservices:\n  big:\n    image: {BIG_IMAGE}\n"),
    )?;
    let bundle = work.join("big-bundle");
    let saved = work.join("big-saved.tar");

    // -- 1. export of images
    eprintln!("   Measuring export of images: cache-export --only base-images vs docker save -o");
    let mut save_only = Vec::new();
    let (ours, base) = alternate(
        runs,
        || {
            remove(&bundle)?;
            timed(
                cmd!(esh, "{xtask} -f {big_compose} cache-export --only base-images --pull never --output {bundle}"),
                &log,
                &[0],
            )
        },
        || {
            remove(&saved)?;
            let save = timed(cmd!(esh, "docker save {BIG_IMAGE} -o {saved}"), &log, &[0])?;
            let sync = timed(cmd!(esh, "sync {saved}"), &log, &[0])?;
            save_only.push(save.secs);
            Ok(Sample {
                secs: save.secs + sync.secs,
                peak_rss: None,
            })
        },
    )?;
    // `docker save -o`'s file stays: `docker load -i` (figure 3) reads the same images.
    let archive = saved.clone();
    let bundle_bytes = dir_size(&bundle)?;
    let bundle_files: Vec<Utf8PathBuf> = crate::bundle::list_files(&bundle)?
        .iter()
        .map(|f| bundle.join(f))
        .collect();
    rows.push(Row::new(
        &format!("1. Export of images ({} image)", human_bytes(size)),
        Stat::of(&series(&ours), Unit::Secs),
        Some((
            "docker save -o + fsync",
            Stat::of(&series(&base), Unit::Secs),
        )),
        Target::RatioAtMost(1.15),
    ));
    let save_stat = Stat::of(&save_only, Unit::Secs);
    notes.push(format!(
        "Figure 1: ours writes {} in {} files (the image's blobs, the archive's own files, \
         manifest, SHA256SUMS) and fsyncs the blobs; the baseline is `docker save {BIG_IMAGE} \
         -o FILE` then `sync FILE`, so both end with the data on disk. `docker save` alone \
         (data still in the page cache): {}, ratio {:.2}×. Figure 3's `docker load -i` reads \
         that FILE; figure 5's `sha256sum` reads our bundle's files.",
        human_bytes(bundle_bytes),
        bundle_files.len(),
        save_stat.render(),
        Stat::of(&series(&ours), Unit::Secs).median / save_stat.median
    ));
    let export_peak = peak_of(&ours);
    let export_median = Stat::of(&series(&ours), Unit::Secs).median;
    let save_median = save_stat.median;

    // -- 5. checksum verification (page cache warm: the file was just written)
    eprintln!("   Measuring cache-verify vs sha256sum (page cache warm)");
    timed(
        cmd!(esh, "{xtask} cache-verify --bundle {bundle}"),
        &log,
        &[0],
    )?;
    let (ours, base) = alternate(
        runs,
        || {
            timed(
                cmd!(esh, "{xtask} cache-verify --bundle {bundle}"),
                &log,
                &[0],
            )
        },
        || {
            let files = &bundle_files;
            timed(cmd!(esh, "sha256sum {files...}"), &log, &[0])
        },
    )?;
    let rate = |samples: &[Sample]| -> Vec<f64> {
        samples
            .iter()
            .map(|s| bundle_bytes as f64 / s.secs)
            .collect()
    };
    rows.push(Row::new(
        &format!(
            "5. Checksum verification, {} bundle, page cache warm",
            human_bytes(bundle_bytes)
        ),
        Stat::of(&rate(&ours), Unit::Rate),
        Some(("coreutils sha256sum", Stat::of(&rate(&base), Unit::Rate))),
        Target::AtLeast(1e9),
    ));
    let verify_peak = peak_of(&ours);
    let verify_rate = Stat::of(&rate(&ours), Unit::Rate).median;

    // -- 3. import
    eprintln!("   Measuring import: cache-import vs docker load -i, on an emptied engine");
    let remove_big = || -> anyhow::Result<()> {
        cmd!(tsh, "docker image rm --force {BIG_IMAGE}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .ignore_status()
            .run()?;
        Ok(())
    };
    let (ours, base) = alternate(
        runs,
        || {
            remove_big()?;
            timed(
                cmd!(
                    tsh,
                    "{xtask} cache-import --bundle {bundle} --no-host-caches"
                ),
                &log,
                &[0],
            )
        },
        || {
            remove_big()?;
            timed(cmd!(tsh, "docker load -i {archive}"), &log, &[0])
        },
    )?;
    rows.push(Row::new(
        &format!(
            "3. Import, {} bundle (verification included)",
            human_bytes(bundle_bytes)
        ),
        Stat::of(&series(&ours), Unit::Secs),
        Some(("docker load -i", Stat::of(&series(&base), Unit::Secs))),
        Target::RatioAtMost(1.15),
    ));
    let import_peak = peak_of(&ours);
    remove_big()?;
    let mut points = vec![Point {
        bytes: bundle_bytes,
        export: bundle_bytes as f64 / export_median,
        save: bundle_bytes as f64 / save_median,
        import: bundle_bytes as f64 / Stat::of(&series(&ours), Unit::Secs).median,
        load: bundle_bytes as f64 / Stat::of(&series(&base), Unit::Secs).median,
        verify: verify_rate,
    }];

    // -- 6. peak memory
    for (what, peak) in [
        ("export (cache-export)", export_peak),
        ("import (cache-import)", import_peak),
        ("verification (cache-verify)", verify_peak),
    ] {
        if let Some(peak) = peak {
            rows.push(Row::new(
                &format!(
                    "6. Peak RSS of {what}, {} bundle",
                    human_bytes(bundle_bytes)
                ),
                Stat::of(&[peak as f64], Unit::Bytes),
                None,
                Target::AtMost(100.0 * MIB as f64),
            ));
        }
    }
    remove(&bundle)?;

    // -- the chart: the same commands, once each, on smaller synthetic images
    let mut sizes: Vec<u64> = [8, 4, 2]
        .iter()
        .map(|part| (size / part).max(32 * MIB))
        .collect();
    sizes.dedup();
    for size in sizes {
        eprintln!("   Chart point: {} synthetic image", human_bytes(size));
        import_synthetic_image(&lab.engines[export], size)?;
        remove(&bundle)?;
        let ours = timed(
            cmd!(esh, "{xtask} -f {big_compose} cache-export --only base-images --pull never --output {bundle}"),
            &log,
            &[0],
        )?;
        let bytes = dir_size(&bundle)?;
        remove(&saved)?;
        let save = timed(cmd!(esh, "docker save {BIG_IMAGE} -o {saved}"), &log, &[0])?.secs
            + timed(cmd!(esh, "sync {saved}"), &log, &[0])?.secs;
        let verify = timed(
            cmd!(esh, "{xtask} cache-verify --bundle {bundle}"),
            &log,
            &[0],
        )?;
        remove_big()?;
        let import = timed(
            cmd!(
                tsh,
                "{xtask} cache-import --bundle {bundle} --no-host-caches"
            ),
            &log,
            &[0],
        )?;
        remove_big()?;
        let load = timed(cmd!(tsh, "docker load -i {archive}"), &log, &[0])?;
        remove_big()?;
        remove(&saved)?;
        points.push(Point {
            bytes,
            export: bytes as f64 / ours.secs,
            save: bytes as f64 / save,
            import: bytes as f64 / import.secs,
            load: bytes as f64 / load.secs,
            verify: bytes as f64 / verify.secs,
        });
    }
    points.sort_by_key(|p| p.bytes);
    remove(&bundle)?;
    cmd!(esh, "docker image rm --force {BIG_IMAGE}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .ignore_status()
        .run()?;

    // -- 7. cache-plan and patch-compose on 50 services
    eprintln!("   Measuring cache-plan and patch-compose --check on 50 services");
    let fifty = work.join("fifty");
    write_fifty_services(&fifty)?;
    let fifty_compose = fifty.join("compose.yaml");
    let no_bundle = fifty.join("no-bundle");
    let quick_runs = (runs * 5).max(5);
    let (plan, config) = alternate(
        quick_runs,
        || {
            timed(
                cmd!(esh, "{xtask} -f {fifty_compose} cache-plan"),
                &log,
                &[0],
            )
        },
        || {
            timed(
                cmd!(esh, "docker compose -f {fifty_compose} config --quiet"),
                &log,
                &[0],
            )
        },
    )?;
    let mut patch = Vec::new();
    for _ in 0..quick_runs {
        patch.push(timed(
            cmd!(esh, "{xtask} -f {fifty_compose} patch-compose --check --strategy local --bundle {no_bundle}"),
            &log,
            &[0, 1],
        )?);
    }
    let config_stat = Stat::of(&series(&config), Unit::Millis);
    rows.push(Row::new(
        "7. `cache-plan`, 50 services (whole process)",
        Stat::of(&series(&plan), Unit::Millis),
        Some(("docker compose config -q", config_stat.clone())),
        Target::AtMost(0.050),
    ));
    rows.push(Row::new(
        "7. `patch-compose --check`, 50 services (whole process)",
        Stat::of(&series(&patch), Unit::Millis),
        Some(("docker compose config -q", config_stat)),
        Target::AtMost(0.050),
    ));

    rows.sort_by(|a, b| a.figure.cmp(&b.figure));
    Ok(Report {
        rows,
        notes,
        points,
    })
}

/// Figures 2 (whole export against the seed guide's steps) and 4 (offline rebuild against
/// a cold build), on the application's own compose project.
#[allow(clippy::too_many_arguments)]
fn measure_app(
    lab: &mut Lab,
    xtask: &Utf8Path,
    repo: &Utf8Path,
    runs: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
    export: usize,
    target: usize,
) -> anyhow::Result<()> {
    let work = lab.work.clone();
    let log = work.join("bench.log");
    let esh = lab.engines[export].shell()?;
    let tsh = lab.engines[target].shell()?;
    load_standins(&lab.engines[export])?;
    let app = work.join("app-export");
    copy_project(repo, &app)?;
    let compose = app.join("docker-compose.yml");
    let bundle = work.join("app-bundle");

    eprintln!("   First export of the app (cold builds, fills the engine's build cache)");
    let first = timed(
        cmd!(
            esh,
            "{xtask} -f {compose} cache-export --pull never --output {bundle}"
        ),
        &log,
        &[0],
    )?;
    rows.push(Row::new(
        "0. First export of the app (cold builds, downloads)",
        Stat::of(&[first.secs], Unit::Secs),
        None,
        Target::None,
    ));
    notes.push(format!(
        "First `cache-export` of the app on the export engine (cold builds, wheelhouse \
         download, npm cache fill and its offline check): {:.1}s. The timed exports below \
         run with the engine's build cache warm, as a re-export does.",
        first.secs
    ));
    // The seed guide copies ~/.cache/pip and ~/.npm; the same bytes are the dependency
    // caches this export fetched, so the baseline copies those (same size, same files).
    let deps = work.join("deps");
    std::fs::create_dir_all(&deps)?;
    for dir in ["pip-cache", "npm-cache"] {
        copy_tree(&bundle.join(dir), &deps.join(dir), &[])?;
    }
    for (built, seed_name) in APP_BUILT.iter().zip(SEED_CACHE_IMAGES) {
        cmd!(esh, "docker tag {built} {seed_name}").quiet().run()?;
    }
    let node_modules = repo.join("frontend/node_modules");

    eprintln!("   Measuring whole export: cache-export vs the seed guide's steps");
    let seed = work.join("seed");
    let seed_dir = seed.join("docker-build-cache");
    let seed_tgz = seed.join("docker-build-cache.tar.gz");
    let base_images = ["python:3.9-slim", "node:18-alpine", "nginx:alpine"];
    let (pip_src, npm_src) = (deps.join("pip-cache"), deps.join("npm-cache"));
    // Each run of ours: an export into an empty folder, then a re-export into the bundle
    // it wrote (nothing changed), which is what the alternation times.
    let mut fresh = Vec::new();
    let (ours, base) = alternate(
        runs,
        || {
            remove(&bundle)?;
            let export = || {
                timed(
                    cmd!(
                        esh,
                        "{xtask} -f {compose} cache-export --pull never --output {bundle}"
                    ),
                    &log,
                    &[0],
                )
            };
            fresh.push(export()?);
            export()
        },
        || {
            remove(&seed)?;
            std::fs::create_dir_all(&seed_dir)?;
            let d = &seed_dir;
            let steps = [
                cmd!(esh, "docker save {base_images...} -o {d}/base-images.tar"),
                cmd!(
                    esh,
                    "docker save {SEED_CACHE_IMAGES...} -o {d}/build-cache.tar"
                ),
                cmd!(esh, "cp -r {pip_src} {d}/pip-cache"),
                cmd!(esh, "cp -r {npm_src} {d}/npm-cache"),
            ];
            let mut secs = 0.0;
            for step in steps {
                secs += timed(step, &log, &[0])?.secs;
            }
            if node_modules.is_dir() {
                let frontend = repo.join("frontend");
                secs += timed(
                    cmd!(
                        esh,
                        "tar czf {d}/node_modules.tar.gz -C {frontend} node_modules"
                    ),
                    &log,
                    &[0],
                )?
                .secs;
            }
            secs += timed(
                cmd!(esh, "tar czf {seed_tgz} -C {seed} docker-build-cache"),
                &log,
                &[0],
            )?
            .secs;
            Ok(Sample {
                secs,
                peak_rss: None,
            })
        },
    )?;
    let ours_bytes = dir_size(&bundle)?;
    let seed_bytes = std::fs::metadata(&seed_tgz)?.len();
    let seed_dir_bytes = dir_size(&seed_dir)?;
    rows.push(Row::new(
        "2. Whole export of the app, re-export (previous bundle in place)",
        Stat::of(&series(&ours), Unit::Secs),
        Some(("seed guide's steps", Stat::of(&series(&base), Unit::Secs))),
        Target::SpeedupAtLeast(5.0),
    ));
    rows.push(Row::new(
        "2. Whole export of the app into an empty folder",
        Stat::of(&series(&fresh), Unit::Secs),
        Some(("seed guide's steps", Stat::of(&series(&base), Unit::Secs))),
        Target::None,
    ));
    rows.push(Row::new(
        "2. Bundle size of the app (what is carried)",
        Stat::of(&[ours_bytes as f64], Unit::Bytes),
        Some((
            "docker-build-cache.tar.gz",
            Stat::of(&[seed_bytes as f64], Unit::Bytes),
        )),
        Target::RatioAtMost(0.7),
    ));
    // "<part> <size>" for each part of a folder (a part it lacks counts 0 B).
    let parts = |dir: &Utf8Path, rels: &[&str]| -> anyhow::Result<String> {
        let mut listed = Vec::new();
        for rel in rels {
            let path = dir.join(rel);
            let size = if path.is_dir() {
                dir_size(&path)?
            } else {
                std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
            };
            listed.push(format!("{rel} {}", human_bytes(size)));
        }
        Ok(listed.join(", "))
    };
    notes.push(format!(
        "Figure 2, what our bundle holds: {} (the base images' layers are in build-cache/, \
         once). The seed's folder, before its `tar czf`: {}.",
        parts(
            &bundle,
            &[
                "base-images",
                "build-cache",
                "npm-cache",
                "npm-host-cache",
                "pip-cache"
            ]
        )?,
        parts(
            &seed_dir,
            &[
                "base-images.tar",
                "build-cache.tar",
                "npm-cache",
                "pip-cache",
                "node_modules.tar.gz"
            ]
        )?,
    ));
    notes.push(
        "Figure 2, the two exports: each run exports into an empty folder (timed as \
         \"into an empty folder\": wheelhouse download, npm cache fill and its two \
         `npm ci --offline` checks, builds against the warm engine, `docker save`), then \
         exports again into the bundle it wrote, nothing changed (timed as \"re-export\": \
         the wheelhouse, npm cache and base-images archive are checked against the previous \
         manifest and reused, the builds hit the layer cache, the build cache is exported \
         again). The seed guide's steps have no such reuse; they start from dependency caches \
         that already exist."
            .into(),
    );
    // Into an empty folder: npm cache fill and packument cuts, layer recompression.
    for (label, samples) in [
        (
            "6. Peak RSS of the app's whole export (cache-export)",
            &ours,
        ),
        (
            "6. Peak RSS of the app's export into an empty folder",
            &fresh,
        ),
    ] {
        if let Some(peak) = peak_of(samples) {
            rows.push(Row::new(
                label,
                Stat::of(&[peak as f64], Unit::Bytes),
                None,
                Target::AtMost(100.0 * MIB as f64),
            ));
        }
    }
    notes.push(format!(
        "Figure 2 baseline, timed as a whole: `docker save` of the three base images to \
         base-images.tar and of the two built images (tagged {}) to build-cache.tar, `cp -r` \
         of a pip cache and an npm cache (the wheelhouse and npm cache of our bundle: same \
         files, same size), {}and `tar czf` of the folder ({} before the tar, {} after). \
         Ours: {} in {} files, carried as is.",
        SEED_CACHE_IMAGES.join(", "),
        if node_modules.is_dir() {
            format!(
                "`tar czf` of frontend/node_modules ({}), ",
                human_bytes(dir_size(&node_modules)?)
            )
        } else {
            "no node_modules (frontend/node_modules is absent here), ".into()
        },
        human_bytes(seed_dir_bytes),
        human_bytes(seed_bytes),
        human_bytes(ours_bytes),
        crate::bundle::list_files(&bundle)?.len()
    ));
    remove(&seed)?;

    // -- 4. offline rebuild on the target
    eprintln!("   Importing the app bundle into the target engine");
    let import = timed(
        cmd!(
            tsh,
            "{xtask} cache-import --bundle {bundle} --no-host-caches"
        ),
        &log,
        &[0],
    )?;
    let app_target = work.join("app-target");
    copy_project(repo, &app_target)?;
    let target_compose = app_target.join("docker-compose.yml");
    timed(
        cmd!(
            tsh,
            "{xtask} -f {target_compose} patch-compose --bundle {bundle}"
        ),
        &log,
        &[0],
    )?;
    eprintln!("   Measuring offline rebuild (patched compose file) vs cold build (--no-cache)");
    let clean = || -> anyhow::Result<()> {
        cmd!(tsh, "docker image rm --force {APP_BUILT...}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .ignore_status()
            .run()?;
        cmd!(tsh, "docker builder prune --all --force")
            .quiet()
            .ignore_stdout()
            .run()?;
        Ok(())
    };
    let (rebuild, cold) = alternate(
        runs,
        || {
            clean()?;
            timed(
                cmd!(tsh, "docker compose -f {target_compose} build"),
                &log,
                &[0],
            )
        },
        || {
            clean()?;
            timed(
                cmd!(tsh, "docker compose -f {target_compose} build --no-cache"),
                &log,
                &[0],
            )
        },
    )?;
    rows.push(Row::new(
        "4. Offline rebuild of the app after import",
        Stat::of(&series(&rebuild), Unit::Secs),
        Some((
            "cold build, same deps, no network",
            Stat::of(&series(&cold), Unit::Secs),
        )),
        Target::SpeedupAtLeast(20.0),
    ));
    notes.push(format!(
        "Figure 4: on the target engine, after `cache-import` of the app bundle ({:.1}s) and \
         `patch-compose`, `docker compose build` against `docker compose build --no-cache` of \
         the same patched file, the built images and the builder cache removed before each \
         run. The cold build already has its dependencies at hand (wheelhouse, npm cache) and \
         no base image to pull, so it is faster than the seed guide's cold build, which \
         downloads them: the ratio is a lower bound.",
        import.secs
    ));
    Ok(())
}

fn remove(path: &Utf8Path) -> anyhow::Result<()> {
    match path.symlink_metadata() {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(path).with_context(|| format!("removing {path}"))
        }
        Ok(_) => std::fs::remove_file(path).with_context(|| format!("removing {path}")),
    }
}

fn dir_size(dir: &Utf8Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in dir.read_dir_utf8()? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if meta.is_dir() {
            total += dir_size(entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

/// A compose project of 50 build services over two Dockerfiles and requirements files.
fn write_fifty_services(dir: &Utf8Path) -> anyhow::Result<()> {
    let mut compose = String::from("name: fifty\nservices:\n");
    for i in 0..50 {
        let name = format!("svc{i:02}");
        let ctx = dir.join(&name);
        std::fs::create_dir_all(&ctx)?;
        let base = if i % 2 == 0 {
            "python:3.9-slim"
        } else {
            "node:18-alpine"
        };
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM scratch AS wheels\nFROM {base} AS build\nWORKDIR /app\nCOPY . .\n\
                 RUN echo {name}\nFROM nginx:alpine\nCOPY --from=build /app /srv\n"
            ),
        )?;
        if i % 2 == 0 {
            std::fs::write(
                ctx.join("requirements.txt"),
                "fastapi==0.115.5\nuvicorn==0.32.1\nhttpx==0.28.1\n",
            )?;
        }
        let _ = write!(
            compose,
            "  {name}:\n    build:\n      context: ./{name}\n      args:\n        \
             SERVICE: {name}\n    image: fifty-{name}:latest\n    environment:\n      \
             PORT: \"{}\"\n    depends_on: [{}]\n",
            8000 + i,
            if i == 0 {
                "db".to_string()
            } else {
                format!("svc{:02}", i - 1)
            }
        );
    }
    compose.push_str("  db:\n    image: nginx:alpine\n");
    std::fs::write(dir.join("compose.yaml"), compose)?;
    Ok(())
}

/// Directories never copied with the project: dependencies, build output, tooling.
const SKIP: &[&str] = &[
    ".git",
    "target",
    "xtask",
    "docker-build-cache",
    "node_modules",
    ".venv",
    ".next",
    ".test-build",
    "__pycache__",
    ".pytest_cache",
    "docs",
];

fn copy_project(repo: &Utf8Path, dest: &Utf8Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    for entry in repo.read_dir_utf8()? {
        let entry = entry?;
        copy_tree(entry.path(), &dest.join(entry.file_name()), SKIP)?;
    }
    Ok(())
}

fn copy_tree(src: &Utf8Path, dest: &Utf8Path, skip: &[&str]) -> anyhow::Result<()> {
    if skip.contains(&src.file_name().unwrap_or_default()) {
        return Ok(());
    }
    let meta = src.symlink_metadata()?;
    if meta.is_dir() {
        std::fs::create_dir_all(dest)?;
        for entry in src.read_dir_utf8()? {
            let entry = entry?;
            copy_tree(entry.path(), &dest.join(entry.file_name()), skip)?;
        }
    } else if meta.is_symlink() {
        symlink(std::fs::read_link(src)?, dest)?;
    } else {
        std::fs::copy(src, dest).with_context(|| format!("copying {src}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The synthetic image

/// Streams a generated rootfs of `size` bytes into `docker import`: files of up to 64 MiB,
/// alternately incompressible (xorshift) and text (words drawn at random, about 3:1 under
/// gzip), so that the layer is neither all compressible nor all random.
fn import_synthetic_image(engine: &Engine, size: u64) -> anyhow::Result<()> {
    eprintln!(
        "   Making the synthetic image {BIG_IMAGE} ({}) with docker import",
        human_bytes(size)
    );
    let mut child = Command::new("docker")
        .args(["import", "-", BIG_IMAGE])
        .envs(engine.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting docker import")?;
    let stdin = child.stdin.take().context("docker import has no stdin")?;
    let written = (|| -> anyhow::Result<()> {
        let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, stdin));
        let file_size = (64 * MIB).min(size.div_ceil(8)).max(1);
        let mut left = size;
        let mut i = 0u64;
        while left > 0 {
            let len = file_size.min(left);
            let text = i % 2 == 1;
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_size(len);
            let path = if text {
                format!("data/text-{i:05}.txt")
            } else {
                format!("data/blob-{i:05}.bin")
            };
            let filler = Filler {
                state: 0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                left: len,
                text,
            };
            tar.append_data(&mut header, path, filler)?;
            left -= len;
            i += 1;
        }
        tar.into_inner()?.flush()?;
        Ok(())
    })();
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "docker import of the synthetic image failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    written.context("writing the synthetic rootfs to docker import")
}

struct Filler {
    state: u64,
    left: u64,
    text: bool,
}

const WORDS: [&str; 32] = [
    "image", "layer", "cache", "build", "export", "import", "bundle", "docker", "engine",
    "offline", "server", "python", "node", "nginx", "wheel", "npm", "sha256", "manifest",
    "compose", "service", "context", "stage", "target", "digest", "verify", "stream", "archive",
    "backend", "frontend", "config", "volume", "network",
];

impl Filler {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Read for Filler {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        let buf = &mut buf[..n];
        if self.text {
            let mut i = 0;
            while i < n {
                let r = self.next();
                let word = WORDS[(r >> 59) as usize].as_bytes();
                let len = word.len().min(n - i);
                buf[i..i + len].copy_from_slice(&word[..len]);
                i += len;
                if i < n {
                    buf[i] = if r & 0xf == 0 { b'\n' } else { b' ' };
                    i += 1;
                }
                // a number now and then, as in logs and source files
                if r & 0x70 == 0 && i + 4 < n {
                    buf[i..i + 4].copy_from_slice(format!("{:04}", r % 10_000).as_bytes());
                    i += 4;
                }
            }
        } else {
            for chunk in buf.chunks_mut(8) {
                let bytes = self.next().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
        self.left -= n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// Private engines (as in xtask/tests/it/support/engine.rs, in their own namespace: /tmp/xtb,
// bridges xtb*, addresses 10.215.<slot>.1/24 and pools 10.216.<slot>.0/24)

const LAB_DIR: &str = "/tmp/xtb";
const BRIDGE_PREFIX: &str = "xtb";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// This run's directory `/tmp/xtb/<pid>`: the engines and the work files.
struct Lab {
    root: Utf8PathBuf,
    work: Utf8PathBuf,
    engines: Vec<Engine>,
    closed: bool,
}

impl Lab {
    fn open() -> anyhow::Result<Lab> {
        if let Err(err) = remove_stale_labs() {
            eprintln!("warning: removing what an earlier benchmark left: {err:#}");
        }
        let root = Utf8Path::new(LAB_DIR).join(std::process::id().to_string());
        let work = root.join("work");
        std::fs::create_dir_all(&work).with_context(|| format!("creating {work}"))?;
        Ok(Lab {
            root,
            work,
            engines: Vec::new(),
            closed: false,
        })
    }

    /// Starts a private engine (containerd image store, data root on disk); its index.
    fn start_engine(&mut self, name: &str) -> anyhow::Result<usize> {
        let n = self.engines.len();
        let mut engine = Engine {
            name: name.to_string(),
            id: format!("{}-{n}", std::process::id()),
            root: self.root.join(format!("e{n}")),
            slot: None,
            dockerd: None,
        };
        let sh = Shell::new()?;
        for dir in ["data", "x", "client"] {
            sh.create_dir(engine.root.join(dir))?;
        }
        let started = Instant::now();
        let result = (|| -> anyhow::Result<()> {
            engine.slot = Some(create_bridge(&sh, &engine)?);
            engine.spawn(&sh)
        })();
        self.engines.push(engine);
        result.with_context(|| format!("starting the private engine `{name}`"))?;
        eprintln!(
            "      Engine {name} up in {:.1}s at {}",
            started.elapsed().as_secs_f64(),
            self.engines[n].host()
        );
        Ok(n)
    }

    fn describe_machine(&self) -> anyhow::Result<Machine> {
        let sh = match self.engines.first() {
            Some(engine) => engine.shell()?,
            None => Shell::new()?,
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let flags = field(&cpuinfo, "flags");
        let features: Vec<&str> = ["sha_ni", "avx2", "avx512f"]
            .into_iter()
            .filter(|f| flags.split_whitespace().any(|x| x == *f))
            .collect();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: u64 = field(&meminfo, "MemTotal")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0);
        let work = &self.work;
        let disk = cmd!(sh, "df -h --output=source,fstype,size,avail {work}")
            .quiet()
            .read()
            .unwrap_or_default();
        let read = |c: xshell::Cmd<'_>| c.quiet().ignore_stderr().read().unwrap_or_default();
        let format = "{{.Server.Version}}";
        Ok(Machine {
            cpu: field(&cpuinfo, "model name"),
            features: features.join(", "),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            ram: human_bytes(mem_kb * 1024),
            disk: disk.lines().nth(1).unwrap_or_default().to_string(),
            kernel: read(cmd!(sh, "uname -r")),
            docker: read(cmd!(sh, "docker version --format {format}")),
            buildx: read(cmd!(sh, "docker buildx version")),
            compose: read(cmd!(sh, "docker compose version --short")),
            load: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
            date: read(cmd!(sh, "date -u +%Y-%m-%dT%H:%MZ")),
        })
    }

    /// Stops the engines, removes every file of this run.
    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        eprintln!("   Cleaning up {}", self.root);
        while let Some(mut engine) = self.engines.pop() {
            if let Err(err) = engine.stop() {
                eprintln!("warning: stopping engine {}: {err:#}", engine.name);
            }
        }
        if let Err(err) = remove_tree(&self.root) {
            eprintln!("warning: {err:#}");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.close();
    }
}

struct Machine {
    cpu: String,
    features: String,
    cores: usize,
    ram: String,
    disk: String,
    kernel: String,
    docker: String,
    buildx: String,
    compose: String,
    load: String,
    date: String,
}

struct Engine {
    name: String,
    id: String,
    root: Utf8PathBuf,
    slot: Option<u8>,
    dockerd: Option<Child>,
}

impl Engine {
    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.root)
    }

    fn bridge(&self) -> String {
        format!("{BRIDGE_PREFIX}{}", self.id)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DOCKER_HOST", self.host()),
            ("DOCKER_CONFIG", self.root.join("client").into_string()),
        ]
    }

    fn shell(&self) -> anyhow::Result<Shell> {
        let sh = Shell::new()?;
        for (key, value) in self.env() {
            sh.set_var(key, value);
        }
        Ok(sh)
    }

    fn spawn(&mut self, sh: &Shell) -> anyhow::Result<()> {
        let root = &self.root;
        let config = serde_json::json!({
            "bridge": self.bridge(),
            "iptables": false,
            "ip6tables": false,
            "ip-forward": false,
            "ip-masq": false,
            "default-address-pools": [{
                "base": format!("10.216.{}.0/24", self.slot.unwrap_or_default()),
                "size": 28
            }],
            "features": { "containerd-snapshotter": true },
            "shutdown-timeout": 2,
        });
        sh.write_file(
            root.join("daemon.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        let log_path = root.join("dockerd.log");
        let log = File::create(&log_path)?;
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("x"))
            .arg("--pidfile")
            .arg(root.join("docker.pid"))
            .arg("-H")
            .arg(self.host())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        self.dockerd = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let host = self.host();
        loop {
            let answered = cmd!(sh, "docker -H {host} version")
                .env("DOCKER_CONFIG", self.root.join("client"))
                .quiet()
                .ignore_stderr()
                .ignore_stdout()
                .run()
                .is_ok();
            if answered {
                return Ok(());
            }
            if let Some(status) = self
                .dockerd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "dockerd exited ({status}); its log {log_path}:\n{}",
                    tail(&log_path, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not answer within 60s; its log {log_path}:\n{}",
                    tail(&log_path, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.dockerd.as_mut() {
            if child.try_wait()?.is_none() {
                let sh = Shell::new()?;
                let pid = child.id().to_string();
                let _ = cmd!(sh, "kill -TERM {pid}").quiet().ignore_stderr().run();
                let deadline = Instant::now() + STOP_TIMEOUT;
                while child.try_wait()?.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if child.try_wait()?.is_none() {
                    child.kill()?;
                }
            }
            child.wait()?;
        }
        self.dockerd = None;
        teardown(&self.id, &self.root, self.slot)
    }
}

/// Creates the bridge `xtb<id>` with `10.215.<slot>.1/24`, on a slot no other engine uses.
fn create_bridge(sh: &Shell, engine: &Engine) -> anyhow::Result<u8> {
    let lock = File::create(Utf8Path::new(LAB_DIR).join(".lock"))?;
    lock.lock()?;
    let addresses = cmd!(sh, "ip -o -4 addr show").quiet().read()?;
    let slot = (0..=255u8)
        .find(|slot| {
            !addresses.contains(&format!(" 10.215.{slot}."))
                && !addresses.contains(&format!(" 10.216.{slot}."))
        })
        .context("all 256 address slots of benchmark engines are taken")?;
    let bridge = engine.bridge();
    let address = format!("10.215.{slot}.1/24");
    sh.write_file(engine.root.join("slot"), slot.to_string())?;
    cmd!(sh, "ip link add {bridge} type bridge").quiet().run()?;
    cmd!(sh, "ip addr add {address} dev {bridge}")
        .quiet()
        .run()?;
    cmd!(sh, "ip link set {bridge} up").quiet().run()?;
    Ok(slot)
}

/// Removes what an engine leaves once its dockerd is gone: its containerd and shims,
/// mounts, bridges and directory.
fn teardown(id: &str, root: &Utf8Path, slot: Option<u8>) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    kill_processes_using(root)?;
    unmount_below(root)?;
    let mut links = vec![format!("{BRIDGE_PREFIX}{id}")];
    if let Some(slot) = slot {
        let addresses = cmd!(sh, "ip -o -4 addr show").quiet().read()?;
        for line in addresses.lines() {
            if line.contains(&format!(" 10.216.{slot}.")) {
                if let Some(link) = line.split_whitespace().nth(1) {
                    links.push(link.to_owned());
                }
            }
        }
    }
    for link in links {
        if Utf8Path::new("/sys/class/net").join(&link).exists() {
            cmd!(sh, "ip link del {link}")
                .quiet()
                .ignore_stderr()
                .ignore_status()
                .run()?;
        }
    }
    remove_tree(root)
}

/// SIGKILLs every process whose command line names a path below `root` (the engine's
/// containerd and shims, or a dockerd whose benchmark was killed).
fn kill_processes_using(root: &Utf8Path) -> anyhow::Result<()> {
    let needle = format!("{root}/");
    let sh = Shell::new()?;
    for _ in 0..50 {
        let mut pids = Vec::new();
        for entry in Utf8Path::new("/proc").read_dir_utf8()? {
            let entry = entry?;
            let Ok(pid) = entry.file_name().parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(&needle)
            {
                pids.push(pid.to_string());
            }
        }
        if pids.is_empty() {
            return Ok(());
        }
        cmd!(sh, "kill -KILL {pids...}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .run()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("processes using {root} survive SIGKILL")
}

/// Removes the directories and bridges of benchmark runs whose process is gone.
fn remove_stale_labs() -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let dir = Utf8Path::new(LAB_DIR);
    std::fs::create_dir_all(dir)?;
    let gone = |pid: &str| {
        pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || !Utf8Path::new(&format!("/proc/{pid}")).exists()
        })
    };
    for entry in dir.read_dir_utf8()? {
        let entry = entry?;
        if !entry.path().is_dir() || !gone(entry.file_name()) {
            continue;
        }
        eprintln!(
            "      Removing {} (left by a killed benchmark)",
            entry.path()
        );
        for engine in entry.path().read_dir_utf8()? {
            let engine = engine?;
            if let Some(n) = engine.file_name().strip_prefix('e') {
                let slot = std::fs::read_to_string(engine.path().join("slot"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                teardown(&format!("{}-{n}", entry.file_name()), engine.path(), slot)?;
            }
        }
        remove_tree(entry.path())?;
    }
    for link in Utf8Path::new("/sys/class/net").read_dir_utf8()? {
        let link = link?;
        let Some(id) = link.file_name().strip_prefix(BRIDGE_PREFIX) else {
            continue;
        };
        if id.split('-').next().is_some_and(gone) {
            let link = link.file_name();
            cmd!(sh, "ip link del {link}")
                .quiet()
                .ignore_stderr()
                .ignore_status()
                .run()?;
        }
    }
    Ok(())
}

fn remove_tree(dir: &Utf8Path) -> anyhow::Result<()> {
    if dir.symlink_metadata().is_err() {
        return Ok(());
    }
    unmount_below(dir)?;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {dir}"))
}

/// Unmounts (lazily, deepest first) every mount point at or below `dir`.
fn unmount_below(dir: &Utf8Path) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut below: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(|m| m.replace("\\040", " "))
        .filter(|mount| Utf8Path::new(mount).starts_with(dir))
        .collect();
    below.sort_by_key(|mount| std::cmp::Reverse(mount.len()));
    below.dedup();
    let sh = Shell::new()?;
    for mount in below {
        cmd!(sh, "umount --lazy {mount}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .run()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Stand-ins of the application's base images (as in xtask/tests/it/support/standins.rs,
// sharing its cached rootfs: same cache folder, same key, same lock)

/// Must equal the recipe name of the tests' stand-in, whose cached rootfs this reuses.
const DEBIAN_RECIPE: &str = "bookworm-py311-node18-npm10.8.2-nginx-v3";
const NPM_VERSION: &str = "10.8.2";
const DEBIAN_PACKAGES: &str = "python3,python3-pip,python3-venv,nodejs,nginx-light,ca-certificates";
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// (name, Cmd, exposed ports, stop signal)
type StandIn = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    Option<&'static str>,
);
const APP_STANDINS: [StandIn; 3] = [
    ("python:3.9-slim", &["python3"], &[], None),
    ("node:18-alpine", &["node"], &[], None),
    (
        "nginx:alpine",
        &["nginx", "-g", "daemon off;"],
        &["80/tcp"],
        Some("SIGQUIT"),
    ),
];

fn standin_config(standin: &StandIn, diff_id: &str) -> serde_json::Value {
    let (image, command, ports, signal) = standin;
    let ports: serde_json::Map<String, serde_json::Value> = ports
        .iter()
        .map(|p| (p.to_string(), serde_json::json!({})))
        .collect();
    let mut config = serde_json::json!({ "Env": [PATH, "LANG=C.UTF-8"], "Cmd": command });
    if !ports.is_empty() {
        config["ExposedPorts"] = ports.into();
    }
    if let Some(signal) = signal {
        config["StopSignal"] = (*signal).into();
    }
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": "2024-01-01T00:00:00Z",
            "created_by": format!("xtask test stand-in for {image} (Debian {DEBIAN_RECIPE})"),
        }],
    })
}

/// Loads the Debian stand-ins into `engine` under the real names, all over one layer,
/// gzip-compressed as a pulled image's layers are: the engine keeps the blob as it was
/// loaded, and `docker save` (of ours and of the seed's steps) writes it as it is kept.
fn load_standins(engine: &Engine) -> anyhow::Result<()> {
    let rootfs = debian_rootfs()?;
    let layer = rootfs.join("rootfs.tar.gz");
    if !layer.exists() {
        let sh = Shell::new()?;
        let tar = rootfs.join("rootfs.tar");
        let partial = rootfs.join(format!("rootfs.tar.gz.{}", std::process::id()));
        eprintln!("      Compressing the stand-in layer (gzip -6, once): {layer}");
        let mut gzip: Command = cmd!(sh, "gzip -6 -n -c {tar}").into();
        let status = gzip.stdout(File::create(&partial)?).status()?;
        if !status.success() {
            bail!("gzip of {tar} failed ({status})");
        }
        std::fs::rename(&partial, &layer)?;
    }
    let diff_id = std::fs::read_to_string(rootfs.join("rootfs.tar.sha256"))?;
    let mut manifest = Vec::new();
    let mut configs = Vec::new();
    for standin in &APP_STANDINS {
        let config = serde_json::to_vec(&standin_config(standin, diff_id.trim()))?;
        let name = format!("{:x}.json", Sha256::digest(&config));
        manifest.push(serde_json::json!({
            "Config": name, "RepoTags": [standin.0], "Layers": ["layer/layer.tar"],
        }));
        configs.push((name, config));
    }
    let mut load = Command::new("docker")
        .args(["load", "--quiet"])
        .envs(engine.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running docker load")?;
    let stdin = load.stdin.take().context("docker load's stdin")?;
    let written = (|| -> anyhow::Result<()> {
        let mut archive = tar::Builder::new(stdin);
        let mut add = |path: &str, kind, mode, data: &[u8]| -> io::Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_size(data.len() as u64);
            archive.append_data(&mut header, path, data)
        };
        for (name, config) in &configs {
            add(name, tar::EntryType::Regular, 0o644, config)?;
        }
        add(
            "manifest.json",
            tar::EntryType::Regular,
            0o644,
            &serde_json::to_vec(&manifest)?,
        )?;
        add("layer", tar::EntryType::Directory, 0o755, b"")?;
        archive.append_path_with_name(&layer, "layer/layer.tar")?;
        archive.into_inner()?.flush()?;
        Ok(())
    })();
    let output = load.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "docker load of the stand-in base images failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    written.context("writing the stand-in images to docker load")
}

/// The cached Debian rootfs of the stand-ins (made once, shared with the tests).
fn debian_rootfs() -> anyhow::Result<Utf8PathBuf> {
    let cache = match std::env::var("XTASK_TEST_CACHE") {
        Ok(dir) if !dir.is_empty() => Utf8PathBuf::from(dir),
        _ => Utf8PathBuf::from(std::env::var("HOME").context("HOME is not set")?)
            .join(".cache/xtask-tests"),
    };
    std::fs::create_dir_all(&cache)?;
    let key = format!("standin-{DEBIAN_RECIPE}");
    let target = cache.join(&key);
    if target.exists() {
        return Ok(target);
    }
    let lock_path = cache.join(format!("{key}.lock"));
    let lock = File::create(&lock_path).with_context(|| format!("creating {lock_path}"))?;
    eprintln!("      Waiting for the stand-in rootfs lock {lock_path}");
    lock.lock()?;
    if target.exists() {
        return Ok(target);
    }
    let prefix = format!("{key}.scratch-");
    for entry in cache.read_dir_utf8()? {
        let entry = entry?;
        if entry.file_name().starts_with(&prefix) {
            remove_tree(entry.path())?;
        }
    }
    let scratch = cache.join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    eprintln!("      Making the Debian stand-in rootfs (once; cached in {cache})");
    let made = make_debian_rootfs(&scratch).with_context(|| format!("making {target}"))?;
    std::fs::rename(&made, &target)?;
    remove_tree(&scratch)?;
    Ok(target)
}

fn make_debian_rootfs(scratch: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    let sh = Shell::new()?;
    let rootfs = scratch.join("rootfs");
    sh.create_dir(&rootfs)?;
    cmd!(sh, "mount -t tmpfs -o size=4g xtb-rootfs {rootfs}")
        .quiet()
        .run()?;
    let mirror = debian_mirror(&sh);
    cmd!(
        sh,
        "debootstrap --variant=minbase --include={DEBIAN_PACKAGES} bookworm {rootfs} {mirror...}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .with_context(|| format!("debootstrap (its log: {rootfs}/debootstrap/debootstrap.log)"))?;
    unmount_below(&rootfs)?;
    let _dir = sh.push_dir(scratch);
    cmd!(sh, "npm pack --silent npm@{NPM_VERSION}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let modules = rootfs.join("usr/local/lib/node_modules");
    sh.create_dir(&modules)?;
    let npm_tgz = scratch.join(format!("npm-{NPM_VERSION}.tgz"));
    cmd!(sh, "tar -xzf {npm_tgz} -C {modules} --no-same-owner")
        .quiet()
        .run()?;
    std::fs::rename(modules.join("package"), modules.join("npm"))?;
    let bin = rootfs.join("usr/local/bin");
    sh.create_dir(&bin)?;
    symlink("../lib/node_modules/npm/bin/npm-cli.js", bin.join("npm"))?;
    symlink("../lib/node_modules/npm/bin/npx-cli.js", bin.join("npx"))?;
    symlink("/usr/bin/python3", bin.join("python"))?;
    symlink("/usr/bin/pip3", bin.join("pip"))?;
    for dir in sh.read_dir(rootfs.join("usr/lib"))? {
        let marker = dir.join("EXTERNALLY-MANAGED");
        if marker.exists() {
            std::fs::remove_file(marker)?;
        }
    }
    std::fs::remove_file(rootfs.join("etc/nginx/sites-enabled/default"))?;
    sh.write_file(
        rootfs.join("etc/nginx/conf.d/default.conf"),
        "server {\n    listen       80;\n    server_name  localhost;\n    location / {\n        \
         root   /usr/share/nginx/html;\n        index  index.html index.htm;\n    }\n}\n",
    )?;
    for (log, target) in [("access.log", "/dev/stdout"), ("error.log", "/dev/stderr")] {
        let log = rootfs.join("var/log/nginx").join(log);
        if log.exists() {
            std::fs::remove_file(&log)?;
        }
        symlink(target, log)?;
    }
    for (file, line) in [
        (
            "etc/passwd",
            "nginx:x:101:101:nginx:/nonexistent:/usr/sbin/nologin",
        ),
        ("etc/group", "nginx:x:101:"),
        ("etc/passwd", "node:x:1000:1000::/home/node:/bin/sh"),
        ("etc/group", "node:x:1000:"),
    ] {
        let path = rootfs.join(file);
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(line);
        text.push('\n');
        std::fs::write(&path, text)?;
    }
    let home = rootfs.join("home/node");
    sh.create_dir(&home)?;
    cmd!(sh, "chown 1000:1000 {home}").quiet().run()?;
    let busybox = which("busybox").context("busybox not found")?;
    std::fs::copy(&busybox, bin.join("busybox"))?;
    symlink("busybox", bin.join("wget"))?;
    for dir in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "dev",
    ] {
        let dir = rootfs.join(dir);
        remove_tree(&dir)?;
        sh.create_dir(&dir)?;
    }
    let out = scratch.join("out");
    sh.create_dir(&out)?;
    let tar = out.join("rootfs.tar");
    cmd!(sh, "tar --numeric-owner --xattrs -C {rootfs} -cf {tar} .")
        .quiet()
        .run()?;
    remove_tree(&rootfs)?;
    let (_, digest) = crate::bundle::hash_file(&tar)?;
    std::fs::write(out.join("rootfs.tar.sha256"), format!("sha256:{digest}\n"))?;
    Ok(out)
}

/// The Debian mirror apt uses here, so debootstrap fetches from where apt does.
fn debian_mirror(sh: &Shell) -> Option<String> {
    let sources = sh
        .read_file("/etc/apt/sources.list.d/debian.sources")
        .unwrap_or_default();
    for stanza in sources.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let suites = field("Suites:").unwrap_or_default();
        if suites.split_whitespace().any(|suite| suite == "bookworm") {
            if let Some(uri) = field("URIs:").and_then(|uris| uris.split_whitespace().next()) {
                return Some(uri.to_owned());
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// docs/benchmarks.md

fn render_markdown(
    report: &Report,
    m: &Machine,
    runs: usize,
    size: u64,
    quick: bool,
    chart: Option<&str>,
) -> String {
    let mut s = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench{}` on {}. Each figure is the median of {runs} run(s) \
         [min–max]; ours and the baseline ran in turns on the same machine, each command on \
         private Docker engines started for the run (containerd image store, data root on \
         the disk below). Ours is the `xtask` binary users run (`cargo xtask` = \
         target/debug/xtask, a {} build in which sha2, zstd, flate2 and tar are compiled at \
         opt-level 3). Synthetic image: {}.\n",
        if quick { " --quick" } else { "" },
        m.date,
        profile(),
        human_bytes(size)
    );
    s.push_str(&render_table(&report.rows));
    if let Some(chart) = chart {
        let _ = writeln!(
            s,
            "\n## Throughput against bundle size\n\n![Throughput against bundle size]({chart})\n\n\
             One run of each command per size (the largest size: the medians above).\n"
        );
        s.push_str(&render_points(&report.points));
    }
    s.push_str("\n## Notes\n\n");
    for note in &report.notes {
        let _ = writeln!(s, "- {note}");
    }
    let _ = writeln!(
        s,
        "\n## Machine\n\n\
         | | |\n|---|---|\n\
         | CPU | {} ({}) |\n| Cores | {} |\n| RAM | {} |\n\
         | Disk (work dir, data roots) | `{}` |\n| Kernel | {} |\n\
         | Docker Engine | {} |\n| buildx | {} |\n| Compose | {} |\n\
         | Load average at the end | {} |\n| Date | {} |",
        m.cpu,
        m.features,
        m.cores,
        m.ram,
        m.disk.split_whitespace().collect::<Vec<_>>().join(" "),
        m.kernel,
        m.docker,
        m.buildx,
        m.compose,
        m.load,
        m.date
    );
    s
}

/// Throughput (MB/s) against bundle size, as an SVG line chart: ours solid, the bare
/// engine command dashed in the same colour.
fn render_chart(points: &[Point]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 420.0;
    let (left, right, top, bottom) = (70.0, 200.0, 40.0, 50.0);
    // cache-verify (over 1 GB/s) would flatten the others: it is in the table below.
    type Series = (&'static str, &'static str, bool, fn(&Point) -> f64);
    let series: [Series; 4] = [
        ("cache-export", "#1f77b4", false, |p| p.export),
        ("docker save -o + sync", "#1f77b4", true, |p| p.save),
        ("cache-import", "#d62728", false, |p| p.import),
        ("docker load -i", "#d62728", true, |p| p.load),
    ];
    let mb = |v: f64| v / 1e6;
    let max_x = points.iter().map(|p| p.bytes).max().unwrap_or(1).max(1) as f64;
    let max_y = points
        .iter()
        .flat_map(|p| series.iter().map(move |s| mb((s.3)(p))))
        .fold(1.0_f64, f64::max);
    let step_y = nice_step(max_y / 5.0);
    let top_y = (max_y / step_y).ceil() * step_y;
    let step_x = nice_step(max_x / MIB as f64 / 5.0);
    let (pw, ph) = (W - left - right, H - top - bottom);
    let x = |bytes: f64| left + pw * bytes / max_x;
    let y = |v: f64| top + ph * (1.0 - v / top_y);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">Throughput against bundle size \
         (synthetic image, MB/s, higher is better)</text>\n"
    );
    let mut v = 0.0;
    while v <= top_y + step_y / 2.0 {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            left + pw,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0
        );
        v += step_y;
    }
    let mut m = step_x;
    while m * (MIB as f64) <= max_x * 1.0001 {
        let px = x(m * MIB as f64);
        let label = if m >= 1024.0 {
            format!("{:.1} GiB", m / 1024.0)
        } else {
            format!("{m:.0} MiB")
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#eee\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            top + ph,
            top + ph + 18.0
        );
        m += step_x;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">bundle size</text>\
         <line x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"black\"/>\
         <line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
        left + pw / 2.0,
        H - 10.0,
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    for (i, (label, colour, dashed, value)) in series.iter().enumerate() {
        let dash = if *dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.bytes as f64), y(mb(value(p)))))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
        for p in points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                x(p.bytes as f64),
                y(mb(value(p)))
            );
        }
        let ly = top + 10.0 + 22.0 * i as f64;
        let lx = left + pw + 16.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" \
             stroke-width=\"2\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            lx + 28.0,
            lx + 34.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}

/// The chart's points as a table, for readers without the picture.
fn render_points(points: &[Point]) -> String {
    let mut s = String::from(
        "| Bundle | cache-export | docker save -o + sync | cache-import | docker load -i | cache-verify |\n\
         |---|---|---|---|---|---|\n",
    );
    for p in points {
        let _ = writeln!(
            s,
            "| {} | {:.0} MB/s | {:.0} MB/s | {:.0} MB/s | {:.0} MB/s | {:.0} MB/s |",
            human_bytes(p.bytes),
            p.export / 1e6,
            p.save / 1e6,
            p.import / 1e6,
            p.load / 1e6,
            p.verify / 1e6
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_every_series_and_point() {
        let points: Vec<Point> = [256u64, 512, 1024, 2048]
            .iter()
            .map(|&m| Point {
                bytes: m * MIB,
                export: 60e6,
                save: 66e6,
                import: 70e6,
                load: 80e6,
                verify: 1.1e9,
            })
            .collect();
        let svg = render_chart(&points);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 16);
        // y up to 80 MB/s in steps of 20; x up to 2 GiB in steps of 500 MiB.
        assert!(
            svg.contains(">80</text>") && svg.contains("2.0 GiB"),
            "{svg}"
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            (nice_step(0.7), nice_step(3.0), nice_step(240.0)),
            (1.0, 5.0, 500.0)
        );
        assert!(render_points(&points).contains("| 2.0 GiB | 60 MB/s | 66 MB/s |"));
    }

    #[test]
    fn medians_and_ranges() {
        let s = Stat::of(&[3.0, 1.0, 2.0], Unit::Secs);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(s.render(), "2.00 s [1.00 s–3.00 s]");
        let s = Stat::of(&[4.0, 1.0, 2.0, 3.0], Unit::Secs);
        assert_eq!(s.median, 2.5);
        assert_eq!(Stat::of(&[0.0123], Unit::Millis).render(), "12.3 ms");
    }

    #[test]
    fn targets() {
        let secs = |v: f64| Stat::of(&[v], Unit::Secs);
        let row = Row::new(
            "x",
            secs(11.0),
            Some(("b", secs(10.0))),
            Target::RatioAtMost(1.15),
        );
        assert_eq!((row.ratio.as_str(), row.met), ("1.10×", Some(true)));
        let row = Row::new(
            "x",
            secs(2.0),
            Some(("b", secs(8.0))),
            Target::SpeedupAtLeast(5.0),
        );
        assert_eq!((row.ratio.as_str(), row.met), ("4.0× faster", Some(false)));
        let row = Row::new(
            "x",
            Stat::of(&[0.02], Unit::Millis),
            None,
            Target::AtMost(0.05),
        );
        assert_eq!(row.met, Some(true));
        let row = Row::new("x", secs(1.0), None, Target::None);
        assert_eq!((row.target.as_str(), row.met), ("—", None));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("3G"), Ok(3 << 30));
        assert_eq!(parse_size("200M"), Ok(200 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3X").is_err());
    }

    #[test]
    fn text_filler_compresses_and_random_does_not() {
        let mut text = Vec::new();
        Filler {
            state: 1,
            left: 1 << 16,
            text: true,
        }
        .read_to_end(&mut text)
        .unwrap();
        let mut random = Vec::new();
        Filler {
            state: 1,
            left: 1 << 16,
            text: false,
        }
        .read_to_end(&mut random)
        .unwrap();
        assert_eq!((text.len(), random.len()), (1 << 16, 1 << 16));
        let gz = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(data).unwrap();
            e.finish().unwrap().len()
        };
        assert!(gz(&text) * 2 < text.len(), "text compresses: {}", gz(&text));
        assert!(gz(&random) > random.len() * 99 / 100);
    }
}
