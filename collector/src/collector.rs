//! Wiring: binds the listeners and starts the stages; stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::{IngestQueue, PipelineMetrics};
use crate::query::ApiState;
use crate::receivers::grpc::{LogsService, TraceService};
use crate::receivers::{Ingest, http as otlp_http};
use crate::registry::{Registry, RegistryConfig, RegistryMetrics};
use crate::sql::{QueryEngine, QueryLimits};
use crate::store::{MAINTENANCE_PERIOD, MemoryStore, SpanStore, StoreConfig};
use crate::topology::{Topology, TopologyConfig, TopologyMetrics};
use crate::weights::{WeightsEngine, WeightsMetrics};

/// The OTLP/gRPC receiver's HTTP/2 window per stream: a typical export (a few hundred KB)
/// arrives without waiting for the client to be told it may send more.
const OTLP_STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The OTLP/gRPC receiver's HTTP/2 window per connection.
const OTLP_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// HTTP/2 streams per connection on the query gRPC port (each `Watch` holds one).
const QUERY_GRPC_MAX_STREAMS: u32 = 10_000;

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
    receivers_stop: CancellationToken,
    query_stop: CancellationToken,
    receivers: Vec<JoinHandle<()>>,
    dispatcher: JoinHandle<()>,
    query: JoinHandle<()>,
    maintenance: JoinHandle<()>,
    weights_task: JoinHandle<()>,
    weights: Arc<WeightsEngine>,
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
        let store_config = StoreConfig {
            retention: config.retention,
            max_bytes: config.max_store_bytes,
            ..StoreConfig::default()
        };
        let store: Arc<dyn SpanStore> = Arc::new(MemoryStore::new(store_config, metrics.clone()));
        let limits = QueryLimits {
            timeout: config.query_timeout,
            memory_bytes: config.query_memory_bytes,
            max_rows: config.query_max_rows,
        };
        let clock = Clock::new();
        let registry = Arc::new(Registry::new(
            RegistryConfig {
                deregister_after: config.deregister_after,
                ..RegistryConfig::default()
            },
            clock,
        ));
        metrics.register_collector(Box::new(RegistryMetrics(registry.clone())));
        let topology = config.topology.then(|| {
            let topology = Arc::new(Topology::new(
                TopologyConfig {
                    edge_wait: config.edge_wait,
                    max_pending: config.edge_max_pending,
                    retention: config.retention,
                    ..TopologyConfig::default()
                },
                clock,
            ));
            metrics.register_collector(Box::new(TopologyMetrics(topology.clone())));
            topology
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
        if let Some(topology) = &topology {
            dispatcher = dispatcher.with_consumer(topology.clone());
        }
        let gauge = queue.gauge();
        let pipeline = dispatcher.health();
        metrics.register_collector(Box::new(PipelineMetrics(pipeline.clone())));
        // Only the receivers hold the queue: when they stop, the dispatcher drains and ends.
        let ingest = Arc::new(
            Ingest::new(queue, metrics.clone())
                .with_facts(config.topology)
                .with_registry(registry.clone()),
        );
        let receivers_stop = CancellationToken::new();
        let query_stop = CancellationToken::new();

        let grpc = tonic::transport::Server::builder()
            // HTTP/2's default 64 KiB windows make a 200 KB export wait for several
            // WINDOW_UPDATE round trips: with one request in flight per connection, ingest
            // was latency-bound with a core idle.
            .initial_stream_window_size(Some(OTLP_STREAM_WINDOW))
            .initial_connection_window_size(Some(OTLP_CONNECTION_WINDOW))
            .add_service(TraceService::new(
                ingest.clone(),
                config.grpc_max_message_bytes,
            ))
            .add_service(LogsService::new(
                ingest.clone(),
                config.grpc_max_message_bytes,
            ))
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY a response's last small segment waited for the client's
                // delayed ACK: every export's p99 was 40 ms over its work.
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                receivers_stop.clone().cancelled_owned(),
            );
        let grpc = tokio::spawn(async move {
            if let Err(error) = grpc.await {
                tracing::error!(%error, "the OTLP/gRPC receiver stopped");
            }
        });
        let http = axum::serve(
            http_listener.tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
            }),
            otlp_http::router(ingest, config.http_max_body_bytes),
        )
        .with_graceful_shutdown(receivers_stop.clone().cancelled_owned());
        let http = tokio::spawn(async move {
            if let Err(error) = http.await {
                tracing::error!(%error, "the OTLP/HTTP receiver stopped");
            }
        });

        let dispatcher = tokio::spawn(dispatcher.run(store.clone()));
        let maintenance = {
            let store = store.clone();
            let topology = topology.clone();
            let registry = registry.clone();
            let stop = query_stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(MAINTENANCE_PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            registry.tick();
                            if let Some(topology) = &topology {
                                topology.tick();
                            }
                            let store = store.clone();
                            // Compaction is CPU work: keep it off the async threads.
                            let _ = tokio::task::spawn_blocking(move || store.maintain(SystemTime::now())).await;
                        }
                        () = stop.cancelled() => break,
                    }
                }
            })
        };

        let weights_task = {
            let weights = weights.clone();
            let registry = registry.clone();
            let stop = query_stop.clone();
            let period = config.weight_update_period.max(Duration::from_millis(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let weights = weights.clone();
                            let instances = registry.instances(None);
                            // One computation for every watcher; CPU work, off the async threads.
                            let _ = tokio::task::spawn_blocking(move || weights.update(&instances)).await;
                        }
                        () = stop.cancelled() => break,
                    }
                }
            })
        };

        let ready = Arc::new(AtomicBool::new(true));
        let state = Arc::new(ApiState {
            engine,
            topology: topology.clone(),
            registry: registry.clone(),
            weights: weights.clone(),
            metrics: metrics.clone(),
            queue: gauge,
            ready: ready.clone(),
            pipeline,
            stop: query_stop.clone(),
            topology_json: crate::reuse::Reuse::new(crate::topology::SNAPSHOT_REUSE),
        });
        let query = axum::serve(
            query_listener,
            crate::query::router(state).merge(crate::ui::router()),
        )
        .with_graceful_shutdown(query_stop.clone().cancelled_owned());
        let query_grpc = tonic::transport::Server::builder()
            // Watchers hold a stream each: let many share one connection.
            .max_concurrent_streams(Some(QUERY_GRPC_MAX_STREAMS))
            .add_service(crate::query::grpc::weights_server(
                weights.clone(),
                query_stop.clone(),
            ))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(query_grpc_listener).with_nodelay(Some(true)),
                query_stop.clone().cancelled_owned(),
            );
        let query = tokio::spawn(async move {
            let (http, grpc) = tokio::join!(query, query_grpc);
            if let Err(error) = http {
                tracing::error!(%error, "the query API stopped");
            }
            if let Err(error) = grpc {
                tracing::error!(%error, "the query gRPC API stopped");
            }
        });

        tracing::info!(otlp_grpc = %addrs.otlp_grpc, otlp_http = %addrs.otlp_http, query_http = %addrs.query_http, query_grpc = %addrs.query_grpc, "collector started");
        Ok(RunningCollector {
            addrs,
            store,
            topology,
            registry,
            metrics,
            ready,
            receivers_stop,
            query_stop,
            receivers: vec![grpc, http],
            dispatcher,
            query,
            maintenance,
            weights_task,
            weights,
        })
    }
}

impl RunningCollector {
    /// Where it listens.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// Its span store.
    pub fn store(&self) -> &Arc<dyn SpanStore> {
        &self.store
    }

    /// Its service graph (`None` when started with the topology off).
    pub fn topology(&self) -> Option<&Arc<Topology>> {
        self.topology.as_ref()
    }

    /// Its load-balancing weights.
    pub fn weights(&self) -> &Arc<WeightsEngine> {
        &self.weights
    }

    /// Its instance registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops in order: the receivers stop accepting and answer what is in flight, the queue
    /// drains into the store, then the query API stops.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        self.receivers_stop.cancel();
        for receiver in self.receivers {
            let _ = receiver.await;
        }
        let _ = self.dispatcher.await;
        self.query_stop.cancel();
        let _ = self.query.await;
        let _ = self.maintenance.await;
        let _ = self.weights_task.await;
        tracing::info!("collector stopped");
    }
}
