//! The stages behind the ingest queue, each on its own task: the store takes every batch, and
//! the facts consumers (registry, weights, topology) form a chain, each handing the batch's
//! facts to the next when it is done with them (the last one keeps them). The store and the
//! chain run side by side, and each stage of the chain works on its own batch, so ingest is
//! no longer bounded by one task doing everything in turn.
//!
//! A stage that panics on a batch is contained, as a supervisor would: the panic is caught and
//! counted (`wayfinder_pipeline_stage_panics_total{stage}`), that one batch is lost to that one
//! stage only (the others have it, and a store panic loses no other batch), and the stage is
//! *down* for a backoff (1 s, doubling to [`MAX_BACKOFF`], reset by a batch that succeeds)
//! before it takes the next batch. While a stage is down `/readyz` answers 503 and
//! `wayfinder_pipeline_stage_up{stage}` is 0; its queue keeps filling the ingest budget, so a
//! stage that stays down makes ingest refuse with retryable errors instead of losing anything.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::FactsConsumer;
use crate::decode::{SpanBatch, SpanFacts};
use crate::store::SpanStore;

/// The longest a stage stays down after a panic.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The first backoff after a panic.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// A batch's share of the ingest budget, released when every stage is done with the batch.
pub(super) type Permit = Arc<crate::util::cap::Place>;

/// What the store stage receives.
#[derive(Debug)]
pub(super) struct StoreWork {
    pub(super) batch: SpanBatch,
    /// The write-ahead log record it came from.
    pub(super) seq: Option<u64>,
    pub(super) _permit: Permit,
}

/// What a stage of the facts chain receives.
#[derive(Debug)]
pub(super) struct FactsWork {
    pub(super) facts: Vec<SpanFacts>,
    pub(super) _permit: Permit,
}

/// Whether each stage is up, and how often it panicked.
#[derive(Debug, Default)]
pub struct PipelineHealth {
    stages: parking_lot::RwLock<Vec<Arc<StageHealth>>>,
}

/// One stage's state.
#[derive(Debug)]
struct StageHealth {
    name: &'static str,
    up: AtomicBool,
    panics: AtomicU64,
}

impl PipelineHealth {
    fn add(&self, name: &'static str) -> Arc<StageHealth> {
        let stage = Arc::new(StageHealth {
            name,
            up: AtomicBool::new(true),
            panics: AtomicU64::new(0),
        });
        self.stages.write().push(stage.clone());
        stage
    }

    /// Whether every stage is up (none is in its backoff after a panic).
    pub fn all_up(&self) -> bool {
        self.stages
            .read()
            .iter()
            .all(|stage| stage.up.load(Ordering::Acquire))
    }

    /// The stages that are down now, by name.
    pub fn down(&self) -> Vec<&'static str> {
        self.stages
            .read()
            .iter()
            .filter(|stage| !stage.up.load(Ordering::Acquire))
            .map(|stage| stage.name)
            .collect()
    }

    /// How many times the stage `name` panicked.
    pub fn panics(&self, name: &str) -> u64 {
        self.stages
            .read()
            .iter()
            .filter(|stage| stage.name == name)
            .map(|stage| stage.panics.load(Ordering::Relaxed))
            .sum()
    }
}

/// `wayfinder_pipeline_stage_up` and `wayfinder_pipeline_stage_panics_total`, per stage.
#[derive(Debug)]
pub(crate) struct PipelineMetrics(pub Arc<PipelineHealth>);

impl prometheus_client::collector::Collector for PipelineMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stages = self.0.stages.read().clone();
        let mut up = encoder.encode_descriptor(
            "wayfinder_pipeline_stage_up",
            "Whether an ingest stage is up (0 while it backs off after a panic)",
            None,
            MetricType::Gauge,
        )?;
        for stage in &stages {
            let labels = [("stage", stage.name)];
            let value = i64::from(stage.up.load(Ordering::Acquire));
            ConstGauge::new(value).encode(up.encode_family(&labels)?)?;
        }
        let mut panics = encoder.encode_descriptor(
            "wayfinder_pipeline_stage_panics",
            "Batches on which an ingest stage panicked (that batch is lost to that stage only)",
            None,
            MetricType::Counter,
        )?;
        for stage in &stages {
            let labels = [("stage", stage.name)];
            ConstCounter::new(stage.panics.load(Ordering::Relaxed))
                .encode(panics.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Runs `work`; after a panic, counts it, logs it and keeps the stage down for its backoff.
async fn contained(stage: &StageHealth, backoff: &mut Duration, work: impl FnOnce()) {
    match std::panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(()) => *backoff = FIRST_BACKOFF,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            stage.panics.fetch_add(1, Ordering::Relaxed);
            stage.up.store(false, Ordering::Release);
            tracing::error!(
                stage = stage.name,
                panic = %message,
                backoff_ms = backoff.as_millis() as u64,
                "an ingest stage panicked on a batch; it skips that batch and resumes after its backoff"
            );
            tokio::time::sleep(*backoff).await;
            *backoff = (*backoff * 2).min(MAX_BACKOFF);
            stage.up.store(true, Ordering::Release);
        }
    }
}

/// Starts the store stage and the facts chain; each ends when its queue is closed and drained.
pub(super) fn spawn(
    health: &Arc<PipelineHealth>,
    store: Arc<dyn SpanStore>,
    mut store_rx: mpsc::UnboundedReceiver<StoreWork>,
    facts_rx: mpsc::UnboundedReceiver<FactsWork>,
    consumers: Vec<Arc<dyn FactsConsumer>>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(consumers.len() + 1);
    let stage = health.add("store");
    tasks.push(tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        while let Some(work) = store_rx.recv().await {
            let StoreWork {
                batch,
                seq,
                _permit,
            } = work;
            contained(&stage, &mut backoff, || store.append_logged(batch, seq)).await;
        }
    }));

    let count = consumers.len();
    let mut rx = facts_rx;
    for (index, consumer) in consumers.into_iter().enumerate() {
        let stage = health.add(consumer.name());
        let last = index + 1 == count;
        let (next_tx, next_rx) = mpsc::unbounded_channel::<FactsWork>();
        let mut input = std::mem::replace(&mut rx, next_rx);
        tasks.push(tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            while let Some(work) = input.recv().await {
                if last {
                    let FactsWork { facts, _permit } = work;
                    contained(&stage, &mut backoff, || consumer.consume_owned(facts)).await;
                } else {
                    contained(&stage, &mut backoff, || consumer.consume(&work.facts)).await;
                    // The next stage is there until this one ends: it only fails if it panicked
                    // out of its loop, which `contained` prevents.
                    let _ = next_tx.send(work);
                }
            }
        }));
    }
    // Without consumers the facts are dropped as they come (with their share of the budget).
    tasks.push(tokio::spawn(
        async move { while rx.recv().await.is_some() {} },
    ));
    tasks
}
