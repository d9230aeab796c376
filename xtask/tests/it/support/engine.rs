//! Private Docker engines: one `dockerd` per test, beside any other engine on the machine.
//!
//! Each engine has its own data root, exec root, pid file, socket, client config and
//! bridge (`ip link add … type bridge`; `"bridge": "none"` would break RUN steps and delete
//! the host's `docker0`, see NOTES.md), and no iptables rules: containers reach each other
//! and the host reaches published ports through docker-proxy on 127.0.0.1, but nothing
//! reaches any network outside. Everything lives under `/tmp/xtd/<pid>-<n>` (short, since
//! unix socket paths are limited to 108 bytes), the bridge is `xtd<pid>-<n>`, and the
//! engine's compose networks come from its own address pool, so engines of concurrent
//! test runs never collide. What a killed test run left behind is removed by the next one.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use super::{pid_alive, remove_tree, unmount_below};

/// Parent of every private engine's directory.
const ENGINES_DIR: &str = "/tmp/xtd";
/// Prefix of every private engine's bridge (interface names have at most 15 bytes).
const BRIDGE_PREFIX: &str = "xtd";
/// How long `dockerd` may take to answer, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The containerd image store (Engine 26's `containerd-snapshotter` feature), as on
    /// Docker Desktop and new installs; `false` gives the classic overlay2 store.
    pub containerd_store: bool,
    /// The data root on a tmpfs: builds write faster, and removing a data root that holds
    /// the Debian stand-ins takes 30 s on this machine's disk (mounted with `discard`)
    /// but no time as an unmount.
    pub data_in_memory: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            containerd_store: true,
            data_in_memory: true,
        }
    }
}

/// A running private `dockerd`. Dropping it stops the daemon and its containerd and
/// removes its bridge, networks and directories.
pub struct Engine {
    name: String,
    id: String,
    root: Utf8PathBuf,
    slot: Option<u8>,
    dockerd: Option<Child>,
}

impl Engine {
    /// Starts a private engine; `name` says what it is for (it appears in logs and errors).
    pub fn start(name: &str, opts: EngineOptions) -> anyhow::Result<Engine> {
        static CLEANED: OnceLock<()> = OnceLock::new();
        CLEANED.get_or_init(|| {
            if let Err(err) = remove_stale_engines() {
                eprintln!("warning: removing stale test engines: {err:#}");
            }
        });
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let root = Utf8Path::new(ENGINES_DIR).join(&id);
        let started = Instant::now();
        // From here on, dropping `engine` undoes whatever was done.
        let mut engine = Engine {
            name: name.to_owned(),
            id,
            root,
            slot: None,
            dockerd: None,
        };
        let sh = Shell::new()?;
        for dir in ["data", "x", "client"] {
            sh.create_dir(engine.root.join(dir))?;
        }
        sh.write_file(engine.root.join("name"), name)?;
        if opts.data_in_memory {
            let data = engine.root.join("data");
            cmd!(sh, "mount -t tmpfs -o size=16g,mode=0711 xtd-data {data}")
                .quiet()
                .run()?;
        }
        engine.slot = Some(
            create_bridge(&sh, &engine.id, &engine.root)
                .with_context(|| format!("creating the bridge of test engine {name}"))?,
        );
        engine.spawn(&sh, &opts)?;
        eprintln!(
            "test engine {name} ({}) up in {:.1}s at {}",
            if opts.containerd_store {
                "containerd store"
            } else {
                "classic store"
            },
            started.elapsed().as_secs_f64(),
            engine.host()
        );
        Ok(engine)
    }

