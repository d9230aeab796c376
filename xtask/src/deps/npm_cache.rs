//! `npm-cache/` holds every tarball of `package-lock.json`, so `npm ci --offline` works.
//!
//! `npm ci --offline --cache DIR` fails with ENOTCACHED for a tarball that is not in the
//! cache (npm/cli#7781), and *silently skips* an optional one: a cache filled by installing
//! on a glibc host lacks `@next/swc-linux-x64-musl`, and `next build` in an Alpine image
//! then tries to download SWC (next.js#30742). So the cache is filled from the lockfile
//! itself with `npm cache add name@version…` (batched; npm fetches in parallel), every
//! platform's optional packages included, and verified by `npm ci --offline` in a scratch
//! copy for the host and for each target os/cpu/libc (npm 11's `--os --cpu --libc`),
//! checking that each platform package was really installed.
//!
//! The lockfile may have no `resolved` URLs (`omit-lockfile-registry-resolved`); pacote
//! then finds tarballs by `integrity`, which is also how `missing` checks a cache: cacache
//! stores content at `_cacache/content-v2/<algo>/<hex[..2]>/<hex[2..4]>/<hex[4..]>`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use xshell::{cmd, Shell};

/// One tarball the lockfile needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tarball {
    /// The registry name (for an alias `"foo": "npm:bar@1"`, `bar`).
    pub name: String,
    pub version: String,
    /// `sha512-<base64>` (possibly several, space-separated), if the lockfile has it.
    pub integrity: Option<String>,
    pub source: TarballSource,
    pub optional: bool,
    pub dev: bool,
    pub os: Vec<String>,
    pub cpu: Vec<String>,
    pub libc: Vec<String>,
    /// Where it is installed (lockfile keys, `node_modules/…`).
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TarballSource {
    /// From the registry by name and version (`resolved` absent or a registry URL).
    Registry,
    /// A tarball URL that is not the registry's `…/-/name-version.tgz`.
    Url(String),
    /// `git+…`: npm caches the clone's packed tarball.
    Git(String),
}

impl Tarball {
    /// What `npm cache add` takes.
    pub fn spec(&self) -> String {
        match &self.source {
            TarballSource::Registry => format!("{}@{}", self.name, self.version),
            TarballSource::Url(url) | TarballSource::Git(url) => url.clone(),
        }
    }

    /// npm's platform check (`os`/`cpu`/`libc`, with `!x` negations) for `platform`.
    pub fn installs_on(&self, platform: &NodePlatform) -> bool {
        allowed(&self.os, &platform.os)
            && allowed(&self.cpu, &platform.cpu)
            && (self.libc.is_empty()
                || platform
                    .libc
                    .as_deref()
                    .is_some_and(|libc| allowed(&self.libc, libc)))
    }

    fn is_platform_specific(&self) -> bool {
        !(self.os.is_empty() && self.cpu.is_empty() && self.libc.is_empty())
    }
}

fn allowed(list: &[String], value: &str) -> bool {
    if list.iter().any(|v| v.strip_prefix('!') == Some(value)) {
        return false;
    }
    let mut positives = list.iter().filter(|v| !v.starts_with('!')).peekable();
    positives.peek().is_none() || positives.any(|v| v == value)
}

/// What npm installs for: `--os linux --cpu x64 --libc musl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePlatform {
    /// `process.platform`: linux, darwin, win32.
    pub os: String,
    /// `process.arch`: x64, arm64.
    pub cpu: String,
    /// glibc or musl (linux only).
    pub libc: Option<String>,
}

impl NodePlatform {
    /// From the engine's os/arch (`linux`, `amd64`) and the image's libc (`musl`/`glibc`).
    pub fn from_docker(os: &str, arch: &str, libc: &str) -> NodePlatform {
        let cpu = match arch {
            "amd64" | "x86_64" => "x64",
            "arm64" | "aarch64" => "arm64",
            "386" | "i386" => "ia32",
            other => other,
        };
        let libc = match libc {
            "gnu" | "glibc" => Some("glibc".to_string()),
            "musl" => Some("musl".to_string()),
            _ => None,
        };
        NodePlatform {
            os: os.to_string(),
            cpu: cpu.to_string(),
            libc,
        }
    }

    /// The machine this runs on.
    pub fn host() -> NodePlatform {
        let libc = if cfg!(target_env = "musl") {
            "musl"
        } else {
            "glibc"
        };
        let os = match std::env::consts::OS {
            "windows" => "win32",
            "macos" => "darwin",
            other => other,
        };
        let libc = if os == "linux" { libc } else { "" };
        NodePlatform::from_docker(os, std::env::consts::ARCH, libc)
    }

    pub fn npm_args(&self) -> Vec<String> {
        let mut args = vec![
            "--os".into(),
            self.os.clone(),
            "--cpu".into(),
            self.cpu.clone(),
        ];
        if let Some(libc) = &self.libc {
            args.extend(["--libc".into(), libc.clone()]);
        }
        args
    }
}

impl std::fmt::Display for NodePlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.os, self.cpu)?;
        if let Some(libc) = &self.libc {
            write!(f, "-{libc}")?;
        }
        Ok(())
    }
}

/// Which of the lockfile's tarballs go in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// All of them, every os and cpu (for Next.js, about three times the size of one os/cpu).
    Every,
    /// Those without os/cpu limits and those for one of these os+cpu pairs, *whatever the
    /// libc*: glibc and musl both.
    OsCpu(Vec<NodePlatform>),
    /// What `npm ci` installs on one of `on` (libc included) and on none of `except`: the
    /// image's own packages, or the host's that the image's cache lacks.
    Platforms {
        on: Vec<NodePlatform>,
        except: Vec<NodePlatform>,
    },
}

impl Selection {
    pub fn includes(&self, tarball: &Tarball) -> bool {
        match self {
            Selection::Every => true,
            Selection::OsCpu(platforms) => platforms.iter().any(|p| {
                let any_libc = NodePlatform {
                    libc: None,
                    ..p.clone()
                };
                allowed(&tarball.os, &any_libc.os) && allowed(&tarball.cpu, &any_libc.cpu)
            }),
            Selection::Platforms { on, except } => {
                on.iter().any(|p| tarball.installs_on(p))
                    && !except.iter().any(|p| tarball.installs_on(p))
            }
        }
    }
}

