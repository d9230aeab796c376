//! Private Docker engines: one `dockerd` per use, beside any other engine on the machine.
//!
//! Each engine has its own data root, exec root, pid file, socket, client config and
//! bridge (`ip link add … type bridge`; `"bridge": "none"` would break RUN steps and delete
//! the host's `docker0`, see NOTES.md), and no iptables rules: containers reach each other
//! and the host reaches published ports through docker-proxy on 127.0.0.1, but nothing
//! reaches any network outside. Everything of an engine lives under
//! `<site dir>/<pid>-<n>` (short, since unix socket paths are limited to 108 bytes), its
//! bridge is `<prefix><pid>-<n>`, and its compose networks come from its own address pool,
//! so engines of concurrent runs never collide; a [`Site`] keeps the tests' engines apart
//! from the benchmark's. What a killed run left behind is removed by the next one.

use std::{
    collections::HashSet,
    ffi::OsStr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use super::fs::{kill_processes_using, pid_alive, remove_tree, tail, unmount_below};
use super::netns::{self, OfflineProof};

/// How long `dockerd` may take to answer, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a family of private engines lives, so that two families (the integration tests,
/// the benchmark) never share directories, bridges or addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// Parent of every engine's directory: short, since unix socket paths are limited.
    pub dir: &'static str,
    /// Prefix of every engine's bridge and cgroup parent (interface names have at most
    /// 15 bytes: keep it to 3).
    pub prefix: &'static str,
    /// Bridges get `10.<bridge_net>.<slot>.1/24` ...
    pub bridge_net: u8,
    /// ... and compose networks come from the pool `10.<pool_net>.<slot>.0/24`.
    pub pool_net: u8,
    /// What the engines are called in messages ("test engine").
    pub label: &'static str,
}

impl Site {
    /// A directory of this process under the site, beside its engines (`<dir>/<pid>-<what>`),
    /// removed with the engines' leftovers once this process is gone.
    pub fn process_dir(&self, what: &str) -> Utf8PathBuf {
        Utf8Path::new(self.dir).join(format!("{}-{what}", std::process::id()))
    }

