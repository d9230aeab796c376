//! Finding and loading the compose project, as `docker compose` does.
//!
//! The compose files are `-f FILE`; else those `COMPOSE_FILE` names (from the environment,
//! else from the `.env` beside the compose file; separated by `COMPOSE_PATH_SEPARATOR`,
//! `:` by default); else the first of compose.yaml, compose.yml, docker-compose.yml,
//! docker-compose.yaml in the current directory or the nearest parent that has one, plus
//! the first of compose.override.yml, compose.override.yaml, docker-compose.override.yml,
//! docker-compose.override.yaml beside it. Paths inside them resolve against the first
//! file's folder. The project name is `-p`, else `COMPOSE_PROJECT_NAME` (environment, then
//! that folder's `.env`), else the last top-level `name:`, else the folder's name.

use std::collections::BTreeMap;

use anyhow::Context as _;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::Shell;

use crate::model::compose::{self, ComposeModel};

/// Compose's own order of preference (compose-go's `DefaultFileNames`).
pub const COMPOSE_FILE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

/// The override file compose merges when no `-f` is given (compose-go's
/// `DefaultOverrideFileNames`): the first of these beside the compose file.
pub const OVERRIDE_FILE_NAMES: [&str; 4] = [
    "compose.override.yml",
    "compose.override.yaml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
];

#[derive(clap::Args, Debug, Clone)]
pub struct ProjectArgs {
    /// Compose file; repeat for overrides, as with docker compose (default: COMPOSE_FILE,
    /// else compose.yaml, compose.yml, docker-compose.yml or docker-compose.yaml in the
    /// current directory or the nearest parent that has one, with its compose.override.yml
    /// beside it)
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    pub file: Vec<Utf8PathBuf>,
    /// Project name (default: COMPOSE_PROJECT_NAME from the environment or the project's
    /// .env, the compose file's `name:`, else its folder's name)
    #[arg(short = 'p', long = "project-name", global = true, value_name = "NAME")]
    pub project_name: Option<String>,
}

/// A loaded compose project.
pub struct Project {
    /// All the compose files compose merges for this project, in order (the main file
    /// first, then overrides), absolute. Whatever runs `docker compose` with `-f` must
    /// pass every one of them: an explicit `-f` turns compose's own discovery off.
    pub compose_files: Vec<Utf8PathBuf>,
    /// The folder holding the compose file: relative paths in it resolve here.
    pub dir: Utf8PathBuf,
    pub name: String,
    pub model: ComposeModel,
}

impl ProjectArgs {
    /// Finds the (first) compose file (relative to the shell's directory) without loading
    /// it.
    pub fn compose_file(&self, sh: &Shell) -> anyhow::Result<Utf8PathBuf> {
        let files = self.compose_files(sh)?;
        files
            .into_iter()
            .next()
            .context("no compose file given (COMPOSE_FILE is empty)")
    }

    /// All the compose files compose would merge, in order, without loading them.
    pub fn compose_files(&self, sh: &Shell) -> anyhow::Result<Vec<Utf8PathBuf>> {
        let cwd = current_dir(sh)?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        compose_file_set(&cwd, &self.file, &env)
    }

    pub fn load(&self, sh: &Shell) -> anyhow::Result<Project> {
        let compose_files = self.compose_files(sh)?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let read = |path: &Utf8Path| std::fs::read_to_string(path);
        let (model, _) = compose::load_files(&compose_files, &env, &read)?;
        let dir = model
            .file
            .parent()
            .map(Utf8Path::to_path_buf)
            .unwrap_or_else(|| Utf8PathBuf::from("/"));
        let name = self
            .project_name
            .clone()
            .or_else(|| model.name_from_env.clone())
            .or_else(|| model.name.clone())
            .unwrap_or_else(|| dir.file_name().unwrap_or("default").to_string());
        Ok(Project {
            compose_files: model.files.clone(),
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
                self.compose_files[0],
                gone.join("\n  ")
            );
        }
        Ok(())
    }
}

