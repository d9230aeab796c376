//! `cargo xtask cache-export` (not yet built).
use std::process::ExitCode;

use xshell::Shell;

use crate::project::ProjectArgs;

/// Not yet available.
#[derive(clap::Args)]
pub struct Args {}

impl Args {
    pub fn run(self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let _ = (sh, project);
        anyhow::bail!("`cache-export` is not available yet in this version of xtask")
    }
}
