//! The private-engine lab: Docker engines started and stopped by the tool itself, and the
//! stand-in base images they are given. `cargo xtask bench` and the integration tests
//! share it; each keeps its engines under its own [`Site`].
//!
//! - [`engine`]: private `dockerd`s ([`Engine`], [`EngineOptions`]), their bridges, and the
//!   removal of what killed runs left.
//! - [`netns`]: network namespaces with only loopback, for engines that stand for the
//!   offline server, and the proof that they cannot reach out.
//! - [`registry`]: a CNCF Distribution registry (Debian's `docker-registry`) in a shared
//!   network namespace, for a fleet of builders.
//! - [`fleet`]: builder engines of a fleet in that namespace, with the registry as their
//!   mirror; `cache-publish` into it; which steps of a builder's log came from the cache.
//! - [`standins`]: base images made locally (no registry is reachable): busybox, and
//!   Debian-based stand-ins of the application's python, node and nginx images.
//! - [`synthetic`]: generated images of any size, for throughput measurements.
//! - [`tool`]: the static xtask the bundles carry, built once per version of its sources.
//! - [`fs`]: removing trees with mounts in them, the cache of slow-to-make inputs, and the
//!   scratch folders every test uses ([`Scratch`], [`test_dir`]).
//!
//! Besides `docker.rs`, this is the only module that runs `docker` and `dockerd`: its
//! users go through [`Engine::docker`] and [`Engine::docker_command`].

pub mod engine;
pub mod fleet;
pub mod fs;
pub mod netns;
pub mod registry;
pub mod standins;
pub mod synthetic;
pub mod tool;

use anyhow::{bail, Context as _};
use xshell::Shell;

pub use engine::{Engine, EngineOptions, Site};
pub use fs::{
    cached, http_get, pid_alive, remove_tree, test_cache_dir, test_dir, unmount_below, which,
    Scratch,
};
pub use netns::{OfflineProof, SharedNamespace};
pub use registry::Registry;
pub use tool::static_xtask;

/// Checks that this machine can run private engines: root, the tools named (besides
/// `dockerd`, `docker` and `ip`, which every engine needs), and the buildx and compose
/// plugins of the `docker` client.
pub fn check_prerequisites(tools: &[&str]) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let uid = xshell::cmd!(sh, "id -u").quiet().read()?;
    if uid.trim() != "0" {
        bail!("private Docker engines need root (uid is {uid})");
    }
    for tool in ["dockerd", "docker", "ip"].iter().chain(tools) {
        if which(tool).is_none() {
            bail!("`{tool}` not found: run scripts/install-test-deps.sh");
        }
    }
    for plugin in ["buildx", "compose"] {
        sh.cmd("docker")
            .args([plugin, "version"])
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .with_context(|| {
                format!("docker {plugin} is missing: run scripts/install-test-deps.sh")
            })?;
    }
    Ok(())
}
