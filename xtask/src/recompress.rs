//! Recompresses the layers the builds made, in the exported `build-cache/`, with zstd's
//! long-distance matching.
//!
//! BuildKit compresses a layer on its own, with a window of a few MB, or keeps the gzip
//! blob the image export made. A `node_modules` layer holds many copies of the same files
//! (licences, nested packages), tens of MB apart: zstd level 9 with a 32 MiB window and
//! long-distance matching finds them (the sizes on the app's `npm ci` layer are in
//! docs/benchmarks.md). Single-threaded, so that the export's memory stays bounded by the
//! window and its tables.
//!
//! The layers of the images the builds make (the final stages) are unpacked by every
//! cached rebuild on the server, and BuildKit's decoder reads long-window streams at about
//! half the speed: those get level 9 with the default window instead. (Level 12 saved 1%
//! of those layers at twice the time, on the critical path of an export into an empty
//! folder.)
//! Builder-stage layers are unpacked only when a later step of their stage runs again.
//!
//! The layers of the base images are left alone (their blobs are `docker save`'s, stored
//! once), as are small layers. Every rewritten blob is checked: its content must give the
//! layer's uncompressed digest (`containerd.io/uncompressed`) that BuildKit keys it by.
//! The cache's descriptors (the per-tag indexes, the cache configs, `index.json`) then
//! name the new blobs; blobs nothing names any more are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};

use anyhow::Context as _;
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bundle::{hex, HashingWriter};

/// How a layer is recompressed, and the mark its descriptor gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub level: i32,
    /// log2 of the window, with long-distance matching; `None`: the level's defaults.
    pub long_window: Option<u32>,
    pub mark: &'static str,
}

/// Layers only builder stages use.
pub const BUILDER: Params = Params {
    level: 9,
    long_window: Some(25),
    mark: "zstd-9-long25",
};
/// Layers of the images the builds make.
pub const FINAL: Params = Params {
    level: 9,
    long_window: None,
    mark: "zstd-9",
};
/// Layers smaller than this are left as BuildKit wrote them.
const MIN_SIZE: u64 = 1 << 20;

const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
const UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Marks the layers this module wrote, with how (`Params::mark`): only those are reused by
/// a re-export, and only for the same parameters.
const MARK: &str = "xtask/recompressed";

/// What [`recompress`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub layers: usize,
    pub reused: usize,
    pub before: u64,
    pub after: u64,
}

/// A layer's new blob: digest (`sha256:…`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

fn blob_path(dir: &Utf8Path, digest: &str) -> anyhow::Result<Utf8PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .with_context(|| format!("{dir}: {digest:?} is not a sha256 digest"))?;
    Ok(dir.join("blobs/sha256").join(hex))
}

fn read_json(dir: &Utf8Path, digest: &str) -> anyhow::Result<Value> {
    let path = blob_path(dir, digest)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {path}"))
}

/// Writes `bytes` as a blob; its descriptor's digest and size.
fn write_blob(dir: &Utf8Path, bytes: &[u8]) -> anyhow::Result<Blob> {
    let digest = format!("sha256:{}", hex(&Sha256::digest(bytes)));
    let path = blob_path(dir, &digest)?;
    if !path.exists() {
        crate::bundle::write_atomic(&path, bytes)?;
    }
    Ok(Blob {
        digest,
        size: bytes.len() as u64,
    })
}

/// Hands the heap's free pages back to the system before an encoder takes its window.
/// The export's other steps run on threads of their own, and glibc keeps what they freed
/// in per-thread arenas: without this, that memory stays resident under the encoder's
/// (issue 18's memory figure, the export into an empty folder).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; no memory in use
    // is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The layer's tar, whatever BuildKit compressed it with.
fn decompressed(path: &Utf8Path) -> anyhow::Result<Box<dyn Read>> {
    let mut file = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(file);
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(head)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(head)?),
        _ => Box::new(head),
    })
}

