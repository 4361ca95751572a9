//! The collector's own figures, served as Prometheus text on `GET /metrics`.

mod cumulative;
mod labels;
mod log_every;
mod openmetrics;

pub(crate) use cumulative::Cumulative;
pub(crate) use labels::{Labels, escape_value};
pub(crate) use log_every::LogEvery;
pub(crate) use openmetrics::{Exemplar, Exposition, HistogramFamily, openmetrics_to_text};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;

/// Encodes a counter whose value is a count of spans or their weights (sampled spans stand for
/// several): whole values as integers, as Prometheus clients write counts, others as floats.
pub(crate) fn encode_count(
    value: f64,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric as _;
    use prometheus_client::metrics::counter::ConstCounter;
    if value.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&value) {
        ConstCounter::new(value as u64).encode(encoder)
    } else {
        ConstCounter::new(value).encode(encoder)
    }
}

/// Labels with an outcome: `ok` or an error class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    /// The outcome.
    pub(crate) outcome: &'static str,
}

/// The most instances a per-instance family lists (`wayfinder_instance_health`, the endpoint
/// weights): past them a scrape would grow with whatever a stranger registers.
pub(crate) const MAX_INSTANCE_SERIES: usize = 10_000;

/// How long one exposition is handed to later scrapes ([`Metrics::encode_shared`]).
pub(crate) const METRICS_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The collector's exposition: every part registers what it counts here when it is built
/// ([`Metrics::register`], [`Metrics::register_collector`]), and `GET /metrics` encodes them
/// all ([`Metrics::encode_shared`]).
#[derive(Debug)]
pub struct Metrics {
    /// The families and collectors of every part, in the order they were registered.
    registry: parking_lot::Mutex<Registry>,
    /// Families other parts write themselves (histograms with exemplars), at each scrape.
    expositions: parking_lot::Mutex<Vec<Box<dyn Exposition>>>,
    /// The expositions handed out by [`Metrics::encode_shared`], by reuse period.
    encoded: crate::util::reuse::Reuse<std::time::Duration, crate::util::reuse::SharedBody>,
    /// The same in the Prometheus text format ([`Metrics::encode_shared_text`]).
    encoded_text: crate::util::reuse::Reuse<std::time::Duration, crate::util::reuse::SharedBody>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty exposition.
    pub fn new() -> Self {
        Self {
            registry: parking_lot::Mutex::new(Registry::default()),
            expositions: parking_lot::Mutex::new(Vec::new()),
            encoded: crate::util::reuse::Reuse::new(METRICS_REUSE),
            encoded_text: crate::util::reuse::Reuse::new(METRICS_REUSE),
        }
    }

    /// Registers a metric that the part it belongs to created and counts.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.lock().register(name, help, metric);
    }

    /// Adds a collector whose series are read from its part at each scrape.
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.lock().register_collector(collector);
    }

    /// Adds families written by hand at each scrape, after the registered ones.
    pub fn register_exposition(&self, exposition: Box<dyn Exposition>) {
        self.expositions.lock().push(exposition);
    }

    /// The OpenMetrics exposition of every metric.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry.lock());
        for exposition in self.expositions.lock().iter() {
            exposition.encode_openmetrics(&mut out);
        }
        let _ = text::encode_eof(&mut out);
        out
    }

    /// [`Metrics::encode`], or the exposition made less than [`METRICS_REUSE`] ago: scrapers
    /// in a loop cost one encoding (which walks every series of the service graph) a second,
    /// on one thread at a time.
    pub fn encode_shared(&self) -> crate::util::reuse::SharedBody {
        self.encoded.get_or_make(&METRICS_REUSE, || {
            crate::util::reuse::SharedBody::new(bytes::Bytes::from(self.encode()))
        })
    }

    /// [`Metrics::encode_shared`] in the Prometheus text format (version 0.0.4), for scrapers
    /// that do not ask for OpenMetrics (`promtool`, curl, older agents), shared the same way.
    pub fn encode_shared_text(&self) -> crate::util::reuse::SharedBody {
        self.encoded_text.get_or_make(&METRICS_REUSE, || {
            let openmetrics = self.encode_shared();
            let text = String::from_utf8_lossy(openmetrics.plain());
            crate::util::reuse::SharedBody::new(bytes::Bytes::from(openmetrics_to_text(&text)))
        })
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Metrics {
    /// The value of one series in a fresh exposition (not the one `GET /metrics` shares for a
    /// second): `name` as written (`…_total` for a counter) and exactly `labels`, in any
    /// order; 0 when the series is not there yet (a counter not counted).
    ///
    /// # Panics
    ///
    /// When the series is there but its value is not a number: the exposition is broken.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        let text = self.encode();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (found, value) = match rest.strip_prefix('{') {
                Some(rest) => {
                    let Some((inside, value)) = rest.rsplit_once("} ") else {
                        continue;
                    };
                    (parse_labels(inside), value)
                }
                None => match rest.strip_prefix(' ') {
                    Some(value) => (Vec::new(), value),
                    None => continue, // a longer name
                },
            };
            if found == wanted {
                return value
                    .split(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("not a number in {line:?}"));
            }
        }
        0.0
    }
}

