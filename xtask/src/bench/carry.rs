//! Carrying the app bundle to many builders and over slow links: a fleet of three offline
//! builders from one publish against an import on each (figure 9, issue 19), and the
//! packed bundle and delta bundles (figure 10, issue 20). Both start from the bundle the
//! app stack's first export wrote.

use std::time::Instant;

use anyhow::{ensure, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::cmd;

use super::files::{copy_project, copy_tree, dir_size, remove};
use super::stats::{Row, Stat, Target, Unit};
use super::timing::{alternate, series, timed, Sample};
use super::{Bench, Report, BENCH_SITE};
use crate::bundle::human_bytes;
use crate::lab::{fleet, Engine, EngineOptions, Registry, SharedNamespace};

/// Builders in the fleet.
const BUILDERS: usize = 3;
/// The fleet's registry, on loopback in the fleet's namespace.
const REGISTRY_PORT: u16 = 5000;
/// What a builder of the fleet needs of the bundle: what `patch-compose --registry` reads
/// (the manifest and its sums) and the wheelhouse, which stays a folder.
const FLEET_BUNDLE_PARTS: [&str; 3] = ["manifest.yaml", "SHA256SUMS", "pip-cache"];

/// Removes every image and the builder cache of `engine`.
pub(super) fn empty_engine(engine: &Engine) -> anyhow::Result<()> {
    let sh = engine.shell()?;
    let ids = engine.docker(&sh, ["images", "--all", "--quiet"]).read()?;
    let mut ids: Vec<&str> = ids.split_whitespace().collect();
    ids.sort_unstable();
    ids.dedup();
    if !ids.is_empty() {
        engine
            .docker(&sh, ["image", "rm", "--force"])
            .args(&ids)
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .ignore_status()
            .run()?;
    }
    engine
        .docker(&sh, ["builder", "prune", "--all", "--force"])
        .quiet()
        .ignore_stdout()
        .run()?;
    let left = engine.docker(&sh, ["images", "--all", "--quiet"]).read()?;
    ensure!(
        left.trim().is_empty(),
        "engine {} still has images after emptying it: {left}",
        engine.name()
    );
    Ok(())
}

/// One builder's folders: a project copy patched for the registry, one patched for an
/// imported bundle, and the bundle as each would hold it.
struct BuilderDirs {
    /// The project, patched with `--registry` (the fleet).
    fleet_project: Utf8PathBuf,
    /// What the fleet builder has of the bundle ([`FLEET_BUNDLE_PARTS`]).
    fleet_bundle: Utf8PathBuf,
    /// The project, patched with `--bundle` after an import (the baseline).
    import_project: Utf8PathBuf,
    /// A whole copy of the bundle, as carried to this builder (the baseline).
    import_bundle: Utf8PathBuf,
    /// This builder's log of every command.
    log: Utf8PathBuf,
}

impl BuilderDirs {
    fn make(b: &Bench, bundle: &Utf8Path, i: usize) -> anyhow::Result<BuilderDirs> {
        let root = b.work.join(format!("fleet-builder-{i}"));
        let dirs = BuilderDirs {
            fleet_project: root.join("fleet-project"),
            fleet_bundle: root.join("fleet-bundle"),
            import_project: root.join("import-project"),
            import_bundle: root.join("import-bundle"),
            log: root.join("commands.log"),
        };
        copy_project(&b.repo, &dirs.fleet_project)?;
        copy_project(&b.repo, &dirs.import_project)?;
        std::fs::create_dir_all(&dirs.fleet_bundle)?;
        for part in FLEET_BUNDLE_PARTS {
            let (src, dest) = (bundle.join(part), dirs.fleet_bundle.join(part));
            if src.is_dir() {
                copy_tree(&src, &dest, &[])?;
            } else {
                std::fs::copy(&src, &dest).with_context(|| format!("copying {src}"))?;
            }
        }
        copy_tree(bundle, &dirs.import_bundle, &[])?;
        Ok(dirs)
    }
}

/// `docker compose build` of `compose` on `builder` (plain progress, into `log`), then
/// checks that every step of it came from the cache.
fn cached_build(builder: &Engine, compose: &Utf8Path, log: &Utf8Path) -> anyhow::Result<f64> {
    let sh = builder.shell()?;
    let from = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let build = [
        "compose",
        "--progress",
        "plain",
        "-f",
        compose.as_str(),
        "build",
    ];
    let sample = timed(builder.docker(&sh, build), log, &[0])?;
    let all = std::fs::read(log).with_context(|| format!("reading {log}"))?;
    let text = String::from_utf8_lossy(&all[from as usize..]);
    let steps = fleet::outcomes(&text);
    ensure!(
        !steps.is_empty(),
        "builder {}: the build's log has no steps (see {log})",
        builder.name()
    );
    let ran = fleet::steps_that_ran(&text);
    ensure!(
        ran.is_empty(),
        "builder {}: steps ran instead of coming from the cache: {ran:#?} (see {log})",
        builder.name()
    );
    Ok(sample.secs)
}

/// Runs `each` on every builder at the same time; the wall time, and what each returned.
fn at_once<T: Send>(
    builders: &[Engine],
    dirs: &[BuilderDirs],
    each: impl Fn(&Engine, &BuilderDirs) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<(f64, Vec<T>)> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = builders
            .iter()
            .zip(dirs)
            .map(|(builder, dirs)| {
                let each = &each;
                scope.spawn(move || each(builder, dirs))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a builder thread panicked")))
            })
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    Ok((secs, results.into_iter().collect::<anyhow::Result<_>>()?))
}

/// What one run of the fleet measured.
struct FleetRun {
    publish: f64,
    builds: f64,
    /// The second publish of the same bundle: bytes and blobs it uploaded, its time.
    republish_bytes: u64,
    republish_blobs: u64,
    republish_secs: f64,
    pushed: usize,
}

/// Figure 9: a fleet of three offline builders (one network namespace with only loopback,
/// a Distribution registry in it, the registry as their Docker Hub mirror), built from one
/// `cache-publish`, against `cache-import` of the bundle and a build on each.
pub(super) fn measure_fleet(
    b: &Bench,
    bundle: &Utf8Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    eprintln!("   Measuring a fleet of {BUILDERS} builders: one publish vs an import on each");
    let ns = SharedNamespace::create(&BENCH_SITE, "fleet")?;
    let address = format!("127.0.0.1:{REGISTRY_PORT}");
    let on_disk = EngineOptions {
        data_in_memory: false,
        ..EngineOptions::default()
    };
    let builders = fleet::start_builders(&BENCH_SITE, "builder", BUILDERS, &ns, &address, on_disk)?;
    builders[0]
        .prove_offline(None)
        .context("a builder of the fleet is not offline")?;
    let dirs: Vec<BuilderDirs> = (1..=BUILDERS)
        .map(|i| BuilderDirs::make(b, bundle, i))
        .collect::<anyhow::Result<_>>()?;
    let mut fleet_runs: Vec<FleetRun> = Vec::new();
    let mut imports: Vec<f64> = Vec::new();
    let (fleet_samples, import_samples) = alternate(
        b.runs,
        || {
            let run = fleet_run(b, &ns, &address, &builders, &dirs, bundle)?;
            let secs = run.publish + run.builds;
            fleet_runs.push(run);
            Ok(sample(secs))
        },
        || import_run(b, &builders, &dirs, &mut imports),
    )?;
    for builder in &builders {
        empty_engine(builder)?;
    }
    drop(builders);
    drop(ns);
    let fleet_stat = Stat::of(&series(&fleet_samples), Unit::Secs);
    let import_stat = Stat::of(&series(&import_samples), Unit::Secs);
    report.rows.push(Row::new(
        "9. A fleet of 3 offline builders built from one `cache-publish` (publish + 3 cached builds at once)",
        fleet_stat,
        Some(("`cache-import` + build on each of the 3, at once", import_stat)),
        Target::RatioAtMost(1.0),
    ));
    let publishes: Vec<f64> = fleet_runs.iter().map(|r| r.publish).collect();
    let builds: Vec<f64> = fleet_runs.iter().map(|r| r.builds).collect();
    report.rows.push(Row::new(
        "9. `cache-publish` of the app bundle into an empty registry",
        Stat::of(&publishes, Unit::Secs),
        None,
        Target::None,
    ));
    // the most any run's re-publish pushed; the target, under one byte: nothing
    let republished = fleet_runs
        .iter()
        .map(|r| r.republish_bytes)
        .max()
        .unwrap_or(0);
    report.rows.push(Row::new(
        "9. Re-publish of the unchanged app bundle: bytes pushed (`bytes_uploaded` of `cache-publish --json`, the most of any run)",
        Stat::of(&[republished as f64], Unit::Bytes),
        None,
        Target::AtMost(1.0),
    ));
    let last = fleet_runs.last().context("no run of the fleet")?;
    report.notes.push(format!(
        "Figure 9: {BUILDERS} empty builder engines (data roots on disk) and a CNCF \
         Distribution registry (Debian's docker-registry, on 127.0.0.1:{REGISTRY_PORT}) share a \
         network namespace with only loopback; the registry is the builders' \
         `registry-mirrors` entry. Fleet: `cache-publish --registry` of the app bundle into \
         the emptied registry (median {:.1}s; {} references pushed), then on each builder at \
         the same time `patch-compose --registry` and `docker compose build` (median {:.1}s \
         for the three), every RUN and COPY step from the cache (checked in each builder's \
         log; a step that ran fails the figure). Baseline, as a site without a registry: on \
         each builder at the same time `cache-import` of its own copy of the bundle \
         (median {:.1}s each), `patch-compose --bundle` and `docker compose build`, every \
         step from the cache too. Copying the bundle to each host is not timed (it favours \
         the baseline). Target: the fleet is ready no later than the three imports \
         (ratio ≤ 1.0): the three builders share this machine's 2 cores and one disk, so \
         the fleet's gain (one publish instead of three imports) is all the target asks; \
         on separate hosts each import runs alone and each fleet builder only downloads. \
         Re-publish of the unchanged bundle right after: {} blobs, {} uploaded in {:.1}s.",
        median(&publishes),
        last.pushed,
        median(&builds),
        median(&imports),
        last.republish_blobs,
        human_bytes(last.republish_bytes),
        last.republish_secs,
    ));
    Ok(())
}

/// One run of the baseline: the builders emptied, then on each at the same time
/// `cache-import` of its copy of the bundle, `patch-compose --bundle` and a build that
/// must come from the cache. The wall time; each import's time is added to `imports`.
fn import_run(
    b: &Bench,
    builders: &[Engine],
    dirs: &[BuilderDirs],
    imports: &mut Vec<f64>,
) -> anyhow::Result<Sample> {
    let xtask = b.xtask.as_str();
    for builder in builders {
        empty_engine(builder)?;
    }
    let (secs, each) = at_once(builders, dirs, |builder, d| {
        let sh = builder.shell()?;
        let (bundle, compose) = (
            &d.import_bundle,
            d.import_project.join("docker-compose.yml"),
        );
        let import = timed(
            cmd!(
                sh,
                "{xtask} cache-import --bundle {bundle} --no-host-caches"
            ),
            &d.log,
            &[0],
        )?;
        timed(
            cmd!(sh, "{xtask} -f {compose} patch-compose --bundle {bundle}"),
            &d.log,
            &[0],
        )?;
        cached_build(builder, &compose, &d.log)?;
        Ok(import.secs)
    })?;
    imports.extend(each);
    Ok(sample(secs))
}

/// One run of the fleet: the builders emptied, a new registry, the publish, the three
/// builds at once, then the re-publish of the same bundle.
fn fleet_run(
    b: &Bench,
    ns: &SharedNamespace,
    address: &str,
    builders: &[Engine],
    dirs: &[BuilderDirs],
    bundle: &Utf8Path,
) -> anyhow::Result<FleetRun> {
    for builder in builders {
        empty_engine(builder)?;
    }
    let registry = Registry::start(&BENCH_SITE, ns, REGISTRY_PORT, None)?;
    let xtask = b.xtask.as_str();
    let first = fleet::publish(ns, xtask, &b.work, address, Some(bundle))
        .with_context(|| registry.log_tail())?;
    append(&b.log, "cache-publish (fleet)", &first.stderr)?;
    let pushed = first.summary["pushed"].as_array().map_or(0, Vec::len);
    ensure!(
        pushed > 0,
        "the first publish pushed nothing: {:#}",
        first.summary
    );
    let (builds, _) = at_once(builders, dirs, |builder, d| {
        let sh = builder.shell()?;
        let (bundle, compose) = (&d.fleet_bundle, d.fleet_project.join("docker-compose.yml"));
        timed(
            cmd!(
                sh,
                "{xtask} -f {compose} patch-compose --bundle {bundle} --registry {address} --insecure"
            ),
            &d.log,
            &[0],
        )?;
        cached_build(builder, &compose, &d.log)
    })
    .with_context(|| registry.log_tail())?;
    let again = fleet::publish(ns, xtask, &b.work, address, Some(bundle))?;
    append(&b.log, "cache-publish again (fleet)", &again.stderr)?;
    let number = |key: &str| {
        again.summary[key]
            .as_u64()
            .with_context(|| format!("no {key} in the re-publish's summary: {:#}", again.summary))
    };
    Ok(FleetRun {
        publish: first.secs,
        builds,
        republish_bytes: number("bytes_uploaded")?,
        republish_blobs: number("blobs_uploaded")?,
        republish_secs: again.secs,
        pushed,
    })
}

fn sample(secs: f64) -> Sample {
    Sample {
        secs,
        peak_rss: None,
        tree_peak_rss: None,
    }
}

fn median(values: &[f64]) -> f64 {
    Stat::of(values, Unit::Secs).median
}

/// Appends what a command said to the run's log.
fn append(log: &Utf8Path, what: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)?;
    writeln!(file, "\n$ {what}\n{text}")?;
    Ok(())
}

