//! The docs' command examples are accepted by the CLI they show.
//!
//! Every `cargo xtask …` command line in a fenced code block of README.md,
//! docker-build-cache/README.md and docs/*.md is run as the built binary with its own
//! arguments plus `--help`: clap rejects an unknown flag, a short flag that does not exist,
//! a missing value or a value outside an enum with exit code 2 *before* it reads `--help`,
//! and with every argument valid it prints the help and exits 0 without running anything.
//! (What clap checks only after parsing, such as `--force` needing `--extract-node-modules`,
//! is not caught this way.) The runs use an empty folder and a `DOCKER_HOST` that leads
//! nowhere, so even a command that did run could touch no project and no engine.
//!
//! How a line is read, as sh would: `#` starts a comment (outside quotes, at a word's
//! start); a trailing `\` joins the next line; `&&`, `||`, `;` and `|` separate commands,
//! and each command whose program is `cargo xtask` (or a path ending in `/xtask`, the
//! built binary) is checked; leading `NAME=value` words and redirections (`> file`, `2>&1`)
//! are dropped. Three rules for what is not literal:
//! - a word with a `<placeholder>` (`cargo xtask <子命令> --help`) or an ellipsis (`…`,
//!   `...`) is prose, not a command: the example is skipped, and counted as skipped;
//! - `$VAR`, `${VAR}` and `$(…)` stand for one value: each becomes the word `VALUE`, so a
//!   variable may stand where a value goes (`--bundle "$DIR"`), never for a flag or a
//!   subcommand (that example fails);
//! - `sh …/import-build-cache.sh` lines pass only what the script the export writes
//!   (`bundle_text::import_script`) reads: the digest to require (`sha256:HEX`),
//!   `--patch-compose FILE` and `--no-tool`, each at most once; `sh …/import-NAME.sh`
//!   lines (the pack importer cache-pack writes) take `--pack FILE` once, `--bundle DIR`
//!   at most once, and those.
//!
//! One rule for `docker compose` lines, a slip the guide made: `--progress` is a global
//! option of compose and goes before the subcommand (`docker compose --progress plain
//! build`); after it, compose warns.
//!
//! A failure names the doc file and line, the command, the exit code and clap's message.

use std::path::Path;
use std::process::Command;

use crate::support::repo_root;

/// One command found in a doc.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Example {
    /// `docs/x.md:12` (the line the command starts on).
    at: String,
    /// The command as written (continuations joined, comment dropped).
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `cargo xtask` with these arguments.
    Xtask(Vec<String>),
    /// The bundle's import script with these arguments.
    ImportScript(Vec<String>),
    /// `sh import-NAME.sh …`: the importer cache-pack writes beside a pack.
    PackScript(Vec<String>),
    /// `docker compose` with these arguments.
    Compose(Vec<String>),
    /// A placeholder or an ellipsis: not checked.
    Skipped,
}

/// The docs whose examples are checked, relative to the repository.
fn doc_files(root: &Path) -> Vec<String> {
    let mut files = vec![
        "README.md".to_string(),
        "docker-build-cache/README.md".to_string(),
    ];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The commands in the fenced code blocks of `text` (the doc `name`).
fn extract(name: &str, text: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if pending.is_none() && trimmed.starts_with("```") {
            let marker: String = trimmed.chars().take_while(|c| *c == '`').collect();
            match &fence {
                None => fence = Some(marker),
                Some(open) if marker.len() >= open.len() && trimmed.trim_end() == marker => {
                    fence = None
                }
                Some(_) => {}
            }
            continue;
        }
        if fence.is_none() {
            continue;
        }
        let (start, mut logical) = pending.take().unwrap_or((i + 1, String::new()));
        let body = line.trim_end();
        if let Some(head) = body.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            pending = Some((start, logical));
            continue;
        }
        logical.push_str(body);
        let command = strip_comment(&logical);
        for segment in split_commands(&command) {
            if let Some(kind) = classify(&words(&segment)) {
                examples.push(Example {
                    at: format!("{name}:{start}"),
                    text: segment.trim().to_string(),
                    kind,
                });
            }
        }
    }
    examples
}

/// `line` without its `#` comment (a `#` outside quotes that starts a word).
fn strip_comment(line: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => break,
            None => {}
        }
        out.push(c);
        prev = c;
    }
    out
}

