//! Wiring: binds the listeners and starts the stages; stops them in order.
//!
//! The data flows: the OTLP receivers ([`listeners::otlp_grpc`], [`listeners::otlp_http`]) decode
//! requests into the ingest queue; the pipeline's stages take each batch from it (the store
//! beside the chain registry → weights → topology, `pipeline/stages.rs`); the upkeep runs every
//! second (retention and compaction, expiry of edge halves and instances) and the weights every
//! update period; the query API ([`listeners::query`]) reads the store, the topology, the registry
//! and the weights.

pub mod config;
mod listeners;
mod reload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::reload::{IN_PLACE, Reloaded, SWITCHED_IN_PLACE};
use self::reload::{reload_tls, reload_tokens};
use crate::app::config::{Config, ConfigError};
use crate::graph::dimensions::AttributePlan;
use crate::graph::registry::{Registry, RegistryConfig, RegistryMetrics};
use crate::graph::spanmetrics::{SpanMetrics, SpanMetricsConfig, SpanMetricsExposition};
use crate::graph::topology::{DatabaseName, Topology, TopologyConfig, TopologyMetrics};
use crate::graph::weights::{WeightsEngine, WeightsMetrics};
use crate::ingest::Ingest;
use crate::ingest::replay::{SealedRecords, replay};
use crate::metrics::Metrics;
use crate::net::access::{TlsFiles, Tokens};
use crate::pipeline::{IngestQueue, PipelineMetrics};
use crate::serve::query::ApiState;
use crate::serve::sql::{QueryEngine, QueryLimits};
use crate::store::history::History;
use crate::store::log::{Wal, WalConfig, WalMetrics};
use crate::store::{MAINTENANCE_PERIOD, MemoryStore, Sealing, SpanStore, StoreConfig};
use crate::util::clock::Clock;
use crate::util::stage::Stage;

/// Starts collectors.
#[derive(Debug)]
pub struct Collector;

/// The addresses a running collector listens on (with the real ports when port 0 was asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddrs {
    /// OTLP/gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// The query HTTP API.
    pub query_http: SocketAddr,
    /// The query gRPC API.
    pub query_grpc: SocketAddr,
}

