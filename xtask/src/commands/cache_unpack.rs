//! `cargo xtask cache-unpack`: a packed bundle (a tar, or the parts an index names) back
//! into a bundle folder, every part and every file checked as it streams.
use std::process::ExitCode;

use camino::Utf8PathBuf;
use xshell::Shell;

use crate::bundle::human_bytes;
use crate::pack::{self, Source};
use crate::project::{self, ProjectArgs};

/// Unpack a packed bundle into a new folder, checking every part and every file
#[derive(clap::Args)]
#[command(
    after_help = "Reads the parts in the index's order as one stream. Before reading, \
    every part the index names must lie beside it with its size, and no other part of that \
    name; as it streams, each part's sha256 is checked, and each file's size and sha256 \
    against the manifest.yaml in the pack. A missing, extra, reordered or damaged part is \
    refused by name. It writes into a temporary folder beside --output and renames it into \
    place only when everything checked; on a failure nothing is left.\n\n\
    Examples:\n  cargo xtask cache-unpack --pack /mnt/usb/docker-build-cache.pack-index --output docker-build-cache\n  \
    cargo xtask cache-unpack --pack docker-build-cache.tar --output /srv/docker-build-cache --json\n  \
    cargo xtask cache-unpack --pack dist/docker-build-cache.pack-index --output docker-build-cache \\\n      \
    --expect-digest \"$(cut -d' ' -f1 dist/bundle-digest.txt)\"   # the digest the release published\n  \
    cargo xtask cache-import --bundle /srv/docker-build-cache   # then, as for any bundle folder"
)]
pub struct Args {
    /// The pack: NAME.pack-index (its parts beside it) or NAME.tar
    #[arg(long, value_name = "INDEX_OR_TAR")]
    pub pack: Utf8PathBuf,
    /// The bundle folder to create; it must not exist
    #[arg(long, value_name = "DIR")]
    pub output: Utf8PathBuf,
    /// Refuse the pack unless its bundle digest (sha256 of SHA256SUMS) is this one, as
    /// published beside the release (bundle-digest.txt); checked before any file is read
    #[arg(long, value_name = "SHA256")]
    pub expect_digest: Option<String>,
    /// Print what was read (digest, files, bytes, parts) as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

impl Args {
    pub fn run(self, sh: &Shell, _project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let cwd = project::current_dir(sh)?;
        let (pack_path, output) = (
            project::absolute(&cwd, &self.pack),
            project::absolute(&cwd, &self.output),
        );
        let source = Source::open(&pack_path)?;
        eprintln!("   Unpacking {pack_path} into {output}");
        let expect = self
            .expect_digest
            .as_deref()
            .map(crate::bundle::parse_digest)
            .transpose()?;
        let report = pack::unpack(&source, &output, expect.as_deref())?;
        eprintln!(
            "    Unpacked {} files, {} in {:.2}s, every part and file checked; bundle digest {}",
            report.files,
            human_bytes(report.bytes),
            report.seconds,
            report.digest
        );
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Ok(ExitCode::SUCCESS)
    }
}
