//! The patched text of a project's compose files: what `patch-compose` writes, and what
//! `cache-rehearse` builds from (a copy, on its throwaway engine). What to add comes from
//! the bundle's manifest when there is one, else from the plan; the edit itself is
//! `model::compose_patch`. The engine `sh` points at is asked what it can read.

use std::collections::BTreeSet;

use anyhow::Context as _;
use camino::Utf8Path;
use xshell::Shell;

use crate::bundle;
use crate::docker::{choose_strategy, Docker};
use crate::model::compose_patch;
use crate::model::layout;
use crate::model::manifest::{Manifest, Strategy};
use crate::model::plan::Plan;
use crate::model::registry::FleetRegistry;
use crate::project::{Project, RealFs};

/// The patched text of each file of the project's set.
pub fn patched_texts(
    sh: &Shell,
    project: &Project,
    bundle_dir: &Utf8Path,
    originals: &[String],
    forced: Option<Strategy>,
    fleet: Option<&FleetRegistry>,
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
    // A builder of a fleet reads a bundle of strategy local from the registry.
    let (strategy, local_cache) = match fleet {
        Some(_) => (Strategy::Local, true),
        None => strategy_for(sh, manifest.as_ref(), forced)?,
    };
    if manifest.is_none() {
        eprintln!(
            "    Patching from the plan: no bundle in {bundle_dir} yet; paths are those \
             cache-export will write (strategy {})",
            strategy.as_str()
        );
    }
    let npm_images = match (&manifest, strategy) {
        _ if fleet.is_some() => BTreeSet::new(),
        (Some(m), Strategy::Local) if local_cache => usable_npm_images(sh, m),
        _ => BTreeSet::new(),
    };
    let target = layout::OfflineTarget {
        bundle_dir,
        project_name: &plan.project_name,
        strategy,
        local_cache,
        npm_images: &npm_images,
        registry: fleet,
    };
    let patches = layout::offline_patches(&plan, manifest.as_ref(), &target);
    let texts: Vec<&str> = originals.iter().map(String::as_str).collect();
    let per_file = compose_patch::patches_per_file(&texts, &patches)?;
    let mut out = Vec::new();
    for ((file, text), patches) in project.compose_files.iter().zip(&texts).zip(per_file) {
        out.push(compose_patch::apply(text, &patches).with_context(|| format!("patching {file}"))?);
    }
    Ok((out, plan))
}

/// The strategy to patch for, and whether this engine can read a `type=local` cache.
/// The engine is asked only when neither the bundle nor --strategy decides, or, for a
/// bundle with a `type=local` cache, whether this engine can read it.
fn strategy_for(
    sh: &Shell,
    manifest: Option<&Manifest>,
    forced: Option<Strategy>,
) -> anyhow::Result<(Strategy, bool)> {
    let engine = match (manifest, forced) {
        (Some(m), _) if m.strategy != Strategy::Local => None,
        // --strategy is the user's decision for the engine that will build.
        (None, Some(_)) => None,
        _ => Docker::new(sh).probe().ok(),
    };
    let strategy = match (manifest, forced, &engine) {
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
