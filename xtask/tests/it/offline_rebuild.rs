//! The application itself, end to end with no network: the repository's backend, frontend
//! and gateway (stand-in base images under the real names) are exported on an "online"
//! private engine, which builds all three images. On an "offline" one, which has no way
//! out, the bundle is imported straight from the parts of `cache-pack --split` (into a
//! docker-build-cache/ that holds a README) and the compose file patched; then, the reason people
//! rebuild offline, one line of backend and one of frontend code change: `docker compose
//! build` succeeds, the dependency layers come from the cache and the code layers rebuild;
//! the stack starts from those cache-built images and answers `/api/health` through nginx,
//! and a real browser (Chromium, frontend/e2e/chat.e2e.mjs) registers, logs in and chats
//! with a fake LLM on the same engine; `--no-cache` also succeeds (the wheelhouse and the
//! npm cache alone are enough). A requirement changed to a
//! version the wheelhouse lacks is named by `cache-status` (exit 1) and by the build's
//! error.

use anyhow::{ensure, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::cmd;

use crate::bundle_e2e::{compose_build, uncached_steps, xtask};
use crate::support::{self, repo_root, standins, EngineOptions};

/// Copies the application (not node_modules, virtualenvs or build output) to `to`.
fn copy_application(to: &Utf8Path) -> anyhow::Result<()> {
    fn walk(from: &Utf8Path, to: &Utf8Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in from.read_dir_utf8()? {
            let entry = entry?;
            let name = entry.file_name();
            if matches!(
                name,
                "node_modules"
                    | ".venv"
                    | ".next"
                    | "out"
                    | ".test-build"
                    | "__pycache__"
                    | ".pytest_cache"
                    | "docker-build-cache"
                    | "data"
            ) || name.ends_with(".db")
            {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(entry.path(), &to.join(name))?;
            } else if kind.is_file() {
                std::fs::copy(entry.path(), to.join(name))?;
            }
        }
        Ok(())
    }
    let root = repo_root();
    for dir in ["backend", "frontend", "nginx"] {
        walk(&root.join(dir), &to.join(dir))?;
    }
    std::fs::copy(
        root.join("docker-compose.yml"),
        to.join("docker-compose.yml"),
    )?;
    Ok(())
}

fn append_line(path: &Utf8Path, line: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(path)?;
    text.push_str(line);
    text.push('\n');
    std::fs::write(path, text)?;
    Ok(())
}

/// The step of a plain log whose text contains `needle`, and whether it came from cache.
fn step_cached(log: &str, needle: &str) -> Option<bool> {
    let uncached = uncached_steps(log);
    let seen = log
        .lines()
        .any(|l| l.starts_with('#') && l.contains(needle));
    seen.then(|| !uncached.iter().any(|s| s.contains(needle)))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The fake OpenAI-compatible server of the browser test, as a service of the stack (on
/// the node stand-in), and the backend pointed at it.
const E2E_OVERRIDE: &str = "\
services:
  fake-llm:
    image: node:18-alpine
    command: [\"node\", \"/e2e/fake_llm.mjs\", \"--host\", \"0.0.0.0\", \"--port\", \"9000\"]
    volumes:
      - ./frontend/e2e:/e2e:ro
  backend:
    environment:
      LLM_API_BASE: http://fake-llm:9000/v1
";

/// Starts the stack in `server` from the images already built, checks `/api/health` and
/// the page through nginx, runs the browser test (frontend/e2e/chat.e2e.mjs) against it,
/// and stops it. Screenshots go to target/test-artifacts/offline-app/.
fn run_stack_and_browse(sh: &xshell::Shell, server: &Utf8Path, netns: &str) -> anyhow::Result<()> {
    let root = repo_root();
    let frontend = root.join("frontend");
    ensure!(
        frontend.join("node_modules/playwright-core").is_dir(),
        "the browser test needs frontend/node_modules (playwright-core): run `npm ci` in \
         {frontend} first (scripts/test.sh does)"
    );
    std::fs::write(server.join("compose.e2e.yml"), E2E_OVERRIDE)?;
    let files = ["-f", "docker-compose.yml", "-f", "compose.e2e.yml"];
    let port = free_port()?.to_string();
    let shots = root.join("target/test-artifacts/offline-app");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots)?;
    let up = cmd!(
        sh,
        "docker compose {files...} up -d --wait --wait-timeout 120"
    )
    .env("HTTP_PORT", &port)
    .ignore_status()
    .output()?;
    // The stack's ports are on the loopback of the engine's network namespace: the checks
    // and the browser run in there (nsenter), as a user on the offline server would.
    let address = format!("127.0.0.1:{port}");
    let net = format!("--net=/run/netns/{netns}");
    let health = get_in(sh, &net, &format!("http://{address}/api/health"));
    let page = get_in(sh, &net, &format!("http://{address}/"));
    let browser = if up.status.success() {
        let base = format!("http://{address}");
        let _cd = sh.push_dir(&frontend);
        Some(
            cmd!(
                sh,
                "nsenter {net} node e2e/chat.e2e.mjs --base-url {base} --screenshot-dir {shots}"
            )
            .ignore_status()
            .output()?,
        )
    } else {
        None
    };
    let logs = cmd!(sh, "docker compose {files...} logs --no-color")
        .ignore_status()
        .read()
        .unwrap_or_default();
    cmd!(sh, "docker compose {files...} down --volumes")
        .env("HTTP_PORT", &port)
        .ignore_status()
        .quiet()
        .run()?;
    ensure!(
        up.status.success(),
        "compose up failed: {}\n{logs}",
        String::from_utf8_lossy(&up.stderr)
    );
    let health = health?;
    ensure!(
        health.contains("200 OK") && health.contains(r#""status":"ok""#),
        "{health}\n{logs}"
    );
    ensure!(
        page?.contains("200 OK"),
        "the frontend's page was not served\n{logs}"
    );
    let browser = browser.context("no browser run")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&browser.stdout),
        String::from_utf8_lossy(&browser.stderr)
    );
    ensure!(
        browser.status.success(),
        "the browser test failed on the cache-built stack:\n{said}\n{logs}"
    );
    ensure!(
        shots.join("desktop-chat.png").is_file(),
        "no screenshot in {shots}:\n{said}"
    );
    eprintln!("browser test on the cache-built stack passed; screenshots in {shots}");
    Ok(())
}

/// A GET of `url` from inside the network namespace `net` (`--net=PATH`), retried for a
/// while the stack starts: `HTTP/1.1 STATUS REASON`, then the body.
fn get_in(sh: &xshell::Shell, net: &str, url: &str) -> anyhow::Result<String> {
    const SCRIPT: &str = "import sys, urllib.request\n\
        r = urllib.request.urlopen(sys.argv[1], timeout=10)\n\
        print(f'HTTP/1.1 {r.status} {r.reason}')\n\
        print(r.read().decode())\n";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = cmd!(sh, "nsenter {net} python3 -c {SCRIPT} {url}")
            .ignore_status()
            .quiet()
            .output()?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "GET {url} in {net}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn a_changed_application_rebuilds_offline_from_the_bundle() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let online = suite.engine("online-app", EngineOptions::default())?;
    standins::load_standins(&online).context("loading the stand-in base images")?;
    // The offline server: an engine in its own network namespace, which shows the gap
    // before anything else (a pull fails; nothing connects out).
    let offline = suite.engine(
        "offline-app",
        EngineOptions {
            network_namespace: true,
            ..EngineOptions::default()
        },
    )?;
    standins::load_busybox(&offline)?;
    let proof = offline.prove_offline(Some(standins::BUSYBOX))?;
    eprintln!("offline engine: {proof:?}");
    let netns = offline
        .network_namespace()
        .context("the offline engine has no network namespace")?
        .to_string();
    let online_sh = online.shell()?;
    let tmp = online_sh.create_temp_dir()?;
    let root = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 temp dir {}", p.display()))?;
    let release = root.join("release");
    copy_application(&release).context("copying the application")?;
    xtask(&online_sh, &release, &["cache-export"]).context("export of the application")?;
    let manifest = std::fs::read_to_string(release.join("docker-build-cache/manifest.yaml"))?;
    for part in [
        "pip-cache/backend",
        "npm-cache/frontend",
        "npm_image: llm-chat-frontend-npm-cache:",
        "build_cache_tag: backend",
        "build_cache_tag: frontend",
    ] {
        ensure!(
            manifest.contains(part),
            "the manifest has no {part}:\n{manifest}"
        );
    }

    rehearse_the_application(&release)?;

    // Carried as a pack in parts (`cache-pack --split`, as for a release page or a FAT32
    // disk), imported straight from the parts into the server's docker-build-cache/, which
    // holds only the guide's README, as in this repository.
    let usb = root.join("usb");
    xtask(
        &online_sh,
        &release,
        &[
            "cache-pack",
            "--split",
            "100M",
            "--output",
            &format!("{usb}/"),
        ],
    )?;
    let parts = std::fs::read_dir(&usb)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains(".tar.part-"))
        })
        .count();
    ensure!(parts > 1, "cache-pack --split 100M wrote {parts} part(s)");
    let server = root.join("server");
    cmd!(online_sh, "cp -a {release} {server}").quiet().run()?;
    std::fs::remove_dir_all(server.join("docker-build-cache"))?;
    std::fs::create_dir(server.join("docker-build-cache"))?;
    std::fs::write(server.join("docker-build-cache/README.md"), "the guide\n")?;
    let sh = offline.shell()?;
    let index = usb.join("docker-build-cache.pack-index");
    let import = xtask(
        &sh,
        &server,
        &["cache-import", "--no-host-caches", "--pack", index.as_str()],
    )?;
    // The three base images share no layer: they load as separate `docker load`s at once
    // (one a core), and the rebuild below is cached all the same.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        ensure!(
            import.contains("as 2 archives at once"),
            "the base images were not loaded at once:\n{import}"
        );
    }
    ensure!(
        std::fs::read_to_string(server.join("docker-build-cache/README.md"))? == "the guide\n",
        "the import from the pack changed the README beside the bundle"
    );
    xtask(&sh, &server, &["patch-compose"])?;
    let compose_file = server.join("docker-compose.yml");
    let npm_image = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("npm_image: "))
        .context("no npm_image line")?
        .to_string();
    let as_image = format!("npm-cache: 'docker-image://{npm_image}'");
    let patched = std::fs::read_to_string(&compose_file)?;
    ensure!(patched.contains(&as_image), "{as_image} not in\n{patched}");

    // Without the image (as after a bare `docker load`), patch-compose hands over the
    // folder and says why; import-build-cache.sh makes the same image with sh tools.
    cmd!(sh, "docker image rm {npm_image}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let fallback = xtask(&sh, &server, &["patch-compose"])?;
    ensure!(
        fallback.contains(&format!("no {npm_image}")),
        "patch-compose did not say the image is missing:\n{fallback}"
    );
    let patched = std::fs::read_to_string(&compose_file)?;
    let as_folder = format!("npm-cache: '{server}/docker-build-cache/npm-cache/frontend'");
    ensure!(
        patched.contains(&as_folder),
        "{as_folder} not in\n{patched}"
    );
    let script = server.join("docker-build-cache/import-build-cache.sh");
    cmd!(sh, "sh {script}")
        .quiet()
        .ignore_stdout()
        .run()
        .context("import-build-cache.sh")?;
    let format = "{{json .RootFS.Layers}}";
    let layers = cmd!(sh, "docker image inspect --format {format} {npm_image}")
        .read()
        .with_context(|| format!("import-build-cache.sh did not make {npm_image}"))?;
    let tag = npm_image.rsplit(':').next().unwrap_or_default();
    ensure!(
        layers.contains(&format!("sha256:{tag}")),
        "the script's image has other layers: {layers}"
    );
    xtask(&sh, &server, &["patch-compose"])?;
    let patched = std::fs::read_to_string(&compose_file)?;
    ensure!(patched.contains(&as_image), "{as_image} not in\n{patched}");
    let status = xtask(&sh, &server, &["cache-status"])?;
    ensure!(status.contains("fresh"), "{status}");

    append_line(
        &server.join("backend/app/main.py"),
        "# changed on the offline server",
    )?;
    append_line(
        &server.join("frontend/app/page.tsx"),
        "// changed on the offline server",
    )?;
    let _cd = sh.push_dir(&server);
    let (built, log) = compose_build(&sh, &["build"])?;
    ensure!(built, "the offline rebuild failed:\n{log}");
    ensure!(
        step_cached(&log, "pip install") == Some(true),
        "pip install was not cached:\n{log}"
    );
    ensure!(
        step_cached(&log, "npm ci") == Some(true),
        "npm ci was not cached:\n{log}"
    );
    // The npm cache went in as the image: its folder was not sent to BuildKit.
    ensure!(
        !log.contains("transferring npm-cache"),
        "the npm cache folder was sent to the build:\n{log}"
    );
    ensure!(
        step_cached(&log, "COPY app") == Some(false),
        "the backend code did not rebuild:\n{log}"
    );
    ensure!(
        step_cached(&log, "npm run build") == Some(false),
        "the frontend code did not rebuild:\n{log}"
    );

    // The images this build made from the bundle's cache (zstd layers, recompressed) are
    // the ones that run: the stack answers through nginx, and a real browser registers,
    // logs in and chats with a fake LLM that runs on the same offline engine.
    run_stack_and_browse(&sh, &server, &netns)?;

    let (built, log) = compose_build(&sh, &["build", "--no-cache"])?;
    ensure!(built, "the offline --no-cache build failed:\n{log}");

    // A pin the wheelhouse lacks: cache-status names it before the build; the build fails
    // saying what is missing.
    let requirements = server.join("backend/requirements.txt");
    let text = std::fs::read_to_string(&requirements)?;
    std::fs::write(
        &requirements,
        text.replace("httpx==0.28.1", "httpx==0.27.2"),
    )?;
    let status = crate::bundle_e2e::xtask(&sh, &server, &["cache-status"]);
    let status = format!(
        "{:#}",
        status.err().context("cache-status passed a missing pin")?
    );
    ensure!(status.contains("httpx==0.27.2"), "{status}");
    let (built, log) = compose_build(&sh, &["build", "backend"])?;
    ensure!(!built, "the build passed with a pin the wheelhouse lacks");
    ensure!(
        log.contains("httpx==0.27.2"),
        "the build's error does not name the pin:\n{log}"
    );

    // The same stale pin, rehearsed on the export machine before carrying: it fails, naming
    // the service, the step and the reason.
    std::fs::copy(&requirements, release.join("backend/requirements.txt"))?;
    let stale = support::run::xtask(&release, &["cache-rehearse", "--json"]);
    ensure!(
        stale.code == 1,
        "the stale bundle passed its rehearsal:\n{}",
        stale.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&stale.stdout)?;
    let backend = report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "backend"))
        .context("no backend in the report")?;
    let first = &backend["first_ran"];
    ensure!(
        first["step"]
            .as_str()
            .is_some_and(|s| s.ends_with("COPY requirements.txt .")),
        "{backend:#}"
    );
    ensure!(
        first["dockerfile_line"] == "backend/Dockerfile:11",
        "{backend:#}"
    );
    ensure!(
        first["reason"]
            == serde_json::json!({"kind": "changed_context_file", "detail": ["requirements.txt"]}),
        "{backend:#}"
    );
    let failure = &backend["failure"];
    ensure!(
        failure["dockerfile_line"] == "backend/Dockerfile:12",
        "{backend:#}"
    );
    ensure!(failure["reason"]["kind"] == "network_needed", "{backend:#}");
    ensure!(
        failure["reason"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("httpx==0.27.2")),
        "{backend:#}"
    );
    Ok(())
}

/// `cache-rehearse --strict --up` of the application's fresh bundle: every service builds
/// on a throwaway engine with no network, every step from the cache, and the stack comes up
/// with its health checks passing.
fn rehearse_the_application(release: &Utf8Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let run = support::run::xtask(release, &["cache-rehearse", "--strict", "--up", "--json"]);
    eprintln!(
        "rehearsal of the application's bundle: {:.1}s\n{}",
        started.elapsed().as_secs_f64(),
        run.stderr
    );
    ensure!(
        run.code == 0,
        "the application's bundle failed its rehearsal:\n{}",
        run.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&run.stdout)?;
    let mut built: Vec<(String, u64)> = Vec::new();
    for service in report["services"].as_array().context("services")? {
        ensure!(service["ran"] == 0, "{service:#}");
        built.push((
            service["name"].as_str().unwrap_or_default().to_string(),
            service["cached"].as_u64().unwrap_or_default(),
        ));
    }
    let names: Vec<&str> = built.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(names == ["backend", "frontend"], "{built:?}");
    ensure!(built.iter().all(|(_, cached)| *cached >= 4), "{built:?}");
    ensure!(report["up"]["healthy"] == true, "{:#}", report["up"]);
    Ok(())
}
