//! The test setup itself: a private engine with the busybox stand-in builds a two-stage
//! Dockerfile with BuildKit, without any network, and the image runs.

use anyhow::{ensure, Context};
use xshell::cmd;

use crate::support::{self, standins, EngineOptions};

const DOCKERFILE: &str = "\
FROM busybox AS build
RUN mkdir -p /www && echo 'built offline' > /www/index.html
FROM busybox
COPY --from=build /www /www
EXPOSE 8080
CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]
";

#[test]
fn builds_and_runs_a_two_stage_image() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let engine = suite.engine("smoke", EngineOptions::default())?;
    standins::load_busybox(&engine)?;
    let sh = engine.shell()?;
    let project = sh.create_temp_dir()?;
    let dir = project.path();
    sh.write_file(dir.join("Dockerfile"), DOCKERFILE)?;
    cmd!(sh, "docker build --quiet -t smoke:test {dir}")
        .quiet()
        .ignore_stdout()
        .run()?;

    let page = cmd!(sh, "docker run --rm smoke:test cat /www/index.html").read()?;
    ensure!(page == "built offline", "unexpected page {page:?}");

    // The host reaches a published port through docker-proxy on 127.0.0.1.
    let container = cmd!(sh, "docker run -d -p 127.0.0.1::8080 smoke:test").read()?;
    let address = cmd!(sh, "docker port {container} 8080/tcp").read()?;
    let address = address.lines().next().unwrap_or_default().to_owned();
    let served = support::http_get(&address, "/")?;
    ensure!(
        served.contains("built offline"),
        "GET / on {address} answered {served:?}"
    );
    Ok(())
}

/// The test also runs on the classic (overlay2) image store.
#[test]
fn builds_on_the_classic_image_store() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let engine = suite.engine(
        "smoke-classic",
        EngineOptions {
            containerd_store: false,
            ..Default::default()
        },
    )?;
    standins::load_busybox(&engine)?;
    let sh = engine.shell()?;
    let format = "{{.Driver}}";
    let driver = cmd!(sh, "docker info --format {format}").read()?;
    ensure!(
        driver == "overlay2",
        "classic store expected, engine uses {driver}"
    );
    let project = sh.create_temp_dir()?;
    let dir = project.path();
    sh.write_file(dir.join("Dockerfile"), DOCKERFILE)?;
    cmd!(sh, "docker build --quiet -t smoke:test {dir}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let page = cmd!(sh, "docker run --rm smoke:test cat /www/index.html").read()?;
    ensure!(page == "built offline", "unexpected page {page:?}");

    // The docker driver exports no BuildKit cache on the classic store.
    let cache = project.path().join("cache");
    let export = cmd!(
        sh,
        "docker buildx build --cache-to type=local,dest={cache},mode=max -t smoke:cached {dir}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    let stderr = String::from_utf8_lossy(&export.stderr);
    ensure!(
        !export.status.success() && stderr.contains("Cache export is not supported"),
        "cache export on the classic store: {} {stderr}",
        export.status
    );
    Ok(())
}

/// BuildKit's local cache export and import work with the default `docker` driver on the
/// containerd image store: after removing the image and pruning the builder, a rebuild
/// from the exported cache runs no step.
#[test]
fn local_build_cache_round_trips_on_the_containerd_store() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let engine = suite.engine("smoke-cache", EngineOptions::default())?;
    standins::load_busybox(&engine)?;
    let sh = engine.shell()?;
    let project = sh.create_temp_dir()?;
    let dir = project.path();
    sh.write_file(dir.join("Dockerfile"), DOCKERFILE)?;
    let cache = dir.join("cache");
    cmd!(
        sh,
        "docker buildx build --cache-to type=local,dest={cache},mode=max -t smoke:test {dir}"
    )
    .quiet()
    .ignore_stderr()
    .run()?;
    cmd!(sh, "docker rmi smoke:test")
        .quiet()
        .ignore_stdout()
        .run()?;
    cmd!(sh, "docker builder prune -af")
        .quiet()
        .ignore_stdout()
        .run()?;
    let rebuild = cmd!(
        sh,
        "docker buildx build --progress plain --cache-from type=local,src={cache} -t smoke:test {dir}"
    )
    .quiet()
    .read_stderr()?;
    let run_step = rebuild
        .lines()
        .position(|line| line.contains("RUN mkdir -p /www"))
        .context("no RUN step in the rebuild's log")?;
    ensure!(
        rebuild
            .lines()
            .nth(run_step + 1)
            .is_some_and(|line| line.ends_with("CACHED")),
        "the RUN step was not cached:\n{rebuild}"
    );
    Ok(())
}

/// The Debian stand-ins carry the real names and answer like the official images.
#[test]
fn standins_behave_like_the_official_images() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    standins::debian_rootfs()?; // before the engine starts: it may take minutes
    let engine = suite.engine("standins", EngineOptions::default())?;
    standins::load_standins(&engine)?;
    let sh = engine.shell()?;
    let python = cmd!(sh, "docker run --rm python:3.9-slim python --version").read()?;
    ensure!(
        python.starts_with("Python 3."),
        "python --version: {python:?}"
    );
    // pip may install system-wide (no PEP 668 marker), as in the official image
    cmd!(
        sh,
        "docker run --rm python:3.9-slim pip install --no-index --dry-run pip"
    )
    .run()?;
    let node = cmd!(sh, "docker run --rm node:18-alpine node --version").read()?;
    ensure!(node.starts_with("v18."), "node --version: {node:?}");
    let npm = cmd!(sh, "docker run --rm node:18-alpine npm --version").read()?;
    ensure!(npm.starts_with("10."), "npm --version: {npm:?}");
    let nginx = cmd!(sh, "docker run --rm nginx:alpine nginx -t").read_stderr()?;
    ensure!(nginx.contains("test is successful"), "nginx -t: {nginx:?}");
    let format = "{{.RootFS.Layers}}";
    let layers: Vec<String> = standins::APP_STANDINS
        .iter()
        .map(|standin| {
            let image = standin.image;
            cmd!(sh, "docker image inspect --format {format} {image}").read()
        })
        .collect::<Result<_, _>>()?;
    // like the real images: no layer in common, and none carries another's program
    for (i, a) in layers.iter().enumerate() {
        for b in &layers[i + 1..] {
            let shared: Vec<&str> = a
                .trim_matches(['[', ']'])
                .split_whitespace()
                .filter(|layer| b.contains(layer))
                .collect();
            ensure!(shared.is_empty(), "stand-ins share layers {shared:?}");
        }
    }
    for (image, absent) in [
        ("python:3.9-slim", ["/usr/bin/node", "/usr/sbin/nginx"]),
        ("node:18-alpine", ["/usr/bin/python3", "/usr/sbin/nginx"]),
        ("nginx:alpine", ["/usr/bin/python3", "/usr/bin/node"]),
    ] {
        let found = cmd!(sh, "docker run --rm {image} ls {absent...}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .read()?;
        ensure!(found.is_empty(), "{image} carries {found:?}");
    }
    Ok(())
}
