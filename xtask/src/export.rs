//! The export's steps: what `cache-export` does once its flags are read.
//!
//! Order of work: make sure every base image is present, fill the dependency caches,
//! build every service with exactly the settings `patch-compose` writes on the target
//! (`model::layout`, so the target's build hits the cache), save all images, then move the
//! staged files into the bundle folder and write `SHA256SUMS` and `manifest.yaml` last.
//! Until that last rename the folder holds no manifest, so an interrupted export never
//! leaves a bundle that verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::Shell;

use crate::bundle::{self, human_bytes};
use crate::bundle_text;
use crate::content_store;
use crate::deps::{npm_cache, npm_image, wheelhouse};
use crate::docker::{Docker, EngineInfo, StageBuild};
use crate::images;
use crate::model::layout::{
    self, cache_image_name, npm_cache_dir, npm_host_cache_dir, service_contexts, wheelhouse_dir,
    BUILD_CACHE_DIR, NPM_CONTEXT, WHEELS_CONTEXT,
};
use crate::model::manifest::{
    Compression, EngineSummary, FileEntry, ImageEntry, ImageLayout, ImageRole, Manifest,
    ServiceEntry, Strategy, ToolEntry, FORMAT_VERSION, HUMAN_MANIFEST_FILE, IMPORT_SCRIPT,
    LAYOUT_FORMAT_VERSION, MANIFEST_FILE, SUMS_FILE,
};
use crate::model::plan::{BuildService, Plan};
use crate::project::Project;
use crate::recompress;
use crate::steps::Steps;

/// A step that did not run, or stopped at a boundary, because another step failed (that
/// one's error is the export's).
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped: another step of the export failed")
    }
}

impl std::error::Error for Stopped {}

/// The first error that is not a mere [`Stopped`] (the cause), else the first.
fn first_failure(errors: impl IntoIterator<Item = anyhow::Error>) -> anyhow::Error {
    let mut first: Option<anyhow::Error> = None;
    for err in errors {
        if first.as_ref().is_none_or(|f| f.is::<Stopped>()) {
            first = Some(err);
        }
    }
    first.unwrap_or_else(|| anyhow::Error::new(Stopped))
}

/// A part of the bundle (`cache-export --only`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    BaseImages,
    BuildCache,
    PipCache,
    NpmCache,
    /// The tool itself: bin/xtask (a static build) and tool/xtask-vendor.tar.gz (its crates).
    Tool,
}

/// Whether missing base images are pulled.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum PullPolicy {
    Missing,
    Never,
}

/// What the steps read of the command's flags.
pub struct Options {
    /// Only these parts (empty: all).
    pub only: Vec<Part>,
    pub pull: PullPolicy,
    pub python_version: Option<String>,
    pub platforms: Vec<String>,
    pub all_npm_platforms: bool,
    pub with_node_modules: bool,
    /// Images through `docker save` even where the content store could serve them.
    pub docker_save: bool,
    pub tool: crate::tool::ToolChoice,
}

impl Options {
    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// One export under way: what every step reads. The bundle folder `out` is locked;
/// everything is written to `staging` first, then published.
pub struct Export<'a> {
    pub args: &'a Options,
    pub engine: EngineInfo,
    pub project: Project,
    pub plan: Plan,
    pub strategy: Strategy,
    pub compression: Compression,
    pub out: Utf8PathBuf,
    pub staging: Utf8PathBuf,
    /// The bundle's previous manifest, whose files are reused where nothing changed.
    pub previous: Option<Manifest>,
    /// `--since`: the bundle this export is a delta of.
    pub since: Option<crate::delta::Since>,
}

