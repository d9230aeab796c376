//! The `cargo xtask` binary: everything is in the library (`lib.rs`).

fn main() -> std::process::ExitCode {
    xtask::cli::main()
}
