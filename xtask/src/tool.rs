//! The tool in the bundle: `bin/xtask`, a static build of this crate that runs on a server
//! with no cargo, and `tool/xtask-vendor.tar.gz`, the crates its sources need (with the
//! cargo configuration that builds from them), for a server with Rust and no network.
//!
//! Both are keyed on the digest of the tool's sources (`xtask/`, the workspace's
//! `Cargo.toml` and `Cargo.lock`): a re-export with the same sources reuses the previous
//! bundle's files, checked against its manifest, instead of building and vendoring again.
//! The sources are found where `cargo xtask` runs them from (cargo's `CARGO_MANIFEST_DIR`
//! at run time), never at a path fixed when the binary was compiled: the bundled binary
//! runs on machines that have no such path.

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest as _, Sha256};
use xshell::{cmd, Shell};

use crate::bundle;
use crate::model::manifest::{
    FileEntry, Manifest, ToolEntry, TOOL_BINARY, TOOL_VENDOR, VENDOR_CONFIG, VENDOR_DIR,
};

/// What the export carries of the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Nothing (`--no-tool`).
    None,
    /// A static build of the sources, and the vendored crates.
    Build,
    /// This binary (`--tool-binary`), and the vendored crates when the sources are here.
    Prebuilt(Utf8PathBuf),
}

/// The platform a binary built here runs on: its Rust target, and `uname -s` / `uname -m`.
pub struct Platform {
    pub target: String,
    pub os: &'static str,
    pub machine: &'static str,
}

/// The platform of this binary (and of the static build made here: only the host's target
/// is built).
pub fn host_platform() -> Platform {
    let machine = std::env::consts::ARCH;
    Platform {
        target: format!("{machine}-unknown-linux-gnu"),
        os: if std::env::consts::OS == "linux" {
            "Linux"
        } else {
            std::env::consts::OS
        },
        machine,
    }
}

/// The workspace whose `xtask/` this is, when run by cargo (`cargo xtask`, `cargo run`,
/// the tests): cargo sets `CARGO_MANIFEST_DIR` for the process it runs.
pub fn sources_root() -> Option<Utf8PathBuf> {
    let dir = Utf8PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    let root = dir.parent()?.to_path_buf();
    (root.join("Cargo.lock").is_file() && root.join("xtask/Cargo.toml").is_file()).then_some(root)
}

/// The files the static binary is built from, relative to the workspace root, sorted.
fn source_files(root: &Utf8Path) -> anyhow::Result<Vec<String>> {
    let mut files: Vec<String> = ["Cargo.toml", "Cargo.lock", "xtask/Cargo.toml"]
        .into_iter()
        .map(str::to_string)
        .collect();
    for file in bundle::list_files(&root.join("xtask/src"))? {
        files.push(format!("xtask/src/{file}"));
    }
    files.sort();
    Ok(files)
}

/// sha256 of the tool's sources: of `sha256sum`-style lines for each source file.
pub fn sources_digest(root: &Utf8Path) -> anyhow::Result<String> {
    let mut lines = String::new();
    for file in source_files(root)? {
        let bytes =
            std::fs::read(root.join(&file)).with_context(|| format!("reading {root}/{file}"))?;
        lines.push_str(&format!(
            "{}  {file}\n",
            bundle::hex(&Sha256::digest(&bytes))
        ));
    }
    Ok(bundle::hex(&Sha256::digest(lines.as_bytes())))
}

/// Builds the static binary (`+crt-static`: a static-pie ELF, no dynamic glibc) from the
/// workspace `root` into `target_dir` (default: the workspace's own); returns its path.
pub fn build_static(
    sh: &Shell,
    root: &Utf8Path,
    target_dir: Option<&Utf8Path>,
) -> anyhow::Result<Utf8PathBuf> {
    let target = host_platform().target;
    let target_dir = target_dir.map_or_else(|| root.join("target"), Utf8Path::to_path_buf);
    let manifest = root.join("Cargo.toml");
    crate::say!("    Building the static xtask for {target} (cargo build --release; minutes the first time)");
    cmd!(
        sh,
        "cargo build --release --locked -p xtask --target {target} --manifest-path {manifest} --target-dir {target_dir}"
    )
    .env("RUSTFLAGS", "-C target-feature=+crt-static")
    .quiet()
    .run()
    .context("building the static xtask (to carry none, export with --no-tool)")?;
    Ok(target_dir.join(&target).join("release/xtask"))
}

