//! Faults that land where a test says they do.
//!
//! A kill after a fixed delay proves nothing when the process was already done by then,
//! or had not reached the step the test names. [`interrupt_at`] waits for the line the
//! process prints when it starts that step, can freeze the engine (SIGSTOP to `dockerd`)
//! so that the step cannot finish, checks that the process is still running, and only
//! then sends the signal to its whole process group, as Ctrl-C or a dying session does.
//! It fails when the line never comes or the process is gone before the signal.

use std::io::BufRead;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use camino::Utf8Path;

/// What an interrupted run printed and how it ended.
pub struct Interrupted {
    pub status: ExitStatus,
    pub stderr: String,
}

/// Runs `command` in its own process group and sends `signal` ("KILL", "INT") to the
/// group once a line of its stderr contains `marker`. With `freeze` (an engine's pid
/// file), the engine is stopped from the marker until the process is gone, so the step
/// that printed the marker is still under way when the signal lands.
pub fn interrupt_at(
    mut command: Command,
    marker: &str,
    signal: &str,
    freeze: Option<&Utf8Path>,
) -> anyhow::Result<Interrupted> {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .context("starting the process to interrupt")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (seen, at_marker) = std::sync::mpsc::channel();
    let wanted = marker.to_string();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(&wanted) {
                let _ = seen.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let reached = at_marker.recv_timeout(Duration::from_secs(300)).is_ok();
    let engine = match (reached, freeze) {
        (true, Some(pid_file)) => {
            let pid = std::fs::read_to_string(pid_file)
                .with_context(|| format!("reading {pid_file}"))?
                .trim()
                .to_string();
            signal_pid("STOP", &pid)?;
            Some(pid)
        }
        _ => None,
    };
    // Long enough for a step that could still finish to do so.
    std::thread::sleep(Duration::from_millis(300));
    let running = child.try_wait()?.is_none();
    if reached && running {
        signal_pid(signal, &format!("-{}", child.id()))?;
    }
    // A signal that did not end it (or was never sent) must fail the test, not hang it on
    // the frozen engine: thaw the engine and kill the group after a minute.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            hung = true;
            if let Some(pid) = &engine {
                signal_pid("CONT", pid)?;
            }
            signal_pid("KILL", &format!("-{}", child.id()))?;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some(pid) = engine.as_ref().filter(|_| !hung) {
        signal_pid("CONT", pid)?;
    }
    let stderr = reader.join().unwrap_or_default();
    ensure!(
        !hung,
        "the process was still running a minute after SIG{signal} at {marker:?}: the fault did \
         not end it:\n{stderr}"
    );
    if !reached {
        bail!("the process never printed {marker:?} ({status}):\n{stderr}");
    }
    ensure!(
        running,
        "the process had ended ({status}) before SIG{signal} at {marker:?}: the fault did not \
         land where the test says:\n{stderr}"
    );
    let expected = match signal {
        "KILL" => 9,
        "INT" => 2,
        "TERM" => 15,
        other => bail!("no number for SIG{other}"),
    };
    ensure!(
        status.signal() == Some(expected),
        "the process ended with {status}, not by SIG{signal}: the fault did not land:\n{stderr}"
    );
    Ok(Interrupted { status, stderr })
}

fn signal_pid(signal: &str, pid: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([format!("-{signal}").as_str(), "--", pid])
        .status()
        .context("running kill")?;
    ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}
