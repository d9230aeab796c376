//! Hostile and damaged bundles, faults, concurrency and secrets (issue 8), each proven on
//! the built binary.
//!
//! The first part needs no Docker: a synthetic bundle (one file of every kind a real one
//! has, hashed here with sha2) is damaged in every way a USB disk or an attacker can, and
//! `cache-verify` must exit 1 naming the file. The Docker part (`XTASK_DOCKER_TESTS=1`)
//! runs exports and imports on private engines with the busybox stand-in: a refused import
//! loads nothing, a second export into a locked folder fails naming the lock, a full disk
//! and a stopped engine give clear errors and no bundle that verifies, imports are
//! idempotent, node_modules round-trips, and no planted secret reaches any byte of the
//! bundle, archives and compressed layers included.

use std::io::Read;

use anyhow::{ensure, Context};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::Digest;
use xshell::{cmd, Shell};

use crate::support::run::{ok, xtask, xtask_env, xtask_on, Scratch};
use crate::support::{self, fault, standins, EngineOptions};

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One file of each kind a real bundle holds, with plausible bytes.
fn bundle_files() -> Vec<(String, Vec<u8>)> {
    let images = {
        let mut builder = tar::Builder::new(Vec::new());
        let manifest = br#"[{"Config":"blobs/sha256/c","RepoTags":["busybox:latest"],"Layers":["blobs/sha256/l"]}]"#;
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "manifest.json", &manifest[..])
            .unwrap();
        let layer = vec![0x5au8; 4000];
        let mut header = tar::Header::new_gnu();
        header.set_size(layer.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "blobs/sha256/l", &layer[..])
            .unwrap();
        builder.into_inner().unwrap()
    };
    let blob: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let blob_name = format!("build-cache/api/blobs/sha256/{}", sha256(&blob));
    vec![
        ("base-images.tar".into(), images),
        (blob_name, blob),
        (
            "build-cache/api/index.json".into(),
            br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
        ),
        (
            "pip-cache/api/fastapi-0.110.0-py3-none-any.whl".into(),
            [&b"PK\x03\x04"[..], &[1u8; 900][..]].concat(),
        ),
        (
            "npm-cache/web/_cacache/content-v2/sha512/ab/cd/ef0123".into(),
            [&b"\x1f\x8b\x08\x00"[..], &[2u8; 700][..]].concat(),
        ),
        (
            "import-build-cache.sh".into(),
            b"#!/bin/sh\nset -eu\nsha256sum -c --quiet SHA256SUMS\n".to_vec(),
        ),
        (
            "cache-manifest.txt".into(),
            b"Docker build cache for p\nImages:\n  busybox:latest base\n".to_vec(),
        ),
    ]
}

/// The files whose damage must be detected, one per kind.
const KINDS: [&str; 6] = [
    "base-images.tar",
    "build-cache/api/blobs/sha256/",
    "pip-cache/api/fastapi-0.110.0-py3-none-any.whl",
    "npm-cache/web/_cacache/content-v2/sha512/ab/cd/ef0123",
    "import-build-cache.sh",
    "cache-manifest.txt",
];

/// `manifest.yaml` text for `files` (path, size, sha256), as cache-export writes it.
fn manifest_text(files: &[(String, u64, String)]) -> String {
    let mut text = String::from(
        "format_version: 1\ntool_version: 0.1.0\ncreated: 2026-11-29T00:00:00Z\n\
         project_name: p\nengine:\n  server_version: '26.1.5'\n  arch: amd64\n  containerd_store: true\n\
         strategy: local\ncompression: none\nimages:\n- name: busybox:latest\n  id: sha256:0\n  \
         role: base\nservices: []\nfiles:\n",
    );
    for (path, size, digest) in files {
        text.push_str(&format!(
            "- path: '{path}'\n  size: {size}\n  sha256: {digest}\n"
        ));
    }
    text
}

/// `SHA256SUMS` for `files` and the manifest text `manifest`, as cache-export writes it:
/// every file, `manifest.yaml` included, sorted by path.
fn sums_text(files: &[(String, u64, String)], manifest: &str) -> String {
    let mut lines: Vec<(String, String)> = files
        .iter()
        .map(|(path, _, digest)| (path.clone(), digest.clone()))
        .chain([("manifest.yaml".to_string(), sha256(manifest.as_bytes()))])
        .collect();
    lines.sort();
    lines
        .iter()
        .map(|(path, digest)| format!("{digest}  {path}\n"))
        .collect()
}

/// Writes `manifest` and its `SHA256SUMS` (as an attacker who rewrites both would).
fn write_lists(bundle: &Utf8Path, files: &[(String, u64, String)], manifest: &str) {
    std::fs::write(bundle.join("manifest.yaml"), manifest).unwrap();
    std::fs::write(bundle.join("SHA256SUMS"), sums_text(files, manifest)).unwrap();
}

/// A project folder (compose.yaml) with a complete synthetic bundle in
/// `docker-build-cache/`; returns the scratch and the file list.
fn synthetic_bundle() -> (Scratch, Vec<(String, u64, String)>) {
    let scratch = Scratch::new("bundle");
    let root = scratch.path();
    std::fs::write(root.join("compose.yaml"), "services: {}\n").unwrap();
    let bundle = root.join("docker-build-cache");
    let mut listed = Vec::new();
    for (path, bytes) in bundle_files() {
        let file = bundle.join(&path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &bytes).unwrap();
        listed.push((path, bytes.len() as u64, sha256(&bytes)));
    }
    listed.sort();
    write_lists(&bundle, &listed, &manifest_text(&listed));
    (scratch, listed)
}

fn kind_path(listed: &[(String, u64, String)], kind: &str) -> String {
    listed
        .iter()
        .map(|(p, _, _)| p)
        .find(|p| p.starts_with(kind))
        .unwrap_or_else(|| panic!("no {kind} in the synthetic bundle"))
        .clone()
}

#[test]
fn a_synthetic_bundle_verifies() {
    let (scratch, _) = synthetic_bundle();
    let run = xtask(scratch.path(), &["cache-verify"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("Verified 7 files"), "{}", run.stderr);
}

#[test]
fn one_changed_byte_at_the_start_middle_or_end_of_any_file_is_named() {
    for kind in KINDS {
        for at in ["start", "middle", "end"] {
            let (scratch, listed) = synthetic_bundle();
            let path = kind_path(&listed, kind);
            let file = scratch.path().join("docker-build-cache").join(&path);
            let mut bytes = std::fs::read(&file).unwrap();
            let i = match at {
                "start" => 0,
                "middle" => bytes.len() / 2,
                _ => bytes.len() - 1,
            };
            bytes[i] ^= 0x20;
            std::fs::write(&file, &bytes).unwrap();
            let run = xtask(scratch.path(), &["cache-verify"]);
            assert_eq!(run.code, 1, "{path} changed at the {at}: {}", run.stderr);
            assert!(
                run.stderr
                    .contains(&format!("error: {path}: sha256 {}", sha256(&bytes))),
                "{path} changed at the {at} is not named:\n{}",
                run.stderr
            );
            assert!(run.stderr.contains("corrupted"), "{}", run.stderr);
        }
    }
}

/// `cache-publish` verifies first: from a damaged bundle nothing reaches the registry,
/// which is not even contacted (a listener stands for it and sees no connection).
#[test]
fn publish_refuses_a_damaged_bundle_before_it_contacts_the_registry() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    for kind in KINDS {
        let (scratch, listed) = synthetic_bundle();
        let path = kind_path(&listed, kind);
        let file = scratch.path().join("docker-build-cache").join(&path);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[0] ^= 0x20;
        std::fs::write(&file, &bytes).unwrap();
        let run = xtask(
            scratch.path(),
            &["cache-publish", "--registry", &address, "--insecure"],
        );
        assert_eq!(run.code, 1, "{path} changed: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("error: {path}: sha256")),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("nothing was pushed from"),
            "{}",
            run.stderr
        );
    }
    assert!(
        listener
            .accept()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "cache-publish connected to the registry"
    );
}