/// The tarballs `package-lock.json` (lockfileVersion 2 or 3) needs, one per name@version.
/// Skipped: the root, workspace folders, `link: true`, bundled (`inBundle`) and `file:`.
pub fn parse_lockfile(text: &str) -> anyhow::Result<Vec<Tarball>> {
    let lock: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    let version = lock["lockfileVersion"].as_u64().unwrap_or(0);
    let Some(packages) = lock["packages"].as_object() else {
        bail!(
            "lockfileVersion {version} has no `packages` map; rewrite the lockfile with npm 7 or \
             newer (`npm install --package-lock-only`)"
        );
    };
    let mut by_spec: BTreeMap<(String, String), Tarball> = BTreeMap::new();
    for (path, entry) in packages {
        let Some(last) = path
            .rsplit("node_modules/")
            .next()
            .filter(|_| path.contains("node_modules/"))
        else {
            continue; // "" (the root) or a workspace folder
        };
        let flag = |key: &str| entry[key].as_bool().unwrap_or(false);
        if flag("link") || flag("inBundle") {
            continue;
        }
        let Some(version) = entry["version"].as_str() else {
            continue;
        };
        let name = entry["name"].as_str().unwrap_or(last).to_string();
        let source = match entry["resolved"].as_str() {
            None => TarballSource::Registry,
            Some(url) if url.starts_with("file:") => continue,
            Some(url) if url.starts_with("git") => TarballSource::Git(url.to_string()),
            Some(url) if url.contains("/-/") && url.ends_with(".tgz") => TarballSource::Registry,
            Some(url) => TarballSource::Url(url.to_string()),
        };
        let strings = |key: &str| -> Vec<String> {
            match &entry[key] {
                serde_json::Value::String(s) => vec![s.clone()],
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let tarball = by_spec
            .entry((name.clone(), version.to_string()))
            .or_insert_with(|| Tarball {
                name,
                version: version.to_string(),
                integrity: entry["integrity"].as_str().map(String::from),
                source,
                optional: flag("optional"),
                dev: flag("dev"),
                os: strings("os"),
                cpu: strings("cpu"),
                libc: strings("libc"),
                paths: Vec::new(),
            });
        tarball.paths.push(path.clone());
    }
    Ok(by_spec.into_values().collect())
}

/// Where cacache keeps content with this integrity: `content-v2/sha512/ab/cd/ef…`,
/// relative to `_cacache`. One path per hash of a multi-hash integrity string.
pub fn content_paths(integrity: &str) -> Vec<Utf8PathBuf> {
    integrity
        .split_whitespace()
        .filter_map(|hash| {
            let (algo, digest) = hash.split_once('-')?;
            let digest = digest.split('?').next()?; // options after `?`
            let hex: String = base64_decode(digest)?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if hex.len() < 5 {
                return None;
            }
            Some(Utf8PathBuf::from(format!(
                "content-v2/{algo}/{}/{}/{}",
                &hex[..2],
                &hex[2..4],
                &hex[4..]
            )))
        })
        .collect()
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// Which of `tarballs` the npm cache `cache` (an `npm --cache` dir, holding `_cacache/`)
/// lacks, checked by integrity; those without an integrity are in `unchecked`.
pub fn missing<'t>(cache: &Utf8Path, tarballs: &'t [Tarball]) -> CacheCheck<'t> {
    let cacache = cache.join("_cacache");
    let mut check = CacheCheck::default();
    for tarball in tarballs {
        match &tarball.integrity {
            None => check.unchecked.push(tarball),
            Some(integrity) => {
                if !content_paths(integrity)
                    .iter()
                    .any(|p| cacache.join(p).is_file())
                {
                    check.missing.push(tarball);
                }
            }
        }
    }
    check
}

#[derive(Debug, Default)]
pub struct CacheCheck<'t> {
    pub missing: Vec<&'t Tarball>,
    /// No `integrity` in the lockfile (git or remote-URL tarballs): presence unknown.
    pub unchecked: Vec<&'t Tarball>,
}

/// What `fill` did; the bundle's manifest records it.
#[derive(Debug, Clone, Serialize)]
pub struct NpmCacheReport {
    pub lockfile: Utf8PathBuf,
    pub selection: Selection,
    /// name@version of every tarball in the cache.
    pub tarballs: Vec<String>,
    /// The lockfile's tarballs left out by the selection (other os/cpu).
    pub left_out: Vec<String>,
    /// Bytes of the tarballs' content.
    pub tarball_bytes: u64,
    pub seconds: f64,
}

/// npm has been seen to hang (in epoll, no I/O) after its last fetch: every npm call is
/// bounded so an export fails with a message instead of waiting forever.
const NPM_TIME_LIMIT: &str = "600";

fn timed_out(
    status: &std::process::ExitStatus,
    what: &str,
    logs: &std::path::Path,
) -> anyhow::Result<()> {
    // `timeout` exits 124 when the limit ran out, 137 when it had to kill.
    if matches!(status.code(), Some(124) | Some(137)) {
        bail!(
            "`{what}` did not finish within {NPM_TIME_LIMIT} s and was stopped (npm's log: \
             {}); run the export again",
            logs.display()
        );
    }
    Ok(())
}

/// How many specs one `npm cache add` gets (npm fetches them in parallel).
const BATCH: usize = 64;

