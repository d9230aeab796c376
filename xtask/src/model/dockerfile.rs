//! Dockerfiles: stages, base images and stage references, read the way BuildKit's
//! Dockerfile frontend reads them, so the images we export are exactly the images a build
//! will ask for. `parse` keeps what is written (line numbers, unexpanded names); `resolve`
//! applies build args and a target. Only the instructions that decide which images a
//! build needs are modelled (FROM, ARG, COPY --from, RUN --mount from=); the rest is
//! skipped, but still tokenised like BuildKit does (continuations, comments, heredocs), so
//! a heredoc body line reading `FROM evil` is never taken for an instruction.
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dockerfile {
    /// The `# syntax=` directive, if any: an image BuildKit needs offline.
    pub syntax: Option<String>,
    pub global_args: Vec<Arg>,
    pub stages: Vec<Stage>,
    /// The `# escape=` directive (backslash when absent).
    pub escape: Escape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escape {
    #[default]
    Backslash,
    Backtick,
}

impl Escape {
    pub fn char(self) -> char {
        match self {
            Escape::Backslash => '\\',
            Escape::Backtick => '`',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    /// The default as written, quotes included (expanded when resolving).
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lowercased as BuildKit does.
    pub name: Option<String>,
    /// The FROM image as written, before ARG expansion.
    pub from: String,
    pub platform: Option<String>,
    /// 1-based line of the FROM instruction.
    pub line: usize,
    /// ARGs declared inside the stage.
    pub args: Vec<Arg>,
    /// `COPY --from=` values as written.
    pub copy_from: Vec<String>,
    /// `RUN --mount=...,from=` values as written.
    pub mount_from: Vec<String>,
    /// `copy_from` and `mount_from` together, in file order, with their lines.
    pub refs: Vec<StageRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRef {
    pub kind: RefKind,
    /// The value as written.
    pub name: String,
    /// 1-based line of the instruction.
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// `COPY --from=`: a stage name, a stage index or an image.
    Copy,
    /// `RUN --mount=type=bind|cache,from=`: a stage name or an image.
    Mount,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// Images the build needs, in file order, without duplicates (`# syntax=` first).
    pub base_images: Vec<String>,
    /// Names (or indexes as strings) of the stages that are built, in file order.
    pub stages: Vec<String>,
    pub warnings: Vec<String>,
}

/// Deep `${A:-${B:-…}}` nesting is refused rather than overflowing the stack.
const MAX_NESTING: usize = 32;

pub fn parse(text: &str) -> anyhow::Result<Dockerfile> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut df = Dockerfile::default();
    parse_directives(&lines, &mut df)?;
    let esc = df.escape.char();
    let mut i = 0;
    while i < lines.len() {
        let start = i + 1;
        let Some(line) = next_instruction(&lines, &mut i, esc) else {
            continue;
        };
        let line = line.trim();
        let (keyword, rest) = match line.find(char::is_whitespace) {
            Some(at) => (&line[..at], line[at..].trim_start()),
            None => (line, ""),
        };
        let keyword = keyword.to_ascii_lowercase();
        if matches!(keyword.as_str(), "run" | "copy" | "add") && !is_json_form(rest) {
            skip_heredocs(line, &lines, &mut i, start)?;
        }
        apply_instruction(&mut df, &keyword, rest, esc, start)?;
    }
    if df.stages.is_empty() {
        anyhow::bail!("no FROM instruction: a Dockerfile needs at least one stage");
    }
    Ok(df)
}

/// The parser directives at the top (`# syntax=`, `# escape=`, `# check=`): they end at
/// the first line that is not one (an unknown directive is a comment, and ends them).
fn parse_directives(lines: &[&str], df: &mut Dockerfile) -> anyhow::Result<()> {
    for (i, line) in lines.iter().enumerate() {
        let Some((key, value)) = parser_directive(line) else {
            break;
        };
        match key.as_str() {
            "syntax" => {
                if df.syntax.is_some() {
                    anyhow::bail!("line {}: only one `# syntax=` directive is allowed", i + 1);
                }
                df.syntax = Some(value);
            }
            "escape" => {
                df.escape = match value.as_str() {
                    "\\" => Escape::Backslash,
                    "`" => Escape::Backtick,
                    _ => anyhow::bail!(
                        "line {}: invalid escape character {value:?}: it must be ` or \\",
                        i + 1
                    ),
                };
            }
            "check" => {}
            _ => break,
        }
    }
    Ok(())
}

/// The instruction starting at line `*i`, continuation lines joined (comment and empty
/// lines inside a continuation skipped, as BuildKit does); `None` for a comment or an
/// empty line. Moves `*i` past what it read.
fn next_instruction(lines: &[&str], i: &mut usize, esc: char) -> Option<String> {
    let first = lines[*i].trim_start_matches([' ', '\t']);
    *i += 1;
    if first.starts_with('#') {
        return None;
    }
    let (head, mut done) = trim_continuation(first, esc);
    if done && head.trim().is_empty() {
        return None;
    }
    let mut joined = head.to_string();
    while !done && *i < lines.len() {
        let next = lines[*i];
        *i += 1;
        let trimmed = next.trim_start_matches([' ', '\t']);
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let (part, end) = trim_continuation(next, esc);
        joined.push_str(part);
        done = end;
    }
    Some(joined)
}

/// Moves `*i` past the bodies of the heredocs `line` opens, so that a body line reading
/// `FROM evil` is never taken for an instruction.
fn skip_heredocs(line: &str, lines: &[&str], i: &mut usize, start: usize) -> anyhow::Result<()> {
    for doc in heredocs(line) {
        let mut closed = false;
        while *i < lines.len() {
            let body = lines[*i];
            *i += 1;
            let body = if doc.chomp {
                body.trim_start_matches('\t')
            } else {
                body
            };
            if body == doc.name {
                closed = true;
                break;
            }
        }
        if !closed {
            anyhow::bail!(
                "line {start}: heredoc <<{} is never closed by a line `{}`",
                doc.name,
                doc.name
            );
        }
    }
    Ok(())
}

/// Records what an instruction says about stages and images: FROM, ARG, `COPY --from`,
/// `RUN --mount=…,from=`; the rest is skipped.
fn apply_instruction(
    df: &mut Dockerfile,
    keyword: &str,
    rest: &str,
    esc: char,
    start: usize,
) -> anyhow::Result<()> {
    match keyword {
        "from" => df.stages.push(parse_from(rest, start)?),
        "arg" => {
            let args = parse_arg(rest, esc, start)?;
            match df.stages.last_mut() {
                Some(stage) => stage.args.extend(args),
                None => df.global_args.extend(args),
            }
        }
        "copy" | "run" => {
            let Some(stage) = df.stages.last_mut() else {
                return Ok(());
            };
            let (flags, _) = builder_flags(rest);
            for (name, value) in flags {
                let (kind, from) = match (keyword, name.as_str()) {
                    ("copy", "from") => (RefKind::Copy, value.unwrap_or_default()),
                    ("run", "mount") => match value.as_deref().and_then(mount_from) {
                        Some(from) => (RefKind::Mount, from),
                        None => continue,
                    },
                    _ => continue,
                };
                match kind {
                    RefKind::Copy => stage.copy_from.push(from.clone()),
                    RefKind::Mount => stage.mount_from.push(from.clone()),
                }
                stage.refs.push(StageRef {
                    kind,
                    name: from,
                    line: start,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// A named build context (compose's `build.additional_contexts`, `docker buildx build
/// --build-context`), as far as the images a build needs are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// `docker-image://REF`: the build reads the image REF.
    Image(String),
    /// A local directory, a git URL, an OCI layout, another service's image (`service:`):
    /// nothing to pull.
    Other,
}

impl NamedContext {
    /// Reads an `additional_contexts` value.
    pub fn from_value(value: &str) -> NamedContext {
        match value.strip_prefix("docker-image://") {
            Some(image) if !image.is_empty() => NamedContext::Image(image.to_string()),
            _ => NamedContext::Other,
        }
    }
}

/// The key BuildKit looks a named context up by, for a `FROM`/`--from` value: the image
/// reference in its short ("familiar") form without `:latest` (`docker.io/library/alpine`
/// and `alpine:latest` are both `alpine`), a stage name as it is.
pub fn context_key(name: &str) -> String {
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("index.docker.io/library/"))
        .or_else(|| name.strip_prefix("docker.io/"))
        .or_else(|| name.strip_prefix("index.docker.io/"))
        .unwrap_or(name);
    if short.contains('@') {
        return short.to_string();
    }
    short.strip_suffix(":latest").unwrap_or(short).to_string()
}

impl Dockerfile {
    /// The images a build with these args and this target needs.
    #[allow(dead_code)] // the fuzz target and the tests call it
    pub fn resolve(
        &self,
        build_args: &BTreeMap<String, String>,
        target: Option<&str>,
    ) -> anyhow::Result<Resolved> {
        self.resolve_with_contexts(build_args, target, &BTreeMap::new())
    }

    /// [`Dockerfile::resolve`] with named build contexts, as BuildKit applies them: a
    /// context named like a stage replaces that stage (its FROM and what it copies are not
    /// needed), and a FROM, `COPY --from` or `RUN --mount from=` value that is not a stage
    /// reads the context of that name instead of pulling an image. A context is an image
    /// only when it is `docker-image://REF` (then REF is needed).
    pub fn resolve_with_contexts(
        &self,
        build_args: &BTreeMap<String, String>,
        target: Option<&str>,
        contexts: &BTreeMap<String, NamedContext>,
    ) -> anyhow::Result<Resolved> {
        if self.stages.is_empty() {
            anyhow::bail!("no FROM instruction: a Dockerfile needs at least one stage");
        }
        let r = Resolver {
            df: self,
            env: self.global_env(build_args),
            esc: self.escape.char(),
            contexts,
        };
        let mut warnings = Vec::new();
        // What each stage stands on and reads from: another stage or an image.
        let mut bases = Vec::with_capacity(self.stages.len());
        let mut deps: Vec<Vec<Dep>> = Vec::with_capacity(self.stages.len());
        for i in 0..self.stages.len() {
            let (base, stage_deps) = r.stage_deps(i, &mut warnings)?;
            bases.push(base);
            deps.push(stage_deps);
        }
        r.settle_later_stages(&mut bases, &deps, &mut warnings)?;
        let last = r.target_index(target)?;
        // The legacy builder builds every stage up to the target; BuildKit also builds a
        // later stage a counted one copies from. Count both.
        let mut built = vec![false; self.stages.len()];
        let mut todo: Vec<usize> = (0..=last).collect();
        while let Some(i) = todo.pop() {
            if std::mem::replace(&mut built[i], true) {
                continue;
            }
            todo.extend(edges(&bases[i], &deps[i], false));
        }
        let mut base_images = Vec::new();
        // `# syntax=` makes BuildKit fetch that frontend image: it is needed like a base
        // image (the plan lists it, once, in `frontend_images`).
        if let Some(syntax) = &self.syntax {
            base_images.push(syntax.clone());
        }
        let mut stages = Vec::new();
        for i in (0..self.stages.len()).filter(|&i| built[i]) {
            stages.push(r.display(i));
            for dep in std::iter::once(&bases[i]).chain(&deps[i]) {
                if let Dep::Image(image) = dep {
                    if !base_images.contains(image) {
                        base_images.push(image.clone());
                    }
                }
            }
        }
        Ok(Resolved {
            base_images,
            stages,
            warnings,
        })
    }

    /// Stage names (`AS name`, lowercased), unique, in file order.
    pub fn stage_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for name in self.stages.iter().filter_map(|s| s.name.as_ref()) {
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
        out
    }

    /// Names of every ARG, global then per stage, unique, in file order.
    #[allow(dead_code)] // API for the planner; remove once it is called
    pub fn declared_args(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .global_args
            .iter()
            .chain(self.stages.iter().flat_map(|s| &s.args));
        for arg in all {
            if !out.contains(&arg.name) {
                out.push(arg.name.clone());
            }
        }
        out
    }

    /// The variables FROM can see: BuildKit's platform ARGs, then the global ARGs, whose
    /// defaults see the ARGs above them and which a build arg overrides.
    fn global_env(&self, build_args: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        for prefix in ["BUILD", "TARGET"] {
            let defaults = [
                ("PLATFORM", format!("linux/{arch}")),
                ("OS", "linux".to_string()),
                ("ARCH", arch.to_string()),
                ("VARIANT", String::new()),
            ];
            for (suffix, value) in defaults {
                let key = format!("{prefix}{suffix}");
                let value = build_args.get(&key).cloned().unwrap_or(value);
                env.insert(key, value);
            }
        }
        for arg in &self.global_args {
            let value = match (build_args.get(&arg.name), &arg.default) {
                (Some(v), _) => v.clone(),
                (None, Some(d)) => match expand(d, &env, self.escape.char()) {
                    Ok(e) => e.value,
                    Err(_) => d.clone(),
                },
                // Declared without a value: BuildKit sets it to the empty string.
                (None, None) => String::new(),
            };
            env.insert(arg.name.clone(), value);
        }
        env
    }

    fn why_empty(&self, missing: &[String]) -> String {
        if missing.is_empty() {
            return "check the ARGs it uses".to_string();
        }
        let parts: Vec<String> = missing
            .iter()
            .map(|name| {
                if self.global_args.iter().any(|a| &a.name == name) {
                    format!(
                        "ARG {name} has no value (pass --build-arg {name}=… or give it a default)"
                    )
                } else {
                    format!(
                        "${name} is not declared with ARG before the first FROM, so it \
                         expands to nothing"
                    )
                }
            })
            .collect();
        parts.join("; ")
    }
}

/// One resolution of a Dockerfile: its build-arg environment and named contexts.
struct Resolver<'a> {
    df: &'a Dockerfile,
    env: BTreeMap<String, String>,
    esc: char,
    contexts: &'a BTreeMap<String, NamedContext>,
}

impl Resolver<'_> {
    fn display(&self, i: usize) -> String {
        match &self.df.stages[i].name {
            Some(name) => name.clone(),
            None => i.to_string(),
        }
    }

    /// The last stage named `name` above stage `before`.
    fn find_named(&self, name: &str, before: usize) -> Option<usize> {
        let name = name.to_ascii_lowercase();
        (0..before)
            .rev()
            .find(|&j| self.df.stages[j].name.as_deref() == Some(name.as_str()))
    }

    /// A named context of that name (or of its short image form), as a dependency.
    fn named(&self, name: &str) -> Option<Dep> {
        let found = self
            .contexts
            .get(name)
            .or_else(|| self.contexts.get(&context_key(name)))?;
        Some(match found {
            NamedContext::Image(image) => Dep::Image(image.clone()),
            NamedContext::Other => Dep::Scratch,
        })
    }

    /// What stage `i` stands on (its FROM) and reads from (`COPY --from`, mounts).
    fn stage_deps(&self, i: usize, warnings: &mut Vec<String>) -> anyhow::Result<(Dep, Vec<Dep>)> {
        let stage = &self.df.stages[i];
        if let Some(context) = stage.name.as_deref().and_then(|n| self.contexts.get(n)) {
            let base = match context {
                NamedContext::Image(image) => Dep::Image(image.clone()),
                NamedContext::Other => Dep::Scratch,
            };
            return Ok((base, Vec::new()));
        }
        let base = self.stage_base(i, warnings)?;
        let mut stage_deps = Vec::new();
        for r in &stage.refs {
            stage_deps.push(self.reference(r)?);
        }
        Ok((base, stage_deps))
    }

    /// Stage `i`'s FROM, expanded with the global ARGs.
    fn stage_base(&self, i: usize, warnings: &mut Vec<String>) -> anyhow::Result<Dep> {
        let stage = &self.df.stages[i];
        let expanded = expand(&stage.from, &self.env, self.esc)
            .map_err(|e| anyhow::anyhow!("line {}: FROM {}: {e}", stage.line, stage.from))?;
        let name = expanded.value;
        if name.is_empty() {
            anyhow::bail!(
                "line {}: FROM {} gives an empty image name: {}",
                stage.line,
                stage.from,
                self.df.why_empty(&expanded.missing)
            );
        }
        let undeclared: Vec<String> = expanded
            .missing
            .into_iter()
            .filter(|m| !self.env.contains_key(m))
            .collect();
        if !undeclared.is_empty() {
            warnings.push(format!(
                "line {}: FROM {} gives {name}: {}",
                stage.line,
                stage.from,
                self.df.why_empty(&undeclared)
            ));
        }
        let stages = &self.df.stages;
        let later = (i + 1..stages.len())
            .rev()
            .find(|&j| stages[j].name.as_deref() == Some(name.to_ascii_lowercase().as_str()));
        Ok(if let Some(j) = self.find_named(&name, i) {
            Dep::Stage(j)
        } else if name.eq_ignore_ascii_case("scratch") {
            Dep::Scratch
        } else if let Some(context) = self.named(&name) {
            context
        } else if let Some(j) = later {
            Dep::Later(j, name)
        } else {
            Dep::Image(name)
        })
    }

    /// What a `COPY --from` or `RUN --mount from=` reads.
    fn reference(&self, r: &StageRef) -> anyhow::Result<Dep> {
        let stages = &self.df.stages;
        let value = if r.name.contains('$') {
            match expand(&r.name, &self.env, self.esc) {
                Ok(e) => e.value,
                Err(_) => r.name.clone(),
            }
        } else {
            r.name.clone()
        };
        Ok(
            if let (RefKind::Copy, Some(index)) = (r.kind, parse_index(&value)) {
                match usize::try_from(index) {
                    Ok(j) if j < stages.len() => Dep::Stage(j),
                    _ => anyhow::bail!(
                        "line {}: COPY --from={value}: there is no stage {value} \
                         (stages are numbered 0 to {})",
                        r.line,
                        stages.len() - 1
                    ),
                }
            } else if let Some(j) = self.find_named(&value, stages.len()) {
                Dep::Stage(j)
            } else if value.eq_ignore_ascii_case("scratch") || value.is_empty() {
                Dep::Scratch
            } else if let Some(context) = self.named(&value) {
                context
            } else {
                Dep::Image(value)
            },
        )
    }

    /// BuildKit lets FROM name earlier stages only: a later one is an image of that name
    /// (with a warning). Unless that later stage depends back on this one: a cycle, an
    /// error.
    fn settle_later_stages(
        &self,
        bases: &mut [Dep],
        deps: &[Vec<Dep>],
        warnings: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let stages = &self.df.stages;
        if let Some(cycle) = find_cycle(stages.len(), |i| edges(&bases[i], &deps[i], true)) {
            let path: Vec<String> = cycle
                .iter()
                .map(|&i| format!("{} (line {})", self.display(i), stages[i].line))
                .collect();
            let first = cycle.first().map(|&i| self.display(i)).unwrap_or_default();
            anyhow::bail!(
                "the stages depend on each other in a cycle: {} -> {first}; a stage cannot \
                 use itself, and FROM can only name a stage defined above it",
                path.join(" -> ")
            );
        }
        for (i, base) in bases.iter_mut().enumerate() {
            if let Dep::Later(j, name) = base {
                warnings.push(format!(
                    "line {}: FROM {name} names stage {} defined below it (line {}); \
                     BuildKit only looks up earlier stages, so it pulls an image {name}",
                    stages[i].line,
                    self.display(*j),
                    stages[*j].line
                ));
                *base = Dep::Image(std::mem::take(name));
            }
        }
        Ok(())
    }

    /// The stage the build stops at: the target's, else the last.
    fn target_index(&self, target: Option<&str>) -> anyhow::Result<usize> {
        let stages = &self.df.stages;
        match target {
            None => Ok(stages.len() - 1),
            Some(t) => self.find_named(t, stages.len()).ok_or_else(|| {
                let names = self.df.stage_names();
                let listed = if names.is_empty() {
                    "none of its stages has a name".to_string()
                } else {
                    format!("its named stages are: {}", names.join(", "))
                };
                anyhow::anyhow!("target stage {t:?} is not in the Dockerfile; {listed}")
            }),
        }
    }
}

enum Dep {
    Stage(usize),
    /// FROM naming a stage defined below: BuildKit takes it for an image.
    Later(usize, String),
    Image(String),
    Scratch,
}

/// The stages a stage uses; with `with_later`, also a FROM naming a stage below it.
fn edges(base: &Dep, deps: &[Dep], with_later: bool) -> Vec<usize> {
    let mut out = Vec::new();
    match base {
        Dep::Stage(j) => out.push(*j),
        Dep::Later(j, _) if with_later => out.push(*j),
        _ => {}
    }
    for d in deps {
        if let Dep::Stage(j) = d {
            out.push(*j);
        }
    }
    out
}

/// Go's `strconv.Atoi`, which BuildKit uses to tell `COPY --from=0` from a name.
fn parse_index(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().or(Some(i64::MAX))
}

/// A cycle in the graph, as the stages on it in order, if there is one.
fn find_cycle(n: usize, edges: impl Fn(usize) -> Vec<usize>) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; n];
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS: `path` holds the open stages, each with its remaining edges.
        let mut path: Vec<(usize, Vec<usize>)> = vec![(root, edges(root))];
        mark[root] = Mark::Open;
        while let Some((node, rest)) = path.last_mut() {
            let node = *node;
            match rest.pop() {
                Some(next) if next < n => match mark[next] {
                    Mark::New => {
                        mark[next] = Mark::Open;
                        path.push((next, edges(next)));
                    }
                    Mark::Open => {
                        let from = path.iter().position(|(s, _)| *s == next).unwrap_or(0);
                        return Some(path[from..].iter().map(|(s, _)| *s).collect());
                    }
                    Mark::Done => {}
                },
                Some(_) => {}
                None => {
                    mark[node] = Mark::Done;
                    path.pop();
                }
            }
        }
    }
    None
}

/// `# key=value` at the top of the file.
fn parser_directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let key_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if key_len == 0 {
        return None;
    }
    let value = rest[key_len..].trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((rest[..key_len].to_ascii_lowercase(), value.to_string()))
}

/// Strips a trailing escape character (and blanks after it): `(line, is_last_line)`.
fn trim_continuation(line: &str, esc: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(esc) {
        Some(head) => (head, false),
        None => (line, true),
    }
}

fn is_json_form(args: &str) -> bool {
    let (_, rest) = builder_flags(args);
    let rest = rest.trim();
    rest.starts_with('[') && rest.ends_with(']')
}

fn parse_from(args: &str, line: usize) -> anyhow::Result<Stage> {
    let (flags, rest) = builder_flags(args);
    let mut platform = None;
    for (name, value) in flags {
        match (name.as_str(), value) {
            ("platform", Some(v)) => platform = Some(v),
            ("platform", None) => anyhow::bail!("line {line}: FROM --platform needs a value"),
            (other, _) => anyhow::bail!("line {line}: FROM has an unknown flag --{other}"),
        }
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (from, name) = match words.as_slice() {
        [image] => (*image, None),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !valid {
                anyhow::bail!(
                    "line {line}: invalid stage name {name:?}: it must start with a letter \
                     and hold only letters, digits, -, _ and ."
                );
            }
            (*image, Some(name))
        }
        [] => anyhow::bail!("line {line}: FROM needs an image"),
        _ => anyhow::bail!("line {line}: FROM takes `image` or `image AS name`, got {rest:?}"),
    };
    Ok(Stage {
        name,
        from: from.to_string(),
        platform,
        line,
        args: Vec::new(),
        copy_from: Vec::new(),
        mount_from: Vec::new(),
        refs: Vec::new(),
    })
}

fn parse_arg(args: &str, esc: char, line: usize) -> anyhow::Result<Vec<Arg>> {
    let words = split_words(args, esc);
    if words.is_empty() {
        anyhow::bail!("line {line}: ARG needs a name");
    }
    Ok(words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((name, value)) => Arg {
                name: name.to_string(),
                default: Some(value.to_string()),
            },
            None => Arg {
                name: word,
                default: None,
            },
        })
        .collect())
}

