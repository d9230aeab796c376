//! `cargo xtask cache-import`: verifies a bundle, then loads it into the engine.
//!
//! Nothing is loaded from a bundle that does not verify. Images already present with the
//! same ID are skipped, so a second import (or one after an interrupted run) ends in the
//! same state. The images archive is decompressed here and streamed into `docker load`,
//! so engines that cannot read zstd work too.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use anyhow::{bail, Context as _};
use serde::Serialize;
use xshell::Shell;

use crate::bundle::{self, human_bytes, BundleLock};
use crate::cache_verify::{verify_bundle, BundleArg};
use crate::docker::Docker;
use crate::model::manifest::{Compression, FileEntry, Manifest, Strategy};
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
        let manifest = bundle::read_manifest(&dir)?;
        let mut present = Vec::new();
        let mut to_load = Vec::new();
        for image in &manifest.images {
            match docker.image_id(&image.name)? {
                Some(id) if id == image.id => present.push(image.name.clone()),
                _ => to_load.push(image.name.clone()),
            }
        }
        let archive = manifest
            .files
            .iter()
            .find(|f| f.path.starts_with("base-images.tar"))
            .cloned();
        // The images archive, when it is loaded, is verified while it streams (below).
        let streamed: Vec<String> = archive
            .iter()
            .filter(|_| !to_load.is_empty())
            .map(|a| a.path.clone())
            .collect();
        let report = verify_bundle(&dir, true, &streamed)?;
        if !report.ok() {
            bail!("nothing was imported from {dir}: it does not verify (files named above)");
        }
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

        if !to_load.is_empty() {
            let archive = archive
                .as_ref()
                .context("the manifest lists images but no base-images.tar archive")?;
            preflight_disk(&docker, &engine.docker_root_dir, &manifest, archive.size)?;
            load_images(&docker, &dir, archive, manifest.compression)?;
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

/// Streams the images archive into `docker load`, decompressed here, while hashing the
/// archive as it is read. The last chunk is held back until the digest is known: an
/// archive that does not match its manifest never reaches the end of the stream, and
/// `docker load` is killed before it could tag anything. One pass over the data.
fn load_images(
    docker: &Docker,
    dir: &camino::Utf8Path,
    entry: &FileEntry,
    compression: Compression,
) -> anyhow::Result<()> {
    let archive = dir.join(&entry.path);
    eprintln!(
        "     Loading images from {archive} ({})",
        human_bytes(entry.size)
    );
    let started = Instant::now();
    let file = File::open(&archive).with_context(|| format!("opening {archive}"))?;
    let actual_size = file.metadata()?.len();
    if actual_size != entry.size {
        bail!(
            "{}: {actual_size} bytes, expected {} (truncated or grown); nothing was loaded. \
             Copy it again from the export machine",
            entry.path,
            entry.size
        );
    }
    let state = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let hashed = SharedHash {
        inner: BufReader::with_capacity(bundle::BUFFER, file),
        state: Arc::clone(&state),
    };
    let reader: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(hashed),
        Compression::Zstd => Box::new(zstd::stream::Decoder::new(hashed)?),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(hashed)),
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
    let ahead = bundle::ReadAhead::new(reader);
    let mut progress = crate::progress::Progress::new("Loading", None);
    let mut pending: Option<Vec<u8>> = None;
    let mut streamed = 0u64;
    let mut failure: Option<std::io::Error> = None;
    let mut load_failed: Option<std::io::Error> = None;
    while let Some(chunk) = ahead.next_chunk() {
        match chunk {
            bundle::Chunk::Data(buf) => {
                if let Some(previous) = pending.replace(buf) {
                    if let Err(e) = stdin.write_all(&previous) {
                        load_failed = Some(e);
                        break;
                    }
                    streamed += previous.len() as u64;
                    progress.set(streamed);
                    ahead.recycle(previous);
                }
            }
            bundle::Chunk::Failed(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(ahead);
    progress.done();
    if let Some(e) = load_failed {
        // docker load stopped reading: the engine went away or refused the stream. The
        // archive is not to blame; what docker load said is the message.
        let _ = child.kill();
        let _ = child.wait();
        let err = err_reader.join().unwrap_or_default();
        bail!(
            "`docker load` stopped before the end of {archive} ({e}): {}; is the engine \
             still running? Nothing that was cut short is tagged; run cache-import again",
            if err.trim().is_empty() {
                "no message"
            } else {
                err.trim()
            }
        );
    }
    let (digest, read) = {
        let state = state
            .lock()
            .map_err(|_| anyhow::anyhow!("hashing thread failed"))?;
        (bundle::hex(&state.0.clone().finalize()), state.1)
    };
    let intact = failure.is_none() && read == entry.size && digest == entry.sha256;
    if !intact {
        // Killed before the end of the stream: nothing gets tagged.
        let _ = child.kill();
        let _ = child.wait();
        if let Some(e) = failure.filter(|_| read == entry.size && digest == entry.sha256) {
            let err = err_reader.join().unwrap_or_default();
            bail!(
                "streaming {archive} into docker load failed: {e}; {}",
                err.trim()
            );
        }
        if read != entry.size {
            bail!(
                "{}: only {read} of {} bytes are a valid {} archive (damaged); nothing was \
                 loaded. Copy it again from the export machine",
                entry.path,
                entry.size,
                match compression {
                    Compression::None => "tar",
                    Compression::Zstd => "zstd",
                    Compression::Gzip => "gzip",
                }
            );
        }
        bail!(
            "{}: sha256 {digest}, expected {} (corrupted); nothing was loaded. Copy it again \
             from the export machine",
            entry.path,
            entry.sha256
        );
    }
    if let Some(last) = pending.take() {
        stdin
            .write_all(&last)
            .with_context(|| format!("streaming {archive} into docker load"))?;
        streamed += last.len() as u64;
    }
    drop(stdin);
    let status = child.wait()?;
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("`docker load` of {archive} failed: {}", err.trim());
    }
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("      {}", line.trim());
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "      Loaded {} (verified while streaming) in {secs:.1}s ({}/s)",
        human_bytes(streamed),
        human_bytes((streamed as f64 / secs.max(1e-6)) as u64)
    );
    Ok(())
}

/// Hashes and counts the archive's bytes as the decompressor reads them.
struct SharedHash<R> {
    inner: R,
    state: Arc<Mutex<(Sha256, u64)>>,
}

impl<R: Read> Read for SharedHash<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut state) = self.state.lock() {
            state.0.update(&buf[..n]);
            state.1 += n as u64;
        }
        Ok(n)
    }
}
