//! Images taken straight from the engine's containerd content store (images.rs), against
//! `docker save` of the same images on the same engine: the same `index.json` (but for
//! docker save's distribution-source hints), the same blobs, the same images in
//! `manifest.json`; loaded on an offline engine, the same image IDs and tags. The images are those a real export meets: an imported
//! one (a bare manifest), one built by BuildKit (an index with an attestation manifest),
//! and one pulled for several platforms of which this engine has only its own (an index
//! whose other manifest is absent). A blob damaged in the store fails the export, naming
//! it.

use std::collections::BTreeSet;

use anyhow::{ensure, Context};
use camino::Utf8Path;
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::bundle_e2e::xtask;
use crate::support::run::Scratch;
use crate::support::{self, standins, Engine, EngineOptions};

/// Loads `multi:1`: an index of two platforms over busybox's manifest (linux/amd64) and a
/// linux/arm64 manifest this engine never had, as `docker pull` of a multi-platform image
/// leaves it.
fn load_partial_multi_platform(engine: &Engine, work: &Utf8Path) -> anyhow::Result<()> {
    let sh = engine.shell()?;
    let saved = work.join("busybox");
    std::fs::create_dir_all(&saved)?;
    let tar = work.join("busybox.tar");
    let busybox = standins::BUSYBOX;
    cmd!(sh, "docker save {busybox} -o {tar}").run()?;
    cmd!(sh, "tar -C {saved} -xf {tar}").run()?;
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("index.json"))?)?;
    let manifest = &index["manifests"][0];
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": manifest["mediaType"],
                "digest": manifest["digest"],
                "size": manifest["size"],
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", "ab".repeat(32)),
                "size": 405,
                "platform": {"architecture": "arm64", "os": "linux"},
            },
        ],
    });
    let bytes = serde_json::to_vec(&multi)?;
    let hex = format!("{:x}", Sha256::digest(&bytes));
    std::fs::write(saved.join("blobs/sha256").join(&hex), &bytes)?;
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": bytes.len(),
            "annotations": {
                "io.containerd.image.name": "docker.io/library/multi:1",
                "org.opencontainers.image.ref.name": "1",
            },
        }],
    });
    std::fs::write(saved.join("index.json"), serde_json::to_vec(&top)?)?;
    std::fs::remove_file(saved.join("manifest.json"))?;
    let multi_tar = work.join("multi.tar");
    cmd!(sh, "tar -C {saved} -cf {multi_tar} .").run()?;
    cmd!(sh, "docker load -i {multi_tar}")
        .quiet()
        .ignore_stdout()
        .run()?;
    Ok(())
}

fn blob_names(dir: &Utf8Path) -> anyhow::Result<BTreeSet<String>> {
    let manifest: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("manifest.yaml"))?)?;
    let entries = manifest["image_layout"]["entries"]
        .as_array()
        .context("no image_layout in the manifest")?;
    Ok(entries
        .iter()
        .filter_map(|e| e["name"].as_str())
        .filter(|n| n.starts_with("blobs/"))
        .map(str::to_string)
        .collect())
}

/// The images of `manifest.json`, as (config, layers, tags) with the tags sorted.
fn archive_images(dir: &Utf8Path) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(dir.join("base-images/manifest.json"))?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    let mut images = BTreeSet::new();
    for e in entries {
        for tag in e["RepoTags"].as_array().context("RepoTags")? {
            images.insert(format!("{} {} {}", tag, e["Config"], e["Layers"]));
        }
    }
    Ok(images)
}

fn ids(sh: &Shell, images: &[&str]) -> anyhow::Result<Vec<String>> {
    images
        .iter()
        .map(|i| {
            let format = "{{.Id}}";
            Ok(cmd!(sh, "docker image inspect --format {format} {i}").read()?)
        })
        .collect()
}

