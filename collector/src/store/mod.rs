//! Where accepted spans are kept: Arrow batches in memory, behind the [`SpanStore`] interface so
//! that persistence (a write-ahead log and Parquet files) can be added without touching the
//! receivers or the query layer.

mod dedupe;
pub(crate) mod history;
pub mod log;
mod memory;
mod settings;
mod traces;
pub(crate) mod view;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::record_batch::RecordBatch;

use crate::decode::SpanBatch;

pub use memory::{MemoryStore, StoreConfig};
pub(crate) use memory::{OnSealed, RecordRanges, Sealing};
pub use settings::{StoreSettings, WalSyncMode};
pub(crate) use traces::StoredBatch;
#[cfg(test)]
pub(crate) use traces::TraceFilter;

/// A store of spans.
pub trait SpanStore: Send + Sync + std::fmt::Debug + 'static {
    /// Adds a batch. It never blocks on queries and never fails: when the store is over its
    /// budget it evicts its oldest spans, and counts them.
    fn append(&self, batch: SpanBatch);

    /// [`SpanStore::append`] of the spans of write-ahead log record `seq`, so that the store
    /// can tell the log once they are sealed.
    fn append_logged(&self, batch: SpanBatch, _seq: Option<u64>) {
        self.append(batch);
    }

    /// What a query reads: the batches in memory and the sealed files, taken together so that
    /// no span is in both or in neither.
    fn view(&self) -> StoreView {
        StoreView {
            batches: self.stored_batches(),
            files: Vec::new(),
            history: None,
        }
    }

    /// Seals everything in memory now (at shutdown); blocking. Without sealing, nothing.
    fn flush(&self) {}

    /// Fleet mode: seals everything in memory of one partition of the spans topic (this
    /// collector lets the partition go); blocking. Without sealing, nothing.
    fn flush_partition(&self, _partition: u16) {}

    /// An immutable view of everything stored now, oldest first. Cheap: batches are shared.
    fn snapshot(&self) -> Vec<RecordBatch>;

    /// [`SpanStore::snapshot`] with each batch's trace filter where it has one, so that a
    /// reader of a few traces skips the batches without them.
    fn stored_batches(&self) -> Vec<StoredBatch> {
        self.snapshot()
            .into_iter()
            .map(|batch| StoredBatch {
                batch,
                traces: None,
            })
            .collect()
    }

    /// Evicts what is older than the retention at `now`, and does background upkeep.
    fn maintain(&self, now: SystemTime);

    /// Sizes, for metrics and tests.
    fn stats(&self) -> StoreStats;

    /// Whether the store holds more than its memory budget and may evict none of it (with
    /// sealing: spans a failing seal could not write yet). Ingest refuses, retryably, while
    /// it does, so that memory stays bounded instead of growing until the seals succeed.
    fn over_budget(&self) -> bool {
        false
    }

    /// A new retention and memory budget (a configuration reload), applied from the next
    /// append and upkeep on; a store without them ignores it.
    fn set_limits(&self, _retention: std::time::Duration, _max_bytes: usize) {}
}

/// Everything stored at one moment.
#[derive(Debug, Clone)]
pub struct StoreView {
    /// The batches in memory.
    pub batches: Vec<StoredBatch>,
    /// The sealed files.
    pub files: Vec<history::SealedFile>,
    /// Where the files are.
    pub history: Option<Arc<history::History>>,
}

/// Sizes of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Spans held.
    pub rows: usize,
    /// Memory held by the batches.
    pub bytes: usize,
    /// Batches held.
    pub batches: usize,
}

/// How often [`SpanStore::maintain`] runs.
pub(crate) const MAINTENANCE_PERIOD: Duration = Duration::from_secs(1);
