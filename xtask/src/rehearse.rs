//! The rehearsal of an offline rebuild, on the machine that made the bundle
//! (`cache-rehearse`, `cache-export --rehearse`).
//!
//! A throwaway engine from the lab ([`REHEARSAL_SITE`]: its own data root, socket, client
//! config and bridge, in a network namespace that has only loopback, so a build that
//! succeeds there needed no network) gets the bundle the way the offline server will:
//! verified, then loaded by `import.rs`, the code `cache-import` runs. A copy of the
//! compose file set is patched by `patch.rs` (the user's files are not touched) and
//! written beside the engine; `docker compose --project-directory <the project>` builds
//! each service from it, so build contexts resolve as they do for the user. Each build's
//! plain log says which steps came from the cache and which ran (`model::buildlog`).
//!
//! The engine, its namespace and data are removed whatever happens: on an error, and on
//! SIGINT, SIGTERM or SIGHUP, which are caught (signal-hook) for as long as a rehearsal
//! runs, then re-raised once the engine is gone. What a run killed with SIGKILL left is
//! removed by the next one (`Site::clean_once`).

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use xshell::Shell;

use crate::bundle::{self, BundleLock, Trust};
use crate::docker::{ComposeProject, Docker, Streamed};
use crate::import;
use crate::lab::{Engine, EngineOptions, Site};
use crate::model::buildlog::{self, BuildLog, Event, Facts, Reason, Step};
use crate::model::manifest::{Manifest, ServiceEntry, Strategy};
use crate::model::plan::{BuildService, Plan};
use crate::project::{Project, ProjectArgs, RealFs};

/// Where rehearsal engines live: apart from the tests' (`/tmp/xtd`, 213/214) and the
/// benchmark's (`/tmp/xtb`, 215/216).
pub const REHEARSAL_SITE: Site = Site {
    dir: "/tmp/xtask-rehearse",
    prefix: "xtr",
    bridge_net: 217,
    pool_net: 218,
    label: "rehearsal engine",
};

/// How long `--up` waits for the health checks.
const UP_TIMEOUT_SECS: u64 = 300;

/// What to rehearse, and how strictly.
pub struct Options {
    pub bundle_dir: Utf8PathBuf,
    pub trust: Trust,
    /// Also start the stack and wait for its health checks.
    pub up: bool,
    /// Fail when any step ran instead of coming from the cache.
    pub strict: bool,
}

/// What a rehearsal found (`--json`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub bundle: String,
    pub digest: String,
    /// Every service built offline (and, with `--up`, came up healthy; with `--strict`,
    /// with every step from the cache).
    pub ok: bool,
    pub strict: bool,
    /// `docker pull` on the rehearsal engine, before the import: its error, in the
    /// engine's words (the pull must fail for the rehearsal to go on).
    pub offline_proof: String,
    pub services: Vec<ServiceReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<UpReport>,
    pub import_seconds: f64,
    pub build_seconds: f64,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct ServiceReport {
    pub name: String,
    pub built: bool,
    /// Steps (RUN, COPY, …; not FROM) that came from the cache, and that ran.
    pub cached: usize,
    pub ran: usize,
    pub ran_steps: Vec<String>,
    /// The first step that ran instead of coming from the cache, where, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_ran: Option<StepReport>,
    /// The step that failed, or why the build failed before any step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<StepReport>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// `[api 3/4] COPY requirements.txt .`, or what failed outside any step.
    pub step: String,
    /// `backend/Dockerfile:7`, when the step was found in the Dockerfile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The last lines the step printed (a failure's error).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UpReport {
    pub healthy: bool,
    /// `docker compose ps --all` once `up --wait` returned.
    pub ps: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Rehearses the offline rebuild of `project_args`'s project from `opts.bundle_dir`;
/// prints progress on stderr. A signal ends the process (by that signal) once the engine
/// is removed.
pub fn run(sh: &Shell, project_args: &ProjectArgs, opts: &Options) -> anyhow::Result<Report> {
    check_root()?;
    let signals = SignalGuard::install()?;
    let result = rehearse(sh, project_args, opts);
    // The engine is gone by now (dropped inside `rehearse`).
    let caught = INTERRUPTED.load(Ordering::SeqCst);
    drop(signals);
    if caught != 0 {
        eprintln!(
            "error: the rehearsal was interrupted (signal {caught}); its engine, network \
             namespace and data were removed"
        );
        let _ = signal_hook::low_level::emulate_default_handler(caught);
        std::process::exit(128 + caught);
    }
    result
}

/// Root, the tools, and the compose plugin; else what to run instead.
pub fn check_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        bail!(
            "cache-rehearse needs root: it starts a throwaway Docker engine (its own dockerd) \
             in a network namespace of its own, which only root can create (uid is {uid}). \
             Run it as root, e.g. `sudo env \"PATH=$PATH\" cargo xtask cache-rehearse`; your \
             own Docker engine and its images are not touched. Without root, test the \
             bundle by hand on a machine with no network: cache-import, patch-compose, \
             `docker compose build`"
        );
    }
    crate::lab::check_prerequisites(&["nsenter"])
        .context("cache-rehearse cannot start its throwaway engine")
}

