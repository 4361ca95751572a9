//! Every collector's partials: each weight period, what its share of the spans (the partitions
//! of the spans topic it owns) says of each server service — per instance and per address its
//! callers aimed at, the slots that changed since the last send — to the partials topic, keyed
//! by the service, so that they reach the service's owner ([`super::owner`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::partial::{FORMAT, KeyFigures, Partial};
use super::topology::{SeriesFigures, SeriesKey, collect, minute_of, to_wire};
use crate::graph::registry::Registry;
use crate::graph::topology::Topology;
use crate::graph::weights::window::slot_of;
use crate::graph::weights::{Buckets, WeightsEngine};
use crate::ingest::kafka::{KafkaError, KafkaSettings, client_config};
use crate::metrics::{LogEvery, Metrics};
use crate::util::clock::Clock;
use prometheus_client::metrics::counter::Counter;

/// What was sent of a slot: `(service, address?, key, slot)` → its requests then. A slot whose
/// count did not move has nothing new (errors and latency move only with requests).
type Sent = HashMap<(Arc<str>, bool, String, u64), u64>;

/// A service's figures in one partial: instances, addresses, and the graph's series.
type PerService = (Vec<KeyFigures>, Vec<KeyFigures>, Vec<SeriesFigures>);

/// Sends this collector's partials every `period` until `stop`.
pub(crate) struct PartialSender {
    me: String,
    topic: String,
    producer: FutureProducer,
    engine: Arc<WeightsEngine>,
    registry: Arc<Registry>,
    /// The service graph whose series are sent, unless the topology is off.
    topology: Option<Arc<Topology>>,
    clock: Clock,
    sent: Sent,
    /// What was sent of a series' minute: its requests then.
    sent_minutes: HashMap<(SeriesKey, u64), u64>,
    metrics: SenderMetrics,
    /// The graph's series go with every this many partials (every [`GRAPH_PERIOD`]).
    graph_every: u64,
    /// Sends so far.
    sends: u64,
    log: LogEvery,
}

/// How often the graph's series are sent: the graph is read by the minute, and its series
/// are more than an instance's weights' (an instance, its node, the edges into it), so a few
/// seconds' freshness costs a fraction of the bytes of every period's.
const GRAPH_PERIOD: Duration = Duration::from_secs(5);

/// What the partials cost: `wayfinder_fleet_partials_sent_total`,
/// `wayfinder_fleet_partial_bytes_sent_total` (encoded, before the producer's compression) and
/// `wayfinder_fleet_partial_slots_sent_total` (an instance's or address's slot, or a graph
/// series' minute).
#[derive(Debug, Clone, Default)]
struct SenderMetrics {
    partials: Counter,
    bytes: Counter,
    slots: Counter,
}

impl SenderMetrics {
    fn register(metrics: &Metrics) -> Self {
        let m = SenderMetrics::default();
        metrics.register(
            "wayfinder_fleet_partials_sent",
            "Partials (this collector's figures of one service) the brokers took",
            m.partials.clone(),
        );
        metrics.register(
            "wayfinder_fleet_partial_bytes_sent",
            "Bytes of the partials the brokers took, as encoded (before compression)",
            m.bytes.clone(),
        );
        metrics.register(
            "wayfinder_fleet_partial_slots_sent",
            "Slots of instances and addresses, and minutes of graph series, in the partials the brokers took",
            m.slots.clone(),
        );
        m
    }
}

impl PartialSender {
    /// A sender named `me` (one id per process start) of `engine`'s windows.
    pub(crate) fn new(
        me: String,
        settings: &KafkaSettings,
        engine: Arc<WeightsEngine>,
        registry: Arc<Registry>,
        topology: Option<Arc<Topology>>,
        clock: Clock,
        metrics: &Metrics,
    ) -> Result<Self, KafkaError> {
        let producer = client_config(settings)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Where the owners' group looks for a service: murmur2 over its name.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create()
            .map_err(|source| KafkaError::Client {
                what: "partials producer",
                source,
            })?;
        Ok(PartialSender {
            me,
            topic: settings.partials_topic(),
            producer,
            engine,
            registry,
            topology,
            clock,
            sent: HashMap::new(),
            sent_minutes: HashMap::new(),
            metrics: SenderMetrics::register(metrics),
            graph_every: 1,
            sends: 0,
            log: LogEvery::default(),
        })
    }

