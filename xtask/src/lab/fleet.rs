//! A fleet of offline builders served by one registry (issue 19), as the fleet test and
//! the benchmark (figure 9) set it up: builder engines that join a [`SharedNamespace`]
//! (only loopback, no way out) where a [`super::Registry`] listens, with the registry as
//! their Docker Hub mirror; `cache-publish` run inside that namespace; and what a
//! builder's `--progress plain` log says about each step (from the cache or not).

use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context as _};
use camino::Utf8Path;

use super::{Engine, EngineOptions, SharedNamespace, Site};

/// `base` for a builder of the fleet: in `namespace`, with the registry at `address`
/// (`127.0.0.1:PORT`) as its Docker Hub mirror and allowed over plain HTTP.
pub fn builder_options(
    namespace: &SharedNamespace,
    address: &str,
    base: EngineOptions,
) -> EngineOptions {
    EngineOptions {
        join_namespace: Some(namespace.name().to_string()),
        daemon_config: serde_json::json!({
            "registry-mirrors": [format!("http://{address}")],
            "insecure-registries": [address],
        }),
        ..base
    }
}

/// `count` empty builders named `<prefix>-1`, `<prefix>-2`, … (see [`builder_options`]).
pub fn start_builders(
    site: &Site,
    prefix: &str,
    count: usize,
    namespace: &SharedNamespace,
    address: &str,
    base: EngineOptions,
) -> anyhow::Result<Vec<Engine>> {
    let options = builder_options(namespace, address, base);
    (1..=count)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            Engine::start(site, &name, options.clone())
                .with_context(|| format!("starting the builder engine `{name}`"))
        })
        .collect()
}

/// `XTASK cache-publish --registry ADDRESS --insecure --json` inside `namespace` (where
/// the registry listens), arguments to be added.
pub fn publish_command(namespace: &SharedNamespace, xtask: &str, address: &str) -> Command {
    let mut command = namespace.command(xtask);
    command.args([
        "cache-publish",
        "--registry",
        address,
        "--insecure",
        "--json",
    ]);
    command
}

/// What one `cache-publish --json` said, and how long it took.
pub struct Published {
    pub stderr: String,
    /// The `--json` summary: `pushed`, `present`, `blobs_uploaded`, `bytes_uploaded`, …
    pub summary: serde_json::Value,
    pub secs: f64,
}

/// Publishes the bundle `bundle` (or, with `None`, the one beside the compose file in
/// `dir`) into the registry at `address`, run in `dir`; fails with its stderr.
pub fn publish(
    namespace: &SharedNamespace,
    xtask: &str,
    dir: &Utf8Path,
    address: &str,
    bundle: Option<&Utf8Path>,
) -> anyhow::Result<Published> {
    let mut command = publish_command(namespace, xtask, address);
    if let Some(bundle) = bundle {
        command.arg("--bundle").arg(bundle);
    }
    let started = Instant::now();
    let out = command.current_dir(dir).output()?;
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "cache-publish failed:\n{stderr}");
    let summary = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("cache-publish --json printed no JSON:\n{stderr}"))?;
    Ok(Published {
        stderr,
        summary,
        secs,
    })
}

/// How a step of a `--progress plain` log got its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `CACHED`.
    Cached,
    /// From the cache too: BuildKit downloaded the layers of the step's cached result
    /// from the registry (the steps an image is made of), which it logs as the
    /// downloads and `DONE` instead of `CACHED`. Nothing else: no output, no run.
    Downloaded,
    /// Anything else: the step ran.
    Ran,
}

/// The RUN and COPY steps of a `--progress plain` log with their outcome, in order.
pub fn outcomes(log: &str) -> Vec<(String, Outcome)> {
    let mut steps: Vec<(String, String)> = Vec::new();
    let mut lines: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in log.lines() {
        let Some((id, text)) = line.strip_prefix('#').and_then(|r| r.split_once(' ')) else {
            continue;
        };
        if text.starts_with('[') && (text.contains("] RUN ") || text.contains("] COPY ")) {
            if !steps.iter().any(|(i, _)| i == id) {
                steps.push((id.to_string(), text.to_string()));
            }
        } else {
            lines
                .entry(id.to_string())
                .or_default()
                .push(text.trim().to_string());
        }
    }
    let is_download =
        |l: &String| l.starts_with("sha256:") && l.ends_with(" done") && l.contains(" / ");
    steps
        .into_iter()
        .map(|(id, text)| {
            let said = lines.remove(&id).unwrap_or_default();
            let outcome = if said.iter().any(|l| l == "CACHED") {
                Outcome::Cached
            } else if said.iter().any(is_download)
                && said
                    .iter()
                    .all(|l| is_download(l) || l.starts_with("DONE ") || l == "...")
            {
                Outcome::Downloaded
            } else {
                Outcome::Ran
            };
            (text, outcome)
        })
        .collect()
}

/// The steps of the log that ran instead of coming from the cache.
pub fn steps_that_ran(log: &str) -> Vec<String> {
    outcomes(log)
        .into_iter()
        .filter(|(_, o)| *o == Outcome::Ran)
        .map(|(text, _)| text)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_ran_is_told_from_one_whose_cached_layers_were_downloaded() {
        let log = "\
#11 [api 2/3] RUN sleep 1 && echo api-ready | tee /api.txt
#11 CACHED
#15 [api 3/3] COPY hello.txt /hello.txt
#15 ...
#15 sha256:0982552f28ca501dcb8b0c662563a7dab74ad4707cca463115f3444cfc977453 108B / 108B 0.0s done
#15 DONE 0.0s
#17 [web final 3/3] RUN cat /out.txt > /copy.txt && echo copied
#17 0.105 copied
#17 DONE 0.1s
#18 [web builder 1/2] COPY x /x
#18 DONE 0.0s
";
        let found: Vec<Outcome> = outcomes(log).into_iter().map(|(_, o)| o).collect();
        assert_eq!(
            found,
            [
                Outcome::Cached,
                Outcome::Downloaded,
                Outcome::Ran,
                Outcome::Ran
            ]
        );
        assert_eq!(
            steps_that_ran(log),
            [
                "[web final 3/3] RUN cat /out.txt > /copy.txt && echo copied",
                "[web builder 1/2] COPY x /x"
            ]
        );
    }
}
