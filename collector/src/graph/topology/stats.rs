//! Request counts and latency sketches, kept per minute so that any window from one minute to
//! the retention can be summed; plus the cumulative histograms behind the Prometheus series.

use std::collections::VecDeque;

use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::decode::SpanRef;
use crate::metrics::Cumulative;

/// Width of one time bucket, in seconds. Windows are whole buckets: the last `n` minutes plus
/// the current, partial one.
pub(crate) const BUCKET_SECONDS: u64 = 60;

/// A latency distribution in milliseconds: a DDSketch with 1% relative accuracy (mergeable,
/// and only as large as the range of values it has seen).
#[derive(Clone, Default)]
pub struct Latency(Option<Box<DDSketch>>);

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .finish()
    }
}

fn sketch_config() -> SketchConfig {
    // 1% relative error, at most 1024 bins, values below 1 µs in the lowest bin.
    SketchConfig::new(0.01, 1024, 0.001)
}

impl Latency {
    /// Adds one observation.
    pub fn record(&mut self, nanos: u64) {
        let millis = nanos as f64 / 1e6;
        self.0
            .get_or_insert_with(|| Box::new(DDSketch::new(sketch_config())))
            .add(millis);
    }

    /// About how much memory it holds beyond its own size: the sketch and its bins.
    pub fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |sketch| {
            std::mem::size_of::<DDSketch>() + sketch.length() * std::mem::size_of::<u64>()
        })
    }

    /// Adds every observation of `other`; `false` (nothing added) when the two sketches were
    /// made with different configurations: one made here and one decoded from another
    /// collector ([`Latency::from_bytes`]) do not merge, as their bins are keyed differently.
    pub fn merge(&mut self, other: &Latency) -> bool {
        let Some(theirs) = &other.0 else { return true };
        match &mut self.0 {
            Some(mine) => mine.merge(theirs).is_ok(),
            None => {
                self.0 = Some(theirs.clone());
                true
            }
        }
    }

    /// Its compact binary form: the encoding of Java's `DDSketchWithExactSummaryStatistics`
    /// (count, min, max, sum, the index mapping, then only the non-empty bins), 100–800 bytes
    /// for a few thousand observations. Empty when it holds nothing.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.as_ref().map_or_else(Vec::new, |s| s.to_java_bytes())
    }

    /// A sketch from [`Latency::to_bytes`]. Decoded sketches merge exactly with each other
    /// (every collector's use the same accuracy), not with sketches made here.
    pub fn from_bytes(bytes: &[u8]) -> Result<Latency, String> {
        if bytes.is_empty() {
            return Ok(Latency(None));
        }
        let sketch = DDSketch::from_java_bytes(bytes).map_err(|e| format!("{e:?}"))?;
        // Bins keyed with another accuracy would merge into nonsense: it must merge with an
        // empty decoded sketch of this accuracy.
        static DECODED: std::sync::LazyLock<Option<DDSketch>> = std::sync::LazyLock::new(|| {
            let mut here = DDSketch::new(sketch_config());
            here.add(1.0);
            DDSketch::from_java_bytes(&here.to_java_bytes()).ok()
        });
        DECODED
            .clone()
            .ok_or_else(|| "this build cannot decode its own sketches".to_owned())?
            .merge(&sketch)
            .map_err(|_| "the sketch was made with another relative accuracy".to_owned())?;
        Ok(Latency(Some(Box::new(sketch))))
    }

    /// How many observations it holds.
    pub fn count(&self) -> u64 {
        self.0.as_ref().map_or(0, |s| s.count() as u64)
    }

    /// The `q` quantile (0..=1) in milliseconds; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.as_ref()?.quantile(q).ok().flatten()
    }

    /// The mean in milliseconds; `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        let sketch = self.0.as_ref()?;
        let count = sketch.count();
        (count > 0).then(|| sketch.sum().unwrap_or(0.0) / count as f64)
    }
}

/// What was seen in one bucket (or a window of them).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Requests.
    pub requests: u64,
    /// Failed requests (either side Error).
    pub errors: u64,
    /// Latency as the server saw it.
    pub server: Latency,
    /// Latency as the client saw it.
    pub client: Latency,
}

impl Summary {
    /// Adds `other` to this one.
    pub fn merge(&mut self, other: &Summary) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.server.merge(&other.server);
        self.client.merge(&other.client);
    }
}

