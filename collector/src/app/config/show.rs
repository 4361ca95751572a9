//! The configuration in force as `GET /api/v1/config` shows it: keyed and written as in the
//! config file (so that an answer can be copied into one), with tokens redacted.

use std::time::Duration;

use serde_json::{Value, json};

use super::Config;
use crate::net::access::TokenSource;
use crate::store::log::WalSync;

fn duration(value: Duration) -> Value {
    Value::String(humantime::format_duration(value).to_string())
}

fn durations(values: &[Duration]) -> Value {
    values.iter().copied().map(duration).collect()
}

/// A token source as shown: the file's path, or that a variable holds one; never the token.
fn token(source: &Option<TokenSource>, variable: &str) -> (Value, Value) {
    match source {
        None => (Value::Null, Value::Null),
        Some(TokenSource::File(path)) => (json!(path.display().to_string()), Value::Null),
        Some(TokenSource::Value(_)) => (Value::Null, json!(format!("<redacted> ({variable})"))),
    }
}

impl Config {
    /// The settings in force, with the config file's keys and formats (durations as `30s`,
    /// sizes in bytes); a token set through the environment shows as `<redacted>`.
    ///
    /// ```
    /// use wayfinder_collector::Config;
    /// use wayfinder_collector::config::{Secret, TokenSource};
    ///
    /// let mut config = Config::default();
    /// config.query_token = Some(TokenSource::Value(Secret::new("s3cret")));
    /// let shown = config.in_force();
    /// assert_eq!(shown["retention"], "1h");
    /// assert_eq!(shown["query_token"], "<redacted> (WAYFINDER_QUERY_TOKEN)");
    /// assert!(!shown.to_string().contains("s3cret"));
    /// ```
    pub fn in_force(&self) -> Value {
        let (ingest_token_file, ingest_token) = token(&self.ingest_token, "WAYFINDER_INGEST_TOKEN");
        let (query_token_file, query_token) = token(&self.query_token, "WAYFINDER_QUERY_TOKEN");
        let (wal_sync, wal_sync_interval) = match self.wal_sync {
            WalSync::Always => ("always", Value::Null),
            WalSync::Interval(interval) => ("interval", duration(interval)),
        };
        let path = |p: Option<&std::path::PathBuf>| p.map(|p| p.display().to_string());
        let tls = self.tls.as_ref();
        let settings: [(&str, Value); 55] = [
            ("otlp_grpc", json!(self.otlp_grpc.to_string())),
            ("otlp_http", json!(self.otlp_http.to_string())),
            ("query_http", json!(self.query_http.to_string())),
            ("query_grpc", json!(self.query_grpc.to_string())),
            ("grpc_max_message_bytes", json!(self.grpc_max_message_bytes)),
            ("http_max_body_bytes", json!(self.http_max_body_bytes)),
            ("max_ingest_bytes", json!(self.max_ingest_bytes)),
            ("disk_reserve", json!(self.disk_reserve)),
            ("retention", json!(duration(self.retention))),
            ("max_store_bytes", json!(self.max_store_bytes)),
            ("query_timeout", json!(duration(self.query_timeout))),
            ("query_memory_bytes", json!(self.query_memory_bytes)),
            ("query_max_rows", json!(self.query_max_rows)),
            ("query_max_concurrent", json!(self.query_max_concurrent)),
            ("topology", json!(self.topology)),
            ("edge_wait", json!(duration(self.edge_wait))),
            ("edge_max_pending", json!(self.edge_max_pending)),
            ("topology_max_bytes", json!(self.topology_max_bytes)),
            (
                "span_metrics_max_series",
                json!(self.span_metrics_max_series),
            ),
            (
                "service_graph_buckets",
                json!(durations(&self.service_graph_buckets)),
            ),
            (
                "service_graph_dimensions",
                json!(self.service_graph_dimensions),
            ),
            (
                "span_metrics_dimensions",
                json!(self.span_metrics_dimensions),
            ),
            ("span_multiplier_key", json!(self.span_multiplier_key)),
            (
                "database_name_attributes",
                json!(self.database_name_attributes),
            ),
            ("deregister_after", json!(duration(self.deregister_after))),
            ("max_heartbeat_ttl", json!(duration(self.max_heartbeat_ttl))),
            (
                "weight_update_period",
                json!(duration(self.weight_update_period)),
            ),
            ("weight_window", json!(duration(self.weight_window))),
            ("weight_ttl", json!(duration(self.weight_ttl))),
            ("weight_gamma", json!(self.weight_gamma)),
            ("weight_error_penalty", json!(self.weight_error_penalty)),
            ("weight_max_step", json!(self.weight_max_step)),
            ("weight_deadband", json!(self.weight_deadband)),
            ("weight_min_factor", json!(self.weight_min_factor)),
            ("weight_max_factor", json!(self.weight_max_factor)),
            ("weight_min_requests", json!(self.weight_min_requests)),
            ("weight_slow_start", json!(duration(self.weight_slow_start))),
            ("weight_max_ejection", json!(self.weight_max_ejection)),
            ("max_connections", json!(self.max_connections)),
            ("max_watchers", json!(self.max_watchers)),
            (
                "data_dir",
                json!(self.data_dir.as_ref().map(|d| d.display().to_string())),
            ),
            ("wal_sync", json!(wal_sync)),
            ("wal_sync_interval", json!(wal_sync_interval)),
            ("history", json!(self.history)),
            ("seal_interval", json!(duration(self.seal_interval))),
            ("ingest_token_file", json!(ingest_token_file)),
            ("ingest_token", json!(ingest_token)),
            ("query_token_file", json!(query_token_file)),
            ("query_token", json!(query_token)),
            ("tls_cert", json!(path(tls.map(|t| &t.cert)))),
            ("tls_key", json!(path(tls.map(|t| &t.key)))),
            (
                "tls_client_ca",
                json!(path(tls.and_then(|t| t.client_ca.as_ref()))),
            ),
            (
                "header_read_timeout",
                json!(duration(self.header_read_timeout)),
            ),
            ("body_read_timeout", json!(duration(self.body_read_timeout))),
            ("idle_timeout", json!(duration(self.idle_timeout))),
        ];
        Value::Object(
            settings
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        )
    }
}