/// The files compose merges: `files` (`-f`, in order) alone; else `COMPOSE_FILE` from `env`, else
/// from the `.env` beside the discovered compose file; else the discovered file and its
/// override. Relative `COMPOSE_FILE` entries resolve against `cwd` (from the environment)
/// or the `.env`'s folder.
pub fn compose_file_set(
    cwd: &Utf8Path,
    files: &[Utf8PathBuf],
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let existing = |files: Vec<Utf8PathBuf>, from: &str| -> anyhow::Result<Vec<Utf8PathBuf>> {
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            anyhow::bail!("compose file {missing} does not exist (named by {from})");
        }
        if files.is_empty() {
            anyhow::bail!("{from} names no compose file");
        }
        Ok(files)
    };
    let split = |list: &str, base: &Utf8Path, separator: Option<&String>| -> Vec<Utf8PathBuf> {
        let separator = separator.map_or(":", |s| s.as_str());
        let separator = if separator.is_empty() { ":" } else { separator };
        list.split(separator)
            .filter(|part| !part.is_empty())
            .map(|part| absolute(base, Utf8Path::new(part)))
            .collect()
    };
    if !files.is_empty() {
        return existing(files.iter().map(|f| absolute(cwd, f)).collect(), "-f");
    }
    if let Some(list) = env.get("COMPOSE_FILE").filter(|v| !v.is_empty()) {
        let files = split(list, cwd, env.get("COMPOSE_PATH_SEPARATOR"));
        return existing(files, "COMPOSE_FILE");
    }
    let main = find_compose_file(cwd).with_context(|| {
        format!(
            "no compose file in {cwd} or its parents (looked for {}); pass one with -f FILE",
            COMPOSE_FILE_NAMES.join(", ")
        )
    })?;
    let dir = main
        .parent()
        .map_or_else(|| Utf8PathBuf::from("/"), Utf8Path::to_path_buf);
    let dotenv = dir.join(".env");
    if let Ok(text) = std::fs::read_to_string(&dotenv) {
        let vars = crate::model::interpolate::parse_dotenv(&text, env)
            .with_context(|| format!("reading {dotenv}"))?;
        if let Some(list) = vars.get("COMPOSE_FILE").filter(|v| !v.is_empty()) {
            let separator = env
                .get("COMPOSE_PATH_SEPARATOR")
                .or_else(|| vars.get("COMPOSE_PATH_SEPARATOR"));
            let files = split(list, &dir, separator);
            return existing(files, &format!("COMPOSE_FILE in {dotenv}"));
        }
    }
    let mut files = vec![main];
    if let Some(over) = OVERRIDE_FILE_NAMES
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
    {
        files.push(over);
    }
    Ok(files)
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
    fn the_file_set_is_the_one_compose_merges() {
        let root = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .expect("utf-8 temp dir")
            .join(format!("xtask-file-set-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let sub = root.join("app/sub");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let write = |name: &str, text: &str| {
            std::fs::write(root.join("app").join(name), text).expect("write")
        };
        let app = root.join("app");
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let set = |cwd: &Utf8Path, file: Option<&str>, env: &BTreeMap<String, String>| {
            let files: Vec<Utf8PathBuf> = file.into_iter().map(Utf8PathBuf::from).collect();
            compose_file_set(cwd, &files, env)
                .map(|files| {
                    files
                        .iter()
                        .map(|f| f.strip_prefix(&app).unwrap_or(f).to_string())
                        .collect::<Vec<_>>()
                })
                .map_err(|e| format!("{e:#}"))
        };
        write("docker-compose.yaml", "services: {}\n");
        write("docker-compose.yml", "services: {}\n");
        assert_eq!(
            set(&sub, None, &env(&[])),
            Ok(vec!["docker-compose.yml".to_string()])
        );
        write("compose.override.yaml", "services: {}\n");
        write("docker-compose.override.yml", "services: {}\n");
        assert_eq!(
            set(&sub, None, &env(&[])),
            Ok(vec![
                "docker-compose.yml".into(),
                "compose.override.yaml".into()
            ])
        );
        write("compose.override.yml", "services: {}\n");
        assert_eq!(
            set(&app, None, &env(&[])),
            Ok(vec![
                "docker-compose.yml".into(),
                "compose.override.yml".into()
            ])
        );
        // -f turns discovery off.
        assert_eq!(
            set(&app, Some("docker-compose.yaml"), &env(&[])),
            Ok(vec!["docker-compose.yaml".into()])
        );
        // COMPOSE_FILE from the environment (relative to the current directory), with its
        // separator; then from the .env beside the compose file.
        assert_eq!(
            set(
                &app,
                None,
                &env(&[
                    ("COMPOSE_FILE", "docker-compose.yaml;compose.override.yml"),
                    ("COMPOSE_PATH_SEPARATOR", ";")
                ])
            ),
            Ok(vec![
                "docker-compose.yaml".into(),
                "compose.override.yml".into()
            ])
        );
        write(
            ".env",
            "COMPOSE_FILE=docker-compose.yaml:docker-compose.override.yml\n",
        );
        assert_eq!(
            set(&sub, None, &env(&[])),
            Ok(vec![
                "docker-compose.yaml".into(),
                "docker-compose.override.yml".into()
            ])
        );
        let err = set(&app, None, &env(&[("COMPOSE_FILE", "nope.yml")])).unwrap_err();
        assert!(
            err.contains("nope.yml does not exist (named by COMPOSE_FILE)"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&root);
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
