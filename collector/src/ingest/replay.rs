//! The write-ahead log fed back in at start, before any receiver serves: each record through
//! the same decoder and queue as a request, except the ones whose spans sealed files hold.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;
use wayfinder_api::health::HealthReport;

use crate::decode::decode_traces_wire_with;
use crate::decode::health::{decode_health_logs, validate};
use crate::ingest::{Ingest, IngestError};
use crate::pipeline::IngestQueue;
use crate::store::log::{Record, RecordKind, Recovery, Wal};

/// Feeds the log's records back in, oldest first, a segment at a time; records older than
/// `keep_since` are past the retention and skipped. A record that cannot be taken (it was
/// written by a version that took more than this one does) is logged and skipped.
pub(crate) async fn replay(
    ingest: &Ingest,
    wal: &Wal,
    recovery: Recovery,
    sealed: &SealedRecords,
    keep_since: SystemTime,
    facts_since: SystemTime,
) {
    if recovery.records == 0 {
        return;
    }
    let started = std::time::Instant::now();
    let store_only = ingest.clone().with_facts(false);
    let (mut records, mut spans, mut skipped) = (0u64, 0usize, 0u64);
    let recovery = Arc::new(recovery);
    for index in 0..recovery.found.len() {
        let reading = recovery.clone();
        let segment = tokio::task::spawn_blocking(move || {
            reading.segment(index).expect("the segment is in the list")
        })
        .await;
        let segment = match segment {
            Ok(Ok(segment)) => segment,
            Ok(Err(error)) => {
                tracing::error!(%error, "write-ahead log: cannot read a segment again; its records are not replayed");
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "write-ahead log: reading a segment failed");
                continue;
            }
        };
        for record in &segment {
            if record.arrival < keep_since {
                skipped += 1;
                continue;
            }
            // Older spans would count as calls of the current window: store only.
            let through = if record.arrival >= facts_since {
                ingest
            } else {
                &store_only
            };
            let is_sealed = sealed.holds(record.seq);
            match through.replay(record, is_sealed).await {
                Ok(rows) => {
                    records += 1;
                    spans += rows;
                    if rows > 0 {
                        wal.track(record.seq);
                    }
                }
                Err(error) => {
                    tracing::warn!(seq = record.seq, %error, "write-ahead log: a record could not be replayed; skipped");
                }
            }
        }
    }
    wal.stats()
        .replayed_records
        .fetch_add(records, Ordering::Relaxed);
    tracing::info!(
        records,
        spans,
        skipped_past_retention = skipped,
        elapsed = ?started.elapsed(),
        "write-ahead log replayed"
    );
}

/// The log records whose spans are already in sealed files, as sorted ranges.
#[derive(Debug, Default)]
pub(crate) struct SealedRecords(Vec<(u64, u64)>);

impl SealedRecords {
    /// Sorted and merged: two seals of the same records (a partition sealed twice) may
    /// overlap.
    pub(crate) fn new(ranges: Vec<(u64, u64)>) -> Self {
        Self(crate::store::history::seqs::merge(ranges))
    }

    pub(crate) fn holds(&self, seq: u64) -> bool {
        let after = self.0.partition_point(|(first, _)| *first <= seq);
        after > 0 && self.0[after - 1].1 >= seq
    }
}

impl Ingest {
    /// Feeds one record of the write-ahead log back in at start, as it was taken the first
    /// time, but not logged again: spans to the store (waiting for room in the queue) and, if
    /// this ingest takes facts, to the topology and the other facts consumers; heartbeats to
    /// the registry at their arrival time. Returns the spans queued. (The caller replays
    /// spans too old for the current window through a clone `with_facts(false)`.) A record
    /// whose spans are `sealed` already gives only its facts, and is skipped without them.
    pub async fn replay(&self, record: &Record, sealed: bool) -> Result<usize, IngestError> {
        match record.kind {
            RecordKind::Traces => {
                if sealed && !self.options.facts {
                    return Ok(0);
                }
                let decoded = decode_traces_wire_with(&record.payload, &self.options)
                    .map_err(|e| IngestError::Malformed(e.to_string()))?;
                let Some(batch) = decoded.batch else {
                    return Ok(0);
                };
                let rows = batch.rows();
                let bytes = IngestQueue::bytes_of(&batch, &decoded.facts);
                let reservation = self
                    .queue
                    .reserve(bytes)
                    .await
                    .map_err(|_| IngestError::ShuttingDown)?;
                if sealed {
                    reservation
                        .push_facts(decoded.facts)
                        .map_err(|_| IngestError::ShuttingDown)?;
                    return Ok(0);
                }
                reservation
                    .push(batch, decoded.facts, Some(record.seq))
                    .map_err(|_| IngestError::ShuttingDown)?;
                Ok(rows)
            }
            RecordKind::Logs => {
                let request = ExportLogsServiceRequest::decode(&record.payload[..])
                    .map_err(|e| IngestError::Malformed(e.to_string()))?;
                for event in decode_health_logs(&request).events {
                    self.apply_beat(event, Some(record.arrival));
                }
                Ok(0)
            }
            RecordKind::Health => {
                let report: HealthReport = serde_json::from_slice(&record.payload)
                    .map_err(|e| IngestError::Malformed(e.to_string()))?;
                let event = validate(report).map_err(IngestError::Malformed)?;
                self.apply_beat(event, Some(record.arrival));
                Ok(0)
            }
        }
    }
}