/// Fills the npm cache `cache` with the lockfile's tarballs (`selection`: all of them, or
/// those of some os/cpu pairs, every libc), then checks each is there by integrity.
pub fn fill(
    sh: &Shell,
    lockfile: &Utf8Path,
    cache: &Utf8Path,
    selection: &Selection,
) -> anyhow::Result<NpmCacheReport> {
    let started = std::time::Instant::now();
    let lockfile = absolute(sh, lockfile)?;
    let cache = absolute(sh, cache)?;
    let text = std::fs::read_to_string(&lockfile).with_context(|| format!("reading {lockfile}"))?;
    let all = parse_lockfile(&text).with_context(|| format!("reading {lockfile}"))?;
    let (tarballs, left_out): (Vec<Tarball>, Vec<Tarball>) =
        all.into_iter().partition(|t| selection.includes(t));
    // `_cacache/` even when there is nothing to add: a lockfile with no packages gives an
    // empty cache, which the steps after this one still take for one.
    std::fs::create_dir_all(cache.join("_cacache"))
        .with_context(|| format!("creating {cache}/_cacache"))?;
    // The project's .npmrc (registry, auth) applies: npm runs in the lockfile's folder.
    let _dir = sh.push_dir(lockfile.parent().unwrap_or(&lockfile));
    let logs = sh.create_temp_dir()?;
    let logs = logs.path();
    crate::say!(
        "npm cache: adding {} tarballs of {lockfile} to {cache}{}",
        tarballs.len(),
        if left_out.is_empty() {
            String::new()
        } else {
            format!(" ({} of other platforms left out)", left_out.len())
        }
    );
    // Content is addressed by integrity: what is already there needs no download.
    let present = missing(&cache, &tarballs);
    let specs: Vec<String> = present
        .missing
        .iter()
        .chain(&present.unchecked)
        .map(|t| t.spec())
        .collect();
    if specs.len() < tarballs.len() {
        crate::say!(
            "npm cache: {} already in {cache}",
            tarballs.len() - specs.len()
        );
    }
    for (i, batch) in specs.chunks(BATCH).enumerate() {
        if specs.len() > BATCH {
            crate::say!("npm cache: batch {}/{}", i + 1, specs.len().div_ceil(BATCH));
        }
        let output = cmd!(
            sh,
            "timeout --kill-after=10s {NPM_TIME_LIMIT} npm cache add {batch...} --cache {cache}
                --logs-dir {logs} --loglevel=error --update-notifier=false --no-audit --no-fund"
        )
        .quiet()
        .ignore_status()
        .output()
        .context("running npm; install Node.js and npm on this machine")?;
        timed_out(&output.status, "npm cache add", logs)?;
        if !output.status.success() {
            bail!(
                "`npm cache add` for {lockfile} failed:\n{}\n(is the registry reachable? \
                 a package removed from it must be updated in the lockfile)",
                npm_errors(&String::from_utf8_lossy(&output.stderr))
            );
        }
    }
    let check = missing(&cache, &tarballs);
    if !check.missing.is_empty() {
        bail!(
            "after `npm cache add`, {cache} still lacks {} (its integrity in {lockfile} does not \
             match what the registry serves: regenerate the lockfile)",
            spec_list(&check.missing)
        );
    }
    let cacache = cache.join("_cacache");
    let tarball_bytes = tarballs
        .iter()
        .filter_map(|t| t.integrity.as_deref())
        .filter_map(|i| {
            content_paths(i)
                .into_iter()
                .find_map(|p| cacache.join(p).metadata().ok())
        })
        .map(|m| m.len())
        .sum();
    let name_version = |t: &Tarball| format!("{}@{}", t.name, t.version);
    let report = NpmCacheReport {
        lockfile: lockfile.clone(),
        selection: selection.clone(),
        tarballs: tarballs.iter().map(name_version).collect(),
        left_out: left_out.iter().map(name_version).collect(),
        tarball_bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    crate::say!(
        "npm cache: {} tarballs, {:.1} MB in {:.1} s",
        report.tarballs.len(),
        tarball_bytes as f64 / 1e6,
        report.seconds
    );
    Ok(report)
}

/// `npm ci --offline --ignore-scripts` with `cache` in a scratch copy of `project_dir`'s
/// package.json and lockfile, for each of `platforms` (npm's own detection for the one that
/// is [`NodePlatform::host`]); then checks every
/// platform package for that platform was installed (npm skips a missing optional one).
pub fn verify(
    sh: &Shell,
    project_dir: &Utf8Path,
    cache: &Utf8Path,
    platforms: &[NodePlatform],
) -> anyhow::Result<()> {
    let project_dir = absolute(sh, project_dir)?;
    let cache = absolute(sh, cache)?;
    let lockfile = project_dir.join("package-lock.json");
    let text = std::fs::read_to_string(&lockfile).with_context(|| format!("reading {lockfile}"))?;
    let tarballs = parse_lockfile(&text).with_context(|| format!("reading {lockfile}"))?;
    let tmp = sh.create_temp_dir()?;
    let scratch = Utf8Path::from_path(tmp.path()).context("temporary directory is not UTF-8")?;
    for file in ["package.json", "package-lock.json", ".npmrc"] {
        let from = project_dir.join(file);
        if from.exists() || file != ".npmrc" {
            std::fs::copy(&from, scratch.join(file)).with_context(|| format!("copying {from}"))?;
        }
    }
    let logs = scratch.join(".logs");
    let _dir = sh.push_dir(scratch);
    let host = NodePlatform::host();
    let mut runs: Vec<(String, Option<&NodePlatform>)> = Vec::new();
    let mut seen: Vec<&NodePlatform> = Vec::new();
    for platform in platforms {
        if !seen.contains(&platform) {
            seen.push(platform);
            // The host's own run lets npm detect the platform, as a user's `npm ci` does.
            if *platform == host {
                runs.push(("host".to_string(), None));
            } else {
                runs.push(("target".to_string(), Some(platform)));
            }
        }
    }
    for (label, platform) in runs {
        let wanted = platform.unwrap_or(&host);
        let needed: Vec<Tarball> = tarballs
            .iter()
            .filter(|t| t.installs_on(wanted))
            .cloned()
            .collect();
        let check = missing(&cache, &needed);
        if !check.missing.is_empty() {
            bail!(
                "the npm cache {cache} lacks {} for {label} ({wanted}), needed by {lockfile}; \
                 run `cargo xtask cache-export` again where the registry is reachable",
                spec_list(&check.missing)
            );
        }
        let started = std::time::Instant::now();
        let node_modules = scratch.join("node_modules");
        if node_modules.exists() {
            std::fs::remove_dir_all(&node_modules)
                .with_context(|| format!("removing {node_modules}"))?;
        }
        let platform_args = platform.map(NodePlatform::npm_args).unwrap_or_default();
        let output = cmd!(
            sh,
            "timeout --kill-after=10s {NPM_TIME_LIMIT} npm ci --offline --ignore-scripts --no-audit
                --no-fund --update-notifier=false --include=dev --include=optional
                --cache {cache} --logs-dir {logs} {platform_args...}"
        )
        .quiet()
        .ignore_status()
        .output()
        .context("running npm; install Node.js and npm on this machine")?;
        timed_out(&output.status, "npm ci --offline", logs.as_std_path())?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let not_cached = not_cached_packages(&stderr);
        if !output.status.success() {
            let what = if not_cached.is_empty() {
                npm_errors(&stderr)
            } else {
                format!("{} not in the cache", not_cached.join(", "))
            };
            bail!(
                "`npm ci --offline` for {label} ({wanted}) with the cache {cache} failed: {what}; \
                 run `cargo xtask cache-export` again where the registry is reachable"
            );
        }
        let skipped: Vec<String> = needed
            .iter()
            .filter(|t| t.is_platform_specific())
            .flat_map(|t| t.paths.iter().map(move |p| (t, p)))
            .filter(|(_, path)| !scratch.join(path).join("package.json").is_file())
            .map(|(t, _)| format!("{}@{}", t.name, t.version))
            .collect();
        if !skipped.is_empty() || !not_cached.is_empty() {
            let mut names: BTreeSet<String> = skipped.into_iter().collect();
            names.extend(not_cached);
            bail!(
                "`npm ci --offline` for {label} ({wanted}) skipped {} (optional, not in the \
                 cache {cache}): the build in the image would lack it; fill the cache again \
                 with every platform of {lockfile}",
                names.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        crate::say!(
            "npm cache: `npm ci --offline` for {label} ({wanted}) passed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Packages npm could not get from the cache: `request to <registry>/<name>/-/<file>.tgz
/// failed` (ENOTCACHED) and `tarball data for <name@version> (…) seems to be corrupted`.
fn not_cached_packages(stderr: &str) -> Vec<String> {
    let mut found = BTreeSet::new();
    for line in stderr.lines() {
        if let Some(rest) = line.split("tarball data for ").nth(1) {
            if let Some(spec) = rest.split_whitespace().next() {
                found.insert(spec.to_string());
            }
        }
        if let Some(rest) = line.split("request to ").nth(1) {
            if let Some(url) = rest.split_whitespace().next() {
                found.insert(package_of_tarball_url(url).unwrap_or_else(|| url.to_string()));
            }
        }
    }
    found.into_iter().collect()
}

/// `https://registry.npmjs.org/@next/swc-linux-x64-musl/-/swc-linux-x64-musl-15.5.29.tgz`
/// → `@next/swc-linux-x64-musl@15.5.29`.
fn package_of_tarball_url(url: &str) -> Option<String> {
    let (before, file) = url.split_once("/-/")?;
    let path = before.split_once("://").map_or(before, |(_, rest)| rest);
    let segments: Vec<&str> = path.split('/').collect();
    let name = match segments.as_slice() {
        [.., scope, name] if scope.starts_with('@') => format!("{scope}/{name}"),
        [.., name] => name.replace("%2f", "/").replace("%2F", "/"),
        [] => return None,
    };
    let base = name.rsplit('/').next()?;
    let version = file
        .strip_suffix(".tgz")?
        .strip_prefix(base)?
        .strip_prefix('-')?;
    Some(format!("{name}@{version}"))
}

/// npm's `npm error` lines, without the pointer to its log.
fn npm_errors(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("npm error") || l.starts_with("npm ERR!"))
        .filter(|l| !l.contains("A complete log of this run"))
        .collect();
    if lines.is_empty() {
        stderr.trim().to_string()
    } else {
        lines.join("\n")
    }
}

fn spec_list(tarballs: &[&Tarball]) -> String {
    let list: Vec<String> = tarballs
        .iter()
        .map(|t| format!("{}@{}", t.name, t.version))
        .collect();
    list.join(", ")
}

/// What `merge_into` added.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct MergeReport {
    pub content_files: u64,
    pub content_bytes: u64,
    pub index_lines: u64,
}

/// Merges the npm cache `cache` into another, e.g. `~/.npm`, deleting and overwriting
/// nothing: content files are content-addressed (present = identical) and index buckets are
/// append-only (the lines `dest` lacks are appended).
pub fn merge_into(cache: &Utf8Path, dest: &Utf8Path) -> anyhow::Result<MergeReport> {
    let from = cache.join("_cacache");
    let to = dest.join("_cacache");
    if !from.is_dir() {
        bail!("{cache} is not an npm cache (no _cacache/ in it)");
    }
    let mut report = MergeReport::default();
    for file in files_under(&from.join("content-v2"))? {
        let target = to.join(file.strip_prefix(&from)?);
        if target.exists() {
            continue;
        }
        create_parent(&target)?;
        let partial = Utf8PathBuf::from(format!("{target}.xtask-partial"));
        let bytes = std::fs::copy(&file, &partial)
            .with_context(|| format!("copying {file} to {partial}"))?;
        std::fs::rename(&partial, &target).with_context(|| format!("renaming {partial}"))?;
        report.content_files += 1;
        report.content_bytes += bytes;
    }
    for bucket in files_under(&from.join("index-v5"))? {
        let target = to.join(bucket.strip_prefix(&from)?);
        let ours = std::fs::read_to_string(&bucket).with_context(|| format!("reading {bucket}"))?;
        let theirs = match std::fs::read_to_string(&target) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {target}")),
        };
        let present: BTreeSet<&str> = theirs.lines().collect();
        let mut new_lines = String::new();
        for line in ours
            .lines()
            .filter(|l| !l.is_empty() && !present.contains(l))
        {
            new_lines.push('\n');
            new_lines.push_str(line);
            report.index_lines += 1;
        }
        if new_lines.is_empty() {
            continue;
        }
        create_parent(&target)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&target)
            .and_then(|mut f| f.write_all(new_lines.as_bytes()))
            .with_context(|| format!("appending to {target}"))?;
    }
    Ok(report)
}

/// `sha512-<base64>` of `data`, as npm writes integrity.
fn sha512_integrity(data: &[u8]) -> String {
    use sha2::{Digest as _, Sha512};
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digest = Sha512::digest(data);
    let mut out = String::from("sha512-");
    for chunk in digest.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Cuts the packuments (registry metadata documents) in `cache` down to the versions of
/// `tarballs`: a lockfile without `resolved` URLs makes `npm ci --offline` read the
/// packument of every package, and npm stores it whole (tens of MB for `next`: every
/// version ever published and its readme). Each packument keeps its other fields, `time`
/// for the kept versions, and loses `readme`; its index entries get the new integrity and
/// size. A packument whose name is not in `tarballs` is left as it is.
pub fn trim_packuments(cache: &Utf8Path, tarballs: &[Tarball]) -> anyhow::Result<TrimReport> {
    let cacache = cache.join("_cacache");
    let mut trim = Trim {
        cacache: cacache.clone(),
        versions: BTreeMap::new(),
        rewritten: BTreeMap::new(),
        stale: BTreeSet::new(),
        report: TrimReport::default(),
    };
    for t in tarballs {
        trim.versions.entry(&t.name).or_default().insert(&t.version);
    }
    // Content files some index line still names, once every bucket is rewritten.
    let mut named: BTreeSet<Utf8PathBuf> = BTreeSet::new();
    for bucket in files_under(&cacache.join("index-v5"))? {
        let text = std::fs::read_to_string(&bucket).with_context(|| format!("reading {bucket}"))?;
        let mut out = String::new();
        let mut changed = false;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut entry = line
                .split_once('\t')
                .and_then(|(_, json)| serde_json::from_str::<serde_json::Value>(json).ok());
            let trimmed = match &mut entry {
                Some(entry) => trim.entry(entry)?,
                None => false,
            };
            if let Some(integrity) = entry.as_ref().and_then(|e| e["integrity"].as_str()) {
                named.extend(
                    content_paths(integrity)
                        .into_iter()
                        .map(|p| cacache.join(p)),
                );
            }
            match (trimmed, &entry) {
                (true, Some(entry)) => {
                    out.push_str(&index_line(&serde_json::to_string(entry)?));
                    changed = true;
                }
                _ => {
                    out.push('\n');
                    out.push_str(line);
                }
            }
        }
        if changed {
            replace_file(&bucket, out.as_bytes())?;
        }
    }
    for file in trim.stale.difference(&named) {
        std::fs::remove_file(file).with_context(|| format!("removing {file}"))?;
    }
    Ok(trim.report)
}

/// The state of [`trim_packuments`].
struct Trim<'t> {
    cacache: Utf8PathBuf,
    /// name -> the versions the lockfile installs.
    versions: BTreeMap<&'t str, BTreeSet<&'t str>>,
    /// old integrity -> (new integrity, new size)
    rewritten: BTreeMap<String, (String, u64)>,
    /// The documents replaced, removed at the end unless a line still names them.
    stale: BTreeSet<Utf8PathBuf>,
    report: TrimReport,
}

impl Trim<'_> {
    /// Points `entry` at its packument cut to the lockfile's versions (written the first
    /// time that packument is seen); `false` if it is not a packument of the lockfile's or
    /// nothing was cut.
    fn entry(&mut self, entry: &mut serde_json::Value) -> anyhow::Result<bool> {
        const PREFIX: &str = "make-fetch-happen:request-cache:";
        let Some(url) = entry["key"].as_str().and_then(|k| k.strip_prefix(PREFIX)) else {
            return Ok(false);
        };
        let Some(integrity) = entry["integrity"].as_str().map(str::to_owned) else {
            return Ok(false);
        };
        // A tarball (…/-/name-1.0.0.tgz) is not a packument.
        let path = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = path.split_once('/').map_or("", |(_, p)| p);
        let path = path.split(['?', '#']).next().unwrap_or(path);
        if path.contains("/-/") {
            return Ok(false);
        }
        let decoded = path
            .replace("%2f", "/")
            .replace("%2F", "/")
            .replace("%40", "@");
        // The exact name, else the one the path ends with (a registry under a path).
        let found = self.versions.get(decoded.as_str()).or_else(|| {
            self.versions
                .iter()
                .find(|(name, _)| decoded.ends_with(&format!("/{name}")))
                .map(|(_, v)| v)
        });
        let Some(wanted) = found.cloned() else {
            return Ok(false);
        };
        if !self.rewritten.contains_key(&integrity) {
            let Some(cut) = self.cut(&integrity, &wanted)? else {
                return Ok(false);
            };
            self.rewritten.insert(integrity.clone(), cut);
        }
        let (new, size) = &self.rewritten[&integrity];
        if *new == integrity {
            return Ok(false);
        }
        entry["integrity"] = new.clone().into();
        entry["size"] = (*size).into();
        Ok(true)
    }

    /// Writes the packument `integrity` names, cut to `wanted`; its new integrity and size
    /// (the same integrity if nothing was cut), `None` if it is not in the cache.
    fn cut(
        &mut self,
        integrity: &str,
        wanted: &BTreeSet<&str>,
    ) -> anyhow::Result<Option<(String, u64)>> {
        let Some(file) = content_paths(integrity)
            .into_iter()
            .map(|p| self.cacache.join(p))
            .find(|p| p.is_file())
        else {
            return Ok(None);
        };
        // Parsed only one level deep, each member kept as its JSON text: a large packument
        // as a `Value` tree takes several times its size in memory.
        type Members = BTreeMap<String, Box<serde_json::value::RawValue>>;
        let text = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
        let Ok(mut doc) = serde_json::from_slice::<Members>(&text) else {
            return Ok(None);
        };
        drop(text);
        let mut cut_member = |name: &str, keep: &dyn Fn(&str) -> bool| -> anyhow::Result<()> {
            let Some(raw) = doc.get(name) else {
                return Ok(());
            };
            let Ok(mut members) = serde_json::from_str::<Members>(raw.get()) else {
                return Ok(());
            };
            members.retain(|key, _| keep(key));
            let cut = serde_json::value::to_raw_value(&members)?;
            doc.insert(name.to_string(), cut);
            Ok(())
        };
        cut_member("versions", &|v| wanted.contains(v))?;
        cut_member("time", &|v| {
            wanted.contains(v) || v == "created" || v == "modified"
        })?;
        doc.remove("readme");
        let data = serde_json::to_vec(&doc)?;
        let new = sha512_integrity(&data);
        let target = content_paths(&new)
            .into_iter()
            .next()
            .map(|p| self.cacache.join(p))
            .context("integrity without a content path")?;
        if target != file {
            create_parent(&target)?;
            replace_file(&target, &data)?;
            self.report.bytes_before += file.metadata()?.len();
            self.report.bytes_after += data.len() as u64;
            self.report.packuments += 1;
            self.stale.insert(file);
        }
        Ok(Some((new, data.len() as u64)))
    }
}

