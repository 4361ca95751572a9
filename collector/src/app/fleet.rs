//! Fleet mode's part of the build and start phases: the topics made, the receivers switched to
//! producing, this collector's share of the spans topic consumed into its pipeline, and the
//! owners topic written and read (`docs/fleet.md`).

use std::net::SocketAddr;
use std::sync::Arc;

use super::StartError;
use super::durability::FleetHistory;
use crate::app::config::Config;
use crate::graph::registry::Registry;
use crate::graph::topology::{Topology, TopologyConfig};
use crate::graph::weights::WeightsEngine;
use crate::ingest::Ingest;
use crate::ingest::kafka::commit::Offsets;
use crate::ingest::kafka::consume::SpanConsumer;
use crate::ingest::kafka::health::read_health;
use crate::ingest::kafka::owners::{self, Owners};
use crate::ingest::kafka::produce::SpanProducer;
use crate::ingest::kafka::services::{Owner, PartialSender, Views, read_views};
use crate::ingest::kafka::{KafkaSettings, ensure_topics, partitions_of};
use crate::metrics::Metrics;
use crate::util::clock::Clock;
use crate::util::tasks::Tier;

/// The parts of the graph the fleet's second stage reads and feeds.
pub(super) struct Graph {
    pub(super) registry: Arc<Registry>,
    /// The engine the query API serves: its windows are sent as partials, and the weights the
    /// views topic holds are published through it.
    pub(super) weights: Arc<WeightsEngine>,
    /// This collector's service graph: its series are sent as partials (unless it is off).
    pub(super) topology: Option<Arc<Topology>>,
    pub(super) clock: Clock,
}

/// Fleet mode, built and not yet running.
pub(super) struct Fleet {
    settings: KafkaSettings,
    consumer: SpanConsumer,
    /// The ingest the consumer feeds: it queues, as the receivers did in one process.
    queueing: Ingest,
    health_partitions: u32,
    pub(super) owners: Arc<Owners>,
    /// With a history: the offsets, committed as they are sealed.
    pub(super) offsets: Option<Arc<Offsets>>,
    /// The views topic as read here.
    pub(super) views: Arc<Views>,
    /// The fleet's service graph, as read from the views topic: what the query API serves.
    pub(super) topology: Option<Arc<Topology>>,
    views_partitions: u32,
    owner: Owner,
    sender: PartialSender,
    period: std::time::Duration,
}

