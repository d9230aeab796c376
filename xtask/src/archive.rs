//! Tar archives the tool writes (`node_modules.tar.gz`) and unpacks, and the rules that
//! make unpacking safe.
//!
//! A bundle comes on a USB disk and is imported as root, so an archive in it may be
//! damaged or crafted. [`unpack_safely`] writes nothing outside its destination: it
//! refuses, naming the entry, absolute paths, `..` components, symlinks whose target
//! (resolved from the link's own folder) leaves the destination, hard links to anything
//! but a regular file unpacked earlier, device files and FIFOs, and two entries with the
//! same path once `.` and empty components are dropped (`a/./b`, `a//b`, `a/b`; names
//! are case-sensitive). It never writes through a symlink: every component of every
//! path is checked on disk with `symlink_metadata` (so an entry `x -> /etc` followed by
//! `x/passwd` is refused), files are created with `O_EXCL`, and at the end every symlink
//! is resolved once more on disk, confined to the destination, since links that are each
//! harmless can chain out (`a/up -> ..`, then `b -> a/up/../x`). On error the
//! destination may hold part of the archive: callers unpack into a fresh folder and
//! remove it on error. Owners are not restored and setuid/setgid/sticky bits are dropped.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

use anyhow::{bail, Context as _};
use camino::Utf8Path;

/// What an unpack wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub hard_links: usize,
    pub bytes: u64,
}

/// Unpacks the tar stream `reader` into `dest` (absolute, an existing folder).
#[allow(dead_code)] // the general form: node_modules.rs uses `unpack_safely_under`
pub fn unpack_safely<R: Read>(reader: R, dest: &Utf8Path) -> anyhow::Result<Unpacked> {
    unpack(reader, dest, None)
}

/// [`unpack_safely`], also refusing every entry that is not `top` or below `top/`.
pub fn unpack_safely_under<R: Read>(
    reader: R,
    dest: &Utf8Path,
    top: &str,
) -> anyhow::Result<Unpacked> {
    unpack(reader, dest, Some(top))
}

fn unpack<R: Read>(reader: R, dest: &Utf8Path, top: Option<&str>) -> anyhow::Result<Unpacked> {
    if !dest.is_absolute() {
        bail!("internal error: unpacking into the relative path {dest}");
    }
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!("{dest} is not a folder (a symlink or a file); nothing was unpacked"),
        Err(e) => return Err(e).with_context(|| format!("unpacking into {dest}")),
    }
    let mut archive = tar::Archive::new(HeaderGuard::new(reader));
    let mut unpacking = Unpacking {
        dest,
        top,
        seen: BTreeSet::new(),
        files: BTreeSet::new(),
        links: Vec::new(),
        done: Unpacked::default(),
    };
    let mut last = String::from("(the start)");
    let entries = archive
        .entries()
        .with_context(|| format!("reading the archive to unpack into {dest}"))?;
    for entry in entries {
        let mut entry = entry.with_context(|| {
            format!("reading the archive after entry {last:?}: it is damaged or truncated")
        })?;
        if let Some(name) = unpacking.entry(&mut entry)? {
            last = name;
        }
    }
    // Every link is harmless alone; resolved on disk, none may lead out together.
    let floor = usize::from(top.is_some());
    for (path, link) in &unpacking.links {
        resolve_on_disk(dest, path, floor).map_err(|why| {
            anyhow::anyhow!(
                "refusing archive entry {:?} (-> {link:?}): {why}; the archive is damaged or \
                 was crafted: do not use it, export it again",
                path.join("/")
            )
        })?;
    }
    Ok(unpacking.done)
}

/// An unpack under way: the paths written so far, and the counts.
struct Unpacking<'a> {
    dest: &'a Utf8Path,
    top: Option<&'a str>,
    /// Every path unpacked (normalized), to refuse a second entry with the same path.
    seen: BTreeSet<Vec<String>>,
    /// The regular files unpacked: the only targets a hard link may have.
    files: BTreeSet<Vec<String>>,
    /// The symlinks made, checked together on disk at the end.
    links: Vec<(Vec<String>, String)>,
    done: Unpacked,
}

