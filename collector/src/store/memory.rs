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

use super::history::{History, SealedFile};
use super::traces::{StoredBatch, TraceFilter};
use super::{SpanStore, StoreStats, StoreView};
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
    sealing: Option<Sealing>,
    /// One seal at a time (upkeep's and shutdown's may meet).
    seal_lock: parking_lot::Mutex<()>,
}

/// What is told the log records whose spans were sealed.
pub type OnSealed = Arc<dyn Fn(&[u64]) + Send + Sync>;

/// Where and when compacted segments are written out of memory as Parquet.
#[derive(Clone)]
pub struct Sealing {
    /// Where the files go.
    pub history: Arc<History>,
    /// The longest a compacted segment waits in memory for more to seal with it.
    pub interval: Duration,
    /// Seal at once when this many spans wait.
    pub file_rows: usize,
    /// How long files are kept.
    pub retention: Duration,
    /// Told the log records whose spans were just sealed (the log may then drop them).
    pub on_sealed: OnSealed,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealing")
            .field("history", &self.history.location())
            .field("interval", &self.interval)
            .field("file_rows", &self.file_rows)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Oldest first; the last one is open to appends.
    segments: VecDeque<Segment>,
    rows: usize,
    bytes: usize,
    batches: usize,
    next_id: u64,
    /// Sealed files, with the retention's deletions applied.
    files: Vec<SealedFile>,
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
    /// The write-ahead log records its batches came from.
    seqs: Vec<u64>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new(config: StoreConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            inner: RwLock::new(Inner::default()),
            metrics,
            sealing: None,
            seal_lock: parking_lot::Mutex::new(()),
        }
    }

    /// Writes compacted segments out as Parquet files (see [`Sealing`]) instead of keeping
    /// them until the retention; `files` are those sealed before (found at start). Memory then
    /// holds only what is not sealed yet, and neither the budget nor the retention evicts it.
    pub fn with_sealing(mut self, sealing: Sealing, files: Vec<SealedFile>) -> Self {
        self.inner.get_mut().files = files;
        self.sealing = Some(sealing);
        self
    }

    /// [`SpanStore::flush`] at `now`: with sealing, seals everything in memory, the open
    /// segment too. Blocking; call it inside the runtime, on a blocking thread.
    pub fn flush_at(&self, now: SystemTime) {
        if self.sealing.is_none() {
            return;
        }
        if let Some(open) = self.inner.write().segments.back_mut() {
            open.sealed = true;
        }
        self.maintain_at(now, true);
    }

    /// Adds a batch as if it arrived at `now`.
    pub fn append_at(&self, batch: SpanBatch, now: SystemTime) {
        self.append_logged_at(batch, None, now);
    }

    /// Adds a batch from log record `seq` as if it arrived at `now`.
    pub fn append_logged_at(&self, batch: SpanBatch, seq: Option<u64>, now: SystemTime) {
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
                    seqs: Vec::new(),
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
            open.seqs.extend(seq);
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
        if self.sealing.is_some() {
            return; // nothing unsealed may go; sealing empties memory instead
        }
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

    fn append_logged(&self, batch: SpanBatch, seq: Option<u64>) {
        self.append_logged_at(batch, seq, SystemTime::now());
    }

    fn view(&self) -> StoreView {
        let inner = self.inner.read();
        StoreView {
            batches: stored_batches_of(&inner),
            files: inner.files.clone(),
            history: self.sealing.as_ref().map(|s| s.history.clone()),
        }
    }

    fn flush(&self) {
        self.flush_at(SystemTime::now());
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
        stored_batches_of(&self.inner.read())
    }

    fn maintain(&self, now: SystemTime) {
        self.maintain_at(now, false);
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

fn stored_batches_of(inner: &Inner) -> Vec<StoredBatch> {
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

impl MemoryStore {
    /// Upkeep: the retention, compaction, then (with sealing) the seal when one is due, or of
    /// everything compacted when `force`.
    fn maintain_at(&self, now: SystemTime, force: bool) {
        let cutoff = now
            .checked_sub(self.config.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let to_compact = {
            let mut inner = self.inner.write();
            let mut evicted = 0usize;
            while self.sealing.is_none()
                && inner.segments.front().is_some_and(|s| s.newest < cutoff)
            {
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
        if let Some(sealing) = &self.sealing {
            self.seal_due(sealing, now, force);
            self.expire_files(sealing, now);
        }
        let stats = self.stats();
        self.metrics.store_rows.set(stats.rows as i64);
        self.metrics.store_bytes.set(stats.bytes as i64);
        self.metrics.store_batches.set(stats.batches as i64);
    }
}

impl MemoryStore {
    /// Seals the compacted segments when a seal is due: enough spans wait, the oldest has
    /// waited `interval`, memory is half full, or `force` (shutdown). The files are written
    /// outside the lock; then, in one step that readers see whole, the segments leave memory
    /// and the files join the history. A failed write keeps everything in memory and is tried
    /// again at the next upkeep.
    fn seal_due(&self, sealing: &Sealing, now: SystemTime, force: bool) {
        let _one = self.seal_lock.lock();
        let (ids, batches, seqs) = {
            let inner = self.inner.read();
            let ready: Vec<&Segment> = inner
                .segments
                .iter()
                .filter(|s| s.sealed && (s.compacted || force))
                .collect();
            if ready.is_empty() {
                return;
            }
            let rows: usize = ready.iter().map(|s| s.rows).sum();
            let waited = ready
                .iter()
                .map(|s| now.duration_since(s.opened).unwrap_or_default())
                .max()
                .unwrap_or_default();
            let due = force
                || rows >= sealing.file_rows
                || waited >= sealing.interval
                || inner.bytes >= self.config.max_bytes / 2;
            if !due {
                return;
            }
            let ids: Vec<u64> = ready.iter().map(|s| s.id).collect();
            let batches: Vec<RecordBatch> = ready
                .iter()
                .flat_map(|s| s.batches.iter().cloned())
                .collect();
            let seqs: Vec<u64> = ready.iter().flat_map(|s| s.seqs.iter().copied()).collect();
            (ids, batches, seqs)
        };
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let bounds = (
            seqs.iter().copied().min().unwrap_or(0),
            seqs.iter().copied().max().unwrap_or(0),
        );
        let written =
            super::history::encode::encode(&batches, &super::history::seqs::encode(&seqs))
                .map_err(super::history::HistoryError::from)
                .and_then(|files| match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => runtime.block_on(sealing.history.put(files, bounds)),
                    Err(_) => Err(super::history::HistoryError::Location {
                        location: sealing.history.location().to_owned(),
                        reason: "sealing runs only inside the collector's runtime".into(),
                    }),
                });
        let written = match written {
            Ok(written) => written,
            Err(error) => {
                self.metrics.seal_failures.inc();
                tracing::warn!(%error, spans = rows, "cannot seal spans to Parquet; they stay in memory and the log, and sealing is tried again");
                return;
            }
        };
        {
            let mut inner = self.inner.write();
            let (mut gone_rows, mut gone_bytes, mut gone_batches) = (0, 0, 0);
            inner.segments.retain(|s| {
                let sealed = ids.contains(&s.id);
                if sealed {
                    gone_rows += s.rows;
                    gone_bytes += s.bytes;
                    gone_batches += s.batches.len();
                }
                !sealed
            });
            inner.rows -= gone_rows;
            inner.bytes -= gone_bytes;
            inner.batches -= gone_batches;
            inner.files.extend(written);
            self.file_gauges(&inner.files);
        }
        self.metrics.sealed_spans.inc_by(rows as u64);
        (sealing.on_sealed)(&seqs);
    }

    /// Deletes the sealed files of hours past the retention.
    fn expire_files(&self, sealing: &Sealing, now: SystemTime) {
        let through = super::history::expired_through(now, sealing.retention);
        let old: Vec<SealedFile> = {
            let mut inner = self.inner.write();
            if inner.files.iter().all(|f| f.hour > through) {
                return;
            }
            let (old, keep) = std::mem::take(&mut inner.files)
                .into_iter()
                .partition(|f| f.hour <= through);
            inner.files = keep;
            self.file_gauges(&inner.files);
            old
        };
        self.metrics.expired_files.inc_by(old.len() as u64);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.block_on(sealing.history.delete(&old));
        }
    }

    fn file_gauges(&self, files: &[SealedFile]) {
        self.metrics.sealed_files.set(files.len() as i64);
        self.metrics
            .sealed_bytes
            .set(files.iter().map(|f| f.size as i64).sum());
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
