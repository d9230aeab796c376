//! Delta bundles end to end (`cache-export --since`): after a one-line change the delta
//! carries a few small files and none of the base image's blobs; on an offline engine it
//! imports with its base beside it (completed into a full bundle) and `docker compose
//! build` takes every step from the cache, the changed one included (the delta carries it). Without its base, or with a base of another digest,
//! it is refused, naming the base's digest and the files it lacks, and nothing is loaded.
//! The sizes are printed (`delta sizes:`) for docs: one-line change, and a change of the
//! builder stage's install step (a dependency bump in the fixture). Then, with the base's
//! image in the offline engine: a delta of a base-images bundle imports with no base
//! folder, the engine standing in for it, while the local-strategy delta is still refused,
//! naming the files no engine holds.

use anyhow::{ensure, Context};
use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::bundle_e2e::{
    compose_build, ensure_fixture_steps_cached, printed_by, steps, uncached_steps, write_fixture,
    xtask,
};
use crate::support::run::Scratch;
use crate::support::{self, standins, EngineOptions};

/// `cargo xtask ARGS` in `dir` expected to fail: its stderr.
fn refused(sh: &Shell, dir: &Utf8Path, args: &[&str]) -> anyhow::Result<String> {
    match xtask(sh, dir, args) {
        Ok(out) => anyhow::bail!("xtask {} succeeded:\n{out}", args.join(" ")),
        Err(e) => Ok(format!("{e:#}")),
    }
}

/// The bundle's digest, as `cache-verify` prints it (`sha256:<hex>`).
fn digest_of(dir: &Utf8Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let sums = std::fs::read(dir.join("SHA256SUMS"))?;
    let hex: String = sha2::Sha256::digest(&sums)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("sha256:{hex}"))
}

/// The paths of the saved images' files (`image_layout`) of the bundle in `dir`.
fn image_files(dir: &Utf8Path) -> anyhow::Result<Vec<String>> {
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("manifest.yaml"))?)?;
    let entries = manifest["image_layout"]["entries"]
        .as_sequence()
        .context("the base has no image_layout")?;
    Ok(entries
        .iter()
        .filter_map(|e| e["path"].as_str().map(String::from))
        .collect())
}

/// `cache-export --since BASE --output OUT --json` in `project`: the JSON summary.
fn export_delta(
    sh: &Shell,
    project: &Utf8Path,
    base: &Utf8Path,
    out: &Utf8Path,
) -> anyhow::Result<serde_json::Value> {
    let bin = crate::bundle_e2e::xtask_bin();
    let _cd = sh.push_dir(project);
    let output = cmd!(
        sh,
        "{bin} cache-export --since {base} --output {out} --json"
    )
    .ignore_status()
    .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "delta export failed:\n{stderr}");
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "the stdout of cache-export --json is not JSON:\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The first file the delta in `dir` expects from its base.
fn first_from_base(dir: &Utf8Path) -> anyhow::Result<String> {
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("manifest.yaml"))?)?;
    manifest["files"]
        .as_sequence()
        .context("no files")?
        .iter()
        .find(|f| f["from_base"].as_bool() == Some(true))
        .and_then(|f| f["path"].as_str().map(String::from))
        .context("the delta expects nothing from its base")
}

fn size_of_bundle(dir: &Utf8Path) -> anyhow::Result<u64> {
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("manifest.yaml"))?)?;
    Ok(manifest["files"]
        .as_sequence()
        .context("no files")?
        .iter()
        .filter_map(|f| f["size"].as_u64())
        .sum())
}

