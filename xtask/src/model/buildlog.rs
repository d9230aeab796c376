//! What a `--progress=plain` BuildKit log of `docker compose build` says: each step of
//! each stage (`#7 [web builder 2/3] RUN …`), whether it came from the cache, ran, or
//! failed, and what it printed; the Dockerfile line a step comes from; and why the first
//! step that ran missed the cache (`cache-rehearse`). Pure: the caller hands in the log,
//! the Dockerfile's text and the facts it gathered.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::dockerfile;

/// How a step ended in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// `#N CACHED`.
    Cached,
    /// `#N DONE …` without `CACHED`: it ran.
    Ran,
    /// `#N ERROR: …`.
    Failed,
    /// `#N CANCELED`, or the log ends before the step does.
    Unfinished,
}

/// One step of a stage, as BuildKit names it: `[<service> <stage> i/n] <instruction>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    pub service: String,
    /// The stage's name as BuildKit prints it (`builder`, `stage-0`); `None` when the
    /// Dockerfile has one stage.
    pub stage: Option<String>,
    pub index: usize,
    pub total: usize,
    /// `RUN pip install …`, as BuildKit prints it.
    pub instruction: String,
    pub state: StepState,
    /// How long it took, from `#N DONE 1.2s` (when it ran and finished).
    pub secs: Option<f64>,
    /// What the step printed (without the `#N 0.123 ` prefixes), and its error.
    pub output: Vec<String>,
}

impl Step {
    /// `FROM`, `RUN`, `COPY`, … in capitals.
    pub fn keyword(&self) -> String {
        self.instruction
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase()
    }

    /// `[web builder 2/3] RUN …`, as the log shows it.
    pub fn label(&self) -> String {
        match &self.stage {
            Some(stage) => format!(
                "[{} {stage} {}/{}] {}",
                self.service, self.index, self.total, self.instruction
            ),
            None => format!(
                "[{} {}/{}] {}",
                self.service, self.index, self.total, self.instruction
            ),
        }
    }
}

/// A parsed log: the stage steps in the order they first appear, and the other vertices
/// that failed (`[internal] load metadata for …`), with their errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildLog {
    pub steps: Vec<Step>,
    pub other_errors: Vec<(String, String)>,
}

impl BuildLog {
    /// Steps other than `FROM` (which BuildKit reports as done even for a local image).
    pub fn counted(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.keyword() != "FROM")
    }

    /// The first step that ran or failed instead of coming from the cache (not `FROM`).
    pub fn first_ran(&self) -> Option<&Step> {
        self.counted()
            .find(|s| matches!(s.state, StepState::Ran | StepState::Failed))
    }

    /// The step that failed, if one did (`FROM` included: a base image that is missing).
    pub fn failed(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.state == StepState::Failed)
    }
}

/// Splits `#12 rest` into ("12", "rest").
fn vertex_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?;
    let (id, text) = rest.split_once(' ')?;
    id.chars().all(|c| c.is_ascii_digit()).then_some((id, text))
}

/// Whether a vertex's name is a Dockerfile step (`[web builder 2/3] RUN x`), not one of
/// BuildKit's own (`[api internal] load build context`).
pub fn is_step(text: &str) -> bool {
    step_header(text).is_some()
}

/// `[web builder 2/3] RUN x` → (service, stage, index, total, instruction).
fn step_header(text: &str) -> Option<(String, Option<String>, usize, usize, String)> {
    let inner = text.strip_prefix('[')?;
    let (head, instruction) = inner.split_once("] ")?;
    let words: Vec<&str> = head.split_whitespace().collect();
    let (service, stage, count) = match words.as_slice() {
        [service, count] => (*service, None, *count),
        [service, stage, count] => (*service, Some(stage.to_string()), *count),
        _ => return None,
    };
    let (index, total) = count.split_once('/')?;
    Some((
        service.to_string(),
        stage,
        index.parse().ok()?,
        total.parse().ok()?,
        instruction.trim().to_string(),
    ))
}

