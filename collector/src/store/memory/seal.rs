//! Sealing: compacted segments written out of memory as Parquet files ([`crate::store::history`]),
//! and the files' retention.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::record_batch::RecordBatch;
use object_store::path::Path;

use super::{MemoryStore, Segment};
use crate::store::history::{self, History, HistoryError, SealedFile};

/// What is told the log records whose spans were sealed.
pub(crate) type OnSealed = Arc<dyn Fn(&[u64]) + Send + Sync>;

/// Fleet mode: the offsets each record stands for, as inclusive [`history::partition_seq`]
/// ranges. A record is a batch of consecutive messages of one partition, numbered by its
/// last; its file must say every offset it holds, so that a new owner skips them all.
pub(crate) type RecordRanges = Arc<dyn Fn(&[u64]) -> Vec<(u64, u64)> + Send + Sync>;

/// Where and when compacted segments are written out of memory as Parquet.
#[derive(Clone)]
pub struct Sealing {
    /// Where the files go.
    pub history: Arc<History>,
    /// The longest a compacted segment waits in memory for more to seal with it.
    pub interval: Duration,
    /// Seal at once when this many spans wait.
    pub file_rows: usize,
    /// Told the log records whose spans were just sealed (the log may then drop them; in
    /// fleet mode, the offsets may be committed).
    pub on_sealed: OnSealed,
    /// Fleet mode: the records are a partition's offsets ([`history::partition_seq`]), sealed
    /// per partition under its prefix, and the files of every collector are listed again
    /// now and then for SQL.
    pub partitioned: bool,
    /// Fleet mode: the offsets each record stands for (without: the record's own number).
    pub records: Option<RecordRanges>,
}

/// How often, in fleet mode, the sealed files of every collector are listed again.
pub(crate) const FLEET_LISTING: Duration = Duration::from_secs(5);

/// One lane's segments ready to seal.
#[derive(Default)]
struct Ready {
    ids: Vec<u64>,
    batches: Vec<RecordBatch>,
    seqs: Vec<u64>,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealing")
            .field("history", &self.history.location())
            .field("interval", &self.interval)
            .field("file_rows", &self.file_rows)
            .field("partitioned", &self.partitioned)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// Seals the compacted segments when a seal is due: enough spans wait, the oldest has
    /// waited `interval`, memory is half full, or `force` (shutdown; a revoked partition when
    /// `only` names it). The files are written outside the lock, one seal per lane (in fleet
    /// mode, per partition); then, in one step that readers see whole, the segments leave
    /// memory and the files join the history. A failed write keeps its segments in memory and
    /// is tried again at the next upkeep.
    pub(super) fn seal_due(
        &self,
        sealing: &Sealing,
        now: SystemTime,
        force: bool,
        only: Option<u16>,
    ) {
        let _one = self.seal_lock.lock();
        let lanes: BTreeMap<Option<u16>, Ready> = {
            let inner = self.inner.read();
            let ready: Vec<&Segment> = inner
                .segments
                .iter()
                .filter(|s| s.sealed && (s.compacted || force))
                .filter(|s| only.is_none() || s.lane == only)
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
            let mut lanes: BTreeMap<Option<u16>, Ready> = BTreeMap::new();
            for segment in ready {
                let lane = lanes.entry(segment.lane).or_default();
                lane.ids.push(segment.id);
                lane.batches.extend(segment.batches.iter().cloned());
                lane.seqs.extend(segment.seqs.iter().copied());
            }
            lanes
        };
        let mut sealed_seqs = Vec::new();
        for (lane, ready) in lanes {
            if let Some(seqs) = self.seal_lane(sealing, lane, ready) {
                sealed_seqs.extend(seqs);
            }
        }
        if !sealed_seqs.is_empty() {
            (sealing.on_sealed)(&sealed_seqs);
        }
    }

