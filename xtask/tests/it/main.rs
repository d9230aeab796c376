//! The integration tests of `cargo xtask`: one test crate, one binary.
//!
//! The Docker suite (private engines, stand-in base images, real builds) runs only with
//! `XTASK_DOCKER_TESTS=1`; see `support/mod.rs`.

mod support;

mod bundle_e2e;
mod cli;
mod content_store;
mod delta;
mod docker_smoke;
mod docs_examples;
mod fleet;
mod import_breakdown;
mod offline_rebuild;
mod operator;
mod pack;
mod rehearse;
mod security;
mod tidy;
mod tool_bundle;
