//! The body of `POST /v1/health` on the collector's OTLP/HTTP port: one instance's heartbeat.

use serde::{Deserialize, Serialize};

/// A heartbeat of one service instance.
///
/// ```
/// use wayfinder_api::health::HealthReport;
///
/// let report: HealthReport = serde_json::from_str(
///     r#"{"service":"cart","instance_id":"cart-1","address":"10.0.0.7:8080",
///         "status":"passing","ttl_ms":15000,"seq":42}"#,
/// ).unwrap();
/// assert_eq!(report.seq, Some(42));
/// assert_eq!(report.output, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// `service.name`.
    pub service: String,
    /// `service.instance.id`.
    pub instance_id: String,
    /// Where the instance serves, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `passing`, `warning`, `critical` or `down` (sent on graceful shutdown).
    pub status: String,
    /// How long this beat holds; without a newer one the instance turns `critical` [default:
    /// 15000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Increases with every beat of the instance; older beats are ignored. Not ahead of the
    /// collector's clock in Unix milliseconds (by more than five minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When the instance's process started, in Unix milliseconds: a newer incarnation is a
    /// restart, which speaks for the instance at once (see the collector's `registry.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
    /// Free text, e.g. the output of the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// The answer to `POST /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthAck {
    /// Whether the beat changed the registry (`false` for a beat older than the last one seen).
    pub accepted: bool,
    /// Why it was ignored, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
