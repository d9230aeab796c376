//! `cache-rehearse` on real engines: a fixture project is exported on a private "online"
//! engine; the rehearsal (its own throwaway engine, in a network namespace with only
//! loopback) passes on the fresh bundle with every step from the cache, fails on a bundle
//! made stale on purpose (a changed package list whose new entry needs the network),
//! naming the service, the step, its Dockerfile line and the reason; and leaves nothing
//! behind when it is interrupted in the middle of a build (SIGINT), nor after a killed
//! run (SIGKILL) once the next one has run.

use anyhow::{ensure, Context};
use camino::Utf8Path;
use xshell::cmd;

use crate::bundle_e2e::xtask;
use crate::support::run::{self, Scratch};
use crate::support::{self, fault, standins, EngineOptions};

/// Where the rehearsal engines live (xtask's `rehearse::REHEARSAL_SITE`).
const SITE_DIR: &str = "/tmp/xtask-rehearse";
const SITE_PREFIX: &str = "xtr";

const COMPOSE: &str = "\
name: rehearsal
services:
  api:
    build: ./api
    image: rehearsal-api:latest
  web:
    build:
      context: ./web
      target: final
    image: rehearsal-web:latest
";

/// `packages.txt` stands for a requirements file: an entry that is not already in the
/// image has to be fetched, which offline fails (busybox `nc`: "bad address").
const API_DOCKERFILE: &str = "\
FROM busybox:latest
RUN sleep 1 && echo api-ready > /api.txt
COPY packages.txt /packages.txt
RUN while read -r pkg; do [ -z \"$pkg\" ] || nc -w 3 \"$pkg.example.org\" 80 </dev/null || exit 1; done < /packages.txt
CMD [\"cat\", \"/api.txt\"]
";

const WEB_DOCKERFILE: &str = "\
FROM busybox:latest AS builder
RUN sleep 1 && echo web-built > /out.txt
FROM busybox:latest AS final
COPY --from=builder /out.txt /out.txt
CMD [\"cat\", \"/out.txt\"]
";

fn write_fixture(dir: &Utf8Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("api"))?;
    std::fs::create_dir_all(dir.join("web"))?;
    std::fs::write(dir.join("compose.yaml"), COMPOSE)?;
    std::fs::write(dir.join("api/Dockerfile"), API_DOCKERFILE)?;
    std::fs::write(dir.join("api/packages.txt"), "")?;
    std::fs::write(dir.join("web/Dockerfile"), WEB_DOCKERFILE)?;
    Ok(())
}

/// Exports the fixture on a private online engine (with `args` added); the project's
/// folder and what the export said.
fn exported_fixture(
    suite: &support::DockerSuite,
    tmp: &Scratch,
    args: &[&str],
) -> anyhow::Result<(camino::Utf8PathBuf, String)> {
    let online = suite.engine("online-rehearse", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let src = tmp.path().join("release");
    write_fixture(&src)?;
    let args: Vec<&str> = ["cache-export"].iter().chain(args).copied().collect();
    let said = xtask(&online.shell()?, &src, &args).context("export of the fixture")?;
    Ok((src, said))
}

/// What of the rehearsal run `pid` is left: engine directories, processes, mounts,
/// network namespaces and bridges.
fn leftovers(pid: u32) -> Vec<String> {
    let id = format!("{pid}-");
    let dir = format!("{SITE_DIR}/{id}");
    let mut left = Vec::new();
    for entry in std::fs::read_dir(SITE_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&id) {
            left.push(format!("directory {SITE_DIR}/{name}"));
        }
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&dir) {
            left.push(format!(
                "process {}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines().filter(|l| l.contains(&dir)) {
        left.push(format!("mount {line}"));
    }
    let named = format!("{SITE_PREFIX}{id}");
    for folder in ["/run/netns", "/sys/class/net"] {
        for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&named) {
                left.push(format!("{folder}/{name}"));
            }
        }
    }
    left
}

#[test]
fn a_fresh_bundle_rehearses_cached_and_a_stale_one_fails_naming_step_and_reason(
) -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let tmp = Scratch::new("rh");
    // The export rehearses right away when asked to.
    let (src, exported) = exported_fixture(&suite, &tmp, &["--rehearse"])?;
    ensure!(
        exported.contains("Rehearsing the offline rebuild of rehearsal")
            && exported.contains("Built api: 3 steps from the cache, 0 ran")
            && exported.contains("Finished rehearsal"),
        "cache-export --rehearse did not rehearse:\n{exported}"
    );
    let compose_before = std::fs::read(src.join("compose.yaml"))?;

    let started = std::time::Instant::now();
    let fresh = run::xtask(&src, &["cache-rehearse", "--strict", "--json"]);
    eprintln!(
        "rehearsal of the fresh bundle: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        fresh.code == 0,
        "the fresh bundle failed its rehearsal:\n{}",
        fresh.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&fresh.stdout)?;
    ensure!(report["ok"] == true, "{report:#}");
    // The engine showed it is offline before it imported anything: its pull failed on the
    // name lookup or the connection, in the engine's words.
    let proof = report["offline_proof"].as_str().unwrap_or_default();
    ensure!(
        proof.contains("hello-world") && fresh.stderr.contains("Offline: docker pull failed"),
        "no failed pull shown before the rehearsal: {proof:?}\n{}",
        fresh.stderr
    );
    let services = report["services"].as_array().context("services")?;
    let summary: Vec<(String, u64, u64)> = services
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["cached"].as_u64().unwrap_or(99),
                s["ran"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    // api: RUN sleep, COPY, RUN while; web: RUN sleep (builder), COPY --from (final).
    ensure!(
        summary == vec![("api".into(), 3, 0), ("web".into(), 2, 0)],
        "{summary:?}\n{}",
        fresh.stderr
    );
    ensure!(
        fresh.stderr.contains("every step from the cache"),
        "{}",
        fresh.stderr
    );
    ensure!(
        std::fs::read(src.join("compose.yaml"))? == compose_before,
        "the rehearsal changed the user's compose file"
    );
    let pid = pid_of_run(&fresh.stderr).context("the run did not say its engine")?;
    let left = leftovers(pid);
    ensure!(left.is_empty(), "a finished rehearsal left {left:#?}");

    // Stale on purpose: a new package after the export. Its COPY runs (the file changed),
    // then the step that fetches it fails with no network.
    std::fs::write(src.join("api/packages.txt"), "extra\n")?;
    let stale = run::xtask(&src, &["cache-rehearse", "--json"]);
    ensure!(
        stale.code == 1,
        "the stale bundle passed ({}):\n{}",
        stale.code,
        stale.stderr
    );
    eprintln!("the stale bundle's rehearsal said:\n{}", stale.stderr);
    let report: serde_json::Value = serde_json::from_str(&stale.stdout)?;
    let api = &report["services"][0];
    ensure!(api["name"] == "api" && api["built"] == false, "{report:#}");
    let first = &api["first_ran"];
    ensure!(
        first["step"] == "[api 3/4] COPY packages.txt /packages.txt",
        "{first:#}"
    );
    ensure!(first["dockerfile_line"] == "api/Dockerfile:3", "{first:#}");
    ensure!(
        first["reason"]
            == serde_json::json!({"kind": "changed_context_file", "detail": ["packages.txt"]}),
        "{first:#}"
    );
    let failure = &api["failure"];
    ensure!(
        failure["step"]
            .as_str()
            .is_some_and(|s| s.starts_with("[api 4/4] RUN while read")),
        "{failure:#}"
    );
    ensure!(
        failure["dockerfile_line"] == "api/Dockerfile:4",
        "{failure:#}"
    );
    ensure!(failure["reason"]["kind"] == "network_needed", "{failure:#}");
    ensure!(
        failure["reason"]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("nc: ")),
        "{failure:#}"
    );
    for said in [
        "Failed api",
        "first step that ran: [api 3/4] COPY packages.txt /packages.txt",
        "at api/Dockerfile:3",
        "likely reason: changed context file: packages.txt",
        "likely reason: network needed: ",
        "error: the rehearsal failed: api cannot be built offline",
    ] {
        ensure!(
            stale.stderr.contains(said),
            "no {said:?} in:\n{}",
            stale.stderr
        );
    }
    // web was built all the same, from the cache.
    ensure!(report["services"][1]["built"] == true, "{report:#}");
    Ok(())
}

#[test]
fn an_interrupted_rehearsal_leaves_nothing_behind() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let tmp = Scratch::new("rh");
    let (src, _) = exported_fixture(&suite, &tmp, &[])?;
    // A step the bundle has not seen, that runs long enough to be interrupted in.
    let dockerfile = src.join("api/Dockerfile");
    std::fs::write(
        &dockerfile,
        format!("{API_DOCKERFILE}RUN echo rehearsal-marker && sleep 120\n"),
    )?;
    let bin = run::bin();
    let sh = xshell::Shell::new()?;
    let marker = "Running [api 5/5] RUN echo rehearsal-marker";
    for signal in ["INT", "KILL"] {
        let command = std::process::Command::from(
            cmd!(sh, "{bin} -f {src}/compose.yaml cache-rehearse").quiet(),
        );
        let started = std::time::Instant::now();
        let interrupted = fault::interrupt_at(command, marker, signal, None)
            .with_context(|| format!("SIG{signal} at {marker:?}"))?;
        eprintln!(
            "SIG{signal}: ended in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let pid = pid_of_run(&interrupted.stderr).context("the run did not say its engine")?;
        let left = leftovers(pid);
        match signal {
            "INT" => {
                ensure!(
                    left.is_empty(),
                    "after SIGINT: {left:#?}\n{}",
                    interrupted.stderr
                );
                ensure!(
                    interrupted
                        .stderr
                        .contains("its engine, network namespace and data were removed"),
                    "{}",
                    interrupted.stderr
                );
            }
            _ => {
                // SIGKILL cannot be caught: the engine is left, and the next run removes it.
                ensure!(
                    !left.is_empty(),
                    "a SIGKILLed run left nothing: the check sees nothing"
                );
                std::fs::write(&dockerfile, API_DOCKERFILE)?;
                let next = run::xtask(&src, &["cache-rehearse"]);
                ensure!(
                    next.code == 0,
                    "the next rehearsal failed:\n{}",
                    next.stderr
                );
                ensure!(
                    next.stderr.contains("removing stale rehearsal engine"),
                    "{}",
                    next.stderr
                );
                let left = leftovers(pid);
                ensure!(left.is_empty(), "after the next run: {left:#?}");
                ensure!(leftovers(std::process::id()).is_empty());
            }
        }
    }
    Ok(())
}

/// The pid of a rehearsal run, from the engine line it printed (`… at
/// unix:///tmp/xtask-rehearse/<pid>-<n>/docker.sock`).
fn pid_of_run(stderr: &str) -> Option<u32> {
    let at = stderr.find(&format!("{SITE_DIR}/"))? + SITE_DIR.len() + 1;
    stderr[at..].split('-').next()?.parse().ok()
}

/// Without root, the rehearsal says so and what to run instead, before it touches anything.
#[test]
fn without_root_the_rehearsal_says_what_to_run() -> anyhow::Result<()> {
    let tmp = Scratch::new("rh");
    let bin = run::bin();
    let sh = xshell::Shell::new()?;
    let bundle = tmp.path().join("docker-build-cache");
    let out = cmd!(
        sh,
        "setpriv --reuid=65534 --regid=65534 --clear-groups {bin} cache-rehearse --bundle {bundle}"
    )
    .ignore_status()
    .quiet()
    .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{:?}: {stderr}", out.status);
    ensure!(
        stderr.starts_with("error: cache-rehearse needs root: it starts a throwaway Docker engine")
            && stderr.contains("sudo env \"PATH=$PATH\" cargo xtask cache-rehearse"),
        "{stderr}"
    );
    Ok(())
}
