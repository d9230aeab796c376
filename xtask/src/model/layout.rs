//! The bundle's layout: every folder and file name in it, the build cache's tags, the
//! cache images' names, the build contexts, and the compose build settings an offline
//! build uses.
//!
//! The export builds every service with exactly the settings patch-compose later writes
//! on the server, so that the server's build hits the cache: a difference between the two
//! is a silent cache miss. Both are therefore derived from [`offline_build`]; the export
//! adds its `cache_to` ([`export_override`]), patch-compose turns the same value into a
//! [`ServicePatch`]. The folder the paths point into is a parameter: the export builds
//! from its staging folder, patch-compose points at the final bundle folder.

use std::collections::{BTreeMap, BTreeSet};

use camino::Utf8Path;

use crate::model::compose::ComposeModel;
use crate::model::compose_patch::ServicePatch;
use crate::model::manifest::{Compression, Manifest, ServiceEntry, Strategy};
use crate::model::plan::{BuildService, Plan};
use crate::model::registry::{self, FleetRegistry};

/// The BuildKit local cache of every service (an OCI layout, one tag per service).
pub const BUILD_CACHE_DIR: &str = "build-cache";
/// The saved images' own files (index.json, manifest.json…); their blobs are in
/// `build-cache/blobs/sha256/`.
pub const IMAGES_DIR: &str = "base-images";
/// The images archive, before the compression's suffix.
pub const IMAGES_ARCHIVE_STEM: &str = "base-images.tar";

/// The build context (and the Dockerfile stage it replaces) of the Python wheelhouse.
pub const WHEELS_CONTEXT: &str = "wheels";
/// The build context (and the Dockerfile stage it replaces) of the npm cache.
pub const NPM_CONTEXT: &str = "npm-cache";

/// The images archive's name for `compression`, e.g. `base-images.tar.zst`.
pub fn images_archive(compression: Compression) -> String {
    format!("{IMAGES_ARCHIVE_STEM}{}", compression.suffix())
}

/// A blob of the build cache's blob store, by its sha256 in hex.
pub fn build_cache_blob(hex: &str) -> String {
    format!("{BUILD_CACHE_DIR}/blobs/sha256/{hex}")
}

/// The top-level entry of a bundle path (`build-cache` of `build-cache/index.json`).
pub fn top_level(path: &str) -> String {
    path.split('/').next().unwrap_or(path).to_string()
}

/// The service's Python wheelhouse.
pub fn wheelhouse_dir(service: &str) -> String {
    format!("pip-cache/{service}")
}

/// The service's npm cache: the build context (the image's platform).
pub fn npm_cache_dir(service: &str) -> String {
    format!("npm-cache/{service}")
}

/// The host's packages the image's npm cache lacks (merged into ~/.npm at import).
pub fn npm_host_cache_dir(service: &str) -> String {
    format!("npm-host-cache/{service}")
}

