//! `cargo xtask cache-status`: is the bundle still good for what the repository holds now?
//!
//! Per build service: which files changed, were added or were removed since the export
//! (the Dockerfile, requirements and lockfiles, and every file the build context sends,
//! its `.dockerignore` applied: context.rs), and whether the bundle can still rebuild it
//! offline: its base images are in the bundle, every pinned requirement has a wheel in the
//! wheelhouse, every lockfile tarball is in the npm cache. Exit code 1 when a service
//! cannot be rebuilt, or when the compose file points the builds at folders that are gone
//! (a moved bundle).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use camino::Utf8Path;
use serde::Serialize;
use xshell::Shell;

use crate::bundle;
use crate::bundle_arg::BundleArg;
use crate::deps::npm_cache;
use crate::deps::wheelhouse;
use crate::model::manifest::{Manifest, ServiceEntry};
use crate::model::plan::{BuildService, Plan};
use crate::model::requirements;
use crate::project::ProjectArgs;
use crate::project::RealFs;

/// Say per service whether the bundle is stale and whether it can still rebuild offline
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  cargo xtask cache-status\n  \
    cargo xtask cache-status --json   # exit 1 when a service cannot be rebuilt offline")]
pub struct Args {
    #[command(flatten)]
    pub bundle: BundleArg,
    /// Print the status as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    /// Inputs whose content differs from the export (or that are new or gone).
    pub changed: Vec<String>,
    /// Why the bundle cannot rebuild this service offline; empty when it can.
    pub missing: Vec<String>,
    pub can_rebuild_offline: bool,
    /// The bundle records the build context, so changed code is in `changed`; false for a
    /// bundle made before it did (re-export to check code).
    pub context_checked: bool,
}

