//! The npm cache handed to a build as an image (`docker-image://…`) instead of a folder.
//!
//! A folder context costs every build its transfer: BuildKit receives the whole folder
//! and snapshots it before it can compute the checksum that keys the cached `npm ci`,
//! even when every step is cached. That was most of an offline rebuild's time (see the
//! offline rebuild figure in docs/benchmarks.md). An image context is keyed by its
//! layers' digests (the chain ID of the config's `diff_ids`), which BuildKit reads from
//! the image config alone: a cached build never touches the layer.
//!
//! The image is made from the bundle's `npm-cache/<service>` folder, byte for byte the same
//! on the export machine and on the server: one layer, a tar of the folder with entries in
//! path order, owned by root, modes 0755/0644 and a fixed time, whatever the copy did to
//! the files' owners, modes or times. Same bytes, same diff ID, so the build cache the
//! export recorded matches on the server. The bundle carries the folder only (the layer
//! would double it); `cache-import` makes the image again and checks its diff ID against
//! the manifest's.

use std::fs::File;
use std::io::{self, Write};

use anyhow::{bail, Context as _};
use camino::Utf8Path;
use sha2::{Digest, Sha256};

use crate::bundle::{hex, HashingWriter};
use crate::docker::Docker;

/// Time of every entry of the layer: 2020-01-01T00:00:00Z, as the cache's index lines.
const LAYER_MTIME: u64 = 1_577_836_800;
/// The config's `created`, fixed so that the image ID depends on the content alone.
const CREATED: &str = "2020-01-01T00:00:00Z";

/// The image's repository name: `<project>-<service>-npm-cache`, lower case, characters
/// outside `[a-z0-9._-]` replaced by `-`.
pub fn image_name(project: &str, service: &str) -> String {
    let raw = format!("{project}-{service}-npm-cache");
    let mut name = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        name.push(match c {
            'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        });
    }
    name.trim_start_matches(['.', '_', '-']).to_string()
}

/// `name:<first 16 hex digits of the diff ID>`: the tag names the content. Always passes
/// [`crate::model::manifest::is_npm_image_reference`].
pub fn reference(project: &str, service: &str, layer: &Layer) -> String {
    let hex = layer.diff_id.trim_start_matches("sha256:");
    format!(
        "{}:{}",
        image_name(project, service),
        &hex[..16.min(hex.len())]
    )
}

/// The layer's uncompressed digest (`sha256:…`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub diff_id: String,
    pub size: u64,
}

/// Every directory and regular file under `dir`, relative, `/`-separated, in the order
/// the layer holds them (a directory before what it holds, names in byte order).
fn entries(dir: &Utf8Path) -> anyhow::Result<Vec<(String, bool)>> {
    fn walk(root: &Utf8Path, rel: &str, out: &mut Vec<(String, bool)>) -> anyhow::Result<()> {
        let here = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut names = Vec::new();
        for entry in here
            .read_dir_utf8()
            .with_context(|| format!("reading {here}"))?
        {
            let entry = entry.with_context(|| format!("reading {here}"))?;
            let kind = entry.file_type()?;
            let name = entry.file_name().to_string();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if kind.is_dir() {
                names.push((path, true));
            } else if kind.is_file() {
                names.push((path, false));
            } else {
                bail!(
                    "{}: not a file or a folder; an npm cache holds only those",
                    root.join(&path)
                );
            }
        }
        names.sort();
        for (path, is_dir) in names {
            out.push((path.clone(), is_dir));
            if is_dir {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    Ok(out)
}

/// One entry of the layer: its header(s), then `data` (`size` bytes) and padding.
fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    rel: &str,
    kind: &EntryKind,
    data: impl io::Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(LAYER_MTIME);
    match kind {
        EntryKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, format!("{rel}/"), io::empty())
        }
        EntryKind::File(size) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(*size);
            tar.append_data(&mut header, rel, data)
        }
    }
}

enum EntryKind {
    Dir,
    File(u64),
}

