//! The brokers as every client of the fleet reaches them, the topics made when missing, and
//! where a key's records go.

use rdkafka::ClientConfig;

use super::KafkaSettings;

/// The partition a key goes to among `partitions`: murmur2 (seed `0x9747b28c`) with the sign
/// bit cleared, modulo the count — Kafka's Java client's default partitioner and librdkafka's
/// `murmur2_random` for a keyed record. A trace's spans all land where its key says, whoever
/// produced them (a collector, or an OpenTelemetry Collector gateway set to murmur2). The
/// producer leaves the choice to librdkafka's `murmur2_random`, which is this.
pub(crate) fn partition_of(key: &[u8], partitions: u32) -> u32 {
    (murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff) % partitions.max(1)
}

/// The librdkafka settings every client of the fleet shares: the brokers and how to reach them.
pub(crate) fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", settings.kafka_brokers.join(","))
        .set(
            "security.protocol",
            settings.kafka_security_protocol.librdkafka(),
        )
        .set("client.id", "wayfinder");
    if let Some(mechanism) = settings.kafka_sasl_mechanism {
        config.set("sasl.mechanism", mechanism.librdkafka());
    }
    if let Some(username) = &settings.kafka_sasl_username {
        config.set("sasl.username", username);
    }
    if let Some(password) = &settings.kafka_sasl_password {
        config.set("sasl.password", password.expose());
    }
    if let Some(ca) = &settings.kafka_ca {
        config.set("ssl.ca.location", ca.to_string_lossy());
    }
    config
}

/// The settings of a member of consumer group `group`: cooperative-sticky rebalancing (a
/// rebalance moves only the partitions that change hands), offsets committed by hand, the
/// partitions' ends said (until then a partition is still being read), and the session of
/// `--kafka-session-timeout` with heartbeats at a third of it, as Kafka's clients advise.
pub(crate) fn group_config(settings: &KafkaSettings, group: &str) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            settings.kafka_session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.kafka_session_timeout.as_millis() / 3).to_string(),
        );
    config
}

/// A consumer of every partition of `topic` (it has `partitions`), from its start, in no group
/// of the fleet (a group id of its own, that commits nothing): for the topics every collector
/// reads whole. `config` adds settings.
pub(crate) fn read_whole(
    settings: &KafkaSettings,
    topic: &str,
    partitions: u32,
    what: &'static str,
    config: impl FnOnce(&mut ClientConfig),
) -> Result<rdkafka::consumer::StreamConsumer, KafkaError> {
    use rdkafka::consumer::Consumer as _;
    use rdkafka::{Offset, TopicPartitionList};

    let mut client = client_config(settings);
    client
        .set(
            "group.id",
            format!(
                "{}-{}-{}",
                settings.kafka_group,
                what.replace(' ', "-"),
                fastrand::u64(..)
            ),
        )
        .set("enable.auto.commit", "false");
    config(&mut client);
    let consumer: rdkafka::consumer::StreamConsumer = client
        .create()
        .map_err(|source| KafkaError::Client { what, source })?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Beginning)
            .map_err(|source| KafkaError::Client { what, source })?;
    }
    consumer
        .assign(&assignment)
        .map_err(|source| KafkaError::Client { what, source })?;
    Ok(consumer)
}

/// Why fleet mode could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// A client could not be made from the settings.
    #[error("kafka: cannot create the {what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// librdkafka's reason.
        source: rdkafka::error::KafkaError,
    },
    /// A topic could not be created or checked.
    #[error("kafka: topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

/// Creates the spans, health, owners, partials and views topics when they are missing (`--kafka-partitions`, `--kafka-replication-
/// factor`); one that exists is taken as it is, whatever its partition count.
/// The spans are kept for `retention` (the store's: what a collector that takes a partition
/// reads again), the health events for `health_retention` (what a starting collector reads to
/// know every instance).
pub(crate) async fn ensure_topics(
    settings: &KafkaSettings,
    retention: std::time::Duration,
    health_retention: std::time::Duration,
    partials_retention: std::time::Duration,
) -> Result<(), KafkaError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> =
        client_config(settings)
            .create()
            .map_err(|source| KafkaError::Client {
                what: "admin client",
                source,
            })?;
    let partitions = i32::try_from(settings.kafka_partitions).unwrap_or(i32::MAX);
    let (spans, owners) = (settings.spans_topic(), settings.owners_topic());
    let health = settings.health_topic();
    let (partials, views) = (settings.partials_topic(), settings.views_topic());
    let topics = [
        spans.clone(),
        health.clone(),
        owners.clone(),
        partials.clone(),
        views.clone(),
    ];
    let retention_ms = retention.as_millis().to_string();
    let health_retention_ms = health_retention.as_millis().to_string();
    let partials_retention_ms = partials_retention.as_millis().to_string();
    let replication = || TopicReplication::Fixed(settings.kafka_replication_factor);
    let new = [
        NewTopic::new(&spans, partitions, replication()).set("retention.ms", &retention_ms),
        // Keyed by service: the same count, so that a service's beats meet its figures.
        NewTopic::new(&health, partitions, replication()).set("retention.ms", &health_retention_ms),
        // Each collector's latest claim is all that matters.
        NewTopic::new(&owners, 1, replication()).set("cleanup.policy", "compact"),
        // Partials matter for a weight window: a new owner reads them again from its start.
        NewTopic::new(&partials, partitions, replication())
            .set("retention.ms", &partials_retention_ms),
        // Each service's last weights and instances, and each owner's last claim.
        NewTopic::new(&views, partitions, replication()).set("cleanup.policy", "compact"),
    ];
    let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|e| KafkaError::Topic {
            topic: topics.join(", "),
            reason: e.to_string(),
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The partition counts of `topics`, as the brokers report them (an operator may have made a
/// topic with another count than `--kafka-partitions`): one client, one metadata request.
pub(crate) async fn partitions_of<const N: usize>(
    settings: &KafkaSettings,
    topics: [String; N],
) -> Result<[u32; N], KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};

    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer =
            client_config(&settings)
                .create()
                .map_err(|source| KafkaError::Client {
                    what: "metadata client",
                    source,
                })?;
        let metadata = client
            .fetch_metadata(None, std::time::Duration::from_secs(10))
            .map_err(|e| KafkaError::Topic {
                topic: topics.join(", "),
                reason: e.to_string(),
            })?;
        let mut counts = [0u32; N];
        for (count, topic) in counts.iter_mut().zip(&topics) {
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len());
            *count = match u32::try_from(found) {
                Ok(found) if found > 0 => found,
                _ => {
                    return Err(KafkaError::Topic {
                        topic: topic.clone(),
                        reason: "the brokers report no partitions".into(),
                    });
                }
            };
        }
        Ok(counts)
    })
    .await
    .map_err(|e| KafkaError::Topic {
        topic: "metadata".into(),
        reason: e.to_string(),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // Kafka's own vectors (`UtilsTest.testMurmur2`), as the signed ints Java prints.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, java) in cases {
            assert_eq!(
                murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32,
                java,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        // The partition: the sign bit cleared, modulo the count.
        assert_eq!(
            partition_of(b"21", 12),
            (-973_932_308i32 & 0x7fff_ffff) as u32 % 12
        );
    }
}
