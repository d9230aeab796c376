//! Issue 17: the tool travels with the bundle. On a server as bare as the real ones (a
//! Debian root filesystem with sh, coreutils, Docker's client and its compose and buildx
//! plugins, and no cargo, no rustc, no ~/.cargo: a chroot talking to an engine in a
//! network namespace with only loopback), the bundle arrives packed in parts, and
//! `sh import-docker-build-cache.sh --pack INDEX --patch-compose FILE` (written beside the
//! parts by cache-pack) checks and unpacks them, then the bundle's own
//! import-build-cache.sh loads, runs the bundled static xtask and patches; `docker compose
//! build` then takes every step from the cache, and the built stack answers. On the same
//! offline network, with Rust but an empty CARGO_HOME, `cargo xtask` builds from the
//! bundle's vendored crates and checks the patched file.
//!
//! The static binary is built once per version of the sources (`lab::static_xtask`, kept
//! in the test cache) and handed to the export with `--tool-binary`. The cargo proof keeps
//! its unpacked crates and its target folder in the test cache too: the first run builds
//! every crate (about 1.5 min on 2 cores), later runs with the same Cargo.lock only xtask.

use anyhow::{ensure, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::bundle_e2e::{ensure_fixture_steps_cached, write_fixture, xtask};
use crate::support::run::Scratch;
use crate::support::{self, repo_root, standins, unmount_below, EngineOptions};

/// A service of the fixture that answers HTTP, built from the bundle like the others.
const SITE_DOCKERFILE: &str = "\
FROM busybox:latest
RUN sleep 1 && mkdir /www && echo site-built > /www/built.txt
COPY index.html /www/index.html
CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]
";

// (No `\` line continuation: it would eat the first line's indentation.)
const SITE_SERVICE: &str = concat!(
    "  site:\n",
    "    build: ./site\n",
    "    image: fixture-site:latest\n",
    "    ports:\n",
    "      - \"127.0.0.1:18080:8080\"\n",
);

/// The PATH of the bare server: no ~/.cargo/bin, nothing of Rust.
const BARE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Unmounts what the chroot mounted before its folder is removed.
struct Mounted(Utf8PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(err) = unmount_below(&self.0) {
            eprintln!("warning: unmounting below {}: {err:#}", self.0);
        }
    }
}

/// The bare server's root: the Debian stand-in's files, device nodes for /dev, Docker's
/// client and plugins copied from the host, the engine's socket at /run/docker.sock.
fn bare_server(sh: &Shell, root: &Utf8Path, socket: &Utf8Path) -> anyhow::Result<Mounted> {
    let rootfs = standins::debian_rootfs()?.join("rootfs.tar");
    std::fs::create_dir_all(root)?;
    cmd!(sh, "tar -xf {rootfs} -C {root}").quiet().run()?;
    for (name, minor) in [
        ("null", "3"),
        ("zero", "5"),
        ("random", "8"),
        ("urandom", "9"),
    ] {
        let node = root.join("dev").join(name);
        cmd!(sh, "mknod -m 666 {node} c 1 {minor}").quiet().run()?;
    }
    let docker = xtask::lab::which("docker").context("no docker client on this host")?;
    let plugins = root.join("usr/libexec/docker/cli-plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(&docker, root.join("usr/local/bin/docker"))?;
    for plugin in ["docker-compose", "docker-buildx"] {
        let from = Utf8Path::new("/usr/libexec/docker/cli-plugins").join(plugin);
        std::fs::copy(&from, plugins.join(plugin)).with_context(|| format!("copying {from}"))?;
    }
    for rust in [
        "usr/bin/cargo",
        "usr/bin/rustc",
        "usr/local/bin/cargo",
        "usr/local/bin/rustc",
        "root/.cargo",
        "root/.rustup",
    ] {
        ensure!(!root.join(rust).exists(), "the bare server has {rust}");
    }
    let mounted = Mounted(root.to_owned());
    let target = root.join("run/docker.sock");
    std::fs::create_dir_all(root.join("run"))?;
    std::fs::write(&target, "")?;
    cmd!(sh, "mount --bind {socket} {target}").quiet().run()?;
    let proc = root.join("proc");
    cmd!(sh, "mount -t proc proc {proc}").quiet().run()?;
    Ok(mounted)
}

/// `ARGS` run in the chroot `root` with the bare server's environment; stdout and
/// stderr together, or an error with them.
fn in_chroot(sh: &Shell, root: &Utf8Path, args: &[&str]) -> anyhow::Result<String> {
    let out = cmd!(
        sh,
        "chroot {root} env -i PATH={BARE_PATH} HOME=/root DOCKER_HOST=unix:///run/docker.sock {args...}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "`{}` in the bare server failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    Ok(text)
}

/// A GET of `url` from inside the network namespace `netns`, retried while the stack
/// starts: the body.
fn get_in(sh: &Shell, netns: &str, url: &str) -> anyhow::Result<String> {
    const SCRIPT: &str = "import sys, urllib.request\n\
        print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end='')\n";
    let net = format!("--net=/run/netns/{netns}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = cmd!(sh, "nsenter {net} python3 -c {SCRIPT} {url}")
            .ignore_status()
            .quiet()
            .output()?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "GET {url} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The size cache-export's `Part` line gives for `part` (e.g. `bin/`).
fn part_line<'a>(export: &'a str, part: &str) -> Option<&'a str> {
    export
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("Part {part} ")))
}