/// Leading `--name[=value]` flags, unquoted as BuildKit's `extractBuilderFlags` does, and
/// the rest of the line.
fn builder_flags(line: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    let mut rest = line.trim_start();
    while rest.starts_with("--") {
        let mut word = String::new();
        let mut quote = None;
        let mut end = rest.len();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    if let Some((_, n)) = chars.next() {
                        word.push(n);
                    }
                }
                _ => word.push(c),
            }
        }
        rest = rest[end..].trim_start();
        if word == "--" {
            break;
        }
        let word = &word[2..];
        flags.push(match word.split_once('=') {
            Some((name, value)) => (name.to_ascii_lowercase(), Some(value.to_string())),
            None => (word.to_ascii_lowercase(), None),
        });
    }
    (flags, rest)
}

/// The `from=` of a bind or cache mount (`type=bind` when no type is given).
fn mount_from(spec: &str) -> Option<String> {
    let mut kind = "bind".to_string();
    let mut from = None;
    for field in csv_fields(spec) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.to_string()),
            None => continue,
        };
        match key.as_str() {
            "type" => kind = value.to_ascii_lowercase(),
            "from" => from = Some(value),
            _ => {}
        }
    }
    from.filter(|f| !f.is_empty() && (kind == "bind" || kind == "cache"))
}

