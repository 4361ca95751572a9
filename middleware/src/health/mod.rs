//! Health reporting: the instance registers itself with the collector and beats, staggered,
//! with the status of its own checks, and leaves with `down`.
//!
//! - [`HealthReporter`] builds the reporter: the instance (`service.name`,
//!   `service.instance.id`, the address it serves on), the transport (OTLP/gRPC logs to the
//!   tracer's endpoint, or `POST /v1/health`), the interval (5 s), the TTL (15 s, three
//!   intervals) and the checks.
//! - The reporter is one task with its own timer: it never sits on the request path. The first
//!   beat comes after a random delay in `[0, interval)`, the next ones every `interval ± 20%`
//!   (Consul's stagger), so that a fleet started together never beats together. When a send
//!   fails it backs off (`[cap/2, cap]`, `cap = min(interval × 2ⁿ, ttl)`) and resumes with the
//!   current state.
//! - Checks come in two tiers ([`HealthReporter::liveness`] on every beat,
//!   [`HealthReporter::check`] at its own lower rate with a timeout and a cached result). A
//!   failing check gives `warning`, and `critical` only after `failures_before_critical` (3)
//!   failures in a row.
//! - `seq` starts at the wall clock in milliseconds and grows by one a beat, so that it also
//!   grows across restarts (the collector ignores beats older than the last one it saw).
//! - [`Health::shutdown`] stops the beats and sends `down`; [`Health::routes`] is an axum
//!   router with `/readyz` and `/livez`, and [`Health::tonic_service`] the standard gRPC health
//!   service, that reflect the same state.
//! - [`GracefulShutdown`] is the sequence on SIGTERM: `down` first, a drain period, then the
//!   servers stop accepting and finish what is in flight, up to a deadline.
//!
//! ```no_run
//! use std::time::Duration;
//! use wayfinder_middleware::health::HealthReporter;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let health = HealthReporter::new("orders", "orders-1")
//!     .address("10.0.0.7:8080")
//!     .http("http://127.0.0.1:4318")
//!     .check("database", Duration::from_secs(30), Duration::from_secs(2), || async {
//!         Ok(()) // e.g. `SELECT 1`
//!     })
//!     .start()?;
//! let app: axum::Router = axum::Router::new().merge(health.routes());
//! // … serve `app`; on the way out:
//! health.shutdown().await;
//! # Ok(()) }
//! ```

mod beat;
mod builder;
mod checks;
#[cfg(feature = "tonic")]
mod grpc;
mod reporter;
mod schedule;
mod shutdown;
mod transport;

use std::time::Duration;

pub use builder::HealthReporter;
pub use checks::{CheckResult, Status};
pub use reporter::Health;
pub use shutdown::{DeadlinePassed, GracefulShutdown};

/// Why the reporter could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// No transport, or a bad endpoint.
    #[error("health reporter: {0}")]
    Config(String),
}

/// How long one send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests;
