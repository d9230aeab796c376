//! The static xtask the tests and the benchmark carry in their bundles
//! (`cache-export --tool-binary`): built once per version of the sources and kept in the
//! test cache (`xtask-static-<digest>`), so that no export of a run builds it again.

use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context as _;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::Shell;

use super::fs::{cached, test_cache_dir};

/// The static xtask built from `root` (the workspace), cached under the digest of its
/// sources; the build uses the workspace's target folder (`target/<triple>/release`), so
/// it is incremental and shared with `cargo xtask cache-export`.
pub fn static_xtask(root: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    static BINARY: OnceLock<Utf8PathBuf> = OnceLock::new();
    if let Some(binary) = BINARY.get() {
        return Ok(binary.clone());
    }
    let digest = crate::tool::sources_digest(root)?;
    let cache = test_cache_dir()?;
    let dir = cached(
        &cache,
        &format!("xtask-static-{}", &digest[..16]),
        |scratch| {
            let started = Instant::now();
            let sh = Shell::new()?;
            let built = crate::tool::build_static(&sh, root, None)?;
            let made = scratch.join("made");
            std::fs::create_dir_all(&made)?;
            std::fs::copy(&built, made.join("xtask"))
                .with_context(|| format!("copying {built}"))?;
            eprintln!(
                "static xtask built in {:.0}s (once per version of its sources; cached in {cache})",
                started.elapsed().as_secs_f64()
            );
            Ok(made)
        },
    )?;
    Ok(BINARY.get_or_init(|| dir.join("xtask")).clone())
}
