//! The `--bundle DIR` option, and the one rule for where the bundle folder is: the folder
//! given (against the current directory), else `docker-build-cache/` beside the compose
//! file, else in the current directory.

use camino::{Utf8Path, Utf8PathBuf};
use xshell::Shell;

use crate::bundle;
use crate::project::{self, ProjectArgs};

#[derive(clap::Args, Clone)]
pub struct BundleArg {
    /// The bundle folder (default: docker-build-cache/ beside the compose file)
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<Utf8PathBuf>,
}

impl BundleArg {
    /// The bundle folder, absolute.
    pub fn dir(&self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<Utf8PathBuf> {
        bundle_dir(sh, self.bundle.as_deref(), project)
    }
}

/// The bundle folder, absolute: `given` if any, else the default beside the compose file
/// (or in the current directory when there is no compose file).
pub fn bundle_dir(
    sh: &Shell,
    given: Option<&Utf8Path>,
    project: &ProjectArgs,
) -> anyhow::Result<Utf8PathBuf> {
    let cwd = project::current_dir(sh)?;
    if let Some(dir) = given {
        return Ok(project::absolute(&cwd, dir));
    }
    let base = match project.compose_file(sh) {
        Ok(file) => file.parent().map(|p| p.to_path_buf()).unwrap_or(cwd),
        Err(_) => cwd,
    };
    Ok(base.join(bundle::DEFAULT_DIR))
}