/// The tag of a service in the build cache (`tag=` of `type=local`).
pub fn sanitize_tag(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The `cache_from` entry that reads the build cache in `src` (under tag `tag`).
pub fn local_cache_from(src: impl std::fmt::Display, tag: Option<&str>) -> String {
    match tag {
        Some(tag) => format!("type=local,src={src},tag={tag}"),
        None => format!("type=local,src={src}"),
    }
}

/// The cache image of a service's stage (strategies inline and legacy); the last stage's
/// is `latest`.
pub fn cache_image_name(project: &str, service: &str, stage: Option<&str>) -> String {
    let tag = stage.map_or_else(|| "latest".to_string(), sanitize_tag);
    format!("{project}-{service}-cache:{tag}")
}

/// The build contexts an export hands to a service's build (and patch-compose writes):
/// the wheelhouse as `wheels` and the npm cache as `npm-cache`, where the Dockerfile has a
/// stage of that name to replace (`FROM scratch AS wheels`) and the service has the
/// dependency manifest. Context name → bundle-relative folder.
pub fn service_contexts(service: &BuildService) -> BTreeMap<String, String> {
    let mut contexts = BTreeMap::new();
    let has_stage = |name: &str| service.stage_names.iter().any(|s| s == name);
    if has_stage(WHEELS_CONTEXT) && !service.python_requirements.is_empty() {
        contexts.insert(WHEELS_CONTEXT.to_string(), wheelhouse_dir(&service.name));
    }
    if has_stage(NPM_CONTEXT) && !service.node_lockfiles.is_empty() {
        contexts.insert(NPM_CONTEXT.to_string(), npm_cache_dir(&service.name));
    }
    contexts
}

/// What is known of a service's part of the bundle.
#[derive(Debug, Clone, Copy)]
pub enum Exported<'a> {
    /// The bundle (or the export making it) has this entry for the service.
    Entry(&'a ServiceEntry),
    /// The bundle's manifest does not list the service (`--only` may have left it out).
    Absent,
    /// There is no bundle yet: the names the export will write.
    Planned,
}

/// Where and how the offline build runs.
#[derive(Debug, Clone, Copy)]
pub struct OfflineTarget<'a> {
    /// The bundle folder, absolute: compose resolves a `type=local,src=` against the
    /// directory it runs from, not the compose file's folder.
    pub bundle_dir: &'a Utf8Path,
    pub project_name: &'a str,
    pub strategy: Strategy,
    /// The engine can read a `type=local` cache (the containerd image store).
    pub local_cache: bool,
    /// The npm cache images the engine has: for these the build gets the image
    /// (`docker-image://`), for the others the folder.
    pub npm_images: &'a BTreeSet<String>,
    /// A builder of a fleet: the build cache, the npm cache images and the base images
    /// that `registry-mirrors` do not cover come from this registry (`cache-publish`
    /// put them there), not from the engine.
    pub registry: Option<&'a FleetRegistry>,
}

/// The compose build settings of a service's offline build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OfflineBuild {
    /// `build.cache_from`: the build cache (strategy local), or the cache images and
    /// base images (strategies inline and legacy).
    pub cache_from: Vec<String>,
    /// `build.additional_contexts`: name → absolute folder or `docker-image://` reference.
    pub additional_contexts: BTreeMap<String, String>,
    /// `build.args` the bundle recorded that the compose file does not set.
    pub args: BTreeMap<String, String>,
}

