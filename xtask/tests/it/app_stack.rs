//! The application itself builds offline and answers through nginx (issue 3).
//!
//! A private engine (no network) gets the Debian stand-ins under the real base image
//! names; the repository's compose project, copied to a temp dir as it is, is built with
//! `docker compose build` plus an override file that hands each Dockerfile its dependency
//! caches as build contexts (`wheels`, `npm-cache`, fetched on the host) and publishes the
//! web ports on 127.0.0.1 only. Then `docker compose up`, and `GET /api/health` and
//! `GET /` through the published nginx port.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::support::{self, offline_deps, standins, EngineOptions};

/// Directories never copied with the project: dependencies, build output, tooling.
const SKIP: &[&str] = &[
    ".git",
    "target",
    "xtask",
    "docker-build-cache",
    "node_modules",
    ".venv",
    ".next",
    ".test-build",
    "__pycache__",
    ".pytest_cache",
];

#[test]
fn stack_builds_offline_and_answers_through_nginx() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let started = Instant::now();
    let repo = support::repo_root();
    let sh = Shell::new()?;
    let work = sh.create_temp_dir()?;
    let project = Utf8Path::from_path(work.path())
        .context("temp dir is not UTF-8")?
        .to_owned();
    copy_project(&repo, &project)?;
    let compose_text = sh.read_file(project.join("docker-compose.yml"))?;
    let override_yaml = offline_override(&project, &compose_text)?;
    sh.write_file(project.join("offline.override.yml"), &override_yaml)?;
    eprintln!("compose override:\n{override_yaml}");
    standins::debian_rootfs()?;
    let deps_ready = started.elapsed();

    let engine = suite.engine("app-stack", EngineOptions::default())?;
    standins::load_standins(&engine)?;
    let sh = engine.shell()?;
    sh.change_dir(&project);
    let compose = [
        "compose",
        "-f",
        "docker-compose.yml",
        "-f",
        "offline.override.yml",
    ];
    let build_started = Instant::now();
    let build = cmd!(sh, "docker {compose...} build --progress plain")
        .quiet()
        .ignore_status()
        .output()?;
    if !build.status.success() {
        bail!(
            "building the stack offline failed ({}):\n{}",
            build.status,
            String::from_utf8_lossy(&build.stderr)
        );
    }
    let built = build_started.elapsed();
    let result = check_stack(&sh, &compose, &compose_text);
    if result.is_err() {
        let _ = cmd!(sh, "docker {compose...} ps -a").run();
        let _ = cmd!(sh, "docker {compose...} logs --no-color --tail 50").run();
    }
    let _ = cmd!(sh, "docker {compose...} down -v --timeout 2")
        .quiet()
        .ignore_stderr()
        .run();
    result?;
    eprintln!(
        "app stack: dependencies and stand-ins ready after {:.0}s, built in {:.0}s, all in {:.0}s",
        deps_ready.as_secs_f64(),
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(engine);
    Ok(())
}

