//! `cargo xtask patch-compose`: points the compose file's builds at the imported bundle.
//!
//! What to add comes from the bundle's manifest when there is one (the strategy it was
//! exported with, its cache folders and images), else from the plan, with the names and
//! paths the export will produce. The edit itself is `model::compose_patch`: lossless,
//! idempotent and reversible. Paths are absolute: compose resolves a `type=local,src=` in
//! `cache_from` against the directory it is run from, not the compose file's folder.
//! The npm cache is handed over as the image cache-import made of it (`docker-image://`,
//! npm_image.rs) when the engine has it, else as its folder.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context as _;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::bundle;
use crate::bundle_arg::BundleArg;
use crate::docker::{choose_strategy, Docker};
use crate::model::compose_patch;
use crate::model::layout;
use crate::model::manifest::{Manifest, Strategy};
use crate::model::plan::{self, Plan};
use crate::project::ProjectArgs;
use crate::project::RealFs;

/// Rewrite the compose file so builds use the imported bundle
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  cargo xtask patch-compose\n  \
    cargo xtask patch-compose --check      # exit 1 when not fully patched (CI)\n  \
    cargo xtask patch-compose --diff       # show what would change\n  \
    cargo xtask patch-compose --revert     # take the additions back out\n  \
    cargo xtask patch-compose --output docker-compose.offline.yml")]
pub struct Args {
    #[command(flatten)]
    pub bundle: BundleArg,
    /// Remove what patch-compose added, restoring the original bytes
    #[arg(long)]
    pub revert: bool,
    /// Write nothing; exit 1 when the file is not (fully) patched, 0 when it is
    #[arg(long, conflicts_with_all = ["diff", "output"])]
    pub check: bool,
    /// Write nothing; print the unified diff of the change
    #[arg(long, conflicts_with = "output")]
    pub diff: bool,
    /// Write the result to FILE instead of rewriting the compose file
    #[arg(long, value_name = "FILE")]
    pub output: Option<Utf8PathBuf>,
    /// Strategy to patch for when there is no bundle yet (default: the engine's best)
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
}

