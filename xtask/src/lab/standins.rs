//! Stand-in base images: no container registry is reachable here, so base images are made
//! from local root filesystems.
//!
//! - busybox: the host's static busybox and its applets, made in memory and imported
//!   (`docker import`) in well under a second; for small fixture projects (`FROM busybox`).
//! - The application's base images (`python:3.9-slim`, `node:18-alpine`, `nginx:alpine`,
//!   [`APP_STANDINS`]), loaded under those real names and adjusted to behave like the
//!   official images where the application can tell, so that the application builds
//!   unchanged. One debootstrap of Debian bookworm with Python 3.11, pip, venv, Node.js 18,
//!   npm 10 and nginx (minutes, most of it downloading), then one copy per image, in
//!   parallel, with every package that image does not need purged by apt (Debian's
//!   required packages stay), the other images' own files removed and, for the two
//!   Alpine-named images, also Debian's package manager, perl and the gconv, locale and
//!   time zone data that Alpine images lack; compiled bytecode (`__pycache__`) is removed
//!   as the official python image removes it. Each image is one layer of its own: the real
//!   images share no layer, and a bundle that stores base images must pay for all three
//!   (gzip sizes come out near, somewhat above, the real images': the benchmark's notes
//!   give them). The layers and the whole rootfs (the tool-bundle tests' bare server) are
//!   cached as tars across runs, and loaded with one `docker load` of an archive written
//!   on the fly.

use std::{io::Write, os::unix::fs::symlink, process::Stdio, sync::OnceLock, time::Instant};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use super::{
    fs::{cached, remove_tree, test_cache_dir, unmount_below, which},
    Engine,
};

/// The name fixture projects use for the busybox stand-in.
pub const BUSYBOX: &str = "busybox:latest";

/// Change this when the recipe of [`debian_rootfs`] changes: it names the cached rootfs.
const DEBIAN_RECIPE: &str = "bookworm-py311-node18-npm10.8.2-nginx-v5-split-nopyc";
/// npm of the official `node:18` images (Debian's own npm package has hundreds of
/// dependencies that debootstrap cannot order).
const NPM_VERSION: &str = "10.8.2";
const DEBIAN_PACKAGES: &str = "python3,python3-pip,python3-venv,nodejs,nginx-light,ca-certificates";

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An image made from the Debian rootfs: its real name, its config, and what of the rootfs
/// it keeps.
#[derive(Debug)]
pub struct StandIn {
    pub image: &'static str,
    /// Its layer's file names in the cached folder (`<slug>.tar`, `<slug>.tar.sha256`).
    pub slug: &'static str,
    pub cmd: &'static [&'static str],
    pub exposed_ports: &'static [&'static str],
    pub stop_signal: Option<&'static str>,
    /// The Debian packages it needs beyond Debian's required ones (with their
    /// dependencies); every other package is purged from its layer.
    keep: &'static [&'static str],
    /// Files made outside dpkg that belong to this image only (removed from the others).
    own: &'static [&'static str],
    /// An Alpine-based image: Debian's package manager, perl, and the gconv, locale and
    /// time zone data (which Alpine images lack) are removed too.
    alpine: bool,
}

/// The stand-ins of the application's base images, under their real names. Each has a
/// layer of its own, as the real images share no layer.
pub const APP_STANDINS: [StandIn; 3] = [
    StandIn {
        image: "python:3.9-slim",
        slug: "python",
        cmd: &["python3"],
        exposed_ports: &[],
        stop_signal: None,
        keep: &["python3", "python3-pip", "python3-venv", "ca-certificates"],
        own: &["usr/local/bin/python", "usr/local/bin/pip"],
        alpine: false,
    },
    StandIn {
        image: "node:18-alpine",
        slug: "node",
        cmd: &["node"],
        exposed_ports: &[],
        stop_signal: None,
        keep: &["nodejs", "ca-certificates"],
        own: &[
            "usr/local/lib/node_modules",
            "usr/local/bin/npm",
            "usr/local/bin/npx",
        ],
        alpine: true,
    },
    StandIn {
        image: "nginx:alpine",
        slug: "nginx",
        cmd: &["nginx", "-g", "daemon off;"],
        exposed_ports: &["80/tcp"],
        stop_signal: Some("SIGQUIT"),
        keep: &["nginx-light"],
        own: &[
            "etc/nginx",
            "var/log/nginx",
            "usr/share/nginx",
            "var/lib/nginx",
        ],
        alpine: true,
    },
];

