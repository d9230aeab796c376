//! The plan: what an export of this compose project contains.
//!
//! Built from the compose model and each build service's Dockerfile, through a small
//! filesystem trait so tests run on in-memory projects. `cache-plan` prints it; the
//! export, `patch-compose` and `cache-status` start from it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;

use crate::model::compose::{ComposeModel, Context, DockerfileSource};
use crate::model::dockerfile::{self, NamedContext};
use crate::model::{dockerignore, requirements};

/// What the plan needs from the filesystem.
pub trait Fs {
    fn read(&self, path: &Utf8Path) -> std::io::Result<String>;
    /// File names (not paths) directly in `dir`; an error when `dir` is not a directory.
    fn list(&self, dir: &Utf8Path) -> std::io::Result<Vec<String>>;
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Plan {
    pub compose_file: Utf8PathBuf,
    /// Every compose file of the project, in merge order (`compose_file` first).
    pub compose_files: Vec<Utf8PathBuf>,
    pub project_name: String,
    pub build_services: Vec<BuildService>,
    /// Services built from a remote (git URL) context: they cannot be rebuilt offline.
    pub remote_build_services: Vec<RemoteBuildService>,
    pub image_services: Vec<ImageService>,
    /// Sorted, unique: the build services' base images and the image-only services' images.
    pub base_images: Vec<String>,
    /// Sorted, unique: the `# syntax=` frontend images (also in `base_images`), which
    /// BuildKit fetches before it reads the Dockerfile.
    pub frontend_images: Vec<String>,
    /// Images a service of this project builds and other services start from (`FROM` it,
    /// `COPY --from` it, or run it): built here, not pulled, so they are in no
    /// `base_images` list.
    pub built_here: Vec<BuiltHere>,
    /// The build services in an order that builds each image before the builds that
    /// start from it (then by name).
    pub build_order: Vec<String>,
    /// The build order in rounds: a round's services start only from images of earlier
    /// rounds. One round (the usual case) means `docker compose build` can build them all
    /// at once; with more, each round must be built before the next (compose builds all
    /// services at once and would look for an image of this project before it exists).
    #[serde(skip_serializing_if = "one_round")]
    pub build_rounds: Vec<Vec<String>>,
    pub warnings: Vec<String>,
}

fn one_round(rounds: &[Vec<String>]) -> bool {
    rounds.len() <= 1
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BuiltHere {
    /// The image as the users name it (the first spelling met).
    pub image: String,
    /// The service that builds it.
    pub service: String,
    /// The services that use it: build services that start from it, image services that
    /// run it.
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BuildService {
    pub name: String,
    pub context: Utf8PathBuf,
    /// `None` for `dockerfile_inline`.
    pub dockerfile: Option<Utf8PathBuf>,
    pub target: Option<String>,
    /// The tag compose gives the built image (`image:` beside `build:`), if any.
    pub image: Option<String>,
    pub base_images: Vec<String>,
    /// The stages a build runs, in file order (names, or indexes for unnamed ones).
    pub stages: Vec<String>,
    /// Stages declared in the Dockerfile, used to know which extra contexts it accepts.
    pub stage_names: Vec<String>,
    pub args: BTreeMap<String, String>,
    pub python_requirements: Vec<Utf8PathBuf>,
    pub node_lockfiles: Vec<Utf8PathBuf>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RemoteBuildService {
    pub name: String,
    pub context: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageService {
    pub name: String,
    pub image: String,
}

impl Plan {
    pub fn build(model: &ComposeModel, project_name: &str, fs: &dyn Fs) -> anyhow::Result<Plan> {
        let mut plan = Plan {
            compose_file: model.file.clone(),
            compose_files: model.files.clone(),
            project_name: project_name.to_string(),
            build_services: Vec::new(),
            remote_build_services: Vec::new(),
            image_services: Vec::new(),
            base_images: Vec::new(),
            frontend_images: Vec::new(),
            built_here: Vec::new(),
            build_order: Vec::new(),
            build_rounds: Vec::new(),
            warnings: Vec::new(),
        };
        let mut all_images = BTreeSet::new();
        let mut frontends = BTreeSet::new();
        // BTreeMap: services come sorted by name.
        for (name, service) in &model.services {
            let Some(build) = &service.build else {
                if let Some(image) = &service.image {
                    all_images.insert(image.clone());
                    plan.image_services.push(ImageService {
                        name: name.clone(),
                        image: image.clone(),
                    });
                }
                continue;
            };
            let context = match &build.context {
                Context::Local(dir) => dir.clone(),
                Context::Remote(url) => {
                    plan.warnings.push(format!(
                        "service {name}: its build context {url} is remote; it cannot be \
                         rebuilt offline and is left out of the export"
                    ));
                    plan.remote_build_services.push(RemoteBuildService {
                        name: name.clone(),
                        context: url.clone(),
                    });
                    continue;
                }
            };
            let files = fs.list(&context).map_err(|err| {
                anyhow::anyhow!(
                    "service {name}: build context {context} cannot be read ({err}); \
                     check `build.context` in {}",
                    model.file
                )
            })?;
            let (dockerfile_path, text) =
                read_dockerfile(fs, &build.dockerfile, name, &model.file)?;
            let shown = dockerfile_path
                .as_ref()
                .map_or_else(|| "its dockerfile_inline".to_string(), |p| p.to_string());
            let parsed = dockerfile::parse(&text)
                .with_context(|| format!("service {name}: reading {shown}"))?;
            let contexts = named_contexts(&build.additional_contexts, project_name, name);
            let resolved = parsed
                .resolve_with_contexts(&build.args, build.target.as_deref(), &contexts)
                .with_context(|| format!("service {name}: resolving the stages of {shown}"))?;
            plan.warnings.extend(
                resolved
                    .warnings
                    .iter()
                    .map(|w| format!("service {name}: {shown}: {w}")),
            );
            all_images.extend(resolved.base_images.iter().cloned());
            frontends.extend(parsed.syntax.clone());
            plan.warnings.extend(cache_from_warnings(
                name,
                &build.cache_from,
                &resolved.base_images,
                project_name,
            ));

            let (python_requirements, node_lockfiles) =
                dependency_manifests(fs, &context, &files, dockerfile_path.as_deref(), name)?;
            plan.build_services.push(BuildService {
                name: name.clone(),
                context,
                dockerfile: dockerfile_path,
                target: build.target.clone(),
                image: service.image.clone(),
                base_images: resolved.base_images,
                stages: resolved.stages,
                stage_names: parsed.stage_names(),
                args: build.args.clone(),
                python_requirements,
                node_lockfiles,
            });
        }
        plan.frontend_images = frontends.into_iter().collect();
        plan.base_images = all_images.into_iter().collect();
        plan.mark_built_here(model);
        Ok(plan)
    }

    /// Finds the images one service builds and others use (compose names a built image
    /// `image:`, else `<project>-<service>`), takes them out of the base images, and
    /// orders the builds so each image is built before the builds that start from it.
    /// An `additional_contexts` value `service:NAME` is such a dependency too.
    fn mark_built_here(&mut self, model: &ComposeModel) {
        let key = |image: &str| dockerfile::context_key(image);
        let mut builders: BTreeMap<String, (String, String)> = BTreeMap::new();
        for b in &self.build_services {
            let image = b
                .image
                .clone()
                .unwrap_or_else(|| format!("{}-{}", self.project_name, b.name));
            builders
                .entry(key(&image))
                .or_insert_with(|| (image.clone(), b.name.clone()));
        }
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for b in &mut self.build_services {
            let mut needs = BTreeSet::new();
            b.base_images
                .retain(|image| match builders.get(&key(image)) {
                    // A build that starts from its own tag pulls it (the first time): not ours.
                    Some((_, builder)) if *builder != b.name => {
                        needs.insert(builder.clone());
                        used.entry(key(image)).or_default().insert(b.name.clone());
                        false
                    }
                    _ => true,
                });
            if let Some(build) = model.services.get(&b.name).and_then(|s| s.build.as_ref()) {
                for value in build.additional_contexts.values() {
                    if let Some(other) = value.strip_prefix("service:") {
                        if other != b.name && self_has(&builders, other) {
                            needs.insert(other.to_string());
                        }
                    }
                }
            }
            deps.insert(b.name.clone(), needs);
        }
        for i in &self.image_services {
            if builders.contains_key(&key(&i.image)) {
                used.entry(key(&i.image))
                    .or_default()
                    .insert(i.name.clone());
            }
        }
        self.built_here = used
            .iter()
            .filter_map(|(k, users)| {
                let (image, service) = builders.get(k)?;
                Some(BuiltHere {
                    image: image.clone(),
                    service: service.clone(),
                    used_by: users.iter().cloned().collect(),
                })
            })
            .collect();
        let mut still_needed: BTreeSet<String> = self
            .build_services
            .iter()
            .flat_map(|b| b.base_images.iter().cloned())
            .collect();
        still_needed.extend(
            self.image_services
                .iter()
                .filter(|i| !builders.contains_key(&key(&i.image)))
                .map(|i| i.image.clone()),
        );
        self.base_images
            .retain(|image| still_needed.contains(image));

        // Kahn's algorithm, the ready services by name; each batch of ready ones is a round.
        let mut order = Vec::new();
        let mut rounds: Vec<Vec<String>> = Vec::new();
        let mut left = deps.clone();
        while !left.is_empty() {
            let ready: Vec<String> = left
                .iter()
                .filter(|(_, needs)| needs.iter().all(|n| !left.contains_key(n)))
                .map(|(name, _)| name.clone())
                .collect();
            if ready.is_empty() {
                let cycle: Vec<String> = left.keys().cloned().collect();
                self.warnings.push(format!(
                    "services {} start from each other's images in a cycle; no build order \
                     can build them offline (check their FROM lines and `image:` names)",
                    cycle.join(", ")
                ));
                order.extend(cycle.iter().cloned());
                rounds.push(cycle);
                break;
            }
            for name in &ready {
                left.remove(name);
                order.push(name.clone());
            }
            rounds.push(ready);
        }
        self.build_order = order;
        self.build_rounds = rounds;
    }
}

/// The `docker compose build` commands that rebuild the project with no network, in order:
/// one when no service starts from an image another builds; otherwise one per round of
/// [`Plan::build_rounds`], the last building everything (the earlier rounds' images come
/// from the cache again, instantly). `compose` is the command with the user's own flags,
/// e.g. `docker compose -f prod.yml`.
pub fn offline_build_commands(plan: &Plan, compose: &str) -> Vec<String> {
    let mut commands: Vec<String> = plan
        .build_rounds
        .iter()
        .take(plan.build_rounds.len().saturating_sub(1))
        .map(|round| format!("{compose} build {}", round.join(" ")))
        .collect();
    commands.push(format!("{compose} build"));
    commands
}

fn self_has(builders: &BTreeMap<String, (String, String)>, service: &str) -> bool {
    builders.values().any(|(_, s)| s == service)
}

/// A `cache_from` entry that names an image (plain `name:tag`, or `type=registry`): on the
/// containerd image store BuildKit looks such an image up in its registry, never in the
/// engine, so offline it is not found and that build runs without its cache. Entries
/// patch-compose writes for the image strategies (`<project>-<service>-cache:…` and the
/// build's own base images) are meant for classic-store engines and pass without a word.
fn cache_from_warnings(
    service: &str,
    cache_from: &[String],
    base_images: &[String],
    project: &str,
) -> Vec<String> {
    let own = format!("{project}-{service}-cache:");
    cache_from
        .iter()
        .filter_map(|entry| {
            let image = if entry.contains('=') {
                let fields: Vec<(&str, &str)> = entry
                    .split(',')
                    .filter_map(|f| f.split_once('='))
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .collect();
                let kind = fields.iter().find(|(k, _)| *k == "type").map(|(_, v)| *v);
                if kind != Some("registry") {
                    return None;
                }
                fields.iter().find(|(k, _)| *k == "ref").map(|(_, v)| *v)?
            } else {
                entry.as_str()
            };
            if image.is_empty() || image.starts_with(&own) || base_images.iter().any(|b| b == image)
            {
                return None;
            }
            Some(format!(
                "service {service}: `cache_from: {entry}` names an image; with the containerd \
                 image store BuildKit asks a registry for it (not the engine), so offline it is \
                 not found and the build runs without that cache. Keep it only for engines \
                 with the classic image store, or drop it and let `cargo xtask patch-compose` \
                 add the exported cache"
            ))
        })
        .collect()
}

/// A build's `additional_contexts` as the Dockerfile model reads them. A
/// `docker-image://` context naming one of this tool's own images
/// (`<project>-<service>-…`, made on the target by cache-import) is not a base image to
/// export: it stands for the folder it was made from.
fn named_contexts(
    contexts: &BTreeMap<String, String>,
    project: &str,
    service: &str,
) -> BTreeMap<String, NamedContext> {
    let own = format!("{project}-{service}-");
    contexts
        .iter()
        .map(|(name, value)| {
            let context = match NamedContext::from_value(value) {
                NamedContext::Image(image) if image.starts_with(&own) => NamedContext::Other,
                context => context,
            };
            (name.clone(), context)
        })
        .collect()
}

/// A build's Dockerfile: its path (`None` for `dockerfile_inline`) and its text.
fn read_dockerfile(
    fs: &dyn Fs,
    source: &DockerfileSource,
    name: &str,
    compose_file: &Utf8Path,
) -> anyhow::Result<(Option<Utf8PathBuf>, String)> {
    Ok(match source {
        DockerfileSource::Path(path) => {
            let text = fs.read(path).map_err(|err| {
                anyhow::anyhow!(
                    "service {name}: Dockerfile {path} cannot be read ({err}); \
                     check `build.dockerfile` in {compose_file}"
                )
            })?;
            (Some(path.clone()), text)
        }
        DockerfileSource::Inline(text) => (None, text.clone()),
    })
}

/// The dependency manifests in a build context (`files`: its file names): the pip
/// requirement files (with what they include) and the npm lockfile. A file the
/// .dockerignore leaves out cannot be installed by the build (requirements-dev.txt,
/// typically): it is not the image's dependency.
fn dependency_manifests(
    fs: &dyn Fs,
    context: &Utf8Path,
    files: &[String],
    dockerfile: Option<&Utf8Path>,
    name: &str,
) -> anyhow::Result<(Vec<Utf8PathBuf>, Vec<Utf8PathBuf>)> {
    let read = |p: &Utf8Path| fs.read(p);
    let (ignore, _) = dockerignore::for_build(&read, context, dockerfile);
    let roots: Vec<Utf8PathBuf> = files
        .iter()
        .filter(|f| f.starts_with("requirements") && f.ends_with(".txt"))
        .filter(|f| !ignore.excludes(f))
        .map(|f| context.join(f))
        .collect();
    let python_requirements = if roots.is_empty() {
        Vec::new()
    } else {
        requirements::collect(&roots, &read)
            .with_context(|| format!("service {name}: reading its requirements"))?
            .files
    };
    let node_lockfiles = files
        .iter()
        .filter(|f| *f == "package-lock.json" && !ignore.excludes(f))
        .map(|f| context.join(f))
        .collect();
    Ok((python_requirements, node_lockfiles))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory project: paths relative to `/p`.
    struct MemFs(BTreeMap<Utf8PathBuf, String>);

    impl MemFs {
        fn new(files: &[(&str, &str)]) -> MemFs {
            MemFs(
                files
                    .iter()
                    .map(|(p, t)| (Utf8Path::new("/p").join(p), t.to_string()))
                    .collect(),
            )
        }
    }

    impl Fs for MemFs {
        fn read(&self, path: &Utf8Path) -> std::io::Result<String> {
            self.0
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn list(&self, dir: &Utf8Path) -> std::io::Result<Vec<String>> {
            let names: BTreeSet<String> = self
                .0
                .keys()
                .filter_map(|p| p.strip_prefix(dir).ok())
                .filter_map(|rest| rest.components().next())
                .map(|c| c.as_str().to_string())
                .collect();
            if names.is_empty() {
                return Err(std::io::ErrorKind::NotFound.into());
            }
            Ok(names.into_iter().collect())
        }
    }

    /// The plan of `/p/compose.yml` among `files`.
    fn plan_of(files: &[(&str, &str)]) -> Plan {
        let fs = MemFs::new(files);
        let read = |p: &Utf8Path| fs.read(p);
        let model =
            crate::model::compose::load(Utf8Path::new("/p/compose.yml"), &BTreeMap::new(), &read)
                .unwrap_or_else(|e| panic!("{e:#}"));
        Plan::build(&model, "proj", &fs).unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn syntax_frontends_are_listed_once_without_a_warning() {
        let df = "# syntax=docker/dockerfile:1\nFROM alpine\n";
        let plan = plan_of(&[
            (
                "compose.yml",
                "services:\n  a: {build: ./a}\n  b: {build: ./b}\n  c: {build: ./c}\n",
            ),
            ("a/Dockerfile", df),
            ("b/Dockerfile", df),
            ("c/Dockerfile", "FROM alpine\n"),
        ]);
        assert_eq!(plan.frontend_images, ["docker/dockerfile:1"]);
        assert_eq!(plan.base_images, ["alpine", "docker/dockerfile:1"]);
        assert_eq!(plan.warnings, Vec::<String>::new());
    }

    #[test]
    fn cache_from_images_are_warned_about() {
        let plan = plan_of(&[
            (
                "compose.yml",
                "services:\n  web:\n    build:\n      context: ./web\n      cache_from:\n        \
                 - myorg/web:cache\n        - type=registry,ref=ghcr.io/o/web:buildcache\n        \
                 - type=local,src=/srv/cache\n        - type=gha\n        \
                 - proj-web-cache:latest\n        - python:3.12\n",
            ),
            ("web/Dockerfile", "FROM python:3.12\n"),
        ]);
        assert_eq!(plan.warnings.len(), 2, "{:#?}", plan.warnings);
        assert!(plan.warnings[0].contains("`cache_from: myorg/web:cache` names an image"));
        assert!(plan.warnings[1].contains("ref=ghcr.io/o/web:buildcache"));
        assert!(plan.warnings[1].contains("containerd image store"));
    }

    #[test]
    fn images_built_here_are_not_pulled_and_build_first() {
        let plan = plan_of(&[
            (
                "compose.yml",
                "services:\n  web:\n    image: app-local\n    build: ./app\n  \
                 worker:\n    image: app-local\n  \
                 cleanup:\n    build:\n      context: ./cron\n      args: {BASE_IMAGE: app-local:latest}\n  \
                 tools:\n    build: ./tools\n  \
                 docs:\n    build:\n      context: ./docs\n      \
                 additional_contexts: {cron: 'service:cleanup'}\n",
            ),
            ("app/Dockerfile", "FROM python:3.12\n"),
            ("cron/Dockerfile", "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY --from=proj-tools /t /t\n"),
            ("tools/Dockerfile", "FROM golang:1.22\n"),
            ("docs/Dockerfile", "FROM cron\n"),
        ]);
        assert_eq!(plan.base_images, ["golang:1.22", "python:3.12"]);
        let cleanup = &plan.build_services[0];
        assert_eq!(cleanup.name, "cleanup");
        assert_eq!(cleanup.base_images, Vec::<String>::new());
        assert_eq!(
            plan.built_here,
            [
                BuiltHere {
                    image: "app-local".into(),
                    service: "web".into(),
                    used_by: vec!["cleanup".into(), "worker".into()],
                },
                BuiltHere {
                    image: "proj-tools".into(),
                    service: "tools".into(),
                    used_by: vec!["cleanup".into()],
                },
            ]
        );
        assert_eq!(plan.build_order, ["tools", "web", "cleanup", "docs"]);
        assert_eq!(
            plan.build_rounds,
            [vec!["tools", "web"], vec!["cleanup"], vec!["docs"]]
        );
        assert_eq!(
            offline_build_commands(&plan, "docker compose -f c.yml"),
            [
                "docker compose -f c.yml build tools web",
                "docker compose -f c.yml build cleanup",
                "docker compose -f c.yml build",
            ]
        );
        assert_eq!(plan.warnings, Vec::<String>::new());
    }

    #[test]
    fn a_cycle_of_built_images_is_warned_about() {
        let plan = plan_of(&[
            (
                "compose.yml",
                "services:\n  a: {build: ./a, image: img-a}\n  b: {build: ./b, image: img-b}\n",
            ),
            ("a/Dockerfile", "FROM img-b\n"),
            ("b/Dockerfile", "FROM img-a\n"),
        ]);
        assert_eq!(plan.build_order, ["a", "b"]);
        assert_eq!(plan.build_rounds, [vec!["a", "b"]]);
        assert_eq!(
            offline_build_commands(&plan, "docker compose"),
            ["docker compose build"]
        );
        assert!(plan.warnings[0].contains("services a, b start from each other's images"));
    }

    #[test]
    fn additional_contexts_are_not_base_images() {
        let plan = plan_of(&[
            (
                "compose.yml",
                "services:\n  api:\n    build:\n      context: ./api\n      \
                 additional_contexts:\n        protos: ./proto\n        \
                 tools: docker-image://ghcr.io/acme/tools:2\n        \
                 npm-cache: docker-image://proj-api-npm-cache:0123\n",
            ),
            (
                "api/Dockerfile",
                "FROM scratch AS npm-cache\nFROM protos AS p\nFROM golang:1.22\n\
                 COPY --from=protos /a /a\nCOPY --from=tools /bin/t /t\n\
                 RUN --mount=from=npm-cache,target=/n true\n",
            ),
            ("proto/a.proto", ""),
        ]);
        assert_eq!(
            plan.build_services[0].base_images,
            ["golang:1.22", "ghcr.io/acme/tools:2"]
        );
        assert_eq!(plan.base_images, ["ghcr.io/acme/tools:2", "golang:1.22"]);
    }

    #[test]
    fn dockerignore_decides_which_manifests_reach_the_build() {
        let check = |ignore: &str, path: &str, expected: bool| {
            assert_eq!(
                dockerignore::Patterns::parse(ignore).excludes(path),
                expected,
                "{ignore:?} {path}"
            )
        };
        check("requirements-dev.txt\n", "requirements-dev.txt", true);
        check("requirements-dev.txt\n", "requirements.txt", false);
        check("requirements-*.txt\n", "requirements-test.txt", true);
        check("*.txt\n!requirements.txt\n", "requirements.txt", false);
        check("*.txt\n!requirements.txt\n", "requirements-dev.txt", true);
        check(
            "# comment\n./requirements-dev.txt\n",
            "requirements-dev.txt",
            true,
        );
        check("**/*.txt\n", "requirements.txt", true);
        check("node_modules\n", "package-lock.json", false);
        check("", "package-lock.json", false);
    }
}
