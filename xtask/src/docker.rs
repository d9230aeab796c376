//! The Docker engine: the one module that spells `docker`.
//!
//! Every call goes through xshell's `cmd!`, so arguments are quoted by construction. The
//! engine is the one `docker` talks to (`DOCKER_HOST`, or the default socket). Streams
//! (`docker save`, `docker load`) are spawned as `std::process::Command`s built from
//! `cmd!`, so the data never sits whole in memory.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use camino::Utf8Path;
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::bundle::{self, human_bytes};
use crate::model::manifest::Strategy;

/// What the engine can do, probed once per command.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EngineInfo {
    pub server_version: String,
    pub os: String,
    pub arch: String,
    /// `docker buildx` is installed (needed for `type=local` cache export).
    pub buildx: Option<String>,
    /// The image store is containerd's (`docker info`: driver-type io.containerd.snapshotter.v1).
    pub containerd_store: bool,
    pub storage_driver: String,
    /// `docker compose` (v2) version, if present.
    pub compose_v2: Option<String>,
    /// `docker-compose` (v1) version, if present.
    pub compose_v1: Option<String>,
    /// Free bytes where the engine keeps its data, if known.
    pub docker_root_dir: String,
}

/// The strongest strategy the engine supports, or the forced one if it can work (pure:
/// decided from what [`Docker::probe`] found).
pub fn choose_strategy(engine: &EngineInfo, forced: Option<Strategy>) -> anyhow::Result<Strategy> {
    let can_local =
        engine.containerd_store && engine.buildx.is_some() && engine.compose_v2.is_some();
    let can_inline = !engine.containerd_store && engine.buildx.is_some();
    match forced {
        None if can_local => Ok(Strategy::Local),
        None if can_inline => Ok(Strategy::Inline),
        None => Ok(Strategy::Legacy),
        Some(Strategy::Local) if !can_local => bail!(
            "strategy `local` needs the containerd image store, buildx and compose v2 \
             (this engine: {} store, buildx {}, compose v2 {}); the docker driver cannot export \
             a local cache from the classic store. Use --strategy inline or legacy, or enable \
             the containerd image store (\"features\": {{\"containerd-snapshotter\": true}} in daemon.json)",
            if engine.containerd_store { "containerd" } else { "classic" },
            if engine.buildx.is_some() { "present" } else { "missing" },
            if engine.compose_v2.is_some() { "present" } else { "missing" },
        ),
        Some(Strategy::Inline) if !can_inline => bail!(
            "strategy `inline` cannot work on this engine: with the containerd image store, \
             BuildKit looks cache images up in a registry and misses offline{}. Use --strategy \
             local (the default here) or legacy",
            if engine.buildx.is_none() { ", and buildx is missing" } else { "" }
        ),
        Some(s) => Ok(s),
    }
}

pub struct Docker<'a> {
    sh: &'a Shell,
}

/// A docker command failed and the engine no longer answers: what the docker CLI printed
/// then (a broken pipe, an EOF, a cut-short stream) is not what happened. `cli.rs` puts
/// this first when it prints an error.
#[derive(Debug)]
pub struct EngineGone {
    /// What was running, e.g. "`docker compose build` of service api".
    pub step: String,
    /// The engine's address: `DOCKER_HOST`, or the default socket.
    pub host: String,
    /// What the failed command reported.
    pub said: String,
}

impl std::fmt::Display for EngineGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the Docker engine stopped answering ({}) during {}: start it again \
             (e.g. `systemctl start docker`) and run the command again",
            self.host, self.step
        )?;
        if !self.said.trim().is_empty() {
            write!(f, " (docker said: {})", self.said.trim())?;
        }
        Ok(())
    }
}

impl std::error::Error for EngineGone {}

