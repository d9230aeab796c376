//! patch-compose on arbitrary compose text. Properties: never panics; a patched file
//! parses (serde_yaml); patching it again gives the same bytes; reverting gives back the
//! input when the input had no markers of the tool's own.
#![no_main]

#[allow(dead_code)]
#[path = "../../xtask/src/model/mod.rs"]
mod model;

use libfuzzer_sys::fuzz_target;
use model::compose_patch::{apply, revert, ServicePatch, ADDED_MARKER, WAS_MARKER};

/// Values that stress quoting: `$`, quotes, `#`, a colon, a backslash, non-ASCII.
const ODD_VALUES: [&str; 6] = [
    "type=local,src=/srv/docker-build-cache/build-cache/x",
    "it's \"quoted\" # not a comment",
    "$HOME and ${X:-y}",
    "a: b",
    "C:\\path\\x",
    "ünï cödé\t",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The patches: one per service of the document (those with and without `build:`),
    // so the patcher meets the services the text really has.
    let services: Vec<String> = serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|doc| doc.get("services")?.as_mapping().cloned())
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let pick = text.len() % ODD_VALUES.len();
    let patches: Vec<ServicePatch> = services
        .iter()
        .enumerate()
        .map(|(i, service)| ServicePatch {
            service: service.clone(),
            cache_from: vec![ODD_VALUES[(pick + i) % ODD_VALUES.len()].to_string()],
            additional_contexts: vec![("wheels".into(), ODD_VALUES[pick].into())],
            args: if i % 2 == 0 {
                vec![("PIP_NO_INDEX".into(), "1".into())]
            } else {
                Vec::new()
            },
        })
        .collect();
    let reverted = revert(text);
    let Ok(patched) = apply(text, &patches) else {
        return;
    };
    let body = patched.strip_prefix('\u{feff}').unwrap_or(&patched);
    if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(body) {
        panic!("the patched file does not parse: {e}\n{patched}");
    }
    let again = apply(&patched, &patches).expect("a patched file patches again");
    assert_eq!(again, patched, "a second apply changed the file");
    let has_markers = text.contains(ADDED_MARKER.trim_start()) || text.contains(WAS_MARKER);
    if !has_markers {
        assert_eq!(
            reverted.as_deref().ok(),
            Some(text),
            "revert of an unmarked file"
        );
        let back = revert(&patched).expect("a patched file reverts");
        assert_eq!(back, text, "revert did not restore the input");
    }
});
