//! The pack index reader (`NAME.pack-index`, which comes with the parts it names, so it is
//! hostile input) and the `--split` size parser on arbitrary text: never panic; an index
//! that reads writes back to the same index, and its parts add up as it promises.
#![no_main]

#[allow(dead_code)]
#[path = "../../xtask/src/model/mod.rs"]
mod model;

use libfuzzer_sys::fuzz_target;
use model::pack::{parse_size, part_name, PackIndex, MIN_PART_SIZE};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(size) = parse_size(text) {
        assert!(size >= MIN_PART_SIZE);
    }
    let Ok(index) = PackIndex::parse(text) else {
        return;
    };
    assert_eq!(PackIndex::parse(&index.to_text()).expect("a written index reads"), index);
    let total: u64 = index.parts.iter().map(|p| p.size).sum();
    assert_eq!(total, index.total_size);
    for (i, part) in index.parts.iter().enumerate() {
        assert_eq!(part.name, part_name(&index.name, i + 1));
        assert!(part.size <= index.part_size && part.size > 0);
    }
});