impl Unpacking<'_> {
    /// Checks and writes one entry; its name, or `None` for an entry that writes nothing.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> anyhow::Result<Option<String>> {
        let dest = self.dest;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |why: String| -> anyhow::Error {
            anyhow::anyhow!(
                "refusing archive entry {name:?}: {why}; nothing was written outside {dest}. \
                 The archive is damaged or was crafted: do not use it, export it again"
            )
        };
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(None);
        }
        let path = normalize_entry_path(&raw).map_err(refuse)?;
        if path.is_empty() {
            if kind.is_dir() {
                return Ok(None); // `./`: the destination itself
            }
            return Err(refuse("it names the destination folder itself".into()));
        }
        if let Some(top) = self.top {
            if path[0] != top {
                return Err(refuse(format!("it would land outside {top}/")));
            }
        }
        if !self.seen.insert(path.clone()) {
            return Err(refuse(format!(
                "another entry already has the path {} (names that differ only by `.` or \
                 `/` are the same path)",
                path.join("/")
            )));
        }
        let target = dest.join(path.join("/"));
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                prepare_parents(dest, &path).map_err(refuse)?;
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(safe_mode(mode, 0o600))
                    .open(&target)
                    .map_err(|e| refuse(format!("cannot create {target}: {e}")))?;
                let mut out = BufWriter::new(file);
                let bytes = io::copy(entry, &mut out)
                    .with_context(|| format!("unpacking {name:?} to {target}"))?;
                let file = out.into_inner().map_err(|e| e.into_error())?;
                if let Ok(mtime) = entry.header().mtime() {
                    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    let _ = file.set_modified(when);
                }
                self.files.insert(path);
                self.done.files += 1;
                self.done.bytes += bytes;
            }
            tar::EntryType::Directory => {
                prepare_parents(dest, &path).map_err(refuse)?;
                match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => return Err(refuse(format!("{target} exists and is not a folder"))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        fs::DirBuilder::new()
                            .mode(0o755)
                            .create(&target)
                            .map_err(|e| refuse(format!("cannot create {target}: {e}")))?;
                    }
                    Err(e) => return Err(refuse(format!("cannot inspect {target}: {e}"))),
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(safe_mode(mode, 0o700)))
                    .with_context(|| format!("setting the mode of {target}"))?;
                self.done.dirs += 1;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("a symlink with no target".into()))?
                    .into_owned();
                resolve_link_under(&path, &link, self.top).map_err(refuse)?;
                prepare_parents(dest, &path).map_err(refuse)?;
                let link = String::from_utf8(link).expect("checked by resolve_link_target");
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| refuse(format!("cannot create the symlink {target}: {e}")))?;
                self.links.push((path, link));
                self.done.symlinks += 1;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("a hard link with no target".into()))?
                    .into_owned();
                let source = normalize_entry_path(&link)
                    .map_err(|why| refuse(format!("its hard-link target: {why}")))?;
                if !self.files.contains(&source) {
                    return Err(refuse(format!(
                        "a hard link to {:?}, which is not a regular file unpacked before it",
                        String::from_utf8_lossy(&link)
                    )));
                }
                check_no_symlink_on(dest, &source).map_err(refuse)?;
                prepare_parents(dest, &path).map_err(refuse)?;
                fs::hard_link(dest.join(source.join("/")), &target)
                    .map_err(|e| refuse(format!("cannot create the hard link {target}: {e}")))?;
                self.files.insert(path);
                self.done.hard_links += 1;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(refuse("it is a device file or a FIFO".into()));
            }
            other => return Err(refuse(format!("unsupported entry type {other:?}"))),
        }
        Ok(Some(name))
    }
}

/// The mode an unpacked file or folder gets: the archive's permission bits without
/// set-id, sticky, or group and other write, plus `owner` (what the unpacker needs).
fn safe_mode(mode: u32, owner: u32) -> u32 {
    (mode & 0o755) | owner
}

/// The largest GNU long name or long link, or PAX header, an archive may have: the tar
/// crate reads their bodies whole, at the size the header declares.
pub const MAX_EXTENSION_HEADER: u64 = 64 * 1024;

