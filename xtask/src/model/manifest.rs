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
/// Written by a delta bundle (`cache-export --since`): it carries only the files its base
/// lacks, so a reader that does not know deltas must refuse it rather than call the files
/// it expects from the base missing.
pub const DELTA_FORMAT_VERSION: u32 = 3;
/// The newest format this xtask reads.
pub const MAX_FORMAT_VERSION: u32 = DELTA_FORMAT_VERSION;

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
    /// Every file of the bundle but the manifest and SHA256SUMS themselves. In a delta,
    /// every file of the full bundle it completes to, those it does not carry marked
    /// `from_base`.
    pub files: Vec<FileEntry>,
    /// The tool itself, carried so that a server with no cargo can import and patch
    /// (`bin/xtask`), and a server with Rust but no crates can build it (`tool/`). Absent
    /// in bundles made before it was carried, or with `cache-export --no-tool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolEntry>,
    /// Set in a delta bundle only: the full bundle it builds on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
}

/// The bundle a delta builds on, and the one it completes to, by their digests
/// (`sha256:<hex>` of their SHA256SUMS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// The full bundle that holds every file marked `from_base`.
    pub digest: String,
    /// The full bundle's digest once the delta is completed with its base's files.
    pub complete: String,
}

/// The bundled tool: a static binary and the crates its sources need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolEntry {
    /// The static binary, always [`TOOL_BINARY`]; a file of the bundle.
    pub binary: String,
    /// The Rust target it was built for, e.g. `x86_64-unknown-linux-gnu`.
    pub target: String,
    /// What `uname -s` and `uname -m` say on a machine that runs it (`Linux`, `x86_64`):
    /// the import script compares them before it runs the binary.
    pub os: String,
    pub machine: String,
    /// The vendored crates with their cargo configuration, [`TOOL_VENDOR`]; a file of the
    /// bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// sha256 of the tool's sources (`xtask/`, `Cargo.toml`, `Cargo.lock`): a re-export
    /// whose sources have the same digest reuses the binary and the crates.
    pub sources: String,
}

/// Where the bundle keeps the tool's binary and its vendored crates.
pub const TOOL_BINARY: &str = "bin/xtask";
pub const TOOL_VENDOR: &str = "tool/xtask-vendor.tar.gz";
/// The folder the vendored crates unpack to, and their cargo configuration inside it.
pub const VENDOR_DIR: &str = "xtask-vendor";
pub const VENDOR_CONFIG: &str = "xtask-vendor/cargo-config.toml";

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
    /// In a delta: not carried, the base bundle holds it (same path, same sha256).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_base: bool,
}

impl Manifest {
    pub fn to_yaml(&self) -> String {
        let body = serde_yaml::to_string(self).expect("a manifest always serialises");
        format!(
            "# Written by `cargo xtask cache-export`; read by cache-import, cache-verify,\n\
             # cache-status and patch-compose. Do not edit: SHA256SUMS must agree with it.\n{body}"
        )
    }

