//! A build context as a build is sent it: every file under the context folder that its
//! `.dockerignore` (`model::dockerignore`, the Dockerfile-specific one first) does not
//! leave out, the Dockerfile and the `.dockerignore` always, each with its sha256. The
//! export records it per service; `cache-status` compares the context now with it.

use std::collections::BTreeMap;

use anyhow::Context as _;
use camino::{Utf8Path, Utf8PathBuf};

use crate::bundle;
use crate::model::dockerignore::{self, Patterns};

/// The files the build of `context` (with `dockerfile`) is sent: context-relative path →
/// sha256 (of the content; of `symlink:<target>` for a symbolic link, which is sent as a
/// link). Folders in `skip` (the bundle, when it lies inside a context) are left out.
pub fn fingerprint(
    context: &Utf8Path,
    dockerfile: Option<&Utf8Path>,
    skip: &[&Utf8Path],
) -> anyhow::Result<BTreeMap<String, String>> {
    let read = |p: &Utf8Path| std::fs::read_to_string(p);
    let (patterns, _) = dockerignore::for_build(&read, context, dockerfile);
    let mut always = vec![".dockerignore".to_string()];
    if let Some(rel) = dockerfile.and_then(|d| d.strip_prefix(context).ok()) {
        always.push(rel.to_string());
    }
    let walk = Walk {
        patterns: &patterns,
        always: &always,
        skip,
    };
    let mut files = Vec::new();
    let mut links = BTreeMap::new();
    walk.folder(context, "", &mut files, &mut links)
        .with_context(|| format!("reading the build context {context}"))?;
    let mut out = links;
    let hashed = bundle::hash_files(context, &files, &|_, _| {});
    for (rel, result) in files.into_iter().zip(hashed) {
        let (_, digest) = result.with_context(|| format!("hashing {}", context.join(&rel)))?;
        out.insert(rel, digest);
    }
    Ok(out)
}

struct Walk<'a> {
    patterns: &'a Patterns,
    always: &'a [String],
    skip: &'a [&'a Utf8Path],
}

impl Walk<'_> {
    fn folder(
        &self,
        dir: &Utf8Path,
        prefix: &str,
        files: &mut Vec<String>,
        links: &mut BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {dir}"))? {
            let entry = entry.with_context(|| format!("listing {dir}"))?;
            let name = entry.file_name().into_string().map_err(|name| {
                anyhow::anyhow!("{dir} holds {name:?}, a name that is not UTF-8")
            })?;
            entries.push(name);
        }
        entries.sort();
        for name in entries {
            let path: Utf8PathBuf = dir.join(&name);
            let rel = format!("{prefix}{name}");
            let meta =
                std::fs::symlink_metadata(&path).with_context(|| format!("reading {path}"))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                if self.skip.contains(&path.as_path()) {
                    continue;
                }
                // A folder left out is not entered, unless an exception may bring back
                // something inside it.
                if self.patterns.excludes(&rel) && !self.patterns.has_exceptions() {
                    continue;
                }
                self.folder(&path, &format!("{rel}/"), files, links)?;
                continue;
            }
            let sent = self.always.contains(&rel) || !self.patterns.excludes(&rel);
            if !sent {
                continue;
            }
            if kind.is_symlink() {
                let target =
                    std::fs::read_link(&path).with_context(|| format!("reading {path}"))?;
                let text = format!("symlink:{}", target.to_string_lossy());
                links.insert(rel, bundle::hex(&sha2_digest(text.as_bytes())));
            } else if kind.is_file() {
                files.push(rel);
            }
            // Sockets, pipes and devices: not sent.
        }
        Ok(())
    }
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).to_vec()
}

/// What differs between the recorded context (`then`) and the context now: files whose
/// content changed, files added, files removed; each sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

pub fn compare(then: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Changes {
    let mut changes = Changes::default();
    for (path, digest) in now {
        match then.get(path) {
            Some(old) if old == digest => {}
            Some(_) => changes.changed.push(path.clone()),
            None => changes.added.push(path.clone()),
        }
    }
    changes.removed = then
        .keys()
        .filter(|p| !now.contains_key(*p))
        .cloned()
        .collect();
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Utf8Path, files: &[(&str, &str)]) {
        for (rel, text) in files {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    /// What the fingerprint holds is what the build is sent: the `.dockerignore` applied
    /// (folders, exceptions), the Dockerfile and `.dockerignore` always, the bundle never.
    #[test]
    fn the_fingerprint_holds_what_the_build_is_sent() {
        let root = crate::lab::test_dir("context-walk");
        write(
            &root,
            &[
                ("Dockerfile", "FROM busybox\n"),
                (
                    ".dockerignore",
                    "Dockerfile\n**/*.log\nnode_modules\nbuild\n!build/keep.txt\n",
                ),
                ("app/main.py", "print(1)\n"),
                ("app/debug.log", "x\n"),
                ("node_modules/a/index.js", "x\n"),
                ("build/keep.txt", "k\n"),
                ("build/drop.txt", "d\n"),
                ("docker-build-cache/manifest.yaml", "x\n"),
            ],
        );
        std::os::unix::fs::symlink("app/main.py", root.join("link")).unwrap();
        let bundle_dir = root.join("docker-build-cache");
        let dockerfile = root.join("Dockerfile");
        let files = fingerprint(&root, Some(&dockerfile), &[&bundle_dir]).unwrap();
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                ".dockerignore",
                "Dockerfile",
                "app/main.py",
                "build/keep.txt",
                "link"
            ]
        );
        assert_eq!(
            files["app/main.py"],
            bundle::hex(&sha2_digest(b"print(1)\n"))
        );

        // Beside the Dockerfile, `<name>.dockerignore` wins over the context's.
        write(&root, &[("Dockerfile.dockerignore", "app\n")]);
        let files = fingerprint(&root, Some(&dockerfile), &[&bundle_dir]).unwrap();
        assert!(!files.contains_key("app/main.py"), "{files:?}");
        assert!(files.contains_key("build/drop.txt"), "{files:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn changes_are_named_by_kind() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let then = map(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let now = map(&[("a", "1"), ("b", "9"), ("d", "4")]);
        assert_eq!(
            compare(&then, &now),
            Changes {
                changed: vec!["b".into()],
                added: vec!["d".into()],
                removed: vec!["c".into()],
            }
        );
    }
}