/// The engine `docker` talks to, as the operator would set it.
fn engine_address(sh: &Shell) -> String {
    match sh.var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => format!("DOCKER_HOST={host}"),
        _ => match sh.var("DOCKER_CONTEXT") {
            Ok(context) if !context.is_empty() => format!("DOCKER_CONTEXT={context}"),
            _ => "the default socket unix:///var/run/docker.sock".to_string(),
        },
    }
}

/// How long a failed command's engine gets to answer before it is called gone.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl<'a> Docker<'a> {
    pub fn new(sh: &'a Shell) -> Docker<'a> {
        Docker { sh }
    }

    /// Whether the engine answers a `docker version` within a few seconds.
    pub fn answers(&self) -> bool {
        let sh = self.sh;
        let format = "{{.Server.Version}}";
        let mut command: Command = cmd!(sh, "docker version --format {format}").into();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Ok(mut child) = command.spawn() else {
            return false;
        };
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// The error of a docker command that failed during `step`: [`EngineGone`] when the
    /// engine no longer answers, else `err` as it is.
    pub fn failed(&self, step: &str, err: impl Into<anyhow::Error>) -> anyhow::Error {
        let err = err.into();
        if self.answers() {
            return err;
        }
        anyhow::Error::new(EngineGone {
            step: step.to_string(),
            host: engine_address(self.sh),
            said: format!("{err:#}"),
        })
    }

    /// Probes the engine with one `docker info` (its output also names the client's
    /// plugins); fails with what to do when the engine does not answer.
    pub fn probe(&self) -> anyhow::Result<EngineInfo> {
        let sh = self.sh;
        let format = "{{json .}}";
        let info = cmd!(sh, "docker info --format {format}")
            .quiet()
            .ignore_stderr()
            .read()
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .filter(|info| info["ServerVersion"].is_string())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the Docker engine does not answer (`docker info` failed); start it \
                     (e.g. `systemctl start docker`) or set DOCKER_HOST"
                )
            })?;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let driver_status = info["DriverStatus"].as_array().cloned().unwrap_or_default();
        let containerd_store = driver_status.iter().any(|pair| {
            pair.get(1)
                .and_then(|v| v.as_str())
                .is_some_and(|v| v.starts_with("io.containerd.snapshotter"))
        });
        let plugins = info["ClientInfo"]["Plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let plugin = |name: &str| {
            plugins
                .iter()
                .find(|p| p["Name"] == name && p["Err"].is_null())
                .map(|p| text(&p["Version"]))
        };
        let compose_v2 = plugin("compose");
        let compose_v1 = if compose_v2.is_none() {
            cmd!(sh, "docker-compose version --short")
                .quiet()
                .ignore_stderr()
                .read()
                .ok()
                .map(|s| s.trim().to_string())
        } else {
            None
        };
        // Go's names, as `docker version` and image platforms spell them.
        let arch = match info["Architecture"].as_str().unwrap_or_default() {
            "x86_64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            other => other.to_string(),
        };
        Ok(EngineInfo {
            server_version: text(&info["ServerVersion"]),
            os: text(&info["OSType"]),
            arch,
            buildx: plugin("buildx"),
            containerd_store,
            storage_driver: text(&info["Driver"]),
            compose_v2,
            compose_v1,
            docker_root_dir: text(&info["DockerRootDir"]),
        })
    }

    /// `docker image inspect --format FORMAT IMAGE`'s output, or `None` when the engine
    /// does not have the image.
    fn inspect_image(&self, image: &str, format: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let sh = self.sh;
        let out = cmd!(sh, "docker image inspect --format {format} {image}")
            .quiet()
            .ignore_status()
            .output()?;
        if out.status.success() {
            return Ok(Some(out.stdout));
        }
        // "No such image", or an engine that went away: asked only when it is not the
        // former.
        let said = String::from_utf8_lossy(&out.stderr);
        if !said.to_lowercase().contains("no such") && !self.answers() {
            return Err(anyhow::Error::new(EngineGone {
                step: format!("`docker image inspect {image}`"),
                host: engine_address(self.sh),
                said: said.into_owned(),
            }));
        }
        Ok(None)
    }

    /// The image's ID, or `None` when the engine does not have it.
    pub fn image_id(&self, image: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .inspect_image(image, "{{.Id}}")?
            .map(|out| String::from_utf8_lossy(&out).trim().to_string()))
    }

    /// The image's layers (`RootFS.Layers`, diff IDs), or `None` when the engine does not
    /// have it.
    pub fn image_layers(&self, image: &str) -> anyhow::Result<Option<Vec<String>>> {
        let Some(out) = self.inspect_image(image, "{{json .RootFS.Layers}}")? else {
            return Ok(None);
        };
        let layers: Option<Vec<String>> = serde_json::from_slice(&out)
            .with_context(|| format!("reading the layers of {image} from docker image inspect"))?;
        Ok(Some(layers.unwrap_or_default()))
    }

    pub fn pull(&self, image: &str) -> anyhow::Result<()> {
        let sh = self.sh;
        cmd!(sh, "docker pull --quiet {image}")
            .quiet()
            .run()
            .map_err(|e| self.failed(&format!("`docker pull {image}`"), e))?;
        Ok(())
    }

    /// `docker save` of all `images` in one call (shared layers once), stdout piped.
    pub fn spawn_save(&self, images: &[String]) -> anyhow::Result<Child> {
        let sh = self.sh;
        let mut command: Command = cmd!(sh, "docker save {images...}").into();
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn().context("starting `docker save`")
    }

    /// `docker load`, stdin piped, its report on stdout.
    pub fn spawn_load(&self) -> anyhow::Result<Child> {
        let sh = self.sh;
        let mut command: Command = cmd!(sh, "docker load").into();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.spawn().context("starting `docker load`")
    }

    /// Runs `argv` in a throwaway container of `image` with no network; its stdout.
    pub fn run_offline(&self, image: &str, argv: &[&str]) -> anyhow::Result<String> {
        self.run_offline_with_mounts(image, &[], argv)
    }

    /// `docker compose -f <files…> build <services…>` with the given environment.
    pub fn compose_build(
        &self,
        project_dir: &Utf8Path,
        files: &[&Utf8Path],
        project_name: &str,
        services: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let sh = self.sh;
        let mut args = Vec::new();
        for f in files {
            args.push("-f".to_string());
            args.push(f.to_string());
        }
        let mut c = cmd!(
            sh,
            "docker compose --project-directory {project_dir} -p {project_name} {args...} build {services...}"
        );
        for (k, v) in env {
            c = c.env(k, v);
        }
        // Its progress goes to our stderr: stdout is for `--json` alone.
        let step = format!("`docker compose build` of {}", services.join(", "));
        crate::say!("     Running {c}");
        if crate::steps::live() {
            // Live step lines are on the terminal: compose's own display would be drawn
            // over them, so its output is kept and shown only if the build fails.
            let output = c
                .quiet()
                .ignore_status()
                .output()
                .map_err(|e| self.failed(&step, anyhow::anyhow!("running it: {e}")))?;
            if !output.status.success() {
                let text = String::from_utf8_lossy(&output.stderr);
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(self.failed(
                    &step,
                    anyhow::anyhow!("it exited with {}:\n{}", output.status, tail.join("\n")),
                ));
            }
            return Ok(());
        }
        let mut command = std::process::Command::from(c);
        let stderr = {
            use std::os::fd::AsFd;
            std::io::stderr().as_fd().try_clone_to_owned()?
        };
        command.stdout(stderr);
        let status = command
            .status()
            .map_err(|e| self.failed(&step, anyhow::anyhow!("running it: {e}")))?;
        if !status.success() {
            return Err(self.failed(&step, anyhow::anyhow!("it exited with {status}")));
        }
        Ok(())
    }
}

