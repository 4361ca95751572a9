//! Wayfinder's middleware for Rust services: tower layers that carry trace context, open
//! spans by the OpenTelemetry semantic conventions and export them to the collector.

pub mod grpc;
pub mod http;
pub mod propagation;

pub use http::{ClientLayer, DEFAULT_UNTRACED_PATHS, RequestId, ReqwestTracing, ServerLayer};
pub use propagation::{Format, Propagation};
