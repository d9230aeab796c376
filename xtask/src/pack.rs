//! The packed bundle on disk: writing a bundle folder as one tar or as numbered parts
//! with an index (`cache-pack`), and reading it back as one checked stream
//! (`cache-unpack`, `cache-verify --pack`). Formats: `model::pack`.
//!
//! Everything streams: a part is hashed while it is written and while it is read, and
//! never held in memory. A pack is hostile input like a bundle folder: the parts on disk
//! must be exactly those of the index and of its sizes before a byte is read, each part's
//! sha256 is checked as the stream leaves it, and the tar must be `SHA256SUMS`, then
//! `manifest.yaml`, then only regular files that manifest lists (folders are allowed),
//! each with the manifest's size and sha256.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::normalize_entry_path;
use crate::bundle::{
    hex, human_bytes, temp_sibling, write_atomic, ChunkReader, HashingWriter, ReadAhead, BUFFER,
};
use crate::model::manifest::{FileEntry, Manifest, IMPORT_SCRIPT, MANIFEST_FILE, SUMS_FILE};
use crate::model::pack::{
    index_name, looks_like_part, part_name, script_name, PackIndex, PartEntry,
};

/// The largest `SHA256SUMS` or `manifest.yaml` read from a pack into memory.
const MAX_META_BYTES: u64 = 256 << 20;

/// The largest index read (a line per part: 16 MiB is over 100 000 parts).
const MAX_INDEX_BYTES: u64 = 16 << 20;

/// A file `cache-pack` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct WrittenFile {
    pub path: Utf8PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// What `cache-pack` wrote, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct PackReport {
    pub bundle: Utf8PathBuf,
    /// sha256 of the bundle's SHA256SUMS: the bundle's identity.
    pub digest: String,
    /// Files in the tar (SHA256SUMS and manifest.yaml included).
    pub files: usize,
    /// Bytes of the tar (all parts together).
    pub total_size: u64,
    /// The one tar, when not split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tar: Option<WrittenFile>,
    /// The index, when split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<Utf8PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<WrittenFile>,
    /// `import-NAME.sh`: imports the pack on a server with sh and Docker alone.
    pub script: Utf8PathBuf,
}

/// Where a pack goes: a folder and a name (`NAME.tar`, or `NAME.pack-index` and parts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dir: Utf8PathBuf,
    pub name: String,
}

impl Target {
    /// From `--output` (absolute): a folder (an existing one, or `as_dir`: the argument
    /// ended in `/`) takes the bundle folder's name; a file path `X.tar` or
    /// `X.pack-index` names the pack `X`; none: beside the bundle folder.
    pub fn resolve(
        bundle: &Utf8Path,
        output: Option<&Utf8Path>,
        as_dir: bool,
    ) -> anyhow::Result<Target> {
        let bundle_name = bundle.file_name().unwrap_or("docker-build-cache");
        let (dir, name) = match output {
            None => (bundle.parent().unwrap_or(bundle).to_owned(), bundle_name),
            Some(out) if as_dir || out.is_dir() => (out.to_owned(), bundle_name),
            Some(out) => {
                let file = out.file_name().unwrap_or("");
                let name = file
                    .strip_suffix(".tar")
                    .or_else(|| file.strip_suffix(crate::model::pack::INDEX_SUFFIX))
                    .unwrap_or(file);
                (out.parent().unwrap_or(out).to_owned(), name)
            }
        };
        if !crate::model::pack::is_safe_name(name) {
            bail!(
                "{name:?} cannot name a pack (letters, digits, '.', '_', '-'); give \
                 --output FOLDER or --output NAME.tar"
            );
        }
        Ok(Target {
            dir,
            name: name.to_string(),
        })
    }

