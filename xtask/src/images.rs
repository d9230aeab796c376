//! The bundle's images, both ways: `docker save` into the bundle (one archive, or the
//! archive kept as its files with the blobs in the build cache's blob store) and back into
//! `docker load`, every byte hashed as it streams.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context as _};
use camino::Utf8Path;
use sha2::{Digest, Sha256};

use crate::bundle::{self, human_bytes, HashingWriter};
use crate::docker::{feed_load, stream_into_load, Docker, LoadFailure};
use crate::model::layout::{self, BUILD_CACHE_DIR, IMAGES_DIR};
use crate::model::load_split::LoadShare;
use crate::model::manifest::{Compression, FileEntry, ImageLayout, LayoutEntry, Manifest};

/// One `docker save` of every image, split into its entries as it streams: each blob goes
/// to the build cache's blob store unless BuildKit already wrote it there, the other entries
/// to `base-images/`. Every file written is hashed as it is written; a blob's content must
/// match its name.
pub fn save_layout(
    docker: &Docker,
    names: &[String],
    staging: &Utf8Path,
) -> anyhow::Result<(ImageLayout, Vec<FileEntry>)> {
    crate::say!(
        "      Saving {} images to {IMAGES_DIR}/ (layers in {BUILD_CACHE_DIR}/blobs/)",
        names.len()
    );
    let started = Instant::now();
    let mut child = docker.spawn_save(names)?;
    let stdout = child.stdout.take().context("docker save has no stdout")?;
    let stderr = child.stderr.take().context("docker save has no stderr")?;
    let err_reader = bundle::read_in_background(stderr);
    let mut progress = crate::progress::Progress::new("Saving", None);
    let mut streamed = 0u64;
    let mut written = 0u64;
    let result = (|| -> anyhow::Result<(ImageLayout, Vec<FileEntry>)> {
        let mut archive =
            tar::Archive::new(bundle::ChunkReader::new(bundle::ReadAhead::new(stdout)));
        let mut layout = ImageLayout::default();
        let mut files = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let kind = entry.header().entry_type();
            let name = entry.path()?.to_string_lossy().into_owned();
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() || !crate::model::manifest::is_safe_relative_path(&name) {
                bail!("`docker save` wrote {name:?} ({kind:?}), which is not a plain file of an image archive");
            }
            let blob = name.strip_prefix("blobs/sha256/").filter(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
            let path = match blob {
                Some(hex) => layout::build_cache_blob(hex),
                None => format!("{IMAGES_DIR}/{name}"),
            };
            let target = staging.join(&path);
            let size = entry.size();
            if blob.is_some() && target.exists() {
                // BuildKit wrote this layer into the build cache: the name is its digest.
                std::io::copy(&mut entry, &mut std::io::sink())?;
            } else {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {parent}"))?;
                }
                let partial = bundle::temp_sibling(&target);
                let file = File::create(&partial).with_context(|| format!("creating {partial}"))?;
                let mut out = HashingWriter::new(BufWriter::with_capacity(bundle::BUFFER, file));
                std::io::copy(&mut entry, &mut out).with_context(|| format!("writing {path}"))?;
                let (buffered, n, sha256) = out.finish();
                let file = buffered.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                if let Some(hex) = blob {
                    if sha256 != hex {
                        bail!(
                            "`docker save` wrote {name} with content of sha256 {sha256}: the \
                             engine's stream is damaged; export again"
                        );
                    }
                }
                std::fs::rename(&partial, &target)
                    .with_context(|| format!("renaming {partial}"))?;
                files.push(FileEntry {
                    path: path.clone(),
                    size: n,
                    sha256,
                    from_base: false,
                });
                written += n;
            }
            streamed += size;
            progress.set(streamed);
            layout.entries.push(LayoutEntry { name, path });
        }
        Ok((layout, files))
    })();
    progress.done();
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() && (result.is_ok() || !stderr.trim().is_empty()) {
        let err = anyhow::anyhow!("`docker save` failed: {}", stderr.trim());
        return Err(docker.failed("`docker save` of the images", err));
    }
    let done = result
        .context("reading the images that `docker save` streamed")
        .map_err(|e| docker.failed("`docker save` of the images", e))?;
    let secs = started.elapsed().as_secs_f64();
    crate::say!(
        "       Saved {} images: {} streamed, {} written (the rest was in the build cache) in \
         {secs:.1}s ({}/s)",
        names.len(),
        human_bytes(streamed),
        human_bytes(written),
        human_bytes((streamed as f64 / secs.max(1e-6)) as u64)
    );
    Ok(done)
}

