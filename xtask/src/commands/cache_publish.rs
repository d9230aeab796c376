//! `cargo xtask cache-publish`: verifies a bundle, then pushes what a fleet of builders
//! needs into a registry: the base images, each service's build cache as a
//! `type=registry` cache, and the npm cache images. Builders then need no import:
//! `patch-compose --registry` points their builds at the registry.
//!
//! Everything is pushed straight from the verified bundle's files (no engine is needed
//! here): blobs by digest, which the registry checks on upload, and manifests that are
//! checked against their digest in memory before they are sent. What the registry has
//! already is not sent again: a manifest with the same digest under the same tag is
//! skipped whole, and a blob it has is skipped (or mounted from another repository of
//! the registry).
//!
//! The names are `model::registry`'s; a BuildKit `type=local` cache in an OCI layout is
//! the very document a `type=registry` cache is, so the cache's index is pushed as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use camino::Utf8Path;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use xshell::Shell;

use crate::bundle::{self, human_bytes, BundleLock};
use crate::bundle_arg::{BundleArg, TrustArgs};
use crate::deps::npm_image;
use crate::model::layout;
use crate::model::manifest::{FileEntry, ImageRole, Manifest, Strategy};
use crate::model::registry::{self as names, Descriptor, FleetRegistry};
use crate::project::ProjectArgs;
use crate::registry::Client;

/// A manifest or index larger than this is not one.
const MAX_DOCUMENT: usize = 4 << 20;

/// Verify a bundle and push it into a registry for a fleet of builders
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    cargo xtask cache-publish --registry 10.0.0.5:5000 --insecure\n  \
    cargo xtask cache-publish --registry registry.example.com/fleet --json\n\n\
    Then, on each builder: `cargo xtask patch-compose --registry 10.0.0.5:5000 --insecure` \
    and `docker compose build`.\n\
    Credentials are those of `docker login HOST` on this machine, read when the registry \
    asks for them and never written anywhere.")]