/// Recompresses the blob `path` into the blob store of `dir`; `None` when its content is
/// not the layer `uncompressed` names (then it is left as it is).
fn recompress_blob(
    dir: &Utf8Path,
    path: &Utf8Path,
    uncompressed: &str,
    params: Params,
) -> anyhow::Result<Option<Blob>> {
    let partial = dir.join(format!("blobs/sha256/.recompress-{}", std::process::id()));
    let out = File::create(&partial).with_context(|| format!("creating {partial}"))?;
    let mut compressed = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, out));
    let mut encoder = zstd::stream::write::Encoder::new(&mut compressed, params.level)?;
    if let Some(window) = params.long_window {
        encoder.long_distance_matching(true)?;
        encoder.window_log(window)?;
    }
    encoder.include_checksum(true)?;
    let mut plain = HashingWriter::new(encoder);
    io::copy(&mut decompressed(path)?, &mut plain).with_context(|| format!("reading {path}"))?;
    let (encoder, _, content) = plain.finish();
    encoder.finish()?;
    let (mut file, size, digest) = compressed.finish();
    file.flush()?;
    let (content, digest) = (format!("sha256:{content}"), format!("sha256:{digest}"));
    if content != uncompressed {
        std::fs::remove_file(&partial)?;
        return Ok(None);
    }
    let target = blob_path(dir, &digest)?;
    std::fs::rename(&partial, &target).with_context(|| format!("writing {target}"))?;
    Ok(Some(Blob { digest, size }))
}

/// Every layer descriptor of the cache in `dir`: (per-tag index digest, descriptor).
fn tag_indexes(dir: &Utf8Path) -> anyhow::Result<(Value, Vec<(String, Value)>)> {
    let index_path = dir.join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&index_path).with_context(|| format!("reading {index_path}"))?,
    )
    .with_context(|| format!("parsing {index_path}"))?;
    let mut tags = Vec::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        let digest = m["digest"]
            .as_str()
            .context("index.json: a manifest without digest")?;
        tags.push((digest.to_string(), read_json(dir, digest)?));
    }
    Ok((index, tags))
}

/// The uncompressed digest → (blob, mark) of every layer this module wrote in the cache
/// at `dir` (a previous bundle's), for reuse.
pub fn zstd_layers(dir: &Utf8Path) -> BTreeMap<String, (Blob, String)> {
    let mut out = BTreeMap::new();
    let Ok((_, tags)) = tag_indexes(dir) else {
        return out;
    };
    for (_, tag) in &tags {
        for d in tag["manifests"].as_array().into_iter().flatten() {
            let Some(mark) = d["annotations"][MARK].as_str() else {
                continue;
            };
            if let (Some(ZSTD_LAYER), Some(u), Some(digest), Some(size)) = (
                d["mediaType"].as_str(),
                d["annotations"][UNCOMPRESSED].as_str(),
                d["digest"].as_str(),
                d["size"].as_u64(),
            ) {
                let blob = Blob {
                    digest: digest.to_string(),
                    size,
                };
                out.insert(u.to_string(), (blob, mark.to_string()));
            }
        }
    }
    out
}

/// `reuse(u, params, dest)` of [`recompress`].
pub type Reuse<'a> = dyn Fn(&str, Params, &Utf8Path) -> anyhow::Result<Option<Blob>> + 'a;