/// The previous bundle's saved images, hard-linked into `staging` where BuildKit did not
/// write the file already, after checking each against the previous manifest.
pub fn reuse_layout(
    out: &Utf8Path,
    previous: &Manifest,
    layout: &ImageLayout,
    staging: &Utf8Path,
) -> anyhow::Result<Option<(ImageLayout, Vec<FileEntry>)>> {
    let mut entries = Vec::new();
    for e in &layout.entries {
        match previous.files.iter().find(|f| f.path == e.path) {
            Some(f) => entries.push(f),
            None => return Ok(None),
        }
    }
    // What BuildKit wrote into the staged build cache already is not linked again.
    let todo: Vec<&FileEntry> = entries
        .into_iter()
        .filter(|f| !staging.join(&f.path).exists())
        .collect();
    if !bundle::link_checked(out, &todo, |f| staging.join(&f.path))? {
        crate::say!(
            "warning: the previous saved images do not match their manifest; saving them again"
        );
        return Ok(None);
    }
    Ok(Some((layout.clone(), todo.into_iter().cloned().collect())))
}

/// One `docker save` of every image, compressed and hashed while it streams.
pub fn save_images(
    docker: &Docker,
    names: &[String],
    compression: Compression,
    path: &Utf8Path,
    rel: &str,
) -> anyhow::Result<FileEntry> {
    crate::say!("      Saving {} images to {rel}", names.len());
    let started = Instant::now();
    let mut child = docker.spawn_save(names)?;
    let stdout = child.stdout.take().context("docker save has no stdout")?;
    let stderr = child.stderr.take().context("docker save has no stderr")?;
    let err_reader = bundle::read_in_background(stderr);
    let file = File::create(path).with_context(|| format!("creating {path}"))?;
    let hashing = HashingWriter::new(BufWriter::with_capacity(bundle::BUFFER, file));
    let mut progress = crate::progress::Progress::new("Saving", None);
    // The engine's stream is read ahead on another thread, so `docker save` never waits
    // on the pipe while a chunk is hashed (and compressed) and written here.
    let copy = |writer: &mut dyn Write| -> std::io::Result<u64> {
        let mut total = 0u64;
        bundle::pipelined(stdout, |chunk| {
            writer.write_all(chunk)?;
            total += chunk.len() as u64;
            progress.set(total);
            Ok(())
        })
    };
    let written = (|| -> anyhow::Result<_> {
        Ok(match compression {
            Compression::None => {
                let mut w = hashing;
                let raw = copy(&mut w)?;
                (w, raw)
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::Encoder::new(hashing, 3)?;
                enc.multithread(2)?;
                let raw = copy(&mut enc)?;
                (enc.finish()?, raw)
            }
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(hashing, flate2::Compression::new(6));
                let raw = copy(&mut enc)?;
                (enc.finish()?, raw)
            }
        })
    })();
    let (writer, raw) = match written {
        Ok(done) => done,
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err).with_context(|| format!("writing {path}"));
        }
    };
    progress.done();
    let status = child.wait()?;
    if !status.success() {
        let stderr = err_reader.join().unwrap_or_default();
        let err = anyhow::anyhow!("`docker save` failed: {}", stderr.trim());
        return Err(docker.failed("`docker save` of the images", err));
    }
    let (mut buffered, size, sha256) = writer.finish();
    buffered.flush()?;
    buffered
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    let secs = started.elapsed().as_secs_f64();
    crate::say!(
        "       Saved {} images: {} → {} in {secs:.1}s ({}/s)",
        names.len(),
        human_bytes(raw),
        human_bytes(size),
        human_bytes((raw as f64 / secs.max(1e-6)) as u64)
    );
    Ok(FileEntry {
        path: rel.to_string(),
        size,
        sha256,
        from_base: false,
    })
}

