//! `cargo xtask cache-pack`: the bundle folder as one tar, or as numbered parts of at most
//! `--split` bytes with an index, to carry it as one thing (a release asset, a FAT32 disk).
use std::process::ExitCode;

use camino::Utf8PathBuf;
use xshell::Shell;

use crate::bundle::human_bytes;
use crate::bundle_arg::BundleArg;
use crate::model::pack::parse_size;
use crate::pack::{self, Target};
use crate::project::{self, ProjectArgs};

/// Write the bundle as one tar, or as parts of at most --split bytes with an index
#[derive(clap::Args)]
#[command(
    after_help = "The tar is uncompressed (its contents are compressed already). Its \
    entries come in a fixed order: SHA256SUMS, manifest.yaml, then every file manifest.yaml \
    lists, in its order, and nothing else. With --split, the parts are NAME.tar.part-001, \
    NAME.tar.part-002, ... (`cat` joins them into NAME.tar) and NAME.pack-index names each \
    with its size and sha256, and the bundle's digest (the sha256 of SHA256SUMS). Beside \
    them, import-NAME.sh imports the pack on a server with sh and Docker alone (it checks \
    every part, unpacks, checks every file, then runs the bundle's import-build-cache.sh).\n\n\
    Examples:\n  cargo xtask cache-pack                       # docker-build-cache.tar beside the bundle\n  \
    cargo xtask cache-pack --output /mnt/usb/      # /mnt/usb/docker-build-cache.tar\n  \
    cargo xtask cache-pack --split 1900M --output dist/ --json   # parts under GitHub's 2 GiB limit\n  \
    cargo xtask cache-pack --split 3G --output /mnt/fat32/       # parts under FAT32's 4 GiB limit"
)]
pub struct Args {
    #[command(flatten)]
    pub bundle: BundleArg,
    /// Where to write: a folder (the pack takes the bundle folder's name), or NAME.tar
    /// (default: beside the bundle folder). Existing files are never overwritten.
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub output: Option<Utf8PathBuf>,
    /// Cut the tar into parts of at most SIZE bytes (e.g. 1900M, 2G; K, M, G, T are powers of 1024)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub split: Option<u64>,
    /// Print what was written (paths, sizes, sha256s, the digest) as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

impl Args {
    pub fn run(self, sh: &Shell, project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let dir = self.bundle.dir(sh, project)?;
        let cwd = project::current_dir(sh)?;
        let output = self.output.as_deref().map(|o| project::absolute(&cwd, o));
        let as_dir = self
            .output
            .as_ref()
            .is_some_and(|o| o.as_str().ends_with('/'));
        let target = Target::resolve(&dir, output.as_deref(), as_dir)?;
        eprintln!("     Packing {dir} into {}", target.dir);
        let report = pack::pack(&dir, &target, self.split)?;
        for part in report.tar.iter().chain(&report.parts) {
            eprintln!("       Wrote {} ({})", part.path, human_bytes(part.size));
        }
        if let Some(index) = &report.index {
            eprintln!("       Wrote {index} ({} parts)", report.parts.len());
        }
        eprintln!(
            "       Wrote {} (imports the pack with sh and Docker alone: sh {} --pack {})",
            report.script,
            report.script.file_name().unwrap_or_default(),
            report
                .index
                .as_ref()
                .or(report.tar.as_ref().map(|t| &t.path))
                .and_then(|p| p.file_name())
                .unwrap_or_default()
        );
        eprintln!(
            "      Packed {} files, {}; bundle digest (sha256 of SHA256SUMS) {}",
            report.files,
            human_bytes(report.total_size),
            report.digest
        );
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Ok(ExitCode::SUCCESS)
    }
}
