//! Fleet mode: Kafka as the fleet's write-ahead log (`docs/fleet.md`), as Tempo 3 and Jaeger v2
//! run. Every collector's receivers produce the spans they take to the spans topic, keyed by
//! the trace id (32 lowercase hex characters, as the OpenTelemetry Collector's `kafka`
//! exporter keys them) and partitioned by murmur2 over the key (Kafka's Java client's default),
//! and answer only once the brokers acknowledged them ([`produce`]). The collectors of one
//! consumer group share the partitions and feed what they consume through the same decoder and
//! pipeline as a request ([`consume`]): every span of a trace reaches one collector, which
//! pairs its calls. With a history, each partition's spans are sealed under its own prefix of
//! the bucket and the group's offsets committed only up to what is sealed ([`commit`]).
//!
//! The client is librdkafka (`rdkafka`), the reference client: consumer groups with
//! cooperative rebalancing and the idempotent producer. It brings OpenSSL for TLS and SCRAM to
//! the brokers: the one exception to the rustls-with-ring rule.

#[cfg(feature = "kafka")]
mod batch;
#[cfg(feature = "kafka")]
mod client;
#[cfg(feature = "kafka")]
pub(crate) mod commit;
#[cfg(feature = "kafka")]
pub(crate) mod consume;
#[cfg(feature = "kafka")]
pub(crate) mod health;
#[cfg(feature = "kafka")]
pub(crate) mod owners;
#[cfg(feature = "kafka")]
pub(crate) mod produce;
#[cfg(feature = "kafka")]
pub(crate) mod services;
mod settings;

#[cfg(feature = "kafka")]
pub(crate) use client::{
    KafkaError, client_config, ensure_topics, group_config, partition_of, partitions_of, read_whole,
};
pub use settings::{KafkaSaslMechanism, KafkaSecurity, KafkaSettings};