/// Streams the images archive into `docker load`, decompressed here, while hashing the
/// archive as it is read. The last chunk is held back until the digest is known: an
/// archive that does not match its manifest never reaches the end of the stream, and
/// `docker load` is killed before it could tag anything. One pass over the data.
pub fn load_images(
    docker: &Docker,
    dir: &camino::Utf8Path,
    entry: &FileEntry,
    compression: Compression,
) -> anyhow::Result<()> {
    let archive = dir.join(&entry.path);
    crate::say!(
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

/// The files the import would have checked while streaming them into `docker load`,
/// checked without loading anything when the rest of the bundle failed already: one run
/// names every damaged file. Prints each problem; how many there were.
pub fn name_damaged_streamed(dir: &Utf8Path, manifest: &Manifest, streamed: &[String]) -> usize {
    let mut only = manifest.clone();
    only.files.retain(|f| streamed.contains(&f.path));
    if only.files.is_empty() {
        return 0;
    }
    match bundle::verify(dir, &only, &[], &|_, _| {}) {
        Ok(report) => {
            for problem in &report.problems {
                crate::say!("error: {problem}");
            }
            report.problems.len()
        }
        Err(e) => {
            crate::say!("error: checking the saved images: {e:#}");
            1
        }
    }
}

/// The layout's entries: tar name, file, and what the manifest says of the file.
pub fn layout_files(
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

/// How many `docker load`s at most run at once (one per core up to this).
const MAX_LOADS: usize = 4;
/// The largest blob read whole to see whether it is an index or a manifest.
const SMALL_BLOB: u64 = 256 << 10;

/// Streams the saved images back into `docker load` as the tar `docker save` wrote, built
/// here from the layout's files, each checked against the manifest as it streams (the last
/// chunk is held back as for an archive). Images that share no blob are loaded by
/// separate `docker load`s at once (`model::load_split`), one core each: every stream
/// holds back its end until all of them have verified every byte, so a damaged file
/// anywhere leaves nothing tagged.
pub fn load_layout(
    docker: &Docker,
    dir: &camino::Utf8Path,
    files: Vec<(String, camino::Utf8PathBuf, FileEntry)>,
) -> anyhow::Result<()> {
    let total: u64 = files
        .iter()
        .fold(0, |sum, (_, _, f)| sum.saturating_add(f.size));
    let streams = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_LOADS);
    let shares = match split_layout(&files, streams) {
        Ok(shares) => shares,
        Err(why) => {
            crate::say!("        Note the images load as one archive: {why:#}");
            Vec::new()
        }
    };
    if shares.len() > 1 {
        crate::say!(
            "     Loading images from {dir} ({} files, {}) as {} archives at once",
            files.len(),
            human_bytes(total),
            shares.len()
        );
        return load_shares(docker, dir, files, shares);
    }
    crate::say!(
        "     Loading images from {dir} ({} files, {})",
        files.len(),
        human_bytes(total)
    );
    let what = format!("the saved images in {dir}");
    stream_into_load(
        docker,
        &what,
        Box::new(LayoutTar::new(files, Vec::new(), None)),
        |failure| refuse_damaged(&what, failure),
    )
}

/// What a stream of the layout's files ended with, as the error to report: damaged files
/// (one problem a line), another stream's failure, or a read error.
fn refuse_damaged(what: &str, failure: Option<std::io::Error>) -> anyhow::Result<()> {
    match failure {
        None => Ok(()),
        Some(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            for problem in e.to_string().lines() {
                crate::say!("error: {problem}");
            }
            Err(anyhow::Error::new(ImagesDamaged {
                files: Some(e.to_string().lines().count()),
            }))
        }
        Some(e) if e.get_ref().is_some_and(|r| r.is::<OtherStreamFailed>()) => {
            Err(anyhow::Error::new(OtherStreamFailed))
        }
        Some(e) => bail!("reading {what}: {e}; nothing was loaded"),
    }
}

/// The layout cut into shares for `streams` loads at once, read from the bundle's small
/// files, each checked against the manifest before it is parsed. One share (or an error:
/// then the layout loads whole, which names any damaged file) when it cannot be cut.
fn split_layout(
    files: &[(String, camino::Utf8PathBuf, FileEntry)],
    streams: usize,
) -> anyhow::Result<Vec<LoadShare>> {
    if streams < 2 {
        return Ok(Vec::new());
    }
    let read = |path: &Utf8Path, entry: &FileEntry| -> anyhow::Result<Vec<u8>> {
        let bytes = bundle::read_capped(path, 4 << 20).with_context(|| entry.path.clone())?;
        if bytes.len() as u64 != entry.size || bundle::hex(&Sha256::digest(&bytes)) != entry.sha256
        {
            bail!("{} does not match the manifest", entry.path);
        }
        Ok(bytes)
    };
    let (mut index, mut manifest) = (None, None);
    let mut sizes = std::collections::BTreeMap::new();
    let mut small = std::collections::BTreeMap::new();
    for (name, path, entry) in files {
        match name.as_str() {
            "index.json" => index = Some(read(path, entry)?),
            "manifest.json" => manifest = Some(read(path, entry)?),
            "oci-layout" => {}
            _ => {
                let hex = name
                    .strip_prefix("blobs/sha256/")
                    .filter(|hex| *hex == entry.sha256)
                    .with_context(|| {
                        format!("the layout's entry {name} is not a blob named by its digest")
                    })?;
                sizes.insert(hex.to_string(), entry.size);
                if entry.size <= SMALL_BLOB {
                    small.insert(hex.to_string(), read(path, entry)?);
                }
            }
        }
    }
    let index = index.context("the layout has no index.json")?;
    crate::model::load_split::split_for_load(&index, manifest.as_deref(), &sizes, &small, streams)
}

/// The shares loaded at once, one `docker load` each (started here, fed on threads).
fn load_shares(
    docker: &Docker,
    dir: &camino::Utf8Path,
    files: Vec<(String, camino::Utf8PathBuf, FileEntry)>,
    shares: Vec<LoadShare>,
) -> anyhow::Result<()> {
    let gate = Arc::new(Gate::new(shares.len()));
    let mut loads = Vec::new();
    for (n, share) in shares.into_iter().enumerate() {
        let mine: Vec<_> = files
            .iter()
            .filter(|(name, _, _)| match name.strip_prefix("blobs/sha256/") {
                Some(hex) => share.blobs.contains(hex),
                None => name == "oci-layout",
            })
            .cloned()
            .collect();
        let mut made = vec![("index.json".to_string(), share.index)];
        made.extend(share.manifest.map(|m| ("manifest.json".to_string(), m)));
        let names = image_names(&made[0].1);
        let what = format!(
            "the saved images in {dir} (part {} of {})",
            n + 1,
            gate.count
        );
        let child = match docker.spawn_load() {
            Ok(child) => child,
            Err(e) => {
                gate.fail();
                return Err(e);
            }
        };
        let reader = LayoutTar::new(mine, made, Some(gate.clone()));
        loads.push((child, what, names, share.bytes, reader));
    }
    let steps = crate::steps::Steps::new();
    let results: Vec<Result<(), LoadFailure>> = std::thread::scope(|scope| {
        let running: Vec<_> = loads
            .into_iter()
            .map(|(child, what, names, bytes, reader)| {
                let step = steps.live("Loading", &format!("{names} ({})", human_bytes(bytes)));
                let gate = gate.clone();
                scope.spawn(move || {
                    let result = feed_load(child, &what, Box::new(reader), false, |failure| {
                        refuse_damaged(&what, failure)
                    });
                    if result.is_err() {
                        gate.fail();
                    }
                    step.finish(None);
                    result
                })
            })
            .collect();
        running
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(LoadFailure::Stream(anyhow::anyhow!(
                        "a load thread panicked"
                    )))
                })
            })
            .collect()
    });
    drop(steps);
    // Damaged files first (each stream named its own), then any other failure; a stream
    // that only stopped because another failed says nothing of its own.
    let mut damaged = Vec::new();
    let mut other = None;
    for result in results {
        match result.map_err(|e| e.with_engine(docker)) {
            Ok(()) => {}
            Err(e) if e.is::<OtherStreamFailed>() => {}
            Err(e) if e.is::<ImagesDamaged>() => damaged.push(e),
            Err(e) => other = other.or(Some(e)),
        }
    }
    match (damaged.len(), other) {
        (0, None) => Ok(()),
        (0, Some(e)) => Err(e),
        (1, _) => Err(damaged.remove(0)),
        (_, _) => Err(anyhow::Error::new(ImagesDamaged { files: None })),
    }
}

