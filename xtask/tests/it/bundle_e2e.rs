//! The heart of the tool, end to end on real engines: an "online" private engine exports a
//! fixture project (two services, one multi-stage, slow RUN steps, a stand-in base image);
//! an "offline" one, empty and with no way out, imports the bundle, the compose file is
//! patched, and `docker compose build` reports every step of every service as cached.

use anyhow::{ensure, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::support::run::Scratch;
use crate::support::{self, fault, standins, Engine, EngineOptions};

const COMPOSE: &str = "\
name: fixture
services:
  api:
    build: ./api
    image: fixture-api:latest
  web:
    # a multi-stage build: the builder stage must be cached too
    build:
      context: ./web
      target: final
    image: fixture-web:latest
  cache:
    image: busybox:latest
";

const API_DOCKERFILE: &str = "\
FROM busybox:latest
RUN sleep 2 && echo api-ready > /api.txt
COPY hello.txt /hello.txt
CMD [\"cat\", \"/api.txt\", \"/hello.txt\"]
";

const WEB_DOCKERFILE: &str = "\
FROM busybox:latest AS builder
RUN sleep 2 && echo web-built > /out.txt
FROM busybox:latest AS final
COPY --from=builder /out.txt /out.txt
RUN sleep 1 && cat /out.txt > /copy.txt
CMD [\"cat\", \"/copy.txt\"]
";

/// Writes the fixture project into `dir`.
pub fn write_fixture(dir: &Utf8Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("api"))?;
    std::fs::create_dir_all(dir.join("web"))?;
    std::fs::write(dir.join("compose.yaml"), COMPOSE)?;
    std::fs::write(dir.join("api/Dockerfile"), API_DOCKERFILE)?;
    std::fs::write(dir.join("api/hello.txt"), "hello\n")?;
    std::fs::write(dir.join("web/Dockerfile"), WEB_DOCKERFILE)?;
    Ok(())
}

pub fn xtask_bin() -> &'static str {
    support::run::bin()
}

/// Runs `cargo xtask ARGS` in `dir` against `engine`; its stderr, or an error with it.
pub fn xtask(sh: &Shell, dir: &Utf8Path, args: &[&str]) -> anyhow::Result<String> {
    let bin = xtask_bin();
    let _cd = sh.push_dir(dir);
    let out = cmd!(sh, "{bin} {args...}").ignore_status().output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "xtask {} failed ({}):\n{stderr}",
        args.join(" "),
        out.status
    );
    Ok(stderr)
}

/// Runs `docker compose --progress plain ARGS` in the shell's folder, against its engine:
/// whether it succeeded, and its whole log (stdout then stderr).
pub fn compose_build(sh: &Shell, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = cmd!(sh, "docker compose --progress plain {args...}")
        .ignore_status()
        .output()?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), log))
}

/// The RUN and COPY steps of a `--progress plain` BuildKit log, in order, each with
/// whether it came from the cache.
pub fn steps(log: &str) -> Vec<(String, bool)> {
    let mut steps: Vec<(String, String)> = Vec::new();
    let mut cached = std::collections::BTreeSet::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, text)) = rest.split_once(' ') else {
            continue;
        };
        if text.trim() == "CACHED" {
            cached.insert(id.to_string());
        } else if text.starts_with('[')
            && (text.contains("] RUN ") || text.contains("] COPY "))
            && !steps.iter().any(|(i, _)| i == id)
        {
            steps.push((id.to_string(), text.to_string()));
        }
    }
    steps
        .into_iter()
        .map(|(id, text)| {
            let hit = cached.contains(&id);
            (text, hit)
        })
        .collect()
}

/// Steps of a `--progress plain` BuildKit log that ran instead of coming from the cache.
pub fn uncached_steps(log: &str) -> Vec<String> {
    steps(log)
        .into_iter()
        .filter(|(_, hit)| !hit)
        .map(|(text, _)| text)
        .collect()
}

/// Every step of the fixture's Dockerfiles is in the log, and each came from the cache:
/// a log with no step lines (a build that did nothing, or another progress format)
/// fails instead of passing.
pub fn ensure_fixture_steps_cached(log: &str) -> anyhow::Result<()> {
    let found = steps(log);
    for wanted in FIXTURE_STEPS {
        let step = found.iter().find(|(text, _)| text.contains(wanted));
        match step {
            Some((_, true)) => {}
            Some((text, false)) => {
                anyhow::bail!("step {text} ran instead of coming from the cache:\n{log}")
            }
            None => anyhow::bail!("no step {wanted:?} in the build's log:\n{log}"),
        }
    }
    let uncached = uncached_steps(log);
    ensure!(
        uncached.is_empty(),
        "steps not from the cache: {uncached:#?}\n{log}"
    );
    Ok(())
}

