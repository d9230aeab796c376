//! What operators read and see is true (issue 22), on private engines with the busybox
//! stand-in: one import names every damaged file, a base image whose tag was moved is
//! named with both IDs, and `cache-status` names the code files that changed since the
//! export.

use anyhow::{ensure, Context};
use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::support::run::{ok, xtask_on, Scratch};
use crate::support::{self, standins, Engine, EngineOptions};

const COMPOSE: &str = "\
name: ops
services:
  api:
    build: ./api
    image: ops-api:latest
";

const DOCKERFILE: &str = "\
FROM busybox:latest
RUN echo building > /built.txt
COPY . /app
CMD [\"cat\", \"/app/hello.txt\"]
";

fn write_fixture(dir: &Utf8Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("api/src"))?;
    std::fs::write(dir.join("compose.yaml"), COMPOSE)?;
    std::fs::write(dir.join("api/Dockerfile"), DOCKERFILE)?;
    std::fs::write(dir.join("api/hello.txt"), "hello\n")?;
    std::fs::write(dir.join("api/src/main.py"), "print('hi')\n")?;
    std::fs::write(dir.join("api/src/old.py"), "print('old')\n")?;
    std::fs::write(dir.join("api/.dockerignore"), "*.log\nnotes/\n")?;
    std::fs::write(dir.join("api/debug.log"), "noise\n")?;
    Ok(())
}

fn manifest(bundle: &Utf8Path) -> anyhow::Result<serde_yaml::Value> {
    Ok(serde_yaml::from_str(&std::fs::read_to_string(
        bundle.join("manifest.yaml"),
    )?)?)
}

/// Flips the middle byte of `path`; gives the original bytes back.
fn flip(path: &Utf8Path) -> anyhow::Result<Vec<u8>> {
    let original = std::fs::read(path)?;
    let mut bytes = original.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(path, bytes)?;
    Ok(original)
}

fn images(engine: &Engine) -> anyhow::Result<String> {
    let sh = engine.shell()?;
    Ok(cmd!(sh, "docker images -q").quiet().read()?)
}

#[test]
fn one_import_names_every_damaged_file_and_a_moved_tag_is_named() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("ops-online", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("ops-offline", EngineOptions::default())?;
    let scratch = Scratch::new("import");
    let src = scratch.path().join("release");
    write_fixture(&src)?;
    ok(xtask_on(&online, &src, &["cache-export"], &[]), "export")?;
    let bundle = src.join("docker-build-cache");
    let m = manifest(&bundle)?;
    // The saved images' files, streamed into docker load and checked as they stream.
    let streamed: Vec<String> = m["image_layout"]["entries"]
        .as_sequence()
        .context("the bundle has no image layout")?
        .iter()
        .filter_map(|e| e["path"].as_str().map(str::to_string))
        .collect();
    ensure!(
        streamed.len() >= 2,
        "too few saved-image files: {streamed:?}"
    );

    // Two streamed files, then a streamed one and one checked before the load: each run
    // names both, and loads nothing.
    let cases = [
        [streamed[0].clone(), streamed[streamed.len() - 1].clone()],
        [streamed[0].clone(), "import-build-cache.sh".to_string()],
    ];
    for victims in cases {
        let saved: Vec<Vec<u8>> = victims
            .iter()
            .map(|v| flip(&bundle.join(v)))
            .collect::<anyhow::Result<_>>()?;
        let run = xtask_on(&offline, &src, &["cache-import"], &[]);
        ensure!(run.code == 1, "the import succeeded:\n{}", run.stderr);
        for victim in &victims {
            ensure!(
                run.stderr.contains(victim.as_str()),
                "{victims:?}: {victim} is not named:\n{}",
                run.stderr
            );
        }
        ensure!(
            images(&offline)?.is_empty(),
            "{victims:?}: images were loaded"
        );
        for (victim, bytes) in victims.iter().zip(saved) {
            std::fs::write(bundle.join(victim), bytes)?;
        }
    }
    ok(xtask_on(&offline, &src, &["cache-import"], &[]), "import")?;

    // Someone tags another image as busybox:latest on the server: the import names it.
    let bundled = m["images"]
        .as_sequence()
        .context("no images")?
        .iter()
        .find(|i| i["name"] == "busybox:latest")
        .and_then(|i| i["id"].as_str())
        .context("busybox:latest is not in the bundle")?
        .to_string();
    let sh: Shell = offline.shell()?;
    let container = cmd!(sh, "docker create busybox:latest true")
        .quiet()
        .read()?;
    let change = "ENV MOVED=1";
    cmd!(
        sh,
        "docker commit --change {change} {container} ops-moved:1"
    )
    .quiet()
    .ignore_stdout()
    .run()?;
    cmd!(sh, "docker rm {container}")
        .quiet()
        .ignore_stdout()
        .run()?;
    cmd!(sh, "docker tag ops-moved:1 busybox:latest")
        .quiet()
        .run()?;
    let format = "{{.Id}}";
    let moved = cmd!(sh, "docker image inspect --format {format} busybox:latest")
        .quiet()
        .read()?;
    ensure!(moved != bundled, "the tag did not move");
    let stderr = ok(
        xtask_on(&offline, &src, &["cache-import"], &[]),
        "import again",
    )?;
    ensure!(
        stderr.contains("a tag was moved")
            && stderr.contains("busybox:latest")
            && stderr.contains(&moved)
            && stderr.contains(&bundled),
        "the moved tag is not named with both IDs:\n{stderr}"
    );
    let now = cmd!(sh, "docker image inspect --format {format} busybox:latest")
        .quiet()
        .read()?;
    ensure!(
        now == bundled,
        "busybox:latest is {now}, the bundle has {bundled}"
    );
    Ok(())
}

