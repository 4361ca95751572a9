//! The collector as a whole: its start in named phases, its supervised tiers, its reload and
//! its shutdown.
//!
//! [`Collector::start`] runs the phases in order: [`bind`] every listener (a port in use fails
//! before anything is opened), [`durability`]: open the history and read the log through,
//! [`build`] every part from the settings (each registering its metrics), then
//! [`start`]: replay the log through the pipeline, and start the periodic work, the query API
//! and last the receivers, each tier supervised ([`crate::util::tasks`]): a task that ends
//! while the collector runs makes `/readyz` name it and [`RunningCollector::exited`] return.

pub(crate) mod bind;
pub(crate) mod build;
pub mod config;
pub(crate) mod durability;
#[cfg(feature = "kafka")]
mod fleet;
mod listeners;
mod reload;
pub(crate) mod start;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use self::reload::{IN_PLACE, Reloaded, SWITCHED_IN_PLACE};
use self::start::Tiers;
use crate::app::config::{Config, ConfigError};
use crate::graph::registry::Registry;
use crate::graph::topology::Topology;
use crate::graph::weights::WeightsEngine;
use crate::metrics::Metrics;
use crate::net::access::{TlsFiles, Tokens};
use crate::net::metrics::ListenerMetrics;
use crate::serve::query::ApiState;
use crate::store::SpanStore;
use crate::store::log::Wal;
use crate::util::tasks::Supervision;
pub use crate::util::tasks::TaskExit;

/// Starts collectors.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
/// use wayfinder_collector::{Collector, Config};
///
/// let mut config = Config::default();
/// // Any free port on loopback, for each listener.
/// config.listeners.otlp_grpc = "127.0.0.1:0".parse().unwrap();
/// config.listeners.otlp_http = "127.0.0.1:0".parse().unwrap();
/// config.listeners.query_http = "127.0.0.1:0".parse().unwrap();
/// config.listeners.query_grpc = "127.0.0.1:0".parse().unwrap();
/// let collector = Collector::start(config).await.unwrap();
/// let addrs = collector.addrs(); // BoundAddrs: the ports given
/// assert_ne!(addrs.otlp_grpc.port(), 0);
/// assert_eq!(collector.config().listeners.otlp_grpc.port(), 0, "the settings as asked");
/// collector.shutdown().await;
/// # }
/// ```
#[derive(Debug)]
pub struct Collector;