    /// Removes what earlier, no longer running processes left under this site, once per
    /// process (the first engine of a site calls it).
    pub fn clean_once(&self) {
        static CLEANED: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
        let mut cleaned = CLEANED.lock().unwrap_or_else(|p| p.into_inner());
        if cleaned.get_or_insert_with(HashSet::new).insert(self.dir) {
            if let Err(err) = remove_stale_engines(self) {
                eprintln!("warning: removing stale {}s: {err:#}", self.label);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The containerd image store (Engine 26's `containerd-snapshotter` feature), as on
    /// Docker Desktop and new installs; `false` gives the classic overlay2 store.
    pub containerd_store: bool,
    /// The data root on a tmpfs: builds write faster, and a data root that holds the Debian
    /// stand-ins is removed as an unmount instead of a slow delete on a disk mounted with
    /// `discard`. The benchmark keeps it on disk, as a server does.
    pub data_in_memory: bool,
    /// Run in a network namespace of its own that has only loopback, without proxy
    /// variables (see [`super::netns`]): for an engine that stands for the offline server,
    /// which then provably cannot reach out ([`Engine::prove_offline`]). Ports its
    /// containers publish are published inside that namespace, out of the host's reach.
    pub network_namespace: bool,
    /// A containerd of the engine's own, under its directories. Without it, dockerd uses
    /// the machine's containerd when one listens on /run/containerd/containerd.sock (as
    /// with docker-ce), and would then share its image store (namespace `moby`) with the
    /// user's engine: what runs on users' machines (`cache-rehearse`) sets it.
    pub private_containerd: bool,
    /// Run in this existing namespace ([`super::netns::SharedNamespace::name`]) instead,
    /// beside other engines: each keeps its own bridge and subnet there.
    pub join_namespace: Option<String>,
    /// More `daemon.json` settings (an object), e.g. `registry-mirrors` and
    /// `insecure-registries` for a builder of a fleet.
    pub daemon_config: serde_json::Value,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            containerd_store: true,
            data_in_memory: true,
            network_namespace: false,
            private_containerd: false,
            join_namespace: None,
            daemon_config: serde_json::Value::Null,
        }
    }
}

/// A running private `dockerd`. Dropping it stops the daemon and its containerd and
/// removes its bridge, networks and directories.
pub struct Engine {
    site: Site,
    name: String,
    id: String,
    root: Utf8PathBuf,
    slot: Option<u8>,
    /// The engine's own network namespace, when it has one (named as its bridge).
    netns: Option<String>,
    dockerd: Option<Child>,
    /// The engine's own containerd ([`EngineOptions::private_containerd`]).
    containerd: Option<Child>,
}

impl Engine {
    /// Starts a private engine under `site`; `name` says what it is for (it appears in
    /// logs and errors).
    pub fn start(site: &Site, name: &str, opts: EngineOptions) -> anyhow::Result<Engine> {
        site.clean_once();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let root = Utf8Path::new(site.dir).join(&id);
        let started = Instant::now();
        // From here on, dropping `engine` undoes whatever was done.
        let mut engine = Engine {
            site: *site,
            name: name.to_owned(),
            id,
            root,
            slot: None,
            netns: None,
            dockerd: None,
            containerd: None,
        };
        let sh = Shell::new()?;
        for dir in ["data", "x", "client"] {
            sh.create_dir(engine.root.join(dir))?;
        }
        sh.write_file(engine.root.join("name"), name)?;
        if opts.data_in_memory {
            let data = engine.root.join("data");
            let source = format!("{}-data", site.prefix);
            cmd!(sh, "mount -t tmpfs -o size=16g,mode=0711 {source} {data}")
                .quiet()
                .run()?;
        }
        if let Some(shared) = &opts.join_namespace {
            engine.netns = Some(shared.clone());
        } else if opts.network_namespace {
            let name = engine.bridge();
            engine.netns = Some(name.clone());
            netns::create(&sh, &name).with_context(|| {
                format!("creating the network namespace of {} {name}", site.label)
            })?;
        }
        engine.slot = Some(
            create_bridge(&sh, site, &engine.id, &engine.root, engine.netns.as_deref())
                .with_context(|| format!("creating the bridge of {} {name}", site.label))?,
        );
        engine.spawn(&sh, &opts)?;
        eprintln!(
            "{} {name} ({}{}) up in {:.1}s at {}",
            site.label,
            if opts.containerd_store {
                "containerd store"
            } else {
                "classic store"
            },
            match (&opts.join_namespace, opts.network_namespace) {
                (Some(_), _) => ", shared network namespace",
                (None, true) => ", own network namespace",
                (None, false) => "",
            },
            started.elapsed().as_secs_f64(),
            engine.host()
        );
        Ok(engine)
    }

    fn spawn(&mut self, sh: &Shell, opts: &EngineOptions) -> anyhow::Result<()> {
        let containerd = match opts.private_containerd {
            true => Some(self.start_containerd(sh)?),
            false => None,
        };
        let root = &self.root;
        let pool = format!(
            "10.{}.{}.0/24",
            self.site.pool_net,
            self.slot.unwrap_or_default()
        );
        let mut config = serde_json::json!({
            "bridge": self.bridge(),
            "iptables": false,
            "ip6tables": false,
            "ip-forward": false,
            "ip-masq": false,
            "default-address-pools": [{ "base": pool, "size": 28 }],
            "features": { "containerd-snapshotter": opts.containerd_store },
            "shutdown-timeout": 2,
            // so that the containers of a killed run can be found and killed
            "cgroup-parent": format!("/{}", self.bridge()),
        });
        if let (Some(config), Some(extra)) =
            (config.as_object_mut(), opts.daemon_config.as_object())
        {
            config.extend(extra.clone());
        }
        sh.write_file(
            root.join("daemon.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        let log_path = root.join("dockerd.log");
        let log = std::fs::File::create(&log_path)?;
        let mut dockerd = match &self.netns {
            Some(name) => netns::dockerd_command(name),
            None => Command::new("dockerd"),
        };
        if let Some(socket) = containerd {
            dockerd.arg("--containerd").arg(socket);
        }
        let child = dockerd
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
        self.wait_until_answering(sh, &log_path)
    }

    /// Starts the engine's own containerd (in its network namespace, if it has one), its
    /// root in the data root and its state in the exec root, as dockerd's managed one;
    /// returns its socket once it listens.
    fn start_containerd(&mut self, sh: &Shell) -> anyhow::Result<Utf8PathBuf> {
        let root = &self.root;
        let state = root.join("x/containerd");
        let socket = state.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{socket}\"\n\
             [ttrpc]\n  address = \"{state}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{state}/containerd-debug.sock\"\n",
            root.join("data/containerd")
        );
        let config_path = root.join("containerd.toml");
        sh.write_file(&config_path, config)?;
        let log_path = root.join("containerd.log");
        let log = std::fs::File::create(&log_path)?;
        let mut containerd = match &self.netns {
            Some(name) => netns::command_in(name, "containerd"),
            None => Command::new("containerd"),
        };
        let child = containerd
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        self.containerd = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if let Some(status) = self
                .containerd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "containerd of {} {} exited ({status}); its log {log_path}:\n{}",
                    self.site.label,
                    self.name,
                    tail(&log_path, 30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd of {} {} did not listen on {socket} within {}s",
                    self.site.label,
                    self.name,
                    START_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(socket)
    }

    fn wait_until_answering(&mut self, sh: &Shell, log_path: &Utf8Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let answered = self
                .docker(sh, ["version"])
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
                    "dockerd of {} {} exited ({status}); its log {log_path}:\n{}",
                    self.site.label,
                    self.name,
                    tail(log_path, 30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd of {} {} did not answer within {}s; its log {log_path}:\n{}",
                    self.site.label,
                    self.name,
                    START_TIMEOUT.as_secs(),
                    tail(log_path, 30)
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
        format!("{}{}", self.site.prefix, self.id)
    }

    /// The process id of the engine's dockerd, while it runs.
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(Child::id)
    }

    /// The engine's own network namespace (`/run/netns/<name>`), if it has one.
    pub fn network_namespace(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Shows that this engine cannot reach out: a `docker pull` fails, and a container of
    /// `image` (with busybox's `nc`, e.g. [`super::standins::BUSYBOX`]) can connect to
    /// an address the host answers on, nor can the engine's own network namespace. An
    /// error says what got through.
    pub fn prove_offline(&self, image: Option<&str>) -> anyhow::Result<OfflineProof> {
        netns::prove_offline(self, image)
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

    /// `docker ARGS…` against this engine, on `sh` (whatever `sh` points at: the
    /// engine's environment is set on the command). The lab's one way for its users to
    /// run the `docker` client; callers add `.quiet()`, `.read()` and so on.
    pub fn docker<'a, I>(&self, sh: &'a Shell, args: I) -> xshell::Cmd<'a>
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        sh.cmd("docker").envs(self.env()).args(args)
    }

    /// `docker ARGS…` against this engine as a `std::process::Command`, for streams
    /// (`docker load`, `docker import` of data written on the fly).
    pub fn docker_command<I>(&self, args: I) -> Command
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let mut command = Command::new("docker");
        command.args(args).envs(self.env());
        command
    }

    /// The socket of the engine's containerd: dockerd's managed one and the engine's own
    /// ([`EngineOptions::private_containerd`]) both listen under the exec root; where
    /// neither does, dockerd found the machine's containerd (as with docker-ce) and uses
    /// it, its images in namespace `moby` beside any other engine's.
    pub fn containerd_socket(&self) -> Utf8PathBuf {
        let own = self.root.join("x/containerd/containerd.sock");
        match own.exists() {
            true => own,
            false => Utf8PathBuf::from("/run/containerd/containerd.sock"),
        }
    }

    /// `ctr ARGS…` on the engine's containerd, in dockerd's namespace `moby` (where the
    /// containerd image store keeps its images): what the bench uses to take `docker
    /// load` apart.
    pub fn ctr<'a, I>(&self, sh: &'a Shell, args: I) -> xshell::Cmd<'a>
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let socket = self.containerd_socket();
        cmd!(sh, "ctr -a {socket} -n moby").args(args)
    }

    /// The last lines of `dockerd`'s log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.root.join("dockerd.log"), 30)
    }

