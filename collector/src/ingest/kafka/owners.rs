//! Who owns which partition, for every collector of the fleet: each publishes its partitions of
//! the spans topic and its query URL to the owners topic (`PREFIXowners`, one partition,
//! compacted, keyed by the URL) whenever they change and every few seconds, and every
//! collector reads the whole topic. A group's own description is not something every broker
//! reports reliably (tansu reports no members while a group runs), so the fleet keeps its own.
//!
//! Where two collectors claim a partition (one lost it but has not said so yet), the newer
//! claim wins; a collector that leaves publishes an empty claim.
//!
//! A claim also says how far the collector has fed each partition through its pipeline. A
//! collector that takes a partition reads it again from the start (the spans are stored again)
//! but takes the facts — the calls its service graph and span metrics count — only of the
//! messages past that point: the fleet's Prometheus series count a moved partition's calls
//! once. After a crash the point is the last one published, at most a second old.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{KafkaError, KafkaSettings, client_config, partition_of};

/// How often a collector says again what it owns, changed or not.
const REPUBLISH: Duration = Duration::from_secs(10);
/// How often a collector says how far it has fed its partitions, when that moved.
const PROGRESS: Duration = Duration::from_secs(1);
/// How often a collector looks at its assignment.
const CHECK: Duration = Duration::from_millis(250);

/// One collector's claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// Its query API, `http://host:port`: where other collectors ask it for a trace.
    pub(crate) query: String,
    /// The partitions of the spans topic it owns.
    pub(crate) partitions: Vec<i32>,
    /// When it said so, in milliseconds since the epoch.
    pub(crate) at_ms: u64,
    /// The last offset of each partition it fed through its pipeline (owned now or before).
    #[serde(default)]
    pub(crate) fed: BTreeMap<i32, i64>,
}

/// The fleet's claims, as this collector has read them.
#[derive(Debug)]
pub(crate) struct Owners {
    /// This collector's own query URL.
    me: String,
    /// The spans topic's partition count (as the brokers report it).
    partitions: u32,
    claims: RwLock<HashMap<String, Claim>>,
    /// How far this collector has fed each partition.
    fed: Mutex<BTreeMap<i32, i64>>,
    /// The partitions this collector owns and has read to their end since it took them.
    caught_up: Mutex<BTreeSet<i32>>,
}

/// Where a trace's spans are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Here.
    Me,
    /// At another collector's query API.
    Other(String),
    /// Nobody has claimed its partition yet.
    Unknown,
}

impl Owners {
    pub(crate) fn new(me: String, partitions: u32) -> Self {
        Owners {
            me,
            partitions,
            claims: RwLock::new(HashMap::new()),
            fed: Mutex::new(BTreeMap::new()),
            caught_up: Mutex::new(BTreeSet::new()),
        }
    }

    /// The partition of `trace_id` (32 lowercase hex characters).
    pub(crate) fn partition_of(&self, trace_id: &str) -> i32 {
        partition_of(trace_id.as_bytes(), self.partitions) as i32
    }

    /// Notes that this collector has read `partition` to its end.
    pub(crate) fn caught_up(&self, partition: i32) {
        self.caught_up.lock().insert(partition);
    }

    /// Whether this collector is still reading `partition` again after taking it: a trace of
    /// it not found here may not have been read yet.
    pub(crate) fn catching_up(&self, partition: i32) -> bool {
        !self.caught_up.lock().contains(&partition)
    }

    /// Forgets the partitions this collector no longer owns: taken again, they are read again.
    fn keep_only(&self, owned: &[i32]) {
        self.caught_up.lock().retain(|p| owned.contains(p));
    }

    /// Notes that this collector fed `offset` of `partition` through its pipeline.
    pub(crate) fn fed(&self, partition: i32, offset: i64) {
        let mut fed = self.fed.lock();
        let last = fed.entry(partition).or_insert(offset);
        *last = (*last).max(offset);
    }

    /// The highest offset of `partition` that another collector has said it fed (and so
    /// counted the calls of); -1 when none has.
    pub(crate) fn counted_through(&self, partition: i32) -> i64 {
        self.claims
            .read()
            .values()
            .filter(|claim| claim.query != self.me)
            .filter_map(|claim| claim.fed.get(&partition).copied())
            .max()
            .unwrap_or(-1)
    }

    /// The collector that owns the partition of `trace_id` (32 lowercase hex characters).
    pub(crate) fn owner_of(&self, trace_id: &str) -> Owner {
        self.owner_of_partition(self.partition_of(trace_id))
    }

    /// How many partitions the spans topic has.
    pub(crate) fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The collector that owns `partition`.
    pub(crate) fn owner_of_partition(&self, partition: i32) -> Owner {
        let claims = self.claims.read();
        claims
            .values()
            .filter(|claim| claim.partitions.contains(&partition))
            .max_by_key(|claim| claim.at_ms)
            .map_or(Owner::Unknown, |claim| {
                if claim.query == self.me {
                    Owner::Me
                } else {
                    Owner::Other(claim.query.clone())
                }
            })
    }

