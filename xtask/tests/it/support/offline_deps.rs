//! The application's dependencies, fetched on the host for builds that have no network:
//! a pip wheelhouse (`pip install --no-index --find-links`) and an npm cache
//! (`npm ci --offline --cache`), handed to the builds as the build contexts `wheels` and
//! `npm-cache`. Both are cached in the test cache dir by a hash of their manifest.

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use super::{cached, test_cache_dir};

/// The Python of the Debian stand-in of `python:3.9-slim` (bookworm's).
pub const STANDIN_PYTHON: &str = "3.11";

/// A wheelhouse with every wheel `requirements` needs on CPython `python` ("3.11") on
/// x86_64 glibc Linux: the interpreter inside the image, not the host's.
pub fn wheelhouse(requirements: &Utf8Path, python: &str) -> anyhow::Result<Utf8PathBuf> {
    let text = std::fs::read(requirements).with_context(|| format!("reading {requirements}"))?;
    let tag = format!("cp{}", python.replace('.', ""));
    let key = format!("wheels-{tag}-{}", short_hash(&text));
    cached(&test_cache_dir()?, &key, |scratch| {
        let sh = Shell::new()?;
        let dir = scratch.join("wheels");
        let platforms = ["manylinux2014_x86_64", "manylinux_2_28_x86_64"]
            .into_iter()
            .flat_map(|platform| ["--platform", platform]);
        cmd!(
            sh,
            "python3 -m pip download --quiet --disable-pip-version-check -r {requirements}
                -d {dir} --only-binary=:all: --python-version {python} --implementation cp
                --abi {tag} {platforms...}"
        )
        .run()
        .with_context(|| format!("downloading wheels for {requirements}"))?;
        Ok(dir)
    })
}

/// An npm cache directory (it holds `_cacache`) with every tarball of `lockfile`,
/// including the optional native packages of both glibc and musl x86_64 Linux (Next.js's
/// SWC compiler), so that `npm ci --offline --cache DIR` works in any Linux image.
pub fn npm_cache(lockfile: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    let lock = std::fs::read(lockfile).with_context(|| format!("reading {lockfile}"))?;
    let key = format!("npm-cache-{}", short_hash(&lock));
    let project = lockfile
        .parent()
        .context("lockfile has no parent")?
        .to_owned();
    cached(&test_cache_dir()?, &key, |scratch| {
        let sh = Shell::new()?;
        let cache = scratch.join("npm-cache");
        let work = scratch.join("project");
        sh.create_dir(&work)?;
        sh.copy_file(project.join("package.json"), &work)?;
        sh.copy_file(lockfile, &work)?;
        sh.change_dir(&work);
        for libc in ["glibc", "musl"] {
            cmd!(
                sh,
                "npm ci --cache {cache} --ignore-scripts --no-audit --no-fund --loglevel=error
                    --os linux --cpu x64 --libc {libc}"
            )
            .run()
            .with_context(|| format!("filling an npm cache from {lockfile} ({libc})"))?;
            sh.remove_path(work.join("node_modules"))?;
        }
        Ok(cache)
    })
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
