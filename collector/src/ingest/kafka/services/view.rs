//! The fleet's view: the views topic (compacted, one partition per partition of the partials
//! topic), where each service's owner publishes the service's weights and instances, read in
//! full by every collector, which serves what it read. Every collector that has read the same
//! records serves the same answers, with the same versions.
//!
//! Records are JSON, keyed `weights/SERVICE`, `instances/SERVICE` or `claim/P/OWNER`. Each
//! carries its owner's epoch: the offset, in its partition, of the claim the owner wrote when it
//! took the partition. A claim's offset is higher than every record before it, so an owner that
//! lost a partition without knowing yet (a zombie) writes with an epoch lower than the new
//! owner's claim: every reader drops a record whose epoch is below the highest epoch it has
//! read in that partition, and the zombie stops when it reads the newer claim.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rdkafka::Message as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use wayfinder_api::topology::Instance;
use wayfinder_api::weights::ServiceWeights;

use super::topology::{TopologyMinute, from_wire, set};
use crate::graph::topology::Topology;
use crate::graph::weights::{ServiceMemory, WeightsEngine, WeightsSnapshot};
use crate::ingest::kafka::{KafkaError, KafkaSettings, read_whole};
use crate::metrics::{LogEvery, Metrics};
use prometheus_client::metrics::counter::Counter;

/// The views' format; a record of another is skipped (and counted).
pub(super) const FORMAT: u32 = 1;

/// One record of the views topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ViewRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// The owner's epoch: the offset of its claim in this partition.
    pub epoch: i64,
    /// The owner (a collector's id).
    pub owner: String,
    /// What it says.
    #[serde(flatten)]
    pub body: Body,
}

/// What a record of the views topic says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Body {
    /// The owner took the partition (its epoch is this record's offset).
    Claim,
    /// A service's weights, and what the rule keeps of it for the next owner.
    Weights {
        weights: Arc<ServiceWeights>,
        memory: ServiceMemory,
    },
    /// A service's instances, as `GET /api/v1/instances` lists them.
    Instances { instances: Vec<Instance> },
    /// The service graph's series of one server for one minute, summed over the fleet (a
    /// [`super::topology::TopologyMinute`], protobuf, in hexadecimal).
    Topology { minute: u64, figures: String },
    /// The service has no instances any more.
    Removed,
}

/// The key of a service's weights.
pub(crate) fn weights_key(service: &str) -> String {
    format!("weights/{service}")
}

/// The key of a service's instances.
pub(crate) fn instances_key(service: &str) -> String {
    format!("instances/{service}")
}

/// The key of a server's graph of `minute`: the keys go round `ring` minutes, so that
/// compaction keeps the last `ring` minutes of each server and no more.
pub(crate) fn topology_key(service: &str, minute: u64, ring: u64) -> String {
    format!("topology/{}/{service}", minute % ring.max(1))
}

/// The key of a claim: one per owner, so that compaction keeps every owner's last claim.
pub(crate) fn claim_key(partition: i32, owner: &str) -> String {
    format!("claim/{partition}/{owner}")
}

#[derive(Debug, Default)]
struct PartitionView {
    /// The highest epoch read: records below it are a zombie's.
    epoch: i64,
    /// The next offset to read.
    next: i64,
}

#[derive(Debug, Default)]
struct ViewState {
    partitions: BTreeMap<i32, PartitionView>,
    weights: BTreeMap<String, (Arc<ServiceWeights>, ServiceMemory)>,
    instances: BTreeMap<String, Vec<Instance>>,
}

/// What this collector has read of the views topic.
#[derive(Debug)]
pub(crate) struct Views {
    state: RwLock<ViewState>,
    /// Where the weights read are published: the engine the query API serves.
    served: Arc<WeightsEngine>,
    /// Where the graph's figures read are set: the graph the query API serves.
    topology: Option<Arc<Topology>>,
    /// Records dropped: a zombie's, an older version, or unreadable.
    dropped: Counter,
}

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Taken.
    Taken,
    /// Dropped: an older epoch than one already read, or a version not newer.
    Fenced,
    /// Not a record of this format.
    Unreadable,
}

