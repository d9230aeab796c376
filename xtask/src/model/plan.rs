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
use crate::model::{dockerfile, dockerignore, requirements};

/// What the plan needs from the filesystem.
pub trait Fs {
    fn read(&self, path: &Utf8Path) -> std::io::Result<String>;
    /// File names (not paths) directly in `dir`; an error when `dir` is not a directory.
    fn list(&self, dir: &Utf8Path) -> std::io::Result<Vec<String>>;
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Plan {
    pub compose_file: Utf8PathBuf,
    pub project_name: String,
    pub build_services: Vec<BuildService>,
    /// Services built from a remote (git URL) context: they cannot be rebuilt offline.
    pub remote_build_services: Vec<RemoteBuildService>,
    pub image_services: Vec<ImageService>,
    /// Sorted, unique: the build services' base images and the image-only services' images.
    pub base_images: Vec<String>,
    pub warnings: Vec<String>,
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
            project_name: project_name.to_string(),
            build_services: Vec::new(),
            remote_build_services: Vec::new(),
            image_services: Vec::new(),
            base_images: Vec::new(),
            warnings: Vec::new(),
        };
        let mut all_images = BTreeSet::new();
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
            let (dockerfile_path, text) = match &build.dockerfile {
                DockerfileSource::Path(path) => {
                    let text = fs.read(path).map_err(|err| {
                        anyhow::anyhow!(
                            "service {name}: Dockerfile {path} cannot be read ({err}); \
                             check `build.dockerfile` in {}",
                            model.file
                        )
                    })?;
                    (Some(path.clone()), text)
                }
                DockerfileSource::Inline(text) => (None, text.clone()),
            };
            let shown = dockerfile_path
                .as_ref()
                .map_or_else(|| "its dockerfile_inline".to_string(), |p| p.to_string());
            let parsed = dockerfile::parse(&text)
                .with_context(|| format!("service {name}: reading {shown}"))?;
            let resolved = parsed
                .resolve(&build.args, build.target.as_deref())
                .with_context(|| format!("service {name}: resolving the stages of {shown}"))?;
            plan.warnings.extend(
                resolved
                    .warnings
                    .iter()
                    .map(|w| format!("service {name}: {shown}: {w}")),
            );
            all_images.extend(resolved.base_images.iter().cloned());

            // A requirements file the .dockerignore leaves out cannot be installed by the
            // build (requirements-dev.txt, typically): it is not the image's dependency.
            let read = |p: &Utf8Path| fs.read(p);
            let (ignore, _) = dockerignore::for_build(&read, &context, dockerfile_path.as_deref());
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
        plan.base_images = all_images.into_iter().collect();
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
