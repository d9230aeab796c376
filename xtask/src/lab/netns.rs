//! Network namespaces for the engines that stand for the offline server.
//!
//! A private dockerd on its own bridge still lives in the host's network namespace: it can
//! resolve and pull whatever the host can, and it inherits proxy variables. An engine
//! started with [`EngineOptions::network_namespace`](super::EngineOptions) runs in a
//! namespace of its own that has only loopback (`ip netns add`, `lo` up), entered with
//! `nsenter --net=…` (not `ip netns exec`, which remounts /sys so that dockerd stops with
//! "Devices cgroup isn't mounted"), without proxy variables. The docker client reaches it
//! through its unix socket as usual. Inside, its containers run and reach each other, and
//! nothing leaves; ports they publish are published inside the namespace only.
//! [`prove_offline`] shows the gap instead of assuming it.

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use super::{fs::which, Engine};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Proxy variables that must not reach an offline engine.
const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

fn path(name: &str) -> Utf8PathBuf {
    Utf8Path::new(NETNS_DIR).join(name)
}

/// Creates the namespace `name` with loopback up and nothing else.
pub(super) fn create(sh: &Shell, name: &str) -> anyhow::Result<()> {
    cmd!(sh, "ip netns add {name}").quiet().run()?;
    cmd!(sh, "ip -n {name} link set lo up").quiet().run()?;
    Ok(())
}

/// Deletes the namespace `name`, if there (its interfaces go with it).
pub(super) fn delete(sh: &Shell, name: &str) -> anyhow::Result<()> {
    if path(name).exists() {
        cmd!(sh, "ip netns del {name}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .run()?;
    }
    Ok(())
}

/// The names of the namespaces whose name starts with `prefix`.
pub(super) fn with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = Utf8Path::new(NETNS_DIR).read_dir_utf8() else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// `dockerd` (arguments to be added) in the namespace `name`, without proxy variables.
pub(super) fn dockerd_command(name: &str) -> Command {
    command_in(name, "dockerd")
}

/// `program` (arguments to be added) in the namespace `name`, without proxy variables.
pub(super) fn command_in(name: &str, program: &str) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net={}", path(name))).arg("env");
    for var in PROXY_VARS {
        command.args(["-u", var]);
    }
    command.arg(program);
    command
}

/// A network namespace with only loopback that several engines (and a registry) share:
/// a site with no way out where machines reach each other on 127.0.0.1, as builders of a
/// fleet reach their registry. Named `<prefix><pid>-<what>`, so that what a killed run
/// left is removed by the next; deleted on drop (drop it after the engines in it).
pub struct SharedNamespace {
    name: String,
}

impl SharedNamespace {
    pub fn create(site: &super::Site, what: &str) -> anyhow::Result<SharedNamespace> {
        site.clean_once();
        let name = format!("{}{}-{what}", site.prefix, std::process::id());
        let sh = Shell::new()?;
        delete(&sh, &name)?;
        create(&sh, &name).with_context(|| format!("creating the network namespace {name}"))?;
        Ok(SharedNamespace { name })
    }

    /// The name to give [`super::EngineOptions::join_namespace`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `PROGRAM` (arguments to be added) in this namespace, without proxy variables.
    pub fn command(&self, program: &str) -> Command {
        command_in(&self.name, program)
    }
}

impl Drop for SharedNamespace {
    fn drop(&mut self) {
        if let Ok(sh) = Shell::new() {
            let _ = delete(&sh, &self.name);
        }
    }
}

/// What [`prove_offline`] saw.
#[derive(Debug, Clone)]
pub struct OfflineProof {
    /// The error of `docker pull`, in the engine's words.
    pub pull_error: String,
    /// The address on which the host answered (it connected itself first) and neither
    /// the engine's network namespace nor a container could reach.
    pub target: String,
    /// What the attempt from the engine's network namespace said.
    pub engine_error: String,
    /// What the attempt from a container said (`None`: no image to run one from, as on an
    /// engine that has not imported anything yet).
    pub container_error: Option<String>,
}

/// The first half of [`prove_offline`], which needs nothing but the engine: `docker pull`
/// of an image from Docker Hub fails. Returns the engine's error; fails if the pull worked.
pub fn pull_fails(engine: &Engine) -> anyhow::Result<String> {
    let sh = Shell::new()?;
    let pull = engine
        .docker(&sh, ["pull", "docker.io/library/hello-world:latest"])
        .quiet()
        .ignore_status()
        .output()?;
    if pull.status.success() {
        bail!(
            "engine {} pulled an image from a registry: it is not offline",
            engine.name()
        );
    }
    Ok(String::from_utf8_lossy(&pull.stderr).trim().to_owned())
}

