//! `pip-cache/` is a wheelhouse: wheels for the interpreter and platform *inside the image*.
//!
//! A copied `~/.cache/pip` is an HTTP cache that pip only consults next to an index, so it
//! is useless offline (pip#8057). A directory of wheels is an index of its own:
//! `pip install --no-index --find-links DIR`. The host's pip downloads them, told the
//! image's interpreter (`--python-version`, `--implementation`, `--abi`) and platform tags
//! (`--platform`, manylinux or musllinux), which forces `--only-binary=:all:`; a package
//! that has only an sdist for that target is built into a wheel inside the base image, with
//! no network, or named in the error. Before the bundle is written, pip's resolver checks,
//! offline and alone, that the wheelhouse satisfies the requirements for that target.
//!
//! The target comes from the image itself (`probe_image`: its python prints its tags), or
//! from the image's name (`target_from_image_name`), or from the user's overrides.

// The lead wires this API into cache-export / cache-import / cache-status; until then
// parts of it have no caller outside the tests.

use std::collections::BTreeSet;

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::docker::Docker;

/// The interpreter and platform tags pip must pick wheels for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PythonTarget {
    /// `major.minor`, e.g. "3.9".
    pub version: String,
    /// Interpreter implementation tag: "cp" (CPython), "pp" (PyPy).
    pub implementation: String,
    /// ABI tag, e.g. "cp39".
    pub abi: String,
    /// Platform tags the interpreter accepts, best first, e.g. `manylinux_2_31_x86_64`, …,
    /// `manylinux2014_x86_64`, or `musllinux_1_2_x86_64`.
    pub platforms: Vec<String>,
    pub source: TargetSource,
}

/// Where a [`PythonTarget`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSource {
    /// The image's own python printed its tags.
    Probed,
    /// Guessed from the image's name (`python:3.9-slim`).
    ImageName,
    /// `--python-version` / `--platform` given by the user.
    Override,
}

impl PythonTarget {
    /// A target from the user's `--python-version X.Y` (CPython) and `--platform TAG…`.
    pub fn from_overrides(
        python_version: &str,
        platforms: &[String],
    ) -> anyhow::Result<PythonTarget> {
        let (major, minor) = parse_major_minor(python_version).with_context(|| {
            format!("--python-version {python_version:?}: expected MAJOR.MINOR, e.g. 3.9")
        })?;
        if platforms.is_empty() {
            bail!("--python-version needs at least one --platform (e.g. manylinux2014_x86_64)");
        }
        Ok(PythonTarget {
            version: format!("{major}.{minor}"),
            implementation: "cp".to_string(),
            abi: cpython_abi(major, minor),
            platforms: platforms.to_vec(),
            source: TargetSource::Override,
        })
    }

    /// This target with the user's overrides applied (either may be absent).
    pub fn with_overrides(
        mut self,
        python_version: Option<&str>,
        platforms: &[String],
    ) -> anyhow::Result<PythonTarget> {
        if let Some(version) = python_version {
            let (major, minor) = parse_major_minor(version).with_context(|| {
                format!("--python-version {version:?}: expected MAJOR.MINOR, e.g. 3.9")
            })?;
            self.version = format!("{major}.{minor}");
            self.implementation = "cp".to_string();
            self.abi = cpython_abi(major, minor);
            self.source = TargetSource::Override;
        }
        if !platforms.is_empty() {
            self.platforms = platforms.to_vec();
            self.source = TargetSource::Override;
        }
        Ok(self)
    }

    /// The pip options that select wheels for this target.
    pub fn pip_args(&self) -> Vec<String> {
        let mut args = vec![
            "--only-binary=:all:".to_string(),
            "--python-version".to_string(),
            self.version.clone(),
            "--implementation".to_string(),
            self.implementation.clone(),
            "--abi".to_string(),
            self.abi.clone(),
        ];
        for platform in &self.platforms {
            args.push("--platform".to_string());
            args.push(platform.clone());
        }
        args
    }

    /// One line for progress and errors: `cp39 (Python 3.9) on manylinux_2_31_x86_64 (+11 more)`.
    pub fn describe(&self) -> String {
        let platforms = match self.platforms.as_slice() {
            [] => "no platform".to_string(),
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} (+{} more)", rest.len()),
        };
        format!("{} (Python {}) on {platforms}", self.abi, self.version)
    }
}

