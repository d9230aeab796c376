//! `cargo xtask bench`: export, import and rebuild timed side by side with what they
//! replace. The flags are parsed here; the benchmark is `crate::bench`, its private
//! engines and stand-in images `crate::lab`.

use std::process::ExitCode;

use camino::Utf8PathBuf;
use xshell::Shell;

use crate::bench::{parse_size, Figures, Settings};
use crate::project::ProjectArgs;

/// Time export, import and rebuild against `docker save`/`docker load` and the v1.0 guide
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    cargo xtask bench                   # 3 GB image + app stack, 3 runs; writes docs/benchmarks.md\n  \
    cargo xtask bench --quick           # CI: 200 MB image, 1 run, no app stack, writes nothing\n  \
    cargo xtask bench --size 1G --runs 5 --no-app --output /tmp/bench.md\n  \
    cargo xtask bench --figures 9,10 --runs 1 --output /tmp/bench.md   # only the fleet, pack and delta figures\n\n\
    Needs root, dockerd, buildx and compose v2 (scripts/install-test-deps.sh); the app stack \
    also needs debootstrap and the package registries. It measures the xtask binary that runs \
    it (`cargo xtask` runs target/debug/xtask), on private engines under /tmp/xtb that it \
    removes when done.")]
pub struct Args {
    /// Short run for CI: a 200 MB synthetic image, one run of each, no app stack
    #[arg(long)]
    pub quick: bool,
    /// Runs of each measurement (default 3, 1 with --quick)
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
    /// Size of the synthetic image, e.g. 3G or 500M (default 3G, 200M with --quick)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Leave out the application stack (whole export, offline rebuild)
    #[arg(long)]
    pub no_app: bool,
    /// Include the application stack even with --quick
    #[arg(long, conflicts_with = "no_app")]
    pub app: bool,
    /// Produce (and expect) only these figures, e.g. 9,10: runs only the workloads they
    /// need (the app stack's figures need its first export, figure 0, too)
    #[arg(long, value_name = "LIST", value_parser = Figures::parse)]
    pub figures: Option<Figures>,
    /// Write the results here (default docs/benchmarks.md; with --quick, nothing)
    #[arg(long, value_name = "FILE")]
    pub output: Option<Utf8PathBuf>,
}

impl Args {
    pub fn run(self, sh: &Shell, _project: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let named = self.figures.is_some();
        let figures = self.figures.unwrap_or_default();
        let with_app = match named {
            // the figures named decide; --no-app cannot leave out what they need
            true if self.no_app && figures.needs_app() => {
                anyhow::bail!("--figures names figures of the app stack, which --no-app leaves out")
            }
            true => figures.needs_app(),
            false => self.app || !(self.quick || self.no_app),
        };
        let output = match (&self.output, self.quick) {
            (Some(file), _) => Some(crate::project::absolute(
                &crate::project::current_dir(sh)?,
                file,
            )),
            (None, false) => Some(crate::bench::repo_root()?.join("docs/benchmarks.md")),
            (None, true) => None,
        };
        crate::bench::run(&Settings {
            quick: self.quick,
            runs: self.runs.unwrap_or(if self.quick { 1 } else { 3 }).max(1),
            size: self
                .size
                .unwrap_or(if self.quick { 200 << 20 } else { 3 << 30 }),
            with_app,
            figures,
            output,
        })
    }
}
