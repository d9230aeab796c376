//! The compose file, resolved as `docker compose config` resolves it (placeholder).
use std::collections::BTreeMap;

use camino::{Utf8Path, Utf8PathBuf};

/// Reads a file by absolute path. Injected so the model does no I/O of its own.
pub type ReadFile<'a> = &'a dyn Fn(&Utf8Path) -> std::io::Result<String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeModel {
    /// Absolute path of the compose file.
    pub file: Utf8PathBuf,
    /// The top-level `name:`, interpolated.
    pub name: Option<String>,
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    pub image: Option<String>,
    pub build: Option<Build>,
    pub profiles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub context: Context,
    pub dockerfile: DockerfileSource,
    /// Build args with a value. `- KEY` with no value takes the environment's value, as
    /// compose does, and is left out when the environment has none.
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub cache_from: Vec<String>,
    pub additional_contexts: BTreeMap<String, String>,
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// An absolute directory.
    Local(Utf8PathBuf),
    /// A git URL or other remote context: cannot be rebuilt offline.
    Remote(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileSource {
    /// Absolute path (`dockerfile:` resolved against the context; `Dockerfile` by default).
    Path(Utf8PathBuf),
    Inline(String),
}

/// Loads the compose file at `file` (absolute) with the process environment `env`;
/// `.env` beside the compose file fills what the environment does not set.
pub fn load(
    file: &Utf8Path,
    env: &BTreeMap<String, String>,
    read: ReadFile<'_>,
) -> anyhow::Result<ComposeModel> {
    let _ = (file, env, read);
    anyhow::bail!("compose model: not yet implemented")
}
