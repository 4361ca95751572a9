//! What prometheus-client cannot write: histogram families with exemplars from figures the
//! collector keeps itself (its `Exemplar` has no public constructor, so a custom collector
//! cannot hand it any), and the conversion of the OpenMetrics exposition to the older
//! Prometheus text format.

use std::fmt::Write as _;

/// A stage's series written straight in the OpenMetrics text format, at each scrape (register it
/// with [`Metrics::register_exposition`](super::Metrics::register_exposition)).
pub trait Exposition: Send + Sync + std::fmt::Debug {
    /// Appends whole metric families to `out`.
    fn encode_openmetrics(&self, out: &mut String);
}

/// A trace that one observation of a histogram bucket came from: what lets Grafana jump from a
/// latency spike to a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Exemplar {
    /// The trace, written as the `trace_id` label (as OpenTelemetry's Prometheus exporters do).
    pub trace_id: [u8; 16],
    /// The span, written as `span_id`.
    pub span_id: [u8; 8],
    /// The observed value, in the histogram's unit.
    pub value: f64,
    /// When it was observed, in seconds since the epoch.
    pub timestamp: f64,
}

/// Writes the series of one histogram family.
///
/// (Its example runs as the unit test `examples::example_histogram_family`.)
#[derive(Debug)]
pub(crate) struct HistogramFamily<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl<'a> HistogramFamily<'a> {
    /// Writes the family's `# HELP`, `# TYPE` and `# UNIT` (when the name ends in `_seconds`).
    pub(crate) fn new(out: &'a mut String, name: &'a str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} histogram");
        if name.ends_with("_seconds") {
            let _ = writeln!(out, "# UNIT {name} seconds");
        }
        Self { out, name }
    }

    /// Writes one series: `counts` per bucket (not cumulative), one per bound plus +Inf, and
    /// at most one exemplar per bucket. Counts are numbers of spans, or their weights when spans
    /// stand for several (sampling): whole counts are written without a fraction.
    pub(crate) fn series(
        &mut self,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[f64],
        sum: f64,
        count: f64,
        exemplars: &[Option<Exemplar>],
    ) {
        let mut dtoa = dtoa::Buffer::new();
        let name = self.name;
        let out = &mut *self.out;
        let _ = write!(out, "{name}_sum");
        write_labels(out, labels, None);
        let _ = writeln!(out, " {}", dtoa.format(sum));
        let _ = write!(out, "{name}_count");
        write_labels(out, labels, None);
        let _ = writeln!(out, " {}", Count(count));
        let mut cumulative = 0.0;
        for i in 0..=bounds.len() {
            cumulative += counts.get(i).copied().unwrap_or(0.0);
            let le = match bounds.get(i) {
                Some(bound) => dtoa.format(*bound).to_owned(),
                None => "+Inf".to_owned(),
            };
            let _ = write!(out, "{name}_bucket");
            write_labels(out, labels, Some(&le));
            let _ = write!(out, " {}", Count(cumulative));
            if let Some(Some(exemplar)) = exemplars.get(i) {
                let _ = write!(
                    out,
                    " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}",
                    const_hex::encode(exemplar.trace_id),
                    const_hex::encode(exemplar.span_id),
                    dtoa::Buffer::new().format(exemplar.value),
                    dtoa::Buffer::new().format(exemplar.timestamp),
                );
            }
            out.push('\n');
        }
    }
}

/// A count: an integer when whole (as Prometheus clients write counts), else the float.
struct Count(f64);

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Below 2^53 every whole f64 is an exact integer.
        if self.0.fract() == 0.0 && self.0.abs() < 9_007_199_254_740_992.0 {
            write!(f, "{}", self.0 as i64)
        } else {
            f.write_str(dtoa::Buffer::new().format(self.0))
        }
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        let _ = super::escape_value(out, value);
        out.push('"');
    }
    out.push('}');
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// An OpenMetrics exposition in the Prometheus text format 0.0.4: a counter family is named
/// with its `_total` suffix in `# HELP` and `# TYPE` (OpenMetrics names the family without it,
/// and text-format parsers such as promtool's then find no help for the samples), `# UNIT`
/// and `# EOF` go, and so do exemplars, which that format has not. The samples are the same in
/// both.
///
/// (Its example runs as the unit test `examples::example_openmetrics_to_text`.)
pub(crate) fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(without_exemplar(line)),
        }
        out.push('\n');
    }
    out
}