/// What a line of the log says about a step: its header, or how it went.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `#N [svc i/n] INSTR`: the step is announced (it may still come from the cache).
    Header(String),
    /// `#N 0.123 output`: the step is running.
    Output(String),
    Cached,
    /// `#N DONE 1.2s`: finished, in that many seconds.
    Done(Option<f64>),
    Error(String),
    Canceled,
}

/// The event of one line, with the vertex id it belongs to.
pub fn event(line: &str) -> Option<(String, Event)> {
    let (id, text) = vertex_line(line.trim_end())?;
    let event = if text == "CACHED" {
        Event::Cached
    } else if let Some(rest) = text.strip_prefix("DONE") {
        Event::Done(
            rest.trim()
                .strip_suffix('s')
                .and_then(|t| t.parse::<f64>().ok()),
        )
    } else if text == "CANCELED" || text.starts_with("CANCELED ") {
        Event::Canceled
    } else if let Some(err) = text.strip_prefix("ERROR:") {
        Event::Error(err.trim().to_string())
    } else if text.starts_with("ERROR") {
        Event::Error(text.to_string())
    } else if let Some((time, rest)) = text.split_once(' ') {
        if time.parse::<f64>().is_ok() {
            Event::Output(rest.to_string())
        } else {
            Event::Header(text.to_string())
        }
    } else {
        Event::Header(text.to_string())
    };
    Some((id.to_string(), event))
}

/// Reads a `--progress=plain` log.
pub fn parse(log: &str) -> BuildLog {
    let mut steps: Vec<Step> = Vec::new();
    let mut others: BTreeMap<String, String> = BTreeMap::new();
    let mut other_errors = Vec::new();
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines() {
        let Some((id, event)) = event(line) else {
            continue;
        };
        let index = at.get(&id).copied();
        match (event, index) {
            (Event::Header(text), None) => match step_header(&text) {
                Some((service, stage, index, total, instruction)) => {
                    at.insert(id.clone(), steps.len());
                    steps.push(Step {
                        id,
                        service,
                        stage,
                        index,
                        total,
                        instruction,
                        state: StepState::Unfinished,
                        secs: None,
                        output: Vec::new(),
                    });
                }
                None => {
                    others.entry(id).or_insert(text);
                }
            },
            (Event::Header(_), Some(_)) => {}
            (Event::Output(text), Some(i)) => steps[i].output.push(text),
            (Event::Cached, Some(i)) => steps[i].state = StepState::Cached,
            (Event::Done(secs), Some(i)) if steps[i].state != StepState::Cached => {
                steps[i].state = StepState::Ran;
                steps[i].secs = secs;
            }
            (Event::Error(err), Some(i)) => {
                steps[i].state = StepState::Failed;
                steps[i].output.push(err);
            }
            (Event::Canceled, Some(i)) => steps[i].state = StepState::Unfinished,
            (Event::Error(err), None) => {
                let name = others.get(&id).cloned().unwrap_or_default();
                other_errors.push((name, err));
            }
            _ => {}
        }
    }
    BuildLog {
        steps,
        other_errors,
    }
}

/// The 1-based line of the Dockerfile instruction a step comes from: the instruction of
/// the step's stage whose text is the step's (whitespace and line continuations aside);
/// `None` when none is.
pub fn dockerfile_line(text: &str, step: &Step) -> Option<usize> {
    let parsed = dockerfile::parse(text).ok()?;
    let escape = parsed.escape.char();
    let starts: Vec<usize> = parsed.stages.iter().map(|s| s.line).collect();
    let stage = match &step.stage {
        None if starts.len() == 1 => Some(0),
        None => None,
        Some(name) => parsed
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(name.to_ascii_lowercase().as_str()))
            .or_else(|| name.strip_prefix("stage-").and_then(|n| n.parse().ok())),
    };
    // BuildKit prints FROM with the image's full name: the stage's own line.
    if let (Some(i), "FROM") = (stage, step.keyword().as_str()) {
        return starts.get(i).copied();
    }
    let (from, to) = match stage {
        Some(i) if i < starts.len() => (starts[i], starts.get(i + 1).copied()),
        _ => (1, None),
    };
    let wanted = squash(&step.instruction);
    instructions(text, escape)
        .into_iter()
        .filter(|(line, _)| *line >= from && to.is_none_or(|to| *line < to))
        .find(|(_, instruction)| same_instruction(&squash(instruction), &wanted))
        .map(|(line, _)| line)
}

