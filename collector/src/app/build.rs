//! The third phase: every part of the collector is built from the settings, each registering
//! its own metrics: the store (over the history and the log), the graph's parts (registry,
//! topology, span metrics, weights), the query engine, the ingest queue with its stages, and
//! the ingest core in front of it.

use std::sync::Arc;

use super::StartError;
use super::durability::{Durable, FleetHistory, SealHooks};
use crate::app::config::Config;
use crate::graph::dimensions::AttributePlan;
use crate::graph::registry::{Registry, RegistryConfig, RegistryMetrics};
use crate::graph::spanmetrics::{SpanMetrics, SpanMetricsConfig, SpanMetricsExposition};
use crate::graph::topology::{DatabaseName, PeerName, Topology, TopologyConfig, TopologyMetrics};
use crate::graph::weights::{WeightsEngine, WeightsMetrics};
use crate::ingest::Ingest;
use crate::ingest::replay::SealedRecords;
use crate::metrics::Metrics;
use crate::pipeline::{
    Dispatcher, FactsConsumer, IngestQueue, PipelineHealth, PipelineMetrics, QueueBudget,
};
use crate::serve::sql::{QueryEngine, QueryLimits};
use crate::store::log::{DiskWatch, Recovery, Wal};
use crate::store::{MemoryStore, Sealing, SpanStore, StoreConfig};
use crate::util::clock::Clock;

/// Spans in memory are sealed at once when this many wait: about a row group per 128 Ki,
/// eight to a file.
const SEAL_FILE_ROWS: usize = 1 << 20;

/// The parts, built and not yet running.
pub(super) struct Parts {
    pub(super) store: Arc<dyn SpanStore>,
    pub(super) registry: Arc<Registry>,
    pub(super) topology: Option<Arc<Topology>>,
    pub(super) spanmetrics: Option<Arc<SpanMetrics>>,
    pub(super) weights: Arc<WeightsEngine>,
    pub(super) engine: QueryEngine,
    pub(super) ingest: Arc<Ingest>,
    /// The ingest queue's budget, which a reload may change.
    pub(super) queue_budget: QueueBudget,
    /// Whether each stage behind the queue is up, for `/readyz`.
    pub(super) pipeline_health: Arc<PipelineHealth>,
    /// The data directory's free space, with a data directory.
    pub(super) disk: Option<DiskWatch>,
    /// The log's records whose spans the history already holds.
    pub(super) sealed: SealedRecords,
    /// Fleet mode: who owns which partition, for the query API.
    #[cfg(feature = "kafka")]
    pub(super) owners: Option<Arc<crate::ingest::kafka::owners::Owners>>,
    /// Fleet mode with a history: the offsets committed as they are sealed.
    #[cfg(feature = "kafka")]
    pub(super) offsets: Option<Arc<crate::ingest::kafka::commit::Offsets>>,
    /// Fleet mode: the weights and instances their services' owners published.
    #[cfg(feature = "kafka")]
    pub(super) views: Option<Arc<crate::ingest::kafka::services::Views>>,
    /// The graph the query API serves: this collector's, or in fleet mode the fleet's.
    pub(super) served_topology: Option<Arc<Topology>>,
}

/// What is started once: the queue's far end, whose stages feed the store and the graph, and
/// the log with what it holds to replay (with a data directory).
pub(super) struct ToStart {
    pub(super) dispatcher: Dispatcher,
    pub(super) log: Option<(Wal, Recovery)>,
    /// Fleet mode: the consumer of this collector's share of the spans topic and the owners'
    /// tasks.
    #[cfg(feature = "kafka")]
    pub(super) fleet: Option<super::fleet::Fleet>,
}

