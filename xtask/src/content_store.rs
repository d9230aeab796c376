//! The bundle's images taken straight from a local engine's containerd content store,
//! where `docker save` would stream them through the engine's API at a fraction of the
//! disk's speed: each image's blobs (its index or manifest, the manifests of the platforms
//! the engine has, configs, layers) are hard-linked into the bundle (copied across
//! filesystems), every one hashed and checked against its digest, with `index.json`,
//! `manifest.json` and `oci-layout` written as `docker save` writes them
//! (`model::oci`). The bundle's format does not change: import, verify and the import
//! script read it as they read `docker save`'s. Where the store cannot serve an export (a
//! remote engine, the classic store, a reference by digest, content the store lacks), the
//! caller falls back to `docker save` and says why.

use std::collections::BTreeSet;
use std::fs::File;
use std::time::Instant;

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};

use crate::bundle::{self, human_bytes};
use crate::docker::EngineInfo;
use crate::model::layout::{self, IMAGES_DIR};
use crate::model::manifest::{FileEntry, ImageEntry, ImageLayout, LayoutEntry};
use crate::model::oci::{self, ArchiveImage, Content};

/// Where the containerd image store keeps content blobs under dockerd's data root.
const CONTENT_STORE: &str = "containerd/daemon/io.containerd.content.v1.content/blobs/sha256";
/// The largest index or manifest read into memory (real ones are a few KiB).
const MAX_MANIFEST: usize = 4 << 20;

/// Why the content store cannot serve this export (then `docker save` does), or its folder.
pub fn content_store(engine: &EngineInfo) -> Result<Utf8PathBuf, String> {
    if !engine.containerd_store {
        return Err("the engine uses the classic image store".into());
    }
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        if !host.is_empty() && !host.starts_with("unix://") {
            return Err(format!("the engine is remote (DOCKER_HOST={host})"));
        }
    }
    let dir = Utf8Path::new(&engine.docker_root_dir).join(CONTENT_STORE);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(format!("{dir} is not a folder")),
        Err(e) => Err(format!(
            "its content store {dir} cannot be read here ({e}): a remote engine, or no access"
        )),
    }
}

