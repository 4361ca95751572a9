//! What an owner writes to the views topic, and when: a service's weights when their version
//! changes, its instances when a status, address, source, TTL or output changes, both at least
//! every [`REFRESH`]; a server's graph minute when it changed; a removal when a service has no
//! instances any more. It remembers what it wrote of each service, and forgets it when a write
//! fails (written again at the next tick) or the service's partition moves.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;
use wayfinder_api::topology::Instance as ApiInstance;
use wayfinder_api::weights::ServiceWeights;

use super::topology::TopologyMinute;
use super::view::{Body, FORMAT, ViewRecord, instances_key, topology_key, weights_key};
use crate::graph::weights::ServiceMemory;

/// A service's weights and instances are written again at least this often, changed or not:
/// `generated_at` stays fresh, and a record compaction left behind a zombie's is replaced.
const REFRESH: Duration = Duration::from_secs(5);

/// A record to write: the partition, the key, the record.
pub(super) type Write = (i32, String, ViewRecord);

/// What was last written of a service.
#[derive(Debug)]
struct Published {
    version: u64,
    weights_at: SystemTime,
    instances: Vec<ApiInstance>,
    instances_at: SystemTime,
}

/// What an owner writes, and what it last wrote.
#[derive(Debug)]
pub(super) struct Publisher {
    /// The owner's id, in every record.
    me: String,
    /// How many minutes of a server's graph the views topic keeps (its keys go round).
    ring: u64,
    published: HashMap<String, Published>,
}

impl Publisher {
    /// The publisher of owner `me`, keeping an hour of each server's graph.
    pub(super) fn new(me: &str) -> Self {
        Publisher {
            me: me.to_owned(),
            ring: 62,
            published: HashMap::new(),
        }
    }

    /// Keeps `retention` of each server's graph in the views topic.
    pub(super) fn with_graph_retention(mut self, retention: Duration) -> Self {
        self.ring = retention.as_secs().div_ceil(60) + 2;
        self
    }

    /// A record of this owner at `epoch`.
    pub(super) fn record(&self, epoch: i64, body: Body) -> ViewRecord {
        ViewRecord {
            format: FORMAT,
            epoch,
            owner: self.me.clone(),
            body,
        }
    }

    /// A server's changed graph minute, summed over the fleet.
    pub(super) fn topology(&self, partition: i32, epoch: i64, minute: &TopologyMinute) -> Write {
        let key = topology_key(&minute.service, minute.minute, self.ring);
        let figures = const_hex::encode(prost::Message::encode_to_vec(minute));
        let body = Body::Topology {
            minute: minute.minute,
            figures,
        };
        (partition, key, self.record(epoch, body))
    }

    /// The writes due for `service` at `now` (in `partition`, at `epoch`): its weights (with
    /// the rule's `memory`) and its instances (`list`), noted as written.
    pub(super) fn service(
        &mut self,
        now: SystemTime,
        (partition, epoch): (i32, i64),
        service: &str,
        weights: &Arc<ServiceWeights>,
        memory: impl FnOnce() -> Option<ServiceMemory>,
        list: &[ApiInstance],
    ) -> Vec<Write> {
        let stale = |at: SystemTime| now.duration_since(at).unwrap_or_default() >= REFRESH;
        let published = self.published.get(service);
        let weights_due =
            published.is_none_or(|p| p.version != weights.version || stale(p.weights_at));
        // A beat or a span moves only `last_beat`, `last_seen` and `seq`: those are written
        // with the refresh; any other change at once.
        let instances_due =
            published.is_none_or(|p| !same_states(&p.instances, list) || stale(p.instances_at));
        let mut writes = Vec::new();
        if weights_due && let Some(memory) = memory() {
            let body = Body::Weights {
                weights: weights.clone(),
                memory,
            };
            writes.push((partition, weights_key(service), self.record(epoch, body)));
        }
        if instances_due {
            let body = Body::Instances {
                instances: list.to_vec(),
            };
            writes.push((partition, instances_key(service), self.record(epoch, body)));
        }
        let entry = self
            .published
            .entry_ref(service)
            .or_insert_with(|| Published {
                version: 0,
                weights_at: SystemTime::UNIX_EPOCH,
                instances: Vec::new(),
                instances_at: SystemTime::UNIX_EPOCH,
            });
        if weights_due {
            entry.version = weights.version;
            entry.weights_at = now;
        }
        if instances_due {
            entry.instances = list.to_vec();
            entry.instances_at = now;
        }
        writes
    }

    /// Removals of the services written before that `gone` says (with their partition and
    /// epoch) have no instances any more.
    pub(super) fn gone(&mut self, gone: impl Fn(&str) -> Option<(i32, i64)>) -> Vec<Write> {
        let services: Vec<(String, (i32, i64))> = self
            .published
            .keys()
            .filter_map(|service| Some((service.clone(), gone(service)?)))
            .collect();
        let mut writes = Vec::new();
        for (service, (partition, epoch)) in services {
            self.published.remove(&service);
            for key in [weights_key(&service), instances_key(&service)] {
                writes.push((partition, key, self.record(epoch, Body::Removed)));
            }
        }
        writes
    }

    /// A write of `key` failed: its service is written again at the next tick.
    pub(super) fn failed(&mut self, key: &str) {
        if let Some(service) = key.split_once('/').map(|(_, s)| s) {
            self.published.remove(service);
        }
    }

    /// Forgets the services `mine` says (a partition let go).
    pub(super) fn forget(&mut self, mine: impl Fn(&str) -> bool) {
        self.published.retain(|service, _| !mine(service));
    }
}

/// Whether two lists of instances say the same but for the times of the last beat and span.
fn same_states(a: &[ApiInstance], b: &[ApiInstance]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.instance_id == b.instance_id
                && a.status == b.status
                && a.address == b.address
                && a.source == b.source
                && a.since == b.since
                && a.ttl_ms == b.ttl_ms
                && a.output == b.output
        })
}