impl Args {
    pub fn run(self, sh: &Shell, project_args: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let project = project_args.load(sh)?;
        project.check_host_folders()?;
        let plan = Plan::build(&project.model, &project.name, &RealFs)?;
        let dir = self.bundle.dir(sh, project_args)?;
        let manifest = bundle::read_manifest(&dir)?;
        let statuses = plan
            .build_services
            .iter()
            .map(|service| service_status(&project.dir, &dir, &manifest, service))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&statuses)?);
        }
        for s in &statuses {
            let state = match (s.changed.is_empty(), s.can_rebuild_offline) {
                (true, true) => "fresh",
                (false, true) => "stale, can rebuild offline",
                (_, false) => "CANNOT rebuild offline",
            };
            eprintln!("{:>12} {state}", s.name);
            if !s.context_checked && s.can_rebuild_offline {
                eprintln!(
                    "             the bundle does not record the build context; re-export to \
                     check code"
                );
            }
            // All of them in --json; on the terminal, enough to see what happened.
            const SHOWN: usize = 20;
            for c in s.changed.iter().take(SHOWN) {
                eprintln!("             changed since the export: {c}");
            }
            if s.changed.len() > SHOWN {
                eprintln!(
                    "             … and {} more changed files (`--json` lists them all)",
                    s.changed.len() - SHOWN
                );
            }
            for m in &s.missing {
                eprintln!("             missing from the bundle: {m}");
            }
        }
        let blocked: Vec<&str> = statuses
            .iter()
            .filter(|s| !s.can_rebuild_offline)
            .map(|s| s.name.as_str())
            .collect();
        if blocked.is_empty() {
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!(
                "error: the bundle in {dir} cannot rebuild {} offline; run `cargo xtask \
                 cache-export` again on a machine with network and carry the new bundle over",
                blocked.join(", ")
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn service_status(
    project_dir: &Utf8Path,
    bundle_dir: &Utf8Path,
    manifest: &Manifest,
    service: &BuildService,
) -> anyhow::Result<ServiceStatus> {
    let entry = manifest.services.iter().find(|s| s.name == service.name);
    let mut missing = Vec::new();
    let Some(entry) = entry else {
        return Ok(ServiceStatus {
            name: service.name.clone(),
            changed: vec!["the service is not in the bundle".into()],
            missing: vec!["the whole service: it was added after the export".into()],
            can_rebuild_offline: false,
            context_checked: false,
        });
    };

    let (changed, context_checked) = changed_files(project_dir, bundle_dir, entry, service)?;

    let bundled: Vec<&str> = manifest.images.iter().map(|i| i.name.as_str()).collect();
    for image in &service.base_images {
        if !bundled.contains(&image.as_str()) {
            missing.push(format!("base image {image}"));
        }
    }

    if !service.python_requirements.is_empty() {
        let read = |p: &Utf8Path| std::fs::read_to_string(p);
        let set = requirements::collect(&service.python_requirements, &read)?;
        let pins: Vec<String> = set
            .requirements
            .iter()
            .filter(|r| r.pinned.is_some())
            .map(|r| format!("{}=={}", r.name, r.pinned.as_deref().unwrap_or_default()))
            .collect();
        match &entry.wheelhouse {
            None => missing.push("the wheelhouse (exported without pip-cache)".into()),
            Some(rel) => {
                let wheels: Vec<String> = bundle::list_files(&bundle_dir.join(rel))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|f| f.ends_with(".whl"))
                    .collect();
                for pin in wheelhouse::missing_pins(&wheels, &pins) {
                    missing.push(format!("wheel for {pin} in {rel}/"));
                }
            }
        }
    }

    for lockfile in &service.node_lockfiles {
        let text =
            std::fs::read_to_string(lockfile).with_context(|| format!("reading {lockfile}"))?;
        let tarballs =
            npm_cache::parse_lockfile(&text).with_context(|| format!("reading {lockfile}"))?;
        match &entry.npm_cache {
            None => missing.push("the npm cache (exported without npm-cache)".into()),
            Some(rel) => {
                // What the image installs: its libc's packages when the export asked it,
                // else the engine's os/cpu with both libcs.
                let libc = entry.npm_libc.as_deref().unwrap_or("");
                let platform =
                    npm_cache::NodePlatform::from_docker("linux", &manifest.engine.arch, libc);
                let selection = if entry.npm_libc.is_some() {
                    npm_cache::Selection::Platforms {
                        on: vec![platform],
                        except: Vec::new(),
                    }
                } else {
                    npm_cache::Selection::OsCpu(vec![platform])
                };
                let wanted: Vec<npm_cache::Tarball> = tarballs
                    .into_iter()
                    .filter(|t| selection.includes(t))
                    .collect();
                let check = npm_cache::missing(&bundle_dir.join(rel), &wanted);
                for t in check.missing {
                    missing.push(format!("npm tarball {} in {rel}/", t.spec()));
                }
            }
        }
    }

    Ok(ServiceStatus {
        name: service.name.clone(),
        can_rebuild_offline: missing.is_empty(),
        context_checked,
        changed,
        missing,
    })
}

/// The files that changed, were added (` (added)`) or were removed (` (removed)`) since
/// the export, relative to the compose file's folder: the inputs, and every file of the
/// build context when the bundle records it (the second value says whether it does).
fn changed_files(
    project_dir: &Utf8Path,
    bundle_dir: &Utf8Path,
    entry: &ServiceEntry,
    service: &BuildService,
) -> anyhow::Result<(Vec<String>, bool)> {
    let mut now = BTreeMap::new();
    for file in service
        .dockerfile
        .iter()
        .chain(&service.python_requirements)
        .chain(&service.node_lockfiles)
    {
        let (_, digest) = bundle::hash_file(file).with_context(|| format!("hashing {file}"))?;
        let rel = file
            .strip_prefix(project_dir)
            .map_or_else(|_| file.to_string(), |p| p.to_string());
        now.insert(rel, digest);
    }
    let inputs = crate::context::compare(&entry.inputs, &now);
    // The code: every file the build context sends, as the export recorded it. A file
    // that is both an input and in the context (the Dockerfile) is named once.
    let in_project = |rel: &str| {
        let file = service.context.join(rel);
        file.strip_prefix(project_dir)
            .map_or_else(|_| file.to_string(), |p| p.to_string())
    };
    let code = match &entry.context_files {
        Some(then) => {
            let now = crate::context::fingerprint(
                &service.context,
                service.dockerfile.as_deref(),
                &[bundle_dir],
            )?;
            let c = crate::context::compare(then, &now);
            let named = |v: Vec<String>| v.iter().map(|p| in_project(p)).collect::<Vec<_>>();
            Some(crate::context::Changes {
                changed: named(c.changed),
                added: named(c.added),
                removed: named(c.removed),
            })
        }
        None => None,
    };
    let mut changed = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (paths, suffix) in [
        (&inputs.changed, ""),
        (&inputs.added, " (added)"),
        (&inputs.removed, " (removed)"),
    ]
    .into_iter()
    .chain(code.iter().flat_map(|c| {
        [
            (&c.changed, ""),
            (&c.added, " (added)"),
            (&c.removed, " (removed)"),
        ]
    })) {
        for path in paths {
            if seen.insert(path.clone()) {
                changed.push(format!("{}{suffix}", printable(path)));
            }
        }
    }
    Ok((changed, code.is_some()))
}

/// A path from the manifest (hostile input) as it can be printed: quoted when it holds
/// control characters.
fn printable(path: &str) -> String {
    if path.chars().any(char::is_control) {
        format!("{path:?}")
    } else {
        path.to_string()
    }
}