fn check_stack(sh: &Shell, compose: &[&str], compose_text: &str) -> anyhow::Result<()> {
    // `up` returns once the services others depend on are healthy; `--wait` would also
    // wait out the first interval (30 s) of the gateway's own healthcheck.
    cmd!(sh, "docker {compose...} up -d --quiet-pull")
        .quiet()
        .run()
        .context("starting the stack")?;
    let web = published_web_services(compose_text)?;
    ensure!(
        !web.is_empty(),
        "no service of docker-compose.yml publishes a port"
    );
    for (service, port) in web {
        let address = cmd!(sh, "docker {compose...} port {service} {port}").read()?;
        let address = address.trim().replace("0.0.0.0", "127.0.0.1");

        // the gateway may answer 502 for a moment while it finds the backend
        let deadline = Instant::now() + Duration::from_secs(60);
        let health = loop {
            let health = support::http_get(&address, "/api/health")?;
            if split_response(&health).0.contains(" 200 ") || Instant::now() > deadline {
                break health;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let (status, body) = split_response(&health);
        ensure!(
            status.contains(" 200 "),
            "GET /api/health via {service}: {health}"
        );
        let json: serde_json::Value = serde_json::from_str(body)
            .with_context(|| format!("GET /api/health via {service} is not JSON: {body:?}"))?;
        ensure!(
            json == serde_json::json!({ "status": "ok" }),
            "GET /api/health via {service}: {body}"
        );

        let index = support::http_get(&address, "/")?;
        let (status, body) = split_response(&index);
        ensure!(status.contains(" 200 "), "GET / via {service}: {status}");
        ensure!(
            body.contains("<html"),
            "GET / via {service} is not a page: {body:.200}"
        );
        eprintln!("{service} ({address}): /api/health {{\"status\":\"ok\"}}, / served");
    }
    Ok(())
}

/// The compose file's services that publish ports, with their container port.
fn published_web_services(compose_text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let compose: serde_yaml::Value = serde_yaml::from_str(compose_text)?;
    let mut published = Vec::new();
    let Some(services) = compose.get("services").and_then(|s| s.as_mapping()) else {
        bail!("docker-compose.yml has no services")
    };
    for (name, service) in services {
        let name = name.as_str().context("service name")?;
        for port in service
            .get("ports")
            .and_then(|p| p.as_sequence())
            .into_iter()
            .flatten()
        {
            published.push((name.to_owned(), container_port(port)?));
        }
    }
    Ok(published)
}

/// The container side of a `ports:` entry: `"8080:80"`, `"${PORT:-8080}:80/tcp"`, `80`, or
/// the long form `{target: 80}`.
fn container_port(port: &serde_yaml::Value) -> anyhow::Result<String> {
    let port = match port {
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::String(s) => s.rsplit(':').next().unwrap_or(s).to_owned(),
        serde_yaml::Value::Mapping(m) => match m.get("target") {
            Some(serde_yaml::Value::Number(n)) => n.to_string(),
            Some(serde_yaml::Value::String(s)) => s.clone(),
            _ => bail!("a long-form port without target: {port:?}"),
        },
        _ => bail!("unexpected ports entry {port:?}"),
    };
    Ok(port.split('/').next().unwrap_or(&port).to_owned())
}

/// A compose override that gives each built service the dependency caches its Dockerfile
/// takes as build contexts, and publishes every published port on 127.0.0.1 instead.
fn offline_override(project: &Utf8Path, compose_text: &str) -> anyhow::Result<String> {
    let compose: serde_yaml::Value = serde_yaml::from_str(compose_text)?;
    let services = compose
        .get("services")
        .and_then(|s| s.as_mapping())
        .context("no services")?;
    let mut out = String::from("services:\n");
    for (name, service) in services {
        let name = name.as_str().context("service name")?;
        let mut lines = Vec::new();
        if let Some(build) = service.get("build") {
            let context = match build {
                serde_yaml::Value::String(s) => s.as_str(),
                b => b.get("context").and_then(|c| c.as_str()).unwrap_or("."),
            };
            let context = project.join(context);
            let dockerfile_name = build
                .get("dockerfile")
                .and_then(|d| d.as_str())
                .unwrap_or("Dockerfile");
            let dockerfile = std::fs::read_to_string(context.join(dockerfile_name))
                .with_context(|| format!("reading the Dockerfile of {name}"))?;
            let mut contexts = Vec::new();
            if takes_context(&dockerfile, "wheels") {
                let requirements = context.join("requirements.txt");
                let dir = offline_deps::wheelhouse(&requirements, offline_deps::STANDIN_PYTHON)?;
                contexts.push(("wheels", dir));
            }
            if takes_context(&dockerfile, "npm-cache") {
                let dir = offline_deps::npm_cache(&context.join("package-lock.json"))?;
                contexts.push(("npm-cache", dir));
            }
            if !contexts.is_empty() {
                lines.push("    build:\n      additional_contexts:".to_owned());
                for (context, dir) in contexts {
                    lines.push(format!("        {context}: {dir}"));
                }
            }
        }
        if let Some(ports) = service.get("ports").and_then(|p| p.as_sequence()) {
            lines.push("    ports: !override".to_owned());
            for port in ports {
                lines.push(format!("      - \"127.0.0.1::{}\"", container_port(port)?));
            }
        }
        if !lines.is_empty() {
            out.push_str(&format!("  {name}:\n{}\n", lines.join("\n")));
        }
    }
    Ok(out)
}

/// Whether a Dockerfile has a stage `name` that a build context can replace.
fn takes_context(dockerfile: &str, name: &str) -> bool {
    dockerfile.lines().any(|line| {
        let words: Vec<String> = line
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        words.first().map(String::as_str) == Some("from")
            && words.iter().rev().nth(1).map(String::as_str) == Some("as")
            && words.last().map(String::as_str) == Some(name)
    })
}

fn split_response(response: &str) -> (&str, &str) {
    let status = response.lines().next().unwrap_or_default();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body)
}

/// Copies the repository's application files (not its tooling, dependencies or build
/// output) from `repo` to `dest`.
fn copy_project(repo: &Utf8Path, dest: &Utf8Path) -> anyhow::Result<()> {
    for entry in repo.read_dir_utf8()? {
        let entry = entry?;
        copy_tree(entry.path(), &dest.join(entry.file_name()))?;
    }
    Ok(())
}

fn copy_tree(src: &Utf8Path, dest: &Utf8Path) -> anyhow::Result<()> {
    let name = src.file_name().unwrap_or_default();
    if SKIP.contains(&name) {
        return Ok(());
    }
    let meta = src.symlink_metadata()?;
    if meta.is_dir() {
        std::fs::create_dir_all(dest)?;
        for entry in src.read_dir_utf8()? {
            let entry = entry?;
            copy_tree(entry.path(), &dest.join(entry.file_name()))?;
        }
    } else if meta.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dest)?;
    } else {
        std::fs::copy(src, dest).with_context(|| format!("copying {src}"))?;
    }
    Ok(())
}

#[test]
fn finds_container_ports() {
    let compose =
        "services:\n  web:\n    ports: ['${HTTP_PORT:-8080}:80', 443, {target: 81}]\n  db: {}\n";
    let ports = published_web_services(compose).unwrap();
    let expected = [("web", "80"), ("web", "443"), ("web", "81")];
    assert_eq!(ports, expected.map(|(s, p)| (s.to_owned(), p.to_owned())));
}

#[test]
fn finds_replaceable_stages() {
    let dockerfile = "FROM scratch AS wheels\nFROM python:3.9-slim\n";
    assert!(takes_context(dockerfile, "wheels"));
    assert!(!takes_context(dockerfile, "npm-cache"));
}
