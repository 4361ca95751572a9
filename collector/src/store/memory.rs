//! The in-memory span store.
//!
//! Appended batches go into an open *segment*; a segment is sealed when it reaches
//! [`StoreConfig::segment_rows`] spans or [`StoreConfig::segment_age`], and
//! [`SpanStore::maintain`] (every second, on a blocking thread) compacts each sealed segment into
//! one batch (exact-size buffers, merged dictionaries), which is what keeps memory
//! per span low when clients send many small requests. Retention works on whole segments:
//! a segment goes when its newest span is older than the retention, and the oldest segments go
//! first when the store is over its memory budget.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::RwLock;

use super::traces::{StoredBatch, TraceFilter};
use super::{SpanStore, StoreStats};
use crate::decode::SpanBatch;
use crate::decode::schema::stored_schema;
use crate::metrics::{Metrics, ReasonLabels};

/// Settings of a [`MemoryStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// How long spans are kept.
    pub retention: Duration,
    /// How much memory the batches may hold.
    pub max_bytes: usize,
    /// Spans in a segment before it is sealed and compacted.
    pub segment_rows: usize,
    /// Age of an open segment before it is sealed and compacted.
    pub segment_age: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(3600),
            max_bytes: 1 << 30,
            segment_rows: 64 * 1024,
            segment_age: Duration::from_secs(5),
        }
    }
}

/// Spans in memory as Arrow batches.
#[derive(Debug)]
pub struct MemoryStore {
    config: StoreConfig,
    inner: RwLock<Inner>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Oldest first; the last one is open to appends.
    segments: VecDeque<Segment>,
    rows: usize,
    bytes: usize,
    batches: usize,
    next_id: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
    opened: SystemTime,
    newest: SystemTime,
    sealed: bool,
    compacted: bool,
    /// The trace ids of its one batch, once compacted.
    traces: Option<Arc<TraceFilter>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new(config: StoreConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            inner: RwLock::new(Inner::default()),
            metrics,
        }
    }

    /// Adds a batch as if it arrived at `now`.
    pub fn append_at(&self, batch: SpanBatch, now: SystemTime) {
        let rows = batch.rows();
        let bytes = batch.bytes();
        {
            let mut inner = self.inner.write();
            let needs_new = inner.segments.back().is_none_or(|s| s.sealed);
            if needs_new {
                let id = inner.next_id;
                inner.next_id += 1;
                inner.segments.push_back(Segment {
                    id,
                    batches: Vec::new(),
                    rows: 0,
                    bytes: 0,
                    opened: now,
                    newest: now,
                    sealed: false,
                    compacted: false,
                    traces: None,
                });
            }
            inner.rows += rows;
            inner.bytes += bytes;
            inner.batches += 1;
            let segment_rows = self.config.segment_rows;
            let open = inner
                .segments
                .back_mut()
                .expect("an open segment was just ensured");
            open.batches.push(batch.into_record_batch());
            open.rows += rows;
            open.bytes += bytes;
            open.newest = open.newest.max(now);
            // Sealed here, compacted by `maintain`, off the ingest path.
            open.sealed |= open.rows >= segment_rows;
            self.evict_over_budget(&mut inner);
        }
    }

    /// Drops the oldest segments (or, with a single segment, its oldest batches) until the
    /// store is within its memory budget, but never the batch just appended: it was just
    /// acknowledged, and a query must be able to see it. A batch larger than the whole budget
    /// thus stays until the next one comes (the store exceeds its budget by at most one batch).
    fn evict_over_budget(&self, inner: &mut Inner) {
        let mut evicted = 0usize;
        while inner.bytes > self.config.max_bytes {
            if inner.segments.len() > 1 {
                if let Some(old) = inner.segments.pop_front() {
                    inner.rows -= old.rows;
                    inner.bytes -= old.bytes;
                    inner.batches -= old.batches.len();
                    evicted += old.rows;
                }
            } else if let Some(only) = inner.segments.front_mut() {
                // The last batch of the only segment is the one just appended.
                if only.batches.len() <= 1 {
                    break;
                }
                let old = only.batches.remove(0);
                let (rows, bytes) = (old.num_rows(), old.get_array_memory_size());
                only.rows -= rows;
                only.bytes -= bytes;
                inner.rows -= rows;
                inner.bytes -= bytes;
                inner.batches -= 1;
                evicted += rows;
            } else {
                break;
            }
        }
        if evicted > 0 {
            self.metrics
                .store_evicted_spans
                .get_or_create(&ReasonLabels { reason: "size" })
                .inc_by(evicted as u64);
        }
    }

    /// Compacts a sealed segment's batches into one and swaps it in, if the segment is still
    /// there. Runs outside the lock: queries and appends go on meanwhile.
    fn compact(&self, job: CompactionJob) {
        let merged = if job.batches.len() < 2 {
            job.batches.first().cloned()
        } else {
            match concat_batches(&stored_schema(), &job.batches)
                .and_then(|merged| super::dedupe::dedupe(&merged))
            {
                Ok(merged) => Some(merged),
                Err(error) => {
                    tracing::warn!(%error, "could not compact a store segment; keeping its batches as they are");
                    return;
                }
            }
        };
        let traces = merged.as_ref().and_then(TraceFilter::of).map(Arc::new);
        let filter_bytes = traces.as_ref().map_or(0, |t| t.bytes());
        let new_bytes = merged
            .as_ref()
            .map_or(0, RecordBatch::get_array_memory_size)
            + filter_bytes;
        let mut inner = self.inner.write();
        let Some(segment) = inner.segments.iter_mut().find(|s| s.id == job.id) else {
            return;
        };
        if segment.batches.len() != job.batches.len() {
            return; // eviction took some of its batches meanwhile
        }
        let old_bytes = segment.bytes;
        let old_batches = segment.batches.len();
        segment.batches = merged.into_iter().collect();
        segment.compacted = true;
        segment.traces = traces;
        segment.bytes = new_bytes;
        let new_batches = segment.batches.len();
        inner.bytes = inner.bytes - old_bytes + new_bytes;
        inner.batches = inner.batches - old_batches + new_batches;
    }
}