/// The settings the offline build of `service` uses; the export builds with the same
/// contexts (see the module's documentation).
pub fn offline_build(
    service: &BuildService,
    exported: Exported<'_>,
    target: &OfflineTarget<'_>,
) -> OfflineBuild {
    let entry = match exported {
        Exported::Entry(e) => Some(e),
        Exported::Absent | Exported::Planned => None,
    };
    let bundle_dir = target.bundle_dir;
    let mut cache_from = Vec::new();
    match target.strategy {
        Strategy::Local if target.registry.is_some() => {
            let fleet = target.registry.expect("checked");
            let tag = match exported {
                Exported::Entry(e) if e.build_cache.is_some() => e.build_cache_tag.clone(),
                Exported::Entry(_) | Exported::Absent => None,
                Exported::Planned => Some(sanitize_tag(&service.name)),
            };
            if let Some(tag) = tag {
                cache_from.push(registry::registry_cache_from(
                    &fleet.spec,
                    fleet.insecure,
                    target.project_name,
                    &tag,
                ));
            }
        }
        Strategy::Local if target.local_cache => {
            // From a bundle, only what it holds (`--only` may have left it out).
            let cache = match exported {
                Exported::Entry(e) => e
                    .build_cache
                    .clone()
                    .map(|dir| (dir, e.build_cache_tag.clone())),
                Exported::Absent => None,
                Exported::Planned => Some((
                    BUILD_CACHE_DIR.to_string(),
                    Some(sanitize_tag(&service.name)),
                )),
            };
            if let Some((rel, tag)) = cache {
                cache_from.push(local_cache_from(bundle_dir.join(rel), tag.as_deref()));
            }
        }
        Strategy::Local => {}
        Strategy::Inline | Strategy::Legacy => {
            match entry.filter(|e| !e.cache_images.is_empty()) {
                Some(e) => cache_from.extend(e.cache_images.iter().cloned()),
                None => cache_from.push(cache_image_name(target.project_name, &service.name, None)),
            }
            cache_from.extend(service.base_images.iter().cloned());
        }
    }
    let contexts = match entry {
        Some(e) => e.contexts.clone(),
        None => service_contexts(service),
    };
    let mut additional_contexts: BTreeMap<String, String> = contexts
        .into_iter()
        .map(|(name, rel)| {
            let image = entry.and_then(|e| e.npm_image.as_ref()).filter(|image| {
                name == NPM_CONTEXT
                    && (target.registry.is_some() || target.npm_images.contains(*image))
            });
            let value = match (image, target.registry) {
                (Some(image), Some(fleet)) => {
                    format!(
                        "docker-image://{}/{}",
                        fleet.spec.host,
                        fleet.spec.repository(image)
                    )
                }
                (Some(image), None) => format!("docker-image://{image}"),
                (None, _) => bundle_dir.join(rel).to_string(),
            };
            (name, value)
        })
        .collect();
    if let Some(fleet) = target.registry {
        additional_contexts.extend(base_image_contexts(service, fleet));
    }
    let args = entry
        .map(|e| {
            e.args
                .clone()
                .into_iter()
                .filter(|(k, _)| !service.args.contains_key(k))
                .collect()
        })
        .unwrap_or_default();
    OfflineBuild {
        cache_from,
        additional_contexts,
        args,
    }
}

/// The named contexts that hand a fleet builder the base images its `registry-mirrors`
/// do not cover (other registries than Docker Hub, or any under a prefix): BuildKit puts a
/// `docker-image://` context in place of the `FROM` whose image it names.
fn base_image_contexts(service: &BuildService, fleet: &FleetRegistry) -> BTreeMap<String, String> {
    service
        .base_images
        .iter()
        .filter_map(|base| {
            let image = registry::parse_image(base)?;
            if image.through_mirror(&fleet.spec) {
                return None;
            }
            let reference = fleet.spec.reference(&image.fleet_path(), &image.tag);
            Some((
                crate::model::dockerfile::context_key(base),
                format!("docker-image://{reference}"),
            ))
        })
        .collect()
}

impl OfflineBuild {
    /// patch-compose's edit of the service.
    pub fn into_patch(self, service: &str) -> ServicePatch {
        ServicePatch {
            service: service.to_string(),
            cache_from: self.cache_from,
            additional_contexts: self.additional_contexts.into_iter().collect(),
            args: self.args.into_iter().collect(),
        }
    }
}

/// patch-compose's edits: one per build service of the plan, from the bundle's manifest
/// when there is one, else from the names the export will write.
pub fn offline_patches(
    plan: &Plan,
    manifest: Option<&Manifest>,
    target: &OfflineTarget<'_>,
) -> Vec<ServicePatch> {
    plan.build_services
        .iter()
        .map(|service| {
            let exported = match manifest {
                None => Exported::Planned,
                Some(m) => match m.services.iter().find(|s| s.name == service.name) {
                    Some(e) => Exported::Entry(e),
                    None => Exported::Absent,
                },
            };
            offline_build(service, exported, target).into_patch(&service.name)
        })
        .collect()
}

/// A host folder a service's build reads, as the compose file names it: the `src=` of a
/// `type=local` cache in `cache_from`, or an `additional_contexts` folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFolder {
    pub service: String,
    /// `cache_from` or `additional_contexts.<name>`.
    pub field: String,
    pub path: String,
}