/// Writes the layer: a tar of `dir` that depends on the names and contents of its files
/// only. Returns its digest and size.
pub fn write_layer(dir: &Utf8Path, out: impl Write) -> anyhow::Result<Layer> {
    let mut tar = tar::Builder::new(HashingWriter::new(out));
    for (rel, is_dir) in entries(dir)? {
        if is_dir {
            append_entry(&mut tar, &rel, &EntryKind::Dir, io::empty())
                .with_context(|| format!("writing {rel}/ into the npm cache image"))?;
        } else {
            let path = dir.join(&rel);
            let file = File::open(&path).with_context(|| format!("reading {path}"))?;
            let size = file.metadata()?.len();
            // A file that shrinks while it is read makes the tar crate fail; one that
            // grows is cut at `size` (and the layer's digest then differs from `measure`).
            append_entry(
                &mut tar,
                &rel,
                &EntryKind::File(size),
                io::Read::take(file, size),
            )
            .with_context(|| format!("writing {path} into the npm cache image"))?;
        }
    }
    let (_, size, digest) = tar
        .into_inner()
        .context("ending the npm cache image's layer")?
        .finish();
    Ok(Layer {
        diff_id: format!("sha256:{digest}"),
        size,
    })
}

/// The layer without the files' bytes, for `import-build-cache.sh`, which has no tar that
/// writes these exact bytes: `headers`, every header block of the layer in order, and
/// `plan`, one line per file, `<blocks> <path>`: copy the next `<blocks>` blocks of
/// `headers`, then the file's bytes and zeros up to a multiple of 512. A last line with
/// no path copies the headers after the last file. The layer ends with 1024 zero bytes.
#[derive(Debug, Default)]
pub struct Skeleton {
    pub headers: Vec<u8>,
    pub plan: String,
}

/// Keeps the first bytes written to it and counts the rest.
struct Prefix {
    keep: Vec<u8>,
    total: u64,
}

const PREFIX_LIMIT: usize = 16 * 512;

impl Write for Prefix {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = PREFIX_LIMIT.saturating_sub(self.keep.len()).min(buf.len());
        self.keep.extend_from_slice(&buf[..room]);
        self.total += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn skeleton(dir: &Utf8Path) -> anyhow::Result<Skeleton> {
    let mut out = Skeleton::default();
    let mut blocks = 0u64;
    for (rel, is_dir) in entries(dir)? {
        if rel.contains('\n') {
            bail!(
                "{}: a name with a newline; an npm cache has none",
                dir.join(&rel)
            );
        }
        let (kind, size) = if is_dir {
            (EntryKind::Dir, 0)
        } else {
            let size = dir.join(&rel).metadata()?.len();
            (EntryKind::File(size), size)
        };
        // The entry alone, its content zeros: what comes before the content is the header.
        let mut tar = tar::Builder::new(Prefix {
            keep: Vec::new(),
            total: 0,
        });
        append_entry(&mut tar, &rel, &kind, io::Read::take(io::repeat(0), size))?;
        let prefix = tar.into_inner()?;
        let header_len = prefix.total - 1024 - size.div_ceil(512) * 512;
        if header_len % 512 != 0 || header_len as usize > PREFIX_LIMIT {
            bail!("{}: a header of {header_len} bytes", dir.join(&rel));
        }
        out.headers
            .extend_from_slice(&prefix.keep[..header_len as usize]);
        blocks += header_len / 512;
        if !is_dir {
            out.plan.push_str(&format!("{blocks} {rel}\n"));
            blocks = 0;
        }
    }
    if blocks > 0 {
        out.plan.push_str(&format!("{blocks}\n"));
    }
    Ok(out)
}

/// The skeleton's two files sit beside the folder: `<folder><suffix>`.
pub const HEADERS_SUFFIX: &str = ".layer-headers";
pub const PLAN_SUFFIX: &str = ".layer-plan";

/// Writes the skeleton of the folder `bundle/rel` beside it, for import-build-cache.sh.
pub fn write_skeleton(bundle: &Utf8Path, rel: &str) -> anyhow::Result<()> {
    let skeleton = skeleton(&bundle.join(rel))?;
    for (suffix, bytes) in [
        (HEADERS_SUFFIX, &skeleton.headers[..]),
        (PLAN_SUFFIX, skeleton.plan.as_bytes()),
    ] {
        let path = bundle.join(format!("{rel}{suffix}"));
        std::fs::write(&path, bytes).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

/// The layer's digest and size, without writing it anywhere.
pub fn measure(dir: &Utf8Path) -> anyhow::Result<Layer> {
    write_layer(dir, io::sink())
}

/// The image config: the platform BuildKit matches, the one layer, nothing that changes
/// from one run to the next. import-build-cache.sh writes the same bytes with
/// [`CONFIG_PRINTF`].
pub fn config(arch: &str, layer: &Layer, service: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{
            "created": CREATED,
            "created_by": format!("cargo xtask: npm cache of service {service}"),
        }],
    }))
    .expect("a JSON value serialises")
}