impl Views {
    /// Views that publish the weights they read to `served`; what they drop is counted in
    /// `wayfinder_fleet_view_records_dropped_total`, registered in `metrics`.
    pub(crate) fn new(
        served: Arc<WeightsEngine>,
        topology: Option<Arc<Topology>>,
        metrics: &Metrics,
    ) -> Self {
        let dropped = Counter::default();
        metrics.register(
            "wayfinder_fleet_view_records_dropped",
            "Records of the views topic not taken: an owner's that another has since replaced (a zombie), a version older than one read, or unreadable",
            dropped.clone(),
        );
        Views {
            state: RwLock::default(),
            served,
            topology,
            dropped,
        }
    }

    /// Applies the record at `offset` of `partition`.
    pub(crate) fn apply(&self, partition: i32, offset: i64, key: &[u8], payload: &[u8]) -> Applied {
        let mut state = self.state.write();
        let view = state.partitions.entry(partition).or_default();
        view.next = view.next.max(offset + 1);
        let applied = match serde_json::from_slice::<ViewRecord>(payload) {
            Ok(record) if record.format == FORMAT => {
                let key = String::from_utf8_lossy(key);
                match apply(&mut state, partition, offset, &key, record) {
                    Ok(applied) => applied,
                    // The graph's figures are set outside the views' own lock.
                    Err(figures) => {
                        drop(state);
                        let applied = self.set_topology(&figures);
                        if applied != Applied::Taken {
                            self.dropped.inc();
                        }
                        return applied;
                    }
                }
            }
            _ => Applied::Unreadable,
        };
        if applied != Applied::Taken {
            self.dropped.inc();
        }
        applied
    }

    /// Sets a server's minute of the graph (hexadecimal protobuf) into the served graph.
    fn set_topology(&self, figures: &str) -> Applied {
        let Some(topology) = &self.topology else {
            return Applied::Taken;
        };
        let decoded = const_hex::decode(figures)
            .ok()
            .and_then(|bytes| <TopologyMinute as prost::Message>::decode(bytes.as_slice()).ok());
        let Some(minute) = decoded else {
            return Applied::Unreadable;
        };
        let series: Result<Vec<_>, String> = minute.series.iter().map(from_wire).collect();
        let Ok(series) = series else {
            return Applied::Unreadable;
        };
        topology.with_graph(|graph| {
            for (key, extras, minutes) in series {
                for (m, summary) in minutes {
                    set(graph, key.clone(), extras.clone(), m, summary);
                }
            }
        });
        Applied::Taken
    }

    /// Publishes the weights read to the served engine.
    pub(crate) fn publish(&self) {
        let services = self
            .state
            .read()
            .weights
            .iter()
            .map(|(service, (weights, _))| (service.clone(), weights.clone()))
            .collect();
        self.served.publish(WeightsSnapshot {
            generated_at: Some(std::time::SystemTime::now()),
            services,
        });
    }

    /// The highest epoch read in `partition`.
    pub(crate) fn epoch(&self, partition: i32) -> i64 {
        self.state
            .read()
            .partitions
            .get(&partition)
            .map_or(-1, |p| p.epoch)
    }

    /// Whether `offset` of `partition` has been read.
    pub(crate) fn read_past(&self, partition: i32, offset: i64) -> bool {
        self.state
            .read()
            .partitions
            .get(&partition)
            .is_some_and(|p| p.next > offset)
    }

    /// What the rule kept of `service`, as its last owner published it.
    pub(crate) fn memory(&self, service: &str) -> Option<ServiceMemory> {
        self.state
            .read()
            .weights
            .get(service)
            .map(|(_, m)| m.clone())
    }

    /// The services whose weights were read.
    pub(crate) fn services(&self) -> Vec<String> {
        self.state.read().weights.keys().cloned().collect()
    }

    /// A page of the instances read: those of `service` (or of all), after `after`
    /// (`(service, instance)`), at most `limit`; and whether there are more.
    pub(crate) fn instances_page(
        &self,
        service: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
    ) -> (Vec<Instance>, bool) {
        let state = self.state.read();
        let mut matching = state
            .instances
            .iter()
            .filter(|(s, _)| service.is_none_or(|wanted| wanted == s.as_str()))
            .flat_map(|(_, instances)| instances.iter())
            .filter(|i| {
                after.is_none_or(|(s, id)| {
                    (i.service.as_str(), i.instance_id.as_str()) > (s.as_str(), id.as_str())
                })
            });
        let page: Vec<Instance> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        (page, more)
    }
}