/// The commands of a line: split at `&&`, `||`, `;` and `|` outside quotes.
fn split_commands(line: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                current.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                current.push(c);
            }
            None if c == ';' || c == '|' || (c == '&' && chars.peek() == Some(&'&')) => {
                if (c == '|' || c == '&') && chars.peek() == Some(&c) {
                    chars.next();
                }
                parts.push(std::mem::take(&mut current));
            }
            None => current.push(c),
        }
    }
    parts.push(current);
    parts.retain(|p| !p.trim().is_empty());
    parts
}

/// The words of one command, quotes removed, `$…` replaced by `VALUE`; `None` for a word
/// that holds a placeholder or an ellipsis.
fn words(command: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        let expands = c == '$' && quote != Some('\'');
        match quote {
            Some(q) if c == q => quote = None,
            None if c.is_whitespace() => out.extend(word.take()),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            _ if expands => {
                // $NAME, ${NAME} or $(…): one value.
                match chars.peek().copied() {
                    Some(open @ ('{' | '(')) => {
                        chars.next();
                        let close = if open == '{' { '}' } else { ')' };
                        for d in chars.by_ref() {
                            if d == close {
                                break;
                            }
                        }
                    }
                    _ => {
                        while chars
                            .peek()
                            .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '_')
                        {
                            chars.next();
                        }
                    }
                }
                word.get_or_insert_with(String::new).push_str("VALUE");
            }
            _ => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    // Redirections and their targets go; a placeholder or ellipsis becomes None.
    let mut result = Vec::new();
    let mut skip_next = false;
    for w in out {
        if skip_next {
            skip_next = false;
            continue;
        }
        let redirect = w.trim_start_matches(|c: char| c.is_ascii_digit() || c == '&');
        if redirect.starts_with('>') || redirect.starts_with('<') && !w.contains('>') {
            let op_only = redirect.trim_start_matches(['>', '<', '&']).is_empty();
            let to_fd = redirect.contains(">&");
            skip_next = op_only && !to_fd;
            continue;
        }
        let placeholder = w.contains('<') && w.contains('>');
        if placeholder || w.contains('…') || w.contains("...") {
            result.push(None);
        } else {
            result.push(Some(w));
        }
    }
    result
}

/// What a command is: `cargo xtask …`, the import script, or something else (`None`).
fn classify(words: &[Option<String>]) -> Option<Kind> {
    let start = words
        .iter()
        .position(|w| !w.as_deref().is_some_and(is_assignment))
        .unwrap_or(words.len());
    let words = &words[start..];
    let first = words.first().map(program)?;
    let rest = if first == "cargo" && words.get(1).map(program) == Some("xtask") {
        &words[2..]
    } else if first.ends_with("/xtask") {
        &words[1..]
    } else if first == "docker" && words.get(1).map(program) == Some("compose") {
        return Some(match collect(&words[2..]) {
            Some(args) => Kind::Compose(args),
            None => Kind::Skipped,
        });
    } else {
        let script =
            |w: &str| w == "import-build-cache.sh" || w.ends_with("/import-build-cache.sh");
        let at = match first {
            "sh" | "bash" => 1,
            _ => 0,
        };
        let name = words.get(at).map(program)?;
        let base = name.rsplit('/').next().unwrap_or(name);
        let kind: fn(Vec<String>) -> Kind = if script(name) {
            Kind::ImportScript
        } else if base.starts_with("import-") && base.ends_with(".sh") {
            Kind::PackScript
        } else {
            return None;
        };
        return Some(match collect(&words[at + 1..]) {
            Some(args) => kind(args),
            None => Kind::Skipped,
        });
    };
    Some(match collect(rest) {
        Some(args) => Kind::Xtask(args),
        None => Kind::Skipped,
    })
}

fn program(word: &Option<String>) -> &str {
    word.as_deref().unwrap_or("")
}

