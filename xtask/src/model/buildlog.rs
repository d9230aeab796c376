//! BuildKit's `--progress plain` log, read back: which build steps came from the cache,
//! which ran, and how long each took. Each vertex of the build prints `#N [what] STEP`
//! once, then lines of output (`#N 0.42 …`), and ends with `#N CACHED`, `#N DONE 1.2s` or
//! `#N ERROR: …`.

/// One step of a build (a Dockerfile instruction of a service's build).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// As BuildKit names it, e.g. `[backend deps 3/5] RUN pip install …`.
    pub name: String,
    pub cached: bool,
    /// The time it took, when it ran and finished.
    pub secs: Option<f64>,
}

/// The steps of `log` in the order they started: the Dockerfile instructions (`FROM`,
/// `RUN`, `COPY`, `ADD`, `WORKDIR`…) of every service; BuildKit's own vertices (loading
/// the Dockerfile, the context, metadata, exporting) are left out. A header printed again
/// while its vertex runs is the same step; after it ended (a second `docker compose build`
/// in the same log), a new one.
pub fn steps(log: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // vertex id → index in `steps` of its latest step
    let mut open: std::collections::BTreeMap<&str, usize> = Default::default();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, text)) = rest.split_once(' ') else {
            continue;
        };
        if !id.bytes().all(|b| b.is_ascii_digit()) || id.is_empty() {
            continue;
        }
        let text = text.trim_end();
        if text.starts_with('[') {
            let Some(close) = text.find("] ") else {
                continue;
            };
            let (what, instruction) = (&text[1..close], &text[close + 2..]);
            if what.starts_with("internal") || what.contains(" internal") {
                continue;
            }
            // BuildKit prints a vertex's header again when its output resumes after
            // another's; the same header after the vertex ended is a new build's step.
            let known = open.get(id).is_some_and(|&i| {
                steps[i].name == text && !steps[i].cached && steps[i].secs.is_none()
            });
            if !known && instruction.split(' ').next().is_some_and(is_instruction) {
                open.insert(id, steps.len());
                steps.push(Step {
                    name: text.to_string(),
                    cached: false,
                    secs: None,
                });
            }
        } else if let Some(&i) = open.get(id) {
            if text == "CACHED" {
                steps[i].cached = true;
            } else if let Some(secs) = text
                .strip_prefix("DONE ")
                .and_then(|t| t.strip_suffix('s'))
                .and_then(|t| t.parse::<f64>().ok())
            {
                steps[i].secs = Some(secs);
            }
        }
    }
    steps
}

fn is_instruction(word: &str) -> bool {
    matches!(
        word,
        "FROM" | "RUN" | "COPY" | "ADD" | "WORKDIR" | "ENV" | "ARG" | "USER" | "LINK"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#5 [backend 1/4] FROM docker.io/library/python:3.12-slim
#5 DONE 0.1s
#6 [backend 2/4] RUN --mount=from=wheels pip install -r requirements.txt
#6 CACHED
#7 [backend 3/4] COPY app ./app
#7 DONE 0.3s
#8 [frontend builder 6/7] RUN npm run build
#8 0.512 > next build
#8 [frontend builder 6/7] RUN npm run build
#8 41.25 done
#8 DONE 41.3s
#9 [frontend] exporting to image
#9 DONE 1.0s
";

    #[test]
    fn steps_with_cache_hits_and_times() {
        let steps = steps(LOG);
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "[backend 1/4] FROM docker.io/library/python:3.12-slim",
                "[backend 2/4] RUN --mount=from=wheels pip install -r requirements.txt",
                "[backend 3/4] COPY app ./app",
                "[frontend builder 6/7] RUN npm run build",
            ]
        );
        assert!(steps[1].cached);
        assert_eq!(steps[1].secs, None);
        assert!(!steps[2].cached);
        assert_eq!(steps[2].secs, Some(0.3));
        assert_eq!(steps[3].secs, Some(41.3));
    }

    #[test]
    fn a_second_build_in_the_same_log_has_its_own_steps() {
        let twice = format!("{LOG}{}", LOG.replace("#6 CACHED", "#6 DONE 2.0s"));
        let steps = steps(&twice);
        assert_eq!(steps.len(), 8);
        assert!(steps[1].cached);
        assert!(!steps[5].cached);
        assert_eq!(steps[5].secs, Some(2.0));
    }
}
