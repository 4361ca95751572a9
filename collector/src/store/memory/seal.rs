//! Sealing: compacted segments written out of memory as Parquet files ([`crate::store::history`]),
//! and the files' retention.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::record_batch::RecordBatch;

use super::{MemoryStore, Segment};
use crate::store::history::{self, History, HistoryError, SealedFile};

/// What is told the log records whose spans were sealed.
pub(crate) type OnSealed = Arc<dyn Fn(&[u64]) + Send + Sync>;

/// Where and when compacted segments are written out of memory as Parquet.
#[derive(Clone)]
pub struct Sealing {
    /// Where the files go.
    pub history: Arc<History>,
    /// The longest a compacted segment waits in memory for more to seal with it.
    pub interval: Duration,
    /// Seal at once when this many spans wait.
    pub file_rows: usize,
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

impl MemoryStore {
    /// Seals the compacted segments when a seal is due: enough spans wait, the oldest has
    /// waited `interval`, memory is half full, or `force` (shutdown). The files are written
    /// outside the lock; then, in one step that readers see whole, the segments leave memory
    /// and the files join the history. A failed write keeps everything in memory and is tried
    /// again at the next upkeep.
    pub(super) fn seal_due(&self, sealing: &Sealing, now: SystemTime, force: bool) {
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
                || inner.bytes >= self.config.read().max_bytes / 2;
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
        let written = history::encode::encode(&batches, &history::seqs::encode(&seqs))
            .map_err(HistoryError::from)
            .and_then(|files| match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime.block_on(sealing.history.put(files, bounds)),
                Err(_) => Err(HistoryError::Location {
                    location: sealing.history.location().to_owned(),
                    reason: "sealing runs only inside the collector's runtime".into(),
                }),
            });
        let written = match written {
            Ok(written) => written,
            Err(error) => {
                self.metrics.seal_failures.inc();
                if self.metrics.seal_failure_log.ready() {
                    tracing::warn!(%error, spans = rows, "cannot seal spans to Parquet; they stay in memory and the log, and sealing is tried again (logged at most once a minute; counted in wayfinder_seal_failures_total)");
                }
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
            self.note_fill(&inner);
            inner.files.extend(written);
        }
        self.metrics.sealed_spans.inc_by(rows as u64);
        (sealing.on_sealed)(&seqs);
    }

    /// Deletes the sealed files past the retention ([`history::expired`]).
    pub(super) fn expire_files(&self, sealing: &Sealing, now: SystemTime) {
        let retention = self.config.read().retention;
        let expired = |f: &SealedFile| history::expired(f, now, retention);
        if !self.inner.read().files.iter().any(expired) {
            return; // the common case: no write lock
        }
        let old: Vec<SealedFile> = {
            let mut inner = self.inner.write();
            let (old, keep) = std::mem::take(&mut inner.files)
                .into_iter()
                .partition(expired);
            inner.files = keep;
            old
        };
        self.metrics.expired_files.inc_by(old.len() as u64);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.block_on(sealing.history.delete(&old));
        }
    }
}