/// What the image's name says about its Python: `python:3.9-slim` is CPython 3.9 on glibc
/// (manylinux), `python:3.11-alpine` on musl (musllinux). `arch` is the engine's
/// (`amd64`/`x86_64`, `arm64`/`aarch64`). `None` when the name says nothing certain.
pub fn target_from_image_name(image: &str, arch: &str) -> Option<PythonTarget> {
    let arch = match arch {
        "amd64" | "x86_64" | "x86-64" => "x86_64",
        "arm64" | "aarch64" | "arm64/v8" => "aarch64",
        _ => return None,
    };
    let image = image.split('@').next()?;
    let (repository, tag) = match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, tag),
        _ => return None, // no tag: `latest`, whose version changes
    };
    if repository.rsplit('/').next()? != "python" {
        return None;
    }
    let (version, variant) = tag.split_once('-').unwrap_or((tag, ""));
    let (major, minor) = parse_major_minor(version)?;
    if major != 3 || variant.contains("windows") || variant.contains("nanoserver") {
        return None;
    }
    let mut platforms = Vec::new();
    if variant.contains("alpine") {
        // Alpine 3.13+ has musl 1.2, whose wheels are musllinux_1_2 or the older musllinux_1_1.
        platforms.push(format!("musllinux_1_2_{arch}"));
        platforms.push(format!("musllinux_1_1_{arch}"));
    } else {
        // The official python images are Debian; the codename in the tag gives glibc. A bare
        // tag (`3.9-slim`) has been bullseye or newer since 2021: glibc 2.31 is safe for all.
        let glibc_minor = if variant.contains("buster") {
            28
        } else if variant.contains("bookworm") {
            36
        } else if variant.contains("trixie") {
            41
        } else {
            31
        };
        platforms.extend(manylinux_platforms(glibc_minor, arch));
    }
    // A wheel built from an sdist in the image is tagged `linux_<arch>`.
    platforms.push(format!("linux_{arch}"));
    Some(PythonTarget {
        version: format!("{major}.{minor}"),
        implementation: "cp".to_string(),
        abi: cpython_abi(major, minor),
        platforms,
        source: TargetSource::ImageName,
    })
}

/// `manylinux_2_<g>` down to the oldest the architecture has, with the legacy aliases
/// (`manylinux2014` = 2_17, `manylinux2010` = 2_12, `manylinux1` = 2_5) where pip's own
/// list has them. pip does not expand `--platform manylinux_2_X` to older ones itself.
fn manylinux_platforms(glibc_minor: u32, arch: &str) -> Vec<String> {
    let oldest = if arch == "x86_64" || arch == "i686" {
        5
    } else {
        17
    };
    let mut platforms = Vec::new();
    for minor in (oldest..=glibc_minor).rev() {
        platforms.push(format!("manylinux_2_{minor}_{arch}"));
        match minor {
            17 => platforms.push(format!("manylinux2014_{arch}")),
            12 => platforms.push(format!("manylinux2010_{arch}")),
            5 => platforms.push(format!("manylinux1_{arch}")),
            _ => {}
        }
    }
    platforms
}

fn parse_major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// CPython's ABI tag: `cp39`; before 3.8, pymalloc builds were `cp37m`.
fn cpython_abi(major: u32, minor: u32) -> String {
    if major == 3 && minor < 8 {
        format!("cp{major}{minor}m")
    } else {
        format!("cp{major}{minor}")
    }
}

/// Runs in the image's python (any 3.x): prints the interpreter and the platform tags pip
/// there would accept, as JSON. Uses pip's vendored `packaging.tags` (what pip itself
/// uses), else `packaging`, else glibc/musl detection by hand.
pub const PROBE_SCRIPT: &str = r#"
import json, sys, platform, sysconfig, glob
tags = None
for name in ("pip._vendor.packaging.tags", "packaging.tags"):
    try:
        tags = __import__(name, fromlist=["sys_tags"])
        break
    except Exception:
        pass
impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, sys.implementation.name)
version = "%d.%d" % sys.version_info[:2]
platforms = []
abi = None
source = "sysconfig"
if tags is not None:
    all_tags = list(tags.sys_tags())
    abi = all_tags[0].abi
    for t in all_tags:
        if t.platform != "any" and t.platform not in platforms:
            platforms.append(t.platform)
    source = tags.__name__
else:
    arch = platform.machine()
    libc, libc_version = platform.libc_ver()
    if libc == "glibc":
        minor = int(libc_version.split(".")[1])
        oldest = 5 if arch in ("x86_64", "i686") else 17
        for m in range(minor, oldest - 1, -1):
            platforms.append("manylinux_2_%d_%s" % (m, arch))
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}.get(m)
            if legacy:
                platforms.append("%s_%s" % (legacy, arch))
    elif glob.glob("/lib/ld-musl-*.so.1"):
        platforms += ["musllinux_1_2_" + arch, "musllinux_1_1_" + arch]
    platforms.append(sysconfig.get_platform().replace("-", "_").replace(".", "_"))
if abi is None:
    abi = "%s%d%d" % (impl, sys.version_info[0], sys.version_info[1])
print(json.dumps({"version": version, "implementation": impl, "abi": abi,
                  "platforms": platforms, "tags_from": source}))
"#;