/// [`config`] as a printf format for sh: arguments architecture, service, layer digest
/// (hex). Architecture and service names need no JSON escaping (checked by the caller).
pub const CONFIG_PRINTF: &str = concat!(
    r#"{"architecture":"%s","config":{},"created":"2020-01-01T00:00:00Z","#,
    r#""history":[{"created":"2020-01-01T00:00:00Z","created_by":"cargo xtask: npm cache of service %s"}],"#,
    r#""os":"linux","rootfs":{"diff_ids":["sha256:%s"],"type":"layers"}}"#
);

/// Writes a `docker save` archive of the image: `manifest.json`, the config, the layer.
/// Fails (before the archive's end) when the layer is not `layer`'s bytes, so that
/// `docker load` never tags what the config does not describe.
fn write_archive(
    dir: &Utf8Path,
    reference: &str,
    arch: &str,
    layer: &Layer,
    service: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let config = config(arch, layer, service);
    let config_name = format!("{}.json", hex(&Sha256::digest(&config)));
    let layer_name = format!("{}/layer.tar", layer.diff_id.trim_start_matches("sha256:"));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [reference],
        "Layers": [layer_name],
    }]))?;
    let header = |size: u64, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(LAYER_MTIME);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    let mut archive = tar::Builder::new(&mut *out);
    archive.append_data(
        &mut header(manifest.len() as u64, 0o644),
        "manifest.json",
        &manifest[..],
    )?;
    archive.append_data(
        &mut header(config.len() as u64, 0o644),
        &config_name,
        &config[..],
    )?;
    let mut h = header(layer.size, 0o644);
    h.set_path(&layer_name)?;
    h.set_cksum();
    // The layer is written straight after its header: it is a tar itself, so its size is
    // a multiple of 512 and needs no padding.
    let inner = archive.get_mut();
    inner.write_all(h.as_bytes())?;
    let written = write_layer(dir, &mut *inner)?;
    if written != *layer {
        bail!(
            "{dir} changed while its image was made ({} of {} bytes, {} instead of {}); \
             nothing was tagged. Run the command again",
            written.size,
            layer.size,
            written.diff_id,
            layer.diff_id
        );
    }
    archive.finish()?;
    Ok(())
}

/// An npm cache image in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpmImage {
    pub reference: String,
    /// False when the engine already had it.
    pub loaded: bool,
}

