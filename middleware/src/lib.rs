//! Wayfinder's middleware for Rust services: tower layers that carry trace context, open
//! spans by the OpenTelemetry semantic conventions and export them to the collector.

pub mod grpc;
pub mod http;
mod init;
pub mod logs;
pub mod propagation;
mod tracer;

pub use http::{ClientLayer, DEFAULT_UNTRACED_PATHS, RequestId, ReqwestTracing, ServerLayer};
pub use init::{
    InitError, LogFormat, Protocol, SamplerKind, ScopedTelemetry, Telemetry, TelemetryGuard,
    VARIABLES, init,
};
pub use logs::{TraceIdFormat, current_span_id, current_trace_id, spawn};
pub use propagation::{Format, Propagation};
