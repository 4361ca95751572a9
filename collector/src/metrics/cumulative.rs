//! A histogram since start, kept by a stage for its Prometheus series, with one exemplar per
//! bucket.

use super::openmetrics::{Exemplar, HistogramFamily};
use crate::decode::SpanRef;

/// A cumulative (since start) histogram over upper bounds given at each observation (the same
/// every time) and a `+Inf` bucket, with the latest trace of each bucket as its exemplar.
///
/// (Its example runs as the unit test `examples::example_cumulative`.)
#[derive(Debug, Clone, Default)]
pub(crate) struct Cumulative {
    /// Count per bucket (not cumulative across buckets), the last one `+Inf`; empty until the
    /// first observation. Observations count for their weight (1 unless sampled).
    pub counts: Vec<f64>,
    /// Sum of the observations (each times its weight), in seconds.
    pub sum: f64,
    /// Number of observations (their weights summed).
    pub count: f64,
    /// The latest observation of each bucket that named its trace.
    pub exemplars: Vec<Option<Exemplar>>,
}

impl Cumulative {
    /// Adds one observation of `nanos` standing for `weight` spans (Tempo's span multiplier;
    /// 1 unless sampled), with `bounds` the upper bounds in seconds, and the span it came from
    /// with the time it was seen (seconds since the epoch) as the exemplar.
    pub(crate) fn record(
        &mut self,
        bounds: &[f64],
        nanos: u64,
        weight: f64,
        trace: Option<(SpanRef, f64)>,
    ) {
        let seconds = nanos as f64 / 1e9;
        self.counts.resize(bounds.len() + 1, 0.0);
        let bucket = bounds.partition_point(|&bound| bound < seconds);
        self.counts[bucket] += weight;
        self.sum += seconds * weight;
        self.count += weight;
        if let Some((span, timestamp)) = trace {
            self.exemplars.resize(bounds.len() + 1, None);
            self.exemplars[bucket] = Some(Exemplar {
                trace_id: span.trace_id,
                span_id: span.span_id,
                value: seconds,
                timestamp,
            });
        }
    }

    /// Adds every observation of `other` (made with the same bounds); of two exemplars of a
    /// bucket the later stays.
    pub(crate) fn merge(&mut self, other: &Cumulative) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0.0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        if self.exemplars.len() < other.exemplars.len() {
            self.exemplars.resize(other.exemplars.len(), None);
        }
        for (mine, theirs) in self.exemplars.iter_mut().zip(&other.exemplars) {
            if let Some(theirs) = theirs
                && mine.is_none_or(|m| m.timestamp < theirs.timestamp)
            {
                *mine = Some(*theirs);
            }
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// Writes it as one series of `family`.
    pub(crate) fn encode(
        &self,
        family: &mut HistogramFamily<'_>,
        labels: &[(&str, &str)],
        bounds: &[f64],
    ) {
        family.series(
            labels,
            bounds,
            &self.counts,
            self.sum,
            self.count,
            &self.exemplars,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(n: u8) -> Option<(SpanRef, f64)> {
        let span = SpanRef {
            trace_id: [n; 16],
            span_id: [n; 8],
        };
        Some((span, f64::from(n)))
    }

    #[test]
    fn buckets_use_upper_bounds() {
        let bounds = [0.002, 0.004, 1.0];
        let mut histogram = Cumulative::default();
        histogram.record(&bounds, 2_000_000, 1.0, None); // exactly 2 ms: in the le=0.002 bucket
        histogram.record(&bounds, 3_000_000, 1.0, None);
        histogram.record(&bounds, 20_000_000_000, 1.0, None); // past the last bound
        assert_eq!(
            histogram.counts,
            [1.0, 1.0, 0.0, 1.0],
            "one per bound and +Inf"
        );
        assert_eq!(histogram.count, 3.0);
        assert!(
            histogram.exemplars.is_empty(),
            "no trace named, no exemplar"
        );
    }

    #[test]
    fn exemplars_keep_the_latest_per_bucket() {
        let bounds = [0.01, 0.1];
        let mut a = Cumulative::default();
        a.record(&bounds, 5_000_000, 1.0, trace(1));
        a.record(&bounds, 50_000_000, 1.0, trace(3));
        let mut b = Cumulative::default();
        b.record(&bounds, 6_000_000, 1.0, trace(2));
        b.record(&bounds, 60_000_000, 1.0, trace(2));
        a.merge(&b);
        assert_eq!(a.counts, [2.0, 2.0, 0.0]);
        assert_eq!(a.count, 4.0);
        let ids: Vec<Option<u8>> = a
            .exemplars
            .iter()
            .map(|e| e.map(|e| e.trace_id[0]))
            .collect();
        assert_eq!(
            ids,
            [Some(2), Some(3), None],
            "the later exemplar of each bucket, none where nothing fell"
        );
        assert_eq!(a.exemplars[1].unwrap().value, 0.05, "the value in seconds");
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example_cumulative() {
        use crate::decode::SpanRef;
        use crate::metrics::Cumulative;

        let bounds = [0.1, 1.0];
        let mut histogram = Cumulative::default();
        let trace = SpanRef {
            trace_id: [7; 16],
            span_id: [1; 8],
        };
        histogram.record(&bounds, 250_000_000, 1.0, Some((trace, 1_800_000_000.0)));
        histogram.record(&bounds, 50_000_000, 4.0, None); // a span sampled at 1/4
        assert_eq!(histogram.counts, [4.0, 1.0, 0.0]);
        assert_eq!(histogram.count, 5.0);
        assert_eq!(histogram.exemplars[1].unwrap().value, 0.25);
    }
}
