//! `cache-pack` → `cache-unpack` → `cache-verify` on a synthetic bundle (no Docker), and
//! every way a split pack can arrive broken: a damaged, missing, extra or reordered part
//! is refused by name (by `cache-unpack` and by `cache-verify --pack`) and leaves
//! nothing behind (`cache-import --pack` too). `scripts/release-bundle.sh` runs the
//! same commands in CI (its pack and verify steps are run here too).

use camino::{Utf8Path, Utf8PathBuf};
use sha2::Digest;
use xshell::{cmd, Shell};

use crate::support::run::{xtask, xtask_env, Scratch};

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A project folder with a synthetic bundle in `docker-build-cache/`: files of the kinds
/// a real one holds (bytes that do not compress), a manifest and SHA256SUMS that agree.
fn synthetic_bundle(what: &str) -> Scratch {
    let scratch = Scratch::new(what);
    let root = scratch.path();
    std::fs::write(root.join("compose.yaml"), "services: {}\n").unwrap();
    let noise = |seed: u32, n: u32| -> Vec<u8> {
        (0..n)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
            .collect()
    };
    let blob = noise(1, 5000);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("base-images.tar".into(), noise(2, 7000)),
        (format!("build-cache/blobs/sha256/{}", sha256(&blob)), blob),
        (
            "build-cache/index.json".into(),
            br#"{"schemaVersion":2}"#.to_vec(),
        ),
        (
            "pip-cache/api/fastapi-0.110.0-py3-none-any.whl".into(),
            noise(3, 3000),
        ),
        (
            "npm-cache/web/_cacache/content-v2/sha512/ab/cd/ef01".into(),
            noise(4, 2500),
        ),
        (
            "import-build-cache.sh".into(),
            b"#!/bin/sh\necho \"bundle script ran in $(cd \"$(dirname \"$0\")\" && pwd) with: $*\"\n"
                .to_vec(),
        ),
    ];
    let bundle = root.join("docker-build-cache");
    let mut manifest = String::from(
        "format_version: 1\ntool_version: 0.1.0\ncreated: 2026-11-29T00:00:00Z\n\
         project_name: p\nengine:\n  server_version: '26.1.5'\n  arch: amd64\n  containerd_store: true\n\
         strategy: local\ncompression: none\nimages: []\nservices: []\nfiles:\n",
    );
    let mut sums: Vec<String> = Vec::new();
    for (path, bytes) in &files {
        let file = bundle.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, bytes).unwrap();
        let digest = sha256(bytes);
        manifest.push_str(&format!(
            "- path: '{path}'\n  size: {}\n  sha256: {digest}\n",
            bytes.len()
        ));
        sums.push(format!("{digest}  {path}\n"));
    }
    // SHA256SUMS lists manifest.yaml too, as cache-export writes it.
    sums.push(format!("{}  manifest.yaml\n", sha256(manifest.as_bytes())));
    sums.sort_by(|a, b| a[66..].cmp(&b[66..]));
    std::fs::write(bundle.join("manifest.yaml"), manifest).unwrap();
    std::fs::write(bundle.join("SHA256SUMS"), sums.concat()).unwrap();
    scratch
}

