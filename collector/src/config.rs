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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::weights::{RuleConfig, WeightsConfig};

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
    /// Below this many requests in the window an instance gets the mean weight.
    pub weight_min_requests: u64,
    /// How long a new (or returning) instance ramps up; 0 turns slow start off.
    pub weight_slow_start: Duration,
    /// Largest share of a service's instances ejected (weight 0) at once; in [0, 1].
    pub weight_max_ejection: f64,
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
            retention: Duration::from_secs(3600),
            max_store_bytes: 1024 * MIB,
            query_timeout: Duration::from_secs(30),
            query_memory_bytes: 512 * MIB,
            query_max_rows: 100_000,
            query_max_concurrent: 4,
            topology: true,
            edge_wait: Duration::from_secs(10),
            edge_max_pending: 100_000,
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
            service_graph_buckets: crate::topology::stats::HISTOGRAM_BOUNDS
                .iter()
                .map(|&seconds| Duration::from_secs_f64(seconds))
                .collect(),
            deregister_after: Duration::from_secs(60),
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
        }
    }
}

const MIB: usize = 1024 * 1024;

/// The flags of `wayfinder serve`; each one also reads its environment variable.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(about = "Run the Wayfinder collector")]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys in snake_case, e.g. `otlp_grpc`).
    #[arg(long, env = "WAYFINDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the OTLP/gRPC receiver [default: 127.0.0.1:4317].
    #[arg(long, env = "WAYFINDER_OTLP_GRPC")]
    pub otlp_grpc: Option<SocketAddr>,
    /// Address of the OTLP/HTTP receiver [default: 127.0.0.1:4318].
    #[arg(long, env = "WAYFINDER_OTLP_HTTP")]
    pub otlp_http: Option<SocketAddr>,
    /// Address of the query HTTP API [default: 127.0.0.1:16686].
    #[arg(long, env = "WAYFINDER_QUERY_HTTP")]
    pub query_http: Option<SocketAddr>,
    /// Address of the query gRPC API [default: 127.0.0.1:16685].
    #[arg(long, env = "WAYFINDER_QUERY_GRPC")]
    pub query_grpc: Option<SocketAddr>,
    /// Largest OTLP/gRPC message, after decompression [default: 4MiB].
    #[arg(long, env = "WAYFINDER_GRPC_MAX_MESSAGE_BYTES", value_parser = parse_size)]
    pub grpc_max_message_bytes: Option<usize>,
    /// Largest OTLP/HTTP body, after decompression [default: 20MiB].
    #[arg(long, env = "WAYFINDER_HTTP_MAX_BODY_BYTES", value_parser = parse_size)]
    pub http_max_body_bytes: Option<usize>,
    /// Memory budget of the ingest queue [default: 256MiB].
    #[arg(long, env = "WAYFINDER_MAX_INGEST_BYTES", value_parser = parse_size)]
    pub max_ingest_bytes: Option<usize>,
    /// How long spans are kept [default: 1h].
    #[arg(long, env = "WAYFINDER_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Memory budget of the span store [default: 1GiB].
    #[arg(long, env = "WAYFINDER_MAX_STORE_BYTES", value_parser = parse_size)]
    pub max_store_bytes: Option<usize>,
    /// Time limit of one SQL query [default: 30s].
    #[arg(long, env = "WAYFINDER_QUERY_TIMEOUT", value_parser = parse_duration)]
    pub query_timeout: Option<Duration>,
    /// Memory of all SQL queries at once, shared equally among --query-max-concurrent
    /// [default: 512MiB].
    #[arg(long, env = "WAYFINDER_QUERY_MEMORY_BYTES", value_parser = parse_size)]
    pub query_memory_bytes: Option<usize>,
    /// Most rows in one SQL answer [default: 100000].
    #[arg(long, env = "WAYFINDER_QUERY_MAX_ROWS")]
    pub query_max_rows: Option<usize>,
    /// Most SQL queries running at once; more get 503 with Retry-After [default: 4].
    #[arg(long, env = "WAYFINDER_QUERY_MAX_CONCURRENT")]
    pub query_max_concurrent: Option<usize>,
    /// Do not build the service graph (spans are still stored and queryable).
    #[arg(long, env = "WAYFINDER_NO_TOPOLOGY")]
    pub no_topology: bool,
    /// How long half of an edge waits for its other half [default: 10s].
    #[arg(long, env = "WAYFINDER_EDGE_WAIT", value_parser = parse_duration)]
    pub edge_wait: Option<Duration>,
    /// How many halves of edges may wait at once [default: 100000].
    #[arg(long, env = "WAYFINDER_EDGE_MAX_PENDING")]
    pub edge_max_pending: Option<usize>,
    /// How many span-metrics series are tracked at most; further ones go to the overflow
    /// series [default: 10000].
    #[arg(long, env = "WAYFINDER_SPAN_METRICS_MAX_SERIES")]
    pub span_metrics_max_series: Option<usize>,
    /// Upper bounds of the service-graph latency histograms, comma-separated and ascending
    /// [default: the servicegraph connector's, 2ms,4ms,6ms,8ms,10ms,50ms,100ms,200ms,400ms,
    /// 800ms,1s,1400ms,2s,5s,10s,15s].
    #[arg(long, env = "WAYFINDER_SERVICE_GRAPH_BUCKETS", value_delimiter = ',', value_parser = parse_duration)]
    pub service_graph_buckets: Vec<Duration>,
    /// Span or resource attributes that become extra labels of the service-graph series,
    /// `client_<name>` and `server_<name>`, comma-separated [default: none].
    #[arg(
        long,
        env = "WAYFINDER_SERVICE_GRAPH_DIMENSIONS",
        value_delimiter = ','
    )]
    pub service_graph_dimensions: Vec<String>,
    /// Span or resource attributes that become extra labels of the span-metrics series,
    /// comma-separated [default: none].
    #[arg(long, env = "WAYFINDER_SPAN_METRICS_DIMENSIONS", value_delimiter = ',')]
    pub span_metrics_dimensions: Vec<String>,
    /// Attribute holding the probability a span was sampled with; the span counts for
    /// 1/probability in the Prometheus series [default: none].
    #[arg(long, env = "WAYFINDER_SPAN_MULTIPLIER_KEY")]
    pub span_multiplier_key: Option<String>,
    /// Where database node names come from, first found wins, comma-separated [default:
    /// peer.service,db.namespace,server.address,network.peer.address,db.system].
    #[arg(
        long,
        env = "WAYFINDER_DATABASE_NAME_ATTRIBUTES",
        value_delimiter = ','
    )]
    pub database_name_attributes: Vec<String>,
    /// How long an instance stays critical (or silent) before it is removed [default: 60s].
    #[arg(long, env = "WAYFINDER_DEREGISTER_AFTER", value_parser = parse_duration)]
    pub deregister_after: Option<Duration>,
    /// How often load-balancing weights are computed [default: 1s].
    #[arg(long, env = "WAYFINDER_WEIGHT_UPDATE_PERIOD", value_parser = parse_duration)]
    pub weight_update_period: Option<Duration>,
    /// The sliding window the weights are computed from [default: 30s].
    #[arg(long, env = "WAYFINDER_WEIGHT_WINDOW", value_parser = parse_duration)]
    pub weight_window: Option<Duration>,
    /// How long published weights hold without a newer answer [default: 60s].
    #[arg(long, env = "WAYFINDER_WEIGHT_TTL", value_parser = parse_duration)]
    pub weight_ttl: Option<Duration>,
    /// How strongly weight follows speed, `(L_ref / L)^gamma`, > 0 [default: 1].
    #[arg(long, env = "WAYFINDER_WEIGHT_GAMMA")]
    pub weight_gamma: Option<f64>,
    /// How much errors inflate latency, `L · (1 + k · err)`, >= 0 [default: 10].
    #[arg(long, env = "WAYFINDER_WEIGHT_ERROR_PENALTY")]
    pub weight_error_penalty: Option<f64>,
    /// Largest change of a weight per update, as a ratio, >= 1 [default: 1.25].
    #[arg(long, env = "WAYFINDER_WEIGHT_MAX_STEP")]
    pub weight_max_step: Option<f64>,
    /// Changes of a target within this ratio are ignored, >= 1 [default: 1.05].
    #[arg(long, env = "WAYFINDER_WEIGHT_DEADBAND")]
    pub weight_deadband: Option<f64>,
    /// Lowest weight as a share of the mean, in (0, 1] [default: 0.1].
    #[arg(long, env = "WAYFINDER_WEIGHT_MIN_FACTOR")]
    pub weight_min_factor: Option<f64>,
    /// Highest weight as a multiple of the mean, >= 1 [default: 10].
    #[arg(long, env = "WAYFINDER_WEIGHT_MAX_FACTOR")]
    pub weight_max_factor: Option<f64>,
    /// Requests in the window below which an instance gets the mean weight [default: 10].
    #[arg(long, env = "WAYFINDER_WEIGHT_MIN_REQUESTS")]
    pub weight_min_requests: Option<u64>,
    /// How long new instances ramp up; 0s turns it off [default: 30s].
    #[arg(long, env = "WAYFINDER_WEIGHT_SLOW_START", value_parser = parse_duration)]
    pub weight_slow_start: Option<Duration>,
    /// Largest share of a service's instances ejected at once, in [0, 1] [default: 0.5].
    #[arg(long, env = "WAYFINDER_WEIGHT_MAX_EJECTION")]
    pub weight_max_ejection: Option<f64>,
    /// Log filter, e.g. `info` or `wayfinder_collector=debug,info` [default: info].
    #[arg(long, env = "RUST_LOG")]
    pub log_level: Option<String>,
}

