//! The built binary, run as users run it, and scratch folders: the one copy every test
//! module uses.

use anyhow::ensure;
use camino::Utf8Path;
use xshell::{cmd, Shell};

use super::Engine;

/// How a run of the binary ended and what it printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_xtask")
}

/// Runs the binary in `dir` with `args`, `env` added (and `COMPOSE_PROJECT_NAME` from the
/// test's own environment removed).
pub fn xtask_env(dir: &Utf8Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let sh = Shell::new().expect("a shell");
    sh.change_dir(dir);
    let bin = bin();
    let mut command = cmd!(sh, "{bin} {args...}")
        .env_remove("COMPOSE_PROJECT_NAME")
        .ignore_status()
        .quiet();
    for (key, value) in env {
        command = command.env(key, value);
    }
    let out = command.output().expect("running the binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary in `dir` with `args`.
pub fn xtask(dir: &Utf8Path, args: &[&str]) -> Run {
    xtask_env(dir, args, &[])
}

/// Runs the binary in `dir` against `engine` (its `DOCKER_HOST`), `extra_env` added.
pub fn xtask_on(engine: &Engine, dir: &Utf8Path, args: &[&str], extra_env: &[(&str, &str)]) -> Run {
    let env: Vec<(String, String)> = engine
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra_env);
    xtask_env(dir, args, &all)
}

/// The run's stderr when it exited 0; else an error naming `what` with what it said.
pub fn ok(run: Run, what: &str) -> anyhow::Result<String> {
    ensure!(
        run.code == 0,
        "{what} failed ({}):\n{}",
        run.code,
        run.stderr
    );
    Ok(run.stderr)
}

/// Scratch folders: the lab's, which the unit tests use too.
pub use xtask::lab::Scratch;
