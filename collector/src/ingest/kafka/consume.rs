//! The stores' side of fleet mode: the collectors of one consumer group share the partitions of
//! the spans topic (cooperative-sticky: a rebalance moves only the partitions that change
//! hands), and each feeds what it consumes through the same decoder and pipeline as a request,
//! as the write-ahead log's replay does — the topic is the fleet's log. Spans older than the
//! weights' window are stored without their facts, so that a replay does not count old calls
//! in the current window.
//!
//! With a history, offsets are committed up to what is sealed ([`super::commit`]): a collector
//! that takes a partition reads it from there, skipping what a seal holds. Without one, nothing
//! is committed: a collector that takes a partition reads it from the start of the topic's
//! retention, which rebuilds its memory (`docs/fleet.md` says what that costs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use tokio_util::sync::CancellationToken;

use super::batch::{BATCH_BYTES, BATCH_MESSAGES, Batch, Taken, seq_of};
use super::commit::{GroupConsumer, GroupContext, Offsets};
use super::owners::Owners;
use super::{KafkaError, KafkaSettings, group_config};
use crate::ingest::Ingest;
use crate::metrics::{LogEvery, Metrics};
use crate::store::log::{Record, RecordKind};

/// How long to wait after the brokers' error before asking again.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Consumes this collector's partitions of the spans topic.
pub(crate) struct SpanConsumer {
    consumer: Arc<GroupConsumer>,
    /// Older spans are stored without their facts.
    facts_window: Duration,
    /// With a history: what is handed over, sealed and committed.
    offsets: Option<Arc<Offsets>>,
    /// Messages not fed because a seal holds them already.
    skipped_sealed: prometheus_client::metrics::counter::Counter,
    /// At a stop: the partitions still to read, and their ends.
    drain: parking_lot::Mutex<Option<HashMap<i32, i64>>>,
}

/// The longest a stopping collector reads what its partitions hold (the binary's whole stop is
/// bounded by 10 s; what is left is read by the next owner).
const DRAIN_WAIT: Duration = Duration::from_secs(3);
/// How long a drain waits for a message before it looks again whether it is done.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How long a stop's drain waits for the brokers' watermarks and committed offsets, in all.
const WATERMARK_WAIT: Duration = Duration::from_secs(1);
/// How many times the seals of a partition just taken are read before it is read without.
const SEAL_READ_TRIES: u32 = 3;

impl std::fmt::Debug for SpanConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanConsumer").finish_non_exhaustive()
    }
}

impl SpanConsumer {
    /// Joins the group of `settings` on its spans topic; the partitions it owns are shown in
    /// `metrics` (`wayfinder_kafka_owned_partition{partition}`).
    pub(crate) fn new(
        settings: &KafkaSettings,
        facts_window: Duration,
        metrics: &Metrics,
        offsets: Option<Arc<Offsets>>,
    ) -> Result<Self, KafkaError> {
        let context = GroupContext {
            offsets: offsets.clone(),
        };
        // `enable.partition.eof` says when a partition is read to its end: until then, a trace
        // of it not found here may be still to come.
        let consumer: GroupConsumer = group_config(settings, &settings.kafka_group)
            .create_with_context(context)
            .map_err(|source| KafkaError::Client {
                what: "consumer",
                source,
            })?;
        consumer
            .subscribe(&[&settings.spans_topic()])
            .map_err(|source| KafkaError::Client {
                what: "consumer's subscription",
                source,
            })?;
        let consumer = Arc::new(consumer);
        if let Some(offsets) = &offsets {
            offsets.attach(&consumer);
        }
        metrics.register_collector(Box::new(OwnedPartitions(consumer.clone())));
        let skipped_sealed = prometheus_client::metrics::counter::Counter::default();
        metrics.register(
            "wayfinder_kafka_sealed_skipped_messages",
            "Messages of the spans topic read again after a move and not stored again, because a seal in the bucket holds them already",
            skipped_sealed.clone(),
        );
        Ok(SpanConsumer {
            consumer,
            facts_window,
            offsets,
            skipped_sealed,
            drain: parking_lot::Mutex::new(None),
        })
    }

    /// The consumer, for what reads its assignment (the owners' publisher).
    pub(crate) fn handle(&self) -> Arc<GroupConsumer> {
        self.consumer.clone()
    }

