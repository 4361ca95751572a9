//! Configuration of `wayfinder serve`: flags beat environment variables, which beat the
//! optional TOML file, which beats the embedded defaults.
//!
//! Every setting has the three spellings, e.g. `--otlp-grpc`, `WAYFINDER_OTLP_GRPC` and
//! `otlp_grpc = "…"` in the file given by `--config`. Durations are written the `humantime` way
//! (`30s`, `1h`, `500ms`) and sizes in bytes or with a unit (`256MiB`, `1GiB`, `4194304`).
//!
//! ```
//! use clap::Parser;
//! use wayfinder_collector::config::{Config, ServeArgs};
//!
//! let args = ServeArgs::try_parse_from(["serve", "--otlp-grpc", "127.0.0.1:0", "--retention", "2h"]).unwrap();
//! let config = Config::resolve(&args).unwrap();
//! assert_eq!(config.otlp_grpc.port(), 0);
//! assert_eq!(config.retention.as_secs(), 7200);
//! assert_eq!(config.max_ingest_bytes, 256 * 1024 * 1024); // the default
//! ```

mod args;
mod file;
mod show;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::util::units::{parse_duration, parse_size};
pub use args::{ServeArgs, WalSyncMode};
use file::{FileConfig, Size, list, read_file};

use crate::graph::weights::{RuleConfig, WeightsConfig};
use crate::net::access::{
    DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};
/// The types of the settings' values: a token and where it comes from, TLS files, log syncing.
pub use crate::net::access::{Secret, TlsPaths, TokenSource};
pub use crate::store::log::WalSync;

