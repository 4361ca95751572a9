//! The span metrics of services minute by minute, all their operations together or each
//! apart: what Jaeger's metrics API (the UI's Monitor tab) draws.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::SpanMetrics;
use crate::decode::SpanKind;
use crate::graph::topology::stats::Latency;

/// One minute of a timeline.
#[derive(Debug, Clone, Default)]
pub(crate) struct Minute {
    /// Calls.
    pub requests: u64,
    /// Failed calls.
    pub errors: u64,
    /// Their durations, when asked for (merging sketches is the costly part).
    pub latency: Latency,
}

/// One service's (or one of its operations') figures per minute.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    /// `service.name`.
    pub service: Arc<str>,
    /// The span name, when operations are apart.
    pub operation: Option<Arc<str>>,
    /// The minutes that had calls, oldest first.
    pub minutes: BTreeMap<u64, Minute>,
}

/// What a timeline request selects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Selection<'a> {
    /// Services, by name.
    pub services: &'a [String],
    /// Span kinds.
    pub kinds: &'a [SpanKind],
    /// One timeline per operation, or one per service.
    pub by_operation: bool,
    /// Whether the durations are merged too.
    pub latency: bool,
    /// The first and last minute, both included.
    pub minutes: (u64, u64),
}

/// Past this many series-minutes to merge, a request is refused before any is merged: the
/// span-metrics lock is held while merging, and ingest waits on it.
pub(crate) const MAX_SERIES_MINUTES: usize = 100_000;

impl SpanMetrics {
    /// The timelines of what `selection` names, status codes and dimensions summed, ordered
    /// by service then operation; `Err(n)` when `n` series-minutes would be merged, more than
    /// `most` ([`MAX_SERIES_MINUTES`] for a request).
    pub(crate) fn timelines(
        &self,
        selection: Selection<'_>,
        most: usize,
    ) -> Result<Vec<Timeline>, usize> {
        type Key = (Arc<str>, Option<Arc<str>>);
        let (since, until) = selection.minutes;
        let state = self.state.lock();
        let chosen: Vec<_> = state
            .series
            .iter()
            .filter(|(key, _)| {
                selection.kinds.contains(&key.kind)
                    && selection.services.iter().any(|s| **s == *key.service)
            })
            .collect();
        // Counted before anything is merged (a cheap walk of the chosen series' minutes).
        let work: usize = chosen
            .iter()
            .map(|(_, entry)| {
                entry
                    .series
                    .since(since)
                    .take_while(|(minute, _)| *minute <= until)
                    .count()
            })
            .sum();
        if work > most {
            return Err(work);
        }
        let mut merged: BTreeMap<Key, BTreeMap<u64, Minute>> = BTreeMap::new();
        for (key, entry) in chosen {
            let minutes = merged
                .entry((
                    key.service.clone(),
                    selection.by_operation.then(|| key.name.clone()),
                ))
                .or_default();
            for (minute, summary) in entry.series.since(since) {
                if minute > until {
                    break;
                }
                let into = minutes.entry(minute).or_default();
                into.requests += summary.requests;
                into.errors += summary.errors;
                if selection.latency {
                    into.latency.merge(&summary.server);
                }
            }
        }
        drop(state);
        Ok(merged
            .into_iter()
            .filter(|(_, minutes)| !minutes.is_empty())
            .map(|((service, operation), minutes)| Timeline {
                service,
                operation,
                minutes,
            })
            .collect())
    }
}