/// Whitespace runs as one space.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The keyword compared without case, the rest exactly.
fn same_instruction(a: &str, b: &str) -> bool {
    let split = |s: &str| {
        let (k, rest) = s.split_once(' ').unwrap_or((s, ""));
        (k.to_ascii_uppercase(), rest.to_string())
    };
    split(a) == split(b)
}

/// The Dockerfile's instructions with their first line, continuation lines joined and
/// comment lines inside them dropped (as BuildKit prints them).
fn instructions(text: &str, escape: char) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if current.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (body, continues) = match line.strip_suffix(escape) {
            Some(body) => (body, true),
            None => (line, false),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        entry.1.push_str(body);
        entry.1.push(' ');
        if !continues {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

/// What the rehearsal knows about a service besides its log.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Files of the build context that changed since the export, relative to the context
    /// (` (added)` / ` (removed)` suffixed); the Dockerfile included.
    pub changed_files: Vec<String>,
    /// Build args whose value differs from the export's (`NAME: export → now`).
    pub changed_args: Vec<String>,
    /// Base images the service needs that the bundle does not carry.
    pub missing_base_images: Vec<String>,
}

/// Why the first step that ran missed the cache (or why the build failed before any did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Reason {
    /// The step copies files that changed since the export.
    ChangedContextFile(Vec<String>),
    /// A build arg differs from the export's.
    DifferentBuildArg(Vec<String>),
    /// A base image is not in the bundle (or not loaded): BuildKit tried to pull it.
    MissingBaseImage(String),
    /// The step tried to reach the network (the line that says so).
    NetworkNeeded(String),
    /// None of the above: the bundle's cache does not have this step.
    NotInCache,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::ChangedContextFile(files) => {
                write!(f, "changed context file: {}", files.join(", "))
            }
            Reason::DifferentBuildArg(args) => {
                write!(f, "different build arg: {}", args.join(", "))
            }
            Reason::MissingBaseImage(image) => write!(f, "missing base image {image}"),
            Reason::NetworkNeeded(line) => write!(f, "network needed: {line}"),
            Reason::NotInCache => write!(
                f,
                "the bundle's cache has no such step (same inputs as the export, yet not cached)"
            ),
        }
    }
}

/// What tools print when they cannot reach the network (lower case).
const NETWORK_SIGNS: [&str; 16] = [
    "bad address",
    // no name server answers in a namespace with only loopback: lookups time out
    "timed out",
    "network is unreachable",
    "temporary failure in name resolution",
    "name or service not known",
    "could not resolve",
    "failed to establish a new connection",
    "no matching distribution found",
    "enotcached",
    "enotfound",
    "eai_again",
    "getaddrinfo",
    "no route to host",
    "dial tcp",
    "failed to resolve source metadata",
    "could not connect",
];

/// The first line of `lines` that says the network was needed.
pub fn network_sign<'a>(lines: impl IntoIterator<Item = &'a String>) -> Option<String> {
    lines.into_iter().find_map(|line| {
        let lower = line.to_ascii_lowercase();
        NETWORK_SIGNS
            .iter()
            .any(|sign| lower.contains(sign))
            .then(|| line.trim().to_string())
    })
}

/// The reason for `step` (the first that ran, if any) from the log and the facts, most
/// specific first: a base image that could not be found; for a COPY or ADD, the changed
/// files it copies; a changed build arg; a changed file (a RUN reads it through a mount);
/// the network the step reached for; else the cache lacks it.
pub fn reason(log: &BuildLog, step: Option<&Step>, facts: &Facts) -> Option<Reason> {
    if let Some(image) = missing_base_image(log, facts) {
        return Some(Reason::MissingBaseImage(image));
    }
    let step = step?;
    let keyword = step.keyword();
    if matches!(keyword.as_str(), "COPY" | "ADD") && !step.instruction.contains("--from=") {
        let copied = copied_files(&step.instruction, &facts.changed_files);
        if !copied.is_empty() {
            return Some(Reason::ChangedContextFile(copied));
        }
    }
    if !facts.changed_args.is_empty() {
        return Some(Reason::DifferentBuildArg(facts.changed_args.clone()));
    }
    if let Some(line) = network_sign(&step.output) {
        return Some(Reason::NetworkNeeded(line));
    }
    if !facts.changed_files.is_empty() {
        return Some(Reason::ChangedContextFile(facts.changed_files.clone()));
    }
    Some(Reason::NotInCache)
}