    /// Stops the daemon; returns the links of the engine's compose networks, for the
    /// teardown.
    fn stop_daemon(&mut self) -> anyhow::Result<Vec<String>> {
        let sh = Shell::new()?;
        let mut networks = Vec::new();
        if let Some(mut child) = self.dockerd.take() {
            if child.try_wait()?.is_none() {
                self.remove_containers(&sh);
                networks = self.network_links(&sh);
                let pid = child.id().to_string();
                let _ = cmd!(sh, "kill -TERM {pid}").quiet().ignore_stderr().run();
                let deadline = Instant::now() + STOP_TIMEOUT;
                while child.try_wait()?.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if child.try_wait()?.is_none() {
                    eprintln!(
                        "dockerd of {} {} ignored SIGTERM: killing it",
                        self.site.label, self.name
                    );
                    child.kill()?;
                }
            }
            child.wait()?;
        }
        if let Some(mut child) = self.containerd.take() {
            if child.try_wait()?.is_none() {
                let pid = child.id().to_string();
                let _ = cmd!(sh, "kill -TERM {pid}").quiet().ignore_stderr().run();
                let deadline = Instant::now() + STOP_TIMEOUT;
                while child.try_wait()?.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if child.try_wait()?.is_none() {
                    child.kill()?;
                }
            }
            child.wait()?;
        }
        Ok(networks)
    }

