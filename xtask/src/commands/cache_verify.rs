//! `cargo xtask cache-verify`: checks a bundle against its manifest without loading it.
use std::process::ExitCode;

use xshell::Shell;

use crate::bundle::verify_bundle;
use crate::bundle_arg::BundleArg;
use crate::project::ProjectArgs;

/// Check every file of a bundle against manifest.yaml and SHA256SUMS
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  cargo xtask cache-verify\n  \
    cargo xtask cache-verify --bundle /mnt/usb/docker-build-cache --json")]
pub struct Args {
    #[command(flatten)]
    pub bundle: BundleArg,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

impl Args {
    pub fn run(self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let dir = self.bundle.dir(sh, project)?;
        let report = verify_bundle(&dir, !self.json, &[])?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Ok(if report.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
