//! Tidy: the crate's architecture rules (ARCHITECTURE.md, "Invariants"), checked on its
//! source text, as rust-analyzer's `tidy` test does. Each rule names the file and line
//! that breaks it and says what to do instead.
//!
//! The rules read code only: `#[cfg(test)]` modules at the end of a file are left out
//! (tests may touch files and spawn processes anywhere), and so are comments.

use std::collections::{BTreeMap, BTreeSet};

use camino::{Utf8Path, Utf8PathBuf};

/// Functions allowed over [`MAX_FN_LINES`], each with its reason.
const LONG_FUNCTIONS: &[(&str, &str)] = &[];

/// A function longer than this needs a reason in [`LONG_FUNCTIONS`].
const MAX_FN_LINES: usize = 120;

/// A source file of the crate: its module path (`commands::cache_export`), its code with
/// comments and the trailing test module removed, and its path for messages.
struct Source {
    module: String,
    path: Utf8PathBuf,
    code: Vec<String>,
}

fn src_dir() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn sources() -> Vec<Source> {
    let root = src_dir();
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading src/") {
            let path = Utf8PathBuf::try_from(entry.expect("entry").path()).expect("UTF-8 path");
            if path.is_dir() {
                stack.push(path);
            } else if path.extension() == Some("rs") {
                let text = std::fs::read_to_string(&path).expect("reading a source file");
                out.push(Source {
                    module: module_of(&root, &path),
                    code: code_lines(&text),
                    path: path
                        .strip_prefix(root.parent().unwrap())
                        .unwrap()
                        .to_owned(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

/// `src/commands/mod.rs` → `commands`; `src/lab/engine.rs` → `lab::engine`;
/// `src/lib.rs` and `src/main.rs` → `` (the crate root).
fn module_of(root: &Utf8Path, path: &Utf8Path) -> String {
    let rel = path.strip_prefix(root).unwrap();
    let mut parts: Vec<&str> = rel.iter().collect();
    let last = parts.pop().unwrap().trim_end_matches(".rs");
    if !matches!(last, "mod" | "lib" | "main") {
        parts.push(last);
    }
    parts.join("::")
}

/// The file's lines with `//` comments and `#[cfg(test)]` modules blanked (tests may
/// touch files and spawn processes anywhere). Line numbers stay those of the file.
fn code_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let all: Vec<&str> = text.lines().collect();
    // The closing line of the test module being skipped: its indentation and `}`.
    let mut skip_until: Option<String> = None;
    for (i, line) in all.iter().enumerate() {
        if let Some(close) = &skip_until {
            if line == close {
                skip_until = None;
            }
            lines.push(String::new());
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed == "#[cfg(test)]" {
            if let Some(next) = all.get(i + 1) {
                let next_trimmed = next.trim_start();
                if next_trimmed.starts_with("mod ") && next_trimmed.ends_with('{') {
                    let indent = &next[..next.len() - next_trimmed.len()];
                    skip_until = Some(format!("{indent}}}"));
                    lines.push(String::new());
                    continue;
                }
            }
        }
        if trimmed.starts_with("//") {
            lines.push(String::new());
        } else {
            lines.push(line.to_string());
        }
    }
    lines
}

fn matching<'a>(
    sources: &'a [Source],
    mut keep: impl FnMut(&Source) -> bool,
    needles: &'a [&'a str],
) -> Vec<String> {
    let mut found = Vec::new();
    for source in sources.iter().filter(|s| keep(s)) {
        for (i, line) in source.code.iter().enumerate() {
            for needle in needles {
                if line.contains(needle) {
                    found.push(format!("{}:{}: `{needle}`", source.path, i + 1));
                }
            }
        }
    }
    found
}

fn in_model(s: &Source) -> bool {
    s.module == "model" || s.module.starts_with("model::")
}

#[test]
fn the_model_does_no_io_and_needs_no_cli() {
    let sources = sources();
    assert!(sources.iter().any(in_model), "no model/ found under src/");
    let io = [
        "std::fs",
        "std::process",
        "std::net",
        "std::io::stdin",
        "std::io::stdout",
        "std::io::stderr",
        "std::env::var",
        "std::env::current_dir",
        "File::",
        "xshell",
        "cmd!(",
        "println!",
        "eprintln!",
        "clap",
    ];
    let found = matching(&sources, in_model, &io);
    assert!(
        found.is_empty(),
        "model/ is pure: no filesystem, process, network, environment, printing or clap. \
         Move the I/O into the caller and hand the model what it read:\n  {}",
        found.join("\n  ")
    );
    // The fuzz crate compiles model/ on its own (#[path]): it can reach nothing else.
    let outside: Vec<String> = sources
        .iter()
        .filter(|s| in_model(s))
        .flat_map(|s| {
            crate_paths(s)
                .into_iter()
                .filter(|(_, target)| !target.starts_with("model"))
                .map(|(line, target)| format!("{}:{line}: crate::{target}", s.path))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        outside.is_empty(),
        "model/ may use only model/ (fuzz/ compiles it alone):\n  {}",
        outside.join("\n  ")
    );
}

/// The programs a file runs: the first word of each `cmd!(sh, "…")` and the argument of
/// each `Command::new("…")`, with the line they start on. A script the tool writes for
/// the operator (`import-build-cache.sh`) mentions `docker` without running it.
fn programs_run(source: &Source) -> Vec<(usize, String)> {
    let text = source.code.join("\n");
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let mut out = Vec::new();
    for opener in ["cmd!(", "Command::new("] {
        let mut from = 0;
        while let Some(found) = text[from..].find(opener) {
            let at = from + found;
            from = at + opener.len();
            let rest = &text[from..];
            let Some(quote) = rest.find('"') else {
                continue;
            };
            // The literal must be the macro's program argument: only `sh,` may precede it.
            let before = rest[..quote].trim();
            if !(before.is_empty() || before.ends_with(',')) || before.contains('(') {
                continue;
            }
            let literal = &rest[quote + 1..];
            let word: String = literal
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            out.push((line_of(at), word));
        }
    }
    out
}

#[test]
fn only_the_docker_module_and_the_lab_run_docker() {
    let sources = sources();
    let allowed =
        |s: &Source| s.module == "docker" || s.module == "lab" || s.module.starts_with("lab::");
    let mut found = Vec::new();
    let mut seen_in_docker = 0;
    for source in &sources {
        for (line, program) in programs_run(source) {
            if !matches!(program.as_str(), "docker" | "dockerd") {
                continue;
            }
            if allowed(source) {
                seen_in_docker += 1;
            } else {
                found.push(format!("{}:{line}: runs `{program}`", source.path));
            }
        }
    }
    assert!(
        seen_in_docker > 5,
        "the rule found no docker call even in docker.rs"
    );
    assert!(
        found.is_empty(),
        "only src/docker.rs and src/lab/ run `docker`/`dockerd`; call a function of theirs:\n  {}",
        found.join("\n  ")
    );
}

/// `(line, path)` for every `crate::a::b` the file names (in `use` lines, grouped uses
/// included, and inline), path without `crate::`.
fn crate_paths(source: &Source) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_group: Option<(usize, String)> = None;
    for (i, line) in source.code.iter().enumerate() {
        if let Some((start, text)) = in_group.as_mut() {
            text.push_str(line);
            if line.contains("};") {
                out.extend(expand_use(text).into_iter().map(|p| (*start, p)));
                in_group = None;
            }
            continue;
        }
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed
            .strip_prefix("use crate::")
            .or_else(|| trimmed.strip_prefix("pub use crate::"))
            .or_else(|| trimmed.strip_prefix("pub(crate) use crate::"))
        {
            if rest.contains('{') && !rest.contains("};") {
                in_group = Some((i + 1, rest.to_string()));
            } else {
                out.extend(expand_use(rest).into_iter().map(|p| (i + 1, p)));
            }
            continue;
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push((i + 1, path.trim_end_matches(':').to_string()));
            rest = &tail[path.len().min(tail.len())..];
        }
    }
    out
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(text: &str) -> Vec<String> {
    // `x as y` names x; drop the alias before the white space goes.
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut kept = String::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "as" && i + 1 < words.len() {
            let alias = words[i + 1];
            kept.push_str(&alias[alias.find([',', '}', ';']).unwrap_or(alias.len())..]);
            i += 2;
        } else {
            kept.push_str(words[i]);
            i += 1;
        }
    }
    let text = kept;
    let text = text.trim_end_matches(';');
    fn go(prefix: &str, text: &str, out: &mut Vec<String>) {
        let mut depth = 0;
        let mut start = 0;
        let mut items = Vec::new();
        for (i, c) in text.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&text[start..]);
        for item in items.into_iter().filter(|s| !s.is_empty()) {
            match item.find("::{") {
                Some(at) if item.ends_with('}') => {
                    let head = &item[..at];
                    go(&join(prefix, head), &item[at + 3..item.len() - 1], out)
                }
                _ => out.push(join(prefix, item)),
            }
        }
    }
    fn join(prefix: &str, item: &str) -> String {
        let item = item.trim_end_matches("::self");
        if prefix.is_empty() {
            item.to_string()
        } else if item == "self" {
            prefix.to_string()
        } else {
            format!("{prefix}::{item}")
        }
    }
    let mut out = Vec::new();
    match text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        Some(inner) => go("", inner, &mut out),
        None => go("", text, &mut out),
    }
    out
}

/// The file module a path names: the longest prefix of it that is a module of the crate.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn import_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        let edges = graph.entry(source.module.clone()).or_default();
        for (_, path) in crate_paths(source) {
            if let Some(target) = resolve(&path, &modules) {
                if target != source.module && !target.is_empty() {
                    edges.insert(target);
                }
            }
        }
    }
    graph
}

