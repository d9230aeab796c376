//! `cargo xtask cache-import`: verifies a bundle, then loads it into the engine.
//!
//! Nothing is loaded from a bundle that does not verify. Images already present with the
//! same ID are skipped, so a second import (or one after an interrupted run) ends in the
//! same state. The images archive is decompressed here and streamed into `docker load`,
//! so engines that cannot read zstd work too.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use xshell::Shell;

use crate::bundle::{self, BundleLock};
use crate::bundle_arg::{BundleArg, TrustArgs};
use crate::docker::Docker;
use crate::images;
use crate::import;
use crate::model::manifest::Manifest;
use crate::project::ProjectArgs;

/// Verify a bundle and load it into the Docker engine
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  cargo xtask cache-import\n  \
    cargo xtask cache-import --bundle /mnt/usb/docker-build-cache --json
  \
    cargo xtask cache-import --pack /mnt/usb/docker-build-cache.pack-index   # parts of cache-pack --split
  \
    cargo xtask cache-import --bundle /mnt/usb/delta --base /srv/docker-build-cache   # a delta (cache-export --since)

\
    With --pack, the pack (one tar, or the parts its index names) is unpacked into the \
    bundle folder (--bundle; it must hold no bundle yet, and nothing there is replaced), \
    every part and file checked as it streams, as `cache-unpack` does; that folder is then \
    imported. The builds read their \
    cache from that folder, so it is the one copy on this disk; the pack can stay on its \
    medium. A missing, extra, reordered or damaged part is refused by name before anything \
    is loaded, and leaves no folder.

\
    A delta bundle is completed with its base (--base, or the folder beside it whose digest \
    it names) into a full bundle folder (--complete-into; files hard-linked, or copied, each \
    checked), which is then imported; the base is never modified. With no base folder, the \
    engine stands in for it when every file the delta expects from its base is a file of \
    images the engine holds with the same IDs (saved from the engine, each checked); \
    otherwise the error names the files only the base folder has.")]
pub struct Args {
    #[command(flatten)]
    pub bundle: BundleArg,
    /// Import from a pack (NAME.pack-index with its parts beside it, or NAME.tar from
    /// cache-pack): unpacked, checked, into the bundle folder (--bundle), then imported
    #[arg(long, value_name = "INDEX_OR_TAR")]
    pub pack: Option<Utf8PathBuf>,
    /// Print a summary as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// Leave the host alone: do not merge the npm cache into ~/.npm
    #[arg(long)]
    pub no_host_caches: bool,
    /// Unpack the bundle's node_modules.tar.gz into the node service's build context
    #[arg(long)]
    pub extract_node_modules: bool,
    /// With --extract-node-modules: replace an existing node_modules (swapped in whole)
    #[arg(long, requires = "extract_node_modules")]
    pub force: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// For a delta bundle: the folder of the bundle it builds on (default: the folder
    /// beside the delta whose digest is the one the delta names)
    #[arg(long, value_name = "DIR")]
    pub base: Option<Utf8PathBuf>,
    /// For a delta bundle: the folder to write the full bundle into (default: the delta's
    /// folder name with `-full`, beside it); then patch-compose --bundle that folder
    #[arg(long, value_name = "DIR")]
    pub complete_into: Option<Utf8PathBuf>,
}

#[derive(Serialize)]
struct Summary {
    bundle: String,
    /// The pack it was unpacked from (--pack).
    #[serde(skip_serializing_if = "Option::is_none")]
    unpacked_from: Option<String>,
    verified_files: usize,
    verified_bytes: u64,
    images_loaded: Vec<String>,
    images_present: Vec<String>,
    build_caches: Vec<String>,
    digest: String,
    npm_images: Vec<String>,
    npm_merged_into: Vec<String>,
    /// A delta: its base, the full bundle it completes to, what it carries.
    delta: Option<crate::delta::DeltaSummary>,
    seconds: f64,
}