/// Packs the scratch's bundle into `out/` in parts of 4 KiB; the index's path.
fn pack_split(scratch: &Scratch) -> Utf8PathBuf {
    let run = xtask(
        scratch.path(),
        &["cache-pack", "--split", "4K", "--output", "out/", "--json"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    scratch.path().join("out/docker-build-cache.pack-index")
}

fn part(scratch: &Scratch, n: usize) -> Utf8PathBuf {
    scratch
        .path()
        .join(format!("out/docker-build-cache.tar.part-{n:03}"))
}

/// `cache-unpack` of the index must fail naming `part` and saying `why`, leaving no folder.
fn refused(scratch: &Scratch, index: &Utf8Path, part: &str, why: &str) {
    let run = xtask(
        scratch.path(),
        &[
            "cache-unpack",
            "--pack",
            index.as_str(),
            "--output",
            "restored",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(part) && run.stderr.contains(why),
        "the error does not name {part} with {why:?}:\n{}",
        run.stderr
    );
    let left: Vec<String> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("restored"))
        .collect();
    assert!(left.is_empty(), "a refused unpack left {left:?}");
    // `cache-import --pack` refuses it the same way, before the engine is asked anything:
    // none answers at this DOCKER_HOST, so reaching it would fail with another error.
    let run = xtask_env(
        scratch.path(),
        &[
            "cache-import",
            "--pack",
            index.as_str(),
            "--bundle",
            "restored",
        ],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(part)
            && run.stderr.contains(why)
            && run.stderr.contains("nothing was imported")
            && !run.stderr.contains("does not answer"),
        "cache-import --pack does not refuse naming {part} with {why:?}:\n{}",
        run.stderr
    );
    assert!(
        !scratch.path().join("restored").exists(),
        "a refused import left its folder"
    );
    let run = xtask(scratch.path(), &["cache-verify", "--pack", index.as_str()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(part) && run.stderr.contains(why),
        "cache-verify --pack does not name {part} with {why:?}:\n{}",
        run.stderr
    );
}

#[test]
fn a_split_pack_unpacks_and_verifies() {
    let scratch = synthetic_bundle("roundtrip");
    let run = xtask(
        scratch.path(),
        &["cache-pack", "--split", "4K", "--output", "out/", "--json"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let sums = std::fs::read(scratch.path().join("docker-build-cache/SHA256SUMS")).unwrap();
    assert_eq!(json["digest"], sha256(&sums));
    let parts = json["parts"].as_array().unwrap();
    assert!(parts.len() >= 5, "{parts:?}");
    for p in parts {
        assert!(p["size"].as_u64().unwrap() <= 4096);
        let bytes = std::fs::read(p["path"].as_str().unwrap()).unwrap();
        assert_eq!(p["sha256"], sha256(&bytes));
    }
    // The joined parts are one tar: SHA256SUMS, manifest.yaml, then the manifest's files.
    let joined: Vec<u8> = (1..=parts.len())
        .flat_map(|n| std::fs::read(part(&scratch, n)).unwrap())
        .collect();
    let mut tar = tar::Archive::new(&joined[..]);
    let names: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names[..2], ["SHA256SUMS", "manifest.yaml"]);
    assert_eq!(names[2], "base-images.tar");
    assert_eq!(names.len(), 8, "{names:?}");

    let index = json["index"].as_str().unwrap();
    let run = xtask(scratch.path(), &["cache-verify", "--pack", index, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let verified: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(verified["digest"], sha256(&sums));
    assert_eq!(verified["files"], 8);
    assert!(!scratch.path().join("restored").exists());
    let run = xtask(
        scratch.path(),
        &[
            "cache-unpack",
            "--pack",
            index,
            "--output",
            "restored",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["digest"], sha256(&sums));
    let run = xtask(scratch.path(), &["cache-verify", "--bundle", "restored"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("Verified 6 files"), "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
}

#[test]
fn one_tar_unpacks_and_an_existing_file_is_never_overwritten() {
    let scratch = synthetic_bundle("one-tar");
    let run = xtask(scratch.path(), &["cache-pack", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let tar = scratch.path().join("docker-build-cache.tar");
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["tar"]["sha256"], sha256(&std::fs::read(&tar).unwrap()));
    let run = xtask(
        scratch.path(),
        &["cache-verify", "--pack", "docker-build-cache.tar"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("Verified 8 files"), "{}", run.stderr);
    let inside = xtask(
        scratch.path(),
        &["cache-pack", "--output", "docker-build-cache/x/"],
    );
    assert_eq!(inside.code, 1);
    assert!(
        inside.stderr.contains("inside the bundle folder"),
        "{}",
        inside.stderr
    );
    let again = xtask(scratch.path(), &["cache-pack"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let run = xtask(
        scratch.path(),
        &[
            "cache-unpack",
            "--pack",
            "docker-build-cache.tar",
            "--output",
            "restored",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = xtask(scratch.path(), &["cache-verify", "--bundle", "restored"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = xtask(
        scratch.path(),
        &[
            "cache-unpack",
            "--pack",
            "docker-build-cache.tar",
            "--output",
            "restored",
        ],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    // `cache-import --pack` into the default bundle folder, which holds a bundle: refused,
    // the folder untouched.
    let sums = std::fs::read(scratch.path().join("docker-build-cache/SHA256SUMS")).unwrap();
    let run = xtask(
        scratch.path(),
        &["cache-import", "--pack", "docker-build-cache.tar"],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("already holds a bundle (manifest.yaml)")
            && run.stderr.contains("--bundle DIR"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read(scratch.path().join("docker-build-cache/SHA256SUMS")).unwrap(),
        sums
    );
}

#[test]
fn a_damaged_part_is_refused_by_name() {
    let scratch = synthetic_bundle("damaged");
    let index = pack_split(&scratch);
    let path = part(&scratch, 2);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    refused(
        &scratch,
        &index,
        "part docker-build-cache.tar.part-002 is damaged",
        "copy it again",
    );
}

#[test]
fn a_missing_part_is_refused_by_name() {
    let scratch = synthetic_bundle("missing");
    let index = pack_split(&scratch);
    std::fs::remove_file(part(&scratch, 3)).unwrap();
    refused(
        &scratch,
        &index,
        "part docker-build-cache.tar.part-003 is missing",
        "nothing was read",
    );
}

#[test]
fn an_extra_part_is_refused_by_name() {
    let scratch = synthetic_bundle("extra");
    let index = pack_split(&scratch);
    std::fs::write(
        scratch.path().join("out/docker-build-cache.tar.part-099"),
        b"x",
    )
    .unwrap();
    refused(
        &scratch,
        &index,
        "part docker-build-cache.tar.part-099",
        "not in it (an extra part)",
    );
}

#[test]
fn reordered_parts_are_refused_by_name() {
    let scratch = synthetic_bundle("reordered");
    let index = pack_split(&scratch);
    let (one, two) = (part(&scratch, 1), part(&scratch, 2));
    let tmp = scratch.path().join("out/swap");
    std::fs::rename(&one, &tmp).unwrap();
    std::fs::rename(&two, &one).unwrap();
    std::fs::rename(&tmp, &two).unwrap();
    refused(
        &scratch,
        &index,
        "part docker-build-cache.tar.part-001 holds the bytes of part docker-build-cache.tar.part-002",
        "reordered",
    );
}

#[test]
fn a_truncated_part_is_refused_before_reading() {
    let scratch = synthetic_bundle("truncated");
    let index = pack_split(&scratch);
    let path = part(&scratch, 1);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..100]).unwrap();
    refused(
        &scratch,
        &index,
        "part docker-build-cache.tar.part-001 is 100 bytes",
        "truncated",
    );
}

#[test]
fn a_damaged_bundle_is_not_packed() {
    let scratch = synthetic_bundle("bad-bundle");
    let file = scratch.path().join("docker-build-cache/base-images.tar");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let run = xtask(
        scratch.path(),
        &["cache-pack", "--split", "4K", "--output", "out/"],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("base-images.tar changed or is damaged"),
        "{}",
        run.stderr
    );
    let left: Vec<_> = std::fs::read_dir(scratch.path().join("out"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "a failed pack left {left:?}");
}

/// `scripts/release-bundle.sh`, the command both CI workflows run, on a synthetic bundle
/// (its export step skipped: that needs Docker): it verifies, packs in parts, verifies the
/// parts and prints the digest, and the assets it leaves unpack into a bundle that verifies.
#[test]
fn the_release_script_packs_what_unpacks() {
    let scratch = synthetic_bundle("release");
    let script = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/release-bundle.sh");
    let bin = crate::support::run::bin();
    let sh = Shell::new().unwrap();
    sh.change_dir(scratch.path());
    let out = cmd!(
        sh,
        "bash {script} --skip-export --bundle docker-build-cache --split 4K --output dist"
    )
    .env("XTASK", bin)
    .env_remove("COMPOSE_PROJECT_NAME")
    .ignore_status()
    .quiet()
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sums = std::fs::read(scratch.path().join("docker-build-cache/SHA256SUMS")).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), sha256(&sums), "the last line is the digest");
    let dist = scratch.path().join("dist");
    assert_eq!(
        std::fs::read_to_string(dist.join("bundle-digest.txt")).unwrap(),
        format!("{}  docker-build-cache\n", sha256(&sums))
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dist.join("pack.json")).unwrap()).unwrap();
    assert_eq!(json["digest"], sha256(&sums));
    assert!(json["parts"].as_array().unwrap().len() > 1);
    let index = dist.join("docker-build-cache.pack-index");
    let run = xtask(
        scratch.path(),
        &[
            "cache-unpack",
            "--pack",
            index.as_str(),
            "--output",
            "restored",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = xtask(scratch.path(), &["cache-verify", "--bundle", "restored"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn the_digest_is_checked_against_the_index_and_the_one_published() {
    let scratch = synthetic_bundle("digest");
    let index = pack_split(&scratch);
    let sums = std::fs::read(scratch.path().join("docker-build-cache/SHA256SUMS")).unwrap();
    let (right, wrong) = (sha256(&sums), "ab".repeat(32));
    let unpack = |digest: &str, out: &str| {
        xtask(
            scratch.path(),
            &[
                "cache-unpack",
                "--pack",
                index.as_str(),
                "--output",
                out,
                "--expect-digest",
                digest,
            ],
        )
    };
    let run = unpack(&wrong, "wrong");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("has digest {right}"))
            && run.stderr.contains("--expect-digest says"),
        "{}",
        run.stderr
    );
    assert!(!scratch.path().join("wrong").exists());
    let run = unpack(&right.to_uppercase(), "right");
    assert_eq!(run.code, 0, "{}", run.stderr);
    // An index whose digest was edited: its parts are intact, the bundle is not its.
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, text.replace(&right, &wrong)).unwrap();
    refused(
        &scratch,
        &index,
        &format!("has digest {right}"),
        "its index says",
    );
}

/// `cache-import --pack` into a folder that holds no bundle but other files (a project's
/// `docker-build-cache/` with its README): the bundle is unpacked beside them, nothing of
/// theirs changes; a folder with a name the pack brings is refused before anything moves.
#[test]
fn a_pack_imports_into_a_folder_without_a_bundle_and_replaces_nothing() {
    let scratch = synthetic_bundle("into-readme");
    let run = xtask(scratch.path(), &["cache-pack", "--output", "carried/"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pack = scratch.path().join("carried/docker-build-cache.tar");
    let no_engine = [("DOCKER_HOST", "unix:///nonexistent/docker.sock")];
    let import_into = |dir: &str| {
        xtask_env(
            scratch.path(),
            &["cache-import", "--pack", pack.as_str(), "--bundle", dir],
            &no_engine,
        )
    };
    // A file the pack brings is there: refused, the folder as it was, nothing left beside.
    let taken = scratch.path().join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("import-build-cache.sh"), "mine\n").unwrap();
    let run = import_into("taken");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("already has import-build-cache.sh, which the pack brings too"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(taken.join("import-build-cache.sh")).unwrap(),
        "mine\n"
    );
    assert_eq!(std::fs::read_dir(&taken).unwrap().count(), 1);
    let beside: Vec<String> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("unpack") || n.contains(".tmp-"))
        .collect();
    assert!(beside.is_empty(), "a refused import left {beside:?}");
    // Beside a README: unpacked, checked, then the engine is asked (none answers here).
    let readme = scratch.path().join("with-readme");
    std::fs::create_dir_all(&readme).unwrap();
    std::fs::write(readme.join("README.md"), "the guide\n").unwrap();
    let run = import_into("with-readme");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("Unpacked 8 files") && run.stderr.contains("does not answer"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(readme.join("README.md")).unwrap(),
        "the guide\n"
    );
    let run = xtask(scratch.path(), &["cache-verify", "--bundle", "with-readme"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// A pack carries no `SHA256SUMS.sig`: `cache-import --pack` with `--allowed-signers` is
/// refused before the pack is read, saying how to check a signature instead.
#[test]
fn a_pack_is_not_imported_with_a_signature_it_cannot_carry() {
    let scratch = synthetic_bundle("pack-signers");
    let run = xtask(scratch.path(), &["cache-pack", "--output", "carried/"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    std::fs::write(
        scratch.path().join("allowed"),
        "release@example.com ssh-ed25519 AAAA\n",
    )
    .unwrap();
    let run = xtask(
        scratch.path(),
        &[
            "cache-import",
            "--pack",
            "carried/docker-build-cache.tar",
            "--bundle",
            "signed",
            "--allowed-signers",
            "allowed",
            "--signer-identity",
            "release@example.com",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "a pack does not carry SHA256SUMS.sig, so --allowed-signers cannot be checked on it"
        ) && run.stderr.contains("cargo xtask cache-unpack"),
        "{}",
        run.stderr
    );
    assert!(!scratch.path().join("signed").exists());
}

/// `sh import-NAME.sh ARGS` (what cache-pack writes beside a pack) run in `dir`: its exit
/// code, and stdout and stderr together.
fn sh_import(dir: &Utf8Path, script: &Utf8Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("sh")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The names in `dir` (one level) that contain `part`.
fn names_with(dir: &Utf8Path, part: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.contains(part))
                .collect()
        })
        .unwrap_or_default()
}

/// On a server with sh and Docker but no xtask, the importer cache-pack writes beside the
/// pack checks the parts, unpacks the bundle into a new folder and runs the bundle's own
/// import-build-cache.sh there, with the arguments it was given and the checked digest;
/// the same from one tar. (The Docker half: tool_bundle.rs imports a real pack this way
/// on a bare server.)
#[test]
fn the_sh_importer_unpacks_parts_or_a_tar_then_runs_the_bundles_script() {
    let scratch = synthetic_bundle("sh-import");
    let index = pack_split(&scratch);
    let script = scratch.path().join("out/import-docker-build-cache.sh");
    let sh = Shell::new().unwrap();
    cmd!(sh, "shellcheck --shell=sh {script}")
        .quiet()
        .run()
        .unwrap();
    let bundle = scratch.path().join("docker-build-cache");
    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS")).unwrap();
    let digest = sha256(sums.as_bytes());
    let (code, out) = sh_import(
        scratch.path(),
        &script,
        &[
            "--pack",
            index.as_str(),
            "--bundle",
            "srv/bundle",
            "--patch-compose",
            "compose.yaml",
            "--no-tool",
            &format!("sha256:{digest}"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let srv = scratch.path().join("srv");
    let ran = format!(
        "bundle script ran in {srv}/bundle with: --patch-compose compose.yaml --no-tool sha256:{digest}"
    );
    assert!(out.contains(&ran), "no {ran:?} in:\n{out}");
    let parts = names_with(&scratch.path().join("out"), ".tar.part-").len();
    let checking = format!("Checking {parts} parts against docker-build-cache.pack-index...");
    assert!(out.contains(&checking), "no {checking:?} in:\n{out}");
    for path in sums.lines().map(|l| &l[66..]).chain(["SHA256SUMS"]) {
        assert_eq!(
            std::fs::read(srv.join("bundle").join(path)).unwrap(),
            std::fs::read(bundle.join(path)).unwrap(),
            "{path} unpacked differs"
        );
    }
    assert_eq!(names_with(&srv, ""), ["bundle"], "left beside the bundle");

    // One tar; the default folder is ./NAME, which must not exist yet.
    let run = xtask(scratch.path(), &["cache-pack", "--output", "one/"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("import-docker-build-cache.sh"),
        "{}",
        run.stderr
    );
    let script = scratch.path().join("one/import-docker-build-cache.sh");
    let tar = scratch.path().join("one/docker-build-cache.tar");
    let (code, out) = sh_import(scratch.path(), &script, &["--pack", tar.as_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{bundle} already exists")),
        "the bundle folder was not kept: {out}"
    );
    let server = scratch.path().join("server");
    std::fs::create_dir(&server).unwrap();
    let (code, out) = sh_import(&server, &script, &["--pack", tar.as_str()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "bundle script ran in {server}/docker-build-cache with: sha256:{digest}"
        )),
        "{out}"
    );
}

/// The importer refuses a damaged, reordered, missing, truncated or extra part, and a
/// bundle other than the one published, by name, before it unpacks anything.
#[test]
fn the_sh_importer_refuses_a_broken_pack_by_name_and_writes_nothing() {
    let scratch = synthetic_bundle("sh-refuse");
    let index = pack_split(&scratch);
    let script = scratch.path().join("out/import-docker-build-cache.sh");
    let (p2, p3) = (part(&scratch, 2), part(&scratch, 3));
    let (good2, good3) = (std::fs::read(&p2).unwrap(), std::fs::read(&p3).unwrap());
    let check = |what: &str, args: &[&str], says: &str| {
        let mut all = vec!["--pack", index.as_str(), "--bundle", "srv/bundle"];
        all.extend_from_slice(args);
        let (code, out) = sh_import(scratch.path(), &script, &all);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains(says), "{what}: no {says:?} in:\n{out}");
        assert!(
            !out.contains("bundle script ran"),
            "{what}: the bundle's script ran"
        );
        assert!(!scratch.path().join("srv").exists(), "{what}: srv/ written");
    };
    let mut damaged = good2.clone();
    damaged[100] ^= 1;
    std::fs::write(&p2, &damaged).unwrap();
    check(
        "damaged",
        &[],
        "docker-build-cache.tar.part-002 is damaged (sha256 ",
    );
    std::fs::write(&p2, &good3).unwrap();
    check(
        "reordered",
        &[],
        "docker-build-cache.tar.part-002 holds the bytes of docker-build-cache.tar.part-003",
    );
    std::fs::write(&p2, &good2[..1000]).unwrap();
    check(
        "truncated",
        &[],
        "docker-build-cache.tar.part-002 is 1000 bytes, the index says 4096",
    );
    std::fs::write(&p2, &good2).unwrap();
    std::fs::remove_file(&p3).unwrap();
    check(
        "missing",
        &[],
        "docker-build-cache.tar.part-003 is missing (the index names it)",
    );
    std::fs::write(&p3, &good3).unwrap();
    let extra = scratch.path().join("out/docker-build-cache.tar.part-099");
    std::fs::write(&extra, b"x").unwrap();
    check(
        "extra",
        &[],
        "docker-build-cache.tar.part-099 is beside docker-build-cache.pack-index but the index does not name it",
    );
    std::fs::remove_file(&extra).unwrap();
    let other = format!("sha256:{}", "0".repeat(64));
    check(
        "another bundle",
        &[&other],
        &format!("not {other}: this is not the bundle that was published"),
    );
    // Repaired, it unpacks.
    let (code, out) = sh_import(
        scratch.path(),
        &script,
        &["--pack", index.as_str(), "--bundle", "srv/bundle"],
    );
    assert_eq!(code, 0, "{out}");
}

/// An entry of a hand-made tar: its name, its content (or link target), its type.
type RawEntry<'a> = (&'a str, &'a [u8], tar::EntryType);

/// A tar of `entries` (name, content or link target, type), the name's bytes written as
/// given (no check of the tar crate's): what a hostile hand could pack.
fn hostile_tar(path: &Utf8Path, entries: &[RawEntry]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data, kind) in entries {
        let mut header = tar::Header::new_ustar();
        header.as_mut_bytes()[..100].fill(0);
        header.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        header.set_mtime(0);
        if kind.is_symlink() || kind.is_hard_link() {
            header
                .set_link_name(std::str::from_utf8(data).unwrap())
                .unwrap();
            header.set_size(0);
            header.set_cksum();
            builder.append(&header, std::io::empty()).unwrap();
        } else {
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
    }
    builder.finish().unwrap();
}

/// Whatever a pack holds besides the regular files its SHA256SUMS lists (a link, a
/// folder, a name outside the bundle, an unlisted file) is refused before it is unpacked,
/// and nothing lands outside the new folder.
#[test]
fn the_sh_importer_unpacks_nothing_a_bundle_cannot_hold() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let scratch = synthetic_bundle("sh-hostile");
    let run = xtask(scratch.path(), &["cache-pack", "--output", "one/"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let script = scratch.path().join("one/import-docker-build-cache.sh");
    let manifest: &[u8] = b"format_version: 1\n";
    let file: &[u8] = b"data\n";
    let sums = format!(
        "{}  a.txt\n{}  manifest.yaml\n",
        sha256(file),
        sha256(manifest)
    );
    let outside = scratch.path().join("outside");
    let outside_target = format!("{outside}/x");
    let cases: Vec<(&str, RawEntry, &str)> = vec![
        (
            "symlink",
            ("link", outside.as_str().as_bytes(), Symlink),
            "entry 4 of the pack: link -> ",
        ),
        (
            "hard link",
            ("hard", b"/etc/passwd", Link),
            "entry 4 of the pack: hard link to etc/passwd is not a regular file",
        ),
        (
            "folder",
            ("dir/", b"", Directory),
            "is not a regular file of mode 644 or 755",
        ),
        (
            "parent",
            ("../escape.txt", file, Regular),
            "the name ../escape.txt is not a plain relative path",
        ),
        (
            "unlisted",
            ("extra.txt", file, Regular),
            "not listed: extra.txt",
        ),
    ];
    for (what, hostile, says) in cases {
        let tar = scratch.path().join(format!("{what}.tar").replace(' ', "-"));
        let mut entries = vec![
            ("SHA256SUMS", sums.as_bytes(), Regular),
            ("manifest.yaml", manifest, Regular),
            ("a.txt", file, Regular),
            hostile,
        ];
        if what == "symlink" {
            // A file through the link, were it made.
            entries.push(("link/x", file, Regular));
        }
        hostile_tar(&tar, &entries);
        let (code, out) = sh_import(
            scratch.path(),
            &script,
            &["--pack", tar.as_str(), "--bundle", "srv/bundle"],
        );
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains(says), "{what}: no {says:?} in:\n{out}");
        assert!(!scratch.path().join("srv/bundle").exists(), "{what}: kept");
        assert!(
            names_with(&scratch.path().join("srv"), "unpacking").is_empty(),
            "{what}: left a folder"
        );
        assert!(!outside.exists() && !Utf8Path::new(&outside_target).exists());
        assert!(!scratch.path().join("escape.txt").exists(), "{what}");
    }
    // Not a pack at all: the first entry is not SHA256SUMS.
    let tar = scratch.path().join("first.tar");
    hostile_tar(&tar, &[("a.txt", file, Regular)]);
    let (code, out) = sh_import(scratch.path(), &script, &["--pack", tar.as_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not start with SHA256SUMS"), "{out}");
}
