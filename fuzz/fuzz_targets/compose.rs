//! The compose loader on arbitrary text: it returns a model or an error, never panics,
//! never loops. The input is the compose file; `---8<---` splits off a second file that
//! `extends: {file: other.yml}` and `include:` can reach, and a third, the `.env`.
#![no_main]

#[allow(dead_code)]
#[path = "../../xtask/src/model/mod.rs"]
mod model;

use std::collections::BTreeMap;

use camino::Utf8Path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, "---8<---\n");
    let compose = parts.next().unwrap_or_default().to_string();
    let other = parts.next().map(str::to_string);
    let dotenv = parts.next().map(str::to_string);
    let read = |path: &Utf8Path| -> std::io::Result<String> {
        let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
        match path.as_str() {
            "/p/compose.yaml" => Ok(compose.clone()),
            "/p/other.yml" => other.clone().ok_or_else(missing),
            "/p/.env" => dotenv.clone().ok_or_else(missing),
            _ => Err(missing()),
        }
    };
    let env = BTreeMap::from([("TAG".to_string(), "1.0".to_string())]);
    if let Ok(model) = model::compose::load(Utf8Path::new("/p/compose.yaml"), &env, &read) {
        for service in model.services.values() {
            if let Some(build) = &service.build {
                if let model::compose::Context::Local(dir) = &build.context {
                    assert!(dir.is_absolute(), "a local context is absolute: {dir}");
                }
            }
        }
    }
});
