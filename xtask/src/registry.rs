//! The registry API (the OCI distribution spec) as `cache-publish` uses it: is a manifest
//! there under this tag with this digest, is a blob there, upload a blob, put a manifest.
//!
//! Credentials are the user's own Docker login, read where `docker login` keeps them (the
//! credential helper it names, or `auths` in the Docker config) when the registry asks
//! for them, held in memory for this run and sent only to that registry (and the token
//! service it names). Nothing is written anywhere.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::model::registry::{FleetRegistry, INDEX_TYPES, MANIFEST_TYPES};

/// What a builder would ask for: every manifest type the bundle can hold.
fn accept() -> String {
    INDEX_TYPES
        .iter()
        .chain(MANIFEST_TYPES.iter())
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// A user name and password (or identity token) for one registry.
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

/// Reads the user's Docker login for a registry host (`docker::registry_credentials`).
pub type FindCredentials = Box<dyn Fn(&str) -> anyhow::Result<Option<Credentials>>>;

pub struct Client {
    agent: ureq::Agent,
    /// `http://host` or `https://host`.
    base: String,
    host: String,
    /// Asked for once, on the first 401.
    credentials: Option<Option<Credentials>>,
    find_credentials: FindCredentials,
    /// `Authorization` values by repository (a bearer token is per scope).
    authorization: BTreeMap<String, String>,
}

impl Client {
    /// A client of `fleet`'s registry; `find_credentials` reads the user's Docker login for
    /// a host when the registry asks for one.
    pub fn new(fleet: &FleetRegistry, find_credentials: FindCredentials) -> anyhow::Result<Client> {
        let tls = native_tls::TlsConnector::new().context("setting up TLS")?;
        let agent = ureq::AgentBuilder::new()
            .tls_connector(Arc::new(tls))
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(300))
            .build();
        let scheme = if fleet.insecure { "http" } else { "https" };
        Ok(Client {
            agent,
            base: format!("{scheme}://{}", fleet.spec.host),
            host: fleet.spec.host.clone(),
            credentials: None,
            find_credentials,
            authorization: BTreeMap::new(),
        })
    }

    /// `GET /v2/`: the registry answers (with or without credentials).
    pub fn check(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/v2/", self.base);
        self.send("", |a| a.get(&url), None)
            .with_context(|| format!("reaching the registry {}", self.base))?
            .ok_or_else(|| anyhow::anyhow!("{url} answered 404: not a registry"))?;
        Ok(())
    }

    /// The digest the registry has under `repo:reference`, if any.
    pub fn manifest_digest(
        &mut self,
        repo: &str,
        reference: &str,
    ) -> anyhow::Result<Option<String>> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let accept = accept();
        let response = self.send(repo, |a| a.head(&url).set("Accept", &accept), None)?;
        Ok(response.map(|r| {
            r.header("Docker-Content-Digest")
                .unwrap_or_default()
                .to_string()
        }))
    }

    /// Whether the registry has the blob in `repo`.
    pub fn blob_exists(&mut self, repo: &str, digest: &str) -> anyhow::Result<bool> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        Ok(self.send(repo, |a| a.head(&url), None)?.is_some())
    }

    /// Mounts a blob the registry has in `from` into `repo`; false when it would not.
    pub fn mount_blob(&mut self, repo: &str, digest: &str, from: &str) -> anyhow::Result<bool> {
        let url = format!(
            "{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}",
            self.base
        );
        let response = self.send(repo, |a| a.post(&url), Some(&[]))?;
        Ok(response.is_some_and(|r| r.status() == 201))
    }

    /// Uploads a blob of `size` bytes read from `body`; the registry checks that its
    /// content has `digest` and refuses it otherwise.
    pub fn upload_blob(
        &mut self,
        repo: &str,
        digest: &str,
        size: u64,
        body: impl Read,
    ) -> anyhow::Result<()> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let started = self
            .send(repo, |a| a.post(&url), Some(&[]))?
            .with_context(|| format!("{url} answered 404"))?;
        let location = started
            .header("Location")
            .context("the registry started an upload without a Location")?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_string()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{separator}digest={digest}");
        let mut request = self
            .agent
            .put(&put)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &size.to_string());
        if let Some(auth) = self.authorization.get(repo) {
            request = request.set("Authorization", auth);
        }
        match request.send(body) {
            Ok(_) => Ok(()),
            Err(e) => Err(describe(e)).with_context(|| format!("uploading {digest} to {repo}")),
        }
    }

    /// Puts a manifest (or index) under `repo:reference`.
    pub fn put_manifest(
        &mut self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        self.send(
            repo,
            |a| a.put(&url).set("Content-Type", media_type),
            Some(bytes),
        )?
        .with_context(|| format!("{url} answered 404"))?;
        Ok(())
    }

    /// Sends a request made by `make` (with `body`, if any), with the repository's authorization;
    /// on a 401, gets it (once) and sends again. `None` for a 404.
    fn send(
        &mut self,
        repo: &str,
        make: impl Fn(&ureq::Agent) -> ureq::Request,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Option<ureq::Response>> {
        for attempt in 0..2 {
            let mut request = make(&self.agent);
            if let Some(auth) = self.authorization.get(repo) {
                request = request.set("Authorization", auth);
            }
            let what = format!("{} {}", request.method(), request.url());
            let sent = match body {
                None => request.call(),
                Some(bytes) => request.send_bytes(bytes),
            };
            match sent {
                Ok(response) => return Ok(Some(response)),
                Err(ureq::Error::Status(404, _)) => return Ok(None),
                Err(ureq::Error::Status(401, response)) if attempt == 0 => {
                    let challenge = response
                        .header("WWW-Authenticate")
                        .unwrap_or_default()
                        .to_string();
                    let auth = self.authorize(repo, &challenge)?;
                    self.authorization.insert(repo.to_string(), auth);
                }
                Err(e) => return Err(describe(e)).with_context(|| what),
            }
        }
        bail!(
            "the registry {} refused the credentials of your Docker login for {repo}; run \
             `docker login {}` with an account that may push there",
            self.host,
            self.host
        )
    }

    /// The `Authorization` value that answers `challenge` for `repo`.
    fn authorize(&mut self, repo: &str, challenge: &str) -> anyhow::Result<String> {
        if self.credentials.is_none() {
            self.credentials = Some((self.find_credentials)(&self.host)?);
        }
        let credentials = self.credentials.as_ref().and_then(Option::as_ref);
        let basic = credentials.map(|c| {
            use base64_lite::encode;
            format!(
                "Basic {}",
                encode(format!("{}:{}", c.username, c.secret).as_bytes())
            )
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.with_context(|| no_login(&self.host));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            bail!(
                "the registry {} asks for {challenge:?}, which cache-publish does not speak",
                self.host
            );
        }
        let params = challenge_params(params);
        let realm = params
            .get("realm")
            .context("a Bearer challenge without a realm")?;
        let mut url = format!("{realm}?scope=repository:{repo}:pull,push");
        if let Some(service) = params.get("service") {
            url.push_str(&format!("&service={service}"));
        }
        let mut request = self.agent.get(&url);
        if let Some(basic) = &basic {
            request = request.set("Authorization", basic);
        }
        let response = request.call().map_err(describe).with_context(|| {
            format!(
                "getting a token for {repo} from {realm}; {}",
                no_login(&self.host)
            )
        })?;
        let body: serde_json::Value =
            serde_json::from_str(&response.into_string()?).context("reading the token")?;
        let token = body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .context("the token service answered no token")?;
        Ok(format!("Bearer {token}"))
    }
}

fn no_login(host: &str) -> String {
    format!("the registry {host} asks for credentials: run `docker login {host}` first")
}

/// `realm="…",service="…"` as a map.
fn challenge_params(params: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((v, next)) => (v, next),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.insert(
            key.trim().trim_start_matches(',').trim().to_string(),
            value.to_string(),
        );
        rest = next.trim_start_matches([',', ' ']);
    }
    out
}

