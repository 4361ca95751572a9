//! Who owns which partition, for every collector of the fleet: each publishes its partitions of
//! the spans topic and its query URL to the owners topic (`PREFIXowners`, one partition,
//! compacted, keyed by the URL) whenever they change and every few seconds, and every
//! collector reads the whole topic. A group's own description is not something every broker
//! reports reliably (tansu reports no members while a group runs), so the fleet keeps its own.
//!
//! Where two collectors claim a partition (one lost it but has not said so yet), the newer
//! claim wins; a collector that leaves publishes an empty claim.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{KafkaError, KafkaSettings, client_config, partition_of};

/// How often a collector says again what it owns, changed or not.
const REPUBLISH: Duration = Duration::from_secs(10);
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
}

/// The fleet's claims, as this collector has read them.
#[derive(Debug)]
pub(crate) struct Owners {
    /// This collector's own query URL.
    me: String,
    /// The spans topic's partition count (as the brokers report it).
    partitions: u32,
    claims: RwLock<HashMap<String, Claim>>,
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
        }
    }

    /// The collector that owns the partition of `trace_id` (32 lowercase hex characters).
    pub(crate) fn owner_of(&self, trace_id: &str) -> Owner {
        let partition = partition_of(trace_id.as_bytes(), self.partitions) as i32;
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
    consumer: Arc<StreamConsumer>,
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
        if published.as_ref() != Some(&owned) || last.elapsed() >= REPUBLISH {
            send(owned.clone()).await;
            published = Some(owned);
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
        }
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
