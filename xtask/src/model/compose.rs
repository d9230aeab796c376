//! The compose file, resolved as `docker compose config` (Compose v2) resolves it, reduced
//! to what an offline rebuild needs: each service's image, build and profiles.
//!
//! Loading follows compose-go's order: parse the YAML and apply `<<` merge keys, substitute
//! variables in every string, make build paths absolute against the file that wrote them,
//! then resolve `extends` and `include`. A build context left out defaults to the project
//! directory only after merging, as compose does, so a base service from another file that
//! names no context builds in the extending project's directory.
use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use camino::{Utf8Component, Utf8Path, Utf8PathBuf};
use serde_yaml::{Mapping, Value};

use super::interpolate::{self, Vars};

/// Reads a file by absolute path. Injected so the model does no I/O of its own.
pub type ReadFile<'a> = &'a dyn Fn(&Utf8Path) -> std::io::Result<String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeModel {
    /// Absolute path of the (first) compose file.
    pub file: Utf8PathBuf,
    /// All the compose files of the project, in merge order (`file` first, then its
    /// overrides).
    pub files: Vec<Utf8PathBuf>,
    /// The top-level `name:`, interpolated (the last file that sets one wins, as compose
    /// has it).
    pub name: Option<String>,
    /// `COMPOSE_PROJECT_NAME` from the environment, else from the project's `.env` (empty
    /// counts as unset).
    pub name_from_env: Option<String>,
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    pub image: Option<String>,
    pub build: Option<Build>,
    pub profiles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub context: Context,
    pub dockerfile: DockerfileSource,
    /// Build args with a value. `- KEY` with no value takes the environment's value, as
    /// compose does, and is left out when the environment has none.
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub cache_from: Vec<String>,
    pub additional_contexts: BTreeMap<String, String>,
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// An absolute directory.
    Local(Utf8PathBuf),
    /// A git URL or other remote context: cannot be rebuilt offline.
    Remote(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileSource {
    /// Absolute path (`dockerfile:` resolved against the context; `Dockerfile` by default).
    /// With a [`Context::Remote`], the path inside the remote context, as written.
    Path(Utf8PathBuf),
    Inline(String),
}

/// Loads the compose file at `file` (absolute) with the process environment `env`;
/// `.env` beside the compose file fills what the environment does not set.
#[allow(dead_code)] // the fuzz target and the tests call it
pub fn load(
    file: &Utf8Path,
    env: &BTreeMap<String, String>,
    read: ReadFile<'_>,
) -> anyhow::Result<ComposeModel> {
    load_with_warnings(file, env, read).map(|(model, _)| model)
}

/// [`load`], also returning compose's warnings (variables that are not set).
#[allow(dead_code)] // the tests call it
pub fn load_with_warnings(
    file: &Utf8Path,
    env: &BTreeMap<String, String>,
    read: ReadFile<'_>,
) -> anyhow::Result<(ComposeModel, Vec<String>)> {
    load_files(&[file.to_owned()], env, read)
}

/// Loads `files` (absolute; the first, then its overrides) as one project, as
/// `docker compose -f a.yml -f b.yml` does: relative paths in all of them resolve against
/// the first file's folder, whose `.env` fills what `env` does not set.
pub fn load_files(
    files: &[Utf8PathBuf],
    env: &BTreeMap<String, String>,
    read: ReadFile<'_>,
) -> anyhow::Result<(ComposeModel, Vec<String>)> {
    let Some(first) = files.first() else {
        bail!("no compose file given");
    };
    if let Some(relative) = files.iter().find(|f| !f.is_absolute()) {
        bail!("compose file path {relative} is not absolute");
    }
    let files: Vec<Utf8PathBuf> = files.iter().map(|f| normalize(f)).collect();
    let file = normalize(first);
    let dir = parent(&file);
    let vars = with_dotenv(env.clone(), &dir.join(".env"), false, read)?;
    let mut loader = Loader {
        read,
        warnings: Vec::new(),
    };
    let project = loader.project(&files, &dir, &vars, &mut Vec::new())?;
    let services = project
        .services
        .into_iter()
        .map(|(name, service)| {
            let service = to_service(&service, &project.vars)
                .with_context(|| format!("service {name:?} in {file}"))?;
            Ok((name, service))
        })
        .collect::<anyhow::Result<_>>()?;
    let name_from_env = vars
        .get("COMPOSE_PROJECT_NAME")
        .filter(|name| !name.is_empty())
        .cloned();
    let model = ComposeModel {
        file,
        files,
        name: project.name,
        name_from_env,
        services,
    };
    let mut warnings = loader.warnings;
    let mut seen = std::collections::BTreeSet::new();
    warnings.retain(|warning| seen.insert(warning.clone()));
    Ok((model, warnings))
}

/// Adds the variables of the `.env`-format file at `path` to `vars`, which win. A missing
/// file is an error only when it was asked for by name.
fn with_dotenv(
    mut vars: Vars,
    path: &Utf8Path,
    required: bool,
    read: ReadFile<'_>,
) -> anyhow::Result<Vars> {
    match read(path) {
        Ok(text) => {
            let from_file = interpolate::parse_dotenv(&text, &vars)
                .with_context(|| format!("reading {path}"))?;
            for (key, value) in from_file {
                vars.entry(key).or_insert(value);
            }
            Ok(vars)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => Ok(vars),
        Err(err) => Err(err).with_context(|| format!("reading env file {path}")),
    }
}

struct Loader<'r> {
    read: ReadFile<'r>,
    warnings: Vec<String>,
}

/// One compose file after parsing, substitution and path resolution.
struct Document {
    file: Utf8PathBuf,
    name: Option<String>,
    include: Option<Value>,
    /// Services with `build` as a mapping and its paths absolute.
    services: BTreeMap<String, Mapping>,
}

/// A project: its files merged, `extends` and `include` resolved.
struct Project {
    name: Option<String>,
    vars: Vars,
    services: BTreeMap<String, Mapping>,
}

impl Loader<'_> {
    /// Loads `files` (the first, then overrides) as one project: relative paths in all of
    /// them resolve against `project_dir`, as with `docker compose -f a.yml -f b.yml`.
    fn project(
        &mut self,
        files: &[Utf8PathBuf],
        project_dir: &Utf8Path,
        vars: &Vars,
        includes: &mut Vec<Utf8PathBuf>,
    ) -> anyhow::Result<Project> {
        let mut name = None;
        let mut services: BTreeMap<String, Mapping> = BTreeMap::new();
        let mut included: BTreeMap<String, (Mapping, Utf8PathBuf)> = BTreeMap::new();
        for file in files {
            if includes.contains(file) {
                let chain: Vec<_> = includes.iter().map(|f| f.as_str()).collect();
                bail!("include cycle: {} -> {file}", chain.join(" -> "));
            }
            let doc = self.document(file, project_dir, vars)?;
            name = doc.name.clone().or(name);
            for service in doc.services.keys() {
                let resolved = self.extended(&doc, service, vars, &mut Vec::new())?;
                let merged = match services.remove(service) {
                    Some(earlier) => merge_mappings(earlier, resolved),
                    None => resolved,
                };
                services.insert(service.clone(), merged);
            }
            if let Some(include) = &doc.include {
                includes.push(file.clone());
                for project in self.includes(&doc.file, include, vars, includes)? {
                    let (project, from) = project;
                    for (service, definition) in project.services {
                        if let Some((_, earlier)) = included.get(&service) {
                            bail!("service {service:?} is defined by both {earlier} and {from}");
                        }
                        included.insert(service, (definition, from.clone()));
                    }
                }
                includes.pop();
            }
        }
        for (service, (definition, from)) in included {
            if services.contains_key(&service) {
                bail!(
                    "service {service:?} in {} conflicts with the service of the same name \
                     imported from {from}; rename one of them",
                    files.first().map_or("", |f| f.as_str())
                );
            }
            services.insert(service, definition);
        }
        for service in services.values_mut() {
            *service = untag_mapping(std::mem::take(service));
            if let Some(Value::Mapping(build)) = service.get_mut("build") {
                if build.get("context").is_none() {
                    build.insert("context".into(), Value::String(project_dir.to_string()));
                }
            }
        }
        Ok(Project {
            name,
            vars: vars.clone(),
            services,
        })
    }

    /// The projects named by an `include:` list in `file`.
    fn includes(
        &mut self,
        file: &Utf8Path,
        include: &Value,
        vars: &Vars,
        stack: &mut Vec<Utf8PathBuf>,
    ) -> anyhow::Result<Vec<(Project, Utf8PathBuf)>> {
        let dir = parent(file);
        let Value::Sequence(entries) = include else {
            bail!("{file}: `include` must be a list");
        };
        let mut projects = Vec::new();
        for entry in entries {
            let (paths, project_dir, env_files) = match entry {
                Value::Mapping(entry) => (
                    strings(entry.get("path"), "include path")
                        .with_context(|| format!("{file}"))?,
                    scalar(entry.get("project_directory")),
                    strings(entry.get("env_file"), "include env_file")
                        .with_context(|| format!("{file}"))?,
                ),
                other => match scalar(Some(other)) {
                    Some(path) => (vec![path], None, Vec::new()),
                    None => bail!("{file}: an `include` entry must be a path or a mapping"),
                },
            };
            let paths: Vec<Utf8PathBuf> = paths.iter().map(|p| absolute(&dir, p)).collect();
            let Some(first) = paths.first() else {
                bail!("{file}: an `include` entry has no path");
            };
            let project_dir = match project_dir {
                Some(d) => absolute(&dir, &d),
                None => parent(first),
            };
            let mut included_vars = vars.clone();
            if env_files.is_empty() {
                included_vars =
                    with_dotenv(included_vars, &project_dir.join(".env"), false, self.read)?;
            }
            for env_file in &env_files {
                included_vars =
                    with_dotenv(included_vars, &absolute(&dir, env_file), true, self.read)?;
            }
            let project = self.project(&paths, &project_dir, &included_vars, stack)?;
            projects.push((project, first.clone()));
        }
        Ok(projects)
    }

    /// Reads, parses and substitutes one file; paths resolve against `base_dir`.
    fn document(
        &mut self,
        file: &Utf8Path,
        base_dir: &Utf8Path,
        vars: &Vars,
    ) -> anyhow::Result<Document> {
        let text = (self.read)(file).with_context(|| format!("reading compose file {file}"))?;
        let mut root = parse_yaml(file, &text)?;
        interpolate_value(&mut root, "", vars, &mut self.warnings)
            .with_context(|| format!("{file}"))?;
        let mut root = match root {
            Value::Mapping(root) => root,
            Value::Null => Mapping::new(),
            _ => bail!("{file}: the top level must be a mapping"),
        };
        let name = match root.get("name") {
            None | Some(Value::Null) => None,
            Some(name) => Some(
                scalar(Some(name)).with_context(|| format!("{file}: `name` must be a string"))?,
            ),
        };
        let include = root.shift_remove("include");
        let mut services = BTreeMap::new();
        match root.shift_remove("services") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(entries)) => {
                for (key, value) in entries {
                    let Some(name) = scalar(Some(&key)) else {
                        bail!("{file}: a service name must be a string");
                    };
                    let Value::Mapping(mut service) = value else {
                        bail!("{file}: service {name:?} must be a mapping");
                    };
                    service.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
                    resolve_paths(&mut service, base_dir)
                        .with_context(|| format!("{file}: service {name:?}"))?;
                    services.insert(name, service);
                }
            }
            Some(_) => bail!("{file}: `services` must be a mapping"),
        }
        Ok(Document {
            file: file.to_owned(),
            name,
            include,
            services,
        })
    }

    /// The service `name` of `doc` with its `extends` chain merged in.
    fn extended(
        &mut self,
        doc: &Document,
        name: &str,
        vars: &Vars,
        chain: &mut Vec<(Utf8PathBuf, String)>,
    ) -> anyhow::Result<Mapping> {
        let link = (doc.file.clone(), name.to_owned());
        if chain.contains(&link) {
            let names: Vec<String> = chain.iter().map(|(f, s)| format!("{s} ({f})")).collect();
            bail!("extends cycle: {} -> {name}", names.join(" -> "));
        }
        let Some(service) = doc.services.get(name) else {
            bail!(
                "{}: service {name:?} not found (named by `extends`)",
                doc.file
            );
        };
        let mut service = service.clone();
        let Some(extends) = service.shift_remove("extends") else {
            return Ok(service);
        };
        let (other_file, base) = match &extends {
            Value::Mapping(extends) => (
                scalar(extends.get("file")),
                scalar(extends.get("service")).with_context(|| {
                    format!(
                        "{}: service {name:?}: `extends` needs a `service`",
                        doc.file
                    )
                })?,
            ),
            other => (
                None,
                scalar(Some(other)).with_context(|| {
                    format!(
                        "{}: service {name:?}: `extends` must be a name or a mapping",
                        doc.file
                    )
                })?,
            ),
        };
        chain.push(link);
        let base = match other_file {
            Some(other) => {
                let other = absolute(&parent(&doc.file), &other);
                let other_doc = self.document(&other, &parent(&other), vars)?;
                self.extended(&other_doc, &base, vars, chain)?
            }
            None => self.extended(doc, &base, vars, chain)?,
        };
        chain.pop();
        Ok(merge_mappings(base, service))
    }
}

