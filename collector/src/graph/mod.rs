//! What the collector learns from the spans and heartbeats: the live instances ([`registry`]),
//! the service graph ([`topology`]), Tempo's span metrics ([`spanmetrics`]) and the weights of
//! each instance ([`weights`]); [`dimensions`] names the attributes they read beyond the fixed
//! facts. Each is a consumer of the pipeline's batches.

pub(crate) mod dimensions;
pub(crate) mod registry;
pub(crate) mod spanmetrics;
pub(crate) mod topology;
pub(crate) mod weights;