/// A compose project as `docker compose` is given it: its folder (relative paths resolve
/// there), its files in merge order, and its name.
pub struct ComposeProject<'p> {
    pub dir: &'p Utf8Path,
    pub files: &'p [&'p Utf8Path],
    pub name: &'p str,
}

impl ComposeProject<'_> {
    /// `docker compose --project-directory … -p … -f …` with `args` after it.
    fn command(&self, sh: &Shell, args: &[&str]) -> Command {
        let (dir, name) = (self.dir, self.name);
        let mut files = Vec::new();
        for f in self.files {
            files.push("-f".to_string());
            files.push(f.to_string());
        }
        cmd!(
            sh,
            "docker compose --project-directory {dir} -p {name} {files...} {args...}"
        )
        .into()
    }
}

/// How a streamed `docker compose` run ended: its exit status and everything it printed
/// (stdout and stderr, interleaved as they came).
pub struct Streamed {
    pub success: bool,
    pub log: String,
}

impl Docker<'_> {
    /// `docker compose --progress=plain build <service>`, each line of its output handed to
    /// `on_line` as it comes; `on_spawn` gets the process id (to stop it on a signal).
    pub fn compose_build_plain(
        &self,
        project: &ComposeProject<'_>,
        service: &str,
        on_spawn: &dyn Fn(u32),
        on_line: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Streamed> {
        let command = project.command(self.sh, &["--progress=plain", "build", service]);
        stream(command, on_spawn, on_line)
            .map_err(|e| self.failed(&format!("`docker compose build` of {service}"), e))
    }

    /// `docker compose up --detach --wait` (health checks passed, or failed) with what was
    /// built, nothing pulled; then `docker compose ps --all` so the caller can say which
    /// service did not come up.
    pub fn compose_up_wait(
        &self,
        project: &ComposeProject<'_>,
        timeout_secs: u64,
        on_spawn: &dyn Fn(u32),
    ) -> anyhow::Result<(Streamed, String)> {
        let timeout = timeout_secs.to_string();
        let command = project.command(
            self.sh,
            &[
                "up",
                "--detach",
                "--wait",
                "--wait-timeout",
                &timeout,
                "--no-build",
                "--pull",
                "never",
            ],
        );
        let up = stream(command, on_spawn, &mut |_| {})
            .map_err(|e| self.failed("`docker compose up --wait`", e))?;
        let mut ps = project.command(self.sh, &["ps", "--all"]);
        let ps = ps.stdin(Stdio::null()).output()?;
        Ok((up, String::from_utf8_lossy(&ps.stdout).into_owned()))
    }
}

