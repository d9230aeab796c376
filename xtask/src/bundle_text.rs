//! The bundle's texts: `cache-manifest.txt` for people, and `import-build-cache.sh` for
//! servers without Rust (POSIX sh, which makes the same images `cache-import` does).

use std::collections::BTreeMap;

use crate::bundle::human_bytes;
use crate::deps::npm_image;
use crate::model::layout::{self, BUILD_CACHE_DIR, NPM_CONTEXT};
use crate::model::manifest::{Compression, ImageRole, Manifest, ServiceEntry, Strategy, ToolEntry};

/// The bundle's `cache-manifest.txt`, for people.
pub fn human_manifest(m: &Manifest) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Docker build cache for {}\ncreated {} by xtask {} on Docker {} ({}, {} image store)\nstrategy: {}\n\n",
        m.project_name,
        m.created,
        m.tool_version,
        m.engine.server_version,
        m.engine.arch,
        if m.engine.containerd_store { "containerd" } else { "classic" },
        m.strategy.as_str()
    ));
    s.push_str("Images:\n");
    for image in &m.images {
        let role = match image.role {
            ImageRole::Base => "base",
            ImageRole::BuildCache => "build cache",
        };
        s.push_str(&format!(
            "  {:<40} {:<12} {}\n",
            image.name,
            role,
            short_id(&image.id)
        ));
    }
    s.push_str("\nServices:\n");
    for service in &m.services {
        s.push_str(&format!("  {}\n", service.name));
        if let Some(dir) = &service.build_cache {
            // What to write under build.cache_from by hand (<bundle>: this folder's path).
            let tag = service.build_cache_tag.as_deref();
            let cache_from = layout::local_cache_from(format!("<bundle>/{dir}"), tag);
            match tag {
                Some(tag) => s.push_str(&format!(
                    "    build cache: {dir}/, tag {tag} (cache_from: {cache_from})\n"
                )),
                None => s.push_str(&format!(
                    "    build cache: {dir}/ (cache_from: {cache_from})\n"
                )),
            }
        }
        for image in &service.cache_images {
            s.push_str(&format!("    cache image: {image}\n"));
        }
        for (name, dir) in &service.contexts {
            s.push_str(&format!("    build context {name}: {dir}/\n"));
            if let (Some(image), true) = (&service.npm_image, name == NPM_CONTEXT) {
                s.push_str(&format!(
                    "      or, faster, the image cache-import makes of it: docker-image://{image}\n"
                ));
            }
        }
    }
    s.push_str("\nFiles:\n");
    let mut dirs: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for f in &m.files {
        let e = dirs.entry(layout::top_level(&f.path)).or_default();
        e.0 += 1;
        e.1 = e.1.saturating_add(f.size);
    }
    for (top, (count, size)) in dirs {
        s.push_str(&format!(
            "  {top:<40} {count:>6} files {:>12}\n",
            human_bytes(size)
        ));
    }
    s.push_str("\nCheck with `sha256sum -c SHA256SUMS` or `cargo xtask cache-verify`.\n");
    s
}

fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// The script's `checked_copy`: copies a bundle file into the private folder and checks
/// the copy against the private SHA256SUMS.
const CHECKED_COPY: &str = r#"# Copies the bundle's file $1 to $2 (in the private folder) and checks the copy: what is
# loaded is what was checked, whatever happens to the bundle meanwhile.
checked_copy() {
    want=$(awk -v p="$1" 'substr($0, 67) == p { print substr($0, 1, 64) }' "$tree/SHA256SUMS")
    if [ -L "$1" ] || [ ! -f "$1" ]; then
        echo "error: $1 is no longer a regular file; nothing more is loaded" >&2
        exit 1
    fi
    cp "$1" "$2"
    got=$(sha256sum < "$2" | cut -d ' ' -f 1)
    if [ -z "$want" ] || [ "$got" != "$want" ]; then
        echo "error: $1 changed after it was checked (sha256 $got, expected $want); it was not loaded. Copy the bundle again" >&2
        exit 1
    fi
}
"#;

