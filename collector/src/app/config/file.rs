//! The optional TOML file of `wayfinder serve`: its keys, and how list settings merge with
//! the flags.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// The optional configuration file; every key is optional and unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) otlp_grpc: Option<SocketAddr>,
    pub(super) otlp_http: Option<SocketAddr>,
    pub(super) query_http: Option<SocketAddr>,
    pub(super) query_grpc: Option<SocketAddr>,
    pub(super) grpc_max_message_bytes: Option<Size>,
    pub(super) http_max_body_bytes: Option<Size>,
    pub(super) max_ingest_bytes: Option<Size>,
    pub(super) retention: Option<String>,
    pub(super) max_store_bytes: Option<Size>,
    pub(super) query_timeout: Option<String>,
    pub(super) query_memory_bytes: Option<Size>,
    pub(super) query_max_rows: Option<usize>,
    pub(super) query_max_concurrent: Option<usize>,
    pub(super) topology: Option<bool>,
    pub(super) edge_wait: Option<String>,
    pub(super) edge_max_pending: Option<usize>,
    pub(super) span_metrics_max_series: Option<usize>,
    pub(super) service_graph_buckets: Option<Vec<String>>,
    pub(super) service_graph_dimensions: Option<Vec<String>>,
    pub(super) span_metrics_dimensions: Option<Vec<String>>,
    pub(super) span_multiplier_key: Option<String>,
    pub(super) database_name_attributes: Option<Vec<String>>,
    pub(super) deregister_after: Option<String>,
    pub(super) max_heartbeat_ttl: Option<String>,
    pub(super) weight_update_period: Option<String>,
    pub(super) weight_window: Option<String>,
    pub(super) weight_ttl: Option<String>,
    pub(super) weight_gamma: Option<f64>,
    pub(super) weight_error_penalty: Option<f64>,
    pub(super) weight_max_step: Option<f64>,
    pub(super) weight_deadband: Option<f64>,
    pub(super) weight_min_factor: Option<f64>,
    pub(super) weight_max_factor: Option<f64>,
    pub(super) weight_min_requests: Option<u64>,
    pub(super) weight_slow_start: Option<String>,
    pub(super) weight_max_ejection: Option<f64>,
    pub(super) max_connections: Option<usize>,
    pub(super) topology_max_bytes: Option<Size>,
    pub(super) max_watchers: Option<usize>,
    pub(super) data_dir: Option<std::path::PathBuf>,
    pub(super) wal_sync: Option<super::WalSyncMode>,
    pub(super) wal_sync_interval: Option<String>,
    pub(super) history: Option<String>,
    pub(super) disk_reserve: Option<Size>,
    pub(super) seal_interval: Option<String>,
    pub(super) ingest_token_file: Option<std::path::PathBuf>,
    pub(super) query_token_file: Option<std::path::PathBuf>,
    pub(super) tls_cert: Option<std::path::PathBuf>,
    pub(super) tls_key: Option<std::path::PathBuf>,
    pub(super) tls_client_ca: Option<std::path::PathBuf>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) body_read_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) log_level: Option<String>,
}

/// A size in the file: a number of bytes or a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(usize),
    Text(String),
}

/// A list setting: the flag's when given, else the file's, else the default; empty items
/// (a trailing comma) are dropped.
pub(super) fn list(
    flag: &[String],
    file: &Option<Vec<String>>,
    default: Vec<String>,
) -> Vec<String> {
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

pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}