#[test]
fn cache_status_names_the_code_that_changed_since_the_export() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("ops-status", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let scratch = Scratch::new("status");
    let src = scratch.path().join("release");
    write_fixture(&src)?;
    ok(xtask_on(&online, &src, &["cache-export"], &[]), "export")?;
    let fresh = ok(xtask_on(&online, &src, &["cache-status"], &[]), "status")?;
    ensure!(fresh.contains("api fresh"), "{fresh}");

    // Changed, added and removed code; files the .dockerignore leaves out do not count.
    std::fs::write(src.join("api/src/main.py"), "print('changed')\n")?;
    std::fs::write(src.join("api/src/new.py"), "print('new')\n")?;
    std::fs::remove_file(src.join("api/src/old.py"))?;
    std::fs::write(src.join("api/trace.log"), "ignored\n")?;
    std::fs::create_dir_all(src.join("api/notes"))?;
    std::fs::write(src.join("api/notes/todo.txt"), "ignored\n")?;
    let stale = ok(xtask_on(&online, &src, &["cache-status"], &[]), "status")?;
    for line in [
        "api stale, can rebuild offline",
        "changed since the export: api/src/main.py\n",
        "changed since the export: api/src/new.py (added)\n",
        "changed since the export: api/src/old.py (removed)\n",
    ] {
        ensure!(stale.contains(line), "no {line:?} in:\n{stale}");
    }
    ensure!(
        !stale.contains("trace.log") && !stale.contains("todo.txt"),
        "an ignored file is named:\n{stale}"
    );

    // A bundle made before the context was recorded: said, not failed.
    let bundle = src.join("docker-build-cache");
    let mut m = manifest(&bundle)?;
    for service in m["services"].as_sequence_mut().context("no services")? {
        service
            .as_mapping_mut()
            .context("a service is not a mapping")?
            .remove("context_files")
            .context("the export did not record the context")?;
    }
    let text = serde_yaml::to_string(&m)?;
    std::fs::write(bundle.join("manifest.yaml"), &text)?;
    // As that export wrote it: SHA256SUMS lists the manifest it wrote.
    let digest: String = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        text.as_bytes(),
    ))
    .iter()
    .map(|b| format!("{b:02x}"))
    .collect();
    let sums: String = std::fs::read_to_string(bundle.join("SHA256SUMS"))?
        .lines()
        .map(|line| match line.strip_suffix("  manifest.yaml") {
            Some(_) => format!("{digest}  manifest.yaml\n"),
            None => format!("{line}\n"),
        })
        .collect();
    std::fs::write(bundle.join("SHA256SUMS"), sums)?;
    let old = ok(
        xtask_on(&online, &src, &["cache-status"], &[]),
        "status of an old bundle",
    )?;
    ensure!(
        old.contains("the bundle does not record the build context; re-export to check code"),
        "{old}"
    );
    Ok(())
}