#[test]
fn a_delta_imports_on_its_base_and_is_refused_without_it() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("online-delta", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("offline-delta", EngineOptions::default())?;
    let (sh, offline_sh) = (online.shell()?, offline.shell()?);
    let tmp = Scratch::new("delta");
    let root = tmp.path().to_owned();
    let src = root.join("release");
    write_fixture(&src)?;
    xtask(&sh, &src, &["cache-export"]).context("exporting the base")?;
    let base = src.join("docker-build-cache");
    let base_digest = digest_of(&base)?;
    let full_size = size_of_bundle(&base)?;

    // One line of code changes; the delta is made against the base.
    std::fs::write(src.join("api/hello.txt"), "hello again\n")?;
    let delta = root.join("delta");
    let json = export_delta(&sh, &src, &base, &delta)?;
    eprintln!("delta export: {json:#}");
    ensure!(
        json["delta"]["base_digest"] == base_digest.as_str(),
        "{json:#}"
    );
    let carried = json["delta"]["bytes_carried"].as_u64().context("bytes")?;
    let files_carried = json["delta"]["files_carried"].as_u64().context("files")?;
    ensure!(json["bytes"].as_u64() == Some(carried), "{json:#}");
    ensure!(
        carried * 10 < full_size,
        "the delta carries {carried} bytes of a {full_size}-byte bundle"
    );
    // No file of the saved base images is carried: their blobs are the base's.
    let images = image_files(&base)?;
    ensure!(!images.is_empty(), "the base saved no image files");
    for file in &images {
        ensure!(
            !delta.join(file).exists(),
            "the delta carries the base image's {file}"
        );
    }
    // The delta verifies on its own, and a plain verify says it needs its base.
    let alone = root.join("alone");
    cmd!(sh, "mkdir -p {alone}").run()?;
    cmd!(sh, "cp -a {delta} {alone}/delta").run()?;
    let err = refused(
        &sh,
        &root,
        &["cache-verify", "--bundle", alone.join("delta").as_str()],
    )?;
    ensure!(
        err.contains(&format!("is a delta of {base_digest}; it needs its base")),
        "{err}"
    );

    // The offline server: the project with the change, the base bundle as it was
    // delivered before (docker-build-cache/), and the delta beside it.
    let server = root.join("server");
    cmd!(sh, "cp -a {src} {server}").run()?;
    cmd!(sh, "rm -rf {server}/docker-build-cache").run()?;
    cmd!(sh, "cp -a {base} {server}/docker-build-cache").run()?;
    cmd!(sh, "cp -a {delta} {server}/delta").run()?;

    // Without its base: refused, naming the digest and what is missing; nothing loaded.
    let lonely = root.join("lonely");
    cmd!(sh, "cp -a {server} {lonely}").run()?;
    cmd!(sh, "rm -rf {lonely}/docker-build-cache").run()?;
    let err = refused(&offline_sh, &lonely, &["cache-import", "--bundle", "delta"])?;
    ensure!(err.contains(&base_digest), "no base digest named:\n{err}");
    let expected = first_from_base(&delta)?;
    ensure!(
        err.contains(&expected),
        "the missing files are not named:\n{err}"
    );
    ensure!(
        err.contains("busybox:latest"),
        "the images are not named:\n{err}"
    );
    // A base of another digest is refused by --base.
    let other = root.join("other");
    cmd!(sh, "cp -a {base} {other}").run()?;
    let mut sums = std::fs::read_to_string(other.join("SHA256SUMS"))?;
    sums.push('\n');
    std::fs::write(other.join("SHA256SUMS"), sums)?;
    let other_digest = digest_of(&other)?;
    let err = refused(
        &offline_sh,
        &lonely,
        &[
            "cache-import",
            "--bundle",
            "delta",
            "--base",
            other.as_str(),
        ],
    )?;
    ensure!(
        err.contains(&other_digest[7..]) && err.contains(&base_digest[7..]),
        "the wrong base is not refused by its digest:\n{err}"
    );
    let loaded = cmd!(offline_sh, "docker images -q").read()?;
    ensure!(loaded.is_empty(), "images were loaded: {loaded}");
    ensure!(
        !lonely.join("delta-full").exists(),
        "a refused import left a folder"
    );

    // With its base beside it: completed, imported, and the build runs only the change.
    let bin = crate::bundle_e2e::xtask_bin();
    let import = {
        let _cd = offline_sh.push_dir(&server);
        cmd!(offline_sh, "{bin} cache-import --bundle delta --json")
            .ignore_status()
            .output()?
    };
    let stderr = String::from_utf8_lossy(&import.stderr);
    ensure!(import.status.success(), "import failed:\n{stderr}");
    ensure!(stderr.contains("Completing the delta"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&import.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&import.stdout)))?;
    ensure!(summary["delta"] == json["delta"], "{summary:#}");
    ensure!(
        summary["digest"] == json["delta"]["complete_digest"],
        "{summary:#}"
    );
    let import = stderr;
    let full = server.join("delta-full");
    ensure!(
        digest_of(&full)? == json["delta"]["complete_digest"],
        "{import}"
    );
    xtask(
        &offline_sh,
        &server,
        &["patch-compose", "--bundle", "delta-full"],
    )?;
    let _cd = offline_sh.push_dir(&server);
    let (ok, log) = compose_build(&offline_sh, &["build"])?;
    ensure!(ok, "offline build failed:\n{log}");
    // The delta carries the changed step's layer too: every step comes from the cache,
    // the changed COPY included, and the image holds the new line.
    ensure!(
        steps(&log).len() == 5,
        "expected the fixture's 5 steps:\n{log}"
    );
    let uncached = uncached_steps(&log);
    ensure!(uncached.is_empty(), "steps ran: {uncached:#?}\n{log}");
    ensure_fixture_steps_cached(&log)?;
    let api = printed_by(&offline_sh, "fixture-api:latest")?;
    ensure!(api == "api-ready\nhello again", "api printed {api:?}");
    // The base was only read.
    ensure!(digest_of(&server.join("docker-build-cache"))? == base_digest);
    xtask(
        &offline_sh,
        &server,
        &["cache-verify", "--bundle", "docker-build-cache"],
    )?;

    // A dependency bump in the fixture: the builder stage's install step changes.
    let web = std::fs::read_to_string(src.join("web/Dockerfile"))?;
    std::fs::write(
        src.join("web/Dockerfile"),
        web.replace("echo web-built", "echo web-built-v2"),
    )?;
    let bump = export_delta(&sh, &src, &base, &root.join("delta-bump"))?;
    let bump_bytes = bump["delta"]["bytes_carried"].as_u64().context("bytes")?;
    let bump_files = bump["delta"]["files_carried"].as_u64().context("files")?;
    eprintln!(
        "delta sizes: full bundle {full_size} B; one-line change {carried} B in \
         {files_carried} files; builder install step changed {bump_bytes} B in {bump_files} files"
    );
    ensure!(bump_bytes * 10 < full_size, "{bump:#}");

    engine_stands_in_for_a_base_of_images(&online, &sh, &offline_sh, &root, &src, &lonely)
}