/// Asks the image's own python (run with no network) which wheels it accepts.
pub fn probe_image(docker: &Docker, image: &str) -> anyhow::Result<PythonTarget> {
    let mut last_error = None;
    for python in ["python3", "python"] {
        match docker.run_offline(image, &[python, "-c", PROBE_SCRIPT]) {
            Ok(stdout) => {
                return target_from_probe(&stdout)
                    .with_context(|| format!("reading the Python tags printed by image {image}"))
            }
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.expect("tried at least one python"))
        .with_context(|| format!("asking image {image} for its Python (python3 -c …, no network)"))
}

/// Builds the target from [`PROBE_SCRIPT`]'s output.
pub fn target_from_probe(stdout: &str) -> anyhow::Result<PythonTarget> {
    #[derive(serde::Deserialize)]
    struct Probe {
        version: String,
        implementation: String,
        abi: String,
        platforms: Vec<String>,
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    let probe: Probe = serde_json::from_str(line)
        .with_context(|| format!("expected one JSON line, got {:?}", stdout.trim()))?;
    if probe.platforms.is_empty() {
        bail!("the interpreter reported no platform tags");
    }
    Ok(PythonTarget {
        version: probe.version,
        implementation: probe.implementation,
        abi: probe.abi,
        platforms: probe.platforms,
        source: TargetSource::Probed,
    })
}

/// What `export` produced; the bundle's manifest records it.
#[derive(Debug, Clone, Serialize)]
pub struct WheelhouseReport {
    pub target: PythonTarget,
    pub requirements: Vec<Utf8PathBuf>,
    pub files: Vec<WheelFile>,
    pub total_bytes: u64,
    /// Wheels built from sdists inside the base image.
    pub built_from_sdist: Vec<String>,
    /// `verify` passed: the wheelhouse alone satisfies the requirements for the target.
    pub verified: bool,
    pub verify_error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WheelFile {
    pub name: String,
    pub size: u64,
}

/// What to do with a requirement that has no wheel for the target.
pub enum Sdists<'a> {
    /// Fail, naming the package and the fixes.
    Refuse,
    /// Download its sdist on the host and build the wheel in `image` with no network
    /// (`pip wheel --no-deps --no-build-isolation`: the image's own setuptools).
    BuildInImage {
        docker: &'a Docker<'a>,
        image: &'a str,
    },
}

/// The host's pip (any pip ≥ 22.2 can download for another interpreter and dry-run).
const PYTHON: &str = "python3";

/// Downloads into `out` every wheel the requirements resolve to for `target` (extras and
/// transitive dependencies included), then checks the result with [`verify`].
pub fn export(
    sh: &Shell,
    requirements: &[Utf8PathBuf],
    target: &PythonTarget,
    out: &Utf8Path,
    sdists: &Sdists,
) -> anyhow::Result<WheelhouseReport> {
    let started = std::time::Instant::now();
    let requirements = absolute_all(sh, requirements)?;
    let out = absolute(sh, out)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {out}"))?;
    let req_args = requirement_args(&requirements);
    let target_args = target.pip_args();
    crate::say!(
        "wheelhouse: downloading wheels for {} from {} into {out}",
        target.describe(),
        display_list(&requirements)
    );
    let mut built_from_sdist: Vec<String> = Vec::new();
    loop {
        let (target_args, req_args) = (&target_args, &req_args);
        let output = cmd!(
            sh,
            "{PYTHON} -m pip download --disable-pip-version-check --progress-bar off --no-color
                --dest {out} --find-links {out} {target_args...} {req_args...}"
        )
        .quiet()
        .ignore_status()
        .output()
        .context("running the host's pip (`python3 -m pip`); install pip for python3")?;
        if output.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let Some(missing) = no_matching_distribution(&stderr) else {
            bail!(
                "`pip download` for {} from {} failed:\n{}",
                target.describe(),
                display_list(&requirements),
                pip_errors(&stderr)
            );
        };
        let package = requirement_name(&missing);
        match sdists {
            Sdists::BuildInImage { docker, image }
                if !built_from_sdist
                    .iter()
                    .any(|b| requirement_name(b) == package) =>
            {
                crate::say!(
                    "wheelhouse: {missing} has no wheel for {}; building it in {image}",
                    target.abi
                );
                build_wheel_in_image(sh, docker, image, &missing, &out)
                    .with_context(|| no_wheel_message(&missing, target, Some(image)))?;
                built_from_sdist.push(missing);
            }
            Sdists::BuildInImage { image, .. } => {
                bail!(
                    "{}\n(a wheel built in {image} was not accepted: its tag is not in the target's platforms)",
                    no_wheel_message(&missing, target, Some(image))
                )
            }
            Sdists::Refuse => bail!("{}", no_wheel_message(&missing, target, None)),
        }
    }
    complete_for_target(sh, &requirements, target, &out)?;
    let files = list_files(&out)?;
    let total_bytes = files.iter().map(|f| f.size).sum();
    crate::say!(
        "wheelhouse: {} files, {:.1} MB; checking it alone satisfies the requirements",
        files.len(),
        total_bytes as f64 / 1e6
    );
    let verify_error = verify(sh, &requirements, target, &out)
        .err()
        .map(|e| format!("{e:#}"));
    if let Some(err) = &verify_error {
        crate::say!("wheelhouse: verify FAILED: {err}");
    }
    Ok(WheelhouseReport {
        target: target.clone(),
        requirements,
        files,
        total_bytes,
        built_from_sdist,
        verified: verify_error.is_none(),
        verify_error,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn no_wheel_message(requirement: &str, target: &PythonTarget, image: Option<&str>) -> String {
    let build = match image {
        Some(image) => format!(
            "building it in {image} with no network failed (it needs a build backend or \
             compiler the image lacks)"
        ),
        None => {
            "or build it from its sdist inside the base image (cache-export can, given the image)"
                .to_string()
        }
    };
    format!(
        "{requirement} has no wheel for {}: pin a version that publishes one (see \
         https://pypi.org/project/{}/#files), {build}, or put a wheel built for that target \
         into the wheelhouse yourself; or change the target with --python-version / --platform",
        target.describe(),
        requirement_name(requirement)
    )
}

/// Host: downloads `requirement`'s sdist; image, no network: `pip wheel` it into `out`.
fn build_wheel_in_image(
    sh: &Shell,
    docker: &Docker,
    image: &str,
    requirement: &str,
    out: &Utf8Path,
) -> anyhow::Result<()> {
    let tmp = sh.create_temp_dir()?;
    let sdist_dir = Utf8Path::from_path(tmp.path()).context("temporary directory is not UTF-8")?;
    let output = cmd!(
        sh,
        "{PYTHON} -m pip download --disable-pip-version-check --progress-bar off --no-color
            --no-deps --no-binary :all: --dest {sdist_dir} {requirement}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    if !output.status.success() {
        bail!(
            "downloading the sdist of {requirement} failed:\n{}",
            pip_errors(&String::from_utf8_lossy(&output.stderr))
        );
    }
    let sdist = list_files(sdist_dir)?
        .into_iter()
        .next()
        .with_context(|| format!("pip downloaded no sdist for {requirement}"))?;
    let in_image = format!("/sdist/{}", sdist.name);
    docker.run_offline_with_mounts(
        image,
        &[(sdist_dir, "/sdist"), (out, "/wheels")],
        &[
            "python3",
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--wheel-dir",
            "/wheels",
            &in_image,
        ],
    )?;
    Ok(())
}

/// Walks the dependency tree of `requirements` through the wheels' own metadata, with the
/// environment markers evaluated for `target` (not for the host), and names what `dir`
/// lacks. pip evaluates markers against the interpreter it runs on even with
/// `--python-version`: on a 3.11 host a 3.9 target loses `exceptiongroup` (anyio needs it
/// below 3.11), and pip's own dry run passes all the same.
const CLOSURE_SCRIPT: &str = r#"
import json, os, sys, zipfile
try:
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
version, machine, wheel_dir = sys.argv[1], sys.argv[2], sys.argv[3]
specs = json.loads(sys.argv[4])
env = default_environment()
env.update(python_version=version, python_full_version=version + ".0",
           implementation_name="cpython", platform_python_implementation="CPython",
           sys_platform="linux", platform_system="Linux", os_name="posix",
           platform_machine=machine)
have = {}
for f in os.listdir(wheel_dir):
    if f.endswith(".whl"):
        name, ver, _, _ = parse_wheel_filename(f)
        have[canonicalize_name(name)] = (ver, os.path.join(wheel_dir, f))
def applies(req, extras):
    if req.marker is None:
        return True
    return any(req.marker.evaluate(dict(env, extra=e)) for e in (set(extras) | {""}))
queue = [(Requirement(s), ()) for s in specs]
seen, missing = set(), []
while queue:
    req, parent_extras = queue.pop()
    if not applies(req, parent_extras):
        continue
    name = canonicalize_name(req.name)
    key = (name, tuple(sorted(req.extras)))
    if key in seen:
        continue
    seen.add(key)
    found = have.get(name)
    if found is None or (req.specifier and not req.specifier.contains(found[0], prereleases=True)):
        req.marker = None
        missing.append(str(req))
        continue
    with zipfile.ZipFile(found[1]) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            queue.append((Requirement(line[len("Requires-Dist:"):].strip()), tuple(req.extras)))
print(json.dumps(sorted(set(missing))))
"#;

/// The requirements (as written in the files) that the target needs but `dir` lacks,
/// markers evaluated for the target.
pub fn missing_for_target(
    sh: &Shell,
    requirements: &[Utf8PathBuf],
    target: &PythonTarget,
    dir: &Utf8Path,
) -> anyhow::Result<Vec<String>> {
    let read = |p: &Utf8Path| std::fs::read_to_string(p);
    let set = crate::model::requirements::collect(requirements, &read)?;
    let specs: Vec<&str> = set.requirements.iter().map(|r| r.spec.as_str()).collect();
    let specs = serde_json::to_string(&specs)?;
    let machine = target_machine(target);
    let version = &target.version;
    let out = cmd!(
        sh,
        "{PYTHON} -c {CLOSURE_SCRIPT} {version} {machine} {dir} {specs}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    if !out.status.success() {
        bail!(
            "checking the wheelhouse {dir} against the requirements failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading the dependency check of {dir}"))
}

fn target_machine(target: &PythonTarget) -> &'static str {
    if target.platforms.iter().any(|p| p.ends_with("aarch64")) {
        "aarch64"
    } else {
        "x86_64"
    }
}

/// Adds what the target's markers need and the host's pip left out, until nothing lacks.
fn complete_for_target(
    sh: &Shell,
    requirements: &[Utf8PathBuf],
    target: &PythonTarget,
    out: &Utf8Path,
) -> anyhow::Result<()> {
    let target_args = target.pip_args();
    for _ in 0..8 {
        let missing = missing_for_target(sh, requirements, target, out)?;
        if missing.is_empty() {
            return Ok(());
        }
        crate::say!(
            "wheelhouse: adding what {} needs and the host's pip left out: {}",
            target.describe(),
            missing.join(", ")
        );
        let (target_args, specs) = (&target_args, &missing);
        let output = cmd!(
            sh,
            "{PYTHON} -m pip download --disable-pip-version-check --progress-bar off --no-color
                --no-deps --dest {out} {target_args...} {specs...}"
        )
        .quiet()
        .ignore_status()
        .output()?;
        if !output.status.success() {
            bail!(
                "downloading {} for {} failed:\n{}",
                missing.join(", "),
                target.describe(),
                pip_errors(&String::from_utf8_lossy(&output.stderr))
            );
        }
    }
    bail!("the wheelhouse {out} is still incomplete after 8 rounds of downloads")
}

/// pip's resolver alone, offline: the wheelhouse `dir` satisfies `requirements` for `target`.
pub fn verify(
    sh: &Shell,
    requirements: &[Utf8PathBuf],
    target: &PythonTarget,
    dir: &Utf8Path,
) -> anyhow::Result<()> {
    let requirements = absolute_all(sh, requirements)?;
    let dir = absolute(sh, dir)?;
    let req_args = requirement_args(&requirements);
    let target_args = target.pip_args();
    let tmp = sh.create_temp_dir()?;
    let scratch = Utf8Path::from_path(tmp.path()).context("temporary directory is not UTF-8")?;
    // --isolated: no PIP_* variables or pip.conf (a PIP_FIND_LINKS would leak other wheels in).
    let output = cmd!(
        sh,
        "{PYTHON} -m pip install --isolated --disable-pip-version-check --no-color --quiet
            --dry-run --ignore-installed --no-index --find-links {dir}
            --target {scratch} {target_args...} {req_args...}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    if output.status.success() {
        let missing = missing_for_target(sh, &requirements, target, &dir)?;
        if !missing.is_empty() {
            bail!(
                "the wheelhouse {dir} lacks {} for {} (needed through environment markers of \
                 the target, which pip's own check evaluates for the host); run `cargo xtask \
                 cache-export` again where PyPI is reachable",
                missing.join(", "),
                target.describe()
            );
        }
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    match no_matching_distribution(&stderr) {
        Some(missing) => bail!(
            "the wheelhouse {dir} has no wheel of {missing} for {}, needed by {}; run \
             `cargo xtask cache-export` again where PyPI is reachable, or add that wheel to {dir}",
            target.describe(),
            display_list(&requirements)
        ),
        None => bail!(
            "pip cannot install {} from the wheelhouse {dir} alone for {}:\n{}",
            display_list(&requirements),
            target.describe(),
            pip_errors(&stderr)
        ),
    }
}

/// The line to give the user on import: how the host's pip uses the wheelhouse.
pub fn host_hint(dir: &Utf8Path) -> String {
    let dir = shell_word(dir.as_str());
    format!(
        "pip install --no-index --find-links {dir} -r requirements.txt\n\
         (or for every pip call: export PIP_NO_INDEX=1 PIP_FIND_LINKS={dir}; the wheels are \
         for the image's Python, so a host pip of another version takes only the pure-Python ones)"
    )
}

/// The pins (`name==version`, extras and markers allowed) that no wheel in `wheel_files`
/// provides. Names compare per PEP 503, versions with trailing `.0`s ignored, `==X.*` as a
/// prefix. Lines that are not `==` pins are not checked.
pub fn missing_pins<'p>(
    wheel_files: &[impl AsRef<str>],
    pins: &'p [impl AsRef<str>],
) -> Vec<&'p str> {
    let available: BTreeSet<(String, String)> = wheel_files
        .iter()
        .filter_map(|f| parse_wheel_name(f.as_ref()))
        .map(|(name, version)| (normalize_name(name), version.to_ascii_lowercase()))
        .collect();
    pins.iter()
        .map(AsRef::as_ref)
        .filter(|pin| {
            let Some((name, version)) = parse_pin(pin) else {
                return false;
            };
            let name = normalize_name(name);
            !available
                .iter()
                .any(|(n, v)| *n == name && version_matches(v, &version))
        })
        .collect()
}

/// `(name, version)` of a wheel file name (PEP 427: `{name}-{version}(-{build})?-{py}-{abi}-{plat}.whl`).
pub fn parse_wheel_name(file: &str) -> Option<(&str, &str)> {
    let stem = file.strip_suffix(".whl")?;
    let mut parts = stem.split('-');
    let name = parts.next()?;
    let version = parts.next()?;
    (parts.count() >= 3).then_some((name, version))
}

/// PEP 503: lowercase, runs of `-`, `_`, `.` become one `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// `passlib[bcrypt]==1.7.4 ; python_version >= "3"` → ("passlib", "1.7.4").
fn parse_pin(line: &str) -> Option<(&str, String)> {
    let line = line.split('#').next()?.split(';').next()?.trim();
    let (name, version) = line.split_once("==")?;
    let name = name.split('[').next()?.trim();
    let version = version.trim().trim_start_matches('=');
    if name.is_empty() || version.is_empty() || version.contains([',', ' ']) {
        return None;
    }
    Some((name, version.to_ascii_lowercase()))
}

fn version_matches(available: &str, pinned: &str) -> bool {
    if let Some(prefix) = pinned.strip_suffix(".*") {
        let prefix = prefix.strip_prefix('v').unwrap_or(prefix);
        return available == prefix || available.starts_with(&format!("{prefix}."));
    }
    let trim = |v: &str| {
        let v = v.strip_prefix('v').unwrap_or(v).to_string();
        let (release, rest) = match v.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
            Some(i) => v.split_at(i),
            None => (v.as_str(), ""),
        };
        let mut release = release.trim_end_matches('.');
        while let Some(shorter) = release.strip_suffix(".0") {
            release = shorter;
        }
        format!("{release}{rest}")
    };
    trim(available) == trim(pinned)
}

/// The requirement pip names in "No matching distribution found for X".
fn no_matching_distribution(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|line| {
        let rest = line.split("No matching distribution found for ").nth(1)?;
        Some(rest.trim().to_string())
    })
}

/// The distribution name of a requirement: `passlib[bcrypt]==1.7.4` → `passlib`.
fn requirement_name(requirement: &str) -> &str {
    let end = requirement
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(requirement.len());
    &requirement[..end]
}

/// pip's `ERROR:` lines (else its last lines), for a readable error.
fn pip_errors(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ERROR:")).collect();
    if errors.is_empty() {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    } else {
        errors.join("\n")
    }
}

fn requirement_args(requirements: &[Utf8PathBuf]) -> Vec<String> {
    requirements
        .iter()
        .flat_map(|r| ["-r".to_string(), r.to_string()])
        .collect()
}

fn display_list(paths: &[Utf8PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_files(dir: &Utf8Path) -> anyhow::Result<Vec<WheelFile>> {
    let mut files = Vec::new();
    for entry in dir
        .read_dir_utf8()
        .with_context(|| format!("reading {dir}"))?
    {
        let entry = entry?;
        let metadata = entry.metadata()?;
        if metadata.is_file() {
            files.push(WheelFile {
                name: entry.file_name().to_string(),
                size: metadata.len(),
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
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

fn absolute_all(sh: &Shell, paths: &[Utf8PathBuf]) -> anyhow::Result<Vec<Utf8PathBuf>> {
    paths.iter().map(|p| absolute(sh, p)).collect()
}

/// Quotes `word` for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(image: &str, arch: &str, expected: Option<(&str, &str, &[&str])>) {
        let actual = target_from_image_name(image, arch);
        let actual = actual.as_ref().map(|t| {
            assert_eq!(t.source, TargetSource::ImageName);
            (t.version.as_str(), t.abi.as_str(), t.platforms.as_slice())
        });
        match (actual, expected) {
            (None, None) => {}
            (Some((version, abi, platforms)), Some((v, a, must_have))) => {
                assert_eq!((version, abi), (v, a), "{image}");
                for p in must_have {
                    assert!(
                        platforms.iter().any(|x| x == p),
                        "{image}: {p} not in {platforms:?}"
                    );
                }
            }
            (actual, expected) => panic!("{image} {arch}: got {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn image_names() {
        check_name(
            "python:3.9-slim",
            "amd64",
            Some((
                "3.9",
                "cp39",
                &[
                    "manylinux_2_31_x86_64",
                    "manylinux2014_x86_64",
                    "manylinux1_x86_64",
                ],
            )),
        );
        check_name(
            "docker.io/library/python:3.9-slim@sha256:0123abcd",
            "x86_64",
            Some(("3.9", "cp39", &["manylinux_2_17_x86_64"])),
        );
        check_name(
            "registry.local:5000/mirror/python:3.12.4-slim-bookworm",
            "arm64",
            Some((
                "3.12",
                "cp312",
                &["manylinux_2_36_aarch64", "manylinux2014_aarch64"],
            )),
        );
        check_name(
            "python:3.11-alpine",
            "amd64",
            Some((
                "3.11",
                "cp311",
                &["musllinux_1_2_x86_64", "musllinux_1_1_x86_64"],
            )),
        );
        check_name(
            "python:3.11-alpine3.19",
            "aarch64",
            Some(("3.11", "cp311", &["musllinux_1_1_aarch64"])),
        );
        check_name(
            "python:3.7-slim-buster",
            "amd64",
            Some(("3.7", "cp37m", &["manylinux_2_28_x86_64"])),
        );
        check_name(
            "python:3.13",
            "amd64",
            Some(("3.13", "cp313", &["manylinux_2_5_x86_64"])),
        );
        check_name("python", "amd64", None);
        check_name("python:latest", "amd64", None);
        check_name("python:3", "amd64", None);
        check_name("python:2.7-slim", "amd64", None);
        check_name("python:3.9-windowsservercore", "amd64", None);
        check_name("node:20-alpine", "amd64", None);
        check_name("localhost:5000/python", "amd64", None);
        check_name("python:3.9-slim", "s390x", None);
    }

    #[test]
    fn glibc_names_exclude_newer_and_musl() {
        let t = target_from_image_name("python:3.9-slim", "amd64").unwrap();
        assert!(!t
            .platforms
            .iter()
            .any(|p| p == "manylinux_2_32_x86_64" || p.starts_with("musl")));
        assert_eq!(t.platforms[0], "manylinux_2_31_x86_64");
        let arm = target_from_image_name("python:3.9-slim", "arm64").unwrap();
        assert!(!arm
            .platforms
            .iter()
            .any(|p| p.contains("manylinux1") || p.contains("2_16")));
    }

    #[test]
    fn overrides() {
        let t = target_from_image_name("python:3.9-slim", "amd64")
            .unwrap()
            .with_overrides(Some("3.10"), &[])
            .unwrap();
        assert_eq!(
            (t.version.as_str(), t.abi.as_str(), t.source),
            ("3.10", "cp310", TargetSource::Override)
        );
        assert!(PythonTarget::from_overrides("3", &["manylinux2014_x86_64".into()]).is_err());
        let t = PythonTarget::from_overrides("3.9", &["manylinux2014_x86_64".into()]).unwrap();
        assert_eq!(
            t.pip_args().join(" "),
            "--only-binary=:all: --python-version 3.9 --implementation cp --abi cp39 --platform manylinux2014_x86_64"
        );
    }

    #[test]
    fn probe_output() {
        let t = target_from_probe(
            "noise\n{\"version\": \"3.9\", \"implementation\": \"cp\", \"abi\": \"cp39\", \
             \"platforms\": [\"manylinux_2_36_x86_64\", \"linux_x86_64\"], \"tags_from\": \"x\"}\n",
        )
        .unwrap();
        assert_eq!(t.abi, "cp39");
        assert_eq!(t.platforms, ["manylinux_2_36_x86_64", "linux_x86_64"]);
        assert_eq!(t.source, TargetSource::Probed);
        assert!(target_from_probe("python: not found").is_err());
    }

    /// The probe script on the host's own python: no Docker needed, the same code path.
    #[test]
    fn probe_script_runs_on_host_python() {
        let sh = Shell::new().unwrap();
        let Ok(out) = cmd!(sh, "python3 -c {PROBE_SCRIPT}").quiet().read() else {
            crate::say!("SKIPPED probe_script_runs_on_host_python: no python3 on this host");
            return;
        };
        let t = target_from_probe(&out).unwrap();
        assert!(t.abi.starts_with("cp3"), "{t:?}");
        assert!(t.platforms.iter().any(|p| p.contains("linux")), "{t:?}");
    }

    fn check_missing(files: &[&str], pins: &[&str], expected: &[&str]) {
        assert_eq!(missing_pins(files, pins), expected);
    }

    #[test]
    fn pins_against_wheel_names() {
        let files = [
            "python_jose-3.3.0-py2.py3-none-any.whl",
            "SQLAlchemy-2.0.36-cp39-cp39-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "passlib-1.7.4-py2.py3-none-any.whl",
            "zope.interface-6.0-cp39-cp39-manylinux2014_x86_64.whl",
            "ruamel.yaml.clib-0.2.8-1-cp39-cp39-manylinux2014_x86_64.whl",
            "certifi-2024.2.2-py3-none-any.whl",
            "foo-1.0-py3-none-any.tar.gz",
        ];
        check_missing(&files, &["python-jose[cryptography]==3.3.0"], &[]);
        check_missing(&files, &["Python_Jose==3.3.0"], &[]);
        check_missing(&files, &["sqlalchemy==2.0.36", "SQLAlchemy == 2.0.36"], &[]);
        check_missing(
            &files,
            &["passlib[bcrypt]==1.7.4 ; python_version >= '3'  # auth"],
            &[],
        );
        check_missing(&files, &["zope-interface==6.0.0", "zope_interface==6"], &[]);
        check_missing(&files, &["ruamel-yaml-clib==0.2.8"], &[]);
        check_missing(&files, &["certifi==2024.*", "certifi==2024.2.*"], &[]);
        check_missing(&files, &["sqlalchemy==2.0.35"], &["sqlalchemy==2.0.35"]);
        check_missing(
            &files,
            &["bcrypt==4.0.1", "foo==1.0"],
            &["bcrypt==4.0.1", "foo==1.0"],
        );
        check_missing(
            &files,
            &["fastapi>=0.100", "-r other.txt", "# comment", ""],
            &[],
        );
        check_missing(&files, &["certifi==2023.*"], &["certifi==2023.*"]);
    }

    #[test]
    fn names_normalize() {
        assert_eq!(normalize_name("Python_Jose"), "python-jose");
        assert_eq!(normalize_name("zope.interface"), "zope-interface");
        assert_eq!(normalize_name("a__b-.c"), "a-b-c");
        assert_eq!(requirement_name("passlib[bcrypt]==1.7.4"), "passlib");
        assert_eq!(requirement_name("python-jose==3.3.0"), "python-jose");
    }

    #[test]
    fn pip_messages() {
        let stderr = "ERROR: Could not find a version that satisfies the requirement bcrypt==4.0.2 \
                      (from versions: 4.0.1)\nERROR: No matching distribution found for bcrypt==4.0.2\n";
        assert_eq!(
            no_matching_distribution(stderr).as_deref(),
            Some("bcrypt==4.0.2")
        );
        assert_eq!(
            no_matching_distribution("ERROR: ResolutionImpossible"),
            None
        );
    }

    #[test]
    fn hint() {
        let hint = host_hint(Utf8Path::new("/srv/app/docker-build-cache/pip-cache"));
        assert!(hint.starts_with(
            "pip install --no-index --find-links /srv/app/docker-build-cache/pip-cache -r requirements.txt"
        ));
        assert!(
            hint.contains("PIP_NO_INDEX=1 PIP_FIND_LINKS=/srv/app/docker-build-cache/pip-cache")
        );
        assert!(host_hint(Utf8Path::new("/my dir")).contains("--find-links '/my dir' "));
    }

    /// Real PyPI: the backend's requirements for the application's python:3.9-slim (by name).
    #[test]
    fn network_export_and_verify_cpython39_manylinux() {
        let Some(cache) = crate::lab::fs::network_test("PyPI") else {
            return;
        };
        let sh = Shell::new().unwrap();
        let root = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let requirements = root.join("backend/requirements.txt");
        let (requirements, out) = if requirements.exists() {
            (requirements, cache.join("wheelhouse-cp39"))
        } else {
            let path = cache.join("requirements.txt");
            std::fs::create_dir_all(&cache).unwrap();
            std::fs::write(&path, APP_REQUIREMENTS).unwrap();
            (path, cache.join("wheelhouse-cp39"))
        };
        let target = target_from_image_name("python:3.9-slim", "amd64").unwrap();
        let report = export(
            &sh,
            std::slice::from_ref(&requirements),
            &target,
            &out,
            &Sdists::Refuse,
        )
        .unwrap();
        assert!(report.verified, "{:?}", report.verify_error);
        let names: Vec<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
        for wheel in [
            "bcrypt-4.0.1-",
            "cryptography-",
            "python_jose-3.3.0-",
            "passlib-1.7.4-",
        ] {
            assert!(
                names.iter().any(|n| n.starts_with(wheel)),
                "{wheel} missing: {names:?}"
            );
        }
        assert!(names.iter().all(|n| n.ends_with(".whl")));
        let pins = std::fs::read_to_string(&requirements).unwrap();
        let pins: Vec<&str> = pins.lines().collect();
        assert_eq!(missing_pins(&names, &pins), Vec::<&str>::new());

        // A pin the wheelhouse lacks: verify names it.
        let changed = cache.join("requirements-changed.txt");
        std::fs::write(&changed, "bcrypt==4.0.0\n").unwrap();
        let err = verify(&sh, &[changed], &target, &out).unwrap_err();
        assert!(format!("{err:#}").contains("bcrypt==4.0.0"), "{err:#}");
    }

    const APP_REQUIREMENTS: &str = "fastapi==0.115.5\nuvicorn==0.32.1\nsqlalchemy==2.0.36\n\
        httpx==0.28.1\npydantic==2.10.3\npython-dotenv==1.0.1\npasslib[bcrypt]==1.7.4\n\
        bcrypt==4.0.1\npython-jose[cryptography]==3.3.0\npython-multipart==0.0.9\n";
}