impl Export<'_> {
    /// The folder of the bundle whose files are reused: `--since`'s, else the output's.
    fn previous_dir(&self) -> &Utf8Path {
        match self.since.as_ref().and_then(|s| s.dir.as_deref()) {
            Some(dir) => dir,
            None => &self.out,
        }
    }

    /// The steps, in order; returns the manifest written.
    pub fn write(&mut self, sh: &Shell) -> anyhow::Result<(Manifest, String)> {
        let docker = Docker::new(sh);
        let args = self.args;
        // Builds need every base image. Dependency caches alone do not: the Python is then
        // asked of the images that are here, and read from the name of the others.
        let base_images = if args.wants(Part::BaseImages) || args.wants(Part::BuildCache) {
            ensure_base_images(&docker, &self.plan, args.pull)?
        } else {
            present_images(&docker, &self.plan)?
        };
        let mut images = if args.wants(Part::BaseImages) || self.strategy != Strategy::Local {
            base_images.clone()
        } else {
            Vec::new()
        };
        // The previous bundle's dependency caches are reused where their inputs did not
        // change: refilling the npm cache rewrites its index (timestamps), which would
        // change the build context and miss the layer cache of every step after it.
        // With --since, the previous bundle is that one (its folder, when it is one).
        self.previous = match &self.since {
            Some(since) if since.dir.is_some() => Some(since.manifest.clone()),
            _ => bundle::read_manifest(&self.out).ok(),
        };
        // The dependency caches of every service, the builds and the tool at once where
        // one does not need the other (one live line each on a terminal, steps.rs).
        let steps = Steps::new();
        let (services, cache_images, tool) = self.concurrent_steps(sh, &steps, &base_images)?;
        for name in &cache_images {
            let id = docker
                .image_id(name)?
                .with_context(|| format!("the cache image {name} vanished after its build"))?;
            images.push(ImageEntry {
                name: name.clone(),
                id,
                role: ImageRole::BuildCache,
            });
        }
        let saving = steps.live("Saving", &format!("{} images", images.len()));
        let (files, image_layout) = self.save_images(sh, &images)?;
        saving.finish(None);
        drop(steps);
        let manifest = Manifest {
            format_version: if image_layout.is_some() {
                LAYOUT_FORMAT_VERSION
            } else {
                FORMAT_VERSION
            },
            image_layout,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            created: bundle_text::now_rfc3339(),
            project_name: self.project.name.clone(),
            engine: EngineSummary {
                server_version: self.engine.server_version.clone(),
                arch: self.engine.arch.clone(),
                containerd_store: self.engine.containerd_store,
            },
            strategy: self.strategy,
            compression: self.compression,
            images,
            services,
            files: Vec::new(),
            tool,
            base: None,
        };
        self.finish(manifest, files)
    }

    /// The service's wheelhouse and npm cache (reused from the previous bundle where their
    /// inputs did not change), as its manifest entry.
    fn dependency_caches(
        &self,
        sh: &Shell,
        service: &BuildService,
        base_images: &[ImageEntry],
    ) -> anyhow::Result<(ServiceEntry, NpmChecks)> {
        let mut entry = ServiceEntry {
            name: service.name.clone(),
            inputs: fingerprints(&self.project, service)?,
            // What cache-status compares the code with (the bundle, if it lies inside
            // the context, is not part of it).
            context_files: Some(crate::context::fingerprint(
                &service.context,
                service.dockerfile.as_deref(),
                &[&self.out],
            )?),
            ..ServiceEntry::default()
        };
        // The wheelhouse and the npm cache depend on the base images (their Python,
        // their libc): reused only if every one has the same ID as then.
        let same_images = self.previous.as_ref().is_some_and(|p| {
            service.base_images.iter().all(|name| {
                let now = base_images.iter().find(|i| &i.name == name).map(|i| &i.id);
                let then = p.images.iter().find(|i| &i.name == name).map(|i| &i.id);
                now.is_some() && now == then
            })
        });
        if self.args.wants(Part::PipCache) && !service.python_requirements.is_empty() {
            self.wheelhouse(sh, service, same_images, &mut entry)?;
        }
        let mut checks = NpmChecks::default();
        if self.args.wants(Part::NpmCache) {
            if let Some(lockfile) = service.node_lockfiles.first() {
                checks = self.npm_cache(sh, service, lockfile, same_images, &mut entry)?;
            }
        }
        // Only the caches exported now are handed to the build, so the target's build
        // (patched from this manifest) gets exactly the same contexts.
        entry.contexts = service_contexts(service)
            .into_iter()
            .filter(|(_, rel)| {
                Some(rel) == entry.wheelhouse.as_ref() || Some(rel) == entry.npm_cache.as_ref()
            })
            .collect();
        Ok((entry, checks))
    }

    /// The previous bundle's folder `field` of the service, if its `inputs` have the same
    /// fingerprints now as then.
    fn reusable(
        &self,
        service: &BuildService,
        entry: &ServiceEntry,
        field: fn(&ServiceEntry) -> Option<&String>,
        inputs: &[Utf8PathBuf],
    ) -> Option<String> {
        let old = self
            .previous
            .as_ref()?
            .services
            .iter()
            .find(|s| s.name == service.name)?;
        let same_inputs = inputs.iter().all(|file| {
            let rel = rel_to(&self.project.dir, file);
            old.inputs.contains_key(&rel) && old.inputs.get(&rel) == entry.inputs.get(&rel)
        });
        same_inputs.then(|| field(old).cloned()).flatten()
    }

    fn wheelhouse(
        &self,
        sh: &Shell,
        service: &BuildService,
        same_images: bool,
        entry: &mut ServiceEntry,
    ) -> anyhow::Result<()> {
        let (out, staging, args) = (self.previous_dir(), &self.staging, self.args);
        let rel = wheelhouse_dir(&service.name);
        let overridden = args.python_version.is_some() || !args.platforms.is_empty();
        let old = self
            .reusable(
                service,
                entry,
                |e| e.wheelhouse.as_ref(),
                &service.python_requirements,
            )
            .filter(|_| same_images && !overridden);
        match old {
            Some(old) if reuse(out, &old, self.previous.as_ref(), &staging.join(&rel))? => {
                crate::say!("     Reusing {rel} (requirements and base image unchanged)");
            }
            _ => args.export_wheelhouse(
                sh,
                &Docker::new(sh),
                &self.engine,
                service,
                &staging.join(&rel),
            )?,
        }
        entry.wheelhouse = Some(rel);
        Ok(())
    }

    fn npm_cache(
        &self,
        sh: &Shell,
        service: &BuildService,
        lockfile: &Utf8Path,
        same_images: bool,
        entry: &mut ServiceEntry,
    ) -> anyhow::Result<NpmChecks> {
        let (out, staging, previous) = (self.previous_dir(), &self.staging, self.previous.as_ref());
        let all_platforms = self.args.all_npm_platforms;
        let rel = npm_cache_dir(&service.name);
        let host_rel = npm_host_cache_dir(&service.name);
        let old_entry = previous.and_then(|p| p.services.iter().find(|s| s.name == service.name));
        let same_arch = previous.is_some_and(|p| p.engine.arch == self.engine.arch);
        let old = self
            .reusable(
                service,
                entry,
                |e| e.npm_cache.as_ref(),
                &service.node_lockfiles,
            )
            .filter(|_| same_images && same_arch && !all_platforms);
        let mut reused = None;
        if let (Some(old), Some(old_entry)) = (old, old_entry) {
            let host_dest = staging.join(&host_rel);
            if reuse(out, &old, previous, &staging.join(&rel))? {
                let host_ok = match &old_entry.npm_host_cache {
                    None => true,
                    Some(h) => reuse(out, h, previous, &host_dest)?,
                };
                if host_ok {
                    crate::say!("     Reusing {rel} (lockfile and base images unchanged)");
                    reused = Some((
                        old_entry.npm_libc.clone(),
                        old_entry.npm_host_cache.is_some(),
                    ));
                } else {
                    remove_path(&staging.join(&rel))?;
                }
            }
        }
        let (libc, with_host, checks) = match reused {
            Some((libc, with_host)) => (libc, with_host, NpmChecks::default()),
            None => export_npm_cache(
                sh,
                &Docker::new(sh),
                &self.engine,
                service,
                lockfile,
                &staging.join(&rel),
                &staging.join(&host_rel),
                all_platforms,
            )?,
        };
        // Fixed times, modes and no scratch files: the same tarballs give the same build
        // context, so a re-export hits the layer cache (npm_cache.rs).
        npm_cache::normalize(&staging.join(&rel)).with_context(|| format!("normalizing {rel}"))?;
        if with_host {
            npm_cache::normalize(&staging.join(&host_rel))
                .with_context(|| format!("normalizing {host_rel}"))?;
        }
        entry.npm_cache = Some(rel);
        entry.npm_libc = libc;
        entry.npm_host_cache = with_host.then_some(host_rel);
        Ok(checks)
    }

    /// The steps that need not wait for one another, run at once: the tool (bin/xtask and
    /// its crates), each service's dependency caches (wheelhouse, npm cache and its offline
    /// check), and the builds, one at a time in the plan's rounds, each as soon as its own
    /// dependency caches are there (a build reads them) and every service of an earlier
    /// round is built (it may start FROM their images); then the build cache's layers are
    /// recompressed. Returns the services' entries (in the plan's order), the cache images
    /// made, and the tool's entry. When a step fails the others stop at their next step
    /// boundary, and the first failure is the error (the staging folder is never published).
    #[allow(clippy::type_complexity)]
    fn concurrent_steps(
        &self,
        sh: &Shell,
        steps: &Steps,
        base_images: &[ImageEntry],
    ) -> anyhow::Result<(Vec<ServiceEntry>, Vec<String>, Option<ToolEntry>)> {
        std::thread::scope(|s| {
            let tool = self.args.wants(Part::Tool).then(|| {
                let sh = sh.clone();
                s.spawn(move || {
                    if steps.stopped() {
                        return Err(anyhow::Error::new(Stopped));
                    }
                    let step = steps.live("Tool", "bin/xtask and tool/ (static build, crates)");
                    let result = crate::tool::export(
                        &sh,
                        &self.args.tool,
                        &self.out,
                        &self.staging,
                        self.previous.as_ref(),
                    )
                    .context("step `tool` (bin/xtask and tool/xtask-vendor.tar.gz)");
                    if result.is_err() {
                        steps.stop();
                    }
                    let secs = step.secs();
                    step.finish(Some(format!("        Took {secs:.1}s: the tool")));
                    result
                })
            });
            let (tx, rx) = mpsc::channel();
            let mut checks = Vec::new();
            for (i, service) in self.plan.build_services.iter().enumerate() {
                let (sh, tx) = (sh.clone(), tx.clone());
                checks.push(
                    s.spawn(move || self.service_step(&sh, steps, i, service, base_images, tx)),
                );
            }
            drop(tx);
            let builds = self.build_caches(sh, steps, &rx);
            if builds.is_err() {
                steps.stop();
            }
            // The npm cache checks that ran beside the builds: a failure of one fails the
            // export even when every build passed.
            let mut checked: anyhow::Result<()> = Ok(());
            for handle in checks {
                let result = handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("step `dependency caches` panicked")));
                if let Err(err) = result {
                    if checked
                        .as_ref()
                        .map_or_else(|e| e.is::<Stopped>(), |_| true)
                    {
                        checked = Err(err);
                    }
                }
            }
            let tool = match tool {
                Some(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("step `tool` panicked"))),
                None => Ok(None),
            };
            // The first real failure: a step that only stopped because another failed is
            // not the cause.
            match (builds, checked, tool) {
                (Ok((services, images)), Ok(()), Ok(tool)) => Ok((services, images, tool)),
                (builds, checked, tool) => Err(first_failure(
                    [builds.err(), checked.err(), tool.err()]
                        .into_iter()
                        .flatten(),
                )),
            }
        })
    }

    /// One service's dependency caches, handed to the builds on `tx` as soon as they are
    /// there, then the npm cache's offline checks (which read copies, beside the build).
    fn service_step(
        &self,
        sh: &Shell,
        steps: &Steps,
        i: usize,
        service: &BuildService,
        base_images: &[ImageEntry],
        tx: mpsc::Sender<(usize, anyhow::Result<ServiceEntry>)>,
    ) -> anyhow::Result<()> {
        if steps.stopped() {
            let _ = tx.send((i, Err(anyhow::Error::new(Stopped))));
            return Err(anyhow::Error::new(Stopped));
        }
        let step = steps.live(
            "Fetching",
            &format!("the dependency caches of {}", service.name),
        );
        let result = self
            .dependency_caches(sh, service, base_images)
            .with_context(|| format!("step `dependency caches` of service {}", service.name));
        let secs = step.secs();
        step.finish(Some(format!(
            "        Took {secs:.1}s: the dependency caches of {}",
            service.name
        )));
        let (entry, npm_checks) = match result {
            Ok(done) => done,
            Err(err) => {
                steps.stop();
                // The receiver is gone only when the builds failed.
                let _ = tx.send((i, Err(err)));
                return Err(anyhow::Error::new(Stopped));
            }
        };
        // The build may start: the checks read copies of the folders.
        let _ = tx.send((i, Ok(entry)));
        drop(tx);
        if npm_checks.runs.is_empty() || steps.stopped() {
            return Ok(());
        }
        let step = steps.live(
            "Checking",
            &format!("the npm cache of {} (npm ci --offline)", service.name),
        );
        let result = npm_checks
            .run(sh)
            .with_context(|| format!("step `npm cache check` of service {}", service.name));
        if result.is_err() {
            steps.stop();
        }
        let secs = step.secs();
        step.finish(Some(format!(
            "        Took {secs:.1}s: the offline check of the npm cache of {}",
            service.name
        )));
        result
    }

    /// Builds every service into the build cache (or its cache images) as its dependency
    /// caches arrive on `ready`; returns every service's entry and the cache images made.
    #[allow(clippy::type_complexity)]
    fn build_caches(
        &self,
        sh: &Shell,
        steps: &Steps,
        ready: &mpsc::Receiver<(usize, anyhow::Result<ServiceEntry>)>,
    ) -> anyhow::Result<(Vec<ServiceEntry>, Vec<String>)> {
        let services = &self.plan.build_services;
        let mut entries: Vec<Option<ServiceEntry>> = services.iter().map(|_| None).collect();
        let mut built = vec![false; services.len()];
        let mut cache_images = Vec::new();
        let building = self.args.wants(Part::BuildCache);
        let docker = &Docker::new(sh);
        let (project, staging) = (&self.project, &self.staging);
        // Images that other services start FROM are built first (the plan's rounds): a
        // build never looks for an image of the project's own that is not there yet.
        let rounds = &self.plan.build_rounds;
        let round = |name: &str| {
            rounds
                .iter()
                .position(|r| r.iter().any(|s| s == name))
                .unwrap_or(rounds.len())
        };
        let rank = |name: &str| self.plan.build_order.iter().position(|s| s == name);
        let mut received = 0;
        while built.iter().any(|b| !b) {
            let next = (0..services.len())
                .filter(|&i| !built[i] && entries[i].is_some())
                .filter(|&i| {
                    let r = round(&services[i].name);
                    (0..services.len()).all(|j| built[j] || round(&services[j].name) >= r)
                })
                .min_by_key(|&i| rank(&services[i].name));
            let Some(i) = next else {
                if received == services.len() {
                    bail!("no service can be built: the build rounds name services the plan lacks");
                }
                let (i, result) = ready
                    .recv()
                    .context("a dependency-cache step ended without a result")?;
                received += 1;
                match result {
                    Ok(entry) => entries[i] = Some(entry),
                    Err(err) => {
                        // The others stop at their next boundary; wait for them, and
                        // report a failure that is not just a stop.
                        steps.stop();
                        let mut first = err;
                        for (_, other) in ready.iter() {
                            if let (Err(other), true) = (other, first.is::<Stopped>()) {
                                first = other;
                            }
                        }
                        return Err(first);
                    }
                }
                continue;
            };
            if steps.stopped() {
                return Err(anyhow::Error::new(Stopped));
            }
            let (service, entry) = (&services[i], entries[i].as_mut().expect("received"));
            if building {
                let step = steps.live("Building", &service.name);
                match self.strategy {
                    Strategy::Local => {
                        build_local(docker, &self.engine, project, service, entry, staging)?
                    }
                    Strategy::Inline | Strategy::Legacy => {
                        build_cache_images(
                            docker,
                            project,
                            service,
                            self.strategy,
                            entry,
                            staging,
                        )?;
                        cache_images.extend(entry.cache_images.iter().cloned());
                    }
                }
                step.finish(None);
            }
            built[i] = true;
        }
        if building && self.strategy == Strategy::Local {
            let step = steps.live("Compressing", "the build cache's layers");
            recompress_build_cache(
                docker,
                &self.plan,
                self.previous_dir(),
                self.previous.as_ref(),
                staging,
            )?;
            step.finish(None);
        }
        let entries = entries
            .into_iter()
            .map(|e| e.expect("every service built"))
            .collect();
        Ok((entries, cache_images))
    }

    /// The images as `docker save`'s files: straight from the engine's containerd content
    /// store where it can be read (a local engine on the containerd image store), else
    /// through `docker save`; says which.
    fn save_layout(
        &self,
        sh: &Shell,
        images: &[ImageEntry],
        names: &[String],
    ) -> anyhow::Result<(ImageLayout, Vec<FileEntry>)> {
        let why = match content_store::content_store(&self.engine) {
            _ if self.args.docker_save => "--docker-save".to_string(),
            Ok(store) => {
                match content_store::save_layout(&store, &self.engine.arch, images, &self.staging)?
                {
                    Ok(done) => return Ok(done),
                    Err(why) => why,
                }
            }
            Err(why) => why,
        };
        crate::say!("        Note {why}: saving the images with `docker save`");
        images::save_layout(&Docker::new(sh), names, &self.staging)
    }

    /// Saves the images (or reuses the previous bundle's, if they are the same): the
    /// files written and, without compression, the layout they form.
    fn save_images(
        &self,
        sh: &Shell,
        images: &[ImageEntry],
    ) -> anyhow::Result<(Vec<FileEntry>, Option<ImageLayout>)> {
        let (out, staging, compression) = (self.previous_dir(), &self.staging, self.compression);
        let mut files = Vec::new();
        let mut image_layout = None;
        if !images.is_empty() && compression == Compression::None {
            // Kept as the archive's files, blobs in the build cache's blob store: a layer
            // the build cache holds too (the base images' layers) is stored once.
            let names: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
            let old = self
                .previous
                .as_ref()
                .filter(|p| p.images == images && p.compression == compression)
                .and_then(|p| Some((p, p.image_layout.as_ref()?)));
            let reused = match old {
                Some((p, layout)) => images::reuse_layout(out, p, layout, staging)?,
                None => None,
            };
            let (layout, entries) = match reused {
                Some(done) => {
                    crate::say!("     Reusing the saved images (same names, same IDs)");
                    done
                }
                None => self.save_layout(sh, images, &names)?,
            };
            files.extend(entries);
            image_layout = Some(layout);
        } else if !images.is_empty() {
            let names: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
            let archive = layout::images_archive(compression);
            // Image IDs are content digests: the same names with the same IDs are the same
            // images, so the previous archive (checked against its checksum) is reused
            // instead of streaming every layer out of the engine again.
            let old = self
                .previous
                .as_ref()
                .filter(|p| p.images == images && p.compression == compression)
                .and_then(|p| p.files.iter().find(|f| f.path == archive));
            match old {
                Some(old) if reuse_file(out, old, staging)? => {
                    crate::say!("     Reusing {archive} (same images, same IDs)");
                    files.push(old.clone());
                }
                _ => files.push(images::save_images(
                    &Docker::new(sh),
                    &names,
                    compression,
                    &staging.join(&archive),
                    &archive,
                )?),
            }
        }
        Ok((files, image_layout))
    }

    /// Writes the small files, hashes what was not hashed while streaming, and publishes
    /// the staged bundle with its manifest.
    fn finish(
        &self,
        mut manifest: Manifest,
        mut files: Vec<FileEntry>,
    ) -> anyhow::Result<(Manifest, String)> {
        let staging = &self.staging;
        // node_modules.tar.gz (node_modules.rs); hashed below with the other files.
        if self.args.with_node_modules {
            crate::deps::node_modules::export(
                &self.plan.build_services,
                &self.engine.arch,
                staging,
            )?;
        }
        std::fs::write(
            staging.join(IMPORT_SCRIPT),
            bundle_text::import_script(&manifest),
        )?;
        set_executable(&staging.join(IMPORT_SCRIPT))?;
        // Hash what was not hashed while streaming (build-cache folders, small files);
        // the human manifest comes last so that it can list the others.
        hash_pending(staging, &mut files)?;
        manifest.files = files.clone();
        std::fs::write(
            staging.join(HUMAN_MANIFEST_FILE),
            bundle_text::human_manifest(&manifest),
        )?;
        hash_pending(staging, &mut files)?;
        manifest.files = files;
        if let Some(since) = &self.since {
            manifest = self.thin(manifest, since)?;
        }
        let digest = publish(&self.out, staging, &manifest)?;
        Ok((manifest, digest))
    }

    /// The full bundle staged as a delta of `since`: the files it holds already are taken
    /// out of the staging folder (links, or the copies this export made), and the manifest
    /// names it and the full bundle's digest.
    fn thin(&self, full: Manifest, since: &crate::delta::Since) -> anyhow::Result<Manifest> {
        let complete = format!("sha256:{}", bundle::digest_of(&full));
        let delta = full.delta_of(&since.manifest, &since.digest, &complete);
        for file in delta.expected_from_base() {
            remove_path(&self.staging.join(&file.path))?;
        }
        crate::say!(
            "       Delta of {}: carries {} of {} files ({} of {}); the full bundle is {complete}",
            since.digest,
            delta.carried().count(),
            delta.files.len(),
            human_bytes(delta.carried_size()),
            human_bytes(delta.total_size())
        );
        Ok(delta)
    }
}