/// The saved images did not verify: how many files were damaged (named above), when one
/// stream counted them all.
#[derive(Debug)]
struct ImagesDamaged {
    files: Option<usize>,
}

impl std::fmt::Display for ImagesDamaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how_many = match self.files {
            Some(1) => "one file damaged, named above".to_string(),
            Some(n) => format!("{n} files damaged, named above"),
            None => "the damaged files named above".to_string(),
        };
        write!(
            f,
            "the saved images do not verify ({how_many}); nothing was loaded. Copy the \
             named files again from the export machine"
        )
    }
}

impl std::error::Error for ImagesDamaged {}

/// The image names an `index.json` lists, for the step line.
fn image_names(index: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(index).unwrap_or_default();
    let names: Vec<String> = value["manifests"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|e| e["annotations"]["io.containerd.image.name"].as_str())
                .map(crate::model::oci::familiar)
                .collect()
        })
        .unwrap_or_default();
    match names.is_empty() {
        true => "images".to_string(),
        false => names.join(", "),
    }
}

/// A stream stopped before its end because another stream of the same load failed.
#[derive(Debug)]
struct OtherStreamFailed;

impl std::fmt::Display for OtherStreamFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped: another part of the images failed")
    }
}

impl std::error::Error for OtherStreamFailed {}