#[test]
fn a_bare_server_imports_patches_and_builds_with_what_the_bundle_carries() -> anyhow::Result<()> {
    let Some(suite) = support::docker_suite() else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let binary = xtask::lab::static_xtask(&repo_root())?;
    eprintln!(
        "static xtask ready after {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let online = suite.engine("online-tool", EngineOptions::default())?;
    standins::load_busybox(&online)?;
    let offline = suite.engine(
        "offline-tool",
        EngineOptions {
            network_namespace: true,
            ..EngineOptions::default()
        },
    )?;
    let netns = offline
        .network_namespace()
        .context("the offline engine has its own network namespace")?
        .to_string();

    let tmp = Scratch::new("tool");
    let src = tmp.path().join("release");
    write_fixture(&src)?;
    std::fs::create_dir_all(src.join("site"))?;
    std::fs::write(src.join("site/Dockerfile"), SITE_DOCKERFILE)?;
    std::fs::write(src.join("site/index.html"), "hello from the bare server\n")?;
    let compose = std::fs::read_to_string(src.join("compose.yaml"))?;
    let compose = compose.replace("  cache:\n", &format!("{SITE_SERVICE}  cache:\n"));
    std::fs::write(src.join("compose.yaml"), compose)?;

    let online_sh = online.shell()?;
    let export = xtask(
        &online_sh,
        &src,
        &["cache-export", "--tool-binary", binary.as_str()],
    )
    .context("export with the tool")?;
    let (bin_part, tool_part) = (part_line(&export, "bin/"), part_line(&export, "tool/"));
    eprintln!(
        "bundle growth from carrying the tool: {} ; {}",
        bin_part.unwrap_or("?"),
        tool_part.unwrap_or("?")
    );
    ensure!(bin_part.is_some() && tool_part.is_some(), "{export}");
    let bundle = src.join("docker-build-cache");
    let manifest = std::fs::read_to_string(bundle.join("manifest.yaml"))?;
    ensure!(
        manifest.contains("binary: bin/xtask")
            && manifest.contains("target: x86_64-unknown-linux-gnu")
            && manifest.contains("vendor: tool/xtask-vendor.tar.gz"),
        "{manifest}"
    );
    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS"))?;
    ensure!(
        sums.contains("  bin/xtask\n") && sums.contains("  tool/xtask-vendor.tar.gz\n"),
        "{sums}"
    );
    // A re-export with the same sources reuses both.
    let again = xtask(
        &online_sh,
        &src,
        &["cache-export", "--tool-binary", binary.as_str()],
    )?;
    ensure!(
        again.contains("Reusing bin/xtask and tool/xtask-vendor.tar.gz (same xtask sources)"),
        "{again}"
    );

    // The bare server: the project and the bundle under /srv/app, nothing else.
    let sh = Shell::new()?;
    let root = tmp.path().join("server-root");
    let _mounted = bare_server(&sh, &root, &offline.root().join("docker.sock"))?;
    let app = root.join("srv/app");
    std::fs::create_dir_all(root.join("srv"))?;
    cmd!(sh, "cp -a {src} {app}").quiet().run()?;
    // The bundle arrives packed in parts (a release page, a USB disk) with the sh importer
    // cache-pack writes beside them; the server has no xtask to unpack them with.
    std::fs::remove_dir_all(app.join("docker-build-cache"))?;
    let usb = root.join("media/usb");
    xtask(
        &online_sh,
        &src,
        &[
            "cache-pack",
            "--split",
            "8M",
            "--output",
            &format!("{usb}/"),
        ],
    )?;
    // The digest to require: the re-export's (its manifest has a new `created:`).
    let digest = again
        .lines()
        .find_map(|l| l.trim().strip_prefix("Digest "))
        .and_then(|l| l.split_whitespace().next())
        .with_context(|| format!("no digest in the export's output:\n{again}"))?
        .to_string();

    let import = in_chroot(
        &sh,
        &root,
        &[
            "sh",
            "/media/usb/import-docker-build-cache.sh",
            "--pack",
            "/media/usb/docker-build-cache.pack-index",
            "--bundle",
            "/srv/app/docker-build-cache",
            "--patch-compose",
            "/srv/app/compose.yaml",
            &digest,
        ],
    )?;
    eprintln!("import-docker-build-cache.sh on the bare server:\n{import}");
    for said in [
        "parts against docker-build-cache.pack-index...",
        format!("Unpacked bundle {digest} into /srv/app/docker-build-cache").as_str(),
        "Checking bin/xtask (its sha256 in SHA256SUMS) before running it...",
        "Digest ",
        "Finished import of",
        "Done. Next: docker compose -f /srv/app/compose.yaml build",
    ] {
        ensure!(
            import.contains(said),
            "the import did not say {said:?}:\n{import}"
        );
    }
    let patched = std::fs::read_to_string(app.join("compose.yaml"))?;
    ensure!(
        patched.contains("type=local,src=/srv/app/docker-build-cache/build-cache"),
        "{patched}"
    );
    let proof = offline.prove_offline(Some(standins::BUSYBOX))?;
    eprintln!("offline engine {}: {proof:?}", offline.name());

    let log = in_chroot(
        &sh,
        &root,
        &[
            "docker",
            "compose",
            "-f",
            "/srv/app/compose.yaml",
            "--progress",
            "plain",
            "build",
        ],
    )?;
    ensure_fixture_steps_cached(&log)?;
    for step in [
        "RUN sleep 1 && mkdir /www",
        "COPY index.html /www/index.html",
    ] {
        ensure!(
            log.lines().any(|l| l.contains(step)),
            "no step {step:?} in the build's log:\n{log}"
        );
    }
    in_chroot(
        &sh,
        &root,
        &[
            "docker",
            "compose",
            "-f",
            "/srv/app/compose.yaml",
            "up",
            "-d",
            "site",
        ],
    )?;
    let page = get_in(&sh, &netns, "http://127.0.0.1:18080/index.html");
    let built = get_in(&sh, &netns, "http://127.0.0.1:18080/built.txt");
    in_chroot(
        &sh,
        &root,
        &["docker", "compose", "-f", "/srv/app/compose.yaml", "down"],
    )?;
    ensure!(page? == "hello from the bare server\n");
    ensure!(built? == "site-built\n");

    cargo_builds_from_the_vendored_crates(&sh, tmp.path(), &src, &netns, &offline)?;
    eprintln!("whole test: {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The second proof: a checkout of the repository (its Cargo files and xtask/) on a
/// machine with Rust, an empty CARGO_HOME and only loopback (the offline engine's
/// namespace, entered with nsenter) runs `cargo xtask patch-compose` on a copy of the
/// exported project: cargo builds xtask from the bundle's vendored crates, and it patches.
/// The crates unpack to a folder of the test cache named by the archive's digest, and the
/// build's target folder is kept there too: cargo keys a crate's build on its path, so a
/// later run with the same crates compiles only xtask. (Not the workspace's target/: that
/// would overwrite target/debug/xtask, which the other tests run.)
fn cargo_builds_from_the_vendored_crates(
    sh: &Shell,
    tmp: &Utf8Path,
    project: &Utf8Path,
    netns: &str,
    offline: &support::Engine,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let checkout = tmp.join("checkout");
    let repo = repo_root();
    std::fs::create_dir_all(checkout.join(".cargo"))?;
    std::fs::create_dir_all(checkout.join("xtask"))?;
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "xtask/Cargo.toml",
    ] {
        std::fs::copy(repo.join(file), checkout.join(file))?;
    }
    // New modification times (`cp -r`, not `cp -a`): cargo keys a path package's freshness
    // on them, and xtask must compile here, from the vendored crates.
    let (from, to) = (repo.join("xtask/src"), checkout.join("xtask/src"));
    cmd!(sh, "cp -r {from} {to}").quiet().run()?;
    let server = tmp.join("rust-server");
    cmd!(sh, "cp -a {project} {server}").quiet().run()?;
    let vendor = server.join("docker-build-cache/tool/xtask-vendor.tar.gz");
    let vendor_digest = cmd!(sh, "sha256sum {vendor}").read()?;
    let cache = xtask::lab::test_cache_dir()?;
    let crates = xtask::lab::cached(
        &cache,
        &format!("xtask-vendor-{}", &vendor_digest[..16]),
        |scratch| {
            let dir = scratch.join("made");
            std::fs::create_dir_all(&dir)?;
            cmd!(sh, "tar -xzf {vendor} -C {dir}").quiet().run()?;
            Ok(dir)
        },
    )?;
    let config = crates.join("xtask-vendor/cargo-config.toml");
    let target_dir = cache.join("xtask-vendored-target");
    let empty_home = tmp.join("empty-cargo-home");
    std::fs::create_dir_all(&empty_home)?;
    // The toolchain's own cargo and rustc (not rustup's proxies in ~/.cargo/bin).
    let cargo = cmd!(sh, "rustup which cargo").read()?;
    let rustc = cmd!(sh, "rustup which rustc").read()?;
    let toolchain_bin = Utf8Path::new(&cargo).parent().context("cargo's folder")?;
    let path = format!("{toolchain_bin}:{BARE_PATH}");
    let net = format!("--net=/run/netns/{netns}");
    let compose = server.join("compose.yaml");
    let _cd = sh.push_dir(&checkout);
    let docker: Vec<String> = offline
        .env()
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let out = cmd!(
        sh,
        "nsenter {net} env -i PATH={path} HOME={tmp} CARGO_HOME={empty_home} RUSTC={rustc} CARGO_TARGET_DIR={target_dir} {docker...} {cargo} --config {config} xtask -f {compose} patch-compose"
    )
    .ignore_status()
    .quiet()
    .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "cargo xtask from the vendored crates, offline, failed:\n{text}"
    );
    ensure!(
        text.contains("Compiling xtask v0.1.0") && text.contains(&format!("Patched {compose}")),
        "{text}"
    );
    let patched = std::fs::read_to_string(&compose)?;
    let cache_from = format!("type=local,src={server}/docker-build-cache/build-cache");
    ensure!(patched.contains(&cache_from), "{patched}");
    ensure!(
        !empty_home.join("registry").exists(),
        "cargo filled {empty_home}/registry: it did not build from the vendored crates"
    );
    let compiled: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Compiling "))
        .collect();
    eprintln!(
        "cargo xtask built from the vendored crates, offline, in {:.0}s; compiled: {compiled:?}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
