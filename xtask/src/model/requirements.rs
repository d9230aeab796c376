//! pip requirements files, read as pip reads them (`pip/_internal/req/req_file.py`): lines
//! joined on a trailing backslash, `#` comments after whitespace, option lines, per-line
//! options such as `--hash`, and `-r`/`-c` includes relative to the including file. The
//! wheelhouse is filled from what this finds, so a package pip would install but this
//! missed is a build that fails offline; forms that cannot be fetched by name (editables,
//! URLs, paths) are reported rather than dropped silently.
use std::collections::BTreeSet;

use camino::{Utf8Component, Utf8Path, Utf8PathBuf};

/// Reads a file by absolute path. Injected so the model does no I/O of its own.
pub type ReadFile<'a> = &'a dyn Fn(&Utf8Path) -> std::io::Result<String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// PEP 503 normalised: lowercase, runs of `-_.` as one `-`.
    pub name: String,
    /// Normalised like names.
    pub extras: Vec<String>,
    /// The version when the spec is exactly `==X` (no wildcard).
    pub pinned: Option<String>,
    /// As written, markers included, per-line options (`--hash`) left out.
    pub spec: String,
    pub file: Utf8PathBuf,
    /// 1-based; the first line of a continued line.
    pub line: usize,
}

/// A line pip installs but that names no package on an index: `-e`, a URL, a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unnamed {
    pub text: String,
    pub file: Utf8PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// `(line, requirement as written)`.
    pub requirements: Vec<(usize, String)>,
    /// `-r`/`--requirement` and `-c`/`--constraint` targets, as written.
    pub includes: Vec<String>,
    /// For each of `includes`: its line and whether it is a constraints file.
    pub include_kinds: Vec<(usize, IncludeKind)>,
    /// `(line, text)` of `-e`/`--editable` lines.
    pub editables: Vec<(usize, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IncludeKind {
    Requirements,
    Constraints,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequirementSet {
    /// Every file read, absolute, in discovery order, once each.
    pub files: Vec<Utf8PathBuf>,
    /// File by file in the order of `files`, each file's in line order.
    pub requirements: Vec<Requirement>,
    /// Entries of `-c` files: they pin versions but install nothing.
    pub constraints: Vec<Requirement>,
    /// Editables, URLs and paths: these need the source, not a wheel from an index.
    pub unnamed: Vec<Unnamed>,
}

pub fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (line_no, line) in logical_lines(text) {
        let line = strip_comment(&line);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('-') {
            if let Some((kind, target)) = include(line) {
                parsed.includes.push(target);
                parsed.include_kinds.push((line_no, kind));
            } else if is_editable(line) {
                parsed.editables.push((line_no, line.to_string()));
            }
            // Any other option line (--index-url, --find-links, --pre, …) installs nothing.
            continue;
        }
        // Per-line options (`--hash=…`) start at the first word that starts with `-`.
        let mut end = line.len();
        let mut at = 0;
        for word in line.split_whitespace() {
            let Some(offset) = line[at..].find(word) else {
                break;
            };
            let start = at + offset;
            if word.starts_with('-') {
                end = start;
                break;
            }
            at = start + word.len();
        }
        let spec = line[..end].trim();
        if !spec.is_empty() {
            parsed.requirements.push((line_no, spec.to_string()));
        }
    }
    parsed
}

/// Follows `-r`/`-c` includes from `roots` (absolute paths) and gathers every requirement.
pub fn collect(roots: &[Utf8PathBuf], read: ReadFile) -> anyhow::Result<RequirementSet> {
    let mut set = RequirementSet::default();
    let mut seen = BTreeSet::new();
    // Depth first, includes in file order, as pip reads them.
    let mut todo: Vec<Pending> = roots
        .iter()
        .rev()
        .map(|r| Pending {
            file: normalize(r),
            kind: IncludeKind::Requirements,
            included_by: None,
        })
        .collect();
    while let Some(Pending {
        file,
        kind,
        included_by,
    }) = todo.pop()
    {
        if !seen.insert((file.clone(), kind)) {
            continue;
        }
        let text = read(&file).map_err(|e| match &included_by {
            Some((parent, target)) => anyhow::anyhow!(
                "{parent} includes {target:?}, but {file} cannot be read: {e}; \
                 fix the path in {parent}, or add the file"
            ),
            None => anyhow::anyhow!("cannot read requirements file {file}: {e}"),
        })?;
        if !set.files.contains(&file) {
            set.files.push(file.clone());
        }
        let parsed = parse(&text);
        for (line, spec) in parsed.requirements {
            match requirement(&spec, &file, line) {
                Some(req) if kind == IncludeKind::Constraints => set.constraints.push(req),
                Some(req) => set.requirements.push(req),
                None if kind == IncludeKind::Constraints => {}
                None => set.unnamed.push(Unnamed {
                    text: spec,
                    file: file.clone(),
                    line,
                }),
            }
        }
        if kind == IncludeKind::Requirements {
            for (line, text) in parsed.editables {
                set.unnamed.push(Unnamed {
                    text,
                    file: file.clone(),
                    line,
                });
            }
        }
        let dir = file.parent().unwrap_or(Utf8Path::new(""));
        let mut nested = Vec::new();
        for (target, (_, include_kind)) in parsed.includes.into_iter().zip(parsed.include_kinds) {
            if target.contains("://") {
                anyhow::bail!(
                    "{file} includes {target:?}, a URL: download it next to {file} and \
                     include the local copy"
                );
            }
            // pip reads everything below a constraints file as constraints.
            let include_kind = include_kind.max(kind);
            nested.push(Pending {
                file: normalize(&dir.join(&target)),
                kind: include_kind,
                included_by: Some((file.clone(), target)),
            });
        }
        todo.extend(nested.into_iter().rev());
    }
    Ok(set)
}

/// A file still to read, and the file and `-r` value that named it.
struct Pending {
    file: Utf8PathBuf,
    kind: IncludeKind,
    included_by: Option<(Utf8PathBuf, String)>,
}

/// PEP 503 name normalisation.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_run = false;
        }
    }
    out
}