/// Applies a record to the views' state; a graph record that passes the fence is handed back
/// (`Err`, its figures) to be set into the served graph.
fn apply(
    state: &mut ViewState,
    partition: i32,
    offset: i64,
    key: &str,
    record: ViewRecord,
) -> Result<Applied, String> {
    let view = state.partitions.entry(partition).or_default();
    if let Body::Claim = record.body {
        // A claim's epoch is its own offset (the owner learns it when the write is
        // acknowledged, and cannot say it in the record).
        view.epoch = view.epoch.max(offset);
        return Ok(Applied::Taken);
    }
    if record.epoch < view.epoch {
        return Ok(Applied::Fenced);
    }
    view.epoch = record.epoch;
    let Some((kind, service)) = key.split_once('/') else {
        return Ok(Applied::Unreadable);
    };
    match (kind, record.body) {
        ("weights", Body::Weights { weights, memory }) => {
            if state
                .weights
                .get(service)
                .is_some_and(|(old, _)| old.version > weights.version)
            {
                return Ok(Applied::Fenced);
            }
            state.weights.insert(service.to_owned(), (weights, memory));
        }
        ("weights", Body::Removed) => {
            state.weights.remove(service);
        }
        ("instances", Body::Instances { instances }) => {
            state.instances.insert(service.to_owned(), instances);
        }
        ("instances", Body::Removed) => {
            state.instances.remove(service);
        }
        ("topology", Body::Topology { figures, .. }) => return Err(figures),
        _ => return Ok(Applied::Unreadable),
    }
    Ok(Applied::Taken)
}