    /// Feeds every message into `ingest` until `stop`; then leaves the group, so that the
    /// others take its partitions at once rather than after the session timeout. The messages
    /// that are there at once go as one batch (OTLP requests concatenated are one request):
    /// a message is one trace, and the pipeline's cost is per batch.
    /// `owners` says how far other collectors fed a partition this one takes: their calls are
    /// counted already, so the messages up to there are stored without their facts.
    pub(crate) async fn run(self, ingest: Ingest, owners: Arc<Owners>, stop: CancellationToken) {
        use futures::FutureExt as _;

        let store_only = ingest.clone().with_facts(false);
        let logged = LogEvery::default();
        let mut pending: Option<Taken> = None;
        let mut drain_until: Option<tokio::time::Instant> = None;
        let mut seal_failures: HashMap<i32, u32> = HashMap::new();
        loop {
            let first = match pending.take() {
                Some(taken) => taken,
                None => {
                    let message = match drain_until {
                        None => tokio::select! {
                            message = self.consumer.recv() => message,
                            () = stop.cancelled() => {
                                if self.offsets.is_none() {
                                    break;
                                }
                                // With a history: what was acknowledged up to now is read into
                                // the store, which seals it before the collector leaves.
                                *self.drain.lock() = Some(self.ends().await);
                                drain_until = Some(tokio::time::Instant::now() + DRAIN_WAIT);
                                continue;
                            }
                        },
                        Some(until) => {
                            if self.drained() || tokio::time::Instant::now() >= until {
                                break;
                            }
                            match tokio::time::timeout(DRAIN_POLL, self.consumer.recv()).await {
                                Ok(message) => message,
                                Err(_) => continue,
                            }
                        }
                    };
                    match message {
                        Ok(message) => self.take(&message, &owners),
                        Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                            owners.caught_up(partition);
                            continue;
                        }
                        Err(error) => {
                            if logged.ready() {
                                tracing::warn!(%error, "kafka: cannot consume; trying again (logged at most once a minute)");
                            }
                            tokio::time::sleep(ERROR_PAUSE).await;
                            continue;
                        }
                    }
                }
            };
            // A message held back while its partition was revoked is not this collector's.
            if !self.owns(first.partition) {
                continue;
            }
            if let Some(offsets) = &self.offsets
                && offsets.needs_seals(first.partition)
            {
                match offsets.read_seals(first.partition, first.offset).await {
                    Ok(()) => {
                        seal_failures.remove(&first.partition);
                    }
                    Err(error) => {
                        let failures = seal_failures.entry(first.partition).or_insert(0u32);
                        *failures += 1;
                        if *failures >= SEAL_READ_TRIES {
                            // Consuming every partition matters more than the rare crash tail
                            // that could be stored twice (a seal's duplicate check still
                            // holds within it).
                            tracing::warn!(%error, partition = first.partition, "kafka: cannot read which offsets the bucket's seals hold; the partition is read without them (what a crash left sealed and uncommitted may be stored again)");
                            offsets.without_seals(first.partition);
                            seal_failures.remove(&first.partition);
                        } else {
                            // While it waits no other partition is read: briefly.
                            if stop.is_cancelled() {
                                break;
                            }
                            tokio::time::sleep(ERROR_PAUSE).await;
                            pending = Some(first);
                            continue;
                        }
                    }
                }
            }
            if self.is_sealed(&first) {
                self.skip_sealed(first, &ingest, &owners).await;
                continue;
            }
            let mut batch = Batch::new(first);
            let mut read_to_end = Vec::new();
            while batch.payload.len() < BATCH_BYTES && batch.messages.len() < BATCH_MESSAGES {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(message)) => {
                        let mut taken = self.place(&message, &owners);
                        let payload = message.payload().unwrap_or_default();
                        // With a history a batch is one partition's (one record of it, sealed
                        // and committed whole), and nothing a seal holds; always all with its
                        // facts or none.
                        let joins = (self.offsets.is_none() || taken.partition == batch.partition)
                            && taken.fresh == batch.fresh
                            && !self.is_sealed(&taken);
                        if joins {
                            // Copied once, from the consumer's buffer into the batch.
                            batch.push(payload, &taken);
                        } else {
                            taken.payload = payload.to_vec();
                            pending = Some(taken);
                            break;
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                        read_to_end.push(partition);
                    }
                    Some(Err(_)) | None => break,
                }
            }
            // Revoked while the batch was gathered (a rebalance is served inside `recv`): its
            // next owner reads it.
            if !self.owns(batch.partition) {
                for partition in read_to_end {
                    owners.caught_up(partition);
                }
                continue;
            }
            let through = if batch.fresh { &ingest } else { &store_only };
            let fed = batch.messages.clone();
            // Stopping half-way: what was not queued is neither stored nor counted here.
            if batch.feed(through, self.offsets.as_deref()).await {
                for (partition, offset) in fed {
                    owners.fed(partition, offset);
                }
            }
            // Read to its end, and now in the store.
            for partition in read_to_end {
                owners.caught_up(partition);
            }
        }
        // With a history the consumer stays in the group until the store has sealed what it
        // fed and the offsets are committed ([`Offsets::close`]).
        if self.offsets.is_none() {
            self.consumer.unsubscribe();
        }
    }

    /// For each partition owned now with messages still to read, where its end is (its high
    /// watermark): at a stop, what is there is read before the collector leaves.
    async fn ends(&self) -> HashMap<i32, i64> {
        let consumer = self.consumer.clone();
        let read = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + WATERMARK_WAIT;
            let assigned = consumer.assignment().unwrap_or_default();
            let positions = consumer.position().unwrap_or_default();
            let committed = consumer.committed(WATERMARK_WAIT / 2).unwrap_or_default();
            let offset = |list: &rdkafka::TopicPartitionList, topic: &str, p: i32| {
                list.find_partition(topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0)
            };
            let mut ends = HashMap::new();
            for element in assigned.elements() {
                let (topic, p) = (element.topic(), element.partition());
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break; // what is not read now is read by the partition's next owner
                }
                let Ok((low, high)) = consumer.fetch_watermarks(topic, p, left) else {
                    continue;
                };
                let from = offset(&positions, topic, p)
                    .or_else(|| offset(&committed, topic, p))
                    .unwrap_or(low);
                if from < high {
                    ends.insert(p, high);
                }
            }
            ends
        });
        match tokio::time::timeout(WATERMARK_WAIT * 2, read).await {
            Ok(Ok(ends)) => ends,
            _ => HashMap::new(),
        }
    }

    /// Whether every partition of a stop's drain is read to the end it had.
    fn drained(&self) -> bool {
        self.drain.lock().as_ref().is_none_or(HashMap::is_empty)
    }

    /// Whether this collector owns `partition` (without a history, what it reads is its own).
    fn owns(&self, partition: i32) -> bool {
        self.offsets.as_ref().is_none_or(|o| o.owns(partition))
    }

    /// Whether a seal in the bucket holds `taken` already (it was read again after a move).
    fn is_sealed(&self, taken: &Taken) -> bool {
        self.offsets
            .as_ref()
            .is_some_and(|o| o.is_sealed(taken.partition, taken.offset))
    }

    /// A message a seal holds: not stored again; its facts are taken if no collector counted
    /// them.
    async fn skip_sealed(&self, taken: Taken, ingest: &Ingest, owners: &Owners) {
        if taken.fresh {
            let record = Record {
                kind: RecordKind::Traces,
                seq: seq_of(taken.partition, taken.offset),
                arrival: taken.produced,
                payload: taken.payload,
            };
            let _ = ingest.replay(&record, true).await;
        }
        self.skipped_sealed.inc();
        if let Some(offsets) = &self.offsets {
            offsets.skipped(taken.partition, taken.offset);
        }
        owners.fed(taken.partition, taken.offset);
    }

    /// A message's payload, place and time, taken out of it (it borrows the consumer).
    fn take(&self, message: &rdkafka::message::BorrowedMessage<'_>, owners: &Owners) -> Taken {
        let mut taken = self.place(message, owners);
        taken.payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
        taken
    }

    /// A message's place and time, without its payload.
    fn place(&self, message: &rdkafka::message::BorrowedMessage<'_>, owners: &Owners) -> Taken {
        let (partition, offset) = (message.partition(), message.offset());
        if let Some(ends) = self.drain.lock().as_mut()
            && ends.get(&partition).is_some_and(|end| offset + 1 >= *end)
        {
            ends.remove(&partition);
        }
        let produced = produced_at(message);
        Taken {
            payload: Vec::new(),
            partition,
            offset,
            produced,
            fresh: produced + self.facts_window >= SystemTime::now()
                && offset > owners.counted_through(partition),
        }
    }
}

