//! `cargo xtask cache-verify`: checks a bundle against its manifest without loading it.
use std::process::ExitCode;

use camino::Utf8PathBuf;
use xshell::Shell;

use crate::bundle::{self, human_bytes, Verification};
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

#[derive(clap::Args, Clone)]
pub struct BundleArg {
    /// The bundle folder (default: docker-build-cache/ beside the compose file)
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<Utf8PathBuf>,
}

impl BundleArg {
    /// The bundle folder, absolute.
    pub fn dir(&self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<Utf8PathBuf> {
        let cwd = crate::project::current_dir(sh)?;
        if let Some(dir) = &self.bundle {
            return Ok(crate::project::absolute(&cwd, dir));
        }
        let base = match project.compose_file(sh) {
            Ok(file) => file.parent().map(|p| p.to_path_buf()).unwrap_or(cwd),
            Err(_) => cwd,
        };
        Ok(base.join(bundle::DEFAULT_DIR))
    }
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

/// Verifies the bundle in `dir`, reporting on stderr; `Err` only when it cannot be read
/// at all, a report with problems when files are bad.
/// Files named in `later` are left for the caller, which verifies them as it streams them.
pub fn verify_bundle(
    dir: &Utf8PathBuf,
    print: bool,
    later: &[String],
) -> anyhow::Result<Verification> {
    let mut manifest = bundle::read_manifest(dir)?;
    manifest.files.retain(|f| !later.contains(&f.path));
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    eprintln!(
        "   Verifying {} files ({}) in {dir}",
        manifest.files.len(),
        human_bytes(total)
    );
    let mut report = bundle::verify(dir, &manifest, &|_, _| {})?;
    report.unlisted.retain(|f| !later.contains(f));
    for file in &report.unlisted {
        eprintln!("warning: {file} is in the bundle folder but not in its manifest; it is ignored");
    }
    if print || !report.ok() {
        for problem in &report.problems {
            eprintln!("error: {problem}");
        }
    }
    if report.ok() {
        eprintln!(
            "    Verified {} files, {} in {:.2}s ({}/s)",
            report.files,
            human_bytes(report.bytes),
            report.seconds,
            human_bytes((report.bytes as f64 / report.seconds.max(1e-6)) as u64)
        );
    } else {
        eprintln!(
            "error: the bundle in {dir} does not verify ({} bad of {} files); nothing was \
             loaded. Copy the named files again from the export machine, or export again.",
            report.problems.len(),
            report.files
        );
    }
    Ok(report)
}
