//! The built binary against temporary projects: what users see, exit codes included.
//! 1 for bad input (with a message naming the file), 2 for usage errors.

use camino::Utf8PathBuf;
use xshell::{cmd, Shell};

use crate::support::repo_root;
use crate::support::run::{xtask, Scratch};

/// A fresh project folder with the given files.
fn project(files: &[(&str, &str)]) -> (Scratch, Utf8PathBuf) {
    let dir = Scratch::new("cli");
    let root = dir.path().to_path_buf();
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    (dir, root)
}

#[test]
fn cache_plan_shows_the_repositorys_three_base_images() {
    let root = repo_root();
    let run = xtask(&root, &["cache-plan", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        plan["base_images"],
        serde_json::json!(["nginx:alpine", "node:18-alpine", "python:3.9-slim"])
    );
    assert_eq!(plan["project_name"], "llm-chat");
    assert_eq!(
        plan["compose_file"],
        root.join("docker-compose.yml").as_str()
    );
    let backend = &plan["build_services"][0];
    assert_eq!(backend["name"], "backend");
    assert_eq!(backend["context"], root.join("backend").as_str());
    assert_eq!(
        backend["dockerfile"],
        root.join("backend/Dockerfile").as_str()
    );
    assert_eq!(
        backend["base_images"],
        serde_json::json!(["python:3.9-slim"])
    );
    assert!(backend["python_requirements"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(root
            .join("backend/requirements.txt")
            .as_str())));
    assert_eq!(
        plan["build_services"][1]["node_lockfiles"],
        serde_json::json!([root.join("frontend/package-lock.json").as_str()])
    );
    assert_eq!(
        plan["image_services"],
        serde_json::json!([{"name": "nginx", "image": "nginx:alpine"}])
    );

    let table = xtask(&root.join("backend"), &["cache-plan"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    for image in ["nginx:alpine", "node:18-alpine", "python:3.9-slim"] {
        assert!(table.stdout.contains(image), "{}", table.stdout);
    }
}

#[test]
fn compose_file_is_found_upwards_in_compose_order() {
    let (_d, root) = project(&[
        ("compose.yaml", "services:\n  a:\n    image: first:1\n"),
        (
            "docker-compose.yml",
            "services:\n  b:\n    image: second:1\n",
        ),
        ("sub/dir/.keep", ""),
    ]);
    let run = xtask(&root.join("sub/dir"), &["cache-plan", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("first:1"), "{}", run.stdout);
    assert!(!run.stdout.contains("second:1"), "{}", run.stdout);
}

#[test]
fn dotenv_project_name_and_override_file_count_as_compose_counts_them() {
    let (_d, root) = project(&[
        (
            "compose.yaml",
            "name: from-name\nservices:\n  api:\n    build: ./api\n",
        ),
        (
            "compose.override.yml",
            "services:\n  api:\n    build:\n      args: {BASE: 'python:3.12'}\n",
        ),
        ("api/Dockerfile", "ARG BASE=python:3.9\nFROM $BASE\n"),
        (".env", "COMPOSE_PROJECT_NAME=From_DotEnv\n"),
    ]);
    let run = xtask(&root.join("api"), &["cache-plan", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["project_name"], "from_dotenv");
    assert_eq!(plan["base_images"], serde_json::json!(["python:3.12"]));
    assert_eq!(
        plan["compose_files"],
        serde_json::json!([
            root.join("compose.yaml").as_str(),
            root.join("compose.override.yml").as_str()
        ])
    );
    // -p wins; -f alone leaves the override out.
    let run = xtask(
        &root,
        &["-f", "compose.yaml", "-p", "cli", "cache-plan", "--json"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["project_name"], "cli");
    assert_eq!(plan["base_images"], serde_json::json!(["python:3.9"]));
    // -f repeats, as with docker compose.
    let run = xtask(
        &root,
        &[
            "-f",
            "compose.yaml",
            "-f",
            "compose.override.yml",
            "cache-plan",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["base_images"], serde_json::json!(["python:3.12"]));
}

#[test]
fn a_git_context_is_listed_with_a_warning_and_the_rest_goes_on() {
    let (_d, root) = project(&[
        (
            "compose.yaml",
            "services:\n  remote:\n    build: https://github.com/example/app.git#main\n  \
             local:\n    build: ./local\n",
        ),
        ("local/Dockerfile", "FROM alpine:3.20\n"),
    ]);
    let run = xtask(&root, &["cache-plan", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("warning: service remote"),
        "{}",
        run.stderr
    );
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["remote_build_services"][0]["name"], "remote");
    assert_eq!(plan["base_images"], serde_json::json!(["alpine:3.20"]));
}

#[test]
fn bad_input_exits_1_with_a_message_naming_the_place() {
    let check = |files: &[(&str, &str)], expected: &[&str]| {
        let (_d, root) = project(files);
        let run = xtask(&root, &["cache-plan"]);
        assert_eq!(run.code, 1, "stderr: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        for text in expected {
            assert!(run.stderr.contains(text), "{text:?} not in {}", run.stderr);
        }
    };
    check(
        &[("compose.yaml", "services:\n  a:\n    image: [unclosed\n")],
        &["compose.yaml:"],
    );
    check(
        &[("compose.yaml", "services:\n  a:\n    build: ./missing\n")],
        &["service a", "missing"],
    );
    check(
        &[
            ("compose.yaml", "services:\n  a:\n    build: ./a\n"),
            ("a/Dockerfile", "RUN echo no from\n"),
        ],
        &["service a", "FROM"],
    );
    check(
        &[
            ("compose.yaml", "services:\n  a:\n    build: ./a\n"),
            ("a/Dockerfile", "ARG BASE\nFROM ${BASE}\n"),
        ],
        &["service a", "BASE"],
    );
    check(
        &[
            ("compose.yaml", "services:\n  a:\n    build: ./a\n"),
            (
                "a/Dockerfile",
                "FROM alpine AS one\nCOPY --from=two /x /x\nFROM alpine AS two\nCOPY --from=one /y /y\n",
            ),
        ],
        &["service a", "cycle"],
    );
    check(
        &[(
            "compose.yaml",
            "services:\n  a:\n    image: ${TAG:?set TAG first}\n",
        )],
        &["TAG", "set TAG first"],
    );
    check(
        &[(
            "compose.yaml",
            "services:\n  a:\n    build:\n      context: .\n      dockerfile: Dockerfile\n      \
             dockerfile_inline: FROM alpine\n",
        )],
        &["a", "dockerfile_inline"],
    );
}

#[test]
fn usage_errors_exit_2_and_help_has_examples() {
    let root = repo_root();
    let run = xtask(&root, &["cache-plan", "--no-such-flag"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = xtask(&root, &["no-such-command"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    for command in [
        "cache-plan",
        "cache-export",
        "cache-import",
        "cache-verify",
        "cache-status",
        "patch-compose",
    ] {
        let help = xtask(&root, &[command, "--help"]);
        assert_eq!(help.code, 0, "{command}: {}", help.stderr);
        assert!(
            help.stdout.contains("Examples:") && help.stdout.contains("cargo xtask"),
            "{command} --help has no example:\n{}",
            help.stdout
        );
    }
}

#[test]
fn patch_compose_from_the_plan_is_idempotent_and_reverts_to_the_byte() {
    let compose =
        "# the app\r\nservices:\r\n  web:   # front\r\n    build: ./web\r\n    image: web:1\r\n";
    let (_d, root) = project(&[
        ("compose.yaml", compose),
        ("web/Dockerfile", "FROM alpine:3.20\nRUN echo hi\n"),
    ]);
    let patch = xtask(&root, &["patch-compose", "--strategy", "local"]);
    assert_eq!(patch.code, 0, "{}", patch.stderr);
    let patched = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    assert!(patched.contains(&format!(
        "type=local,src={},tag=web",
        root.join("docker-build-cache/build-cache")
    )));
    assert!(patched.contains("# the app\r\n"), "{patched:?}");

    // Patched from the plan: the folder is where the bundle will be (issue 22: --check
    // fails while it is not there; see a_moved_bundle_fails_check_and_status_naming_it).
    std::fs::create_dir_all(root.join("docker-build-cache/build-cache")).unwrap();
    let check = xtask(&root, &["patch-compose", "--check", "--strategy", "local"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let again = xtask(&root, &["patch-compose", "--strategy", "local"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(root.join("compose.yaml")).unwrap(),
        patched
    );

    let revert = xtask(&root, &["patch-compose", "--revert"]);
    assert_eq!(revert.code, 0, "{}", revert.stderr);
    assert_eq!(
        std::fs::read_to_string(root.join("compose.yaml")).unwrap(),
        compose
    );
    let check = xtask(&root, &["patch-compose", "--check", "--strategy", "local"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    let diff = xtask(&root, &["patch-compose", "--diff", "--strategy", "local"]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    assert!(
        diff.stdout.contains("+      cache_from:"),
        "{}",
        diff.stdout
    );
    assert_eq!(
        std::fs::read_to_string(root.join("compose.yaml")).unwrap(),
        compose
    );
}

/// A service that only the override file builds (a test runner in compose.override.yml)
/// is patched there, the main file's services in the main file; --check, --revert and
/// --output see both files.
#[test]
fn patch_compose_patches_each_file_of_the_set() {
    let main = "services:\n  api:\n    build: ./api\n";
    let over = "services:\n  tests:\n    build: ./tests\n";
    let (_d, root) = project(&[
        ("compose.yaml", main),
        ("compose.override.yml", over),
        ("api/Dockerfile", "FROM alpine:3.20\n"),
        ("tests/Dockerfile", "FROM alpine:3.20\n"),
    ]);
    let out = root.join("one.yml");
    let refused = xtask(
        &root,
        &[
            "patch-compose",
            "--strategy",
            "local",
            "--output",
            out.as_str(),
        ],
    );
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("--output writes one file, and 2 files of the project change"),
        "{}",
        refused.stderr
    );
    assert!(!out.exists());
    let patch = xtask(&root, &["patch-compose", "--strategy", "local"]);
    assert_eq!(patch.code, 0, "{}", patch.stderr);
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    let cache = root.join("docker-build-cache/build-cache");
    assert!(read("compose.yaml").contains(&format!("type=local,src={cache},tag=api")));
    assert!(!read("compose.yaml").contains("tag=tests"));
    assert!(read("compose.override.yml").contains(&format!("type=local,src={cache},tag=tests")));
    // --check also wants the folders the patch points at (the bundle's): here, no export
    // has made them yet.
    std::fs::create_dir_all(&cache).unwrap();
    let check = xtask(&root, &["patch-compose", "--check", "--strategy", "local"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    std::fs::write(root.join("compose.override.yml"), over).unwrap();
    let check = xtask(&root, &["patch-compose", "--check", "--strategy", "local"]);
    assert_eq!(check.code, 1, "{}", check.stderr);
    assert!(
        check.stderr.contains(&format!(
            "{} is not patched",
            root.join("compose.override.yml")
        )),
        "{}",
        check.stderr
    );
    let revert = xtask(&root, &["patch-compose", "--revert"]);
    assert_eq!(revert.code, 0, "{}", revert.stderr);
    assert_eq!(read("compose.yaml"), main);
    assert_eq!(read("compose.override.yml"), over);
}

/// Issue 22: a bundle moved after patch-compose is named by `patch-compose --check` and
/// `cache-status`, with what to do, instead of a build that quietly rebuilds everything.
#[test]
fn a_moved_bundle_fails_check_and_status_naming_it() {
    let (_d, root) = project(&[
        ("compose.yaml", "services:\n  web:\n    build: ./web\n"),
        (
            "web/Dockerfile",
            "FROM scratch AS wheels\nFROM python:3.12-slim\nCOPY requirements.txt .\n",
        ),
        ("web/requirements.txt", "six==1.16.0\n"),
    ]);
    let bundle = root.join("bundle");
    let bundle_arg = ["--bundle", bundle.as_str()];
    let patch = xtask(
        &root,
        &[&["patch-compose", "--strategy", "local"][..], &bundle_arg].concat(),
    );
    assert_eq!(patch.code, 0, "{}", patch.stderr);
    std::fs::create_dir_all(bundle.join("build-cache")).unwrap();
    std::fs::create_dir_all(bundle.join("pip-cache/web")).unwrap();
    let check_args = [
        &["patch-compose", "--check", "--strategy", "local"][..],
        &bundle_arg,
    ]
    .concat();
    let check = xtask(&root, &check_args);
    assert_eq!(check.code, 0, "{}", check.stderr);

    std::fs::rename(&bundle, root.join("moved")).unwrap();
    let check = xtask(&root, &check_args);
    assert_eq!(check.code, 1, "{}", check.stderr);
    for text in [
        bundle.join("build-cache").as_str(),
        bundle.join("pip-cache/web").as_str(),
        "additional_contexts.wheels",
        "patch-compose --bundle NEWPATH",
    ] {
        assert!(check.stderr.contains(text), "no {text}:\n{}", check.stderr);
    }
    let status = xtask(
        &root,
        &["cache-status", "--bundle", root.join("moved").as_str()],
    );
    assert_eq!(status.code, 1, "{}", status.stderr);
    assert!(
        status.stderr.contains(bundle.join("build-cache").as_str())
            && status.stderr.contains("patch-compose --bundle NEWPATH"),
        "{}",
        status.stderr
    );
}

#[test]
fn verify_names_each_bad_file_without_docker() {
    let (_d, root) = project(&[("compose.yaml", "services: {}\n")]);
    let bundle = root.join("docker-build-cache");
    std::fs::create_dir_all(bundle.join("build-cache/a")).unwrap();
    std::fs::write(bundle.join("one.bin"), b"hello").unwrap();
    std::fs::write(bundle.join("build-cache/a/index.json"), b"{}").unwrap();
    let sha = |b: &[u8]| {
        use sha2::Digest;
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let files = [
        ("build-cache/a/index.json", &b"{}"[..]),
        ("one.bin", &b"hello"[..]),
    ];
    let mut manifest = String::from(
        "format_version: 1\ntool_version: 0.1.0\ncreated: 2026-11-29T00:00:00Z\n\
         project_name: p\nengine:\n  server_version: '26'\n  arch: amd64\n  containerd_store: true\n\
         strategy: local\ncompression: none\nimages: []\nservices: []\nfiles:\n",
    );
    let mut sums = String::new();
    for (path, bytes) in files {
        manifest.push_str(&format!(
            "- path: {path}\n  size: {}\n  sha256: {}\n",
            bytes.len(),
            sha(bytes)
        ));
        sums.push_str(&format!("{}  {path}\n", sha(bytes)));
    }
    sums.push_str(&format!("{}  manifest.yaml\n", sha(manifest.as_bytes())));
    std::fs::write(bundle.join("manifest.yaml"), &manifest).unwrap();
    std::fs::write(bundle.join("SHA256SUMS"), &sums).unwrap();
    let ok = xtask(&root, &["cache-verify"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);

    std::fs::write(bundle.join("one.bin"), b"hellO").unwrap();
    std::fs::remove_file(bundle.join("build-cache/a/index.json")).unwrap();
    std::fs::write(bundle.join("stray.txt"), b"?").unwrap();
    let bad = xtask(&root, &["cache-verify", "--json"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains(&format!("one.bin: sha256 {}", sha(b"hellO"))),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains(&format!("expected {}", sha(b"hello"))),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("build-cache/a/index.json: missing"),
        "{}",
        bad.stderr
    );
    assert!(bad.stderr.contains("warning: stray.txt"), "{}", bad.stderr);
    let report: serde_json::Value = serde_json::from_str(&bad.stdout).unwrap();
    assert_eq!(report["problems"].as_array().unwrap().len(), 2);

    // A future format is refused with what to do.
    let future_manifest = manifest.replace("format_version: 1", "format_version: 7");
    std::fs::write(bundle.join("manifest.yaml"), &future_manifest).unwrap();
    std::fs::write(
        bundle.join("SHA256SUMS"),
        sums.replace(&sha(manifest.as_bytes()), &sha(future_manifest.as_bytes())),
    )
    .unwrap();
    let future = xtask(&root, &["cache-verify"]);
    assert_eq!(future.code, 1);
    assert!(
        future.stderr.contains("format version 7"),
        "{}",
        future.stderr
    );
    // SHA256SUMS that disagrees with the manifest.
    std::fs::write(bundle.join("manifest.yaml"), &manifest).unwrap();
    let fewer: String = sums.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(bundle.join("SHA256SUMS"), fewer).unwrap();
    let disagree = xtask(&root, &["cache-verify"]);
    assert_eq!(disagree.code, 1);
    assert!(disagree.stderr.contains("disagree"), "{}", disagree.stderr);
}

#[test]
fn the_repositorys_own_compose_file_patches_and_reverts_and_compose_accepts_it() {
    let root = repo_root();
    let files: Vec<(String, String)> = [
        "docker-compose.yml",
        "nginx/default.conf",
        "backend/Dockerfile",
        "backend/.dockerignore",
        "backend/requirements.txt",
        "frontend/Dockerfile",
        "frontend/.dockerignore",
        "frontend/package.json",
        "frontend/package-lock.json",
    ]
    .iter()
    .map(|f| {
        (
            f.to_string(),
            std::fs::read_to_string(root.join(f)).unwrap(),
        )
    })
    .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_d, dir) = project(&refs);
    let original = std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap();
    let patch = xtask(&dir, &["patch-compose", "--strategy", "local"]);
    assert_eq!(patch.code, 0, "{}", patch.stderr);
    let patched = std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap();
    let bundle = dir.join("docker-build-cache");
    for added in [
        format!("type=local,src={bundle}/build-cache,tag=backend"),
        format!("wheels: '{bundle}/pip-cache/backend'"),
        format!("npm-cache: '{bundle}/npm-cache/frontend'"),
    ] {
        assert!(patched.contains(&added), "{added} not in\n{patched}");
    }
    // Every comment and line of the original is still there, in order.
    let mut rest = patched.as_str();
    for line in original.lines() {
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} lost or moved"));
        rest = &rest[at + line.len()..];
    }
    let again = xtask(&dir, &["patch-compose", "--strategy", "local"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap(),
        patched
    );

    // The real docker compose (v2) accepts the result and resolves the additions.
    let sh = Shell::new().unwrap();
    sh.change_dir(&dir);
    match cmd!(sh, "docker compose config --format json")
        .quiet()
        .ignore_stderr()
        .read()
    {
        Ok(json) => {
            let config: serde_json::Value = serde_json::from_str(&json).unwrap();
            let backend = &config["services"]["backend"]["build"];
            assert_eq!(
                backend["cache_from"][0],
                format!("type=local,src={bundle}/build-cache,tag=backend")
            );
            assert_eq!(
                backend["additional_contexts"]["wheels"],
                bundle.join("pip-cache/backend").as_str()
            );
        }
        Err(err) if std::env::var("XTASK_DOCKER_TESTS").as_deref() == Ok("1") => {
            panic!("docker compose config rejected the patched file: {err}")
        }
        Err(_) => eprintln!(
            "\n*** SKIPPED docker compose config check: docker compose is not installed ***\n"
        ),
    }

    let revert = xtask(&dir, &["patch-compose", "--revert"]);
    assert_eq!(revert.code, 0, "{}", revert.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap(),
        original
    );
}

/// `bench --figures` names known figures only, and not app figures with --no-app; both
/// refused before any engine starts.
#[test]
fn bench_figures_are_checked_before_anything_runs() {
    let (_dir, root) = project(&[]);
    let run = xtask(&root, &["bench", "--figures", "9,11"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("no figure `11`: the figures are 0, 1, 2"),
        "{}",
        run.stderr
    );
    let run = xtask(&root, &["bench", "--figures", "9", "--no-app"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--figures names figures of the app stack, which --no-app leaves out"),
        "{}",
        run.stderr
    );
}
