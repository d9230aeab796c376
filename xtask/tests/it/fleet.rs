//! Many offline builders from one bundle (issue 19): a real CNCF Distribution registry
//! and three empty builder engines share a network namespace with only loopback (no way
//! out). The bundle is published into the registry once; the three build the application
//! at the same time with every step from the cache, and the images run. A second publish
//! of the same bundle pushes nothing.
//!
//! The builders import nothing: each has the project and, of the bundle, only its manifest
//! and SHA256SUMS (what patch-compose reads). Docker Hub's base image comes through the
//! engines' `registry-mirrors`; the one from ghcr.io, which a mirror does not cover, and the
//! npm cache image as the named contexts patch-compose writes. Last, a registry that asks
//! for credentials: the publish fails without a `docker login` and pushes with one.

use anyhow::{ensure, Context};
use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::bundle_e2e::{compose_build, xtask, xtask_bin};
use crate::support::run::Scratch;
use crate::support::{self, standins, EngineOptions, TEST_SITE};
use xtask::lab::{fleet, Engine, Registry, SharedNamespace};

/// A base image of another registry than Docker Hub (a stand-in: busybox under that name).
const GHCR_BASE: &str = "ghcr.io/xtask-fleet/tools:1";

const COMPOSE: &str = "\
name: fleet
services:
  api:
    build: ./api
    image: fleet-api:latest
  web:
    build:
      context: ./web
      target: final
    image: fleet-web:latest
";

const API_DOCKERFILE: &str = "\
FROM busybox:latest
RUN sleep 1 && echo api-ready | tee /api.txt
COPY hello.txt /hello.txt
CMD [\"cat\", \"/api.txt\", \"/hello.txt\"]
";

const WEB_DOCKERFILE: &str = "\
FROM scratch AS npm-cache
FROM ghcr.io/xtask-fleet/tools:1 AS builder
COPY package.json package-lock.json /app/
RUN --mount=type=bind,from=npm-cache,target=/npm ls -a /npm | tee /npm-listing.txt
RUN sleep 1 && echo web-built | tee /out.txt
FROM busybox:latest AS final
COPY --from=builder /out.txt /out.txt
RUN cat /out.txt > /copy.txt && echo copied
CMD [\"cat\", \"/copy.txt\"]
";

/// A lockfile with no packages: the npm cache the export makes of it is small, and needs
/// no package registry, but it goes the whole way (an npm cache image, published).
const PACKAGE_JSON: &str = "{\"name\": \"web\", \"version\": \"1.0.0\"}\n";
const PACKAGE_LOCK: &str = "{\"name\": \"web\", \"version\": \"1.0.0\", \"lockfileVersion\": 3, \
    \"requires\": true, \"packages\": {\"\": {\"name\": \"web\", \"version\": \"1.0.0\"}}}\n";

const STEPS: [&str; 7] = [
    "RUN sleep 1 && echo api-ready | tee /api.txt",
    "COPY hello.txt /hello.txt",
    "COPY package.json package-lock.json /app/",
    "RUN --mount=type=bind,from=npm-cache,target=/npm ls -a /npm | tee /npm-listing.txt",
    "RUN sleep 1 && echo web-built | tee /out.txt",
    "COPY --from=builder /out.txt /out.txt",
    "RUN cat /out.txt > /copy.txt && echo copied",
];

fn write_fixture(dir: &Utf8Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("api"))?;
    std::fs::create_dir_all(dir.join("web"))?;
    std::fs::write(dir.join("compose.yaml"), COMPOSE)?;
    std::fs::write(dir.join("api/Dockerfile"), API_DOCKERFILE)?;
    std::fs::write(dir.join("api/hello.txt"), "hello\n")?;
    std::fs::write(dir.join("web/Dockerfile"), WEB_DOCKERFILE)?;
    std::fs::write(dir.join("web/package.json"), PACKAGE_JSON)?;
    std::fs::write(dir.join("web/package-lock.json"), PACKAGE_LOCK)?;
    Ok(())
}

/// `cargo xtask cache-publish --json` run in `dir` inside the namespace (where the
/// registry is): its stderr and its JSON summary.
fn publish(
    ns: &SharedNamespace,
    dir: &Utf8Path,
    registry: &str,
) -> anyhow::Result<(String, serde_json::Value)> {
    let published = fleet::publish(ns, xtask_bin(), dir, registry, None)?;
    Ok((published.stderr, published.summary))
}

/// Every step of the fixture is in the log, and none ran.
fn ensure_from_cache(log: &str) -> anyhow::Result<()> {
    let found = fleet::outcomes(log);
    for wanted in STEPS {
        let step = found.iter().find(|(text, _)| text.contains(wanted));
        ensure!(step.is_some(), "no step {wanted:?} in the log:\n{log}");
    }
    let ran = fleet::steps_that_ran(log);
    ensure!(
        ran.is_empty(),
        "steps that ran instead of coming from the cache: {ran:#?}\n{log}"
    );
    Ok(())
}

#[test]
fn a_log_without_the_fixture_steps_is_refused() {
    let log = "\
#11 [api 2/3] RUN sleep 1 && echo api-ready | tee /api.txt
#11 CACHED
";
    let err = ensure_from_cache(log).unwrap_err().to_string();
    assert!(
        err.starts_with("no step \"COPY hello.txt /hello.txt\""),
        "{err}"
    );
}

/// A registry that asks for credentials: without a `docker login` the publish fails
/// saying so; with the login in the Docker config (`auths`), it pushes.
fn publish_with_a_login(ns: &SharedNamespace, src: &Utf8Path, tmp: &Scratch) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let hash = cmd!(sh, "python3 -W ignore -c {BCRYPT}").quiet().read()?;
    let registry = Registry::start(&TEST_SITE, ns, 5001, Some(&format!("fleet:{hash}")))?;
    let address = registry.address();
    let config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&config)?;
    let run = |docker_config: &Utf8Path| {
        fleet::publish_command(ns, xtask_bin(), &address)
            .current_dir(src)
            .env("DOCKER_CONFIG", docker_config)
            .output()
    };
    let out = run(&config)?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "published with no login:\n{said}");
    ensure!(
        said.contains(&format!(
            "asks for credentials: run `docker login {address}` first"
        )),
        "{said}"
    );
    // what `docker login` writes: base64 of `fleet:secret`
    std::fs::write(
        config.join("config.json"),
        format!("{{\"auths\": {{\"{address}\": {{\"auth\": \"ZmxlZXQ6c2VjcmV0\"}}}}}}"),
    )?;
    let out = run(&config)?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "publish with the login failed:\n{said}\n{}",
        registry.log_tail()
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(strings(&summary["pushed"]).len() == 5, "{summary:#}");
    Ok(())
}