/// How long to wait after the brokers' error before asking again.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Reads every partition of the views topic, from its start, into `views`, until `stop`; the
/// weights are published to the served engine once the records at hand are read.
pub(crate) async fn read_views(
    settings: KafkaSettings,
    partitions: u32,
    views: Arc<Views>,
    stop: CancellationToken,
) -> Result<(), KafkaError> {
    let consumer = read_whole(
        &settings,
        &settings.views_topic(),
        partitions,
        "views reader",
        |c| {
            // Owners wait for their claim to be read: no need to wait for a fuller fetch.
            c.set("fetch.wait.max.ms", "50");
        },
    )?;
    let logged = LogEvery::default();
    let mut unpublished = false;
    loop {
        // Publish once no record follows at once: a burst is one snapshot.
        let wait = if unpublished {
            Duration::from_millis(5)
        } else {
            Duration::from_secs(3600)
        };
        let message = tokio::select! {
            message = tokio::time::timeout(wait, consumer.recv()) => message,
            () = stop.cancelled() => return Ok(()),
        };
        match message {
            Err(_elapsed) => {
                views.publish();
                unpublished = false;
            }
            Ok(Ok(message)) => {
                let payload = message.payload().unwrap_or_default();
                let key = message.key().unwrap_or_default();
                if views.apply(message.partition(), message.offset(), key, payload)
                    == Applied::Unreadable
                    && logged.ready()
                {
                    tracing::warn!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "kafka: a record of the views topic is not one this collector reads; skipped (logged at most once a minute)"
                    );
                }
                unpublished = true;
            }
            Ok(Err(error)) => {
                if logged.ready() {
                    tracing::warn!(%error, "kafka: cannot read the views topic; trying again (logged at most once a minute)");
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::weights::WeightsConfig;
    use crate::util::clock::Clock;

    fn weights(service: &str, version: u64) -> Vec<u8> {
        record(
            7,
            Body::Weights {
                weights: Arc::new(ServiceWeights {
                    service: service.into(),
                    version,
                    generated_at: "2027-01-01T00:00:00Z".into(),
                    ttl_ms: 60_000,
                    endpoints: vec![],
                }),
                memory: ServiceMemory {
                    version,
                    instances: vec![],
                    last: vec![],
                },
            },
        )
    }

    fn record(epoch: i64, body: Body) -> Vec<u8> {
        serde_json::to_vec(&ViewRecord {
            format: FORMAT,
            epoch,
            owner: "a".into(),
            body,
        })
        .unwrap()
    }

    fn views() -> Views {
        Views::new(
            Arc::new(WeightsEngine::new(WeightsConfig::default(), Clock::new())),
            None,
            &Metrics::new(),
        )
    }

    #[test]
    fn a_newer_claim_fences_the_older_owner() {
        let views = views();
        // Rows: (offset, key, payload, what becomes of it, why).
        let claim = |epoch| record(epoch, Body::Claim);
        let mut zombie = serde_json::from_slice::<ViewRecord>(&weights("cart", 9)).unwrap();
        zombie.epoch = 0;
        let zombie = serde_json::to_vec(&zombie).unwrap();
        let mut late = serde_json::from_slice::<ViewRecord>(&weights("cart", 3)).unwrap();
        late.epoch = 7;
        let late = serde_json::to_vec(&late).unwrap();
        let rows: Vec<(i64, &str, Vec<u8>, Applied, &str)> = vec![
            (
                0,
                "claim/0/a",
                claim(0),
                Applied::Taken,
                "the first owner claims at offset 0",
            ),
            (
                1,
                "weights/cart",
                {
                    let mut r = serde_json::from_slice::<ViewRecord>(&weights("cart", 5)).unwrap();
                    r.epoch = 0;
                    serde_json::to_vec(&r).unwrap()
                },
                Applied::Taken,
                "its weights, epoch 0",
            ),
            (
                7,
                "claim/0/b",
                claim(7),
                Applied::Taken,
                "a new owner claims: epoch 7",
            ),
            (
                8,
                "weights/cart",
                zombie,
                Applied::Fenced,
                "the old owner writes on: epoch 0 < 7",
            ),
            (
                9,
                "weights/cart",
                weights("cart", 6),
                Applied::Taken,
                "the new owner's, version 6",
            ),
            (
                10,
                "weights/cart",
                late,
                Applied::Fenced,
                "a version that goes back",
            ),
            (
                11,
                "weights/cart",
                b"{not json".to_vec(),
                Applied::Unreadable,
                "garbage",
            ),
        ];
        for (offset, key, payload, expected, why) in rows {
            assert_eq!(
                views.apply(0, offset, key.as_bytes(), &payload),
                expected,
                "{why}"
            );
        }
        assert_eq!(views.epoch(0), 7);
        assert!(views.read_past(0, 11));
        assert_eq!(views.dropped.get(), 3);
        views.publish();
        assert_eq!(views.served.get("cart").unwrap().version, 6);
        assert_eq!(views.memory("cart").unwrap().version, 6);
    }

    #[test]
    fn instances_page_in_order_and_removed() {
        let views = views();
        let instance = |service: &str, id: &str| Instance {
            service: service.into(),
            instance_id: id.into(),
            status: "passing".into(),
            address: None,
            source: "health".into(),
            last_beat: None,
            last_seen: None,
            since: "2027-01-01T00:00:00Z".into(),
            ttl_ms: None,
            seq: None,
            output: None,
        };
        let list = |service: &str, ids: &[&str]| {
            record(
                0,
                Body::Instances {
                    instances: ids.iter().map(|id| instance(service, id)).collect(),
                },
            )
        };
        views.apply(0, 0, b"instances/cart", &list("cart", &["c1", "c2"]));
        views.apply(1, 0, b"instances/auth", &list("auth", &["a1"]));
        let (page, more) = views.instances_page(None, None, 2);
        let ids: Vec<_> = page.iter().map(|i| i.instance_id.as_str()).collect();
        assert_eq!(ids, ["a1", "c1"]);
        assert!(more);
        let after = ("cart".to_owned(), "c1".to_owned());
        let (page, more) = views.instances_page(None, Some(&after), 2);
        assert_eq!(page.len(), 1);
        assert!(!more);
        views.apply(0, 1, b"instances/cart", &record(0, Body::Removed));
        assert!(views.instances_page(Some("cart"), None, 10).0.is_empty());
    }
}