/// The size of the parts `--split` cuts the app bundle into.
const SPLIT: &str = "100M";

/// Figure 10: `cache-pack` of the app bundle as one tar and as `--split` parts (sizes and
/// times, against `tar cf` of the folder), the import of the packed form against the
/// folder's, and delta bundles (`cache-export --since`) for a one-line change and a
/// dependency bump.
pub(super) fn measure_carry(
    b: &Bench,
    bundle: &Utf8Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    measure_pack(b, bundle, report)?;
    measure_deltas(b, bundle, report)
}

fn measure_pack(b: &Bench, bundle: &Utf8Path, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("   Measuring cache-pack of the app bundle (one tar, --split {SPLIT})");
    let (esh, xtask, log) = (&b.esh, &b.xtask, &b.log);
    let folder = dir_size(bundle)?;
    let packs = b.work.join("packs");
    let (one, split) = (packs.join("one"), packs.join("split"));
    let tarball = packs.join("tar-cf.tar");
    let (dir, name) = (
        bundle.parent().context("the bundle has no parent")?,
        bundle.file_name().context("the bundle has no name")?,
    );
    let (packed, tar_cf) = alternate(
        b.runs,
        || {
            remove(&one)?;
            std::fs::create_dir_all(&one)?;
            let out = format!("{one}/");
            timed(
                cmd!(esh, "{xtask} cache-pack --bundle {bundle} --output {out}"),
                log,
                &[0],
            )
        },
        || {
            remove(&tarball)?;
            std::fs::create_dir_all(&packs)?;
            timed(cmd!(esh, "tar cf {tarball} -C {dir} {name}"), log, &[0])
        },
    )?;
    let mut split_runs = Vec::new();
    for _ in 0..b.runs {
        remove(&split)?;
        std::fs::create_dir_all(&split)?;
        let out = format!("{split}/");
        split_runs.push(timed(
            cmd!(
                esh,
                "{xtask} cache-pack --bundle {bundle} --split {SPLIT} --output {out}"
            ),
            log,
            &[0],
        )?);
    }
    let tar_cf_stat = Stat::of(&series(&tar_cf), Unit::Secs);
    let tar_path = one.join(format!("{name}.tar"));
    let tar_size = std::fs::metadata(&tar_path)
        .with_context(|| format!("cache-pack wrote no {tar_path}"))?
        .len();
    let split_size = dir_size(&split)?;
    let index = split.join(format!("{name}.pack-index"));
    let parts: Vec<u64> = std::fs::read_dir(&split)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tar.part-"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .collect();
    ensure!(
        index.is_file() && !parts.is_empty(),
        "cache-pack --split wrote no index and parts in {split}"
    );
    let folder_stat = Stat::of(&[folder as f64], Unit::Bytes);
    report.rows.push(Row::new(
        "10. `cache-pack` of the app bundle, one tar: time",
        Stat::of(&series(&packed), Unit::Secs),
        Some(("`tar cf` of the folder", tar_cf_stat.clone())),
        Target::None,
    ));
    report.rows.push(Row::new(
        "10. `cache-pack` of the app bundle, one tar: size",
        Stat::of(&[tar_size as f64], Unit::Bytes),
        Some(("the bundle folder", folder_stat.clone())),
        Target::RatioAtMost(1.01),
    ));
    report.rows.push(Row::new(
        &format!("10. `cache-pack --split {SPLIT}` of the app bundle: time"),
        Stat::of(&series(&split_runs), Unit::Secs),
        Some(("`tar cf` of the folder", tar_cf_stat)),
        Target::None,
    ));
    report.rows.push(Row::new(
        &format!("10. `cache-pack --split {SPLIT}` of the app bundle: size (parts, index and sh importer)"),
        Stat::of(&[split_size as f64], Unit::Bytes),
        Some(("the bundle folder", folder_stat)),
        Target::RatioAtMost(1.01),
    ));
    remove(&one)?;
    remove(&tarball)?;
    measure_packed_import(b, bundle, &index, report)?;
    report.notes.push(format!(
        "Figure 10, packing: `cache-pack` writes the app bundle ({} in {} files) as one \
         uncompressed tar ({}), hashing every part as it writes; `--split {SPLIT}` as {} \
         parts ({}) and an index. The baseline `tar cf` of the folder hashes nothing. \
         Target for the sizes: the tar adds its headers only (≤ 1.01× the folder), since \
         the contents are compressed already; the times have no target.",
        human_bytes(folder),
        crate::bundle::list_files(bundle)?.len(),
        human_bytes(tar_size),
        parts.len(),
        parts
            .iter()
            .map(|p| human_bytes(*p))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    remove(&packs)?;
    Ok(())
}

/// The packed form's import (`cache-import --pack` of the split parts: unpacked, checked,
/// into a new bundle folder, then imported) against `cache-import` of the folder, on an
/// emptied target engine.
fn measure_packed_import(
    b: &Bench,
    bundle: &Utf8Path,
    index: &Utf8Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    eprintln!("   Measuring the import of the packed bundle vs the folder's");
    let (tsh, xtask, log) = (&b.tsh, &b.xtask, &b.log);
    let unpacked = b.work.join("unpacked-bundle");
    let (from_pack, from_folder) = alternate(
        b.runs,
        || {
            empty_engine(&b.target)?;
            remove(&unpacked)?;
            timed(
                cmd!(
                    tsh,
                    "{xtask} cache-import --pack {index} --bundle {unpacked} --no-host-caches"
                ),
                log,
                &[0],
            )
        },
        || {
            empty_engine(&b.target)?;
            timed(super::import_into_target(b, bundle), log, &[0])
        },
    )?;
    remove(&unpacked)?;
    report.rows.push(Row::new(
        &format!(
            "10. Import of the app bundle from its `--split {SPLIT}` parts (cache-import --pack)"
        ),
        Stat::of(&series(&from_pack), Unit::Secs),
        Some((
            "`cache-import` of the folder",
            Stat::of(&series(&from_folder), Unit::Secs),
        )),
        Target::RatioAtMost(1.5),
    ));
    report.notes.push(
        "Figure 10, importing the packed form: `cache-import --pack INDEX` streams the parts \
         in order into a new bundle folder, checking each part's and each file's sha256 \
         (the builds read their cache from that folder, so it is the one copy on the \
         server's disk), then imports that folder as any other; against `cache-import` of \
         the bundle folder, each on an emptied target engine. Target: carrying the bundle \
         packed costs at most half again the folder's import (≤ 1.5×)."
            .into(),
    );
    Ok(())
}

/// The dependency bump of figure 10: a pinned version of backend/requirements.txt
/// changed to another that PyPI has (pure Python, for the image's Python 3.9).
const BUMP: (&str, &str, &str) = (
    "backend/requirements.txt",
    "python-dotenv==1.0.1",
    "python-dotenv==1.0.0",
);

/// Figure 10's deltas: `cache-export --since` the app bundle from a copy of the project
/// with a one-line change (figure 4's), and from one with a dependency bump.
fn measure_deltas(b: &Bench, bundle: &Utf8Path, report: &mut Report) -> anyhow::Result<()> {
    let full = dir_size(bundle)?;
    let full_stat = Stat::of(&[full as f64], Unit::Bytes);
    let cases: [(&str, &str, Target); 2] = [
        (
            "line",
            "a one-line change (backend/app and frontend/app)",
            Target::RatioAtMost(0.10),
        ),
        (
            "bump",
            "a dependency bump (backend/requirements.txt)",
            Target::RatioAtMost(0.25),
        ),
    ];
    let mut said = Vec::new();
    for (key, what, target) in cases {
        eprintln!("   Measuring cache-export --since the app bundle after {what}");
        let project = b.work.join(format!("app-delta-{key}"));
        remove(&project)?;
        copy_project(&b.repo, &project)?;
        match key {
            "line" => super::app::change_one_line(&project)?,
            _ => {
                let (file, from, to) = BUMP;
                let path = project.join(file);
                let text = std::fs::read_to_string(&path)?;
                ensure!(text.contains(from), "{file} has no {from} to bump");
                std::fs::write(&path, text.replace(from, to))?;
            }
        }
        let compose = project.join("docker-compose.yml");
        let (esh, xtask) = (&b.esh, &b.xtask);
        let mut runs = Vec::new();
        let out = b.work.join(format!("delta-{key}"));
        for _ in 0..b.runs {
            remove(&out)?;
            runs.push(timed(
                cmd!(
                    esh,
                    "{xtask} -f {compose} cache-export --pull never --since {bundle} --output {out}"
                ),
                &b.log,
                &[0],
            )?);
        }
        let size = dir_size(&out)?;
        let carried = crate::bundle::list_files(&out)?.len();
        report.rows.push(Row::new(
            &format!("10. Delta bundle (`cache-export --since`) after {what}: size"),
            Stat::of(&[size as f64], Unit::Bytes),
            Some(("the full bundle", full_stat.clone())),
            target,
        ));
        report.rows.push(Row::new(
            &format!("10. Delta bundle (`cache-export --since`) after {what}: export time"),
            Stat::of(&series(&runs), Unit::Secs),
            None,
            Target::None,
        ));
        said.push(format!("{what}: {} in {carried} files", human_bytes(size)));
        remove(&out)?;
        remove(&project)?;
    }
    report.notes.push(format!(
        "Figure 10, delta bundles: `cache-export --since` the app bundle ({}) on the export \
         engine (its build cache warm from the exports above, so the export rebuilds only the \
         changed steps), from a copy of the project with {}; the delta's size is the whole \
         folder it wrote (manifest and sums included). The dependency bump is `{}` → `{}` in \
         {}: the wheelhouse gains a wheel and the install step's layer, which holds every \
         dependency, is carried again. Targets: a one-line change carries at most a tenth of \
         the bundle; a dependency bump at most a quarter (the install layer is carried whole). \
         Sizes: {}.",
        human_bytes(full),
        "a line appended to backend/app/main.py and to frontend/app/page.tsx (figure 4's \
         change), and from one with a dependency bump",
        BUMP.1,
        BUMP.2,
        BUMP.0,
        said.join("; "),
    ));
    Ok(())
}