/// When a message was produced (its timestamp), else now.
pub(super) fn produced_at(message: &rdkafka::message::BorrowedMessage<'_>) -> SystemTime {
    message
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map_or_else(SystemTime::now, |ms| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
        })
}

/// `wayfinder_kafka_owned_partition{partition}`: 1 for each partition of the spans topic this
/// collector owns now, read from the consumer at each scrape.
struct OwnedPartitions(Arc<GroupConsumer>);

impl std::fmt::Debug for OwnedPartitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnedPartitions")
    }
}

impl prometheus_client::collector::Collector for OwnedPartitions {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::{MetricType, gauge::ConstGauge};
        let mut owned: Vec<i32> = self
            .0
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        owned.sort_unstable();
        let mut family = encoder.encode_descriptor(
            "wayfinder_kafka_owned_partition",
            "Partitions of the spans topic this collector owns (1 each)",
            None,
            MetricType::Gauge,
        )?;
        for partition in owned {
            let partition = partition.to_string();
            let labels = [("partition", partition.as_str())];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_keeps_partition_and_offset_apart_and_grows_with_the_offset() {
        assert_eq!(seq_of(0, 5), 5);
        assert_eq!(seq_of(3, 0) >> 48, 3);
        assert!(seq_of(3, 7) < seq_of(3, 8), "later in a partition, higher");
        assert_eq!(seq_of(2, 1) & ((1 << 48) - 1), 1);
    }
}
