//! Delta bundles (`cache-export --since OLD`): the bundle a delta builds on, read (a
//! folder, a pack or its manifest), found beside the delta and checked against the digest
//! the delta names, and the delta completed with its base's files into a full bundle.
//!
//! Both the delta and its base are hostile input: the base's `SHA256SUMS` must have the
//! digest the delta names before anything else of it is read, every file the completion
//! takes is checked against the manifest as it lands, and only files the manifest lists
//! are taken. The base is never written to (its files are hard-linked, or copied).

use std::collections::BTreeSet;
use std::io::{self, Write};

use anyhow::{bail, Context as _};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bundle::{self, human_bytes, read_checked_any, Trust};
use crate::docker::Docker;
use crate::model::manifest::{escape, FileEntry, Manifest, MANIFEST_FILE, SUMS_FILE};

/// The bundle a delta is made against (`--since OLD`).
pub struct Since {
    /// Its folder, when OLD is one: its files are reused rather than made again.
    pub dir: Option<Utf8PathBuf>,
    pub manifest: Manifest,
    /// `sha256:<hex>` of the full bundle it describes (a delta's: the one it completes to).
    pub digest: String,
}

/// Reads OLD: a bundle folder, a packed bundle (`.tar` or `.pack-index`), or a bundle's
/// `manifest.yaml` (its digest is that of the `SHA256SUMS` it implies).
pub fn read_since(old: &Utf8Path) -> anyhow::Result<Since> {
    let context = || format!("reading the bundle --since names, {old}");
    let meta = std::fs::symlink_metadata(old).with_context(context)?;
    if meta.is_dir() {
        let (manifest, digest) = read_checked_any(old, &Trust::default()).with_context(context)?;
        let digest = manifest.full_digest(&digest);
        let dir = Some(old.to_owned());
        return Ok(Since {
            dir,
            manifest,
            digest,
        });
    }
    let name = old.file_name().unwrap_or("");
    if name == MANIFEST_FILE {
        let dir = old.parent().unwrap_or(old);
        if dir.join(SUMS_FILE).exists() {
            return read_since(dir);
        }
        let text = bundle::read_capped(old, crate::model::manifest::MAX_MANIFEST_BYTES)
            .with_context(context)?;
        let manifest_sha256 = bundle::hex(&Sha256::digest(&text));
        let text = String::from_utf8(text).map_err(|_| anyhow::anyhow!("{old} is not UTF-8"))?;
        let manifest = Manifest::from_yaml(&text).with_context(context)?;
        let own = bundle::bundle_digest(manifest.sha256sums(&manifest_sha256).as_bytes());
        let digest = manifest.full_digest(&own);
        return Ok(Since {
            dir: None,
            manifest,
            digest,
        });
    }
    let (manifest, digest) = crate::pack::manifest_of(old).with_context(context)?;
    let digest = manifest.full_digest(&digest);
    Ok(Since {
        dir: None,
        manifest,
        digest,
    })
}

/// What `--json` says of a delta.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaSummary {
    /// `sha256:<hex>` of the bundle it builds on.
    pub base_digest: String,
    /// `sha256:<hex>` of the full bundle it completes to.
    pub complete_digest: String,
    pub files_carried: usize,
    pub bytes_carried: u64,
    pub files_from_base: usize,
    pub bytes_from_base: u64,
}

impl DeltaSummary {
    pub fn of(delta: &Manifest) -> Option<DeltaSummary> {
        let base = delta.base.as_ref()?;
        let sum = |files: &mut dyn Iterator<Item = &FileEntry>| {
            files.fold((0usize, 0u64), |(n, b), f| {
                (n + 1, b.saturating_add(f.size))
            })
        };
        let (files_carried, bytes_carried) = sum(&mut delta.carried());
        let (files_from_base, bytes_from_base) = sum(&mut delta.expected_from_base());
        Some(DeltaSummary {
            base_digest: base.digest.clone(),
            complete_digest: base.complete.clone(),
            files_carried,
            bytes_carried,
            files_from_base,
            bytes_from_base,
        })
    }
}