/// One CSV record, as Go's `encoding/csv` reads BuildKit's `--mount` values.
fn csv_fields(s: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else if c == ',' {
            fields.push(std::mem::take(&mut field));
            at_start = true;
            continue;
        } else if c == '"' && at_start {
            quoted = true;
        } else {
            field.push(c);
        }
        at_start = false;
    }
    fields.push(field);
    fields
}

/// Whitespace-separated words, with quotes and escapes kept as written (ARG's parsing).
fn split_words(s: &str, esc: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ => {}
        }
        word.push(c);
        if c == esc && quote != Some('\'') {
            if let Some(n) = chars.next() {
                word.push(n);
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

struct Heredoc {
    name: String,
    chomp: bool,
}

/// The heredocs a RUN, COPY or ADD line opens, in order (`<<EOF`, `<<-EOF`, `<<"EOF"`).
fn heredocs(line: &str) -> Vec<Heredoc> {
    let mut docs = Vec::new();
    for word in split_words(line, '\\') {
        let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
        let Some(rest) = rest.strip_prefix("<<") else {
            continue;
        };
        let (chomp, rest) = match rest.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if rest.is_empty() || rest.contains('<') {
            continue;
        }
        let Ok(expanded) = expand(rest, &BTreeMap::new(), '\\') else {
            continue;
        };
        if expanded.value.is_empty() || expanded.value.contains(char::is_whitespace) {
            continue;
        }
        docs.push(Heredoc {
            name: expanded.value,
            chomp,
        });
    }
    docs
}

struct Expanded {
    value: String,
    /// Variables used but not set, or set to nothing.
    missing: Vec<String>,
}

/// Expands one word as BuildKit's shell lexer does: quotes, escapes, `$A`, `${A}`,
/// `${A:-x}`, `${A-x}`, `${A:+x}`, `${A+x}`, `${A:?x}`, `${A#p}`, `${A%p}` (and `##`, `%%`).
fn expand(word: &str, env: &BTreeMap<String, String>, esc: char) -> anyhow::Result<Expanded> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        env,
        esc,
        missing: Vec::new(),
        depth: 0,
    };
    let value = lexer.word(None)?;
    let mut missing = BTreeSet::new();
    lexer.missing.retain(|m| missing.insert(m.clone()));
    Ok(Expanded {
        value,
        missing: lexer.missing,
    })
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a BTreeMap<String, String>,
    esc: char,
    missing: Vec<String>,
    depth: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn word(&mut self, stop: Option<char>) -> anyhow::Result<String> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            anyhow::bail!("substitutions nested too deeply");
        }
        let mut out = String::new();
        loop {
            let Some(c) = self.next() else {
                if stop.is_some() {
                    anyhow::bail!("missing '}}'");
                }
                break;
            };
            if Some(c) == stop {
                break;
            }
            if c == self.esc {
                if let Some(n) = self.next() {
                    out.push(n);
                }
            } else if c == '\'' {
                loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(c) => out.push(c),
                        None => anyhow::bail!("unterminated single quote"),
                    }
                }
            } else if c == '"' {
                loop {
                    match self.next() {
                        Some('"') => break,
                        Some('$') => out.push_str(&self.dollar()?),
                        Some(c) if c == self.esc => match self.peek() {
                            Some(n) if n == '"' || n == '$' || n == self.esc => {
                                self.pos += 1;
                                out.push(n);
                            }
                            Some(_) => out.push(c),
                            None => {}
                        },
                        Some(c) => out.push(c),
                        None => anyhow::bail!("unterminated double quote"),
                    }
                }
            } else if c == '$' {
                out.push_str(&self.dollar()?);
            } else {
                out.push(c);
            }
        }
        self.depth -= 1;
        Ok(out)
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            while let Some(c) = self.peek().filter(|c| c.is_ascii_digit()) {
                name.push(c);
                self.pos += 1;
            }
            return name;
        }
        while let Some(c) = self
            .peek()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    /// After a `$`.
    fn dollar(&mut self) -> anyhow::Result<String> {
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            let value = self.lookup(&name).unwrap_or_default();
            if value.is_empty() {
                self.missing.push(name);
            }
            return Ok(value);
        }
        self.pos += 1;
        let name = self.name();
        if name.is_empty() {
            anyhow::bail!("bad substitution");
        }
        let value = self.lookup(&name);
        let op = self.next();
        let colon = op == Some(':');
        let op = if colon { self.next() } else { op };
        match op {
            Some('}') if !colon => {
                let value = value.unwrap_or_default();
                if value.is_empty() {
                    self.missing.push(name);
                }
                Ok(value)
            }
            Some(op @ ('-' | '+' | '?')) => {
                let word = self.word(Some('}'))?;
                let set = match &value {
                    Some(v) => !(colon && v.is_empty()),
                    None => false,
                };
                match op {
                    '-' if set => Ok(value.unwrap_or_default()),
                    '-' => Ok(word),
                    '+' if set => Ok(word),
                    '+' => Ok(String::new()),
                    _ if set => Ok(value.unwrap_or_default()),
                    _ if word.is_empty() => anyhow::bail!("{name}: parameter null or not set"),
                    _ => anyhow::bail!("{name}: {word}"),
                }
            }
            Some(op @ ('#' | '%')) if !colon => {
                let longest = self.peek() == Some(op);
                if longest {
                    self.pos += 1;
                }
                let pattern: Vec<char> = self.word(Some('}'))?.chars().collect();
                let value: Vec<char> = value.unwrap_or_default().chars().collect();
                let cuts: Vec<usize> = if longest {
                    (0..=value.len()).rev().collect()
                } else {
                    (0..=value.len()).collect()
                };
                for cut in cuts {
                    let (matched, kept) = if op == '#' {
                        (&value[..cut], &value[cut..])
                    } else {
                        (&value[value.len() - cut..], &value[..value.len() - cut])
                    };
                    if glob_match(&pattern, matched) {
                        return Ok(kept.iter().collect());
                    }
                }
                Ok(value.iter().collect())
            }
            _ => anyhow::bail!("bad or unsupported substitution in ${{{name}…}}"),
        }
    }
}