/// Where the loads that run at once wait for each other before ending their streams:
/// a stream's end (what makes `docker load` tag its images) passes only once every stream
/// has verified all its files, and none does once one has failed.
struct Gate {
    count: usize,
    state: Mutex<(usize, bool)>,
    changed: std::sync::Condvar,
}

impl Gate {
    fn new(count: usize) -> Gate {
        Gate {
            count,
            state: Mutex::new((0, false)),
            changed: std::sync::Condvar::new(),
        }
    }

    /// This stream verified everything: waits for the others; whether all did.
    fn arrive(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 += 1;
        self.changed.notify_all();
        while state.0 < self.count && !state.1 {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        !state.1
    }

    fn fail(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 = true;
        self.changed.notify_all();
    }
}

/// A tar of the layout's files, made as it is read: a header, the file's bytes (hashed as
/// they go; a file that does not match the manifest ends the stream with `InvalidData`),
/// padding; then the entries made here (a share's `index.json` and `manifest.json`); at
/// the end the two zero blocks, once the gate (if any) lets it.
struct LayoutTar {
    files: std::vec::IntoIter<(String, camino::Utf8PathBuf, FileEntry)>,
    made: std::vec::IntoIter<(String, Vec<u8>)>,
    gate: Option<Arc<Gate>>,
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
    fn new(
        files: Vec<(String, camino::Utf8PathBuf, FileEntry)>,
        made: Vec<(String, Vec<u8>)>,
        gate: Option<Arc<Gate>>,
    ) -> LayoutTar {
        LayoutTar {
            files: files.into_iter(),
            made: made.into_iter(),
            gate,
            parts: Default::default(),
            ended: false,
        }
    }

