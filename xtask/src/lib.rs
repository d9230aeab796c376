//! `cargo xtask`: rebuild this Docker Compose application on a server with no network.
//!
//! `cache-export` (online) writes `docker-build-cache/`: base images, the build cache and
//! the dependency caches, with a manifest of checksums; `cache-import` (offline) verifies
//! and loads it; `patch-compose` points the compose file's builds at what was imported.
//! ARCHITECTURE.md at the repository's root maps the modules and the rules they keep.
//!
//! The library exists so that the integration tests share the private-engine lab with
//! `cargo xtask bench`; `main.rs` only calls [`cli::main`].

mod archive;
mod bench;
mod bundle;
mod bundle_arg;
mod bundle_text;
pub mod cli;
mod commands;
mod content_store;
mod context;
mod delta;
mod deps;
mod docker;
mod export;
mod images;
mod import;
pub mod lab;
mod model;
mod pack;
mod patch;
mod progress;
mod project;
mod recompress;
mod registry;
mod rehearse;
mod secrets;
mod steps;
mod tool;
