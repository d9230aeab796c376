//! `cargo xtask cache-import`: verifies a bundle, then loads it into the engine.
//!
//! Nothing is loaded from a bundle that does not verify. Images already present with the
//! same ID are skipped, so a second import (or one after an interrupted run) ends in the
//! same state. The images archive is decompressed here and streamed into `docker load`,
//! so engines that cannot read zstd work too.

use std::fs::File;
use std::io::{BufReader, Read};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use anyhow::{bail, Context as _};
use serde::Serialize;
use xshell::Shell;

use crate::bundle::{self, human_bytes, BundleLock};
use crate::bundle_arg::BundleArg;
use crate::docker::{stream_into_load, Docker};
use crate::model::manifest::{Compression, FileEntry, ImageLayout, Manifest, Strategy};
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
    npm_images: Vec<String>,
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
        // The images archive (or the layout's files), when it is loaded, is verified while
        // it streams (below).
        let streamed: Vec<String> = match &manifest.image_layout {
            _ if to_load.is_empty() => Vec::new(),
            Some(layout) => layout.entries.iter().map(|e| e.path.clone()).collect(),
            None => archive.iter().map(|a| a.path.clone()).collect(),
        };
        let report = bundle::verify_bundle(&dir, true, &streamed)?;
        if !report.ok() {
            bail!("nothing was imported from {dir}: it does not verify (files named above)");
        }
        // node_modules (node_modules.rs, archive.rs): before any image is loaded.
        if self.extract_node_modules {
            crate::deps::node_modules::extract_for_project(
                sh, project, &dir, &manifest, self.force,
            )?;
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
            if let Some(layout) = &manifest.image_layout {
                let files = layout_files(&dir, layout, &manifest.files)?;
                let size = files.iter().map(|(_, _, f)| f.size).sum();
                preflight_disk(&docker, &engine.docker_root_dir, &manifest, size)?;
                load_layout(&docker, &dir, files)?;
            } else {
                let archive = archive
                    .as_ref()
                    .context("the manifest lists images but no base-images.tar archive")?;
                preflight_disk(&docker, &engine.docker_root_dir, &manifest, archive.size)?;
                load_images(&docker, &dir, archive, manifest.compression)?;
            }
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
        // The npm caches as images (npm_image.rs), made from the verified folders: what
        // patch-compose hands to the builds so that cached ones never read the folder.
        let mut npm_images = Vec::new();
        if manifest.strategy == Strategy::Local && engine.containerd_store {
            for service in &manifest.services {
                let (Some(image), Some(rel)) = (&service.npm_image, &service.npm_cache) else {
                    continue;
                };
                match crate::deps::npm_image::ensure(
                    &docker,
                    &dir.join(rel),
                    &manifest.project_name,
                    &service.name,
                    &engine.arch,
                    Some(image),
                ) {
                    Ok(made) => {
                        if !made.loaded {
                            eprintln!("     Present {image} (same layer, not made again)");
                        }
                        npm_images.push(made.reference);
                    }
                    Err(e) => eprintln!(
                        "warning: service {}: {e:#}; patch-compose will hand the build the \
                         folder {rel} instead, and `npm ci` and the steps after it will run \
                         again (offline)",
                        service.name
                    ),
                }
            }
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
            if !npm_dirs.is_empty() {
                let home =
                    std::env::var("HOME").context("HOME is not set; pass --no-host-caches")?;
                let dest = camino::Utf8PathBuf::from(home).join(".npm");
                for rel in npm_dirs {
                    let report = crate::deps::npm_cache::merge_into(&dir.join(rel), &dest)
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
                npm_images,
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
    stream_into_load(docker, archive.as_str(), reader, |failure| {
        let (digest, read) = {
            let state = state
                .lock()
                .map_err(|_| anyhow::anyhow!("hashing thread failed"))?;
            (bundle::hex(&state.0.clone().finalize()), state.1)
        };
        let intact = read == entry.size && digest == entry.sha256;
        match failure {
            None if intact => Ok(()),
            Some(e) if intact => bail!("streaming {archive} into docker load failed: {e}"),
            _ if read != entry.size => bail!(
                "{}: only {read} of {} bytes are a valid {} archive (damaged); nothing was \
                 loaded. Copy it again from the export machine",
                entry.path,
                entry.size,
                match compression {
                    Compression::None => "tar",
                    Compression::Zstd => "zstd",
                    Compression::Gzip => "gzip",
                }
            ),
            _ => bail!(
                "{}: sha256 {digest}, expected {} (corrupted); nothing was loaded. Copy it \
                 again from the export machine",
                entry.path,
                entry.sha256
            ),
        }
    })
}

/// The layout's entries: tar name, file, and what the manifest says of the file.
fn layout_files(
    dir: &camino::Utf8Path,
    layout: &ImageLayout,
    files: &[FileEntry],
) -> anyhow::Result<Vec<(String, camino::Utf8PathBuf, FileEntry)>> {
    layout
        .entries
        .iter()
        .map(|e| {
            let file = files
                .iter()
                .find(|f| f.path == e.path)
                .with_context(|| format!("manifest.yaml does not list {}", e.path))?;
            Ok((e.name.clone(), dir.join(&e.path), file.clone()))
        })
        .collect()
}

/// Streams the saved images back into `docker load` as the tar `docker save` wrote, built
/// here from the layout's files, each checked against the manifest as it streams (the last
/// chunk is held back as for an archive).
fn load_layout(
    docker: &Docker,
    dir: &camino::Utf8Path,
    files: Vec<(String, camino::Utf8PathBuf, FileEntry)>,
) -> anyhow::Result<()> {
    let total: u64 = files.iter().map(|(_, _, f)| f.size).sum();
    eprintln!(
        "     Loading images from {dir} ({} files, {})",
        files.len(),
        human_bytes(total)
    );
    let what = format!("the saved images in {dir}");
    stream_into_load(
        docker,
        &what,
        Box::new(LayoutTar::new(files)),
        |failure| match failure {
            None => Ok(()),
            Some(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                bail!("{e}; nothing was loaded. Copy it again from the export machine")
            }
            Some(e) => bail!("reading {what}: {e}; nothing was loaded"),
        },
    )
}

/// A tar of the layout's files, made as it is read: a header, the file's bytes (hashed as
/// they go; a file that does not match the manifest ends the stream with `InvalidData`),
/// padding, and at the end the two zero blocks.
struct LayoutTar {
    files: std::vec::IntoIter<(String, camino::Utf8PathBuf, FileEntry)>,
    parts: std::collections::VecDeque<Part>,
    ended: bool,
}

enum Part {
    Bytes(Vec<u8>, usize),
    Body {
        file: File,
        hasher: Sha256,
        left: u64,
        entry: FileEntry,
    },
}

impl LayoutTar {
    fn new(files: Vec<(String, camino::Utf8PathBuf, FileEntry)>) -> LayoutTar {
        LayoutTar {
            files: files.into_iter(),
            parts: Default::default(),
            ended: false,
        }
    }

    /// Queues the next file's header, body and padding, or the trailer; false at the end.
    fn queue_next(&mut self) -> std::io::Result<bool> {
        use std::io::{Error, ErrorKind};
        let Some((name, path, entry)) = self.files.next() else {
            if self.ended {
                return Ok(false);
            }
            self.ended = true;
            self.parts.push_back(Part::Bytes(vec![0u8; 1024], 0));
            return Ok(true);
        };
        let file = File::open(&path).map_err(|e| Error::new(e.kind(), format!("{path}: {e}")))?;
        let size = file.metadata()?.len();
        if size != entry.size {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!(
                    "{}: {size} bytes, expected {} (truncated or grown)",
                    entry.path, entry.size
                ),
            ));
        }
        let mut header = tar::Header::new_ustar();
        header.set_path(&name)?;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.parts
            .push_back(Part::Bytes(header.as_bytes().to_vec(), 0));
        self.parts.push_back(Part::Body {
            file,
            hasher: Sha256::new(),
            left: size,
            entry,
        });
        let pad = ((512 - size % 512) % 512) as usize;
        self.parts.push_back(Part::Bytes(vec![0u8; pad], 0));
        Ok(true)
    }
}

impl Read for LayoutTar {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Error, ErrorKind};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(part) = self.parts.front_mut() else {
                if !self.queue_next()? {
                    return Ok(0);
                }
                continue;
            };
            match part {
                Part::Bytes(bytes, at) => {
                    if *at == bytes.len() {
                        self.parts.pop_front();
                        continue;
                    }
                    let n = buf.len().min(bytes.len() - *at);
                    buf[..n].copy_from_slice(&bytes[*at..*at + n]);
                    *at += n;
                    return Ok(n);
                }
                Part::Body {
                    file,
                    hasher,
                    left,
                    entry,
                } => {
                    if *left == 0 {
                        let digest = bundle::hex(&hasher.clone().finalize());
                        if digest != entry.sha256 {
                            let problem = bundle::FileProblem::Digest {
                                path: entry.path.clone(),
                                expected: entry.sha256.clone(),
                                actual: digest,
                            };
                            return Err(Error::new(ErrorKind::InvalidData, problem.to_string()));
                        }
                        self.parts.pop_front();
                        continue;
                    }
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = file.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(Error::new(
                            ErrorKind::InvalidData,
                            format!("{}: ended early (truncated while streaming)", entry.path),
                        ));
                    }
                    hasher.update(&buf[..n]);
                    *left -= n as u64;
                    return Ok(n);
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_files(dir: &camino::Utf8Path) -> Vec<(String, camino::Utf8PathBuf, FileEntry)> {
        let contents: [(&str, Vec<u8>); 3] = [
            ("index.json", br#"{"schemaVersion":2}"#.to_vec()),
            (
                "blobs/sha256/aa",
                (0..70_000u32).map(|i| (i % 251) as u8).collect(),
            ),
            ("oci-layout", vec![]),
        ];
        contents
            .iter()
            .map(|(name, data)| {
                let path = dir.join(name.replace('/', "_"));
                std::fs::write(&path, data).unwrap();
                let entry = FileEntry {
                    path: format!("stored/{name}"),
                    size: data.len() as u64,
                    sha256: bundle::hex(&Sha256::digest(data)),
                };
                (name.to_string(), path, entry)
            })
            .collect()
    }

    fn temp_dir(tag: &str) -> camino::Utf8PathBuf {
        crate::bundle::test_dir(&format!("layout-{tag}"))
    }

    /// What docker load reads is a tar with the same names and bytes, in order.
    #[test]
    fn layout_tar_gives_the_files_back() {
        let dir = temp_dir("ok");
        let files = layout_files(&dir);
        let mut tar_bytes = Vec::new();
        // Small reads, as a pipe may do, must give the same stream.
        let mut reader = LayoutTar::new(files.clone());
        let mut buf = [0u8; 333];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            tar_bytes.extend_from_slice(&buf[..n]);
        }
        assert_eq!(tar_bytes.len() % 512, 0);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.push((name, data));
        }
        let expected: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(name, path, _)| (name.clone(), std::fs::read(path).unwrap()))
            .collect();
        assert_eq!(seen, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A damaged file ends the stream with InvalidData, before the stream's end.
    #[test]
    fn layout_tar_stops_at_a_damaged_file() {
        let dir = temp_dir("bad");
        let files = layout_files(&dir);
        let mut data = std::fs::read(&files[1].1).unwrap();
        data[1000] ^= 1;
        std::fs::write(&files[1].1, &data).unwrap();
        let mut out = Vec::new();
        let err = LayoutTar::new(files.clone())
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("stored/blobs/sha256/aa: sha256"),
            "{err}"
        );
        // Nothing after the damaged file: its header and bytes at most.
        assert!(out.len() <= 512 * 3 + data.len());
        std::fs::write(&files[1].1, &data[..500]).unwrap();
        let err = LayoutTar::new(files).read_to_end(&mut out).unwrap_err();
        assert!(
            err.to_string().contains("500 bytes, expected 70000"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