/// With `--kafka-brokers`: the topics, the consumer and the owners directory, and `ingest`
/// switched to producing; without, `ingest` as it is.
pub(super) async fn build(
    config: &Config,
    metrics: &Metrics,
    ingest: Ingest,
    query_http: SocketAddr,
    history: Option<FleetHistory>,
    graph: Graph,
) -> Result<(Ingest, Option<Fleet>), StartError> {
    let settings = &config.kafka;
    if !settings.fleet() {
        return Ok((ingest, None));
    }
    let query = match &settings.kafka_query_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None if query_http.ip().is_unspecified() => {
            return Err(StartError::Config(
                crate::app::config::ConfigError::Invalid {
                    key: "kafka_query_url",
                    message: format!(
                        "--query-http {query_http} listens on every address: say which one the other collectors reach it at"
                    ),
                },
            ));
        }
        None => {
            // The query API speaks TLS when the listeners do.
            let tls = config.access.tls().ok().flatten().is_some();
            format!("{}://{query_http}", if tls { "https" } else { "http" })
        }
    };
    // Beats older than the longest TTL tell nothing of the instances now.
    let health_retention = config.registry.max_heartbeat_ttl * 2;
    // A new owner reads the partials of a weight window again.
    let partials_retention =
        (config.weights.weight_window * 4).max(std::time::Duration::from_secs(300));
    ensure_topics(
        settings,
        config.store.retention,
        health_retention,
        partials_retention,
    )
    .await?;
    let [
        partitions,
        health_partitions,
        partials_partitions,
        views_partitions,
    ] = partitions_of(
        settings,
        [
            settings.spans_topic(),
            settings.health_topic(),
            settings.partials_topic(),
            settings.views_topic(),
        ],
    )
    .await?;
    if views_partitions < partials_partitions {
        return Err(crate::ingest::kafka::KafkaError::Topic {
            topic: settings.views_topic(),
            reason: format!(
                "has {views_partitions} partitions, fewer than the {partials_partitions} of {}: each owner of a partition of the partials topic publishes to the same partition of the views topic",
                settings.partials_topic()
            ),
        }
        .into());
    }
    let offsets = history.map(|fleet| {
        let offsets = Arc::new(Offsets::new(
            settings.spans_topic(),
            fleet.history,
            fleet.store,
        ));
        let (told, asked) = (offsets.clone(), offsets.clone());
        let _ = fleet
            .hooks
            .sealed
            .set(Arc::new(move |seqs: &[u64]| told.sealed(seqs)));
        let _ = fleet
            .hooks
            .ranges
            .set(Arc::new(move |seqs: &[u64]| asked.ranges(seqs)));
        offsets
    });
    let consumer = SpanConsumer::new(
        settings,
        config.weights.weight_window,
        metrics,
        offsets.clone(),
    )?;
    // The receivers decode to check a request and answer its partial success; the facts are
    // taken by the consumer that stores the spans, not here.
    let producing = ingest
        .clone()
        .with_facts(false)
        .with_producer(SpanProducer::new(settings)?);
    // One id per process start: a restarted collector's counts start again, and add up with
    // what it said before.
    let me = format!("{query}#{:016x}", fastrand::u64(..));
    // The graph the query API serves: the fleet's, set from the views topic.
    let fleet_topology = graph.topology.as_ref().map(|_| {
        Arc::new(Topology::new(
            TopologyConfig {
                retention: config.store.retention,
                max_bytes: config.topology.topology_max_bytes,
                ..TopologyConfig::default()
            },
            graph.clock,
        ))
    });
    let views = Arc::new(Views::new(
        graph.weights.clone(),
        fleet_topology.clone(),
        metrics,
    ));
    let owner = Owner::new(
        me.clone(),
        settings.clone(),
        partials_partitions,
        config.weights.engine(),
        graph.clock,
        graph.registry.clone(),
        views.clone(),
        metrics,
    )?
    .with_graph_retention(config.store.retention);
    let sender = PartialSender::new(
        me,
        settings,
        graph.weights,
        graph.registry,
        graph.topology,
        graph.clock,
        metrics,
    )?;
    let fleet = Fleet {
        settings: settings.clone(),
        consumer,
        queueing: ingest,
        health_partitions,
        owners: Arc::new(Owners::new(query, partitions)),
        offsets,
        views,
        topology: fleet_topology,
        views_partitions,
        owner,
        sender,
        period: config.weights.weight_update_period,
    };
    Ok((producing, Some(fleet)))
}

impl Fleet {
    /// Starts consuming and the owners' tasks in `tier` (the receivers': they stop with them).
    pub(super) fn start(self, tier: &mut Tier) {
        let stop = tier.stop_token();
        let Fleet {
            settings,
            consumer,
            queueing,
            health_partitions,
            owners,
            offsets: _,
            views,
            topology,
            views_partitions,
            owner,
            sender,
            period,
        } = self;
        if let Some(topology) = topology {
            // Minutes past the retention go, as in the graph of one process.
            tier.every(
                "fleet-topology",
                std::time::Duration::from_secs(1),
                move || {
                    topology.tick();
                },
            );
        }
        tier.spawn(
            "kafka-views-read",
            log_error(read_views(
                settings.clone(),
                views_partitions,
                views,
                stop.clone(),
            )),
        );
        tier.spawn("kafka-services-own", log_error(owner.run(stop.clone())));
        tier.spawn("kafka-partials-send", sender.run(period, stop.clone()));
        tier.spawn(
            "kafka-owners-publish",
            log_error(owners::publish(
                settings.clone(),
                consumer.handle(),
                owners.clone(),
                stop.clone(),
            )),
        );
        tier.spawn(
            "kafka-owners-read",
            log_error(owners::read(settings.clone(), owners.clone(), stop.clone())),
        );
        tier.spawn(
            "kafka-health-read",
            log_error(read_health(
                settings.clone(),
                health_partitions,
                queueing.clone(),
                stop.clone(),
            )),
        );
        tier.spawn("kafka-consumer", consumer.run(queueing, owners, stop));
    }
}

async fn log_error(task: impl Future<Output = Result<(), crate::ingest::kafka::KafkaError>>) {
    if let Err(error) = task.await {
        tracing::error!(%error, "kafka: a fleet task could not start");
    }
}