/// Makes the image of `dir` in the engine, unless the engine has it already (same
/// reference, same layer). `arch` is the engine's (`docker version`'s `Arch`). With
/// `expected` (the manifest's reference), a folder that gives another image is an error
/// and nothing is loaded.
pub fn ensure(
    docker: &Docker,
    dir: &Utf8Path,
    project: &str,
    service: &str,
    arch: &str,
    expected: Option<&str>,
) -> anyhow::Result<NpmImage> {
    let layer = measure(dir)?;
    let reference = reference(project, service, &layer);
    if let Some(expected) = expected.filter(|e| *e != reference) {
        bail!(
            "{dir} gives the image {reference}, the export made {expected}: the bundle was \
             exported by another version of xtask. Nothing was loaded"
        );
    }
    if docker.image_layers(&reference)?.as_deref() == Some(std::slice::from_ref(&layer.diff_id)) {
        return Ok(NpmImage {
            reference,
            loaded: false,
        });
    }
    crate::say!(
        "     Making {reference} from {dir} ({}), the npm cache as an image",
        crate::bundle::human_bytes(layer.size)
    );
    let (reader, mut writer) = io::pipe().context("making a pipe for docker load")?;
    let mut writer_thread = Some(std::thread::spawn({
        let (dir, reference, arch, service, layer) = (
            dir.to_path_buf(),
            reference.clone(),
            arch.to_string(),
            service.to_string(),
            layer.clone(),
        );
        move || write_archive(&dir, &reference, &arch, &layer, &service, &mut writer)
    }));
    let what = format!("the npm cache image {reference}");
    let result = crate::docker::stream_into_load(docker, &what, Box::new(reader), |failure| {
        let written = writer_thread
            .take()
            .expect("checked once")
            .join()
            .map_err(|_| anyhow::anyhow!("the thread writing {reference} panicked"))?;
        written?;
        match failure {
            None => Ok(()),
            Some(e) => bail!("reading {what}: {e}"),
        }
    });
    if let Some(thread) = writer_thread {
        // docker load stopped first; the writer ends on the broken pipe.
        let _ = thread.join();
    }
    result?;
    match docker.image_layers(&reference)? {
        Some(layers) if layers == [layer.diff_id.clone()] => {}
        other => bail!(
            "{reference} has layers {other:?} after `docker load`, expected [{}]",
            layer.diff_id
        ),
    }
    Ok(NpmImage {
        reference,
        loaded: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use camino::Utf8PathBuf;

    fn temp_dir(tag: &str) -> Utf8PathBuf {
        crate::lab::test_dir(&format!("npm-image-{tag}"))
    }

    fn cache(dir: &Utf8Path) {
        let long = "0123456789abcdef".repeat(8);
        let content = dir.join("_cacache/content-v2/sha512/ab/cd");
        std::fs::create_dir_all(&content).unwrap();
        std::fs::write(content.join(&long), b"tarball bytes").unwrap();
        std::fs::create_dir_all(dir.join("_cacache/index-v5/12/34")).unwrap();
        std::fs::write(dir.join("_cacache/index-v5/12/34/5678"), b"index line\n").unwrap();
    }

    fn layer_bytes(dir: &Utf8Path) -> (Layer, Vec<u8>) {
        let mut bytes = Vec::new();
        let layer = write_layer(dir, &mut bytes).unwrap();
        (layer, bytes)
    }

    #[test]
    fn the_layer_depends_on_names_and_contents_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let a = temp_dir("a");
        cache(&a);
        let (layer, bytes) = layer_bytes(&a);
        assert_eq!(layer.size, bytes.len() as u64);
        assert_eq!(layer.size % 512, 0);
        assert_eq!(
            layer.diff_id,
            format!("sha256:{}", hex(&Sha256::digest(&bytes)))
        );
        assert_eq!(measure(&a).unwrap(), layer);

        // Another copy, with other modes and times: the same bytes.
        let b = temp_dir("b");
        cache(&b);
        let index = b.join("_cacache/index-v5/12/34/5678");
        std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o664)).unwrap();
        std::fs::set_permissions(b.join("_cacache"), std::fs::Permissions::from_mode(0o775))
            .unwrap();
        File::options()
            .write(true)
            .open(&index)
            .unwrap()
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(layer_bytes(&b).1, bytes);

        // One byte changed: another layer.
        std::fs::write(&index, b"index linE\n").unwrap();
        assert_ne!(measure(&b).unwrap().diff_id, layer.diff_id);

        // What the tar holds: directories first, long names kept, root-owned, fixed time.
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.mtime().unwrap(), LAYER_MTIME);
            seen.push((
                entry.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
            ));
        }
        let long = "0123456789abcdef".repeat(8);
        assert_eq!(seen[0], ("_cacache/".to_string(), 0o755));
        assert!(seen.contains(&(format!("_cacache/content-v2/sha512/ab/cd/{long}"), 0o644)));
        assert_eq!(seen.len(), 10, "{seen:?}");
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }

    /// What import-build-cache.sh does with the skeleton, in Rust.
    fn from_skeleton(dir: &Utf8Path, skeleton: &Skeleton) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        for line in skeleton.plan.lines() {
            let (blocks, path) = line.split_once(' ').unwrap_or((line, ""));
            let end = offset + blocks.parse::<usize>().unwrap() * 512;
            out.extend_from_slice(&skeleton.headers[offset..end]);
            offset = end;
            if !path.is_empty() {
                let bytes = std::fs::read(dir.join(path)).unwrap();
                out.extend_from_slice(&bytes);
                out.resize(out.len() + (512 - bytes.len() % 512) % 512, 0);
            }
        }
        assert_eq!(offset, skeleton.headers.len());
        out.resize(out.len() + 1024, 0);
        out
    }

    #[test]
    fn the_skeleton_gives_the_layer_back() {
        let dir = temp_dir("skeleton");
        cache(&dir);
        // A file of exactly one block, an empty one, and a folder after the last file.
        std::fs::write(dir.join("_cacache/index-v5/12/block"), [7u8; 512]).unwrap();
        std::fs::write(dir.join("_cacache/index-v5/12/empty"), b"").unwrap();
        std::fs::create_dir_all(dir.join("_cacache/tmp-last")).unwrap();
        let skeleton = skeleton(&dir).unwrap();
        let (_, layer) = layer_bytes(&dir);
        assert_eq!(from_skeleton(&dir, &skeleton), layer);
        assert_eq!(skeleton.plan.lines().count(), 5, "{}", skeleton.plan);
        assert!(skeleton.plan.ends_with("\n1\n"), "{}", skeleton.plan);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_archive_is_what_docker_load_reads() {
        let dir = temp_dir("archive");
        cache(&dir);
        let layer = measure(&dir).unwrap();
        let reference = reference("llm-chat", "frontend", &layer);
        let mut bytes = Vec::new();
        write_archive(&dir, &reference, "amd64", &layer, "frontend", &mut bytes).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut entry, &mut data).unwrap();
            files.insert(name, data);
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], reference.as_str());
        let config_name = manifest[0]["Config"].as_str().unwrap();
        let config: serde_json::Value = serde_json::from_slice(&files[config_name]).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer.diff_id.as_str());
        assert_eq!(config["architecture"], "amd64");
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        assert_eq!(
            format!("sha256:{}", hex(&Sha256::digest(&files[layer_name]))),
            layer.diff_id
        );
        // Written twice, the same archive: the image ID is the same everywhere.
        let mut again = Vec::new();
        write_archive(&dir, &reference, "amd64", &layer, "frontend", &mut again).unwrap();
        assert_eq!(again, bytes);

        // The folder changed since it was measured: refused before the archive's end.
        std::fs::write(dir.join("_cacache/index-v5/12/34/5678"), b"other\n").unwrap();
        let err = write_archive(
            &dir,
            &reference,
            "amd64",
            &layer,
            "frontend",
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("changed while its image was made"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_script_writes_the_same_config() {
        let layer = Layer {
            diff_id: format!("sha256:{}", "0f".repeat(32)),
            size: 2048,
        };
        let mut printed = CONFIG_PRINTF.to_string();
        for arg in ["arm64", "web-1", &"0f".repeat(32)] {
            printed = printed.replacen("%s", arg, 1);
        }
        assert_eq!(
            printed.as_bytes(),
            &config("arm64", &layer, "web-1")[..],
            "{printed}"
        );
    }

    #[test]
    fn references_are_checked() {
        let layer = Layer {
            diff_id: format!("sha256:{}", "ab".repeat(32)),
            size: 1024,
        };
        let r = reference("llm-chat", "Front_End", &layer);
        assert_eq!(r, "llm-chat-front_end-npm-cache:abababababababab");
        assert!(crate::model::manifest::is_npm_image_reference(&r));
        assert_eq!(image_name("-x", "a b"), "x-a-b-npm-cache");
        for bad in [
            "",
            "name",
            "-rm:abcd",
            "Name:abcd",
            "name:",
            "name:xyz",
            "a/../b:abcd",
            "name:ab cd",
            "evil --rm:ab",
        ] {
            assert!(
                !crate::model::manifest::is_npm_image_reference(bad),
                "{bad}"
            );
        }
    }
}