/// The optional configuration file; every key is optional and unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    otlp_grpc: Option<SocketAddr>,
    otlp_http: Option<SocketAddr>,
    query_http: Option<SocketAddr>,
    query_grpc: Option<SocketAddr>,
    grpc_max_message_bytes: Option<Size>,
    http_max_body_bytes: Option<Size>,
    max_ingest_bytes: Option<Size>,
    retention: Option<String>,
    max_store_bytes: Option<Size>,
    query_timeout: Option<String>,
    query_memory_bytes: Option<Size>,
    query_max_rows: Option<usize>,
    query_max_concurrent: Option<usize>,
    topology: Option<bool>,
    edge_wait: Option<String>,
    edge_max_pending: Option<usize>,
    span_metrics_max_series: Option<usize>,
    service_graph_buckets: Option<Vec<String>>,
    service_graph_dimensions: Option<Vec<String>>,
    span_metrics_dimensions: Option<Vec<String>>,
    span_multiplier_key: Option<String>,
    database_name_attributes: Option<Vec<String>>,
    deregister_after: Option<String>,
    weight_update_period: Option<String>,
    weight_window: Option<String>,
    weight_ttl: Option<String>,
    weight_gamma: Option<f64>,
    weight_error_penalty: Option<f64>,
    weight_max_step: Option<f64>,
    weight_deadband: Option<f64>,
    weight_min_factor: Option<f64>,
    weight_max_factor: Option<f64>,
    weight_min_requests: Option<u64>,
    weight_slow_start: Option<String>,
    weight_max_ejection: Option<f64>,
    log_level: Option<String>,
}

