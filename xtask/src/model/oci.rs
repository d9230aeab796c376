//! OCI image content, read as the engine's content store keeps it: the descriptors an
//! index or a manifest points to, image references spelled the ways `docker save` writes
//! them, and the `index.json`, `manifest.json` and `oci-layout` of an image archive.
//!
//! Used to write the bundle's images from the containerd content store (images.rs) in the
//! layout `docker save` writes, so that `docker load` (and import-build-cache.sh) take it
//! as they take `docker save`'s.

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

pub const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST_V2: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor: what a blob is, its digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// What a blob holds, as far as walking an image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// An index (or Docker manifest list): the manifests it lists.
    Index(Vec<Descriptor>),
    /// An image manifest: its config and layers.
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Reads an index or manifest blob whose descriptor said `media_type`.
pub fn parse(media_type: &str, bytes: &[u8]) -> anyhow::Result<Content> {
    let raw: Raw = serde_json::from_slice(bytes).context("not an OCI index or manifest")?;
    let kind = raw.media_type.as_deref().unwrap_or(media_type);
    match (kind, raw.manifests, raw.config, raw.layers) {
        (INDEX_V1 | DOCKER_LIST_V2, Some(manifests), _, _) => Ok(Content::Index(manifests)),
        (MANIFEST_V1 | DOCKER_MANIFEST_V2, _, Some(config), layers) => Ok(Content::Manifest {
            config,
            layers: layers.unwrap_or_default(),
        }),
        _ => bail!("a blob of media type {kind} is neither an index nor an image manifest"),
    }
}

/// Whether a descriptor is an index or a manifest (something [`parse`] reads).
pub fn is_walkable(media_type: &str) -> bool {
    matches!(
        media_type,
        INDEX_V1 | MANIFEST_V1 | DOCKER_LIST_V2 | DOCKER_MANIFEST_V2
    )
}

/// The hex of a `sha256:` digest, if it is one (64 lowercase hex digits).
pub fn sha256_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// An image reference as the engine stores its name: `busybox` → `docker.io/library/busybox:latest`,
/// `me/app:1` → `docker.io/me/app:1`, `ghcr.io/o/x` → `ghcr.io/o/x:latest`. `None` for a
/// reference by digest, whose archive entry this module does not write.
pub fn normalize(reference: &str) -> Option<String> {
    if reference.contains('@') {
        return None;
    }
    let (first, _) = reference.split_once('/').unwrap_or(("", reference));
    let has_domain =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = match (has_domain, reference.contains('/')) {
        (true, _) => reference.to_string(),
        (false, true) => format!("docker.io/{reference}"),
        (false, false) => format!("docker.io/library/{reference}"),
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    Some(if last.contains(':') {
        full
    } else {
        format!("{full}:latest")
    })
}

/// `docker.io/library/busybox:latest` → `busybox:latest`, as `docker save` writes RepoTags.
pub fn familiar(normalized: &str) -> String {
    normalized
        .strip_prefix("docker.io/library/")
        .or_else(|| normalized.strip_prefix("docker.io/"))
        .unwrap_or(normalized)
        .to_string()
}

/// One image of an archive: its name (normalized), the descriptor of what it points to,
/// and the config and layers of the manifest `docker load` unpacks on a classic engine.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    pub name: String,
    pub target: Descriptor,
    pub config: String,
    pub layers: Vec<String>,
}

/// `index.json` of an image archive, as `docker save` writes it on the containerd store
/// (the same fields in the same order): each image's target with its name annotations.
pub fn archive_index(images: &[ArchiveImage]) -> anyhow::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Index<'a> {
        #[serde(rename = "schemaVersion")]
        schema_version: u32,
        #[serde(rename = "mediaType")]
        media_type: &'a str,
        manifests: Vec<Entry<'a>>,
    }
    #[derive(Serialize)]
    struct Entry<'a> {
        #[serde(rename = "mediaType")]
        media_type: &'a str,
        digest: &'a str,
        size: u64,
        annotations: Names<'a>,
    }
    #[derive(Serialize)]
    struct Names<'a> {
        #[serde(rename = "io.containerd.image.name")]
        name: &'a str,
        #[serde(rename = "org.opencontainers.image.ref.name")]
        tag: &'a str,
    }
    let manifests = images
        .iter()
        .map(|image| Entry {
            media_type: &image.target.media_type,
            digest: &image.target.digest,
            size: image.target.size,
            annotations: Names {
                name: &image.name,
                tag: image.name.rsplit_once(':').map_or("latest", |(_, t)| t),
            },
        })
        .collect();
    Ok(serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: INDEX_V1,
        manifests,
    })?)
}

