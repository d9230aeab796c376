//! What every Docker test needs: a switch, private engines, stand-in base images.
//!
//! The Docker suite is slow and needs root, `dockerd`, `debootstrap` and the package
//! registries, so it runs only when `XTASK_DOCKER_TESTS=1` (scripts/install-test-deps.sh
//! installs what it needs). Without it each Docker test prints a loud notice and passes;
//! with it a test whose engine cannot start fails. Docker tests run one at a time (they
//! fight over CPU, and two BuildKit builds on 2 cores are slower than one after the other),
//! each on its own private engine, which has no way out to any network: what builds there
//! would build on the offline server.
//!
//! The engines and stand-in images are the crate's lab (`xtask::lab`), shared with
//! `cargo xtask bench`; the tests keep theirs under `/tmp/xtd`, bridges `xtd*`.

#![allow(dead_code)] // each test module uses a different part of the support code

pub mod fault;
pub mod run;

use std::{
    io::Write,
    sync::{Mutex, MutexGuard, OnceLock},
};

use camino::{Utf8Path, Utf8PathBuf};

mod offline_engine;

pub use xtask::lab::{http_get, standins, unmount_below, Engine, EngineOptions, Site};

/// The environment variable that turns the Docker suite on.
pub const DOCKER_TESTS_VAR: &str = "XTASK_DOCKER_TESTS";

/// Where the tests' engines live: apart from the benchmark's (`/tmp/xtb`, `xtb*`).
pub const TEST_SITE: Site = Site {
    dir: "/tmp/xtd",
    prefix: "xtd",
    bridge_net: 213,
    pool_net: 214,
    label: "test engine",
};

/// Held by a Docker test for its whole run: Docker tests run one at a time.
pub struct DockerSuite {
    _serial: MutexGuard<'static, ()>,
}

impl DockerSuite {
    /// A private engine for this test, with the given options; stopped and removed on drop.
    pub fn engine(&self, name: &str, opts: EngineOptions) -> anyhow::Result<Engine> {
        Engine::start(&TEST_SITE, name, opts)
    }

    /// An engine that stands for the offline server: in its own network namespace with only
    /// loopback, and shown to have no way out (a pull fails, its namespace reaches nothing)
    /// before the test uses it.
    pub fn offline_engine(&self, name: &str, opts: EngineOptions) -> anyhow::Result<Engine> {
        let engine = self.engine(
            name,
            EngineOptions {
                network_namespace: true,
                ..opts
            },
        )?;
        let proof = engine.prove_offline(None)?;
        eprintln!("offline engine {name}: {proof:?}");
        Ok(engine)
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
    let checked = PREREQUISITES.get_or_init(|| {
        xtask::lab::check_prerequisites(&["debootstrap", "busybox", "tar", "nsenter"])
            .map_err(|e| format!("{e:#}"))
    });
    if let Err(err) = checked {
        panic!("{DOCKER_TESTS_VAR}=1 but the Docker suite cannot run here: {err}");
    }
    // A failed Docker test poisons the lock; the next one may still run.
    let serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Some(DockerSuite { _serial: serial })
}

/// The repository's root (the parent of `xtask/`).
pub fn repo_root() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_owned()
}