/// The resolved configuration of one collector.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Where OTLP/gRPC is served.
    pub otlp_grpc: SocketAddr,
    /// Where OTLP/HTTP (`/v1/traces`, `/v1/logs`) is served.
    pub otlp_http: SocketAddr,
    /// Where the query API (`/api/v1/…`, `/metrics`, `/healthz`, `/readyz`) is served.
    pub query_http: SocketAddr,
    /// Where the query gRPC API (`wayfinder.v1.Weights`) is served.
    pub query_grpc: SocketAddr,
    /// Largest OTLP/gRPC message accepted, after decompression.
    pub grpc_max_message_bytes: usize,
    /// Largest OTLP/HTTP body accepted, after decompression.
    pub http_max_body_bytes: usize,
    /// Memory budget of the ingest queue; when it is spent, receivers refuse with a retryable
    /// error.
    pub max_ingest_bytes: usize,
    /// How long spans are kept.
    pub retention: Duration,
    /// How much memory the span store may use; the oldest spans are evicted first.
    pub max_store_bytes: usize,
    /// How long one SQL query may run.
    pub query_timeout: Duration,
    /// How much memory the SQL queries running at once may use in all (sorts, joins,
    /// aggregates); each of the [`Config::query_max_concurrent`] gets an equal share.
    pub query_memory_bytes: usize,
    /// Most rows one SQL answer may carry.
    pub query_max_rows: usize,
    /// Most SQL queries running at once; more are refused with 503 and `Retry-After`.
    pub query_max_concurrent: usize,
    /// Whether the service graph is built from the spans (on unless `--no-topology`).
    pub topology: bool,
    /// How long half of an edge waits for its other half.
    pub edge_wait: Duration,
    /// How many halves of edges may wait at once; when full, the oldest expire first.
    pub edge_max_pending: usize,
    /// The memory budget of the service graph's figures; over it, the oldest minutes and the
    /// edges not seen since are evicted.
    pub topology_max_bytes: usize,
    /// Upper bounds of the service-graph latency histograms, ascending.
    pub service_graph_buckets: Vec<Duration>,
    /// How many span-metrics series (service, span name, kind, status) are tracked at most;
    /// the spans of further ones are counted in one overflow series.
    pub span_metrics_max_series: usize,
    /// Attributes (of the span, else its resource) that become extra labels of the
    /// service-graph series, `client_<name>` and `server_<name>`.
    pub service_graph_dimensions: Vec<String>,
    /// Attributes that become extra labels of the span-metrics series.
    pub span_metrics_dimensions: Vec<String>,
    /// An attribute holding the probability a span was sampled with: its span counts for
    /// `1 / probability` in the Prometheus series (Tempo's `span_multiplier_key`).
    pub span_multiplier_key: Option<String>,
    /// Where database node names come from, first found wins.
    pub database_name_attributes: Vec<String>,
    /// How long an instance may stay `critical` (or silent) before the registry removes it.
    pub deregister_after: Duration,
    /// The longest TTL a heartbeat may have.
    pub max_heartbeat_ttl: Duration,
    /// How often load-balancing weights are computed.
    pub weight_update_period: Duration,
    /// The sliding window of latency and errors the weights are computed from.
    pub weight_window: Duration,
    /// How long published weights hold without a newer answer (`ttl_ms`); `Watch` resends
    /// unchanged weights, and a long-poll waits at most, half of it. Longer than
    /// `weight_update_period`.
    pub weight_ttl: Duration,
    /// `γ`: how strongly weight follows speed, `w ∝ (L_ref / L)^γ`; greater than 0.
    pub weight_gamma: f64,
    /// `k`: how much errors count, `L · (1 + k · err)`; 0 or more.
    pub weight_error_penalty: f64,
    /// Largest change of an instance's multiplier per update (×step or ÷step); 1 or more.
    pub weight_max_step: f64,
    /// Changes of a target smaller than this ratio are ignored; 1 or more (1: no deadband).
    pub weight_deadband: f64,
    /// Lowest weight, as a share of the mean weight; in (0, 1].
    pub weight_min_factor: f64,
    /// Highest weight, as a multiple of the mean weight; 1 or more.
    pub weight_max_factor: f64,
    /// Requests in the window that judge an instance fully; below, its own figures count in
    /// proportion, the rest is the mean or the weight it earned, easing to the mean.
    pub weight_min_requests: u64,
    /// How long a new (or returning) instance ramps up; 0 turns slow start off.
    pub weight_slow_start: Duration,
    /// Largest share of a service's instances ejected (weight 0) at once; in [0, 1].
    pub weight_max_ejection: f64,
    /// Most connections each listener holds at once.
    pub max_connections: usize,
    /// Most gRPC `Watch` streams and HTTP long-polls at once.
    pub max_watchers: usize,
    /// Where the write-ahead log lives (`DIR/wal`); `None` keeps spans in memory only.
    pub data_dir: Option<PathBuf>,
    /// When the write-ahead log acknowledges a request.
    pub wal_sync: WalSync,
    /// Where sealed Parquet files go (with `data_dir`); `None`: `DIR/spans`.
    pub history: Option<String>,
    /// Free space kept on the data directory's disk (with `data_dir`).
    pub disk_reserve: usize,
    /// The longest spans wait in memory before they are sealed.
    pub seal_interval: Duration,
    /// The bearer tokens the OTLP receivers admit; `None`: open.
    pub ingest_token: Option<TokenSource>,
    /// The bearer tokens the query API admits (not `/healthz`, `/readyz`); `None`: open.
    pub query_token: Option<TokenSource>,
    /// The certificate, key and client CA every listener serves TLS with; `None`: plaintext.
    pub tls: Option<TlsPaths>,
    /// How long a new connection has for its first bytes or TLS handshake, and an HTTP/1
    /// request for its headers.
    pub header_read_timeout: Duration,
    /// How long an HTTP request's body may take to arrive in full after its headers.
    pub body_read_timeout: Duration,
    /// How long a connection may have no request open before it is closed.
    pub idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let weights = WeightsConfig::default();
        let rule = RuleConfig::default();
        Self {
            otlp_grpc: SocketAddr::from(([127, 0, 0, 1], 4317)),
            otlp_http: SocketAddr::from(([127, 0, 0, 1], 4318)),
            query_http: SocketAddr::from(([127, 0, 0, 1], 16686)),
            query_grpc: SocketAddr::from(([127, 0, 0, 1], 16685)),
            grpc_max_message_bytes: 4 * MIB,
            http_max_body_bytes: 20 * MIB,
            max_ingest_bytes: 256 * MIB,
            disk_reserve: crate::store::log::DEFAULT_DISK_RESERVE as usize,
            retention: Duration::from_secs(3600),
            max_store_bytes: 1024 * MIB,
            query_timeout: Duration::from_secs(30),
            query_memory_bytes: 512 * MIB,
            query_max_rows: 100_000,
            query_max_concurrent: 4,
            topology: true,
            edge_wait: Duration::from_secs(10),
            edge_max_pending: 100_000,
            topology_max_bytes: 256 * MIB,
            span_metrics_max_series: 10_000,
            service_graph_dimensions: Vec::new(),
            span_metrics_dimensions: Vec::new(),
            span_multiplier_key: None,
            database_name_attributes: [
                "peer.service",
                "db.namespace",
                "server.address",
                "network.peer.address",
                "db.system",
            ]
            .map(String::from)
            .to_vec(),
            service_graph_buckets: crate::graph::topology::stats::HISTOGRAM_BOUNDS
                .iter()
                .map(|&seconds| Duration::from_secs_f64(seconds))
                .collect(),
            deregister_after: Duration::from_secs(60),
            max_heartbeat_ttl: crate::graph::registry::DEFAULT_MAX_TTL,
            weight_update_period: weights.update_period,
            weight_window: weights.window,
            weight_ttl: weights.ttl,
            weight_gamma: rule.gamma,
            weight_error_penalty: rule.error_penalty,
            weight_max_step: rule.max_step,
            weight_deadband: rule.deadband,
            weight_min_factor: rule.min_factor,
            weight_max_factor: rule.max_factor,
            weight_min_requests: rule.min_requests,
            weight_slow_start: rule.slow_start,
            weight_max_ejection: rule.max_ejection,
            max_connections: 4096,
            max_watchers: 10_000,
            data_dir: None,
            wal_sync: WalSync::Interval(DEFAULT_WAL_SYNC_INTERVAL),
            history: None,
            seal_interval: Duration::from_secs(60),
            ingest_token: None,
            query_token: None,
            tls: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

const MIB: usize = 1024 * 1024;

/// A listener's tokens: a file, or the value of a variable, not both.
fn token_source(
    key: &'static str,
    file: Option<PathBuf>,
    value: Option<String>,
) -> Result<Option<TokenSource>, ConfigError> {
    match (file, value.filter(|v| !v.is_empty())) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid {
            key,
            message: format!(
                "both a token file and WAYFINDER_{}_TOKEN are set: keep one",
                key.split('_').next().unwrap_or_default().to_uppercase()
            ),
        }),
        (Some(path), None) => Ok(Some(TokenSource::File(path))),
        (None, Some(value)) => Ok(Some(TokenSource::Value(Secret::new(value)))),
        (None, None) => Ok(None),
    }
}