/// `a="1",b="x\"y"` as sorted pairs, the escapes undone.
#[cfg(any(test, feature = "test-util"))]
fn parse_labels(inside: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = inside.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                c => value.push(c),
            }
        }
        pairs.push((key, value));
        if chars.next() != Some(',') {
            break;
        }
    }
    pairs.sort();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_within_the_reuse_period_share_one_exposition() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        let metrics = Metrics::new();
        let spans = Family::<OutcomeLabels, Counter>::default();
        metrics.register("wayfinder_spans", "Spans", spans.clone());
        let labels = OutcomeLabels { outcome: "ok" };
        spans.get_or_create(&labels).inc_by(1);
        let first = metrics.encode_shared().plain().clone();
        spans.get_or_create(&labels).inc_by(41);
        let again = metrics.encode_shared().plain().clone();
        assert_eq!(first, again, "the same text within the second");
        let line = |text: &[u8]| {
            String::from_utf8_lossy(text)
                .lines()
                .find(|l| l.starts_with("wayfinder_spans_total{"))
                .map(str::to_owned)
        };
        assert!(line(&first).unwrap().ends_with(" 1"), "{:?}", line(&first));
        let fresh = metrics.encode();
        assert!(line(fresh.as_bytes()).unwrap().ends_with(" 42"), "{fresh}");
    }

    #[test]
    fn value_reads_one_series_by_its_labels_in_any_order() {
        use prometheus_client::encoding::EncodeLabelSet;
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Two {
            a: &'static str,
            b: &'static str,
        }
        let metrics = Metrics::new();
        let family = Family::<Two, Counter>::default();
        metrics.register("wayfinder_pairs", "Pairs", family.clone());
        let plain = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        metrics.register(
            "wayfinder_pairs",
            "A prefix of the other name",
            plain.clone(),
        );
        family.get_or_create(&Two { a: "x", b: "y,z=" }).inc_by(3);
        family.get_or_create(&Two { a: "x", b: "w" }).inc_by(5);
        plain.set(7);
        // Each row: the series asked for, what it reads, and why.
        type Labels<'a> = &'a [(&'a str, &'a str)];
        let cases: [(&str, Labels<'_>, f64, &str); 5] = [
            (
                "wayfinder_pairs_total",
                &[("b", "y,z="), ("a", "x")],
                3.0,
                "labels in another order, a comma and = in a value",
            ),
            (
                "wayfinder_pairs_total",
                &[("a", "x"), ("b", "w")],
                5.0,
                "the other series",
            ),
            (
                "wayfinder_pairs_total",
                &[("a", "x")],
                0.0,
                "a subset of the labels is not the series",
            ),
            (
                "wayfinder_pairs",
                &[],
                7.0,
                "a name that is a prefix of another's lines",
            ),
            (
                "wayfinder_missing_total",
                &[],
                0.0,
                "absent: not counted yet",
            ),
        ];
        for (name, labels, expected, why) in cases {
            assert_eq!(metrics.value(name, labels), expected, "{why}");
        }
    }
}