/// The RUN and COPY steps of [`API_DOCKERFILE`] and [`WEB_DOCKERFILE`], as BuildKit's
/// log names them.
const FIXTURE_STEPS: [&str; 5] = [
    "RUN sleep 2 && echo api-ready > /api.txt",
    "COPY hello.txt /hello.txt",
    "RUN sleep 2 && echo web-built > /out.txt",
    "COPY --from=builder /out.txt /out.txt",
    "RUN sleep 1 && cat /out.txt > /copy.txt",
];

fn copy_tree(sh: &Shell, from: &Utf8Path, to: &Utf8Path) -> anyhow::Result<()> {
    cmd!(sh, "cp -a {from} {to}").quiet().run()?;
    Ok(())
}

/// Exports the fixture on `online`, copies project and bundle to a new folder (the
/// offline server), imports and patches there against `offline`, and builds.
fn export_import_build(
    online: &Engine,
    offline: &Engine,
    strategy: Option<&str>,
) -> anyhow::Result<(String, Utf8PathBuf, Scratch)> {
    let online_sh = online.shell()?;
    let offline_sh = offline.shell()?;
    let tmp = Scratch::new("e2e");
    let root = tmp.path().to_owned();
    let src = root.join("release");
    write_fixture(&src)?;
    let mut args = vec!["cache-export"];
    if let Some(s) = strategy {
        args.extend(["--strategy", s]);
    }
    xtask(&online_sh, &src, &args).context("export on the online engine")?;

    let server = root.join("server");
    copy_tree(&online_sh, &src, &server)?;
    let import = xtask(&offline_sh, &server, &["cache-import"]).context("import offline")?;
    ensure!(
        import.contains("Verified"),
        "import did not verify first:\n{import}"
    );
    // The offline server for real: its engine lives in a network namespace with only
    // loopback. Before the build proves anything, the gap is shown: a pull fails, and
    // neither the engine's namespace nor a container reaches an address the host answers on.
    ensure!(
        offline.network_namespace().is_some(),
        "the offline engine must run in its own network namespace"
    );
    let proof = offline.prove_offline(Some(standins::BUSYBOX))?;
    eprintln!("offline engine {}: {proof:?}", offline.name());
    xtask(&offline_sh, &server, &["patch-compose"]).context("patch-compose offline")?;

    let _cd = offline_sh.push_dir(&server);
    let mut build = cmd!(offline_sh, "docker compose --progress plain build");
    if strategy == Some("legacy") {
        build = build.env("DOCKER_BUILDKIT", "0");
    }
    let out = build.ignore_status().output()?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "offline build failed:\n{log}");
    Ok((log, server, tmp))
}

/// What a container of `image` (no network) prints, read from its log after it exited:
/// `docker run`'s attached output can miss all of a container that exits at once.
pub fn printed_by(sh: &Shell, image: &str) -> anyhow::Result<String> {
    let id = cmd!(sh, "docker run --detach --network none {image}").read()?;
    let code = cmd!(sh, "docker wait {id}").read()?;
    let printed = cmd!(sh, "docker logs {id}").read()?;
    cmd!(sh, "docker rm {id}").quiet().ignore_stdout().run()?;
    ensure!(code == "0", "{image} exited with {code}: {printed}");
    Ok(printed)
}

fn check_images_run(offline: &Engine) -> anyhow::Result<()> {
    let sh = offline.shell()?;
    let api = printed_by(&sh, "fixture-api:latest")?;
    ensure!(api == "api-ready\nhello", "api printed {api:?}");
    let web = printed_by(&sh, "fixture-web:latest")?;
    ensure!(web == "web-built", "web printed {web:?}");
    Ok(())
}

#[test]
fn local_strategy_rebuilds_every_step_from_cache_offline() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("online", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("offline", EngineOptions::default())?;

    let (log, server, _tmp) = export_import_build(&online, &offline, None)?;
    let manifest = std::fs::read_to_string(server.join("docker-build-cache/manifest.yaml"))?;
    ensure!(manifest.contains("strategy: local"), "{manifest}");
    ensure_fixture_steps_cached(&log)?;
    ensure!(
        log.contains("[web builder 2/2] RUN"),
        "the builder stage did not run:\n{log}"
    );
    check_images_run(&offline)?;

    // A second import changes nothing and loads nothing.
    let again = xtask(&offline.shell()?, &server, &["cache-import", "--json"])?;
    ensure!(
        again.contains("0 loaded"),
        "second import loaded again:\n{again}"
    );
    // patch-compose is idempotent.
    let check = xtask(&offline.shell()?, &server, &["patch-compose", "--check"])?;
    ensure!(check.contains("is patched"), "{check}");
    Ok(())
}