/// The host folders the compose file's builds read (the model has made them absolute, as
/// compose does). Compose skips a missing `type=local` cache with one warning and rebuilds
/// everything: the caller checks these.
pub fn host_folders(model: &ComposeModel) -> Vec<HostFolder> {
    let mut out = Vec::new();
    for (name, service) in &model.services {
        let Some(build) = &service.build else {
            continue;
        };
        for entry in &build.cache_from {
            let attrs: Vec<(&str, &str)> = entry
                .split(',')
                .filter_map(|attr| attr.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            if !attrs.contains(&("type", "local")) {
                continue;
            }
            if let Some((_, src)) = attrs.iter().find(|(k, _)| *k == "src") {
                if src.starts_with('/') {
                    out.push(HostFolder {
                        service: name.clone(),
                        field: "cache_from".into(),
                        path: src.to_string(),
                    });
                }
            }
        }
        for (context, value) in &build.additional_contexts {
            // `docker-image://…`, `oci-layout://…`, `service:…`, URLs: not host folders.
            if value.starts_with('/') && !value.contains("://") {
                out.push(HostFolder {
                    service: name.clone(),
                    field: format!("additional_contexts.{context}"),
                    path: value.clone(),
                });
            }
        }
    }
    out
}

/// The `cache_to` of the export's build of `service` into the build cache under
/// `bundle_dir`.
///
/// The layers the build makes are compressed with zstd (BuildKit's "better" level): a
/// smaller layer than gzip's, exported no slower, and unpacked faster on the server (the
/// export then recompresses them further). Layers that already have a blob (the base
/// images', as `docker save` writes them) keep it, so they are still stored once.
pub fn export_cache_to(bundle_dir: &Utf8Path, service: &str) -> String {
    let dest = bundle_dir.join(BUILD_CACHE_DIR);
    let tag = sanitize_tag(service);
    format!("type=local,dest={dest},tag={tag},mode=max,compression=zstd,compression-level=7")
}

/// The compose override file the export builds `service` with: the offline build's
/// contexts (and args, if any), plus `cache_to`. No `cache_from`: the export fills the
/// cache, it does not read one.
pub fn export_override(
    service: &str,
    build: &OfflineBuild,
    cache_to: &str,
) -> Result<String, serde_yaml::Error> {
    use serde_yaml::{Mapping, Value};
    let mut settings = Mapping::new();
    settings.insert(
        "cache_to".into(),
        Value::Sequence(vec![cache_to.to_string().into()]),
    );
    let map = |entries: &BTreeMap<String, String>| -> Mapping {
        entries
            .iter()
            .map(|(k, v)| (k.clone().into(), v.clone().into()))
            .collect()
    };
    if !build.additional_contexts.is_empty() {
        settings.insert(
            "additional_contexts".into(),
            map(&build.additional_contexts).into(),
        );
    }
    if !build.args.is_empty() {
        settings.insert("args".into(), map(&build.args).into());
    }
    let mut svc = Mapping::new();
    svc.insert("build".into(), settings.into());
    let mut services = Mapping::new();
    services.insert(service.to_string().into(), svc.into());
    let mut root = Mapping::new();
    root.insert("services".into(), services.into());
    serde_yaml::to_string(&root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> BuildService {
        BuildService {
            name: "web".into(),
            context: "/p/web".into(),
            dockerfile: Some("/p/web/Dockerfile".into()),
            target: None,
            image: None,
            base_images: vec!["node:20".into(), "python:3.12-slim".into()],
            stages: vec!["wheels".into(), "npm-cache".into(), "build".into()],
            stage_names: vec!["wheels".into(), "npm-cache".into(), "build".into()],
            args: BTreeMap::from([("A".to_string(), "1".to_string())]),
            python_requirements: vec!["/p/web/requirements.txt".into()],
            node_lockfiles: vec!["/p/web/package-lock.json".into()],
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            cache_image_name("llm-chat", "backend", None),
            "llm-chat-backend-cache:latest"
        );
        assert_eq!(
            cache_image_name("p", "web", Some("build")),
            "p-web-cache:build"
        );
        assert_eq!(sanitize_tag("a b/c:d"), "a-b-c-d");
        assert_eq!(images_archive(Compression::Zstd), "base-images.tar.zst");
        assert_eq!(images_archive(Compression::None), "base-images.tar");
        assert_eq!(
            service_contexts(&service()),
            BTreeMap::from([
                ("npm-cache".to_string(), "npm-cache/web".to_string()),
                ("wheels".to_string(), "pip-cache/web".to_string()),
            ])
        );
    }

    /// What patch-compose writes, read back from the compose file: the folders a moved
    /// bundle leaves behind (and the user's own); images and URLs are not folders.
    #[test]
    fn host_folders_are_the_local_caches_and_context_folders() {
        let text = "services:
  api:
    build:
      context: ./api
      cache_from:
        - 'type=local,src=/srv/b/build-cache,tag=api'
        - 'busybox:latest'
        - 'type=registry,ref=x/y'
      additional_contexts:
        wheels: '/srv/b/pip-cache/api'
        npm-cache: 'docker-image://p-api-npm-cache:00ff'
        mine: ./vendor
  db:
    image: postgres
";
        let read = |p: &Utf8Path| match p.as_str() {
            "/p/compose.yaml" => Ok(text.to_string()),
            _ => Err(std::io::ErrorKind::NotFound.into()),
        };
        let model =
            crate::model::compose::load(Utf8Path::new("/p/compose.yaml"), &BTreeMap::new(), &read)
                .unwrap();
        let folders: Vec<(String, String, String)> = host_folders(&model)
            .into_iter()
            .map(|f| (f.service, f.field, f.path))
            .collect();
        assert_eq!(
            folders,
            [
                (
                    "api".into(),
                    "cache_from".into(),
                    "/srv/b/build-cache".into()
                ),
                (
                    "api".into(),
                    "additional_contexts.mine".into(),
                    "/p/vendor".into()
                ),
                (
                    "api".into(),
                    "additional_contexts.wheels".into(),
                    "/srv/b/pip-cache/api".into()
                ),
            ]
        );
    }

    /// The export's build override and patch-compose's edit hand the build the same
    /// contexts and args, so the server's build finds what the export cached.
    #[test]
    fn export_builds_with_the_contexts_patch_compose_writes() {
        let service = service();
        let entry = ServiceEntry {
            name: "web".into(),
            contexts: service_contexts(&service),
            npm_image: Some("p-web-npm-cache:0123abcd".into()),
            args: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]),
            ..ServiceEntry::default()
        };
        let images = BTreeSet::from(["p-web-npm-cache:0123abcd".to_string()]);
        let dir = Utf8Path::new("/srv/docker-build-cache");
        let target = OfflineTarget {
            bundle_dir: dir,
            project_name: "p",
            strategy: Strategy::Local,
            local_cache: true,
            npm_images: &images,
            registry: None,
        };
        let build = offline_build(&service, Exported::Entry(&entry), &target);
        let yaml = export_override("web", &build, &export_cache_to(dir, "web")).unwrap();
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let settings = &parsed["services"]["web"]["build"];
        let pairs = |key: &str| -> Vec<(String, String)> {
            settings[key]
                .as_mapping()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            let text = |v: &serde_yaml::Value| v.as_str().unwrap().to_string();
                            (text(k), text(v))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let patch = offline_build(&service, Exported::Entry(&entry), &target).into_patch("web");
        assert_eq!(pairs("additional_contexts"), patch.additional_contexts);
        assert_eq!(pairs("args"), patch.args);
        assert_eq!(
            patch.additional_contexts,
            vec![
                (
                    "npm-cache".to_string(),
                    "docker-image://p-web-npm-cache:0123abcd".to_string()
                ),
                (
                    "wheels".to_string(),
                    "/srv/docker-build-cache/pip-cache/web".to_string()
                ),
            ]
        );
        assert_eq!(patch.args, vec![("B".to_string(), "2".to_string())]);
        assert_eq!(
            settings["cache_to"][0].as_str().unwrap(),
            "type=local,dest=/srv/docker-build-cache/build-cache,tag=web,mode=max,\
             compression=zstd,compression-level=7"
        );
        assert!(settings.get("cache_from").is_none());
    }

    /// A builder of a fleet: the build cache, the npm cache image and the bases a mirror
    /// does not cover come from the registry; the wheelhouse stays a folder.
    #[test]
    fn a_fleet_builder_reads_the_registry() {
        let mut service = service();
        service.base_images = vec!["node:20".into(), "ghcr.io/o/tools:1".into()];
        let entry = ServiceEntry {
            name: "web".into(),
            build_cache: Some("build-cache".into()),
            build_cache_tag: Some("web".into()),
            contexts: service_contexts(&service),
            npm_image: Some("p-web-npm-cache:0123abcd".into()),
            ..ServiceEntry::default()
        };
        let none = BTreeSet::new();
        let build = |spec: &str| {
            let fleet = FleetRegistry {
                spec: registry::parse_spec(spec).unwrap(),
                insecure: true,
            };
            let target = OfflineTarget {
                bundle_dir: Utf8Path::new("/b"),
                project_name: "p",
                strategy: Strategy::Local,
                local_cache: false,
                npm_images: &none,
                registry: Some(&fleet),
            };
            offline_build(&service, Exported::Entry(&entry), &target)
        };
        let plain = build("10.0.0.5:5000");
        assert_eq!(
            plain.cache_from,
            ["type=registry,ref=10.0.0.5:5000/p-build-cache:web,registry.insecure=true"]
        );
        let contexts: Vec<(&str, &str)> = plain
            .additional_contexts
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            contexts,
            [
                (
                    "ghcr.io/o/tools:1",
                    "docker-image://10.0.0.5:5000/ghcr.io/o/tools:1"
                ),
                (
                    "npm-cache",
                    "docker-image://10.0.0.5:5000/p-web-npm-cache:0123abcd"
                ),
                ("wheels", "/b/pip-cache/web"),
            ]
        );
        // Under a prefix, Docker Hub's images too: a mirror has no path.
        let prefixed = build("r.example/fleet");
        assert_eq!(
            prefixed.additional_contexts["node:20"],
            "docker-image://r.example/fleet/library/node:20"
        );
        assert_eq!(
            prefixed.additional_contexts["npm-cache"],
            "docker-image://r.example/fleet/p-web-npm-cache:0123abcd"
        );
    }

    #[test]
    fn cache_from_per_strategy() {
        let service = service();
        let none = BTreeSet::new();
        let dir = Utf8Path::new("/b");
        let target = |strategy, local_cache| OfflineTarget {
            bundle_dir: dir,
            project_name: "p",
            strategy,
            local_cache,
            npm_images: &none,
            registry: None,
        };
        let cache_from = |exported, strategy, local_cache| {
            offline_build(&service, exported, &target(strategy, local_cache)).cache_from
        };
        assert_eq!(
            cache_from(Exported::Planned, Strategy::Local, true),
            vec!["type=local,src=/b/build-cache,tag=web"]
        );
        assert!(cache_from(Exported::Planned, Strategy::Local, false).is_empty());
        assert!(cache_from(Exported::Absent, Strategy::Local, true).is_empty());
        assert_eq!(
            cache_from(Exported::Absent, Strategy::Inline, true),
            vec!["p-web-cache:latest", "node:20", "python:3.12-slim"]
        );
        let entry = ServiceEntry {
            name: "web".into(),
            build_cache: Some("build-cache".into()),
            ..ServiceEntry::default()
        };
        assert_eq!(
            cache_from(Exported::Entry(&entry), Strategy::Local, true),
            vec!["type=local,src=/b/build-cache"]
        );
        // Without the image on the engine, the npm cache goes in as its folder.
        let build = offline_build(&service, Exported::Planned, &target(Strategy::Local, true));
        assert_eq!(
            build.additional_contexts["npm-cache"],
            "/b/npm-cache/web".to_string()
        );
    }
}