/// A base image that the build could not find: a failed `FROM` or metadata lookup, or
/// one the facts say the bundle lacks (when the build did fail on it).
fn missing_base_image(log: &BuildLog, facts: &Facts) -> Option<String> {
    for (name, _) in &log.other_errors {
        // `[internal] load …`, or `[api internal] load …` as compose names it
        if let Some((_, image)) = name.split_once("internal] load metadata for ") {
            return Some(image.trim().to_string());
        }
    }
    if let Some(failed) = log.failed().filter(|f| f.keyword() == "FROM") {
        let image = failed.instruction.split_whitespace().nth(1).unwrap_or("");
        return Some(image.split('@').next().unwrap_or(image).to_string());
    }
    // No stage got past its FROM: the image the bundle lacks is the one.
    let failed = log.failed().is_some() || !log.other_errors.is_empty();
    let no_step_ran = log.counted().all(|s| s.state == StepState::Unfinished);
    match (failed && no_step_ran, facts.missing_base_images.first()) {
        (true, Some(image)) => Some(image.clone()),
        _ => None,
    }
}

/// The changed files (context-relative) that a `COPY`/`ADD` instruction's sources take.
fn copied_files(instruction: &str, changed: &[String]) -> Vec<String> {
    let words: Vec<&str> = instruction
        .split_whitespace()
        .skip(1)
        .filter(|w| !w.starts_with("--"))
        .collect();
    let Some((_, sources)) = words.split_last() else {
        return Vec::new();
    };
    changed
        .iter()
        .filter(|file| {
            let path = file.split(" (").next().unwrap_or(file);
            sources.iter().any(|source| source_takes(source, path))
        })
        .cloned()
        .collect()
}

/// Whether the COPY source `source` (a path, a folder, `.`, or a `*`/`?` pattern) takes
/// the context file `path`.
fn source_takes(source: &str, path: &str) -> bool {
    let source = source.trim_matches('"').trim_start_matches("./");
    let source = source.trim_end_matches('/');
    if source.is_empty() || source == "." {
        return true;
    }
    path == source || path.starts_with(&format!("{source}/")) || glob(source, path)
}

