//! The report: the table, docs/benchmarks.md, and the throughput chart (SVG). No I/O.

use std::fmt::Write as _;

use super::machine::Machine;
use super::stats::Row;
use super::{profile, Point, Report, MIB};
use crate::bundle::human_bytes;

pub(super) fn render_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| Figure | Ours: median [min–max] | Baseline: median [min–max] | Ratio | Target | Met? |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in rows {
        let baseline = match &row.baseline {
            Some((name, stat)) => format!("{} ({name})", stat.render()),
            None => "—".into(),
        };
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {baseline} | {} | {} | {met} |",
            row.figure,
            row.ours.render(),
            row.ratio,
            row.target
        );
    }
    out
}

pub(super) fn render_markdown(
    report: &Report,
    m: &Machine,
    runs: usize,
    size: u64,
    quick: bool,
    chart: Option<&str>,
) -> String {
    let mut s = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench{}` on {}. A figure shown with a range is the median of \
         {runs} run(s) [min–max]; figure 0 and the bundle sizes are one measurement, each peak \
         RSS is the highest of its runs, and the throughput table below is one run per size; \
         ours and the baseline ran in turns on the same machine (with more than one run, \
         each once untimed first, so that neither pays for the settling of the phase \
         before), each command on private Docker engines started for the run (containerd \
         image store, data root on the disk below). Ours is the `xtask` binary users run (`cargo xtask` = \
         target/debug/xtask, a {} build in which xtask itself is compiled at opt-level 1, \
         and sha2, zstd, flate2, tar, serde_json and serde_yaml at 3). Synthetic image: {}.\n",
        if quick { " --quick" } else { "" },
        m.date,
        profile(),
        human_bytes(size)
    );
    s.push_str(&render_table(&report.rows));
    if let Some(chart) = chart {
        let _ = writeln!(
            s,
            "\n## Throughput against bundle size\n\n![Throughput against bundle size]({chart})\n\n\
             One run of each command per size (the largest size: the medians above).\n"
        );
        s.push_str(&render_points(&report.points));
    }
    s.push_str("\n## Notes\n\n");
    for note in &report.notes {
        let _ = writeln!(s, "- {note}");
    }
    let _ = writeln!(
        s,
        "\n## Machine\n\n\
         | | |\n|---|---|\n\
         | CPU | {} ({}) |\n| Cores | {} |\n| RAM | {} |\n\
         | Disk (work dir, data roots) | `{}` |\n| Kernel | {} |\n\
         | Docker Engine | {} |\n| buildx | {} |\n| Compose | {} |\n\
         | Load average at the end | {} |\n| Date | {} |",
        m.cpu,
        m.features,
        m.cores,
        m.ram,
        m.disk.split_whitespace().collect::<Vec<_>>().join(" "),
        m.kernel,
        m.docker,
        m.buildx,
        m.compose,
        m.load,
        m.date
    );
    s
}

/// Throughput (MB/s) against bundle size, as an SVG line chart: ours solid, the bare
/// engine command dashed in the same colour.
pub(super) fn render_chart(points: &[Point]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 420.0;
    let (left, right, top, bottom) = (70.0, 200.0, 40.0, 50.0);
    // cache-verify (many times faster than the others) would flatten them: it is in the
    // table below.
    type Series = (&'static str, &'static str, bool, fn(&Point) -> f64);
    let series: [Series; 4] = [
        ("cache-export", "#1f77b4", false, |p| p.export),
        ("docker save -o + sync", "#1f77b4", true, |p| p.save),
        ("cache-import", "#d62728", false, |p| p.import),
        ("docker load -i", "#d62728", true, |p| p.load),
    ];
    let mb = |v: f64| v / 1e6;
    let max_x = points.iter().map(|p| p.bytes).max().unwrap_or(1).max(1) as f64;
    let max_y = points
        .iter()
        .flat_map(|p| series.iter().map(move |s| mb((s.3)(p))))
        .fold(1.0_f64, f64::max);
    let step_y = nice_step(max_y / 5.0);
    let top_y = (max_y / step_y).ceil() * step_y;
    let step_x = nice_step(max_x / MIB as f64 / 5.0);
    let (pw, ph) = (W - left - right, H - top - bottom);
    let x = |bytes: f64| left + pw * bytes / max_x;
    let y = |v: f64| top + ph * (1.0 - v / top_y);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">Throughput against bundle size \
         (synthetic image, MB/s, higher is better)</text>\n"
    );
    let mut v = 0.0;
    while v <= top_y + step_y / 2.0 {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            left + pw,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0
        );
        v += step_y;
    }
    let mut m = step_x;
    while m * (MIB as f64) <= max_x * 1.0001 {
        let px = x(m * MIB as f64);
        let label = if m >= 1024.0 {
            format!("{:.1} GiB", m / 1024.0)
        } else {
            format!("{m:.0} MiB")
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#eee\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            top + ph,
            top + ph + 18.0
        );
        m += step_x;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">bundle size</text>\
         <line x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"black\"/>\
         <line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
        left + pw / 2.0,
        H - 10.0,
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    for (i, (label, colour, dashed, value)) in series.iter().enumerate() {
        let dash = if *dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.bytes as f64), y(mb(value(p)))))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
        for p in points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                x(p.bytes as f64),
                y(mb(value(p)))
            );
        }
        let ly = top + 10.0 + 22.0 * i as f64;
        let lx = left + pw + 16.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" \
             stroke-width=\"2\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            lx + 28.0,
            lx + 34.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}

/// The chart's points as a table, for readers without the picture.
pub(super) fn render_points(points: &[Point]) -> String {
    let mut s = String::from(
        "| Bundle | cache-export | docker save -o + sync | cache-import | docker load -i | cache-verify |\n\
         |---|---|---|---|---|---|\n",
    );
    for p in points {
        let _ = writeln!(
            s,
            "| {} | {:.0} MB/s | {:.0} MB/s | {:.0} MB/s | {:.0} MB/s | {:.0} MB/s |",
            human_bytes(p.bytes),
            p.export / 1e6,
            p.save / 1e6,
            p.import / 1e6,
            p.load / 1e6,
            p.verify / 1e6
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_every_series_and_point() {
        let points: Vec<Point> = [256u64, 512, 1024, 2048]
            .iter()
            .map(|&m| Point {
                bytes: m * MIB,
                export: 60e6,
                save: 66e6,
                import: 70e6,
                load: 80e6,
                verify: 1.1e9,
            })
            .collect();
        let svg = render_chart(&points);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 16);
        // y up to 80 MB/s in steps of 20; x up to 2 GiB in steps of 500 MiB.
        assert!(
            svg.contains(">80</text>") && svg.contains("2.0 GiB"),
            "{svg}"
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            (nice_step(0.7), nice_step(3.0), nice_step(240.0)),
            (1.0, 5.0, 500.0)
        );
        assert!(render_points(&points).contains("| 2.0 GiB | 60 MB/s | 66 MB/s |"));
    }
}
