//! A private registry that serves a fleet of offline builders: the names under which
//! `cache-publish` pushes what a bundle holds, the references `patch-compose --registry`
//! writes for the builders, and the OCI documents (image indexes, manifests, BuildKit's
//! cache index) read on the way.
//!
//! Where things go in `HOST[:PORT][/PREFIX]`:
//! - a Docker Hub base image under its Docker Hub path (`busybox:1.36` →
//!   `PREFIX/library/busybox:1.36`), so that with no prefix the registry serves as the
//!   builders' `registry-mirrors` entry;
//! - a base image of another registry under that registry's host name
//!   (`ghcr.io/o/x:1` → `PREFIX/ghcr.io/o/x:1`): mirrors cover Docker Hub only, so the
//!   builds get it as a named context (`docker-image://HOST/PREFIX/ghcr.io/o/x:1`), which
//!   BuildKit puts in place of the `FROM` of that name;
//! - each service's build cache as a `type=registry` cache, `PREFIX/<project>-build-cache:<service>`;
//! - each npm cache image under its own name, `PREFIX/<project>-<service>-npm-cache:<hash>`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Docker Hub, as image names that name no registry mean it.
pub const DOCKER_HUB: &str = "docker.io";

/// Media types of the documents that name other documents (PUT as manifests).
pub const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
pub const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The registry the builders of a fleet use: where, and whether over plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRegistry {
    pub spec: RegistrySpec,
    /// Plain HTTP (`--insecure`): the builders need it in `insecure-registries`.
    pub insecure: bool,
}

/// `HOST[:PORT][/PREFIX]` as the user gave it to `--registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySpec {
    /// `host` or `host:port`.
    pub host: String,
    /// Repository path prefix, without slashes at either end; empty for none.
    pub prefix: String,
}

/// Parses `--registry`: a host (name or IPv4, optional port) and an optional path prefix
/// of lower-case repository components. No scheme: `--insecure` says HTTP.
pub fn parse_spec(spec: &str) -> Result<RegistrySpec, String> {
    if spec.contains("://") {
        return Err(format!(
            "{spec:?}: give HOST[:PORT][/PREFIX] without a scheme (add --insecure for a \
             registry that speaks plain HTTP)"
        ));
    }
    let spec = spec.trim_end_matches('/');
    let (host, prefix) = spec.split_once('/').unwrap_or((spec, ""));
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !name.starts_with(['-', '.']);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !name_ok || !port_ok {
        return Err(format!(
            "{spec:?}: {host:?} is not HOST or HOST:PORT (e.g. 10.0.0.5:5000 or \
             registry.example.com)"
        ));
    }
    if !prefix.is_empty() && !prefix.split('/').all(is_path_component) {
        return Err(format!(
            "{spec:?}: the prefix {prefix:?} is not a repository path (lower-case letters, \
             digits and `._-` between them, components separated by `/`)"
        ));
    }
    Ok(RegistrySpec {
        host: host.to_string(),
        prefix: prefix.to_string(),
    })
}

/// A component of a repository path, as the distribution spec allows it.
fn is_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    !c.is_empty()
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
}

impl std::fmt::Display for RegistrySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix.as_str() {
            "" => write!(f, "{}", self.host),
            prefix => write!(f, "{}/{prefix}", self.host),
        }
    }
}

impl RegistrySpec {
    /// The repository `path` under the prefix.
    pub fn repository(&self, path: &str) -> String {
        match self.prefix.as_str() {
            "" => path.to_string(),
            prefix => format!("{prefix}/{path}"),
        }
    }

    /// `HOST/PREFIX/path` followed by `:tag` or `@digest`.
    pub fn reference(&self, path: &str, tag: &str) -> String {
        format!("{}/{}{}", self.host, self.repository(path), tag_suffix(tag))
    }
}

/// `:tag`, or `@sha256:…` for a digest.
pub fn tag_suffix(tag: &str) -> String {
    if tag.starts_with("sha256:") {
        format!("@{tag}")
    } else {
        format!(":{tag}")
    }
}

/// An image name split as a registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// `docker.io`, `ghcr.io`, `localhost:5000`…
    pub registry: String,
    /// `library/busybox`, `o/x`…
    pub path: String,
    /// `latest`, `1.36`, or `sha256:…` for a name pinned by digest.
    pub tag: String,
}