/// Recompresses the layers of the cache in `dir` (an OCI layout BuildKit wrote) that are
/// at least [`MIN_SIZE`] and whose uncompressed digest is not in `keep`: with [`FINAL`]
/// those in `finals`, else [`BUILDER`]. `reuse(u, params, dest)` may put a blob of layer
/// `u` recompressed with `params` at `dest` (a previous bundle's, checked) and return it.
pub fn recompress(
    dir: &Utf8Path,
    keep: &BTreeSet<String>,
    finals: &BTreeSet<String>,
    reuse: &Reuse<'_>,
) -> anyhow::Result<Report> {
    let (mut index, tags) = tag_indexes(dir)?;
    let mut report = Report::default();
    // Old blob digest → new blob and how, each layer once however many tags name it.
    let mut done: BTreeMap<String, Option<(Blob, Params)>> = BTreeMap::new();
    for (_, tag) in &tags {
        for d in tag["manifests"].as_array().into_iter().flatten() {
            let media = d["mediaType"].as_str().unwrap_or_default();
            let (Some(digest), Some(size), Some(u)) = (
                d["digest"].as_str(),
                d["size"].as_u64(),
                d["annotations"][UNCOMPRESSED].as_str(),
            ) else {
                continue;
            };
            if !media.starts_with("application/vnd.oci.image.layer.v1.tar")
                || !d["annotations"][MARK].is_null()
                || size < MIN_SIZE
                || keep.contains(u)
                || done.contains_key(digest)
            {
                continue;
            }
            let params = if finals.contains(u) { FINAL } else { BUILDER };
            let path = blob_path(dir, digest)?;
            let tmp = dir.join(format!("blobs/sha256/.reuse-{}", std::process::id()));
            let new = match reuse(u, params, &tmp)? {
                Some(blob) => {
                    let target = blob_path(dir, &blob.digest)?;
                    std::fs::rename(&tmp, &target)?;
                    report.reused += 1;
                    Some(blob)
                }
                None => {
                    release_freed_memory();
                    recompress_blob(dir, &path, u, params)?
                }
            };
            if let Some(blob) = &new {
                report.layers += 1;
                report.before += size;
                report.after += blob.size;
            }
            done.insert(digest.to_string(), new.map(|b| (b, params)));
        }
    }
    let replaced: BTreeMap<&str, &(Blob, Params)> = done
        .iter()
        .filter_map(|(old, new)| Some((old.as_str(), new.as_ref()?)))
        .filter(|(old, (new, _))| *old != new.digest)
        .collect();
    if replaced.is_empty() {
        return Ok(report);
    }
    // The descriptors: layers in each per-tag index, the blobs in its cache config.
    let mut new_tags: BTreeMap<String, Blob> = BTreeMap::new();
    for (tag_digest, tag) in &tags {
        let mut tag = tag.clone();
        for d in tag["manifests"].as_array_mut().into_iter().flatten() {
            let digest = d["digest"].as_str().unwrap_or_default().to_string();
            if let Some((new, params)) = replaced.get(digest.as_str()) {
                d["digest"] = new.digest.clone().into();
                d["size"] = new.size.into();
                d["mediaType"] = ZSTD_LAYER.into();
                d["annotations"][MARK] = params.mark.into();
            } else if d["mediaType"] == CACHE_CONFIG {
                let mut config = read_json(dir, &digest)?;
                for layer in config["layers"].as_array_mut().into_iter().flatten() {
                    let blob = layer["blob"].as_str().unwrap_or_default();
                    if let Some((new, _)) = replaced.get(blob) {
                        layer["blob"] = new.digest.clone().into();
                    }
                }
                let written = write_blob(dir, &serde_json::to_vec(&config)?)?;
                d["digest"] = written.digest.into();
                d["size"] = written.size.into();
            }
        }
        new_tags.insert(
            tag_digest.clone(),
            write_blob(dir, &serde_json::to_vec(&tag)?)?,
        );
    }
    for m in index["manifests"].as_array_mut().into_iter().flatten() {
        let digest = m["digest"].as_str().unwrap_or_default().to_string();
        if let Some(new) = new_tags.get(&digest) {
            m["digest"] = new.digest.clone().into();
            m["size"] = new.size.into();
        }
    }
    crate::bundle::write_atomic(&dir.join("index.json"), &serde_json::to_vec(&index)?)?;
    remove_unreferenced(dir)?;
    Ok(report)
}

