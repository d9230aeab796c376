//! An image archive (the layout `docker save` writes) cut into shares that separate
//! `docker load`s can take at once. `docker load` unpacks one layer after the other on one
//! core (gzip, then the files written); the bundle's images are independent of each other,
//! so loading them side by side uses the machine's other cores. Images that share a blob
//! stay in one share: no blob is sent twice at the same time, and each share is a whole
//! archive of its own (its `index.json` and `manifest.json` list its images only).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context as _};

use super::oci::{is_walkable, parse, sha256_hex, Content, Descriptor};

/// One `docker load`'s share of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadShare {
    /// `index.json` listing this share's images only (the archive's own bytes when it is
    /// not split).
    pub index: Vec<u8>,
    /// `manifest.json` likewise, when the archive has one.
    pub manifest: Option<Vec<u8>>,
    /// The hex digests of the blobs it carries.
    pub blobs: BTreeSet<String>,
    /// Their size.
    pub bytes: u64,
}

/// The archive cut into at most `streams` shares of about equal size. `sizes`: every blob
/// of the archive (hex → size); `small`: the bytes of every blob the walk may have to
/// read (an index or a manifest; blobs of a few KiB). A blob no image reaches goes with
/// the first share, so nothing is left out. One share (the archive's own index and
/// manifest) when there is nothing to split: one image, or images that all share blobs.
pub fn split_for_load(
    index: &[u8],
    manifest: Option<&[u8]>,
    sizes: &BTreeMap<String, u64>,
    small: &BTreeMap<String, Vec<u8>>,
    streams: usize,
) -> anyhow::Result<Vec<LoadShare>> {
    let index_value: serde_json::Value =
        serde_json::from_slice(index).context("index.json is not JSON")?;
    let entries = index_value
        .get("manifests")
        .and_then(|m| m.as_array())
        .context("index.json has no `manifests` list")?;
    let reach = entries
        .iter()
        .map(|entry| reached(entry, sizes, small))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let groups = groups_sharing_blobs(&reach);
    let size_of = |blobs: &BTreeSet<String>| -> u64 {
        blobs
            .iter()
            .map(|b| sizes.get(b).copied().unwrap_or(0))
            .fold(0, u64::saturating_add)
    };

    if groups.len() < 2 || streams < 2 {
        let blobs: BTreeSet<String> = sizes.keys().cloned().collect();
        return Ok(vec![LoadShare {
            index: index.to_vec(),
            manifest: manifest.map(<[u8]>::to_vec),
            bytes: size_of(&blobs),
            blobs,
        }]);
    }

    // The biggest group first, each to the share with the fewest bytes so far.
    let mut groups: Vec<(Vec<usize>, BTreeSet<String>)> = groups
        .into_values()
        .map(|members| {
            let blobs = members.iter().flat_map(|&i| reach[i].clone()).collect();
            (members, blobs)
        })
        .collect();
    groups.sort_by_key(|(members, blobs)| (std::cmp::Reverse(size_of(blobs)), members[0]));
    let count = streams.min(groups.len());
    let mut bins: Vec<(Vec<usize>, BTreeSet<String>)> = vec![Default::default(); count];
    for (members, blobs) in groups {
        let emptiest = (0..count)
            .min_by_key(|&b| (size_of(&bins[b].1), b))
            .unwrap_or(0);
        bins[emptiest].0.extend(members);
        bins[emptiest].1.extend(blobs);
    }
    // What no image reaches travels with the first share.
    let reached_any: BTreeSet<&String> = reach.iter().flatten().collect();
    for blob in sizes.keys() {
        if !reached_any.contains(blob) {
            bins[0].1.insert(blob.clone());
        }
    }

    let manifest_entries: Option<Vec<serde_json::Value>> = manifest
        .map(|m| serde_json::from_slice(m).context("manifest.json is not a JSON list"))
        .transpose()?;
    if let Some(list) = &manifest_entries {
        for entry in list {
            let config = config_hex(entry)?;
            if !bins.iter().any(|(_, blobs)| blobs.contains(config)) {
                bail!("manifest.json names the config {config}, which no image of index.json has");
            }
        }
    }
    bins.into_iter()
        .map(|(mut members, blobs)| {
            members.sort_unstable();
            let mut index = index_value.clone();
            index["manifests"] = members.iter().map(|&i| entries[i].clone()).collect();
            let manifest = match &manifest_entries {
                None => None,
                Some(list) => {
                    let mut mine = Vec::new();
                    for entry in list {
                        if blobs.contains(config_hex(entry)?) {
                            mine.push(entry.clone());
                        }
                    }
                    Some(serde_json::to_vec(&mine)?)
                }
            };
            Ok(LoadShare {
                index: serde_json::to_vec(&index)?,
                manifest,
                bytes: size_of(&blobs),
                blobs,
            })
        })
        .collect()
}