/// Splits an image name as Docker normalizes it (`busybox` is
/// `docker.io/library/busybox:latest`). `None` for what is not an image name.
pub fn parse_image(name: &str) -> Option<ImageName> {
    let (rest, digest) = match name.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (name, None),
    };
    let (first, remainder) = rest.split_once('/').unwrap_or(("", rest));
    let (registry, path) =
        if !first.is_empty() && (first.contains(['.', ':']) || first == "localhost") {
            (first.to_string(), remainder.to_string())
        } else {
            (DOCKER_HUB.to_string(), rest.to_string())
        };
    let registry = match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => registry,
    };
    // A tag is after the last ':' of the last component.
    let last_slash = path.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match path[last_slash..].rfind(':') {
        Some(i) => (
            path[..last_slash + i].to_string(),
            path[last_slash + i + 1..].to_string(),
        ),
        None => (path.clone(), "latest".to_string()),
    };
    let path = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let tag = match digest {
        Some(d) => d.to_string(),
        None => tag,
    };
    let ok = path.split('/').all(is_path_component) && (tag.starts_with("sha256:") || is_tag(&tag));
    ok.then_some(ImageName {
        registry,
        path,
        tag,
    })
}

fn is_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl ImageName {
    /// Where the image goes in the fleet's registry: Docker Hub images under their Docker
    /// Hub path (what a `registry-mirrors` lookup asks for), others under their
    /// registry's host name.
    pub fn fleet_path(&self) -> String {
        if self.registry == DOCKER_HUB {
            self.path.clone()
        } else {
            format!("{}/{}", self.registry.replace(':', "-"), self.path)
        }
    }

    /// Whether a builder resolves the image through the engine's `registry-mirrors`
    /// (Docker Hub images, with no prefix: a mirror has no path), or needs it handed over
    /// as a named context.
    pub fn through_mirror(&self, spec: &RegistrySpec) -> bool {
        self.registry == DOCKER_HUB && spec.prefix.is_empty()
    }
}

/// The repository of the project's build caches (one tag per service).
pub fn build_cache_path(project: &str) -> String {
    let name: String = format!("{project}-build-cache")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    name.trim_start_matches(['.', '_', '-']).to_string()
}

/// The `cache_from` entry of a service's build cache in the registry.
pub fn registry_cache_from(
    spec: &RegistrySpec,
    insecure: bool,
    project: &str,
    tag: &str,
) -> String {
    let reference = spec.reference(&build_cache_path(project), tag);
    match insecure {
        true => format!("type=registry,ref={reference},registry.insecure=true"),
        false => format!("type=registry,ref={reference}"),
    }
}

/// A descriptor of an OCI document: what it points at.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

/// An image index, an image manifest, or a BuildKit cache index (an index whose
/// `manifests` are the cache's layers and its config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The document's own media type (what a PUT sends as `Content-Type`).
    pub media_type: String,
    /// An index's entries.
    pub manifests: Vec<Descriptor>,
    /// A manifest's config and layers.
    pub blobs: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Reads an OCI or Docker image index or manifest (also `index.json` of a layout).
pub fn parse_document(bytes: &[u8]) -> Result<Document, String> {
    let raw: RawDocument = serde_json::from_slice(bytes)
        .map_err(|e| format!("not an image index or manifest: {e}"))?;
    let media_type = match (&raw.media_type, &raw.manifests, &raw.layers) {
        (Some(t), _, _) => t.clone(),
        (None, Some(_), _) => INDEX_TYPES[0].to_string(),
        (None, None, Some(_)) => MANIFEST_TYPES[0].to_string(),
        (None, None, None) => return Err("neither an index nor a manifest".into()),
    };
    let is_index = INDEX_TYPES.contains(&media_type.as_str());
    if !is_index && !MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(format!(
            "media type {media_type:?} is not an image index or manifest"
        ));
    }
    let manifests = raw.manifests.unwrap_or_default();
    let blobs: Vec<Descriptor> = raw
        .config
        .into_iter()
        .chain(raw.layers.unwrap_or_default())
        .collect();
    for d in manifests.iter().chain(&blobs) {
        if !is_sha256(&d.digest) {
            return Err(format!("{:?} is not a sha256 digest", d.digest));
        }
    }
    Ok(Document {
        media_type,
        manifests,
        blobs,
    })
}

/// `sha256:` and 64 lower-case hex digits.
pub fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether a descriptor points at another manifest or index (rather than a blob).
pub fn is_manifest(d: &Descriptor) -> bool {
    INDEX_TYPES.contains(&d.media_type.as_str()) || MANIFEST_TYPES.contains(&d.media_type.as_str())
}