/// What an Alpine-based stand-in drops beyond the purged packages.
const NOT_IN_ALPINE: &[&str] = &[
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/share/perl5",
    "usr/lib/apt",
    "var/lib/apt",
    "var/cache/apt",
    "var/lib/dpkg",
    "var/cache/debconf",
    "etc/apt",
    "usr/lib/locale",
    "usr/share/i18n",
    "usr/share/zoneinfo",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/bash-completion",
    "usr/share/common-licenses",
];

impl StandIn {
    /// The image config (OCI/Docker image JSON) of this stand-in over the layer `diff_id`.
    fn config(&self, diff_id: &str) -> serde_json::Value {
        let ports: serde_json::Map<String, serde_json::Value> = self
            .exposed_ports
            .iter()
            .map(|p| (p.to_string(), serde_json::json!({})))
            .collect();
        let mut config = serde_json::json!({
            "Env": [PATH, "LANG=C.UTF-8"],
            "Cmd": self.cmd,
        });
        if !ports.is_empty() {
            config["ExposedPorts"] = ports.into();
        }
        if let Some(signal) = self.stop_signal {
            config["StopSignal"] = signal.into();
        }
        serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{
                "created": "2024-01-01T00:00:00Z",
                "created_by": format!("xtask test stand-in for {} (Debian {DEBIAN_RECIPE})", self.image),
            }],
        })
    }
}

/// Imports the busybox stand-in into `engine` as [`BUSYBOX`].
pub fn load_busybox(engine: &Engine) -> anyhow::Result<()> {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    let tar = match TAR.get() {
        Some(tar) => tar,
        None => {
            let tar = busybox_rootfs_tar().context("making the busybox rootfs")?;
            TAR.get_or_init(|| tar)
        }
    };
    let sh = Shell::new()?;
    let env = format!("ENV {PATH}");
    let default_cmd = r#"CMD ["sh"]"#;
    engine
        .docker(
            &sh,
            [
                "import",
                "--change",
                &env,
                "--change",
                default_cmd,
                "-",
                BUSYBOX,
            ],
        )
        .stdin(tar)
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("importing the busybox stand-in into {}", engine.name()))
}

/// Imports into `engine`, as `reference`, an image of one layer holding one file,
/// `note.txt`, of `size` bytes `fill`: a base image with a layer of its own, in a second.
pub fn import_note_image(
    engine: &Engine,
    reference: &str,
    fill: u8,
    size: usize,
) -> anyhow::Result<()> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    let note = vec![fill; size];
    header.set_size(note.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    layer.append_data(&mut header, "note.txt", &note[..])?;
    let sh = Shell::new()?;
    engine
        .docker(&sh, ["import", "-", reference])
        .stdin(layer.into_inner()?)
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("importing {reference} into {}", engine.name()))
}

/// A tar of a busybox root filesystem: `/bin/busybox`, a link for every applet where
/// busybox would install it, `/tmp`, and the `root` and `nobody` users.
pub fn busybox_rootfs_tar() -> anyhow::Result<Vec<u8>> {
    let sh = Shell::new()?;
    let busybox_path = which("busybox").context("busybox not found")?;
    let busybox = std::fs::read(&busybox_path)?;
    let applets = cmd!(sh, "{busybox_path} --list-full").quiet().read()?;

    let mut tar = tar::Builder::new(Vec::new());
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "tmp", "var",
    ] {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        append(&mut tar, dir, tar::EntryType::Directory, mode, b"", None)?;
    }
    append(
        &mut tar,
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    )?;
    for applet in applets
        .lines()
        .filter(|a| a.contains('/') && *a != "bin/busybox")
    {
        append(
            &mut tar,
            applet,
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("/bin/busybox"),
        )?;
    }
    let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let group = "root:x:0:\nnogroup:x:65534:\n";
    append(
        &mut tar,
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        passwd.as_bytes(),
        None,
    )?;
    append(
        &mut tar,
        "etc/group",
        tar::EntryType::Regular,
        0o644,
        group.as_bytes(),
        None,
    )?;
    Ok(tar.into_inner()?)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    if let Some(link) = link {
        header.set_link_name(link)?;
    }
    tar.append_data(&mut header, path, data)?;
    Ok(())
}