/// `manifest.json` of an image archive (the Docker format `docker load` reads on the
/// classic store): config, tags and layers of each image, as paths in the archive. Images
/// with the same config and layers are one entry with all their tags.
pub fn archive_manifest(images: &[ArchiveImage]) -> anyhow::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Entry {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "RepoTags")]
        repo_tags: Vec<String>,
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let path = |digest: &str| -> anyhow::Result<String> {
        let hex = sha256_hex(digest).with_context(|| format!("{digest} is not a sha256 digest"))?;
        Ok(format!("blobs/sha256/{hex}"))
    };
    let mut entries: Vec<Entry> = Vec::new();
    for image in images {
        let config = path(&image.config)?;
        let layers = image
            .layers
            .iter()
            .map(|l| path(l))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tag = familiar(&image.name);
        match entries
            .iter_mut()
            .find(|e| e.config == config && e.layers == layers)
        {
            Some(entry) => entry.repo_tags.push(tag),
            None => entries.push(Entry {
                config,
                repo_tags: vec![tag],
                layers,
            }),
        }
    }
    Ok(serde_json::to_vec(&entries)?)
}

/// `oci-layout`, byte for byte as `docker save` writes it.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_as_the_engine_names_them() {
        let n = |r: &str| normalize(r);
        assert_eq!(
            n("busybox").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            n("python:3.9-slim").as_deref(),
            Some("docker.io/library/python:3.9-slim")
        );
        assert_eq!(n("me/app:1").as_deref(), Some("docker.io/me/app:1"));
        assert_eq!(n("ghcr.io/o/x").as_deref(), Some("ghcr.io/o/x:latest"));
        assert_eq!(
            n("localhost:5000/x").as_deref(),
            Some("localhost:5000/x:latest")
        );
        assert_eq!(n("localhost/x:2").as_deref(), Some("localhost/x:2"));
        assert_eq!(n("a@sha256:00"), None);
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/me/app:1"), "me/app:1");
        assert_eq!(familiar("ghcr.io/o/x:latest"), "ghcr.io/o/x:latest");
    }

    #[test]
    fn indexes_and_manifests() {
        let d = |m: &str, h: char| {
            format!(
                r#"{{"mediaType":"{m}","digest":"sha256:{}","size":3}}"#,
                h.to_string().repeat(64)
            )
        };
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            d(MANIFEST_V1, 'a')
        );
        let Content::Index(list) = parse(INDEX_V1, index.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].media_type, MANIFEST_V1);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_V1}","config":{},"layers":[{},{}]}}"#,
            d("application/vnd.oci.image.config.v1+json", 'c'),
            d("application/vnd.oci.image.layer.v1.tar+gzip", '1'),
            d("application/vnd.oci.image.layer.v1.tar+zstd", '2'),
        );
        let Content::Manifest { config, layers } = parse(INDEX_V1, manifest.as_bytes()).unwrap()
        else {
            panic!("not a manifest")
        };
        assert_eq!(config.digest, format!("sha256:{}", "c".repeat(64)));
        assert_eq!(layers.len(), 2);
        assert!(parse(MANIFEST_V1, b"{}").is_err());
        assert!(parse(MANIFEST_V1, b"[").is_err());
        assert_eq!(sha256_hex("sha256:AB"), None);
        assert!(sha256_hex(&format!("sha256:{}", "0".repeat(64))).is_some());
    }

    #[test]
    fn archive_files_name_each_image() {
        let hex = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let images = [ArchiveImage {
            name: "docker.io/library/busybox:latest".into(),
            target: Descriptor {
                media_type: MANIFEST_V1.into(),
                digest: hex('a'),
                size: 405,
                platform: None,
                annotations: None,
            },
            config: hex('c'),
            layers: vec![hex('1')],
        }];
        let index: serde_json::Value =
            serde_json::from_slice(&archive_index(&images).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
        assert_eq!(index["manifests"][0]["size"], 405);
        let manifest: serde_json::Value =
            serde_json::from_slice(&archive_manifest(&images).unwrap()).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "busybox:latest");
        assert_eq!(
            manifest[0]["Config"],
            format!("blobs/sha256/{}", "c".repeat(64))
        );
        assert_eq!(
            manifest[0]["Layers"][0],
            format!("blobs/sha256/{}", "1".repeat(64))
        );
        // docker save's field order, byte for byte
        let text = String::from_utf8(archive_index(&images).unwrap()).unwrap();
        assert!(
            text.starts_with(&format!(
                r#"{{"schemaVersion":2,"mediaType":"{INDEX_V1}","manifests":[{{"mediaType":"{MANIFEST_V1}","digest":"sha256:aaaa"#
            )),
            "{text}"
        );
        // a second tag of the same image joins its entry
        let mut two = images.to_vec();
        two.push(ArchiveImage {
            name: "docker.io/library/other:1".into(),
            ..images[0].clone()
        });
        let manifest: serde_json::Value =
            serde_json::from_slice(&archive_manifest(&two).unwrap()).unwrap();
        assert_eq!(manifest.as_array().map(Vec::len), Some(1));
        assert_eq!(
            manifest[0]["RepoTags"],
            serde_json::json!(["busybox:latest", "other:1"])
        );
    }
}
