//! Pure models: they parse and compute, and never touch the filesystem, the network or
//! Docker. Where a model needs another file (an `extends`, an `-r` include), the caller
//! hands it a reader, so tests run on strings.

pub mod buildlog;
pub mod compose;
pub mod compose_patch;
pub mod dockerfile;
pub mod dockerignore;
pub mod interpolate;
pub mod layout;
pub mod load_split;
pub mod manifest;
pub mod oci;
pub mod pack;
pub mod plan;
pub mod registry;
pub mod requirements;
