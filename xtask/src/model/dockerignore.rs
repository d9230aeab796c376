//! `.dockerignore`, read and matched as the Docker CLI and BuildKit do (moby's
//! `patternmatcher` and `ignorefile`): which files of a build context a build is sent.
//!
//! One pattern a line; a line starting with `#` is a comment; surrounding blanks are
//! trimmed and blank lines skipped; a pattern is cleaned as a path (`a/./b` → `a/b`,
//! `a/` → `a`) and a leading `/` dropped (the context's root is the root); `!` makes an
//! exception. `*` is any run of characters but `/`, `?` one character but `/`, `[…]` a
//! class, `\` escapes, and `**` any number of folders, none included. A pattern excludes
//! the path it matches and everything below it; the last pattern that matches a path (or
//! a folder above it) decides. Which file holds the patterns (`<Dockerfile>.dockerignore`
//! beside the Dockerfile first, else the context's `.dockerignore`) is [`ignore_files`];
//! the Dockerfile and the ignore file are always sent, which is the caller's rule.

use camino::{Utf8Path, Utf8PathBuf};

/// A `.dockerignore`'s patterns, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    exception: bool,
    tokens: Vec<Token>,
    /// The cleaned text, for debugging and tests.
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**` (and `**/`) before more of the pattern: any folders, none included.
    Folders,
    /// `**` at the end: anything.
    Rest,
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

/// The ignore files a build reads, first found wins: the Dockerfile-specific one beside
/// the Dockerfile (`Dockerfile.dev.dockerignore`), then the context's `.dockerignore`.
pub fn ignore_files(context: &Utf8Path, dockerfile: Option<&Utf8Path>) -> Vec<Utf8PathBuf> {
    let specific = dockerfile.and_then(|file| {
        let name = file.file_name()?;
        Some(file.with_file_name(format!("{name}.dockerignore")))
    });
    specific
        .into_iter()
        .chain([context.join(".dockerignore")])
        .collect()
}

/// The patterns a build of `context` with `dockerfile` applies, and the file they come
/// from (`None`: no ignore file, everything is sent), read through `read`.
pub fn for_build(
    read: &dyn Fn(&Utf8Path) -> std::io::Result<String>,
    context: &Utf8Path,
    dockerfile: Option<&Utf8Path>,
) -> (Patterns, Option<Utf8PathBuf>) {
    for file in ignore_files(context, dockerfile) {
        if let Ok(text) = read(&file) {
            return (Patterns::parse(&text), Some(file));
        }
    }
    (Patterns::default(), None)
}

impl Patterns {
    /// Reads a `.dockerignore`'s text (as moby's `ignorefile.ReadAll`).
    pub fn parse(text: &str) -> Patterns {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            // A lone `!` fails the build; it excludes nothing here.
            if pattern.is_empty() {
                continue;
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            patterns.push(Pattern {
                exception,
                tokens: compile(&cleaned),
                text: cleaned,
            });
        }
        Patterns { patterns }
    }

    /// Whether `path` (context-relative, `/`-separated, no `.` or `..`) is left out of the
    /// context: the last pattern matching it or a folder above it decides.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for pattern in &self.patterns {
            // An exception matters only for an excluded path, an exclusion for a kept one.
            if pattern.exception != excluded {
                continue;
            }
            if pattern.matches_or_parent(path) {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether a folder that is excluded can still hold a file that is sent (there is an
    /// exception pattern): the walk must then look inside.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }
}

impl Pattern {
    fn matches_or_parent(&self, path: &str) -> bool {
        if matches(&self.tokens, &path.chars().collect::<Vec<_>>()) {
            return true;
        }
        // The folders above the path, shortest first: `a`, `a/b` of `a/b/c`.
        let mut ends = path.match_indices('/').map(|(i, _)| i);
        ends.any(|end| matches(&self.tokens, &path[..end].chars().collect::<Vec<_>>()))
    }
}

/// Go's `filepath.Clean` on a `/`-separated path.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

fn compile(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() {
                    Token::Rest
                } else {
                    Token::Folders
                });
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::One),
            '\\' if i < chars.len() => {
                tokens.push(Token::Char(chars[i]));
                i += 1;
            }
            '[' => match class(&chars[i..]) {
                Some((token, used)) => {
                    tokens.push(token);
                    i += used;
                }
                None => tokens.push(Token::Char('[')),
            },
            c => tokens.push(Token::Char(c)),
        }
    }
    tokens
}

/// A `[…]` class after its `[`: the token and how many characters it used (`]` included).
fn class(chars: &[char]) -> Option<(Token, usize)> {
    let mut i = 0;
    // moby turns a pattern into a Go regular expression: `[^…]` negates, `[!…]` does not.
    let negated = chars.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Token::Class { negated, items }, i + 1));
        }
        first = false;
        if c == '\\' {
            i += 1;
            c = *chars.get(i)?;
        }
        i += 1;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|n| *n != ']') {
            let mut hi = chars[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i)?;
                i += 1;
            }
            items.push((c, hi));
        } else {
            items.push((c, c));
        }
    }
}

/// Backtracking match of the whole `path` against `tokens`.
fn matches(tokens: &[Token], path: &[char]) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return path.is_empty();
    };
    match token {
        Token::Char(c) => path.first() == Some(c) && matches(rest, &path[1..]),
        Token::One => path.first().is_some_and(|c| *c != '/') && matches(rest, &path[1..]),
        Token::Class { negated, items } => {
            path.first()
                .is_some_and(|c| items.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated)
                && matches(rest, &path[1..])
        }
        Token::Star => {
            // Any run of non-`/` characters, shortest first.
            for n in 0..=path.len() {
                if matches(rest, &path[n..]) {
                    return true;
                }
                if path.get(n) == Some(&'/') {
                    break;
                }
            }
            false
        }
        Token::Folders => {
            // `(.*/)?`: nothing, or anything up to and including a `/`.
            matches(rest, path)
                || (0..path.len()).any(|n| path[n] == '/' && matches(rest, &path[n + 1..]))
        }
        Token::Rest => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(ignore: &str, path: &str) -> bool {
        Patterns::parse(ignore).excludes(path)
    }

    #[test]
    fn comments_blanks_and_cleaning() {
        let p = Patterns::parse("\u{feff}# a comment\n\n  *.log  \n/build/\n ./tmp/../cache\n!\n");
        let texts: Vec<&str> = p.patterns.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["*.log", "build", "cache"]);
        // `#` only in column 1 starts a comment.
        assert!(excluded(" #x", "#x"));
        assert!(!excluded("#x", "#x"));
    }

    /// The examples of Docker's reference for `.dockerignore`.
    #[test]
    fn the_reference_examples() {
        let ignore = "# comment\n*/temp*\n*/*/temp*\ntemp?\n";
        assert!(excluded(ignore, "somedir/temporary.txt"));
        assert!(excluded(ignore, "somedir/temp"));
        assert!(excluded(ignore, "somedir/subdir/temporary.txt"));
        assert!(excluded(ignore, "tempa"));
        assert!(!excluded(ignore, "temporary.txt"));
        assert!(!excluded(ignore, "tempab"));
        assert!(!excluded(ignore, "a/b/c/temp.txt"));

        assert!(excluded("**/*.go", "main.go"));
        assert!(excluded("**/*.go", "a/b/main.go"));
        assert!(!excluded("**/*.go", "main.gox"));

        let ignore = "*.md\n!README.md\n";
        assert!(excluded(ignore, "CHANGES.md"));
        assert!(!excluded(ignore, "README.md"));
        // `*` does not cross folders: a Markdown file below the root is sent.
        assert!(!excluded(ignore, "docs/x.md"));

        let ignore = "*.md\n!README*.md\nREADME-secret.md\n";
        assert!(!excluded(ignore, "README.md"));
        assert!(excluded(ignore, "README-secret.md"));
        let ignore = "*.md\nREADME-secret.md\n!README*.md\n";
        assert!(!excluded(ignore, "README-secret.md"));
    }

    #[test]
    fn a_pattern_excludes_what_is_below_what_it_matches() {
        assert!(excluded("node_modules", "node_modules/a/index.js"));
        assert!(excluded("/node_modules/", "node_modules/a/index.js"));
        assert!(!excluded("node_modules", "web/node_modules/a.js"));
        assert!(excluded("**/node_modules", "web/node_modules/a.js"));
        assert!(excluded("docs/**", "docs/a/b.txt"));
        assert!(!excluded("docs/**", "docsx"));
        assert!(excluded("a/**/b", "a/b"));
        assert!(excluded("a/**/b", "a/x/y/b"));
        assert!(!excluded("a/**/b", "a/xb"));
    }

    #[test]
    fn exceptions_and_whitelists() {
        // Everything out but what is named back in, folders included.
        let ignore = "*\n!src\n!requirements.txt\nsrc/**/*.pyc\n";
        assert!(excluded(ignore, "notes.txt"));
        assert!(!excluded(ignore, "requirements.txt"));
        assert!(!excluded(ignore, "src/app/main.py"));
        assert!(excluded(ignore, "src/app/main.pyc"));
        // An exception re-includes a file inside an excluded folder.
        let ignore = "build\n!build/keep.txt\n";
        assert!(excluded(ignore, "build/other.txt"));
        assert!(!excluded(ignore, "build/keep.txt"));
        assert!(Patterns::parse(ignore).has_exceptions());
        assert!(!Patterns::parse("build\n").has_exceptions());
    }

    #[test]
    fn characters_classes_and_escapes() {
        assert!(excluded("file?.txt", "file1.txt"));
        assert!(!excluded("file?.txt", "file/.txt"));
        assert!(excluded("log[0-9].txt", "log7.txt"));
        assert!(!excluded("log[0-9].txt", "logx.txt"));
        assert!(excluded("log[^0-9].txt", "logx.txt"));
        assert!(excluded("log[!0-9].txt", "log!.txt"));
        assert!(!excluded("log[!0-9].txt", "logx.txt"));
        assert!(excluded("a\\*b", "a*b"));
        assert!(!excluded("a\\*b", "axb"));
        // A `.` is literal, not any character.
        assert!(!excluded("a.b", "axb"));
    }

    #[test]
    fn the_dockerfile_specific_ignore_file_comes_first() {
        let files = |found: &'static [&'static str]| {
            move |p: &Utf8Path| match found.contains(&p.as_str()) {
                true => Ok(format!("from-{}", p.file_name().unwrap_or_default())),
                false => Err(std::io::ErrorKind::NotFound.into()),
            }
        };
        let ctx = Utf8Path::new("/p/api");
        let df = Utf8Path::new("/p/docker/Dockerfile.dev");
        let both = files(&[
            "/p/docker/Dockerfile.dev.dockerignore",
            "/p/api/.dockerignore",
        ]);
        let (patterns, from) = for_build(&both, ctx, Some(df));
        assert_eq!(
            from.as_deref(),
            Some(Utf8Path::new("/p/docker/Dockerfile.dev.dockerignore"))
        );
        assert!(patterns.excludes("from-Dockerfile.dev.dockerignore"));
        let root_only = files(&["/p/api/.dockerignore"]);
        let (patterns, from) = for_build(&root_only, ctx, Some(df));
        assert_eq!(from.as_deref(), Some(Utf8Path::new("/p/api/.dockerignore")));
        assert!(patterns.excludes("from-.dockerignore"));
        let (patterns, from) = for_build(&files(&[]), ctx, None);
        assert_eq!((patterns, from), (Patterns::default(), None));
    }
}
