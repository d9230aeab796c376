//! Files, processes and caches of the lab: removing trees that a killed engine left mounts
//! in, finding tools, and the cache of slow-to-make inputs (the Debian stand-in rootfs).

use anyhow::Context as _;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

/// The first `tool` on `PATH`.
pub fn which(tool: &str) -> Option<Utf8PathBuf> {
    let path = std::env::var("PATH").ok()?;
    path.split(':')
        .map(|dir| Utf8Path::new(dir).join(tool))
        .find(|candidate| candidate.is_file())
}

/// A process id that names a live process.
pub fn pid_alive(pid: u32) -> bool {
    Utf8Path::new(&format!("/proc/{pid}")).exists()
}

/// For a test that needs the package registries (PyPI, npm): the folder it keeps its
/// downloads in, when `XTASK_NETWORK_TESTS=1`; otherwise prints a loud skip notice naming
/// the test and what it needs, and returns `None`.
pub fn network_test(needs: &str) -> Option<Utf8PathBuf> {
    let test = std::thread::current()
        .name()
        .unwrap_or("network test")
        .to_owned();
    if std::env::var("XTASK_NETWORK_TESTS").as_deref() != Ok("1") {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "*** SKIPPED {test}: set XTASK_NETWORK_TESTS=1 to run it (needs {needs}) ***"
        );
        return None;
    }
    Utf8PathBuf::from_path_buf(std::env::temp_dir())
        .ok()
        .map(|tmp| tmp.join("xtask-network-tests"))
}

/// Where slow-to-make lab inputs (the Debian stand-in rootfs, and the tests' wheelhouses
/// and npm caches) are kept across runs: `$XTASK_TEST_CACHE`, else `~/.cache/xtask-tests`.
/// The tests and the benchmark share it.
pub fn test_cache_dir() -> anyhow::Result<Utf8PathBuf> {
    let dir = match std::env::var("XTASK_TEST_CACHE") {
        Ok(dir) if !dir.is_empty() => Utf8PathBuf::from(dir),
        _ => {
            let home = std::env::var("HOME").context("neither XTASK_TEST_CACHE nor HOME is set")?;
            Utf8PathBuf::from(home).join(".cache/xtask-tests")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating test cache {dir}"))?;
    Ok(dir)
}

/// Makes `key` in `cache` once, across threads and processes: returns the cached path if
/// it exists; otherwise, holding a file lock, calls `make` with a fresh scratch dir beside
/// it and renames what `make` returns into place, so that a killed run leaves no half-made
/// entry (only scratch dirs, removed by the next maker).
pub fn cached(
    cache: &Utf8Path,
    key: &str,
    make: impl FnOnce(&Utf8Path) -> anyhow::Result<Utf8PathBuf>,
) -> anyhow::Result<Utf8PathBuf> {
    let target = cache.join(key);
    if target.exists() {
        return Ok(target);
    }
    let lock_path = cache.join(format!("{key}.lock"));
    let lock =
        std::fs::File::create(&lock_path).with_context(|| format!("creating {lock_path}"))?;
    lock.lock()
        .with_context(|| format!("locking {lock_path}"))?;
    if target.exists() {
        return Ok(target); // made by another process while we waited
    }
    let scratch_prefix = format!("{key}.scratch-");
    for entry in cache.read_dir_utf8()? {
        let entry = entry?;
        if entry.file_name().starts_with(&scratch_prefix) {
            remove_tree(entry.path())?;
        }
    }
    let scratch = cache.join(format!("{scratch_prefix}{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let made = match make(&scratch) {
        Ok(made) => made,
        Err(err) => {
            remove_tree(&scratch)?;
            return Err(err.context(format!("making {target}")));
        }
    };
    std::fs::rename(&made, &target).with_context(|| format!("renaming {made} to {target}"))?;
    remove_tree(&scratch)?;
    Ok(target)
}

/// Removes `dir` and everything in it, after unmounting whatever is mounted below it
/// (a killed dockerd or debootstrap leaves mounts, which `remove_dir_all` would descend).
pub fn remove_tree(dir: &Utf8Path) -> anyhow::Result<()> {
    if dir.symlink_metadata().is_err() {
        return Ok(());
    }
    unmount_below(dir)?;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {dir}"))
}

/// Unmounts (lazily, deepest first) every mount point at or below `dir`.
pub fn unmount_below(dir: &Utf8Path) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut below: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(unescape_mount_path)
        .filter(|mount| Utf8Path::new(mount).starts_with(dir))
        .collect();
    below.sort_by_key(|mount| std::cmp::Reverse(mount.len()));
    below.dedup();
    let sh = Shell::new()?;
    for mount in below {
        cmd!(sh, "umount --lazy {mount}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .run()?;
    }
    Ok(())
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|oct| u8::from_str_radix(oct, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// SIGKILLs every process whose command line names a path below `root` (a dockerd whose
/// owner was killed, its containerd, the containerd shims).
pub fn kill_processes_using(root: &Utf8Path) -> anyhow::Result<()> {
    let needle = format!("{root}/");
    let sh = Shell::new()?;
    for _ in 0..50 {
        let mut pids = Vec::new();
        for entry in Utf8Path::new("/proc").read_dir_utf8()? {
            let entry = entry?;
            let Ok(pid) = entry.file_name().parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                pids.push(pid.to_string());
            }
        }
        if pids.is_empty() {
            return Ok(());
        }
        cmd!(sh, "kill -KILL {pids...}")
            .quiet()
            .ignore_stderr()
            .ignore_status()
            .run()?;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    anyhow::bail!("processes using {root} survive SIGKILL")
}

/// The last `lines` lines of a text file (a log), for error messages.
pub fn tail(path: &Utf8Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A plain HTTP/1.0 GET on the loopback `address` ("127.0.0.1:port"), retried for a few
/// seconds while the server starts; returns the whole response. For ports that a lab
/// engine's containers publish.
pub fn http_get(address: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(address)?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match attempt {
            Ok(response) if !response.is_empty() => return Ok(response),
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            Ok(_) => anyhow::bail!("GET {path} on {address}: empty response"),
            Err(err) => anyhow::bail!("GET {path} on {address}: {err}"),
        }
    }
}

/// Scratch folders for tests (the unit tests and the integration tests share them).
mod scratch {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use camino::{Utf8Path, Utf8PathBuf};

    /// A new, empty folder `<temp dir>/xtask-<name>-<pid>-<n>`, removed on drop.
    pub struct Scratch(Utf8PathBuf);

    impl Scratch {
        pub fn new(name: &str) -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir())
                .expect("a UTF-8 temp dir")
                .join(format!(
                    "xtask-{name}-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating a test folder");
            Scratch(dir)
        }

        pub fn path(&self) -> &Utf8Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A new, empty folder for a unit test that outlives the test (for a look after a
    /// failure): `<temp dir>/xtask-<name>-<pid>`, whatever an earlier run left there removed.
    pub fn test_dir(name: &str) -> Utf8PathBuf {
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .expect("a UTF-8 temp dir")
            .join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a test folder");
        dir
    }
}
pub use scratch::{test_dir, Scratch};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_paths() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b\011c"), "/tmp/a b\tc");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
    }
}
