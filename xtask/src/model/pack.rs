//! The packed bundle's formats: the `--split` size, the part names and the index.
//!
//! `cache-pack` writes the bundle as one uncompressed tar whose entries come in a fixed
//! order: `SHA256SUMS`, `manifest.yaml`, then every file the manifest lists, in manifest
//! order, nothing else. Split, that stream is cut into parts of at most `--split` bytes,
//! `NAME.tar.part-001`, `NAME.tar.part-002`, … (`cat` joins them back into `NAME.tar`),
//! and `NAME.pack-index` names each part with its size and sha256, in order:
//!
//! ```text
//! # comments
//! xtask-pack-index: 1
//! name: docker-build-cache
//! bundle-digest: <sha256 of SHA256SUMS>
//! part-size: 1992294400
//! total-size: 2500000000
//! part: docker-build-cache.tar.part-001 1992294400 <sha256>
//! part: docker-build-cache.tar.part-002 507705600 <sha256>
//! ```
//!
//! The index is hostile input like the rest of the bundle: [`PackIndex::parse`] accepts
//! exactly that shape (every key once, in that order, parts numbered from 001, every part
//! but the last exactly `part-size` bytes, the sizes adding up to `total-size`).

use anyhow::{bail, Context as _};

/// The index's format version; a reader refuses a newer one.
pub const INDEX_VERSION: u32 = 1;

/// The suffix of the index file: `NAME.pack-index`.
pub const INDEX_SUFFIX: &str = ".pack-index";

/// The smallest `--split` size: smaller parts are a mistake, not a medium.
pub const MIN_PART_SIZE: u64 = 1024;

/// Parses a `--split` size: digits, then an optional binary unit `K`, `M`, `G` or `T`
/// (`KiB`, `MB`, … mean the same; 1900M is 1900 × 2^20 bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let usage =
        || format!("`{text}` is not a size like 1900M or 2G (a whole number, then K, M, G or T)");
    if digits.is_empty() {
        return Err(usage());
    }
    let value: u64 = digits.parse().map_err(|_| usage())?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(usage()),
    };
    let bytes = value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes < MIN_PART_SIZE {
        return Err(format!(
            "`{text}` is less than {MIN_PART_SIZE} bytes; give a part size like 1900M"
        ));
    }
    Ok(bytes)
}

/// The file name of part `number` (from 1) of the pack `name`: `NAME.tar.part-001`.
pub fn part_name(name: &str, number: usize) -> String {
    format!("{name}.tar.part-{number:03}")
}

/// The file name of the index of the pack `name`.
pub fn index_name(name: &str) -> String {
    format!("{name}{INDEX_SUFFIX}")
}

/// The file name of the script `cache-pack` writes beside the pack `name`:
/// `import-NAME.sh`, which imports it on a server with sh and Docker alone.
pub fn script_name(name: &str) -> String {
    format!("import-{name}.sh")
}

/// That script (POSIX sh, the same for every pack): checks every part against the index,
/// lists the tar and refuses any entry that is not a regular file under a plain relative
/// name, unpacks into a new folder, checks every file against `SHA256SUMS`, then runs the
/// bundle's own `import-build-cache.sh` from it.
pub const IMPORT_SCRIPT: &str = include_str!("import_pack.sh");

/// A pack name: letters, digits, `.`, `_`, `-`, not starting with `.` or `-`.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Whether `file` looks like a part of the pack `name` (`NAME.tar.part-` then digits):
/// a file on disk that does so but is not in the index is an extra part.
pub fn looks_like_part(name: &str, file: &str) -> bool {
    file.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(".tar.part-"))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// One part of a split pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// `NAME.pack-index`: the parts of a split pack, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackIndex {
    pub name: String,
    /// sha256 of the bundle's `SHA256SUMS` (the first entry of the tar).
    pub bundle_digest: String,
    pub part_size: u64,
    pub total_size: u64,
    pub parts: Vec<PartEntry>,
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl PackIndex {
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "# The parts of a packed bundle, written by `cargo xtask cache-pack --split`.\n\
             # `cargo xtask cache-unpack --pack {index}` checks and unpacks them; joined in this\n\
             # order (cat {name}.tar.part-* > {name}.tar) they are one tar.\n\
             xtask-pack-index: {INDEX_VERSION}\nname: {name}\nbundle-digest: {}\n\
             part-size: {}\ntotal-size: {}\n",
            self.bundle_digest,
            self.part_size,
            self.total_size,
            index = index_name(&self.name),
            name = self.name,
        );
        for part in &self.parts {
            text.push_str(&format!(
                "part: {} {} {}\n",
                part.name, part.size, part.sha256
            ));
        }
        text
    }

    /// Reads an index, accepting exactly what [`PackIndex::to_text`] writes.
    pub fn parse(text: &str) -> anyhow::Result<PackIndex> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|(n, l)| (n + 1, l));
        let mut field = |key: &str| -> anyhow::Result<(usize, String)> {
            let Some((n, line)) = lines.next() else {
                bail!("the index ends before `{key}:`");
            };
            match line.split_once(": ") {
                Some((k, v)) if k == key && !v.is_empty() => Ok((n, v.to_string())),
                _ => bail!("line {n} is {line:?}, expected `{key}: …`"),
            }
        };
        let (n, version) = field("xtask-pack-index")?;
        match version.parse::<u32>() {
            Ok(INDEX_VERSION) => {}
            Ok(v) if v > INDEX_VERSION => bail!(
                "line {n}: index format {v}; this xtask reads format {INDEX_VERSION}: update \
                 xtask to the one that packed the bundle"
            ),
            _ => bail!("line {n}: {version:?} is not an index format version"),
        }
        let (n, name) = field("name")?;
        if !is_safe_name(&name) {
            bail!("line {n}: {name:?} is not a pack name (letters, digits, '.', '_', '-')");
        }
        let (n, bundle_digest) = field("bundle-digest")?;
        if !is_sha256(&bundle_digest) {
            bail!("line {n}: {bundle_digest:?} is not a sha256 (64 lower-case hex digits)");
        }
        let number = |key: &str, (n, v): (usize, String)| -> anyhow::Result<u64> {
            v.parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .with_context(|| format!("line {n}: {key} {v:?} is not a positive number"))
        };
        let part_size = number("part-size", field("part-size")?)?;
        let total_size = number("total-size", field("total-size")?)?;
        let mut parts = Vec::new();
        for (n, line) in lines {
            parts.push(parse_part(&name, parts.len() + 1, n, line)?);
        }
        let index = PackIndex {
            name,
            bundle_digest,
            part_size,
            total_size,
            parts,
        };
        index.check_sizes()?;
        Ok(index)
    }

    /// Every part but the last is `part_size` bytes, the last at most that, summing to
    /// `total_size`.
    fn check_sizes(&self) -> anyhow::Result<()> {
        let Some((last, full)) = self.parts.split_last() else {
            bail!("the index names no part");
        };
        for part in full {
            if part.size != self.part_size {
                bail!(
                    "{} is {} bytes in the index, but every part but the last is part-size ({})",
                    part.name,
                    part.size,
                    self.part_size
                );
            }
        }
        if last.size > self.part_size {
            bail!(
                "{} is {} bytes in the index, more than part-size ({})",
                last.name,
                last.size,
                self.part_size
            );
        }
        let sum = full.len() as u64 * self.part_size + last.size;
        if sum != self.total_size {
            bail!(
                "the parts add up to {sum} bytes, the index says total-size {}",
                self.total_size
            );
        }
        Ok(())
    }
}