/// Parses YAML with compose's conventions: an optional BOM, merge keys applied.
fn parse_yaml(file: &Utf8Path, text: &str) -> anyhow::Result<Value> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut value: Value = serde_yaml::from_str(text).map_err(|err| {
        let message = err.to_string();
        match err.location() {
            Some(at) => {
                let suffix = format!(" at line {} column {}", at.line(), at.column());
                let message = message.replacen(&suffix, "", 1);
                anyhow::anyhow!(
                    "{file}:{}:{}: invalid YAML: {message}",
                    at.line(),
                    at.column()
                )
            }
            None => anyhow::anyhow!("{file}: invalid YAML: {message}"),
        }
    })?;
    apply_merge_keys(&mut value).with_context(|| format!("{file}: invalid `<<` merge key"))?;
    Ok(value)
}

/// Applies `<<` merge keys innermost first, so merged maps may merge others in turn.
/// Keys written in the mapping win; in a list of maps, earlier ones win. serde_yaml's own
/// `Value::apply_merge` leaves the `<<` of a merged map that has one.
fn apply_merge_keys(value: &mut Value) -> anyhow::Result<()> {
    match value {
        Value::Mapping(mapping) => {
            for child in mapping.values_mut() {
                apply_merge_keys(child)?;
            }
            let sources = match mapping.shift_remove("<<") {
                None => return Ok(()),
                Some(Value::Mapping(source)) => vec![source],
                Some(Value::Sequence(list)) => list
                    .into_iter()
                    .map(|item| match item {
                        Value::Mapping(source) => Ok(source),
                        _ => bail!("a merge list may hold mappings only"),
                    })
                    .collect::<anyhow::Result<_>>()?,
                Some(_) => bail!("a merge key takes a mapping or a list of mappings"),
            };
            for source in sources {
                for (key, value) in source {
                    mapping.entry(key).or_insert(value);
                }
            }
        }
        Value::Sequence(items) => {
            for item in items {
                apply_merge_keys(item)?;
            }
        }
        Value::Tagged(tagged) => apply_merge_keys(&mut tagged.value)?,
        _ => {}
    }
    Ok(())
}