    /// Sends every `period` until `stop`.
    pub(crate) async fn run(mut self, period: Duration, stop: CancellationToken) {
        self.graph_every = graph_every(period);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.send().await,
            }
        }
    }

    /// The partials of the slots that changed since the last send.
    pub(crate) fn partials(&mut self) -> Vec<Partial> {
        let now = self.clock.now();
        // The open slot and the one before: the last send may have missed the end of it.
        let from = slot_of(now).saturating_sub(1);
        self.sent.retain(|(_, _, _, slot), _| *slot >= from);
        let windows = self.engine.windows_since(from);
        // An address belongs to the service of the instance registered at it.
        let owners: HashMap<String, Arc<str>> = self
            .registry
            .instances(None)
            .into_iter()
            .filter_map(|i| Some((i.address?, i.service)))
            .collect();
        let mut by_service: BTreeMap<Arc<str>, PerService> = BTreeMap::new();
        self.sends += 1;
        if self.sends % self.graph_every == 1 % self.graph_every {
            for (server, figures) in self.topology_changed(now) {
                by_service.entry(server).or_default().2.push(figures);
            }
        }
        for ((service, instance), buckets) in &windows.instances {
            if let Some(changed) = self.changed(service, false, instance, buckets) {
                by_service
                    .entry(service.clone())
                    .or_default()
                    .0
                    .push(KeyFigures::new(instance.to_string(), &changed));
            }
        }
        for (address, buckets) in &windows.addresses {
            let Some(service) = owners.get(address) else {
                continue;
            };
            if let Some(changed) = self.changed(service, true, address, buckets) {
                by_service
                    .entry(service.clone())
                    .or_default()
                    .1
                    .push(KeyFigures::new(address.clone(), &changed));
            }
        }
        let sent_ms = crate::util::clock::unix_millis(now);
        by_service
            .into_iter()
            .map(|(service, (instances, addresses, topology))| Partial {
                format: FORMAT,
                collector: self.me.clone(),
                service: service.to_string(),
                sent_ms,
                instances,
                addresses,
                topology,
            })
            .collect()
    }

    /// The service graph's series whose minutes (this one and the one before) moved since they
    /// were last sent, by the server they belong to (noted as sent).
    fn topology_changed(&mut self, now: std::time::SystemTime) -> Vec<(Arc<str>, SeriesFigures)> {
        let Some(topology) = &self.topology else {
            return Vec::new();
        };
        let from = minute_of(now).saturating_sub(1);
        self.sent_minutes.retain(|(_, minute), _| *minute >= from);
        let series = topology.with_graph(|graph| collect(graph, from));
        let mut out = Vec::new();
        for (key, extras, minutes) in series {
            let moved: Vec<(u64, &crate::graph::topology::stats::Summary)> = minutes
                .iter()
                .filter(|(minute, summary)| {
                    let last = self
                        .sent_minutes
                        .entry((key.clone(), *minute))
                        .or_insert(u64::MAX);
                    let moved = *last != summary.requests;
                    *last = summary.requests;
                    moved
                })
                .map(|(minute, summary)| (*minute, summary))
                .collect();
            if !moved.is_empty() {
                out.push((key.server().clone(), to_wire(&key, &extras, &moved)));
            }
        }
        out
    }

    /// The buckets whose count moved since they were last sent (noted as sent).
    fn changed(
        &mut self,
        service: &Arc<str>,
        address: bool,
        key: &str,
        buckets: &Buckets,
    ) -> Option<Buckets> {
        let changed: Buckets = buckets
            .iter()
            .filter(|(slot, bucket)| {
                let entry = self
                    .sent
                    .entry((service.clone(), address, key.to_owned(), *slot))
                    .or_insert(u64::MAX);
                let moved = *entry != bucket.requests;
                *entry = bucket.requests;
                moved
            })
            .cloned()
            .collect();
        (!changed.is_empty()).then_some(changed)
    }

    async fn send(&mut self) {
        let partials = self.partials();
        let payloads: Vec<(String, Vec<u8>, u64)> = partials
            .iter()
            .map(|p| {
                let slots = p
                    .instances
                    .iter()
                    .chain(&p.addresses)
                    .map(|k| k.slots.len())
                    .chain(p.topology.iter().map(|s| s.minutes.len()))
                    .sum::<usize>();
                (
                    p.service.clone(),
                    prost::Message::encode_to_vec(p),
                    slots as u64,
                )
            })
            .collect();
        let sent = futures::future::join_all(payloads.iter().map(|(service, payload, _)| {
            self.producer.send(
                FutureRecord::to(&self.topic).key(service).payload(payload),
                Duration::from_secs(5),
            )
        }))
        .await;
        for ((service, payload, slots), result) in payloads.iter().zip(sent) {
            if result.is_ok() {
                self.metrics.partials.inc();
                self.metrics.bytes.inc_by(payload.len() as u64);
                self.metrics.slots.inc_by(*slots);
            }
            if let Err((error, _)) = result {
                // Sent again at the next period: its slots count as unsent.
                self.sent.retain(|(s, _, _, _), _| &**s != service.as_str());
                self.sent_minutes
                    .retain(|(key, _), _| &**key.server() != service.as_str());
                if self.log.ready() {
                    tracing::warn!(%error, service, "kafka: cannot send a partial; trying again (logged at most once a minute)");
                }
            }
        }
    }
}

/// Every how many sends of `period` the graph's series go: every [`GRAPH_PERIOD`], at least
/// every send.
fn graph_every(period: Duration) -> u64 {
    let period = period.as_millis().max(1);
    u64::try_from(GRAPH_PERIOD.as_millis() / period)
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_goes_every_five_seconds_or_with_every_partial() {
        let rows = [
            (Duration::from_secs(1), 5, "a 1 s period: every fifth"),
            (Duration::from_millis(250), 20, "250 ms: every twentieth"),
            (Duration::from_secs(5), 1, "5 s: every one"),
            (Duration::from_secs(30), 1, "longer: every one"),
            (
                Duration::ZERO,
                5000,
                "no period (refused by the settings): bounded",
            ),
        ];
        for (period, every, why) in rows {
            assert_eq!(graph_every(period), every, "{why}");
        }
    }
}