/// The image manifest of a one-layer image (the npm cache image): config and one
/// uncompressed layer.
pub fn one_layer_manifest(
    config_digest: &str,
    config_size: u64,
    layer_digest: &str,
    layer_size: u64,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPES[0],
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    }))
    .expect("a JSON value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("10.0.0.5:5000").unwrap(),
            RegistrySpec {
                host: "10.0.0.5:5000".into(),
                prefix: String::new()
            }
        );
        let spec = parse_spec("registry.example.com/team/fleet/").unwrap();
        assert_eq!(spec.host, "registry.example.com");
        assert_eq!(spec.prefix, "team/fleet");
        assert_eq!(
            spec.reference("library/busybox", "1.36"),
            "registry.example.com/team/fleet/library/busybox:1.36"
        );
        for bad in [
            "http://r:5000",
            "r:99999",
            "r:",
            "/x",
            "r/Upper",
            "r/a//b",
            "-r",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_names_are_split_as_docker_normalizes_them() {
        let split = |n: &str| {
            let i = parse_image(n).unwrap();
            (i.registry, i.path, i.tag)
        };
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            split("busybox"),
            s("docker.io", "library/busybox", "latest")
        );
        assert_eq!(
            split("python:3.12-slim"),
            s("docker.io", "library/python", "3.12-slim")
        );
        assert_eq!(
            split("docker.io/library/node:20"),
            s("docker.io", "library/node", "20")
        );
        assert_eq!(
            split("bitnami/redis:7"),
            s("docker.io", "bitnami/redis", "7")
        );
        assert_eq!(split("ghcr.io/o/x:1"), s("ghcr.io", "o/x", "1"));
        assert_eq!(
            split("localhost:5000/x"),
            s("localhost:5000", "x", "latest")
        );
        let pinned = format!("quay.io/o/x@sha256:{}", "a".repeat(64));
        assert_eq!(
            split(&pinned),
            s("quay.io", "o/x", &format!("sha256:{}", "a".repeat(64)))
        );
        assert!(parse_image("Busybox").is_none());
        assert!(parse_image("x:bad tag").is_none());
    }

    #[test]
    fn where_images_go_and_how_builders_find_them() {
        let plain = parse_spec("127.0.0.1:5000").unwrap();
        let prefixed = parse_spec("r.example/fleet").unwrap();
        let hub = parse_image("busybox:1.36").unwrap();
        let ghcr = parse_image("ghcr.io/o/x:1").unwrap();
        let local = parse_image("localhost:5000/x:2").unwrap();
        assert_eq!(hub.fleet_path(), "library/busybox");
        assert_eq!(ghcr.fleet_path(), "ghcr.io/o/x");
        assert_eq!(local.fleet_path(), "localhost-5000/x");
        assert!(hub.through_mirror(&plain));
        assert!(!hub.through_mirror(&prefixed));
        assert!(!ghcr.through_mirror(&plain));
        assert_eq!(
            registry_cache_from(&plain, true, "fixture", "api"),
            "type=registry,ref=127.0.0.1:5000/fixture-build-cache:api,registry.insecure=true"
        );
        assert_eq!(
            registry_cache_from(&prefixed, false, "Fixture", "api"),
            "type=registry,ref=r.example/fleet/fixture-build-cache:api"
        );
    }

    #[test]
    fn documents() {
        let d = |t: &str, c: char| {
            format!(
                r#"{{"mediaType":"{t}","digest":"sha256:{}","size":3}}"#,
                c.to_string().repeat(64)
            )
        };
        let cache = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{}]}}"#,
            INDEX_TYPES[0],
            d("application/vnd.oci.image.layer.v1.tar+zstd", 'a'),
            d("application/vnd.buildkit.cacheconfig.v0", 'b')
        );
        let doc = parse_document(cache.as_bytes()).unwrap();
        assert_eq!(doc.media_type, INDEX_TYPES[0]);
        assert_eq!(doc.manifests.len(), 2);
        assert!(!doc.manifests.iter().any(is_manifest));
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
            d("application/vnd.oci.image.config.v1+json", 'c'),
            d("application/vnd.oci.image.layer.v1.tar+gzip", 'd')
        );
        let doc = parse_document(manifest.as_bytes()).unwrap();
        assert_eq!(doc.media_type, MANIFEST_TYPES[0]);
        assert_eq!(doc.blobs.len(), 2);
        let bad = r#"{"layers":[{"digest":"sha256:../../x","size":1}]}"#;
        assert!(parse_document(bad.as_bytes())
            .unwrap_err()
            .contains("not a sha256"));
        assert!(parse_document(br#"{"mediaType":"text/plain"}"#).is_err());
        let one = one_layer_manifest(
            &format!("sha256:{}", "c".repeat(64)),
            10,
            &format!("sha256:{}", "d".repeat(64)),
            512,
        );
        let doc = parse_document(&one).unwrap();
        assert_eq!(doc.blobs[1].size, 512);
    }
}