/// Shell pattern match with `*` and `?` (iterative, no exponential backtracking).
fn glob_match(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per stage: `line: FROM from [--platform=p] [AS name] args=… refs=…`.
    fn describe(df: &Dockerfile) -> String {
        let mut out = String::new();
        if let Some(s) = &df.syntax {
            out.push_str(&format!("syntax {s}\n"));
        }
        if df.escape != Escape::Backslash {
            out.push_str("escape `\n");
        }
        let args = |args: &[Arg]| -> String {
            let parts: Vec<String> = args
                .iter()
                .map(|a| match &a.default {
                    Some(d) => format!("{}={d}", a.name),
                    None => a.name.clone(),
                })
                .collect();
            parts.join(" ")
        };
        if !df.global_args.is_empty() {
            out.push_str(&format!("ARG {}\n", args(&df.global_args)));
        }
        for s in &df.stages {
            out.push_str(&format!("{}: FROM {}", s.line, s.from));
            if let Some(p) = &s.platform {
                out.push_str(&format!(" --platform={p}"));
            }
            if let Some(n) = &s.name {
                out.push_str(&format!(" AS {n}"));
            }
            if !s.args.is_empty() {
                out.push_str(&format!(" | ARG {}", args(&s.args)));
            }
            for r in &s.refs {
                let kind = match r.kind {
                    RefKind::Copy => "copy",
                    RefKind::Mount => "mount",
                };
                out.push_str(&format!(" | {}:{kind} {}", r.line, r.name));
            }
            out.push('\n');
        }
        out
    }

    fn check_parse(text: &str, expected: &str) {
        let df = parse(text).unwrap_or_else(|e| panic!("parse failed: {e:#}"));
        assert_eq!(describe(&df).trim(), expected.trim());
    }

    fn check_parse_err(text: &str, expected: &str) {
        match parse(text) {
            Ok(df) => panic!("expected an error, got\n{}", describe(&df)),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(msg.contains(expected), "{msg:?} lacks {expected:?}");
            }
        }
    }

    fn resolve(
        text: &str,
        args: &[(&str, &str)],
        target: Option<&str>,
    ) -> anyhow::Result<Resolved> {
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(text)?.resolve(&args, target)
    }

    fn check(
        text: &str,
        args: &[(&str, &str)],
        target: Option<&str>,
        images: &[&str],
        stages: &[&str],
    ) {
        let r = resolve(text, args, target).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(r.base_images, images);
        assert_eq!(r.stages, stages);
    }

    fn check_warning(text: &str, args: &[(&str, &str)], images: &[&str], warning: &str) {
        let r = resolve(text, args, None).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(r.base_images, images);
        assert!(
            r.warnings.iter().any(|w| w.contains(warning)),
            "{:?} lacks {warning:?}",
            r.warnings
        );
    }

    fn check_err(text: &str, args: &[(&str, &str)], target: Option<&str>, expected: &[&str]) {
        match resolve(text, args, target) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => {
                let msg = format!("{e:#}");
                for part in expected {
                    assert!(msg.contains(part), "{msg:?} lacks {part:?}");
                }
            }
        }
    }

    #[test]
    fn instructions_are_case_insensitive_and_names_lowercased() {
        let text = "from python:3.12 as Builder\nRun pip wheel .\nFrom builder\ncopy --FROM=BUILDER /a /b\n";
        check_parse(
            text,
            "1: FROM python:3.12 AS builder\n3: FROM builder | 4:copy BUILDER",
        );
        check(text, &[], None, &["python:3.12"], &["builder", "1"]);
    }

    #[test]
    fn from_platform_digest_and_registry_port() {
        check_parse(
            "FROM --platform=$BUILDPLATFORM golang:1.22@sha256:abc AS build\n\
             FROM localhost:5000/team/app:1.0\n\
             FROM --platform=linux/amd64 registry.example.com:443/x/y@sha256:0123 as final\n",
            "1: FROM golang:1.22@sha256:abc --platform=$BUILDPLATFORM AS build\n\
             2: FROM localhost:5000/team/app:1.0\n\
             3: FROM registry.example.com:443/x/y@sha256:0123 --platform=linux/amd64 AS final",
        );
        check(
            "FROM --platform=$BUILDPLATFORM golang:1.22@sha256:abc AS build\n\
             FROM localhost:5000/team/app:1.0\n",
            &[],
            None,
            &["golang:1.22@sha256:abc", "localhost:5000/team/app:1.0"],
            &["build", "1"],
        );
    }

    #[test]
    fn continuations_skip_comments_and_blank_lines() {
        check_parse(
            "FROM \\\n  # a comment\n\n    alpine:3.19 \\  \n  AS base\nRUN echo a \\\n# FROM evil\n  b\nFROM base\n",
            "1: FROM alpine:3.19 AS base\n9: FROM base",
        );
        // A comment ending in a backslash does not continue.
        check_parse("# note \\\nFROM alpine\n", "2: FROM alpine");
    }

    #[test]
    fn escape_directive_backtick() {
        let text = "# escape=`\nFROM mcr.microsoft.com/windows/servercore `\n  AS base\nRUN dir c:\\ `\n  && echo FROM x\nFROM base\nCOPY --from=base c:\\a c:\\b\n";
        check_parse(
            text,
            "escape `\n2: FROM mcr.microsoft.com/windows/servercore AS base\n6: FROM base | 7:copy base",
        );
        check(
            text,
            &[],
            None,
            &["mcr.microsoft.com/windows/servercore"],
            &["base", "1"],
        );
        check_parse_err("# escape=x\nFROM a\n", "invalid escape");
    }

    #[test]
    fn parser_directives_only_at_the_top() {
        check_parse(
            "# SYNTAX = docker/dockerfile:1.7\n#escape=\\\nFROM a\n",
            "syntax docker/dockerfile:1.7\n3: FROM a",
        );
        check_parse(
            "# hello\n# syntax=docker/dockerfile:1\nFROM a\n",
            "3: FROM a",
        );
        check_parse("\n# syntax=docker/dockerfile:1\nFROM a\n", "3: FROM a");
        check_parse(
            "# unknown=1\n# syntax=docker/dockerfile:1\nFROM a\n",
            "3: FROM a",
        );
        check_parse("FROM a\n# syntax=docker/dockerfile:1\n", "1: FROM a");
        check_parse(
            "\u{feff}# syntax=df:1\r\nFROM a\r\n",
            "syntax df:1\n2: FROM a",
        );
        check_parse_err("# syntax=a\n# syntax=b\nFROM a\n", "only one");
    }

    #[test]
    fn heredoc_bodies_are_not_instructions() {
        check_parse(
            "FROM alpine\nRUN <<EOF\nFROM evil\nCOPY --from=evil2 / /\nEOF\nRUN cat <<-\"END\" > /x\n\tFROM evil3\n\tEND\nFROM base2\n",
            "1: FROM alpine\n9: FROM base2",
        );
        // Two heredocs on one line, and COPY's heredoc.
        check_parse(
            "FROM a\nRUN <<A 3<<'B' cat\nFROM x\nA\nFROM y\nB\nCOPY <<EOF /etc/conf\nFROM z\nEOF\nFROM b\n",
            "1: FROM a\n10: FROM b",
        );
        // Quoted `<<EOF` and a here-string are not heredocs; a JSON RUN has none either.
        check_parse(
            "FROM a\nRUN echo \"<<EOF\" && cat <<<word\nRUN [\"sh\", \"<<EOF\"]\nFROM b\n",
            "1: FROM a\n4: FROM b",
        );
        // ENV is no heredoc instruction.
        check_parse("FROM a\nENV X=<<EOF\nFROM b\n", "1: FROM a\n3: FROM b");
        check_parse_err("FROM a\nRUN <<EOF\necho\n", "heredoc <<EOF is never closed");
        // A heredoc opened on a continued line.
        check_parse("FROM a\nRUN \\\n  <<EOF\nFROM evil\nEOF\n", "1: FROM a");
    }

    #[test]
    fn args_global_and_in_stages() {
        let text = "ARG A=1\nARG Q=\"x y\" R='z'\nARG B C=2\nFROM a\nARG D E=5\nFROM b\nARG A\n";
        check_parse(
            text,
            "ARG A=1 Q=\"x y\" R='z' B C=2\n4: FROM a | ARG D E=5\n6: FROM b | ARG A",
        );
        let df = parse(text).expect("parses");
        assert_eq!(df.declared_args(), ["A", "Q", "R", "B", "C", "D", "E"]);
        check_parse_err("ARG\nFROM a\n", "ARG needs a name");
    }

    #[test]
    fn copy_from_image_stage_and_index() {
        let text = "FROM node:20 AS assets\nFROM python:3.12\nCOPY --from=assets /a /a\nCOPY --from=0 /b /b\nCOPY --from=nginx:alpine /etc/nginx /n\nCOPY --chown=1:1 --from=ghcr.io/x/y:1 /c /c\nADD --chown=1 x y\n";
        check(
            text,
            &[],
            None,
            &["node:20", "python:3.12", "nginx:alpine", "ghcr.io/x/y:1"],
            &["assets", "1"],
        );
        check_err(
            "FROM a\nCOPY --from=3 / /\n",
            &[],
            None,
            &["line 2", "--from=3", "0 to 0"],
        );
        check_err(
            "FROM a\nFROM b\nCOPY --from=-1 / /\n",
            &[],
            None,
            &["line 3", "no stage -1"],
        );
    }

    #[test]
    fn mount_from_stage_and_image() {
        let text = "FROM scratch AS wheels\nFROM python:3.12-slim\n\
            RUN --mount=type=bind,from=wheels,target=/wheels pip install --no-index -f /wheels x\n\
            RUN --mount=target=/src,source=/,from=\"ghcr.io/o/src:1\",type=bind true\n\
            RUN --mount=type=cache,target=/root/.cache,from=cachebase --network=none true\n\
            RUN --mount=type=tmpfs,target=/t,from=ignored --mount=\"type=bind,from=WHEELS\" true\n\
            RUN --mount=type=secret,id=x true\n";
        check_parse(
            text,
            "1: FROM scratch AS wheels\n2: FROM python:3.12-slim | 3:mount wheels | 4:mount ghcr.io/o/src:1 | 5:mount cachebase | 6:mount WHEELS",
        );
        check(
            text,
            &[],
            None,
            &["python:3.12-slim", "ghcr.io/o/src:1", "cachebase"],
            &["wheels", "1"],
        );
        let df = parse(text).expect("parses");
        assert_eq!(df.stage_names(), ["wheels"]);
    }

    #[test]
    fn parse_errors() {
        check_parse_err("", "no FROM instruction");
        check_parse_err("# just a comment\nRUN echo\n", "no FROM instruction");
        check_parse_err("FROM a\nFROM\n", "line 2: FROM needs an image");
        check_parse_err("FROM a b\n", "line 1: FROM takes");
        check_parse_err("FROM a AS\n", "line 1: FROM takes");
        check_parse_err("FROM a AS 1x\n", "invalid stage name");
        check_parse_err(
            "\n\nFROM --pull=always a\n",
            "line 3: FROM has an unknown flag --pull",
        );
        check_parse_err("FROM --platform a\n", "--platform needs a value");
    }

    #[test]
    fn args_expand_in_from() {
        let text = "ARG REG=docker.io\nARG PY=3.12\nARG VARIANT\nARG TAG=${PY}-slim\n\
            FROM ${REG}/library/python:$TAG AS a\n\
            FROM python:${VARIANT:-bookworm} AS b\n\
            FROM alpine${VARIANT:+-$VARIANT} AS c\n\
            FROM \"node:20\" AS d\n";
        check(
            text,
            &[],
            None,
            &[
                "docker.io/library/python:3.12-slim",
                "python:bookworm",
                "alpine",
                "node:20",
            ],
            &["a", "b", "c", "d"],
        );
        check(
            text,
            &[("PY", "3.11"), ("VARIANT", "edge"), ("UNDECLARED", "x")],
            None,
            &[
                "docker.io/library/python:3.11-slim",
                "python:edge",
                "alpine-edge",
                "node:20",
            ],
            &["a", "b", "c", "d"],
        );
        // A build arg overrides a default, but only for a globally declared ARG.
        check(
            "ARG V=1\nFROM a:$V\n",
            &[("V", "2")],
            None,
            &["a:2"],
            &["0"],
        );
        check_warning(
            "FROM a$V\n",
            &[("V", "2")],
            &["a"],
            "$V is not declared with ARG before the first FROM",
        );
        // An ARG declared inside a stage does not reach FROM.
        check_warning(
            "FROM a\nARG V=1\nFROM b$V\n",
            &[],
            &["a", "b"],
            "$V is not declared",
        );
        // Prefix and suffix removal.
        check(
            "ARG I=python:3.12-slim\nFROM ${I%-slim}\nFROM x${I#*:}\n",
            &[],
            None,
            &["python:3.12", "x3.12-slim"],
            &["0", "1"],
        );
        check_err("ARG I\nFROM ${I:?set I}\n", &[], None, &["line 2", "set I"]);
    }

    #[test]
    fn platform_args_need_no_declaration() {
        check(
            "FROM --platform=$BUILDPLATFORM golang AS build\nFROM --platform=$TARGETPLATFORM alpine\n",
            &[],
            None,
            &["golang", "alpine"],
            &["build", "1"],
        );
        check(
            "FROM img:${TARGETARCH}\n",
            &[("TARGETARCH", "arm64")],
            None,
            &["img:arm64"],
            &["0"],
        );
    }

    #[test]
    fn empty_image_name_is_an_error() {
        check_err(
            "ARG BASE\nFROM $BASE\n",
            &[],
            None,
            &["line 2", "FROM $BASE", "ARG BASE has no value"],
        );
        check_err(
            "FROM ${NOPE}\n",
            &[],
            None,
            &["line 1", "$NOPE is not declared"],
        );
        check_err(
            "ARG BASE=\nFROM ${BASE} AS x\n",
            &[],
            None,
            &["line 2", "ARG BASE"],
        );
        check(
            "ARG BASE\nFROM $BASE\n",
            &[("BASE", "alpine")],
            None,
            &["alpine"],
            &["0"],
        );
    }

    #[test]
    fn target_counts_stages_up_to_it() {
        let text = "FROM python:3.12 AS base\nFROM base AS builder\nRUN x\nFROM node:20 AS web\nFROM base AS final\nCOPY --from=builder /a /a\nFROM nginx AS prod\n";
        check(
            text,
            &[],
            Some("builder"),
            &["python:3.12"],
            &["base", "builder"],
        );
        check(
            text,
            &[],
            Some("WEB"),
            &["python:3.12", "node:20"],
            &["base", "builder", "web"],
        );
        check(
            text,
            &[],
            None,
            &["python:3.12", "node:20", "nginx"],
            &["base", "builder", "web", "final", "prod"],
        );
        check_err(
            text,
            &[],
            Some("test"),
            &["\"test\"", "base, builder, web, final, prod"],
        );
        check_err(
            "FROM a\n",
            &[],
            Some("x"),
            &["\"x\"", "none of its stages has a name"],
        );
        // BuildKit also builds a later stage that a counted stage copies from.
        check(
            "FROM alpine AS app\nCOPY --from=assets /x /x\nFROM node:20 AS assets\nFROM nginx AS other\n",
            &[],
            Some("app"),
            &["alpine", "node:20"],
            &["app", "assets"],
        );
    }

    #[test]
    fn stage_cycles_are_errors() {
        check_err(
            "FROM alpine AS a\nCOPY --from=a / /\n",
            &[],
            None,
            &["cycle", "a (line 1) -> a"],
        );
        check_err(
            "FROM alpine AS a\nCOPY --from=b / /\nFROM a AS b\n",
            &[],
            None,
            &["cycle", "a (line 1)", "b (line 3)"],
        );
        check_err(
            "FROM a AS b\nFROM alpine AS a\nCOPY --from=b / /\n",
            &[],
            None,
            &["cycle", "b (line 1)", "a (line 2)"],
        );
        check_err(
            "FROM alpine AS a\nRUN --mount=from=c,target=/c true\nFROM a AS b\nFROM b AS c\n",
            &[],
            None,
            &["cycle"],
        );
        check_err(
            "FROM alpine\nCOPY --from=0 / /\n",
            &[],
            None,
            &["cycle", "0 (line 1)"],
        );
    }

    #[test]
    fn from_naming_a_later_or_its_own_stage_is_an_image() {
        check_warning(
            "FROM a AS b\nFROM alpine AS a\n",
            &[],
            &["a", "alpine"],
            "BuildKit only looks up earlier stages",
        );
        check(
            "FROM golang AS golang\nFROM golang\n",
            &[],
            None,
            &["golang"],
            &["golang", "1"],
        );
    }

    #[test]
    fn scratch_is_not_an_image() {
        check(
            "FROM scratch AS wheels\nFROM Scratch\nCOPY --from=scratch / /\nCOPY --from=wheels / /\n",
            &[],
            None,
            &[],
            &["wheels", "1"],
        );
    }

    #[test]
    fn syntax_image_comes_first_without_a_warning() {
        let text =
            "# syntax=docker/dockerfile:1.7\nFROM alpine\nFROM alpine\nCOPY --from=alpine / /\n";
        let r = resolve(text, &[], None).expect("resolves");
        assert_eq!(r.base_images, ["docker/dockerfile:1.7", "alpine"]);
        assert_eq!(r.warnings, Vec::<String>::new());
    }

    #[test]
    fn named_contexts_are_not_images_unless_docker_image() {
        let resolve_ctx = |text: &str, contexts: &[(&str, &str)]| -> Vec<String> {
            let contexts = contexts
                .iter()
                .map(|(k, v)| (k.to_string(), NamedContext::from_value(v)))
                .collect();
            parse(text)
                .expect("parses")
                .resolve_with_contexts(&BTreeMap::new(), None, &contexts)
                .unwrap_or_else(|e| panic!("{e:#}"))
                .base_images
        };
        // COPY --from and RUN --mount from= a local context: nothing to pull.
        let text = "FROM golang:1.22\nCOPY --from=protos /p /p\n\
            RUN --mount=type=bind,from=protos,target=/p true\n";
        assert_eq!(
            resolve_ctx(text, &[("protos", "/p/proto")]),
            ["golang:1.22"]
        );
        assert_eq!(resolve_ctx(text, &[]), ["golang:1.22", "protos"]);
        // FROM a context; a docker-image:// context is the image it names.
        assert_eq!(
            resolve_ctx(
                "FROM base\nRUN true\n",
                &[("base", "docker-image://alpine:3.20")]
            ),
            ["alpine:3.20"]
        );
        assert_eq!(
            resolve_ctx("FROM protos AS p\nFROM p\n", &[("protos", "./x")]),
            Vec::<String>::new()
        );
        // A context overrides an image name in its short form.
        assert_eq!(
            resolve_ctx(
                "FROM docker.io/library/alpine:latest\n",
                &[("alpine", "docker-image://mirror.local/alpine:3")]
            ),
            ["mirror.local/alpine:3"]
        );
        // A context named like a stage replaces the stage: its FROM and copies go.
        let text = "FROM node:20 AS assets\nCOPY --from=nginx / /\nFROM python:3.12\n\
            COPY --from=assets /a /a\n";
        assert_eq!(resolve_ctx(text, &[]), ["node:20", "nginx", "python:3.12"]);
        assert_eq!(resolve_ctx(text, &[("assets", "./dist")]), ["python:3.12"]);
        assert_eq!(
            resolve_ctx(text, &[("assets", "docker-image://ghcr.io/o/assets:1")]),
            ["ghcr.io/o/assets:1", "python:3.12"]
        );
    }

    #[test]
    fn context_keys_are_short_image_names() {
        assert_eq!(context_key("docker.io/library/alpine:latest"), "alpine");
        assert_eq!(context_key("alpine:3"), "alpine:3");
        assert_eq!(context_key("docker.io/grafana/grafana"), "grafana/grafana");
        assert_eq!(context_key("ghcr.io/o/x:latest"), "ghcr.io/o/x");
        assert_eq!(context_key("protos"), "protos");
        assert_eq!(context_key("a@sha256:00"), "a@sha256:00");
    }

    #[test]
    fn duplicate_stage_names_use_the_latest() {
        check(
            "FROM a AS x\nFROM b AS x\nFROM x\n",
            &[],
            None,
            &["a", "b"],
            &["x", "x", "2"],
        );
        let df = parse("FROM a AS x\nFROM b AS x\n").expect("parses");
        assert_eq!(df.stage_names(), ["x"]);
    }

    #[test]
    fn expansion_edge_cases() {
        let env: BTreeMap<String, String> = [("A", "1"), ("E", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ex = |w: &str| {
            expand(w, &env, '\\')
                .map(|e| e.value)
                .map_err(|e| e.to_string())
        };
        assert_eq!(ex("$A$B'$A'\"$A\"\\$A"), Ok("1$A1$A".to_string()));
        assert_eq!(
            ex("${E-d}|${E:-d}|${U-d}|${E+p}|${E:+p}|${U+p}"),
            Ok("|d|d|p||".to_string())
        );
        assert_eq!(ex("$"), Ok("$".to_string()));
        assert_eq!(ex("${A:-${U:-x}}"), Ok("1".to_string()));
        assert!(ex("${}").is_err());
        assert!(ex("${A").is_err());
        assert!(ex("'open").is_err());
        assert!(ex("${A/x/y}").is_err());
        let deep = format!("{}x{}", "${A:-".repeat(100), "}".repeat(100));
        assert!(ex(&deep).is_err());
    }

    /// Never panics, whatever the input (a cheap stand-in for the fuzzer).
    #[test]
    fn arbitrary_input_does_not_panic() {
        let pieces = [
            "FROM ",
            "from ",
            "ARG ",
            "COPY ",
            "RUN ",
            " AS ",
            "a",
            "B",
            "--from=",
            "--mount=",
            "type=bind,from=",
            "\"",
            "'",
            "\\",
            "`",
            "\n",
            "\r\n",
            " ",
            "\t",
            "#",
            "# escape=`\n",
            "# syntax=x\n",
            "$",
            "${",
            "}",
            ":-",
            ":+",
            "<<",
            "<<-",
            "EOF",
            "0",
            "-1",
            "=",
            ",",
            "scratch",
            "é",
            "\u{feff}",
            "[",
            "]",
            "%",
            "#",
            "*",
            "?",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            if let Ok(df) = parse(&text) {
                let _ = df.resolve(&BTreeMap::new(), None);
                let _ = df.resolve(&BTreeMap::new(), Some("a"));
            }
        }
    }
}
