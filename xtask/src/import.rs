//! Loading a verified bundle into an engine: what `cache-import` does after the checks,
//! shared with `cache-rehearse` (which points it at a throwaway engine), so that the
//! rehearsal imports the way the offline server will.

use anyhow::{bail, Context as _};
use camino::Utf8Path;

use crate::bundle::human_bytes;
use crate::docker::{Docker, EngineInfo};
use crate::images;
use crate::model::layout;
use crate::model::manifest::{Compression, FileEntry, Manifest, Strategy};

/// The bundle's images split by what the engine has: (present with the same ID, to load).
/// A name re-tagged onto another image is loaded again, with a warning.
pub fn partition(
    docker: &Docker,
    manifest: &Manifest,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut present = Vec::new();
    let mut to_load = Vec::new();
    for image in &manifest.images {
        match docker.image_id(&image.name)? {
            Some(id) if id == image.id => present.push(image.name.clone()),
            Some(id) => {
                // Someone re-tagged the name onto another image: the load moves it
                // back, which the builds then use; say so rather than do it quietly.
                eprintln!(
                    "warning: {} is {id} on this engine, the bundle has {}; a tag was \
                     moved: loading the bundle's image moves {} back to {}",
                    image.name, image.id, image.name, image.id
                );
                to_load.push(image.name.clone());
            }
            None => to_load.push(image.name.clone()),
        }
    }
    Ok((present, to_load))
}

/// The images archive of the bundle, if it has one (older bundles, compressed images).
pub fn images_archive(manifest: &Manifest) -> Option<FileEntry> {
    manifest
        .files
        .iter()
        .find(|f| f.path.starts_with(layout::IMAGES_ARCHIVE_STEM))
        .cloned()
}

/// The files verified while they stream into `docker load` (the images archive, or the
/// layout's files) rather than hashed beforehand: none when nothing is to be loaded.
pub fn streamed_files(
    manifest: &Manifest,
    archive: Option<&FileEntry>,
    loading: bool,
) -> Vec<String> {
    match &manifest.image_layout {
        _ if !loading => Vec::new(),
        Some(layout) => layout.entries.iter().map(|e| e.path.clone()).collect(),
        None => archive.iter().map(|a| a.path.clone()).collect(),
    }
}

/// Warns when this engine cannot use the bundle's build cache (it still loads).
pub fn warn_if_unusable(strategy: Strategy, containerd_store: bool) {
    match (strategy, containerd_store) {
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
}

/// Loads the bundle's images (its layout, or its archive), verified as they stream, and
/// checks that each has the ID the bundle says.
pub fn load(
    docker: &Docker,
    engine: &EngineInfo,
    dir: &Utf8Path,
    manifest: &Manifest,
    archive: Option<&FileEntry>,
) -> anyhow::Result<()> {
    if let Some(layout) = &manifest.image_layout {
        let files = images::layout_files(dir, layout, &manifest.files)?;
        let size = files
            .iter()
            .fold(0u64, |sum, (_, _, f)| sum.saturating_add(f.size));
        preflight_disk(docker, &engine.docker_root_dir, manifest, size)?;
        images::load_layout(docker, dir, files)?;
    } else {
        let archive =
            archive.context("the manifest lists images but no base-images.tar archive")?;
        preflight_disk(docker, &engine.docker_root_dir, manifest, archive.size)?;
        images::load_images(docker, dir, archive, manifest.compression)?;
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
    Ok(())
}

/// The npm caches as images (npm_image.rs), made from the verified folders: what
/// patch-compose hands to the builds so that cached ones never read the folder. Returns
/// the references made or present; a cache that cannot be made is a warning.
pub fn make_npm_images(
    docker: &Docker,
    engine: &EngineInfo,
    dir: &Utf8Path,
    manifest: &Manifest,
) -> Vec<String> {
    let mut npm_images = Vec::new();
    if manifest.strategy == Strategy::Local && engine.containerd_store {
        for service in &manifest.services {
            let (Some(image), Some(rel)) = (&service.npm_image, &service.npm_cache) else {
                continue;
            };
            match crate::deps::npm_image::ensure(
                docker,
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
    npm_images
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
