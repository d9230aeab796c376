//! What every Docker test needs: a switch, private engines, stand-in base images.
//!
//! The Docker suite is slow and needs root, `dockerd`, `debootstrap` and the package
//! registries, so it runs only when `XTASK_DOCKER_TESTS=1` (scripts/install-test-deps.sh
//! installs what it needs). Without it each Docker test prints a loud notice and passes;
//! with it a test whose engine cannot start fails. Docker tests run one at a time (they
//! fight over CPU, and two BuildKit builds on 2 cores are slower than one after the other),
//! each on its own private engine, which has no way out to any network: what builds there
//! would build on the offline server.

#![allow(dead_code)] // each test module uses a different part of the support code

pub mod engine;
pub mod fault;
pub mod standins;

use std::{
    io::Write,
    sync::{Mutex, MutexGuard, OnceLock},
};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

pub use engine::{Engine, EngineOptions};

/// The environment variable that turns the Docker suite on.
pub const DOCKER_TESTS_VAR: &str = "XTASK_DOCKER_TESTS";

/// Held by a Docker test for its whole run: Docker tests run one at a time.
pub struct DockerSuite {
    _serial: MutexGuard<'static, ()>,
}

impl DockerSuite {
    /// A private engine for this test, with the given options; stopped and removed on drop.
    pub fn engine(&self, name: &str, opts: EngineOptions) -> anyhow::Result<Engine> {
        Engine::start(name, opts)
    }
}

/// `Some` when the Docker suite is on (`XTASK_DOCKER_TESTS=1`); otherwise prints a loud
/// skip notice naming the test and returns `None`. Panics when the suite is on but this
/// machine cannot run it, so that the test fails instead of passing without checking.
///
/// ```ignore
/// let Some(suite) = support::docker_suite() else { return Ok(()) };
/// ```
pub fn docker_suite() -> Option<DockerSuite> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let test = std::thread::current()
        .name()
        .unwrap_or("docker test")
        .to_owned();
    if std::env::var(DOCKER_TESTS_VAR).as_deref() != Ok("1") {
        // Straight to the stderr stream: the test harness captures `eprintln!` of passing
        // tests, and this notice must show.
        let _ = writeln!(
            std::io::stderr(),
            "*** SKIPPED {test}: set {DOCKER_TESTS_VAR}=1 to run the Docker suite \
             (needs root, dockerd, debootstrap; see scripts/install-test-deps.sh) ***"
        );
        return None;
    }
    static PREREQUISITES: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = PREREQUISITES.get_or_init(|| check_prerequisites().map_err(|e| format!("{e:#}")));
    if let Err(err) = checked {
        panic!("{DOCKER_TESTS_VAR}=1 but the Docker suite cannot run here: {err}");
    }
    // A failed Docker test poisons the lock; the next one may still run.
    let serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Some(DockerSuite { _serial: serial })
}