/// One observation: a request, whether it failed, and the latencies each side saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    /// Either side reported Error.
    pub error: bool,
    /// The server span's duration.
    pub server_ns: Option<u64>,
    /// The client span's duration.
    pub client_ns: Option<u64>,
    /// For a messaging edge, the time from the producer's end to the consumer's start.
    pub messaging_ns: Option<u64>,
    /// A span of the request and when it was seen (seconds since the epoch): the exemplar of
    /// the Prometheus histograms.
    pub exemplar: Option<(SpanRef, f64)>,
    /// How many requests it stands for in the Prometheus series: 1, or more for a sampled-down
    /// span (Tempo's span multiplier). The per-minute figures of the JSON API count spans as
    /// they came.
    pub weight: f64,
}

impl Default for Observation {
    fn default() -> Self {
        Self {
            error: false,
            server_ns: None,
            client_ns: None,
            messaging_ns: None,
            exemplar: None,
            weight: 1.0,
        }
    }
}

/// Per-minute summaries of one edge, node or instance, oldest first.
///
/// Only the newest bucket ever changes (a late observation joins it too), so the older ones
/// are sealed: [`Series::window`] keeps the sum of the sealed buckets of the last window it was
/// asked for, and a reader asking again within the minute merges only the newest bucket into
/// it, not sixty of them for an hour.
#[derive(Debug, Default)]
pub(crate) struct Series {
    buckets: VecDeque<(u64, Summary)>,
    sealed: parking_lot::Mutex<Option<SealedSum>>,
}

/// The sum of the sealed buckets of one window, and which buckets those were.
#[derive(Debug)]
struct SealedSum {
    /// `(since, first minute, last minute, buckets)` of the sum.
    key: (u64, u64, u64, usize),
    sum: Summary,
}

impl Series {
    /// Records an observation in the bucket of `minute`.
    pub(crate) fn record(&mut self, minute: u64, observation: Observation) {
        let summary = match self.buckets.back_mut() {
            Some((m, summary)) if *m == minute => summary,
            // A late observation (the clock is monotonic, so only by a tick) joins the newest.
            Some((m, summary)) if *m > minute => summary,
            _ => {
                self.buckets.push_back((minute, Summary::default()));
                &mut self.buckets.back_mut().expect("just pushed").1
            }
        };
        summary.requests += 1;
        summary.errors += u64::from(observation.error);
        if let Some(ns) = observation.server_ns {
            summary.server.record(ns);
        }
        if let Some(ns) = observation.client_ns {
            summary.client.record(ns);
        }
    }

    /// Sets the bucket of `minute` to `summary` (made where missing, in order): the fleet's
    /// figures of a minute, as its owner published them, replace what was there.
    pub(crate) fn set(&mut self, minute: u64, summary: Summary) {
        let at = self.buckets.partition_point(|(m, _)| *m < minute);
        match self.buckets.get_mut(at) {
            Some((m, bucket)) if *m == minute => *bucket = summary,
            _ => self.buckets.insert(at, (minute, summary)),
        }
        // A sealed minute may have changed.
        *self.sealed.lock() = None;
    }

    /// Its buckets from `minute` on, oldest first.
    pub(crate) fn since(&self, minute: u64) -> impl Iterator<Item = (u64, &Summary)> {
        self.buckets
            .iter()
            .filter(move |(m, _)| *m >= minute)
            .map(|(m, s)| (*m, s))
    }

    /// The sum of the buckets from `since_minute` on; `None` when there are none.
    pub(crate) fn window(&self, since_minute: u64) -> Option<Summary> {
        let start = self.buckets.partition_point(|(m, _)| *m < since_minute);
        if start == self.buckets.len() {
            return None;
        }
        let (_, newest) = self.buckets.back()?;
        let sealed = start..self.buckets.len() - 1;
        if sealed.is_empty() {
            return Some(newest.clone());
        }
        let key = (
            since_minute,
            self.buckets[sealed.start].0,
            self.buckets[sealed.end - 1].0,
            sealed.len(),
        );
        let mut cache = self.sealed.lock();
        let mut total = match &*cache {
            Some(cached) if cached.key == key => cached.sum.clone(),
            _ => {
                let mut sum = Summary::default();
                for (_, summary) in self.buckets.range(sealed) {
                    sum.merge(summary);
                }
                *cache = Some(SealedSum {
                    key,
                    sum: sum.clone(),
                });
                sum
            }
        };
        total.merge(newest);
        Some(total)
    }

    /// The sum of the buckets from `since_minute` to `until_minute`, both included; `None`
    /// when there are none (not cached: for windows that end before now).
    pub(crate) fn between(&self, since_minute: u64, until_minute: u64) -> Option<Summary> {
        let mut total: Option<Summary> = None;
        for (_, summary) in self
            .buckets
            .iter()
            .filter(|(m, _)| (since_minute..=until_minute).contains(m))
        {
            total.get_or_insert_with(Summary::default).merge(summary);
        }
        total
    }

