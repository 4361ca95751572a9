//! Wayfinder's middleware for Rust services: tower layers that carry trace context, open
//! spans by the OpenTelemetry semantic conventions and export them to the collector.
//!
//! - [`init`] sets up the tracer provider (OTLP to the collector), the `tracing` subscriber and
//!   correlated log lines from the standard `OTEL_*` variables;
//! - [`ServerLayer`] traces every request an axum `Router` or a tonic server receives;
//! - [`ClientLayer`] (hyper-util clients, tonic channels) and [`ReqwestTracing`] (reqwest)
//!   trace outgoing calls and carry the context to the next service;
//! - [`current_trace_id`] and [`spawn`] keep logs and tasks in the request's trace.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use wayfinder_middleware::{ServerLayer, Telemetry};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let telemetry = Telemetry::from_env()?.service_name_or("users").init()?;
//!     let app = Router::new()
//!         .route("/users/{id}", get(|| async { "a user" }))
//!         .layer(ServerLayer::new());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     telemetry.shutdown().await?;
//!     Ok(())
//! }
//! ```
//!
//! `docs/middleware.md` describes every option and the attributes of each span.

pub mod balance;
pub mod grpc;
pub mod health;
pub mod http;
mod init;
pub mod limit;
pub mod logs;
pub mod propagation;
pub mod tls;
mod tracer;

#[cfg(feature = "reqwest")]
pub use http::ReqwestTracing;
pub use http::{ClientLayer, DEFAULT_UNTRACED_PATHS, RequestId, ServerLayer};
pub use init::{
    ExporterKind, InitError, LogFormat, OtlpProtocol, SamplerKind, ScopedTelemetry, Telemetry,
    TelemetryGuard, VARIABLES, init,
};
// Every layer and what builds it, from the root as from its module.
pub use balance::{BalanceConfig, BalanceLayer, Balancer};
pub use health::{GracefulShutdown, HealthReporter};
pub use limit::{RateLimitLayer, ShedLayer};
pub use logs::{TraceIdFormat, current_span_id, current_trace_id, spawn};
pub use propagation::{Propagation, PropagationFormat};
/// The error of the middleware's services: any error, boxed, as tower's layers return it.
pub use tower::BoxError;