    /// Writes one lane's ready segments as one seal and takes them out of memory; the log
    /// records (or offsets) they held, or `None` when the write failed.
    fn seal_lane(&self, sealing: &Sealing, lane: Option<u16>, ready: Ready) -> Option<Vec<u64>> {
        let Ready {
            ids,
            mut batches,
            seqs,
        } = ready;
        // A partition's spans once each, whatever read them twice.
        if lane.is_some() {
            match without_duplicates(&batches) {
                Ok((unique, dropped)) => {
                    batches = unique;
                    self.metrics.duplicate_spans.inc_by(dropped as u64);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot look for duplicate spans in a seal; sealing them as they are");
                }
            }
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let (bounds, metadata) = match lane {
            None => (
                (
                    seqs.iter().copied().min().unwrap_or(0),
                    seqs.iter().copied().max().unwrap_or(0),
                ),
                vec![(history::encode::WAL_SEQS_KEY, history::seqs::encode(&seqs))],
            ),
            Some(partition) => {
                let ranges = match &sealing.records {
                    Some(expand) => expand(&seqs),
                    None => seqs.iter().map(|&s| (s, s)).collect(),
                };
                let bounds = (
                    ranges.iter().map(|r| r.0).min().unwrap_or(0),
                    ranges.iter().map(|r| r.1).max().unwrap_or(0),
                );
                let offsets: Vec<(u64, u64)> = ranges
                    .iter()
                    .map(|(a, b)| (history::offset_of(*a), history::offset_of(*b)))
                    .collect();
                (
                    bounds,
                    vec![
                        (
                            history::encode::KAFKA_OFFSETS_KEY,
                            history::seqs::encode_ranges(&offsets),
                        ),
                        (history::encode::KAFKA_PARTITION_KEY, partition.to_string()),
                    ],
                )
            }
        };
        let written = history::encode::encode(&batches, &metadata)
            .map_err(HistoryError::from)
            .and_then(|files| match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime.block_on(sealing.history.put(files, bounds, lane)),
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
                return None;
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
        Some(seqs)
    }

    /// Fleet mode: the files every collector sealed, listed again from the history (at most
    /// every [`FLEET_LISTING`]), so that SQL here reads every partition's sealed spans. A file
    /// this collector sealed while the listing ran is kept.
    pub(super) fn list_fleet_files(&self, sealing: &Sealing, now: SystemTime) {
        {
            let mut inner = self.inner.write();
            if inner
                .listed_at
                .is_some_and(|at| now.duration_since(at).unwrap_or_default() < FLEET_LISTING)
            {
                return;
            }
            inner.listed_at = Some(now);
        }
        let started = SystemTime::now();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let listed = match runtime.block_on(sealing.history.list_fleet()) {
            Ok(listed) => listed,
            Err(error) => {
                if self.metrics.seal_failure_log.ready() {
                    tracing::warn!(%error, "cannot list the fleet's sealed spans; SQL reads the files listed before (logged at most once a minute)");
                }
                return;
            }
        };
        let mut inner = self.inner.write();
        let mut files = listed;
        let known: HashSet<Path> = files.iter().map(|f| f.location.clone()).collect();
        files.extend(
            inner
                .files
                .iter()
                .filter(|f| f.sealed_at >= started && !known.contains(&f.location))
                .cloned(),
        );
        inner.files = files;
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

/// The batches without the spans whose trace and span id came earlier in them, and how many
/// were dropped.
fn without_duplicates(
    batches: &[RecordBatch],
) -> Result<(Vec<RecordBatch>, usize), datafusion::arrow::error::ArrowError> {
    use datafusion::arrow::array::{AsArray as _, BooleanArray};
    use datafusion::arrow::compute::filter_record_batch;

    use crate::decode::schema::stored;

    let mut seen: HashSet<(&[u8], &[u8])> = HashSet::new();
    let mut dropped = 0;
    let mut unique = Vec::with_capacity(batches.len());
    for batch in batches {
        let traces = batch.column(stored::TRACE_ID).as_fixed_size_binary();
        let spans = batch.column(stored::SPAN_ID).as_fixed_size_binary();
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| Some(seen.insert((traces.value(row), spans.value(row)))))
            .collect();
        let kept = keep.true_count();
        dropped += batch.num_rows() - kept;
        unique.push(if kept == batch.num_rows() {
            batch.clone()
        } else {
            filter_record_batch(batch, &keep)?
        });
    }
    Ok((unique, dropped))
}