#[test]
fn inline_strategy_works_on_the_classic_image_store() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let classic = EngineOptions {
        containerd_store: false,
        ..EngineOptions::default()
    };
    let online = suite.engine("online-classic", classic.clone())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("offline-classic", classic)?;

    let (log, server, _tmp) = export_import_build(&online, &offline, None)?;
    let manifest = std::fs::read_to_string(server.join("docker-build-cache/manifest.yaml"))?;
    ensure!(manifest.contains("strategy: inline"), "{manifest}");
    ensure_fixture_steps_cached(&log)?;
    check_images_run(&offline)?;
    Ok(())
}

#[test]
fn a_damaged_bundle_is_refused_before_anything_is_loaded() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("online-damage", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("offline-damage", EngineOptions::default())?;
    let sh = online.shell()?;
    let _tmp = Scratch::new("e2e");
    let root = _tmp.path().to_owned();
    let src = root.join("release");
    write_fixture(&src)?;
    xtask(&sh, &src, &["cache-export"])?;
    let bundle = src.join("docker-build-cache");
    // The smallest blob, and the largest: the base image's layer, which docker load and
    // the build cache read alike.
    let blobs = support_blobs_by_size(&bundle)?;
    ensure!(blobs.len() > 1, "the fixture's bundle has a single blob");
    let (blob, layer) = (blobs[0].clone(), blobs[blobs.len() - 1].clone());

    type Damage = fn(&Utf8Path) -> anyhow::Result<()>;
    let cases: [(&str, String, Damage); 3] = [
        ("flipped byte", layer, |p| {
            let mut bytes = std::fs::read(p)?;
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            Ok(std::fs::write(p, bytes)?)
        }),
        ("truncated", blob.clone(), |p| {
            let bytes = std::fs::read(p)?;
            Ok(std::fs::write(p, &bytes[..bytes.len() / 2])?)
        }),
        ("missing", "import-build-cache.sh".into(), |p| {
            Ok(std::fs::remove_file(p)?)
        }),
    ];
    let offline_sh = offline.shell()?;
    for (what, file, damage) in cases {
        let server = root.join(format!("server-{}", what.replace(' ', "-")));
        copy_tree(&sh, &src, &server)?;
        damage(&server.join("docker-build-cache").join(&file))?;
        let err = xtask(&offline_sh, &server, &["cache-import"])
            .err()
            .with_context(|| format!("{what}: the import succeeded"))?;
        let err = format!("{err:#}");
        ensure!(
            err.contains(&file),
            "{what}: the error does not name {file}:\n{err}"
        );
        let images = cmd!(offline_sh, "docker images -q").read()?;
        ensure!(images.is_empty(), "{what}: images were loaded: {images}");
        // The POSIX script refuses the same bundle (unless it is the missing one).
        let script = server.join("docker-build-cache/import-build-cache.sh");
        if script.exists() {
            let out = cmd!(offline_sh, "sh {script}")
                .ignore_status()
                .quiet()
                .output()?;
            ensure!(
                !out.status.success(),
                "{what}: import-build-cache.sh accepted the bundle"
            );
            let images = cmd!(offline_sh, "docker images -q").read()?;
            ensure!(
                images.is_empty(),
                "{what}: the script loaded images: {images}"
            );
        }
    }

    // An intact bundle: the generated script is shellcheck-clean and imports it on an
    // empty engine, where Rust is not needed.
    let script = bundle.join("import-build-cache.sh");
    cmd!(sh, "shellcheck --shell=sh {script}").run()?;
    let server = root.join("server-script");
    copy_tree(&sh, &src, &server)?;
    let script = server.join("docker-build-cache/import-build-cache.sh");
    cmd!(offline_sh, "sh {script}").quiet().run()?;
    let loaded = cmd!(offline_sh, "docker images --quiet busybox:latest").read()?;
    ensure!(!loaded.is_empty(), "the script did not load busybox:latest");
    Ok(())
}

fn support_blobs_by_size(bundle: &Utf8Path) -> anyhow::Result<Vec<String>> {
    let dir = bundle.join("build-cache/blobs/sha256");
    let mut blobs: Vec<(u64, String)> = std::fs::read_dir(&dir)?
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.metadata().ok()?.len(), e.file_name().into_string().ok()?))
        })
        .collect();
    blobs.sort();
    Ok(blobs
        .into_iter()
        .map(|(_, name)| format!("build-cache/blobs/sha256/{name}"))
        .collect())
}

