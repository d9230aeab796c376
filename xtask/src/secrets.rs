//! Build args that look like secrets.
//!
//! A build arg's value is written into the image's history (`RUN |1 TOKEN=… /bin/sh -c …`)
//! and into the cache images of the inline and legacy strategies, which travel in the
//! bundle. The export cannot keep such a value out of what it builds, so it warns, naming
//! the service and the arg (never the value), and says what to use instead: build secrets.

use std::collections::BTreeMap;

/// Words that make an arg name look like a secret (compared in upper case).
const SECRET_WORDS: [&str; 8] = [
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "KEY",
    "AUTH",
    "CREDENTIAL",
    "PRIVATE",
];

/// Whether a build arg's name looks like it carries a secret.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|word| upper.contains(word))
}

/// One warning per build arg (by service) whose name looks like a secret.
pub fn build_arg_warnings<'a>(
    services: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (service, args) in services {
        for name in args.keys().filter(|name| looks_secret(name)) {
            warnings.push(format!(
                "service {service}: build arg {name} looks like a secret. Build args are baked \
                 into the image's history and cache images, which this bundle may carry; pass \
                 it as a build secret instead (compose `secrets:` in the build section, \
                 `docker build --secret id={id},env={name}`, read with \
                 `RUN --mount=type=secret,id={id}`)",
                id = name.to_ascii_lowercase()
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_names() {
        for name in [
            "NPM_TOKEN",
            "api_key",
            "DB_PASSWORD",
            "GithubAuth",
            "AWS_SECRET_ACCESS_KEY",
            "PIP_CREDENTIALS",
            "SSH_PRIVATE",
        ] {
            assert!(looks_secret(name), "{name}");
        }
        for name in ["NODE_ENV", "PIP_NO_INDEX", "VERSION", "BASE_IMAGE"] {
            assert!(!looks_secret(name), "{name}");
        }
    }

    #[test]
    fn warnings_name_service_and_arg_not_the_value() {
        let args = BTreeMap::from([
            ("NPM_TOKEN".to_string(), "npm_s3cr3t".to_string()),
            ("NODE_ENV".to_string(), "production".to_string()),
        ]);
        let warnings = build_arg_warnings([("web", &args)]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = &warnings[0];
        assert!(w.contains("service web: build arg NPM_TOKEN"), "{w}");
        assert!(w.contains("history") && w.contains("--secret"), "{w}");
        assert!(!w.contains("npm_s3cr3t"), "{w}");
    }
}