/// The images written from the engine's containerd content store, in the layout `docker
/// save` writes (its blobs, `index.json`, `manifest.json`, `oci-layout`): blobs hard-linked
/// into the staging folder (copied across filesystems), then every one hashed on all cores
/// and checked against its digest. `Ok(Err(why))` when an image cannot be taken this way (a
/// reference by digest, content the store lacks): the caller falls back to `docker save`.
pub fn save_layout(
    store: &Utf8Path,
    arch: &str,
    images: &[ImageEntry],
    staging: &Utf8Path,
) -> anyhow::Result<Result<(ImageLayout, Vec<FileEntry>), String>> {
    let started = Instant::now();
    let (archive_images, blobs) = match walk(store, arch, images) {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    crate::say!(
        "      Saving {} images to {IMAGES_DIR}/ from the engine's containerd content store \
         ({store})",
        images.len()
    );
    let (layout, files, bytes) = write(store, staging, &archive_images, &blobs)?;
    let secs = started.elapsed().as_secs_f64();
    crate::say!(
        "       Saved {} images from the content store: {} linked or copied and checked in \
         {secs:.1}s ({}/s)",
        images.len(),
        human_bytes(bytes),
        human_bytes((bytes as f64 / secs.max(1e-6)) as u64)
    );
    Ok(Ok((layout, files)))
}

/// The images as the archive will name them, and every blob to take (digests): the
/// target of each image and, of an index, the manifests whose content the engine has.
/// `Err(why)` when an image cannot be taken this way.
fn walk(
    store: &Utf8Path,
    arch: &str,
    images: &[ImageEntry],
) -> Result<(Vec<ArchiveImage>, BTreeSet<String>), String> {
    let platform_arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut blobs = BTreeSet::new();
    let archive_images = images
        .iter()
        .map(|image| walk_image(store, platform_arch, image, &mut blobs))
        .collect::<Result<Vec<_>, String>>()?;
    Ok((archive_images, blobs))
}

fn present(store: &Utf8Path, hex: &str) -> bool {
    store.join(hex).is_file()
}

/// An index or manifest blob of the store, checked against its digest.
fn read(store: &Utf8Path, digest: &str) -> Result<Vec<u8>, String> {
    let hex = oci::sha256_hex(digest).ok_or(format!("{digest} is not a sha256 digest"))?;
    let bytes = bundle::read_capped(&store.join(hex), MAX_MANIFEST)
        .map_err(|e| format!("reading {digest} from the content store: {e}"))?;
    let got = bundle::hex(&Sha256::digest(&bytes));
    if got != hex {
        return Err(format!("the content store's {digest} holds sha256:{got}"));
    }
    Ok(bytes)
}

/// One image: adds its blobs to `blobs`, and returns it as the archive names it.
fn walk_image(
    store: &Utf8Path,
    platform_arch: &str,
    image: &ImageEntry,
    blobs: &mut BTreeSet<String>,
) -> Result<ArchiveImage, String> {
    let read = |digest: &str| read(store, digest);
    let present = |hex: &str| present(store, hex);
    let Some(name) = oci::normalize(&image.name) else {
        return Err(format!("{} is a reference by digest", image.name));
    };
    let target_bytes = match read(&image.id) {
        Ok(bytes) => bytes,
        Err(why) => return Err(format!("{}: {why}", image.name)),
    };
    let media_type = serde_json::from_slice::<serde_json::Value>(&target_bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string));
    let Some(media_type) = media_type.filter(|m| oci::is_walkable(m)) else {
        return Err(format!(
            "{}: its manifest names no media type this tool reads",
            image.name
        ));
    };
    let target = oci::Descriptor {
        media_type: media_type.clone(),
        digest: image.id.clone(),
        size: target_bytes.len() as u64,
        platform: None,
        annotations: None,
    };
    blobs.insert(image.id.clone());
    // The manifests to take: the target itself, or those of its index whose content
    // this engine has (`docker save` leaves out the platforms that were never pulled).
    let manifests: Vec<(oci::Descriptor, Vec<u8>)> =
        match oci::parse(&media_type, &target_bytes).map_err(|e| format!("{e:#}")) {
            Ok(Content::Manifest { .. }) => vec![(target.clone(), target_bytes.clone())],
            Ok(Content::Index(children)) => {
                let mut taken = Vec::new();
                for child in children {
                    let hex = oci::sha256_hex(&child.digest).unwrap_or_default();
                    if !oci::is_walkable(&child.media_type) || !present(hex) {
                        continue;
                    }
                    match read(&child.digest) {
                        Ok(bytes) => taken.push((child, bytes)),
                        Err(why) => return Err(format!("{}: {why}", image.name)),
                    }
                }
                taken
            }
            Err(why) => return Err(format!("{}: {why}", image.name)),
        };
    let mut chosen: Option<(String, Vec<String>)> = None;
    for (descriptor, bytes) in &manifests {
        let Ok(Content::Manifest { config, layers }) = oci::parse(&descriptor.media_type, bytes)
        else {
            return Err(format!(
                "{}: {} is a nested index, which this tool does not walk",
                image.name, descriptor.digest
            ));
        };
        let missing: Vec<&str> = std::iter::once(&config)
            .chain(&layers)
            .map(|d| d.digest.as_str())
            .filter(|d| !oci::sha256_hex(d).is_some_and(present))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{}: the content store lacks {}",
                image.name,
                missing.join(", ")
            ));
        }
        blobs.insert(descriptor.digest.clone());
        blobs.insert(config.digest.clone());
        blobs.extend(layers.iter().map(|l| l.digest.clone()));
        let attestation = descriptor
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("vnd.docker.reference.type"));
        let ours = descriptor
            .platform
            .as_ref()
            .is_none_or(|p| p.os == "linux" && p.architecture == platform_arch);
        // manifest.json names the manifest of this engine's platform (or the first)
        if !attestation && (ours || chosen.is_none()) {
            chosen = Some((
                config.digest.clone(),
                layers.iter().map(|l| l.digest.clone()).collect(),
            ));
        }
    }
    let Some((config, layers)) = chosen else {
        return Err(format!(
            "{}: the engine has no image manifest of it",
            image.name
        ));
    };
    Ok(ArchiveImage {
        name,
        target,
        config,
        layers,
    })
}

