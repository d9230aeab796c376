//! Medians, ranges, targets and table rows: no I/O.

use crate::bundle::human_bytes;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Unit {
    Secs,
    Millis,
    /// Bytes per second.
    Rate,
    Bytes,
}

/// Median and range of one side of a figure, in its unit.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stat {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) unit: Unit,
}

impl Stat {
    pub(super) fn of(values: &[f64], unit: Unit) -> Stat {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stat {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            unit,
        }
    }

    pub(super) fn render(&self) -> String {
        let one = |v: f64| format_value(v, self.unit);
        if self.min == self.max {
            one(self.median)
        } else {
            format!("{} [{}–{}]", one(self.median), one(self.min), one(self.max))
        }
    }
}

pub(super) fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Secs if v < 10.0 => format!("{v:.2} s"),
        Unit::Secs => format!("{v:.1} s"),
        Unit::Millis => format!("{:.1} ms", v * 1000.0),
        Unit::Rate => format!("{:.2} GB/s", v / 1e9),
        Unit::Bytes => human_bytes(v as u64),
    }
}

/// What a figure must reach.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// ours / baseline at most this.
    RatioAtMost(f64),
    /// baseline / ours at least this ("N× faster").
    SpeedupAtLeast(f64),
    /// ours' median at most this (in the unit's base: seconds, bytes).
    AtMost(f64),
    /// ours' median at least this.
    AtLeast(f64),
    /// Shown for information.
    None,
}

#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) figure: String,
    pub(super) ours: Stat,
    pub(super) baseline: Option<(String, Stat)>,
    pub(super) ratio: String,
    pub(super) target: String,
    pub(super) met: Option<bool>,
}

impl Row {
    pub(super) fn new(
        figure: &str,
        ours: Stat,
        baseline: Option<(&str, Stat)>,
        target: Target,
    ) -> Row {
        let base = baseline.as_ref().map(|(_, s)| s.median);
        let ratio_of = |ours: f64, base: f64| ours / base;
        let (ratio, target_text, met) = match (target, base) {
            (Target::RatioAtMost(max), Some(b)) => {
                let r = ratio_of(ours.median, b);
                (format!("{r:.2}×"), format!("≤ {max:.2}×"), Some(r <= max))
            }
            (Target::SpeedupAtLeast(min), Some(b)) => {
                let r = ratio_of(b, ours.median);
                // A target such as 1.3× is shown, and the ratio beside it, to the
                // hundredth: 1.26× must not read as the 1.3× it misses.
                let (ratio, target) = match min.fract() == 0.0 {
                    true => (format!("{r:.1}"), format!("{min:.0}")),
                    false => (format!("{r:.2}"), format!("{min:.1}")),
                };
                (
                    format!("{ratio}× faster"),
                    format!("≥ {target}× faster"),
                    Some(r >= min),
                )
            }
            (Target::AtMost(max), b) => (
                plain_ratio(ours.median, b, ours.unit),
                format!("< {}", format_value(max, ours.unit)),
                Some(ours.median < max),
            ),
            (Target::AtLeast(min), b) => (
                plain_ratio(ours.median, b, ours.unit),
                format!("≥ {}", format_value(min, ours.unit)),
                Some(ours.median >= min),
            ),
            (_, b) => (plain_ratio(ours.median, b, ours.unit), "—".into(), None),
        };
        Row {
            figure: figure.to_string(),
            ours,
            baseline: baseline.map(|(name, s)| (name.to_string(), s)),
            ratio,
            target: target_text,
            met,
        }
    }
}

/// ours / baseline, or "N× faster" for rates, for rows whose target is absolute.
fn plain_ratio(ours: f64, base: Option<f64>, unit: Unit) -> String {
    match base {
        None => "—".into(),
        Some(b) if unit == Unit::Rate => format!("{:.1}× faster", ours / b),
        Some(b) => format!("{:.2}×", ours / b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        let s = Stat::of(&[3.0, 1.0, 2.0], Unit::Secs);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(s.render(), "2.00 s [1.00 s–3.00 s]");
        let s = Stat::of(&[4.0, 1.0, 2.0, 3.0], Unit::Secs);
        assert_eq!(s.median, 2.5);
        assert_eq!(Stat::of(&[0.0123], Unit::Millis).render(), "12.3 ms");
    }

    #[test]
    fn targets() {
        let secs = |v: f64| Stat::of(&[v], Unit::Secs);
        let row = Row::new(
            "x",
            secs(11.0),
            Some(("b", secs(10.0))),
            Target::RatioAtMost(1.15),
        );
        assert_eq!((row.ratio.as_str(), row.met), ("1.10×", Some(true)));
        let row = Row::new(
            "x",
            secs(2.0),
            Some(("b", secs(8.0))),
            Target::SpeedupAtLeast(5.0),
        );
        assert_eq!((row.ratio.as_str(), row.met), ("4.0× faster", Some(false)));
        let row = Row::new(
            "x",
            secs(10.0),
            Some(("b", secs(12.6))),
            Target::SpeedupAtLeast(1.3),
        );
        assert_eq!(
            (row.ratio.as_str(), row.target.as_str(), row.met),
            ("1.26× faster", "≥ 1.3× faster", Some(false))
        );
        let row = Row::new(
            "x",
            Stat::of(&[0.02], Unit::Millis),
            None,
            Target::AtMost(0.05),
        );
        assert_eq!(row.met, Some(true));
        let row = Row::new("x", secs(1.0), None, Target::None);
        assert_eq!((row.target.as_str(), row.met), ("—", None));
    }
}