/// What [`trim_packuments`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TrimReport {
    pub packuments: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// [`trim_packuments`] for the tarballs of `lockfile`.
pub fn trim_for_lockfile(cache: &Utf8Path, lockfile: &Utf8Path) -> anyhow::Result<TrimReport> {
    let text = std::fs::read_to_string(lockfile).with_context(|| format!("reading {lockfile}"))?;
    let tarballs = parse_lockfile(&text).with_context(|| format!("reading {lockfile}"))?;
    let report = trim_packuments(cache, &tarballs)?;
    if report.packuments > 0 {
        crate::say!(
            "npm cache: {} packuments cut to the lockfile's versions: {:.1} MB -> {:.1} MB",
            report.packuments,
            report.bytes_before as f64 / 1e6,
            report.bytes_after as f64 / 1e6
        );
    }
    Ok(report)
}

/// The libc of the first of `images` that runs `node` ("glibc" or "musl"), as npm detects
/// it (`process.report`'s glibc version, absent on musl); `None` if none of them has node.
pub fn probe_libc(docker: &crate::docker::Docker, images: &[String]) -> Option<String> {
    const SCRIPT: &str =
        "console.log(process.report.getReport().header.glibcVersionRuntime ? 'glibc' : 'musl')";
    images.iter().find_map(|image| {
        let out = docker.run_offline(image, &["node", "-e", SCRIPT]).ok()?;
        let libc = out.lines().last()?.trim();
        matches!(libc, "glibc" | "musl").then(|| libc.to_string())
    })
}

