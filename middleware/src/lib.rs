//! Wayfinder's middleware for Rust services: tower layers that carry W3C trace context, open
//! spans by the OpenTelemetry semantic conventions and export them to the collector.
//!
//! Not built yet: this crate holds its place in the workspace (it depends on `wayfinder-api`,
//! never on the collector) until the middleware issue fills it.