/// Adds an entry for every staged file that has none yet, hashing on all cores.
fn hash_pending(staging: &Utf8Path, files: &mut Vec<FileEntry>) -> anyhow::Result<()> {
    let pending: Vec<String> = bundle::list_files(staging)?
        .into_iter()
        .filter(|f| !files.iter().any(|e| &e.path == f))
        .collect();
    let hashed = bundle::hash_files(staging, &pending, &|_, _| {});
    for (path, result) in pending.into_iter().zip(hashed) {
        let (size, sha256) = result.with_context(|| format!("hashing {staging}/{path}"))?;
        files.push(FileEntry {
            path,
            size,
            sha256,
            from_base: false,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(())
}

impl Options {
    /// The wheelhouse for the Python of the first base image that has one.
    fn export_wheelhouse(
        &self,
        sh: &Shell,
        docker: &Docker,
        engine: &EngineInfo,
        service: &BuildService,
        out: &Utf8Path,
    ) -> anyhow::Result<()> {
        let mut found = None;
        for image in &service.base_images {
            if docker.image_id(image)?.is_none() {
                continue;
            }
            match wheelhouse::probe_image(docker, image) {
                Ok(target) => {
                    found = Some((target, image.clone()));
                    break;
                }
                Err(err) => crate::say!("        Note {image} has no Python to ask ({err:#})"),
            }
        }
        if found.is_none() {
            found = service.base_images.iter().find_map(|image| {
                wheelhouse::target_from_image_name(image, &engine.arch).map(|t| (t, image.clone()))
            });
        }
        let (target, image) = match (found, &self.python_version) {
            (Some((t, image)), _) => (
                t.with_overrides(self.python_version.as_deref(), &self.platforms)?,
                image,
            ),
            (None, Some(version)) => (
                wheelhouse::PythonTarget::from_overrides(version, &self.platforms)?,
                String::new(),
            ),
            (None, None) => bail!(
                "service {}: none of its base images ({}) tells which Python runs pip; \
                 give it with --python-version X.Y --platform TAG",
                service.name,
                service.base_images.join(", ")
            ),
        };
        crate::say!("  Wheelhouse {} for {}", service.name, target.describe());
        let sdists = if image.is_empty() {
            wheelhouse::Sdists::Refuse
        } else {
            wheelhouse::Sdists::BuildInImage {
                docker,
                image: &image,
            }
        };
        let report = wheelhouse::export(sh, &service.python_requirements, &target, out, &sdists)
            .with_context(|| format!("service {}: exporting its wheelhouse", service.name))?;
        if let Some(err) = &report.verify_error {
            bail!(
                "service {}: the wheelhouse does not satisfy its requirements: {err}",
                service.name
            );
        }
        Ok(())
    }
}

/// The `npm ci --offline` runs that prove an exported npm cache, made after the fill and
/// run apart from it ([`NpmChecks::run`]): each on its own scratch copy of the finished
/// (normalized) folders, so that the build can read the folders meanwhile and the checks
/// prove the very bytes the bundle carries; the runs of different platforms at once.
#[derive(Debug, Default)]
struct NpmChecks {
    lockfile: Utf8PathBuf,
    /// The folders merged into one cache, and the platforms to install for with it.
    runs: Vec<(Vec<Utf8PathBuf>, Vec<npm_cache::NodePlatform>)>,
}

impl NpmChecks {
    /// Every run, at once; the first failure is the error.
    fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let project_dir = self.lockfile.parent().unwrap_or(&self.lockfile);
        let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .runs
                .iter()
                .map(|(dirs, platforms)| {
                    let sh = sh.clone();
                    s.spawn(move || {
                        let tmp = sh.create_temp_dir()?;
                        let copy = Utf8Path::from_path(tmp.path())
                            .context("temporary directory is not UTF-8")?
                            .join("npm-cache");
                        for dir in dirs {
                            npm_cache::merge_into(dir, &copy)
                                .with_context(|| format!("copying {dir} to check it"))?;
                        }
                        npm_cache::verify(&sh, project_dir, &copy, platforms).with_context(|| {
                            format!(
                                "checking the npm cache of {} offline ({})",
                                self.lockfile,
                                dirs.iter()
                                    .map(|d| d.as_str())
                                    .collect::<Vec<_>>()
                                    .join(" + ")
                            )
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("an npm cache check panicked")))
                })
                .collect()
        });
        results.into_iter().collect()
    }
}

/// Fills `out` with the tarballs the image's `npm ci` needs, for its libc only when a base
/// image answers `node` (a smaller build context: BuildKit reads it whole to key the
/// `npm ci` step), else every libc of the engine's os and cpu; and `host_out` with the
/// host's packages it lacks (for ~/.npm at import). Returns the image's libc, whether
/// `host_out` was written, and the checks still to run: `npm ci --offline` for the image's
/// platform and, on both folders together, for the host (for every platform when no base
/// image tells the libc).
#[allow(clippy::too_many_arguments)]
fn export_npm_cache(
    sh: &Shell,
    docker: &Docker,
    engine: &EngineInfo,
    service: &BuildService,
    lockfile: &Utf8Path,
    out: &Utf8Path,
    host_out: &Utf8Path,
    all_platforms: bool,
) -> anyhow::Result<(Option<String>, bool, NpmChecks)> {
    crate::say!("   npm cache for {lockfile}");
    let platform = |libc: &str| npm_cache::NodePlatform::from_docker("linux", &engine.arch, libc);
    let host = npm_cache::NodePlatform::host();
    let mut checks = NpmChecks {
        lockfile: lockfile.to_path_buf(),
        runs: Vec::new(),
    };
    // Filled, then its packuments cut to the lockfile's versions (checked by the
    // `npm ci --offline` runs that follow).
    let fill = |dir: &Utf8Path, selection: &npm_cache::Selection| {
        let report = npm_cache::fill(sh, lockfile, dir, selection)
            .with_context(|| format!("filling the npm cache from {lockfile}"))?;
        npm_cache::trim_for_lockfile(dir, lockfile)
            .with_context(|| format!("cutting the packuments in {dir}"))?;
        anyhow::Ok(report)
    };
    let libc = if all_platforms {
        None
    } else {
        npm_cache::probe_libc(docker, &service.base_images)
    };
    let Some(libc) = libc else {
        if !all_platforms {
            crate::say!(
                "        No base image of {} runs `node`: keeping the packages of every libc",
                service.name
            );
        }
        let selection = if all_platforms {
            npm_cache::Selection::Every
        } else {
            npm_cache::Selection::OsCpu(vec![platform("")])
        };
        fill(out, &selection)?;
        let mut platforms: Vec<npm_cache::NodePlatform> = Vec::new();
        for p in [host, platform("glibc"), platform("musl")] {
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
        for p in platforms {
            checks.runs.push((vec![out.to_path_buf()], vec![p]));
        }
        return Ok((None, false, checks));
    };
    let image = platform(&libc);
    crate::say!(
        "        The image's npm installs for {image} (asked of its node): its packages go to \
         the build context"
    );
    fill(
        out,
        &npm_cache::Selection::Platforms {
            on: vec![image.clone()],
            except: Vec::new(),
        },
    )?;
    checks
        .runs
        .push((vec![out.to_path_buf()], vec![image.clone()]));
    if host == image {
        return Ok((Some(libc), false, checks));
    }
    let extra = npm_cache::Selection::Platforms {
        on: vec![host.clone()],
        except: vec![image],
    };
    let report = fill(host_out, &extra)?;
    if report.tarballs.is_empty() {
        remove_path(host_out)?;
        return Ok((Some(libc), false, checks));
    }
    // The host's install needs both: checked on a merge of the two.
    checks
        .runs
        .push((vec![out.to_path_buf(), host_out.to_path_buf()], vec![host]));
    Ok((Some(libc), true, checks))
}

fn present_images(docker: &Docker, plan: &Plan) -> anyhow::Result<Vec<ImageEntry>> {
    let mut entries = Vec::new();
    for image in &plan.base_images {
        if let Some(id) = docker.image_id(image)? {
            entries.push(ImageEntry {
                name: image.clone(),
                id,
                role: ImageRole::Base,
            });
        }
    }
    Ok(entries)
}

fn ensure_base_images(
    docker: &Docker,
    plan: &Plan,
    pull: PullPolicy,
) -> anyhow::Result<Vec<ImageEntry>> {
    let mut missing = Vec::new();
    let mut entries = Vec::new();
    for image in &plan.base_images {
        let mut id = docker.image_id(image)?;
        if id.is_none() && pull == PullPolicy::Missing {
            crate::say!("     Pulling {image}");
            if let Err(err) = docker.pull(image) {
                crate::say!("warning: pulling {image} failed: {err:#}");
            }
            id = docker.image_id(image)?;
        }
        match id {
            Some(id) => entries.push(ImageEntry {
                name: image.clone(),
                id,
                role: ImageRole::Base,
            }),
            None => missing.push(image.clone()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} base image(s) are not on this engine{}:\n  {}\nprovide each with \
             `docker pull IMAGE`, `docker load -i FILE`, or `docker tag EXISTING IMAGE`, then export again",
            missing.len(),
            if pull == PullPolicy::Never { " (--pull never)" } else { " and could not be pulled" },
            missing.join("\n  ")
        );
    }
    Ok(entries)
}

fn build_local(
    docker: &Docker,
    engine: &EngineInfo,
    project: &Project,
    service: &BuildService,
    entry: &mut ServiceEntry,
    staging: &Utf8Path,
) -> anyhow::Result<()> {
    // One OCI layout for every service, one tag each: BuildKit writes a blob only if the
    // folder lacks it, so the layers services share (base images) are stored once.
    let rel = BUILD_CACHE_DIR.to_string();
    let tag = layout::sanitize_tag(&service.name);
    // The npm cache goes in as an image, so that a cached build on the server never reads
    // it (npm_image.rs); patch-compose writes the same reference.
    if let Some(rel_dir) = entry.contexts.get(NPM_CONTEXT) {
        let image = npm_image::ensure(
            docker,
            &staging.join(rel_dir),
            &project.name,
            &service.name,
            &engine.arch,
            None,
        )
        .with_context(|| format!("making the npm cache image of service {}", service.name))?;
        // For import-build-cache.sh, which makes the same image with dd and cat.
        npm_image::write_skeleton(staging, rel_dir)?;
        entry.npm_image = Some(image.reference);
    }
    // The settings patch-compose writes on the server (layout.rs), pointing into the
    // staging folder, plus the cache to fill.
    let npm_images: BTreeSet<String> = entry.npm_image.iter().cloned().collect();
    let target = layout::OfflineTarget {
        bundle_dir: staging,
        project_name: &project.name,
        strategy: Strategy::Local,
        local_cache: true,
        npm_images: &npm_images,
        registry: None,
    };
    let build = layout::offline_build(service, layout::Exported::Entry(entry), &target);
    let cache_to = layout::export_cache_to(staging, &service.name);
    let override_file = staging.join(format!(".compose-export-{}.yml", service.name));
    std::fs::write(
        &override_file,
        layout::export_override(&service.name, &build, &cache_to)?,
    )?;
    crate::say!("    Building {} (cache to {rel})", service.name);
    let started = Instant::now();
    docker
        .compose_build(
            &project.dir,
            &compose_files_with(project, &override_file),
            &project.name,
            std::slice::from_ref(&service.name),
            &[],
        )
        .with_context(|| format!("building service {} for its build cache", service.name))?;
    std::fs::remove_file(&override_file)?;
    crate::say!(
        "       Built {} in {:.1}s",
        service.name,
        started.elapsed().as_secs_f64()
    );
    entry.build_cache = Some(rel);
    entry.build_cache_tag = Some(tag);
    Ok(())
}

/// The project's compose files, as compose merges them, then the export's override.
fn compose_files_with<'a>(project: &'a Project, extra: &'a Utf8Path) -> Vec<&'a Utf8Path> {
    let mut files: Vec<&Utf8Path> = project.compose_files.iter().map(|f| f.as_path()).collect();
    files.push(extra);
    files
}

/// Recompresses the layers the builds made (recompress.rs), keeping the base images'
/// layers as they are and taking layers the previous bundle already recompressed.
fn recompress_build_cache(
    docker: &Docker,
    plan: &Plan,
    out: &Utf8Path,
    previous: Option<&Manifest>,
    staging: &Utf8Path,
) -> anyhow::Result<()> {
    let dir = staging.join(BUILD_CACHE_DIR);
    if !dir.join("index.json").is_file() {
        return Ok(());
    }
    let mut keep = BTreeSet::new();
    let mut finals = BTreeSet::new();
    for service in &plan.build_services {
        for image in &service.base_images {
            keep.extend(docker.image_layers(image)?.unwrap_or_default());
        }
        // What compose tagged the build with: `image:`, else `<project>-<service>`.
        let built = service
            .image
            .clone()
            .unwrap_or_else(|| format!("{}-{}", plan.project_name, service.name));
        finals.extend(docker.image_layers(&built)?.unwrap_or_default());
    }
    let old = previous
        .map(|_| recompress::zstd_layers(&out.join(BUILD_CACHE_DIR)))
        .unwrap_or_default();
    let reuse = |layer: &str,
                 params: recompress::Params,
                 dest: &Utf8Path|
     -> anyhow::Result<Option<recompress::Blob>> {
        let (Some((blob, mark)), Some(previous)) = (old.get(layer), previous) else {
            return Ok(None);
        };
        if *mark != params.mark {
            return Ok(None);
        }
        let path = layout::build_cache_blob(blob.digest.trim_start_matches("sha256:"));
        let Some(entry) = previous.files.iter().find(|f| f.path == path) else {
            return Ok(None);
        };
        Ok(bundle::link_checked(out, &[entry], |_| dest.to_path_buf())?.then(|| blob.clone()))
    };
    crate::say!(" Compressing the build cache's layers (zstd; long window for builder stages)");
    let started = Instant::now();
    let report = recompress::recompress(&dir, &keep, &finals, &reuse)
        .with_context(|| format!("recompressing the layers of {dir}"))?;
    crate::say!(
        "  Compressed {} layer(s), {} of them taken from the previous bundle: {} -> {} in {:.1}s",
        report.layers,
        report.reused,
        human_bytes(report.before),
        human_bytes(report.after),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Cache images for the classic store or the classic builder: one per stage, since
/// inline cache covers the final stage only and the legacy builder needs every stage.
fn build_cache_images(
    docker: &Docker,
    project: &Project,
    service: &BuildService,
    strategy: Strategy,
    entry: &mut ServiceEntry,
    staging: &Utf8Path,
) -> anyhow::Result<()> {
    let Some(dockerfile) = &service.dockerfile else {
        bail!(
            "service {}: dockerfile_inline cannot be built with strategy {}; use --strategy local",
            service.name,
            strategy.as_str()
        );
    };
    let args: Vec<(String, String)> = service.args.clone().into_iter().collect();
    let mut cache_from: Vec<String> = Vec::new();
    let mut tags = Vec::new();
    let stages = named_stages(service, entry);
    let contexts: Vec<(String, Utf8PathBuf)> = entry
        .contexts
        .iter()
        .map(|(name, rel)| (name.clone(), staging.join(rel)))
        .collect();
    for (i, stage) in stages.iter().enumerate() {
        let last = i + 1 == stages.len();
        let tag = cache_image_name(
            &project.name,
            &service.name,
            if last { None } else { Some(stage) },
        );
        crate::say!("    Building {} stage {stage} → {tag}", service.name);
        let target = if last {
            service.target.as_deref()
        } else {
            Some(stage.as_str())
        };
        let build = StageBuild {
            context: &service.context,
            dockerfile,
            target,
            tag: &tag,
            args: &args,
            cache_from: &cache_from,
            contexts: &contexts,
        };
        match strategy {
            Strategy::Legacy => docker.build_legacy(&build),
            _ => docker.build_inline(&build),
        }
        .with_context(|| format!("building stage {stage} of service {}", service.name))?;
        cache_from.push(tag.clone());
        tags.push(tag);
    }
    entry.cache_images = tags;
    Ok(())
}

/// The stages to tag: every named stage before the last, then the last one.
/// Stages replaced by a build context (`FROM scratch AS wheels`) have nothing to cache.
fn named_stages(service: &BuildService, entry: &ServiceEntry) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let count = service.stages.len();
    for (i, stage) in service.stages.iter().enumerate() {
        let named = stage.parse::<usize>().is_err();
        let replaced = entry.contexts.contains_key(stage)
            || [WHEELS_CONTEXT, NPM_CONTEXT].contains(&stage.as_str());
        if i + 1 == count || (named && !replaced) {
            stages.push(stage.clone());
        }
    }
    stages
}

fn fingerprints(
    project: &Project,
    service: &BuildService,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut inputs = BTreeMap::new();
    let files = service
        .dockerfile
        .iter()
        .chain(&service.python_requirements)
        .chain(&service.node_lockfiles);
    for file in files {
        let (_, digest) = bundle::hash_file(file).with_context(|| format!("hashing {file}"))?;
        inputs.insert(rel_to(&project.dir, file), digest);
    }
    Ok(inputs)
}

/// `file` relative to the compose file's folder, as the manifest records inputs.
fn rel_to(dir: &Utf8Path, file: &Utf8Path) -> String {
    file.strip_prefix(dir)
        .map_or_else(|_| file.to_string(), |p| p.to_string())
}

/// Hard-links the previous bundle's folder `old` into `dest` (the previous bundle stays
/// whole until the new one replaces it), after checking each file against the previous
/// manifest. `false` (and nothing left behind) when a file is missing or damaged.
fn reuse(
    out: &Utf8Path,
    old: &str,
    previous: Option<&Manifest>,
    dest: &Utf8Path,
) -> anyhow::Result<bool> {
    let Some(previous) = previous else {
        return Ok(false);
    };
    let prefix = format!("{old}/");
    let entries: Vec<&FileEntry> = previous
        .files
        .iter()
        .filter(|f| f.path.starts_with(&prefix))
        .collect();
    let on_disk = bundle::list_files(&out.join(old)).unwrap_or_default();
    if entries.is_empty() || on_disk.len() != entries.len() {
        return Ok(false);
    }
    let linked = bundle::link_checked(out, &entries, |e| dest.join(&e.path[prefix.len()..]))?;
    if !linked {
        crate::say!("warning: the previous {old}/ does not match its manifest; filling it again");
    }
    Ok(linked)
}

/// Hard-links (or copies) the previous bundle's file `old` into `staging` if it still
/// matches its checksum.
fn reuse_file(out: &Utf8Path, old: &FileEntry, staging: &Utf8Path) -> anyhow::Result<bool> {
    if !out.join(&old.path).is_file() {
        return Ok(false);
    }
    let linked = bundle::link_checked(out, &[old], |f| staging.join(&f.path))?;
    if !linked {
        crate::say!(
            "warning: the previous {} does not match its manifest; saving the images again",
            old.path
        );
    }
    Ok(linked)
}

/// Moves the staged bundle into `out`: the old manifest goes first, the new one last.
/// Returns the bundle's digest.
fn publish(out: &Utf8Path, staging: &Utf8Path, manifest: &Manifest) -> anyhow::Result<String> {
    let old = bundle::read_checked_any(out, &bundle::Trust::default())
        .ok()
        .map(|(m, _)| m);
    for name in [MANIFEST_FILE, SUMS_FILE, bundle::SIGNATURE_FILE] {
        let path = out.join(name);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing the old {path}"))?;
        }
    }
    // Remove what the previous bundle listed (and only that): its top-level entries.
    let mut old_tops: Vec<String> = old
        .iter()
        .flat_map(|m| m.files.iter().map(|f| layout::top_level(&f.path)))
        .collect();
    old_tops.extend([HUMAN_MANIFEST_FILE.to_string(), IMPORT_SCRIPT.to_string()]);
    old_tops.sort();
    old_tops.dedup();
    for top in old_tops {
        remove_path(&out.join(&top))?;
    }
    let mut tops: Vec<String> = manifest
        .carried()
        .map(|f| layout::top_level(&f.path))
        .collect();
    tops.sort();
    tops.dedup();
    for top in &tops {
        let target = out.join(top);
        remove_path(&target)?;
        std::fs::rename(staging.join(top), &target)
            .with_context(|| format!("moving {top} into {out}"))?;
    }
    std::fs::remove_dir_all(staging).with_context(|| format!("removing {staging}"))?;
    bundle::write_manifest(out, manifest)
}

fn remove_path(path: &Utf8Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(path).with_context(|| format!("removing {path}"))
        }
        Ok(_) => std::fs::remove_file(path).with_context(|| format!("removing {path}")),
        Err(_) => Ok(()),
    }
}

fn set_executable(path: &Utf8Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {path} executable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_step_is_the_error_not_the_steps_it_stopped() {
        let stopped = || anyhow::Error::new(Stopped);
        let real = || anyhow::anyhow!("step `tool`: cargo failed");
        for errors in [
            vec![stopped(), real()],
            vec![real(), stopped()],
            vec![stopped(), stopped(), real()],
        ] {
            let err = first_failure(errors);
            assert_eq!(err.to_string(), "step `tool`: cargo failed");
        }
        let two = first_failure([anyhow::anyhow!("first"), anyhow::anyhow!("second")]);
        assert_eq!(two.to_string(), "first");
        assert!(first_failure([stopped()]).is::<Stopped>());
        assert!(first_failure(Vec::new()).is::<Stopped>());
    }
}
