//! The owners of services: a second consumer group over the partials topic. The collector that
//! owns partition P of it owns every service whose name murmur2 puts there: it sums every
//! collector's partials of those services exactly, runs the weights rule once for them (with the
//! state the previous owner published), and publishes their weights and instances to partition P
//! of the views topic, fenced by its claim ([`super::view`]).
//!
//! Taking a partition: write a claim (its offset is the epoch), read the partials topic from the
//! group's committed offset (the oldest partial still inside the window, which every owner
//! commits as it goes) to its end, read the views topic past the claim, take up the rule's
//! state from the last records of the partition's services, and only then publish.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;
use prometheus_client::metrics::counter::Counter;
use rdkafka::Message as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wayfinder_api::topology::Instance as ApiInstance;

use super::partial::{Figures, Partial, PartialError};
use super::publish::Publisher;
use super::topology::{TopologySums, minute_of};
use super::view::{Body, ViewRecord, Views, claim_key};
use crate::graph::registry::{Instance, Registry};
use crate::graph::weights::window::slot_of;
use crate::graph::weights::{WeightsConfig, WeightsEngine};
use crate::ingest::kafka::{KafkaError, KafkaSettings, client_config, group_config, partition_of};
use crate::metrics::{LogEvery, Metrics};
use crate::util::clock::Clock;

/// A slot's width in milliseconds.
const BUCKET_MS: u64 = crate::graph::weights::window::BUCKET.as_millis() as u64;
/// Weight slots in a minute of the graph.
const SLOTS_PER_MINUTE: u64 = 60_000 / BUCKET_MS;
/// How often the oldest partial still needed is committed.
const COMMIT_EVERY: Duration = Duration::from_secs(5);

/// What the rebalance callbacks tell the owner's loop.
#[derive(Debug)]
enum Moved {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

struct OwnerContext(mpsc::UnboundedSender<Moved>);

impl ClientContext for OwnerContext {}

impl ConsumerContext for OwnerContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let _ = self.0.send(Moved::Revoked(partitions(list)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let _ = self.0.send(Moved::Assigned(partitions(list)));
        }
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// A partition of the partials topic this collector owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owned {
    /// Its claim is written (at `epoch`); the partials are still being read to their end.
    Reading { epoch: i64, at_end: bool },
    /// Publishing.
    Ready { epoch: i64 },
}

impl Owned {
    fn epoch(self) -> i64 {
        match self {
            Owned::Reading { epoch, .. } | Owned::Ready { epoch } => epoch,
        }
    }
}

/// The owner's metrics.
#[derive(Debug, Clone, Default)]
struct OwnerMetrics {
    partials: Counter,
    refused: Counter,
    published: Counter,
}

impl OwnerMetrics {
    fn register(metrics: &Metrics) -> Self {
        let m = OwnerMetrics::default();
        metrics.register(
            "wayfinder_fleet_partials_taken",
            "Partials (one collector's figures of one service) taken in by this collector as the owner of their service",
            m.partials.clone(),
        );
        metrics.register(
            "wayfinder_fleet_partials_refused",
            "Partials refused: unreadable, of another format, or with a broken sketch",
            m.refused.clone(),
        );
        metrics.register(
            "wayfinder_fleet_view_records_published",
            "Records of weights and instances this collector published as the owner of their services",
            m.published.clone(),
        );
        m
    }
}

/// Owns services until `stop`.
pub(crate) struct Owner {
    me: String,
    settings: KafkaSettings,
    partitions: u32,
    config: WeightsConfig,
    clock: Clock,
    registry: Arc<Registry>,
    views: Arc<Views>,
    /// The rule's own engine: its windows are the fleet's, its services the owned ones.
    engine: WeightsEngine,
    producer: FutureProducer,
    owned: BTreeMap<i32, Owned>,
    figures: HashMap<String, Figures>,
    /// The service graph's series per server, for the minutes that may still change.
    topology: HashMap<String, TopologySums>,
    /// What was last written of each service, and what is due.
    publisher: Publisher,
    /// Per partition: the offsets read and the newest slot of each, for the commit.
    read: BTreeMap<i32, VecDeque<(i64, u64)>>,
    metrics: OwnerMetrics,
    log: LogEvery,
}

impl Owner {
    /// An owner named `me` for the services of the `partitions` partitions of the partials
    /// topic.
    #[allow(clippy::too_many_arguments, reason = "the wiring of one component")]
    pub(crate) fn new(
        me: String,
        settings: KafkaSettings,
        partitions: u32,
        config: WeightsConfig,
        clock: Clock,
        registry: Arc<Registry>,
        views: Arc<Views>,
        metrics: &Metrics,
    ) -> Result<Self, KafkaError> {
        let producer = client_config(&settings)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .create()
            .map_err(|source| KafkaError::Client {
                what: "views producer",
                source,
            })?;
        let publisher = Publisher::new(&me);
        Ok(Owner {
            me,
            partitions,
            engine: WeightsEngine::new(config, clock),
            config,
            clock,
            registry,
            views,
            producer,
            settings,
            owned: BTreeMap::new(),
            figures: HashMap::new(),
            topology: HashMap::new(),
            publisher,
            read: BTreeMap::new(),
            metrics: OwnerMetrics::register(metrics),
            log: LogEvery::default(),
        })
    }