/// Links (or copies) `blobs` into the staging folder's blob store, hashes each on all cores
/// against its digest, and writes the archive's own files; the layout, the files written
/// and the bytes checked.
fn write(
    store: &Utf8Path,
    staging: &Utf8Path,
    archive_images: &[ArchiveImage],
    blobs: &BTreeSet<String>,
) -> anyhow::Result<(ImageLayout, Vec<FileEntry>, u64)> {
    let mut layout = ImageLayout::default();
    let mut files = Vec::new();
    let mut linked = Vec::new();
    for digest in blobs {
        let hex = oci::sha256_hex(digest).context("a sha256 digest")?;
        let name = format!("blobs/sha256/{hex}");
        let path = layout::build_cache_blob(hex);
        let target = staging.join(&path);
        layout.entries.push(LayoutEntry {
            name,
            path: path.clone(),
        });
        if target.exists() {
            // BuildKit wrote this layer into the build cache: the name is its digest.
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
        }
        let from = store.join(hex);
        if std::fs::hard_link(&from, &target).is_err() {
            // Another filesystem: a copy, on disk before it is named.
            let partial = bundle::temp_sibling(&target);
            std::fs::copy(&from, &partial).with_context(|| format!("copying {from}"))?;
            File::open(&partial)?.sync_all()?;
            std::fs::rename(&partial, &target).with_context(|| format!("renaming {partial}"))?;
        }
        linked.push((path, hex.to_string()));
    }
    let paths: Vec<String> = linked.iter().map(|(p, _)| p.clone()).collect();
    let taken = std::sync::atomic::AtomicU64::new(0);
    let hashed = bundle::hash_files(staging, &paths, &|_, n| {
        taken.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    for ((path, hex), result) in linked.iter().zip(hashed) {
        let (size, sha256) = result.with_context(|| format!("hashing {path}"))?;
        if sha256 != *hex {
            bail!(
                "the engine's content store holds {hex} with content of sha256 {sha256}: the \
                 store is damaged; `docker image rm` the image, pull it again and export again \
                 (or export with --docker-save)"
            );
        }
        files.push(FileEntry {
            path: path.clone(),
            size,
            sha256,
            from_base: false,
        });
    }
    let small = [
        ("index.json", oci::archive_index(archive_images)?),
        ("manifest.json", oci::archive_manifest(archive_images)?),
        ("oci-layout", oci::OCI_LAYOUT.to_vec()),
    ];
    for (name, bytes) in small {
        let path = format!("{IMAGES_DIR}/{name}");
        let target = staging.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
        }
        let partial = bundle::temp_sibling(&target);
        std::fs::write(&partial, &bytes).with_context(|| format!("writing {partial}"))?;
        std::fs::rename(&partial, &target).with_context(|| format!("renaming {partial}"))?;
        files.push(FileEntry {
            path: path.clone(),
            size: bytes.len() as u64,
            sha256: bundle::hex(&Sha256::digest(&bytes)),
            from_base: false,
        });
        layout.entries.push(LayoutEntry {
            name: name.to_string(),
            path,
        });
    }
    let bytes = taken.load(std::sync::atomic::Ordering::Relaxed);
    Ok((layout, files, bytes))
}
