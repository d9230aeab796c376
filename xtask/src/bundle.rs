//! The bundle on disk: hashing while writing, verifying against the manifest (and
//! reporting it), reusing the previous bundle's files, and the export lock.
//!
//! Every digest is computed while data streams (one pass, 1 MiB buffers, sha2 with the
//! CPU's SHA extensions); verification hashes files on all cores.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::manifest::{
    escape, is_safe_relative_path, FileEntry, Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES,
    SUMS_FILE,
};

pub const BUFFER: usize = 1 << 20;

/// The folder `cache-export` writes and `cache-import` reads by default.
pub const DEFAULT_DIR: &str = "docker-build-cache";

/// Files of the bundle folder that belong to the repository, not to a bundle.
pub const REPOSITORY_FILES: [&str; 2] = ["README.md", ".gitignore"];

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a file of a bundle for reading: a symlink in its last component is not followed,
/// a FIFO does not block, and anything but a regular file is refused.
pub fn open_regular(path: &Utf8Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other(
                "it is a symlink, and a bundle holds regular files only (not followed)",
            ),
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(
            "it is not a regular file (a FIFO, a device or a folder), and a bundle holds \
             regular files only",
        ));
    }
    Ok(file)
}

/// Reads a whole file of a bundle ([`open_regular`]), refusing one larger than `cap`
/// before reading it.
pub fn read_capped(path: &Utf8Path, cap: usize) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let size = file.metadata()?.len();
    if size > cap as u64 {
        return Err(io::Error::other(format!(
            "it is {size} bytes, more than the {cap} it may have"
        )));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(cap as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > cap {
        return Err(io::Error::other(format!(
            "it grew to more than the {cap} bytes it may have"
        )));
    }
    Ok(bytes)
}

/// Size and sha256 of a file of a bundle ([`open_regular`]), streaming.
pub fn hash_file(path: &Utf8Path) -> io::Result<(u64, String)> {
    let mut file = open_regular(path)?;
    let mut hasher = Sha256::new();
    let size = file.metadata()?.len();
    if size < 4 * BUFFER as u64 {
        let mut buf = Vec::with_capacity(size as usize);
        (&mut file).take(4 * BUFFER as u64).read_to_end(&mut buf)?;
        hasher.update(&buf);
        return Ok((buf.len() as u64, hex(&hasher.finalize())));
    }
    // Big files: reading on one core, hashing on the other.
    let bytes = pipelined(file, |chunk| {
        hasher.update(chunk);
        Ok(())
    })?;
    Ok((bytes, hex(&hasher.finalize())))
}

/// A chunk read ahead by [`ReadAhead`], or how the reading ended.
pub enum Chunk {
    Data(Vec<u8>),
    Failed(io::Error),
}

/// Reads on a thread of its own into chunks of up to [`BUFFER`] bytes, a few ahead of the
/// consumer, so that reading or decompressing — or the engine's stream — overlaps with
/// hashing and writing on the other core. Buffers go back to the reader once consumed
/// ([`ReadAhead::recycle`]): memory stays bounded and no page is faulted in twice. The
/// thread ends at the end of the input, or when the consumer drops this.
pub struct ReadAhead {
    chunks: std::sync::mpsc::Receiver<Chunk>,
    spare: std::sync::mpsc::Sender<Vec<u8>>,
}

const IN_FLIGHT: usize = 4;

impl ReadAhead {
    pub fn new<R: Read + Send + 'static>(mut reader: R) -> ReadAhead {
        let (tx, chunks) = std::sync::mpsc::sync_channel(IN_FLIGHT);
        let (spare, spares) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut made = 0;
            loop {
                let mut buf = match spares.try_recv() {
                    Ok(buf) => buf,
                    Err(_) if made < IN_FLIGHT + 2 => {
                        made += 1;
                        vec![0u8; BUFFER]
                    }
                    Err(_) => match spares.recv() {
                        Ok(buf) => buf,
                        Err(_) => return,
                    },
                };
                buf.resize(BUFFER, 0);
                let mut filled = 0;
                while filled < buf.len() {
                    match reader.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.send(Chunk::Failed(e));
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                buf.truncate(filled);
                if tx.send(Chunk::Data(buf)).is_err() {
                    return;
                }
            }
        });
        ReadAhead { chunks, spare }
    }

    /// The next chunk; `None` at the end of the input.
    pub fn next_chunk(&self) -> Option<Chunk> {
        self.chunks.recv().ok()
    }

    /// Hands a consumed buffer back to the reader.
    pub fn recycle(&self, buf: Vec<u8>) {
        let _ = self.spare.send(buf);
    }
}