fn collect(words: &[Option<String>]) -> Option<Vec<String>> {
    words.iter().cloned().collect()
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with('-')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The script's arguments: each of `sha256:HEX`, `--patch-compose FILE` and `--no-tool`
/// at most once, in any order.
fn import_script_args_ok(args: &[String]) -> bool {
    let (mut digest, mut compose, mut no_tool) = (false, false, false);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let seen = match arg.as_str() {
            "--patch-compose" if rest.next().is_some() => &mut compose,
            "--no-tool" => &mut no_tool,
            a if a.strip_prefix("sha256:").is_some_and(|hex| {
                hex == "VALUE" || (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            }) =>
            {
                &mut digest
            }
            _ => return false,
        };
        if std::mem::replace(seen, true) {
            return false;
        }
    }
    true
}

/// The pack importer's arguments: `--pack FILE` once, `--bundle DIR` at most once, and
/// what the bundle's script takes (it passes them on).
fn pack_script_args_ok(args: &[String]) -> bool {
    let (mut pack, mut bundle, mut passed) = (0, 0, Vec::new());
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--pack" if rest.next().is_some() => pack += 1,
            "--bundle" if rest.next().is_some() => bundle += 1,
            _ => passed.push(arg.clone()),
        }
    }
    pack == 1 && bundle <= 1 && import_script_args_ok(&passed)
}