#[test]
fn a_truncated_or_missing_file_is_named() {
    for kind in KINDS {
        let (scratch, listed) = synthetic_bundle();
        let path = kind_path(&listed, kind);
        let file = scratch.path().join("docker-build-cache").join(&path);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
        let run = xtask(scratch.path(), &["cache-verify"]);
        assert_eq!(run.code, 1, "{path} truncated: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "error: {path}: {} bytes, expected {}",
                bytes.len() - 1,
                bytes.len()
            )),
            "{path} truncated is not named:\n{}",
            run.stderr
        );

        std::fs::remove_file(&file).unwrap();
        let run = xtask(scratch.path(), &["cache-verify"]);
        assert_eq!(run.code, 1, "{path} missing: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("error: {path}: missing")),
            "{path} missing is not named:\n{}",
            run.stderr
        );
    }
    // A split copy: half the bundle's files are missing, each is named.
    let (scratch, listed) = synthetic_bundle();
    for (path, _, _) in listed.iter().step_by(2) {
        std::fs::remove_file(scratch.path().join("docker-build-cache").join(path)).unwrap();
    }
    let run = xtask(scratch.path(), &["cache-verify"]);
    assert_eq!(run.code, 1);
    for (path, _, _) in listed.iter().step_by(2) {
        assert!(
            run.stderr.contains(&format!("{path}: missing")),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_bad_manifest_is_refused_with_what_to_do() {
    // `sums: None` removes SHA256SUMS; `Some(None)`… : a manifest with the SHA256SUMS that
    // lists its own digest (damage or an edit that rewrote both), or the given text.
    let check = |manifest: Option<&str>, sums: Option<Option<&str>>, expected: &[&str]| {
        let (scratch, listed) = synthetic_bundle();
        let bundle = scratch.path().join("docker-build-cache");
        match manifest {
            Some(text) => std::fs::write(bundle.join("manifest.yaml"), text).unwrap(),
            None => std::fs::remove_file(bundle.join("manifest.yaml")).unwrap(),
        }
        match sums {
            Some(Some(text)) => std::fs::write(bundle.join("SHA256SUMS"), text).unwrap(),
            Some(None) => std::fs::write(
                bundle.join("SHA256SUMS"),
                sums_text(&listed, manifest.unwrap_or("")),
            )
            .unwrap(),
            None => std::fs::remove_file(bundle.join("SHA256SUMS")).unwrap(),
        }
        let run = xtask(scratch.path(), &["cache-verify"]);
        assert_eq!(run.code, 1, "{expected:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        for text in expected {
            assert!(
                run.stderr.contains(text),
                "{text:?} not in:\n{}",
                run.stderr
            );
        }
    };
    let (_s, listed) = synthetic_bundle();
    let good = manifest_text(&listed);
    let sums = sums_text(&listed, &good);
    // Malformed: not YAML, not a manifest, a field of the wrong type, empty.
    check(Some("format_version: [1\n"), Some(None), &["manifest.yaml"]);
    check(
        Some("- a list\n"),
        Some(None),
        &["manifest.yaml", "not a bundle manifest"],
    );
    check(
        Some(&good.replace("size: ", "size: -")),
        Some(None),
        &["manifest.yaml is malformed"],
    );
    check(Some(""), Some(None), &["manifest.yaml"]);
    check(
        None,
        Some(Some(&sums)),
        &["manifest.yaml is missing", "copy the whole folder"],
    );
    // From a future format version, or format 0.
    check(
        Some(&good.replace("format_version: 1", "format_version: 4")),
        Some(None),
        &["format version 4", "update the repository"],
    );
    check(
        Some(&good.replace("format_version: 1", "format_version: 0")),
        Some(None),
        &["format version 0", "do not import it"],
    );
    // SHA256SUMS that disagrees: a digest, a line too many, a line too few, garbage.
    let (first, _, digest) = &listed[0];
    check(
        Some(&good),
        Some(Some(&sums.replacen(digest.as_str(), &"0".repeat(64), 1))),
        &["disagree", &format!("{first}: SHA256SUMS says 0000")],
    );
    check(
        Some(&good),
        Some(Some(&format!("{sums}{}  extra.bin\n", "1".repeat(64)))),
        &["extra.bin is in SHA256SUMS but not in manifest.yaml"],
    );
    check(
        Some(&good),
        Some(Some(
            &sums
                .lines()
                .filter(|l| !l.ends_with(first.as_str()))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )),
        &[&format!(
            "{first} is in manifest.yaml but not in SHA256SUMS"
        )],
    );
    check(
        Some(&good),
        Some(Some("not a sums file\n")),
        &["SHA256SUMS line 1"],
    );
    check(Some(&good), None, &["SHA256SUMS", "copy it again"]);
}

/// Issue 15, point 1: SHA256SUMS covers manifest.yaml, and `--expect-digest` covers
/// SHA256SUMS: an edited manifest is refused with the export's SHA256SUMS, and a bundle
/// whose lists were both rewritten is refused given the export's digest.
#[test]
fn an_edited_manifest_is_refused_and_the_digest_covers_everything() {
    let (scratch, listed) = synthetic_bundle();
    let bundle = scratch.path().join("docker-build-cache");
    let good = manifest_text(&listed);
    let digest = sha256(sums_text(&listed, &good).as_bytes());
    let run = xtask(scratch.path(), &["cache-verify"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("Digest sha256:{digest}")),
        "{}",
        run.stderr
    );
    for expect in [digest.clone(), format!("sha256:{}", digest.to_uppercase())] {
        let run = xtask(
            scratch.path(),
            &["cache-verify", "--expect-digest", &expect],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    // The attack of issue 15: a build context added to the manifest, SHA256SUMS as exported.
    let edited = good.replace(
        "services: []",
        "services:\n- name: api\n  contexts:\n    'busybox:latest': pip-cache/api",
    );
    std::fs::write(bundle.join("manifest.yaml"), &edited).unwrap();
    let run = xtask(scratch.path(), &["cache-verify"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("manifest.yaml: sha256")
            && run.stderr.contains("changed after the export"),
        "{}",
        run.stderr
    );
    // Both lists rewritten to agree: only the digest carried apart tells.
    write_lists(&bundle, &listed, &edited);
    let run = xtask(scratch.path(), &["cache-verify"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = xtask(
        scratch.path(),
        &["cache-verify", "--expect-digest", &digest],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("not the sha256:{digest} expected")),
        "{}",
        run.stderr
    );
    let run = xtask(scratch.path(), &["cache-verify", "--expect-digest", "abc"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("not a bundle digest"), "{}", run.stderr);
}

#[test]
fn a_manifest_naming_paths_outside_the_bundle_is_refused_without_reading_them() {
    for evil in [
        "../outside",
        "/etc/passwd",
        "a/../../outside",
        "./x",
        "a//b",
    ] {
        let (scratch, mut listed) = synthetic_bundle();
        // A real file there, with the digest the manifest claims: it must not be read.
        std::fs::write(scratch.path().join("outside"), b"secret").unwrap();
        listed.push((evil.to_string(), 6, sha256(b"secret")));
        let bundle = scratch.path().join("docker-build-cache");
        write_lists(&bundle, &listed, &manifest_text(&listed));
        let run = xtask(scratch.path(), &["cache-verify"]);
        assert_eq!(run.code, 1, "{evil}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "{evil}: the manifest names a path outside the bundle"
            )),
            "{evil}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn a_file_the_manifest_does_not_list_is_a_warning() {
    let (scratch, _) = synthetic_bundle();
    let bundle = scratch.path().join("docker-build-cache");
    std::fs::write(bundle.join("build-cache/api/planted.sh"), b"rm -rf /\n").unwrap();
    let run = xtask(scratch.path(), &["cache-verify"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "warning: build-cache/api/planted.sh is in the bundle folder but not in its manifest"
        ),
        "{}",
        run.stderr
    );
    // A symlink in the bundle (to a file elsewhere) is not followed: an error.
    std::os::unix::fs::symlink("/etc/passwd", bundle.join("link")).unwrap();
    let run = xtask(scratch.path(), &["cache-verify"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("link is not a regular file"),
        "{}",
        run.stderr
    );
}

/// Issue 15, point 2: only what the manifest lists reaches a build or the host. A file the
/// manifest does not list, in a folder handed to BuildKit (wheelhouse, npm cache, build
/// cache, contexts) or merged into ~/.npm, is an error; elsewhere (hidden top-level entries
/// included) a warning. Names are printed escaped (point 8).
#[test]
fn an_unlisted_file_in_a_folder_handed_to_a_build_or_the_host_is_refused() {
    let (scratch, listed) = synthetic_bundle();
    let bundle = scratch.path().join("docker-build-cache");
    let manifest = manifest_text(&listed).replace(
        "services: []",
        "services:\n- name: api\n  build_cache: build-cache/api\n  wheelhouse: pip-cache/api\n\
         - name: web\n  npm_host_cache: npm-cache/web\n  contexts:\n    npm-cache: npm-cache/web",
    );
    write_lists(&bundle, &listed, &manifest);
    let run = xtask(scratch.path(), &["cache-verify"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for planted in [
        "pip-cache/api/fastapi-0.1-py3-none-any.whl",
        "npm-cache/web/_cacache/index-v5/aa/bb/poisoned",
        "build-cache/api/blobs/sha256/planted",
    ] {
        let file = bundle.join(planted);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"planted").unwrap();
        let run = xtask(scratch.path(), &["cache-verify"]);
        assert_eq!(run.code, 1, "{planted}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("error: {planted}: not in the manifest")),
            "{planted}: {}",
            run.stderr
        );
        std::fs::remove_file(&file).unwrap();
    }
    // Elsewhere: a warning, hidden entries too, the name escaped.
    for (planted, shown) in [
        (".hidden", ".hidden"),
        ("x\x1b]0;owned\x07.txt", "x\\u{1b}]0;owned\\u{7}.txt"),
    ] {
        std::fs::write(bundle.join(planted), b"?").unwrap();
        let run = xtask(scratch.path(), &["cache-verify"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("warning: {shown} is in the bundle folder")),
            "{planted}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains('\x1b'), "{}", run.stderr);
        std::fs::remove_file(bundle.join(planted)).unwrap();
    }
    // A symlink with such a name: the error names it escaped too.
    std::os::unix::fs::symlink("/etc/passwd", bundle.join("l\x1b[2J")).unwrap();
    let run = xtask(scratch.path(), &["cache-verify"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "{}", run.stderr);
    assert!(run.stderr.contains("l\\u{1b}[2J"), "{}", run.stderr);
}

/// Issue 15, point 3: manifest.yaml and SHA256SUMS are read before any check, so they are
/// opened without following a symlink, a FIFO does not block, anything but a regular file
/// is refused, and their content is never printed. A FIFO used to hang for ever, a
/// symlink to /etc/passwd printed it, one to /dev/zero read until memory ran out.
#[test]
fn manifest_or_sums_as_a_symlink_fifo_or_device_is_refused_without_reading_it() {
    for name in ["manifest.yaml", "SHA256SUMS"] {
        for kind in ["passwd", "zero", "fifo"] {
            let (scratch, _) = synthetic_bundle();
            let file = scratch.path().join("docker-build-cache").join(name);
            std::fs::remove_file(&file).unwrap();
            match kind {
                "passwd" => std::os::unix::fs::symlink("/etc/passwd", &file).unwrap(),
                "zero" => std::os::unix::fs::symlink("/dev/zero", &file).unwrap(),
                _ => {
                    let sh = Shell::new().unwrap();
                    cmd!(sh, "mkfifo {file}").quiet().run().unwrap();
                }
            }
            let started = std::time::Instant::now();
            let sh = Shell::new().unwrap();
            sh.change_dir(scratch.path());
            let bin = support::run::bin();
            let out = cmd!(sh, "timeout 20 {bin} cache-verify")
                .ignore_status()
                .quiet()
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name} {kind}: {stderr}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{name} {kind}: took {:?}",
                started.elapsed()
            );
            assert!(
                stderr.contains(name)
                    && (stderr.contains("symlink") || stderr.contains("not a regular file")),
                "{name} {kind}: {stderr}"
            );
            assert!(!stderr.contains("root:"), "{name} {kind}: {stderr}");
            assert!(stderr.len() < 4000, "{name} {kind}: {stderr}");
        }
    }
}

/// A tmpfs mounted at `dir`, read-only once `fill` has written it; `None` when this test
/// cannot mount (not root).
struct ReadOnlyMount(Utf8PathBuf);

impl ReadOnlyMount {
    fn new(dir: &Utf8Path, fill: impl FnOnce(&Utf8Path)) -> Option<ReadOnlyMount> {
        let sh = Shell::new().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        cmd!(sh, "mount -t tmpfs -o size=256m tmpfs {dir}")
            .quiet()
            .ignore_stderr()
            .run()
            .ok()?;
        let mount = ReadOnlyMount(dir.to_path_buf());
        fill(dir);
        cmd!(sh, "mount -o remount,ro {dir}").quiet().run().unwrap();
        Some(mount)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let sh = Shell::new().unwrap();
        let dir = &self.0;
        let _ = cmd!(sh, "umount {dir}").quiet().run();
    }
}

/// The lock file cache-import takes for the bundle folder `dir`.
fn lock_path(dir: &Utf8Path) -> Utf8PathBuf {
    let canonical = std::fs::canonicalize(dir).unwrap();
    let name = format!(
        "xtask-bundle-{}.lock",
        &sha256(canonical.as_os_str().as_encoded_bytes())[..24]
    );
    Utf8PathBuf::from("/run/lock").join(name)
}

/// Issue 15, point 6: the import lock is not in the bundle, so a bundle on a read-only
/// disk imports (the import used to fail opening `<bundle>/.lock`); a folder that does not
/// exist is not created; a FIFO or symlink where the lock goes neither hangs nor is
/// followed. No engine here: the import gets past the lock and stops at the engine.
#[test]
fn the_import_lock_is_outside_the_bundle_and_never_followed() {
    let no_engine = [("DOCKER_HOST", "unix:///nonexistent/xtask-test.sock")];
    let (scratch, _) = synthetic_bundle();
    let ro = scratch.path().join("usb");
    let source = scratch.path().join("docker-build-cache");
    let Some(_mount) = ReadOnlyMount::new(&ro, |dir| {
        let sh = Shell::new().unwrap();
        cmd!(sh, "cp -a {source} {dir}/").quiet().run().unwrap();
    }) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    let bundle = ro.join("docker-build-cache");
    let run = xtask(&bundle, &["cache-verify", "--bundle", bundle.as_str()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = xtask_env(
        scratch.path(),
        &["cache-import", "--bundle", bundle.as_str()],
        &no_engine,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        !run.stderr.contains("Read-only") && !run.stderr.contains(".lock"),
        "the lock stopped the import of a read-only bundle:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.to_lowercase().contains("docker"),
        "{}",
        run.stderr
    );

    // A folder that does not exist is not created.
    let missing = scratch.path().join("nothing/docker-build-cache");
    let run = xtask_env(
        scratch.path(),
        &["cache-import", "--bundle", missing.as_str()],
        &no_engine,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    assert!(!scratch.path().join("nothing").exists());

    // A FIFO, then a symlink, planted where the lock goes.
    let lock = lock_path(&source);
    let _ = std::fs::remove_file(&lock);
    let sh = Shell::new().unwrap();
    cmd!(sh, "mkfifo {lock}").quiet().run().unwrap();
    let bin = support::run::bin();
    let out = cmd!(sh, "timeout 20 {bin} cache-import --bundle {source}")
        .env("DOCKER_HOST", no_engine[0].1)
        .ignore_status()
        .quiet()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a FIFO lock hangs the import");
    std::fs::remove_file(&lock).unwrap();
    let victim = scratch.path().join("victim");
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let run = xtask_env(
        scratch.path(),
        &["cache-import", "--bundle", source.as_str()],
        &no_engine,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!victim.exists(), "the lock symlink was followed");
    std::fs::remove_file(&lock).unwrap();
}

/// Issue 15, point 8: with HOME unset the import used to fail only after loading the
/// images, and `HOME=""` merged the npm caches into `./.npm`. Both now fail first, before
/// the engine is even asked (no engine here).
#[test]
fn an_unset_or_empty_home_fails_the_import_before_anything_is_loaded() {
    let (scratch, listed) = synthetic_bundle();
    let bundle = scratch.path().join("docker-build-cache");
    let manifest = manifest_text(&listed).replace(
        "services: []",
        "services:\n- name: web\n  npm_cache: npm-cache/web",
    );
    write_lists(&bundle, &listed, &manifest);
    let bin = support::run::bin();
    for home in [None, Some(""), Some("relative")] {
        let sh = Shell::new().unwrap();
        sh.change_dir(scratch.path());
        let mut command = cmd!(sh, "{bin} cache-import")
            .env("DOCKER_HOST", "unix:///nonexistent/xtask-test.sock")
            .ignore_status()
            .quiet();
        command = match home {
            None => command.env_remove("HOME"),
            Some(home) => command.env("HOME", home),
        };
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "HOME={home:?}: {stderr}");
        assert!(
            stderr.contains("HOME is not set") && stderr.contains("--no-host-caches"),
            "HOME={home:?}: {stderr}"
        );
        assert!(!scratch.path().join(".npm").exists());
    }
}

/// Issue 15, point 1 (signing): with `--allowed-signers` and `--signer-identity`, a bundle
/// is read only when `SHA256SUMS.sig` is an `ssh-keygen -Y sign` signature (namespace
/// xtask-bundle) of its SHA256SUMS by that signer; a bundle whose lists were both
/// rewritten, an unsigned one, one signed by another key or for another namespace are
/// refused.
#[test]
fn a_signed_bundle_verifies_only_with_its_signature() {
    let sh = Shell::new().unwrap();
    if cmd!(sh, "ssh-keygen -?")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .run()
        .is_err()
    {
        eprintln!("skipped: no ssh-keygen");
        return;
    }
    let (scratch, listed) = synthetic_bundle();
    let root = scratch.path();
    let bundle = root.join("docker-build-cache");
    let keys = root.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for name in ["release", "other"] {
        let key = keys.join(name);
        cmd!(sh, "ssh-keygen -q -t ed25519 -N '' -C {name} -f {key}")
            .quiet()
            .run()
            .unwrap();
    }
    let public = std::fs::read_to_string(keys.join("release.pub")).unwrap();
    let signers = keys.join("allowed_signers");
    std::fs::write(
        &signers,
        format!("release@example.com namespaces=\"xtask-bundle\" {public}"),
    )
    .unwrap();
    let sign = |key: &str, namespace: &str| {
        let (key, sums) = (keys.join(key), bundle.join("SHA256SUMS"));
        let _ = std::fs::remove_file(bundle.join("SHA256SUMS.sig"));
        cmd!(sh, "ssh-keygen -q -Y sign -f {key} -n {namespace} {sums}")
            .quiet()
            .run()
            .unwrap();
    };
    let verify = || {
        xtask(
            root,
            &[
                "cache-verify",
                "--allowed-signers",
                signers.as_str(),
                "--signer-identity",
                "release@example.com",
            ],
        )
    };
    let run = verify();
    assert_eq!(run.code, 1, "unsigned: {}", run.stderr);
    assert!(run.stderr.contains("SHA256SUMS.sig"), "{}", run.stderr);
    sign("release", "xtask-bundle");
    let run = verify();
    assert_eq!(run.code, 0, "signed: {}", run.stderr);
    assert!(
        !run.stderr.contains("SHA256SUMS.sig is in the bundle"),
        "{}",
        run.stderr
    );
    // Both lists rewritten to agree with an edited manifest: the signature no longer does.
    let edited = manifest_text(&listed).replace("project_name: p", "project_name: q");
    write_lists(&bundle, &listed, &edited);
    let run = verify();
    assert_eq!(run.code, 1, "rewritten: {}", run.stderr);
    assert!(run.stderr.contains("is not a signature"), "{}", run.stderr);
    for (key, namespace) in [("other", "xtask-bundle"), ("release", "file")] {
        sign(key, namespace);
        let run = verify();
        assert_eq!(run.code, 1, "{key} {namespace}: {}", run.stderr);
    }
}

// ---------------------------------------------------------------------------------------
// With Docker: private engines and the busybox stand-in.

const COMPOSE: &str = "\
name: sec
services:
  api:
    build:
      context: ./api
      args:
        API_TOKEN: ${API_TOKEN:-tok_build_arg_SECRET_41}
    image: sec-api:latest
";

const DOCKERFILE: &str = "\
FROM busybox:latest
ARG API_TOKEN
RUN echo building > /built.txt
COPY hello.txt /hello.txt
CMD [\"cat\", \"/hello.txt\"]
";

fn write_fixture(dir: &Utf8Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("api"))?;
    std::fs::write(dir.join("compose.yaml"), COMPOSE)?;
    std::fs::write(dir.join("api/Dockerfile"), DOCKERFILE)?;
    std::fs::write(dir.join("api/hello.txt"), "hello\n")?;
    Ok(())
}

fn images(engine: &support::Engine) -> anyhow::Result<String> {
    let sh = engine.shell()?;
    Ok(cmd!(sh, "docker images -q").quiet().read()?)
}

#[test]
fn import_refuses_a_damaged_bundle_before_loading_anything() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("sec-online", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("sec-offline", EngineOptions::default())?;
    let scratch = Scratch::new("refuse");
    let src = scratch.path().join("release");
    write_fixture(&src)?;
    ok(xtask_on(&online, &src, &["cache-export"], &[]), "export")?;
    let bundle = src.join("docker-build-cache");
    let manifest = std::fs::read_to_string(bundle.join("manifest.yaml"))?;
    let files: Vec<String> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("- path: "))
        .map(|p| p.trim_matches('\'').to_string())
        .collect();
    ensure!(files.len() >= 4, "too few files in {manifest}");
    // One byte at the end of the last file in the list; then the manifest's format.
    let victim = files.last().context("no files")?;
    let path = bundle.join(victim);
    let mut bytes = std::fs::read(&path)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes)?;
    let run = xtask_on(&offline, &src, &["cache-import"], &[]);
    ensure!(run.code == 1, "the import succeeded:\n{}", run.stderr);
    ensure!(run.stderr.contains(victim.as_str()), "{}", run.stderr);
    ensure!(images(&offline)?.is_empty(), "images were loaded");
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes)?;
    let future: String = manifest
        .lines()
        .map(|l| match l.starts_with("format_version:") {
            true => "format_version: 9\n".to_string(),
            false => format!("{l}\n"),
        })
        .collect();
    // SHA256SUMS lists the manifest's digest: rewritten with it, as a newer xtask would.
    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS"))?;
    std::fs::write(
        bundle.join("SHA256SUMS"),
        sums.replace(&sha256(manifest.as_bytes()), &sha256(future.as_bytes())),
    )?;
    std::fs::write(bundle.join("manifest.yaml"), future)?;
    let run = xtask_on(&offline, &src, &["cache-import"], &[]);
    ensure!(
        run.code == 1 && run.stderr.contains("format version 9"),
        "{}",
        run.stderr
    );
    ensure!(images(&offline)?.is_empty(), "images were loaded");
    std::fs::write(bundle.join("manifest.yaml"), &manifest)?;
    std::fs::write(bundle.join("SHA256SUMS"), &sums)?;

    // Import is idempotent: twice, and after an import killed mid-load.
    ok(xtask_on(&offline, &src, &["cache-import"], &[]), "import")?;
    let first = images(&offline)?;
    let again = ok(
        xtask_on(&offline, &src, &["cache-import"], &[]),
        "import again",
    )?;
    ensure!(again.contains("0 loaded"), "{again}");
    ensure!(
        images(&offline)? == first,
        "a second import changed the images"
    );
    let sh = offline.shell()?;
    let ids: Vec<String> = first.lines().map(str::to_string).collect();
    cmd!(sh, "docker rmi -f {ids...}")
        .quiet()
        .ignore_stdout()
        .run()?;
    // Killed while it loads: the engine is frozen at "Loading images", so the load is
    // under way when SIGKILL lands.
    let bin = support::run::bin();
    {
        let _cd = sh.push_dir(&src);
        let command = std::process::Command::from(cmd!(sh, "{bin} cache-import").quiet());
        fault::interrupt_at(
            command,
            "Loading images",
            "KILL",
            Some(&offline.root().join("docker.pid")),
        )?;
    }
    ok(
        xtask_on(&offline, &src, &["cache-import"], &[]),
        "import after a killed one",
    )?;
    let mut now: Vec<String> = images(&offline)?.lines().map(str::to_string).collect();
    let mut before: Vec<String> = first.lines().map(str::to_string).collect();
    now.sort();
    before.sort();
    ensure!(
        now == before,
        "after a killed import: {now:?}, expected {before:?}"
    );
    Ok(())
}

/// A bundle whose base images share no layer loads them with one `docker load` each, at
/// once: a damaged layer in one of them leaves neither image tagged (each stream holds its
/// end back until every stream has verified all its files), and once repaired both load
/// with the IDs they had on the export engine.
#[test]
fn images_loaded_at_once_are_all_refused_when_one_file_is_damaged() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("par-online", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    // A second base image with a layer of its own: one file.
    standins::import_note_image(&online, "par-note:1", b'n', 300_000)?;
    let offline = suite.offline_engine("par-offline", EngineOptions::default())?;
    let scratch = Scratch::new("par-load");
    let src = scratch.path().join("release");
    write_fixture(&src)?;
    std::fs::create_dir_all(src.join("web"))?;
    std::fs::write(
        src.join("web/Dockerfile"),
        "FROM par-note:1\nCOPY hello.txt /hello.txt\n",
    )?;
    std::fs::write(src.join("web/hello.txt"), "web\n")?;
    std::fs::write(
        src.join("compose.yaml"),
        format!("{COMPOSE}  web:\n    build: ./web\n    image: sec-web:latest\n"),
    )?;
    ok(xtask_on(&online, &src, &["cache-export"], &[]), "export")?;
    let bundle = src.join("docker-build-cache");
    // One line per image: `format` of busybox, then of par-note.
    let inspect = |engine: &support::Engine, format: &str| -> anyhow::Result<Vec<String>> {
        let sh = engine.shell()?;
        let out = cmd!(
            sh,
            "docker image inspect --format {format} busybox:latest par-note:1"
        )
        .quiet()
        .read()?;
        Ok(out.lines().map(str::to_string).collect())
    };
    let ids = |engine: &support::Engine| inspect(engine, "{{.Id}}");
    let expected = ids(&online)?;

    // busybox's layer: the biggest blob of the images' layout.
    let manifest = std::fs::read_to_string(bundle.join("manifest.yaml"))?;
    let blobs: Vec<String> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path: "))
        .map(|p| p.trim_matches('\'').to_string())
        .filter(|p| p.contains("blobs/sha256/"))
        .collect();
    let victim = blobs
        .iter()
        .max_by_key(|p| {
            std::fs::metadata(bundle.join(p))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .context("no blobs in the manifest")?
        .clone();
    let path = bundle.join(&victim);
    let mut bytes = std::fs::read(&path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&path, &bytes)?;
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let run = xtask_on(&offline, &src, &["cache-import"], &[]);
    ensure!(run.code == 1, "the import succeeded:\n{}", run.stderr);
    if parallel {
        ensure!(
            run.stderr.contains("as 2 archives at once"),
            "the images were not loaded at once:\n{}",
            run.stderr
        );
    }
    ensure!(
        run.stderr.contains(&format!("error: {victim}: sha256")),
        "the damaged file is not named:\n{}",
        run.stderr
    );
    ensure!(
        run.stderr
            .contains("the saved images do not verify (one file damaged"),
        "{}",
        run.stderr
    );
    ensure!(
        images(&offline)?.is_empty(),
        "images were tagged: {}",
        images(&offline)?
    );

    bytes[middle] ^= 1;
    std::fs::write(&path, &bytes)?;
    let out = ok(xtask_on(&offline, &src, &["cache-import"], &[]), "import")?;
    if parallel {
        ensure!(out.contains("as 2 archives at once"), "{out}");
    }
    ensure!(
        ids(&offline)? == expected,
        "IDs differ: {:?} vs {expected:?}",
        ids(&offline)?
    );

    // The classic store reads each share's own manifest.json: both images load there too.
    let classic = suite.engine(
        "par-classic",
        EngineOptions {
            containerd_store: false,
            ..EngineOptions::default()
        },
    )?;
    let out = ok(
        xtask_on(&classic, &src, &["cache-import"], &[]),
        "import (classic store)",
    )?;
    if parallel {
        ensure!(out.contains("as 2 archives at once"), "{out}");
    }
    let tags = inspect(&classic, "{{.RepoTags}}")?;
    ensure!(
        tags == ["[busybox:latest]", "[par-note:1]"],
        "the classic store has: {tags:?}"
    );
    Ok(())
}

/// Issue 15, point 6 on a real engine: a bundle on a read-only mount imports, checked
/// against the digest the export wrote with --digest-file.
#[test]
fn a_bundle_on_a_read_only_mount_imports_with_its_digest() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("sec-ro-online", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("sec-ro-offline", EngineOptions::default())?;
    let scratch = Scratch::new("readonly");
    let src = scratch.path().join("release");
    write_fixture(&src)?;
    let digest_file = scratch.path().join("digest.txt");
    let export = ok(
        xtask_on(
            &online,
            &src,
            &["cache-export", "--digest-file", digest_file.as_str()],
            &[],
        ),
        "export",
    )?;
    let digest = std::fs::read_to_string(&digest_file)?.trim().to_string();
    ensure!(digest.starts_with("sha256:"), "{digest}");
    ensure!(export.contains(&format!("Digest {digest}")), "{export}");
    let bundle = src.join("docker-build-cache");
    let usb = scratch.path().join("usb");
    let Some(_mount) = ReadOnlyMount::new(&usb, |dir| {
        let sh = Shell::new().unwrap();
        cmd!(sh, "cp -a {bundle} {dir}/").quiet().run().unwrap();
    }) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return Ok(());
    };
    let on_usb = usb.join("docker-build-cache");
    let run = xtask_on(
        &offline,
        scratch.path(),
        &[
            "cache-import",
            "--bundle",
            on_usb.as_str(),
            "--expect-digest",
            &digest,
        ],
        &[],
    );
    ok(run, "import from a read-only mount")?;
    ensure!(!images(&offline)?.is_empty(), "nothing was loaded");
    Ok(())
}

#[test]
fn a_second_export_into_a_locked_folder_fails_naming_the_lock() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("sec-lock", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let scratch = Scratch::new("lock");
    let src = scratch.path().join("release");
    write_fixture(&src)?;
    let bin = support::run::bin();
    let sh = online.shell()?;
    let _cd = sh.push_dir(&src);
    let first = std::process::Command::from(cmd!(sh, "{bin} cache-export").quiet())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Wait until the first holds the lock (its staging folder appears).
    let staging = src.join("docker-build-cache/.export-partial");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !staging.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ensure!(staging.exists(), "the first export never started staging");
    let second = xtask_on(&online, &src, &["cache-export"], &[]);
    let out = first.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the first export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        second.code == 1,
        "the second export did not fail:\n{}",
        second.stderr
    );
    ensure!(
        second
            .stderr
            .contains("another cache-export or cache-import")
            && second.stderr.contains(".lock"),
        "{}",
        second.stderr
    );
    // Nothing mixed: the bundle is the first export's, whole.
    ok(xtask(&src, &["cache-verify"]), "verify after two exports")?;
    Ok(())
}

#[test]
fn a_full_disk_or_a_stopped_engine_during_export_leaves_no_bundle_that_verifies(
) -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("sec-full", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let scratch = Scratch::new("full");
    let src = scratch.path().join("release");
    write_fixture(&src)?;
    // A 512 KiB tmpfs as the bundle folder: the images archive (busybox, ~1 MB
    // compressed as the containerd store keeps it) does not fit.
    let small = scratch.path().join("small");
    std::fs::create_dir_all(&small)?;
    let sh = Shell::new()?;
    cmd!(sh, "mount -t tmpfs -o size=512k xtask-sec-full {small}")
        .quiet()
        .run()?;
    let result = (|| -> anyhow::Result<()> {
        let out = small.join("bundle");
        let run = xtask_on(
            &online,
            &src,
            &["cache-export", "--output", out.as_str()],
            &[],
        );
        ensure!(
            run.code == 1,
            "the export on a full disk succeeded:\n{}",
            run.stderr
        );
        ensure!(
            // The OS's words, from our write or from BuildKit's ("no space left on device").
            run.stderr
                .to_lowercase()
                .contains("no space left on device"),
            "the error does not say the disk is full:\n{}",
            run.stderr
        );
        ensure!(!run.stderr.contains("panicked"), "{}", run.stderr);
        let verify = xtask(&src, &["cache-verify", "--bundle", out.as_str()]);
        ensure!(verify.code != 0, "a bundle verifies after a full disk");
        Ok(())
    })();
    support::unmount_below(&small)?;
    result?;
    // A rerun with space succeeds.
    let out = scratch.path().join("roomy");
    ok(
        xtask_on(
            &online,
            &src,
            &["cache-export", "--output", out.as_str()],
            &[],
        ),
        "export with space",
    )?;
    ok(
        xtask(&src, &["cache-verify", "--bundle", out.as_str()]),
        "verify",
    )?;

    // The engine stops during an export: a clear error, no bundle that verifies.
    let out = scratch.path().join("stopped");
    let bin = support::run::bin();
    let esh = online.shell()?;
    let _cd = esh.push_dir(&src);
    let export =
        std::process::Command::from(cmd!(esh, "{bin} cache-export --output {out}").quiet())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
    let staging = out.join(".export-partial");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !staging.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = std::fs::read_to_string(online.root().join("docker.pid"))?;
    let pid = pid.trim();
    cmd!(esh, "kill -KILL {pid}").quiet().run()?;
    let done = export.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&done.stderr);
    ensure!(
        !done.status.success(),
        "the export succeeded with its engine gone:\n{stderr}"
    );
    ensure!(!stderr.contains("panicked"), "{stderr}");
    // Whatever step the engine died in, the error says so first, naming its address.
    ensure!(
        stderr.contains(&format!(
            "error: the Docker engine stopped answering (DOCKER_HOST={})",
            online.host()
        )),
        "the error does not say the engine stopped answering:\n{stderr}"
    );
    let verify = xtask(&src, &["cache-verify", "--bundle", out.as_str()]);
    ensure!(verify.code != 0, "a bundle verifies after the engine died");
    Ok(())
}

/// Every secret value planted by [`no_planted_secret_reaches_the_bundle`].
const SECRETS: [&str; 9] = [
    "dotenv_beside_compose_SECRET_11",
    "dotenv_in_context_SECRET_22",
    "docker_config_auth_SECRET_33",
    "npmrc_context_SECRET_44",
    "npmrc_home_SECRET_55",
    "pip_conf_password_SECRET_66",
    "tok_build_arg_SECRET_41",
    "dotenv_local_frontend_SECRET_77",
    "pip_conf_extra_index_SECRET_88",
];

/// A project whose export runs every part: a Python service (wheelhouse, `pip download`,
/// which reads pip.conf), a Node service (npm cache, `npm cache add`, which reads the
/// `.npmrc` files), a busybox service with node_modules to pack, build args.
const SECRETS_COMPOSE: &str = "\
services:
  api:
    build:
      context: ./api
      args:
        API_TOKEN: ${API_TOKEN:-}
  py:
    build: ./py
  web:
    build: ./web
";

const SECRETS_PY_DOCKERFILE: &str = "\
FROM scratch AS wheels
FROM python:3.9-slim
WORKDIR /srv
COPY requirements.txt .
RUN --mount=type=bind,from=wheels,target=/wheels \\
    pip install --no-cache-dir --no-index --find-links=/wheels -r requirements.txt
";

const SECRETS_WEB_DOCKERFILE: &str = "\
FROM scratch AS npm-cache
FROM node:18-alpine
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=bind,from=npm-cache,target=/npm-cache,rw \\
    npm ci --offline --no-audit --no-fund --cache /npm-cache
";

const SECRETS_WEB_LOCK: &str = r#"{
  "name": "web",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": {"name": "web", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}},
    "node_modules/is-number": {
      "version": "7.0.0",
      "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",
      "license": "MIT",
      "engines": {"node": ">=0.12.0"}
    }
  }
}
"#;

/// Writes [`SECRETS_COMPOSE`]'s project with every secret planted where a careless tool
/// would pick it up; returns the HOME to run the export with.
fn plant_secrets(src: &Utf8Path, scratch: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    write_fixture(src)?;
    std::fs::write(src.join("compose.yaml"), SECRETS_COMPOSE)?;
    let write = |rel: &str, text: &str| -> anyhow::Result<()> {
        let path = src.join(rel);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, text).with_context(|| format!("writing {path}"))
    };
    // A node project in a busybox context, so that node_modules.tar.gz is made too.
    write("api/package.json", r#"{"name":"api","version":"1.0.0"}"#)?;
    write(
        "api/package-lock.json",
        r#"{"name":"api","version":"1.0.0","lockfileVersion":3,"packages":{"":{"name":"api","version":"1.0.0"}}}"#,
    )?;
    write("api/node_modules/dep/index.js", "module.exports = 1;\n")?;
    write("py/Dockerfile", SECRETS_PY_DOCKERFILE)?;
    write("py/requirements.txt", "six==1.16.0\n")?;
    write("web/Dockerfile", SECRETS_WEB_DOCKERFILE)?;
    write(
        "web/package.json",
        r#"{"name":"web","version":"1.0.0","dependencies":{"is-number":"7.0.0"}}"#,
    )?;
    write("web/package-lock.json", SECRETS_WEB_LOCK)?;
    // The secrets.
    write(".env", &format!("DB_PASSWORD={}\n", SECRETS[0]))?;
    write("api/.env", &format!("API_KEY={}\n", SECRETS[1]))?;
    write("py/.env", &format!("API_KEY={}\n", SECRETS[1]))?;
    write(
        "web/.env.local",
        &format!("NEXT_PUBLIC_KEY={}\n", SECRETS[7]),
    )?;
    // Scoped to a registry no package of the lockfile uses: npm reads the file, and the
    // public registry is still asked without a token.
    let npmrc = |secret: &str| {
        format!("@private:registry=https://npm.invalid/\n//npm.invalid/:_authToken={secret}\n")
    };
    write("web/.npmrc", &npmrc(SECRETS[3]))?;
    write("api/.npmrc", &npmrc(SECRETS[3]))?;
    let home = scratch.join("home");
    std::fs::create_dir_all(home.join(".docker"))?;
    std::fs::write(
        home.join(".docker/config.json"),
        format!(
            r#"{{"auths":{{"registry.example":{{"auth":"{}"}}}}}}"#,
            SECRETS[2]
        ),
    )?;
    std::fs::write(home.join(".npmrc"), npmrc(SECRETS[4]))?;
    // An extra index with credentials that refuses connections at once (port 9 on the
    // loopback): pip reads it, warns, and takes the package from the real index.
    std::fs::create_dir_all(home.join(".config/pip"))?;
    std::fs::write(
        home.join(".config/pip/pip.conf"),
        format!(
            "[global]\nextra-index-url = http://user:{}@127.0.0.1:9/simple\n\
             retries = 0\ntimeout = 2\n# password {}\n",
            SECRETS[8], SECRETS[5]
        ),
    )?;
    Ok(home)
}

#[test]
fn no_planted_secret_reaches_the_bundle() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    standins::debian_rootfs()?; // before the engine starts: it may take minutes
    let online = suite.engine("sec-secrets", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    standins::load_standins(&online)?;
    let scratch = Scratch::new("secrets");
    let src = scratch.path().join("release");
    let home = plant_secrets(&src, scratch.path())?;
    let home_s = home.to_string();
    // A full export: images, build cache, wheelhouse (pip download reads pip.conf) and npm
    // cache (npm cache add reads both .npmrc files), node_modules packed.
    let run = xtask_on(
        &online,
        &src,
        &["cache-export", "--with-node-modules"],
        &[("HOME", home_s.as_str()), ("API_TOKEN", SECRETS[6])],
    );
    let stderr = ok(run, "export with planted secrets")?;
    ensure!(
        stderr.contains("build arg API_TOKEN looks like a secret") && stderr.contains("--secret"),
        "no warning about the secret-looking build arg:\n{stderr}"
    );
    for secret in SECRETS {
        ensure!(!stderr.contains(secret), "the export printed {secret}");
    }
    let bundle = src.join("docker-build-cache");
    // Every part ran: the search below covers what each of them wrote.
    for part in [
        "node_modules.tar.gz",
        "pip-cache/py",
        "npm-cache/web",
        "build-cache",
    ] {
        ensure!(bundle.join(part).exists(), "the export wrote no {part}");
    }
    let wheels: Vec<Utf8PathBuf> = walk(&bundle.join("pip-cache/py"))?;
    ensure!(
        wheels.iter().any(|w| w.as_str().contains("six-1.16.0")),
        "pip downloaded no six wheel: {wheels:?}"
    );
    let mut searched = 0usize;
    for file in walk(&bundle)? {
        let bytes = std::fs::read(&file)?;
        search_all(file.as_str(), &bytes, &mut searched, 0)?;
    }
    ensure!(searched > 10, "only {searched} blobs were searched");
    Ok(())
}

/// Every regular file below `dir`.
fn walk(dir: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut out = Vec::new();
    for entry in dir.read_dir_utf8()? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            out.extend(walk(entry.path())?);
        } else if kind.is_file() {
            out.push(entry.path().to_owned());
        }
    }
    Ok(out)
}

/// Fails if any planted secret is in `bytes`, or in what they hold once unpacked: tar
/// members, gzip and zstd streams, recursively.
fn search_all(name: &str, bytes: &[u8], searched: &mut usize, depth: usize) -> anyhow::Result<()> {
    *searched += 1;
    for secret in SECRETS {
        ensure!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is in {name}"
        );
    }
    if depth > 4 {
        return Ok(());
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        if flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .is_ok()
        {
            return search_all(&format!("{name} (gunzipped)"), &out, searched, depth + 1);
        }
    }
    if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        if let Ok(out) = zstd::decode_all(bytes) {
            return search_all(&format!("{name} (unzstd)"), &out, searched, depth + 1);
        }
    }
    if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        // Tar headers without their contents (the npm image's `.layer-headers`) end
        // early: what they hold was searched as raw bytes above.
        let mut archive = tar::Archive::new(bytes);
        if let Ok(entries) = archive.entries() {
            for entry in entries {
                let Ok(mut entry) = entry else { break };
                let member = format!("{name}:{}", String::from_utf8_lossy(&entry.path_bytes()));
                let mut out = Vec::new();
                if entry.read_to_end(&mut out).is_err() {
                    break;
                }
                search_all(&member, &out, searched, depth + 1)?;
            }
        }
    }
    Ok(())
}

