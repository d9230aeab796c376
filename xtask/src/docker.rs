//! The Docker engine: the one module that spells `docker`.
//!
//! Every call goes through xshell's `cmd!`, so arguments are quoted by construction. The
//! engine is the one `docker` talks to (`DOCKER_HOST`, or the default socket). Streams
//! (`docker save`, `docker load`) are spawned as `std::process::Command`s built from
//! `cmd!`, so the data never sits whole in memory.

use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};
use camino::Utf8Path;
use serde::Serialize;
use xshell::{cmd, Shell};

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

pub struct Docker<'a> {
    sh: &'a Shell,
}

impl<'a> Docker<'a> {
    pub fn new(sh: &'a Shell) -> Docker<'a> {
        Docker { sh }
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
            .ignore_stderr()
            .ignore_status()
            .output()?;
        Ok(out.status.success().then_some(out.stdout))
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
        cmd!(sh, "docker pull --quiet {image}").quiet().run()?;
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
        c.run()?;
        Ok(())
    }
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

impl Docker<'_> {
    /// `DOCKER_BUILDKIT=0 docker build`: the classic builder, whose cache survives
    /// `docker save`/`docker load` on every engine.
    pub fn build_legacy(&self, b: &StageBuild<'_>) -> anyhow::Result<()> {
        let sh = self.sh;
        let (context, dockerfile, tag) = (b.context, b.dockerfile, b.tag);
        let mut extra = Vec::new();
        if let Some(target) = b.target {
            extra.extend(["--target".to_string(), target.to_string()]);
        }
        for (k, v) in b.args {
            extra.extend(["--build-arg".to_string(), format!("{k}={v}")]);
        }
        for c in b.cache_from {
            extra.extend(["--cache-from".to_string(), c.clone()]);
        }
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
        .run()?;
        Ok(())
    }

    /// `docker buildx build` with inline cache metadata, loaded into the image store.
    pub fn build_inline(&self, b: &StageBuild<'_>) -> anyhow::Result<()> {
        let sh = self.sh;
        let (context, dockerfile, tag) = (b.context, b.dockerfile, b.tag);
        let mut extra = Vec::new();
        if let Some(target) = b.target {
            extra.extend(["--target".to_string(), target.to_string()]);
        }
        for (k, v) in b.args {
            extra.extend(["--build-arg".to_string(), format!("{k}={v}")]);
        }
        for c in b.cache_from {
            extra.extend(["--cache-from".to_string(), c.clone()]);
        }
        for (name, dir) in b.contexts {
            extra.extend(["--build-context".to_string(), format!("{name}={dir}")]);
        }
        cmd!(
            sh,
            "docker buildx build --progress=quiet --load --build-arg BUILDKIT_INLINE_CACHE=1 -f {dockerfile} -t {tag} {extra...} {context}"
        )
        .quiet()
        .ignore_stdout()
        .run()?;
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
            bail!(
                "`{}` in image {image} (no network) failed: {}",
                argv.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
