//! Load generation and benchmarks for the Wayfinder collector.
//!
//! [`workload`] makes OTLP trace requests of a realistic shape (a call graph across services and
//! instances, client and server span pairs, about ten attributes a span, resource attributes);
//! the `wayfinder-bench` binary sends them, and the criterion benchmarks decode them. [`fleet`]
//! makes the registered instances and span facts the weights benchmarks feed the engine;
//! [`balancing`] runs the balancers side by side on a real fleet (`wayfinder-bench fleet`).

pub mod balancing;
pub mod fleet;
pub mod workload;