/// A size in the file: a number of bytes or a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(usize),
    Text(String),
}

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
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings that have a range (the weight rule's, the weights' TTL); `resolve`
    /// and [`Collector::start`](crate::Collector::start) call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        // NaN fails every comparison, so each check below refuses it too.
        let at_least = |key: &'static str, value: f64, lo: f64| {
            if value.is_finite() && value >= lo {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("must be a number of at least {lo}, not {value}"),
                ))
            }
        };
        let within = |key: &'static str, value: f64, lo_open: bool, lo: f64, hi: f64| {
            let above_lo = if lo_open { value > lo } else { value >= lo };
            if above_lo && value <= hi {
                Ok(())
            } else {
                let open = if lo_open { '(' } else { '[' };
                Err(invalid(
                    key,
                    format!("must be within {open}{lo}, {hi}], not {value}"),
                ))
            }
        };
        let buckets = &self.service_graph_buckets;
        if buckets.is_empty()
            || buckets.iter().any(Duration::is_zero)
            || buckets.windows(2).any(|pair| pair[0] >= pair[1])
        {
            return Err(invalid(
                "service_graph_buckets",
                "must be one or more durations above zero, ascending (e.g. 10ms,100ms,1s)"
                    .to_owned(),
            ));
        }
        if self.database_name_attributes.is_empty() {
            return Err(invalid(
                "database_name_attributes",
                "must name at least one attribute (e.g. db.namespace)".to_owned(),
            ));
        }
        if self.query_max_concurrent == 0 {
            return Err(invalid(
                "query_max_concurrent",
                "must be at least 1, not 0".to_owned(),
            ));
        }
        if !(self.weight_gamma.is_finite() && self.weight_gamma > 0.0) {
            return Err(invalid(
                "weight_gamma",
                format!("must be a number greater than 0, not {}", self.weight_gamma),
            ));
        }
        at_least("weight_error_penalty", self.weight_error_penalty, 0.0)?;
        at_least("weight_max_step", self.weight_max_step, 1.0)?;
        at_least("weight_deadband", self.weight_deadband, 1.0)?;
        within("weight_min_factor", self.weight_min_factor, true, 0.0, 1.0)?;
        at_least("weight_max_factor", self.weight_max_factor, 1.0)?;
        within(
            "weight_max_ejection",
            self.weight_max_ejection,
            false,
            0.0,
            1.0,
        )?;
        if self.weight_ttl < Duration::from_millis(1) {
            return Err(invalid(
                "weight_ttl",
                format!(
                    "must be at least 1ms (it is sent in milliseconds), not {}",
                    humantime::format_duration(self.weight_ttl)
                ),
            ));
        }
        if self.weight_ttl <= self.weight_update_period {
            return Err(invalid(
                "weight_ttl",
                format!(
                    "must be longer than weight_update_period ({}), not {}",
                    humantime::format_duration(self.weight_update_period),
                    humantime::format_duration(self.weight_ttl)
                ),
            ));
        }
        Ok(())
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

