//! The bounded ingest queue between the receivers and the consumers of decoded spans.
//!
//! The queue is bounded by memory, not by count: each queued [`SpanBatch`] holds a share of the
//! budget (`--max-ingest-bytes`) until the consumers have taken it. When the budget is spent,
//! [`IngestQueue::try_push`] refuses at once and the receivers answer with a retryable error
//! (gRPC `UNAVAILABLE` with `RetryInfo`, HTTP 503 with `Retry-After`): a span is either
//! acknowledged and kept, or refused and counted, never silently dropped.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use wayfinder_collector::pipeline::IngestQueue;
//! use wayfinder_collector::store::{MemoryStore, SpanStore};
//!
//! let metrics = Arc::new(wayfinder_collector::metrics::Metrics::new());
//! let store = Arc::new(MemoryStore::new(Default::default(), metrics.clone()));
//! let (queue, dispatcher) = IngestQueue::new(64 * 1024 * 1024);
//! let task = tokio::spawn(dispatcher.run(store.clone()));
//! drop(queue); // the receivers are gone: the dispatcher drains what is queued and stops
//! task.await.unwrap();
//! assert_eq!(store.stats().rows, 0);
//! # }
//! ```

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::decode::{SpanBatch, SpanFacts};
use crate::store::SpanStore;

/// A stage fed with the topology facts of every accepted span (the topology builder, the instance
/// registry), after the store has the batch.
pub trait FactsConsumer: Send + Sync + std::fmt::Debug {
    /// Takes in the facts of one batch; must not block for long (it runs on the dispatcher).
    fn consume(&self, facts: &[SpanFacts]);

    /// Like [`FactsConsumer::consume`], for the last consumer, which may take the facts apart
    /// instead of copying what it keeps.
    fn consume_owned(&self, facts: Vec<SpanFacts>) {
        self.consume(&facts);
    }
}

/// Budget is counted in KiB so that a semaphore's `u32` permits cover budgets up to 4 TiB.
const UNIT: usize = 1024;

/// The sending side of the ingest queue, cloned into every receiver.
#[derive(Debug, Clone)]
pub struct IngestQueue {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    capacity_units: usize,
}

/// A batch in the queue with its share of the budget.
#[derive(Debug)]
struct Queued {
    batch: SpanBatch,
    facts: Vec<SpanFacts>,
    _permit: OwnedSemaphorePermit,
}

/// Why the queue refused a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The memory budget is spent: retry later.
    #[error("the collector's ingest queue is full; retry later")]
    Full,
    /// The collector is shutting down.
    #[error("the collector is shutting down")]
    Closed,
}

impl IngestQueue {
    /// A queue with a budget of `capacity_bytes`, and the dispatcher that empties it.
    pub fn new(capacity_bytes: usize) -> (Self, Dispatcher) {
        let capacity_units = capacity_bytes
            .div_ceil(UNIT)
            .clamp(1, Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(capacity_units));
        (
            Self {
                tx,
                budget: budget.clone(),
                capacity_units,
            },
            Dispatcher {
                rx,
                consumers: Vec::new(),
            },
        )
    }

    /// Whether `bytes` more would fit now; receivers ask before decoding a request so that an
    /// overloaded collector does not spend its CPU decoding what it will refuse.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.budget.available_permits() >= self.units(bytes)
    }

    /// Queues a batch with the facts of its spans, or refuses it at once when the budget is
    /// spent.
    pub fn try_push(&self, batch: SpanBatch, facts: Vec<SpanFacts>) -> Result<(), Refusal> {
        let bytes = batch.bytes() + facts_bytes(&facts);
        let units = u32::try_from(self.units(bytes)).unwrap_or(u32::MAX);
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|e| match e {
                tokio::sync::TryAcquireError::Closed => Refusal::Closed,
                tokio::sync::TryAcquireError::NoPermits => Refusal::Full,
            })?;
        self.tx
            .send(Queued {
                batch,
                facts,
                _permit: permit,
            })
            .map_err(|_| Refusal::Closed)
    }

    /// A read-only view of the queue's fill, for metrics; it does not keep the queue open.
    pub fn gauge(&self) -> QueueGauge {
        QueueGauge {
            budget: self.budget.clone(),
            capacity_units: self.capacity_units,
        }
    }

    /// Budget units for `bytes`; a batch larger than the whole budget takes all of it (it waits
    /// for an empty queue rather than being refused for ever).
    fn units(&self, bytes: usize) -> usize {
        bytes.div_ceil(UNIT).clamp(1, self.capacity_units)
    }
}