/// Substitutes variables in every string value (never in keys). Tags other than compose's
/// `!reset` and `!override` (applied when merging) are dropped.
fn interpolate_value(
    value: &mut Value,
    path: &str,
    vars: &Vars,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    match value {
        Value::String(text) => {
            *text = interpolate::substitute(text, vars, warnings)
                .with_context(|| format!("error while interpolating {path}"))?;
        }
        Value::Mapping(mapping) => {
            for (key, child) in mapping.iter_mut() {
                let key = scalar(Some(key)).unwrap_or_default();
                let path = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate_value(child, &path, vars, warnings)?;
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), vars, warnings)?;
            }
        }
        Value::Tagged(tagged) if tagged.tag == "reset" || tagged.tag == "override" => {
            interpolate_value(&mut tagged.value, path, vars, warnings)?;
        }
        Value::Tagged(tagged) => {
            let mut inner = std::mem::replace(&mut tagged.value, Value::Null);
            interpolate_value(&mut inner, path, vars, warnings)?;
            *value = inner;
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Normalises `build` to a mapping with `args` and `additional_contexts` as mappings, and
/// makes its local paths absolute against `dir`. `dockerfile` stays relative to the context.
fn resolve_paths(service: &mut Mapping, dir: &Utf8Path) -> anyhow::Result<()> {
    let Some(build) = service.get_mut("build").and_then(untagged_mut) else {
        return Ok(());
    };
    let mut resolved = match &*build {
        Value::Mapping(build) => build.clone(),
        other => {
            let context = scalar(Some(other)).context("`build` must be a path or a mapping")?;
            Mapping::from_iter([("context".into(), Value::String(context))])
        }
    };
    if let Some(context) = resolved.get_mut("context").and_then(untagged_mut) {
        let text = scalar(Some(context)).context("`build.context` must be a string")?;
        if !is_remote(&text) {
            *context = Value::String(absolute(dir, &text).into_string());
        }
    }
    if let Some(args) = resolved.get_mut("args").and_then(untagged_mut) {
        *args =
            Value::Mapping(key_values(args).context("`build.args` must be a mapping or a list")?);
    }
    if let Some(contexts) = resolved
        .get_mut("additional_contexts")
        .and_then(untagged_mut)
    {
        let mut map = key_values(contexts)
            .context("`build.additional_contexts` must be a mapping or a list")?;
        for value in map.values_mut() {
            if let Some(text) = value.as_str() {
                if !text.contains("://")
                    && !text.starts_with("target:")
                    && !text.starts_with("service:")
                    && !is_remote(text)
                {
                    *value = Value::String(absolute(dir, text).into_string());
                }
            }
        }
        *contexts = Value::Mapping(map);
    }
    *build = Value::Mapping(resolved);
    Ok(())
}

/// The value under compose's `!override` tag, or `None` under `!reset`.
fn untagged_mut(value: &mut Value) -> Option<&mut Value> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "reset" => None,
        Value::Tagged(tagged) => Some(&mut tagged.value),
        value => Some(value),
    }
}