/// A named requirement (`name[extras] spec ; markers`, or `name @ url`), or `None` for a
/// URL or a path.
fn requirement(spec: &str, file: &Utf8Path, line: usize) -> Option<Requirement> {
    let name_len = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(spec.len());
    let name = &spec[..name_len];
    let valid = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let mut rest = spec[name_len..].trim_start();
    let next = rest.chars().next();
    let follows_name = match next {
        None => true,
        Some(c) => matches!(c, '[' | '(' | ';' | '@' | '<' | '>' | '=' | '!' | '~'),
    };
    let archive = [".whl", ".tar.gz", ".zip", ".tgz", ".tar.bz2"]
        .iter()
        .any(|ext| name.ends_with(ext));
    if !valid || !follows_name || archive {
        return None;
    }
    let mut extras = Vec::new();
    if let Some(inner) = rest.strip_prefix('[') {
        let close = inner.find(']')?;
        extras = inner[..close]
            .split(',')
            .map(|e| normalize_name(e.trim()))
            .filter(|e| !e.is_empty())
            .collect();
        rest = inner[close + 1..].trim_start();
    }
    let version = rest.split(';').next().unwrap_or("").trim();
    let version = version
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or(version)
        .trim();
    let pinned = version
        .strip_prefix("==")
        .filter(|v| !v.starts_with('='))
        .map(str::trim)
        .filter(|v| !v.is_empty() && !v.contains(['*', ',', ' ']));
    Some(Requirement {
        name: normalize_name(name),
        extras,
        pinned: pinned.map(str::to_string),
        spec: spec.to_string(),
        file: file.to_owned(),
        line,
    })
}

/// Lines joined on a trailing backslash, with the number of their first line. As in pip,
/// a comment line ends a continuation rather than being continued.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let is_comment = line.trim_start().starts_with('#');
        if line.ends_with('\\') && !is_comment {
            let part = line.trim_matches('\\');
            match &mut pending {
                Some((_, joined)) => joined.push_str(part),
                None => pending = Some((i + 1, part.to_string())),
            }
            continue;
        }
        let line = if is_comment {
            format!(" {line}")
        } else {
            line.to_string()
        };
        match pending.take() {
            Some((start, mut joined)) => {
                joined.push_str(&line);
                out.push((start, joined));
            }
            None => out.push((i + 1, line)),
        }
    }
    if let Some(last) = pending {
        out.push(last);
    }
    out
}

/// Drops `#…` at the start of a line or after whitespace (a URL's `#egg=` stays).
fn strip_comment(line: &str) -> String {
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return line[..i].to_string();
        }
        prev_space = c.is_whitespace();
    }
    line.to_string()
}

