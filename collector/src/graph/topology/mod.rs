//! The live service graph, learned from spans as they arrive: who calls whom, how often, how
//! slowly and how often it fails, per service and per instance.
//!
//! [`TopologyBuilder`] holds the pairing rules and what waits for them, and takes explicit times
//! so that tests drive it with a fixed clock; the figures it records are kept in a [`Graph`],
//! which snapshots and `/metrics` read; [`Topology`] is the shared handle the collector wires in: the
//! ingest pipeline feeds it, the query API and `/metrics` read [`Snapshot`]s of it.
//!
//! (Its example runs as the unit test `examples::example`.)

mod builder;
mod graph;
mod keys;
mod metrics;
mod naming;
mod pending;
mod settings;
mod side;
mod snapshot;
pub(crate) mod stats;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub(crate) use builder::Counters;
pub use builder::{TopologyBuilder, TopologyConfig};
pub(crate) use graph::Graph;
pub(crate) use keys::{ConnectionType, EdgeKey, InstanceEdgeKey, NodeKey, NodeKind};
pub(crate) use metrics::TopologyMetrics;
pub(crate) use naming::{DEFAULT_PEER_ATTRIBUTES, DatabaseName, PeerName};
pub use settings::TopologySettings;
pub(crate) use snapshot::Snapshot;

use crate::decode::SpanFacts;
use crate::util::clock::Clock;
use crate::util::reuse::Reuse;

/// How long a snapshot handed to readers is handed to the next ones of the same window.
pub(crate) const SNAPSHOT_REUSE: Duration = Duration::from_secs(1);

/// The shared, thread-safe topology: a [`TopologyBuilder`] behind a lock, with the clock.
///
/// The lock is held for one batch of spans or one snapshot, never across an `.await`.
#[derive(Debug)]
pub struct Topology {
    builder: Mutex<TopologyBuilder>,
    clock: Clock,
    /// The snapshots readers were given lately, by window.
    shared: Reuse<Duration, Arc<Snapshot>>,
}

impl Topology {
    /// An empty topology that reads time from `clock`.
    pub fn new(config: TopologyConfig, clock: Clock) -> Self {
        Self {
            builder: Mutex::new(TopologyBuilder::new(config)),
            clock,
            shared: Reuse::new(SNAPSHOT_REUSE),
        }
    }

    /// Hands [`Topology::shared_snapshot`]'s snapshots out again for `reuse` (default
    /// [`SNAPSHOT_REUSE`]; zero makes a new one for every reader).
    pub fn with_snapshot_reuse(mut self, reuse: Duration) -> Self {
        self.shared = Reuse::new(reuse);
        self
    }

    /// The graph over the last `window` for a reader of the API: the snapshot another reader
    /// of the same window got less than the reuse period ago, or a new one. One reader makes a
    /// snapshot at a time and the others wait for it, so that readers in a loop cost ingest at
    /// most one merge per window per period, on one thread.
    pub fn shared_snapshot(&self, window: Duration) -> Arc<Snapshot> {
        self.shared
            .get_or_make(&window, || Arc::new(self.snapshot(window)))
    }

    /// Takes in the facts of a batch of spans that arrived now (it may take parts of them).
    pub fn ingest(&self, spans: &mut [SpanFacts]) {
        let now = self.clock.now();
        self.builder.lock().ingest(spans, now);
    }

    /// Expires halves that waited too long and figures past the retention; run every second.
    pub fn tick(&self) {
        let now = self.clock.now();
        self.builder.lock().expire(now);
    }

    /// The graph over the last `window`.
    pub fn snapshot(&self, window: Duration) -> Snapshot {
        let now = self.clock.now();
        self.builder.lock().snapshot(window, now)
    }

    /// The graph over the whole minutes from `from` to `to`, for a window that ends before now
    /// (not shared: such readers are rare).
    pub fn snapshot_between(
        &self,
        from: std::time::SystemTime,
        to: std::time::SystemTime,
    ) -> Snapshot {
        let now = self.clock.now();
        self.builder.lock().snapshot_between(from, to, now)
    }

    /// The longest window that can be asked for.
    pub fn retention(&self) -> Duration {
        self.builder.lock().config().retention
    }

    /// What could not be paired or kept, and how many halves wait.
    pub fn counters(&self) -> (Counters, usize) {
        let builder = self.builder.lock();
        (builder.counters(), builder.pending())
    }

    /// Runs `f` on the figures under the lock: what this collector sends of them in fleet
    /// mode, and the fleet's figures set from the views topic.
    pub(crate) fn with_graph<R>(&self, f: impl FnOnce(&mut Graph) -> R) -> R {
        f(self.builder.lock().graph_mut())
    }

    /// Runs `f` on the builder under the lock (for the metrics collector).
    fn with_builder<R>(&self, f: impl FnOnce(&TopologyBuilder) -> R) -> R {
        f(&self.builder.lock())
    }
}

impl crate::pipeline::FactsConsumer for Topology {
    fn name(&self) -> &'static str {
        "topology"
    }

    fn consume(&self, facts: &[SpanFacts]) {
        self.ingest(&mut facts.to_vec());
    }

    fn consume_owned(&self, mut facts: Vec<SpanFacts>) {
        self.ingest(&mut facts);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example() {
        use crate::decode::decode_traces;
        use crate::graph::topology::{TopologyBuilder, TopologyConfig};
        use crate::testing::{span, trace_request};
        use std::time::{Duration, SystemTime};

        // A root SERVER span of `checkout`: a request from outside, drawn as an edge from `user`.
        let mut root = span([7; 16], 1, "GET /cart", 0, 5_000_000);
        root.kind = 2; // SERVER
        let mut decoded = decode_traces(&trace_request(Some("checkout"), vec![root])).unwrap();

        let mut builder = TopologyBuilder::new(TopologyConfig::default());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        builder.ingest(&mut decoded.facts, now);
        let graph = builder.snapshot(Duration::from_secs(300), now);
        assert_eq!(graph.edges.len(), 1);
        assert_eq!(&*graph.edges[0].key.client.name, "user");
        assert_eq!(&*graph.edges[0].key.server.name, "checkout");
        assert_eq!(graph.edges[0].summary.requests, 1);
    }
}
