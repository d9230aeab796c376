//! `cargo xtask`: rebuild this Docker Compose application on a server with no network.
//!
//! `cache-export` (online) writes `docker-build-cache/`: base images, the build cache and
//! the dependency caches, with a manifest of checksums; `cache-import` (offline) verifies
//! and loads it; `patch-compose` points the compose file's builds at what was imported.
//! The models of the compose file, the Dockerfiles and the bundle live in `model/` and do
//! no I/O; `docker.rs` is the only module that spells `docker`.

mod archive;
mod bench;
mod bundle;
mod cache_export;
mod cache_import;
mod cache_plan;
mod cache_status;
mod cache_verify;
mod docker;
mod model;
mod node_modules;
mod npm_cache;
mod npm_image;
mod patch_compose;
mod plan;
mod progress;
mod project;
mod recompress;
mod secrets;
mod wheelhouse;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about = "Offline rebuilds of this Docker Compose application",
    long_about = "Offline rebuilds of this Docker Compose application.\n\n\
        On a machine with network, `cache-export` writes docker-build-cache/ with everything an \
        offline rebuild needs; carry that folder to the offline server, run `cache-import` there, \
        then `patch-compose` and `docker compose build`.",
    after_help = "Examples:\n  cargo xtask cache-plan\n  cargo xtask cache-export\n  \
        cargo xtask cache-import\n  cargo xtask -f deploy/compose.yaml patch-compose --check"
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
    CacheVerify(cache_verify::Args),
    CacheStatus(cache_status::Args),
    PatchCompose(patch_compose::Args),
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
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
        Command::CacheVerify(args) => args.run(&sh, project),
        Command::CacheStatus(args) => args.run(&sh, project),
        Command::PatchCompose(args) => args.run(&sh, project),
        Command::Bench(args) => args.run(&sh, project),
    }
}