#[test]
fn an_interrupted_export_leaves_no_bundle_that_verifies() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("online-kill", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let sh = online.shell()?;
    let _tmp = Scratch::new("e2e");
    let root = _tmp.path().to_owned();
    let src = root.join("release");
    write_fixture(&src)?;
    // A first, complete export; then exports killed at several points (the whole process
    // group, as Ctrl-C or a dying session would) must leave either no bundle that
    // verifies, or the previous bundle whole.
    xtask(&sh, &src, &["cache-export"])?;
    let previous = std::fs::read(src.join("docker-build-cache/manifest.yaml"))?;
    std::fs::write(src.join("api/hello.txt"), "changed\n")?;
    let bin = xtask_bin();
    let pid_file = online.root().join("docker.pid");
    // SIGKILL, and SIGINT as Ctrl-C sends it to the terminal's whole process group, each
    // at a step the export announces: the engine is frozen from that line on, so the step
    // is still under way when the signal lands (support::fault checks that it did).
    for (marker, signal) in [
        ("    Building api", "KILL"),
        ("    Building web", "INT"),
        ("    Building web", "KILL"),
    ] {
        let command = std::process::Command::from(
            cmd!(sh, "{bin} -f {src}/compose.yaml cache-export").quiet(),
        );
        fault::interrupt_at(command, marker, signal, Some(&pid_file))
            .with_context(|| format!("SIG{signal} at {marker:?}"))?;
        let verify = {
            let _cd = sh.push_dir(&src);
            cmd!(sh, "{bin} cache-verify")
                .ignore_status()
                .quiet()
                .output()?
        };
        if verify.status.success() {
            let now = std::fs::read(src.join("docker-build-cache/manifest.yaml"))?;
            ensure!(
                now == previous,
                "after an export killed (SIG{signal}) at {marker:?} a bundle verifies that is not the previous one"
            );
        }
    }
    xtask(&sh, &src, &["cache-export"]).context("the export after a killed one")?;
    xtask(&sh, &src, &["cache-verify"])?;
    Ok(())
}

#[test]
fn uncached_steps_are_found_in_a_plain_log() {
    let log = "\
#5 [api 2/3] RUN sleep 2
#5 CACHED
#6 [web builder 2/2] RUN sleep 2
#6 0.2 running
#6 DONE 2.1s
#7 [web final 2/3] COPY --from=builder /out.txt /out.txt
#7 CACHED
";
    assert_eq!(uncached_steps(log), vec!["[web builder 2/2] RUN sleep 2"]);
    // A log without step lines proves nothing: the check refuses it.
    let none = "#1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n";
    assert!(uncached_steps(none).is_empty());
    let err = ensure_fixture_steps_cached(none).unwrap_err().to_string();
    assert!(
        err.starts_with("no step \"RUN sleep 2 && echo api-ready"),
        "{err}"
    );
    let all: String = FIXTURE_STEPS
        .iter()
        .enumerate()
        .map(|(i, step)| format!("#{i} [x {i}/5] {step}\n#{i} CACHED\n"))
        .collect();
    ensure_fixture_steps_cached(&all).unwrap();
    let one_ran = all.replacen("#1 CACHED", "#1 DONE 0.1s", 1);
    let err = ensure_fixture_steps_cached(&one_ran)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("step [x 1/5] COPY hello.txt /hello.txt ran"),
        "{err}"
    );
}

