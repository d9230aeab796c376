//! `cargo xtask cache-verify`: checks a bundle against its manifest without loading it.
use std::process::ExitCode;

use camino::Utf8PathBuf;
use xshell::Shell;

use crate::bundle::{self, verify_bundle};
use crate::bundle_arg::{BundleArg, TrustArgs};
use crate::project::{self, ProjectArgs};

/// Check every file of a bundle against manifest.yaml and SHA256SUMS
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  cargo xtask cache-verify\n  \
    cargo xtask cache-verify --bundle /mnt/usb/docker-build-cache --json\n  \
    cargo xtask cache-verify --pack /mnt/usb/docker-build-cache.pack-index   # packed, no copy on disk
  \
    cargo xtask cache-verify --bundle /mnt/usb/delta --base /srv/docker-build-cache   # a delta and its base")]
pub struct Args {
    #[command(flatten)]
    pub bundle: BundleArg,
    /// Verify a packed bundle instead (NAME.pack-index or NAME.tar): every part and every
    /// file checked as it streams, nothing written
    #[arg(long, value_name = "INDEX_OR_TAR", conflicts_with = "bundle")]
    pub pack: Option<Utf8PathBuf>,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// For a delta bundle: the folder of the bundle it builds on (default: the folder
    /// beside the delta whose digest is the one the delta names)
    #[arg(long, value_name = "DIR")]
    pub base: Option<Utf8PathBuf>,
}

impl Args {
    pub fn run(self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        if let Some(pack) = &self.pack {
            let report =
                crate::pack::verify_pack(&project::absolute(&project::current_dir(sh)?, pack))?;
            if self.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let dir = self.bundle.dir(sh, project)?;
        let cwd = project::current_dir(sh)?;
        let trust = self.trust.trust(sh)?;
        let (manifest, digest) = bundle::read_checked_any(&dir, &trust)?;
        let mut report = verify_bundle(&dir, &manifest, !self.json, &[])?;
        eprintln!("      Digest sha256:{digest}");
        let delta = crate::delta::DeltaSummary::of(&manifest);
        let mut base_dir = None;
        if manifest.base.is_some() {
            // The delta verifies on its own; what it expects from its base must be there too.
            let given = self.base.as_ref().map(|b| project::absolute(&cwd, b));
            let Some((found, base)) = crate::delta::find_base(&dir, &manifest, given.as_deref())?
            else {
                anyhow::bail!("{}", crate::delta::missing_base(&dir, &manifest));
            };
            let base_report = verify_bundle(&found, &base, !self.json, &[])?;
            report.problems.extend(base_report.problems);
            report.files += base_report.files;
            report.bytes = report.bytes.saturating_add(base_report.bytes);
            eprintln!(
                "        Base {found} ({})",
                manifest.base.as_ref().map_or("", |b| b.digest.as_str())
            );
            base_dir = Some(found.to_string());
        }
        if self.json {
            let mut value = serde_json::to_value(&report)?;
            value["digest"] = serde_json::Value::String(format!("sha256:{digest}"));
            value["delta"] = serde_json::to_value(&delta)?;
            value["base_dir"] = serde_json::to_value(&base_dir)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Ok(if report.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