    /// The stream's end after a damaged file: nothing more is handed on (docker load
    /// never sees the end of the tar, so nothing is tagged), but every file left is still
    /// hashed, so that one import names every damaged file. `InvalidData`, one problem a
    /// line.
    fn damaged(&mut self, first: String) -> std::io::Error {
        if let Some(gate) = &self.gate {
            gate.fail();
        }
        let mut problems = vec![first];
        self.parts.clear();
        self.ended = true;
        for (_, path, entry) in self.files.by_ref() {
            let problem = match bundle::hash_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(format!("{}: missing", entry.path))
                }
                Err(e) => Some(format!("{}: {e}", entry.path)),
                Ok((size, _)) if size != entry.size => Some(format!(
                    "{}: {size} bytes, expected {} (truncated or grown)",
                    entry.path, entry.size
                )),
                Ok((_, digest)) if digest != entry.sha256 => Some(
                    bundle::FileProblem::Digest {
                        path: entry.path.clone(),
                        expected: entry.sha256.clone(),
                        actual: digest,
                    }
                    .to_string(),
                ),
                Ok(_) => None,
            };
            problems.extend(problem);
        }
        std::io::Error::new(std::io::ErrorKind::InvalidData, problems.join("\n"))
    }

    fn queue_header(&mut self, name: &str, size: u64) -> std::io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_path(name)?;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.parts
            .push_back(Part::Bytes(header.as_bytes().to_vec(), 0));
        Ok(())
    }

    /// The zeros that fill an entry of `size` bytes up to the tar's 512-byte blocks.
    fn queue_padding(&mut self, size: u64) {
        let pad = ((512 - size % 512) % 512) as usize;
        self.parts.push_back(Part::Bytes(vec![0u8; pad], 0));
    }

    /// Queues the next file's header, body and padding, or the trailer; false at the end.
    fn queue_next(&mut self) -> std::io::Result<bool> {
        use std::io::{Error, ErrorKind};
        let Some((name, path, entry)) = self.files.next() else {
            if self.ended {
                return Ok(false);
            }
            if let Some((name, bytes)) = self.made.next() {
                let size = bytes.len() as u64;
                self.queue_header(&name, size)?;
                self.parts.push_back(Part::Bytes(bytes, 0));
                self.queue_padding(size);
                return Ok(true);
            }
            self.ended = true;
            if let Some(gate) = &self.gate {
                if !gate.arrive() {
                    return Err(Error::other(OtherStreamFailed));
                }
            }
            self.parts.push_back(Part::Bytes(vec![0u8; 1024], 0));
            return Ok(true);
        };
        let file = match bundle::open_regular(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(self.damaged(format!("{}: missing", entry.path)))
            }
            Err(e) => return Err(self.damaged(format!("{}: {e}", entry.path))),
        };
        let size = file.metadata()?.len();
        if size != entry.size {
            return Err(self.damaged(format!(
                "{}: {size} bytes, expected {} (truncated or grown)",
                entry.path, entry.size
            )));
        }
        self.queue_header(&name, size)?;
        self.parts.push_back(Part::Body {
            file,
            hasher: Sha256::new(),
            left: size,
            entry,
        });
        self.queue_padding(size);
        Ok(true)
    }
}