/// The second half: the offline engine now holds the base's image (busybox, imported
/// above). A delta whose base files are all files of images the engine holds imports with
/// no base folder, its base taken from the engine; the local-strategy delta is still
/// refused, naming what no engine holds.
fn engine_stands_in_for_a_base_of_images(
    online: &support::Engine,
    sh: &Shell,
    offline_sh: &Shell,
    root: &Utf8Path,
    src: &Utf8Path,
    lonely: &Utf8Path,
) -> anyhow::Result<()> {
    let err = refused(offline_sh, lonely, &["cache-import", "--bundle", "delta"])?;
    for said in [
        "The engine cannot stand in for the base: the engine holds its images (busybox:latest)",
        "of the files are in no image (the build cache's own blobs, wheels, npm caches",
    ] {
        ensure!(err.contains(said), "no {said:?} in:\n{err}");
    }
    let left: Vec<String> = std::fs::read_dir(lonely)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("full") || n.contains("from-engine"))
        .collect();
    ensure!(left.is_empty(), "a refused import left {left:?}");

    // A bundle of the base images only, then a new base image and its delta.
    let images_base = root.join("images-base");
    xtask(
        sh,
        src,
        &[
            "cache-export",
            "--only",
            "base-images",
            "--output",
            images_base.as_str(),
        ],
    )?;
    standins::import_note_image(online, "delta-note:1", b'd', 200_000)?;
    std::fs::create_dir_all(src.join("note"))?;
    std::fs::write(src.join("note/Dockerfile"), "FROM delta-note:1\n")?;
    let compose = std::fs::read_to_string(src.join("compose.yaml"))?;
    std::fs::write(
        src.join("compose.yaml"),
        format!("{compose}  note:\n    build: ./note\n    image: delta-note-app:latest\n"),
    )?;
    let images_delta = lonely.join("images-delta");
    let bin = crate::bundle_e2e::xtask_bin();
    {
        let _cd = sh.push_dir(src);
        cmd!(
            sh,
            "{bin} cache-export --only base-images --since {images_base} --output {images_delta}"
        )
        .quiet()
        .run()?;
    }
    let id_format = "{{.Id}}";
    ensure!(
        image_files(&images_delta).is_ok(),
        "the delta has no image layout"
    );
    let import = {
        let _cd = offline_sh.push_dir(lonely);
        cmd!(offline_sh, "{bin} cache-import --bundle images-delta")
            .ignore_status()
            .output()?
    };
    let stderr = String::from_utf8_lossy(&import.stderr);
    ensure!(import.status.success(), "import failed:\n{stderr}");
    ensure!(
        stderr.contains("of its base that are files of the engine's images"),
        "{stderr}"
    );
    for image in ["busybox:latest", "delta-note:1"] {
        let online = cmd!(sh, "docker image inspect --format {id_format} {image}").read()?;
        let offline = cmd!(
            offline_sh,
            "docker image inspect --format {id_format} {image}"
        )
        .read()
        .with_context(|| format!("{image} was not loaded"))?;
        ensure!(
            online == offline,
            "{image}: {offline} here, {online} exported"
        );
    }
    let full = lonely.join("images-delta-full");
    xtask(
        offline_sh,
        lonely,
        &["cache-verify", "--bundle", full.as_str()],
    )?;
    let left: Vec<String> = std::fs::read_dir(lonely)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("from-engine"))
        .collect();
    ensure!(left.is_empty(), "the engine's files were left in {left:?}");
    Ok(())
}
