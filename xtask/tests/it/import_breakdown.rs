//! The premise of figure 3's breakdown of `docker load` (bench/images.rs): `ctr images
//! import` on the engine's own containerd (`Engine::ctr`: its socket under the exec root,
//! namespace `moby`) does what `docker load` does, in two steps that can be timed apart.
//! On an engine like the bench's target (its own network namespace): the same image ID
//! and tag as `docker load` gives, runnable; with `--no-unpack` the same ID and tag with
//! no snapshot yet, and the first `docker create` unpacks it.

use anyhow::ensure;
use xshell::{cmd, Shell};

use crate::support::run::Scratch;
use crate::support::{self, standins, EngineOptions};

#[test]
fn ctr_import_on_the_engines_containerd_is_docker_load_in_two_steps() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let engine = suite.offline_engine("ib-target", EngineOptions::default())?;
    standins::load_busybox(&engine)?;
    let sh = engine.shell()?;
    let tmp = Scratch::new("import-breakdown");
    let tar = tmp.path().join("busybox.tar");
    let image = standins::BUSYBOX;
    let format = "{{.Id}}";
    let id = cmd!(sh, "docker image inspect --format {format} {image}").read()?;
    let listed = || -> anyhow::Result<String> {
        let listing = "{{.Repository}}:{{.Tag}} {{.ID}}";
        Ok(cmd!(sh, "docker image ls --no-trunc --format {listing}").read()?)
    };
    let before = listed()?;
    cmd!(sh, "docker save {image} -o {tar}").run()?;
    let driver = "{{.Driver}}";
    let snapshotter = cmd!(sh, "docker info --format {driver}").read()?;
    let snapshots = || -> anyhow::Result<usize> {
        let args = ["snapshots", "--snapshotter", snapshotter.as_str(), "ls"];
        let out = engine.ctr(&sh, args).read()?;
        Ok(out.lines().skip(1).count())
    };

    // blobs and unpacking: the end state of docker load
    cmd!(sh, "docker image rm {image}")
        .quiet()
        .ignore_stdout()
        .run()?;
    ensure!(
        snapshots()? == 0,
        "the engine kept snapshots after the image was removed"
    );
    engine
        .ctr(
            &sh,
            [
                "images",
                "import",
                "--snapshotter",
                &snapshotter,
                tar.as_str(),
            ],
        )
        .quiet()
        .ignore_stdout()
        .run()?;
    ensure!(
        listed()? == before,
        "after ctr images import:\n{}\nbefore:\n{before}",
        listed()?
    );
    ensure!(snapshots()? > 0, "ctr images import unpacked nothing");
    let said = printed(
        &sh,
        &[
            "run",
            "--detach",
            "--network",
            "none",
            image,
            "echo",
            "unpacked",
        ],
    )?;
    ensure!(said == "unpacked", "{said:?}");

    // blobs only: the same image, unpacked on first use
    cmd!(sh, "docker image rm {image}")
        .quiet()
        .ignore_stdout()
        .run()?;
    engine
        .ctr(&sh, ["images", "import", "--no-unpack", tar.as_str()])
        .quiet()
        .ignore_stdout()
        .run()?;
    ensure!(
        listed()? == before,
        "after --no-unpack:\n{}\nbefore:\n{before}",
        listed()?
    );
    let again = cmd!(sh, "docker image inspect --format {format} {image}").read()?;
    ensure!(again == id, "{again} != {id}");
    ensure!(snapshots()? == 0, "--no-unpack unpacked");
    let container = cmd!(sh, "docker create --network none {image} echo deferred").read()?;
    ensure!(snapshots()? > 0, "docker create did not unpack the image");
    let said = printed(&sh, &["start", &container])?;
    ensure!(said == "deferred", "{said:?}");
    Ok(())
}

/// What the container that `docker ARGS` starts (detached, its ID printed) prints, read
/// from its log after it exited: attached output can miss a container that exits at once.
fn printed(sh: &Shell, args: &[&str]) -> anyhow::Result<String> {
    let id = cmd!(sh, "docker {args...}").read()?;
    let code = cmd!(sh, "docker wait {id}").read()?;
    let printed = cmd!(sh, "docker logs {id}").read()?;
    cmd!(sh, "docker rm {id}").quiet().ignore_stdout().run()?;
    ensure!(code == "0", "the container exited with {code}: {printed}");
    Ok(printed)
}