/// A bcrypt hash of `secret`, as `htpasswd -B` writes it (Python's `crypt` module, in
/// Debian 12's Python 3.11; the lowest cost, since the registry checks it on every request).
const BCRYPT: &str =
    "import crypt; print(crypt.crypt('secret', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))";

fn strings(value: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn one_publish_serves_three_offline_builders_from_a_registry() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let tmp = Scratch::new("fleet");
    let src = tmp.path().join("release");
    write_fixture(&src)?;
    let online = suite.engine("fleet-online", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let online_sh = online.shell()?;
    online
        .docker(&online_sh, ["tag", standins::BUSYBOX, GHCR_BASE])
        .quiet()
        .run()?;
    xtask(&online_sh, &src, &["cache-export"]).context("export on the online engine")?;

    let ns = SharedNamespace::create(&TEST_SITE, "fleet")?;
    let registry = Registry::start(&TEST_SITE, &ns, 5000, None)?;
    let address = registry.address();
    let (said, first) = publish(&ns, &src, &address).with_context(|| registry.log_tail())?;
    eprintln!("first publish:\n{said}{first:#}");
    let manifest: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        src.join("docker-build-cache/manifest.yaml"),
    )?)?;
    let npm_image = manifest["services"]
        .as_sequence()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .and_then(|web| web["npm_image"].as_str())
        .context("the export made no npm cache image for web")?
        .to_string();
    let mut expected: Vec<String> = [
        "fleet-build-cache:api",
        "fleet-build-cache:web",
        npm_image.as_str(),
        "ghcr.io/xtask-fleet/tools:1",
        "library/busybox:latest",
    ]
    .iter()
    .map(|r| format!("{address}/{r}"))
    .collect();
    expected.sort();
    ensure!(
        strings(&first["pushed"]) == expected,
        "first publish pushed {first:#}"
    );
    ensure!(first["blobs_uploaded"].as_u64() > Some(2), "{first:#}");
    // The same bundle again: every manifest is there with the same digest; nothing moves.
    let (said, again) = publish(&ns, &src, &address)?;
    eprintln!("second publish:\n{said}{again:#}");
    ensure!(
        strings(&again["pushed"]).is_empty(),
        "re-publish pushed {again:#}"
    );
    ensure!(strings(&again["present"]) == expected, "{again:#}");
    ensure!(
        again["blobs_uploaded"] == 0 && again["bytes_uploaded"] == 0,
        "{again:#}"
    );
    ensure!(
        said.contains(": 0 pushed, 5 already there; 0 blobs uploaded"),
        "{said}"
    );

    // A new export after a change to api: the base images and the npm cache image are
    // there already, api's build cache is pushed again, and the layers the registry has
    // (the base image's) are not uploaded.
    std::fs::write(src.join("api/hello.txt"), "changed\n")?;
    xtask(&online_sh, &src, &["cache-export"]).context("the second export")?;
    drop(online);
    let (said, changed) = publish(&ns, &src, &address)?;
    eprintln!("publish after a change:\n{said}{changed:#}");
    let pushed = strings(&changed["pushed"]);
    ensure!(
        pushed.contains(&format!("{address}/fleet-build-cache:api")),
        "{changed:#}"
    );
    for unchanged in [
        npm_image.as_str(),
        "ghcr.io/xtask-fleet/tools:1",
        "library/busybox:latest",
    ] {
        let reference = format!("{address}/{unchanged}");
        ensure!(
            strings(&changed["present"]).contains(&reference) && !pushed.contains(&reference),
            "{unchanged} was pushed again: {changed:#}"
        );
    }
    ensure!(changed["blobs_present"].as_u64() > Some(0), "{changed:#}");

    let builders: Vec<Engine> = fleet::start_builders(
        &TEST_SITE,
        "fleet-builder",
        3,
        &ns,
        &address,
        EngineOptions::default(),
    )?;
    let proof = builders[0].prove_offline(None)?;
    eprintln!("builder in the fleet's namespace: {proof:?}");
    for (i, builder) in builders.iter().enumerate() {
        // The project, and of the bundle only what patch-compose reads: nothing is imported.
        let dir = tmp.path().join(format!("builder-{i}"));
        let bundle = dir.join("docker-build-cache");
        std::fs::create_dir_all(&bundle)?;
        let sh = builder.shell()?;
        cmd!(sh, "cp -a {src}/compose.yaml {src}/api {src}/web {dir}/").run()?;
        for file in ["manifest.yaml", "SHA256SUMS"] {
            std::fs::copy(src.join("docker-build-cache").join(file), bundle.join(file))?;
        }
        let patched = xtask(
            &sh,
            &dir,
            &["patch-compose", "--registry", &address, "--insecure"],
        )?;
        ensure!(patched.contains("Patched"), "{patched}");
        let images = builder.docker(&sh, ["images", "-q"]).read()?;
        ensure!(images.is_empty(), "builder {i} is not empty: {images}");
    }
    let compose = std::fs::read_to_string(tmp.path().join("builder-0/compose.yaml"))?;
    for wanted in [
        format!("type=registry,ref={address}/fleet-build-cache:web,registry.insecure=true"),
        format!(
            "'ghcr.io/xtask-fleet/tools:1': 'docker-image://{address}/ghcr.io/xtask-fleet/tools:1'"
        ),
        format!("npm-cache: 'docker-image://{address}/{npm_image}'"),
    ] {
        ensure!(
            compose.contains(&wanted),
            "no {wanted:?} in the patched file:\n{compose}"
        );
    }

    // All three at once, as a fleet builds.
    let started = std::time::Instant::now();
    let logs: Vec<anyhow::Result<(bool, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = builders
            .iter()
            .enumerate()
            .map(|(i, builder)| {
                let dir = tmp.path().join(format!("builder-{i}"));
                scope.spawn(move || {
                    let sh = builder.shell()?;
                    let _cd = sh.push_dir(&dir);
                    compose_build(&sh, &["build"])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a build thread"))
            .collect()
    });
    eprintln!(
        "three builders built the fleet in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for (i, (log, builder)) in logs.into_iter().zip(&builders).enumerate() {
        let (ok, log) = log?;
        ensure!(
            ok,
            "builder {i}: the build failed:\n{log}\n{}",
            registry.log_tail()
        );
        ensure_from_cache(&log).with_context(|| format!("builder {i}"))?;
        let sh = builder.shell()?;
        let api = cmd!(sh, "docker run --rm --network none fleet-api:latest").read()?;
        ensure!(
            api == "api-ready\nchanged",
            "builder {i}: api printed {api:?}"
        );
        let web = cmd!(sh, "docker run --rm --network none fleet-web:latest").read()?;
        ensure!(web == "web-built", "builder {i}: web printed {web:?}");
    }
    drop(builders);
    publish_with_a_login(&ns, &src, &tmp)?;
    drop(registry);
    drop(ns);
    Ok(())
}
