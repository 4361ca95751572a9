//! The listeners' figures, per listener (`otlp-grpc`, `otlp-http`, `query-http`,
//! `query-grpc`): connections refused beyond the cap, closed for doing nothing, too slow to
//! start or to finish their TLS handshake, and requests refused for their token.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::Metrics;

/// Labels with a listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    /// The listener.
    pub(crate) listener: &'static str,
}

/// Labels of a connection closed for doing nothing: its listener and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IdleClosedLabels {
    /// The listener.
    pub(crate) listener: &'static str,
    /// `never_started`, `idle`, `evicted` or `stalled`.
    pub(crate) reason: &'static str,
}

/// What the listeners count, registered once by [`ListenerMetrics::register`] and shared by
/// the four.
#[derive(Debug)]
pub(crate) struct ListenerMetrics {
    /// Connections closed beyond `--max-connections`.
    pub(crate) refused_connections: Family<ListenerLabels, Counter>,
    /// Connections closed for doing nothing, per reason.
    pub(crate) closed_idle_connections: Family<IdleClosedLabels, Counter>,
    /// Requests refused for a missing or invalid bearer token.
    pub(crate) unauthorized: Family<ListenerLabels, Counter>,
    /// Connections closed because they sent no first byte, or did not finish their TLS
    /// handshake, within `--header-read-timeout`.
    pub(crate) slow_connections: Family<ListenerLabels, Counter>,
    /// TLS handshakes that failed (a missing or untrusted client certificate, a plaintext
    /// client on a TLS listener).
    pub(crate) tls_handshake_failures: Family<ListenerLabels, Counter>,
}

impl ListenerMetrics {
    /// Creates the listeners' families and registers them in `metrics`.
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let m = Self {
            refused_connections: Family::default(),
            closed_idle_connections: Family::default(),
            unauthorized: Family::default(),
            slow_connections: Family::default(),
            tls_handshake_failures: Family::default(),
        };
        metrics.register(
            "wayfinder_refused_connections",
            "Connections closed at once because the listener held --max-connections, per listener",
            m.refused_connections.clone(),
        );
        metrics.register(
            "wayfinder_closed_idle_connections",
            "Connections closed for doing nothing, per listener and reason: never_started (no request within --header-read-timeout), idle (nothing open for --idle-timeout), evicted (idle while the listener was full), stalled (an answer not taken for --idle-timeout)",
            m.closed_idle_connections.clone(),
        );
        metrics.register(
            "wayfinder_unauthorized_requests",
            "Requests refused for a missing or invalid bearer token, per listener",
            m.unauthorized.clone(),
        );
        metrics.register(
            "wayfinder_slow_connections",
            "Connections closed because they sent nothing, or did not finish their TLS handshake, within --header-read-timeout, per listener",
            m.slow_connections.clone(),
        );
        metrics.register(
            "wayfinder_tls_handshake_failures",
            "TLS handshakes that failed (a missing or untrusted client certificate, a plaintext client on a TLS listener), per listener",
            m.tls_handshake_failures.clone(),
        );
        m
    }
}