    fn take(&self, claim: Claim) {
        let mut claims = self.claims.write();
        match claims.get(&claim.query) {
            Some(known) if known.at_ms > claim.at_ms => {}
            _ => {
                claims.insert(claim.query.clone(), claim);
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads the owners topic from its start into `owners`, until `stop`.
pub(crate) async fn read(
    settings: KafkaSettings,
    owners: Arc<Owners>,
    stop: CancellationToken,
) -> Result<(), KafkaError> {
    let topic = settings.owners_topic();
    // No group: it reads everything, commits nothing.
    let consumer: StreamConsumer = client_config(&settings)
        .set(
            "group.id",
            format!("{}-owners-{}", settings.kafka_group, fastrand::u64(..)),
        )
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|source| KafkaError::Client {
            what: "owners reader",
            source,
        })?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .map_err(|source| KafkaError::Client {
            what: "owners reader's assignment",
            source,
        })?;
    consumer
        .assign(&assignment)
        .map_err(|source| KafkaError::Client {
            what: "owners reader's assignment",
            source,
        })?;
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message,
            () = stop.cancelled() => return Ok(()),
        };
        match message {
            Ok(message) => {
                if let Some(claim) = message
                    .payload()
                    .and_then(|payload| serde_json::from_slice::<Claim>(payload).ok())
                {
                    owners.take(claim);
                }
            }
            Err(error) => {
                tracing::debug!(%error, "kafka: reading the owners topic");
                tokio::time::sleep(CHECK).await;
            }
        }
    }
}

/// Publishes this collector's partitions (those `consumer` is assigned) whenever they change
/// and every [`REPUBLISH`]; at `stop`, an empty claim.
pub(crate) async fn publish(
    settings: KafkaSettings,
    consumer: Arc<super::commit::GroupConsumer>,
    owners: Arc<Owners>,
    stop: CancellationToken,
) -> Result<(), KafkaError> {
    let topic = settings.owners_topic();
    let producer: FutureProducer = client_config(&settings)
        .set("acks", "all")
        .create()
        .map_err(|source| KafkaError::Client {
            what: "owners producer",
            source,
        })?;
    let send = |partitions: Vec<i32>| {
        let claim = Claim {
            query: owners.me.clone(),
            partitions,
            at_ms: now_ms(),
            fed: owners.fed.lock().clone(),
        };
        // Our own claim counts at once, before the topic brings it back.
        owners.take(claim.clone());
        let payload = serde_json::to_vec(&claim).unwrap_or_default();
        let producer = producer.clone();
        let topic = topic.clone();
        let key = owners.me.clone();
        async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            if let Err((error, _)) = producer.send(record, Duration::from_secs(5)).await {
                tracing::warn!(%error, "kafka: cannot publish this collector's partitions");
            }
        }
    };
    let mut published: Option<Vec<i32>> = None;
    let mut published_fed = BTreeMap::new();
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK) => {}
            () = stop.cancelled() => {
                send(Vec::new()).await;
                return Ok(());
            }
        }
        let mut owned: Vec<i32> = consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        owned.sort_unstable();
        owners.keep_only(&owned);
        let fed = owners.fed.lock().clone();
        let moved = fed != published_fed && last.elapsed() >= PROGRESS;
        if published.as_ref() != Some(&owned) || moved || last.elapsed() >= REPUBLISH {
            send(owned.clone()).await;
            published = Some(owned);
            published_fed = fed;
            last = tokio::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(query: &str, partitions: &[i32], at_ms: u64) -> Claim {
        Claim {
            query: query.into(),
            partitions: partitions.to_vec(),
            at_ms,
            fed: BTreeMap::new(),
        }
    }

    #[test]
    fn calls_are_counted_past_what_another_collector_fed() {
        let owners = Owners::new("http://a".into(), 6);
        assert_eq!(owners.counted_through(3), -1, "nobody fed partition 3");
        let mut b = claim("http://b", &[], 10);
        b.fed.insert(3, 41);
        owners.take(b);
        assert_eq!(owners.counted_through(3), 41, "b counted through 41");
        owners.fed(3, 90);
        assert_eq!(
            owners.counted_through(3),
            41,
            "what this collector fed itself does not hold it back"
        );
        let mut c = claim("http://c", &[3], 20);
        c.fed.insert(3, 7);
        owners.take(c);
        assert_eq!(owners.counted_through(3), 41, "the furthest any other fed");
    }

    #[test]
    fn the_newest_claim_of_a_partition_wins() {
        let owners = Owners::new("http://a".into(), 1);
        let trace = "0123456789abcdef0123456789abcdef"; // one partition: 0
        assert_eq!(
            owners.owner_of(trace),
            Owner::Unknown,
            "nobody has said yet"
        );
        owners.take(claim("http://b", &[0], 10));
        assert_eq!(owners.owner_of(trace), Owner::Other("http://b".into()));
        owners.take(claim("http://a", &[0], 20));
        assert_eq!(owners.owner_of(trace), Owner::Me, "a newer claim takes it");
        owners.take(claim("http://b", &[0], 5));
        assert_eq!(
            owners.owner_of(trace),
            Owner::Me,
            "an older claim read late changes nothing"
        );
        owners.take(claim("http://a", &[], 30));
        assert_eq!(
            owners.owner_of(trace),
            Owner::Other("http://b".into()),
            "a collector that leaves gives it back to the last other claim"
        );
    }
}