    /// Keeps `retention` of each server's graph in the views topic (an hour by default).
    pub(crate) fn with_graph_retention(mut self, retention: Duration) -> Self {
        self.publisher = self.publisher.with_graph_retention(retention);
        self
    }

    /// Joins the owners' group and owns its share of the services until `stop`.
    pub(crate) async fn run(mut self, stop: CancellationToken) -> Result<(), KafkaError> {
        let (tx, mut moved) = mpsc::unbounded_channel();
        let settings = &self.settings;
        let consumer: StreamConsumer<OwnerContext> =
            group_config(settings, &format!("{}-services", settings.kafka_group))
                .create_with_context(OwnerContext(tx))
                .map_err(|source| KafkaError::Client {
                    what: "owners' consumer",
                    source,
                })?;
        consumer
            .subscribe(&[&settings.partials_topic()])
            .map_err(|source| KafkaError::Client {
                what: "owners' subscription",
                source,
            })?;
        let mut tick = tokio::time::interval(self.config.update_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commit = tokio::time::interval(COMMIT_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(event) = moved.recv() => self.moved(event).await,
                message = consumer.recv() => match message {
                    Ok(message) => self.take(message.partition(), message.offset(), message.payload().unwrap_or_default()),
                    Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                        if let Some(Owned::Reading { at_end, .. }) = self.owned.get_mut(&partition) {
                            *at_end = true;
                        }
                    }
                    Err(error) => {
                        if self.log.ready() {
                            tracing::warn!(%error, "kafka: cannot read the partials topic; trying again (logged at most once a minute)");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = tick.tick() => self.tick().await,
                _ = commit.tick() => self.commit(&consumer),
            }
        }
        // Leaving the group at once: another collector takes the services now, not after the
        // session timeout.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::task::spawn_blocking(move || {
                consumer.unsubscribe();
                drop(consumer);
            })
            .await
        })
        .await;
        Ok(())
    }

    fn partition_of(&self, service: &str) -> i32 {
        partition_of(service.as_bytes(), self.partitions) as i32
    }

    async fn moved(&mut self, event: Moved) {
        match event {
            Moved::Revoked(partitions) => {
                for partition in partitions {
                    self.let_go(partition);
                }
            }
            Moved::Assigned(partitions) => {
                for partition in partitions {
                    match self.claim(partition).await {
                        Ok(epoch) => {
                            tracing::info!(
                                partition,
                                epoch,
                                "kafka: owning the services of a partition of the partials topic"
                            );
                            self.owned.insert(
                                partition,
                                Owned::Reading {
                                    epoch,
                                    at_end: false,
                                },
                            );
                        }
                        Err(error) => {
                            // Without a claim, nothing can be published without a zombie's
                            // risk: the partition stays unowned here until the next rebalance.
                            tracing::error!(partition, %error, "kafka: cannot claim a partition of the views topic; its services are not published by this collector");
                        }
                    }
                }
            }
        }
    }

    fn let_go(&mut self, partition: i32) {
        self.owned.remove(&partition);
        self.read.remove(&partition);
        let partitions = self.partitions;
        let mine = |service: &str| partition_of(service.as_bytes(), partitions) as i32 == partition;
        self.figures.retain(|service, _| !mine(service));
        self.topology.retain(|service, _| !mine(service));
        self.publisher.forget(mine);
    }

    /// Writes a claim to `partition` of the views topic; its offset is the epoch.
    async fn claim(&self, partition: i32) -> Result<i64, String> {
        let record = self.publisher.record(-1, Body::Claim);
        let key = claim_key(partition, &self.me);
        self.write(partition, &key, &record).await
    }

    async fn write(&self, partition: i32, key: &str, record: &ViewRecord) -> Result<i64, String> {
        let payload = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let topic = self.settings.views_topic();
        let sent = self
            .producer
            .send(
                FutureRecord::to(&topic)
                    .partition(partition)
                    .key(key)
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await;
        match sent {
            Ok(delivery) => Ok(delivery.offset),
            Err((error, _)) => Err(error.to_string()),
        }
    }

    /// Takes in a partial read at `offset` of `partition`.
    fn take(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        let partial = match Partial::decode_checked(payload) {
            Ok(partial) => partial,
            Err(error) => {
                self.metrics.refused.inc();
                if self.log.ready() {
                    tracing::warn!(partition, offset, %error, "kafka: a record of the partials topic was refused (logged at most once a minute)");
                }
                return;
            }
        };
        if self.partition_of(&partial.service) != partition {
            // Written by a producer that partitions otherwise: its owner is elsewhere.
            self.metrics.refused.inc();
            if self.log.ready() {
                let error = PartialError::Misplaced(partial.service);
                tracing::warn!(partition, offset, %error, "kafka: a partial was refused (logged at most once a minute)");
            }
            return;
        }
        let newest = partial
            .instances
            .iter()
            .chain(&partial.addresses)
            .flat_map(|k| k.slots.iter().map(|s| s.slot))
            .chain(
                partial
                    .topology
                    .iter()
                    .flat_map(|s| s.minutes.iter().map(|m| m.minute * SLOTS_PER_MINUTE)),
            )
            .max()
            .unwrap_or(0);
        if !partial.topology.is_empty() {
            let collector: Arc<str> = Arc::from(partial.collector.as_str());
            let taken = self
                .topology
                .entry_ref(partial.service.as_str())
                .or_default()
                .take(&collector, &partial.topology);
            if let Err(error) = taken {
                self.metrics.refused.inc();
                if self.log.ready() {
                    tracing::warn!(partition, offset, %error, "kafka: a partial's graph figures were refused (logged at most once a minute)");
                }
                return;
            }
        }
        self.read
            .entry(partition)
            .or_default()
            .push_back((offset, newest));
        match self
            .figures
            .entry_ref(partial.service.as_str())
            .or_default()
            .take(&partial)
        {
            Ok(()) => {
                self.metrics.partials.inc();
            }
            Err(error) => {
                self.metrics.refused.inc();
                if self.log.ready() {
                    tracing::warn!(partition, offset, %error, "kafka: a partial was refused (logged at most once a minute)");
                }
            }
        }
    }

    /// The oldest slot still inside the window at `now`.
    fn oldest_slot(&self, now: SystemTime) -> u64 {
        let window = now
            .checked_sub(self.config.window + crate::graph::weights::window::BUCKET)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        slot_of(window)
    }

    /// The oldest slot a new owner must read again: the window's, and the start of the
    /// previous minute (the graph's minutes are summed whole).
    fn oldest_needed(&self, now: SystemTime) -> u64 {
        let minute = minute_of(now).saturating_sub(1);
        self.oldest_slot(now).min(minute * SLOTS_PER_MINUTE)
    }

    /// Commits, per owned partition, the oldest partial still inside the window: a new owner
    /// reads from there.
    fn commit(&mut self, consumer: &StreamConsumer<OwnerContext>) {
        let oldest = self.oldest_needed(self.clock.now());
        let topic = self.settings.partials_topic();
        let mut list = TopicPartitionList::new();
        for (partition, read) in &mut self.read {
            let mut last = None;
            while read.front().is_some_and(|(_, slot)| *slot < oldest) {
                last = read.pop_front().map(|(offset, _)| offset);
            }
            let from = match (read.front(), last) {
                (Some((offset, _)), _) => *offset,
                (None, Some(offset)) => offset + 1,
                (None, None) => continue,
            };
            let _ = list.add_partition_offset(&topic, *partition, Offset::Offset(from));
        }
        if list.count() > 0
            && let Err(error) = consumer.commit(&list, CommitMode::Async)
            && self.log.ready()
        {
            tracing::warn!(%error, "kafka: cannot commit the owners' offsets (logged at most once a minute)");
        }
    }

    /// Every weight period: the partitions read to their end become ready; the weights of the
    /// owned services are computed and what changed is published.
    async fn tick(&mut self) {
        let now = self.clock.now();
        let oldest = self.oldest_slot(now);
        self.figures.retain(|_, f| f.prune(oldest));
        // The minute before the previous one no longer changes.
        let oldest_minute = minute_of(now).saturating_sub(2);
        self.topology.retain(|_, t| t.prune(oldest_minute));
        self.settle();
        let ready: BTreeSet<i32> = self
            .owned
            .iter()
            .filter(|(_, o)| matches!(o, Owned::Ready { .. }))
            .map(|(p, _)| *p)
            .collect();
        if ready.is_empty() {
            return;
        }
        let mut writes = Vec::new();
        // The graph's minutes that changed, summed over the collectors.
        for (service, sums) in &mut self.topology {
            let partition = partition_of(service.as_bytes(), self.partitions) as i32;
            let Some(Owned::Ready { epoch }) = self.owned.get(&partition) else {
                continue;
            };
            for minute in sums.take_changed(service) {
                writes.push(self.publisher.topology(partition, *epoch, &minute));
            }
        }
        // An instance only known from spans is known to the registries of the collectors that
        // own its spans' partitions: the owner learns it from their partials.
        for (service, figures) in &self.figures {
            if ready.contains(&self.partition_of(service)) {
                let service: Arc<str> = Arc::from(service.as_str());
                for (id, slot) in figures.instances_seen() {
                    let at = SystemTime::UNIX_EPOCH
                        + Duration::from_millis(slot.saturating_mul(BUCKET_MS));
                    self.registry
                        .observe_at(&service, &Arc::from(id), at.min(now));
                }
            }
        }
        let instances: Vec<Instance> = self
            .registry
            .instances(None)
            .into_iter()
            .filter(|i| ready.contains(&self.partition_of(&i.service)))
            .collect();
        let mut by_service: BTreeMap<Arc<str>, Vec<ApiInstance>> = BTreeMap::new();
        for instance in &instances {
            by_service
                .entry(instance.service.clone())
                .or_default()
                .push(instance.to_api());
        }
        let (mut windows, mut addresses) = (Vec::new(), Vec::new());
        for service in by_service.keys() {
            if let Some(figures) = self.figures.get(&**service) {
                let (i, a) = figures.windows(service);
                windows.extend(i);
                addresses.extend(a);
            }
        }
        self.engine.set_windows(windows, addresses);
        self.engine.update_with(now, &instances);
        let snapshot = self.engine.snapshot();
        for (service, list) in &by_service {
            let Some(weights) = snapshot.services.get(&**service) else {
                continue;
            };
            let partition = self.partition_of(service);
            let epoch = self.owned[&partition].epoch();
            let memory = || self.engine.memory(service);
            let due =
                self.publisher
                    .service(now, (partition, epoch), service, weights, memory, list);
            writes.extend(due);
        }
        // Services of ready partitions that have no instances any more.
        let (partitions, owned) = (self.partitions, &self.owned);
        writes.extend(self.publisher.gone(|service| {
            let partition = partition_of(service.as_bytes(), partitions) as i32;
            match owned.get(&partition) {
                Some(Owned::Ready { epoch }) if !by_service.contains_key(service) => {
                    Some((partition, *epoch))
                }
                _ => None,
            }
        }));
        let sent = futures::future::join_all(
            writes
                .iter()
                .map(|(partition, key, record)| self.write(*partition, key, record)),
        )
        .await;
        for ((_, key, _), result) in writes.iter().zip(sent) {
            match result {
                Ok(_) => {
                    self.metrics.published.inc();
                }
                Err(error) => {
                    // Written again at the next change or refresh.
                    self.publisher.failed(key);
                    if self.log.ready() {
                        tracing::warn!(%error, key, "kafka: cannot publish to the views topic; trying again (logged at most once a minute)");
                    }
                }
            }
        }
    }

    /// Partitions read to their end, whose claim the views reader has passed, become ready,
    /// taking up their services' rule state; a partition another owner claimed since is let go.
    fn settle(&mut self) {
        let owned: Vec<(i32, Owned)> = self.owned.iter().map(|(p, o)| (*p, *o)).collect();
        for (partition, owned) in owned {
            let epoch = owned.epoch();
            if self.views.epoch(partition) > epoch {
                tracing::warn!(
                    partition,
                    epoch,
                    "kafka: another collector claimed this partition of the views topic since; letting it go"
                );
                self.let_go(partition);
                continue;
            }
            if let Owned::Reading { at_end: true, .. } = owned {
                if !self.views.read_past(partition, epoch) {
                    continue;
                }
                for service in self.views.services() {
                    if self.partition_of(&service) == partition
                        && let Some(memory) = self.views.memory(&service)
                    {
                        self.engine.restore(&service, &memory);
                    }
                }
                self.owned.insert(partition, Owned::Ready { epoch });
            }
        }
    }
}
