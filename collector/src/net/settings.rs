//! The listeners' settings (`[listeners]`): where each listens, how many connections each
//! holds, and how long a connection may take or stay idle.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::settings::{self, SettingError, Settings, above_zero, duration};
use crate::util::units::parse_duration;

/// The listeners' settings.
///
/// ```
/// use wayfinder_collector::Config;
///
/// let mut config = Config::default();
/// assert_eq!(config.listeners.otlp_grpc.port(), 4317);
/// config.listeners.max_connections = 0;
/// let error = config.validate().unwrap_err();
/// assert!(error.to_string().contains("max_connections"), "{error}");
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenerSettings {
    /// Address of the OTLP/gRPC receiver.
    #[arg(long, env = "WAYFINDER_OTLP_GRPC", default_value = "127.0.0.1:4317")]
    pub otlp_grpc: SocketAddr,
    /// Address of the OTLP/HTTP receiver (`/v1/traces`, `/v1/logs`, `/v1/health`).
    #[arg(long, env = "WAYFINDER_OTLP_HTTP", default_value = "127.0.0.1:4318")]
    pub otlp_http: SocketAddr,
    /// Address of the query HTTP API.
    #[arg(long, env = "WAYFINDER_QUERY_HTTP", default_value = "127.0.0.1:16686")]
    pub query_http: SocketAddr,
    /// Address of the query gRPC API.
    #[arg(long, env = "WAYFINDER_QUERY_GRPC", default_value = "127.0.0.1:16685")]
    pub query_grpc: SocketAddr,
    /// Most connections each listener holds at once; one more is closed at once.
    #[arg(long, env = "WAYFINDER_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: usize,
    /// How long a new connection has to send its first bytes (or finish its TLS handshake),
    /// and an HTTP/1 request to send its headers, before it is closed.
    #[arg(long, env = "WAYFINDER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// How long an HTTP request's body may take to arrive in full after its headers, before
    /// the request is refused and its connection closed.
    #[arg(long, env = "WAYFINDER_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// How long a connection may have no request open before it is closed (HTTP/2 with a
    /// GOAWAY); a listener at --max-connections closes connections idle for a second.
    #[arg(long, env = "WAYFINDER_IDLE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl Settings for ListenerSettings {
    const SECTION: &'static str = "listeners";
    const IN_PLACE: &'static [&'static str] = &[
        "max_connections",
        "header_read_timeout",
        "body_read_timeout",
        "idle_timeout",
    ];

    fn validate(&self) -> Result<(), SettingError> {
        above_zero("header_read_timeout", self.header_read_timeout)?;
        above_zero("body_read_timeout", self.body_read_timeout)?;
        above_zero("idle_timeout", self.idle_timeout)?;
        if self.max_connections == 0 {
            return Err(SettingError::invalid(
                "max_connections",
                "must be at least 1, not 0",
            ));
        }
        Ok(())
    }
}

impl ListenerSettings {
    /// The deadlines of every listener's connections.
    pub(crate) fn deadlines(&self) -> crate::net::access::Deadlines {
        crate::net::access::Deadlines::new(
            self.header_read_timeout,
            self.body_read_timeout,
            self.idle_timeout,
        )
    }
}