pub struct Args {
    #[command(flatten)]
    pub bundle: BundleArg,
    /// The registry, and a repository prefix under it: HOST[:PORT][/PREFIX]
    #[arg(long, value_name = "HOST[:PORT][/PREFIX]", value_parser = names::parse_spec)]
    pub registry: names::RegistrySpec,
    /// The registry speaks plain HTTP (builders then need it in `insecure-registries`)
    #[arg(long)]
    pub insecure: bool,
    /// Print a summary as JSON on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Serialize, Default)]
struct Summary {
    registry: String,
    digest: String,
    /// References pushed (their manifest was not there under that tag).
    pushed: Vec<String>,
    /// References the registry had already, with the same digest.
    present: Vec<String>,
    blobs_uploaded: usize,
    bytes_uploaded: u64,
    blobs_mounted: usize,
    blobs_present: usize,
    seconds: f64,
}

/// One reference to publish.
enum Item {
    /// A manifest or index stored in the bundle's blobs (a base image, a build cache).
    Stored {
        what: String,
        path: String,
        tag: String,
        digest: String,
        blobs: String,
    },
    /// The npm cache image of a service, made from its folder.
    Npm {
        project: String,
        service: String,
        reference: String,
        folder: String,
    },
}

impl Args {
    pub fn run(self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        let fleet = FleetRegistry {
            spec: self.registry.clone(),
            insecure: self.insecure,
        };
        let registry = fleet.spec.to_string();
        let dir = self.bundle.dir(sh, project)?;
        let trust = self.trust.trust(sh)?;
        let _lock = BundleLock::acquire(&dir, "cache-publish", false)?;
        let (manifest, digest) = bundle::read_checked_manifest(&dir, &trust)?;
        eprintln!("      Digest sha256:{digest}");
        if manifest.strategy != Strategy::Local {
            bail!(
                "the bundle in {dir} was exported with --strategy {}: a fleet's builders read \
                 a BuildKit `type=registry` cache, which cache-publish makes from the \
                 `type=local` cache of --strategy local. Export again with --strategy local",
                manifest.strategy.as_str()
            );
        }
        let report = bundle::verify_bundle(&dir, &manifest, true, &[])?;
        if !report.ok() {
            bail!("nothing was pushed from {dir}: it does not verify (files named above)");
        }
        let files: BTreeMap<&str, &FileEntry> = manifest
            .files
            .iter()
            .map(|f| (f.path.as_str(), f))
            .collect();
        let items = items(&dir, &manifest, &files)?;
        let credentials = Box::new(|host: &str| crate::docker::registry_credentials(host));
        let client = Client::new(&fleet, credentials)?;
        let mut publisher = Publisher {
            client,
            fleet: &fleet,
            dir: &dir,
            files,
            seen: BTreeSet::new(),
            uploaded: BTreeMap::new(),
            summary: Summary {
                registry: registry.clone(),
                digest: format!("sha256:{digest}"),
                ..Summary::default()
            },
        };
        publisher.client.check()?;
        eprintln!(
            "  Publishing {} references to {}{}",
            items.len(),
            registry,
            if self.insecure { " (plain HTTP)" } else { "" }
        );
        for item in &items {
            publisher.publish(item)?;
        }
        let mut summary = publisher.summary;
        summary.seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "    Finished publish to {}: {} pushed, {} already there; {} blobs uploaded ({}), \
             {} mounted, {} present in {:.1}s",
            registry,
            summary.pushed.len(),
            summary.present.len(),
            summary.blobs_uploaded,
            human_bytes(summary.bytes_uploaded),
            summary.blobs_mounted,
            summary.blobs_present,
            summary.seconds
        );
        eprintln!(
            "        Next, on each builder: `cargo xtask patch-compose --registry {}{}`, then \
             `docker compose build`",
            registry,
            if self.insecure { " --insecure" } else { "" }
        );
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// What to publish: every base image, every service's build cache, every npm cache image.
fn items(
    dir: &Utf8Path,
    manifest: &Manifest,
    files: &BTreeMap<&str, &FileEntry>,
) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    let bases: Vec<_> = manifest
        .images
        .iter()
        .filter(|i| i.role == ImageRole::Base)
        .collect();
    if !bases.is_empty() {
        let layout = manifest.image_layout.as_ref().with_context(|| {
            format!(
                "the bundle in {dir} keeps its images in one archive; cache-publish pushes them \
                 from the image layout that cache-export writes on the containerd image store \
                 (--compression none). Export again with --compression none"
            )
        })?;
        let index_path = layout
            .entries
            .iter()
            .find(|e| e.name == "index.json")
            .map(|e| e.path.clone())
            .context("the bundle's saved images have no index.json")?;
        let index = read_document(dir, files, &index_path, None)?;
        let index =
            names::parse_document(&index).map_err(|e| anyhow::anyhow!("{index_path}: {e}"))?;
        for image in bases {
            let name = names::parse_image(&image.name).with_context(|| {
                format!("{:?} is not an image name a registry can hold", image.name)
            })?;
            let found = index.manifests.iter().find(|d| {
                d.digest == image.id
                    || d.annotations
                        .get("io.containerd.image.name")
                        .and_then(|n| names::parse_image(n))
                        .is_some_and(|n| n == name)
            });
            let found = found.with_context(|| {
                format!(
                    "{index_path} has no entry for {} ({}); export again",
                    image.name, image.id
                )
            })?;
            items.push(Item::Stored {
                what: image.name.clone(),
                path: name.fleet_path(),
                tag: name.tag.clone(),
                digest: found.digest.clone(),
                blobs: layout::BUILD_CACHE_DIR.to_string(),
            });
        }
    }
    let mut caches: BTreeMap<String, Vec<Descriptor>> = BTreeMap::new();
    for service in &manifest.services {
        let (Some(rel), Some(tag)) = (&service.build_cache, &service.build_cache_tag) else {
            continue;
        };
        if !caches.contains_key(rel) {
            let path = format!("{rel}/index.json");
            let bytes = read_document(dir, files, &path, None)?;
            let doc = names::parse_document(&bytes).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            caches.insert(rel.clone(), doc.manifests);
        }
        let found = caches[rel]
            .iter()
            .find(|d| d.annotations.get("org.opencontainers.image.ref.name") == Some(tag))
            .with_context(|| {
                format!(
                    "{rel}/index.json has no tag {tag} (service {})",
                    service.name
                )
            })?;
        items.push(Item::Stored {
            what: format!("the build cache of service {}", service.name),
            path: names::build_cache_path(&manifest.project_name),
            tag: tag.clone(),
            digest: found.digest.clone(),
            blobs: rel.clone(),
        });
    }
    for service in &manifest.services {
        if let (Some(reference), Some(folder)) = (&service.npm_image, &service.npm_cache) {
            items.push(Item::Npm {
                project: manifest.project_name.clone(),
                service: service.name.clone(),
                reference: reference.clone(),
                folder: folder.clone(),
            });
        }
    }
    Ok(items)
}

/// Reads a small file the manifest lists (a layout's `index.json`, a manifest), checking
/// its bytes against the manifest's sha256 and, for a blob, against its name.
fn read_document(
    dir: &Utf8Path,
    files: &BTreeMap<&str, &FileEntry>,
    path: &str,
    digest: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let entry = files.get(path).with_context(|| {
        format!("the bundle's manifest does not list {path}, which the images need")
    })?;
    let bytes = bundle::read_capped(&dir.join(path), MAX_DOCUMENT)
        .with_context(|| format!("reading {path}"))?;
    let sha = bundle::hex(&Sha256::digest(&bytes));
    if sha != entry.sha256 || digest.is_some_and(|d| d != format!("sha256:{sha}")) {
        bail!(
            "{path} changed since it was verified; nothing more was pushed. Copy the bundle again"
        );
    }
    Ok(bytes)
}

struct Publisher<'a> {
    client: Client,
    fleet: &'a FleetRegistry,
    dir: &'a Utf8Path,
    files: BTreeMap<&'a str, &'a FileEntry>,
    /// (repository, digest) of the blobs known to be in the registry.
    seen: BTreeSet<(String, String)>,
    /// The repository each blob was uploaded to or found in, for mounts.
    uploaded: BTreeMap<String, String>,
    summary: Summary,
}