/// A sealed segment's batches, to compact.
struct CompactionJob {
    id: u64,
    batches: Vec<RecordBatch>,
}

fn compaction_job(segment: &Segment) -> CompactionJob {
    CompactionJob {
        id: segment.id,
        batches: segment.batches.clone(),
    }
}

impl SpanStore for MemoryStore {
    fn append(&self, batch: SpanBatch) {
        self.append_at(batch, SystemTime::now());
    }

    fn snapshot(&self) -> Vec<RecordBatch> {
        let inner = self.inner.read();
        inner
            .segments
            .iter()
            .flat_map(|s| s.batches.iter().cloned())
            .collect()
    }

    fn stored_batches(&self) -> Vec<StoredBatch> {
        let inner = self.inner.read();
        inner
            .segments
            .iter()
            .flat_map(|s| {
                s.batches.iter().map(|batch| StoredBatch {
                    batch: batch.clone(),
                    traces: s.traces.clone(),
                })
            })
            .collect()
    }

    fn maintain(&self, now: SystemTime) {
        let cutoff = now
            .checked_sub(self.config.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let to_compact = {
            let mut inner = self.inner.write();
            let mut evicted = 0usize;
            while inner.segments.front().is_some_and(|s| s.newest < cutoff) {
                if let Some(old) = inner.segments.pop_front() {
                    inner.rows -= old.rows;
                    inner.bytes -= old.bytes;
                    inner.batches -= old.batches.len();
                    evicted += old.rows;
                }
            }
            if evicted > 0 {
                self.metrics
                    .store_evicted_spans
                    .get_or_create(&ReasonLabels { reason: "age" })
                    .inc_by(evicted as u64);
            }
            let segment_age = self.config.segment_age;
            if let Some(open) = inner.segments.back_mut()
                && now.duration_since(open.opened).unwrap_or_default() >= segment_age
            {
                open.sealed = true;
            }
            inner
                .segments
                .iter()
                .filter(|s| s.sealed && !s.compacted)
                .map(compaction_job)
                .collect::<Vec<_>>()
        };
        for job in to_compact {
            self.compact(job);
        }
        let stats = self.stats();
        self.metrics.store_rows.set(stats.rows as i64);
        self.metrics.store_bytes.set(stats.bytes as i64);
        self.metrics.store_batches.set(stats.batches as i64);
    }

    fn stats(&self) -> StoreStats {
        let inner = self.inner.read();
        StoreStats {
            rows: inner.rows,
            bytes: inner.bytes,
            batches: inner.batches,
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray as _;

    use super::*;
    use crate::decode::decode_traces;
    use crate::decode::schema::stored;
    use crate::testing::{span, trace_request};

    fn batch(first_id: u64, spans: u64) -> SpanBatch {
        let spans = (first_id..first_id + spans)
            .map(|i| span([1; 16], i + 1, &format!("op{}", i % 3), 1, 2))
            .collect();
        decode_traces(&trace_request(None, spans))
            .unwrap()
            .batch
            .unwrap()
    }

    fn store(config: StoreConfig) -> (MemoryStore, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (MemoryStore::new(config, metrics.clone()), metrics)
    }

    fn evicted(metrics: &Metrics, reason: &'static str) -> u64 {
        metrics
            .store_evicted_spans
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    /// Sealed, compacted segments carry a trace filter that rules out the traces they do not
    /// hold; the open segment has none and is always read.
    #[test]
    fn compacted_segments_know_their_traces() {
        let (store, _) = store(StoreConfig {
            segment_rows: 20,
            ..Default::default()
        });
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let of_trace = |trace: u8, n: u64| {
            let spans = (0..n)
                .map(|i| span([trace; 16], i + 1, "op", 1, 2))
                .collect();
            decode_traces(&trace_request(None, spans))
                .unwrap()
                .batch
                .unwrap()
        };
        store.append_at(of_trace(1, 20), t0);
        store.append_at(of_trace(2, 20), t0);
        store.append_at(of_trace(3, 10), t0);
        store.maintain(t0);
        let batches = store.stored_batches();
        assert_eq!(batches.len(), 3, "two sealed segments and the open one");
        let read: Vec<Vec<bool>> = [1u8, 2, 3, 9]
            .iter()
            .map(|t| {
                batches
                    .iter()
                    .map(|b| b.wanted(Some(&[[*t; 16]])))
                    .collect()
            })
            .collect();
        assert_eq!(
            read,
            [
                [true, false, true],
                [false, true, true],
                [false, false, true],
                [false, false, true],
            ],
            "a sealed segment is read only for its own trace; the open one always"
        );
        assert!(
            batches[2].traces.is_none(),
            "the open segment has no filter"
        );
        assert!(
            batches.iter().all(|b| b.wanted(None)),
            "a reader of every trace reads everything"
        );
    }

    #[test]
    fn compaction_keeps_every_span_in_order() {
        let (store, _) = store(StoreConfig {
            segment_rows: 30,
            ..Default::default()
        });
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..4 {
            store.append_at(batch(i * 10, 10), t0);
        }
        assert_eq!(
            store.stats().batches,
            4,
            "appends do not compact: that is upkeep's work"
        );
        store.maintain(t0);
        let stats = store.stats();
        assert_eq!(stats.rows, 40);
        assert_eq!(
            stats.batches, 2,
            "the first 30 spans were compacted into one batch"
        );
        let snapshot = store.snapshot();
        let ids: Vec<String> = snapshot
            .iter()
            .flat_map(|b| {
                b.column(stored::SPAN_ID)
                    .as_fixed_size_binary()
                    .iter()
                    .map(|v| const_hex::encode(v.unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let expected: Vec<String> = (1..=40u64)
            .map(|i| const_hex::encode(i.to_be_bytes()))
            .collect();
        assert_eq!(ids, expected);
        let filters: usize = store
            .stored_batches()
            .iter()
            .filter_map(|b| b.traces.as_ref().map(|t| t.bytes()))
            .sum();
        assert!(filters > 0, "compacted segments have trace filters");
        assert_eq!(
            stats.bytes,
            snapshot
                .iter()
                .map(|b| b.get_array_memory_size())
                .sum::<usize>()
                + filters,
            "the batches and their trace filters are counted"
        );
    }

    #[test]
    fn retention_evicts_old_segments_and_counts_them() {
        let config = StoreConfig {
            retention: Duration::from_secs(60),
            segment_age: Duration::from_secs(5),
            ..Default::default()
        };
        let (store, metrics) = store(config);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        store.append_at(batch(0, 10), t0);
        store.maintain(t0 + Duration::from_secs(6)); // seals the first segment
        store.append_at(batch(10, 5), t0 + Duration::from_secs(30));
        store.maintain(t0 + Duration::from_secs(61));
        assert_eq!(
            store.stats().rows,
            5,
            "the segment last written at t0 is past the 60 s retention"
        );
        assert_eq!(evicted(&metrics, "age"), 10);
        store.maintain(t0 + Duration::from_secs(91));
        assert_eq!(store.stats().rows, 0);
        assert_eq!(evicted(&metrics, "age"), 15);
    }

    #[test]
    fn size_budget_evicts_oldest_first() {
        let one = batch(0, 100);
        let config = StoreConfig {
            max_bytes: one.bytes() * 3,
            segment_rows: 100,
            ..Default::default()
        };
        let (store, metrics) = store(config);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..5 {
            store.append_at(batch(i * 100, 100), t0);
        }
        let stats = store.stats();
        assert!(stats.bytes <= one.bytes() * 3, "within budget: {stats:?}");
        assert!(stats.rows >= 200, "the newest spans stay: {stats:?}");
        assert_eq!(
            evicted(&metrics, "size") as usize + stats.rows,
            500,
            "every evicted span is counted"
        );
        let first = const_hex::encode(
            store.snapshot()[0]
                .column(stored::SPAN_ID)
                .as_fixed_size_binary()
                .value(0),
        );
        assert_ne!(
            first,
            const_hex::encode(1u64.to_be_bytes()),
            "the oldest span went first"
        );
    }

    #[test]
    fn the_batch_just_appended_is_never_evicted() {
        // Each row is a reason: a batch over the whole budget, alone and after others.
        let big = batch(0, 200);
        let cases = [
            ("alone: it stays although over budget", 0usize),
            ("after older batches: they go, it stays", 3),
        ];
        for (reason, older) in cases {
            let (store, metrics) = store(StoreConfig {
                max_bytes: big.bytes() / 2,
                segment_rows: 10_000,
                ..Default::default()
            });
            let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
            for i in 0..older {
                store.append_at(batch(1_000 + i as u64 * 10, 10), t0);
            }
            store.append_at(big.clone(), t0);
            let stats = store.stats();
            assert_eq!(stats.rows, 200, "{reason}: {stats:?}");
            assert_eq!(evicted(&metrics, "size") as usize, older * 10, "{reason}");
            // The next append evicts it: the budget holds again but for the newest batch.
            store.append_at(batch(5_000, 10), t0);
            assert_eq!(store.stats().rows, 10, "{reason}: the old big batch went");
        }
    }
}