/// Passes a tar stream through, reading each header as it goes by, before the tar crate
/// acts on it: a GNU long name / long link or PAX header declaring more than
/// [`MAX_EXTENSION_HEADER`] bytes is an error (a 1 MB archive declaring a 1 GiB long name
/// made the tar crate allocate 5 GB), and so is a PAX `size` record (which would change
/// where the next header is; the tool never writes one).
struct HeaderGuard<R> {
    inner: R,
    header: [u8; 512],
    filled: usize,
    /// Bytes of the current entry's body and padding still to pass.
    skip: u64,
    /// The body of the PAX header passing, to look for a `size` record.
    pax: Option<Vec<u8>>,
}

impl<R> HeaderGuard<R> {
    fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            header: [0; 512],
            filled: 0,
            skip: 0,
            pax: None,
        }
    }

    fn inspect(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.skip > 0 {
                let take = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                if let Some(pax) = &mut self.pax {
                    pax.extend_from_slice(&data[..take]);
                }
                self.skip -= take as u64;
                data = &data[take..];
                if self.skip == 0 {
                    if let Some(pax) = self.pax.take() {
                        if pax.windows(5).any(|w| w == b"size=") {
                            return Err(io::Error::other(
                                "a PAX header with a size record, which cache-export never writes",
                            ));
                        }
                    }
                }
                continue;
            }
            let take = (512 - self.filled).min(data.len());
            self.header[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == 512 {
                self.filled = 0;
                self.on_header()?;
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> io::Result<()> {
        if self.header.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let kind = self.header[156];
        let size = header_size(&self.header[124..136])
            .ok_or_else(|| io::Error::other("a tar header whose size is not a number"))?;
        if matches!(kind, b'L' | b'K' | b'x' | b'g') && size > MAX_EXTENSION_HEADER {
            return Err(io::Error::other(format!(
                "a long-name or PAX header of {size} bytes (at most {MAX_EXTENSION_HEADER})"
            )));
        }
        if matches!(kind, b'x' | b'g') {
            self.pax = Some(Vec::new());
        }
        self.skip = size
            .checked_add(511)
            .map(|n| n & !511)
            .ok_or_else(|| io::Error::other("a tar header whose size overflows"))?;
        if self.skip == 0 {
            self.pax = None;
        }
        Ok(())
    }
}

/// A tar header's size field: octal text, or base-256 when its first byte has the high bit.
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.inspect(&buf[..n])?;
        Ok(n)
    }
}

/// An entry's path as its components (`.` and empty ones dropped), or why it is refused.
pub fn normalize_entry_path(raw: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "its name is not UTF-8".to_string())?;
    if text.starts_with('/') {
        return Err("its path is absolute".into());
    }
    let mut out = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("its path has a `..` component".into()),
            part => out.push(part.to_string()),
        }
    }
    Ok(out)
}

/// Where the symlink at `link` (archive components) with target `target` points, as
/// components below the destination, or why it is refused (absolute, or out).
pub fn resolve_link_target(link: &[String], target: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(target)
        .map_err(|_| "a symlink whose target is not UTF-8".to_string())?;
    if text.is_empty() {
        return Err("a symlink with an empty target".into());
    }
    if text.starts_with('/') {
        return Err(format!("a symlink to the absolute path {text:?}"));
    }
    let mut at: Vec<String> = link[..link.len().saturating_sub(1)].to_vec();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return Err(format!(
                        "a symlink to {text:?}, which points outside the destination"
                    ));
                }
            }
            part => at.push(part.to_string()),
        }
    }
    Ok(at)
}

/// [`resolve_link_target`], also refusing a target outside `top/` when there is a top.
fn resolve_link_under(link: &[String], target: &[u8], top: Option<&str>) -> Result<(), String> {
    let points_at = resolve_link_target(link, target)?;
    match top {
        Some(top) if points_at.first().map(String::as_str) != Some(top) => Err(format!(
            "a symlink to {:?}, which points outside {top}/",
            String::from_utf8_lossy(target)
        )),
        _ => Ok(()),
    }
}

