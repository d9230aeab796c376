//! The command line: the global options, the subcommands, and the dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{
    bench, cache_export, cache_import, cache_pack, cache_plan, cache_publish, cache_rehearse,
    cache_status, cache_unpack, cache_verify, patch_compose,
};
use crate::model::manifest::{Compression, Strategy};
use crate::project;

// The target this binary was built for, in `--version` (the bundle's bin/xtask says what
// it runs on; the manifest's `tool.target` records the same).
#[cfg(target_arch = "x86_64")]
macro_rules! arch {
    () => {
        "x86_64"
    };
}
#[cfg(target_arch = "aarch64")]
macro_rules! arch {
    () => {
        "aarch64"
    };
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
macro_rules! arch {
    () => {
        "other"
    };
}
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (built for ",
    arch!(),
    "-unknown-linux-gnu",
    ")"
);

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    long_version = LONG_VERSION,
    about = "Offline rebuilds of this Docker Compose application",
    long_about = "Offline rebuilds of this Docker Compose application.\n\n\
        On a machine with network, `cache-export` writes docker-build-cache/ with everything an \
        offline rebuild needs; `cache-rehearse` (root) rebuilds from it on a throwaway engine \
        with no network, so a bundle that would miss is found before the trip; carry that \
        folder to the offline server, run `cache-import` there, then `patch-compose` and \
        `docker compose build`.",
    after_help = "Examples:\n  cargo xtask cache-plan\n  cargo xtask cache-export\n  \
        cargo xtask cache-rehearse      # as root\n  cargo xtask cache-import\n  cargo xtask -f deploy/compose.yaml patch-compose --check"
)]
struct Cli {
    #[command(flatten)]
    project: project::ProjectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    CachePlan(cache_plan::Args),
    CacheExport(cache_export::Args),
    CacheImport(cache_import::Args),
    CacheRehearse(cache_rehearse::Args),
    CachePublish(cache_publish::Args),
    CacheVerify(cache_verify::Args),
    CacheStatus(cache_status::Args),
    CachePack(cache_pack::Args),
    CacheUnpack(cache_unpack::Args),
    PatchCompose(patch_compose::Args),
    Bench(bench::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // An engine that went away is what happened, whatever the step was doing:
            // said first, then the steps it interrupted.
            let gone = err
                .chain()
                .find_map(|e| e.downcast_ref::<crate::docker::EngineGone>());
            match gone {
                Some(gone) => {
                    eprintln!("error: {gone}");
                    let steps: Vec<String> = err
                        .chain()
                        .take_while(|e| !e.is::<crate::docker::EngineGone>())
                        .map(|e| e.to_string())
                        .collect();
                    if !steps.is_empty() {
                        eprintln!("  while {}", steps.join(": "));
                    }
                }
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let sh = xshell::Shell::new()?;
    let project = &cli.project;
    match cli.command {
        Command::CachePlan(args) => args.run(&sh, project),
        Command::CacheExport(args) => args.run(&sh, project),
        Command::CacheImport(args) => args.run(&sh, project),
        Command::CacheRehearse(args) => args.run(&sh, project),
        Command::CachePublish(args) => args.run(&sh, project),
        Command::CacheVerify(args) => args.run(&sh, project),
        Command::CacheStatus(args) => args.run(&sh, project),
        Command::CachePack(args) => args.run(&sh, project),
        Command::CacheUnpack(args) => args.run(&sh, project),
        Command::PatchCompose(args) => args.run(&sh, project),
        Command::Bench(args) => args.run(&sh, project),
    }
}

// The model's enums as flag values: written here, not derived in model/, so that the
// pure model (and the fuzz crate that compiles it) does not depend on clap.

impl clap::ValueEnum for Strategy {
    fn value_variants<'a>() -> &'a [Self] {
        &Strategy::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Strategy::Local => {
                "BuildKit `type=local` cache directories (every stage); needs the containerd store"
            }
            Strategy::Inline => {
                "Cache images built with inline cache, one per stage; needs the classic store"
            }
            Strategy::Legacy => {
                "The classic builder (`DOCKER_BUILDKIT=0`) and cache images per stage"
            }
        };
        Some(clap::builder::PossibleValue::new(self.as_str()).help(help))
    }
}

impl clap::ValueEnum for Compression {
    fn value_variants<'a>() -> &'a [Self] {
        &Compression::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}