impl Args {
    pub fn run(self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        let dir = self.bundle.dir(sh, project)?;
        let trust = self.trust.trust(sh)?;
        let unpacked_from = match &self.pack {
            Some(_) if trust.signers.is_some() => bail!(
                "a pack does not carry SHA256SUMS.sig, so --allowed-signers cannot be checked \
                 on it: unpack it with `cargo xtask cache-unpack`, put the signature beside \
                 its SHA256SUMS, then import that folder with --allowed-signers"
            ),
            Some(pack) => Some(unpack_pack(sh, pack, &dir, trust.digest.as_deref())?),
            None => None,
        };
        let _lock = BundleLock::acquire(&dir, "cache-import", false)?;
        let (manifest, digest) = bundle::read_checked_any(&dir, &trust)?;
        eprintln!("      Digest sha256:{digest}");
        let delta = crate::delta::DeltaSummary::of(&manifest);
        let (dir, manifest, digest) = match &manifest.base {
            Some(_) => self.complete(sh, &dir, &manifest)?,
            None => (dir, manifest, digest),
        };
        // Where the npm caches go, known before anything is loaded.
        let npm_home = match self.no_host_caches {
            true => None,
            false => npm_home(&manifest)?,
        };
        let docker = Docker::new(sh);
        let engine = docker.probe()?;
        let (present, to_load) = import::partition(&docker, &manifest)?;
        let archive = import::images_archive(&manifest);
        // The images archive (or the layout's files), when it is loaded, is verified while
        // it streams (below).
        let streamed = import::streamed_files(&manifest, archive.as_ref(), !to_load.is_empty());
        let report = bundle::verify_bundle(&dir, &manifest, true, &streamed)?;
        if !report.ok() {
            images::name_damaged_streamed(&dir, &manifest, &streamed);
            bail!("nothing was imported from {dir}: it does not verify (files named above)");
        }
        // node_modules (node_modules.rs, archive.rs): before any image is loaded.
        if self.extract_node_modules {
            crate::deps::node_modules::extract_for_project(
                sh, project, &dir, &manifest, self.force,
            )?;
        }
        import::warn_if_unusable(manifest.strategy, engine.containerd_store);
        if !to_load.is_empty() {
            import::load(&docker, &engine, &dir, &manifest, archive.as_ref())?;
        }
        for name in &present {
            eprintln!("     Present {name} (same ID, not loaded again)");
        }
        let npm_images = import::make_npm_images(&docker, &engine, &dir, &manifest);
        let mut build_caches: Vec<String> = manifest
            .services
            .iter()
            .filter_map(|s| s.build_cache.as_ref().map(|c| dir.join(c).to_string()))
            .collect();
        build_caches.sort();
        build_caches.dedup();
        for cache in &build_caches {
            eprintln!("       Ready build cache {cache}");
        }
        let npm_merged = if self.no_host_caches {
            Vec::new()
        } else {
            fill_host_caches(&dir, &manifest, npm_home.as_deref())?
        };
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "    Finished import of {} images ({} loaded, {} already present) in {secs:.1}s",
            manifest.images.len(),
            to_load.len(),
            present.len()
        );
        match &delta {
            Some(_) => eprintln!(
                "        Next: `cargo xtask patch-compose --bundle {dir}`, then `docker compose build`"
            ),
            None => eprintln!("        Next: `cargo xtask patch-compose`, then `docker compose build`"),
        }
        if self.json {
            let summary = Summary {
                bundle: dir.to_string(),
                unpacked_from: unpacked_from.map(|p| p.to_string()),
                verified_files: report.files,
                verified_bytes: report.bytes,
                images_loaded: to_load,
                images_present: present,
                build_caches,
                digest: format!("sha256:{digest}"),
                npm_images,
                npm_merged_into: npm_merged,
                delta,
                seconds: secs,
            };
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Args {
    /// The delta in `dir` completed with its base into a full bundle folder (checked as
    /// it is written): that folder, its manifest and digest. The base is only read.
    fn complete(
        &self,
        sh: &Shell,
        dir: &Utf8Path,
        delta: &Manifest,
    ) -> anyhow::Result<(Utf8PathBuf, Manifest, String)> {
        let cwd = crate::project::current_dir(sh)?;
        let base_dir = self
            .base
            .as_ref()
            .map(|b| crate::project::absolute(&cwd, b));
        let found = crate::delta::find_base(dir, delta, base_dir.as_deref())
            .context("nothing was imported")?;
        let dest = match &self.complete_into {
            Some(d) => crate::project::absolute(&cwd, d),
            None => dir.with_file_name(format!("{}-full", dir.file_name().unwrap_or("bundle"))),
        };
        crate::bundle_arg::check_usable_by_builds(&dest)?;
        let (carried, total) = (delta.carried().count(), delta.files.len());
        // No base folder: the engine's images stand in for it where they can.
        let staging = dest.with_file_name(format!(
            ".{}.from-engine-{}",
            dest.file_name().unwrap_or("bundle"),
            std::process::id()
        ));
        let from_engine = found.is_none();
        let base_dir = match found {
            Some((base_dir, _)) => {
                eprintln!(
                    "  Completing the delta ({carried} of {total} files) with its base {base_dir} into {dest}"
                );
                base_dir
            }
            None => {
                let docker = Docker::new(sh);
                let taken = crate::delta::base_from_engine(&docker, dir, delta, &staging);
                let taken = match taken {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&staging);
                        return Err(e).context("nothing was imported");
                    }
                };
                eprintln!(
                    "  Completing the delta ({carried} of {total} files) with the {taken} files \
                     of its base that are files of the engine's images, into {dest}"
                );
                staging.clone()
            }
        };
        let completed = crate::delta::complete(dir, delta, &base_dir, &dest);
        if from_engine {
            let _ = std::fs::remove_dir_all(&staging);
        }
        let (full, digest) = completed.context("nothing was imported")?;
        eprintln!("      Digest sha256:{digest} (the full bundle)");
        Ok((dest, full, digest))
    }
}