/// Reads `reader` (a child's stdout or stderr) to its end on a thread of its own, so the
/// child never blocks on a full pipe; the text.
pub fn read_in_background<R: Read + Send + 'static>(
    mut reader: R,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        text
    })
}

/// A [`ReadAhead`] as a plain reader (for parsers that want `Read`, like `tar::Archive`).
pub struct ChunkReader {
    ahead: ReadAhead,
    current: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    pub fn new(ahead: ReadAhead) -> ChunkReader {
        ChunkReader {
            ahead,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.ahead.next_chunk() {
                None => return Ok(0),
                Some(Chunk::Failed(e)) => return Err(e),
                Some(Chunk::Data(data)) => {
                    let done = std::mem::replace(&mut self.current, data);
                    if done.capacity() > 0 {
                        self.ahead.recycle(done);
                    }
                    self.at = 0;
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Feeds `consume` everything `reader` yields, read ahead on another thread; the byte count.
pub fn pipelined<R: Read + Send + 'static>(
    reader: R,
    mut consume: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let ahead = ReadAhead::new(reader);
    let mut total = 0u64;
    while let Some(chunk) = ahead.next_chunk() {
        match chunk {
            Chunk::Data(buf) => {
                consume(&buf)?;
                total += buf.len() as u64;
                ahead.recycle(buf);
            }
            Chunk::Failed(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Every regular file under `dir`, relative and `/`-separated, sorted. Symlinks and other
/// special files are refused: a bundle holds regular files only.
pub fn list_files(dir: &Utf8Path) -> anyhow::Result<Vec<String>> {
    fn walk(root: &Utf8Path, dir: &Utf8Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        let entries = dir
            .read_dir_utf8()
            .with_context(|| format!("reading folder {}", escape(dir.as_str())))?;
        for entry in entries {
            let entry =
                entry.with_context(|| format!("reading folder {}", escape(dir.as_str())))?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(root, path, out)?;
            } else if kind.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(path);
                out.push(rel.as_str().replace('\\', "/"));
            } else {
                bail!(
                    "{} is not a regular file or folder (a symlink or device); a bundle holds neither",
                    escape(path.as_str())
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Hashes `files` (relative to `dir`) on every core; results in the input order.
pub fn hash_files(
    dir: &Utf8Path,
    files: &[String],
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Vec<io::Result<(u64, String)>> {
    let next = AtomicUsize::new(0);
    type Slot = Option<io::Result<(u64, String)>>;
    let results: Mutex<Vec<Slot>> = Mutex::new((0..files.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(rel) = files.get(i) else { break };
                let result = hash_file(&dir.join(rel));
                if let Ok((size, _)) = &result {
                    progress(rel, *size);
                }
                if let Ok(mut all) = results.lock() {
                    all[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("not hashed"))))
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum FileProblem {
    Missing {
        path: String,
    },
    Size {
        path: String,
        expected: u64,
        actual: u64,
        sha256: String,
    },
    Digest {
        path: String,
        expected: String,
        actual: String,
    },
    Unreadable {
        path: String,
        error: String,
    },
    UnsafePath {
        path: String,
    },
    /// A file the manifest does not list, in a folder handed to a build or merged into
    /// the host's caches: it would reach them unchecked.
    Unlisted {
        path: String,
        folder: String,
    },
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let escaped = |path: &str| escape(path);
        match self {
            FileProblem::Missing { path } => write!(f, "{}: missing", escaped(path)),
            FileProblem::Size { path, expected, actual, sha256 } => write!(
                f,
                "{}: {actual} bytes, expected {expected} (truncated or grown; actual sha256 {sha256})",
                escaped(path)
            ),
            FileProblem::Digest { path, expected, actual } => write!(
                f,
                "{}: sha256 {actual}, expected {} (corrupted)",
                escaped(path),
                escaped(expected)
            ),
            FileProblem::Unreadable { path, error } => {
                write!(f, "{}: cannot be read: {error}", escaped(path))
            }
            FileProblem::UnsafePath { path } => write!(
                f,
                "{}: the manifest names a path outside the bundle",
                escaped(path)
            ),
            FileProblem::Unlisted { path, folder } => write!(
                f,
                "{}: not in the manifest, in {}/, which is handed to the builds (or merged \
                 into ~/.npm); an unlisted file there would reach them unchecked: remove it, \
                 or copy the bundle again",
                escaped(path),
                escaped(folder)
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Verification {
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub problems: Vec<FileProblem>,
    /// Files in the folder that the manifest does not list.
    pub unlisted: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads the bundle's manifest, checks that SHA256SUMS agrees with it.
pub fn read_manifest(dir: &Utf8Path) -> anyhow::Result<Manifest> {
    Ok(read_checked_manifest(dir, &Trust::default())?.0)
}

/// The signature of `SHA256SUMS` that `cache-export --sign-key` writes beside it.
pub const SIGNATURE_FILE: &str = "SHA256SUMS.sig";
/// The `ssh-keygen -Y` namespace of that signature: a signature made for something else
/// (git commits, files) does not verify as a bundle's.
pub const SIGNING_NAMESPACE: &str = "xtask-bundle";

/// What a bundle must prove before anything else of it is read: its digest, and a
/// signature by `identity` in an allowed-signers file.
#[derive(Default, Clone)]
pub struct Trust {
    pub digest: Option<String>,
    pub signers: Option<(Utf8PathBuf, String)>,
}

/// Signs the bundle's `SHA256SUMS` (hence every file) with the ssh key `key`:
/// `SHA256SUMS.sig` beside it.
pub fn sign_sums(out: &Utf8Path, key: &Utf8Path) -> anyhow::Result<()> {
    let sh = xshell::Shell::new()?;
    let sums = out.join(SUMS_FILE);
    let sig = out.join(SIGNATURE_FILE);
    if sig.exists() {
        std::fs::remove_file(&sig).with_context(|| format!("removing {sig}"))?;
    }
    let namespace = SIGNING_NAMESPACE;
    xshell::cmd!(sh, "ssh-keygen -q -Y sign -f {key} -n {namespace} {sums}")
        .quiet()
        .run()
        .with_context(|| format!("signing {sums} with {key} (ssh-keygen -Y sign)"))?;
    Ok(())
}

/// Checks `SHA256SUMS.sig` against `sums`, the bytes of SHA256SUMS already read (what is
/// checked is what is used).
fn check_signature(
    dir: &Utf8Path,
    sums: &[u8],
    signers: &Utf8Path,
    identity: &str,
) -> anyhow::Result<()> {
    let sig_path = dir.join(SIGNATURE_FILE);
    let sig = read_capped(&sig_path, 64 * 1024).map_err(|e| {
        anyhow::anyhow!(
            "reading {sig_path}: {e}: the bundle is not signed (cache-export --sign-key), or \
             its signature was lost; do not import it"
        )
    })?;
    let sh = xshell::Shell::new()?;
    let tmp = sh.create_temp_dir()?;
    let sig_copy = tmp.path().join("SHA256SUMS.sig");
    std::fs::write(&sig_copy, &sig)?;
    let namespace = SIGNING_NAMESPACE;
    let out = xshell::cmd!(
        sh,
        "ssh-keygen -Y verify -f {signers} -I {identity} -n {namespace} -s {sig_copy}"
    )
    .stdin(sums)
    .quiet()
    .ignore_status()
    .output()
    .context("running ssh-keygen -Y verify (OpenSSH 8.1 or later)")?;
    if !out.status.success() {
        bail!(
            "{sig_path} is not a signature of this SHA256SUMS by {} in {signers} \
             (ssh-keygen: {}): the bundle was altered, or signed by someone else; nothing \
             else was read from it. Do not import it",
            crate::model::manifest::clip(identity),
            crate::model::manifest::clip(String::from_utf8_lossy(&out.stderr).trim())
        );
    }
    Ok(())
}

/// The bundle's digest: the sha256 of its `SHA256SUMS`, which lists every file of the
/// bundle, `manifest.yaml` included.
pub fn bundle_digest(sums: &[u8]) -> String {
    hex(&Sha256::digest(sums))
}

/// A digest as the user gave it (`sha256:` prefix optional, any case), or why not.
pub fn parse_digest(text: &str) -> anyhow::Result<String> {
    let hex = text.trim();
    let hex = hex
        .strip_prefix("sha256:")
        .unwrap_or(hex)
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "{:?} is not a bundle digest (64 hex digits, as cache-export prints it)",
            crate::model::manifest::clip(text)
        );
    }
    Ok(hex)
}

/// Reads the bundle's manifest and checks it, before anything else of the bundle is read:
/// `SHA256SUMS` (no symlink, no FIFO, at most 8 MiB) has the digest `expect` when one is
/// given, it lists `manifest.yaml` with the digest of the bytes read, and it agrees with
/// the manifest's file list. Returns the manifest and the bundle's digest.
/// A delta bundle (`cache-export --since`) is refused, naming its base: only
/// [`read_checked_any`] (cache-import and cache-verify) reads one.
pub fn read_checked_manifest(dir: &Utf8Path, trust: &Trust) -> anyhow::Result<(Manifest, String)> {
    let (manifest, digest) = read_checked_any(dir, trust)?;
    if manifest.base.is_some() {
        return Err(needs_base(dir, &manifest));
    }
    Ok((manifest, digest))
}

/// Why the delta bundle in `dir` cannot be used as it is, and what to do.
pub fn needs_base(dir: &Utf8Path, manifest: &Manifest) -> anyhow::Error {
    anyhow::anyhow!(
        "{dir} holds a delta bundle of {} (it carries {} of the {} files; the others are in \
         that base bundle): it needs its base. Run `cargo xtask cache-import --bundle {dir} \
         --base OLD`, OLD the base bundle's folder (or put it beside), which completes it \
         into a full bundle",
        manifest.base.as_ref().map_or("?", |b| b.digest.as_str()),
        manifest.carried().count(),
        manifest.files.len()
    )
}

/// [`read_checked_manifest`], a delta bundle included.
pub fn read_checked_any(dir: &Utf8Path, trust: &Trust) -> anyhow::Result<(Manifest, String)> {
    let path = dir.join(MANIFEST_FILE);
    if let Err(e) = std::fs::symlink_metadata(&path) {
        if e.kind() == io::ErrorKind::NotFound {
            bail!(
                "{dir} holds no bundle ({MANIFEST_FILE} is missing): run `cargo xtask cache-export` \
                 there, or copy the whole folder again if an export or a copy was interrupted"
            );
        }
    }
    let sums_path = dir.join(SUMS_FILE);
    let sums = read_capped(&sums_path, MAX_MANIFEST_BYTES).map_err(|e| {
        anyhow::anyhow!(
            "reading {sums_path}: {e}: the bundle is incomplete or altered; copy it again"
        )
    })?;
    let digest = bundle_digest(&sums);
    if let Some((signers, identity)) = &trust.signers {
        check_signature(dir, &sums, signers, identity)?;
    }
    if let Some(expect) = &trust.digest {
        if &digest != expect {
            bail!(
                "the bundle in {dir} has the digest sha256:{digest}, not the sha256:{expect} \
                 expected: it is not the bundle that was exported (damaged, or altered on \
                 the way); nothing was read from it but SHA256SUMS. Do not import it: copy \
                 it again from the export machine"
            );
        }
    }
    let sums = String::from_utf8(sums).map_err(|_| {
        anyhow::anyhow!("reading {sums_path}: it is not text; copy the bundle again")
    })?;
    let text = read_capped(&path, MAX_MANIFEST_BYTES)
        .map_err(|e| anyhow::anyhow!("reading {path}: {e}; copy the whole folder again"))?;
    let manifest_sha256 = hex(&Sha256::digest(&text));
    let mut listed = crate::model::manifest::parse_sha256sums(&sums)
        .with_context(|| format!("checking {sums_path}"))?;
    crate::model::manifest::check_manifest_listed(&mut listed, &manifest_sha256)
        .with_context(|| format!("checking {path} against {sums_path}"))?;
    let text = String::from_utf8(text)
        .map_err(|_| anyhow::anyhow!("reading {path}: it is not UTF-8 text"))?;
    let manifest = Manifest::from_yaml(&text).with_context(|| format!("reading {path}"))?;
    manifest
        .check_sums_agree(&sums, &manifest_sha256)
        .with_context(|| format!("checking {sums_path}"))?;
    Ok((manifest, digest))
}

/// The digest of the bundle `manifest` describes (hex): what [`write_manifest`] returns.
pub fn digest_of(manifest: &Manifest) -> String {
    let yaml = manifest.to_yaml();
    bundle_digest(
        manifest
            .sha256sums(&hex(&Sha256::digest(yaml.as_bytes())))
            .as_bytes(),
    )
}

/// Writes the bundle's `SHA256SUMS` and `manifest.yaml` (last: until it is there, the
/// folder holds no bundle); returns the bundle's digest.
pub fn write_manifest(out: &Utf8Path, manifest: &Manifest) -> anyhow::Result<String> {
    let yaml = manifest.to_yaml();
    let sums = manifest.sha256sums(&hex(&Sha256::digest(yaml.as_bytes())));
    write_atomic(&out.join(SUMS_FILE), sums.as_bytes())?;
    write_atomic(&out.join(MANIFEST_FILE), yaml.as_bytes())?;
    Ok(bundle_digest(sums.as_bytes()))
}

/// Checks every file of the bundle against the manifest, but those in `later` (which the
/// caller checks as it streams them).
pub fn verify(
    dir: &Utf8Path,
    manifest: &Manifest,
    later: &[String],
    progress: &(dyn Fn(&str, u64) + Sync),
) -> anyhow::Result<Verification> {
    let start = std::time::Instant::now();
    let checked = manifest.carried().filter(|f| !later.contains(&f.path));
    let mut report = Verification {
        files: checked.clone().count(),
        ..Verification::default()
    };
    let mut to_hash: Vec<&FileEntry> = Vec::new();
    for entry in checked {
        if !is_safe_relative_path(&entry.path) {
            report.problems.push(FileProblem::UnsafePath {
                path: entry.path.clone(),
            });
            continue;
        }
        match std::fs::symlink_metadata(dir.join(&entry.path)) {
            Ok(meta) if meta.is_file() => to_hash.push(entry),
            Ok(_) => report.problems.push(FileProblem::Unreadable {
                path: entry.path.clone(),
                error: "not a regular file".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                report.problems.push(FileProblem::Missing {
                    path: entry.path.clone(),
                })
            }
            Err(e) => report.problems.push(FileProblem::Unreadable {
                path: entry.path.clone(),
                error: e.to_string(),
            }),
        }
    }
    let names: Vec<String> = to_hash.iter().map(|e| e.path.clone()).collect();
    let results = hash_files(dir, &names, progress);
    for (entry, result) in to_hash.iter().zip(results) {
        match result {
            Err(e) => report.problems.push(FileProblem::Unreadable {
                path: entry.path.clone(),
                error: e.to_string(),
            }),
            Ok((size, digest)) => {
                report.bytes = report.bytes.saturating_add(size);
                if size != entry.size {
                    report.problems.push(FileProblem::Size {
                        path: entry.path.clone(),
                        expected: entry.size,
                        actual: size,
                        sha256: digest,
                    });
                } else if digest != entry.sha256 {
                    report.problems.push(FileProblem::Digest {
                        path: entry.path.clone(),
                        expected: entry.sha256.clone(),
                        actual: digest,
                    });
                }
            }
        }
    }
    // A delta's files from its base are not checked here: one in its folder is unlisted.
    let listed: std::collections::BTreeSet<&str> =
        manifest.carried().map(|f| f.path.as_str()).collect();
    let handed = handed_folders(manifest);
    for file in list_files(dir)? {
        let ours = [MANIFEST_FILE, SUMS_FILE, SIGNATURE_FILE, LEGACY_LOCK];
        let top_level_known = !file.contains('/')
            && (ours.contains(&file.as_str()) || REPOSITORY_FILES.contains(&file.as_str()));
        if listed.contains(file.as_str()) || top_level_known {
            continue;
        }
        match handed
            .iter()
            .find(|folder| file.starts_with(&format!("{folder}/")))
        {
            Some(folder) => report.problems.push(FileProblem::Unlisted {
                path: file,
                folder: folder.to_string(),
            }),
            None => report.unlisted.push(file),
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The lock file earlier versions left in the bundle folder (empty).
const LEGACY_LOCK: &str = ".lock";

/// The folders of the bundle that reach a build (BuildKit contexts and caches, read
/// whole) or the host (merged into ~/.npm): every file in them must be listed.
pub fn handed_folders(manifest: &Manifest) -> Vec<&str> {
    let mut folders: Vec<&str> = manifest
        .services
        .iter()
        .flat_map(|s| {
            [
                s.build_cache.as_deref(),
                s.wheelhouse.as_deref(),
                s.npm_cache.as_deref(),
                s.npm_host_cache.as_deref(),
            ]
            .into_iter()
            .flatten()
            .chain(s.contexts.values().map(String::as_str))
        })
        .collect();
    folders.sort();
    folders.dedup();
    folders
}

/// Writes `contents` to `path` through a temporary file beside it and a rename.
pub fn write_atomic(path: &Utf8Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {path}"));
    }
    Ok(())
}

pub fn temp_sibling(path: &Utf8Path) -> Utf8PathBuf {
    let name = path.file_name().unwrap_or("file");
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// An exclusive lock on a bundle folder, held while an export or import uses it. The lock
/// file is not in the bundle (a bundle on a read-only disk imports): it is
/// `/run/lock/xtask-bundle-<hash of the folder's canonical path>.lock`, or in the temporary
/// folder when /run/lock cannot be written. It is opened without following a symlink and
/// without blocking on a FIFO, and must be a regular file.
pub struct BundleLock {
    _file: File,
}

impl BundleLock {
    /// Locks `dir`, which must exist (an import) or is created (`create`: an export).
    pub fn acquire(dir: &Utf8Path, what: &str, create: bool) -> anyhow::Result<BundleLock> {
        if create {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        }
        let canonical = match std::fs::canonicalize(dir) {
            Ok(path) if path.is_dir() => path,
            Ok(_) => bail!("{dir} is not a folder: give --bundle the bundle's folder"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "{dir} does not exist, so it holds no bundle: give --bundle the folder \
                 cache-export wrote (copied whole)"
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {dir}")),
        };
        let name = format!(
            "xtask-bundle-{}.lock",
            &hex(&Sha256::digest(canonical.as_os_str().as_encoded_bytes()))[..24]
        );
        let run_lock = Utf8Path::new("/run/lock").join(&name);
        let (path, file) = match open_lock(&run_lock) {
            Ok(file) => (run_lock, file),
            Err(_) => {
                let tmp = Utf8PathBuf::from_path_buf(std::env::temp_dir())
                    .unwrap_or_else(|_| Utf8PathBuf::from("/tmp"))
                    .join(&name);
                let file = open_lock(&tmp).with_context(|| format!("opening the lock {tmp}"))?;
                (tmp, file)
            }
        };
        match file.try_lock() {
            Ok(()) => Ok(BundleLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another cache-export or cache-import is using {dir} (it holds {path}); \
                 wait for it to finish, then run {what} again"
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {path}"))
            }
        }
    }
}

/// Opens (or creates, 0600) a lock file: never through a symlink, never a FIFO or device.
fn open_lock(path: &Utf8Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(
            "it is not a regular file (a FIFO or a device); remove it",
        ));
    }
    Ok(file)
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Verifies the bundle in `dir`, reporting on stderr; `Err` only when it cannot be read
/// at all, a report with problems when files are bad.
/// Files named in `later` are left for the caller, which verifies them as it streams them.
pub fn verify_bundle(
    dir: &Utf8Path,
    manifest: &Manifest,
    print: bool,
    later: &[String],
) -> anyhow::Result<Verification> {
    let (count, total) = manifest
        .carried()
        .filter(|f| !later.contains(&f.path))
        .fold((0, 0u64), |(n, sum), f| (n + 1, sum.saturating_add(f.size)));
    eprintln!(
        "   Verifying {count} files ({}) in {dir}",
        human_bytes(total)
    );
    let report = verify(dir, manifest, later, &|_, _| {})?;
    for file in &report.unlisted {
        eprintln!(
            "warning: {} is in the bundle folder but not in its manifest; it is ignored",
            escape(file)
        );
    }
    if print || !report.ok() {
        for problem in &report.problems {
            eprintln!("error: {problem}");
        }
    }
    if report.ok() {
        eprintln!(
            "    Verified {} files, {} in {:.2}s ({}/s)",
            report.files,
            human_bytes(report.bytes),
            report.seconds,
            human_bytes((report.bytes as f64 / report.seconds.max(1e-6)) as u64)
        );
    } else {
        eprintln!(
            "error: the bundle in {dir} does not verify ({} bad of {} files); nothing was \
             loaded. Copy the named files again from the export machine, or export again.",
            report.problems.len(),
            report.files
        );
    }
    Ok(report)
}

/// Checks the previous bundle's `files` against its manifest (on all cores), then
/// hard-links (or copies) each to `dest_of(file)`; `false`, and nothing linked, if one of
/// them is missing or damaged.
pub fn link_checked(
    out: &Utf8Path,
    files: &[&FileEntry],
    dest_of: impl Fn(&FileEntry) -> Utf8PathBuf,
) -> anyhow::Result<bool> {
    let names: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let hashed = hash_files(out, &names, &|_, _| {});
    let intact = files
        .iter()
        .zip(&hashed)
        .all(|(e, h)| matches!(h, Ok((size, digest)) if *size == e.size && *digest == e.sha256));
    if !intact {
        return Ok(false);
    }
    for file in files {
        let (from, to) = (out.join(&file.path), dest_of(file));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).with_context(|| format!("copying {from} to {to}"))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_matches_known_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (inner, bytes, digest) = w.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(bytes, 3);
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pipelined_hashing_matches_a_plain_pass() {
        let dir = std::env::temp_dir().join(format!("xtask-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = Utf8PathBuf::from_path_buf(dir.join("big")).unwrap();
        let data: Vec<u8> = (0..(5 * BUFFER + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let (size, digest) = hash_file(&path).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(digest, hex(&Sha256::digest(&data)));
        let mut streamed = Sha256::new();
        let total = pipelined(std::fs::File::open(&path).unwrap(), |chunk| {
            streamed.update(chunk);
            Ok(())
        })
        .unwrap();
        assert_eq!((total, hex(&streamed.finalize())), (size, digest));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// cache-export --sign-key signs SHA256SUMS so that the import's check accepts it,
    /// and only those bytes.
    #[test]
    fn sign_sums_makes_a_signature_check_signature_accepts() {
        let sh = xshell::Shell::new().unwrap();
        let dir = crate::lab::test_dir("sign");
        let key = dir.join("key");
        if xshell::cmd!(sh, "ssh-keygen -q -t ed25519 -N '' -C me -f {key}")
            .quiet()
            .run()
            .is_err()
        {
            eprintln!("skipped: no ssh-keygen");
            return;
        }
        let public = std::fs::read_to_string(dir.join("key.pub")).unwrap();
        let signers = dir.join("allowed");
        std::fs::write(&signers, format!("me@x {public}")).unwrap();
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join(SUMS_FILE), b"sums\n").unwrap();
        sign_sums(&bundle, &key).unwrap();
        sign_sums(&bundle, &key).unwrap(); // again: the old signature is replaced
        check_signature(&bundle, b"sums\n", &signers, "me@x").unwrap();
        assert!(check_signature(&bundle, b"sumS\n", &signers, "me@x").is_err());
        assert!(check_signature(&bundle, b"sums\n", &signers, "you@x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn human_sizes() {
        let check = |n, s: &str| assert_eq!(human_bytes(n), s);
        check(5, "5 B");
        check(2048, "2.0 KiB");
        check(3 * 1024 * 1024 * 1024 / 2, "1.5 GiB");
    }
}