/// A ureq error in words: the status and what the registry said.
fn describe(e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, response) => {
            let body = response.into_string().unwrap_or_default();
            let body: String = body.chars().take(400).collect();
            anyhow::anyhow!("the registry answered {code}: {}", body.trim())
        }
        ureq::Error::Transport(t) => anyhow::anyhow!("{t}"),
    }
}

/// Base64 for a `Basic` header, which is all this module encodes.
mod base64_lite {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
                if i <= chunk.len() {
                    out.push(TABLE[(n >> shift) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let mut bits = 0u32;
        let mut count = 0;
        let mut out = Vec::new();
        for c in text.trim().bytes().filter(|&c| c != b'=') {
            let v = TABLE.iter().position(|&t| t == c)? as u32;
            bits = (bits << 6) | v;
            count += 6;
            if count >= 8 {
                count -= 8;
                out.push((bits >> count) as u8);
            }
        }
        Some(out)
    }
}

/// The `user:password` of an `auths` entry of the Docker config.
pub fn decode_auth(auth: &str) -> Option<Credentials> {
    let text = String::from_utf8(base64_lite::decode(auth)?).ok()?;
    let (username, secret) = text.split_once(':')?;
    Some(Credentials {
        username: username.to_string(),
        secret: secret.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_round_trips_and_challenges_parse() {
        for text in ["u:p", "user:pa:ss", "a:", "ab:cd"] {
            let encoded = base64_lite::encode(text.as_bytes());
            assert_eq!(base64_lite::decode(&encoded).unwrap(), text.as_bytes());
        }
        assert_eq!(base64_lite::encode(b"user:pass"), "dXNlcjpwYXNz");
        let c = decode_auth("dXNlcjpwYXNz").unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("user", "pass"));
        let p = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="x""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "x");
    }
}
