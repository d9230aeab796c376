//! The lab's own check of its offline engine: a namespaced engine proves that nothing
//! leaves it, and the same proof fails on a plain private engine (whose containers reach
//! the host), so the proof can fail.

use super::{docker_suite, standins, EngineOptions};
use standins::BUSYBOX;

#[test]
fn a_namespaced_engine_proves_it_is_offline_and_a_plain_one_cannot() -> anyhow::Result<()> {
    let Some(suite) = docker_suite() else {
        return Ok(());
    };
    let offline = suite.engine(
        "netns-offline",
        EngineOptions {
            network_namespace: true,
            ..EngineOptions::default()
        },
    )?;
    assert!(offline.network_namespace().is_some());
    standins::load_busybox(&offline)?;
    let proof = offline.prove_offline(Some(standins::BUSYBOX))?;
    eprintln!("offline engine: {proof:?}");
    assert!(!proof.pull_error.is_empty(), "{proof:?}");
    // a container still runs there, and has loopback
    let sh = offline.shell()?;
    let ran = xshell::cmd!(sh, "docker run --rm {BUSYBOX} echo inside")
        .quiet()
        .read()?;
    assert_eq!(ran, "inside");
    drop(offline);

    let plain = suite.engine("netns-plain", EngineOptions::default())?;
    standins::load_busybox(&plain)?;
    let err = plain
        .prove_offline(Some(standins::BUSYBOX))
        .expect_err("a plain private engine's container reaches the host");
    assert!(
        format!("{err:#}").contains("connected to"),
        "unexpected error: {err:#}"
    );
    Ok(())
}