/// What is wrong with an example, if anything.
fn check(bin: &Path, dir: &Path, example: &Example) -> Option<String> {
    match &example.kind {
        Kind::Skipped => None,
        // The script takes the digest to require, `sha256:HEX` (a placeholder such as
        // `sha256:…` is skipped before this), `--patch-compose FILE` and `--no-tool`.
        Kind::ImportScript(args) if import_script_args_ok(args) => None,
        Kind::PackScript(args) if pack_script_args_ok(args) => None,
        Kind::PackScript(args) => Some(format!(
            "{}: `{}`: the pack importer takes --pack FILE, --bundle DIR and what \
             import-build-cache.sh takes (given: {})",
            example.at,
            example.text,
            args.join(" ")
        )),
        Kind::Compose(args) => {
            let progress = args.iter().position(|a| a.starts_with("--progress"))?;
            let subcommand = args
                .iter()
                .position(|a| COMPOSE_SUBCOMMANDS.contains(&a.as_str()))?;
            (subcommand < progress).then(|| {
                format!(
                    "{}: `{}`: --progress is a global option of docker compose; write it \
                     before the subcommand (`docker compose --progress plain {}`)",
                    example.at, example.text, args[subcommand]
                )
            })
        }
        Kind::ImportScript(args) => Some(format!(
            "{}: `{}`: import-build-cache.sh takes only the digest to require, sha256:HEX, \
             --patch-compose FILE and --no-tool (given: {})",
            example.at,
            example.text,
            args.join(" ")
        )),
        Kind::Xtask(args) => {
            let out = Command::new(bin)
                .args(args)
                .arg("--help")
                .current_dir(dir)
                .env("DOCKER_HOST", "unix:///nonexistent/docker-examples.sock")
                .env_remove("COMPOSE_FILE")
                .env_remove("COMPOSE_PROJECT_NAME")
                .output()
                .expect("the xtask binary runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && stdout.contains("Usage: cargo xtask") {
                return None;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("(no message)");
            Some(format!(
                "{}: `{}`: the CLI refuses it (exit {}): {why}",
                example.at,
                example.text,
                out.status
                    .code()
                    .map_or_else(|| "signal".to_string(), |c| c.to_string())
            ))
        }
    }
}

/// The compose subcommands the docs use, to tell a global option from a subcommand's.
const COMPOSE_SUBCOMMANDS: [&str; 10] = [
    "build", "up", "down", "run", "config", "pull", "push", "create", "logs", "ps",
];

fn failures(examples: &[Example], tag: &str) -> Vec<String> {
    let scratch = crate::support::run::Scratch::new(&format!("docs-{tag}"));
    let bin = Path::new(crate::support::run::bin());
    examples
        .iter()
        .filter_map(|e| check(bin, scratch.path().as_std_path(), e))
        .collect()
}

#[test]
fn every_command_example_in_the_docs_is_accepted_by_the_cli() {
    let root = repo_root();
    let root = Path::new(root.as_str());
    let mut examples = Vec::new();
    for file in doc_files(root) {
        let text = std::fs::read_to_string(root.join(&file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"));
        examples.extend(extract(&file, &text));
    }
    let checked = |prefix: &str| {
        examples
            .iter()
            .filter(|e| e.at.starts_with(prefix) && matches!(e.kind, Kind::Xtask(_)))
            .count()
    };
    // The extractor must find what is there: a change that made it find nothing would
    // otherwise pass silently.
    assert!(
        checked("README.md:") >= 3 && checked("docker-build-cache/README.md:") >= 30,
        "too few examples found (README.md: {}, guide: {}):\n{examples:#?}",
        checked("README.md:"),
        checked("docker-build-cache/README.md:")
    );
    let bad = failures(&examples, "docs");
    assert!(
        bad.is_empty(),
        "{} of {} command examples in the docs are wrong:\n{}",
        bad.len(),
        examples.len(),
        bad.join("\n")
    );
}

#[test]
fn the_reader_joins_continuations_drops_comments_and_splits_commands() {
    let doc = "\
text `cargo xtask not-in-a-fence`

```bash
cargo xtask cache-export \\
    --only base-images   # a comment --bogus
FOO=1 cargo xtask cache-plan --json > plan.json 2>&1 | jq -r '.base_images[]'
cd docker-build-cache && sha256sum -c SHA256SUMS; cargo xtask cache-verify
cargo xtask cache-import --bundle \"$BUNDLE\"
cargo xtask <子命令> --help
cargo xtask -f … cache-plan
sh docker-build-cache/import-build-cache.sh
/srv/app/target/debug/xtask -f /srv/app/docker-compose.yml cache-plan
echo 'cargo xtask quoted is not a command'
```
";
    let found = extract("x.md", doc);
    let xtask = |at: &str, args: &[&str]| Example {
        at: at.to_string(),
        text: String::new(),
        kind: Kind::Xtask(args.iter().map(|s| s.to_string()).collect()),
    };
    let kinds: Vec<(String, Kind)> = found.into_iter().map(|e| (e.at, e.kind)).collect();
    let want: Vec<(String, Kind)> = [
        xtask("x.md:4", &["cache-export", "--only", "base-images"]),
        xtask("x.md:6", &["cache-plan", "--json"]),
        xtask("x.md:7", &["cache-verify"]),
        xtask("x.md:8", &["cache-import", "--bundle", "VALUE"]),
        Example {
            at: "x.md:9".into(),
            text: String::new(),
            kind: Kind::Skipped,
        },
        Example {
            at: "x.md:10".into(),
            text: String::new(),
            kind: Kind::Skipped,
        },
        Example {
            at: "x.md:11".into(),
            text: String::new(),
            kind: Kind::ImportScript(Vec::new()),
        },
        xtask(
            "x.md:12",
            &["-f", "/srv/app/docker-compose.yml", "cache-plan"],
        ),
    ]
    .into_iter()
    .map(|e| (e.at, e.kind))
    .collect();
    assert_eq!(kinds, want);
}

/// The check is worth something only if it fails on wrong examples: a flag that does not
/// exist, a short flag a subcommand lacks, a value outside an enum, a missing value, a
/// variable where a subcommand goes, an argument to the import script. Each failure names
/// the file and line.
#[test]
fn a_wrong_example_fails_naming_the_file_and_line() {
    let doc = "\
```sh
cargo xtask cache-export --strategy local
cargo xtask cache-export --strategy fast
cargo xtask cache-export --bogus
cargo xtask patch-compose -o docker-compose.offline.yml
cargo xtask bench -o /tmp/bench.md
cargo xtask cache-export --only base-images,images
cargo xtask cache-export --output
cargo xtask $COMMAND
sh import-build-cache.sh --force
sh import-build-cache.sh --patch-compose docker-compose.yml sha256:$DIGEST
cargo xtask cache-export -o /mnt/usb/docker-build-cache
docker compose build --progress plain
docker compose --progress plain -f x.yml build
sh import-docker-build-cache.sh --bundle srv --no-tool
sh dist/import-docker-build-cache.sh --pack x.pack-index --bundle d --no-tool sha256:$D
```
";
    let examples = extract("bad.md", doc);
    let bad = failures(&examples, "bad");
    let lines: Vec<&str> = bad
        .iter()
        .map(|f| f.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        lines,
        [
            "bad.md:3",
            "bad.md:4",
            "bad.md:5",
            "bad.md:6",
            "bad.md:7",
            "bad.md:8",
            "bad.md:9",
            "bad.md:10",
            "bad.md:13",
            "bad.md:15"
        ],
        "{bad:#?}"
    );
    assert!(bad[0].contains("invalid value 'fast'"), "{}", bad[0]);
    assert!(bad[2].contains("unexpected argument '-o'"), "{}", bad[2]);
    assert!(
        bad[7].contains("takes only the digest to require"),
        "{}",
        bad[7]
    );
    assert!(bad[8].contains("global option"), "{}", bad[8]);
    assert!(
        bad[9].contains("the pack importer takes --pack"),
        "{}",
        bad[9]
    );
}
