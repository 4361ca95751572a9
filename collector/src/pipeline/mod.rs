//! The bounded ingest queue between the receivers and the stages that take decoded spans: the
//! store, and the facts consumers (registry, weights, topology), each on its own task
//! ([`stages`]).
//!
//! The queue is bounded by memory, not by count: each queued [`SpanBatch`] holds a share of the
//! budget (`--max-ingest-bytes`) until every stage is done with it. When the budget is spent,
//! [`IngestQueue::try_push`] refuses at once and the receivers answer with a retryable error
//! (gRPC `UNAVAILABLE` with `RetryInfo`, HTTP 503 with `Retry-After`): a span is either
//! acknowledged and kept, or refused and counted, never silently dropped.
//!
//! (Its example runs as the unit test `examples::example`.)

pub(crate) mod stages;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::util::cap::{Cap, Place};

use crate::decode::{SpanBatch, SpanFacts};
use crate::store::SpanStore;
use stages::{FactsWork, StoreWork};
pub(crate) use stages::{PipelineHealth, PipelineMetrics};

/// A stage fed with the topology facts of every accepted span (the topology builder, the instance
/// registry), on a task of its own.
pub trait FactsConsumer: Send + Sync + std::fmt::Debug {
    /// The stage's name in metrics and logs (`registry`, `weights`, `topology`).
    fn name(&self) -> &'static str;

    /// Takes in the facts of one batch; must not block for long (it runs on an async task).
    fn consume(&self, facts: &[SpanFacts]);

    /// Like [`FactsConsumer::consume`], for the last consumer, which may take the facts apart
    /// instead of copying what it keeps.
    fn consume_owned(&self, facts: Vec<SpanFacts>) {
        self.consume(&facts);
    }
}

/// The budget's units of `bytes`, at least one.
fn units_of(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).max(1)
}

/// Budget is counted in KiB so that a semaphore's `u32` permits cover budgets up to 4 TiB.
const UNIT: usize = 1024;

/// The sending side of the ingest queue, cloned into every receiver.
#[derive(Debug, Clone)]
pub struct IngestQueue {
    store_tx: mpsc::UnboundedSender<StoreWork>,
    facts_tx: mpsc::UnboundedSender<FactsWork>,
    /// The budget in units of [`UNIT`] bytes, which a configuration reload may resize.
    budget: Cap,
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
        // Unbounded channels, bounded together by the budget: a batch holds its share until
        // every stage is done with it.
        let (store_tx, store_rx) = mpsc::unbounded_channel();
        let (facts_tx, facts_rx) = mpsc::unbounded_channel();
        (
            Self {
                store_tx,
                facts_tx,
                budget: Cap::new(units_of(capacity_bytes)),
            },
            Dispatcher {
                store_rx,
                facts_rx,
                consumers: Vec::new(),
                health: Arc::default(),
            },
        )
    }

    /// A handle that resizes the budget (a configuration reload); unlike a clone of the
    /// queue, it does not keep the queue open.
    pub fn budget(&self) -> QueueBudget {
        QueueBudget(self.budget.clone())
    }

    /// Whether `bytes` more would fit now; receivers ask before decoding a request so that an
    /// overloaded collector does not spend its CPU decoding what it will refuse.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.budget.free() >= self.units(bytes)
    }

    /// Queues a batch with the facts of its spans, or refuses it at once when the budget is
    /// spent.
    pub fn try_push(&self, batch: SpanBatch, facts: Vec<SpanFacts>) -> Result<(), Refusal> {
        let bytes = Self::bytes_of(&batch, &facts);
        self.try_reserve(bytes)?.push(batch, facts, None)
    }

    /// The budget a batch and its facts take.
    pub fn bytes_of(batch: &SpanBatch, facts: &[SpanFacts]) -> usize {
        batch.bytes() + facts_bytes(facts)
    }

    /// Takes `bytes` of the budget for a batch to be pushed later (once it is in the
    /// write-ahead log), or refuses at once when the budget is spent.
    pub fn try_reserve(&self, bytes: usize) -> Result<Reservation, Refusal> {
        let units = u32::try_from(self.units(bytes)).unwrap_or(u32::MAX);
        let place = self.budget.try_take_many(units).ok_or(Refusal::Full)?;
        Ok(self.reservation(place))
    }

    /// [`IngestQueue::try_reserve`], waiting for room instead of refusing: for the replay of
    /// the write-ahead log at start, which has nobody to refuse to.
    pub async fn reserve(&self, bytes: usize) -> Result<Reservation, Refusal> {
        let units = u32::try_from(self.units(bytes)).unwrap_or(u32::MAX);
        let place = self.budget.take_many(units).await.ok_or(Refusal::Closed)?;
        Ok(self.reservation(place))
    }

    fn reservation(&self, place: Place) -> Reservation {
        Reservation {
            store_tx: self.store_tx.clone(),
            facts_tx: self.facts_tx.clone(),
            permit: place,
        }
    }

    /// A read-only view of the queue's fill, for metrics; it does not keep the queue open.
    pub fn gauge(&self) -> QueueGauge {
        QueueGauge {
            budget: self.budget.clone(),
        }
    }

    /// Budget units for `bytes`; a batch larger than the whole budget takes all of it (it waits
    /// for an empty queue rather than being refused for ever).
    fn units(&self, bytes: usize) -> usize {
        bytes.div_ceil(UNIT).clamp(1, self.budget.max())
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
    /// The budget in units of [`UNIT`] bytes, which a configuration reload may resize.
    budget: Cap,
}

