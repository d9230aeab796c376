//! `cargo xtask cache-rehearse`: the offline rebuild, rehearsed before the bundle is
//! carried. The rehearsal itself (a throwaway engine with no network, the import, a
//! patched copy of the compose files, the builds and what their logs say) is
//! `crate::rehearse`, which `cache-export --rehearse` runs too.

use std::process::ExitCode;

use xshell::Shell;

use crate::bundle_arg::{BundleArg, TrustArgs};
use crate::project::ProjectArgs;
use crate::rehearse::{self, Options};

/// Rehearse the offline rebuild: import the bundle into a throwaway engine with no
/// network and build every service there
#[derive(clap::Args)]
#[command(
    long_about = "Rehearse the offline rebuild before the bundle is carried.\n\n\
        Starts a throwaway Docker engine in a network namespace that has only loopback \
        (under /tmp/xtask-rehearse; your own engine, its images and your compose files are \
        not touched), imports the bundle into it as cache-import does, patches a copy of the \
        compose files as patch-compose does, and runs `docker compose build` there. Per \
        service it says how many steps came from the cache and how many ran, and for the \
        first step that ran its Dockerfile line and the likely reason (a changed context \
        file, a different build arg, a missing base image, the network).\n\n\
        Exit 0 when every service builds offline (with --strict: and every step came from \
        the cache; with --up: and every health check passes), 1 otherwise. The engine, its \
        namespace and its data are removed in every case, Ctrl-C included. Needs root.",
    after_help = "Examples (as root; with sudo: sudo env \"PATH=$PATH\" cargo xtask …):\n  \
        cargo xtask cache-rehearse\n  \
        cargo xtask cache-rehearse --bundle /mnt/usb/docker-build-cache --strict\n  \
        cargo xtask cache-rehearse --up --json > rehearsal.json   # CI\n  \
        cargo xtask cache-export --rehearse"
)]
pub struct Args {
    #[command(flatten)]
    pub bundle: BundleArg,
    /// Also start the stack on the throwaway engine and wait for its health checks
    #[arg(long)]
    pub up: bool,
    /// Fail when any step ran instead of coming from the cache (even if it built offline)
    #[arg(long)]
    pub strict: bool,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
}

impl Args {
    pub fn run(self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let options = Options {
            bundle_dir: self.bundle.dir(sh, project)?,
            trust: self.trust.trust(sh)?,
            up: self.up,
            strict: self.strict,
        };
        let report = rehearse::run(sh, project, &options)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        rehearse::print_verdict(&report);
        Ok(if report.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