    /// Containers first: dockerd would wait `shutdown-timeout` for each.
    fn remove_containers(&self, sh: &Shell) {
        let containers = self
            .docker(sh, ["ps", "-aq"])
            .quiet()
            .ignore_stderr()
            .read()
            .unwrap_or_default();
        let containers: Vec<&str> = containers.lines().collect();
        if !containers.is_empty() {
            let _ = self
                .docker(sh, ["rm", "-f"])
                .args(containers)
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run();
        }
    }

    /// The bridges (`br-<id>`) of the engine's compose networks.
    fn network_links(&self, sh: &Shell) -> Vec<String> {
        let ids = self
            .docker(
                sh,
                [
                    "network",
                    "ls",
                    "-q",
                    "--no-trunc",
                    "--filter",
                    "type=custom",
                ],
            )
            .quiet()
            .ignore_stderr()
            .read()
            .unwrap_or_default();
        ids.lines()
            .map(|id| format!("br-{}", &id[..12.min(id.len())]))
            .collect()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let networks = self.stop_daemon()?;
        teardown(&self.site, &self.id, &self.root, self.slot, &networks)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let started = Instant::now();
        match self.stop() {
            Ok(()) => eprintln!(
                "{} {} stopped and removed in {:.1}s",
                self.site.label,
                self.name,
                started.elapsed().as_secs_f64()
            ),
            Err(err) => eprintln!(
                "warning: stopping {} {} ({}): {err:#}",
                self.site.label, self.name, self.root
            ),
        }
    }
}

/// Creates and brings up the bridge `<prefix><id>` with `10.<bridge_net>.<slot>.1/24`, the
/// slot being one no other engine (of this or another run) uses; the slot also chooses
/// the engine's address pool `10.<pool_net>.<slot>.0/24`.
/// The bridge is made inside `netns` when the engine has one.
fn create_bridge(
    sh: &Shell,
    site: &Site,
    id: &str,
    root: &Utf8Path,
    netns: Option<&str>,
) -> anyhow::Result<u8> {
    let lock_path = Utf8Path::new(site.dir).join(".lock");
    let lock = std::fs::File::create(&lock_path)?;
    lock.lock()?;
    let mut taken = Vec::new();
    for entry in Utf8Path::new(site.dir).read_dir_utf8()? {
        if let Ok(slot) = std::fs::read_to_string(entry?.path().join("slot")) {
            taken.push(slot.trim().to_owned());
        }
    }
    let addresses = cmd!(sh, "ip -o -4 addr show").quiet().read()?;
    let (bridge_net, pool_net) = (site.bridge_net, site.pool_net);
    let slot = (0..=255u8)
        .find(|slot| {
            !taken.contains(&slot.to_string())
                && !addresses.contains(&format!(" 10.{bridge_net}.{slot}."))
                && !addresses.contains(&format!(" 10.{pool_net}.{slot}."))
        })
        .with_context(|| format!("all 256 address slots of {}s are taken", site.label))?;
    let bridge = format!("{}{id}", site.prefix);
    let address = format!("10.{bridge_net}.{slot}.1/24");
    sh.write_file(root.join("slot"), slot.to_string())?;
    let ns: &[&str] = &netns.map(|name| vec!["-n", name]).unwrap_or_default();
    cmd!(sh, "ip {ns...} link add {bridge} type bridge")
        .quiet()
        .run()?;
    cmd!(sh, "ip {ns...} addr add {address} dev {bridge}")
        .quiet()
        .run()?;
    cmd!(sh, "ip {ns...} link set {bridge} up").quiet().run()?;
    Ok(slot)
}