/// About how much memory a batch's facts hold (the struct, plus the peer attributes and links
/// some spans have).
fn facts_bytes(facts: &[SpanFacts]) -> usize {
    let heap: usize = facts
        .iter()
        .map(|f| {
            f.links.len() * std::mem::size_of::<crate::decode::SpanRef>()
                + f.peer.as_ref().map_or(0, |_| 256)
        })
        .sum();
    std::mem::size_of_val(facts) + heap
}

/// How full the ingest queue is.
#[derive(Debug, Clone)]
pub struct QueueGauge {
    budget: Arc<Semaphore>,
    capacity_units: usize,
}

impl QueueGauge {
    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.capacity_units
            .saturating_sub(self.budget.available_permits())
            * UNIT
    }

    /// The budget in bytes.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity_units * UNIT
    }
}

/// The receiving side: hands each batch to the consumers, in order.
#[derive(Debug)]
pub struct Dispatcher {
    rx: mpsc::UnboundedReceiver<Queued>,
    consumers: Vec<Arc<dyn FactsConsumer>>,
}

impl Dispatcher {
    /// Also feeds the facts of every batch to `consumer` (after the consumers added before; the
    /// last one added gets the facts to keep).
    pub fn with_consumer(mut self, consumer: Arc<dyn FactsConsumer>) -> Self {
        self.consumers.push(consumer);
        self
    }

    /// Runs until every [`IngestQueue`] clone is dropped and the queue is drained.
    pub async fn run(mut self, store: Arc<dyn SpanStore>) {
        while let Some(queued) = self.rx.recv().await {
            store.append(queued.batch);
            if let Some((last, others)) = self.consumers.split_last() {
                for consumer in others {
                    consumer.consume(&queued.facts);
                }
                last.consume_owned(queued.facts);
            }
            // The permit is released here, after every stage has the batch.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_traces;
    use crate::testing::{span, trace_request};

    fn batch(spans: usize) -> SpanBatch {
        let spans = (0..spans as u64)
            .map(|i| span([1; 16], i + 1, "op", 1, 2))
            .collect();
        decode_traces(&trace_request(None, spans))
            .unwrap()
            .batch
            .unwrap()
    }

    #[test]
    fn refuses_when_full_and_frees_after_dispatch() {
        let one = batch(100);
        let (queue, mut dispatcher) = IngestQueue::new(one.bytes() * 2 + UNIT);
        queue.try_push(one.clone(), Vec::new()).expect("first fits");
        queue
            .try_push(one.clone(), Vec::new())
            .expect("second fits");
        assert_eq!(
            queue.try_push(one.clone(), Vec::new()),
            Err(Refusal::Full),
            "third is over the budget"
        );
        assert!(!queue.has_room(one.bytes()));
        let taken = dispatcher.rx.try_recv().expect("queued");
        drop(taken);
        queue
            .try_push(one, Vec::new())
            .expect("room again once the consumer took a batch");
    }

    #[test]
    fn closed_queue_refuses() {
        let (queue, dispatcher) = IngestQueue::new(1 << 20);
        drop(dispatcher);
        assert_eq!(queue.try_push(batch(1), Vec::new()), Err(Refusal::Closed));
    }
}
