//! What the collector answers: SQL over the store ([`sql`]), the query API over HTTP and gRPC
//! ([`query`]: SQL, traces, the topology, the instances, the weights, Jaeger's and
//! Prometheus' endpoints) and the web UI ([`ui`]) on the same port.

pub(crate) mod query;
pub(crate) mod sql;
pub(crate) mod ui;