/// The images (indexes into `reach`, each image's blobs) grouped so that images sharing
/// a blob are in one group: union-find on each blob's first owner. Keyed by group root.
fn groups_sharing_blobs(reach: &[BTreeSet<String>]) -> BTreeMap<usize, Vec<usize>> {
    let mut parent: Vec<usize> = (0..reach.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, blobs) in reach.iter().enumerate() {
        for blob in blobs {
            match owner.get(blob.as_str()) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[a] = b;
                }
                None => {
                    owner.insert(blob, i);
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..reach.len() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    groups
}

/// The hex of a `manifest.json` entry's `Config` (`blobs/sha256/<hex>`).
fn config_hex(entry: &serde_json::Value) -> anyhow::Result<&str> {
    entry
        .get("Config")
        .and_then(|c| c.as_str())
        .and_then(|c| c.strip_prefix("blobs/sha256/"))
        .filter(|hex| sha256_hex(&format!("sha256:{hex}")).is_some())
        .with_context(|| format!("a manifest.json entry has no `Config` blob: {entry}"))
}

/// Every blob one `index.json` entry reaches: its target, and through indexes and
/// manifests their platforms' manifests (those the archive carries: `docker save` keeps
/// the engine's platforms), configs and layers, which must all be in the archive.
fn reached(
    entry: &serde_json::Value,
    sizes: &BTreeMap<String, u64>,
    small: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<BTreeSet<String>> {
    let target: Descriptor = serde_json::from_value(entry.clone())
        .with_context(|| format!("an index.json entry is not a descriptor: {entry}"))?;
    let mut seen = BTreeSet::new();
    // (descriptor, whether the archive may lack it: another platform's manifest)
    let mut todo = vec![(target, false)];
    while let Some((desc, optional)) = todo.pop() {
        let hex = sha256_hex(&desc.digest)
            .with_context(|| format!("{} is not a sha256 digest", desc.digest))?
            .to_string();
        if !sizes.contains_key(&hex) {
            if optional {
                continue;
            }
            bail!("the archive lacks the blob {hex}, which an image needs");
        }
        if !seen.insert(hex.clone()) || !is_walkable(&desc.media_type) {
            continue;
        }
        let bytes = small
            .get(&hex)
            .with_context(|| format!("the blob {hex} ({}) was not read", desc.media_type))?;
        match parse(&desc.media_type, bytes).with_context(|| format!("the blob {hex}"))? {
            Content::Index(manifests) => todo.extend(manifests.into_iter().map(|m| (m, true))),
            Content::Manifest { config, layers } => {
                todo.push((config, false));
                todo.extend(layers.into_iter().map(|l| (l, false)));
            }
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::oci::{INDEX_V1, MANIFEST_V1};

    const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn desc(media: &str, c: char, size: u64) -> String {
        format!(
            r#"{{"mediaType":"{media}","digest":"sha256:{}","size":{size}}}"#,
            hex(c)
        )
    }

    /// An archive: image manifests `m` (config `c`, layers `ls`), one index entry each
    /// named `name`, the blobs' sizes and the manifests' bytes.
    struct Archive {
        index: Vec<u8>,
        manifest: Vec<u8>,
        sizes: BTreeMap<String, u64>,
        small: BTreeMap<String, Vec<u8>>,
    }

    /// An image: its name, manifest, config, and layers with their sizes.
    type Image<'a> = (&'a str, char, char, &'a [(char, u64)]);

    fn archive(images: &[Image]) -> Archive {
        let mut sizes = BTreeMap::new();
        let mut small = BTreeMap::new();
        let mut entries = Vec::new();
        let mut docker = Vec::new();
        for (name, m, c, layers) in images {
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_V1}","config":{},"layers":[{}]}}"#,
                desc(CONFIG, *c, 10),
                layers
                    .iter()
                    .map(|(l, size)| desc(LAYER, *l, *size))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            sizes.insert(hex(*m), body.len() as u64);
            small.insert(hex(*m), body.clone().into_bytes());
            sizes.insert(hex(*c), 10);
            small.insert(hex(*c), b"{}".to_vec());
            for (l, size) in layers.iter() {
                sizes.insert(hex(*l), *size);
            }
            entries.push(format!(
                r#"{{"mediaType":"{MANIFEST_V1}","digest":"sha256:{}","size":{},"annotations":{{"io.containerd.image.name":"{name}"}}}}"#,
                hex(*m),
                body.len()
            ));
            docker.push(format!(
                r#"{{"Config":"blobs/sha256/{}","RepoTags":["{name}"],"Layers":[]}}"#,
                hex(*c)
            ));
        }
        Archive {
            index: format!(
                r#"{{"schemaVersion":2,"mediaType":"{INDEX_V1}","manifests":[{}]}}"#,
                entries.join(",")
            )
            .into_bytes(),
            manifest: format!("[{}]", docker.join(",")).into_bytes(),
            sizes,
            small,
        }
    }

    fn names(share: &LoadShare) -> Vec<String> {
        let index: serde_json::Value = serde_json::from_slice(&share.index).unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["annotations"]["io.containerd.image.name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    fn tags(share: &LoadShare) -> Vec<String> {
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(share.manifest.as_ref().unwrap()).unwrap();
        list.iter()
            .map(|e| e["RepoTags"][0].as_str().unwrap().to_string())
            .collect()
    }

    fn split(a: &Archive, streams: usize) -> Vec<LoadShare> {
        split_for_load(&a.index, Some(&a.manifest), &a.sizes, &a.small, streams).unwrap()
    }

    /// Three images with no blob in common on two streams: the biggest alone, the two
    /// others together; each share lists its own images in index.json and manifest.json
    /// and carries exactly their blobs.
    #[test]
    fn independent_images_are_balanced_over_the_streams() {
        let a = archive(&[
            ("python", 'a', 'b', &[('1', 45)]),
            ("node", 'c', 'd', &[('2', 55)]),
            ("nginx", 'e', 'f', &[('3', 25)]),
        ]);
        let shares = split(&a, 2);
        assert_eq!(shares.len(), 2);
        assert_eq!(names(&shares[0]), ["node"]);
        assert_eq!(tags(&shares[0]), ["node"]);
        assert_eq!(names(&shares[1]), ["python", "nginx"]);
        assert_eq!(tags(&shares[1]), ["python", "nginx"]);
        let expect: BTreeSet<String> = ['c', 'd', '2'].map(hex).into();
        assert_eq!(shares[0].blobs, expect);
        let all: BTreeSet<String> = shares.iter().flat_map(|s| s.blobs.clone()).collect();
        assert_eq!(all, a.sizes.keys().cloned().collect());
        // Every image in exactly one share.
        assert_eq!(shares[0].blobs.intersection(&shares[1].blobs).count(), 0);
    }

    /// Images that share a layer stay in one share: no blob goes into two loads at once.
    #[test]
    fn images_sharing_a_layer_stay_together() {
        let a = archive(&[
            ("app", 'a', 'b', &[('1', 45), ('2', 5)]),
            ("worker", 'c', 'd', &[('1', 45), ('3', 5)]),
            ("nginx", 'e', 'f', &[('4', 25)]),
        ]);
        let shares = split(&a, 4);
        assert_eq!(shares.len(), 2);
        assert_eq!(names(&shares[0]), ["app", "worker"]);
        assert_eq!(names(&shares[1]), ["nginx"]);
        // All sharing: nothing to split, the archive's own files.
        let b = archive(&[
            ("app", 'a', 'b', &[('1', 45)]),
            ("worker", 'c', 'd', &[('1', 45)]),
        ]);
        let shares = split(&b, 2);
        assert_eq!(shares.len(), 1);
        assert_eq!(shares[0].index, b.index);
        assert_eq!(shares[0].manifest.as_deref(), Some(&b.manifest[..]));
        // One stream: one share.
        assert_eq!(split(&a, 1).len(), 1);
    }

    /// A multi-platform image: its index, and the platform manifest the archive carries;
    /// the other platform's manifest (not saved) is left out, not an error. A blob no
    /// image reaches goes with the first share.
    #[test]
    fn an_index_reaches_the_platforms_the_archive_carries() {
        let mut a = archive(&[
            ("python", 'a', 'b', &[('1', 4500)]),
            ("node", 'c', 'd', &[('2', 5500)]),
        ]);
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{INDEX_V1}","manifests":[{},{}]}}"#,
            desc(MANIFEST_V1, 'a', a.sizes[&hex('a')]),
            desc(MANIFEST_V1, '9', 400),
        );
        let idx = hex('5');
        a.sizes.insert(idx.clone(), list.len() as u64);
        a.small.insert(idx.clone(), list.into_bytes());
        let index = String::from_utf8(a.index.clone()).unwrap().replacen(
            &format!(
                r#""mediaType":"{MANIFEST_V1}","digest":"sha256:{}""#,
                hex('a')
            ),
            &format!(r#""mediaType":"{INDEX_V1}","digest":"sha256:{idx}""#),
            1,
        );
        a.index = index.into_bytes();
        a.sizes.insert(hex('7'), 3); // reached by nothing
        let shares = split(&a, 2);
        assert_eq!(shares.len(), 2);
        assert_eq!(names(&shares[0]), ["node"]);
        assert!(shares[0].blobs.contains(&hex('7')));
        let python: BTreeSet<String> = [idx, hex('a'), hex('b'), hex('1')].into();
        assert_eq!(shares[1].blobs, python);
    }

    /// What cannot be split safely is an error (the caller then loads the archive whole):
    /// a layer the archive lacks, a manifest that was not read, a manifest.json entry
    /// whose config no image has.
    #[test]
    fn what_cannot_be_split_is_refused() {
        let two = || {
            archive(&[
                ("python", 'a', 'b', &[('1', 45)]),
                ("node", 'c', 'd', &[('2', 55)]),
            ])
        };
        let refused = |a: &Archive, manifest: &[u8]| {
            split_for_load(&a.index, Some(manifest), &a.sizes, &a.small, 2)
                .unwrap_err()
                .to_string()
        };
        let mut a = two();
        a.sizes.remove(&hex('2'));
        assert_eq!(
            refused(&a, &a.manifest),
            format!(
                "the archive lacks the blob {}, which an image needs",
                hex('2')
            )
        );
        let mut b = two();
        b.small.remove(&hex('c'));
        let err = refused(&b, &b.manifest);
        assert!(
            err.starts_with(&format!("the blob {} (", hex('c'))),
            "{err}"
        );
        let c = two();
        let stray = String::from_utf8(c.manifest.clone())
            .unwrap()
            .replace(&hex('d'), &hex('8'));
        assert_eq!(
            refused(&c, stray.as_bytes()),
            format!(
                "manifest.json names the config {}, which no image of index.json has",
                hex('8')
            )
        );
    }
}