/// The legacy strategy: cache images per stage for the classic builder. Compose v2 does
/// not pass `cache_from` to the classic builder (its classic build options have no
/// CacheFrom), so the offline build here is what compose v1 and plain `docker build` do
/// with the patched compose file's `cache_from`: the classic builder with `--cache-from`.
#[test]
fn legacy_strategy_cache_images_serve_the_classic_builder_offline() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("online-legacy", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("offline-legacy", EngineOptions::default())?;
    let sh = online.shell()?;
    let _tmp = Scratch::new("e2e");
    let root = _tmp.path().to_owned();
    let src = root.join("release");
    write_fixture(&src)?;
    xtask(&sh, &src, &["cache-export", "--strategy", "legacy"])?;
    let server = root.join("server");
    copy_tree(&sh, &src, &server)?;
    let offline_sh = offline.shell()?;
    xtask(&offline_sh, &server, &["cache-import"])?;
    let proof = offline.prove_offline(Some(standins::BUSYBOX))?;
    eprintln!("offline engine {}: {proof:?}", offline.name());
    xtask(&offline_sh, &server, &["patch-compose"])?;

    let _cd = offline_sh.push_dir(&server);
    let config = cmd!(offline_sh, "docker compose config --format json").read()?;
    let config: serde_json::Value = serde_json::from_str(&config)?;
    for (service, tag) in [("api", "fixture-api:latest"), ("web", "fixture-web:latest")] {
        let build = &config["services"][service]["build"];
        let context = build["context"].as_str().context("context")?;
        let mut args: Vec<String> = Vec::new();
        for cache in build["cache_from"].as_array().context("cache_from")? {
            args.extend([
                "--cache-from".into(),
                cache.as_str().unwrap_or_default().into(),
            ]);
        }
        if let Some(target) = build["target"].as_str() {
            args.extend(["--target".into(), target.into()]);
        }
        let out = cmd!(offline_sh, "docker build {args...} -t {tag} {context}")
            .env("DOCKER_BUILDKIT", "0")
            .ignore_status()
            .output()?;
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "{service}: build failed:\n{log}");
        let lines: Vec<&str> = log.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains(" : RUN ") || line.contains(" : COPY ") {
                ensure!(
                    lines
                        .get(i + 1)
                        .is_some_and(|next| next.contains("Using cache")),
                    "{service}: `{line}` did not come from the cache:\n{log}"
                );
            }
        }
    }
    check_images_run(&offline)?;
    Ok(())
}

/// A service that starts `FROM` an image another service of the project builds (a shared
/// build-base image). The export builds the base first; offline, patch-compose prints the
/// builds in rounds (compose 2.26 would build both at once and pull the base image, which
/// fails with no network), and the printed commands, run as printed, take every step from
/// the cache.
#[test]
fn an_image_built_here_is_rebuilt_first_offline_in_the_printed_order() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("online-base", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("offline-base", EngineOptions::default())?;
    let tmp = Scratch::new("e2e-base");
    let src = tmp.path().join("release");
    std::fs::create_dir_all(src.join("base"))?;
    std::fs::create_dir_all(src.join("app"))?;
    std::fs::write(
        src.join("compose.yaml"),
        "name: layered\nservices:\n  app:\n    build: ./app\n    image: layered-app:latest\n  \
         base:\n    build: ./base\n    image: layered-base:latest\n",
    )?;
    std::fs::write(
        src.join("base/Dockerfile"),
        "FROM busybox:latest\nRUN sleep 1 && echo from-base > /base.txt\n",
    )?;
    std::fs::write(
        src.join("app/Dockerfile"),
        "FROM layered-base\nRUN sleep 1 && cat /base.txt > /app.txt\nCMD [\"cat\", \"/app.txt\"]\n",
    )?;
    let export = xtask(&online.shell()?, &src, &["cache-export"])?;
    let (base_at, app_at) = (
        export.find("Building base").context("no `Building base`")?,
        export.find("Building app").context("no `Building app`")?,
    );
    ensure!(
        base_at < app_at,
        "the export built app before base:\n{export}"
    );

    let server = tmp.path().join("server");
    copy_tree(&online.shell()?, &src, &server)?;
    let sh = offline.shell()?;
    xtask(&sh, &server, &["cache-import"])?;
    let proof = offline.prove_offline(Some(standins::BUSYBOX))?;
    eprintln!("offline engine {}: {proof:?}", offline.name());
    let patched = xtask(&sh, &server, &["patch-compose"])?;
    let commands: Vec<&str> = patched
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("docker compose "))
        .collect();
    ensure!(
        commands == ["docker compose build base", "docker compose build"],
        "patch-compose printed {commands:?}:\n{patched}"
    );
    let _cd = sh.push_dir(&server);
    let mut log = String::new();
    for command in commands {
        let args: Vec<&str> = command
            .strip_prefix("docker compose ")
            .unwrap_or_default()
            .split(' ')
            .collect();
        let (ok, text) = compose_build(&sh, &args)?;
        ensure!(ok, "`{command}` failed offline:\n{text}");
        log.push_str(&text);
    }
    for step in [
        "RUN sleep 1 && echo from-base > /base.txt",
        "RUN sleep 1 && cat /base.txt > /app.txt",
    ] {
        let found: Vec<(String, bool)> = steps(&log)
            .into_iter()
            .filter(|(text, _)| text.contains(step))
            .collect();
        ensure!(!found.is_empty(), "no step {step:?} in the log:\n{log}");
        ensure!(
            found.iter().all(|(_, hit)| *hit),
            "{step:?} ran instead of coming from the cache:\n{log}"
        );
    }
    let printed = printed_by(&sh, "layered-app:latest")?;
    ensure!(printed == "from-base", "layered-app printed {printed:?}");
    Ok(())
}