    /// Reads a manifest; a newer format version is refused with what to do. The text is
    /// hostile: its size and nesting are bounded before the YAML parser sees it (whose
    /// time grows with the square of the nesting depth), and no error quotes it at length.
    pub fn from_yaml(text: &str) -> anyhow::Result<Manifest> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        check_shape(text)?;
        // One parse for a good manifest; the version alone is read only to explain a failure.
        let parsed: Result<Manifest, _> = serde_yaml::from_str(text);
        let version = match &parsed {
            Ok(manifest) => manifest.format_version,
            Err(_) => {
                let version: Version = serde_yaml::from_str(text).map_err(|e| {
                    anyhow::anyhow!(
                        "manifest.yaml is not a bundle manifest (no format_version): {}",
                        clip(&e.to_string())
                    )
                })?;
                version.format_version
            }
        };
        if version == 0 {
            bail!(
                "manifest.yaml has format version 0, which no cache-export writes; this \
                 bundle was not written by cache-export: do not import it"
            );
        }
        if version > MAX_FORMAT_VERSION {
            bail!(
                "manifest.yaml has format version {version}, this xtask reads up to \
                 {MAX_FORMAT_VERSION}; update the repository (and xtask) on this machine to \
                 the one that exported the bundle"
            );
        }
        let manifest = parsed
            .map_err(|e| anyhow::anyhow!("manifest.yaml is malformed: {}", clip(&e.to_string())))?;
        manifest.check_paths()?;
        manifest.check_sizes()?;
        manifest.check_delta()?;
        Ok(manifest)
    }

    /// The sum of every file's size fits in 64 bits, so that no sum of some of them
    /// overflows either.
    fn check_sizes(&self) -> anyhow::Result<()> {
        // The images' layout may name one file many times: what its load streams adds up too.
        if let Some(layout) = &self.image_layout {
            let sizes: BTreeMap<&str, u64> = self
                .files
                .iter()
                .map(|f| (f.path.as_str(), f.size))
                .collect();
            let mut total: u64 = 0;
            for entry in &layout.entries {
                let size = sizes.get(entry.path.as_str()).copied().unwrap_or(0);
                total = total.checked_add(size).with_context(|| {
                    "manifest.yaml: the files of its image_layout add up to more than 2^64 \
                     bytes; this bundle was not written by cache-export: do not import it"
                })?;
            }
        }
        let mut total: u64 = 0;
        for file in &self.files {
            total = total.checked_add(file.size).with_context(|| {
                format!(
                    "manifest.yaml: the sizes of its files add up to more than 2^64 bytes \
                     (at {}); this bundle was not written by cache-export: do not import it",
                    escape(&file.path)
                )
            })?;
        }
        Ok(())
    }

    /// The sum of every file's size (checked at read: it fits).
    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.size))
    }

    /// Every folder a service entry names must stay inside the bundle: the checksums cover
    /// the file list, not these fields, and import and patch-compose act on them.
    fn check_paths(&self) -> anyhow::Result<()> {
        if let Some(tool) = &self.tool {
            check_tool(tool, &self.files)?;
        }
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
        for image in &self.images {
            let printable = |t: &str| {
                !t.is_empty()
                    && t.len() <= 512
                    && !t.chars().any(|c| c.is_control() || c.is_whitespace())
            };
            if !printable(&image.name) || !printable(&image.id) {
                bail!(
                    "manifest.yaml: the image {} is not an image name and ID cache-export \
                     writes; this bundle was not written by cache-export: do not import it",
                    clip(&format!("{:?} {:?}", image.name, image.id))
                );
            }
        }
        for file in &self.files {
            if [MANIFEST_FILE, SUMS_FILE].contains(&file.path.as_str()) {
                bail!(
                    "manifest.yaml: it lists {} among its files; this bundle was not \
                     written by cache-export: do not import it",
                    file.path
                );
            }
        }
        for service in &self.services {
            if !is_compose_service_name(&service.name) {
                bail!(
                    "manifest.yaml: the service name {} is not one compose accepts \
                     (letters, digits, '_', '.', '-', starting with a letter or digit); this \
                     bundle was not written by cache-export: do not import it",
                    clip(&format!("{:?}", service.name))
                );
            }
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
                    .map(|(name, value)| (format!("contexts.{}", escape(name)), value)),
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

    /// The files the bundle holds itself: all of them, but in a delta those `from_base`.
    pub fn carried(&self) -> impl Iterator<Item = &FileEntry> + Clone {
        self.files.iter().filter(|f| !f.from_base)
    }

    /// The files a delta expects from its base (none in a full bundle).
    pub fn expected_from_base(&self) -> impl Iterator<Item = &FileEntry> + Clone {
        self.files.iter().filter(|f| f.from_base)
    }

    /// The sum of the sizes of the files the bundle holds itself.
    pub fn carried_size(&self) -> u64 {
        self.carried()
            .fold(0u64, |sum, f| sum.saturating_add(f.size))
    }

    /// The digest (`sha256:<hex>`) of the full bundle this one describes: its own
    /// (`digest`, hex) for a full bundle, the one it completes to for a delta.
    pub fn full_digest(&self, digest: &str) -> String {
        match &self.base {
            Some(base) => base.complete.clone(),
            None => format!("sha256:{digest}"),
        }
    }

    /// This full bundle as a delta of `base` (whose full bundle's digest is
    /// `base_digest`, `sha256:<hex>`): every file `base` lists with the same path, size
    /// and sha256 (and holds, or expects from its own base) is marked `from_base`.
    /// `complete` is this bundle's own digest, which the delta completes to.
    pub fn delta_of(&self, base: &Manifest, base_digest: &str, complete: &str) -> Manifest {
        let in_base: std::collections::BTreeSet<(&str, u64, &str)> = base
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.size, f.sha256.as_str()))
            .collect();
        let mut delta = self.clone();
        delta.format_version = DELTA_FORMAT_VERSION;
        delta.base = Some(BaseRef {
            digest: base_digest.to_string(),
            complete: complete.to_string(),
        });
        for file in &mut delta.files {
            file.from_base =
                in_base.contains(&(file.path.as_str(), file.size, file.sha256.as_str()));
        }
        delta
    }

    /// The full bundle a delta describes: every file its own, the format version the full
    /// export wrote. A full bundle is returned as it is.
    pub fn completed(&self) -> Manifest {
        let mut full = self.clone();
        if full.base.take().is_some() {
            full.format_version = if full.image_layout.is_some() {
                LAYOUT_FORMAT_VERSION
            } else {
                FORMAT_VERSION
            };
            for file in &mut full.files {
                file.from_base = false;
            }
        }
        full
    }

    /// The files this delta expects from its base that `base` does not list with the same
    /// size and sha256 (none: `base` completes it).
    pub fn missing_from<'a>(&'a self, base: &Manifest) -> Vec<&'a FileEntry> {
        let in_base: BTreeMap<&str, (u64, &str)> = base
            .files
            .iter()
            .map(|f| (f.path.as_str(), (f.size, f.sha256.as_str())))
            .collect();
        self.expected_from_base()
            .filter(|f| in_base.get(f.path.as_str()) != Some(&(f.size, f.sha256.as_str())))
            .collect()
    }

    /// A delta names its base and the bundle it completes to, and only a delta marks files
    /// `from_base`; its format version says it is one.
    fn check_delta(&self) -> anyhow::Result<()> {
        let is_digest = |d: &str| {
            d.strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
        };
        match &self.base {
            None if self.format_version == DELTA_FORMAT_VERSION => bail!(
                "manifest.yaml has the format version of a delta bundle but names no base; \
                 this bundle was not written by cache-export: do not import it"
            ),
            None if self.files.iter().any(|f| f.from_base) => bail!(
                "manifest.yaml marks files from_base but is not a delta bundle; this bundle \
                 was not written by cache-export: do not import it"
            ),
            None => Ok(()),
            Some(base) if self.format_version != DELTA_FORMAT_VERSION => bail!(
                "manifest.yaml names a base ({}) but has format version {}, not {DELTA_FORMAT_VERSION}; \
                 this bundle was not written by cache-export: do not import it",
                clip(&base.digest),
                self.format_version
            ),
            Some(base) if !is_digest(&base.digest) || !is_digest(&base.complete) => bail!(
                "manifest.yaml: its base {} (complete {}) is not a digest `sha256:<64 hex>`; \
                 this bundle was not written by cache-export: do not import it",
                clip(&base.digest),
                clip(&base.complete)
            ),
            Some(_) => Ok(()),
        }
    }

    /// `SHA256SUMS` text: `<hex>  <path>` lines, sorted by path, for every file of the
    /// bundle, `manifest.yaml` (whose sha256 is `manifest_sha256`) included: the digest of
    /// this text is the bundle's digest, which covers every byte the tool reads.
    pub fn sha256sums(&self, manifest_sha256: &str) -> String {
        let mut files: Vec<(&str, &str)> = self
            .carried()
            .map(|f| (f.path.as_str(), f.sha256.as_str()))
            .chain([(MANIFEST_FILE, manifest_sha256)])
            .collect();
        files.sort();
        files
            .iter()
            .map(|(path, sha256)| format!("{sha256}  {path}\n"))
            .collect()
    }

    /// Checks that `SHA256SUMS` lists exactly the manifest's files with the same digests,
    /// and `manifest.yaml` itself with `manifest_sha256`, the digest of the text read.
    pub fn check_sums_agree(&self, sums: &str, manifest_sha256: &str) -> anyhow::Result<()> {
        let mut listed = parse_sha256sums(sums)?;
        check_manifest_listed(&mut listed, manifest_sha256)?;
        let ours: BTreeMap<&str, &str> = self
            .carried()
            .map(|f| (f.path.as_str(), f.sha256.as_str()))
            .collect();
        let mut problems = Vec::new();
        for (path, digest) in &listed {
            let path_shown = escape(path);
            match ours.get(path.as_str()) {
                None => problems.push(format!(
                    "{path_shown} is in SHA256SUMS but not in manifest.yaml"
                )),
                Some(d) if *d != digest => problems.push(format!(
                    "{path_shown}: SHA256SUMS says {digest}, manifest.yaml says {}",
                    escape(d)
                )),
                Some(_) => {}
            }
            if problems.len() >= 20 {
                break;
            }
        }
        for path in ours.keys() {
            if !listed.contains_key(*path) && problems.len() < 40 {
                problems.push(format!(
                    "{} is in manifest.yaml but not in SHA256SUMS",
                    escape(path)
                ));
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

/// The tool entry names exactly the files cache-export writes, both listed with their
/// checksums, and a platform the import script can compare with `uname` (so that the
/// script, which quotes them, never sees anything but letters, digits, `_` and `-`).
fn check_tool(tool: &ToolEntry, files: &[FileEntry]) -> anyhow::Result<()> {
    let listed = |path: &str| files.iter().any(|f| f.path == path);
    let word = |t: &str| {
        !t.is_empty()
            && t.len() <= 64
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let problem = if tool.binary != TOOL_BINARY || !listed(&tool.binary) {
        Some(format!(
            "tool.binary is {:?}, not the listed file {TOOL_BINARY}",
            tool.binary
        ))
    } else if let Some(vendor) = tool
        .vendor
        .as_ref()
        .filter(|v| *v != TOOL_VENDOR || !listed(v))
    {
        Some(format!(
            "tool.vendor is {vendor:?}, not the listed file {TOOL_VENDOR}"
        ))
    } else if ![&tool.target, &tool.os, &tool.machine]
        .iter()
        .all(|t| word(t))
    {
        Some(format!(
            "the tool's platform {} is not a target and uname names",
            clip(&format!(
                "{:?} {:?} {:?}",
                tool.target, tool.os, tool.machine
            ))
        ))
    } else if tool.sources.len() != 64 || !tool.sources.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(format!(
            "tool.sources is {}, not a sha256",
            clip(&format!("{:?}", tool.sources))
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => bail!(
            "manifest.yaml: {problem}; this bundle was not written by cache-export: do not \
             import it"
        ),
        None => Ok(()),
    }
}

/// Takes `manifest.yaml`'s line out of `listed`, refusing when it is missing or when its
/// digest is not `manifest_sha256`.
pub fn check_manifest_listed(
    listed: &mut BTreeMap<String, String>,
    manifest_sha256: &str,
) -> anyhow::Result<()> {
    match listed.remove(MANIFEST_FILE) {
        None => bail!(
            "SHA256SUMS does not list manifest.yaml, so nothing proves the manifest is the \
             one exported: this bundle was written by an older xtask, or altered; export it \
             again with this repository's xtask"
        ),
        Some(digest) if digest != manifest_sha256 => bail!(
            "manifest.yaml: sha256 {manifest_sha256}, SHA256SUMS says {digest}: the manifest \
             was changed after the export (or damaged); do not import this bundle: copy it \
             again, or export it again"
        ),
        Some(_) => Ok(()),
    }
}

/// The most `manifest.yaml` may hold (and `SHA256SUMS`): both are read whole. About 60 000
/// files; a manifest this long reads in about half a second in a debug build.
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;
/// The most lines a manifest may have: parse time and memory grow with the number of
/// YAML events, and 100 000 lines read in under a second and 100 MiB in a debug build.
pub const MAX_MANIFEST_LINES: usize = 100_000;

/// The deepest block nesting a manifest may have (sequence markers on one line, and
/// columns of indentation); what cache-export writes stays below 4 and 16.
pub const MAX_NESTING: usize = 32;
pub const MAX_INDENT: usize = 128;

/// Bounds a manifest's size and shape with one cheap pass, before the YAML parser (whose
/// time grows with the square of the flow nesting depth: 120 KB of `[` took over 30 s).
/// A manifest is YAML as serde_yaml writes it, block style only: every line is a comment,
/// `- ` markers, and a key with a value or a value alone; a value is a plain scalar, a
/// quoted scalar closed on its line, a block scalar (`|`, `>`…) whose body is indented
/// more, or the empty `[]` / `{}`. So there is no flow nesting at all, and no anchor,
/// alias, tag or complex key. Anything else is refused.
pub fn check_shape(text: &str) -> anyhow::Result<()> {
    if text.len() > MAX_MANIFEST_BYTES {
        bail!(
            "manifest.yaml is {} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may \
             have; this bundle was not written by cache-export: do not import it",
            text.len()
        );
    }
    // Lines more indented than this column belong to a block scalar.
    let mut block_body: Option<usize> = None;
    for (n, line) in text.split('\n').enumerate() {
        if n >= MAX_MANIFEST_LINES {
            bail!(
                "manifest.yaml has more than {MAX_MANIFEST_LINES} lines (about {} files), \
                 more than a manifest may have; this bundle was not written by cache-export: \
                 do not import it",
                MAX_MANIFEST_LINES / 3
            );
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(column) = block_body {
            if line.trim().is_empty() || indent > column {
                continue;
            }
            block_body = None;
        }
        let opens = check_line(line, indent).map_err(|why| {
            anyhow::anyhow!(
                "manifest.yaml line {}: {why}; this is not YAML as cache-export writes it \
                 (block style only, no nesting deeper than {MAX_NESTING}): this bundle was not \
                 written by cache-export: do not import it",
                n + 1
            )
        })?;
        if opens.is_some() {
            block_body = opens;
        }
    }
    Ok(())
}

/// Checks one line outside block scalars; `Some(column)` when it opens a block scalar
/// whose body lines are indented more than `column`.
fn check_line(line: &str, indent: usize) -> Result<Option<usize>, String> {
    if indent > MAX_INDENT {
        return Err(format!("indented {indent} columns"));
    }
    let mut rest = &line[indent..];
    let mut column = indent;
    let mut markers = 0;
    while rest == "-" || rest.starts_with("- ") {
        let after = rest[1..].trim_start_matches(' ');
        column += rest.len() - after.len();
        rest = after;
        markers += 1;
        if markers > MAX_NESTING {
            return Err("too many sequence markers".into());
        }
    }
    if rest.is_empty() || rest.starts_with('#') || (indent == 0 && rest == "---") {
        return Ok(None);
    }
    if rest.starts_with(['[', '{', '|', '>']) {
        return value_of(rest, column);
    }
    let (_, after) = scalar(rest)?;
    let after = after.trim_start_matches(' ');
    match after.strip_prefix(':') {
        Some(value) if value.is_empty() || value.starts_with(' ') => {
            value_of(value.trim_start_matches(' '), column)
        }
        _ if after.is_empty() || after.starts_with('#') => {
            // A value alone (a sequence item): the same rules as after a key.
            value_of(rest, column)
        }
        _ => Err("text after a quoted scalar".into()),
    }
}

/// Checks what follows `key: ` (or a `- `); `Some(column)` for a block scalar header.
fn value_of(value: &str, column: usize) -> Result<Option<usize>, String> {
    if value.is_empty() || value.starts_with('#') {
        return Ok(None);
    }
    for empty in ["[]", "{}"] {
        if let Some(after) = value.strip_prefix(empty) {
            return match after.trim_start_matches(' ') {
                "" => Ok(None),
                a if a.starts_with('#') => Ok(None),
                _ => Err(format!("text after {empty}")),
            };
        }
    }
    if value.starts_with(['|', '>']) {
        let header = value.split(" #").next().unwrap_or("").trim_end();
        let ok = header.len() <= 3
            && header[1..]
                .chars()
                .all(|c| matches!(c, '-' | '+' | '1'..='9'));
        return match ok {
            true => Ok(Some(column)),
            false => Err("a block scalar header cache-export does not write".into()),
        };
    }
    let (_, after) = scalar(value)?;
    let after = after.trim_start_matches(' ');
    if after.is_empty() || after.starts_with('#') {
        Ok(None)
    } else {
        Err("a mapping or text after a value on one line".into())
    }
}

/// A scalar at the start of `text`: quoted (closed on this line) or plain (up to `: `,
/// ` #` or the end); returns it and what follows.
fn scalar(text: &str) -> Result<(&str, &str), String> {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(&quote @ (b'\'' | b'"')) => {
            let mut i = 1;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if quote == b'"' => i += 1,
                    b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
                    b if b == quote => return Ok((&text[..=i], &text[i + 1..])),
                    _ => {}
                }
                i += 1;
            }
            Err("a quoted scalar not closed on its line".into())
        }
        Some(b'[' | b']' | b'{' | b'}' | b',' | b'&' | b'*' | b'!' | b'%' | b'@' | b'`')
        | Some(b'?' | b'|' | b'>' | b'\t') => {
            Err("flow syntax, an anchor, alias, tag or complex key".into())
        }
        _ => {
            let end = [text.find(": "), text.find(" #")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(text.len());
            let end = if end == text.len() && text.ends_with(':') {
                end - 1
            } else {
                end
            };
            Ok((&text[..end], &text[end..]))
        }
    }
}

/// `text` with control characters (terminal escape codes among them) and backslashes
/// escaped, as Rust writes them: safe to print on a terminal.
pub fn escape(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() || c == '\\' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// [`escape`]d and cut to 200 characters: for quoting hostile text in an error.
pub fn clip(text: &str) -> String {
    let escaped = escape(text);
    match escaped.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &escaped[..at]),
        None => escaped,
    }
}

/// A service name compose accepts: `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`.
pub fn is_compose_service_name(name: &str) -> bool {
    name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
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
                "SHA256SUMS line {} is not `<sha256>  <path>`: {}",
                n + 1,
                clip(&format!("{line:?}"))
            );
        };
        if out.insert(path.clone(), digest).is_some() {
            bail!("SHA256SUMS lists {} twice", escape(&path));
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
        && !path.chars().any(char::is_control)
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
                    from_base: false,
                },
                FileEntry {
                    path: "build-cache/backend/index.json".into(),
                    size: 2,
                    sha256: "b".repeat(64),
                    from_base: false,
                },
            ],
            tool: None,
            base: None,
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

    const M: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

    #[test]
    fn sums_agree_with_their_manifest() {
        let m = sample();
        let sums = m.sha256sums(M);
        assert_eq!(
            sums,
            format!(
                "{}  base-images.tar\n{}  build-cache/backend/index.json\n{M}  manifest.yaml\n",
                "a".repeat(64),
                "b".repeat(64)
            )
        );
        m.check_sums_agree(&sums, M).unwrap();
    }

    #[test]
    fn sums_that_disagree_are_named() {
        let m = sample();
        let check = |sums: String, expected: &str| {
            let err = format!("{:#}", m.check_sums_agree(&sums, M).unwrap_err());
            assert!(err.contains(expected), "{err}");
        };
        check(
            m.sha256sums(M).replace(&"a".repeat(64), &"c".repeat(64)),
            "base-images.tar: SHA256SUMS says ccc",
        );
        check(
            m.sha256sums(M)
                .lines()
                .filter(|l| !l.ends_with("index.json"))
                .map(|l| format!("{l}\n"))
                .collect(),
            "build-cache/backend/index.json is in manifest.yaml but not in SHA256SUMS",
        );
        check(
            format!("{}{}  extra\n", m.sha256sums(M), "d".repeat(64)),
            "extra is in SHA256SUMS but not in manifest.yaml",
        );
        check("garbage\n".into(), "line 1");
    }

    /// Issue 15, point 1: SHA256SUMS covers manifest.yaml, so an edited manifest with the
    /// SHA256SUMS of the export is refused (and one written before that rule too).
    #[test]
    fn sums_cover_the_manifest_itself() {
        let m = sample();
        let err = format!(
            "{:#}",
            m.check_sums_agree(&m.sha256sums(M), &"f".repeat(64))
                .unwrap_err()
        );
        assert!(err.contains("manifest.yaml: sha256 fff"), "{err}");
        assert!(err.contains("changed after the export"), "{err}");
        let old_style: String = m
            .sha256sums(M)
            .lines()
            .filter(|l| !l.ends_with("manifest.yaml"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = format!("{:#}", m.check_sums_agree(&old_style, M).unwrap_err());
        assert!(err.contains("does not list manifest.yaml"), "{err}");
        // The manifest cannot list itself or SHA256SUMS among its files.
        for name in [MANIFEST_FILE, SUMS_FILE] {
            let mut bad = sample();
            bad.files[0].path = name.into();
            let err = format!("{:#}", Manifest::from_yaml(&bad.to_yaml()).unwrap_err());
            assert!(err.contains("among its files"), "{err}");
        }
    }

    fn with_tool() -> Manifest {
        let mut m = sample();
        for path in [TOOL_BINARY, TOOL_VENDOR] {
            m.files.push(FileEntry {
                path: path.into(),
                size: 1,
                sha256: "c".repeat(64),
                from_base: false,
            });
        }
        m.tool = Some(ToolEntry {
            binary: TOOL_BINARY.into(),
            target: "x86_64-unknown-linux-gnu".into(),
            os: "Linux".into(),
            machine: "x86_64".into(),
            vendor: Some(TOOL_VENDOR.into()),
            sources: "d".repeat(64),
        });
        m
    }

    /// The bundled tool is a file of the bundle, listed like every other, with a platform
    /// the import script can compare with `uname`; anything else is refused.
    #[test]
    fn the_tool_entry_names_listed_files_and_a_plain_platform() {
        let good = with_tool();
        assert_eq!(Manifest::from_yaml(&good.to_yaml()).unwrap(), good);
        type Spoil = fn(&mut Manifest);
        let cases: Vec<(Spoil, &str)> = vec![
            (|m| m.files.retain(|f| f.path != TOOL_BINARY), "tool.binary"),
            (
                |m| m.tool.as_mut().unwrap().binary = "../../usr/bin/xtask".into(),
                "tool.binary",
            ),
            (
                |m| m.tool.as_mut().unwrap().binary = "base-images.tar".into(),
                "tool.binary",
            ),
            (|m| m.files.retain(|f| f.path != TOOL_VENDOR), "tool.vendor"),
            (
                |m| m.tool.as_mut().unwrap().machine = "x86_64; rm -rf /".into(),
                "platform",
            ),
            (
                |m| m.tool.as_mut().unwrap().os = "$(reboot)".into(),
                "platform",
            ),
            (
                |m| m.tool.as_mut().unwrap().target = String::new(),
                "platform",
            ),
            (
                |m| m.tool.as_mut().unwrap().sources = "xyz".into(),
                "tool.sources",
            ),
        ];
        for (spoil, named) in cases {
            let mut m = with_tool();
            spoil(&mut m);
            let err = format!("{:#}", Manifest::from_yaml(&m.to_yaml()).unwrap_err());
            assert!(
                err.contains(named) && err.contains("do not import it"),
                "{named}: {err}"
            );
        }
        // Without the vendored crates (a prebuilt binary only) the entry is still good.
        let mut m = with_tool();
        m.tool.as_mut().unwrap().vendor = None;
        m.files.retain(|f| f.path != TOOL_VENDOR);
        assert!(Manifest::from_yaml(&m.to_yaml()).is_ok());
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

    /// Issue 15, point 4, and the fuzzing for time: no hostile manifest makes the reader
    /// panic or take more than a second (serde_yaml's time grows with the square of the
    /// nesting depth: 120 KB of `[` took over 30 s before the depth was bounded).
    #[test]
    fn hostile_manifests_are_refused_quickly_without_a_panic() {
        let good = sample().to_yaml();
        let files_at = good.find("files:").unwrap();
        let many_files: String = (0..20_000)
            .map(|i| format!("- path: f{i}\n  size: {i}\n  sha256: {}\n", "a".repeat(64)))
            .collect();
        let cases: Vec<(&str, String)> = vec![
            ("deep flow [", "[".repeat(120_000)),
            ("deep flow {", "{a: ".repeat(60_000)),
            ("deep mixed", "[{".repeat(60_000)),
            ("deep block -", "- ".repeat(60_000) + "x\n"),
            (
                "deep block indentation",
                (0..3000)
                    .map(|i| format!("{}a{i}:\n", " ".repeat(i)))
                    .collect(),
            ),
            (
                "quotes hiding brackets",
                format!("a: ['x', \"]]]]\", {}]", "[".repeat(50_000)),
            ),
            (
                "a quote after a comma in a plain key",
                format!("a, 'b: {}\n", "[".repeat(50_000)),
            ),
            (
                "a bracket and a quote in a plain key",
                format!("a[b, 'c: {}\n", "[".repeat(50_000)),
            ),
            (
                "a quote after a colon",
                format!("a:'c: {}\n", "[".repeat(50_000)),
            ),
            (
                "a quote in a flow plain scalar",
                format!("x: {{a 'b, c: {}\n", "[".repeat(50_000)),
            ),
            (
                "a block scalar hiding a quote",
                format!("a: |\n  'x\nb: {}\n", "[".repeat(50_000)),
            ),
            (
                "a quote inside a plain scalar",
                format!("a: x'\nb: {}\n", "[".repeat(50_000)),
            ),
            ("aliases (billion laughs)", {
                let mut t = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
                for i in 1..10 {
                    t.push_str(&format!(
                            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
                            p = i - 1
                        ));
                }
                t + &good
            }),
            (
                "a manifest over the size allowed",
                format!("{good}#{}", "x".repeat(MAX_MANIFEST_BYTES)),
            ),
            (
                "a string as long as allowed",
                good.replace(
                    "project_name: llm-chat",
                    &format!(
                        "project_name: {}",
                        "y".repeat(MAX_MANIFEST_BYTES - good.len())
                    ),
                ),
            ),
            (
                "a quoted string as long as allowed",
                good.replace(
                    "project_name: llm-chat",
                    &format!(
                        "project_name: '{}'",
                        "'' ".repeat((MAX_MANIFEST_BYTES - good.len()) / 3 - 1)
                    ),
                ),
            ),
            (
                "sizes over 2^64",
                good.replace("size: 3", &format!("size: {}", u64::MAX))
                    .replace("size: 2", &format!("size: {}", u64::MAX)),
            ),
            (
                "a size over u64",
                good.replace("size: 3", "size: 99999999999999999999999"),
            ),
            (
                "format 0",
                good.replace("format_version: 1", "format_version: 0"),
            ),
            (
                "a negative version",
                good.replace("format_version: 1", "format_version: -1"),
            ),
            (
                "a service name compose rejects",
                good.replace("name: backend", "name: \"-x\\e[2J\""),
            ),
            (
                "20 000 files",
                format!("{}files:\n{many_files}", &good[..files_at]),
            ),
            (
                "as many tiny lines as allowed",
                good.replace(
                    "  inputs: {}\n",
                    &format!(
                        "  inputs:\n{}",
                        (0..MAX_MANIFEST_LINES - 100)
                            .map(|i| format!("    {i:x}: a\n"))
                            .collect::<String>()
                    ),
                ),
            ),
            (
                "one line too many",
                format!("{good}{}", "#\n".repeat(MAX_MANIFEST_LINES)),
            ),
            (
                "control characters",
                "format_version: \"\\e]0;owned\\a\"\n".into(),
            ),
            ("NUL and invalid", "\0\0\0: [\0".into()),
        ];
        // The bound is on this thread's CPU time, so that other tests (or builds) loading
        // the machine do not make it fail; the wall clock only catches a hang.
        fn cpu_seconds() -> Option<f64> {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0) // USER_HZ, 100 on Linux
        }
        for (what, text) in &cases {
            let started = std::time::Instant::now();
            let cpu_before = cpu_seconds();
            let result = std::panic::catch_unwind(|| Manifest::from_yaml(text));
            let took = started.elapsed();
            let cpu = match (cpu_before, cpu_seconds()) {
                (Some(a), Some(b)) => b - a,
                _ => took.as_secs_f64(),
            };
            let result = result.unwrap_or_else(|_| panic!("{what}: panicked"));
            assert!(cpu < 1.0, "{what}: took {cpu:.2} s of CPU ({took:?})");
            assert!(took.as_secs_f64() < 20.0, "{what}: took {took:?}");
            if let Err(e) = &result {
                let err = format!("{e:#}");
                assert!(err.len() < 1000, "{what}: an error of {} bytes", err.len());
                assert!(
                    !err.contains('\x1b') && !err.contains('\x07'),
                    "{what}: {err}"
                );
            }
            let refused = result.is_err();
            let may_read = [
                "20 000 files",
                "as many tiny lines as allowed",
                "aliases (billion laughs)",
                "a string as long as allowed",
                "a quoted string as long as allowed",
            ]
            .contains(what);
            assert!(refused || may_read, "{what}: accepted");
        }
    }

    /// What serde_yaml writes passes the shape check, whatever the strings hold.
    #[test]
    fn every_manifest_cache_export_writes_has_the_shape_allowed() {
        let odd = [
            "",
            " lead",
            "trail ",
            "a: b",
            "a #b",
            "#x",
            "- x",
            "-x",
            "[x]",
            "{x}",
            "x]",
            "'q'",
            "\"d\"",
            "it's",
            "a\nb [c]\n'd",
            "a\n\n  b\n",
            "\u{1b}[2J",
            "null",
            "~",
            "1",
            "0x1f",
            "yes",
            "key:",
            ":",
            "|",
            ">",
            "&a",
            "*a",
            "!t",
            "%",
            "@",
            "`",
            "?",
            ",",
            "tab\there",
            "ünï",
            "a\r\nb",
            "\t",
        ];
        let mut m = sample();
        for (i, value) in odd.iter().enumerate() {
            m.services[0]
                .args
                .insert(format!("A{i}"), value.to_string());
            // Keys with a line break would be complex keys (`? |`), which are refused: no
            // input path has one.
            if !value.contains(['\n', '\r']) {
                m.services[0]
                    .inputs
                    .insert(value.to_string(), value.to_string());
            }
        }
        m.services[0]
            .contexts
            .insert("busybox:latest".into(), "pip-cache/x".into());
        m.services.push(ServiceEntry {
            name: "web".into(),
            ..ServiceEntry::default()
        });
        let text = m.to_yaml();
        check_shape(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        assert_eq!(Manifest::from_yaml(&text).unwrap(), m);
    }

    #[test]
    fn safe_relative_paths() {
        for ok in ["a", "a/b", "build-cache/x/blobs/sha256/00"] {
            assert!(is_safe_relative_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a\\b",
            "a/",
            "a\nb",
            "a\u{1b}[2Jb",
        ] {
            assert!(!is_safe_relative_path(bad), "{bad}");
        }
    }

    fn file(path: &str, size: u64, hex: char) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            sha256: hex.to_string().repeat(64),
            from_base: false,
        }
    }

    /// A base and the full bundle after a one-line change: one blob and the cache's index
    /// changed, the rest is the same.
    fn base_and_next() -> (Manifest, Manifest) {
        let mut base = sample();
        base.format_version = LAYOUT_FORMAT_VERSION;
        base.image_layout = Some(ImageLayout {
            entries: vec![LayoutEntry {
                name: "blobs/sha256/11".into(),
                path: "build-cache/blobs/sha256/11".into(),
            }],
        });
        base.files = vec![
            file("build-cache/blobs/sha256/11", 100, '1'),
            file("build-cache/blobs/sha256/22", 50, '2'),
            file("build-cache/index.json", 7, '3'),
            file("import-build-cache.sh", 9, '4'),
        ];
        let mut next = base.clone();
        next.created = "2026-12-01T00:00:00Z".into();
        next.files = vec![
            file("build-cache/blobs/sha256/11", 100, '1'),
            file("build-cache/blobs/sha256/33", 60, '5'),
            file("build-cache/index.json", 8, '6'),
            file("import-build-cache.sh", 9, '4'),
        ];
        (base, next)
    }

    const BASE: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const FULL: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_delta_carries_only_what_its_base_lacks_and_lists_the_whole_bundle() {
        let (base, next) = base_and_next();
        let delta = next.delta_of(&base, BASE, FULL);
        let carried: Vec<&str> = delta.carried().map(|f| f.path.as_str()).collect();
        assert_eq!(
            carried,
            ["build-cache/blobs/sha256/33", "build-cache/index.json"]
        );
        let from_base: Vec<&str> = delta
            .expected_from_base()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(
            from_base,
            ["build-cache/blobs/sha256/11", "import-build-cache.sh"]
        );
        assert_eq!(delta.files.len(), next.files.len());
        assert_eq!(delta.carried_size(), 68);
        assert_eq!(delta.format_version, DELTA_FORMAT_VERSION);
        assert_eq!(
            delta.base,
            Some(BaseRef {
                digest: BASE.into(),
                complete: FULL.into()
            })
        );
        // What it completes to is the full bundle, byte for byte the same manifest.
        assert_eq!(delta.completed(), next);
        assert_eq!(delta.completed().to_yaml(), next.to_yaml());
        assert_eq!(delta.full_digest("cc"), FULL);
        assert_eq!(next.full_digest("cc"), "sha256:cc");
    }

    #[test]
    fn a_same_path_with_another_digest_or_size_is_carried() {
        let (base, mut next) = base_and_next();
        next.files[0].sha256 = "9".repeat(64);
        next.files[3].size = 10;
        let delta = next.delta_of(&base, BASE, FULL);
        assert!(!delta.files[0].from_base);
        assert!(!delta.files[3].from_base);
    }

    #[test]
    fn a_delta_round_trips_and_its_sums_cover_what_it_carries() {
        let (base, next) = base_and_next();
        let delta = next.delta_of(&base, BASE, FULL);
        let yaml = delta.to_yaml();
        assert!(yaml.contains("from_base: true"), "{yaml}");
        assert!(yaml.contains(&format!("digest: {BASE}")), "{yaml}");
        assert!(!next.to_yaml().contains("from_base"));
        let read = Manifest::from_yaml(&yaml).unwrap();
        assert_eq!(read, delta);
        let sums = delta.sha256sums(&"f".repeat(64));
        assert_eq!(
            sums,
            format!(
                "{}  build-cache/blobs/sha256/33\n{}  build-cache/index.json\n{}  manifest.yaml\n",
                "5".repeat(64),
                "6".repeat(64),
                "f".repeat(64)
            )
        );
        delta.check_sums_agree(&sums, &"f".repeat(64)).unwrap();
        // SHA256SUMS that lists a file from the base disagrees with the delta.
        let more = format!("{sums}{}  import-build-cache.sh\n", "4".repeat(64));
        let err = delta.check_sums_agree(&more, &"f".repeat(64)).unwrap_err();
        assert!(
            err.to_string()
                .contains("import-build-cache.sh is in SHA256SUMS but not in manifest.yaml"),
            "{err}"
        );
    }

    #[test]
    fn what_a_base_lacks_is_named() {
        let (base, next) = base_and_next();
        let delta = next.delta_of(&base, BASE, FULL);
        assert!(delta.missing_from(&base).is_empty());
        let mut other = base.clone();
        other.files.retain(|f| f.path != "import-build-cache.sh");
        other.files[0].sha256 = "0".repeat(64);
        let missing: Vec<&str> = delta
            .missing_from(&other)
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(
            missing,
            ["build-cache/blobs/sha256/11", "import-build-cache.sh"]
        );
    }

    #[test]
    fn a_delta_must_say_it_is_one_and_name_digests() {
        let (base, next) = base_and_next();
        let delta = next.delta_of(&base, BASE, FULL);
        let yaml = delta.to_yaml();
        let refused = |text: &str, why: &str| {
            let err = format!("{:#}", Manifest::from_yaml(text).unwrap_err());
            assert!(err.contains(why), "{err}");
        };
        refused(
            &yaml.replace("format_version: 3", "format_version: 2"),
            "names a base",
        );
        refused(
            &yaml.replace(&format!("digest: {BASE}"), "digest: sha256:xyz"),
            "is not a digest",
        );
        let no_base = next
            .to_yaml()
            .replace("format_version: 2", "format_version: 3");
        refused(&no_base, "names no base");
        let mut marked = next.clone();
        marked.files[3].from_base = true;
        let marked = marked.to_yaml();
        refused(&marked, "marks files from_base");
    }
}