/// Removes the blobs that neither `index.json` nor what it names (per-tag indexes, their
/// layers and cache configs) refers to.
fn remove_unreferenced(dir: &Utf8Path) -> anyhow::Result<()> {
    let (index, tags) = tag_indexes(dir)?;
    let mut named = BTreeSet::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        named.extend(m["digest"].as_str().map(str::to_string));
    }
    for (_, tag) in &tags {
        for d in tag["manifests"].as_array().into_iter().flatten() {
            let digest = d["digest"].as_str().unwrap_or_default();
            named.insert(digest.to_string());
            if d["mediaType"] == CACHE_CONFIG {
                let config = read_json(dir, digest)?;
                for layer in config["layers"].as_array().into_iter().flatten() {
                    named.extend(layer["blob"].as_str().map(str::to_string));
                }
            }
        }
    }
    let blobs = dir.join("blobs/sha256");
    for entry in blobs.read_dir_utf8()? {
        let entry = entry?;
        let digest = format!("sha256:{}", entry.file_name());
        if !named.contains(&digest) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> Utf8PathBuf {
        let dir = crate::lab::test_dir(&format!("recompress-{tag}"));
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        dir
    }

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex(&Sha256::digest(bytes)))
    }

    static BASE: [u8; 2 << 20] = [7u8; 2 << 20];

    /// A cache as BuildKit writes it: two tags sharing a 3 MiB gzip layer, a base layer
    /// (to keep) and a small layer. Returns the folder and the shared layer's tar.
    fn cache(tag: &str) -> (Utf8PathBuf, Vec<u8>) {
        let dir = temp_dir(tag);
        let mut tar = Vec::new();
        let mut i = 0u64;
        while tar.len() < (3 << 20) {
            tar.extend_from_slice(format!("{i:x} {}\n", i.wrapping_mul(0x9e37_79b9)).as_bytes());
            i += 1;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let small = b"small layer".to_vec();
        let mut layers = Vec::new();
        for (blob, content, media) in [
            (
                &gz[..],
                &tar[..],
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            (
                &BASE[..],
                &BASE[..],
                "application/vnd.oci.image.layer.v1.tar",
            ),
            (
                &small[..],
                &small[..],
                "application/vnd.oci.image.layer.v1.tar",
            ),
        ] {
            let b = write_blob(&dir, blob).unwrap();
            layers.push(serde_json::json!({
                "mediaType": media, "digest": b.digest, "size": b.size,
                "annotations": {UNCOMPRESSED: sha(content), "buildkit/createdat": "x"},
            }));
        }
        let config = serde_json::json!({"layers": [
            {"blob": layers[0]["digest"]}, {"blob": layers[1]["digest"], "parent": 0},
            {"blob": layers[2]["digest"]},
        ], "records": []});
        let config = write_blob(&dir, &serde_json::to_vec(&config).unwrap()).unwrap();
        let mut manifests = Vec::new();
        for name in ["api", "web"] {
            let mut entries = layers.clone();
            entries.push(serde_json::json!({
                "mediaType": CACHE_CONFIG, "digest": config.digest, "size": config.size,
                "annotations": {"name": name},
            }));
            let tag = serde_json::json!({"schemaVersion": 2, "manifests": entries});
            let tag = write_blob(&dir, &serde_json::to_vec(&tag).unwrap()).unwrap();
            manifests.push(serde_json::json!({"digest": tag.digest, "size": tag.size}));
        }
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        (dir, tar)
    }

    fn no_reuse(_: &str, _: Params, _: &Utf8Path) -> anyhow::Result<Option<Blob>> {
        Ok(None)
    }

    #[test]
    fn layers_are_recompressed_and_every_descriptor_follows() {
        let (dir, tar) = cache("main");
        let before = tag_indexes(&dir).unwrap().1[0].1.to_string();
        let keep: BTreeSet<String> = [sha(&BASE)].into();
        let report = recompress(&dir, &keep, &BTreeSet::new(), &no_reuse).unwrap();
        assert_eq!((report.layers, report.reused), (1, 0), "{report:?}");
        assert!(report.after < report.before, "{report:?}");
        let zstd = zstd_layers(&dir);
        assert_eq!(zstd.len(), 1, "{zstd:?}");
        let empty = temp_dir("none");
        assert!(zstd_layers(&empty).is_empty());
        std::fs::remove_dir_all(&empty).unwrap();
        let (blob, mark) = &zstd[&sha(&tar)];
        assert_eq!(mark, BUILDER.mark);
        let bytes = std::fs::read(blob_path(&dir, &blob.digest).unwrap()).unwrap();
        assert_eq!(
            (sha(&bytes), bytes.len() as u64),
            (blob.digest.clone(), blob.size)
        );
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), tar);
        // Both tags and the cache config name the new blob; the base layer and the small
        // one are as they were; nothing names the old blob, which is gone.
        let (_, tags) = tag_indexes(&dir).unwrap();
        assert_eq!(tags.len(), 2);
        let old: Value = serde_json::from_str(&before).unwrap();
        for (_, tag) in &tags {
            let layers = tag["manifests"].as_array().unwrap();
            assert_eq!(layers[0]["digest"], blob.digest.as_str());
            assert_eq!(layers[0]["mediaType"], ZSTD_LAYER);
            assert_eq!(layers[1], old["manifests"][1]);
            assert_eq!(layers[2], old["manifests"][2]);
            let config = read_json(&dir, layers[3]["digest"].as_str().unwrap()).unwrap();
            assert_eq!(config["layers"][0]["blob"], blob.digest.as_str());
            assert_eq!(config["layers"][1]["blob"], old["manifests"][1]["digest"]);
        }
        let old_blob = old["manifests"][0]["digest"].as_str().unwrap();
        assert!(!blob_path(&dir, old_blob).unwrap().exists());
        // index.json, 3 layers, 1 config, 2 tag indexes.
        let files = crate::bundle::list_files(&dir).unwrap();
        assert_eq!(files.len(), 1 + 3 + 1 + 2, "{files:?}");

        // Another export of the same layers, reusing the first result.
        let (again, _) = cache("again");
        let from = dir.clone();
        let reuse = |u: &str, params: Params, dest: &Utf8Path| -> anyhow::Result<Option<Blob>> {
            match zstd_layers(&from).get(u).cloned() {
                Some((blob, mark)) if mark == params.mark => {
                    std::fs::copy(blob_path(&from, &blob.digest)?, dest)?;
                    Ok(Some(blob))
                }
                _ => Ok(None),
            }
        };
        let report = recompress(&again, &keep, &BTreeSet::new(), &reuse).unwrap();
        assert_eq!((report.layers, report.reused), (1, 1), "{report:?}");
        assert_eq!(zstd_layers(&again), zstd);
        // The same layer in a final image: recompressed again, the other way.
        let (third, _) = cache("third");
        let finals: BTreeSet<String> = [sha(&tar)].into();
        let report = recompress(&third, &keep, &finals, &reuse).unwrap();
        assert_eq!((report.layers, report.reused), (1, 0), "{report:?}");
        assert_eq!(zstd_layers(&third)[&sha(&tar)].1, FINAL.mark);
        std::fs::remove_dir_all(&third).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&again).unwrap();
    }

    #[test]
    fn a_blob_that_is_not_its_layer_is_left_alone() {
        let (dir, _) = cache("wrong");
        let (_, tags) = tag_indexes(&dir).unwrap();
        let layer = &tags[0].1["manifests"][0];
        let path = blob_path(&dir, layer["digest"].as_str().unwrap()).unwrap();
        let count = crate::bundle::list_files(&dir).unwrap().len();
        let got = recompress_blob(&dir, &path, &sha(b"another layer"), BUILDER).unwrap();
        assert_eq!(got, None);
        assert_eq!(crate::bundle::list_files(&dir).unwrap().len(), count);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