    /// About how much memory each minute holds, oldest first: `(minute, bytes)`.
    pub(crate) fn minute_bytes(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.buckets.iter().map(|(minute, summary)| {
            let bytes = std::mem::size_of::<(u64, Summary)>()
                + summary.server.heap_bytes()
                + summary.client.heap_bytes();
            (*minute, bytes)
        })
    }

    /// Drops the buckets before `minute`; says whether anything is left.
    pub(crate) fn prune(&mut self, minute: u64) -> bool {
        while self.buckets.front().is_some_and(|(m, _)| *m < minute) {
            self.buckets.pop_front();
        }
        !self.buckets.is_empty()
    }
}

/// Upper bounds (seconds) of the service-graph histograms: the OpenTelemetry Collector
/// servicegraph connector's defaults, so that dashboards made for it read ours unchanged.
pub(crate) const HISTOGRAM_BOUNDS: [f64; 16] = [
    0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
];

/// Totals since start, for the Prometheus series (counters never go down), each observation
/// counted for its weight.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    /// Requests.
    pub requests: f64,
    /// Failed requests.
    pub errors: f64,
    /// Server-side latency.
    pub server: Option<Box<Cumulative>>,
    /// Client-side latency.
    pub client: Option<Box<Cumulative>>,
    /// Time in the broker, on messaging edges.
    pub messaging: Option<Box<Cumulative>>,
}

impl Totals {
    /// About how much memory its histograms hold.
    pub(crate) fn heap_bytes(&self) -> usize {
        [&self.server, &self.client, &self.messaging]
            .into_iter()
            .flatten()
            .map(|histogram| {
                std::mem::size_of::<Cumulative>()
                    + histogram.counts.capacity() * std::mem::size_of::<f64>()
                    + histogram.exemplars.capacity()
                        * std::mem::size_of::<Option<crate::metrics::Exemplar>>()
            })
            .sum()
    }

    /// Adds one observation, into histograms with upper bounds `bounds` (seconds).
    pub(crate) fn record(&mut self, observation: Observation, bounds: &[f64]) {
        let weight = observation.weight;
        self.requests += weight;
        if observation.error {
            self.errors += weight;
        }
        let sides = [
            (&mut self.server, observation.server_ns),
            (&mut self.client, observation.client_ns),
            (&mut self.messaging, observation.messaging_ns),
        ];
        for (histogram, ns) in sides {
            if let Some(ns) = ns {
                histogram.get_or_insert_with(Box::default).record(
                    bounds,
                    ns,
                    weight,
                    observation.exemplar,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_sum_whole_minutes() {
        let mut series = Series::default();
        let obs = |ms: u64, error| Observation {
            error,
            server_ns: Some(ms * 1_000_000),
            ..Observation::default()
        };
        series.record(10, obs(10, false));
        series.record(11, obs(20, true));
        series.record(12, obs(30, false));
        series.record(12, obs(40, false));
        let cases = [
            (13, None, "nothing from minute 13 on"),
            (12, Some((2, 0)), "the current minute only"),
            (11, Some((3, 1)), "two minutes"),
            (0, Some((4, 1)), "everything"),
        ];
        for (since, want, why) in cases {
            let got = series.window(since).map(|s| (s.requests, s.errors));
            assert_eq!(got, want, "{why}");
        }
        // Asked again (the sealed sum reused), and after the newest bucket changed.
        assert_eq!(
            series.window(0).map(|s| s.requests),
            Some(4),
            "the same sum again"
        );
        series.record(12, obs(50, false));
        assert_eq!(
            series.window(0).map(|s| s.requests),
            Some(5),
            "the newest bucket grew"
        );
        series.record(13, obs(50, false));
        assert_eq!(
            series.window(0).map(|s| s.requests),
            Some(6),
            "minute 12 sealed into the sum"
        );
        assert_eq!(
            series.window(13).map(|s| s.requests),
            Some(1),
            "another window"
        );
        assert_eq!(series.window(11).map(|s| s.requests), Some(5), "and back");
        let mut series = Series::default();
        series.record(10, obs(10, false));
        series.record(11, obs(20, true));
        series.record(12, obs(30, false));
        series.record(12, obs(40, false));
        let all = series.window(0).unwrap();
        let p50 = all.server.quantile(0.5).unwrap();
        assert!((p50 - 20.0).abs() <= 0.5, "p50 {p50} within 1% of 20 ms");
        assert_eq!(all.server.mean(), Some(25.0));
        assert!(series.prune(12), "minute 12 is kept");
        assert_eq!(series.window(0).unwrap().requests, 2);
        assert!(!series.prune(13), "nothing left");
    }
}
