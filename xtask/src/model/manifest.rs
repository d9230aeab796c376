//! The bundle's manifest (`manifest.yaml`) and checksum list (`SHA256SUMS`).
//!
//! `manifest.yaml` is what the tool reads: format version, what made the bundle, the
//! strategy, every image with its ID, every file with its size and sha256, and the
//! fingerprints of the inputs (Dockerfiles, requirements, lockfiles). `SHA256SUMS` is the
//! same file list in `sha256sum -c` form, for operators and the POSIX import script; the
//! two must agree.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// Bumped when a reader of an older version could not understand a newer bundle.
pub const FORMAT_VERSION: u32 = 1;
/// Written by a bundle whose images are kept as an [`ImageLayout`] (no `base-images.tar`).
pub const LAYOUT_FORMAT_VERSION: u32 = 2;
/// The newest format this xtask reads.
pub const MAX_FORMAT_VERSION: u32 = LAYOUT_FORMAT_VERSION;

pub const MANIFEST_FILE: &str = "manifest.yaml";
pub const SUMS_FILE: &str = "SHA256SUMS";
pub const HUMAN_MANIFEST_FILE: &str = "cache-manifest.txt";
pub const IMPORT_SCRIPT: &str = "import-build-cache.sh";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// BuildKit `type=local` cache directories (every stage); needs the containerd store.
    Local,
    /// Cache images built with inline cache, one per stage; needs the classic store.
    Inline,
    /// The classic builder (`DOCKER_BUILDKIT=0`) and cache images per stage.
    Legacy,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::Local, Strategy::Inline, Strategy::Legacy];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Local => "local",
            Strategy::Inline => "inline",
            Strategy::Legacy => "legacy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Gzip,
    None,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::Zstd, Compression::Gzip, Compression::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }

    /// The suffix after `.tar`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Zstd => ".zst",
            Compression::Gzip => ".gz",
            Compression::None => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub tool_version: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub project_name: String,
    pub engine: EngineSummary,
    pub strategy: Strategy,
    pub compression: Compression,
    /// The images archive (`base-images.tar…`, or the layout below) holds these.
    pub images: Vec<ImageEntry>,
    /// The images archive kept as its files rather than as one tar: its blobs live in the
    /// build cache's blob store, so a layer both hold is stored once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_layout: Option<ImageLayout>,
    pub services: Vec<ServiceEntry>,
    /// Every file of the bundle but the manifest and SHA256SUMS themselves.
    pub files: Vec<FileEntry>,
}