/// Creates the missing folders above `path`, refusing to go through a symlink or a file.
fn prepare_parents(dest: &Utf8Path, path: &[String]) -> Result<(), String> {
    let mut at = dest.to_path_buf();
    for (i, part) in path[..path.len() - 1].iter().enumerate() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "it goes through the symlink {} (unpacked earlier or already there)",
                    path[..=i].join("/")
                ))
            }
            Ok(_) => return Err(format!("it goes through {at}, which is not a folder")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&at)
                    .map_err(|e| format!("cannot create {at}: {e}"))?;
            }
            Err(e) => return Err(format!("cannot inspect {at}: {e}")),
        }
    }
    Ok(())
}

/// Refuses when any component of `path` below `dest`, the last included, is a symlink.
fn check_no_symlink_on(dest: &Utf8Path, path: &[String]) -> Result<(), String> {
    let mut at = dest.to_path_buf();
    for (i, part) in path.iter().enumerate() {
        at.push(part);
        let meta = fs::symlink_metadata(&at).map_err(|e| format!("cannot inspect {at}: {e}"))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "its hard-link target goes through the symlink {}",
                path[..=i].join("/")
            ));
        }
    }
    Ok(())
}

/// Resolves the symlink at `link` (components below `dest`) as the kernel would, link by
/// link, refusing the first step that would leave `dest` (or its first `floor` components:
/// the top folder).
fn resolve_on_disk(dest: &Utf8Path, link: &[String], floor: usize) -> Result<(), String> {
    const MAX_HOPS: usize = 40;
    let mut at: Vec<String> = link[..link.len() - 1].to_vec();
    let first = fs::read_link(dest.join(link.join("/")))
        .map_err(|e| format!("cannot read the symlink back: {e}"))?;
    let mut todo: std::collections::VecDeque<String> = components(&first)?;
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        match part.as_str() {
            "" | "." => {}
            ".." => {
                if at.len() <= floor {
                    return Err("through other symlinks it points outside the destination".into());
                }
                at.pop();
            }
            _ => {
                at.push(part);
                let here = dest.join(at.join("/"));
                if let Ok(meta) = fs::symlink_metadata(&here) {
                    if meta.file_type().is_symlink() {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err("its symlinks loop".into());
                        }
                        let next = fs::read_link(&here)
                            .map_err(|e| format!("cannot read the symlink {here}: {e}"))?;
                        at.pop();
                        let mut next = components(&next)?;
                        next.extend(todo);
                        todo = next;
                    }
                }
            }
        }
    }
    Ok(())
}

fn components(target: &std::path::Path) -> Result<std::collections::VecDeque<String>, String> {
    let text = target
        .to_str()
        .ok_or_else(|| "a symlink whose target is not UTF-8".to_string())?;
    if text.starts_with('/') {
        return Err(format!("through other symlinks it reaches {text:?}"));
    }
    Ok(text.split('/').map(str::to_string).collect())
}

/// What [`pack_dir_gz`] wrote and what it left out.
#[derive(Debug, Default, Clone)]
pub struct Packed {
    pub files: usize,
    pub symlinks: usize,
    pub bytes: u64,
    /// Paths left out, each with why (a symlink pointing out, a device file, …).
    pub skipped: Vec<String>,
}

/// Writes the folder `dir` (absolute) as a gzip-compressed tar to `out`, streaming, with
/// entries named `<top>/…`. Symlinks stay symlinks when they point inside `dir` and are
/// left out otherwise, as are device files, FIFOs and sockets. Owners, times and modes
/// are normalised (`tar`'s deterministic mode), so nothing of the host's users travels.
pub fn pack_dir_gz(dir: &Utf8Path, top: &str, out: &Utf8Path) -> anyhow::Result<Packed> {
    if !dir.is_absolute() || !out.is_absolute() {
        bail!("internal error: packing with a relative path ({dir}, {out})");
    }
    let file = File::create(out).with_context(|| format!("creating {out}"))?;
    let gz = flate2::write::GzEncoder::new(
        BufWriter::with_capacity(crate::bundle::BUFFER, file),
        flate2::Compression::new(6),
    );
    let mut builder = tar::Builder::new(gz);
    builder.follow_symlinks(false);
    let mut packed = Packed::default();
    let mut header = tar::Header::new_gnu();
    let meta = fs::metadata(dir).with_context(|| format!("reading {dir}"))?;
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
    builder
        .append_data(&mut header, top, io::empty())
        .with_context(|| format!("writing {out}"))?;
    pack_walk(&mut builder, dir, &[top.to_string()], &mut packed, out)?;
    let gz = builder
        .into_inner()
        .with_context(|| format!("writing {out}"))?;
    let mut buffered = gz.finish().with_context(|| format!("writing {out}"))?;
    buffered.flush().with_context(|| format!("writing {out}"))?;
    buffered
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .with_context(|| format!("writing {out}"))?;
    Ok(packed)
}

