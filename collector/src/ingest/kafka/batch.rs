//! The consumer's batches: the messages of one partition that are there at once, fed through
//! the pipeline as one OTLP request (requests concatenated are one request), with a fallback to
//! one message at a time when a message is not OTLP; and what each tells the offsets.

use std::time::SystemTime;

use super::commit::Offsets;
use crate::ingest::{Ingest, IngestError};
use crate::store::history::partition_seq;
use crate::store::log::{Record, RecordKind};

/// A consumed message's place as a record sequence: the partition in the top 16 bits, its
/// offset in the low 48 (the sealing callbacks hand these back).
pub(crate) fn seq_of(partition: i32, offset: i64) -> u64 {
    partition_seq(partition as u16, offset as u64)
}

/// Most bytes of messages fed as one batch.
pub(super) const BATCH_BYTES: usize = 4 << 20;
/// Most messages fed as one batch.
pub(super) const BATCH_MESSAGES: usize = 4_096;

/// One consumed message.
pub(super) struct Taken {
    pub(super) payload: Vec<u8>,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) produced: SystemTime,
    /// Whether its facts are taken (it is recent, and no other collector counted it).
    pub(super) fresh: bool,
}

/// Messages of one partition fed through the pipeline as one request.
pub(super) struct Batch {
    pub(super) partition: i32,
    pub(super) payload: Vec<u8>,
    /// Each message's partition and offset, and where its bytes end in `payload`.
    pub(super) messages: Vec<(i32, i64)>,
    ends: Vec<usize>,
    newest: SystemTime,
    pub(super) fresh: bool,
}

impl Batch {
    /// A batch of `first`, whose payload it keeps as its buffer.
    pub(super) fn new(first: Taken) -> Self {
        let mut batch = Batch {
            partition: first.partition,
            ends: vec![first.payload.len()],
            messages: vec![(first.partition, first.offset)],
            payload: first.payload,
            newest: first.produced,
            fresh: first.fresh,
        };
        batch
            .payload
            .reserve(BATCH_BYTES.min(batch.payload.len() * 8));
        batch
    }

    /// Adds the message `taken` places, whose bytes are `payload`.
    pub(super) fn push(&mut self, payload: &[u8], taken: &Taken) {
        self.payload.extend_from_slice(payload);
        self.ends.push(self.payload.len());
        self.messages.push((taken.partition, taken.offset));
        self.newest = self.newest.max(taken.produced);
    }

    /// Feeds the batch through `ingest` as one record; if it does not decode (a message that is
    /// not OTLP, from another producer), each message alone, so that one bad message costs
    /// only itself. `offsets` is told what waits for a seal. False when the collector stopped
    /// before all of it was queued.
    pub(super) async fn feed(self, ingest: &Ingest, offsets: Option<&Offsets>) -> bool {
        let partition = self.partition;
        let first = self.messages.first().map_or(0, |m| m.1);
        let last = self.messages.last().map_or(0, |m| m.1);
        let whole = Record {
            kind: RecordKind::Traces,
            seq: seq_of(partition, last),
            arrival: self.newest,
            payload: self.payload,
        };
        if let Some(offsets) = offsets {
            offsets.feeding(partition, first, last);
        }
        match ingest.replay(&whole, false).await {
            Ok(rows) => {
                if let Some(offsets) = offsets {
                    offsets.fed(partition, last, rows);
                }
                return true;
            }
            Err(IngestError::Malformed(_)) => {} // one message at a time, below
            // Stopping: what was not queued stays uncommitted, for the next owner.
            Err(_) => return false,
        }
        // Each message on its own, each waiting for its seal before the batch's entry goes
        // (the last message's entry replaces it): the commit point never passes one of them.
        if let Some(offsets) = offsets {
            for (_, offset) in &self.messages {
                offsets.feeding(partition, *offset, *offset);
            }
        }
        let mut start = 0;
        for (end, (_, offset)) in self.ends.iter().zip(&self.messages) {
            let record = Record {
                kind: RecordKind::Traces,
                seq: seq_of(partition, *offset),
                arrival: self.newest,
                payload: whole.payload[start..*end].to_vec(),
            };
            start = *end;
            match ingest.replay(&record, false).await {
                Ok(rows) => {
                    if let Some(offsets) = offsets {
                        offsets.fed(partition, *offset, rows);
                    }
                }
                Err(IngestError::Malformed(error)) => {
                    if let Some(offsets) = offsets {
                        offsets.fed(partition, *offset, 0);
                    }
                    tracing::warn!(
                        partition,
                        offset,
                        %error,
                        "kafka: a message of the spans topic is not an OTLP trace request; skipped"
                    );
                }
                Err(_) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_message_that_is_not_otlp_costs_only_itself() {
        use prost::Message as _;

        use crate::metrics::Metrics;
        use crate::pipeline::IngestQueue;
        use crate::store::{MemoryStore, SpanStore};
        use crate::testing::{span, trace_request};

        let store: Arc<dyn SpanStore> = Arc::new(MemoryStore::new(
            Default::default(),
            Arc::new(Metrics::new()),
        ));
        let (queue, dispatcher) = IngestQueue::new(1 << 20);
        let pipeline = tokio::spawn(dispatcher.run(store.clone()));
        let ingest = Ingest::new(queue, Arc::new(Metrics::new()));
        let message = |payload: Vec<u8>, offset: i64| Taken {
            payload,
            partition: 0,
            offset,
            produced: SystemTime::now(),
            fresh: true,
        };
        let trace = |n: u8, spans: u64| {
            let spans = (1..=spans)
                .map(|id| span([n; 16], id, "op", 1, 2))
                .collect();
            trace_request(Some("svc"), spans).encode_to_vec()
        };
        // Each row: the messages of one batch, the spans that must be stored, and why.
        let cases: [(Vec<Vec<u8>>, usize, &str); 2] = [
            (
                vec![trace(1, 2), trace(2, 3)],
                5,
                "two good messages, as one batch",
            ),
            (
                vec![trace(3, 2), vec![0xff, 0xff, 0xff], trace(4, 1)],
                3,
                "junk between two good messages: each good one is stored",
            ),
        ];
        let mut stored = 0;
        for (offset, (messages, spans, why)) in cases.into_iter().enumerate() {
            let mut batch: Option<Batch> = None;
            for (i, payload) in messages.into_iter().enumerate() {
                let taken = message(payload, (offset * 10 + i) as i64);
                match &mut batch {
                    None => batch = Some(Batch::new(taken)),
                    Some(batch) => batch.push(&taken.payload, &taken),
                }
            }
            assert!(
                batch.expect("a message").feed(&ingest, None).await,
                "queued: {why}"
            );
            stored += spans;
            for _ in 0..200 {
                if store.stats().rows >= stored {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(store.stats().rows, stored, "{why}");
        }
        drop(ingest);
        pipeline.await.unwrap();
    }
}