fn check_prerequisites() -> anyhow::Result<()> {
    let sh = xshell::Shell::new()?;
    let uid = xshell::cmd!(sh, "id -u").quiet().read()?;
    if uid != "0" {
        bail!("private engines need root (uid is {uid})");
    }
    for tool in ["dockerd", "docker", "ip", "debootstrap", "busybox", "tar"] {
        if which(tool).is_none() {
            bail!("`{tool}` not found: run scripts/install-test-deps.sh");
        }
    }
    let sh = xshell::Shell::new()?;
    for plugin in ["buildx", "compose"] {
        xshell::cmd!(sh, "docker {plugin} version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .with_context(|| format!("docker {plugin}: run scripts/install-test-deps.sh"))?;
    }
    Ok(())
}

/// The first `tool` on `PATH`.
pub fn which(tool: &str) -> Option<Utf8PathBuf> {
    let path = std::env::var("PATH").ok()?;
    path.split(':')
        .map(|dir| Utf8Path::new(dir).join(tool))
        .find(|candidate| candidate.is_file())
}

/// Where slow-to-make test inputs (the Debian stand-in rootfs, wheelhouses, npm caches)
/// are kept across runs: `$XTASK_TEST_CACHE`, else `~/.cache/xtask-tests`.
pub fn test_cache_dir() -> anyhow::Result<Utf8PathBuf> {
    let dir = match std::env::var("XTASK_TEST_CACHE") {
        Ok(dir) if !dir.is_empty() => Utf8PathBuf::from(dir),
        _ => {
            let home = std::env::var("HOME").context("neither XTASK_TEST_CACHE nor HOME is set")?;
            Utf8PathBuf::from(home).join(".cache/xtask-tests")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating test cache {dir}"))?;
    Ok(dir)
}

/// The repository's root (the parent of `xtask/`).
pub fn repo_root() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_owned()
}

/// Makes `key` in `cache` once, across threads and test processes: returns the cached path
/// if it exists; otherwise, holding a file lock, calls `make` with a fresh scratch dir
/// beside it and renames what `make` returns into place, so that a killed run leaves no
/// half-made entry (only scratch dirs, removed by the next maker).
pub fn cached(
    cache: &Utf8Path,
    key: &str,
    make: impl FnOnce(&Utf8Path) -> anyhow::Result<Utf8PathBuf>,
) -> anyhow::Result<Utf8PathBuf> {
    let target = cache.join(key);
    if target.exists() {
        return Ok(target);
    }
    let lock_path = cache.join(format!("{key}.lock"));
    let lock =
        std::fs::File::create(&lock_path).with_context(|| format!("creating {lock_path}"))?;
    lock.lock()
        .with_context(|| format!("locking {lock_path}"))?;
    if target.exists() {
        return Ok(target); // made by another test process while we waited
    }
    let scratch_prefix = format!("{key}.scratch-");
    for entry in cache.read_dir_utf8()? {
        let entry = entry?;
        if entry.file_name().starts_with(&scratch_prefix) {
            remove_tree(entry.path())?;
        }
    }
    let scratch = cache.join(format!("{scratch_prefix}{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let made = match make(&scratch) {
        Ok(made) => made,
        Err(err) => {
            remove_tree(&scratch)?;
            return Err(err.context(format!("making {target}")));
        }
    };
    std::fs::rename(&made, &target).with_context(|| format!("renaming {made} to {target}"))?;
    remove_tree(&scratch)?;
    Ok(target)
}

/// Removes `dir` and everything in it, after unmounting whatever is mounted below it
/// (a killed dockerd or debootstrap leaves mounts, which `remove_dir_all` would descend).
pub fn remove_tree(dir: &Utf8Path) -> anyhow::Result<()> {
    if !dir.exists() && dir.symlink_metadata().is_err() {
        return Ok(());
    }
    unmount_below(dir)?;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {dir}"))
}

/// Unmounts (lazily, deepest first) every mount point at or below `dir`.
pub fn unmount_below(dir: &Utf8Path) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut below: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(unescape_mount_path)
        .filter(|mount| Utf8Path::new(mount).starts_with(dir))
        .collect();
    below.sort_by_key(|mount| std::cmp::Reverse(mount.len()));
    below.dedup();
    let sh = xshell::Shell::new()?;
    for mount in below {
        xshell::cmd!(sh, "umount --lazy {mount}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .run()?;
    }
    Ok(())
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|oct| u8::from_str_radix(oct, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A process id that names a live process.
pub fn pid_alive(pid: u32) -> bool {
    Utf8Path::new(&format!("/proc/{pid}")).exists()
}

/// A plain HTTP/1.0 GET on the loopback `address` ("127.0.0.1:port"), retried for a few
/// seconds while the server starts; returns the whole response.
pub fn http_get(address: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(address)?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match attempt {
            Ok(response) if !response.is_empty() => return Ok(response),
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            Ok(_) => anyhow::bail!("GET {path} on {address}: empty response"),
            Err(err) => anyhow::bail!("GET {path} on {address}: {err}"),
        }
    }
}

#[test]
fn unescapes_mount_paths() {
    assert_eq!(unescape_mount_path(r"/tmp/a\040b\011c"), "/tmp/a b\tc");
    assert_eq!(unescape_mount_path(r"/plain"), "/plain");
}