/// Fixed time written into every index entry by [`normalize`]: 2020-01-01T00:00:00Z.
const NORMAL_TIME_MS: u64 = 1_577_836_800_000;
const NORMAL_HTTP_DATE: &str = "Wed, 01 Jan 2020 00:00:00 GMT";

/// Makes an npm cache a function of the tarballs in it, so that filling it twice gives
/// the same bytes (and the same build context checksum, so BuildKit's layer cache hits).
///
/// npm writes the fetch time into each index entry (`time`, `metadata.time`, the response's
/// `date` header) and leaves `_cacache/tmp/`, log and notifier files behind. Here every
/// bucket keeps one line per key (the last, as cacache reads it), with those times fixed
/// and the line's SHA-1 recomputed (cacache skips a line whose SHA-1 does not match);
/// scratch files and empty folders go, and modes become 0644/0755 whatever the umask.
/// Offline installs never look at the times; online, npm sees old entries and revalidates.
pub fn normalize(cache: &Utf8Path) -> anyhow::Result<NormalizeReport> {
    use sha1::{Digest as _, Sha1};
    use std::os::unix::fs::PermissionsExt as _;
    let cacache = cache.join("_cacache");
    if !cacache.is_dir() {
        bail!("{cache} is not an npm cache (no _cacache/ in it)");
    }
    let mut report = NormalizeReport::default();
    for scratch in [
        cacache.join("tmp"),
        cache.join("_logs"),
        cache.join("_update-notifier-last-checked"),
    ] {
        match scratch.symlink_metadata() {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&scratch),
            Ok(_) => std::fs::remove_file(&scratch),
            Err(_) => Ok(()),
        }
        .with_context(|| format!("removing {scratch}"))?;
    }
    for bucket in files_under(&cacache.join("index-v5"))? {
        let text = std::fs::read_to_string(&bucket).with_context(|| format!("reading {bucket}"))?;
        // Every line is kept, in order: one key can have several live entries (a packument
        // fetched with different Accept headers), and make-fetch-happen tells them apart
        // (and reads null-integrity entries) itself. Only lines that become identical once
        // their times are fixed are dropped, keeping the last, as cacache's compaction does.
        let mut lines: Vec<String> = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let Some((hash, json)) = line.split_once('\t') else {
                continue;
            };
            if format!("{:x}", Sha1::digest(json.as_bytes())) != hash {
                continue; // cacache ignores it too (a torn write)
            }
            let Ok(mut entry) = serde_json::from_str::<serde_json::Value>(json) else {
                continue;
            };
            if entry.get("time").is_some() {
                entry["time"] = NORMAL_TIME_MS.into();
            }
            if let Some(meta) = entry.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                if meta.contains_key("time") {
                    meta.insert("time".into(), NORMAL_TIME_MS.into());
                }
                if let Some(headers) = meta.get_mut("resHeaders").and_then(|h| h.as_object_mut()) {
                    if headers.contains_key("date") {
                        headers.insert("date".into(), NORMAL_HTTP_DATE.into());
                    }
                }
            }
            let json = serde_json::to_string(&entry)?;
            lines.retain(|l| *l != json);
            lines.push(json);
        }
        let out: String = lines.iter().map(|json| index_line(json)).collect();
        report.entries += lines.len();
        if out.is_empty() {
            std::fs::remove_file(&bucket).with_context(|| format!("removing {bucket}"))?;
        } else if out != text {
            replace_file(&bucket, out.as_bytes())?;
            report.rewritten += 1;
        }
    }
    // Modes, and empty folders (deepest first, so a parent emptied by its child goes too).
    let mut dirs = vec![cache.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        let dir = dirs[i].clone();
        i += 1;
        for entry in dir
            .read_dir_utf8()
            .with_context(|| format!("reading {dir}"))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            let mode = if kind.is_dir() {
                dirs.push(entry.path().to_owned());
                0o755
            } else if kind.is_file() {
                0o644
            } else {
                continue;
            };
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", entry.path()))?;
        }
    }
    // `_cacache/` itself stays: a lockfile with no packages gives an empty cache, and
    // an empty cache is still one (npm ci --offline reads it; merge_into takes it).
    for dir in dirs.iter().skip(1).rev().filter(|d| **d != cacache) {
        if dir.read_dir_utf8().is_ok_and(|mut d| d.next().is_none()) {
            std::fs::remove_dir(dir).with_context(|| format!("removing {dir}"))?;
        }
    }
    Ok(report)
}

/// What [`normalize`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NormalizeReport {
    /// Index entries kept.
    pub entries: usize,
    /// Bucket files rewritten.
    pub rewritten: usize,
}

/// One index line as cacache appends it: `\n<sha1 of the JSON>\t<JSON>`.
fn index_line(json: &str) -> String {
    use sha1::{Digest as _, Sha1};
    format!("\n{:x}\t{json}", Sha1::digest(json.as_bytes()))
}

/// Writes `bytes` to `path` through `<path>.xtask-partial` and a rename.
fn replace_file(path: &Utf8Path, bytes: &[u8]) -> anyhow::Result<()> {
    let partial = Utf8PathBuf::from(format!("{path}.xtask-partial"));
    std::fs::write(&partial, bytes).with_context(|| format!("writing {partial}"))?;
    std::fs::rename(&partial, path).with_context(|| format!("renaming {partial}"))
}

fn create_parent(path: &Utf8Path) -> anyhow::Result<()> {
    let parent = path.parent().context("path without parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))
}

fn files_under(dir: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match dir.read_dir_utf8() {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {dir}")),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.into_path());
            } else if kind.is_file() {
                files.push(entry.into_path());
            }
        }
    }
    files.sort();
    Ok(files)
}