/// The TLS files: a certificate and its key together, a client CA only with them.
fn tls_paths(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsPaths>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsPaths {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => Err(ConfigError::Invalid {
            key: "tls_client_ca",
            message: "needs --tls-cert and --tls-key: client certificates are asked for over TLS"
                .to_owned(),
        }),
        (Some(_), None) => Err(ConfigError::Invalid {
            key: "tls_key",
            message: "--tls-cert needs its key, --tls-key".to_owned(),
        }),
        (None, Some(_)) => Err(ConfigError::Invalid {
            key: "tls_cert",
            message: "--tls-key needs its certificate, --tls-cert".to_owned(),
        }),
    }
}

/// How often the write-ahead log syncs in `interval` mode: what a power cut may lose.
const DEFAULT_WAL_SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Why the configuration could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// A value in the file is not valid for its key.
    #[error("invalid value for `{key}` in {path}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A setting (from a flag, the environment, the file or the code) is outside its range.
    #[error("invalid `{key}` (`--{}`): {message}", .key.replace('_', "-"))]
    Invalid {
        /// The setting, as its file key.
        key: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl Config {
    /// Resolves flags and environment (already merged in `args` by clap) over the file named by
    /// `args.config`, over the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::resolve_with(args, |name| std::env::var(name).ok())
    }

    /// [`Config::resolve`], reading the variables that only the environment can set (the
    /// tokens: never flags, which `ps` shows) through `var`.
    pub fn resolve_with(
        args: &ServeArgs,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (file, path) = match &args.config {
            Some(path) => (read_file(path)?, path.clone()),
            None => (FileConfig::default(), PathBuf::new()),
        };
        let defaults = Config::default();
        let size = |key: &'static str, v: &Option<Size>| -> Result<Option<usize>, ConfigError> {
            match v {
                None => Ok(None),
                Some(Size::Bytes(n)) => Ok(Some(*n)),
                Some(Size::Text(t)) => {
                    parse_size(t)
                        .map(Some)
                        .map_err(|message| ConfigError::Value {
                            path: path.clone(),
                            key,
                            message,
                        })
                }
            }
        };
        let duration =
            |key: &'static str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
                v.as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|message| ConfigError::Value {
                        path: path.clone(),
                        key,
                        message,
                    })
            };
        let config = Config {
            otlp_grpc: args
                .otlp_grpc
                .or(file.otlp_grpc)
                .unwrap_or(defaults.otlp_grpc),
            otlp_http: args
                .otlp_http
                .or(file.otlp_http)
                .unwrap_or(defaults.otlp_http),
            query_http: args
                .query_http
                .or(file.query_http)
                .unwrap_or(defaults.query_http),
            query_grpc: args
                .query_grpc
                .or(file.query_grpc)
                .unwrap_or(defaults.query_grpc),
            grpc_max_message_bytes: args
                .grpc_max_message_bytes
                .or(size(
                    "grpc_max_message_bytes",
                    &file.grpc_max_message_bytes,
                )?)
                .unwrap_or(defaults.grpc_max_message_bytes),
            http_max_body_bytes: args
                .http_max_body_bytes
                .or(size("http_max_body_bytes", &file.http_max_body_bytes)?)
                .unwrap_or(defaults.http_max_body_bytes),
            max_ingest_bytes: args
                .max_ingest_bytes
                .or(size("max_ingest_bytes", &file.max_ingest_bytes)?)
                .unwrap_or(defaults.max_ingest_bytes),
            disk_reserve: args
                .disk_reserve
                .or(size("disk_reserve", &file.disk_reserve)?)
                .unwrap_or(defaults.disk_reserve),
            retention: args
                .retention
                .or(duration("retention", &file.retention)?)
                .unwrap_or(defaults.retention),
            max_store_bytes: args
                .max_store_bytes
                .or(size("max_store_bytes", &file.max_store_bytes)?)
                .unwrap_or(defaults.max_store_bytes),
            query_timeout: args
                .query_timeout
                .or(duration("query_timeout", &file.query_timeout)?)
                .unwrap_or(defaults.query_timeout),
            query_memory_bytes: args
                .query_memory_bytes
                .or(size("query_memory_bytes", &file.query_memory_bytes)?)
                .unwrap_or(defaults.query_memory_bytes),
            query_max_rows: args
                .query_max_rows
                .or(file.query_max_rows)
                .unwrap_or(defaults.query_max_rows),
            query_max_concurrent: args
                .query_max_concurrent
                .or(file.query_max_concurrent)
                .unwrap_or(defaults.query_max_concurrent),
            topology: !args.no_topology && file.topology.unwrap_or(defaults.topology),
            edge_wait: args
                .edge_wait
                .or(duration("edge_wait", &file.edge_wait)?)
                .unwrap_or(defaults.edge_wait),
            edge_max_pending: args
                .edge_max_pending
                .or(file.edge_max_pending)
                .unwrap_or(defaults.edge_max_pending),
            topology_max_bytes: args
                .topology_max_bytes
                .or(size("topology_max_bytes", &file.topology_max_bytes)?)
                .unwrap_or(defaults.topology_max_bytes),
            span_metrics_max_series: args
                .span_metrics_max_series
                .or(file.span_metrics_max_series)
                .unwrap_or(defaults.span_metrics_max_series),
            service_graph_buckets: if !args.service_graph_buckets.is_empty() {
                args.service_graph_buckets.clone()
            } else if let Some(buckets) = &file.service_graph_buckets {
                buckets
                    .iter()
                    .map(|text| {
                        parse_duration(text).map_err(|message| ConfigError::Value {
                            path: path.clone(),
                            key: "service_graph_buckets",
                            message,
                        })
                    })
                    .collect::<Result<_, _>>()?
            } else {
                defaults.service_graph_buckets
            },
            service_graph_dimensions: list(
                &args.service_graph_dimensions,
                &file.service_graph_dimensions,
                defaults.service_graph_dimensions,
            ),
            span_metrics_dimensions: list(
                &args.span_metrics_dimensions,
                &file.span_metrics_dimensions,
                defaults.span_metrics_dimensions,
            ),
            span_multiplier_key: args
                .span_multiplier_key
                .clone()
                .or(file.span_multiplier_key.clone())
                .filter(|key| !key.is_empty()),
            database_name_attributes: list(
                &args.database_name_attributes,
                &file.database_name_attributes,
                defaults.database_name_attributes,
            ),
            deregister_after: args
                .deregister_after
                .or(duration("deregister_after", &file.deregister_after)?)
                .unwrap_or(defaults.deregister_after),
            max_heartbeat_ttl: args
                .max_heartbeat_ttl
                .or(duration("max_heartbeat_ttl", &file.max_heartbeat_ttl)?)
                .unwrap_or(defaults.max_heartbeat_ttl),
            weight_update_period: args
                .weight_update_period
                .or(duration(
                    "weight_update_period",
                    &file.weight_update_period,
                )?)
                .unwrap_or(defaults.weight_update_period)
                .max(Duration::from_millis(10)),
            weight_window: args
                .weight_window
                .or(duration("weight_window", &file.weight_window)?)
                .unwrap_or(defaults.weight_window),
            weight_ttl: args
                .weight_ttl
                .or(duration("weight_ttl", &file.weight_ttl)?)
                .unwrap_or(defaults.weight_ttl),
            weight_gamma: args
                .weight_gamma
                .or(file.weight_gamma)
                .unwrap_or(defaults.weight_gamma),
            weight_error_penalty: args
                .weight_error_penalty
                .or(file.weight_error_penalty)
                .unwrap_or(defaults.weight_error_penalty),
            weight_max_step: args
                .weight_max_step
                .or(file.weight_max_step)
                .unwrap_or(defaults.weight_max_step),
            weight_deadband: args
                .weight_deadband
                .or(file.weight_deadband)
                .unwrap_or(defaults.weight_deadband),
            weight_min_factor: args
                .weight_min_factor
                .or(file.weight_min_factor)
                .unwrap_or(defaults.weight_min_factor),
            weight_max_factor: args
                .weight_max_factor
                .or(file.weight_max_factor)
                .unwrap_or(defaults.weight_max_factor),
            weight_min_requests: args
                .weight_min_requests
                .or(file.weight_min_requests)
                .unwrap_or(defaults.weight_min_requests),
            weight_slow_start: args
                .weight_slow_start
                .or(duration("weight_slow_start", &file.weight_slow_start)?)
                .unwrap_or(defaults.weight_slow_start),
            weight_max_ejection: args
                .weight_max_ejection
                .or(file.weight_max_ejection)
                .unwrap_or(defaults.weight_max_ejection),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_watchers: args
                .max_watchers
                .or(file.max_watchers)
                .unwrap_or(defaults.max_watchers),
            data_dir: args.data_dir.clone().or(file.data_dir.clone()),
            history: args.history.clone().or(file.history.clone()),
            seal_interval: args
                .seal_interval
                .or(duration("seal_interval", &file.seal_interval)?)
                .unwrap_or(defaults.seal_interval),
            ingest_token: token_source(
                "ingest_token_file",
                args.ingest_token_file
                    .clone()
                    .or(file.ingest_token_file.clone()),
                var("WAYFINDER_INGEST_TOKEN"),
            )?,
            query_token: token_source(
                "query_token_file",
                args.query_token_file
                    .clone()
                    .or(file.query_token_file.clone()),
                var("WAYFINDER_QUERY_TOKEN"),
            )?,
            tls: tls_paths(
                args.tls_cert.clone().or(file.tls_cert.clone()),
                args.tls_key.clone().or(file.tls_key.clone()),
                args.tls_client_ca.clone().or(file.tls_client_ca.clone()),
            )?,
            header_read_timeout: args
                .header_read_timeout
                .or(duration("header_read_timeout", &file.header_read_timeout)?)
                .unwrap_or(defaults.header_read_timeout),
            body_read_timeout: args
                .body_read_timeout
                .or(duration("body_read_timeout", &file.body_read_timeout)?)
                .unwrap_or(defaults.body_read_timeout),
            idle_timeout: args
                .idle_timeout
                .or(duration("idle_timeout", &file.idle_timeout)?)
                .unwrap_or(defaults.idle_timeout),
            wal_sync: match args.wal_sync.or(file.wal_sync) {
                Some(WalSyncMode::Always) => WalSync::Always,
                Some(WalSyncMode::Interval) | None => WalSync::Interval(
                    args.wal_sync_interval
                        .or(duration("wal_sync_interval", &file.wal_sync_interval)?)
                        .unwrap_or(DEFAULT_WAL_SYNC_INTERVAL),
                ),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// The weights engine's configuration.
    pub fn weights(&self) -> WeightsConfig {
        WeightsConfig {
            update_period: self.weight_update_period,
            window: self.weight_window,
            ttl: self.weight_ttl,
            rule: RuleConfig {
                gamma: self.weight_gamma,
                error_penalty: self.weight_error_penalty,
                max_step: self.weight_max_step,
                deadband: self.weight_deadband,
                min_factor: self.weight_min_factor,
                max_factor: self.weight_max_factor,
                min_requests: self.weight_min_requests,
                slow_start: self.weight_slow_start,
                max_ejection: self.weight_max_ejection,
                quiet_half_life: self.weight_window,
            },
            ..WeightsConfig::default()
        }
    }

    /// The log filter: the flag or `RUST_LOG`, else the file's `log_level`, else `info`.
    pub fn log_filter(args: &ServeArgs) -> Result<String, ConfigError> {
        if let Some(level) = &args.log_level {
            return Ok(level.clone());
        }
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Ok(file.log_level.unwrap_or_else(|| "info".to_owned()))
    }
}

#[cfg(test)]
mod tests;