/// Builds the parts from `config` over what `durable` holds; `extra` stages are fed the facts
/// of every batch (after the weights, before the topology).
pub(super) async fn build_components(
    config: &Config,
    metrics: &Arc<Metrics>,
    durable: Durable,
    extra: Vec<Arc<dyn FactsConsumer>>,
    query_http: std::net::SocketAddr,
) -> Result<(Parts, ToStart), StartError> {
    let clock = Clock::new();
    let (store, sealed, fleet_history) = build_store(config, metrics, &durable).await?;
    let registry = Arc::new(Registry::new(
        RegistryConfig {
            deregister_after: config.registry.deregister_after,
            max_ttl: config.registry.max_heartbeat_ttl,
            ..RegistryConfig::default()
        },
        clock,
    ));
    metrics.register_collector(Box::new(RegistryMetrics(registry.clone())));
    // The attributes the stages read from spans, each taken once by the decoder.
    let mut plan = AttributePlan::default();
    let graph_dimensions: Arc<[_]> = config
        .topology
        .service_graph_dimensions
        .iter()
        .map(|attribute| plan.dimension(attribute))
        .collect();
    let span_dimensions: Arc<[_]> = config
        .spanmetrics
        .span_metrics_dimensions
        .iter()
        .map(|attribute| plan.dimension(attribute))
        .collect();
    let database_names: Arc<[_]> = config
        .topology
        .database_name_attributes
        .iter()
        .map(|attribute| DatabaseName::of(attribute, &mut plan))
        .collect();
    let peer_names: Arc<[_]> = config
        .topology
        .peer_attributes
        .iter()
        .map(|attribute| PeerName::of(attribute, &mut plan))
        .collect();
    let mut decode_options = plan.decode_options(
        config.topology.topology,
        config.spanmetrics.span_multiplier_key.clone(),
    );
    decode_options.status_message = config.spanmetrics.span_metrics_status_message;
    let buckets: Arc<[f64]> = config
        .topology
        .service_graph_buckets
        .iter()
        .map(std::time::Duration::as_secs_f64)
        .collect();
    let topology = config.topology.topology.then(|| {
        let topology = Arc::new(Topology::new(
            TopologyConfig {
                dimensions: graph_dimensions,
                database_names,
                peer_names,
                client_server_prefix: config.topology.service_graph_client_server_prefix,
                edge_wait: config.topology.edge_wait,
                max_pending: config.topology.edge_max_pending,
                max_bytes: config.topology.topology_max_bytes,
                retention: config.store.retention,
                histogram_buckets: buckets.clone(),
                ..TopologyConfig::default()
            },
            clock,
        ));
        metrics.register_collector(Box::new(TopologyMetrics(topology.clone())));
        metrics.register_exposition(Box::new(TopologyMetrics(topology.clone())));
        topology
    });
    // Span metrics come from the same facts as the topology, so with it or not at all.
    let spanmetrics = config.topology.topology.then(|| {
        let spanmetrics = Arc::new(SpanMetrics::new(
            SpanMetricsConfig {
                max_series: config.spanmetrics.span_metrics_max_series,
                histogram_buckets: buckets,
                retention: config.store.retention,
                dimensions: span_dimensions,
                status_message: config.spanmetrics.span_metrics_status_message,
            },
            clock,
        ));
        metrics.register_collector(Box::new(SpanMetricsExposition(spanmetrics.clone())));
        metrics.register_exposition(Box::new(SpanMetricsExposition(spanmetrics.clone())));
        spanmetrics
    });
    let weights = Arc::new(WeightsEngine::new(config.weights.engine(), clock));
    metrics.register_collector(Box::new(WeightsMetrics(weights.clone())));
    let limits = QueryLimits {
        timeout: config.query.query_timeout,
        memory_bytes: config.query.query_memory_bytes,
        max_rows: config.query.query_max_rows,
        max_concurrent: config.query.query_max_concurrent,
    };
    let engine = QueryEngine::new(store.clone(), limits, metrics.clone())
        .map_err(StartError::Runtime)?
        .with_registry(registry.clone());

    let (queue, dispatcher) = IngestQueue::new(config.ingest.max_ingest_bytes);
    // The topology comes last: it takes the facts it keeps instead of copying them.
    let mut dispatcher = dispatcher
        .with_consumer(registry.clone())
        .with_consumer(weights.clone());
    for consumer in extra {
        dispatcher = dispatcher.with_consumer(consumer);
    }
    if let Some(spanmetrics) = &spanmetrics {
        dispatcher = dispatcher.with_consumer(spanmetrics.clone());
    }
    if let Some(topology) = &topology {
        dispatcher = dispatcher.with_consumer(topology.clone());
    }
    let pipeline_health = dispatcher.health();
    metrics.register_collector(Box::new(PipelineMetrics(pipeline_health.clone())));
    metrics.register_collector(Box::new(queue.gauge()));
    let queue_budget = queue.budget();
    // Only the receivers hold the queue: when they stop, the dispatcher drains and ends.
    let mut ingest = Ingest::new(queue, metrics.clone())
        .with_decode_options(decode_options)
        .with_registry(registry.clone())
        .with_store(store.clone());
    // With a data directory, the room kept on its disk for sealing.
    let disk = config
        .store
        .data_dir
        .as_ref()
        .map(|dir| DiskWatch::new(dir.join("wal"), config.store.disk_reserve as u64));
    let log = durable.log;
    if let Some((wal, _)) = &log {
        ingest = ingest.with_wal(wal.clone());
    }
    if let Some(disk) = &disk {
        disk.check();
        ingest = ingest.with_disk(disk.clone());
    }
    #[cfg(feature = "kafka")]
    let (ingest, fleet) = super::fleet::build(
        config,
        metrics,
        ingest,
        query_http,
        fleet_history,
        super::fleet::Graph {
            registry: registry.clone(),
            weights: weights.clone(),
            topology: topology.clone(),
            clock,
        },
    )
    .await?;
    #[cfg(not(feature = "kafka"))]
    let _ = (query_http, fleet_history);
    #[cfg(feature = "kafka")]
    let served_topology = match &fleet {
        Some(fleet) => fleet.topology.clone(),
        None => topology.clone(),
    };
    #[cfg(not(feature = "kafka"))]
    let served_topology = topology.clone();
    let parts = Parts {
        store,
        registry,
        topology,
        spanmetrics,
        weights,
        engine,
        ingest: Arc::new(ingest),
        queue_budget,
        pipeline_health,
        disk,
        sealed,
        #[cfg(feature = "kafka")]
        owners: fleet.as_ref().map(|fleet| fleet.owners.clone()),
        #[cfg(feature = "kafka")]
        offsets: fleet.as_ref().and_then(|fleet| fleet.offsets.clone()),
        #[cfg(feature = "kafka")]
        views: fleet.as_ref().map(|fleet| fleet.views.clone()),
        served_topology,
    };
    Ok((
        parts,
        ToStart {
            dispatcher,
            log,
            #[cfg(feature = "kafka")]
            fleet,
        },
    ))
}