impl QueueGauge {
    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.budget.held() * UNIT
    }

    /// The budget in bytes.
    pub fn capacity_bytes(&self) -> usize {
        self.budget.max() * UNIT
    }
}

/// `wayfinder_ingest_queue_bytes` and `wayfinder_ingest_queue_capacity_bytes`, read at each
/// scrape.
impl prometheus_client::collector::Collector for QueueGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::{MetricType, gauge::ConstGauge};
        for (name, help, bytes) in [
            (
                "wayfinder_ingest_queue_bytes",
                "Bytes waiting in the ingest queue",
                self.queued_bytes(),
            ),
            (
                "wayfinder_ingest_queue_capacity_bytes",
                "Memory budget of the ingest queue",
                self.capacity_bytes(),
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX)).encode(family)?;
        }
        Ok(())
    }
}

/// Resizes the ingest queue's budget.
#[derive(Debug, Clone)]
pub struct QueueBudget(Cap);

impl QueueBudget {
    /// A new budget: a larger one admits more at once, a smaller one takes effect as queued
    /// batches leave (nothing queued is dropped).
    pub fn set(&self, capacity_bytes: usize) {
        self.0.set(units_of(capacity_bytes));
    }
}

/// A share of the queue's budget taken for one batch: released if dropped unused.
#[derive(Debug)]
pub struct Reservation {
    store_tx: mpsc::UnboundedSender<StoreWork>,
    facts_tx: mpsc::UnboundedSender<FactsWork>,
    permit: Place,
}

impl Reservation {
    /// Queues the batch (of write-ahead log record `seq`, if logged) and its facts; the budget
    /// is held until every stage is done with them.
    pub fn push(
        self,
        batch: SpanBatch,
        facts: Vec<SpanFacts>,
        seq: Option<u64>,
    ) -> Result<(), Refusal> {
        let permit = Arc::new(self.permit);
        // The store first: once it has the batch, the spans are acknowledged.
        self.store_tx
            .send(StoreWork {
                batch,
                seq,
                _permit: permit.clone(),
            })
            .map_err(|_| Refusal::Closed)?;
        // The facts chain only feeds derived state; it is open while the store's stage is.
        let _ = self.facts_tx.send(FactsWork {
            facts,
            _permit: permit,
        });
        Ok(())
    }

    /// Queues only the facts of spans already stored (replayed records whose spans are sealed).
    pub fn push_facts(self, facts: Vec<SpanFacts>) -> Result<(), Refusal> {
        self.facts_tx
            .send(FactsWork {
                facts,
                _permit: Arc::new(self.permit),
            })
            .map_err(|_| Refusal::Closed)
    }
}

/// The receiving side: starts the stages that take each batch.
#[derive(Debug)]
pub struct Dispatcher {
    store_rx: mpsc::UnboundedReceiver<StoreWork>,
    facts_rx: mpsc::UnboundedReceiver<FactsWork>,
    consumers: Vec<Arc<dyn FactsConsumer>>,
    health: Arc<PipelineHealth>,
}

