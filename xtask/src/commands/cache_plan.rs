//! `cargo xtask cache-plan`: what an export would contain, for people or (`--json`) tools.
use std::process::ExitCode;

use xshell::Shell;

use crate::model::plan::Plan;
use crate::project::ProjectArgs;
use crate::project::RealFs;

/// Show what an export would contain: build services, base images, dependency manifests
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  cargo xtask cache-plan\n  \
    cargo xtask cache-plan --json | jq -r '.base_images[]'\n  \
    cargo xtask -f deploy/compose.yaml cache-plan")]
pub struct Args {
    /// Print the plan as JSON on stdout (an interface: see README)
    #[arg(long)]
    pub json: bool,
}

impl Args {
    pub fn run(self, sh: &Shell, project_args: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let project = project_args.load(sh)?;
        let plan = Plan::build(&project.model, &project.name, &RealFs)?;
        for warning in &plan.warnings {
            eprintln!("warning: {warning}");
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!("{}", render(&plan, &project.dir));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The plan as a readable table; paths relative to the compose file's folder.
pub fn render(plan: &Plan, dir: &camino::Utf8Path) -> String {
    let rel = |p: &camino::Utf8Path| -> String {
        match p.strip_prefix(dir) {
            Ok(r) if r.as_str().is_empty() => ".".to_string(),
            Ok(r) => format!("./{r}"),
            Err(_) => p.to_string(),
        }
    };
    let mut s = format!("Project {} ({})\n\n", plan.project_name, plan.compose_file);
    let mut rows = vec![[
        "SERVICE".to_string(),
        "CONTEXT".to_string(),
        "DOCKERFILE".to_string(),
        "TARGET".to_string(),
        "BASE IMAGES".to_string(),
        "DEPENDENCIES".to_string(),
    ]];
    for b in &plan.build_services {
        let deps: Vec<String> = b
            .python_requirements
            .iter()
            .chain(&b.node_lockfiles)
            .map(|p| rel(p))
            .collect();
        rows.push([
            b.name.clone(),
            rel(&b.context),
            b.dockerfile
                .as_deref()
                .map_or_else(|| "(inline)".to_string(), &rel),
            b.target.clone().unwrap_or_else(|| "-".into()),
            b.base_images.join(", "),
            if deps.is_empty() {
                "-".into()
            } else {
                deps.join(", ")
            },
        ]);
    }
    for r in &plan.remote_build_services {
        rows.push([
            r.name.clone(),
            r.context.clone(),
            "-".into(),
            "-".into(),
            "(remote context: not exported)".into(),
            "-".into(),
        ]);
    }
    for i in &plan.image_services {
        rows.push([
            i.name.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            i.image.clone(),
            "-".into(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        s.push_str(line.join("   ").trim_end());
        s.push('\n');
    }
    s.push_str(&format!("\nBase images ({}):\n", plan.base_images.len()));
    for image in &plan.base_images {
        s.push_str(&format!("  {image}\n"));
    }
    s
}