fn rehearse(sh: &Shell, project_args: &ProjectArgs, opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let dir = &opts.bundle_dir;
    let _lock = BundleLock::acquire(dir, "cache-rehearse", false)?;
    let (manifest, digest) = bundle::read_checked_manifest(dir, &opts.trust)?;
    let containerd_store = match manifest.strategy {
        Strategy::Local => true,
        Strategy::Inline => false,
        Strategy::Legacy => bail!(
            "{dir} was exported with --strategy legacy, which the classic builder uses through \
             compose v1 or `docker build --cache-from`; `docker compose build` (v2) ignores \
             it, so there is nothing to rehearse with compose. Export with --strategy local \
             or inline to rehearse"
        ),
    };
    let project = project_args.load(sh)?;
    let plan = Plan::build(&project.model, &project.name, &RealFs)?;
    crate::bundle_arg::check_usable_by_builds(dir)?;
    let in_memory = fits_in_memory(manifest.total_size());
    eprintln!(
        "  Rehearsing the offline rebuild of {} from {dir} on a throwaway engine with no \
         network ({}, data {})",
        project.name,
        REHEARSAL_SITE.dir,
        if in_memory { "in memory" } else { "on disk" }
    );
    let engine = start_engine(containerd_store, in_memory)?;
    // Offline, shown before anything else: a build that needed the network fails here.
    let pull_error = crate::lab::netns::pull_fails(&engine)
        .context("the rehearsal engine is not offline: nothing it built would prove anything")?;
    eprintln!(
        "    Offline: docker pull failed on the rehearsal engine ({})",
        pull_error.lines().next().unwrap_or("no message")
    );
    let esh = engine_shell(&engine)?;
    let import_started = Instant::now();
    import_into(&esh, dir, &manifest)?;
    let import_seconds = import_started.elapsed().as_secs_f64();
    stop_if_interrupted()?;
    let files = patched_copy(&esh, &engine, &project, dir)?;
    let file_refs: Vec<&Utf8Path> = files.iter().map(Utf8PathBuf::as_path).collect();
    let compose = ComposeProject {
        dir: &project.dir,
        files: &file_refs,
        name: &project.name,
    };
    let build_started = Instant::now();
    let docker = Docker::new(&esh);
    let mut services = Vec::new();
    for name in &plan.build_order {
        let Some(service) = plan.build_services.iter().find(|s| &s.name == name) else {
            continue;
        };
        services.push(build_service(
            &docker, &compose, &project, dir, &manifest, service,
        )?);
        stop_if_interrupted()?;
    }
    for remote in &plan.remote_build_services {
        services.push(remote_service(&remote.name, &remote.context));
    }
    let build_seconds = build_started.elapsed().as_secs_f64();
    let built = services.iter().all(|s| s.built);
    let up = match (opts.up, built) {
        (true, true) => Some(up(&docker, &compose)?),
        _ => None,
    };
    let ok = built
        && (!opts.strict || services.iter().all(|s| s.ran == 0))
        && up.as_ref().is_none_or(|u| u.healthy);
    drop(engine);
    Ok(Report {
        bundle: dir.to_string(),
        digest: format!("sha256:{digest}"),
        ok,
        strict: opts.strict,
        offline_proof: pull_error,
        services,
        up,
        import_seconds,
        build_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Whether the engine's data root goes on a tmpfs: when the machine has memory to spare
/// for it (the images stored and unpacked: about 4× the bundle, plus 1 GiB). A tmpfs makes
/// containerd's fsyncs free and the removal an unmount; else the data root is on disk.
fn fits_in_memory(bundle_bytes: u64) -> bool {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let available_kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let needed = bundle_bytes.saturating_mul(4).saturating_add(1 << 30);
    // The lab's tmpfs is capped at 16 GiB.
    available_kib.saturating_mul(1024) > needed && needed < (16 << 30)
}

fn start_engine(containerd_store: bool, in_memory: bool) -> anyhow::Result<Engine> {
    let engine = Engine::start(
        &REHEARSAL_SITE,
        "rehearsal",
        EngineOptions {
            containerd_store,
            data_in_memory: in_memory,
            network_namespace: true,
            // never the machine's containerd, whose image store the user's engine uses
            private_containerd: true,
            ..EngineOptions::default()
        },
    )
    .context("starting the rehearsal engine")?;
    if let Some(pid) = engine.dockerd_pid() {
        ENGINE_PID.store(pid, Ordering::SeqCst);
    }
    stop_if_interrupted()?;
    Ok(engine)
}

/// A shell whose `docker` is the throwaway engine and nothing of the user's: no context,
/// no builder, no TLS settings from the environment.
fn engine_shell(engine: &Engine) -> anyhow::Result<Shell> {
    let esh = engine.shell()?;
    for var in [
        "DOCKER_CONTEXT",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
        "BUILDX_BUILDER",
        "COMPOSE_FILE",
        "COMPOSE_PROJECT_NAME",
        "COMPOSE_PROFILES",
    ] {
        // Empty is unset for the docker CLI and compose (xshell cannot remove a variable).
        esh.set_var(var, "");
    }
    Ok(esh)
}

/// What `cache-import` does, into the throwaway engine: verify every file (the images'
/// as they stream), load the images, make the npm cache images. The host's caches (~/.npm)
/// are left alone.
fn import_into(esh: &Shell, dir: &Utf8Path, manifest: &Manifest) -> anyhow::Result<()> {
    let docker = Docker::new(esh);
    let engine = docker.probe()?;
    let (_, to_load) = import::partition(&docker, manifest)?;
    let archive = import::images_archive(manifest);
    let streamed = import::streamed_files(manifest, archive.as_ref(), !to_load.is_empty());
    let report = bundle::verify_bundle(dir, manifest, false, &streamed)?;
    if !report.ok() {
        crate::images::name_damaged_streamed(dir, manifest, &streamed);
        bail!("{dir} does not verify (files named above): nothing to rehearse");
    }
    if !to_load.is_empty() {
        import::load(&docker, &engine, dir, manifest, archive.as_ref())?;
    }
    import::make_npm_images(&docker, &engine, dir, manifest);
    Ok(())
}

/// The project's compose files, patched as `patch-compose` patches them for this engine,
/// written beside the engine (removed with it): `<engine>/compose/<n>-<name>`.
fn patched_copy(
    esh: &Shell,
    engine: &Engine,
    project: &Project,
    bundle_dir: &Utf8Path,
) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut originals = Vec::new();
    for file in &project.compose_files {
        originals.push(std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?);
    }
    let (patched, _) =
        crate::patch::patched_texts(esh, project, bundle_dir, &originals, None, None)?;
    let out = engine.root().join("compose");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {out}"))?;
    let mut files = Vec::new();
    for (i, (file, text)) in project.compose_files.iter().zip(&patched).enumerate() {
        let copy = out.join(format!(
            "{i}-{}",
            file.file_name().unwrap_or("compose.yaml")
        ));
        bundle::write_atomic(&copy, text.as_bytes())?;
        files.push(copy);
    }
    eprintln!(
        "    Patched a copy of {} (yours are not touched)",
        project
            .compose_files
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(files)
}

/// Builds one service offline and reads its log.
fn build_service(
    docker: &Docker<'_>,
    compose: &ComposeProject<'_>,
    project: &Project,
    bundle_dir: &Utf8Path,
    manifest: &Manifest,
    service: &BuildService,
) -> anyhow::Result<ServiceReport> {
    eprintln!("    Building {} offline", service.name);
    let started = Instant::now();
    let mut announcer = Announcer::default();
    let Streamed { success, log } = docker.compose_build_plain(
        compose,
        &service.name,
        &|pid| CHILD_PID.store(pid, Ordering::SeqCst),
        &mut |line| announcer.line(line),
    )?;
    CHILD_PID.store(0, Ordering::SeqCst);
    stop_if_interrupted()?;
    let parsed = buildlog::parse(&log);
    let entry = manifest.services.iter().find(|s| s.name == service.name);
    let facts = facts(project, bundle_dir, manifest, entry, service)?;
    let dockerfile = service
        .dockerfile
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok().map(|text| (p, text)));
    let describe = |step: &Step, reason: Option<Reason>| StepReport {
        step: step.label(),
        dockerfile_line: dockerfile.as_ref().and_then(|(path, text)| {
            let line = buildlog::dockerfile_line(text, step)?;
            let shown = path.strip_prefix(&project.dir).unwrap_or(path);
            Some(format!("{shown}:{line}"))
        }),
        reason,
        output: last(&step.output, 10),
    };
    let first = parsed.first_ran();
    let first_ran = first.map(|step| describe(step, buildlog::reason(&parsed, Some(step), &facts)));
    let failure = match (success, parsed.failed()) {
        (true, _) => None,
        (false, Some(step)) => Some(describe(
            step,
            buildlog::reason(&parsed, Some(step), &facts),
        )),
        (false, None) => Some(failure_outside_steps(&parsed, &facts, &log)),
    };
    let report = ServiceReport {
        name: service.name.clone(),
        built: success,
        cached: parsed
            .counted()
            .filter(|s| s.state == buildlog::StepState::Cached)
            .count(),
        ran: ran_steps(&parsed).len(),
        ran_steps: ran_steps(&parsed),
        first_ran,
        failure,
        seconds: started.elapsed().as_secs_f64(),
    };
    print_service(&report);
    Ok(report)
}

fn ran_steps(log: &BuildLog) -> Vec<String> {
    log.counted()
        .filter(|s| {
            matches!(
                s.state,
                buildlog::StepState::Ran | buildlog::StepState::Failed
            )
        })
        .map(Step::label)
        .collect()
}

/// A build that failed before any step did: a base image it could not find, or what
/// compose said last.
fn failure_outside_steps(log: &BuildLog, facts: &Facts, text: &str) -> StepReport {
    let reason = buildlog::reason(log, None, facts);
    let (step, output) = match log.other_errors.first() {
        Some((name, err)) => (name.clone(), vec![err.clone()]),
        None => {
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            ("docker compose build".to_string(), last(&lines, 10))
        }
    };
    StepReport {
        step,
        dockerfile_line: None,
        reason,
        output,
    }
}

fn last(lines: &[String], n: usize) -> Vec<String> {
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// What changed since the export for `service`: its context's files (relative to the
/// context), its build args, base images the bundle lacks.
fn facts(
    project: &Project,
    bundle_dir: &Utf8Path,
    manifest: &Manifest,
    entry: Option<&ServiceEntry>,
    service: &BuildService,
) -> anyhow::Result<Facts> {
    let mut facts = Facts::default();
    let bundled: Vec<&str> = manifest.images.iter().map(|i| i.name.as_str()).collect();
    facts.missing_base_images = service
        .base_images
        .iter()
        .filter(|image| !bundled.contains(&image.as_str()))
        .cloned()
        .collect();
    let Some(entry) = entry else {
        return Ok(facts);
    };
    let changes = match &entry.context_files {
        Some(then) => {
            let now = crate::context::fingerprint(
                &service.context,
                service.dockerfile.as_deref(),
                &[bundle_dir],
            )?;
            crate::context::compare(then, &now)
        }
        None => {
            // An older bundle records the inputs only (relative to the project).
            let mut now = std::collections::BTreeMap::new();
            for file in service
                .dockerfile
                .iter()
                .chain(&service.python_requirements)
                .chain(&service.node_lockfiles)
            {
                let (_, digest) = bundle::hash_file(file)?;
                let rel = file.strip_prefix(&project.dir).unwrap_or(file);
                now.insert(rel.to_string(), digest);
            }
            crate::context::compare(&entry.inputs, &now)
        }
    };
    facts.changed_files = changes.changed;
    facts
        .changed_files
        .extend(changes.added.into_iter().map(|f| format!("{f} (added)")));
    facts.changed_files.extend(
        changes
            .removed
            .into_iter()
            .map(|f| format!("{f} (removed)")),
    );
    for (name, now) in &service.args {
        match entry.args.get(name) {
            Some(then) if then != now => facts
                .changed_args
                .push(format!("{name}: {then} at export, {now} now")),
            _ => {}
        }
    }
    Ok(facts)
}

/// A service built from a remote context: no offline build can fetch it.
fn remote_service(name: &str, context: &str) -> ServiceReport {
    let report = ServiceReport {
        name: name.to_string(),
        built: false,
        cached: 0,
        ran: 0,
        ran_steps: Vec::new(),
        first_ran: None,
        failure: Some(StepReport {
            step: format!("build context {context}"),
            dockerfile_line: None,
            reason: Some(Reason::NetworkNeeded(format!(
                "the build context {context} is remote"
            ))),
            output: Vec::new(),
        }),
        seconds: 0.0,
    };
    print_service(&report);
    report
}

/// Says a service's result on stderr, Cargo's way.
fn print_service(r: &ServiceReport) {
    let verb = if r.built { "Built" } else { "Failed" };
    let steps = |n: usize| {
        if n == 1 {
            "1 step".to_string()
        } else {
            format!("{n} steps")
        }
    };
    eprintln!(
        "{verb:>12} {}: {} from the cache, {} ran ({:.1}s)",
        r.name,
        steps(r.cached),
        r.ran,
        r.seconds
    );
    let show = |what: &str, s: &StepReport| {
        eprintln!("             {what}: {}", s.step);
        if let Some(at) = &s.dockerfile_line {
            eprintln!("               at {at}");
        }
        if let Some(reason) = &s.reason {
            eprintln!("               likely reason: {reason}");
        }
    };
    if let Some(first) = &r.first_ran {
        show("first step that ran", first);
    }
    if let Some(failure) = &r.failure {
        show("failed", failure);
        for line in &failure.output {
            eprintln!("               | {line}");
        }
    }
}

/// `--up`: the stack on the throwaway engine, health checks awaited.
fn up(docker: &Docker<'_>, compose: &ComposeProject<'_>) -> anyhow::Result<UpReport> {
    eprintln!(
        "    Starting the stack and waiting for its health checks (at most {UP_TIMEOUT_SECS}s)"
    );
    let (streamed, ps) = docker.compose_up_wait(compose, UP_TIMEOUT_SECS, &|pid| {
        CHILD_PID.store(pid, Ordering::SeqCst)
    })?;
    CHILD_PID.store(0, Ordering::SeqCst);
    stop_if_interrupted()?;
    let error = match streamed.success {
        true => String::new(),
        false => last(
            &streamed.log.lines().map(str::to_string).collect::<Vec<_>>(),
            10,
        )
        .join("\n"),
    };
    let verb = if streamed.success {
        "Healthy"
    } else {
        "Unhealthy"
    };
    eprintln!("{verb:>12} stack on the rehearsal engine:");
    for line in ps.lines() {
        eprintln!("             {line}");
    }
    if !error.is_empty() {
        eprintln!("             {}", error.replace('\n', "\n             "));
    }
    Ok(UpReport {
        healthy: streamed.success,
        ps,
        error,
    })
}

/// Prints the verdict; the process's exit code follows `report.ok`.
pub fn print_verdict(report: &Report) {
    let ran: usize = report.services.iter().map(|s| s.ran).sum();
    let failed: Vec<&str> = report
        .services
        .iter()
        .filter(|s| !s.built)
        .map(|s| s.name.as_str())
        .collect();
    if report.ok {
        eprintln!(
            "    Finished rehearsal in {:.1}s (import {:.1}s, builds {:.1}s): every service \
             builds offline from {}{}",
            report.seconds,
            report.import_seconds,
            report.build_seconds,
            report.bundle,
            if ran == 0 {
                ", every step from the cache".to_string()
            } else {
                format!(" ({ran} steps ran offline instead of coming from the cache)")
            }
        );
        eprintln!(
            "        Next: carry {} to the offline server",
            report.bundle
        );
    } else if !failed.is_empty() {
        eprintln!(
            "error: the rehearsal failed: {} cannot be built offline from {} (see above); fix \
             the cause, run `cargo xtask cache-export` again, and rehearse again",
            failed.join(", "),
            report.bundle
        );
    } else if report.up.as_ref().is_some_and(|u| !u.healthy) {
        eprintln!("error: the rehearsal failed: the stack did not become healthy (see above)");
    } else {
        eprintln!(
            "error: the rehearsal failed (--strict): {ran} steps ran instead of coming from \
             the cache (see above); export again to refresh the cache"
        );
    }
}

/// Announces on stderr each step that runs (not those from the cache), as the log shows
/// it first: `     Running [api 3/4] RUN …`.
#[derive(Default)]
struct Announcer {
    headers: std::collections::BTreeMap<String, String>,
    done: std::collections::BTreeSet<String>,
}

impl Announcer {
    fn line(&mut self, line: &str) {
        let Some((id, event)) = buildlog::event(line) else {
            return;
        };
        match event {
            Event::Header(text) => {
                if buildlog::is_step(&text) && !text.contains("] FROM ") {
                    self.headers.entry(id).or_insert(text);
                }
            }
            Event::Cached => {
                self.done.insert(id);
            }
            Event::Output(_) | Event::Done(_) | Event::Error(_) => {
                if let Some(header) = self.headers.get(&id) {
                    if self.done.insert(id) {
                        eprintln!("     Running {header}");
                    }
                }
            }
            Event::Canceled => {}
        }
    }
}

/// The signal caught (0: none), and the processes to stop when one is.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
static ENGINE_PID: AtomicU32 = AtomicU32::new(0);
static CHILD_PID: AtomicU32 = AtomicU32::new(0);

fn stop_if_interrupted() -> anyhow::Result<()> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => Ok(()),
        signal => bail!("interrupted by signal {signal}"),
    }
}

/// SIGINT, SIGTERM and SIGHUP caught while it lives: the first one stops the running
/// `docker compose` and the engine's dockerd (so that whatever waits on them returns),
/// and the rehearsal unwinds, removing the engine. A watchdog ends the process if the
/// unwinding hangs; the next run then removes what is left.
struct SignalGuard {
    handle: signal_hook::iterator::Handle,
}

impl SignalGuard {
    fn install() -> anyhow::Result<SignalGuard> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .context("catching SIGINT and SIGTERM")?;
        let handle = signals.handle();
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if INTERRUPTED.swap(signal, Ordering::SeqCst) != 0 {
                    continue;
                }
                eprintln!("  Interrupted: stopping the build and removing the rehearsal engine");
                for pid in [&CHILD_PID, &ENGINE_PID] {
                    let pid = pid.load(Ordering::SeqCst);
                    if pid != 0 {
                        // SAFETY: kill(2) with a pid we started and a valid signal.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                    }
                }
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(120));
                    eprintln!(
                        "error: the rehearsal engine did not stop within 120s; the next \
                         cache-rehearse removes what is left under {}",
                        REHEARSAL_SITE.dir
                    );
                    std::process::exit(128 + signal);
                });
            }
        });
        Ok(SignalGuard { handle })
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.handle.close();
    }
}