/// How the stand-ins' layers go into the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandinLayer {
    /// The plain tars: the quickest load (the tests).
    Tar,
    /// gzip-compressed as a pulled image's layers are: the engine keeps the blobs as they
    /// were loaded, and `docker save` writes them as they are kept (the benchmark, whose
    /// exports should carry what real base images weigh). Compressed once, beside the
    /// cached layers.
    Gzip,
}

/// Loads the Debian stand-ins into `engine` under their real names ([`APP_STANDINS`]),
/// each over its own plain layer.
pub fn load_standins(engine: &Engine) -> anyhow::Result<()> {
    load_standins_as(engine, StandinLayer::Tar)
}

/// Loads the Debian stand-ins into `engine` under their real names ([`APP_STANDINS`]),
/// each over its own layer, stored as `layer` says; one `docker load` of an archive
/// written on the fly.
pub fn load_standins_as(engine: &Engine, layer: StandinLayer) -> anyhow::Result<()> {
    let rootfs = debian_rootfs()?;
    let started = Instant::now();
    let layers: Vec<Utf8PathBuf> = match layer {
        StandinLayer::Tar => APP_STANDINS
            .iter()
            .map(|s| rootfs.join(format!("{}.tar", s.slug)))
            .collect(),
        StandinLayer::Gzip => gzip_layers(&rootfs)?,
    };
    let mut manifest = Vec::new();
    let mut configs = Vec::new();
    for standin in &APP_STANDINS {
        let diff_id = std::fs::read_to_string(rootfs.join(format!("{}.tar.sha256", standin.slug)))?;
        let config = serde_json::to_vec(&standin.config(diff_id.trim()))?;
        let name = format!("{:x}.json", Sha256::digest(&config));
        manifest.push(serde_json::json!({
            "Config": name,
            "RepoTags": [standin.image],
            "Layers": [format!("{}/layer.tar", standin.slug)],
        }));
        configs.push((name, config));
    }

    let mut load = engine
        .docker_command(["load", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running docker load")?;
    let stdin = load.stdin.take().context("docker load's stdin")?;
    let written = (|| -> anyhow::Result<()> {
        let mut archive = tar::Builder::new(stdin);
        for (name, config) in &configs {
            let kind = tar::EntryType::Regular;
            append(&mut archive, name, kind, 0o644, config, None)?;
        }
        let manifest = serde_json::to_vec(&manifest)?;
        let kind = tar::EntryType::Regular;
        append(&mut archive, "manifest.json", kind, 0o644, &manifest, None)?;
        for (standin, layer) in APP_STANDINS.iter().zip(&layers) {
            let kind = tar::EntryType::Directory;
            append(&mut archive, standin.slug, kind, 0o755, b"", None)?;
            let name = format!("{}/layer.tar", standin.slug);
            archive.append_path_with_name(layer, name)?;
        }
        archive.into_inner()?.flush()?;
        Ok(())
    })();
    let output = load.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "docker load of the stand-in base images into {} failed: {}",
            engine.name(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    written.context("writing the stand-in images to docker load")?;
    eprintln!(
        "stand-in base images loaded into {} in {:.1}s",
        engine.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `<slug>.tar.gz` beside each cached `<slug>.tar` (gzip -6), made once, in parallel.
fn gzip_layers(rootfs: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    std::thread::scope(|scope| {
        let jobs: Vec<_> = APP_STANDINS
            .iter()
            .map(|standin| scope.spawn(move || gzip_layer(rootfs, standin.slug)))
            .collect();
        jobs.into_iter()
            .map(|job| {
                job.join()
                    .map_err(|_| anyhow::anyhow!("gzip thread panicked"))?
            })
            .collect()
    })
}

fn gzip_layer(rootfs: &Utf8Path, slug: &str) -> anyhow::Result<Utf8PathBuf> {
    let layer = rootfs.join(format!("{slug}.tar.gz"));
    if layer.exists() {
        return Ok(layer);
    }
    let sh = Shell::new()?;
    let tar = rootfs.join(format!("{slug}.tar"));
    let partial = rootfs.join(format!("{slug}.tar.gz.{}", std::process::id()));
    eprintln!("compressing a stand-in layer (gzip -6, once): {layer}");
    let mut gzip: std::process::Command = cmd!(sh, "gzip -6 -n -c {tar}").into();
    let status = gzip.stdout(std::fs::File::create(&partial)?).status()?;
    if !status.success() {
        bail!("gzip of {tar} failed ({status})");
    }
    std::fs::rename(&partial, &layer)?;
    Ok(layer)
}

/// The Debian stand-ins, made once and cached in the test cache dir: a directory with
/// `rootfs.tar` (the whole Debian rootfs, everything of all three images: the bare server
/// of the tool-bundle tests) and, for each of [`APP_STANDINS`], its own layer `<slug>.tar`
/// and that layer's SHA-256 (its diff id) in `<slug>.tar.sha256`.
pub fn debian_rootfs() -> anyhow::Result<Utf8PathBuf> {
    static ROOTFS: OnceLock<Utf8PathBuf> = OnceLock::new();
    if let Some(rootfs) = ROOTFS.get() {
        return Ok(rootfs.clone());
    }
    let cache = test_cache_dir()?;
    let rootfs = cached(&cache, &format!("standin-{DEBIAN_RECIPE}"), |scratch| {
        let started = Instant::now();
        eprintln!("making the Debian stand-in rootfs (once; cached in {cache}) …");
        let made = make_debian_rootfs(scratch)?;
        eprintln!(
            "Debian stand-in rootfs made in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        Ok(made)
    })?;
    Ok(ROOTFS.get_or_init(|| rootfs).clone())
}

fn make_debian_rootfs(scratch: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    let sh = Shell::new()?;
    // in memory: dpkg syncs a lot, and deleting the tree from disk is slow
    let mem = scratch.join("mem");
    sh.create_dir(&mem)?;
    cmd!(sh, "mount -t tmpfs -o size=4g xtask-rootfs {mem}")
        .quiet()
        .run()?;
    let rootfs = mem.join("rootfs");
    sh.create_dir(&rootfs)?;
    let out = scratch.join("out");
    sh.create_dir(&out)?;
    debootstrap(&sh, &rootfs)?;
    install_npm(&sh, scratch, &rootfs)?;
    like_official_images(&sh, &rootfs)?;
    std::thread::scope(|scope| {
        let jobs: Vec<_> = APP_STANDINS
            .iter()
            .map(|standin| {
                let (rootfs, out) = (&rootfs, &out);
                scope.spawn(move || {
                    derive_image(rootfs, out, standin)
                        .with_context(|| format!("making the layer of {}", standin.image))
                })
            })
            .collect();
        for job in jobs {
            job.join()
                .map_err(|_| anyhow::anyhow!("stand-in thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    pack_rootfs(&sh, &rootfs, &out, "rootfs")?;
    remove_tree(&mem)?;
    Ok(out)
}

/// `out/<slug>.tar`: a copy of the whole `rootfs` with every package `standin` does not
/// need purged (apt's autoremove, everything but Debian's required packages and
/// `standin.keep` marked automatic), the other images' own files removed, and for an
/// Alpine-based image what Alpine lacks ([`NOT_IN_ALPINE`]).
fn derive_image(rootfs: &Utf8Path, out: &Utf8Path, standin: &StandIn) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let copy = rootfs.with_file_name(standin.slug);
    cmd!(sh, "cp -a {rootfs} {copy}").quiet().run()?;
    let package = "${Package}\n";
    let all = cmd!(sh, "chroot {copy} dpkg-query -W -f {package}")
        .quiet()
        .read()?;
    let fields = "${Package} ${Priority} ${Essential}\n";
    let required: Vec<String> = cmd!(sh, "chroot {copy} dpkg-query -W -f {fields}")
        .quiet()
        .read()?
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                [name, "required", _] | [name, _, "yes"] => Some(name.to_owned()),
                _ => None,
            }
        })
        .collect();
    let all: Vec<&str> = all.lines().collect();
    let keep = standin.keep;
    cmd!(sh, "chroot {copy} apt-mark auto {all...}")
        .quiet()
        .ignore_stdout()
        .run()?;
    cmd!(sh, "chroot {copy} apt-mark manual {required...} {keep...}")
        .quiet()
        .ignore_stdout()
        .run()?;
    cmd!(
        sh,
        "chroot {copy} apt-get --yes --quiet -o Dpkg::Use-Pty=0
            -o APT::AutoRemove::RecommendsImportant=false
            -o APT::AutoRemove::SuggestsImportant=false
            autoremove --purge"
    )
    .quiet()
    .ignore_stdout()
    .run()?;
    let others = APP_STANDINS
        .iter()
        .filter(|other| other.slug != standin.slug)
        .flat_map(|other| other.own.iter());
    let alpine: &[&str] = if standin.alpine { NOT_IN_ALPINE } else { &[] };
    for rel in others
        .chain(alpine)
        .chain(["var/cache/apt", "var/log/apt"].iter())
    {
        let path = copy.join(rel);
        if path.is_dir() && !path.is_symlink() {
            remove_tree(&path)?;
        } else if path.symlink_metadata().is_ok() {
            std::fs::remove_file(&path)?;
        }
    }
    if standin.alpine {
        for (dir, prefixes) in [
            ("usr/bin", &["perl", "apt"][..]),
            ("usr/lib/x86_64-linux-gnu", &["libapt"][..]),
        ] {
            for entry in copy.join(dir).read_dir_utf8()? {
                let entry = entry?;
                if prefixes.iter().any(|p| entry.file_name().starts_with(p)) {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
    }
    // as the official python image does: no compiled bytecode (Debian's python3 compiles
    // the whole standard library when it is installed)
    let pycache = cmd!(sh, "find {copy} -depth -type d -name __pycache__")
        .quiet()
        .read()?;
    for dir in pycache.lines() {
        remove_tree(Utf8Path::new(dir))?;
    }
    pack_rootfs(&sh, &copy, out, standin.slug)?;
    remove_tree(&copy)
}

/// Debian bookworm with [`DEBIAN_PACKAGES`] into `rootfs`.
fn debootstrap(sh: &Shell, rootfs: &Utf8Path) -> anyhow::Result<()> {
    let mirror = debian_mirror(sh);
    cmd!(
        sh,
        "debootstrap --variant=minbase --include={DEBIAN_PACKAGES} bookworm {rootfs} {mirror...}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .with_context(|| {
        let log = rootfs.join("debootstrap/debootstrap.log");
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "debootstrap failed; the end of its log:\n{}",
            tail.join("\n")
        )
    })?;
    // debootstrap unmounts what it mounted, unless it failed half-way
    for mounted in ["proc", "sys", "dev"] {
        unmount_below(&rootfs.join(mounted))?;
    }
    Ok(())
}

/// npm as in the official node images, from the npm registry.
fn install_npm(sh: &Shell, scratch: &Utf8Path, rootfs: &Utf8Path) -> anyhow::Result<()> {
    let _dir = sh.push_dir(scratch);
    cmd!(sh, "npm pack --silent npm@{NPM_VERSION}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let modules = rootfs.join("usr/local/lib/node_modules");
    sh.create_dir(&modules)?;
    let npm_tgz = scratch.join(format!("npm-{NPM_VERSION}.tgz"));
    cmd!(sh, "tar -xzf {npm_tgz} -C {modules} --no-same-owner")
        .quiet()
        .run()?;
    std::fs::rename(modules.join("package"), modules.join("npm"))?;
    let bin = rootfs.join("usr/local/bin");
    sh.create_dir(&bin)?;
    symlink("../lib/node_modules/npm/bin/npm-cli.js", bin.join("npm"))?;
    symlink("../lib/node_modules/npm/bin/npx-cli.js", bin.join("npx"))?;
    Ok(())
}

/// What the application can tell of the official python, node and nginx images: their
/// commands, settings and users.
fn like_official_images(sh: &Shell, rootfs: &Utf8Path) -> anyhow::Result<()> {
    let bin = rootfs.join("usr/local/bin");
    // python: `python` and `pip` commands, and pip may install system-wide (no PEP 668)
    symlink("/usr/bin/python3", bin.join("python"))?;
    symlink("/usr/bin/pip3", bin.join("pip"))?;
    for marker in sh.read_dir(rootfs.join("usr/lib"))? {
        let marker = marker.join("EXTERNALLY-MANAGED");
        if marker.exists() {
            std::fs::remove_file(marker)?;
        }
    }

    // nginx: only conf.d/*.conf serve, the official default site, logs to the container's
    // stdout and stderr
    std::fs::remove_file(rootfs.join("etc/nginx/sites-enabled/default"))?;
    sh.write_file(
        rootfs.join("etc/nginx/conf.d/default.conf"),
        NGINX_DEFAULT_CONF,
    )?;
    for (log, target) in [("access.log", "/dev/stdout"), ("error.log", "/dev/stderr")] {
        let log = rootfs.join("var/log/nginx").join(log);
        if log.exists() {
            std::fs::remove_file(&log)?;
        }
        symlink(target, log)?;
    }

    // the users the official images have (`USER node`, `chown nginx`)
    append_line(
        &rootfs.join("etc/passwd"),
        "nginx:x:101:101:nginx:/nonexistent:/usr/sbin/nologin",
    )?;
    append_line(&rootfs.join("etc/group"), "nginx:x:101:")?;
    append_line(
        &rootfs.join("etc/passwd"),
        "node:x:1000:1000::/home/node:/bin/sh",
    )?;
    append_line(&rootfs.join("etc/group"), "node:x:1000:")?;
    sh.create_dir(rootfs.join("home/node"))?;
    let home = rootfs.join("home/node");
    cmd!(sh, "chown 1000:1000 {home}").quiet().run()?;

    // `wget`, which healthchecks of alpine-based services use, from the host's busybox
    let busybox = which("busybox").context("busybox not found")?;
    std::fs::copy(&busybox, bin.join("busybox"))?;
    symlink("busybox", bin.join("wget"))?;

    // slim like the official images: no package lists, docs or device nodes
    for dir in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "dev",
    ] {
        let dir = rootfs.join(dir);
        remove_tree(&dir)?;
        sh.create_dir(&dir)?;
    }
    Ok(())
}

/// `out/<name>.tar` of `rootfs` and its SHA-256 (the layer's diff id) in
/// `out/<name>.tar.sha256`.
fn pack_rootfs(sh: &Shell, rootfs: &Utf8Path, out: &Utf8Path, name: &str) -> anyhow::Result<()> {
    let tar = out.join(format!("{name}.tar"));
    cmd!(sh, "tar --numeric-owner --xattrs -C {rootfs} -cf {tar} .")
        .quiet()
        .run()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(&tar)?, &mut hasher)?;
    let diff_id = format!("sha256:{:x}\n", hasher.finalize());
    sh.write_file(out.join(format!("{name}.tar.sha256")), diff_id)?;
    Ok(())
}

const NGINX_DEFAULT_CONF: &str = "server {
    listen       80;
    server_name  localhost;
    location / {
        root   /usr/share/nginx/html;
        index  index.html index.htm;
    }
}
";

fn append_line(file: &Utf8Path, line: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(file)?;
    text.push_str(line);
    text.push('\n');
    std::fs::write(file, text)?;
    Ok(())
}

/// The Debian mirror apt uses on this machine (so debootstrap fetches from where apt
/// does); `None` leaves debootstrap's default.
fn debian_mirror(sh: &Shell) -> Option<String> {
    let sources = sh
        .read_file("/etc/apt/sources.list.d/debian.sources")
        .unwrap_or_default();
    for stanza in sources.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let suites = field("Suites:").unwrap_or_default();
        if suites.split_whitespace().any(|suite| suite == "bookworm") {
            if let Some(uri) = field("URIs:").and_then(|uris| uris.split_whitespace().next()) {
                return Some(uri.to_owned());
            }
        }
    }
    let list = sh.read_file("/etc/apt/sources.list").unwrap_or_default();
    list.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        (words.len() >= 3 && words[0] == "deb" && words[2] == "bookworm")
            .then(|| words[1].to_owned())
    })
}