/// `-r x`, `-rx`, `--requirement x`, `--requirement=x`, and the same for `-c`.
fn include(line: &str) -> Option<(IncludeKind, String)> {
    let forms = [
        ("--requirement", IncludeKind::Requirements),
        ("--constraint", IncludeKind::Constraints),
        ("-r", IncludeKind::Requirements),
        ("-c", IncludeKind::Constraints),
    ];
    for (flag, kind) in forms {
        let Some(rest) = line.strip_prefix(flag) else {
            continue;
        };
        let long = flag.starts_with("--");
        let rest = if let Some(value) = rest.strip_prefix('=').filter(|_| long) {
            value
        } else if rest.starts_with(char::is_whitespace) || !long {
            rest
        } else {
            continue; // e.g. --requirements-typo
        };
        let target = rest.split_whitespace().next()?;
        return Some((kind, target.to_string()));
    }
    None
}

fn is_editable(line: &str) -> bool {
    line.starts_with("-e") || line.starts_with("--editable")
}

/// `a/./b/../c` as `a/c`, without touching the filesystem.
fn normalize(path: &Utf8Path) -> Utf8PathBuf {
    let mut out = Utf8PathBuf::new();
    for part in path.components() {
        match part {
            Utf8Component::CurDir => {}
            Utf8Component::ParentDir => match out.components().next_back() {
                Some(Utf8Component::RootDir | Utf8Component::Prefix(_)) => {}
                Some(Utf8Component::Normal(_)) => {
                    out.pop();
                }
                _ => out.push(".."),
            },
            other => out.push(other.as_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn check_parse(text: &str, requirements: &[(usize, &str)], includes: &[&str]) {
        let parsed = parse(text);
        let got: Vec<(usize, &str)> = parsed
            .requirements
            .iter()
            .map(|(l, s)| (*l, s.as_str()))
            .collect();
        assert_eq!(got, requirements);
        assert_eq!(parsed.includes, includes);
    }

    /// `name [extras] pinned` of one line, or `-` when it names no package.
    fn check_req(spec: &str, expected: &str) {
        let got = match requirement(spec, Utf8Path::new("/r.txt"), 1) {
            None => "-".to_string(),
            Some(r) => {
                assert_eq!(r.spec, spec);
                format!("{} {:?} {:?}", r.name, r.extras, r.pinned)
            }
        };
        assert_eq!(got, expected, "{spec}");
    }

    fn files(list: &[(&str, &str)]) -> BTreeMap<Utf8PathBuf, String> {
        list.iter()
            .map(|(p, t)| (Utf8PathBuf::from(*p), t.to_string()))
            .collect()
    }

    fn collect_from(
        fs: &BTreeMap<Utf8PathBuf, String>,
        roots: &[&str],
    ) -> anyhow::Result<RequirementSet> {
        let read = |p: &Utf8Path| {
            fs.get(p)
                .cloned()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not found"))
        };
        let roots: Vec<Utf8PathBuf> = roots.iter().map(Utf8PathBuf::from).collect();
        collect(&roots, &read)
    }

    #[test]
    fn lines_comments_options_and_continuations() {
        check_parse(
            "# top comment\n\
             Flask==3.0.0  # web\n\
             \n\
             --index-url https://pypi.org/simple\n\
             --extra-index-url=https://x/simple\n\
             -i https://y\n\
             requests[socks] >= 2.31 ; python_version < \"3.10\"\n\
             passlib[bcrypt]==1.7.4 \\\n    --hash=sha256:aaa \\\n    --hash=sha256:bbb\n\
             -e ./local\n\
             --editable=git+https://g/x.git#egg=x\n\
             pkg @ https://h/pkg-1.0.tar.gz#sha256=abc\n\
             uvicorn\\\n[standard]==0.30.1\n\
             -r base.txt\n--requirement=dev.txt\n-cconstraints.txt\n--constraint  more.txt # c\n",
            &[
                (2, "Flask==3.0.0"),
                (7, "requests[socks] >= 2.31 ; python_version < \"3.10\""),
                (8, "passlib[bcrypt]==1.7.4"),
                (13, "pkg @ https://h/pkg-1.0.tar.gz#sha256=abc"),
                (14, "uvicorn[standard]==0.30.1"),
            ],
            &["base.txt", "dev.txt", "constraints.txt", "more.txt"],
        );
        assert_eq!(
            parse("-e ./local\n--editable ../x\n").editables,
            [
                (1, "-e ./local".to_string()),
                (2, "--editable ../x".to_string())
            ]
        );
        // A comment line ends a continuation; a trailing backslash at the end is harmless.
        check_parse("a==1 \\\n# note\nb==2 \\", &[(1, "a==1"), (3, "b==2")], &[]);
        check_parse("", &[], &[]);
    }

    #[test]
    fn requirement_names_extras_and_pins() {
        check_req(
            "passlib[bcrypt]==1.7.4",
            "passlib [\"bcrypt\"] Some(\"1.7.4\")",
        );
        check_req(
            "Django_REST.framework==3.15",
            "django-rest-framework [] Some(\"3.15\")",
        );
        check_req("A__b-.c", "a-b-c [] None");
        check_req(
            "x[Foo_Bar, baz] == 2.0",
            "x [\"foo-bar\", \"baz\"] Some(\"2.0\")",
        );
        check_req("x==1.*", "x [] None");
        check_req("x===1.0", "x [] None");
        check_req("x>=1,<2", "x [] None");
        check_req("x==1.0,!=1.0.1", "x [] None");
        check_req("x (==1.0)", "x [] Some(\"1.0\")");
        check_req("x==1.0; python_version<\"3.10\"", "x [] Some(\"1.0\")");
        check_req("x~=1.4", "x [] None");
        check_req("x @ https://h/x-1.0.tar.gz", "x [] None");
        check_req("https://h/x-1.0-py3-none-any.whl", "-");
        check_req("./dist/x-1.0-py3-none-any.whl", "-");
        check_req("x-1.0-py3-none-any.whl", "-");
        check_req("git+https://g/x.git#egg=x", "-");
        check_req(".", "-");
        check_req("x[unclosed", "-");
    }

    #[test]
    fn collect_follows_includes_relative_to_the_including_file() {
        let fs = files(&[
            (
                "/app/requirements.txt",
                "-r requirements/base.txt\nFlask==3.0.0\n-c ../constraints.txt\n",
            ),
            (
                "/app/requirements/base.txt",
                "-r ./common/../shared.txt\nrequests\n",
            ),
            (
                "/app/requirements/shared.txt",
                "-r ../requirements.txt\n-e .\nsix==1.16.0\n",
            ),
            (
                "/constraints.txt",
                "urllib3==2.2.1\n-r nested.txt\n./local.whl\n",
            ),
            ("/nested.txt", "idna==3.7\n"),
        ]);
        let set = collect_from(&fs, &["/app/requirements.txt"]).expect("collects");
        assert_eq!(
            set.files,
            [
                "/app/requirements.txt",
                "/app/requirements/base.txt",
                "/app/requirements/shared.txt",
                "/constraints.txt",
                "/nested.txt",
            ]
        );
        let names: Vec<(&str, Option<&str>, &str, usize)> = set
            .requirements
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.pinned.as_deref(),
                    r.file.as_str(),
                    r.line,
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("flask", Some("3.0.0"), "/app/requirements.txt", 2),
                ("requests", None, "/app/requirements/base.txt", 2),
                ("six", Some("1.16.0"), "/app/requirements/shared.txt", 3),
            ]
        );
        let constraints: Vec<&str> = set.constraints.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(constraints, ["urllib3", "idna"]);
        assert_eq!(
            set.unnamed,
            [Unnamed {
                text: "-e .".to_string(),
                file: "/app/requirements/shared.txt".into(),
                line: 2
            }]
        );
    }

    #[test]
    fn collect_several_roots_once_each() {
        let fs = files(&[
            ("/a/r.txt", "-r r.txt\nx\n"),
            ("/a/dev.txt", "-r ./r.txt\ny\n"),
        ]);
        let set = collect_from(&fs, &["/a/r.txt", "/a/./dev.txt", "/a/r.txt"]).expect("collects");
        assert_eq!(set.files, ["/a/r.txt", "/a/dev.txt"]);
        let names: Vec<&str> = set.requirements.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
    }

    #[test]
    fn collect_errors_name_the_file_and_the_include() {
        let fs = files(&[("/app/requirements.txt", "flask\n-r dev/missing.txt\n")]);
        let err = collect_from(&fs, &["/app/requirements.txt"]).expect_err("fails");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("/app/requirements.txt includes \"dev/missing.txt\""),
            "{msg}"
        );
        assert!(msg.contains("/app/dev/missing.txt cannot be read"), "{msg}");

        let err = collect_from(&fs, &["/nope.txt"]).expect_err("fails");
        assert!(format!("{err:#}").contains("cannot read requirements file /nope.txt"));

        let fs = files(&[("/r.txt", "-r https://example.com/r.txt\n")]);
        let err = collect_from(&fs, &["/r.txt"]).expect_err("fails");
        assert!(format!("{err:#}").contains("a URL"));
    }

    #[test]
    fn paths_normalise_without_the_filesystem() {
        assert_eq!(normalize(Utf8Path::new("/a/./b/../c")), "/a/c");
        assert_eq!(normalize(Utf8Path::new("/../a")), "/a");
        assert_eq!(normalize(Utf8Path::new("../../a")), "../../a");
    }
}