/// `import-build-cache.sh`: verifies every checksum, then loads the images, for servers
/// without Rust; then, when the bundle carries the tool, runs the checked copy of
/// `bin/xtask` for the rest (`cache-import`: the npm-cache images, ~/.npm; `patch-compose`
/// with `--patch-compose FILE`), on the platform it was built for only. POSIX sh. What it loads is what it checked: each file is copied into a
/// private folder (`mktemp -d`, 0700), the copy is hashed and compared with the private
/// copy of SHA256SUMS, and the copy is loaded; a file changed after `sha256sum -c` fails
/// the import before `docker load` runs. An optional argument is the bundle digest.
pub fn import_script(m: &Manifest) -> String {
    let archive = m
        .files
        .iter()
        .map(|f| f.path.as_str())
        .find(|p| p.starts_with(layout::IMAGES_ARCHIVE_STEM))
        .map(str::to_string)
        .unwrap_or_else(|| layout::images_archive(m.compression));
    let load = match m.compression {
        Compression::None => "docker load -i \"$tree/archive\"".to_string(),
        Compression::Gzip => "gzip -dc \"$tree/archive\" | docker load".to_string(),
        Compression::Zstd => "if ! command -v zstd >/dev/null 2>&1; then\n        \
             echo \"error: $archive is zstd-compressed and this server has no zstd; install zstd, or import with cargo xtask cache-import\" >&2\n        \
             exit 1\n    fi\n    zstd -dc \"$tree/archive\" | docker load"
            .to_string(),
    };
    let images = match &m.image_layout {
        None => format!(
            r#"archive="{archive}"
if [ -f "$archive" ]; then
    echo "Copying $archive to $tree and checking the copy..."
    checked_copy "$archive" "$tree/archive"
    echo "Loading images from $archive..."
    {load}
    rm -f "$tree/archive"
else
    echo "No images archive in this bundle."
fi"#
        ),
        Some(layout) => {
            // The tar `docker save` wrote, rebuilt from checked copies of the bundle's
            // files, under the archive's names.
            let mut s = String::from(
                "put() {\n    mkdir -p \"$tree/images/$(dirname \"$1\")\"\n    \
                 checked_copy \"$2\" \"$tree/images/$1\"\n}\n",
            );
            let mut names = Vec::new();
            for e in &layout.entries {
                s.push_str(&format!(
                    "put {} {}\n",
                    sh_quote(&e.name),
                    sh_quote(&e.path)
                ));
                names.push(sh_quote(&e.name));
            }
            s.push_str(&format!(
                "echo \"Loading images ({} files, {} of them from build-cache/blobs/)...\"\n\
                 (cd \"$tree/images\" && tar -cf - {}) | docker load\n\
                 rm -rf \"$tree/images\"",
                layout.entries.len(),
                layout
                    .entries
                    .iter()
                    .filter(|e| e.path.starts_with(BUILD_CACHE_DIR))
                    .count(),
                names.join(" ")
            ));
            s
        }
    };
    // With the tool, the checked copy of bin/xtask makes the npm-cache images (as
    // cache-import), patches and says what is next; without it (or with --no-tool), sh does
    // what it can and says what is left.
    let (npm_images, tool) = match (&m.tool, npm_images_script(m)) {
        (Some(tool), sh) if !sh.is_empty() => (
            format!("if [ -n \"$no_tool\" ]; then\n{sh}\nfi\n"),
            tool_script(tool),
        ),
        (Some(tool), _) => (String::new(), tool_script(tool)),
        (None, sh) => (sh, String::new()),
    };
    format!(
        "{head}\n{CHECKED_COPY}\n{images}\n{npm_images}\n{tool}{SH_ONLY_END}",
        head = script_head(m),
    )
}