/// A list setting: the flag's when given, else the file's, else the default; empty items
/// (a trailing comma) are dropped.
fn list(flag: &[String], file: &Option<Vec<String>>, default: Vec<String>) -> Vec<String> {
    let chosen = if !flag.is_empty() {
        flag.to_vec()
    } else {
        file.clone().unwrap_or(default)
    };
    chosen
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Parses a duration such as `30s`, `1h` or `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 30s, 5m, 1h"))
}

/// Parses a size such as `4194304`, `256MiB` or `1GB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let bytes: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("`{text}` is not a size ({e}); write e.g. 4194304, 256MiB, 1GiB"))?;
    usize::try_from(bytes.as_u64()).map_err(|_| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_beat_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("wayfinder-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wayfinder.toml");
        std::fs::write(
            &path,
            "otlp_grpc = \"127.0.0.1:5000\"\notlp_http = \"127.0.0.1:5001\"\nmax_store_bytes = \"2GiB\"\nquery_max_rows = 7\nretention = \"10m\"\n",
        )
        .unwrap();
        let args = ServeArgs::try_parse_from([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--otlp-grpc",
            "127.0.0.1:6000",
        ])
        .unwrap();
        let config = Config::resolve(&args).unwrap();
        assert_eq!(
            config.otlp_grpc,
            "127.0.0.1:6000".parse().unwrap(),
            "the flag beats the file"
        );
        assert_eq!(
            config.otlp_http,
            "127.0.0.1:5001".parse().unwrap(),
            "the file beats the default"
        );
        assert_eq!(
            config.max_store_bytes,
            2 * 1024 * 1024 * 1024,
            "sizes with units in the file"
        );
        assert_eq!(config.query_max_rows, 7);
        assert_eq!(config.retention, Duration::from_secs(600));
        assert_eq!(
            config.query_http,
            Config::default().query_http,
            "unset everywhere: the default"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("wayfinder-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (
                "unknown_key = 1\n",
                "unknown field",
                "an unknown key is refused, not ignored",
            ),
            (
                "retention = \"soon\"\n",
                "`retention`",
                "a bad duration names its key",
            ),
            (
                "max_store_bytes = \"lots\"\n",
                "`max_store_bytes`",
                "a bad size names its key",
            ),
            (
                "otlp_grpc = 4317\n",
                "invalid type",
                "a port alone is not an address",
            ),
            (
                "service_graph_buckets = [\"100ms\", \"10ms\"]\n",
                "`service_graph_buckets` (`--service-graph-buckets`): must be one or more durations above zero, ascending",
                "histogram bounds out of order",
            ),
            (
                "service_graph_buckets = [\"fast\"]\n",
                "`service_graph_buckets`",
                "a bound that is not a duration names its key",
            ),
        ];
        for (i, (text, expected, reason)) in cases.iter().enumerate() {
            let path = dir.join(format!("{i}.toml"));
            std::fs::write(&path, text).unwrap();
            let args =
                ServeArgs::try_parse_from(["serve", "--config", path.to_str().unwrap()]).unwrap();
            let err = Config::resolve(&args).expect_err(reason).to_string();
            assert!(err.contains(expected), "{reason}: got {err}");
        }
        let missing =
            ServeArgs::try_parse_from(["serve", "--config", "/nonexistent/wayfinder.toml"])
                .unwrap();
        assert!(matches!(
            Config::resolve(&missing),
            Err(ConfigError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The weight settings, by file key.
    const WEIGHT_KEYS: [&str; 10] = [
        "weight_ttl",
        "weight_gamma",
        "weight_error_penalty",
        "weight_max_step",
        "weight_deadband",
        "weight_min_factor",
        "weight_max_factor",
        "weight_min_requests",
        "weight_slow_start",
        "weight_max_ejection",
    ];

    fn resolve(flags: &[&str]) -> Result<Config, ConfigError> {
        let args = ServeArgs::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .expect("the flags parse");
        Config::resolve(&args)
    }

    #[test]
    fn the_weight_defaults_are_the_engines() {
        let config = Config::default();
        assert_eq!(config.weights(), WeightsConfig::default());
        assert_eq!(resolve(&[]).unwrap(), config, "nothing set: the defaults");
        config.validate().expect("the defaults are valid");
    }

    #[test]
    fn every_weight_setting_has_a_flag_an_env_var_and_a_file_key() {
        use clap::CommandFactory as _;
        let command = ServeArgs::command();
        for key in WEIGHT_KEYS {
            let flag = key.replace('_', "-");
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.as_str()))
                .unwrap_or_else(|| panic!("--{flag} exists"));
            let env = format!("WAYFINDER_{}", key.to_uppercase());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(env.as_str()),
                "--{flag} reads {env}"
            );
            assert!(
                arg.get_help()
                    .is_some_and(|h| h.to_string().contains("[default: ")),
                "--{flag} says its default"
            );
        }
        let file = "weight_ttl = \"2m\"\nweight_gamma = 2\nweight_error_penalty = 5.5\n\
                    weight_max_step = 1.5\nweight_deadband = 1.1\nweight_min_factor = 0.2\n\
                    weight_max_factor = 5.0\nweight_min_requests = 20\n\
                    weight_slow_start = \"1m\"\nweight_max_ejection = 0.25\n";
        for key in WEIGHT_KEYS {
            assert!(
                file.contains(&format!("{key} = ")),
                "the file below sets {key}"
            );
        }
        let parsed: FileConfig = toml::from_str(file).expect("every key is known");
        assert_eq!(parsed.weight_gamma, Some(2.0), "an integer is a float too");
        let dir =
            std::env::temp_dir().join(format!("wayfinder-config-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wayfinder.toml");
        std::fs::write(&path, file).unwrap();
        let config = resolve(&["--config", path.to_str().unwrap(), "--weight-gamma", "3"]).unwrap();
        let rule = config.weights().rule;
        assert_eq!(config.weights().ttl, Duration::from_secs(120));
        assert_eq!(rule.gamma, 3.0, "the flag beats the file");
        assert_eq!(rule.error_penalty, 5.5);
        assert_eq!(rule.max_step, 1.5);
        assert_eq!(rule.deadband, 1.1);
        assert_eq!(rule.min_factor, 0.2);
        assert_eq!(rule.max_factor, 5.0);
        assert_eq!(rule.min_requests, 20);
        assert_eq!(rule.slow_start, Duration::from_secs(60));
        assert_eq!(rule.max_ejection, 0.25);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A row of a table of valid settings: the flags, what the configuration must then say, and
    /// why the value is valid.
    type Valid = (&'static [&'static str], fn(&Config) -> bool, &'static str);

    #[test]
    fn weight_settings_in_range_are_taken() {
        let cases: [Valid; 14] = [
            (
                &["--weight-ttl", "10m"],
                |c| c.weight_ttl == Duration::from_secs(600),
                "a longer TTL",
            ),
            (
                &["--weight-ttl", "2s"],
                |c| c.weight_ttl == Duration::from_secs(2),
                "a TTL just longer than the update period",
            ),
            (
                &["--weight-gamma", "0.5"],
                |c| c.weight_gamma == 0.5,
                "a gentler rule",
            ),
            (
                &["--weight-gamma", "3"],
                |c| c.weight_gamma == 3.0,
                "a sharper rule",
            ),
            (
                &["--weight-error-penalty", "0"],
                |c| c.weight_error_penalty == 0.0,
                "errors may be ignored",
            ),
            (
                &["--weight-max-step", "1"],
                |c| c.weight_max_step == 1.0,
                "a step of 1 holds",
            ),
            (
                &["--weight-deadband", "1"],
                |c| c.weight_deadband == 1.0,
                "no deadband",
            ),
            (
                &["--weight-min-factor", "1"],
                |c| c.weight_min_factor == 1.0,
                "no trickle below the mean",
            ),
            (
                &["--weight-min-factor", "1", "--weight-max-factor", "1"],
                |c| c.weight_min_factor == 1.0 && c.weight_max_factor == 1.0,
                "every weight the mean: balancing off",
            ),
            (
                &["--weight-min-requests", "0"],
                |c| c.weight_min_requests == 0,
                "any volume counts",
            ),
            (
                &["--weight-slow-start", "0s"],
                |c| c.weight_slow_start.is_zero(),
                "slow start off",
            ),
            (
                &["--weight-max-ejection", "0"],
                |c| c.weight_max_ejection == 0.0,
                "never eject",
            ),
            (
                &["--weight-max-ejection", "1"],
                |c| c.weight_max_ejection == 1.0,
                "eject all critical but one",
            ),
            (
                &["--weight-update-period", "100ms", "--weight-ttl", "200ms"],
                |c| c.weight_ttl == Duration::from_millis(200),
                "a short TTL with a shorter update period",
            ),
        ];
        for (flags, check, reason) in cases {
            let config = resolve(flags).unwrap_or_else(|e| panic!("{reason}: {e}"));
            assert!(check(&config), "{reason}: {config:?}");
        }
    }

    #[test]
    fn weight_settings_out_of_range_are_clear_errors() {
        let cases: [(&[&str], &str, &str, &str); 20] = [
            (
                &["--weight-ttl", "0s"],
                "weight_ttl",
                "at least 1ms",
                "a zero TTL",
            ),
            (
                &["--weight-ttl", "1s"],
                "weight_ttl",
                "longer than weight_update_period (1s)",
                "weights stale before the next update",
            ),
            (
                &["--weight-gamma", "0"],
                "weight_gamma",
                "greater than 0",
                "gamma 0: every weight equal",
            ),
            (
                &["--weight-gamma=-1"],
                "weight_gamma",
                "greater than 0",
                "a negative gamma favours slow ones",
            ),
            (&["--weight-gamma", "NaN"], "weight_gamma", "not NaN", "NaN"),
            (
                &["--weight-gamma", "inf"],
                "weight_gamma",
                "not inf",
                "infinity",
            ),
            (
                &["--weight-error-penalty=-1"],
                "weight_error_penalty",
                "at least 0",
                "a negative penalty makes failures fast",
            ),
            (
                &["--weight-max-step", "0.9"],
                "weight_max_step",
                "at least 1",
                "a step below 1",
            ),
            (
                &["--weight-max-step", "NaN"],
                "weight_max_step",
                "not NaN",
                "NaN step",
            ),
            (
                &["--weight-deadband", "0.95"],
                "weight_deadband",
                "at least 1",
                "a deadband below 1",
            ),
            (
                &["--weight-min-factor", "0"],
                "weight_min_factor",
                "within (0, 1]",
                "no floor: no probes",
            ),
            (
                &["--weight-min-factor", "1.5"],
                "weight_min_factor",
                "within (0, 1]",
                "a floor above the mean",
            ),
            (
                &["--weight-min-factor", "NaN"],
                "weight_min_factor",
                "not NaN",
                "NaN floor",
            ),
            (
                &["--weight-max-factor", "0.5"],
                "weight_max_factor",
                "at least 1",
                "a ceiling below the mean",
            ),
            (
                &["--weight-max-factor", "inf"],
                "weight_max_factor",
                "not inf",
                "no ceiling",
            ),
            (
                &["--weight-max-ejection=-0.1"],
                "weight_max_ejection",
                "within [0, 1]",
                "a negative share",
            ),
            (
                &["--weight-max-ejection", "1.5"],
                "weight_max_ejection",
                "within [0, 1]",
                "more than every instance",
            ),
            (
                &["--weight-max-ejection", "NaN"],
                "weight_max_ejection",
                "not NaN",
                "NaN share",
            ),
            (
                &["--weight-update-period", "5s", "--weight-ttl", "5s"],
                "weight_ttl",
                "longer than weight_update_period (5s)",
                "a TTL equal to the update period",
            ),
            (
                &[
                    "--weight-window",
                    "1m",
                    "--weight-gamma",
                    "0",
                    "--weight-max-step",
                    "0",
                ],
                "weight_gamma",
                "greater than 0",
                "the first bad setting is named",
            ),
        ];
        for (flags, key, expected, reason) in cases {
            let err = resolve(flags).expect_err(reason);
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if *k == key),
                "{reason}: names {key}, got {err:?}"
            );
            let text = err.to_string();
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(
                text.contains(expected) && text.contains(&flag),
                "{reason}: got {text}"
            );
        }
    }

    #[test]
    fn bad_weight_values_in_the_file_are_refused_too() {
        let dir = std::env::temp_dir().join(format!(
            "wayfinder-config-bad-weights-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (
                "weight_deadband = 0.5\n",
                "`weight_deadband`",
                "out of range in the file",
            ),
            (
                "weight_ttl = \"never\"\n",
                "`weight_ttl`",
                "a bad duration names its key",
            ),
            (
                "weight_gamma = \"big\"\n",
                "invalid type",
                "a number, not a string",
            ),
            (
                "weight_min_requests = -1\n",
                "weight_min_requests",
                "a count is not negative",
            ),
        ];
        for (i, (text, expected, reason)) in cases.iter().enumerate() {
            let path = dir.join(format!("{i}.toml"));
            std::fs::write(&path, text).unwrap();
            let err = resolve(&["--config", path.to_str().unwrap()])
                .expect_err(reason)
                .to_string();
            assert!(err.contains(expected), "{reason}: got {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizes_and_durations() {
        let sizes = [
            ("4194304", Some(4_194_304), "plain bytes"),
            ("256MiB", Some(256 * 1024 * 1024), "binary unit"),
            ("1GB", Some(1_000_000_000), "decimal unit"),
            ("-1", None, "negative"),
            ("many", None, "not a number"),
        ];
        for (text, expected, reason) in sizes {
            assert_eq!(parse_size(text).ok(), expected, "{reason}");
        }
        assert_eq!(parse_duration("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert!(parse_duration("1 fortnight").is_err());
    }
}

#[cfg(test)]
mod bucket_tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn service_graph_buckets_from_the_command_line() {
        let args = ServeArgs::try_parse_from(["serve", "--service-graph-buckets", "10ms,100ms,1s"])
            .unwrap();
        let config = Config::resolve(&args).unwrap();
        assert_eq!(
            config.service_graph_buckets,
            [
                Duration::from_millis(10),
                Duration::from_millis(100),
                Duration::from_secs(1)
            ]
        );
        assert_eq!(
            Config::default().service_graph_buckets.len(),
            16,
            "the connector's 16 bounds by default"
        );
    }
}

#[cfg(test)]
mod dimension_tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn dimensions_multiplier_and_database_names() {
        let dir =
            std::env::temp_dir().join(format!("wayfinder-config-dims-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dims.toml");
        std::fs::write(
            &file,
            "service_graph_dimensions = [\"deployment.environment\"]\n\
             span_metrics_dimensions = [\"http.route\"]\n\
             span_multiplier_key = \"sampling.ratio\"\n\
             database_name_attributes = [\"db.namespace\"]\n",
        )
        .unwrap();
        let resolve = |flags: &[&str]| {
            let mut all = vec!["serve", "--config", file.to_str().unwrap()];
            all.extend_from_slice(flags);
            Config::resolve(&ServeArgs::try_parse_from(all).unwrap())
        };
        let from_file = resolve(&[]).unwrap();
        assert_eq!(
            from_file.service_graph_dimensions,
            ["deployment.environment"]
        );
        assert_eq!(from_file.span_metrics_dimensions, ["http.route"]);
        assert_eq!(
            from_file.span_multiplier_key.as_deref(),
            Some("sampling.ratio")
        );
        assert_eq!(from_file.database_name_attributes, ["db.namespace"]);
        let flags = resolve(&[
            "--service-graph-dimensions",
            "a,b,",
            "--database-name-attributes",
            "db.cluster,peer.service",
        ])
        .unwrap();
        assert_eq!(
            flags.service_graph_dimensions,
            ["a", "b"],
            "the flag wins over the file; a trailing comma adds nothing"
        );
        assert_eq!(
            flags.database_name_attributes,
            ["db.cluster", "peer.service"]
        );
        assert_eq!(
            Config::default().database_name_attributes[0],
            "peer.service",
            "the default precedence starts with peer.service"
        );
        std::fs::write(&file, "database_name_attributes = []\n").unwrap();
        let err = resolve(&[])
            .expect_err("an empty list names no database")
            .to_string();
        assert!(err.contains("database_name_attributes"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