/// Shows that `engine` cannot reach out: a `docker pull` fails, and neither its own
/// network namespace (where dockerd resolves and pulls) nor a container of `image` (which
/// must have busybox's `nc`; `None` on an engine that has no image yet) can open a
/// connection to an address on which the host itself is answering. Fails, saying what got through, otherwise. (`nc`, not busybox's `wget`:
/// the static busybox's `wget` crashes before it connects, which would prove nothing.)
pub fn prove_offline(engine: &Engine, image: Option<&str>) -> anyhow::Result<OfflineProof> {
    let sh = Shell::new()?;
    let pull_error = pull_fails(engine)?;

    let pid = engine
        .dockerd_pid()
        .context("the engine's dockerd is not running")?;
    let busybox = which("busybox").context("busybox not found")?;
    let listener = TcpListener::bind("0.0.0.0:0").context("listening on the host")?;
    let port = listener.local_addr()?.port();
    let host = host_address(&sh)?;
    let target = format!("{host}:{port}");
    let port = port.to_string();
    listener.set_nonblocking(true)?;
    let (accepted, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    std::thread::scope(|scope| {
        scope.spawn(|| serve(&listener, &accepted, &stop));
        let result = (|| {
            // the control: the host itself reaches the address
            let address = target.parse()?;
            TcpStream::connect_timeout(&address, Duration::from_secs(5))
                .with_context(|| format!("the host cannot connect to its own {target}"))?;
            wait_for(&accepted, 1);
            let netns = format!("--net=/proc/{pid}/ns/net");
            let from_engine = cmd!(sh, "nsenter {netns} {busybox} nc -w 5 {host} {port}");
            let engine_error = attempt(from_engine, &accepted, "the engine's network namespace")?;
            let container_error = match image {
                Some(image) => {
                    let from_container =
                        engine.docker(&sh, ["run", "--rm", image, "nc", "-w", "5", &host, &port]);
                    Some(attempt(from_container, &accepted, "a container")?)
                }
                None => None,
            };
            anyhow::Ok((engine_error, container_error))
        })();
        stop.store(true, Ordering::Relaxed);
        result
    })
    .map(|(engine_error, container_error)| OfflineProof {
        pull_error,
        target: target.clone(),
        engine_error,
        container_error,
    })
    .with_context(|| format!("engine {} is not offline ({target})", engine.name()))
}

/// Runs `probe` (an `nc` to the host's listener), which must fail as `nc` fails when it
/// cannot connect (exit code 1) without the listener seeing a connection; returns what
/// it said. A probe that crashes or cannot start proves nothing and is an error too.
fn attempt(probe: xshell::Cmd<'_>, accepted: &AtomicUsize, who: &str) -> anyhow::Result<String> {
    let before = accepted.load(Ordering::Relaxed);
    let shown = probe.to_string();
    let out = probe.quiet().ignore_status().output()?;
    std::thread::sleep(Duration::from_millis(100));
    let said = [out.stderr, out.stdout].concat();
    let said = String::from_utf8_lossy(&said).trim().to_owned();
    if out.status.success() || accepted.load(Ordering::Relaxed) > before {
        bail!("{who} connected to the host");
    }
    if out.status.code() != Some(1) {
        bail!(
            "`{shown}` did not fail as a refused connection does ({}): {said}",
            out.status
        );
    }
    Ok(said)
}

/// Waits (a few seconds at most) until the listener has accepted `count` connections.
fn wait_for(accepted: &AtomicUsize, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while accepted.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Accepts connections, counting them and answering each with a bare HTTP 200, until
/// `stop` (or a minute has passed).
fn serve(listener: &TcpListener, accepted: &AtomicUsize, stop: &AtomicBool) {
    use std::io::Write as _;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match listener.accept() {
            Ok((mut stream, _)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nreached\n");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// An address of the host outside loopback (its first global IPv4 address).
fn host_address(sh: &Shell) -> anyhow::Result<String> {
    let addresses = cmd!(sh, "ip -o -4 addr show scope global").quiet().read()?;
    addresses
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            Some(words.next()?.split('/').next()?.to_owned())
        })
        .context("the host has no global IPv4 address to test against")
}