/// Runs `command` with stdout and stderr read line by line as they come (two readers, one
/// channel), each handed to `on_line` and kept.
fn stream(
    mut command: Command,
    on_spawn: &dyn Fn(u32),
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<Streamed> {
    use std::io::BufRead as _;
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    on_spawn(child.id());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|reader| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    let mut log = String::new();
    for line in rx {
        on_line(&line);
        log.push_str(&line);
        log.push('\n');
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait()?;
    Ok(Streamed {
        success: status.success(),
        log,
    })
}

/// One classic-builder or BuildKit build of one stage into a tagged image.
pub struct StageBuild<'p> {
    pub context: &'p Utf8Path,
    pub dockerfile: &'p Utf8Path,
    pub target: Option<&'p str>,
    pub tag: &'p str,
    pub args: &'p [(String, String)],
    pub cache_from: &'p [String],
    /// Named build contexts (`--build-context name=dir`); BuildKit only.
    pub contexts: &'p [(String, camino::Utf8PathBuf)],
}

impl StageBuild<'_> {
    /// `--target`, `--build-arg` and `--cache-from`: the flags both builders take alike.
    fn common_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(target) = self.target {
            flags.extend(["--target".to_string(), target.to_string()]);
        }
        for (k, v) in self.args {
            flags.extend(["--build-arg".to_string(), format!("{k}={v}")]);
        }
        for c in self.cache_from {
            flags.extend(["--cache-from".to_string(), c.clone()]);
        }
        flags
    }
}

