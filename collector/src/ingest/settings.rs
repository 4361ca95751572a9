//! Ingest's settings (`[ingest]`): the largest request each receiver takes, and the memory
//! budget of the queue behind them.

use serde::{Deserialize, Serialize};

use crate::util::settings::{self, Settings, size};
use crate::util::units::parse_size;

/// Ingest's settings.
///
/// ```
/// use clap::Parser;
/// use wayfinder_collector::config::{Config, ServeArgs};
///
/// let args = ServeArgs::try_parse_from(["serve", "--max-ingest-bytes", "64MiB"]).unwrap();
/// let config = Config::resolve(&args).unwrap();
/// assert_eq!(config.ingest.max_ingest_bytes, 64 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct IngestSettings {
    /// Largest OTLP/gRPC message, after decompression.
    #[arg(long, env = "WAYFINDER_GRPC_MAX_MESSAGE_BYTES", default_value = "4MiB", value_parser = parse_size)]
    #[serde(with = "size")]
    pub grpc_max_message_bytes: usize,
    /// Largest OTLP/HTTP body, after decompression.
    #[arg(long, env = "WAYFINDER_HTTP_MAX_BODY_BYTES", default_value = "20MiB", value_parser = parse_size)]
    #[serde(with = "size")]
    pub http_max_body_bytes: usize,
    /// Memory budget of the ingest queue.
    #[arg(long, env = "WAYFINDER_MAX_INGEST_BYTES", default_value = "256MiB", value_parser = parse_size)]
    #[serde(with = "size")]
    pub max_ingest_bytes: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl Settings for IngestSettings {
    const SECTION: &'static str = "ingest";
    const IN_PLACE: &'static [&'static str] = &["max_ingest_bytes"];
}
