//! The benchmark's figures in order, and figure 7 (the quick commands).

use xshell::cmd;

use super::app::measure_app;
use super::files::write_fifty_services;
use super::images::measure_images;
use super::stats::{Row, Stat, Target, Unit};
use super::timing::{alternate, series, timed};
use super::{Bench, Figures, Report};

/// Every figure: the app stack's (when asked for), the synthetic image's, the quick
/// commands'; the rows sorted by figure.
pub(super) fn measure_all(
    b: &Bench,
    size: u64,
    with_app: bool,
    figures: &Figures,
) -> anyhow::Result<Report> {
    let mut report = Report {
        rows: Vec::new(),
        notes: Vec::new(),
        points: Vec::new(),
    };
    report.notes.push(format!(
        "Load average when the benchmark started: {} (other work on the machine shows here).",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    ));
    let proof = &b.offline_proof;
    report.notes.push(format!(
        "The target engine runs in a network namespace with only loopback and proved it \
         before the figures: `docker pull` failed ({}), and neither the engine's network \
         namespace nor a container could connect to {}, on which the host answered.",
        first_line(&proof.pull_error),
        proof.target,
    ));
    // The app first: it needs the network (wheelhouse, npm cache) and fails earliest.
    if with_app {
        if let Err(err) = measure_app(b, figures, &mut report) {
            eprintln!("error: the app stack's figures failed: {err:#}");
            report
                .notes
                .push(format!("The app stack's figures failed: {err:#}"));
        }
    } else {
        report.notes.push(
            "The application stack (figures 0, 2, 4, 8, 9, 10) was left out (--quick, --no-app, \
             or --figures without them)."
                .into(),
        );
    }
    if figures.wants_any(&super::IMAGE_FIGURES) {
        measure_images(b, size, &mut report)?;
    }
    if figures.wants_any(&super::COMMAND_FIGURES) {
        measure_quick_commands(b, &mut report)?;
    }
    // by figure number ("10." after "9."), then by name as before
    let number = |figure: &str| {
        figure
            .split_once(". ")
            .and_then(|(n, _)| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    };
    report
        .rows
        .sort_by(|a, b| (number(&a.figure), &a.figure).cmp(&(number(&b.figure), &b.figure)));
    Ok(report)
}

/// Figure 7: `cache-plan` and `patch-compose --check` on 50 services, against
/// `docker compose config --quiet` of the same file.
fn measure_quick_commands(b: &Bench, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("   Measuring cache-plan and patch-compose --check on 50 services");
    let (esh, log, xtask) = (&b.esh, &b.log, &b.xtask);
    let fifty = b.work.join("fifty");
    write_fifty_services(&fifty)?;
    let fifty_compose = fifty.join("compose.yaml");
    let no_bundle = fifty.join("no-bundle");
    let quick_runs = (b.runs * 5).max(5);
    let (plan, config) = alternate(
        quick_runs,
        || {
            timed(
                cmd!(esh, "{xtask} -f {fifty_compose} cache-plan"),
                log,
                &[0],
            )
        },
        || {
            let config = ["compose", "-f", fifty_compose.as_str(), "config", "--quiet"];
            timed(b.export.docker(esh, config), log, &[0])
        },
    )?;
    let mut patch = Vec::new();
    for _ in 0..quick_runs {
        patch.push(timed(
            cmd!(esh, "{xtask} -f {fifty_compose} patch-compose --check --strategy local --bundle {no_bundle}"),
            log,
            &[0, 1],
        )?);
    }
    let config_stat = Stat::of(&series(&config), Unit::Millis);
    report.rows.push(Row::new(
        "7. `cache-plan`, 50 services (whole process)",
        Stat::of(&series(&plan), Unit::Millis),
        Some(("docker compose config -q", config_stat.clone())),
        Target::AtMost(0.050),
    ));
    report.rows.push(Row::new(
        "7. `patch-compose --check`, 50 services (whole process)",
        Stat::of(&series(&patch), Unit::Millis),
        Some(("docker compose config -q", config_stat)),
        Target::AtMost(0.050),
    ));
    Ok(())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("no message")
}
