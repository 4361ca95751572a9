//! The Wayfinder collector as a library: OTLP ingest, the Arrow span store and SQL over it, the
//! service topology and the instance registry.
//!
//! The `wayfinder` binary only parses its configuration and calls [`Collector::start`]; the
//! end-to-end tests and benchmarks start collectors the same way, on port 0.
//!
//! Data flows through the modules in this order:
//! [`receivers`] (OTLP/gRPC, OTLP/HTTP) → [`decode`] (OTLP → Arrow, once) →
//! [`pipeline`] (the bounded ingest queue) → [`store`] (Arrow batches, retention),
//! [`registry`] (live instances, heartbeats) and [`topology`] (the service graph) →
//! [`sql`] (DataFusion over the store) and [`query`] (the API: SQL, the topology, Jaeger and
//! Prometheus endpoints, the weights over gRPC), with [`ui`] (the web UI over the query API) on
//! the same port.
//!
//! ```no_run
//! # async fn run() -> Result<(), wayfinder_collector::StartError> {
//! use wayfinder_collector::{Collector, Config};
//!
//! let mut config = Config::default();
//! config.listeners.otlp_grpc = "127.0.0.1:0".parse().unwrap();
//! let running = Collector::start(config).await?;
//! println!("OTLP/gRPC on {}", running.addrs().otlp_grpc);
//! running.shutdown().await;
//! # Ok(())
//! # }
//! ```

// Without `test-util` (the `wayfinder` binary, an embedder), the parts that only the tests and
// benchmarks drive alone (through `testing`) are unreachable, though public for `testing` to
// hand them out; the workspace's lints (clippy with `-D warnings`) run with `test-util` on.
#![cfg_attr(
    not(any(test, feature = "test-util")),
    allow(dead_code, unused_imports, unreachable_pub)
)]

pub(crate) mod app;
pub(crate) mod graph;
pub(crate) mod ingest;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod pipeline;
pub(crate) mod serve;
pub(crate) mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub(crate) mod util;

pub use app::config::{self, Config};
pub use app::{
    BoundAddrs, Collector, IN_PLACE, Reloaded, RunningCollector, SWITCHED_IN_PLACE, StartError,
    TaskExit,
};
// The decoders, a crate of their own (`wayfinder-decode`) so that fuzzing them does not build
// DataFusion.
pub(crate) use wayfinder_decode as decode;