#[test]
fn images_from_the_content_store_are_those_docker_save_writes() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("cs-online", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let tmp = Scratch::new("content-store");
    let root = tmp.path().to_owned();
    let sh = online.shell()?;
    load_partial_multi_platform(&online, &root)?;
    // built by BuildKit: an index with an attestation manifest beside the image's own
    let built = root.join("built");
    std::fs::create_dir_all(&built)?;
    std::fs::write(
        built.join("Dockerfile"),
        "FROM busybox:latest\nRUN echo built > /built.txt\n",
    )?;
    cmd!(
        sh,
        "docker buildx build --quiet --provenance=mode=min -t built:1 {built}"
    )
    .quiet()
    .ignore_stdout()
    .run()?;

    let project = root.join("project");
    std::fs::create_dir_all(project.join("app"))?;
    std::fs::write(
        project.join("compose.yaml"),
        "name: cs\nservices:\n  app:\n    build: ./app\n",
    )?;
    std::fs::write(
        project.join("app/Dockerfile"),
        "FROM multi:1 AS m\nFROM built:1 AS b\nFROM busybox:latest\n\
         COPY --from=m /bin/busybox /m\nCOPY --from=b /built.txt /b\n",
    )?;
    let (fast, slow) = (root.join("fast"), root.join("slow"));
    let said = xtask(
        &sh,
        &project,
        &["cache-export", "--only", "base-images", "-o", fast.as_str()],
    )?;
    ensure!(
        said.contains("from the engine's containerd content store"),
        "the export did not take the content store:\n{said}"
    );
    let said_slow = xtask(
        &sh,
        &project,
        &[
            "cache-export",
            "--only",
            "base-images",
            "--docker-save",
            "-o",
            slow.as_str(),
        ],
    )?;
    ensure!(
        said_slow.contains("Note --docker-save: saving the images with `docker save`"),
        "{said_slow}"
    );
    // The same index.json but for the hints `docker save` adds from containerd's content
    // labels (`containerd.io/distribution.source.<registry>`: where to fetch missing
    // content from, which offline is nowhere). They live in containerd's metadata
    // database, not in the content store, and the image's ID does not depend on them.
    let (ours, theirs) = (
        std::fs::read_to_string(fast.join("base-images/index.json"))?,
        std::fs::read_to_string(slow.join("base-images/index.json"))?,
    );
    let mut without_hints: serde_json::Value = serde_json::from_str(&theirs)?;
    for m in without_hints["manifests"]
        .as_array_mut()
        .context("manifests")?
    {
        if let Some(a) = m["annotations"].as_object_mut() {
            a.retain(|k, _| !k.starts_with("containerd.io/distribution.source."));
        }
    }
    ensure!(
        serde_json::from_str::<serde_json::Value>(&ours)? == without_hints,
        "index.json differs:\n{ours}\n{theirs}"
    );
    let (fast_blobs, slow_blobs) = (blob_names(&fast)?, blob_names(&slow)?);
    ensure!(
        fast_blobs == slow_blobs,
        "blobs differ: {fast_blobs:#?} vs {slow_blobs:#?}"
    );
    // docker save 26 writes one entry per config and keeps the last tag of it; ours keeps
    // them all: every image docker save names, ours names the same way.
    let (ours, theirs) = (archive_images(&fast)?, archive_images(&slow)?);
    ensure!(
        theirs.is_subset(&ours),
        "manifest.json: docker save has {theirs:#?}, ours {ours:#?}"
    );
    xtask(&sh, &fast, &["cache-verify", "--bundle", fast.as_str()])?;

    let offline = suite.offline_engine("cs-offline", EngineOptions::default())?;
    let osh = offline.shell()?;
    xtask(&osh, &project, &["cache-import", "--bundle", fast.as_str()])?;
    let names = ["busybox:latest", "multi:1", "built:1"];
    ensure!(
        ids(&osh, &names)? == ids(&sh, &names)?,
        "the imported images' IDs differ from the exported ones"
    );
    let ran = cmd!(osh, "docker run --rm --network none built:1 cat /built.txt").read()?;
    ensure!(ran == "built", "built:1 has {ran:?}");

    // A layer damaged in the engine's store: the export fails and names it.
    let layer = fast_blobs
        .iter()
        .map(|b| b.trim_start_matches("blobs/sha256/").to_string())
        .find(|hex| {
            std::fs::metadata(content_store(&online).join(hex)).is_ok_and(|m| m.len() > 100_000)
        })
        .context("no layer blob over 100 kB")?;
    let damaged = content_store(&online).join(&layer);
    let mut bytes = std::fs::read(&damaged)?;
    bytes[50_000] ^= 0xff;
    std::fs::write(&damaged, &bytes)?;
    let again = root.join("again");
    let err = xtask(
        &sh,
        &project,
        &[
            "cache-export",
            "--only",
            "base-images",
            "-o",
            again.as_str(),
        ],
    )
    .expect_err("an export from a damaged store must fail");
    ensure!(
        format!("{err:#}").contains(&format!(
            "the engine's content store holds {layer} with content of sha256"
        )),
        "{err:#}"
    );
    ensure!(
        !again.join("SHA256SUMS").exists(),
        "a bundle was published from a damaged store"
    );
    Ok(())
}

fn content_store(engine: &Engine) -> camino::Utf8PathBuf {
    engine
        .root()
        .join("data/containerd/daemon/io.containerd.content.v1.content/blobs/sha256")
}
