//! Where the pairing rules' observations are kept: per-minute series of every edge, node,
//! instance and caller → instance edge, and the totals behind the Prometheus series, each map
//! bounded by `max_series`, and all of it by a byte budget (`--topology-max-bytes`): over it,
//! the oldest minutes go, and with them the series that had nothing newer (the edges not seen
//! for longest), counted. The rules (`builder.rs`) decide what is observed under which key;
//! this decides nothing. Snapshots and `/metrics` read it, never the rules' pending state.

use std::collections::BTreeMap;
use std::mem::size_of;
use std::sync::Arc;
use std::time::SystemTime;

use hashbrown::HashMap;

use super::keys::{EdgeKey, InstanceEdgeKey};
use super::stats::{Observation, Series, Totals};
use crate::decode::{PeerAttributes, SpanFacts};

/// The values of an edge's extra labels (client sides, then server sides).
pub(crate) type DimensionValues = Box<[Option<Arc<str>>]>;

/// An edge's figures: per minute for windows, and since start for Prometheus, per set of
/// extra label values (one set, empty, when none are configured).
#[derive(Debug, Default)]
pub(crate) struct EdgeState {
    pub(crate) series: Series,
    pub(crate) totals: Vec<(DimensionValues, Totals)>,
}

/// A service instance's figures.
#[derive(Debug, Default)]
pub(crate) struct InstanceState {
    pub(crate) series: Series,
    /// Where it serves, learned from its own SERVER spans or its callers' CLIENT spans.
    pub(crate) address: Option<String>,
    pub(crate) last_seen: Option<SystemTime>,
}

/// The figures of the graph.
#[derive(Debug)]
pub struct Graph {
    pub(crate) edges: HashMap<EdgeKey, EdgeState>,
    pub(crate) nodes: HashMap<Arc<str>, Series>,
    pub(crate) instances: HashMap<(Arc<str>, Arc<str>), InstanceState>,
    pub(crate) instance_edges: HashMap<InstanceEdgeKey, Series>,
    max_series: usize,
    /// The byte budget of everything here (an estimate: see [`Graph::measure`]).
    max_bytes: usize,
    /// The estimate at the last check.
    bytes: usize,
    /// Series removed to keep within `max_bytes`.
    series_evicted: u64,
    histogram_buckets: Arc<[f64]>,
    series_dropped: u64,
    /// Sets of extra label values beyond the first of each edge, bounded by `max_series` too.
    dimension_sets: usize,
    /// When the batch being recorded arrived.
    pub(super) now: SystemTime,
}

impl Graph {
    /// An empty graph of at most `max_series` entries per map, with Prometheus histograms over
    /// `histogram_buckets` (seconds).
    pub(crate) fn new(max_series: usize, max_bytes: usize, histogram_buckets: Arc<[f64]>) -> Self {
        Self {
            edges: HashMap::new(),
            nodes: HashMap::new(),
            instances: HashMap::new(),
            instance_edges: HashMap::new(),
            max_series,
            max_bytes,
            bytes: 0,
            series_evicted: 0,
            histogram_buckets,
            series_dropped: 0,
            dimension_sets: 0,
            now: SystemTime::UNIX_EPOCH,
        }
    }

    /// Observations not kept because a map was full.
    pub fn series_dropped(&self) -> u64 {
        self.series_dropped
    }

    /// Series removed to keep within the byte budget.
    pub fn series_evicted(&self) -> u64 {
        self.series_evicted
    }

    /// The memory estimate at the last budget check.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Series now, in all four maps.
    fn series(&self) -> usize {
        self.edges.len() + self.nodes.len() + self.instances.len() + self.instance_edges.len()
    }

    /// About how much memory the graph holds: what its entries hold whatever their age, and
    /// what each minute's buckets hold. An estimate from the sizes of the structures, the
    /// sketches' bins and the histograms' buckets (the maps' own slack counted at hashbrown's
    /// 7/8 load), not an allocator's count.
    pub(super) fn measure(&self) -> (usize, BTreeMap<u64, usize>) {
        let mut by_minute: BTreeMap<u64, usize> = BTreeMap::new();
        let mut add = |series: &Series| {
            for (minute, bytes) in series.minute_bytes() {
                *by_minute.entry(minute).or_default() += bytes;
            }
        };
        let mut entries = 0;
        for edge in self.edges.values() {
            entries += size_of::<(EdgeKey, EdgeState)>()
                + edge
                    .totals
                    .iter()
                    .map(|(values, totals)| {
                        size_of::<(DimensionValues, Totals)>()
                            + size_of_val(&**values)
                            + totals.heap_bytes()
                    })
                    .sum::<usize>();
            add(&edge.series);
        }
        for series in self.nodes.values() {
            entries += size_of::<(Arc<str>, Series)>();
            add(series);
        }
        for state in self.instances.values() {
            entries += size_of::<((Arc<str>, Arc<str>), InstanceState)>()
                + state.address.as_ref().map_or(0, String::capacity);
            add(&state.series);
        }
        for series in self.instance_edges.values() {
            entries += size_of::<(InstanceEdgeKey, Series)>();
            add(series);
        }
        let total = (entries + by_minute.values().sum::<usize>()) * 8 / 7;
        (total, by_minute)
    }

