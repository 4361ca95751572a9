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

use super::history::SealedFile;
use super::traces::{StoredBatch, TraceFilter};
use super::{SpanStore, StoreStats, StoreView};
use crate::decode::SpanBatch;
use crate::decode::schema::stored_schema;
use crate::metrics::Metrics;
use metrics::{EvictionLabels, StoreMetrics};

mod metrics;
mod seal;

pub(crate) use seal::{OnSealed, RecordRanges, Sealing};

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
    /// A configuration reload changes the retention and the budget in place
    /// ([`SpanStore::set_limits`]).
    config: parking_lot::RwLock<StoreConfig>,
    /// Shared with the gauges, which read it at each scrape.
    inner: Arc<RwLock<Inner>>,
    metrics: StoreMetrics,
    sealing: Option<Sealing>,
    /// One seal at a time (upkeep's and shutdown's may meet).
    seal_lock: parking_lot::Mutex<()>,
    /// With sealing: memory holds more than its budget and none of it may be evicted (a seal
    /// that keeps failing); ingest refuses until it is sealed ([`SpanStore::over_budget`]).
    full: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    /// Oldest first; the last one is open to appends.
    segments: VecDeque<Segment>,
    rows: usize,
    bytes: usize,
    batches: usize,
    next_id: u64,
    /// Sealed files, with the retention's deletions applied (in fleet mode, every
    /// collector's).
    files: Vec<SealedFile>,
    /// Fleet mode: when the fleet's files were last listed.
    listed_at: Option<SystemTime>,
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
    /// Fleet mode with sealing: the partition of the spans topic its batches came from
    /// (each partition seals into its own prefix).
    lane: Option<u16>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new(config: StoreConfig, metrics: Arc<Metrics>) -> Self {
        let inner = Arc::new(RwLock::new(Inner::default()));
        let metrics = StoreMetrics::register(&metrics, &inner);
        Self {
            config: parking_lot::RwLock::new(config),
            inner,
            metrics,
            sealing: None,
            seal_lock: parking_lot::Mutex::new(()),
            full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Writes compacted segments out as Parquet files (see [`Sealing`]) instead of keeping
    /// them until the retention; `files` are those sealed before (found at start). Memory then
    /// holds only what is not sealed yet, and neither the budget nor the retention evicts it.
    pub fn with_sealing(mut self, sealing: Sealing, files: Vec<SealedFile>) -> Self {
        self.inner.write().files = files;
        self.sealing = Some(sealing);
        self
    }

    /// [`SpanStore::flush`] at `now`: with sealing, seals everything in memory, the open
    /// segment too. Blocking; call it inside the runtime, on a blocking thread.
    pub fn flush_at(&self, now: SystemTime) {
        if self.sealing.is_none() {
            return;
        }
        for open in self.inner.write().segments.iter_mut() {
            open.sealed = true;
        }
        self.maintain_at(now, true);
    }

    /// Fleet mode: seals everything in memory of `partition` (this collector lets it go).
    /// Blocking; call it inside the runtime, on a blocking thread.
    pub fn flush_partition_at(&self, partition: u16, now: SystemTime) {
        let Some(sealing) = &self.sealing else {
            return;
        };
        let lane = Some(partition);
        let to_compact: Vec<CompactionJob> = {
            let mut inner = self.inner.write();
            for segment in inner.segments.iter_mut().filter(|s| s.lane == lane) {
                segment.sealed = true;
            }
            inner
                .segments
                .iter()
                .filter(|s| s.lane == lane && !s.compacted)
                .map(compaction_job)
                .collect()
        };
        for job in to_compact {
            self.compact(job);
        }
        self.seal_due(sealing, now, true, lane);
    }

    /// Adds a batch as if it arrived at `now`.
    pub fn append_at(&self, batch: SpanBatch, now: SystemTime) {
        self.append_logged_at(batch, None, now);
    }

    /// Adds a batch from log record `seq` as if it arrived at `now`.
    pub fn append_logged_at(&self, batch: SpanBatch, seq: Option<u64>, now: SystemTime) {
        let rows = batch.rows();
        let bytes = batch.bytes();
        // In fleet mode each partition has its own open segment.
        let lane = match (&self.sealing, seq) {
            (Some(sealing), Some(seq)) if sealing.partitioned => {
                Some((seq >> crate::store::history::OFFSET_BITS) as u16)
            }
            _ => None,
        };
        {
            let mut inner = self.inner.write();
            let open = inner
                .segments
                .iter()
                .rposition(|s| !s.sealed && s.lane == lane);
            let open = match open {
                Some(open) => open,
                None => {
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
                        lane,
                    });
                    inner.segments.len() - 1
                }
            };
            inner.rows += rows;
            inner.bytes += bytes;
            inner.batches += 1;
            let segment_rows = self.config.read().segment_rows;
            let open = &mut inner.segments[open];
            open.batches.push(batch.into_record_batch());
            open.rows += rows;
            open.bytes += bytes;
            open.newest = open.newest.max(now);
            open.seqs.extend(seq);
            // Sealed here, compacted by `maintain`, off the ingest path.
            open.sealed |= open.rows >= segment_rows;
            self.evict_over_budget(&mut inner);
            self.note_fill(&inner);
        }
    }

    /// Whether memory is over its budget with nothing it may evict (only with sealing).
    fn note_fill(&self, inner: &Inner) {
        let full = self.sealing.is_some() && inner.bytes > self.config.read().max_bytes;
        self.full.store(full, std::sync::atomic::Ordering::Relaxed);
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
        while inner.bytes > self.config.read().max_bytes {
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
                .evicted_spans
                .get_or_create(&EvictionLabels { reason: "size" })
                .inc_by(evicted as u64);
            if self.metrics.size_log.ready() {
                tracing::warn!(
                    evicted,
                    max_bytes = self.config.read().max_bytes,
                    "the span store reached --max-store-bytes; its oldest spans were evicted (logged at most once a minute; counted in wayfinder_store_evicted_spans_total{{reason=\"size\"}})"
                );
            }
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
        self.note_fill(&inner);
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
    fn over_budget(&self) -> bool {
        self.full.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_limits(&self, retention: Duration, max_bytes: usize) {
        let mut config = self.config.write();
        config.retention = retention;
        config.max_bytes = max_bytes;
    }

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

    fn flush_partition(&self, partition: u16) {
        self.flush_partition_at(partition, SystemTime::now());
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
            .checked_sub(self.config.read().retention)
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
                    .evicted_spans
                    .get_or_create(&EvictionLabels { reason: "age" })
                    .inc_by(evicted as u64);
            }
            let segment_age = self.config.read().segment_age;
            for open in inner.segments.iter_mut().filter(|s| !s.sealed) {
                if now.duration_since(open.opened).unwrap_or_default() >= segment_age {
                    open.sealed = true;
                }
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
            self.seal_due(sealing, now, force, None);
            if sealing.partitioned {
                self.list_fleet_files(sealing, now);
            }
            self.expire_files(sealing, now);
        }
    }
}

#[cfg(test)]
mod tests;
