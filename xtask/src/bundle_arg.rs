//! The `--bundle DIR` option, and the one rule for where the bundle folder is: the folder
//! given (against the current directory), else `docker-build-cache/` beside the compose
//! file, else in the current directory. Also the options that say which bundle to trust
//! (`--expect-digest`, `--allowed-signers` with `--signer-identity`).

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

/// Refuses a bundle folder whose path BuildKit cannot be given: the build cache goes to
/// the builds as `type=local,src=PATH,tag=…`, whose fields are separated by commas, so a
/// `,` in PATH would cut it (the export would fail in the middle of its first build).
pub fn check_usable_by_builds(dir: &Utf8Path) -> anyhow::Result<()> {
    if dir.as_str().contains(',') {
        anyhow::bail!(
            "the bundle folder {dir} has a ',' in its path: the builds are handed its cache \
             as `type=local,src=PATH`, whose fields are separated by commas. Choose a folder \
             whose path has no ','"
        );
    }
    Ok(())
}

/// What the bundle must prove before anything else of it is read.
#[derive(clap::Args, Clone, Default)]
pub struct TrustArgs {
    /// Refuse the bundle unless its digest (printed by cache-export) is this one; checked
    /// before anything else of the bundle is read
    #[arg(long, value_name = "SHA256")]
    pub expect_digest: Option<String>,
    /// Refuse the bundle unless SHA256SUMS.sig signs it by --signer-identity in this
    /// allowed-signers file (`ssh-keygen -Y verify`, namespace xtask-bundle)
    #[arg(long, value_name = "FILE", requires = "signer_identity")]
    pub allowed_signers: Option<Utf8PathBuf>,
    /// The signer that --allowed-signers must find (e.g. release@example.com)
    #[arg(long, value_name = "ID", requires = "allowed_signers")]
    pub signer_identity: Option<String>,
}

impl TrustArgs {
    pub fn trust(&self, sh: &Shell) -> anyhow::Result<bundle::Trust> {
        let digest = self
            .expect_digest
            .as_deref()
            .map(bundle::parse_digest)
            .transpose()?;
        let signers = match (&self.allowed_signers, &self.signer_identity) {
            (Some(file), Some(identity)) => Some((
                project::absolute(&project::current_dir(sh)?, file),
                identity.clone(),
            )),
            _ => None,
        };
        Ok(bundle::Trust { digest, signers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_in_the_bundle_path_is_refused_up_front() {
        let err = check_usable_by_builds(Utf8Path::new("/mnt/usb,2/docker-build-cache"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has a ',' in its path"), "{err}");
        check_usable_by_builds(Utf8Path::new("/mnt/usb 2/docker-build-cache")).unwrap();
    }
}
