//! Checks on the sources that keep the crate's shape: a rule broken here fails
//! `cargo test`, with the file and line to fix.

use std::path::{Path, PathBuf};

fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .map(|entry| entry.expect("a folder entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a readable source");
            (path, text)
        })
        .collect();
    files.sort();
    files
}

/// The lines before the file's unit tests, numbered from 1.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .take_while(|line| *line != "mod tests {")
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
}

fn check(dir: &str, rule: &str, broken: impl Fn(&Path, &str) -> bool) {
    let mut found = Vec::new();
    for (path, text) in sources(dir) {
        for (n, line) in code_lines(&text) {
            if broken(&path, line) {
                found.push(format!("{}:{n}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "{rule}:\n{}", found.join("\n"));
}

#[test]
fn no_command_imports_another() {
    check(
        "commands",
        "a command module imports another; move what they share below commands/",
        |_, line| line.contains("crate::commands::") || line.contains("super::"),
    );
}

#[test]
fn model_does_not_depend_on_clap() {
    check(
        "model",
        "model/ uses clap; give the type its flag values in cli.rs or a command",
        |_, line| line.contains("clap"),
    );
}