/// `part: NAME SIZE SHA256` on line `n`, which must be part `number` of pack `name`.
fn parse_part(name: &str, number: usize, n: usize, line: &str) -> anyhow::Result<PartEntry> {
    let fields: Vec<&str> = line
        .strip_prefix("part: ")
        .map(|rest| rest.split(' ').collect())
        .unwrap_or_default();
    let [part, size, sha256] = fields[..] else {
        bail!("line {n} is {line:?}, expected `part: NAME SIZE SHA256`");
    };
    let expected = part_name(name, number);
    if part != expected {
        bail!("line {n}: part {number} is named {part:?}, expected {expected:?}");
    }
    let size = size
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .with_context(|| format!("line {n}: size {size:?} of {part} is not a positive number"))?;
    if !is_sha256(sha256) {
        bail!("line {n}: {sha256:?} of {part} is not a sha256 (64 lower-case hex digits)");
    }
    Ok(PartEntry {
        name: part.to_string(),
        size,
        sha256: sha256.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn sample() -> PackIndex {
        PackIndex {
            name: "docker-build-cache".into(),
            bundle_digest: A.into(),
            part_size: 2048,
            total_size: 2048 + 100,
            parts: vec![
                PartEntry {
                    name: "docker-build-cache.tar.part-001".into(),
                    size: 2048,
                    sha256: B.into(),
                },
                PartEntry {
                    name: "docker-build-cache.tar.part-002".into(),
                    size: 100,
                    sha256: A.into(),
                },
            ],
        }
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("1900M"), Ok(1900 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4kb"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("5000"), Ok(5000));
        for bad in [
            "",
            "G",
            "1.5G",
            "-1G",
            "2X",
            "100",
            "99999999999999999999T",
            "2 G B",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn part_names_sort_in_order_and_are_recognised() {
        assert_eq!(part_name("b", 1), "b.tar.part-001");
        assert_eq!(part_name("b", 1000), "b.tar.part-1000");
        assert!(looks_like_part("b", "b.tar.part-007"));
        assert!(!looks_like_part("b", "b.tar.part-"));
        assert!(!looks_like_part("b", "b.tar.part-1.tmp"));
        assert!(!looks_like_part("b", "bb.tar.part-001"));
        assert_eq!(index_name("b"), "b.pack-index");
    }

    #[test]
    fn the_index_round_trips() {
        let index = sample();
        assert_eq!(PackIndex::parse(&index.to_text()).unwrap(), index);
    }

    #[test]
    fn a_bad_index_is_refused_saying_why() {
        let text = sample().to_text();
        let cases = [
            (
                text.replace("xtask-pack-index: 1", "xtask-pack-index: 9"),
                "update",
            ),
            (
                text.replace("name: docker-build-cache", "name: ../x"),
                "not a pack name",
            ),
            (
                text.replace("part-002", "part-003"),
                "expected \"docker-build-cache.tar.part-002\"",
            ),
            (text.replace(" 100 ", " 99 "), "add up to"),
            (text.replace(" 2048 ", " 1000 "), "every part but the last"),
            (text.replace(&format!("100 {A}"), "100 xyz"), "not a sha256"),
            (
                text.replace("total-size", "total"),
                "expected `total-size: …`",
            ),
            (format!("{text}part: x 1 {A}\n"), "part 3 is named"),
            (text.replace("part-size: 2048\n", ""), "expected `part-size"),
            (
                text.lines().take(8).collect::<Vec<_>>().join("\n"),
                "names no part",
            ),
            (
                format!("{text}\nextra: 1\n"),
                "expected `part: NAME SIZE SHA256`",
            ),
        ];
        for (text, why) in cases {
            let err = format!("{:#}", PackIndex::parse(&text).unwrap_err());
            assert!(err.contains(why), "{err:?} does not say {why:?}");
        }
    }
}
