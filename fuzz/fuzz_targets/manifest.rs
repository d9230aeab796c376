//! The bundle's manifest and SHA256SUMS readers on arbitrary text: never panic; a
//! manifest that reads writes back to the same manifest, and its own SHA256SUMS agrees
//! with it.
#![no_main]

#[allow(dead_code)]
#[path = "../../xtask/src/model/mod.rs"]
mod model;

use libfuzzer_sys::fuzz_target;
use model::manifest::{is_safe_relative_path, parse_sha256sums, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sums) = parse_sha256sums(text) {
        for (path, digest) in &sums {
            assert_eq!(digest.len(), 64, "{path}");
        }
    }
    let Ok(manifest) = Manifest::from_yaml(text) else {
        return;
    };
    let again = Manifest::from_yaml(&manifest.to_yaml()).expect("a written manifest reads");
    assert_eq!(again, manifest);
    let _ = manifest.check_sums_agree(text, &"0".repeat(64));
    let plain = manifest
        .files
        .iter()
        .all(|f| is_safe_relative_path(&f.path) && !f.path.contains(['\n', '\r']));
    let digests_ok = manifest
        .files
        .iter()
        .all(|f| f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
    let unique = {
        let mut paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        paths.sort();
        paths.windows(2).all(|w| w[0] != w[1])
    };
    if plain && digests_ok && unique {
        let lower = manifest
            .files
            .iter()
            .all(|f| f.sha256 == f.sha256.to_ascii_lowercase());
        if lower {
            manifest
                .check_sums_agree(&manifest.sha256sums(&"0".repeat(64)), &"0".repeat(64))
                .expect("a manifest agrees with its own SHA256SUMS");
        }
    }
});