impl Publisher<'_> {
    fn publish(&mut self, item: &Item) -> anyhow::Result<()> {
        match item {
            Item::Stored {
                what,
                path,
                tag,
                digest,
                blobs,
            } => {
                let repo = self.fleet.spec.repository(path);
                let digest = self.choose_platform(blobs, digest, what)?;
                self.publish_stored(what, &repo, tag, &digest, blobs)
            }
            Item::Npm {
                project,
                service,
                reference,
                folder,
            } => self.publish_npm(project, service, reference, folder),
        }
    }

    /// The image index or manifest `digest` of the blob store `blobs`, checked against the
    /// manifest and its digest: its bytes and what it says (`what` names it in an error).
    fn stored_document(
        &self,
        blobs: &str,
        digest: &str,
        what: &str,
    ) -> anyhow::Result<(Vec<u8>, names::Document)> {
        let bytes = read_document(
            self.dir,
            &self.files,
            &blob_path(blobs, digest),
            Some(digest),
        )?;
        let doc = names::parse_document(&bytes).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        Ok((bytes, doc))
    }

    /// The digest to publish for `digest`: itself, or for an index of which the bundle
    /// holds only some platforms (as `docker save` keeps a pulled image), the manifest of
    /// this machine's platform.
    fn choose_platform(&self, blobs: &str, digest: &str, what: &str) -> anyhow::Result<String> {
        let (_, doc) = self.stored_document(blobs, digest, what)?;
        let missing = |d: &&Descriptor| {
            names::is_manifest(d)
                && !self
                    .files
                    .contains_key(blob_path(blobs, &d.digest).as_str())
        };
        if !doc.manifests.iter().any(|d| missing(&d)) {
            return Ok(digest.to_string());
        }
        let arch = host_arch();
        let chosen = doc.manifests.iter().find(|d| {
            !missing(d)
                && d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        });
        let chosen = chosen.with_context(|| {
            format!("{what}: the bundle holds no linux/{arch} manifest of its index {digest}")
        })?;
        eprintln!(
            "        Note {what}: the bundle holds some platforms of {digest} only: publishing \
             its linux/{arch} manifest {}",
            chosen.digest
        );
        Ok(chosen.digest.clone())
    }

    fn publish_stored(
        &mut self,
        what: &str,
        repo: &str,
        tag: &str,
        digest: &str,
        blobs: &str,
    ) -> anyhow::Result<()> {
        let reference = format!("{}/{repo}{}", self.fleet.spec.host, names::tag_suffix(tag));
        if self.client.manifest_digest(repo, tag)?.as_deref() == Some(digest) {
            eprintln!("     Present {reference} ({what}, same digest, nothing pushed)");
            self.summary.present.push(reference);
            return Ok(());
        }
        eprintln!("     Pushing {reference} ({what})");
        let (bytes, media_type) = self
            .push_document(repo, digest, blobs)
            .with_context(|| format!("pushing {what} to {reference}"))?;
        self.client
            .put_manifest(repo, tag, &media_type, &bytes)
            .with_context(|| format!("pushing {what} to {reference}"))?;
        self.summary.pushed.push(reference);
        Ok(())
    }

    /// Pushes what the document `digest` points at (its blobs, and the manifests of an
    /// index, by digest); returns its bytes and media type, to be put under a tag.
    fn push_document(
        &mut self,
        repo: &str,
        digest: &str,
        blobs: &str,
    ) -> anyhow::Result<(Vec<u8>, String)> {
        let (bytes, doc) = self.stored_document(blobs, digest, digest)?;
        for child in &doc.manifests {
            if names::is_manifest(child) {
                let (child_bytes, media_type) = self.push_document(repo, &child.digest, blobs)?;
                self.client
                    .put_manifest(repo, &child.digest, &media_type, &child_bytes)?;
            } else {
                self.ensure_blob(repo, child, blobs)?;
            }
        }
        for blob in &doc.blobs {
            self.ensure_blob(repo, blob, blobs)?;
        }
        Ok((bytes, doc.media_type))
    }

    /// Makes sure the registry has the blob in `repo`: there already, mounted from another
    /// repository, or uploaded from the bundle.
    fn ensure_blob(&mut self, repo: &str, blob: &Descriptor, blobs: &str) -> anyhow::Result<()> {
        let key = (repo.to_string(), blob.digest.clone());
        if self.seen.contains(&key) {
            return Ok(());
        }
        if self.client.blob_exists(repo, &blob.digest)? {
            self.summary.blobs_present += 1;
        } else if let Some(from) = self.uploaded.get(&blob.digest).cloned() {
            if self.client.mount_blob(repo, &blob.digest, &from)? {
                self.summary.blobs_mounted += 1;
            } else {
                self.upload_file(repo, blob, blobs)?;
            }
        } else {
            self.upload_file(repo, blob, blobs)?;
        }
        self.uploaded
            .entry(blob.digest.clone())
            .or_insert_with(|| repo.to_string());
        self.seen.insert(key);
        Ok(())
    }

    fn upload_file(&mut self, repo: &str, blob: &Descriptor, blobs: &str) -> anyhow::Result<()> {
        let path = blob_path(blobs, &blob.digest);
        let entry = self.files.get(path.as_str()).with_context(|| {
            format!("the bundle has no {path}, which {repo} needs; export again")
        })?;
        let file = bundle::open_regular(&self.dir.join(&path))
            .with_context(|| format!("opening {path}"))?;
        let size = entry.size;
        let body = Counted::new(file, size);
        self.client
            .upload_blob(repo, &blob.digest, size, body)
            .with_context(|| format!("uploading {path}"))?;
        self.summary.blobs_uploaded += 1;
        self.summary.bytes_uploaded += size;
        Ok(())
    }

    /// The npm cache image of `service`, made from its verified folder as cache-import
    /// makes it, pushed as a one-layer image (config, uncompressed layer, manifest).
    fn publish_npm(
        &mut self,
        project: &str,
        service: &str,
        expected: &str,
        folder: &str,
    ) -> anyhow::Result<()> {
        let dir = self.dir.join(folder);
        let layer = npm_image::measure(&dir)?;
        let (name, tag) = expected
            .split_once(':')
            .context("an npm image reference without a tag")?;
        let made = npm_image::reference(project, service, &layer);
        if made != expected {
            bail!(
                "{folder} gives the image {made}, the export made {expected}: the bundle was \
                 exported by another version of xtask. Nothing more was pushed"
            );
        }
        let config = npm_image::config(&host_arch(), &layer, service);
        let config_digest = format!("sha256:{}", bundle::hex(&Sha256::digest(&config)));
        let manifest = names::one_layer_manifest(
            &config_digest,
            config.len() as u64,
            &layer.diff_id,
            layer.size,
        );
        let digest = format!("sha256:{}", bundle::hex(&Sha256::digest(&manifest)));
        let repo = self.fleet.spec.repository(name);
        let reference = format!("{}/{repo}:{tag}", self.fleet.spec.host);
        let what = format!("the npm cache of service {service}");
        if self.client.manifest_digest(&repo, tag)?.as_deref() == Some(digest.as_str()) {
            eprintln!("     Present {reference} ({what}, same digest, nothing pushed)");
            self.summary.present.push(reference);
            return Ok(());
        }
        eprintln!(
            "     Pushing {reference} ({what}, {})",
            human_bytes(layer.size)
        );
        if !self.client.blob_exists(&repo, &config_digest)? {
            self.client
                .upload_blob(&repo, &config_digest, config.len() as u64, &config[..])?;
            self.summary.blobs_uploaded += 1;
            self.summary.bytes_uploaded += config.len() as u64;
        } else {
            self.summary.blobs_present += 1;
        }
        if !self.client.blob_exists(&repo, &layer.diff_id)? {
            let (reader, mut writer) = std::io::pipe().context("making a pipe")?;
            let writer_thread = std::thread::spawn({
                let dir = dir.clone();
                move || npm_image::write_layer(&dir, &mut writer)
            });
            let uploaded = self.client.upload_blob(
                &repo,
                &layer.diff_id,
                layer.size,
                Counted::new(reader, layer.size),
            );
            let written = writer_thread
                .join()
                .map_err(|_| anyhow::anyhow!("the thread writing {what} panicked"))?;
            uploaded.with_context(|| format!("uploading {what}"))?;
            if written? != layer {
                bail!("{dir} changed while it was pushed; run cache-publish again");
            }
            self.summary.blobs_uploaded += 1;
            self.summary.bytes_uploaded += layer.size;
        } else {
            self.summary.blobs_present += 1;
        }
        self.client
            .put_manifest(&repo, tag, names::MANIFEST_TYPES[0], &manifest)?;
        self.summary.pushed.push(reference);
        Ok(())
    }
}

/// `<blobs>/blobs/sha256/<hex>`.
fn blob_path(blobs: &str, digest: &str) -> String {
    format!(
        "{blobs}/blobs/sha256/{}",
        digest.trim_start_matches("sha256:")
    )
}

/// This machine's architecture as image configs name it.
fn host_arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

/// A reader that shows its progress (for uploads of a few MB and more).
struct Counted<R> {
    inner: R,
    done: u64,
    progress: Option<crate::progress::Progress>,
}

impl<R> Counted<R> {
    fn new(inner: R, size: u64) -> Counted<R> {
        let progress =
            (size > 4 << 20).then(|| crate::progress::Progress::new("Uploading", Some(size)));
        Counted {
            inner,
            done: 0,
            progress,
        }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if let Some(progress) = &mut self.progress {
            if n == 0 {
                if let Some(p) = self.progress.take() {
                    p.done();
                }
            } else {
                progress.set(self.done);
            }
        }
        Ok(n)
    }
}
