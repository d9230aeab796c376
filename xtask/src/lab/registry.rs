//! A real registry for a fleet test: CNCF Distribution, what `registry:2` runs, from
//! Debian's `docker-registry` package (`docker-registry serve config.yml`), listening on
//! 127.0.0.1 inside a [`SharedNamespace`], so that only the engines (and commands) in that
//! namespace reach it and it reaches nothing.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use camino::Utf8PathBuf;

use super::fs::{remove_tree, tail};
use super::netns::SharedNamespace;
use super::Site;

/// A running registry; stopped and its storage removed on drop.
pub struct Registry {
    root: Utf8PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry on `127.0.0.1:port` in `namespace`, storing under the site. With
    /// `htpasswd` (a line `user:bcrypt-hash`), it asks for credentials (HTTP Basic).
    pub fn start(
        site: &Site,
        namespace: &SharedNamespace,
        port: u16,
        htpasswd: Option<&str>,
    ) -> anyhow::Result<Registry> {
        let root = site.process_dir(&format!("registry-{port}"));
        remove_tree(&root)?;
        std::fs::create_dir_all(root.join("storage"))?;
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            root.join("storage")
        );
        let config = match htpasswd {
            Some(line) => {
                std::fs::write(root.join("htpasswd"), format!("{line}\n"))?;
                format!(
                    "{config}auth:\n  htpasswd:\n    realm: fleet\n    path: {}\n",
                    root.join("htpasswd")
                )
            }
            None => config,
        };
        std::fs::write(root.join("config.yml"), config)?;
        let log_path = root.join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let child = namespace
            .command("docker-registry")
            .arg("serve")
            .arg(root.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (scripts/install-test-deps.sh installs it)")?;
        let mut registry = Registry {
            root,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // any HTTP answer (401 included) means it listens
            let probe = namespace
                .command("curl")
                .args(["-s", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{port}/v2/"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if probe.success() {
                break;
            }
            if let Some(status) = registry
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "docker-registry exited ({status}); its log:\n{}",
                    tail(&log_path, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not answer in 20s; its log:\n{}",
                    tail(&log_path, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "registry up on 127.0.0.1:{port} in namespace {}",
            namespace.name()
        );
        Ok(registry)
    }

    /// `127.0.0.1:PORT`, as the engines in the namespace reach it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's log, for messages.
    pub fn log_tail(&self) -> String {
        tail(&self.root.join("registry.log"), 30)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = remove_tree(&self.root);
    }
}