/// Unpacks the pack at `pack` into the bundle folder `dir`, which holds no bundle (the
/// parts and files checked as they stream, the bundle digest against `expect` before any
/// file is read); returns the pack's absolute path.
fn unpack_pack(
    sh: &Shell,
    pack: &Utf8Path,
    dir: &Utf8Path,
    expect: Option<&str>,
) -> anyhow::Result<Utf8PathBuf> {
    let pack = crate::project::absolute(&crate::project::current_dir(sh)?, pack);
    crate::bundle_arg::check_usable_by_builds(dir)?;
    let source = crate::pack::Source::open(&pack)
        .with_context(|| format!("nothing was imported from {pack}"))?;
    eprintln!("   Unpacking {pack} into {dir}");
    let report = crate::pack::unpack_into(&source, dir, expect)
        .with_context(|| format!("nothing was imported from {pack}"))?;
    eprintln!(
        "    Unpacked {} files, {} in {:.2}s, every part and file checked",
        report.files,
        bundle::human_bytes(report.bytes),
        report.seconds
    );
    Ok(pack)
}

/// `~/.npm`, when the bundle has npm caches to merge there: HOME must be set, and absolute
/// (an empty one would merge into `./.npm`).
fn npm_home(manifest: &Manifest) -> anyhow::Result<Option<camino::Utf8PathBuf>> {
    let any = manifest
        .services
        .iter()
        .any(|s| s.npm_cache.is_some() || s.npm_host_cache.is_some());
    if !any {
        return Ok(None);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let home = camino::Utf8PathBuf::from(home);
    if !home.is_absolute() {
        bail!(
            "HOME is not set (or not an absolute path), so the npm caches cannot be merged \
             into ~/.npm; set HOME, or pass --no-host-caches. Nothing was loaded"
        );
    }
    Ok(Some(home.join(".npm")))
}

/// The host's caches: a hint for pip, and the npm caches merged into `npm_home` (~/.npm).
/// Returns where they were merged.
fn fill_host_caches(
    dir: &Utf8Path,
    manifest: &Manifest,
    npm_home: Option<&Utf8Path>,
) -> anyhow::Result<Vec<String>> {
    let mut npm_merged = Vec::new();
    for service in &manifest.services {
        if let Some(rel) = &service.wheelhouse {
            eprintln!(
                "        Hint {}: pip on this host can install from the wheelhouse: {}",
                service.name,
                crate::deps::wheelhouse::host_hint(&dir.join(rel))
            );
        }
    }
    let npm_dirs: Vec<&String> = manifest
        .services
        .iter()
        .flat_map(|s| [s.npm_cache.as_ref(), s.npm_host_cache.as_ref()])
        .flatten()
        .collect();
    if let (false, Some(dest)) = (npm_dirs.is_empty(), npm_home) {
        for rel in npm_dirs {
            let report = crate::deps::npm_cache::merge_into(&dir.join(rel), dest)
                .with_context(|| format!("merging {rel} into {dest}"))?;
            eprintln!(
                "      Merged {rel} into {dest} ({} new files, nothing deleted)",
                report.content_files
            );
            npm_merged.push(dest.to_string());
        }
    }
    Ok(npm_merged)
}