/// Why a collector could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen for {listener} on {addr}: {source}")]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The query threads could not be started.
    #[error("cannot start the query threads: {0}")]
    Runtime(std::io::Error),
    /// A setting is outside its range (see [`Config::validate`]).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The write-ahead log in `--data-dir` could not be opened or read.
    #[error(transparent)]
    Wal(#[from] crate::store::log::OpenError),
    /// A listener's tokens could not be read.
    #[error(transparent)]
    Tokens(#[from] crate::net::access::TokenError),
    /// The TLS certificate, key or client CA could not be used.
    #[error(transparent)]
    Tls(#[from] crate::net::access::TlsError),
    /// The sealed Parquet files could not be listed or read.
    #[error(transparent)]
    History(#[from] crate::store::history::HistoryError),
}

/// A running collector. Dropping it stops nothing; call [`RunningCollector::shutdown`].
#[derive(Debug)]
pub struct RunningCollector {
    addrs: BoundAddrs,
    store: Arc<dyn SpanStore>,
    topology: Option<Arc<Topology>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    weights: Arc<WeightsEngine>,
    receivers_stop: CancellationToken,
    query_stop: CancellationToken,
    wal: Option<Wal>,
    live: reload::Live,
    /// In the order they stop: the receivers, the pipeline, the query API, the periodic work.
    receivers: Vec<Stage>,
    pipeline: Stage,
    query: Stage,
    periodic: Vec<Stage>,
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener,
            addr,
            source,
        })
}

impl Collector {
    /// Binds every listener, then starts the receivers, the pipeline, the store's upkeep and
    /// the query API.
    pub async fn start(config: Config) -> Result<RunningCollector, StartError> {
        Self::start_with_consumers(config, Vec::new()).await
    }

    /// [`Collector::start`], with `extra` stages fed the facts of every batch (after the
    /// weights, before the topology): for tests of the pipeline's containment.
    #[cfg(feature = "test-util")]
    pub async fn start_with(
        config: Config,
        extra: Vec<std::sync::Arc<dyn crate::pipeline::FactsConsumer>>,
    ) -> Result<RunningCollector, StartError> {
        Self::start_with_consumers(config, extra).await
    }

    async fn start_with_consumers(
        config: Config,
        extra: Vec<Arc<dyn crate::pipeline::FactsConsumer>>,
    ) -> Result<RunningCollector, StartError> {
        // A `Config` built in code has not been through `Config::resolve`; out-of-range rule
        // parameters would make updates panic (`f64::clamp` with crossed bounds) or publish NaN.
        config.validate()?;
        let ingest_tokens = config.ingest_token.as_ref().map(Tokens::load).transpose()?;
        let query_tokens = config.query_token.as_ref().map(Tokens::load).transpose()?;
        let tls = config.tls.clone().map(TlsFiles::load).transpose()?;
        let grpc_listener = bind("otlp-grpc", config.otlp_grpc).await?;
        let http_listener = bind("otlp-http", config.otlp_http).await?;
        let query_listener = bind("query-http", config.query_http).await?;
        let query_grpc_listener = bind("query-grpc", config.query_grpc).await?;
        let local = |l: &TcpListener, asked: SocketAddr| l.local_addr().unwrap_or(asked);
        let addrs = BoundAddrs {
            otlp_grpc: local(&grpc_listener, config.otlp_grpc),
            otlp_http: local(&http_listener, config.otlp_http),
            query_http: local(&query_listener, config.query_http),
            query_grpc: local(&query_grpc_listener, config.query_grpc),
        };

        let metrics = Arc::new(Metrics::new());
        // The log is read before anything starts: a damaged or foreign file stops the start
        // here, with the listeners not yet served.
        // The sealed files first: the log's numbering continues above theirs, and a record
        // whose spans they hold is not stored again.
        let history = match &config.data_dir {
            None => None,
            Some(dir) => {
                let location = config
                    .history
                    .clone()
                    .unwrap_or_else(|| dir.join("spans").display().to_string());
                let history = Arc::new(History::new(&location)?);
                let files = history.list().await?;
                Some((history, files))
            }
        };
        let recovered = match &config.data_dir {
            None => None,
            Some(dir) => {
                let mut wal_config = WalConfig::new(dir.join("wal"), config.wal_sync);
                wal_config.track_sealing = true;
                wal_config.min_next_seq = history.as_ref().map_or(1, |(_, files)| {
                    files.iter().map(|f| f.seqs.1).max().unwrap_or(0) + 1
                });
                let (wal, recovery) = tokio::task::spawn_blocking(move || Wal::open(wal_config))
                    .await
                    .map_err(|e| StartError::Runtime(std::io::Error::other(e)))??;
                for damage in &recovery.damage {
                    let moved_to = damage
                        .moved_to
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    if damage.is_tail() {
                        tracing::warn!(
                            path = %damage.path.display(),
                            offset = damage.offset,
                            bytes = damage.bytes,
                            reason = %damage.reason,
                            moved_to,
                            "write-ahead log: skipped a damaged tail (a torn write, or damage with no good record after it); its bytes are moved aside, every record before it is kept"
                        );
                    } else {
                        tracing::warn!(
                            path = %damage.path.display(),
                            offset = damage.offset,
                            bytes = damage.bytes,
                            records = damage.records.unwrap_or_default(),
                            reason = %damage.reason,
                            moved_to,
                            "write-ahead log: skipped damaged records in the middle of a segment; their bytes are moved aside, every good record before and after them is kept"
                        );
                    }
                }
                metrics.register_collector(Box::new(WalMetrics(wal.clone())));
                Some((wal, recovery))
            }
        };
        let store_config = StoreConfig {
            retention: config.retention,
            max_bytes: config.max_store_bytes,
            ..StoreConfig::default()
        };
        let mut memory = MemoryStore::new(store_config, metrics.clone());
        let mut sealed = SealedRecords::default();
        if let (Some((history, files)), Some((wal, recovery))) = (history, &recovered) {
            let oldest = recovery.found.first().map_or(u64::MAX, |s| s.first_seq);
            sealed = SealedRecords::new(history.sealed_seqs(&files, oldest).await?);
            let wal = wal.clone();
            memory = memory.with_sealing(
                Sealing {
                    history,
                    interval: config.seal_interval,
                    file_rows: SEAL_FILE_ROWS,
                    on_sealed: Arc::new(move |seqs| wal.sealed(seqs)),
                },
                files,
            );
        }
        let store: Arc<dyn SpanStore> = Arc::new(memory);
        let limits = QueryLimits {
            timeout: config.query_timeout,
            memory_bytes: config.query_memory_bytes,
            max_rows: config.query_max_rows,
            max_concurrent: config.query_max_concurrent,
        };
        let clock = Clock::new();
        let registry = Arc::new(Registry::new(
            RegistryConfig {
                deregister_after: config.deregister_after,
                max_ttl: config.max_heartbeat_ttl,
                ..RegistryConfig::default()
            },
            clock,
        ));
        metrics.register_collector(Box::new(RegistryMetrics(registry.clone())));
        // The attributes the stages read from spans, each taken once by the decoder.
        let mut plan = AttributePlan::default();
        let graph_dimensions: Arc<[_]> = config
            .service_graph_dimensions
            .iter()
            .map(|attribute| plan.dimension(attribute))
            .collect();
        let span_dimensions: Arc<[_]> = config
            .span_metrics_dimensions
            .iter()
            .map(|attribute| plan.dimension(attribute))
            .collect();
        let database_names: Arc<[_]> = config
            .database_name_attributes
            .iter()
            .map(|attribute| DatabaseName::of(attribute, &mut plan))
            .collect();
        let decode_options =
            plan.decode_options(config.topology, config.span_multiplier_key.clone());
        let topology = config.topology.then(|| {
            let topology = Arc::new(Topology::new(
                TopologyConfig {
                    dimensions: graph_dimensions,
                    database_names,
                    edge_wait: config.edge_wait,
                    max_pending: config.edge_max_pending,
                    max_bytes: config.topology_max_bytes,
                    retention: config.retention,
                    histogram_buckets: config
                        .service_graph_buckets
                        .iter()
                        .map(std::time::Duration::as_secs_f64)
                        .collect(),
                    ..TopologyConfig::default()
                },
                clock,
            ));
            metrics.register_collector(Box::new(TopologyMetrics(topology.clone())));
            metrics.register_exposition(Box::new(TopologyMetrics(topology.clone())));
            topology
        });
        // Span metrics come from the same facts as the topology, so with it or not at all.
        let spanmetrics = config.topology.then(|| {
            let spanmetrics = Arc::new(SpanMetrics::new(
                SpanMetricsConfig {
                    max_series: config.span_metrics_max_series,
                    histogram_buckets: config
                        .service_graph_buckets
                        .iter()
                        .map(std::time::Duration::as_secs_f64)
                        .collect(),
                    retention: config.retention,
                    dimensions: span_dimensions,
                },
                clock,
            ));
            metrics.register_collector(Box::new(SpanMetricsExposition(spanmetrics.clone())));
            metrics.register_exposition(Box::new(SpanMetricsExposition(spanmetrics.clone())));
            spanmetrics
        });
        let weights = Arc::new(WeightsEngine::new(config.weights(), clock));
        metrics.register_collector(Box::new(WeightsMetrics(weights.clone())));
        let engine = QueryEngine::new(store.clone(), limits, metrics.clone())
            .map_err(StartError::Runtime)?
            .with_registry(registry.clone());

        let (queue, dispatcher) = IngestQueue::new(config.max_ingest_bytes);
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
        let gauge = queue.gauge();
        let queue_budget = queue.budget();
        let pipeline = dispatcher.health();
        metrics.register_collector(Box::new(PipelineMetrics(pipeline.clone())));
        // Only the receivers hold the queue: when they stop, the dispatcher drains and ends.
        let mut ingest = Ingest::new(queue, metrics.clone())
            .with_decode_options(decode_options)
            .with_registry(registry.clone())
            .with_store(store.clone());
        // With a data directory, the room kept on its disk for sealing.
        let disk = config.data_dir.as_ref().map(|dir| {
            crate::store::log::DiskWatch::new(dir.join("wal"), config.disk_reserve as u64)
        });
        if let Some((wal, _)) = &recovered {
            ingest = ingest.with_wal(wal.clone());
        }
        if let Some(disk) = &disk {
            disk.check();
            ingest = ingest.with_disk(disk.clone());
        }
        let ingest = Arc::new(ingest);
        // The pipeline first: the replay of the log goes through it before any receiver
        // takes a request.
        let pipeline_stage = Stage::spawn("pipeline", dispatcher.run(store.clone()));
        let wal = match recovered {
            None => None,
            Some((wal, recovery)) => {
                let facts_since = SystemTime::now() - config.weight_window;
                let keep_since = SystemTime::now() - config.retention;
                replay(&ingest, &wal, recovery, &sealed, keep_since, facts_since).await;
                Some(wal)
            }
        };
        let receivers_stop = CancellationToken::new();
        let query_stop = CancellationToken::new();

        let caps = listeners::Caps::new(config.max_connections);
        let deadlines = crate::net::access::Deadlines::new(
            config.header_read_timeout,
            config.body_read_timeout,
            config.idle_timeout,
        );
        let bounds = listeners::Bounds {
            caps: caps.clone(),
            deadlines: deadlines.clone(),
            tls: tls.clone(),
            metrics: metrics.clone(),
        };
        // Receivers → ingest queue → the pipeline's stages.
        let receivers = vec![
            listeners::otlp_grpc(
                grpc_listener,
                ingest.clone(),
                config.grpc_max_message_bytes,
                &ingest_tokens,
                &bounds,
                receivers_stop.clone(),
            ),
            listeners::otlp_http(
                http_listener,
                ingest,
                config.http_max_body_bytes,
                &ingest_tokens,
                &bounds,
                receivers_stop.clone(),
            ),
        ];

        // Periodic work.
        let upkeep = {
            let (store, topology, registry) = (store.clone(), topology.clone(), registry.clone());
            // With sealing, the log keeps what the topology and the registry are rebuilt
            // from (the spans' own retention is the files'); without, what the store keeps.
            let wal_keeps = if config.data_dir.is_some() {
                config.weight_window.max(config.deregister_after)
            } else {
                config.retention
            };
            let (wal, retention, disk) = (wal.clone(), wal_keeps, disk.clone());
            let tokens: Vec<(&'static str, Tokens)> = [
                ("ingest", ingest_tokens.clone()),
                ("query", query_tokens.clone()),
            ]
            .into_iter()
            .filter_map(|(name, tokens)| Some((name, tokens?)))
            .collect();
            let tls = tls.clone();
            move || {
                for (listeners, tokens) in &tokens {
                    reload_tokens(listeners, tokens);
                }
                if let Some(tls) = &tls {
                    reload_tls(tls);
                }
                registry.tick();
                if let Some(topology) = &topology {
                    topology.tick();
                }
                let now = SystemTime::now();
                store.maintain(now);
                if let Some(wal) = &wal {
                    // Short of space: the open segment closes, so that what is sealed of it
                    // can go too.
                    if disk
                        .as_ref()
                        .is_some_and(crate::store::log::DiskWatch::check)
                    {
                        wal.rotate();
                    }
                    // What is sealed, or older than anything rebuilt from it, goes.
                    wal.retire_before(now - retention);
                }
            }
        };
        let update_weights = {
            let (weights, registry) = (weights.clone(), registry.clone());
            // One computation for every watcher.
            move || weights.update(&registry.instances(None))
        };
        let periodic = vec![
            Stage::every("upkeep", MAINTENANCE_PERIOD, query_stop.clone(), upkeep),
            Stage::every(
                "weights",
                config.weight_update_period,
                query_stop.clone(),
                update_weights,
            ),
        ];

        // The query API.
        let ready = Arc::new(AtomicBool::new(true));
        let state = Arc::new(ApiState {
            engine,
            topology: topology.clone(),
            spanmetrics,
            registry: registry.clone(),
            weights: weights.clone(),
            metrics: metrics.clone(),
            queue: gauge,
            ready: ready.clone(),
            pipeline,
            stop: query_stop.clone(),
            config: parking_lot::RwLock::new(Arc::new(config.in_force())),
            watchers: crate::serve::query::Watchers::new(
                config.max_watchers,
                metrics.refused_watchers.clone(),
            ),
            topology_json: crate::util::reuse::Reuse::new(crate::graph::topology::SNAPSHOT_REUSE),
        });
        let live = reload::Live {
            config: parking_lot::Mutex::new(config.clone()),
            store: store.clone(),
            api: state.clone(),
            caps,
            deadlines,
            queue: queue_budget,
            ingest_tokens: ingest_tokens.clone(),
            query_tokens: query_tokens.clone(),
            tls: tls.clone(),
            metrics: metrics.clone(),
            disk: disk.clone(),
        };
        let query = listeners::query(
            query_listener,
            query_grpc_listener,
            state,
            weights.clone(),
            &query_tokens,
            &bounds,
            query_stop.clone(),
        );

        tracing::info!(otlp_grpc = %addrs.otlp_grpc, otlp_http = %addrs.otlp_http, query_http = %addrs.query_http, query_grpc = %addrs.query_grpc, "collector started");
        Ok(RunningCollector {
            addrs,
            store,
            topology,
            registry,
            metrics,
            ready,
            weights,
            receivers_stop,
            query_stop,
            wal,
            live,
            receivers,
            pipeline: pipeline_stage,
            query,
            periodic,
        })
    }
}

/// Spans in memory are sealed at once when this many wait: about a row group per 128 Ki,
/// eight to a file.
const SEAL_FILE_ROWS: usize = 1 << 20;

impl RunningCollector {
    /// Where it listens.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// Its span store (for tests and benchmarks).
    #[cfg(any(test, feature = "test-util"))]
    pub fn store(&self) -> &Arc<dyn SpanStore> {
        &self.store
    }

    /// Its service graph (`None` when started with the topology off; for tests and benchmarks).
    #[cfg(any(test, feature = "test-util"))]
    pub fn topology(&self) -> Option<&Arc<Topology>> {
        self.topology.as_ref()
    }

    /// Its load-balancing weights (for tests and benchmarks).
    #[cfg(any(test, feature = "test-util"))]
    pub fn weights(&self) -> &Arc<WeightsEngine> {
        &self.weights
    }

    /// Its instance registry (for tests and benchmarks).
    #[cfg(any(test, feature = "test-util"))]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Its metrics (for tests and benchmarks).
    #[cfg(any(test, feature = "test-util"))]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies a new configuration (SIGHUP, a changed config file): the settings of
    /// [`IN_PLACE`] change at once, without dropping a connection or a span; the others that
    /// differ keep their running values and are listed in [`Reloaded::needs_restart`]. A
    /// configuration that does not validate changes nothing. Each outcome is logged and
    /// counted in `wayfinder_config_reloads_total{outcome}`.
    pub fn reload(&self, new: Config) -> Result<Reloaded, ConfigError> {
        let result = self.live.reload(new);
        match &result {
            Ok(reloaded) if reloaded.applied.is_empty() && reloaded.needs_restart.is_empty() => {
                tracing::info!("configuration reloaded: nothing changed");
            }
            Ok(reloaded) => tracing::info!(
                applied = ?reloaded.applied,
                needs_restart = ?reloaded.needs_restart,
                "configuration reloaded; the settings that need a restart keep their running values"
            ),
            Err(error) => tracing::warn!(
                %error,
                "the new configuration is refused; the running one stays"
            ),
        }
        result
    }

    /// Counts and logs a new configuration that was refused before it could be applied (a file
    /// or a flag that did not parse): `wayfinder_config_reloads_total{outcome="rejected"}`, as
    /// for one [`reload`](Self::reload) refuses.
    pub fn reload_refused(&self, error: &ConfigError) {
        self.metrics
            .config_reloads
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: "rejected",
            })
            .inc();
        tracing::warn!(%error, "the new configuration is refused; the running one stays");
    }

    /// The configuration in force (after the reloads applied).
    pub fn config(&self) -> Config {
        self.live.config.lock().clone()
    }

    /// Stops in order: the receivers stop accepting and answer what is in flight, the queue
    /// drains into the store, then the query API stops.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        self.receivers_stop.cancel();
        for receiver in self.receivers {
            receiver.join().await;
        }
        // Only the receivers held the queue: the pipeline drains it, then ends.
        self.pipeline.join().await;
        // Everything in memory is sealed before the log closes (without sealing, nothing).
        let store = self.store.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || store.flush()).await {
            tracing::error!(%error, "sealing at shutdown failed; the log keeps the spans");
        }
        if let Some(wal) = &self.wal {
            wal.close().await;
        }
        self.query_stop.cancel();
        self.query.join().await;
        for stage in self.periodic {
            stage.join().await;
        }
        tracing::info!("collector stopped");
    }
}