/// Checks that `bytes` start a 64-bit little-endian ELF executable for `machine` with no
/// program interpreter (statically linked), or says what it is instead.
pub fn check_static_elf(bytes: &[u8], machine: &str) -> Result<(), String> {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a 64-bit little-endian ELF executable".into());
    }
    let want = match machine {
        "x86_64" => 62,
        "aarch64" => 183,
        other => return Err(format!("no ELF machine known for {other}")),
    };
    if u16_at(18) != Some(want) {
        return Err(format!("an ELF for another machine than {machine}"));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return Err("a truncated ELF".into());
    };
    for i in 0..u64::from(phnum) {
        let at = phoff.saturating_add(i.saturating_mul(u64::from(phentsize)));
        match usize::try_from(at).ok().and_then(u32_at) {
            // PT_INTERP: the kernel would hand it to a dynamic loader (ld-linux).
            Some(3) => {
                return Err(
                    "dynamically linked (it names a program interpreter): it needs \
                     the same glibc on the server; build it with \
                     RUSTFLAGS='-C target-feature=+crt-static'"
                        .into(),
                )
            }
            Some(_) => {}
            None => return Err("a truncated ELF".into()),
        }
    }
    Ok(())
}

/// `cargo vendor` of the workspace's crates into `<staging>/tool/xtask-vendor.tar.gz`, with
/// `cargo-config.toml` inside (the `[source]` replacement, relative to where it unpacks).
fn vendor(sh: &Shell, root: &Utf8Path, staging: &Utf8Path) -> anyhow::Result<()> {
    let scratch = staging.join(".xtask-vendor");
    let dir = scratch.join(VENDOR_DIR);
    let manifest = root.join("Cargo.toml");
    crate::say!("   Vendoring the crates of xtask (cargo vendor)");
    cmd!(
        sh,
        "cargo vendor --locked --versioned-dirs --manifest-path {manifest} {dir}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .context("vendoring the crates of xtask (to carry none, export with --no-tool)")?;
    // Cargo reads a config file's relative paths against the folder above its own: the
    // folder the archive unpacks in.
    std::fs::write(
        scratch.join(VENDOR_CONFIG),
        format!(
            "# Builds xtask offline from these crates (unpacked from the bundle's {TOOL_VENDOR}):\n\
             #   cargo --config <this file> xtask <subcommand>\n\
             [source.crates-io]\nreplace-with = \"vendored-sources\"\n\n\
             [source.vendored-sources]\ndirectory = \"{VENDOR_DIR}\"\n"
        ),
    )?;
    let out = staging.join(TOOL_VENDOR);
    std::fs::create_dir_all(staging.join("tool"))?;
    crate::archive::pack_dir_gz(&dir, VENDOR_DIR, &out)?;
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {scratch}"))?;
    Ok(())
}

/// [`vendor`], through a copy kept in the workspace's target folder
/// (`target/xtask-tool/<sources digest>/`): exports into other bundle folders (the tests',
/// a second project) do not vendor and compress the same crates again.
fn vendor_cached(
    sh: &Shell,
    root: &Utf8Path,
    sources: &str,
    staging: &Utf8Path,
) -> anyhow::Result<()> {
    let kept = root
        .join("target/xtask-tool")
        .join(sources)
        .join("xtask-vendor.tar.gz");
    let out = staging.join(TOOL_VENDOR);
    if kept.is_file() {
        std::fs::create_dir_all(staging.join("tool"))?;
        std::fs::copy(&kept, &out).with_context(|| format!("copying {kept} to {out}"))?;
        crate::say!("     Reusing {kept} (same xtask sources)");
        return Ok(());
    }
    vendor(sh, root, staging)?;
    // Kept for the next export; an error here costs only that export's time.
    let parent = kept.parent().expect("a file in a folder");
    let tmp = bundle::temp_sibling(&kept);
    let kept_ok = std::fs::create_dir_all(parent)
        .and_then(|()| std::fs::copy(&out, &tmp))
        .and_then(|_| std::fs::rename(&tmp, &kept));
    if let Err(err) = kept_ok {
        let _ = std::fs::remove_file(&tmp);
        crate::say!("warning: keeping a copy of the vendored crates in {kept}: {err}");
    }
    Ok(())
}

/// Writes the tool into `staging` (or links the previous bundle's, when its sources are the
/// same); returns its manifest entry, or `None` with `ToolChoice::None`.
pub fn export(
    sh: &Shell,
    choice: &ToolChoice,
    out: &Utf8Path,
    staging: &Utf8Path,
    previous: Option<&Manifest>,
) -> anyhow::Result<Option<ToolEntry>> {
    if *choice == ToolChoice::None {
        return Ok(None);
    }
    let platform = host_platform();
    let root = sources_root();
    let (sources, binary) = match (choice, &root) {
        (ToolChoice::Prebuilt(binary), Some(root)) => (sources_digest(root)?, Some(binary)),
        (ToolChoice::Prebuilt(binary), None) => (hash(binary)?, Some(binary)),
        (_, Some(root)) => (sources_digest(root)?, None),
        (_, None) => bail!(
            "cache-export carries the tool (bin/xtask) built from its sources, and this \
             xtask was not started by cargo from the repository: run `cargo xtask \
             cache-export` in the repository, give --tool-binary FILE, or export with --no-tool"
        ),
    };
    let with_vendor = root.is_some();
    let mut entry = ToolEntry {
        binary: TOOL_BINARY.to_string(),
        target: platform.target.clone(),
        os: platform.os.to_string(),
        machine: platform.machine.to_string(),
        vendor: with_vendor.then(|| TOOL_VENDOR.to_string()),
        sources,
    };
    // A binary handed over is reused only if it is the very file the bundle has.
    let handed = binary.map(|b| hash(b)).transpose()?;
    if reuse(out, previous, &entry, handed.as_deref(), staging)? {
        crate::say!("     Reusing {TOOL_BINARY} and {TOOL_VENDOR} (same xtask sources)");
        return Ok(Some(entry));
    }
    let binary = match (binary, &root) {
        (Some(binary), _) => binary.clone(),
        (None, Some(root)) => build_static(sh, root, None)?,
        (None, None) => unreachable!("refused above"),
    };
    let bytes = std::fs::read(&binary).with_context(|| format!("reading {binary}"))?;
    check_static_elf(&bytes, platform.machine)
        .map_err(|why| anyhow::anyhow!("{binary} is {why}: it cannot be the bundle's bin/xtask"))?;
    let dest = staging.join(TOOL_BINARY);
    std::fs::create_dir_all(staging.join("bin"))?;
    std::fs::copy(&binary, &dest).with_context(|| format!("copying {binary} to {dest}"))?;
    set_executable(&dest)?;
    match &root {
        Some(root) => vendor_cached(sh, root, &entry.sources, staging)?,
        None => entry.vendor = None,
    }
    Ok(Some(entry))
}

/// Links the previous bundle's tool files into `staging` if they were made from the same
/// sources for the same platform (and its binary has the sha256 `binary_sha256`, when a
/// binary is handed over) and still match their checksums.
fn reuse(
    out: &Utf8Path,
    previous: Option<&Manifest>,
    entry: &ToolEntry,
    binary_sha256: Option<&str>,
    staging: &Utf8Path,
) -> anyhow::Result<bool> {
    let Some(previous) = previous else {
        return Ok(false);
    };
    if previous.tool.as_ref() != Some(entry) {
        return Ok(false);
    }
    let wanted: Vec<&str> = [Some(entry.binary.as_str()), entry.vendor.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let files: Vec<&FileEntry> = previous
        .files
        .iter()
        .filter(|f| wanted.contains(&f.path.as_str()))
        .collect();
    let same_binary =
        |f: &&FileEntry| f.path != entry.binary || binary_sha256.is_none_or(|s| s == f.sha256);
    if files.len() != wanted.len() || !files.iter().all(same_binary) {
        return Ok(false);
    }
    bundle::link_checked(out, &files, |f| staging.join(&f.path))
}

fn hash(path: &Utf8Path) -> anyhow::Result<String> {
    Ok(bundle::hash_file(path)
        .with_context(|| format!("reading {path}"))?
        .1)
}

fn set_executable(path: &Utf8Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {path} executable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16, interp: bool) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 2 * 56];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        b[64..68].copy_from_slice(&6u32.to_le_bytes()); // PT_PHDR
        let second: u32 = if interp { 3 } else { 1 };
        b[120..124].copy_from_slice(&second.to_le_bytes());
        b
    }

    #[test]
    fn only_a_static_elf_for_the_machine_is_taken() {
        assert_eq!(check_static_elf(&elf(62, false), "x86_64"), Ok(()));
        assert_eq!(check_static_elf(&elf(183, false), "aarch64"), Ok(()));
        let err = check_static_elf(&elf(62, true), "x86_64").unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        let err = check_static_elf(&elf(183, false), "x86_64").unwrap_err();
        assert!(err.contains("another machine"), "{err}");
        let err = check_static_elf(b"#!/bin/sh\necho hi\n", "x86_64").unwrap_err();
        assert!(err.contains("not a 64-bit"), "{err}");
        let err = check_static_elf(&elf(62, false)[..70], "x86_64").unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    /// A re-export reuses the previous tool files only for the same sources and platform,
    /// only while they match their checksums, and a binary handed over only if it is the
    /// very file the bundle has.
    #[test]
    fn the_previous_tool_is_reused_only_when_it_is_the_same() {
        let dir = crate::lab::test_dir("tool-reuse");
        let (out, staging) = (dir.join("out"), dir.join("staging"));
        std::fs::create_dir_all(out.join("bin")).unwrap();
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(out.join(TOOL_BINARY), b"binary").unwrap();
        let (size, sha256) = bundle::hash_file(&out.join(TOOL_BINARY)).unwrap();
        let entry = ToolEntry {
            binary: TOOL_BINARY.into(),
            target: "x86_64-unknown-linux-gnu".into(),
            os: "Linux".into(),
            machine: "x86_64".into(),
            vendor: None,
            sources: "a".repeat(64),
        };
        let mut previous: Manifest = serde_yaml::from_str(
            "format_version: 2\ntool_version: 0.1.0\ncreated: x\nproject_name: p\n\
             engine: {server_version: '26', arch: amd64, containerd_store: true}\n\
             strategy: local\ncompression: none\nimages: []\nservices: []\nfiles: []\n",
        )
        .unwrap();
        previous.files.push(FileEntry {
            path: TOOL_BINARY.into(),
            size,
            sha256: sha256.clone(),
            from_base: false,
        });
        previous.tool = Some(entry.clone());
        let reused = |entry: &ToolEntry, handed: Option<&str>| {
            let _ = std::fs::remove_dir_all(staging.join("bin"));
            reuse(&out, Some(&previous), entry, handed, &staging).unwrap()
        };
        assert!(reused(&entry, None));
        assert_eq!(std::fs::read(staging.join(TOOL_BINARY)).unwrap(), b"binary");
        assert!(reused(&entry, Some(&sha256)));
        assert!(
            !reused(&entry, Some(&"0".repeat(64))),
            "another binary handed over"
        );
        let other_sources = ToolEntry {
            sources: "b".repeat(64),
            ..entry.clone()
        };
        assert!(!reused(&other_sources, None), "other sources");
        std::fs::write(out.join(TOOL_BINARY), b"damaged").unwrap();
        assert!(!reused(&entry, None), "a damaged previous binary");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The digest covers the sources and the lockfile, and nothing else of the tree.
    #[test]
    fn the_sources_digest_follows_the_sources_only() {
        let dir = crate::lab::test_dir("tool-digest");
        for (file, text) in [
            ("Cargo.toml", "[workspace]\n"),
            ("Cargo.lock", "# lock\n"),
            ("xtask/Cargo.toml", "[package]\n"),
            ("xtask/src/main.rs", "fn main() {}\n"),
            ("README.md", "readme\n"),
        ] {
            std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
        }
        let first = sources_digest(&dir).unwrap();
        std::fs::write(dir.join("README.md"), "changed\n").unwrap();
        assert_eq!(sources_digest(&dir).unwrap(), first);
        std::fs::write(dir.join("Cargo.lock"), "# lock 2\n").unwrap();
        let second = sources_digest(&dir).unwrap();
        assert_ne!(second, first);
        std::fs::write(dir.join("xtask/src/new.rs"), "\n").unwrap();
        assert_ne!(sources_digest(&dir).unwrap(), second);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
