//! Wayfinder's middleware for Rust services: tower layers that carry trace context, open
//! spans by the OpenTelemetry semantic conventions and export them to the collector.

pub mod propagation;