fn absolute(sh: &Shell, path: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = Utf8PathBuf::from_path_buf(sh.current_dir())
        .map_err(|p| anyhow::anyhow!("current directory {} is not UTF-8", p.display()))?;
    Ok(cwd.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK_V3: &str = r#"{
      "name": "app", "version": "0.1.0", "lockfileVersion": 3, "requires": true,
      "packages": {
        "": { "name": "app", "version": "0.1.0", "dependencies": { "next": "15.5.29" } },
        "node_modules/next": { "version": "15.5.29", "integrity": "sha512-AAAA" },
        "node_modules/@next/swc-linux-x64-gnu": { "version": "15.5.29", "integrity": "sha512-BBBB",
          "cpu": ["x64"], "license": "MIT", "optional": true, "os": ["linux"], "libc": ["glibc"] },
        "node_modules/@next/swc-linux-x64-musl": { "version": "15.5.29", "integrity": "sha512-CCCC",
          "cpu": ["x64"], "optional": true, "os": ["linux"], "libc": ["musl"] },
        "node_modules/@next/swc-darwin-arm64": { "version": "15.5.29", "cpu": ["arm64"],
          "optional": true, "os": ["darwin"] },
        "node_modules/fsevents": { "version": "2.3.3", "optional": true, "os": ["darwin"], "dev": true },
        "node_modules/not-windows": { "version": "1.0.0", "os": ["!win32"] },
        "node_modules/my-react": { "name": "react", "version": "19.3.1", "resolved": "https://registry.npmjs.org/react/-/react-19.3.1.tgz" },
        "node_modules/react": { "version": "19.3.1" },
        "node_modules/a/node_modules/react": { "version": "18.3.1" },
        "node_modules/local-lib": { "resolved": "packages/local-lib", "link": true },
        "packages/local-lib": { "name": "local-lib", "version": "1.0.0" },
        "node_modules/npm-bundled-parent": { "version": "1.0.0" },
        "node_modules/npm-bundled-parent/node_modules/inner": { "version": "2.0.0", "inBundle": true },
        "node_modules/from-file": { "version": "1.0.0", "resolved": "file:../from-file-1.0.0.tgz" },
        "node_modules/from-git": { "version": "1.0.0", "resolved": "git+ssh://git@github.com/x/y.git#abc" },
        "node_modules/from-url": { "version": "1.0.0", "resolved": "https://example.com/from-url.tgz" }
      }
    }"#;

    fn check_specs(lock: &str, expected: &[&str]) {
        let tarballs = parse_lockfile(lock).unwrap();
        let specs: Vec<String> = tarballs.iter().map(Tarball::spec).collect();
        assert_eq!(specs, expected);
    }

    #[test]
    fn lockfile_v3() {
        check_specs(
            LOCK_V3,
            &[
                "@next/swc-darwin-arm64@15.5.29",
                "@next/swc-linux-x64-gnu@15.5.29",
                "@next/swc-linux-x64-musl@15.5.29",
                "git+ssh://git@github.com/x/y.git#abc",
                "https://example.com/from-url.tgz",
                "fsevents@2.3.3",
                "next@15.5.29",
                "not-windows@1.0.0",
                "npm-bundled-parent@1.0.0",
                "react@18.3.1",
                "react@19.3.1",
            ],
        );
        let tarballs = parse_lockfile(LOCK_V3).unwrap();
        let react = tarballs
            .iter()
            .find(|t| t.spec() == "react@19.3.1")
            .unwrap();
        assert_eq!(react.paths, ["node_modules/my-react", "node_modules/react"]);
        let musl = tarballs
            .iter()
            .find(|t| t.name == "@next/swc-linux-x64-musl")
            .unwrap();
        assert_eq!(
            (musl.optional, musl.libc.as_slice()),
            (true, &["musl".to_string()][..])
        );
        assert_eq!(musl.integrity.as_deref(), Some("sha512-CCCC"));
    }

    #[test]
    fn lockfile_v2_and_v1() {
        check_specs(
            r#"{"lockfileVersion": 2, "packages": {"": {}, "node_modules/left-pad": {"version": "1.3.0",
                "resolved": "https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz"}},
                "dependencies": {"left-pad": {"version": "1.3.0"}}}"#,
            &["left-pad@1.3.0"],
        );
        let err = parse_lockfile(r#"{"lockfileVersion": 1, "dependencies": {}}"#).unwrap_err();
        assert!(
            err.to_string().contains("npm install --package-lock-only"),
            "{err}"
        );
    }

    fn check_installs(platform: NodePlatform, expected: &[&str]) {
        let tarballs = parse_lockfile(LOCK_V3).unwrap();
        let names: Vec<&str> = tarballs
            .iter()
            .filter(|t| t.is_platform_specific() && t.installs_on(&platform))
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, expected, "{platform}");
    }

    #[test]
    fn platforms() {
        check_installs(
            NodePlatform::from_docker("linux", "amd64", "musl"),
            &["@next/swc-linux-x64-musl", "not-windows"],
        );
        check_installs(
            NodePlatform::from_docker("linux", "x86_64", "gnu"),
            &["@next/swc-linux-x64-gnu", "not-windows"],
        );
        check_installs(
            NodePlatform::from_docker("darwin", "arm64", ""),
            &["@next/swc-darwin-arm64", "fsevents", "not-windows"],
        );
        check_installs(NodePlatform::from_docker("win32", "amd64", ""), &[]);
        assert_eq!(
            NodePlatform::from_docker("linux", "arm64", "musl")
                .npm_args()
                .join(" "),
            "--os linux --cpu arm64 --libc musl"
        );
    }

    #[test]
    fn selection() {
        let tarballs = parse_lockfile(LOCK_V3).unwrap();
        let linux_x64 = Selection::OsCpu(vec![NodePlatform::from_docker("linux", "amd64", "")]);
        let left_out: Vec<&str> = tarballs
            .iter()
            .filter(|t| !linux_x64.includes(t))
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(left_out, ["@next/swc-darwin-arm64", "fsevents"]);
        assert!(tarballs.iter().all(|t| Selection::Every.includes(t)));
        // An Alpine image's cache: musl's packages, not glibc's; the host's extras (glibc):
        // exactly what the image's lacks.
        let musl = NodePlatform::from_docker("linux", "amd64", "musl");
        let glibc = NodePlatform::from_docker("linux", "amd64", "glibc");
        let image = Selection::Platforms {
            on: vec![musl.clone()],
            except: Vec::new(),
        };
        let host_extra = Selection::Platforms {
            on: vec![glibc],
            except: vec![musl],
        };
        let names = |sel: &Selection| -> Vec<String> {
            tarballs
                .iter()
                .filter(|t| sel.includes(t) && t.name.starts_with("@next/swc"))
                .map(|t| t.name.clone())
                .collect()
        };
        assert_eq!(names(&image), ["@next/swc-linux-x64-musl"]);
        assert_eq!(names(&host_extra), ["@next/swc-linux-x64-gnu"]);
        let react = tarballs.iter().find(|t| t.name == "react").unwrap();
        assert!(image.includes(react) && !host_extra.includes(react));
    }

    fn check_path(integrity: &str, expected: &[&str]) {
        let paths = content_paths(integrity);
        assert_eq!(
            paths,
            expected.iter().map(Utf8PathBuf::from).collect::<Vec<_>>()
        );
    }

    #[test]
    fn integrity_to_content_path() {
        // Checked against a real cache: @next/swc-linux-x64-musl@15.5.29.
        check_path(
            "sha512-I0QJ1Be9vtdq5FABhNcSbkELllA91WnhG+m4BjJHCn1bXAIL8AuDABIKIJ7Bz84T/sIkZP6TvOEWJcKckrX3yQ==",
            &["content-v2/sha512/23/44/09d417bdbed76ae4500184d7126e410b96503dd569e11be9b80632470a7d5b5c020bf00b8300120a209ec1cfce13fec22464fe93bce11625c29c92b5f7c9"],
        );
        check_path(
            "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk= sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==",
            &[
                "content-v2/sha1/da/39/a3ee5e6b4b0d3255bfef95601890afd80709",
                "content-v2/sha512/cf/83/e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
            ],
        );
        check_path("sha512-!!", &[]);
        check_path("", &[]);
    }

    #[test]
    fn npm_messages() {
        let stderr = "npm warn tarball tarball data for styled-jsx@5.1.6 (sha512-qSVy==) seems to be corrupted. Trying again.\n\
            npm error code ENOTCACHED\n\
            npm error request to https://registry.npmjs.org/@next/swc-linux-x64-musl/-/swc-linux-x64-musl-15.5.29.tgz failed: cache mode is 'only-if-cached' but no cached response is available.\n\
            npm error A complete log of this run can be found in: /tmp/x.log\n";
        assert_eq!(
            not_cached_packages(stderr),
            ["@next/swc-linux-x64-musl@15.5.29", "styled-jsx@5.1.6"]
        );
        assert_eq!(
            package_of_tarball_url("https://registry.npmjs.org/react/-/react-19.3.1.tgz")
                .as_deref(),
            Some("react@19.3.1")
        );
        assert!(!npm_errors(stderr).contains("complete log"));
    }

    #[test]
    fn merge_appends_and_never_overwrites() {
        let tmp = std::env::temp_dir().join(format!("xtask-npm-merge-{}", std::process::id()));
        let tmp = Utf8PathBuf::from_path_buf(tmp).unwrap();
        let (ours, home) = (tmp.join("bundle"), tmp.join("home"));
        let write = |p: Utf8PathBuf, s: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        write(ours.join("_cacache/content-v2/sha512/aa/bb/cc"), "new");
        write(ours.join("_cacache/content-v2/sha512/dd/ee/ff"), "ours");
        write(
            ours.join("_cacache/index-v5/01/02/bucket"),
            "\nh1\t{\"key\":\"a\"}\nh2\t{\"key\":\"b\"}",
        );
        write(
            ours.join("_cacache/index-v5/03/04/fresh"),
            "\nh3\t{\"key\":\"c\"}",
        );
        write(home.join("_cacache/content-v2/sha512/dd/ee/ff"), "theirs");
        write(
            home.join("_cacache/index-v5/01/02/bucket"),
            "\nh1\t{\"key\":\"a\"}",
        );
        write(home.join("_cacache/index-v5/09/09/other"), "\nh9\t{}");
        let report = merge_into(&ours, &home).unwrap();
        assert_eq!(
            report,
            MergeReport {
                content_files: 1,
                content_bytes: 3,
                index_lines: 2
            }
        );
        let read = |p: &str| std::fs::read_to_string(home.join(p)).unwrap();
        assert_eq!(read("_cacache/content-v2/sha512/aa/bb/cc"), "new");
        assert_eq!(read("_cacache/content-v2/sha512/dd/ee/ff"), "theirs");
        assert_eq!(
            read("_cacache/index-v5/01/02/bucket"),
            "\nh1\t{\"key\":\"a\"}\nh2\t{\"key\":\"b\"}"
        );
        assert_eq!(
            read("_cacache/index-v5/03/04/fresh"),
            "\nh3\t{\"key\":\"c\"}"
        );
        assert_eq!(read("_cacache/index-v5/09/09/other"), "\nh9\t{}");
        assert_eq!(merge_into(&ours, &home).unwrap(), MergeReport::default());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    /// Real npm registry: a Next 15 lockfile (the frontend's, or one made from its
    /// package.json), linux-x64 for every libc; `npm ci --offline` for gnu and musl.
    #[test]
    fn network_fill_and_verify_next15() {
        let Some(work) = crate::lab::fs::network_test("the npm registry") else {
            return;
        };
        let sh = Shell::new().unwrap();
        let root = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let frontend = root.join("frontend");
        let project = if frontend.join("package-lock.json").exists() {
            frontend
        } else {
            let project = work.join("next15");
            std::fs::create_dir_all(&project).unwrap();
            std::fs::copy(frontend.join("package.json"), project.join("package.json")).unwrap();
            if !project.join("package-lock.json").exists() {
                let _dir = sh.push_dir(&project);
                cmd!(
                    sh,
                    "npm install --package-lock-only --ignore-scripts --no-audit --no-fund"
                )
                .run()
                .unwrap();
            }
            project
        };
        let cache = work.join("npm-cache-linux-x64");
        let linux_x64 = Selection::OsCpu(vec![NodePlatform::from_docker("linux", "amd64", "")]);
        let report = fill(&sh, &project.join("package-lock.json"), &cache, &linux_x64).unwrap();
        crate::say!("{}", serde_json::to_string(&report).unwrap());
        for name in ["@next/swc-linux-x64-gnu@", "@next/swc-linux-x64-musl@"] {
            assert!(
                report.tarballs.iter().any(|t| t.starts_with(name)),
                "{name}"
            );
        }
        let targets = [
            NodePlatform::from_docker("linux", "amd64", "glibc"),
            NodePlatform::from_docker("linux", "amd64", "musl"),
        ];
        verify(&sh, &project, &cache, &targets).unwrap();
        // Cut packuments and the normalized index (fixed times, recomputed SHA-1s) still
        // install offline.
        trim_for_lockfile(&cache, &project.join("package-lock.json")).unwrap();
        assert!(normalize(&cache).unwrap().entries > 0);
        verify(&sh, &project, &cache, &targets).unwrap();

        // A cache without the musl SWC: npm ci would pass silently; verify must not.
        let partial = work.join("npm-cache-gnu-only");
        let _ = std::fs::remove_dir_all(&partial);
        merge_into(&cache, &partial).unwrap();
        let tarballs =
            parse_lockfile(&std::fs::read_to_string(project.join("package-lock.json")).unwrap())
                .unwrap();
        let musl = tarballs
            .iter()
            .find(|t| t.name == "@next/swc-linux-x64-musl")
            .unwrap()
            .clone();
        for path in content_paths(musl.integrity.as_deref().unwrap()) {
            let _ = std::fs::remove_file(partial.join("_cacache").join(path));
        }
        let tarballs: Vec<Tarball> = tarballs
            .into_iter()
            .filter(|t| linux_x64.includes(t))
            .collect();
        let check = missing(&partial, &tarballs);
        assert_eq!(
            spec_list(&check.missing),
            format!("@next/swc-linux-x64-musl@{}", musl.version)
        );
        let err = verify(&sh, &project, &partial, &targets[1..]).unwrap_err();
        assert!(
            err.to_string().contains("@next/swc-linux-x64-musl"),
            "{err:#}"
        );
    }

    /// A lockfile with no packages gives an empty cache: normalizing keeps `_cacache/`,
    /// so the steps after it (merge, the npm image) still find a cache.
    #[test]
    fn an_empty_cache_stays_a_cache() {
        let root = crate::lab::test_dir("npm-empty-cache");
        std::fs::create_dir_all(root.join("_cacache/tmp")).unwrap();
        normalize(&root).unwrap();
        assert!(root.join("_cacache").is_dir());
        assert!(!root.join("_cacache/tmp").exists());
        let dest = root.join("dest");
        assert_eq!(merge_into(&root, &dest).unwrap(), MergeReport::default());
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Two fills of the same tarballs at different times normalize to the same bytes, and
    /// every line still carries its SHA-1, as cacache checks when it reads the index.
    #[test]
    fn normalize_makes_the_cache_a_function_of_its_content() {
        use sha1::{Digest as _, Sha1};
        use std::os::unix::fs::PermissionsExt as _;
        let line = |json: &str| format!("\n{:x}\t{json}", Sha1::digest(json.as_bytes()));
        let entry = |key: &str, time: u64| {
            format!(
                r#"{{"key":"{key}","integrity":"sha512-AAAA","time":{time},"size":3,"metadata":{{"time":{time},"url":"u","reqHeaders":{{}},"resHeaders":{{"content-type":"application/octet-stream","date":"Sun, 29 Nov 2026 14:08:{:02} GMT"}},"options":{{"compress":true}}}}}}"#,
                time % 60
            )
        };
        let root = std::env::temp_dir().join(format!("xtask-npm-normalize-{}", std::process::id()));
        let root = Utf8PathBuf::from_path_buf(root).unwrap();
        let make = |name: &str, time: u64| -> Utf8PathBuf {
            let cache = root.join(name);
            let bucket = cache.join("_cacache/index-v5/aa/bb/cdef");
            std::fs::create_dir_all(bucket.parent().unwrap()).unwrap();
            let mut text = line(&entry("k1", time)) + &line(&entry("k2", time + 7));
            // Added again later (the same line once normalized), a torn line, a deletion.
            text += &line(&entry("k1", time + 9));
            text += "\n0000\t{\"key\":\"torn\"";
            text += &line(&entry("gone", time));
            text += &line(r#"{"key":"gone","integrity":null,"time":5}"#);
            std::fs::write(&bucket, text).unwrap();
            let content = cache.join("_cacache/content-v2/sha512/00/11/2233");
            std::fs::create_dir_all(content.parent().unwrap()).unwrap();
            std::fs::write(&content, "tgz").unwrap();
            std::fs::set_permissions(&content, std::fs::Permissions::from_mode(0o400)).unwrap();
            std::fs::create_dir_all(cache.join("_cacache/tmp/x")).unwrap();
            std::fs::create_dir_all(cache.join("_cacache/index-v5/ee/ff")).unwrap();
            std::fs::write(cache.join("_update-notifier-last-checked"), "").unwrap();
            cache
        };
        let (a, b) = (make("a", 1_795_961_318_281), make("b", 1_795_999_999_999));
        let report = normalize(&a).unwrap();
        assert_eq!(
            report,
            NormalizeReport {
                entries: 4,
                rewritten: 1
            }
        );
        normalize(&b).unwrap();
        let listing = |cache: &Utf8Path| -> Vec<(String, u32, Vec<u8>)> {
            let mut all = Vec::new();
            let mut stack = vec![cache.to_owned()];
            while let Some(dir) = stack.pop() {
                for e in dir.read_dir_utf8().unwrap() {
                    let e = e.unwrap();
                    let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
                    let rel = e.path().strip_prefix(cache).unwrap().to_string();
                    if e.file_type().unwrap().is_dir() {
                        stack.push(e.path().to_owned());
                        all.push((rel, mode, Vec::new()));
                    } else {
                        all.push((rel, mode, std::fs::read(e.path()).unwrap()));
                    }
                }
            }
            all.sort();
            all
        };
        assert_eq!(listing(&a), listing(&b));
        let names: Vec<String> = listing(&a).into_iter().map(|(p, _, _)| p).collect();
        assert!(
            !names
                .iter()
                .any(|p| p.contains("tmp") || p.contains("notifier") || p.contains("ee")),
            "{names:?}"
        );
        let text = std::fs::read_to_string(a.join("_cacache/index-v5/aa/bb/cdef")).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        // k2, k1 (its first copy dropped: identical to the last), gone, and gone's deletion.
        assert_eq!(lines.len(), 4, "{text}");
        for l in &lines {
            let (hash, json) = l.split_once('\t').unwrap();
            assert_eq!(hash, format!("{:x}", Sha1::digest(json.as_bytes())));
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(v["time"], NORMAL_TIME_MS);
            if !v["integrity"].is_null() {
                assert_eq!(v["metadata"]["time"], NORMAL_TIME_MS);
                assert_eq!(v["metadata"]["resHeaders"]["date"], NORMAL_HTTP_DATE);
            }
        }
        let keys: Vec<&str> = lines
            .iter()
            .map(|l| &l[l.find("\"key\":").unwrap()..][6..12])
            .collect();
        assert_eq!(
            keys,
            ["\"k2\",\"", "\"k1\",\"", "\"gone\"", "\"gone\""],
            "{text}"
        );
        // Normalizing again changes nothing.
        let before = listing(&a);
        assert_eq!(normalize(&a).unwrap().rewritten, 0);
        assert_eq!(listing(&a), before);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn sha512_integrity_is_npms() {
        assert_eq!(
            sha512_integrity(b""),
            "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
        );
        assert_eq!(
            sha512_integrity(b"ab"),
            "sha512-LUCKBxfsGIFYJ4p5bGiQRDYdxv3eKNbwSXO4CJbhgjl1zb8S62P54FkTKO4jXYDptb8apqRPRhf/PK9kAOsXLQ=="
        );
    }

    /// A packument keeps the lockfile's versions only; both index lines naming it (corgi
    /// and full) get the new integrity; the old document goes; tarballs are untouched.
    #[test]
    fn packuments_are_cut_to_the_lockfiles_versions() {
        use sha1::{Digest as _, Sha1};
        let root = std::env::temp_dir().join(format!("xtask-npm-trim-{}", std::process::id()));
        let cache = Utf8PathBuf::from_path_buf(root).unwrap();
        let cacache = cache.join("_cacache");
        let put = |data: &[u8]| -> String {
            let integrity = sha512_integrity(data);
            let path = cacache.join(&content_paths(&integrity)[0]);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, data).unwrap();
            integrity
        };
        let doc = br#"{"name":"@scope/pkg","dist-tags":{"latest":"2.0.0"},"readme":"long",
            "versions":{"1.0.0":{"dist":{"tarball":"t1"}},"2.0.0":{"dist":{"tarball":"t2"}}},
            "time":{"created":"c","modified":"m","1.0.0":"a","2.0.0":"b"}}"#;
        let packument = put(doc);
        let tarball = put(b"tgz bytes");
        let line = |key: &str, integrity: &str, accept: &str| {
            let json = format!(
                r#"{{"key":"make-fetch-happen:request-cache:{key}","integrity":"{integrity}","size":1,"metadata":{{"reqHeaders":{{"accept":"{accept}"}}}}}}"#
            );
            format!("\n{:x}\t{json}", Sha1::digest(json.as_bytes()))
        };
        let bucket = cacache.join("index-v5/aa/bb/packument");
        std::fs::create_dir_all(bucket.parent().unwrap()).unwrap();
        let url = "https://registry.example/npm/@scope%2fpkg";
        std::fs::write(
            &bucket,
            line(url, &packument, "corgi") + &line(url, &packument, "application/json"),
        )
        .unwrap();
        let tar_bucket = cacache.join("index-v5/cc/dd/tarball");
        std::fs::create_dir_all(tar_bucket.parent().unwrap()).unwrap();
        let tar_line = line(
            "https://registry.example/npm/@scope/pkg/-/pkg-1.0.0.tgz",
            &tarball,
            "*",
        );
        std::fs::write(&tar_bucket, &tar_line).unwrap();

        let lock = parse_lockfile(
            r#"{"lockfileVersion":3,"packages":{"":{},"node_modules/@scope/pkg":{"version":"1.0.0","integrity":"sha512-x"}}}"#,
        )
        .unwrap();
        let report = trim_packuments(&cache, &lock).unwrap();
        assert_eq!(report.packuments, 1);
        assert!(report.bytes_after < report.bytes_before);
        let text = std::fs::read_to_string(&bucket).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2);
        let mut integrities = BTreeSet::new();
        for l in &lines {
            let (hash, json) = l.split_once('\t').unwrap();
            assert_eq!(hash, format!("{:x}", Sha1::digest(json.as_bytes())));
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            integrities.insert(v["integrity"].as_str().unwrap().to_string());
        }
        assert_eq!(integrities.len(), 1);
        let new = integrities.into_iter().next().unwrap();
        let trimmed: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cacache.join(&content_paths(&new)[0])).unwrap())
                .unwrap();
        assert_eq!(
            trimmed["versions"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["1.0.0"]
        );
        assert_eq!(
            trimmed["time"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["1.0.0", "created", "modified"]
        );
        assert!(trimmed.get("readme").is_none() && trimmed["dist-tags"]["latest"] == "2.0.0");
        assert!(!cacache.join(&content_paths(&packument)[0]).exists());
        assert_eq!(std::fs::read_to_string(&tar_bucket).unwrap(), tar_line);
        assert!(cacache.join(&content_paths(&tarball)[0]).exists());
        // Cutting again changes nothing.
        assert_eq!(trim_packuments(&cache, &lock).unwrap().packuments, 0);
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