/// `*` (not across `/`) and `?` matching, as Go's filepath.Match does for COPY.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => {
                go(&p[1..], t) || (t.first().is_some_and(|c| *c != '/') && go(p, &t[1..]))
            }
            (Some('?'), Some(c)) if *c != '/' => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    go(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_ran_has_its_time() {
        let log = "#5 [api 2/3] RUN sleep 2\n#5 0.2 running\n#5 DONE 2.1s\n\
                   #6 [api 3/3] COPY a /a\n#6 CACHED\n";
        let parsed = parse(log);
        assert_eq!(parsed.steps[0].state, StepState::Ran);
        assert_eq!(parsed.steps[0].secs, Some(2.1));
        assert_eq!(parsed.steps[1].state, StepState::Cached);
        assert_eq!(parsed.steps[1].secs, None);
    }

    const LOG: &str = "\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#4 [api 1/4] FROM docker.io/library/busybox:latest
#4 DONE 0.0s
#5 [api 2/4] RUN sleep 2 && echo api-ready > /api.txt
#5 CACHED
#6 [api 3/4] COPY deps.txt /deps.txt
#6 DONE 0.1s
#7 [api 4/4] RUN grep -q extra /deps.txt && nc -w 2 pypi.org 443
#7 0.512 nc: bad address 'pypi.org'
#7 0.513 Temporary failure in name resolution
#7 ERROR: process \"/bin/sh -c grep -q extra /deps.txt && nc -w 2 pypi.org 443\" did not complete successfully: exit code: 1
";

    const DOCKERFILE: &str = "\
FROM busybox:latest
RUN sleep 2 && \\
    echo api-ready > /api.txt
# the inputs
COPY deps.txt /deps.txt
RUN grep -q extra /deps.txt && nc -w 2 pypi.org 443
";

    #[test]
    fn steps_are_read_with_how_they_ended() {
        let log = parse(LOG);
        let states: Vec<(usize, StepState)> =
            log.steps.iter().map(|s| (s.index, s.state)).collect();
        assert_eq!(
            states,
            vec![
                (1, StepState::Ran),
                (2, StepState::Cached),
                (3, StepState::Ran),
                (4, StepState::Failed)
            ]
        );
        assert_eq!(log.counted().count(), 3);
        let first = log.first_ran().unwrap();
        assert_eq!(first.label(), "[api 3/4] COPY deps.txt /deps.txt");
        assert_eq!(log.failed().unwrap().index, 4);
        assert_eq!(log.failed().unwrap().output.len(), 3);
    }

    #[test]
    fn a_step_is_found_on_its_dockerfile_line() {
        let log = parse(LOG);
        let lines: Vec<Option<usize>> = log
            .steps
            .iter()
            .map(|s| dockerfile_line(DOCKERFILE, s))
            .collect();
        assert_eq!(lines, vec![Some(1), Some(2), Some(5), Some(6)]);
        let multi = "FROM busybox AS builder\nRUN echo a\nFROM busybox AS final\nRUN echo a\n";
        let step = parse("#3 [web final 2/2] RUN echo a\n#3 DONE 0.1s\n").steps[0].clone();
        assert_eq!(dockerfile_line(multi, &step), Some(4));
        let step = parse("#3 [web stage-0 2/2] RUN echo a\n").steps[0].clone();
        assert_eq!(dockerfile_line(multi, &step), Some(2));
    }

    #[test]
    fn the_reason_names_what_changed() {
        let log = parse(LOG);
        let facts = Facts {
            changed_files: vec!["deps.txt".into(), "other.txt (added)".into()],
            ..Facts::default()
        };
        assert_eq!(
            reason(&log, log.first_ran(), &facts),
            Some(Reason::ChangedContextFile(vec!["deps.txt".into()]))
        );
        // The failed step reached for the network.
        assert_eq!(
            reason(&log, log.failed(), &Facts::default()),
            Some(Reason::NetworkNeeded("nc: bad address 'pypi.org'".into()))
        );
        let args = Facts {
            changed_args: vec!["VERSION: 1 → 2".into()],
            ..Facts::default()
        };
        let run = parse("#5 [api 2/2] RUN echo $VERSION\n#5 DONE 0.1s\n");
        assert_eq!(
            reason(&run, run.first_ran(), &args),
            Some(Reason::DifferentBuildArg(vec!["VERSION: 1 → 2".into()]))
        );
        assert_eq!(
            reason(&run, run.first_ran(), &Facts::default()),
            Some(Reason::NotInCache)
        );
        let missing = parse(
            "#2 [api internal] load metadata for docker.io/library/python:3.12-slim\n\
             #2 ERROR: failed to do request: dial tcp: lookup registry-1.docker.io: no such host\n",
        );
        assert_eq!(
            reason(&missing, None, &Facts::default()),
            Some(Reason::MissingBaseImage(
                "docker.io/library/python:3.12-slim".into()
            ))
        );
    }

    #[test]
    fn copy_sources_take_their_files() {
        let changed = vec![
            "requirements.txt".to_string(),
            "src/app.py".into(),
            "README.md (removed)".into(),
        ];
        assert_eq!(
            copied_files("COPY requirements.txt .", &changed),
            vec!["requirements.txt"]
        );
        assert_eq!(
            copied_files("COPY ./src /app/src", &changed),
            vec!["src/app.py"]
        );
        assert_eq!(
            copied_files("COPY *.md /doc/", &changed),
            vec!["README.md (removed)"]
        );
        assert_eq!(copied_files("COPY --chown=1 . /app", &changed).len(), 3);
        assert!(copied_files("COPY package.json /app/", &changed).is_empty());
    }
}
