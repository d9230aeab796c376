//! The Dockerfile parser and stage resolution on arbitrary text: never panics, and a
//! resolution names only stages the file has.
#![no_main]

#[allow(dead_code)]
#[path = "../../xtask/src/model/mod.rs"]
mod model;

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(dockerfile) = model::dockerfile::parse(text) else {
        return;
    };
    let args = BTreeMap::from([
        ("BASE".to_string(), "alpine:3.20".to_string()),
        ("VERSION".to_string(), "${BASE}".to_string()),
    ]);
    let _ = dockerfile.declared_args();
    let mut targets = vec![None];
    targets.extend(dockerfile.stage_names().into_iter().map(Some));
    for target in &targets {
        for args in [&BTreeMap::new(), &args] {
            if let Ok(resolved) = dockerfile.resolve(args, target.as_deref()) {
                assert!(
                    !resolved.stages.is_empty(),
                    "a build runs at least one stage"
                );
            }
        }
    }
});