/// The `docker save` stream, entry by entry: `docker load` gets the same tar back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageLayout {
    pub entries: Vec<LayoutEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutEntry {
    /// The entry's name in the tar, e.g. `blobs/sha256/<hex>` or `index.json`.
    pub name: String,
    /// The bundle file holding its bytes, e.g. `build-cache/blobs/sha256/<hex>`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSummary {
    pub server_version: String,
    pub arch: String,
    pub containerd_store: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub name: String,
    pub id: String,
    pub role: ImageRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageRole {
    Base,
    BuildCache,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceEntry {
    pub name: String,
    /// Bundle-relative folder of the BuildKit local cache (strategy `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_cache: Option<String>,
    /// The service's tag in that folder (`tag=` of `type=local`): one folder holds every
    /// service's cache, so layers they share (their base images) are stored once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_cache_tag: Option<String>,
    /// Cache images (strategies `inline` and `legacy`), final stage last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_images: Vec<String>,
    /// Bundle-relative wheelhouse for the image's Python (`pip-cache/<service>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wheelhouse: Option<String>,
    /// Bundle-relative npm cache holding every tarball of the lockfile the image installs
    /// (the build context `npm-cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npm_cache: Option<String>,
    /// The image's libc, as npm sees it, when `npm_cache` holds that platform's packages
    /// only (absent: every libc of the engine's os/cpu).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npm_libc: Option<String>,
    /// The host's packages the image's cache lacks (e.g. glibc builds for a musl image):
    /// merged into ~/.npm at import, never handed to a build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npm_host_cache: Option<String>,
    /// The npm cache as an image (`<project>-<service>-npm-cache:<diff ID>`), made from
    /// `npm_cache` by cache-export and again by cache-import, byte for byte (npm_image.rs):
    /// patch-compose hands it to the build as `docker-image://` when the engine has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npm_image: Option<String>,
    /// Build contexts handed to the build: context name → bundle-relative folder.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contexts: BTreeMap<String, String>,
    /// Build args the export used and patch-compose writes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// sha256 of each input, by path relative to the compose file's folder.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// sha256 of every file the build context sends (its `.dockerignore` applied), by path
    /// relative to the context: what `cache-status` compares the code with. Absent in
    /// bundles made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_files: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Bundle-relative, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn to_yaml(&self) -> String {
        let body = serde_yaml::to_string(self).expect("a manifest always serialises");
        format!(
            "# Written by `cargo xtask cache-export`; read by cache-import, cache-verify,\n\
             # cache-status and patch-compose. Do not edit: SHA256SUMS must agree with it.\n{body}"
        )
    }

    /// Reads a manifest; a newer format version is refused with what to do.
    pub fn from_yaml(text: &str) -> anyhow::Result<Manifest> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_yaml::from_str(text)
            .context("manifest.yaml is not a bundle manifest (no format_version)")?;
        if version.format_version > MAX_FORMAT_VERSION {
            bail!(
                "manifest.yaml has format version {}, this xtask reads up to {MAX_FORMAT_VERSION}; \
                 update the repository (and xtask) on this machine to the one that exported the bundle",
                version.format_version
            );
        }
        let manifest: Manifest =
            serde_yaml::from_str(text).context("manifest.yaml is malformed")?;
        manifest.check_paths()?;
        Ok(manifest)
    }

    /// Every folder a service entry names must stay inside the bundle: the checksums cover
    /// the file list, not these fields, and import and patch-compose act on them.
    fn check_paths(&self) -> anyhow::Result<()> {
        if let Some(layout) = &self.image_layout {
            for entry in &layout.entries {
                let listed = self.files.iter().any(|f| f.path == entry.path);
                if !is_safe_relative_path(&entry.name)
                    || entry.name.len() > 100
                    || !is_safe_relative_path(&entry.path)
                    || !listed
                {
                    bail!(
                        "manifest.yaml: image_layout entry {:?} ({:?}) is not a file of the \
                         bundle; this bundle was not written by cache-export: do not import it",
                        entry.name,
                        entry.path
                    );
                }
            }
        }
        for service in &self.services {
            let named = [
                ("build_cache", service.build_cache.as_ref()),
                ("wheelhouse", service.wheelhouse.as_ref()),
                ("npm_cache", service.npm_cache.as_ref()),
                ("npm_host_cache", service.npm_host_cache.as_ref()),
            ]
            .into_iter()
            .filter_map(|(field, value)| value.map(|v| (field.to_string(), v)))
            .chain(
                service
                    .contexts
                    .iter()
                    .map(|(name, value)| (format!("contexts.{name}"), value)),
            );
            if let Some(libc) = &service.npm_libc {
                if !matches!(libc.as_str(), "glibc" | "musl") {
                    bail!(
                        "manifest.yaml: service {}: npm_libc is {libc:?}, not glibc or musl",
                        service.name
                    );
                }
            }
            if let Some(image) = &service.npm_image {
                if !is_npm_image_reference(image) || service.npm_cache.is_none() {
                    bail!(
                        "manifest.yaml: service {}: npm_image is {image:?}, not an npm cache \
                         image cache-export makes; this bundle was not written by cache-export: \
                         do not import it",
                        service.name
                    );
                }
            }
            if let Some(tag) = &service.build_cache_tag {
                if !is_safe_tag(tag) {
                    bail!(
                        "manifest.yaml: service {}: build_cache_tag is {tag:?}, not a tag \
                         (letters, digits, '.', '_', '-'); this bundle was not written by \
                         cache-export: do not import it",
                        service.name
                    );
                }
            }
            for (field, value) in named {
                if !is_safe_relative_path(value) || value.contains(',') || value.contains('=') {
                    bail!(
                        "manifest.yaml: service {}: {field} is {value:?}, a path outside the \
                         bundle; this bundle was not written by cache-export: do not import it",
                        service.name
                    );
                }
            }
        }
        Ok(())
    }

    /// `SHA256SUMS` text: `<hex>  <path>` lines, sorted by path.
    pub fn sha256sums(&self) -> String {
        let mut files: Vec<&FileEntry> = self.files.iter().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.path))
            .collect()
    }

    /// Checks that `SHA256SUMS` lists exactly the manifest's files with the same digests.
    pub fn check_sums_agree(&self, sums: &str) -> anyhow::Result<()> {
        let listed = parse_sha256sums(sums)?;
        let ours: BTreeMap<&str, &str> = self
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.sha256.as_str()))
            .collect();
        let mut problems = Vec::new();
        for (path, digest) in &listed {
            match ours.get(path.as_str()) {
                None => problems.push(format!("{path} is in SHA256SUMS but not in manifest.yaml")),
                Some(d) if *d != digest => problems.push(format!(
                    "{path}: SHA256SUMS says {digest}, manifest.yaml says {d}"
                )),
                Some(_) => {}
            }
        }
        for path in ours.keys() {
            if !listed.contains_key(*path) {
                problems.push(format!("{path} is in manifest.yaml but not in SHA256SUMS"));
            }
        }
        if !problems.is_empty() {
            bail!(
                "SHA256SUMS and manifest.yaml disagree:\n  {}",
                problems.join("\n  ")
            );
        }
        Ok(())
    }
}