impl Read for LayoutTar {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
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
                            return Err(self.damaged(problem.to_string()));
                        }
                        self.parts.pop_front();
                        continue;
                    }
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = file.read(&mut buf[..want])?;
                    if n == 0 {
                        let problem =
                            format!("{}: ended early (truncated while streaming)", entry.path);
                        return Err(self.damaged(problem));
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
                    from_base: false,
                };
                (name.to_string(), path, entry)
            })
            .collect()
    }

    /// The entries of [`layout_files`] for files already written (as they are now).
    fn layout_files_kept(dir: &camino::Utf8Path) -> Vec<(String, camino::Utf8PathBuf, FileEntry)> {
        let fresh = temp_dir(&format!("kept-{}", dir.file_name().unwrap()));
        let entries = layout_files(&fresh);
        std::fs::remove_dir_all(&fresh).unwrap();
        entries
            .into_iter()
            .map(|(name, path, entry)| (name, dir.join(path.file_name().unwrap()), entry))
            .collect()
    }

    fn temp_dir(tag: &str) -> camino::Utf8PathBuf {
        crate::lab::test_dir(&format!("layout-{tag}"))
    }

    /// What docker load reads is a tar with the same names and bytes, in order.
    #[test]
    fn layout_tar_gives_the_files_back() {
        let dir = temp_dir("ok");
        let files = layout_files(&dir);
        let mut tar_bytes = Vec::new();
        // Small reads, as a pipe may do, must give the same stream.
        let mut reader = LayoutTar::new(files.clone(), Vec::new(), None);
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
        let err = LayoutTar::new(files.clone(), Vec::new(), None)
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
        let err = LayoutTar::new(files.clone(), Vec::new(), None)
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(
            err.to_string().contains("500 bytes, expected 70000"),
            "{err}"
        );
        // Every damaged file is named, those after the first included, and nothing of the
        // stream after the first is handed on.
        std::fs::write(&files[0].1, b"{}").unwrap();
        std::fs::remove_file(&files[2].1).unwrap();
        let mut out = Vec::new();
        let err = LayoutTar::new(files, Vec::new(), None)
            .read_to_end(&mut out)
            .unwrap_err();
        let lines: Vec<String> = err.to_string().lines().map(str::to_string).collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(lines[0].starts_with("stored/index.json: 2 bytes"), "{err}");
        assert!(lines[1].contains("500 bytes, expected 70000"), "{err}");
        assert_eq!(lines[2], "stored/oci-layout: missing");
        assert!(out.is_empty(), "{} bytes handed on", out.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Streams loaded at once: each holds back its end (the two zero blocks that make
    /// docker load tag its images) until every stream has verified all its files, and
    /// none ends once one found a damaged file. A made entry (a share's own index.json)
    /// is in the tar before the end.
    #[test]
    fn streams_at_once_end_only_when_all_verified() {
        let read_all = |mut tar: LayoutTar| -> (Vec<u8>, Option<std::io::Error>) {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match tar.read(&mut buf) {
                    Ok(0) => return (out, None),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) => return (out, Some(e)),
                }
            }
        };
        let ends_with_trailer =
            |out: &[u8]| out.len() >= 1024 && out[out.len() - 1024..] == [0u8; 1024];

        // All good: both end, with the made entry inside.
        let (dir_a, dir_b) = (temp_dir("gate-a"), temp_dir("gate-b"));
        let gate = Arc::new(Gate::new(2));
        let a = LayoutTar::new(
            layout_files(&dir_a),
            vec![("index.json".into(), b"{\"made\":1}".to_vec())],
            Some(gate.clone()),
        );
        let b = LayoutTar::new(layout_files(&dir_b), Vec::new(), Some(gate.clone()));
        let ((out_a, err_a), (out_b, err_b)) = std::thread::scope(|s| {
            let ta = s.spawn(|| read_all(a));
            let tb = s.spawn(|| read_all(b));
            (ta.join().unwrap(), tb.join().unwrap())
        });
        assert!(err_a.is_none() && err_b.is_none(), "{err_a:?} {err_b:?}");
        assert!(ends_with_trailer(&out_a) && ends_with_trailer(&out_b));
        let mut names = Vec::new();
        for entry in tar::Archive::new(&out_a[..]).entries().unwrap() {
            names.push(
                entry
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        assert_eq!(
            names,
            ["index.json", "blobs/sha256/aa", "oci-layout", "index.json"]
        );

        // One damaged: it names its file; the other verified all of its own but stops
        // before its end, saying why.
        let mut bad = std::fs::read(dir_b.join("blobs_sha256_aa")).unwrap();
        bad[10] ^= 1;
        std::fs::write(dir_b.join("blobs_sha256_aa"), &bad).unwrap();
        let gate = Arc::new(Gate::new(2));
        let a = LayoutTar::new(layout_files_kept(&dir_a), Vec::new(), Some(gate.clone()));
        let b = LayoutTar::new(layout_files_kept(&dir_b), Vec::new(), Some(gate.clone()));
        let ((out_a, err_a), (_, err_b)) = std::thread::scope(|s| {
            let ta = s.spawn(|| read_all(a));
            let tb = s.spawn(|| read_all(b));
            (ta.join().unwrap(), tb.join().unwrap())
        });
        let err_b = err_b.expect("the damaged stream fails");
        assert_eq!(err_b.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            err_b
                .to_string()
                .starts_with("stored/blobs/sha256/aa: sha256"),
            "{err_b}"
        );
        let err_a = err_a.expect("the good stream stops too");
        assert!(
            err_a.get_ref().is_some_and(|r| r.is::<OtherStreamFailed>()),
            "{err_a}"
        );
        assert!(!ends_with_trailer(&out_a), "the good stream must not end");
        std::fs::remove_dir_all(&dir_a).unwrap();
        std::fs::remove_dir_all(&dir_b).unwrap();
    }
}