    /// Keeps the graph within its byte budget: over it, the oldest minutes go (never the
    /// current one) until the estimate is back under nine tenths of the budget, and with them
    /// every series that had nothing newer. Returns how many series went.
    pub(super) fn keep_within_budget(&mut self, current_minute: u64) -> u64 {
        let (bytes, by_minute) = self.measure();
        self.bytes = bytes;
        if bytes <= self.max_bytes {
            return 0;
        }
        let target = self.max_bytes / 10 * 9;
        let mut left = bytes;
        let mut keep_from = current_minute;
        for (&minute, &minute_bytes) in &by_minute {
            if left <= target || minute >= current_minute {
                keep_from = minute;
                break;
            }
            left = left.saturating_sub(minute_bytes * 8 / 7);
        }
        let before = self.series();
        self.prune(keep_from);
        let evicted = (before - self.series()) as u64;
        self.series_evicted += evicted;
        self.bytes = self.measure().0;
        evicted
    }

    /// Figures of what a service serves, from its SERVER and CONSUMER spans alone.
    pub(super) fn served(&mut self, span: &SpanFacts, minute: u64) {
        let observation = Observation {
            error: span.error,
            server_ns: Some(span.duration_ns),
            client_ns: None,
            messaging_ns: None,
            exemplar: None,
            weight: span.weight,
        };
        let max = self.max_series;
        match bounded(&mut self.nodes, &span.service, max) {
            Some(series) => series.record(minute, observation),
            None => self.series_dropped += 1,
        }
        if let Some(instance) = &span.instance {
            let key = (span.service.clone(), instance.clone());
            match bounded(&mut self.instances, &key, max) {
                Some(state) => {
                    state.series.record(minute, observation);
                    state.last_seen = Some(self.now);
                    // A server span's `server.address` is where it was reached.
                    if state.address.is_none()
                        && let Some(peer) = span.peer.as_deref()
                        && peer.server_address.is_some()
                    {
                        state.address = peer.peer_address();
                    }
                }
                None => self.series_dropped += 1,
            }
        }
    }

    /// An observation of an edge: in its minute's series and in the totals of its extra label
    /// values (with the exemplar's time set to now).
    pub(super) fn edge(
        &mut self,
        key: EdgeKey,
        mut observation: Observation,
        dimensions: DimensionValues,
        minute: u64,
    ) {
        let Some(edge) = bounded(&mut self.edges, &key, self.max_series) else {
            self.series_dropped += 1;
            return;
        };
        edge.series.record(minute, observation);
        observation.exemplar = observation
            .exemplar
            .map(|(span, _)| (span, seconds_of(self.now)));
        let totals = match edge.totals.iter().position(|(d, _)| *d == dimensions) {
            Some(i) => &mut edge.totals[i].1,
            None if edge.totals.is_empty() || self.dimension_sets < self.max_series => {
                if !edge.totals.is_empty() {
                    self.dimension_sets += 1;
                }
                edge.totals.push((dimensions, Totals::default()));
                &mut edge.totals.last_mut().expect("just pushed").1
            }
            None => {
                self.series_dropped += 1;
                return;
            }
        };
        totals.record(observation, &self.histogram_buckets);
    }

    /// An observation of a caller → instance edge.
    pub(super) fn instance_edge(
        &mut self,
        key: InstanceEdgeKey,
        observation: Observation,
        minute: u64,
    ) {
        match bounded(&mut self.instance_edges, &key, self.max_series) {
            Some(series) => series.record(minute, observation),
            None => self.series_dropped += 1,
        }
    }

    /// Where an instance serves, as a caller's peer attributes address it (taken only until
    /// one is known).
    pub(super) fn learn_address(
        &mut self,
        service: &Arc<str>,
        instance: &Arc<str>,
        peer: &PeerAttributes,
    ) {
        if let Some(state) = self.instances.get_mut(&(service.clone(), instance.clone()))
            && state.address.is_none()
        {
            state.address = peer.peer_address();
        }
    }

    /// Drops the minutes before `keep_from`, and the entries left with none.
    pub(super) fn prune(&mut self, keep_from: u64) {
        let mut sets = 0;
        self.edges.retain(|_, e| {
            let keep = e.series.prune(keep_from);
            if keep {
                sets += e.totals.len().saturating_sub(1);
            }
            keep
        });
        self.dimension_sets = sets;
        self.nodes.retain(|_, s| s.prune(keep_from));
        self.instances.retain(|_, i| i.series.prune(keep_from));
        self.instance_edges.retain(|_, s| s.prune(keep_from));
    }
}

/// Seconds since the epoch, with their fraction (exemplar timestamps).
fn seconds_of(now: SystemTime) -> f64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The entry for `key`, created unless the map already holds `max` entries.
fn bounded<'m, K, V>(map: &'m mut HashMap<K, V>, key: &K, max: usize) -> Option<&'m mut V>
where
    K: std::hash::Hash + Eq + Clone,
    V: Default,
{
    if !map.contains_key(key) {
        if map.len() >= max {
            return None;
        }
        map.insert(key.clone(), V::default());
    }
    map.get_mut(key)
}
