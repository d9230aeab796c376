//! The private-engine lab: Docker engines started and stopped by the tool itself, and the
//! stand-in base images they are given. `cargo xtask bench` and the integration tests
//! share it.