/// Applies what `!reset` and `!override` tags left after merging: a reset key is removed.
fn untag(value: Value) -> Option<Value> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "reset" => None,
        Value::Tagged(tagged) => untag(tagged.value),
        Value::Mapping(mapping) => Some(Value::Mapping(untag_mapping(mapping))),
        Value::Sequence(items) => Some(Value::Sequence(
            items.into_iter().filter_map(untag).collect(),
        )),
        value => Some(value),
    }
}

fn untag_mapping(mapping: Mapping) -> Mapping {
    mapping
        .into_iter()
        .filter_map(|(k, v)| Some((k, untag(v)?)))
        .collect()
}

/// A mapping, or a list of `KEY=VALUE` / `KEY` (value null) items, as a mapping.
fn key_values(value: &Value) -> Option<Mapping> {
    match value {
        Value::Null => Some(Mapping::new()),
        Value::Mapping(mapping) => Some(mapping.clone()),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = scalar(Some(item))?;
                Some(match item.split_once('=') {
                    Some((key, value)) => (key.into(), Value::String(value.to_owned())),
                    None => (item.into(), Value::Null),
                })
            })
            .collect(),
        _ => None,
    }
}

/// Merges `over` onto `base` as compose merges an extending service onto its base:
/// mappings merge key by key, lists append, anything else is replaced.
fn merge_mappings(mut base: Mapping, over: Mapping) -> Mapping {
    for (key, value) in over {
        let merged = match (base.shift_remove(&key), value) {
            (_, Value::Tagged(tagged)) if tagged.tag == "reset" => continue,
            (_, Value::Tagged(tagged)) => tagged.value,
            (Some(Value::Mapping(base)), Value::Mapping(over)) => {
                Value::Mapping(merge_mappings(base, over))
            }
            (Some(Value::Sequence(mut base)), Value::Sequence(over)) => {
                base.extend(over);
                Value::Sequence(base)
            }
            (_, value) => value,
        };
        base.insert(key, merged);
    }
    base
}

fn to_service(service: &Mapping, vars: &Vars) -> anyhow::Result<Service> {
    let image = match service.get("image") {
        None | Some(Value::Null) => None,
        image => Some(scalar(image).context("`image` must be a string")?),
    };
    let profiles = strings(service.get("profiles"), "profiles")?;
    let build = match service.get("build") {
        Some(Value::Mapping(build)) => Some(to_build(build, vars)?),
        _ => None,
    };
    Ok(Service {
        image,
        build,
        profiles,
    })
}

fn to_build(build: &Mapping, vars: &Vars) -> anyhow::Result<Build> {
    let context = scalar(build.get("context")).context("`build.context` must be a string")?;
    let context = if is_remote(&context) {
        Context::Remote(context)
    } else {
        Context::Local(Utf8PathBuf::from(context))
    };
    let dockerfile = optional(build, "dockerfile")?;
    let inline = optional(build, "dockerfile_inline")?;
    let dockerfile = match (dockerfile, inline) {
        (Some(_), Some(_)) => {
            bail!("both `build.dockerfile` and `build.dockerfile_inline` are set; keep one")
        }
        (None, Some(inline)) => DockerfileSource::Inline(inline),
        (path, None) => {
            let path = Utf8PathBuf::from(path.unwrap_or_else(|| "Dockerfile".to_owned()));
            match &context {
                Context::Local(dir) if path.is_relative() => {
                    DockerfileSource::Path(normalize(&dir.join(path)))
                }
                _ => DockerfileSource::Path(path),
            }
        }
    };
    let mut args = BTreeMap::new();
    if let Some(Value::Mapping(map)) = build.get("args") {
        for (key, value) in map {
            let key = scalar(Some(key)).context("a build arg name must be a string")?;
            let value = match value {
                Value::Null => vars.get(&key).cloned(),
                value => Some(
                    scalar(Some(value))
                        .with_context(|| format!("build arg {key} must be a string"))?,
                ),
            };
            if let Some(value) = value {
                args.insert(key, value);
            }
        }
    }
    let mut additional_contexts = BTreeMap::new();
    if let Some(Value::Mapping(map)) = build.get("additional_contexts") {
        for (key, value) in map {
            let key = scalar(Some(key)).context("an additional context name must be a string")?;
            let value = scalar(Some(value))
                .with_context(|| format!("additional context {key} must be a string"))?;
            additional_contexts.insert(key, value);
        }
    }
    Ok(Build {
        context,
        dockerfile,
        args,
        target: optional(build, "target")?,
        cache_from: strings(build.get("cache_from"), "build.cache_from")?,
        additional_contexts,
        network: optional(build, "network")?,
    })
}

/// An optional string field; empty counts as unset, as compose omits it.
fn optional(mapping: &Mapping, key: &str) -> anyhow::Result<Option<String>> {
    match mapping.get(key) {
        None | Some(Value::Null) => Ok(None),
        value => {
            let text = scalar(value).with_context(|| format!("`{key}` must be a string"))?;
            Ok(Some(text).filter(|text| !text.is_empty()))
        }
    }
}

