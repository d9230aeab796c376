//! The subcommands. Each module is a leaf: it parses its flags and calls the shared
//! modules; no command imports another (the `tidy` test keeps it so).

pub mod bench;
pub mod cache_export;
pub mod cache_import;
pub mod cache_pack;
pub mod cache_plan;
pub mod cache_publish;
pub mod cache_rehearse;
pub mod cache_status;
pub mod cache_unpack;
pub mod cache_verify;
pub mod patch_compose;