    /// The files this pack would write; refuses when one exists, or a part of an
    /// earlier pack of this name lies there (it would read as an extra part).
    fn check_free(&self, split: bool) -> anyhow::Result<()> {
        let mut taken: Vec<Utf8PathBuf> = vec![self.dir.join(script_name(&self.name))];
        if split {
            taken.push(self.dir.join(index_name(&self.name)));
            if let Ok(entries) = self.dir.read_dir_utf8() {
                for entry in entries.flatten() {
                    if looks_like_part(&self.name, entry.file_name()) {
                        taken.push(entry.path().to_owned());
                    }
                }
            }
        } else {
            taken.push(self.dir.join(format!("{}.tar", self.name)));
        }
        taken.retain(|p| std::fs::symlink_metadata(p).is_ok());
        if let Some(first) = taken.first() {
            bail!(
                "{first} already exists{}; cache-pack never overwrites a file: remove it \
                 (and the other parts of that pack), or give another --output",
                if taken.len() > 1 {
                    format!(" (and {} more)", taken.len() - 1)
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// One part being written: a temporary file beside its final name.
struct OpenPart {
    temp: Utf8PathBuf,
    file: HashingWriter<BufWriter<File>>,
    len: u64,
}

/// The tar stream cut into parts of at most `limit` bytes (one part, `NAME.tar`, without
/// a limit), each written to a temporary file and hashed as it is written. Dropped
/// before [`PartWriter::publish`], it removes every file it wrote.
struct PartWriter {
    target: Target,
    limit: Option<u64>,
    open: Option<OpenPart>,
    /// Closed parts: temporary file, final name, size and sha256.
    closed: Vec<(Utf8PathBuf, PartEntry)>,
    published: bool,
}

impl PartWriter {
    fn new(target: Target, limit: Option<u64>) -> PartWriter {
        PartWriter {
            target,
            limit,
            open: None,
            closed: Vec::new(),
            published: false,
        }
    }

    fn final_name(&self, number: usize) -> String {
        match self.limit {
            Some(_) => part_name(&self.target.name, number),
            None => format!("{}.tar", self.target.name),
        }
    }

    fn open_next(&mut self) -> io::Result<()> {
        let name = self.final_name(self.closed.len() + 1);
        let temp = temp_sibling(&self.target.dir.join(&name));
        let file = File::options().write(true).create_new(true).open(&temp)?;
        let file = HashingWriter::new(BufWriter::with_capacity(BUFFER, file));
        self.open = Some(OpenPart { temp, file, len: 0 });
        Ok(())
    }

    fn close_open(&mut self) -> io::Result<()> {
        let Some(part) = self.open.take() else {
            return Ok(());
        };
        let (writer, size, sha256) = part.file.finish();
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let name = self.final_name(self.closed.len() + 1);
        self.closed
            .push((part.temp, PartEntry { name, size, sha256 }));
        Ok(())
    }

    /// Renames every part into place; the parts with their final paths.
    fn publish(mut self) -> anyhow::Result<Vec<(Utf8PathBuf, PartEntry)>> {
        self.close_open()
            .with_context(|| format!("writing the last part in {}", self.target.dir))?;
        let mut out = Vec::new();
        for (temp, part) in &self.closed {
            let path = self.target.dir.join(&part.name);
            std::fs::rename(temp, &path).with_context(|| format!("renaming {temp} to {path}"))?;
            out.push((path, part.clone()));
        }
        self.published = true;
        Ok(out)
    }
}

impl Write for PartWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.open.is_none() {
            self.open_next()?;
        }
        let limit = self.limit;
        let part = self.open.as_mut().expect("opened above");
        let room = limit.map_or(buf.len() as u64, |l| l - part.len);
        let n = part.file.write(&buf[..buf.len().min(room as usize)])?;
        part.len += n as u64;
        if limit.is_some_and(|l| part.len >= l) {
            self.close_open()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.open.as_mut().map_or(Ok(()), |p| p.file.flush())
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        if let Some(part) = self.open.take() {
            let _ = std::fs::remove_file(&part.temp);
        }
        for (temp, _) in &self.closed {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// A tar header for a bundle file: no owner, no time, so the same bundle packs to the
/// same bytes.
fn header(size: u64, executable: bool) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(if executable { 0o755 } else { 0o644 });
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Appends the bundle file `rel` to the tar, checking on the way that it is a regular
/// file of the manifest's size and sha256 (a bundle that does not verify is not packed).
fn append_checked<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Utf8Path,
    entry: &FileEntry,
) -> anyhow::Result<()> {
    let path = dir.join(&entry.path);
    let meta = std::fs::symlink_metadata(&path)
        .with_context(|| format!("reading {path}: the bundle is incomplete; run cache-verify"))?;
    if !meta.is_file() || meta.len() != entry.size {
        bail!(
            "{path} is not a regular file of {} bytes as manifest.yaml says; the bundle is \
             damaged: run `cargo xtask cache-verify`, then export again",
            entry.size
        );
    }
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let mut reader = HashingReader {
        inner: ChunkReader::new(ReadAhead::new(file.take(entry.size))),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut head = header(entry.size, entry.path == IMPORT_SCRIPT);
    tar.append_data(&mut head, &entry.path, &mut reader)
        .with_context(|| format!("packing {path}"))?;
    let digest = hex(&reader.hasher.finalize());
    if reader.bytes != entry.size || digest != entry.sha256 {
        bail!(
            "{path} changed or is damaged (sha256 {digest}, manifest.yaml says {}); nothing \
             was packed: run `cargo xtask cache-verify`, then export again",
            entry.sha256
        );
    }
    Ok(())
}

/// Writes the bundle in `bundle` (absolute) as a pack at `target`, split into parts of at
/// most `split` bytes if given. Nothing is left behind on failure.
pub fn pack(bundle: &Utf8Path, target: &Target, split: Option<u64>) -> anyhow::Result<PackReport> {
    // A delta packs too: what it carries (its base is named by its manifest).
    let (manifest, _) = crate::bundle::read_checked_any(bundle, &Default::default())?;
    if target.dir.starts_with(bundle) {
        bail!(
            "{} is inside the bundle folder {bundle}: a pack there would become an unlisted \
             file of the bundle; give --output a folder outside it",
            target.dir
        );
    }
    target.check_free(split.is_some())?;
    std::fs::create_dir_all(&target.dir).with_context(|| format!("creating {}", target.dir))?;
    let sums = std::fs::read(bundle.join(SUMS_FILE))
        .with_context(|| format!("reading {}", bundle.join(SUMS_FILE)))?;
    let digest = hex(&Sha256::digest(&sums));
    let manifest_text = std::fs::read(bundle.join(MANIFEST_FILE))
        .with_context(|| format!("reading {}", bundle.join(MANIFEST_FILE)))?;
    let mut tar = tar::Builder::new(PartWriter::new(target.clone(), split));
    for (name, bytes) in [(SUMS_FILE, &sums), (MANIFEST_FILE, &manifest_text)] {
        tar.append_data(&mut header(bytes.len() as u64, false), name, &bytes[..])
            .with_context(|| format!("packing {name} into {}", target.dir))?;
    }
    for entry in manifest.carried() {
        append_checked(&mut tar, bundle, entry)?;
    }
    let writer = tar
        .into_inner()
        .with_context(|| format!("finishing the tar in {}", target.dir))?;
    let parts = writer.publish()?;
    let total_size = parts.iter().map(|(_, p)| p.size).sum();
    let written: Vec<WrittenFile> = parts
        .iter()
        .map(|(path, p)| WrittenFile {
            path: path.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
        })
        .collect();
    let mut report = PackReport {
        bundle: bundle.to_owned(),
        digest: digest.clone(),
        files: manifest.carried().count() + 2,
        total_size,
        tar: None,
        index: None,
        parts: Vec::new(),
        script: target.dir.join(script_name(&target.name)),
    };
    match split {
        None => report.tar = written.first().cloned(),
        Some(part_size) => {
            let index = PackIndex {
                name: target.name.clone(),
                bundle_digest: digest,
                part_size,
                total_size,
                parts: parts.into_iter().map(|(_, p)| p).collect(),
            };
            let path = target.dir.join(index_name(&target.name));
            if let Err(e) = write_atomic(&path, index.to_text().as_bytes()) {
                for part in &written {
                    let _ = std::fs::remove_file(&part.path);
                }
                return Err(e);
            }
            report.index = Some(path);
            report.parts = written.clone();
        }
    }
    if let Err(e) = write_atomic(&report.script, crate::model::pack::IMPORT_SCRIPT.as_bytes()) {
        for file in written.iter().map(|w| &w.path).chain(&report.index) {
            let _ = std::fs::remove_file(file);
        }
        return Err(e);
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// Reading a pack

/// A pack to read: one tar, or the parts an index names.
pub enum Source {
    Tar(Utf8PathBuf),
    Parts {
        index_path: Utf8PathBuf,
        index: PackIndex,
    },
}

impl Source {
    /// `path` (absolute): `NAME.pack-index`, whose parts must all lie beside it with the
    /// index's sizes and no other part of that name, or a `.tar`.
    pub fn open(path: &Utf8Path) -> anyhow::Result<Source> {
        let file = path.file_name().unwrap_or("");
        if file.ends_with(crate::model::pack::INDEX_SUFFIX) {
            let size = std::fs::metadata(path)
                .with_context(|| format!("reading the pack index {path}"))?
                .len();
            if size > MAX_INDEX_BYTES {
                bail!("{path} is {size} bytes, too large for a pack index; it is not one");
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the pack index {path}"))?;
            let index = PackIndex::parse(&text).with_context(|| {
                format!("{path} is not a pack index cache-pack wrote; copy it again")
            })?;
            check_parts_on_disk(path, &index)?;
            return Ok(Source::Parts {
                index_path: path.to_owned(),
                index,
            });
        }
        if file.contains(".tar.part-") {
            bail!("{path} is one part of a pack: give its index (NAME.pack-index) instead");
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => Ok(Source::Tar(path.to_owned())),
            Ok(_) => bail!("{path} is not a regular file; give a .tar or a .pack-index"),
            Err(e) => Err(e).with_context(|| format!("reading the pack {path}")),
        }
    }

    fn stream(&self) -> anyhow::Result<Stream> {
        Ok(match self {
            Source::Tar(path) => {
                Stream::Tar(File::open(path).with_context(|| format!("opening {path}"))?)
            }
            Source::Parts { index_path, index } => Stream::Parts(Box::new(PartsReader {
                dir: index_path.parent().unwrap_or(index_path).to_owned(),
                parts: index.parts.clone(),
                at: 0,
                file: None,
                hasher: Sha256::new(),
                read: 0,
                failure: None,
            })),
        })
    }
}

/// Every part the index names is beside it with its size; no other part of that name is.
fn check_parts_on_disk(index_path: &Utf8Path, index: &PackIndex) -> anyhow::Result<()> {
    let dir = index_path.parent().unwrap_or(index_path);
    let mut problems = Vec::new();
    for part in &index.parts {
        let path = dir.join(&part.name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == part.size => {}
            Ok(meta) if meta.is_file() => problems.push(format!(
                "part {} is {} bytes, the index says {}: it is truncated or damaged; copy it again",
                part.name,
                meta.len(),
                part.size
            )),
            Ok(_) => problems.push(format!("part {} is not a regular file", part.name)),
            Err(_) => problems.push(format!(
                "part {} is missing: copy it beside {index_path}",
                part.name
            )),
        }
    }
    let named: Vec<&str> = index.parts.iter().map(|p| p.name.as_str()).collect();
    let mut extra: Vec<String> = dir
        .read_dir_utf8()
        .with_context(|| format!("reading folder {dir}"))?
        .flatten()
        .map(|e| e.file_name().to_string())
        .filter(|f| looks_like_part(&index.name, f) && !named.contains(&f.as_str()))
        .collect();
    extra.sort();
    for file in extra {
        problems.push(format!(
            "part {file} is beside the index but not in it (an extra part): remove it, or copy \
             the index that goes with it"
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the pack {index_path} is not complete; nothing was read:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// The parts of an index as one stream, each checked (size and sha256) as it ends.
struct PartsReader {
    dir: Utf8PathBuf,
    parts: Vec<PartEntry>,
    at: usize,
    file: Option<File>,
    hasher: Sha256,
    read: u64,
    /// Why the stream stopped, naming the part.
    failure: Option<String>,
}

impl PartsReader {
    fn fail(&mut self, why: String) -> io::Error {
        self.failure = Some(why.clone());
        io::Error::other(why)
    }

    /// Checks the part just read to its end.
    fn end_of_part(&mut self) -> io::Result<()> {
        let part = self.parts[self.at].clone();
        let digest = hex(&std::mem::take(&mut self.hasher).finalize());
        if self.read != part.size {
            return Err(self.fail(format!(
                "part {} is {} bytes, the index says {}: copy it again",
                part.name, self.read, part.size
            )));
        }
        if digest != part.sha256 {
            let why = match self.parts.iter().find(|p| p.sha256 == digest) {
                Some(other) => format!(
                    "part {} holds the bytes of part {} (the parts were renamed or reordered): \
                     give each part its own name again",
                    part.name, other.name
                ),
                None => format!(
                    "part {} is damaged (sha256 {digest}, the index says {}): copy it again",
                    part.name, part.sha256
                ),
            };
            return Err(self.fail(why));
        }
        self.at += 1;
        self.read = 0;
        self.file = None;
        Ok(())
    }
}

impl Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.failure {
            return Err(io::Error::other(why.clone()));
        }
        loop {
            if self.at == self.parts.len() {
                return Ok(0);
            }
            if self.file.is_none() {
                let path = self.dir.join(&self.parts[self.at].name);
                match File::open(&path) {
                    Ok(file) => self.file = Some(file),
                    Err(e) => return Err(self.fail(format!("opening part {path}: {e}"))),
                }
            }
            let n = self.file.as_mut().expect("opened").read(buf)?;
            if n == 0 {
                self.end_of_part()?;
                continue;
            }
            self.hasher.update(&buf[..n]);
            self.read += n as u64;
            if self.read > self.parts[self.at].size {
                let part = self.parts[self.at].clone();
                return Err(self.fail(format!(
                    "part {} is longer than the {} bytes the index says: copy it again",
                    part.name, part.size
                )));
            }
            return Ok(n);
        }
    }
}

/// The pack as one byte stream.
enum Stream {
    Tar(File),
    Parts(Box<PartsReader>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tar(file) => file.read(buf),
            Stream::Parts(parts) => parts.read(buf),
        }
    }
}

impl Stream {
    /// Reads what the tar reader left (the end of the last part) and checks every part;
    /// the part that failed, if one did.
    fn finish(&mut self) -> Option<String> {
        let drained = io::copy(self, &mut io::sink());
        match self {
            Stream::Tar(_) => drained.err().map(|e| e.to_string()),
            Stream::Parts(parts) => parts
                .failure
                .clone()
                .or_else(|| drained.err().map(|e| e.to_string())),
        }
    }
}

/// What reading a pack found.
#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    pub pack: Utf8PathBuf,
    /// sha256 of SHA256SUMS, the pack's first entry.
    pub digest: String,
    /// Files read and checked (SHA256SUMS and manifest.yaml included).
    pub files: usize,
    pub bytes: u64,
    pub parts: usize,
    pub seconds: f64,
}

/// Reads the pack at `source`, checking every part and every file; each file is written
/// below `dest` (a fresh, empty folder) when given, else only hashed. `expect_digest` is
/// the digest the operator got from elsewhere (a release page): the index's own digest
/// only proves that the parts and the index belong together.
pub fn read(
    source: &Source,
    dest: Option<&Utf8Path>,
    expect_digest: Option<&str>,
) -> anyhow::Result<ReadReport> {
    let start = std::time::Instant::now();
    let mut expected: Vec<(&str, &str)> = Vec::new();
    let (pack, parts) = match source {
        Source::Tar(path) => (path.clone(), 0),
        Source::Parts { index_path, index } => {
            expected.push(("its index says", index.bundle_digest.as_str()));
            (index_path.clone(), index.parts.len())
        }
    };
    if let Some(digest) = expect_digest {
        expected.push(("--expect-digest says", digest));
    }
    let mut stream = BufReader::with_capacity(BUFFER, source.stream()?);
    let result = read_tar(&mut stream, dest, &pack, &expected);
    // Every part is checked to its end, even when the tar failed first: a damaged part
    // is named as such, not only as the file that crossed it.
    let part_failure = stream.get_mut().finish();
    let (digest, files, bytes) = match (result, part_failure) {
        (Ok(done), None) => done,
        (Ok(_), Some(why)) => bail!("{why}; nothing was kept from {pack}"),
        (Err(e), Some(why)) if format!("{e:#}").contains(&why) => {
            bail!("{why}; nothing was kept from {pack}")
        }
        (Err(e), Some(why)) => bail!("{why}; nothing was kept from {pack} (then: {e:#})"),
        (Err(e), None) => return Err(e),
    };
    Ok(ReadReport {
        pack,
        digest,
        files,
        bytes,
        parts,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The manifest and digest of the pack at `path` (absolute): its first two entries,
/// `SHA256SUMS` and `manifest.yaml`, checked against each other, and nothing after them
/// (what `cache-export --since` needs of a packed base: the files it lists).
pub fn manifest_of(path: &Utf8Path) -> anyhow::Result<(Manifest, String)> {
    let source = Source::open(path)?;
    let stream = BufReader::with_capacity(BUFFER, source.stream()?);
    let mut archive = tar::Archive::new(stream);
    let mut entries = archive
        .entries()
        .with_context(|| format!("reading the tar of {path}"))?;
    let (sums, manifest, _) = read_meta(&mut entries).with_context(|| format!("reading {path}"))?;
    let digest = hex(&Sha256::digest(&sums));
    if let Source::Parts { index, .. } = &source {
        if index.bundle_digest != digest {
            bail!(
                "the bundle in {path} has digest {digest}, its index says {}: the parts are \
                 not those of that index; copy them again",
                index.bundle_digest
            );
        }
    }
    Ok((manifest, digest))
}

/// The entry's path, normalized (archive.rs's rules: no absolute path, no `..`).
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> anyhow::Result<String> {
    let raw = entry.path_bytes().into_owned();
    let name = String::from_utf8_lossy(&raw).into_owned();
    let parts = normalize_entry_path(&raw)
        .map_err(|why| anyhow::anyhow!("refusing tar entry {name:?}: {why}"))?;
    if parts.is_empty() {
        bail!("refusing tar entry {name:?}: it names no file");
    }
    Ok(parts.join("/"))
}

/// Reads the first two entries, `SHA256SUMS` then `manifest.yaml`, and checks they agree.
fn read_meta<R: Read>(
    entries: &mut tar::Entries<'_, R>,
) -> anyhow::Result<(Vec<u8>, Manifest, Vec<u8>)> {
    let mut next = |name: &str| -> anyhow::Result<Vec<u8>> {
        let mut entry = entries
            .next()
            .with_context(|| format!("the pack is empty: {name} should come first"))?
            .with_context(|| format!("reading {name} from the pack: it is damaged"))?;
        let path = entry_path(&entry)?;
        let kind = entry.header().entry_type();
        if path != name || !kind.is_file() || entry.size() > MAX_META_BYTES {
            bail!(
                "the pack starts with {path:?}, expected {name}: it was not written by cache-pack"
            );
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {name} from the pack"))?;
        Ok(bytes)
    };
    let sums = next(SUMS_FILE)?;
    let manifest_bytes = next(MANIFEST_FILE)?;
    let text = std::str::from_utf8(&manifest_bytes).context("manifest.yaml is not UTF-8")?;
    let manifest = Manifest::from_yaml(text).context("reading manifest.yaml from the pack")?;
    let sums_text = std::str::from_utf8(&sums).context("SHA256SUMS is not UTF-8")?;
    let manifest_sha256 = crate::bundle::hex(&sha2::Sha256::digest(&manifest_bytes));
    manifest
        .check_sums_agree(sums_text, &manifest_sha256)
        .context("checking SHA256SUMS from the pack")?;
    Ok((sums, manifest, manifest_bytes))
}

/// Creates `dest/rel` (its folders too) and streams `reader` into it, hashing.
fn write_file(
    dest: &Utf8Path,
    rel: &str,
    mode: u32,
    reader: &mut dyn Read,
) -> anyhow::Result<(u64, String)> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dest.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
    }
    let file = File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("creating {path}"))?;
    let mut writer = HashingWriter::new(BufWriter::with_capacity(BUFFER, file));
    io::copy(reader, &mut writer).with_context(|| format!("writing {path}"))?;
    let (buffered, size, digest) = writer.finish();
    buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {path}"))?;
    Ok((size, digest))
}

/// Hashes (and writes, with `dest`) one entry's bytes.
fn take_file(
    dest: Option<&Utf8Path>,
    rel: &str,
    mode: u32,
    reader: &mut dyn Read,
) -> anyhow::Result<(u64, String)> {
    match dest {
        Some(dest) => write_file(dest, rel, mode, reader),
        None => {
            let mut writer = HashingWriter::new(io::sink());
            io::copy(reader, &mut writer)
                .with_context(|| format!("reading {rel} from the pack"))?;
            let (_, size, digest) = writer.finish();
            Ok((size, digest))
        }
    }
}

/// Reads the tar: metadata first, then each listed file once, checked; `(digest of
/// SHA256SUMS, files, bytes)`.
fn read_tar<R: Read>(
    reader: R,
    dest: Option<&Utf8Path>,
    pack: &Utf8Path,
    expected: &[(&str, &str)],
) -> anyhow::Result<(String, usize, u64)> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive
        .entries()
        .with_context(|| format!("reading the tar of {pack}"))?;
    let (sums, manifest, manifest_bytes) = read_meta(&mut entries)?;
    let digest = hex(&Sha256::digest(&sums));
    // Checked before any file is read: a bundle other than the one expected is refused
    // whole, not file by file.
    for (who, want) in expected {
        if digest != *want {
            bail!(
                "the bundle in {pack} has digest {digest} (sha256 of its SHA256SUMS), {who} \
                 {want}: this is another bundle than the one expected; get the index and the \
                 parts of one release, and its digest from the same release"
            );
        }
    }
    for (name, bytes) in [(SUMS_FILE, &sums), (MANIFEST_FILE, &manifest_bytes)] {
        take_file(dest, name, 0o644, &mut &bytes[..])?;
    }
    let mut pending: BTreeMap<&str, &FileEntry> =
        manifest.carried().map(|f| (f.path.as_str(), f)).collect();
    let mut bytes = (sums.len() + manifest_bytes.len()) as u64;
    let mut last = MANIFEST_FILE.to_string();
    for entry in entries {
        let mut entry = entry.with_context(|| {
            format!("reading the pack after {last:?}: it is damaged or truncated")
        })?;
        let path = entry_path(&entry)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            bail!("refusing tar entry {path:?}: not a regular file or folder (a link or device); the pack was not written by cache-pack: do not use it");
        }
        let Some(listed) = pending.remove(path.as_str()) else {
            bail!("refusing tar entry {path:?}: manifest.yaml does not list it (or lists it once and it comes again); the pack was not written by cache-pack: do not use it");
        };
        if entry.size() != listed.size {
            bail!("{path}: {} bytes in the pack, manifest.yaml says {}; the pack is damaged: copy it again", entry.size(), listed.size);
        }
        let mode = if entry.header().mode().unwrap_or(0) & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let (size, sha256) = take_file(dest, &path, mode, &mut entry)?;
        if size != listed.size || sha256 != listed.sha256 {
            bail!("{path}: sha256 {sha256} in the pack, manifest.yaml says {} (corrupted); copy the pack again", listed.sha256);
        }
        bytes += size;
        last = path;
    }
    if !pending.is_empty() {
        let missing: Vec<&str> = pending.keys().copied().collect();
        bail!(
            "the pack lacks {} file(s) manifest.yaml lists: {}; it is truncated: copy it again",
            missing.len(),
            missing.join(", ")
        );
    }
    Ok((digest, manifest.carried().count() + 2, bytes))
}

/// Unpacks `source` into `output` (absolute, must not exist): into a temporary folder
/// beside it, renamed into place only once every part and every file checked.
pub fn unpack(
    source: &Source,
    output: &Utf8Path,
    expect_digest: Option<&str>,
) -> anyhow::Result<ReadReport> {
    if std::fs::symlink_metadata(output).is_ok() {
        bail!("{output} already exists; cache-unpack writes a new folder only: remove it, or give another --output");
    }
    let parent = output.parent().context("--output has no parent folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
    let temp = temp_sibling(output);
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir(&temp).with_context(|| format!("creating {temp}"))?;
    let result = read(source, Some(&temp), expect_digest).and_then(|report| {
        std::fs::rename(&temp, output).with_context(|| format!("renaming {temp} to {output}"))?;
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Unpacks `source` into the bundle folder `dir` (absolute): as [`unpack`] when `dir` does
/// not exist; into a folder that exists but holds no bundle (a project's
/// `docker-build-cache/` with only its README, say), through a folder beside it whose
/// entries are then moved in, none of them replacing anything. A folder that holds a
/// bundle (or any name the pack brings) is refused and left as it is.
pub fn unpack_into(
    source: &Source,
    dir: &Utf8Path,
    expect_digest: Option<&str>,
) -> anyhow::Result<ReadReport> {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return unpack(source, dir, expect_digest),
        Err(e) => return Err(e).with_context(|| format!("reading {dir}")),
        Ok(meta) => meta,
    };
    if !meta.is_dir() {
        bail!("{dir} exists and is not a folder: give another bundle folder");
    }
    for name in [MANIFEST_FILE, SUMS_FILE] {
        if std::fs::symlink_metadata(dir.join(name)).is_ok() {
            bail!(
                "{dir} already holds a bundle ({name}): a pack unpacks into a folder without \
                 one. Give another with --bundle DIR (then `patch-compose --bundle DIR`), or \
                 move {dir} away first"
            );
        }
    }
    let name = dir.file_name().unwrap_or("bundle");
    let beside = dir.with_file_name(format!(".{name}.unpack-{}", std::process::id()));
    let report = unpack(source, &beside, expect_digest)?;
    let moved = move_entries_in(&beside, dir);
    let _ = std::fs::remove_dir_all(&beside);
    moved?;
    Ok(report)
}

/// Moves every entry of `from` into `dir`, refusing before the first move if one is there
/// already; the manifest and SHA256SUMS last, so that a move cut short leaves no bundle.
fn move_entries_in(from: &Utf8Path, dir: &Utf8Path) -> anyhow::Result<()> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {from}"))? {
        let name = entry?.file_name();
        let name = name
            .to_str()
            .with_context(|| format!("a name in {from} is not UTF-8"))?
            .to_string();
        if std::fs::symlink_metadata(dir.join(&name)).is_ok() {
            bail!(
                "{dir} already has {name}, which the pack brings too: give another bundle \
                 folder with --bundle DIR, or move {dir}/{name} away first"
            );
        }
        names.push(name);
    }
    names.sort_by_key(|n| (n == MANIFEST_FILE || n == SUMS_FILE, n.clone()));
    for name in names {
        std::fs::rename(from.join(&name), dir.join(&name))
            .with_context(|| format!("moving {name} into {dir}"))?;
    }
    Ok(())
}

/// Verifies the pack at `path` (absolute) as it streams, writing nothing; reports on stderr.
pub fn verify_pack(path: &Utf8Path) -> anyhow::Result<ReadReport> {
    let source = Source::open(path)?;
    eprintln!("   Verifying {path} (streaming; nothing is written)");
    let report = read(&source, None, None)?;
    eprintln!(
        "    Verified {} files, {} in {:.2}s{}; bundle digest {}",
        report.files,
        human_bytes(report.bytes),
        report.seconds,
        match report.parts {
            0 => String::new(),
            n => format!(" from {n} parts"),
        },
        report.digest
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::test_dir;

    /// A bundle manifest and SHA256SUMS listing `files` (path, bytes).
    fn meta(files: &[(&str, &[u8])]) -> (String, String) {
        let mut manifest = String::from(
            "format_version: 1\ntool_version: 0.1.0\ncreated: 2026-11-29T00:00:00Z\n\
             project_name: p\nengine:\n  server_version: '26.1.5'\n  arch: amd64\n  \
             containerd_store: true\nstrategy: local\ncompression: none\nimages: []\n\
             services: []\nfiles:\n",
        );
        let mut sums = Vec::new();
        for (path, bytes) in files {
            let digest = hex(&Sha256::digest(bytes));
            manifest.push_str(&format!(
                "- path: '{path}'\n  size: {}\n  sha256: {digest}\n",
                bytes.len()
            ));
            sums.push(format!("{digest}  {path}\n"));
        }
        // SHA256SUMS lists manifest.yaml too, as cache-export writes it.
        let manifest_digest = hex(&Sha256::digest(manifest.as_bytes()));
        sums.push(format!("{manifest_digest}  manifest.yaml\n"));
        sums.sort_by(|a, b| a[66..].cmp(&b[66..]));
        (manifest, sums.concat())
    }

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str),
        Raw(&'a str, &'a [u8]),
    }

    /// A tar of `entries`; `Raw` writes its name into the header unchecked.
    fn tar(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match entry {
                E::File(name, bytes) => {
                    h.set_size(bytes.len() as u64);
                    b.append_data(&mut h, name, *bytes).unwrap();
                }
                E::Link(name, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, name, target).unwrap();
                }
                E::Raw(name, bytes) => {
                    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                    h.set_size(bytes.len() as u64);
                    h.set_cksum();
                    b.append(&h, *bytes).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// Reads `tar` as a pack into a fresh folder; the error text, or "ok".
    fn read_tar_file(name: &str, bytes: &[u8]) -> (String, Utf8PathBuf) {
        let dir = test_dir(&format!("pack-{name}"));
        let path = dir.join("p.tar");
        std::fs::write(&path, bytes).unwrap();
        let out = dir.join("out");
        let result = unpack(&Source::open(&path).unwrap(), &out, None);
        let text = match result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{e:#}"),
        };
        (text, out)
    }

    #[test]
    fn hostile_tars_are_refused_naming_the_entry() {
        let good: &[u8] = b"good";
        let (manifest, sums) = meta(&[("a/good", good)]);
        let head = [
            E::File(SUMS_FILE, sums.as_bytes()),
            E::File(MANIFEST_FILE, manifest.as_bytes()),
        ];
        let cases: Vec<(&str, Vec<E<'_>>, &str)> = vec![
            (
                "unlisted",
                vec![E::File("a/good", good), E::File("a/evil", b"x")],
                "\"a/evil\": manifest.yaml does not list it",
            ),
            (
                "twice",
                vec![E::File("a/good", good), E::File("a/good", good)],
                "\"a/good\": manifest.yaml does not list it (or lists it once",
            ),
            (
                "symlink",
                vec![E::Link("a/good", "/etc/passwd")],
                "\"a/good\": not a regular file or folder",
            ),
            (
                "dotdot",
                vec![E::Raw("../a/good", good)],
                "its path has a `..` component",
            ),
            (
                "absolute",
                vec![E::Raw("/a/good", good)],
                "its path is absolute",
            ),
            (
                "damaged",
                vec![E::File("a/good", b"evil")],
                "a/good: sha256",
            ),
            (
                "missing",
                vec![],
                "lacks 1 file(s) manifest.yaml lists: a/good",
            ),
        ];
        for (name, body, why) in cases {
            let entries: Vec<E<'_>> = head.iter().map(E::clone_file).chain(body).collect();
            let (err, out) = read_tar_file(name, &tar(&entries));
            assert!(err.contains(why), "{name}: {err:?} does not say {why:?}");
            assert!(!out.exists(), "{name}: a refused pack left {out}");
            let parent = out.parent().unwrap();
            let left: Vec<_> = std::fs::read_dir(parent)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(left.len(), 1, "{name}: a refused pack left {left:?}");
        }
        let (ok, out) = read_tar_file(
            "good",
            &tar(&[
                head[0].clone_file(),
                head[1].clone_file(),
                E::File("a/good", good),
            ]),
        );
        assert_eq!(ok, "ok");
        assert_eq!(std::fs::read(out.join("a/good")).unwrap(), good);
    }

    #[test]
    fn the_metadata_must_come_first() {
        let (manifest, sums) = meta(&[]);
        let (err, _) = read_tar_file(
            "order",
            &tar(&[
                E::File(MANIFEST_FILE, manifest.as_bytes()),
                E::File(SUMS_FILE, sums.as_bytes()),
            ]),
        );
        assert!(
            err.contains("starts with \"manifest.yaml\", expected SHA256SUMS"),
            "{err}"
        );
        let (err, _) = read_tar_file(
            "disagree",
            &tar(&[
                E::File(
                    SUMS_FILE,
                    format!("{sums}{}  x\n", "0".repeat(64)).as_bytes(),
                ),
                E::File(MANIFEST_FILE, manifest.as_bytes()),
            ]),
        );
        assert!(
            err.contains("x is in SHA256SUMS but not in manifest.yaml"),
            "{err}"
        );
    }

    impl E<'_> {
        fn clone_file(&self) -> E<'_> {
            match self {
                E::File(n, b) => E::File(n, b),
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn parts_are_cut_at_the_limit_and_never_empty() {
        let dir = test_dir("pack-parts");
        let target = Target {
            dir: dir.clone(),
            name: "b".into(),
        };
        let mut writer = PartWriter::new(target.clone(), Some(1024));
        writer.write_all(&[7u8; 3000]).unwrap();
        writer.write_all(&[8u8; 72]).unwrap();
        let parts = writer.publish().unwrap();
        let sizes: Vec<u64> = parts.iter().map(|(_, p)| p.size).collect();
        assert_eq!(sizes, [1024, 1024, 1024]);
        assert_eq!(parts[2].0, dir.join("b.tar.part-003"));
        let dropped = PartWriter::new(
            Target {
                dir: dir.clone(),
                name: "c".into(),
            },
            Some(1024),
        );
        let mut dropped = dropped;
        dropped.write_all(&[1u8; 2000]).unwrap();
        drop(dropped);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["b.tar.part-001", "b.tar.part-002", "b.tar.part-003"],
            "a dropped writer left files"
        );
    }
}