/// Removes what an engine leaves once its dockerd is gone (or to make it gone): its
/// containers, containerd and shims, mounts, network namespace, bridges and directory.
fn teardown(
    site: &Site,
    id: &str,
    root: &Utf8Path,
    slot: Option<u8>,
    networks: &[String],
) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let bridge = format!("{}{id}", site.prefix);
    kill_containers(&bridge);
    kill_processes_using(root)?;
    unmount_below(root)?;
    netns::delete(&sh, &bridge)?;
    let mut links = vec![bridge];
    links.extend(networks.iter().cloned());
    if let Some(slot) = slot {
        // compose networks of the engine whose ids were not read (a killed run)
        let addresses = cmd!(sh, "ip -o -4 addr show").quiet().read()?;
        let pool = format!(" 10.{}.{slot}.", site.pool_net);
        for line in addresses.lines().filter(|line| line.contains(&pool)) {
            if let Some(link) = line.split_whitespace().nth(1) {
                links.push(link.to_owned());
            }
        }
    }
    for link in links {
        delete_link(&sh, &link)?;
    }
    remove_tree(root)
}

fn delete_link(sh: &Shell, link: &str) -> anyhow::Result<()> {
    if Utf8Path::new("/sys/class/net").join(link).exists() {
        cmd!(sh, "ip link del {link}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .run()?;
    }
    Ok(())
}

/// SIGKILLs the processes of the engine's containers (a run killed with its engine leaves
/// them running) and removes the engine's cgroups (cgroup-parent `/name`).
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

/// Whether the process that made `<pid>-…` (or `<pid>`) is gone. Our own pid counts as
/// gone: this runs before this process makes anything, so a dead process with the same
/// pid left it.
fn owner_is_gone(id: &str) -> bool {
    let pid = id.split('-').next().and_then(|pid| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| pid == std::process::id() || !pid_alive(pid))
}

/// Removes engines, directories and bridges of runs that are no longer running (killed,
/// or crashed before their `Drop` ran), with their network namespaces. Those of live
/// processes are left alone.
fn remove_stale_engines(site: &Site) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let dir = Utf8Path::new(site.dir);
    std::fs::create_dir_all(dir)?;
    for entry in dir.read_dir_utf8()? {
        let entry = entry?;
        let id = entry.file_name();
        if !entry.path().is_dir() || !owner_is_gone(id) {
            continue;
        }
        eprintln!("removing stale {} {}", site.label, entry.path());
        let slot = std::fs::read_to_string(entry.path().join("slot"))
            .ok()
            .and_then(|slot| slot.trim().parse().ok());
        teardown(site, id, entry.path(), slot, &[])?;
    }
    for link in Utf8Path::new("/sys/class/net").read_dir_utf8()? {
        let link = link?;
        let Some(id) = link.file_name().strip_prefix(site.prefix) else {
            continue;
        };
        if owner_is_gone(id) {
            delete_link(&sh, link.file_name())?;
        }
    }
    for name in netns::with_prefix(site.prefix) {
        if owner_is_gone(&name[site.prefix.len()..]) {
            netns::delete(&sh, &name)?;
        }
    }
    Ok(())
}