/// The base of the delta in `delta_dir`, checked: `given` (`--base`), else the folder
/// beside the delta whose `SHA256SUMS` has the digest the delta names (`None`: there is
/// none; [`missing_base`] says what is missing). It must hold every file the delta expects
/// from it. Errors say what is wrong, by name.
pub fn find_base(
    delta_dir: &Utf8Path,
    delta: &Manifest,
    given: Option<&Utf8Path>,
) -> anyhow::Result<Option<(Utf8PathBuf, Manifest)>> {
    let want = &delta.base.as_ref().context("not a delta bundle")?.digest;
    let hex = want.trim_start_matches("sha256:").to_string();
    let trust = Trust {
        digest: Some(hex.clone()),
        signers: None,
    };
    let dir = match given {
        Some(dir) => dir.to_owned(),
        None => match beside(delta_dir, &hex) {
            Some(dir) => dir,
            None => return Ok(None),
        },
    };
    let (base, _) = read_checked_any(&dir, &trust).with_context(|| {
        format!("{dir} is not the base of the delta {delta_dir}, which builds on {want}")
    })?;
    if base.base.is_some() {
        bail!("{dir} is itself a delta bundle: the base of {delta_dir} is the full bundle {want}");
    }
    let missing = delta.missing_from(&base);
    if !missing.is_empty() {
        bail!(
            "{dir} has the digest {want} but lacks {} file(s) the delta {delta_dir} expects \
             from it: {}; the delta was not made against it: export it again with --since",
            missing.len(),
            names(&missing)
        );
    }
    Ok(Some((dir, base)))
}

/// With no base folder, the engine stands in for the base where it can: the delta's
/// images that the engine holds with the same ID are saved (`docker save`) into `staging`,
/// in the bundle's layout, when every file the delta expects from its base is a file of
/// those images (their blobs, `index.json`, …; each is checked against the manifest as
/// the delta is completed). Otherwise nothing is saved, and the error names the files no
/// engine holds (the build cache's own blobs, wheels, npm caches: only the base folder
/// has them) and the images the engine does or does not hold.
pub fn base_from_engine(
    docker: &Docker,
    delta_dir: &Utf8Path,
    delta: &Manifest,
    staging: &Utf8Path,
) -> anyhow::Result<usize> {
    let expected: Vec<&FileEntry> = delta.expected_from_base().collect();
    let image_paths: BTreeSet<&str> = delta
        .image_layout
        .iter()
        .flat_map(|l| l.entries.iter().map(|e| e.path.as_str()))
        .collect();
    let mut held = Vec::new();
    let mut not_held = Vec::new();
    for image in &delta.images {
        match docker.image_id(&image.name)? {
            Some(id) if id == image.id => held.push(image.name.clone()),
            _ => not_held.push(format!("{} ({})", image.name, image.id)),
        }
    }
    let engine = match (held.is_empty(), not_held.is_empty()) {
        (true, _) => "the engine holds none of the delta's images".to_string(),
        (false, true) => format!("the engine holds its images ({})", held.join(", ")),
        (false, false) => format!(
            "the engine holds {} of its images, not {}",
            held.join(", "),
            not_held.join(", ")
        ),
    };
    let outside: Vec<&FileEntry> = expected
        .iter()
        .copied()
        .filter(|f| !image_paths.contains(f.path.as_str()))
        .collect();
    if held.is_empty() || !outside.is_empty() {
        bail!(
            "{}\nThe engine cannot stand in for the base: {engine}{}",
            missing_base(delta_dir, delta),
            if outside.is_empty() {
                String::new()
            } else {
                format!(
                    ", and {} of the files are in no image (the build cache's own blobs, \
                     wheels, npm caches: only the base folder has them): {}",
                    outside.len(),
                    names(&outside)
                )
            }
        );
    }
    crate::images::save_layout(docker, &held, staging)
        .context("saving the base's images from the engine")?;
    let still: Vec<&FileEntry> = expected
        .iter()
        .copied()
        .filter(|f| {
            std::fs::symlink_metadata(staging.join(&f.path))
                .map_or(true, |m| !m.is_file() || m.len() != f.size)
        })
        .collect();
    if !still.is_empty() {
        bail!(
            "{}\nThe engine cannot stand in for the base: {engine}, but saved they lack {} \
             of the files (its image store keeps other blobs, e.g. the classic store): {}",
            missing_base(delta_dir, delta),
            still.len(),
            names(&still)
        );
    }
    Ok(expected.len())
}