/// The memory store, sealing into the history with a data directory (or, in fleet mode, with
/// `--history`), and the log's records whose spans the history already holds.
async fn build_store(
    config: &Config,
    metrics: &Arc<Metrics>,
    durable: &Durable,
) -> Result<(Arc<dyn SpanStore>, SealedRecords, Option<FleetHistory>), StartError> {
    let store_config = StoreConfig {
        retention: config.store.retention,
        max_bytes: config.store.max_store_bytes,
        ..StoreConfig::default()
    };
    let mut memory = MemoryStore::new(store_config, metrics.clone());
    let mut sealed = SealedRecords::default();
    if let (Some((history, files)), Some((wal, recovery))) = (&durable.history, &durable.log) {
        let oldest = recovery.found.first().map_or(u64::MAX, |s| s.first_seq);
        sealed = SealedRecords::new(history.sealed_seqs(files, oldest).await?);
        let wal = wal.clone();
        memory = memory.with_sealing(
            Sealing {
                history: history.clone(),
                interval: config.store.seal_interval,
                file_rows: SEAL_FILE_ROWS,
                on_sealed: Arc::new(move |seqs| wal.sealed(seqs)),
                partitioned: false,
                records: None,
            },
            files.clone(),
        );
    }
    // Fleet mode: each partition seals under its prefix; the offsets are committed as sealed.
    if let (true, Some(location)) = (config.kafka.fleet(), &config.store.history) {
        let history = Arc::new(crate::store::history::History::new(location)?);
        let files = history.list_fleet().await?;
        let hooks = Arc::new(SealHooks::default());
        let (told, asked) = (hooks.clone(), hooks.clone());
        memory = memory.with_sealing(
            Sealing {
                history: history.clone(),
                interval: config.store.seal_interval,
                file_rows: SEAL_FILE_ROWS,
                on_sealed: Arc::new(move |seqs| {
                    if let Some(tell) = told.sealed.get() {
                        tell(seqs);
                    }
                }),
                partitioned: true,
                records: Some(Arc::new(move |seqs| match asked.ranges.get() {
                    Some(ask) => ask(seqs),
                    None => seqs.iter().map(|&s| (s, s)).collect(),
                })),
            },
            files,
        );
        let store: Arc<dyn SpanStore> = Arc::new(memory);
        return Ok((
            store.clone(),
            sealed,
            Some(FleetHistory {
                store,
                history,
                hooks,
            }),
        ));
    }
    Ok((Arc::new(memory), sealed, None))
}
