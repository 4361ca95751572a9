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

/// The resolved configuration of one collector.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// How much memory one SQL query's operators (sorts, joins, aggregates) may use.
    pub query_memory_bytes: usize,
    /// Most rows one SQL answer may carry.
    pub query_max_rows: usize,
    /// Whether the service graph is built from the spans (on unless `--no-topology`).
    pub topology: bool,
    /// How long half of an edge waits for its other half.
    pub edge_wait: Duration,
    /// How many halves of edges may wait at once; when full, the oldest expire first.
    pub edge_max_pending: usize,
    /// How long an instance may stay `critical` (or silent) before the registry removes it.
    pub deregister_after: Duration,
    /// How often load-balancing weights are computed.
    pub weight_update_period: Duration,
    /// The sliding window of latency and errors the weights are computed from.
    pub weight_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
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
            topology: true,
            edge_wait: Duration::from_secs(10),
            edge_max_pending: 100_000,
            deregister_after: Duration::from_secs(60),
            weight_update_period: Duration::from_secs(1),
            weight_window: Duration::from_secs(30),
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
    /// Memory limit of one SQL query's operators [default: 512MiB].
    #[arg(long, env = "WAYFINDER_QUERY_MEMORY_BYTES", value_parser = parse_size)]
    pub query_memory_bytes: Option<usize>,
    /// Most rows in one SQL answer [default: 100000].
    #[arg(long, env = "WAYFINDER_QUERY_MAX_ROWS")]
    pub query_max_rows: Option<usize>,
    /// Do not build the service graph (spans are still stored and queryable).
    #[arg(long, env = "WAYFINDER_NO_TOPOLOGY")]
    pub no_topology: bool,
    /// How long half of an edge waits for its other half [default: 10s].
    #[arg(long, env = "WAYFINDER_EDGE_WAIT", value_parser = parse_duration)]
    pub edge_wait: Option<Duration>,
    /// How many halves of edges may wait at once [default: 100000].
    #[arg(long, env = "WAYFINDER_EDGE_MAX_PENDING")]
    pub edge_max_pending: Option<usize>,
    /// How long an instance stays critical (or silent) before it is removed [default: 60s].
    #[arg(long, env = "WAYFINDER_DEREGISTER_AFTER", value_parser = parse_duration)]
    pub deregister_after: Option<Duration>,
    /// How often load-balancing weights are computed [default: 1s].
    #[arg(long, env = "WAYFINDER_WEIGHT_UPDATE_PERIOD", value_parser = parse_duration)]
    pub weight_update_period: Option<Duration>,
    /// The sliding window the weights are computed from [default: 30s].
    #[arg(long, env = "WAYFINDER_WEIGHT_WINDOW", value_parser = parse_duration)]
    pub weight_window: Option<Duration>,
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
    topology: Option<bool>,
    edge_wait: Option<String>,
    edge_max_pending: Option<usize>,
    deregister_after: Option<String>,
    weight_update_period: Option<String>,
    weight_window: Option<String>,
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
        Ok(Config {
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
            topology: !args.no_topology && file.topology.unwrap_or(defaults.topology),
            edge_wait: args
                .edge_wait
                .or(duration("edge_wait", &file.edge_wait)?)
                .unwrap_or(defaults.edge_wait),
            edge_max_pending: args
                .edge_max_pending
                .or(file.edge_max_pending)
                .unwrap_or(defaults.edge_max_pending),
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
        })
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
