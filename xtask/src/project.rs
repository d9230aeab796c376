//! Finding and loading the compose project, as `docker compose` does.
//!
//! The compose file is `-f FILE`, or the first of compose.yaml, compose.yml,
//! docker-compose.yaml, docker-compose.yml in the current directory or the nearest parent
//! that has one. Paths inside it resolve against its own folder.

use std::collections::BTreeMap;

use anyhow::Context as _;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::Shell;

use crate::model::compose::{self, ComposeModel};

pub const COMPOSE_FILE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

#[derive(clap::Args, Debug, Clone)]
pub struct ProjectArgs {
    /// Compose file (default: compose.yaml, compose.yml, docker-compose.yaml or
    /// docker-compose.yml in the current directory or the nearest parent that has one)
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    pub file: Option<Utf8PathBuf>,
    /// Project name (default: COMPOSE_PROJECT_NAME, the compose file's `name:`, else its
    /// folder's name)
    #[arg(short = 'p', long = "project-name", global = true, value_name = "NAME")]
    pub project_name: Option<String>,
}

/// A loaded compose project.
pub struct Project {
    /// Absolute path of the compose file.
    pub compose_file: Utf8PathBuf,
    /// The folder holding the compose file: relative paths in it resolve here.
    pub dir: Utf8PathBuf,
    pub name: String,
    pub model: ComposeModel,
}

impl ProjectArgs {
    /// Finds the compose file (relative to the shell's directory) without loading it.
    pub fn compose_file(&self, sh: &Shell) -> anyhow::Result<Utf8PathBuf> {
        let cwd = current_dir(sh)?;
        match &self.file {
            Some(file) => {
                let file = absolute(&cwd, file);
                if !file.is_file() {
                    anyhow::bail!("compose file {file} does not exist");
                }
                Ok(file)
            }
            None => find_compose_file(&cwd).with_context(|| {
                format!(
                    "no compose file in {cwd} or its parents (looked for {}); \
                     pass one with -f FILE",
                    COMPOSE_FILE_NAMES.join(", ")
                )
            }),
        }
    }

    pub fn load(&self, sh: &Shell) -> anyhow::Result<Project> {
        let compose_file = self.compose_file(sh)?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let read = |path: &Utf8Path| std::fs::read_to_string(path);
        let model = compose::load(&compose_file, &env, &read)?;
        let dir = compose_file
            .parent()
            .map(Utf8Path::to_path_buf)
            .unwrap_or_else(|| Utf8PathBuf::from("/"));
        let name = self
            .project_name
            .clone()
            .or_else(|| env.get("COMPOSE_PROJECT_NAME").cloned())
            .or_else(|| model.name.clone())
            .unwrap_or_else(|| dir.file_name().unwrap_or("default").to_string());
        Ok(Project {
            compose_file,
            dir,
            name: normalize_project_name(&name),
            model,
        })
    }
}

impl Project {
    /// Fails naming every folder the compose file's builds read that is gone: a bundle
    /// moved or deleted after patch-compose. Compose would skip such a cache with one
    /// warning and rebuild everything, without a network.
    pub fn check_host_folders(&self) -> anyhow::Result<()> {
        let gone: Vec<String> = crate::model::layout::host_folders(&self.model)
            .into_iter()
            .filter(|f| !Utf8Path::new(&f.path).is_dir())
            .map(|f| format!("{} (service {}, {})", f.path, f.service, f.field))
            .collect();
        if !gone.is_empty() {
            anyhow::bail!(
                "{} points the builds at folders that are gone:\n  {}\nthe bundle was moved \
                 or deleted: run `cargo xtask patch-compose --bundle NEWPATH` with the bundle's \
                 folder now (or put it back), else the builds rebuild every step",
                self.compose_file,
                gone.join("\n  ")
            );
        }
        Ok(())
    }
}

/// The first compose file in `dir` or its nearest parent that has one.
pub fn find_compose_file(dir: &Utf8Path) -> Option<Utf8PathBuf> {
    dir.ancestors().find_map(|d| {
        COMPOSE_FILE_NAMES
            .iter()
            .map(|name| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Compose's project name rule: lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit.
pub fn normalize_project_name(name: &str) -> String {
    let lowered: String = name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect();
    lowered.trim_start_matches(['-', '_']).to_string()
}

pub fn current_dir(sh: &Shell) -> anyhow::Result<Utf8PathBuf> {
    Utf8PathBuf::from_path_buf(sh.current_dir())
        .map_err(|p| anyhow::anyhow!("the current directory {} is not UTF-8", p.display()))
}

/// `path` made absolute against `base`, lexically normalised (no filesystem access).
pub fn absolute(base: &Utf8Path, path: &Utf8Path) -> Utf8PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let mut out = Utf8PathBuf::new();
    for part in joined.components() {
        match part {
            camino::Utf8Component::CurDir => {}
            camino::Utf8Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_str()),
        }
    }
    out
}

/// The plan's filesystem: the real one.
pub struct RealFs;

impl crate::model::plan::Fs for RealFs {
    fn read(&self, path: &Utf8Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn list(&self, dir: &Utf8Path) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_follow_compose() {
        let check =
            |input: &str, expected: &str| assert_eq!(normalize_project_name(input), expected);
        check("llm-chat", "llm-chat");
        check("LLM Chat", "llmchat");
        check("_x.y", "xy");
        check("my_app-2", "my_app-2");
    }

    #[test]
    fn absolute_paths_are_lexically_normalised() {
        let check = |base: &str, path: &str, expected: &str| {
            assert_eq!(
                absolute(base.into(), path.into()),
                Utf8PathBuf::from(expected)
            )
        };
        check("/a/b", "./c", "/a/b/c");
        check("/a/b", "../c/./d", "/a/c/d");
        check("/a/b", "/x/y", "/x/y");
        check("/a/b", ".", "/a/b");
    }
}