/// A sample line without its exemplar (` # {...} value [timestamp]` after the value); a `#`
/// inside a label value is not one.
fn without_exemplar(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut labels_end = 0;
    if let Some(open) = line.find(['{', ' '])
        && bytes[open] == b'{'
    {
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in bytes.iter().enumerate().skip(open + 1) {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b'}' if !quoted => {
                    labels_end = i + 1;
                    break;
                }
                _ => {}
            }
        }
    }
    match line[labels_end..].find(" # ") {
        Some(at) => &line[..labels_end + at],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exemplars_are_dropped_in_the_text_format() {
        let cases = [
            (
                "a_bucket{le=\"0.1\"} 3 # {trace_id=\"ab\"} 0.05 1.5",
                "a_bucket{le=\"0.1\"} 3",
                "the exemplar after the value goes",
            ),
            (
                "a_bucket{service=\"x # {y}\",le=\"1.0\"} 3",
                "a_bucket{service=\"x # {y}\",le=\"1.0\"} 3",
                "a # inside a label value is not an exemplar",
            ),
            (
                "a_bucket{service=\"q\\\"} # \",le=\"1.0\"} 3 # {trace_id=\"ab\"} 1 2",
                "a_bucket{service=\"q\\\"} # \",le=\"1.0\"} 3",
                "an escaped quote does not end the value",
            ),
            ("up 1", "up 1", "no labels, no exemplar"),
        ];
        for (line, want, why) in cases {
            assert_eq!(without_exemplar(line), want, "{why}");
        }
    }

    #[test]
    fn histogram_series_are_cumulative_with_escaped_labels() {
        let mut out = String::new();
        let mut family = HistogramFamily::new(&mut out, "x_seconds", "X");
        family.series(
            &[("n", "a\"b\\c\nd")],
            &[0.5, 1.0],
            &[1.0, 2.0, 3.0],
            9.25,
            6.0,
            &[],
        );
        let want = "# HELP x_seconds X\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\n\
            x_seconds_sum{n=\"a\\\"b\\\\c\\nd\"} 9.25\n\
            x_seconds_count{n=\"a\\\"b\\\\c\\nd\"} 6\n\
            x_seconds_bucket{n=\"a\\\"b\\\\c\\nd\",le=\"0.5\"} 1\n\
            x_seconds_bucket{n=\"a\\\"b\\\\c\\nd\",le=\"1.0\"} 3\n\
            x_seconds_bucket{n=\"a\\\"b\\\\c\\nd\",le=\"+Inf\"} 6\n";
        assert_eq!(out, want);
    }

    #[test]
    fn weighted_counts_keep_their_fraction() {
        let mut out = String::new();
        let mut family = HistogramFamily::new(&mut out, "x_seconds", "X");
        family.series(&[], &[1.0], &[2.5, 0.0], 1.25, 2.5, &[]);
        assert!(out.contains("x_seconds_count 2.5\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 2.5\n"), "{out}");
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example_histogram_family() {
        use crate::metrics::{Exemplar, HistogramFamily};

        let mut out = String::new();
        let mut family = HistogramFamily::new(&mut out, "rpc_seconds", "RPC latency");
        let exemplar = Exemplar {
            trace_id: [1; 16],
            span_id: [2; 8],
            value: 0.05,
            timestamp: 1.5,
        };
        family.series(
            &[("service", "cart")],
            &[0.1],
            &[1.0, 0.0],
            0.05,
            1.0,
            &[Some(exemplar), None],
        );
        assert!(out.contains(
            "rpc_seconds_bucket{service=\"cart\",le=\"0.1\"} 1 # {trace_id=\"01010101010101010101010101010101\",span_id=\"0202020202020202\"} 0.05 1.5\n"
        ));
        assert!(out.contains("rpc_seconds_bucket{service=\"cart\",le=\"+Inf\"} 1\n"));
    }

    #[test]
    fn example_openmetrics_to_text() {
        let openmetrics = "# HELP jobs Jobs done.\n# TYPE jobs counter\njobs_total 3\n\
            # HELP queue_bytes Queued.\n# TYPE queue_bytes gauge\n# UNIT queue_bytes bytes\n\
            queue_bytes 0\n# EOF\n";
        assert_eq!(
            crate::metrics::openmetrics_to_text(openmetrics),
            "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total 3\n\
             # HELP queue_bytes Queued.\n# TYPE queue_bytes gauge\nqueue_bytes 0\n",
        );
    }
}