#[test]
fn node_modules_round_trips_and_is_never_overwritten_without_force() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("sec-nm", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.offline_engine("sec-nm-offline", EngineOptions::default())?;
    let scratch = Scratch::new("nm");
    let src = scratch.path().join("release");
    write_fixture(&src)?;
    std::fs::write(
        src.join("api/package-lock.json"),
        r#"{"lockfileVersion":3,"packages":{}}"#,
    )?;
    // An Alpine (musl) node image, as the real frontend's: the busybox stand-in renamed.
    let online_sh = online.shell()?;
    cmd!(online_sh, "docker tag busybox:latest node:18-alpine")
        .quiet()
        .run()?;
    std::fs::write(
        src.join("api/Dockerfile"),
        DOCKERFILE.replace("FROM busybox:latest", "FROM node:18-alpine"),
    )?;
    let nm = src.join("api/node_modules");
    std::fs::create_dir_all(nm.join("dep/lib"))?;
    std::fs::create_dir_all(nm.join(".bin"))?;
    std::fs::write(nm.join("dep/lib/cli.js"), "#!/usr/bin/env node\n")?;
    std::os::unix::fs::symlink("../dep/lib/cli.js", nm.join(".bin/dep"))?;
    std::os::unix::fs::symlink("/etc/passwd", nm.join("dep/evil"))?;
    let stderr = ok(
        xtask_on(
            &online,
            &src,
            &[
                "cache-export",
                "--with-node-modules",
                "--only",
                "base-images",
            ],
            &[],
        ),
        "export",
    )?;
    ensure!(
        stderr.contains("left out node_modules/dep/evil"),
        "{stderr}"
    );
    ensure!(
        stderr.contains("node:18-alpine runs on linux-x64-musl"),
        "no platform warning:\n{stderr}"
    );
    let manifest = std::fs::read_to_string(src.join("docker-build-cache/manifest.yaml"))?;
    ensure!(manifest.contains("path: node_modules.tar.gz"), "{manifest}");

    let server = scratch.path().join("server");
    let sh = Shell::new()?;
    cmd!(sh, "cp -a {src} {server}").quiet().run()?;
    let run = xtask_on(
        &offline,
        &server,
        &["cache-import", "--extract-node-modules"],
        &[],
    );
    ensure!(
        run.code == 1,
        "an existing node_modules was overwritten:\n{}",
        run.stderr
    );
    ensure!(run.stderr.contains("--force"), "{}", run.stderr);
    ensure!(
        images(&offline)?.is_empty(),
        "images were loaded before the refusal"
    );
    std::fs::write(
        server.join("api/node_modules/dep/lib/cli.js"),
        "local change\n",
    )?;
    ok(
        xtask_on(
            &offline,
            &server,
            &["cache-import", "--extract-node-modules", "--force"],
            &[],
        ),
        "import --force",
    )?;
    let out = server.join("api/node_modules");
    ensure!(std::fs::read_to_string(out.join(".bin/dep"))? == "#!/usr/bin/env node\n");
    ensure!(std::fs::symlink_metadata(out.join("dep/evil")).is_err());
    let leftovers: Vec<String> = server
        .join("api")
        .read_dir_utf8()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string()))
        .filter(|n| n.starts_with(".node_modules"))
        .collect();
    ensure!(leftovers.is_empty(), "left behind: {leftovers:?}");

    // A crafted archive in a bundle whose checksums were rewritten to match: refused,
    // naming the entry, and the node_modules in place is untouched.
    let bundle = server.join("docker-build-cache");
    let evil = {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_old();
        let name = b"node_modules/../../escaped.txt";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, &b"pwn"[..])?;
        builder.into_inner()?.finish()?
    };
    std::fs::write(bundle.join("node_modules.tar.gz"), &evil)?;
    let digest = sha256(&evil);
    let text = std::fs::read_to_string(bundle.join("manifest.yaml"))?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let at = lines
        .iter()
        .position(|l| l == "- path: node_modules.tar.gz")
        .context("no node_modules entry")?;
    lines[at + 1] = format!("  size: {}", evil.len());
    lines[at + 2] = format!("  sha256: {digest}");
    std::fs::write(bundle.join("manifest.yaml"), lines.join("\n") + "\n")?;
    let manifest_digest = sha256(&std::fs::read(bundle.join("manifest.yaml"))?);
    let sums: String = std::fs::read_to_string(bundle.join("SHA256SUMS"))?
        .lines()
        .map(|l| {
            if l.ends_with("  node_modules.tar.gz") {
                format!("{digest}  node_modules.tar.gz\n")
            } else if l.ends_with("  manifest.yaml") {
                format!("{manifest_digest}  manifest.yaml\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(bundle.join("SHA256SUMS"), sums)?;
    let run = xtask_on(
        &offline,
        &server,
        &["cache-import", "--extract-node-modules", "--force"],
        &[],
    );
    ensure!(
        run.code == 1,
        "a crafted archive was unpacked:\n{}",
        run.stderr
    );
    ensure!(
        run.stderr.contains("node_modules/../../escaped.txt") && run.stderr.contains("`..`"),
        "{}",
        run.stderr
    );
    ensure!(!server.join("escaped.txt").exists() && !scratch.path().join("escaped.txt").exists());
    ensure!(std::fs::read_to_string(out.join(".bin/dep"))? == "#!/usr/bin/env node\n");
    Ok(())
}

/// The engine stops while `cache-import` streams the images into `docker load`: a clear
/// error that names docker load and does not blame the bundle, and, on a running engine,
/// a rerun imports everything.
#[test]
fn an_engine_that_stops_during_import_gets_a_clear_error_and_a_rerun_succeeds() -> anyhow::Result<()>
{
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("sec-imp-online", EngineOptions::default())?;
    // The Debian stand-ins: a 300 MB layer, long enough to load to stop the engine mid-way.
    standins::load_standins(&online)?;
    let scratch = Scratch::new("import-stop");
    let src = scratch.path().join("release");
    std::fs::create_dir_all(&src)?;
    std::fs::write(
        src.join("compose.yaml"),
        "services:\n  app:\n    image: python:3.9-slim\n  web:\n    image: nginx:alpine\n",
    )?;
    ok(
        xtask_on(
            &online,
            &src,
            &["cache-export", "--only", "base-images"],
            &[],
        ),
        "export",
    )?;
    drop(online);

    let offline = suite.offline_engine("sec-imp-offline", EngineOptions::default())?;
    let bin = support::run::bin();
    let osh = offline.shell()?;
    let mut import = {
        let _cd = osh.push_dir(&src);
        std::process::Command::from(cmd!(osh, "{bin} cache-import --no-host-caches").quiet())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?
    };
    let stderr = import.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        while let Some(Ok(line)) = lines.next() {
            if line.contains("Loading images") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .context("the import never started loading images")?;
    let pid = std::fs::read_to_string(offline.root().join("docker.pid"))?;
    let pid = pid.trim();
    cmd!(osh, "kill -KILL {pid}").quiet().run()?;
    let status = import.wait()?;
    let stderr = reader.join().unwrap_or_default();
    ensure!(
        !status.success(),
        "the import succeeded with its engine gone:\n{stderr}"
    );
    ensure!(!stderr.contains("panicked"), "{stderr}");
    ensure!(
        stderr.contains("docker load")
            && !stderr.contains("corrupted")
            && !stderr.contains("damaged"),
        "the error does not name docker load, or blames the bundle:\n{stderr}"
    );
    drop(offline);

    // On a running engine the same bundle imports whole.
    let again = suite.offline_engine("sec-imp-again", EngineOptions::default())?;
    ok(
        xtask_on(&again, &src, &["cache-import", "--no-host-caches"], &[]),
        "import again",
    )?;
    let ash = again.shell()?;
    for image in ["python:3.9-slim", "nginx:alpine"] {
        let id = cmd!(ash, "docker images --quiet {image}").read()?;
        ensure!(!id.is_empty(), "{image} is missing after the second import");
    }
    Ok(())
}

/// The target's disk has no room for the images: the import says how much it needs and
/// loads nothing; with room again, it imports.
#[test]
fn a_full_disk_on_the_target_refuses_the_import_before_loading() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("sec-tfull", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    // The data root is a tmpfs (EngineOptions::default): shrunk below to what it holds.
    let offline = suite.offline_engine("sec-tfull-offline", EngineOptions::default())?;
    let scratch = Scratch::new("tfull");
    let src = scratch.path().join("release");
    write_fixture(&src)?;
    ok(xtask_on(&online, &src, &["cache-export"], &[]), "export")?;
    let data = offline.root().join("data");
    let sh = Shell::new()?;
    let used: u64 = cmd!(sh, "df --output=used -B1 {data}")
        .read()?
        .lines()
        .nth(1)
        .context("df printed no figure")?
        .trim()
        .parse()?;
    let small = format!("size={}", used + 256 * 1024);
    cmd!(sh, "mount -o remount,{small} {data}").quiet().run()?;
    let run = xtask_on(&offline, &src, &["cache-import"], &[]);
    let roomy = cmd!(sh, "mount -o remount,size=16g {data}").quiet().run();
    ensure!(
        run.code == 1,
        "the import on a full disk succeeded:\n{}",
        run.stderr
    );
    ensure!(
        run.stderr.contains("not enough free disk") && run.stderr.contains("docker system prune"),
        "the error does not say what is missing and what to do:\n{}",
        run.stderr
    );
    ensure!(images(&offline)?.is_empty(), "images were loaded");
    roomy?;
    ok(
        xtask_on(&offline, &src, &["cache-import"], &[]),
        "import with room",
    )?;
    ensure!(!images(&offline)?.is_empty(), "nothing was loaded");
    Ok(())
}