#[test]
fn no_command_imports_another() {
    let sources = sources();
    let graph = import_graph(&sources);
    let mut found = Vec::new();
    for (module, targets) in &graph {
        if !module.starts_with("commands::") {
            continue;
        }
        for target in targets {
            if target == "commands" || target.starts_with("commands::") {
                found.push(format!("{module} -> {target}"));
            }
        }
    }
    let supers = matching(
        &sources,
        |s| s.module.starts_with("commands::"),
        &["super::", "crate::cli"],
    );
    assert!(
        found.is_empty() && supers.is_empty(),
        "a command is a leaf: it parses its flags and calls shared modules. Move what two \
         commands share out of commands/:\n  {}",
        found
            .into_iter()
            .chain(supers)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = import_graph(&sources());
    // Depth-first search; a back edge closes a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(1) => {
                let at = path.iter().position(|n| n == node).unwrap();
                let mut cycle = path[at..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            // A module may use its own submodules, and a submodule its parent's items.
            if next.starts_with(&format!("{node}::")) || node.starts_with(&format!("{next}::")) {
                continue;
            }
            if let Some(cycle) = visit(next, graph, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut state, &mut Vec::new()) {
            panic!(
                "import cycle: {}\nmove what both need into a module below both",
                cycle.join(" -> ")
            );
        }
    }
}

/// `(file, line, name, length)` of every `fn` whose body ends at its own indentation.
fn functions(source: &Source) -> Vec<(usize, String, usize)> {
    let mut out = Vec::new();
    for (i, line) in source.code.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(at) = trimmed.find("fn ") else {
            continue;
        };
        let head = &trimmed[..at];
        let is_fn = head.split_whitespace().all(|w| {
            matches!(
                w,
                "pub" | "pub(crate)" | "pub(super)" | "const" | "unsafe" | "async" | "extern"
            )
        });
        if !is_fn {
            continue;
        }
        let name: String = trimmed[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let indent = &line[..line.len() - trimmed.len()];
        let close = format!("{indent}}}");
        // The body opens on this line or a later signature line; a `;` first: no body.
        let mut end = None;
        for (j, next) in source.code.iter().enumerate().skip(i) {
            if j > i && *next == close {
                end = Some(j);
                break;
            }
            if j == i && next.trim_end().ends_with('}') && next.contains('{') {
                end = Some(j);
                break;
            }
            if next.trim_end().ends_with(';') && !next.contains('{') && j == i {
                break;
            }
        }
        if let Some(end) = end {
            out.push((i + 1, name, end - i + 1));
        }
    }
    out
}

#[test]
fn functions_are_short_or_say_why() {
    let allowed: BTreeMap<&str, &str> = LONG_FUNCTIONS.iter().copied().collect();
    let mut found = Vec::new();
    for source in sources() {
        for (line, name, length) in functions(&source) {
            let key = format!("{}::{name}", source.module);
            if length > MAX_FN_LINES && !allowed.contains_key(key.as_str()) {
                found.push(format!("{}:{line}: {name} has {length} lines", source.path));
            }
        }
    }
    assert!(
        found.is_empty(),
        "functions over {MAX_FN_LINES} lines: split them into named steps, or add them to \
         LONG_FUNCTIONS in tests/it/tidy.rs with the reason:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_rules_find_what_they_look_for() {
    // The parsers above, on cases of each shape they must read.
    assert_eq!(
        expand_use("a::{b, c::{d, e as f}, self};"),
        ["a::b", "a::c::d", "a::c::e", "a"]
    );
    assert_eq!(expand_use("x::y;"), ["x::y"]);
    let source = Source {
        module: "commands::one".into(),
        path: "src/commands/one.rs".into(),
        code: code_lines(
            "use crate::commands::two::{A, B};\nfn f() {\n    crate::docker::run();\n}\n\
             // crate::lab in a comment\n#[cfg(test)]\nmod tests {\n    use crate::lab;\n}\n\
             fn after() {\n    crate::bundle::x();\n}\n",
        ),
    };
    let paths: Vec<String> = crate_paths(&source).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        paths,
        [
            "commands::two::A",
            "commands::two::B",
            "docker::run",
            "bundle::x"
        ]
    );
    assert_eq!(
        functions(&source),
        [(2, "f".to_string(), 3), (10, "after".to_string(), 3)]
    );
    let runner = Source {
        module: "x".into(),
        path: "src/x.rs".into(),
        code: code_lines(
            "fn f() {\n    cmd!(sh, \"docker save {a}\").run()?;\n    let s = \"docker load\";\n    \
             cmd!(\n        sh,\n        \"dockerd --root {r}\"\n    );\n    Command::new(\"docker\");\n}\n",
        ),
    };
    assert_eq!(
        programs_run(&runner),
        [
            (2, "docker".into()),
            (4, "dockerd".into()),
            (8, "docker".into())
        ]
    );
    let modules: BTreeSet<String> = ["commands::two", "docker"].map(String::from).into();
    assert_eq!(
        resolve("commands::two::A", &modules).as_deref(),
        Some("commands::two")
    );
}
