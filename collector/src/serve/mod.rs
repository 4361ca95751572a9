//! What the collector answers: SQL over the store ([`sql`]), the query API over HTTP and gRPC
//! ([`query`]: SQL, traces, the topology, the instances, the weights, Jaeger's and
//! Prometheus' endpoints) and the web UI ([`ui`]) on the same port.

pub(crate) mod query;
mod settings;
pub(crate) mod sql;
pub(crate) mod ui;

pub use settings::QuerySettings;
