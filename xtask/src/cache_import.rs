//! `cargo xtask cache-import`: verifies a bundle, then loads it into the engine.
//!
//! Nothing is loaded from a bundle that does not verify. Images already present with the
//! same ID are skipped, so a second import (or one after an interrupted run) ends in the
//! same state. The images archive is decompressed here and streamed into `docker load`,
//! so engines that cannot read zstd work too.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde::Serialize;
use xshell::Shell;

use crate::bundle::{self, human_bytes, BundleLock};
use crate::cache_verify::{verify_bundle, BundleArg};
use crate::docker::Docker;
use crate::model::manifest::{Compression, Manifest, Strategy};
use crate::project::ProjectArgs;

/// Verify a bundle and load it into the Docker engine
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  cargo xtask cache-import\n  \
    cargo xtask cache-import --bundle /mnt/usb/docker-build-cache --json")]
pub struct Args {
    #[command(flatten)]
    pub bundle: BundleArg,
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
}

#[derive(Serialize)]
struct Summary {
    bundle: String,
    verified_files: usize,
    verified_bytes: u64,
    images_loaded: Vec<String>,
    images_present: Vec<String>,
    build_caches: Vec<String>,
    npm_merged_into: Vec<String>,
    seconds: f64,
}

impl Args {
    pub fn run(self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        let dir = self.bundle.dir(sh, project)?;
        let _lock = BundleLock::acquire(&dir, "cache-import")?;
        let docker = Docker::new(sh);
        let engine = docker.probe()?;
        let report = verify_bundle(&dir, true)?;
        if !report.ok() {
            bail!("nothing was imported from {dir}: it does not verify (files named above)");
        }
        let manifest = bundle::read_manifest(&dir)?;
        // node_modules (node_modules.rs, archive.rs): before any image is loaded.
        if self.extract_node_modules {
            crate::node_modules::extract_for_project(sh, project, &dir, &manifest, self.force)?;
        }
        match (manifest.strategy, engine.containerd_store) {
            (Strategy::Local, false) => eprintln!(
                "warning: the bundle's build cache is BuildKit `type=local` (exported from a \
                 containerd image store), which this engine's classic store cannot read: the \
                 images load, but builds will not use that cache. Export again with \
                 --strategy inline for this engine, or enable its containerd image store"
            ),
            (Strategy::Inline, true) => eprintln!(
                "warning: the bundle's cache images carry inline cache, which BuildKit on this \
                 engine's containerd image store looks up in a registry: builds will not use \
                 it offline. Export again with --strategy local for this engine"
            ),
            _ => {}
        }

        let mut present = Vec::new();
        let mut to_load = Vec::new();
        for image in &manifest.images {
            match docker.image_id(&image.name)? {
                Some(id) if id == image.id => present.push(image.name.clone()),
                _ => to_load.push(image.name.clone()),
            }
        }
        if !to_load.is_empty() {
            let archive = manifest
                .files
                .iter()
                .find(|f| f.path.starts_with("base-images.tar"))
                .context("the manifest lists images but no base-images.tar archive")?;
            preflight_disk(&docker, &engine.docker_root_dir, &manifest, archive.size)?;
            load_images(
                &docker,
                &dir.join(&archive.path),
                manifest.compression,
                archive.size,
            )?;
            for image in &manifest.images {
                match docker.image_id(&image.name)? {
                    Some(id) if id == image.id => {}
                    Some(id) => eprintln!(
                        "warning: {} is {id} after the load, the bundle has {}; a tag was moved",
                        image.name, image.id
                    ),
                    None => bail!("{} is missing after `docker load`", image.name),
                }
            }
        }
        for name in &present {
            eprintln!("     Present {name} (same ID, not loaded again)");
        }
        let build_caches: Vec<String> = manifest
            .services
            .iter()
            .filter_map(|s| s.build_cache.as_ref().map(|c| dir.join(c).to_string()))
            .collect();
        for cache in &build_caches {
            eprintln!("       Ready build cache {cache}");
        }
        let mut npm_merged = Vec::new();
        if !self.no_host_caches {
            for service in &manifest.services {
                if let Some(rel) = &service.wheelhouse {
                    eprintln!(
                        "        Hint {}: pip on this host can install from the wheelhouse: {}",
                        service.name,
                        crate::wheelhouse::host_hint(&dir.join(rel))
                    );
                }
            }
            let npm_dirs: Vec<&String> = manifest
                .services
                .iter()
                .filter_map(|s| s.npm_cache.as_ref())
                .collect();
            if !npm_dirs.is_empty() {
                let home =
                    std::env::var("HOME").context("HOME is not set; pass --no-host-caches")?;
                let dest = camino::Utf8PathBuf::from(home).join(".npm");
                for rel in npm_dirs {
                    let report = crate::npm_cache::merge_into(&dir.join(rel), &dest)
                        .with_context(|| format!("merging {rel} into {dest}"))?;
                    eprintln!(
                        "      Merged {rel} into {dest} ({} new files, nothing deleted)",
                        report.content_files
                    );
                    npm_merged.push(dest.to_string());
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "    Finished import of {} images ({} loaded, {} already present) in {secs:.1}s",
            manifest.images.len(),
            to_load.len(),
            present.len()
        );
        eprintln!("        Next: `cargo xtask patch-compose`, then `docker compose build`");
        if self.json {
            let summary = Summary {
                bundle: dir.to_string(),
                verified_files: report.files,
                verified_bytes: report.bytes,
                images_loaded: to_load,
                images_present: present,
                build_caches,
                npm_merged_into: npm_merged,
                seconds: secs,
            };
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Refuses to start a load that cannot fit, saying how much is needed.
fn preflight_disk(
    docker: &Docker,
    root: &str,
    manifest: &Manifest,
    archive_size: u64,
) -> anyhow::Result<()> {
    // Compressed archives unpack to about 2-3x; the store keeps layers unpacked too.
    let factor = match manifest.compression {
        Compression::None => 2,
        _ => 4,
    };
    let needed = archive_size.saturating_mul(factor);
    if let Some(free) = docker.free_bytes(camino::Utf8Path::new(root)) {
        if free < needed {
            bail!(
                "not enough free disk for the images: about {} needed in {root}, {} free; \
                 free some space (`docker system prune`) and import again",
                human_bytes(needed),
                human_bytes(free)
            );
        }
    }
    Ok(())
}

fn load_images(
    docker: &Docker,
    archive: &camino::Utf8Path,
    compression: Compression,
    size: u64,
) -> anyhow::Result<()> {
    eprintln!("     Loading images from {archive} ({})", human_bytes(size));
    let started = Instant::now();
    let file = File::open(archive).with_context(|| format!("opening {archive}"))?;
    let counted = CountingReader {
        inner: BufReader::with_capacity(bundle::BUFFER, file),
        count: 0,
        progress: crate::progress::Progress::new("Loading", Some(size)),
    };
    let mut reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(counted),
        Compression::Zstd => Box::new(zstd::stream::Decoder::new(counted)?),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counted)),
    };
    let mut child = docker.spawn_load()?;
    let mut stdin = child.stdin.take().context("docker load has no stdin")?;
    let mut stdout = child.stdout.take().context("docker load has no stdout")?;
    let mut stderr = child.stderr.take().context("docker load has no stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut buf = vec![0u8; bundle::BUFFER];
    let copy_result: std::io::Result<u64> = (|| {
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            stdin.write_all(&buf[..n])?;
            total += n as u64;
        }
        Ok(total)
    })();
    drop(stdin);
    let status = child.wait()?;
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("`docker load` of {archive} failed: {}", err.trim());
    }
    let raw = copy_result.with_context(|| format!("streaming {archive} into docker load"))?;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("      {}", line.trim());
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "      Loaded {} in {secs:.1}s ({}/s)",
        human_bytes(raw),
        human_bytes((raw as f64 / secs.max(1e-6)) as u64)
    );
    Ok(())
}

struct CountingReader<R> {
    inner: R,
    count: u64,
    progress: crate::progress::Progress,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        self.progress.set(self.count);
        Ok(n)
    }
}