impl Args {
    pub fn run(self, sh: &Shell, project_args: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let project = project_args.load(sh)?;
        // Every file of the project's set (compose.override.yml, COMPOSE_FILE, -f …): each
        // service is patched in the file that gives it its build section.
        let files = &project.compose_files;
        let mut originals = Vec::new();
        for file in files {
            originals
                .push(std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?);
        }
        let bundle_dir = self.bundle.dir(sh, project_args)?;
        if !self.revert {
            crate::bundle_arg::check_usable_by_builds(&bundle_dir)?;
        }
        let (patched, plan) = if self.revert {
            let reverted = files
                .iter()
                .zip(&originals)
                .map(|(file, text)| {
                    compose_patch::revert(text).with_context(|| format!("reverting {file}"))
                })
                .collect::<anyhow::Result<Vec<String>>>()?;
            (reverted, None)
        } else {
            let (patched, plan) = self.patched(sh, &project, &bundle_dir, &originals)?;
            (patched, Some(plan))
        };
        let changed: Vec<usize> = (0..files.len())
            .filter(|&i| patched[i] != originals[i])
            .collect();
        let verb = if self.revert { "reverted" } else { "patched" };
        if self.check {
            if !self.revert {
                project.check_host_folders()?;
            }
            if changed.is_empty() {
                for file in files {
                    eprintln!("    {file} is {verb}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            for &i in &changed {
                eprintln!(
                    "error: {} is not {verb}; run `cargo xtask patch-compose{}`",
                    files[i],
                    if self.revert { " --revert" } else { "" }
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        if self.diff {
            if changed.is_empty() {
                eprintln!("   Unchanged {}", files[0]);
            }
            for &i in &changed {
                print_diff(sh, &files[i], &originals[i], &patched[i])?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(out) = &self.output {
            let out = crate::project::absolute(&crate::project::current_dir(sh)?, out);
            let one = match changed.as_slice() {
                [] => 0,
                [i] => *i,
                _ => anyhow::bail!(
                    "--output writes one file, and {} files of the project change ({}); run \
                     without --output to patch each in place, or name one file with -f",
                    changed.len(),
                    changed
                        .iter()
                        .map(|&i| files[i].as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            write_keeping_permissions(&out, &files[one], patched[one].as_bytes())?;
            eprintln!(
                "     {} {out}",
                if self.revert { "Reverted" } else { "Patched" }
            );
            if let Some(plan) = &plan {
                say_next(plan, project_args, Some(&out));
            }
            return Ok(ExitCode::SUCCESS);
        }
        if changed.is_empty() {
            eprintln!("   Unchanged {} (already {verb})", files[0]);
        }
        for &i in &changed {
            write_keeping_permissions(&files[i], &files[i], patched[i].as_bytes())?;
            eprintln!(
                "     {} {}",
                if self.revert { "Reverted" } else { "Patched" },
                files[i]
            );
        }
        if let Some(plan) = &plan {
            say_next(plan, project_args, None);
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The patched text of each file of the project's set.
    fn patched(
        &self,
        sh: &Shell,
        project: &crate::project::Project,
        bundle_dir: &Utf8Path,
        originals: &[String],
    ) -> anyhow::Result<(Vec<String>, Plan)> {
        let plan = Plan::build(&project.model, &project.name, &RealFs)?;
        for warning in &plan.warnings {
            eprintln!("warning: {warning}");
        }
        // A delta is refused (it lacks its base's files); no bundle at all is not an error.
        let manifest = match bundle::read_checked_any(bundle_dir, &bundle::Trust::default()) {
            Ok((m, _)) if m.base.is_some() => return Err(bundle::needs_base(bundle_dir, &m)),
            Ok((m, _)) => Some(m),
            Err(_) => None,
        };
        let (strategy, local_cache) = self.strategy_for(sh, manifest.as_ref())?;
        if manifest.is_none() {
            eprintln!(
                "    Patching from the plan: no bundle in {bundle_dir} yet; paths are those \
                 cache-export will write (strategy {})",
                strategy.as_str()
            );
        }
        let npm_images = match (&manifest, strategy) {
            (Some(m), Strategy::Local) if local_cache => usable_npm_images(sh, m),
            _ => BTreeSet::new(),
        };
        let target = layout::OfflineTarget {
            bundle_dir,
            project_name: &plan.project_name,
            strategy,
            local_cache,
            npm_images: &npm_images,
        };
        let patches = layout::offline_patches(&plan, manifest.as_ref(), &target);
        let texts: Vec<&str> = originals.iter().map(String::as_str).collect();
        let per_file = compose_patch::patches_per_file(&texts, &patches)?;
        let mut out = Vec::new();
        for ((file, text), patches) in project.compose_files.iter().zip(&texts).zip(per_file) {
            out.push(
                compose_patch::apply(text, &patches).with_context(|| format!("patching {file}"))?,
            );
        }
        Ok((out, plan))
    }

    /// The strategy to patch for, and whether this engine can read a `type=local` cache.
    /// The engine is asked only when neither the bundle nor --strategy decides, or, for a
    /// bundle with a `type=local` cache, whether this engine can read it.
    fn strategy_for(
        &self,
        sh: &Shell,
        manifest: Option<&Manifest>,
    ) -> anyhow::Result<(Strategy, bool)> {
        let engine = match (manifest, self.strategy) {
            (Some(m), _) if m.strategy != Strategy::Local => None,
            // --strategy is the user's decision for the engine that will build.
            (None, Some(_)) => None,
            _ => Docker::new(sh).probe().ok(),
        };
        let strategy = match (manifest, self.strategy, &engine) {
            (Some(m), _, _) => m.strategy,
            (None, Some(s), _) => s,
            (None, None, Some(engine)) => choose_strategy(engine, None)?,
            (None, None, None) => {
                eprintln!(
                    "warning: no bundle and no Docker engine answered, so the strategy cannot \
                     be chosen from the engine: patching for `local` (containerd image store, \
                     buildx, compose v2). Pass --strategy inline or legacy for another engine"
                );
                Strategy::Local
            }
        };
        let mut local_cache = true;
        if let (Strategy::Local, Some(engine)) = (strategy, &engine) {
            if !engine.containerd_store {
                local_cache = false;
                eprintln!(
                    "warning: this engine uses the classic image store, whose docker driver \
                     cannot read a `type=local` cache: leaving the build-cache folders out of \
                     cache_from (the builds would fail on them). Export with --strategy inline \
                     for this engine, or enable the containerd image store \
                     (\"features\": {{\"containerd-snapshotter\": true}} in daemon.json)"
                );
            }
        }
        if strategy == Strategy::Legacy {
            eprintln!(
                "warning: strategy legacy: the cache images serve the classic builder through \
                 `cache_from` with docker-compose v1 or `DOCKER_BUILDKIT=0 docker build \
                 --cache-from …`; compose v2 does not pass `cache_from` to the classic builder. \
                 With compose v2, export with --strategy local (containerd image store) or inline"
            );
        }
        Ok((strategy, local_cache))
    }
}

/// What to run next: `docker compose build`, or, where a service starts `FROM` an image
/// another service builds, one build per round of the plan. Compose (before 2.33, which
/// offline servers run) builds every service at once and would look for that image before
/// it exists: offline, a failed pull.
fn say_next(plan: &Plan, project_args: &ProjectArgs, output: Option<&Utf8Path>) {
    let mut compose = String::from("docker compose");
    match output {
        Some(out) => compose.push_str(&format!(" -f {out}")),
        None => {
            for file in &project_args.file {
                compose.push_str(&format!(" -f {file}"));
            }
        }
    }
    if let Some(name) = &project_args.project_name {
        compose.push_str(&format!(" -p {name}"));
    }
    let commands = plan::offline_build_commands(plan, &compose);
    if let [only] = commands.as_slice() {
        eprintln!("        Next: `{only}`");
        return;
    }
    let uses: Vec<String> = plan
        .built_here
        .iter()
        .filter_map(|b| {
            let builds: Vec<&str> = b
                .used_by
                .iter()
                .map(String::as_str)
                .filter(|u| plan.build_services.iter().any(|s| s.name == *u))
                .collect();
            let who = match builds.as_slice() {
                [] => return None,
                [one] => format!("service {one} builds on"),
                many => format!("services {} build on", many.join(", ")),
            };
            Some(format!(
                "{who} {}, which service {} builds",
                b.image, b.service
            ))
        })
        .collect();
    eprintln!(
        "        Note {}: `docker compose build` alone builds every service at once and would \
         look for such an image before it exists (offline: a failed pull). Build in this \
         order, as the export did:",
        uses.join("; ")
    );
    for command in commands {
        eprintln!("                 {command}");
    }
}

/// The manifest's npm cache images that this engine has (cache-import makes them). For
/// one it lacks, says what the build will do instead.
fn usable_npm_images(sh: &Shell, manifest: &Manifest) -> BTreeSet<String> {
    let docker = Docker::new(sh);
    let mut usable = BTreeSet::new();
    for service in &manifest.services {
        let Some(image) = &service.npm_image else {
            continue;
        };
        match docker.image_layers(image) {
            Ok(Some(_)) => {
                usable.insert(image.clone());
            }
            Ok(None) | Err(_) => eprintln!(
                "warning: service {}: this engine has no {image} (`cargo xtask cache-import` \
                 makes it; import-build-cache.sh does not): handing the build the folder {} \
                 instead, so `npm ci` and the steps after it will run again (offline)",
                service.name,
                service.npm_cache.as_deref().unwrap_or("npm-cache")
            ),
        }
    }
    usable
}

fn print_diff(sh: &Shell, file: &Utf8Path, old: &str, new: &str) -> anyhow::Result<()> {
    if old == new {
        eprintln!("   Unchanged {file}");
        return Ok(());
    }
    let dir = sh.create_temp_dir()?;
    let dir = Utf8PathBuf::from_path_buf(dir.path().to_path_buf())
        .map_err(|p| anyhow::anyhow!("temporary folder {} is not UTF-8", p.display()))?;
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::write(&a, old)?;
    std::fs::write(&b, new)?;
    let (la, lb) = (
        format!("a/{}", file.file_name().unwrap_or("compose")),
        format!("b/{}", file.file_name().unwrap_or("compose")),
    );
    let out = cmd!(sh, "diff -u --label {la} --label {lb} {a} {b}")
        .ignore_status()
        .quiet()
        .read()?;
    println!("{out}");
    Ok(())
}

/// Writes through a temporary file beside `target` and a rename, with the permissions of
/// `like` (the compose file).
fn write_keeping_permissions(
    target: &Utf8Path,
    like: &Utf8Path,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let perms = std::fs::metadata(like).map(|m| m.permissions()).ok();
    let tmp = bundle::temp_sibling(target);
    let result = (|| -> std::io::Result<()> {
        std::fs::write(&tmp, bytes)?;
        if let Some(perms) = perms {
            std::fs::set_permissions(&tmp, perms)?;
        }
        std::fs::rename(&tmp, target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {target}"));
    }
    Ok(())
}