/// A string, number or boolean as text, as compose reads it where it expects a string.
fn scalar(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A string or a list of strings (absent: empty).
fn strings(value: Option<&Value>, what: &str) -> anyhow::Result<Vec<String>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| scalar(Some(item)).with_context(|| format!("`{what}` must hold strings")))
            .collect(),
        Some(value) => {
            Ok(vec![scalar(Some(value)).with_context(|| {
                format!("`{what}` must be a list of strings")
            })?])
        }
    }
}

/// A build context docker fetches rather than reads from disk, by compose's rule.
fn is_remote(context: &str) -> bool {
    [
        "https://",
        "http://",
        "git://",
        "ssh://",
        "git@",
        "github.com/",
    ]
    .iter()
    .any(|prefix| context.starts_with(prefix))
}

fn parent(file: &Utf8Path) -> Utf8PathBuf {
    file.parent()
        .map_or_else(|| Utf8PathBuf::from("/"), Utf8Path::to_owned)
}

/// `path` against `dir`, normalised without touching the filesystem.
fn absolute(dir: &Utf8Path, path: &str) -> Utf8PathBuf {
    normalize(&dir.join(path))
}

/// Removes `.` and resolves `..` lexically (`..` at the root stays at the root).
fn normalize(path: &Utf8Path) -> Utf8PathBuf {
    let mut out = Utf8PathBuf::new();
    for component in path.components() {
        match component {
            Utf8Component::CurDir => {}
            Utf8Component::ParentDir => {
                if !out.pop() && !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `/p/compose.yml` from `files` (paths relative to `/p`) and renders the model,
    /// or the error, as text.
    fn render(files: &[(&str, &str)], env: &[(&str, &str)]) -> String {
        let files: BTreeMap<Utf8PathBuf, String> = files
            .iter()
            .map(|(path, text)| (Utf8Path::new("/p").join(path), text.to_string()))
            .collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let read = |path: &Utf8Path| {
            files
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let model = match load(Utf8Path::new("/p/compose.yml"), &env, &read) {
            Ok(model) => model,
            Err(err) => return format!("error: {err:#}"),
        };
        let mut out = String::new();
        if let Some(name) = &model.name {
            out += &format!("name {name}\n");
        }
        for (name, service) in &model.services {
            out += name;
            if let Some(image) = &service.image {
                out += &format!(" image={image}");
            }
            if !service.profiles.is_empty() {
                out += &format!(" profiles={}", service.profiles.join(","));
            }
            out += "\n";
            let Some(build) = &service.build else {
                continue;
            };
            match &build.context {
                Context::Local(dir) => out += &format!("  context {dir}\n"),
                Context::Remote(url) => out += &format!("  context remote {url}\n"),
            }
            match &build.dockerfile {
                DockerfileSource::Path(path) => out += &format!("  dockerfile {path}\n"),
                DockerfileSource::Inline(text) => out += &format!("  dockerfile inline {text:?}\n"),
            }
            let pairs = |map: &BTreeMap<String, String>| {
                map.iter()
                    .map(|(k, v)| format!(" {k}={v}"))
                    .collect::<String>()
            };
            if !build.args.is_empty() {
                out += &format!("  args{}\n", pairs(&build.args));
            }
            if let Some(target) = &build.target {
                out += &format!("  target {target}\n");
            }
            if !build.cache_from.is_empty() {
                out += &format!("  cache_from {}\n", build.cache_from.join(" "));
            }
            if !build.additional_contexts.is_empty() {
                out += &format!(
                    "  additional_contexts{}\n",
                    pairs(&build.additional_contexts)
                );
            }
            if let Some(network) = &build.network {
                out += &format!("  network {network}\n");
            }
        }
        out
    }

    fn check_env(files: &[(&str, &str)], env: &[(&str, &str)], expected: &str) {
        let actual = render(files, env);
        let expected = dedent(expected);
        assert_eq!(
            actual.trim_end(),
            expected.trim_end(),
            "\nactual:\n{actual}"
        );
    }

    fn check(compose: &str, expected: &str) {
        check_env(&[("compose.yml", &dedent(compose))], &[], expected);
    }

    /// Removes the indentation of the first non-empty line from every line.
    fn dedent(text: &str) -> String {
        let text = text.trim_start_matches('\n');
        let indent = text.len() - text.trim_start_matches(' ').len();
        text.lines()
            .map(|line| format!("{}\n", line.get(indent..).unwrap_or(line.trim_start())))
            .collect()
    }

    #[test]
    fn build_short_and_long_forms() {
        check(
            "
            name: demo
            services:
              short:
                build: ./app/../web/.
              long:
                image: registry.local/long:1
                build:
                  context: backend
                  dockerfile: docker/Dockerfile.prod
                  target: runtime
                  network: host
                  cache_from: ['type=local,src=./cache', long:cache]
                  additional_contexts:
                    wheels: ./wheels
                    base: docker-image://python:3.12
                    stage: target:builder
                    shared: service:abs
              defaults:
                build: {}
              abs:
                build: {context: /srv/app, dockerfile: /etc/Dockerfile}
              pulled:
                image: redis
            ",
            "
            name demo
            abs
              context /srv/app
              dockerfile /etc/Dockerfile
            defaults
              context /p
              dockerfile /p/Dockerfile
            long image=registry.local/long:1
              context /p/backend
              dockerfile /p/backend/docker/Dockerfile.prod
              target runtime
              cache_from type=local,src=./cache long:cache
              additional_contexts base=docker-image://python:3.12 shared=service:abs stage=target:builder wheels=/p/wheels
              network host
            pulled image=redis
            short
              context /p/web
              dockerfile /p/web/Dockerfile
            ",
        );
    }

    #[test]
    fn build_args_map_list_and_environment() {
        check_env(
            &[(
                "compose.yml",
                "services:
  map:
    build:
      args: {STR: text, NUM: 3, BOOL: true, FROM_ENV: null, MISSING: ~, EMPTY: ''}
  list:
    build:
      args: [A=1, B=, C=x=y, FROM_ENV, MISSING]
",
            )],
            &[("FROM_ENV", "env")],
            "
            list
              context /p
              dockerfile /p/Dockerfile
              args A=1 B= C=x=y FROM_ENV=env
            map
              context /p
              dockerfile /p/Dockerfile
              args BOOL=true EMPTY= FROM_ENV=env NUM=3 STR=text
            ",
        );
    }

    #[test]
    fn image_and_build_together() {
        check(
            "
            services:
              app:
                image: app:${TAG:-dev}
                build: .
            ",
            "
            app image=app:dev
              context /p
              dockerfile /p/Dockerfile
            ",
        );
    }

    #[test]
    fn remote_contexts() {
        check(
            "
            services:
              https: {build: 'https://github.com/a/b.git#main:sub'}
              git: {build: {context: 'git@github.com:a/b.git', dockerfile: docker/Dockerfile}}
              github: {build: github.com/a/b}
              scheme: {build: 'git://host/repo'}
              local_dot_git: {build: ./repo.git}
            ",
            "
            git
              context remote git@github.com:a/b.git
              dockerfile docker/Dockerfile
            github
              context remote github.com/a/b
              dockerfile Dockerfile
            https
              context remote https://github.com/a/b.git#main:sub
              dockerfile Dockerfile
            local_dot_git
              context /p/repo.git
              dockerfile /p/repo.git/Dockerfile
            scheme
              context remote git://host/repo
              dockerfile Dockerfile
            ",
        );
    }

    #[test]
    fn dockerfile_inline() {
        check(
            "
            services:
              inline:
                build:
                  dockerfile_inline: |
                    FROM scratch
            ",
            r#"
            inline
              context /p
              dockerfile inline "FROM scratch\n"
            "#,
        );
        check(
            "
            services:
              both:
                build: {dockerfile: D, dockerfile_inline: FROM x}
            ",
            "error: service \"both\" in /p/compose.yml: both `build.dockerfile` and \
             `build.dockerfile_inline` are set; keep one",
        );
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        check(
            "
            x-build: &build
              context: ./app
              args: &args {A: '1', B: '2'}
            x-more: &more
              target: dev
              args: {C: '3'}
            x-chain: &chain
              <<: *build
              network: none
            services:
              one:
                build:
                  <<: [*more, *build]
                  args:
                    <<: *args
                    B: override
              two:
                build: *chain
              three:
                image: &img shared:1
                build:
                  <<: *build
                  target: prod
              four:
                image: *img
            ",
            "
            four image=shared:1
            one
              context /p/app
              dockerfile /p/app/Dockerfile
              args A=1 B=override
              target dev
            three image=shared:1
              context /p/app
              dockerfile /p/app/Dockerfile
              args A=1 B=2
              target prod
            two
              context /p/app
              dockerfile /p/app/Dockerfile
              args A=1 B=2
              network none
            ",
        );
    }

    #[test]
    fn extension_keys_and_profiles() {
        check(
            "
            x-top: {anything: [1, 2]}
            services:
              web:
                x-note: ignored
                image: web
                profiles: [debug, tools]
              db:
                image: db
            ",
            "
            db image=db
            web image=web profiles=debug,tools
            ",
        );
    }

    #[test]
    fn interpolation_everywhere_but_keys() {
        check_env(
            &[(
                "compose.yml",
                "name: ${PROJECT:-fallback}
services:
  ${KEY}:
    image: \"$REG/${NAME:?name it}:${TAG-latest}${SUFFIX:+-$SUFFIX}\"
    build:
      context: ${CTX:-.}
      args: [\"COST=$$5\", \"V=${EMPTY:-empty}|${EMPTY-unset}|${EMPTY+set}|${EMPTY:+nonempty}\"]
      target: ${TARGET?}
",
            )],
            &[
                ("REG", "r.io"),
                ("NAME", "app"),
                ("SUFFIX", "s"),
                ("CTX", "src"),
                ("EMPTY", ""),
                ("TARGET", "t"),
            ],
            "
            name fallback
            ${KEY} image=r.io/app:latest-s
              context /p/src
              dockerfile /p/src/Dockerfile
              args COST=$5 V=empty||set|
              target t
            ",
        );
    }

    #[test]
    fn interpolation_errors_name_variable_and_place() {
        check(
            "
            services:
              web:
                image: ${IMAGE:?set IMAGE to the image name}
            ",
            "error: /p/compose.yml: error while interpolating services.web.image: \
             required variable IMAGE is missing a value: set IMAGE to the image name",
        );
        check(
            "
            x-list: [ok, '${TAG?}']
            ",
            "error: /p/compose.yml: error while interpolating x-list[1]: \
             required variable TAG is missing a value",
        );
        check(
            "
            services:
              web: {image: '${BAD'}
            ",
            "error: /p/compose.yml: error while interpolating services.web.image: \
             invalid interpolation format \"${BAD\": write a literal $ as $$",
        );
    }

    #[test]
    fn dotenv_fills_what_the_environment_does_not_set() {
        check_env(
            &[
                (
                    "compose.yml",
                    "services:\n  web:\n    image: $REG/$APP:$TAG\n    build: {args: [FROM_DOTENV]}\n",
                ),
                (".env", "# defaults\nREG=dotenv.io\nexport APP='app'\nTAG=\"v1\"\nFROM_DOTENV=yes\n"),
            ],
            &[("REG", "process.io")],
            "
            web image=process.io/app:v1
              context /p
              dockerfile /p/Dockerfile
              args FROM_DOTENV=yes
            ",
        );
        check_env(
            &[("compose.yml", "services: {}\n"), (".env", "BAD LINE\n")],
            &[],
            "error: reading /p/.env: .env line 1: unexpected character ' ' in variable name \"BAD LINE\"",
        );
    }

    #[test]
    fn bom_and_crlf() {
        check_env(
            &[(
                "compose.yml",
                "\u{feff}services:\r\n  web:\r\n    image: web\r\n    build:\r\n      context: ./a\r\n",
            )],
            &[],
            "
            web image=web
              context /p/a
              dockerfile /p/a/Dockerfile
            ",
        );
    }

    #[test]
    fn override_files_merge_and_the_last_name_wins() {
        let files: BTreeMap<Utf8PathBuf, String> = [
            (
                "/p/compose.yml",
                "name: first\nservices:\n  web:\n    build:\n      context: ./web\n      \
                 args: {A: '1'}\n  db:\n    image: postgres\n",
            ),
            (
                "/p/deploy/compose.override.yml",
                "name: second\nservices:\n  web:\n    build:\n      target: prod\n      \
                 args: {B: '2'}\n      context: ./web2\n",
            ),
            ("/p/.env", "COMPOSE_PROJECT_NAME=from-dotenv\n"),
        ]
        .into_iter()
        .map(|(p, t)| (Utf8PathBuf::from(p), t.to_string()))
        .collect();
        let read = |path: &Utf8Path| {
            files
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let paths = [
            Utf8PathBuf::from("/p/compose.yml"),
            Utf8PathBuf::from("/p/deploy/compose.override.yml"),
        ];
        let (model, _) = load_files(&paths, &BTreeMap::new(), &read).expect("loads");
        assert_eq!(model.files, paths);
        assert_eq!(model.name.as_deref(), Some("second"));
        assert_eq!(model.name_from_env.as_deref(), Some("from-dotenv"));
        let build = model.services["web"].build.clone().expect("build");
        // Relative paths of an override resolve against the first file's folder.
        assert_eq!(build.context, Context::Local("/p/web2".into()));
        assert_eq!(build.target.as_deref(), Some("prod"));
        assert_eq!(build.args.len(), 2);
        // The environment wins over .env; an empty value counts as unset.
        let env = |v: &str| BTreeMap::from([("COMPOSE_PROJECT_NAME".to_string(), v.to_string())]);
        let (model, _) = load_files(&paths, &env("from-env"), &read).expect("loads");
        assert_eq!(model.name_from_env.as_deref(), Some("from-env"));
        let (model, _) = load_files(&paths[..1], &env(""), &read).expect("loads");
        assert_eq!(model.name_from_env, None);
        assert_eq!(model.name.as_deref(), Some("first"));
    }

    #[test]
    fn extends_in_the_same_file() {
        check(
            "
            services:
              base:
                image: base
                profiles: [a]
                build:
                  context: ./base
                  args: {A: '1', B: '2'}
                  cache_from: [x]
                  additional_contexts: [w=./wheels]
              web:
                extends: base
                profiles: [b]
                build:
                  dockerfile: D2
                  args: [B=3]
                  cache_from: [y]
                  additional_contexts: {v: ../v}
              short:
                extends: {service: web}
                image: short
                build: ./other
            ",
            "
            base image=base profiles=a
              context /p/base
              dockerfile /p/base/Dockerfile
              args A=1 B=2
              cache_from x
              additional_contexts w=/p/wheels
            short image=short profiles=a,b
              context /p/other
              dockerfile /p/other/D2
              args A=1 B=3
              cache_from x y
              additional_contexts v=/v w=/p/wheels
            web image=base profiles=a,b
              context /p/base
              dockerfile /p/base/D2
              args A=1 B=3
              cache_from x y
              additional_contexts v=/v w=/p/wheels
            ",
        );
    }

    #[test]
    fn extends_another_file_resolves_its_paths_against_its_directory() {
        check_env(
            &[
                (
                    "compose.yml",
                    "services:
  api:
    extends: {file: common/base.yml, service: python}
    build: {target: prod}
  nocontext:
    extends: {file: common/base.yml, service: bare}
",
                ),
                (
                    "common/base.yml",
                    "services:
  python:
    extends: {file: ../shared/root.yml, service: root}
    build: {context: ./py, args: [TAG=$TAG]}
  bare:
    build: {dockerfile: Dockerfile.bare}
",
                ),
                ("shared/root.yml", "services:\n  root:\n    image: root\n    build: {context: ., additional_contexts: [r=./r]}\n"),
                (".env", "TAG=3.12\n"),
            ],
            &[],
            "
            api image=root
              context /p/common/py
              dockerfile /p/common/py/Dockerfile
              args TAG=3.12
              target prod
              additional_contexts r=/p/shared/r
            nocontext
              context /p
              dockerfile /p/Dockerfile.bare
            ",
        );
    }

    #[test]
    fn reset_and_override_tags() {
        check(
            "
            services:
              base:
                image: base
                profiles: [a]
                build: {context: ./b, args: {A: '1'}, cache_from: [x]}
              r1:
                extends: base
                image: !reset null
                profiles: !override [z]
                build:
                  args: !reset {}
                  cache_from: !override [y]
              r2:
                extends: base
                build: !reset
              r3:
                extends: base
                build: !override ./o
            ",
            "
            base image=base profiles=a
              context /p/b
              dockerfile /p/b/Dockerfile
              args A=1
              cache_from x
            r1 profiles=z
              context /p/b
              dockerfile /p/b/Dockerfile
              cache_from y
            r2 image=base profiles=a
            r3 image=base profiles=a
              context /p/o
              dockerfile /p/o/Dockerfile
            ",
        );
    }

    #[test]
    fn warnings_name_unset_variables_once() {
        let files = BTreeMap::from([(
            Utf8PathBuf::from("/p/compose.yml"),
            "services:\n  a: {image: $NOPE}\n  b: {extends: a}\n".to_owned(),
        )]);
        let read = |path: &Utf8Path| {
            files
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let (model, warnings) =
            load_with_warnings(Utf8Path::new("/p/compose.yml"), &BTreeMap::new(), &read).unwrap();
        assert_eq!(model.services["b"].image.as_deref(), Some(""));
        assert_eq!(
            warnings,
            ["the \"NOPE\" variable is not set, defaulting to a blank string"]
        );
        let err = load(Utf8Path::new("compose.yml"), &BTreeMap::new(), &read).unwrap_err();
        assert_eq!(
            err.to_string(),
            "compose file path compose.yml is not absolute"
        );
    }

    #[test]
    fn extends_errors() {
        check(
            "
            services:
              a: {extends: b}
              b: {extends: {service: a}}
            ",
            "error: extends cycle: a (/p/compose.yml) -> b (/p/compose.yml) -> a",
        );
        check(
            "
            services:
              a: {extends: missing}
            ",
            "error: /p/compose.yml: service \"missing\" not found (named by `extends`)",
        );
        check(
            "
            services:
              a: {extends: {file: nowhere.yml, service: x}}
            ",
            "error: reading compose file /p/nowhere.yml: entity not found",
        );
    }

    /// As compose 2.26 does: the included `.env` fills variables the main one leaves unset,
    /// but a bare build arg (`FROM_INC`) reads the main project's environment only.
    #[test]
    fn include_joins_services_with_their_own_paths() {
        check_env(
            &[
                (
                    "compose.yml",
                    "include:
  - db/compose.yml
  - path: [tools/a.yml, tools/b.yml]
services:
  web: {build: ., image: web}
",
                ),
                (
                    "db/compose.yml",
                    "services:\n  db:\n    build: {args: [\"V=${V:-none}\", FROM_INC]}\n",
                ),
                ("db/.env", "V=from-db-env\nFROM_INC=inc\n"),
                ("tools/a.yml", "services:\n  tool:\n    build: ./t\n"),
                (
                    "tools/b.yml",
                    "services:\n  tool:\n    build: {target: x}\n",
                ),
                (".env", "V=from-main-env\n"),
            ],
            &[],
            "
            db
              context /p/db
              dockerfile /p/db/Dockerfile
              args V=from-main-env
            tool
              context /p/tools/t
              dockerfile /p/tools/t/Dockerfile
              target x
            web image=web
              context /p
              dockerfile /p/Dockerfile
            ",
        );
    }

    #[test]
    fn include_with_project_directory_and_env_file() {
        check_env(
            &[
                (
                    "compose.yml",
                    "include:
  - path: lib/sub/c.yml
    project_directory: pd
    env_file: [lib/e.env]
",
                ),
                (
                    "lib/sub/c.yml",
                    "services:\n  c:\n    image: c-${V1}-${V2:-none}\n    build: {context: ./ctx, additional_contexts: {m: ./more}}\n",
                ),
                ("lib/e.env", "V1=from-env-file\n"),
                ("pd/.env", "V2=not-read-when-env_file-is-given\n"),
            ],
            &[],
            "
            c image=c-from-env-file-none
              context /p/pd/ctx
              dockerfile /p/pd/ctx/Dockerfile
              additional_contexts m=/p/pd/more
            ",
        );
        check_env(
            &[
                (
                    "compose.yml",
                    "include: [{path: a.yml, env_file: missing.env}]\n",
                ),
                ("a.yml", ""),
            ],
            &[],
            "error: reading env file /p/missing.env: entity not found",
        );
    }

    #[test]
    fn include_conflicts_and_cycles() {
        check_env(
            &[
                (
                    "compose.yml",
                    "include: [other.yml]\nservices:\n  web: {image: a}\n",
                ),
                ("other.yml", "services:\n  web: {image: b}\n"),
            ],
            &[],
            "error: service \"web\" in /p/compose.yml conflicts with the service of the same name \
             imported from /p/other.yml; rename one of them",
        );
        check_env(
            &[
                ("compose.yml", "include: [other.yml]\n"),
                ("other.yml", "include: [compose.yml]\n"),
            ],
            &[],
            "error: include cycle: /p/compose.yml -> /p/other.yml -> /p/compose.yml",
        );
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        check(
            "
            services:
              web:
                image: [unclosed
              db: {}
            ",
            "error: /p/compose.yml:4:5: invalid YAML: did not find expected ',' or ']', \
             while parsing a flow sequence at line 3 column 12",
        );
        check(
            "services: [a\n",
            "error: /p/compose.yml:2:1: invalid YAML: did not find expected ',' or ']', \
             while parsing a flow sequence at line 1 column 11",
        );
    }

    #[test]
    fn shapes_that_are_errors_or_empty() {
        check("", "");
        check("name: only\n", "name only");
        check(
            "services:\n  web: nginx\n",
            "error: /p/compose.yml: service \"web\" must be a mapping",
        );
        check(
            "services: [web]\n",
            "error: /p/compose.yml: `services` must be a mapping",
        );
        check(
            "- a\n",
            "error: /p/compose.yml: the top level must be a mapping",
        );
        check(
            "services:\n  web: {build: [a]}\n",
            "error: /p/compose.yml: service \"web\": `build` must be a path or a mapping",
        );
        check(
            "services:\n  web: {build: null}\n",
            "error: /p/compose.yml: service \"web\": `build` must be a path or a mapping",
        );
        check(
            "x: &a [*a]\n",
            "error: /p/compose.yml:1:4: invalid YAML: recursion limit exceeded",
        );
    }

    #[test]
    fn mangled_input_never_panics() {
        let samples = [
            "name: ${N:-x}\nservices:\n  a:\n    build:\n      context: ./c\n      args: [A=${B:-${C}}, D]\n      additional_contexts: {w: ../w}\n    extends: {file: o.yml, service: b}\n",
            "x: &x {<<: [{a: 1}], b: !reset}\nservices: {s: {<<: *x, build: !override {dockerfile_inline: 'FROM ${X:?}'}}}\n",
            "include: [{path: [a.yml], env_file: e, project_directory: ..}]\nservices: {s: {extends: s}}\n",
        ];
        for sample in samples {
            for end in (0..=sample.len()).filter(|i| sample.is_char_boundary(*i)) {
                let text = &sample[..end];
                let _ = render(
                    &[("compose.yml", text), ("o.yml", text), (".env", text)],
                    &[],
                );
                let _ = interpolate::substitute(text, &Vars::new(), &mut Vec::new());
            }
        }
    }
}