impl Dispatcher {
    /// Also feeds the facts of every batch to `consumer`, on a stage of its own after the
    /// consumers added before (the last one added gets the facts to keep).
    pub fn with_consumer(mut self, consumer: Arc<dyn FactsConsumer>) -> Self {
        self.consumers.push(consumer);
        self
    }

    /// Whether the stages are up, for `/readyz` and `/metrics`.
    pub fn health(&self) -> Arc<PipelineHealth> {
        self.health.clone()
    }

    /// Runs the stages until every [`IngestQueue`] clone is dropped and every queue is drained.
    pub async fn run(self, store: Arc<dyn SpanStore>) {
        let tasks = stages::spawn(
            &self.health,
            store,
            self.store_rx,
            self.facts_rx,
            self.consumers,
        );
        for task in tasks {
            // A stage's panics are caught inside it; a task only fails when the runtime stops.
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        let taken = dispatcher.store_rx.try_recv().expect("queued");
        drop(taken);
        assert!(
            !queue.has_room(one.bytes()),
            "the facts stages still hold the batch's share"
        );
        drop(dispatcher.facts_rx.try_recv().expect("queued"));
        queue
            .try_push(one, Vec::new())
            .expect("room again once the consumer took a batch");
    }

    /// Panics on a batch of exactly one span; counts the spans of the others.
    #[derive(Debug, Default)]
    struct Poisoned {
        spans: std::sync::atomic::AtomicUsize,
    }

    impl Poisoned {
        fn check(&self, spans: usize) {
            assert_ne!(spans, 1, "a poisoned batch");
            self.spans
                .fetch_add(spans, std::sync::atomic::Ordering::Relaxed);
        }

        fn spans(&self) -> usize {
            self.spans.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    impl FactsConsumer for Poisoned {
        fn name(&self) -> &'static str {
            "poisoned"
        }
        fn consume(&self, facts: &[SpanFacts]) {
            self.check(facts.len());
        }
    }

    /// Counts every span it is given.
    #[derive(Debug, Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl FactsConsumer for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn consume(&self, facts: &[SpanFacts]) {
            self.0
                .fetch_add(facts.len(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A memory store that panics on a batch of one span.
    #[derive(Debug)]
    struct PoisonedStore(crate::store::MemoryStore);

    impl SpanStore for PoisonedStore {
        fn append(&self, batch: SpanBatch) {
            assert_ne!(batch.rows(), 1, "a poisoned batch");
            self.0.append(batch);
        }
        fn snapshot(&self) -> Vec<datafusion::arrow::record_batch::RecordBatch> {
            self.0.snapshot()
        }
        fn maintain(&self, now: std::time::SystemTime) {
            self.0.maintain(now);
        }
        fn stats(&self) -> crate::store::StoreStats {
            self.0.stats()
        }
    }

    fn facts(spans: usize) -> (SpanBatch, Vec<SpanFacts>) {
        let spans = (0..spans as u64)
            .map(|i| span([7; 16], i + 1, "op", 1, 2))
            .collect();
        let decoded = decode_traces(&trace_request(None, spans)).unwrap();
        (decoded.batch.unwrap(), decoded.facts)
    }

    fn memory_store() -> crate::store::MemoryStore {
        crate::store::MemoryStore::new(Default::default(), Arc::new(crate::metrics::Metrics::new()))
    }

    /// Pushes 10 spans, a poisoned batch of 1, and 10 more, and waits until `stage` is down.
    async fn push_with_poison(queue: &IngestQueue, health: &PipelineHealth, stage: &str) {
        for spans in [10, 1, 10] {
            let (batch, facts) = facts(spans);
            queue.try_push(batch, facts).expect("room");
        }
        // Busy, so that the paused clock does not skip the backoff while we look.
        while !health.down().contains(&stage) {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_panics_loses_one_batch_to_itself_and_nothing_else() {
        let store = Arc::new(memory_store());
        let poisoned = Arc::new(Poisoned::default());
        let after = Arc::new(Counting::default());
        let (queue, dispatcher) = IngestQueue::new(1 << 20);
        let health = dispatcher.health();
        let run = tokio::spawn(
            dispatcher
                .with_consumer(poisoned.clone())
                .with_consumer(after.clone())
                .run(store.clone()),
        );
        push_with_poison(&queue, &health, "poisoned").await;
        assert!(!health.all_up(), "down during its backoff");
        assert_eq!(health.panics("poisoned"), 1);

        tokio::time::sleep(stages::MAX_BACKOFF).await;
        assert!(health.all_up(), "up again after its backoff");
        drop(queue);
        run.await.unwrap();
        assert_eq!(store.stats().rows, 21, "the store has every batch");
        assert_eq!(
            poisoned.spans(),
            20,
            "the stage resumed after the poisoned batch"
        );
        assert_eq!(
            after.0.load(std::sync::atomic::Ordering::Relaxed),
            21,
            "the next stage got every batch's facts, the poisoned one's too"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_panics_keeps_every_other_batch() {
        let store = Arc::new(PoisonedStore(memory_store()));
        let after = Arc::new(Counting::default());
        let (queue, dispatcher) = IngestQueue::new(1 << 20);
        let health = dispatcher.health();
        let metrics = PipelineMetrics(health.clone());
        let run = tokio::spawn(dispatcher.with_consumer(after.clone()).run(store.clone()));
        push_with_poison(&queue, &health, "store").await;

        let registry_text = |metrics: PipelineMetrics| {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(metrics));
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        let text = registry_text(PipelineMetrics(health.clone()));
        assert!(
            text.contains("wayfinder_pipeline_stage_up{stage=\"store\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("wayfinder_pipeline_stage_up{stage=\"counting\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wayfinder_pipeline_stage_panics_total{stage=\"store\"} 1"),
            "{text}"
        );

        drop(queue);
        run.await.unwrap();
        assert_eq!(store.stats().rows, 20, "only the poisoned batch is missing");
        assert_eq!(after.0.load(std::sync::atomic::Ordering::Relaxed), 21);
        assert!(health.all_up());
        assert!(registry_text(metrics).contains("wayfinder_pipeline_stage_up{stage=\"store\"} 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_doubles_and_a_good_batch_resets_it() {
        let store = Arc::new(PoisonedStore(memory_store()));
        let (queue, dispatcher) = IngestQueue::new(1 << 20);
        let health = dispatcher.health();
        let run = tokio::spawn(dispatcher.run(store.clone()));
        let push = |spans| {
            let (batch, facts) = facts(spans);
            queue.try_push(batch, facts).unwrap();
        };
        let started = tokio::time::Instant::now();
        let at = |ms| tokio::time::sleep_until(started + Duration::from_millis(ms));
        // Two poisoned batches in a row: down 1 s, then 2 s.
        push(1);
        push(1);
        at(900).await;
        assert_eq!((health.panics("store"), health.all_up()), (1, false));
        at(1100).await;
        assert_eq!((health.panics("store"), health.all_up()), (2, false));
        at(2900).await;
        assert!(!health.all_up(), "the second backoff is 2 s");
        at(3100).await;
        assert!(health.all_up());
        // A good batch, then a poisoned one: back to 1 s.
        push(10);
        push(1);
        at(3200).await;
        assert_eq!((health.panics("store"), health.all_up()), (3, false));
        at(4200).await;
        assert!(health.all_up(), "a good batch reset the backoff to 1 s");
        drop(queue);
        run.await.unwrap();
        assert_eq!(store.stats().rows, 10);
    }

    #[test]
    fn closed_queue_refuses() {
        let (queue, dispatcher) = IngestQueue::new(1 << 20);
        drop(dispatcher);
        assert_eq!(queue.try_push(batch(1), Vec::new()), Err(Refusal::Closed));
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[tokio::test(flavor = "current_thread")]
    async fn example() {
        use crate::pipeline::IngestQueue;
        use crate::store::{MemoryStore, SpanStore};
        use std::sync::Arc;

        let metrics = Arc::new(crate::metrics::Metrics::new());
        let store = Arc::new(MemoryStore::new(Default::default(), metrics.clone()));
        let (queue, dispatcher) = IngestQueue::new(64 * 1024 * 1024);
        let health = dispatcher.health();
        let task = tokio::spawn(dispatcher.run(store.clone()));
        drop(queue); // the receivers are gone: the stages drain what is queued and stop
        task.await.unwrap();
        assert!(health.all_up());
        assert_eq!(store.stats().rows, 0);
    }
}