/// The addresses a running collector listens on (with the real ports when port 0 was asked).
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
/// use wayfinder_collector::{Collector, Config};
///
/// let mut config = Config::default();
/// config.listeners.otlp_grpc = "127.0.0.1:0".parse().unwrap();
/// config.listeners.otlp_http = "127.0.0.1:0".parse().unwrap();
/// config.listeners.query_http = "127.0.0.1:0".parse().unwrap();
/// config.listeners.query_grpc = "127.0.0.1:0".parse().unwrap();
/// let collector = Collector::start(config).await.unwrap();
/// let query = collector.addrs().query_http;
/// // The query API answers there: GET /healthz.
/// let mut tcp = tokio::net::TcpStream::connect(query).await.unwrap();
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
/// let mut answer = String::new();
/// tcp.read_to_string(&mut answer).await.unwrap();
/// assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
/// collector.shutdown().await;
/// # }
/// ```
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
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use wayfinder_collector::{Collector, Config, StartError};
///
/// let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let mut config = Config::default();
/// config.listeners.otlp_grpc = taken.local_addr().unwrap();
/// match Collector::start(config).await {
///     Err(StartError::Bind { listener, .. }) => assert_eq!(listener, "otlp-grpc"),
///     other => panic!("a port in use fails the start: {other:?}"),
/// }
/// # }
/// ```
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
    /// Fleet mode: the brokers could not be reached, or the topics made.
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] crate::ingest::kafka::KafkaError),
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
    wal: Option<Wal>,
    /// Fleet mode with a history: the offsets committed as sealed, and the group left, once
    /// the store sealed everything at shutdown.
    #[cfg(feature = "kafka")]
    fleet_offsets: Option<Arc<crate::ingest::kafka::commit::Offsets>>,
    live: reload::Live,
    supervision: Supervision,
    tiers: Tiers,
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
        let sources = |error| StartError::Config(ConfigError::from_setting(error));
        let ingest_tokens = (config.access.ingest_tokens().map_err(sources)?)
            .as_ref()
            .map(Tokens::load)
            .transpose()?;
        let query_tokens = (config.access.query_tokens().map_err(sources)?)
            .as_ref()
            .map(Tokens::load)
            .transpose()?;
        let tls = config
            .access
            .tls()
            .map_err(sources)?
            .map(TlsFiles::load)
            .transpose()?;
        let bound = bind::bind(&config).await?;
        let metrics = Arc::new(Metrics::new());
        let supervision = Supervision::new();
        metrics.register(
            "wayfinder_task_early_exits",
            "Tasks of the collector that ended while it was running (a receiver, the pipeline, the query API, a part's periodic work), per tier and task: the collector then stops",
            supervision.counted(),
        );
        let durable = durability::open_durability(&config, &metrics).await?;
        let (parts, to_start) =
            build::build_components(&config, &metrics, durable, extra, bound.addrs.query_http)
                .await?;
        #[cfg(feature = "kafka")]
        let parts_offsets = parts.offsets.clone();

        let mut tiers = Tiers::new(&supervision);
        let wal = start::start_pipeline_and_replay(
            &config,
            to_start.dispatcher,
            &parts,
            to_start.log,
            &mut tiers.pipeline,
        )
        .await;
        start::start_periodic(
            &config,
            start::Upkeep {
                store: parts.store.clone(),
                registry: parts.registry.clone(),
                topology: parts.topology.clone(),
                weights: parts.weights.clone(),
                wal: wal.clone(),
                disk: parts.disk.clone(),
                ingest_tokens: ingest_tokens.clone(),
                query_tokens: query_tokens.clone(),
                tls: tls.clone(),
            },
            &mut tiers.periodic,
        );

        let caps = listeners::Caps::new(config.listeners.max_connections);
        let deadlines = config.listeners.deadlines();
        let bounds = listeners::Bounds {
            caps: caps.clone(),
            deadlines: deadlines.clone(),
            tls: tls.clone(),
            metrics: Arc::new(ListenerMetrics::register(&metrics)),
        };
        // The query API.
        let ready = Arc::new(AtomicBool::new(true));
        let query_stop = tiers.query.stop_token();
        let state = Arc::new(ApiState {
            engine: parts.engine,
            topology: parts.served_topology.clone(),
            spanmetrics: parts.spanmetrics,
            registry: parts.registry.clone(),
            weights: parts.weights.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            pipeline: parts.pipeline_health.clone(),
            tasks: supervision.clone(),
            stop: query_stop.clone(),
            config: parking_lot::RwLock::new(Arc::new(config.in_force())),
            watchers: crate::serve::query::Watchers::register(config.query.max_watchers, &metrics),
            topology_json: crate::util::reuse::Reuse::new(crate::graph::topology::SNAPSHOT_REUSE),
            #[cfg(feature = "kafka")]
            owners: parts.owners.clone(),
            #[cfg(feature = "kafka")]
            views: parts.views.clone(),
            #[cfg(feature = "kafka")]
            forwarder: crate::serve::query::forward::Forwarder::new(
                config.kafka.kafka_query_ca.as_deref(),
            )
            .map_err(|message| {
                StartError::Config(ConfigError::Invalid {
                    key: "kafka_query_ca",
                    message,
                })
            })?,
        });
        let live = reload::Live {
            config: parking_lot::Mutex::new(config.clone()),
            store: parts.store.clone(),
            api: state.clone(),
            caps,
            deadlines,
            queue: parts.queue_budget.clone(),
            ingest_tokens: ingest_tokens.clone(),
            query_tokens: query_tokens.clone(),
            tls: tls.clone(),
            reloads: reload::Live::counter(&metrics),
            disk: parts.disk.clone(),
        };
        tiers.query.spawn(
            "query",
            listeners::query(
                bound.query_http,
                bound.query_grpc,
                state,
                parts.weights.clone(),
                &query_tokens,
                &bounds,
                query_stop,
            ),
        );
        // Receivers → ingest queue → the pipeline's stages: last, so that everything they
        // feed runs.
        start::start_receivers(
            (bound.otlp_grpc, bound.otlp_http),
            &config,
            parts.ingest,
            &ingest_tokens,
            &bounds,
            &mut tiers.receivers,
        );
        // Fleet mode: this collector's partitions of the spans topic, stopped with the
        // receivers (it feeds the queue as they do).
        #[cfg(feature = "kafka")]
        if let Some(fleet) = to_start.fleet {
            fleet.start(&mut tiers.receivers);
        }

        let addrs = bound.addrs;
        tracing::info!(otlp_grpc = %addrs.otlp_grpc, otlp_http = %addrs.otlp_http, query_http = %addrs.query_http, query_grpc = %addrs.query_grpc, "collector started");
        Ok(RunningCollector {
            addrs,
            store: parts.store,
            topology: parts.topology,
            registry: parts.registry,
            metrics,
            ready,
            weights: parts.weights,
            wal,
            #[cfg(feature = "kafka")]
            fleet_offsets: parts_offsets,
            live,
            supervision,
            tiers,
        })
    }
}

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
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
    /// use std::time::Duration;
    /// use wayfinder_collector::{Collector, Config};
    ///
    /// let mut config = Config::default();
    /// let any = "127.0.0.1:0".parse().unwrap();
    /// config.listeners.otlp_grpc = any;
    /// config.listeners.otlp_http = any;
    /// config.listeners.query_http = any;
    /// config.listeners.query_grpc = any;
    /// let running = Collector::start(config).await.unwrap();
    /// let mut new = running.config();
    /// new.store.retention = Duration::from_secs(7200);
    /// new.ingest.grpc_max_message_bytes *= 2;
    /// let reloaded = running.reload(new).unwrap();
    /// assert_eq!(reloaded.applied, ["retention"]);
    /// assert_eq!(reloaded.needs_restart, ["grpc_max_message_bytes"]);
    /// assert_eq!(running.config().store.retention, Duration::from_secs(7200));
    /// running.shutdown().await;
    /// # }
    /// ```
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
    /// use clap::Parser;
    /// use wayfinder_collector::config::{Config, ServeArgs};
    /// use wayfinder_collector::Collector;
    ///
    /// let mut config = Config::default();
    /// config.listeners.otlp_grpc = "127.0.0.1:0".parse().unwrap();
    /// config.listeners.otlp_http = "127.0.0.1:0".parse().unwrap();
    /// config.listeners.query_http = "127.0.0.1:0".parse().unwrap();
    /// config.listeners.query_grpc = "127.0.0.1:0".parse().unwrap();
    /// let collector = Collector::start(config.clone()).await.unwrap();
    /// // SIGHUP, and the file named by --config is gone: the running settings stay.
    /// let args = ServeArgs::try_parse_from(["serve", "--config", "/nowhere.toml"]).unwrap();
    /// let error = Config::resolve(&args).unwrap_err();
    /// collector.reload_refused(&error);
    /// assert_eq!(collector.config(), config);
    /// collector.shutdown().await;
    /// # }
    /// ```
    pub fn reload_refused(&self, error: &ConfigError) {
        self.live.count("rejected");
        tracing::warn!(%error, "the new configuration is refused; the running one stays");
    }

    /// The configuration in force (after the reloads applied).
    pub fn config(&self) -> Config {
        self.live.config.lock().clone()
    }

    /// Runs `work` as a task of the query tier, supervised like the collector's own: for tests
    /// of the supervision (a task that ends early).
    #[cfg(feature = "test-util")]
    pub fn spawn_supervised(
        &mut self,
        task: &'static str,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.tiers.query.spawn(task, work);
    }

    /// Waits until a task of the collector ends while it runs (a receiver, the pipeline, the
    /// query API or a part's periodic work): the collector is then half there, and says so in
    /// `/readyz`; the binary stops with a non-zero status. Never returns while all is well.
    pub async fn exited(&self) -> TaskExit {
        self.supervision.exited().await
    }

    /// Stops in order: the receivers stop accepting and answer what is in flight, the queue
    /// drains into the store, then the query API and the periodic work stop. Each tier is
    /// given a grace to stop in, past which its tasks are aborted.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        self.supervision.stopping();
        let Tiers {
            receivers,
            pipeline,
            query,
            periodic,
        } = self.tiers;
        receivers.stop().await;
        // Only the receivers held the queue: the pipeline drains it, then ends.
        pipeline.join().await;
        // Everything in memory is sealed before the log closes (without sealing, nothing).
        let store = self.store.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || store.flush()).await {
            tracing::error!(%error, "sealing at shutdown failed; the log keeps the spans");
        }
        if let Some(wal) = &self.wal {
            wal.close().await;
        }
        // In fleet mode: the sealed offsets committed, then the group left.
        #[cfg(feature = "kafka")]
        if let Some(offsets) = &self.fleet_offsets {
            offsets.close().await;
        }
        query.stop().await;
        periodic.stop().await;
        tracing::info!("collector stopped");
    }
}