fn pack_walk<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Utf8Path,
    rel: &[String],
    packed: &mut Packed,
    out: &Utf8Path,
) -> anyhow::Result<()> {
    let mut names: Vec<String> = Vec::new();
    for entry in dir
        .read_dir_utf8()
        .with_context(|| format!("reading {dir}"))?
    {
        names.push(
            entry
                .with_context(|| format!("reading {dir}"))?
                .file_name()
                .to_string(),
        );
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let mut parts = rel.to_vec();
        parts.push(name);
        let entry_name = parts.join("/");
        let meta = fs::symlink_metadata(&path).with_context(|| format!("reading {path}"))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        let kind = meta.file_type();
        if kind.is_dir() {
            builder
                .append_data(&mut header, &entry_name, io::empty())
                .with_context(|| format!("writing {entry_name} to {out}"))?;
            pack_walk(builder, &path, &parts, packed, out)?;
        } else if kind.is_file() {
            let file = File::open(&path).with_context(|| format!("reading {path}"))?;
            builder
                .append_data(&mut header, &entry_name, file.take(meta.len()))
                .with_context(|| format!("writing {entry_name} to {out}"))?;
            packed.files += 1;
            packed.bytes += meta.len();
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).with_context(|| format!("reading {path}"))?;
            let inside = target.to_str().is_some_and(|t| {
                // Inside the packed folder: below its top component.
                resolve_link_target(&parts, t.as_bytes())
                    .is_ok_and(|at| at.first() == parts.first())
            });
            if !inside {
                packed.skipped.push(format!(
                    "{entry_name}: a symlink to {}, outside {}",
                    target.display(),
                    rel[0]
                ));
                continue;
            }
            header.set_size(0);
            builder
                .append_link(&mut header, &entry_name, &target)
                .with_context(|| format!("writing {entry_name} to {out}"))?;
            packed.symlinks += 1;
        } else {
            packed
                .skipped
                .push(format!("{entry_name}: a device file, FIFO or socket"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use camino::Utf8PathBuf;

    /// A tar entry, written with raw header bytes so that any name can be tested.
    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Kind(&'a str, tar::EntryType),
    }

    fn tarball(entries: &[E<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_old();
            let (name, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match entry
            {
                E::File(n, d) => (n, tar::EntryType::Regular, d, None),
                E::Dir(n) => (n, tar::EntryType::Directory, b"", None),
                E::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", Some(t)),
                E::HardLink(n, t) => (n, tar::EntryType::Link, b"", Some(t)),
                E::Kind(n, k) => (n, *k, b"", None),
            };
            // Raw bytes: `set_path` would refuse `..` and absolute names.
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    use crate::lab::Scratch;

    /// The folder the tests unpack into, inside `scratch`.
    fn dest(scratch: &Scratch) -> Utf8PathBuf {
        let dest = scratch.path().join("dest");
        fs::create_dir_all(&dest).unwrap();
        dest
    }

    /// Unpacking `entries` fails naming `entry` and `why`, and writes nothing beside `dest`.
    fn refused(entries: &[E<'_>], entry: &str, why: &str) {
        let scratch = Scratch::new("archive");
        let err = unpack_safely(&tarball(entries)[..], &dest(&scratch)).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains(&format!("{entry:?}")),
            "{entry:?} not in: {err}"
        );
        assert!(err.contains(why), "{why:?} not in: {err}");
        let beside: Vec<_> = fs::read_dir(scratch.path()).unwrap().collect();
        assert_eq!(beside.len(), 1, "something was written beside dest");
    }

    #[test]
    fn a_plain_archive_unpacks() {
        let scratch = Scratch::new("archive");
        let dest = dest(&scratch);
        let done = unpack_safely(
            &tarball(&[
                E::Dir("./"),
                E::Dir("pkg/"),
                E::File("pkg/index.js", b"module.exports = 1\n"),
                E::Symlink("pkg/main.js", "index.js"),
                E::Symlink(".bin/tool", "../pkg/index.js"),
                E::HardLink("pkg/copy.js", "pkg/index.js"),
                E::File("./a//b", b"x"),
            ])[..],
            &dest,
        )
        .unwrap();
        assert_eq!((done.files, done.symlinks, done.hard_links), (2, 2, 1));
        assert_eq!(
            fs::read_to_string(dest.join(".bin/tool")).unwrap(),
            "module.exports = 1\n"
        );
        assert_eq!(
            fs::read_to_string(dest.join("pkg/copy.js")).unwrap().len(),
            19
        );
        assert_eq!(fs::read_to_string(dest.join("a/b")).unwrap(), "x");
    }

    #[test]
    fn absolute_paths_and_dotdot_are_refused() {
        refused(
            &[E::File("/etc/cron.d/x", b"x")],
            "/etc/cron.d/x",
            "absolute",
        );
        refused(&[E::File("../x", b"x")], "../x", "`..`");
        refused(&[E::File("a/../../x", b"x")], "a/../../x", "`..`");
        refused(&[E::File("a/../b", b"x")], "a/../b", "`..`");
        refused(&[E::Dir("./.."), E::File("y", b"")], "./..", "`..`");
    }

    #[test]
    fn symlinks_that_point_out_are_refused() {
        refused(&[E::Symlink("x", "/etc")], "x", "absolute path \"/etc\"");
        refused(&[E::Symlink("x", "..")], "x", "outside");
        refused(&[E::Symlink("a/b/x", "../../../y")], "a/b/x", "outside");
        refused(&[E::Symlink("x", "")], "x", "no target");
        // Harmless one by one, out together.
        refused(
            &[E::Symlink("a/up", ".."), E::Symlink("b", "a/up/../x")],
            "b",
            "outside",
        );
        refused(
            &[E::Symlink("b", "a/up/../x"), E::Symlink("a/up", "..")],
            "b",
            "outside",
        );
    }

    #[test]
    fn a_later_entry_never_writes_through_an_earlier_symlink() {
        refused(
            &[
                E::Dir("d/"),
                E::Symlink("x", "d"),
                E::File("x/passwd", b"root"),
            ],
            "x/passwd",
            "through the symlink x",
        );
        refused(
            &[E::Symlink("x", "d"), E::Dir("d/"), E::HardLink("x/y", "f")],
            "x/y",
            "not a regular file unpacked before",
        );
        // A symlink already in the destination is not followed either.
        let scratch = Scratch::new("archive");
        let outside = scratch.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dest(&scratch).join("x")).unwrap();
        let err =
            unpack_safely(&tarball(&[E::File("x/f", b"!")])[..], &dest(&scratch)).unwrap_err();
        assert!(
            format!("{err:#}").contains("through the symlink x"),
            "{err:#}"
        );
        assert!(!outside.join("f").exists());
        // Nor a symlink in the final component: files are created with O_EXCL.
        std::os::unix::fs::symlink(outside.join("g"), dest(&scratch).join("g")).unwrap();
        let err = unpack_safely(&tarball(&[E::File("g", b"!")])[..], &dest(&scratch)).unwrap_err();
        assert!(format!("{err:#}").contains("cannot create"), "{err:#}");
        assert!(!outside.join("g").exists());
    }

    #[test]
    fn hard_links_out_or_to_unknown_files_are_refused() {
        refused(&[E::HardLink("x", "/etc/passwd")], "x", "absolute");
        refused(&[E::HardLink("x", "../y")], "x", "`..`");
        refused(&[E::HardLink("x", "never")], "x", "not a regular file");
        refused(
            &[E::Dir("d/"), E::HardLink("x", "d")],
            "x",
            "not a regular file",
        );
    }

    #[test]
    fn device_files_and_fifos_are_refused() {
        for kind in [
            tar::EntryType::Char,
            tar::EntryType::Block,
            tar::EntryType::Fifo,
        ] {
            refused(&[E::Kind("dev", kind)], "dev", "device file or a FIFO");
        }
        refused(
            &[E::Kind("s", tar::EntryType::new(b'S'))],
            "(the start)",
            "damaged",
        );
        refused(
            &[E::Kind("x", tar::EntryType::new(b'Z'))],
            "x",
            "unsupported entry type",
        );
    }

    #[test]
    fn names_that_collide_after_normalisation_are_refused() {
        refused(
            &[E::File("a/b", b"1"), E::File("a/./b", b"2")],
            "a/./b",
            "already has the path a/b",
        );
        refused(
            &[E::File("a/b", b"1"), E::File("a//b", b"2")],
            "a//b",
            "already has the path a/b",
        );
        refused(
            &[E::File("a/b", b"1"), E::File("a/b", b"2")],
            "a/b",
            "already has the path",
        );
        refused(&[E::Dir("a/"), E::Symlink("a", "b")], "a", "already has");
        // Names are case-sensitive: these are two files.
        let scratch = Scratch::new("archive");
        unpack_safely(
            &tarball(&[E::File("A", b"1"), E::File("a", b"2")])[..],
            &dest(&scratch),
        )
        .unwrap();
    }

    #[test]
    fn entries_outside_the_top_folder_are_refused() {
        let scratch = Scratch::new("archive");
        let err = unpack_safely_under(
            &tarball(&[E::File("node_modules/a", b""), E::File("package.json", b"")])[..],
            &dest(&scratch),
            "node_modules",
        )
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("\"package.json\"") && err.contains("outside node_modules/"),
            "{err}"
        );
    }

    /// Issue 15, point 5: the tar crate reads a GNU long name (or long link, or PAX header)
    /// whole, at the size its header declares: a header declaring 1 GiB must be refused
    /// before that (it took 5.3 GB of memory). The body need not even be there.
    #[test]
    fn huge_long_name_or_pax_headers_are_refused_before_they_are_read() {
        for (kind, declared) in [
            (b'L', 1u64 << 30),
            (b'K', 1 << 30),
            (b'x', 1 << 30),
            (b'g', 1 << 30),
            (b'L', MAX_EXTENSION_HEADER + 1),
        ] {
            let mut header = tar::Header::new_gnu();
            header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            header.set_entry_type(tar::EntryType::new(kind));
            header.set_size(declared);
            header.set_mode(0o644);
            header.set_cksum();
            let mut bytes = header.as_bytes().to_vec();
            bytes.extend_from_slice(&[b'a'; 4096]);
            let scratch = Scratch::new("archive");
            let err = unpack_safely(&bytes[..], &dest(&scratch)).unwrap_err();
            let err = format!("{err:#}");
            assert!(
                err.contains(&format!("header of {declared} bytes")),
                "{}: {err}",
                kind as char
            );
        }
        // A PAX size record would move the next header where the guard does not look.
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("size", &b"0"[..])])
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        builder.append_data(&mut header, "a", &b"x"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        let scratch = Scratch::new("archive");
        let err = format!(
            "{:#}",
            unpack_safely(&bytes[..], &dest(&scratch)).unwrap_err()
        );
        assert!(err.contains("size record"), "{err}");
        // Long names of a normal length still unpack (the tool's own archives use them).
        let long = format!(
            "node_modules/{}index.js",
            format!("{}/", "p".repeat(90)).repeat(3)
        );
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        builder.append_data(&mut header, &long, &b"ok"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        let scratch = Scratch::new("archive");
        unpack_safely_under(&bytes[..], &dest(&scratch), "node_modules").unwrap();
        assert_eq!(fs::read(dest(&scratch).join(&long)).unwrap(), b"ok");
    }

    /// Issue 15, point 5: folders lose set-id, sticky and group/other write bits as files do
    /// (a 2777 folder stayed world-writable), whatever the umask.
    #[test]
    fn folders_and_files_lose_set_id_and_group_or_other_write_bits() {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, mode) in [
            ("node_modules/d", tar::EntryType::Directory, 0o2777),
            ("node_modules/s", tar::EntryType::Directory, 0o1777),
            ("node_modules/f", tar::EntryType::Regular, 0o6777),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(0);
            header.set_mode(mode);
            builder.append_data(&mut header, name, &b""[..]).unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        let scratch = Scratch::new("archive");
        unpack_safely_under(&bytes[..], &dest(&scratch), "node_modules").unwrap();
        for name in ["d", "s", "f"] {
            let mode = fs::metadata(dest(&scratch).join("node_modules").join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7022, 0, "{name}: {mode:o}");
        }
    }

    /// Issue 15, point 5: under a top folder, a symlink may not point above it (it could
    /// point one level above node_modules/, into the build context).
    #[test]
    fn a_symlink_may_not_point_above_the_top_folder() {
        for (link, target) in [
            ("node_modules/up", ".."),
            ("node_modules/a/up", "../../package.json"),
            ("node_modules/a/b", "../../x/y"),
        ] {
            let scratch = Scratch::new("archive");
            let err = unpack_safely_under(
                &tarball(&[E::Symlink(link, target)])[..],
                &dest(&scratch),
                "node_modules",
            )
            .unwrap_err();
            let err = format!("{err:#}");
            assert!(
                err.contains("outside node_modules/"),
                "{link} -> {target}: {err}"
            );
        }
        // Chains of links each inside, that lead above it together, are refused on disk.
        let scratch = Scratch::new("archive");
        let err = unpack_safely_under(
            &tarball(&[
                E::Symlink("node_modules/a/top", ".."),
                E::Symlink("node_modules/b", "a/top/.."),
            ])[..],
            &dest(&scratch),
            "node_modules",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("outside"), "{err:#}");
        // Inside is fine, also to the top folder itself.
        let scratch = Scratch::new("archive");
        unpack_safely_under(
            &tarball(&[
                E::File("node_modules/pkg/index.js", b"1"),
                E::Symlink("node_modules/.bin/tool", "../pkg/index.js"),
                E::Symlink("node_modules/.bin/root", ".."),
            ])[..],
            &dest(&scratch),
            "node_modules",
        )
        .unwrap();
    }

    #[test]
    fn a_truncated_archive_is_an_error_naming_the_last_entry() {
        let mut bytes = tarball(&[E::File("a", &[7; 2000]), E::File("b", &[8; 2000])]);
        bytes.truncate(1500);
        let scratch = Scratch::new("archive");
        let err = format!(
            "{:#}",
            unpack_safely(&bytes[..], &dest(&scratch)).unwrap_err()
        );
        assert!(err.contains("\"a\""), "{err}");
    }

    #[test]
    fn normalised_paths() {
        let ok = |raw: &str, want: &[&str]| {
            assert_eq!(normalize_entry_path(raw.as_bytes()).unwrap(), want, "{raw}")
        };
        ok("a/b", &["a", "b"]);
        ok("./a//./b/", &["a", "b"]);
        ok("./", &[]);
        for bad in ["/a", "..", "a/..", "a/../b"] {
            assert!(normalize_entry_path(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(normalize_entry_path(b"\xff").is_err());
    }

    #[test]
    fn pack_keeps_inside_symlinks_only_and_round_trips() {
        let scratch = Scratch::new("archive");
        let src = scratch.path().join("node_modules");
        fs::create_dir_all(src.join("pkg/lib")).unwrap();
        fs::create_dir_all(src.join(".bin")).unwrap();
        fs::write(src.join("pkg/lib/index.js"), "x").unwrap();
        std::os::unix::fs::symlink("../pkg/lib/index.js", src.join(".bin/pkg")).unwrap();
        std::os::unix::fs::symlink("../../outside", src.join("pkg/out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("pkg/abs")).unwrap();
        let out = scratch.path().join("nm.tar.gz");
        let packed = pack_dir_gz(&src, "node_modules", &out).unwrap();
        assert_eq!((packed.files, packed.symlinks), (1, 1));
        assert_eq!(packed.skipped.len(), 2, "{:?}", packed.skipped);
        let dest = dest(&scratch);
        let file = File::open(&out).unwrap();
        unpack_safely_under(flate2::read::GzDecoder::new(file), &dest, "node_modules").unwrap();
        assert_eq!(
            fs::read_to_string(dest.join("node_modules/.bin/pkg")).unwrap(),
            "x"
        );
        assert!(!dest.join("node_modules/pkg/out").exists());
    }
}
