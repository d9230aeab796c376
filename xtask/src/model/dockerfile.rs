//! Dockerfiles: stages, base images, stage references (placeholder).
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dockerfile {
    /// The `# syntax=` directive, if any: an image BuildKit needs offline.
    pub syntax: Option<String>,
    pub global_args: Vec<Arg>,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// Images the build needs, in file order, without duplicates (`# syntax=` first).
    pub base_images: Vec<String>,
    /// Names (or indexes as strings) of the stages that are built, in file order.
    pub stages: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn parse(text: &str) -> anyhow::Result<Dockerfile> {
    let _ = text;
    anyhow::bail!("Dockerfile model: not yet implemented")
}

impl Dockerfile {
    /// The images a build with these args and this target needs.
    pub fn resolve(
        &self,
        build_args: &BTreeMap<String, String>,
        target: Option<&str>,
    ) -> anyhow::Result<Resolved> {
        let _ = (build_args, target);
        anyhow::bail!("Dockerfile model: not yet implemented")
    }
}
