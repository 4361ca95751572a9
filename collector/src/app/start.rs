//! The last phases: the log is replayed through the pipeline, then every part starts, in
//! tiers that are supervised ([`crate::util::tasks`]): the pipeline first (the replay goes
//! through it), then the periodic work, the query API, and the receivers last.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::build::Parts;
use super::listeners::{self, Bounds};
use crate::app::config::Config;
use crate::graph::registry::Registry;
use crate::graph::topology::Topology;
use crate::graph::weights::WeightsEngine;
use crate::ingest::Ingest;
use crate::ingest::replay::{SealedRecords, replay};
use crate::net::access::{TlsFiles, Tokens};
use crate::pipeline::Dispatcher;
use crate::store::log::{DiskWatch, Recovery, Wal};
use crate::store::{MAINTENANCE_PERIOD, SpanStore};
use crate::util::tasks::{Supervision, Tier};

/// How long each tier is given to stop before its tasks are aborted. The binary bounds the
/// whole shutdown (10 s); an embedder's shutdown is bounded by the sum.
pub(super) const RECEIVERS_GRACE: Duration = Duration::from_secs(5);
/// The pipeline drains the queue into the store: the longest.
pub(super) const PIPELINE_GRACE: Duration = Duration::from_secs(10);
/// The query API and the periodic work.
pub(super) const QUERY_GRACE: Duration = Duration::from_secs(5);

/// The running tiers, in the order they stop.
#[derive(Debug)]
pub(super) struct Tiers {
    pub(super) receivers: Tier,
    pub(super) pipeline: Tier,
    pub(super) query: Tier,
    pub(super) periodic: Tier,
}

impl Tiers {
    pub(super) fn new(supervision: &Supervision) -> Self {
        Self {
            receivers: Tier::new("receivers", RECEIVERS_GRACE, supervision),
            pipeline: Tier::new("pipeline", PIPELINE_GRACE, supervision),
            query: Tier::new("query", QUERY_GRACE, supervision),
            periodic: Tier::new("periodic", QUERY_GRACE, supervision),
        }
    }
}

/// Starts the pipeline and replays the log through it, before any receiver takes a request.
/// Returns the log, open for appending.
pub(super) async fn start_pipeline_and_replay(
    config: &Config,
    dispatcher: Dispatcher,
    parts: &Parts,
    log: Option<(Wal, Recovery)>,
    tier: &mut Tier,
) -> Option<Wal> {
    tier.spawn("pipeline", dispatcher.run(parts.store.clone()));
    let (wal, recovery) = log?;
    replay_log(config, &parts.ingest, &wal, recovery, &parts.sealed).await;
    Some(wal)
}

/// Puts what the log holds through the ingest path again: the spans not yet sealed into the
/// store, and the facts of the weights' window into the graph.
async fn replay_log(
    config: &Config,
    ingest: &Ingest,
    wal: &Wal,
    recovery: Recovery,
    sealed: &SealedRecords,
) {
    let facts_since = SystemTime::now() - config.weights.weight_window;
    let keep_since = SystemTime::now() - config.store.retention;
    replay(ingest, wal, recovery, sealed, keep_since, facts_since).await;
}

/// The parts' upkeep: each part's own, every second, and the weights every update period.
pub(super) struct Upkeep {
    pub(super) store: Arc<dyn SpanStore>,
    pub(super) registry: Arc<Registry>,
    pub(super) topology: Option<Arc<Topology>>,
    pub(super) weights: Arc<WeightsEngine>,
    pub(super) wal: Option<Wal>,
    pub(super) disk: Option<DiskWatch>,
    pub(super) ingest_tokens: Option<Tokens>,
    pub(super) query_tokens: Option<Tokens>,
    pub(super) tls: Option<TlsFiles>,
}

/// Starts the periodic work, each part's on a task of its own.
pub(super) fn start_periodic(config: &Config, upkeep: Upkeep, tier: &mut Tier) {
    let Upkeep {
        store,
        registry,
        topology,
        weights,
        wal,
        disk,
        ingest_tokens,
        query_tokens,
        tls,
    } = upkeep;
    if ingest_tokens.is_some() || query_tokens.is_some() || tls.is_some() {
        tier.every("access", MAINTENANCE_PERIOD, move || {
            if let Some(tokens) = &ingest_tokens {
                tokens.upkeep("ingest");
            }
            if let Some(tokens) = &query_tokens {
                tokens.upkeep("query");
            }
            if let Some(tls) = &tls {
                tls.upkeep();
            }
        });
    }
    tier.every("store", MAINTENANCE_PERIOD, move || {
        store.maintain(SystemTime::now());
    });
    if let Some(wal) = wal {
        // With sealing, the log keeps what the topology and the registry are rebuilt from (the
        // spans' own retention is the files').
        let keep = config
            .weights
            .weight_window
            .max(config.registry.deregister_after);
        tier.every("log", MAINTENANCE_PERIOD, move || {
            wal.upkeep(disk.as_ref(), keep, SystemTime::now());
        });
    }
    let ticked = registry.clone();
    tier.every("registry", MAINTENANCE_PERIOD, move || ticked.tick());
    if let Some(topology) = topology {
        tier.every("topology", MAINTENANCE_PERIOD, move || topology.tick());
    }
    // One computation for every watcher (in fleet mode, each service's owner's: `ingest/kafka/services`).
    if !config.kafka.fleet() {
        tier.every("weights", config.weights.weight_update_period, move || {
            weights.update(&registry.instances(None));
        });
    }
}

/// Starts the OTLP receivers: from now on requests are taken.
pub(super) fn start_receivers(
    bound: (tokio::net::TcpListener, tokio::net::TcpListener),
    config: &Config,
    ingest: Arc<Ingest>,
    tokens: &Option<Tokens>,
    bounds: &Bounds,
    tier: &mut Tier,
) {
    let stop = tier.stop_token();
    tier.spawn(
        "otlp-grpc",
        listeners::otlp_grpc(
            bound.0,
            ingest.clone(),
            config.ingest.grpc_max_message_bytes,
            tokens,
            bounds,
            stop.clone(),
        ),
    );
    tier.spawn(
        "otlp-http",
        listeners::otlp_http(
            bound.1,
            ingest,
            config.ingest.http_max_body_bytes,
            tokens,
            bounds,
            stop,
        ),
    );
}