impl Docker<'_> {
    /// `DOCKER_BUILDKIT=0 docker build`: the classic builder, whose cache survives
    /// `docker save`/`docker load` on every engine.
    pub fn build_legacy(&self, b: &StageBuild<'_>) -> anyhow::Result<()> {
        let sh = self.sh;
        let (context, dockerfile, tag) = (b.context, b.dockerfile, b.tag);
        let extra = b.common_flags();
        if !b.contexts.is_empty() {
            let names: Vec<&str> = b.contexts.iter().map(|(n, _)| n.as_str()).collect();
            bail!(
                "the classic builder cannot take build contexts ({}); export with --strategy \
                 local or inline, or leave the dependency caches out with --only",
                names.join(", ")
            );
        }
        cmd!(
            sh,
            "docker build --quiet -f {dockerfile} -t {tag} {extra...} {context}"
        )
        .env("DOCKER_BUILDKIT", "0")
        .quiet()
        .ignore_stdout()
        .run()
        .map_err(|e| self.failed(&format!("`docker build` of {tag}"), e))?;
        Ok(())
    }

    /// `docker buildx build` with inline cache metadata, loaded into the image store.
    pub fn build_inline(&self, b: &StageBuild<'_>) -> anyhow::Result<()> {
        let sh = self.sh;
        let (context, dockerfile, tag) = (b.context, b.dockerfile, b.tag);
        let mut extra = b.common_flags();
        for (name, dir) in b.contexts {
            extra.extend(["--build-context".to_string(), format!("{name}={dir}")]);
        }
        cmd!(
            sh,
            "docker buildx build --progress=quiet --load --build-arg BUILDKIT_INLINE_CACHE=1 -f {dockerfile} -t {tag} {extra...} {context}"
        )
        .quiet()
        .ignore_stdout()
        .run()
        .map_err(|e| self.failed(&format!("`docker buildx build` of {tag}"), e))?;
        Ok(())
    }

    /// Free bytes on the filesystem of `dir`, when it is on this machine.
    pub fn free_bytes(&self, dir: &Utf8Path) -> Option<u64> {
        let sh = self.sh;
        if !dir.exists() {
            return None;
        }
        let out = cmd!(sh, "df --output=avail -B1 {dir}")
            .quiet()
            .ignore_stderr()
            .read()
            .ok()?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// [`Docker::run_offline`] with host directories bind-mounted (`(host, container)`,
    /// host paths absolute), e.g. to build a wheel from a downloaded sdist.
    pub fn run_offline_with_mounts(
        &self,
        image: &str,
        mounts: &[(&Utf8Path, &str)],
        argv: &[&str],
    ) -> anyhow::Result<String> {
        let sh = self.sh;
        let Some((entrypoint, rest)) = argv.split_first() else {
            bail!("no command to run in image {image}");
        };
        let volumes: Vec<String> = mounts
            .iter()
            .flat_map(|(host, container)| ["--volume".to_string(), format!("{host}:{container}")])
            .collect();
        let out = cmd!(
            sh,
            "docker run --rm --network none {volumes...} --entrypoint {entrypoint} {image}"
        )
        .args(rest)
        .quiet()
        .ignore_status()
        .output()?;
        if !out.status.success() {
            let err = anyhow::anyhow!(
                "`{}` in image {image} (no network) failed: {}",
                argv.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Err(self.failed(&format!("`docker run` of {image}"), err));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Feeds `reader` into `docker load`, read ahead on another thread, holding the last chunk
/// back until `check` (given how reading ended) accepts the stream; kills `docker load`
/// otherwise, before it could see the end of the stream and tag anything.
/// The user's Docker login for a registry `host`, where `docker login` keeps it: the
/// credential helper the Docker config names for the host (`credHelpers`, else
/// `credsStore`), else its `auths` entry. Read into memory for the caller, never written.
/// `None` when there is no login for the host.
pub fn registry_credentials(host: &str) -> anyhow::Result<Option<crate::registry::Credentials>> {
    let dir = match std::env::var("DOCKER_CONFIG") {
        Ok(dir) if !dir.is_empty() => camino::Utf8PathBuf::from(dir),
        _ => camino::Utf8PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".docker"),
    };
    let path = dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {path}")),
    };
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {path}"))?;
    let helper = config["credHelpers"][host]
        .as_str()
        .or_else(|| config["credsStore"].as_str());
    if let Some(helper) = helper {
        let sh = Shell::new()?;
        let program = format!("docker-credential-{helper}");
        let out = cmd!(sh, "{program} get")
            .stdin(host)
            .quiet()
            .ignore_status()
            .output()
            .with_context(|| format!("running {program} (named in {path})"))?;
        if out.status.success() {
            let found: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("reading what {program} answered"))?;
            if let (Some(user), Some(secret)) =
                (found["Username"].as_str(), found["Secret"].as_str())
            {
                return Ok(Some(crate::registry::Credentials {
                    username: user.to_string(),
                    secret: secret.to_string(),
                }));
            }
        }
    }
    let auths = &config["auths"];
    let entry = [
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
    ]
    .iter()
    .find_map(|key| auths[key.as_str()]["auth"].as_str());
    Ok(entry.and_then(crate::registry::decode_auth))
}

pub fn stream_into_load(
    docker: &Docker,
    what: &str,
    reader: Box<dyn Read + Send>,
    check: impl FnOnce(Option<std::io::Error>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let child = docker.spawn_load()?;
    feed_load(child, what, reader, true, check).map_err(|e| e.with_engine(docker))
}

/// How a [`feed_load`] failed: the engine's side (mapped by [`Docker::failed`] once back
/// on the thread that has the shell), or the stream's (what `check` said).
pub enum LoadFailure {
    Engine { step: String, err: anyhow::Error },
    Stream(anyhow::Error),
}

impl LoadFailure {
    /// The error to report: an engine that went away is named as such.
    pub fn with_engine(self, docker: &Docker) -> anyhow::Error {
        match self {
            LoadFailure::Engine { step, err } => docker.failed(&step, err),
            LoadFailure::Stream(err) => err,
        }
    }
}

/// Streams `reader` into a started `docker load` (any thread): the last chunk is held
/// back until `check` has seen how the stream ended, so that a stream it refuses never
/// reaches its end and nothing of it is tagged. `progress`: print the byte count while
/// streaming (off when several loads run at once, each then one step line).
pub fn feed_load(
    mut child: std::process::Child,
    what: &str,
    reader: Box<dyn Read + Send>,
    progress: bool,
    check: impl FnOnce(Option<std::io::Error>) -> anyhow::Result<()>,
) -> Result<(), LoadFailure> {
    let started = Instant::now();
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(LoadFailure::Stream(anyhow::anyhow!(
            "`docker load` started without its pipes"
        )));
    };
    let out_reader = bundle::read_in_background(stdout);
    let err_reader = bundle::read_in_background(stderr);
    let ahead = bundle::ReadAhead::new(reader);
    let mut shown = progress.then(|| crate::progress::Progress::new("Loading", None));
    let mut pending: Option<Vec<u8>> = None;
    let mut streamed = 0u64;
    let mut failure: Option<std::io::Error> = None;
    let mut load_failed: Option<std::io::Error> = None;
    while let Some(chunk) = ahead.next_chunk() {
        match chunk {
            bundle::Chunk::Data(buf) => {
                if let Some(previous) = pending.replace(buf) {
                    if let Err(e) = stdin.write_all(&previous) {
                        load_failed = Some(e);
                        break;
                    }
                    streamed += previous.len() as u64;
                    if let Some(shown) = &mut shown {
                        shown.set(streamed);
                    }
                    ahead.recycle(previous);
                }
            }
            bundle::Chunk::Failed(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(ahead);
    if let Some(shown) = shown {
        shown.done();
    }
    if let Some(e) = load_failed {
        // docker load stopped reading: the engine went away or refused the stream. The
        // bundle is not to blame; what docker load said is the message.
        let _ = child.kill();
        let _ = child.wait();
        let err = err_reader.join().unwrap_or_default();
        let err = anyhow::anyhow!(
            "`docker load` stopped before the end of {what} ({e}): {}; is the engine \
             still running? Nothing that was cut short is tagged; run cache-import again",
            if err.trim().is_empty() {
                "no message"
            } else {
                err.trim()
            }
        );
        return Err(LoadFailure::Engine {
            step: format!("`docker load` of {what}"),
            err,
        });
    }
    if let Err(err) = check(failure) {
        // Killed before the end of the stream: nothing gets tagged.
        let _ = child.kill();
        let _ = child.wait();
        return Err(LoadFailure::Stream(err));
    }
    if let Some(last) = pending.take() {
        stdin
            .write_all(&last)
            .with_context(|| format!("streaming {what} into docker load"))
            .map_err(LoadFailure::Stream)?;
        streamed += last.len() as u64;
    }
    drop(stdin);
    let status = child
        .wait()
        .context("waiting for docker load")
        .map_err(LoadFailure::Stream)?;
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let err = anyhow::anyhow!("`docker load` of {what} failed: {}", err.trim());
        return Err(LoadFailure::Engine {
            step: format!("`docker load` of {what}"),
            err,
        });
    }
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        crate::say!("      {}", line.trim());
    }
    let secs = started.elapsed().as_secs_f64();
    crate::say!(
        "      Loaded {} (verified while streaming) in {secs:.1}s ({}/s)",
        human_bytes(streamed),
        human_bytes((streamed as f64 / secs.max(1e-6)) as u64)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(containerd_store: bool, buildx: bool) -> EngineInfo {
        EngineInfo {
            server_version: "26.1.5".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            buildx: buildx.then(|| "v0.13.1".into()),
            containerd_store,
            storage_driver: "overlayfs".into(),
            compose_v2: Some("2.26.1".into()),
            compose_v1: None,
            docker_root_dir: "/var/lib/docker".into(),
        }
    }

    /// A command that fails while the engine is gone says so, naming the engine's address
    /// and the step; what the CLI printed comes after.
    #[test]
    fn a_failure_with_no_engine_answering_says_the_engine_stopped() {
        let sh = Shell::new().unwrap();
        sh.set_var("DOCKER_HOST", "unix:///nonexistent/xtask-test/docker.sock");
        let docker = Docker::new(&sh);
        assert!(!docker.answers());
        let err = docker.failed(
            "`docker pull busybox`",
            anyhow::anyhow!("error during connect: EOF"),
        );
        assert!(err.downcast_ref::<EngineGone>().is_some());
        let text = err.to_string();
        assert!(
            text.starts_with(
                "the Docker engine stopped answering \
                 (DOCKER_HOST=unix:///nonexistent/xtask-test/docker.sock) during \
                 `docker pull busybox`: start it again"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("(docker said: error during connect: EOF)"),
            "{text}"
        );
    }

    #[test]
    fn strategy_follows_the_engine() {
        let check = |e: EngineInfo, forced, expected: Result<Strategy, &str>| match (
            choose_strategy(&e, forced),
            expected,
        ) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(err), Err(text)) => assert!(format!("{err:#}").contains(text), "{err:#}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        };
        check(engine(true, true), None, Ok(Strategy::Local));
        check(engine(false, true), None, Ok(Strategy::Inline));
        check(engine(false, false), None, Ok(Strategy::Legacy));
        check(
            engine(true, true),
            Some(Strategy::Legacy),
            Ok(Strategy::Legacy),
        );
        check(
            engine(true, true),
            Some(Strategy::Inline),
            Err("looks cache images up in a registry"),
        );
        check(
            engine(false, true),
            Some(Strategy::Local),
            Err("containerd image store"),
        );
    }
}