/// A folder beside `delta_dir` whose `SHA256SUMS` has the digest `hex`.
fn beside(delta_dir: &Utf8Path, hex: &str) -> Option<Utf8PathBuf> {
    let parent = delta_dir.parent()?;
    let mut found: Vec<Utf8PathBuf> = parent
        .read_dir_utf8()
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().to_owned())
        .filter(|dir| dir != delta_dir)
        .filter(|dir| {
            bundle::read_capped(
                &dir.join(SUMS_FILE),
                crate::model::manifest::MAX_MANIFEST_BYTES,
            )
            .is_ok_and(|sums| bundle::bundle_digest(&sums) == hex)
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// What a delta whose base is not here lacks, by name: the files, and the images whose
/// saved form they are part of.
pub fn missing_base(delta_dir: &Utf8Path, delta: &Manifest) -> String {
    let want = delta.base.as_ref().map_or("?", |b| b.digest.as_str());
    let from_base: Vec<&FileEntry> = delta.expected_from_base().collect();
    let bytes = from_base.iter().fold(0u64, |s, f| s.saturating_add(f.size));
    let image_files = delta.image_layout.as_ref().is_some_and(|layout| {
        layout
            .entries
            .iter()
            .any(|e| from_base.iter().any(|f| f.path == e.path))
    }) || from_base.iter().any(|f| {
        f.path
            .starts_with(crate::model::layout::IMAGES_ARCHIVE_STEM)
    });
    let images = if image_files {
        let names: Vec<String> = delta
            .images
            .iter()
            .map(|i| format!("{} ({})", i.name, i.id))
            .collect();
        format!(
            "; the saved images ({}) are among them",
            escape(&names.join(", "))
        )
    } else {
        String::new()
    };
    format!(
        "{delta_dir} is a delta of {want}; it needs its base: the {} file(s) ({}) it \
         expects from that bundle are not here: {}{images}. Copy that bundle (the folder \
         whose `cargo xtask cache-verify` says Digest {want}) beside {delta_dir}, or give \
         its folder with --base (an engine that holds the base's images stands in for a \
         base whose files are all files of those images)",
        from_base.len(),
        human_bytes(bytes),
        names(&from_base)
    )
}

/// The paths of `files`, the first 10 and how many more.
fn names(files: &[&FileEntry]) -> String {
    let mut shown: Vec<String> = files.iter().take(10).map(|f| escape(&f.path)).collect();
    if files.len() > 10 {
        shown.push(format!("and {} more", files.len() - 10));
    }
    shown.join(", ")
}

/// Writes the full bundle the delta in `delta_dir` completes to into `dest` (created; a
/// folder `dest` that already holds exactly that bundle is kept): each file of the delta's
/// manifest, from the delta or from `base_dir`, hard-linked (else copied) and checked
/// against its size and sha256; then the full manifest, whose digest must be the one the
/// delta names. Returns the full manifest and its digest (hex).
pub fn complete(
    delta_dir: &Utf8Path,
    delta: &Manifest,
    base_dir: &Utf8Path,
    dest: &Utf8Path,
) -> anyhow::Result<(Manifest, String)> {
    let want = &delta.base.as_ref().context("not a delta bundle")?.complete;
    let full = delta.completed();
    let hex = want.trim_start_matches("sha256:").to_string();
    if bundle::digest_of(&full) != hex {
        bail!(
            "the manifest of {delta_dir} does not describe the bundle {want} it names; this \
             bundle was not written by cache-export: do not import it"
        );
    }
    let trust = Trust {
        digest: Some(hex.clone()),
        signers: None,
    };
    if dest.join(MANIFEST_FILE).exists() {
        read_checked_any(dest, &trust).with_context(|| {
            format!(
                "{dest} holds another bundle than the {want} the delta completes to; give \
                 --complete-into another folder (nothing was written)"
            )
        })?;
        eprintln!("     Present {dest} (the completed bundle {want}; checked below)");
        return Ok((full, hex));
    }
    if dest.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{dest} exists and is not empty: the delta is completed into a new folder; give \
             --complete-into another folder (nothing was written)"
        );
    }
    let name = dest.file_name().unwrap_or("bundle");
    let partial = dest.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = fill(delta_dir, base_dir, delta, &partial).and_then(|()| {
        let digest = bundle::write_manifest(&partial, &full)?;
        if digest != hex {
            bail!("the completed bundle has the digest sha256:{digest}, not {want}");
        }
        if dest.exists() {
            std::fs::remove_dir(dest).with_context(|| format!("removing the empty {dest}"))?;
        }
        std::fs::rename(&partial, dest).with_context(|| format!("moving {partial} to {dest}"))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    Ok((full, hex))
}

/// Links (or copies) every file of the `delta`'s full bundle into `partial`, from the
/// delta or the base, and checks each against the manifest as it lands.
fn fill(
    delta_dir: &Utf8Path,
    base_dir: &Utf8Path,
    delta: &Manifest,
    partial: &Utf8Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(partial).with_context(|| format!("creating {partial}"))?;
    let mut linked = Vec::new();
    for file in &delta.files {
        let src_dir = if file.from_base { base_dir } else { delta_dir };
        let (src, dst) = (src_dir.join(&file.path), partial.join(&file.path));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
        }
        if std::fs::hard_link(&src, &dst).is_ok() {
            linked.push(file);
            continue;
        }
        let (size, sha256) = copy_hashing(&src, &dst).with_context(|| format!("copying {src}"))?;
        check(file, size, &sha256, src_dir)?;
    }
    let names: Vec<String> = linked.iter().map(|f| f.path.clone()).collect();
    let hashed = bundle::hash_files(partial, &names, &|_, _| {});
    for (file, result) in linked.iter().zip(hashed) {
        let (size, sha256) = result.with_context(|| format!("reading {partial}/{}", file.path))?;
        check(file, size, &sha256, partial)?;
    }
    Ok(())
}

fn check(file: &FileEntry, size: u64, sha256: &str, from: &Utf8Path) -> anyhow::Result<()> {
    if size != file.size || sha256 != file.sha256 {
        bail!(
            "{}: {size} bytes, sha256 {sha256} (from {from}); the manifest says {} bytes, \
             sha256 {}: the file is damaged; copy that bundle again (nothing was imported)",
            escape(&file.path),
            file.size,
            file.sha256
        );
    }
    Ok(())
}

/// Copies `src` (a regular file, [`bundle::open_regular`]) to `dst`, hashing as it goes.
fn copy_hashing(src: &Utf8Path, dst: &Utf8Path) -> io::Result<(u64, String)> {
    let mut from = bundle::open_regular(src)?;
    let to = std::fs::File::create(dst)?;
    let mut writer = bundle::HashingWriter::new(io::BufWriter::new(to));
    io::copy(&mut from, &mut writer)?;
    let (mut inner, bytes, digest) = writer.finish();
    inner.flush()?;
    Ok((bytes, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::Scratch;

    /// A bundle in `dir` holding `files`, as cache-export writes it; its manifest.
    fn write_bundle(dir: &Utf8Path, files: &[(&str, &[u8])]) -> Manifest {
        let mut manifest = Manifest::from_yaml(
            "format_version: 1\ntool_version: t\ncreated: c\nproject_name: p\nengine:\n  \
             server_version: '1'\n  arch: amd64\n  containerd_store: true\nstrategy: local\n\
             compression: none\nimages: []\nservices: []\nfiles: []\n",
        )
        .unwrap();
        for (path, bytes) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, bytes).unwrap();
            manifest.files.push(FileEntry {
                path: path.to_string(),
                size: bytes.len() as u64,
                sha256: bundle::hex(&Sha256::digest(bytes)),
                from_base: false,
            });
        }
        bundle::write_manifest(dir, &manifest).unwrap();
        manifest
    }

    /// `root/base` (a full bundle), and `root/delta`: the next bundle as a delta of it,
    /// carrying the changed and the new file only. The delta's manifest.
    fn base_and_delta(root: &Utf8Path) -> Manifest {
        let base = write_bundle(
            &root.join("base"),
            &[
                ("blobs/a", b"layer a"),
                ("blobs/b", b"layer b"),
                ("index.json", b"{1}"),
            ],
        );
        let base_digest = format!("sha256:{}", bundle::digest_of(&base));
        // The full next bundle, written aside only to know its manifest and digest.
        let next = write_bundle(
            &root.join("next"),
            &[
                ("blobs/a", b"layer a"),
                ("blobs/c", b"layer c"),
                ("index.json", b"{2}"),
            ],
        );
        let complete = format!("sha256:{}", bundle::digest_of(&next));
        std::fs::remove_dir_all(root.join("next")).unwrap();
        let delta = next.delta_of(&base, &base_digest, &complete);
        let dir = root.join("delta");
        for file in delta.carried() {
            let content = if file.path == "blobs/c" {
                "layer c"
            } else {
                "{2}"
            };
            std::fs::create_dir_all(dir.join(&file.path).parent().unwrap()).unwrap();
            std::fs::write(dir.join(&file.path), content).unwrap();
        }
        bundle::write_manifest(&dir, &delta).unwrap();
        delta
    }

    #[test]
    fn a_delta_is_completed_with_the_base_beside_it_and_the_base_is_untouched() {
        let scratch = Scratch::new("delta-complete");
        let root = scratch.path();
        let delta = base_and_delta(root);
        let (_, read_digest) = read_checked_any(&root.join("delta"), &Trust::default()).unwrap();
        assert_eq!(read_digest, bundle::digest_of(&delta));
        let base_before = std::fs::read(root.join("base/SHA256SUMS")).unwrap();
        let (dir, _) = find_base(&root.join("delta"), &delta, None)
            .unwrap()
            .unwrap();
        assert_eq!(dir, root.join("base"));
        let dest = root.join("full");
        let (full, digest) = complete(&root.join("delta"), &delta, &dir, &dest).unwrap();
        assert_eq!(
            format!("sha256:{digest}"),
            delta.base.as_ref().unwrap().complete
        );
        assert_eq!(full, delta.completed());
        let (_, on_disk) = read_checked_any(&dest, &Trust::default()).unwrap();
        assert_eq!(on_disk, digest);
        assert_eq!(std::fs::read(dest.join("blobs/a")).unwrap(), b"layer a");
        assert_eq!(std::fs::read(dest.join("blobs/c")).unwrap(), b"layer c");
        assert!(!dest.join("blobs/b").exists());
        assert!(bundle::verify(&dest, &full, &[], &|_, _| {}).unwrap().ok());
        assert_eq!(
            std::fs::read(root.join("base/SHA256SUMS")).unwrap(),
            base_before
        );
        // Again: the completed folder is kept, not written twice.
        complete(&root.join("delta"), &delta, &dir, &dest).unwrap();
    }

    #[test]
    fn a_delta_without_its_base_names_the_digest_and_the_files() {
        let scratch = Scratch::new("delta-alone");
        let root = scratch.path();
        let delta = base_and_delta(root);
        std::fs::rename(root.join("base"), root.join("elsewhere-not-beside")).unwrap();
        std::fs::create_dir_all(root.join("lonely")).unwrap();
        std::fs::rename(root.join("delta"), root.join("lonely/delta")).unwrap();
        assert!(find_base(&root.join("lonely/delta"), &delta, None)
            .unwrap()
            .is_none());
        let err = missing_base(&root.join("lonely/delta"), &delta);
        let want = &delta.base.as_ref().unwrap().digest;
        assert!(
            err.contains(&format!("is a delta of {want}; it needs its base")),
            "{err}"
        );
        assert!(err.contains("the 1 file(s) (7 B)"), "{err}");
        assert!(err.contains(": blobs/a."), "{err}");
    }

    #[test]
    fn a_base_of_another_digest_is_refused() {
        let scratch = Scratch::new("delta-other");
        let root = scratch.path();
        let delta = base_and_delta(root);
        let other = write_bundle(&root.join("other"), &[("blobs/a", b"layer a")]);
        let other_digest = bundle::digest_of(&other);
        let err = format!(
            "{:#}",
            find_base(&root.join("delta"), &delta, Some(&root.join("other"))).unwrap_err()
        );
        let want = &delta.base.as_ref().unwrap().digest;
        assert!(
            err.contains(&format!("has the digest sha256:{other_digest}")),
            "{err}"
        );
        assert!(err.contains(&format!("not the {want} expected")), "{err}");
    }

    #[test]
    fn a_damaged_base_file_stops_the_completion_and_leaves_nothing() {
        let scratch = Scratch::new("delta-damaged");
        let root = scratch.path();
        let delta = base_and_delta(root);
        std::fs::write(root.join("base/blobs/a"), b"layer A").unwrap();
        let (dir, _) = find_base(&root.join("delta"), &delta, None)
            .unwrap()
            .unwrap();
        let dest = root.join("full");
        let err = format!(
            "{:#}",
            complete(&root.join("delta"), &delta, &dir, &dest).unwrap_err()
        );
        assert!(err.contains("blobs/a: 7 bytes, sha256"), "{err}");
        assert!(err.contains("is damaged"), "{err}");
        assert!(!dest.exists());
        let left: Vec<_> = std::fs::read_dir(root).unwrap().flatten().collect();
        assert_eq!(left.len(), 2, "a partial folder was left: {left:?}");
    }

    /// `--since` reads the same base, by the same digest, from its folder, its
    /// manifest.yaml alone, its pack as one tar and as split parts; a delta given as OLD
    /// stands for the full bundle it completes to.
    #[test]
    fn since_reads_a_folder_a_manifest_alone_and_a_pack_alike() {
        let scratch = Scratch::new("delta-since");
        let root = scratch.path();
        let delta = base_and_delta(root);
        let base = root.join("base");
        let want = delta.base.as_ref().unwrap().digest.clone();
        let folder = read_since(&base).unwrap();
        assert_eq!(folder.digest, want);
        assert_eq!(folder.dir.as_deref(), Some(base.as_path()));
        std::fs::create_dir_all(root.join("alone")).unwrap();
        std::fs::copy(base.join(MANIFEST_FILE), root.join("alone/manifest.yaml")).unwrap();
        let alone = read_since(&root.join("alone/manifest.yaml")).unwrap();
        assert_eq!((alone.digest, alone.dir), (want.clone(), None));
        let target = crate::pack::Target::resolve(&base, Some(&root.join("packs/")), true).unwrap();
        crate::pack::pack(&base, &target, None).unwrap();
        let tar = read_since(&root.join("packs/base.tar")).unwrap();
        assert_eq!((tar.digest, tar.manifest), (want.clone(), folder.manifest));
        let target = crate::pack::Target::resolve(&base, Some(&root.join("split/")), true).unwrap();
        crate::pack::pack(&base, &target, Some(10 * 1024)).unwrap();
        let parts = read_since(&root.join("split/base.pack-index")).unwrap();
        assert_eq!(parts.digest, want);
        let of_delta = read_since(&root.join("delta")).unwrap();
        assert_eq!(of_delta.digest, delta.base.as_ref().unwrap().complete);
    }
}