/// Parses `sha256sum` output (text or binary mode marker).
pub fn parse_sha256sums(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = line.split_once(' ').and_then(|(digest, rest)| {
            let path = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
            let ok = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| (digest.to_ascii_lowercase(), path.to_string()))
        });
        let Some((digest, path)) = parsed else {
            bail!(
                "SHA256SUMS line {} is not `<sha256>  <path>`: {line:?}",
                n + 1
            );
        };
        if out.insert(path.clone(), digest).is_some() {
            bail!("SHA256SUMS lists {path} twice");
        }
    }
    Ok(out)
}

/// A tag of a `type=local` cache folder: it goes into `cache_from` as `tag=<tag>`.
pub fn is_safe_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// What cache-export writes as `npm_image`: `<name>:<hex>`, the name lower case letters,
/// digits and `._-` (not first). It reaches `docker` and compose files, so nothing else.
pub fn is_npm_image_reference(text: &str) -> bool {
    let Some((name, tag)) = text.split_once(':') else {
        return false;
    };
    let name_ok = name.len() <= 200
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    let tag_ok = !tag.is_empty() && tag.len() <= 128 && tag.chars().all(|c| c.is_ascii_hexdigit());
    name_ok && tag_ok
}

/// A bundle-relative path that stays inside the bundle: no absolute paths, no `..`, no
/// empty or `.` segments, no backslashes.
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            image_layout: None,
            tool_version: "0.1.0".into(),
            created: "2026-11-29T12:00:00Z".into(),
            project_name: "llm-chat".into(),
            engine: EngineSummary {
                server_version: "26.1.5".into(),
                arch: "amd64".into(),
                containerd_store: true,
            },
            strategy: Strategy::Local,
            compression: Compression::None,
            images: vec![ImageEntry {
                name: "python:3.9-slim".into(),
                id: "sha256:abc".into(),
                role: ImageRole::Base,
            }],
            services: vec![ServiceEntry {
                name: "backend".into(),
                build_cache: Some("build-cache/backend".into()),
                ..ServiceEntry::default()
            }],
            files: vec![
                FileEntry {
                    path: "base-images.tar".into(),
                    size: 3,
                    sha256: "a".repeat(64),
                },
                FileEntry {
                    path: "build-cache/backend/index.json".into(),
                    size: 2,
                    sha256: "b".repeat(64),
                },
            ],
        }
    }

    #[test]
    fn manifest_round_trips_through_yaml() {
        let m = sample();
        assert_eq!(Manifest::from_yaml(&m.to_yaml()).unwrap(), m);
    }

    #[test]
    fn future_format_is_refused_with_what_to_do() {
        let text = sample()
            .to_yaml()
            .replace("format_version: 1", "format_version: 99");
        let err = format!("{:#}", Manifest::from_yaml(&text).unwrap_err());
        assert!(err.contains("format version 99"), "{err}");
        assert!(err.contains("update"), "{err}");
    }

    #[test]
    fn malformed_manifest_is_an_error() {
        assert!(Manifest::from_yaml("format_version: 1\nfiles: 3\n").is_err());
        assert!(Manifest::from_yaml("- not a map").is_err());
        assert!(Manifest::from_yaml("").is_err());
    }

    #[test]
    fn sums_agree_with_their_manifest() {
        let m = sample();
        let sums = m.sha256sums();
        assert_eq!(
            sums,
            format!(
                "{}  base-images.tar\n{}  build-cache/backend/index.json\n",
                "a".repeat(64),
                "b".repeat(64)
            )
        );
        m.check_sums_agree(&sums).unwrap();
    }

    #[test]
    fn sums_that_disagree_are_named() {
        let m = sample();
        let check = |sums: String, expected: &str| {
            let err = format!("{:#}", m.check_sums_agree(&sums).unwrap_err());
            assert!(err.contains(expected), "{err}");
        };
        check(
            m.sha256sums().replace(&"a".repeat(64), &"c".repeat(64)),
            "base-images.tar: SHA256SUMS says ccc",
        );
        check(
            m.sha256sums().lines().next().unwrap().to_string(),
            "build-cache/backend/index.json is in manifest.yaml but not in SHA256SUMS",
        );
        check(
            format!("{}{}  extra\n", m.sha256sums(), "d".repeat(64)),
            "extra is in SHA256SUMS but not in manifest.yaml",
        );
        check("garbage\n".into(), "line 1");
    }

    #[test]
    fn service_folders_outside_the_bundle_are_refused() {
        for (field, value) in [
            ("npm_cache", "../../../root/.ssh"),
            ("wheelhouse", "/etc"),
            ("build_cache", "a/../../b"),
        ] {
            let text = sample().to_yaml().replace(
                "  build_cache: build-cache/backend",
                &format!("  build_cache: build-cache/backend\n  {field}: '{value}'"),
            );
            let text = if field == "build_cache" {
                sample().to_yaml().replace(
                    "build-cache/backend\n  inputs",
                    &format!("{value}\n  inputs"),
                )
            } else {
                text
            };
            let err = format!("{:#}", Manifest::from_yaml(&text).unwrap_err());
            assert!(
                err.contains(field) && err.contains("outside the bundle"),
                "{err}"
            );
        }
        let mut m = sample();
        m.services[0]
            .contexts
            .insert("wheels".into(), "../../etc".into());
        let err = format!("{:#}", Manifest::from_yaml(&m.to_yaml()).unwrap_err());
        assert!(err.contains("contexts.wheels"), "{err}");
        // What goes into `cache_from` cannot smuggle in another option.
        let mut m = sample();
        m.services[0].build_cache_tag = Some("backend,dest=/etc".into());
        let err = format!("{:#}", Manifest::from_yaml(&m.to_yaml()).unwrap_err());
        assert!(err.contains("build_cache_tag"), "{err}");
        let mut m = sample();
        m.services[0].build_cache = Some("build-cache,src=/etc".into());
        assert!(Manifest::from_yaml(&m.to_yaml()).is_err());
        let mut m = sample();
        m.services[0].build_cache_tag = Some("backend".into());
        assert_eq!(Manifest::from_yaml(&m.to_yaml()).unwrap(), m);
        // The npm cache image's reference reaches `docker` and compose files.
        for bad in [
            "--rm:ab",
            "name:latest",
            "Name:ab",
            "a b:ab",
            "a/b:ab",
            "name",
        ] {
            let mut bad_m = m.clone();
            bad_m.services[0].npm_cache = Some("npm-cache/backend".into());
            bad_m.services[0].npm_image = Some(bad.into());
            let err = format!("{:#}", Manifest::from_yaml(&bad_m.to_yaml()).unwrap_err());
            assert!(err.contains("npm_image"), "{bad}: {err}");
        }
        let mut with_image = m.clone();
        with_image.services[0].npm_image = Some("p-backend-npm-cache:0123abcd".into());
        let err = format!(
            "{:#}",
            Manifest::from_yaml(&with_image.to_yaml()).unwrap_err()
        );
        assert!(
            err.contains("npm_image"),
            "an image without its folder: {err}"
        );
        with_image.services[0].npm_cache = Some("npm-cache/backend".into());
        assert_eq!(
            Manifest::from_yaml(&with_image.to_yaml()).unwrap(),
            with_image
        );
        // The image layout names only files the manifest lists, under safe tar names.
        let listed = m.files[0].path.clone();
        for (name, path) in [
            ("index.json", "base-images/not-listed.json"),
            ("../../etc/passwd", listed.as_str()),
            ("/abs", listed.as_str()),
        ] {
            let mut bad = m.clone();
            bad.image_layout = Some(ImageLayout {
                entries: vec![LayoutEntry {
                    name: name.into(),
                    path: path.into(),
                }],
            });
            let err = format!("{:#}", Manifest::from_yaml(&bad.to_yaml()).unwrap_err());
            assert!(err.contains("image_layout"), "{err}");
        }
        let mut good = m.clone();
        good.image_layout = Some(ImageLayout {
            entries: vec![LayoutEntry {
                name: "blobs/sha256/ab".into(),
                path: listed,
            }],
        });
        assert_eq!(Manifest::from_yaml(&good.to_yaml()).unwrap(), good);
    }

    #[test]
    fn safe_relative_paths() {
        for ok in ["a", "a/b", "build-cache/x/blobs/sha256/00"] {
            assert!(is_safe_relative_path(ok), "{ok}");
        }
        for bad in ["", "/a", "a/../b", "..", "./a", "a//b", "a\\b", "a/"] {
            assert!(!is_safe_relative_path(bad), "{bad}");
        }
    }
}