    fn spawn(&mut self, sh: &Shell, opts: &EngineOptions) -> anyhow::Result<()> {
        let root = &self.root;
        let pool = format!("10.214.{}.0/24", self.slot.unwrap_or_default());
        let config = serde_json::json!({
            "bridge": self.bridge(),
            "iptables": false,
            "ip6tables": false,
            "ip-forward": false,
            "ip-masq": false,
            "default-address-pools": [{ "base": pool, "size": 28 }],
            "features": { "containerd-snapshotter": opts.containerd_store },
            "shutdown-timeout": 2,
            // so that the containers of a killed test run can be found and killed
            "cgroup-parent": format!("/{BRIDGE_PREFIX}{}", self.id),
        });
        sh.write_file(
            root.join("daemon.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        let log_path = root.join("dockerd.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("x"))
            .arg("--pidfile")
            .arg(root.join("docker.pid"))
            .arg("-H")
            .arg(self.host())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        self.dockerd = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let host = self.host();
        loop {
            let answered = cmd!(sh, "docker -H {host} version")
                .env("DOCKER_CONFIG", self.client_config())
                .quiet()
                .ignore_stderr()
                .ignore_stdout()
                .run()
                .is_ok();
            if answered {
                return Ok(());
            }
            if let Some(status) = self
                .dockerd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "dockerd of test engine {} exited ({status}); its log {log_path}:\n{}",
                    self.name,
                    log_tail(&log_path)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd of test engine {} did not answer within {}s; its log {log_path}:\n{}",
                    self.name,
                    START_TIMEOUT.as_secs(),
                    log_tail(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `unix://…` URL to put in `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.root)
    }

    /// The engine's own directory (data root, exec root, config, `dockerd.log`).
    pub fn root(&self) -> &Utf8Path {
        &self.root
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The engine's bridge: the default network of its containers.
    pub fn bridge(&self) -> String {
        format!("{BRIDGE_PREFIX}{}", self.id)
    }

    /// The Docker client config directory of this engine (empty: no contexts, no builders
    /// from the user's `~/.docker` get in the way).
    pub fn client_config(&self) -> Utf8PathBuf {
        self.root.join("client")
    }

    /// The environment that points `docker` (and `cargo xtask`) at this engine.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DOCKER_HOST", self.host()),
            ("DOCKER_CONFIG", self.client_config().into_string()),
        ]
    }

    /// A shell whose commands talk to this engine.
    pub fn shell(&self) -> anyhow::Result<Shell> {
        let sh = Shell::new()?;
        for (key, value) in self.env() {
            sh.set_var(key, value);
        }
        Ok(sh)
    }

    /// The last lines of `dockerd`'s log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.root.join("dockerd.log"))
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let sh = self.shell()?;
        let mut networks = Vec::new();
        if let Some(child) = self.dockerd.as_mut() {
            if child.try_wait()?.is_none() {
                // Containers first: dockerd would wait `shutdown-timeout` for each.
                let containers = cmd!(sh, "docker ps -aq").quiet().ignore_stderr().read();
                let containers: Vec<String> = containers
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect();
                if !containers.is_empty() {
                    let _ = cmd!(sh, "docker rm -f {containers...}")
                        .quiet()
                        .ignore_stdout()
                        .ignore_stderr()
                        .run();
                }
                let ids = cmd!(sh, "docker network ls -q --no-trunc --filter type=custom")
                    .quiet()
                    .ignore_stderr()
                    .read()
                    .unwrap_or_default();
                networks = ids
                    .lines()
                    .map(|id| format!("br-{}", &id[..12.min(id.len())]))
                    .collect();
                let pid = child.id().to_string();
                let _ = cmd!(sh, "kill -TERM {pid}").quiet().ignore_stderr().run();
                let deadline = Instant::now() + STOP_TIMEOUT;
                while child.try_wait()?.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if child.try_wait()?.is_none() {
                    eprintln!(
                        "dockerd of test engine {} ignored SIGTERM: killing it",
                        self.name
                    );
                    child.kill()?;
                }
            }
            child.wait()?;
        }
        self.dockerd = None;
        teardown(&sh, &self.id, &self.root, self.slot, &networks)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let started = Instant::now();
        match self.stop() {
            Ok(()) => eprintln!(
                "test engine {} stopped and removed in {:.1}s",
                self.name,
                started.elapsed().as_secs_f64()
            ),
            Err(err) => eprintln!(
                "warning: stopping test engine {} ({}): {err:#}",
                self.name, self.root
            ),
        }
    }
}

/// Creates and brings up the bridge `xtd<id>` with `10.213.<slot>.1/24`, the slot being
/// one no other engine (of this or another test run) uses; the slot also chooses the
/// engine's address pool `10.214.<slot>.0/24`.
fn create_bridge(sh: &Shell, id: &str, root: &Utf8Path) -> anyhow::Result<u8> {
    let lock_path = Utf8Path::new(ENGINES_DIR).join(".lock");
    let lock = std::fs::File::create(&lock_path)?;
    lock.lock()?;
    let mut taken = Vec::new();
    for entry in Utf8Path::new(ENGINES_DIR).read_dir_utf8()? {
        if let Ok(slot) = std::fs::read_to_string(entry?.path().join("slot")) {
            taken.push(slot.trim().to_owned());
        }
    }
    let addresses = cmd!(sh, "ip -o -4 addr show").quiet().read()?;
    let slot = (0..=255u8)
        .find(|slot| {
            !taken.contains(&slot.to_string())
                && !addresses.contains(&format!(" 10.213.{slot}."))
                && !addresses.contains(&format!(" 10.214.{slot}."))
        })
        .context("all 256 address slots of test engines are taken")?;
    let bridge = format!("{BRIDGE_PREFIX}{id}");
    let address = format!("10.213.{slot}.1/24");
    sh.write_file(root.join("slot"), slot.to_string())?;
    cmd!(sh, "ip link add {bridge} type bridge").quiet().run()?;
    cmd!(sh, "ip addr add {address} dev {bridge}")
        .quiet()
        .run()?;
    cmd!(sh, "ip link set {bridge} up").quiet().run()?;
    Ok(slot)
}

/// Removes what an engine leaves once its dockerd is gone (or to make it gone): its
/// containerd and shims, mounts, bridges and directory.
fn teardown(
    sh: &Shell,
    id: &str,
    root: &Utf8Path,
    slot: Option<u8>,
    networks: &[String],
) -> anyhow::Result<()> {
    kill_containers(&format!("{BRIDGE_PREFIX}{id}"));
    kill_processes_using(root)?;
    unmount_below(root)?;
    let mut links = vec![format!("{BRIDGE_PREFIX}{id}")];
    links.extend(networks.iter().cloned());
    if let Some(slot) = slot {
        // compose networks of the engine whose ids were not read (a killed run)
        let addresses = cmd!(sh, "ip -o -4 addr show").quiet().read()?;
        for line in addresses.lines() {
            if line.contains(&format!(" 10.214.{slot}.")) {
                if let Some(link) = line.split_whitespace().nth(1) {
                    links.push(link.to_owned());
                }
            }
        }
    }
    for link in links {
        if Utf8Path::new("/sys/class/net").join(&link).exists() {
            cmd!(sh, "ip link del {link}")
                .quiet()
                .ignore_stderr()
                .ignore_status()
                .run()?;
        }
    }
    remove_tree(root)
}

/// SIGKILLs the processes of the engine's containers (a test run killed with its
/// engine leaves them running) and removes the engine's cgroups (cgroup-parent `/name`).
fn kill_containers(name: &str) {
    let Ok(controllers) = Utf8Path::new("/sys/fs/cgroup").read_dir_utf8() else {
        return;
    };
    let mut groups = Vec::new();
    for controller in controllers.flatten() {
        let top = controller.path().join(name);
        if top.is_dir() {
            collect_dirs(&top, &mut groups);
        }
    }
    let mut pids = Vec::new();
    for group in &groups {
        let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().map(str::to_owned));
    }
    if !pids.is_empty() {
        if let Ok(sh) = Shell::new() {
            let _ = cmd!(sh, "kill -KILL {pids...}")
                .quiet()
                .ignore_stderr()
                .run();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // deepest first; a cgroup with processes left refuses, which is harmless
    groups.sort_by_key(|group| std::cmp::Reverse(group.as_str().len()));
    for group in groups {
        let _ = std::fs::remove_dir(group);
    }
}

fn collect_dirs(dir: &Utf8Path, out: &mut Vec<Utf8PathBuf>) {
    out.push(dir.to_owned());
    for entry in dir.read_dir_utf8().into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(entry.path(), out);
        }
    }
}

/// SIGKILLs every process whose command line names a path below `root` (a dockerd whose
/// test was killed, its containerd, the containerd shims).
fn kill_processes_using(root: &Utf8Path) -> anyhow::Result<()> {
    let needle = format!("{root}/");
    let sh = Shell::new()?;
    for _ in 0..50 {
        let mut pids = Vec::new();
        for entry in Utf8Path::new("/proc").read_dir_utf8()? {
            let entry = entry?;
            let Ok(pid) = entry.file_name().parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                pids.push(pid.to_string());
            }
        }
        if pids.is_empty() {
            return Ok(());
        }
        cmd!(sh, "kill -KILL {pids...}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .run()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("processes using {root} survive SIGKILL")
}

/// Removes engines and bridges of test runs that are no longer running (killed, or
/// crashed before their `Drop` ran). Engines of live test processes are left alone.
fn remove_stale_engines() -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let dir = Utf8Path::new(ENGINES_DIR);
    std::fs::create_dir_all(dir)?;
    let owner_is_gone = |id: &str| {
        let pid = id.split('-').next().and_then(|pid| pid.parse::<u32>().ok());
        // our own pid too: a dead process with the same pid left it (this runs first)
        pid.is_some_and(|pid| pid == std::process::id() || !pid_alive(pid))
    };
    for entry in dir.read_dir_utf8()? {
        let entry = entry?;
        let id = entry.file_name();
        if !entry.path().is_dir() || !owner_is_gone(id) {
            continue;
        }
        eprintln!("removing stale test engine {}", entry.path());
        let slot = std::fs::read_to_string(entry.path().join("slot"))
            .ok()
            .and_then(|slot| slot.trim().parse().ok());
        teardown(&sh, id, entry.path(), slot, &[])?;
    }
    for link in Utf8Path::new("/sys/class/net").read_dir_utf8()? {
        let link = link?;
        let Some(id) = link.file_name().strip_prefix(BRIDGE_PREFIX) else {
            continue;
        };
        if owner_is_gone(id) {
            let link = link.file_name();
            cmd!(sh, "ip link del {link}")
                .quiet()
                .ignore_stderr()
                .ignore_status()
                .run()?;
        }
    }
    Ok(())
}

fn log_tail(path: &Utf8Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