/// The script's usage, argument parsing, engine check and checksum verification.
fn script_head(m: &Manifest) -> String {
    let tool_usage = match &m.tool {
        Some(tool) => format!(
            "# Then it runs the bundle's own xtask ({bin}, a static build for {target}; its\n\
             # sha256 is checked first, and it runs only on {os} {machine}): the same\n\
             # `cache-import` and `patch-compose` as `cargo xtask`, with no cargo.\n\
             #\n\
             #   --patch-compose FILE  patch FILE (a compose file) for the offline build\n\
             #                         (asked when run from a terminal, if not given)\n\
             #   --no-tool             do not run {bin}: load with sh only\n",
            bin = tool.binary,
            target = tool.target,
            os = tool.os,
            machine = tool.machine,
        ),
        None => String::new(),
    };
    format!(
        r#"#!/bin/sh
# Imports this Docker build-cache bundle ({project}, strategy {strategy}) on a server
# with Docker and sh. Written by `cargo xtask cache-export`. Nothing is loaded unless
# every checksum in SHA256SUMS matches, and what is loaded is a private copy whose
# checksum was checked.
{tool_usage}#
#   sh import-build-cache.sh [--patch-compose FILE] [--no-tool] [sha256:DIGEST]
#
# DIGEST: the bundle digest cache-export printed (the sha256 of SHA256SUMS); given, the
# bundle is refused unless it has it. Copies go to a private folder in $TMPDIR (default
# /var/tmp), which needs room for the images.
set -eu

caller=$(pwd)
compose=
no_tool=
want=
# shellcheck disable=SC2034 # no_tool is read only when the bundle carries bin/xtask
while [ $# -gt 0 ]; do
    case $1 in
        --patch-compose)
            if [ $# -lt 2 ]; then
                echo "error: --patch-compose needs the compose file to patch, e.g. --patch-compose docker-compose.yml" >&2
                exit 2
            fi
            compose=$2
            shift 2
            ;;
        --patch-compose=*) compose=${{1#--patch-compose=}}; shift ;;
        --no-tool) no_tool=1; shift ;;
        sha256:*) want=${{1#sha256:}}; shift ;;
        *)
            echo "error: unexpected argument '$1'; usage: sh import-build-cache.sh [--patch-compose FILE] [--no-tool] [sha256:DIGEST]" >&2
            exit 2
            ;;
    esac
done
case $compose in
    ''|/*) ;;
    *) compose="$caller/$compose" ;;
esac

cd "$(dirname "$0")"
here=$(pwd)

if grep -q '^base:' manifest.yaml 2>/dev/null; then
    echo "error: this folder holds a delta bundle (cache-export --since), which lacks the files of its base bundle: complete it with \`cargo xtask cache-import --bundle DIR --base OLD\` (which writes the full bundle and imports it); nothing was loaded" >&2
    exit 1
fi

if ! command -v docker >/dev/null 2>&1; then
    echo "error: docker is not installed or not on PATH" >&2
    exit 1
fi
if ! docker version >/dev/null 2>&1; then
    echo "error: the Docker engine does not answer; start it or set DOCKER_HOST" >&2
    exit 1
fi

tree=$(mktemp -d "${{TMPDIR:-/var/tmp}}/import-build-cache.XXXXXX")
trap 'rm -rf "$tree"' EXIT
chmod 700 "$tree"
cp SHA256SUMS "$tree/SHA256SUMS"
digest=$(sha256sum < "$tree/SHA256SUMS" | cut -d ' ' -f 1)
if [ -n "$want" ] && [ "$digest" != "$want" ]; then
    echo "error: the bundle digest is sha256:$digest, not sha256:$want: this is not the bundle that was exported; nothing was loaded" >&2
    exit 1
fi

echo "Verifying checksums (SHA256SUMS)..."
if ! sha256sum -c --quiet "$tree/SHA256SUMS"; then
    echo "error: the bundle is damaged or incomplete (see the files named above); nothing was loaded. Copy them again from the export machine." >&2
    exit 1
fi
"#,
        project = m.project_name,
        strategy = m.strategy.as_str(),
    )
}

/// What the script says at the end when sh did everything (no tool, or `--no-tool`).
const SH_ONLY_END: &str = r#"if [ -n "$compose" ]; then
    echo "warning: $compose was not patched: that needs xtask (this bundle's bin/xtask, or cargo xtask patch-compose)" >&2
fi
echo "Done. Next, from the project folder: cargo xtask patch-compose --bundle $here (or add the"
echo "cache_from and additional_contexts entries shown in cache-manifest.txt), then docker compose build."
"#;

/// Runs the checked copy of the bundled binary: `cache-import` (which finds the images
/// loaded, makes the npm-cache images and fills ~/.npm) and `patch-compose`, then says
/// the next command and exits. Refuses, before running anything, on a machine the binary
/// was not built for.
fn tool_script(tool: &ToolEntry) -> String {
    format!(
        r#"if [ -z "$no_tool" ]; then
    os=$(uname -s)
    machine=$(uname -m)
    if [ "$os" != {os} ] || [ "$machine" != {machine} ]; then
        echo "error: the bundle's {bin} is built for {target} ({os_text} {machine_text}); this machine is $os $machine, where it cannot run. The images are loaded: run sh import-build-cache.sh --no-tool to finish with sh alone, then cargo xtask patch-compose (its crates are in {vendor})" >&2
        exit 1
    fi
    echo "Checking {bin} (its sha256 in SHA256SUMS) before running it..."
    checked_copy {bin} "$tree/xtask"
    chmod 700 "$tree/xtask"
    if ! "$tree/xtask" --version >/dev/null 2>&1; then
        echo "error: the checked copy of {bin} in $tree does not run (a noexec TMPDIR?); set TMPDIR to a folder where programs may run, or use --no-tool" >&2
        exit 1
    fi
    "$tree/xtask" cache-import --bundle "$here" --expect-digest "sha256:$digest"
    if [ -z "$compose" ] && [ -t 0 ] && [ -t 1 ]; then
        printf 'Compose file to patch for the offline build (empty: none): '
        read -r compose || compose=
        case $compose in
            ''|/*) ;;
            *) compose="$caller/$compose" ;;
        esac
    fi
    if [ -n "$compose" ]; then
        "$tree/xtask" -f "$compose" patch-compose --bundle "$here"
        echo "Done. Next: docker compose -f $compose build"
    else
        echo "Done. Next: $here/{bin} -f COMPOSE-FILE patch-compose --bundle $here, then docker compose build"
    fi
    exit 0
fi
"#,
        bin = tool.binary,
        target = tool.target,
        os = sh_quote(&tool.os),
        machine = sh_quote(&tool.machine),
        os_text = tool.os,
        machine_text = tool.machine,
        vendor = tool.vendor.as_deref().unwrap_or("the repository"),
    )
}

/// The npm caches as images, as cache-import makes them (npm_image.rs): each layer made
/// again from its folder and skeleton, byte for byte, and checked against the tag (the
/// first hex digits of its digest) before it is loaded.
fn npm_images_script(m: &Manifest) -> String {
    let services: Vec<&ServiceEntry> = m
        .services
        .iter()
        .filter(|s| s.npm_image.is_some() && s.npm_cache.is_some())
        .collect();
    if services.is_empty() || m.strategy != Strategy::Local {
        return String::new();
    }
    let mut s = format!(
        r#"
npm_image() {{
    ref=$1 dir=$2 service=$3
    tag=${{ref##*:}}
    if docker image inspect "$ref" >/dev/null 2>&1; then
        echo "Present $ref"
        return 0
    fi
    echo "Making $ref from $dir/ (the npm cache as an image)..."
    work="$tree/npm"
    rm -rf "$work"
    mkdir -p "$work"
    offset=0
    while read -r blocks path; do
        dd if="$dir{headers}" bs=512 skip="$offset" count="$blocks" 2>/dev/null
        offset=$((offset + blocks))
        if [ -n "$path" ]; then
            cat "$dir/$path"
            size=$(wc -c < "$dir/$path")
            pad=$(( (512 - size % 512) % 512 ))
            if [ "$pad" -gt 0 ]; then
                dd if=/dev/zero bs="$pad" count=1 2>/dev/null
            fi
        fi
    done < "$dir{plan}" > "$work/layer.tar"
    dd if=/dev/zero bs=1024 count=1 2>/dev/null >> "$work/layer.tar"
    diff=$(sha256sum "$work/layer.tar" | cut -d ' ' -f 1)
    case $diff in
        "$tag"*) ;;
        *)
            echo "warning: $dir/ gives a layer $diff, not the export's $tag...; not loaded. cargo xtask patch-compose will hand the build the folder, and npm ci will run again (offline)" >&2
            return 0
            ;;
    esac
    mkdir "$work/$diff"
    mv "$work/layer.tar" "$work/$diff/layer.tar"
    arch=$(docker version --format '{{{{.Server.Arch}}}}')
    # shellcheck disable=SC2059 # the format is the image config, written by cache-export
    printf '{config}' "$arch" "$service" "$diff" > "$work/config.json"
    config=$(sha256sum "$work/config.json" | cut -d ' ' -f 1)
    mv "$work/config.json" "$work/$config.json"
    printf '[{{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}}]' "$config" "$ref" "$diff" > "$work/manifest.json"
    (cd "$work" && tar -cf - manifest.json "$config.json" "$diff/layer.tar") | docker load
    rm -rf "$work"
}}
"#,
        config = npm_image::CONFIG_PRINTF,
        headers = npm_image::HEADERS_SUFFIX,
        plan = npm_image::PLAN_SUFFIX,
    );
    for service in services {
        if let (Some(image), Some(dir)) = (&service.npm_image, &service.npm_cache) {
            s.push_str(&format!(
                "npm_image {} {} {}\n",
                sh_quote(image),
                sh_quote(dir),
                sh_quote(&service.name)
            ));
        }
    }
    s
}

/// `text` in single quotes for sh.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The current time as RFC 3339 (UTC), without a date crate.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use xshell::cmd;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_000_000), "2026-11-30T00:53:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    fn script_manifest(compression: Compression, layout: bool) -> Manifest {
        Manifest {
            format_version: 1,
            tool_version: "0.1.0".into(),
            created: "2026-01-01T00:00:00Z".into(),
            project_name: "p".into(),
            engine: crate::model::manifest::EngineSummary {
                server_version: "26.1.5".into(),
                arch: "amd64".into(),
                containerd_store: true,
            },
            strategy: Strategy::Local,
            compression,
            images: Vec::new(),
            image_layout: layout.then(|| crate::model::manifest::ImageLayout {
                entries: vec![crate::model::manifest::LayoutEntry {
                    name: "blobs/sha256/ab".into(),
                    path: "build-cache/blobs/sha256/ab".into(),
                }],
            }),
            services: vec![ServiceEntry {
                name: "web".into(),
                npm_cache: Some("npm-cache/web".into()),
                npm_image: Some("p-web-npm-cache:abcd".into()),
                ..ServiceEntry::default()
            }],
            files: Vec::new(),
            tool: None,
            base: None,
        }
    }

    /// Issue 15, point 7: every variant of the script is shellcheck-clean (the zstd and
    /// gzip ones tripped SC2034).
    #[test]
    fn every_import_script_variant_is_shellcheck_clean() {
        let sh = xshell::Shell::new().unwrap();
        if cmd!(sh, "shellcheck --version")
            .quiet()
            .ignore_stdout()
            .run()
            .is_err()
        {
            eprintln!("skipped: no shellcheck");
            return;
        }
        let dir = crate::lab::test_dir("shellcheck");
        for compression in Compression::ALL {
            for (layout, tool) in [(false, false), (true, false), (true, true), (false, true)] {
                let script = dir.join(format!("{}-{layout}-{tool}.sh", compression.as_str()));
                let mut m = script_manifest(compression, layout);
                if tool {
                    m.tool = Some(tool_entry());
                }
                std::fs::write(&script, import_script(&m)).unwrap();
                let out = cmd!(sh, "shellcheck --shell=sh {script}")
                    .quiet()
                    .ignore_status()
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{script}:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 15, point 7: a file swapped after `sha256sum -c` passed is never loaded (the
    /// old script read the archive again: a swap in between was loaded 5 times in 10).
    /// A stand-in `docker` records what it loads; a stand-in `sha256sum` swaps the archive
    /// right after the check passes.
    #[test]
    fn the_import_script_loads_only_the_bytes_it_checked() {
        use sha2::Digest as _;
        let sh = xshell::Shell::new().unwrap();
        for layout in [false, true] {
            let dir = crate::lab::test_dir(&format!("script-toctou-{layout}"));
            let (bundle, bin) = (dir.join("bundle"), dir.join("bin"));
            let file = if layout {
                "build-cache/blobs/sha256/ab"
            } else {
                "base-images.tar"
            };
            std::fs::create_dir_all(bundle.join("build-cache/blobs/sha256")).unwrap();
            std::fs::create_dir_all(&bin).unwrap();
            let good = b"the checked images".to_vec();
            std::fs::write(bundle.join(file), &good).unwrap();
            let digest = crate::bundle::hex(&sha2::Sha256::digest(&good));
            std::fs::write(bundle.join("SHA256SUMS"), format!("{digest}  {file}\n")).unwrap();
            let mut m = script_manifest(Compression::None, layout);
            m.services.clear();
            std::fs::write(bundle.join("import-build-cache.sh"), import_script(&m)).unwrap();
            let log = dir.join("loaded");
            std::fs::write(
                bin.join("docker"),
                format!(
                    "#!/bin/sh\ncase $1 in\n  load) if [ \"${{2:-}}\" = -i ]; then cat \"$3\"; \
                     else cat; fi >> {log} ;;\nesac\nexit 0\n"
                ),
            )
            .unwrap();
            std::fs::write(
                bin.join("sha256sum"),
                format!(
                    "#!/bin/sh\n/usr/bin/sha256sum \"$@\" || exit $?\n\
                     if [ \"$1\" = -c ]; then printf 'swapped images' > {bundle}/{file}; fi\n"
                ),
            )
            .unwrap();
            for tool in ["docker", "sha256sum"] {
                let path = bin.join(tool);
                cmd!(sh, "chmod +x {path}").quiet().run().unwrap();
            }
            let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
            let script = bundle.join("import-build-cache.sh");
            let out = cmd!(sh, "sh {script}")
                .env("PATH", &path)
                .env("TMPDIR", &dir)
                .quiet()
                .ignore_status()
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let loaded = std::fs::read(&log).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&loaded).contains("swapped"),
                "layout {layout}: the swapped file was loaded; {stderr}"
            );
            assert!(!out.status.success(), "layout {layout}: {stderr}");
            assert!(stderr.contains("changed after it was checked"), "{stderr}");
            // Without a swap, the checked bytes are loaded; a wrong digest argument refuses.
            std::fs::write(bundle.join(file), &good).unwrap();
            std::fs::remove_file(bin.join("sha256sum")).unwrap();
            let out = cmd!(sh, "sh {script}")
                .env("PATH", &path)
                .env("TMPDIR", &dir)
                .quiet()
                .ignore_status()
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let loaded = std::fs::read(&log).unwrap();
            let expected: &[u8] = if layout { b"the checked images" } else { &good };
            assert!(
                loaded.windows(expected.len()).any(|w| w == expected),
                "layout {layout}: not loaded"
            );
            let wrong = "0".repeat(64);
            let out = cmd!(sh, "sh {script} sha256:{wrong}")
                .env("PATH", &path)
                .env("TMPDIR", &dir)
                .quiet()
                .ignore_status()
                .output()
                .unwrap();
            assert!(!out.status.success());
            assert!(String::from_utf8_lossy(&out.stderr).contains("bundle digest"));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    fn tool_entry() -> ToolEntry {
        ToolEntry {
            binary: "bin/xtask".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            os: "Linux".into(),
            machine: "x86_64".into(),
            vendor: Some("tool/xtask-vendor.tar.gz".into()),
            sources: "d".repeat(64),
        }
    }

    /// Issue 17: the script runs the bundled xtask only as a private copy whose sha256 it
    /// checked, only on the machine it was built for, with the arguments of `cargo xtask`.
    /// Stand-ins: `docker` (answers), `uname` (says the machine), `xtask` (a sh script
    /// that logs its arguments), and a `sha256sum` that swaps bin/xtask right after the
    /// check of every checksum passed.
    #[test]
    fn the_import_script_runs_only_the_checked_tool_on_its_machine() {
        use sha2::Digest as _;
        let sh = xshell::Shell::new().unwrap();
        let dir = crate::lab::test_dir("script-tool");
        let (bundle, bin) = (dir.join("bundle"), dir.join("bin"));
        std::fs::create_dir_all(bundle.join("bin")).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let log = dir.join("ran");
        let good = format!("#!/bin/sh\necho \"checked $*\" >> {log}\n");
        std::fs::write(bundle.join("bin/xtask"), &good).unwrap();
        let digest = crate::bundle::hex(&sha2::Sha256::digest(good.as_bytes()));
        std::fs::write(bundle.join("SHA256SUMS"), format!("{digest}  bin/xtask\n")).unwrap();
        let sums_digest = {
            let sums = std::fs::read(bundle.join("SHA256SUMS")).unwrap();
            crate::bundle::hex(&sha2::Sha256::digest(&sums))
        };
        let mut m = script_manifest(Compression::None, false);
        m.services.clear();
        m.tool = Some(tool_entry());
        let script = bundle.join("import-build-cache.sh");
        std::fs::write(&script, import_script(&m)).unwrap();
        std::fs::write(bin.join("docker"), "#!/bin/sh\nexit 0\n").unwrap();
        let machine = dir.join("machine");
        std::fs::write(&machine, "x86_64").unwrap();
        std::fs::write(
            bin.join("uname"),
            format!("#!/bin/sh\ncase $1 in -s) echo Linux ;; -m) cat {machine} ;; esac\n"),
        )
        .unwrap();
        let swap = format!(
            "#!/bin/sh\n/usr/bin/sha256sum \"$@\" || exit $?\n\
             if [ \"$1\" = -c ]; then printf '#!/bin/sh\\necho swapped >> {log}\\n' > {bundle}/bin/xtask; fi\n"
        );
        std::fs::write(bin.join("sha256sum"), &swap).unwrap();
        for tool in ["docker", "uname", "sha256sum"] {
            let path = bin.join(tool);
            cmd!(sh, "chmod +x {path} {bundle}/bin/xtask")
                .quiet()
                .run()
                .unwrap();
        }
        let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
        let run = |args: &[&str]| {
            let _ = std::fs::remove_file(&log);
            let out = cmd!(sh, "sh {script} {args...}")
                .env("PATH", &path)
                .env("TMPDIR", &dir)
                .quiet()
                .ignore_status()
                .output()
                .unwrap();
            let ran = std::fs::read_to_string(&log).unwrap_or_default();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                ran,
            )
        };
        // Swapped after the check: the swapped binary never runs.
        let (ok, stderr, ran) = run(&[]);
        assert!(
            !ok && stderr.contains("bin/xtask changed after it was checked"),
            "{stderr}"
        );
        assert_eq!(ran, "", "{stderr}");
        // Intact: the checked copy runs cache-import, then patch-compose on the file given
        // (made absolute against the folder the script was started from).
        std::fs::write(bundle.join("bin/xtask"), &good).unwrap();
        std::fs::remove_file(bin.join("sha256sum")).unwrap();
        let (ok, stderr, ran) = run(&["--patch-compose", "/srv/app/compose.yaml"]);
        assert!(ok, "{stderr}");
        assert_eq!(
            ran,
            format!(
                "checked --version\n\
                 checked cache-import --bundle {bundle} --expect-digest sha256:{sums_digest}\n\
                 checked -f /srv/app/compose.yaml patch-compose --bundle {bundle}\n"
            )
        );
        // Another machine: refused before anything runs, naming both and the way out.
        std::fs::write(&machine, "aarch64").unwrap();
        let (ok, stderr, ran) = run(&[]);
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains(
                "built for x86_64-unknown-linux-gnu (Linux x86_64); this machine \
                 is Linux aarch64"
            ) && stderr.contains("--no-tool"),
            "{stderr}"
        );
        assert_eq!(ran, "");
        // --no-tool: sh alone, and the binary does not run.
        let (ok, stderr, ran) = run(&["--no-tool", "--patch-compose", "c.yml"]);
        assert!(ok && stderr.contains("was not patched"), "{stderr}");
        assert_eq!(ran, "");
        let (ok, stderr, _) = run(&["--bogus"]);
        assert!(
            !ok && stderr.contains("unexpected argument '--bogus'"),
            "{stderr}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The hint for people names the same `cache_from` patch-compose writes.
    #[test]
    fn human_manifest_shows_the_cache_from_entry() {
        let service = |name: &str, tag: Option<&str>| ServiceEntry {
            name: name.into(),
            build_cache: Some("build-cache".into()),
            build_cache_tag: tag.map(str::to_string),
            ..ServiceEntry::default()
        };
        let m = Manifest {
            services: vec![service("web", Some("web")), service("api", None)],
            files: Vec::new(),
            base: None,
            ..script_manifest(Compression::None, false)
        };
        let text = human_manifest(&m);
        assert!(text.contains(
            "  web\n    build cache: build-cache/, tag web (cache_from: \
             type=local,src=<bundle>/build-cache,tag=web)\n"
        ));
        assert!(text.contains(
            "  api\n    build cache: build-cache/ (cache_from: type=local,src=<bundle>/build-cache)\n"
        ));
    }
}
