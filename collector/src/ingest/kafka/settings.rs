//! Fleet mode's settings (`[kafka]`): the brokers that turn it on, the topics, the consumer
//! group, and how the collector authenticates to the brokers (`docs/fleet.md`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::net::access::Secret;
use crate::util::settings::{self, SettingError, Settings, duration};
use crate::util::units::parse_duration;

/// How the collector speaks to the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum KafkaSecurity {
    /// Plain TCP, no authentication.
    Plaintext,
    /// TLS, no authentication.
    Ssl,
    /// SASL over plain TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl KafkaSecurity {
    /// librdkafka's name for it.
    pub(crate) fn librdkafka(self) -> &'static str {
        match self {
            KafkaSecurity::Plaintext => "plaintext",
            KafkaSecurity::Ssl => "ssl",
            KafkaSecurity::SaslPlaintext => "sasl_plaintext",
            KafkaSecurity::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, KafkaSecurity::SaslPlaintext | KafkaSecurity::SaslSsl)
    }
}

/// The SASL mechanism (librdkafka's `sasl.mechanism`): PLAIN or SCRAM. GSSAPI (Kerberos) is
/// not built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum KafkaSaslMechanism {
    /// `PLAIN`: the password as it is, so only over TLS.
    #[serde(rename = "PLAIN")]
    #[value(name = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl KafkaSaslMechanism {
    /// librdkafka's name for it.
    pub(crate) fn librdkafka(self) -> &'static str {
        match self {
            KafkaSaslMechanism::Plain => "PLAIN",
            KafkaSaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            KafkaSaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Fleet mode's settings. Without brokers the collector is one process, as ever.
///
/// ```
/// use clap::Parser;
/// use wayfinder_collector::config::{Config, ServeArgs};
///
/// let args = ServeArgs::try_parse_from(["serve", "--kafka-brokers", "10.0.0.1:9092,10.0.0.2:9092"])
///     .unwrap();
/// let config = Config::resolve(&args).unwrap();
/// assert_eq!(config.kafka.kafka_brokers.len(), 2);
/// assert_eq!(config.kafka.spans_topic(), "wayfinder.spans");
/// assert!(Config::default().kafka.kafka_brokers.is_empty(), "one process by default");
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaSettings {
    /// Kafka brokers (HOST:PORT, comma-separated): fleet mode, with Kafka as the durability
    /// point in place of the local log [default: none, one process].
    #[arg(long, env = "WAYFINDER_KAFKA_BROKERS", value_delimiter = ',')]
    pub kafka_brokers: Vec<String>,
    /// Partitions of the topics the collector creates when they are missing.
    #[arg(long, env = "WAYFINDER_KAFKA_PARTITIONS", default_value = "12")]
    pub kafka_partitions: u32,
    /// Replication factor of the topics the collector creates; -1 takes the brokers' default.
    #[arg(
        long,
        env = "WAYFINDER_KAFKA_REPLICATION_FACTOR",
        default_value = "-1",
        allow_hyphen_values = true
    )]
    pub kafka_replication_factor: i32,
    /// The start of every topic's name: `PREFIXspans`, `PREFIXhealth`, `PREFIXowners`,
    /// `PREFIXpartials`, `PREFIXviews`.
    #[arg(
        long,
        env = "WAYFINDER_KAFKA_TOPIC_PREFIX",
        default_value = "wayfinder."
    )]
    pub kafka_topic_prefix: String,
    /// The consumer group the collectors of one fleet share.
    #[arg(long, env = "WAYFINDER_KAFKA_GROUP", default_value = "wayfinder")]
    pub kafka_group: String,
    /// How long a collector that stopped answering keeps its partitions before the others
    /// take them (librdkafka's `session.timeout.ms`, 45 s by default there).
    #[arg(long, env = "WAYFINDER_KAFKA_SESSION_TIMEOUT", default_value = "6s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub kafka_session_timeout: Duration,
    /// How the collector speaks to the brokers.
    #[arg(
        long,
        env = "WAYFINDER_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: KafkaSecurity,
    /// The SASL mechanism, with a `sasl_*` security protocol.
    #[arg(long, env = "WAYFINDER_KAFKA_SASL_MECHANISM", value_enum)]
    pub kafka_sasl_mechanism: Option<KafkaSaslMechanism>,
    /// The SASL user name; its password comes from `WAYFINDER_KAFKA_SASL_PASSWORD` only.
    #[arg(long, env = "WAYFINDER_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// The SASL password from `WAYFINDER_KAFKA_SASL_PASSWORD` (shown redacted).
    #[arg(skip)]
    #[serde(skip)]
    pub kafka_sasl_password: Option<Secret>,
    /// CA certificates (PEM) that the brokers' certificates must chain to, with `ssl` or
    /// `sasl_ssl` [default: the system's].
    #[arg(long, env = "WAYFINDER_KAFKA_CA")]
    pub kafka_ca: Option<PathBuf>,
    /// The URL other collectors reach this one's query API at, to ask it for the traces of
    /// its partitions [default: http:// (https:// with --tls-cert) and --query-http, when
    /// that is not 0.0.0.0 or ::].
    #[arg(long, env = "WAYFINDER_KAFKA_QUERY_URL")]
    pub kafka_query_url: Option<String>,
    /// CA certificates (PEM) that the other collectors' query certificates must chain to,
    /// when their query URLs are https:// [default: the system's].
    #[arg(long, env = "WAYFINDER_KAFKA_QUERY_CA")]
    pub kafka_query_ca: Option<PathBuf>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl KafkaSettings {
    /// Whether fleet mode is on.
    pub fn fleet(&self) -> bool {
        !self.kafka_brokers.is_empty()
    }

    /// The topic of the spans, keyed by trace id.
    pub fn spans_topic(&self) -> String {
        format!("{}spans", self.kafka_topic_prefix)
    }

    /// The topic of the health events, keyed by `service.name`.
    pub fn health_topic(&self) -> String {
        format!("{}health", self.kafka_topic_prefix)
    }

    /// The topic where each collector says which partitions it owns (one partition,
    /// compacted), keyed by its query URL.
    pub fn owners_topic(&self) -> String {
        format!("{}owners", self.kafka_topic_prefix)
    }
}

impl KafkaSettings {
    /// The topic of the partials: each collector's figures per server service, keyed by
    /// `service.name`; its partitions are the services' owners'.
    pub fn partials_topic(&self) -> String {
        format!("{}partials", self.kafka_topic_prefix)
    }

    /// The topic (compacted) where each service's owner publishes its weights and instances,
    /// one partition per partition of the partials topic.
    pub fn views_topic(&self) -> String {
        format!("{}views", self.kafka_topic_prefix)
    }
}

impl Settings for KafkaSettings {
    const SECTION: &'static str = "kafka";

    fn validate(&self) -> Result<(), SettingError> {
        #[cfg(not(feature = "kafka"))]
        if self.fleet() {
            return Err(SettingError::invalid(
                "kafka_brokers",
                "this build has no fleet mode (it was built without the `kafka` feature)",
            ));
        }
        if self.kafka_partitions == 0 || self.kafka_partitions > 1 << 16 {
            return Err(SettingError::invalid(
                "kafka_partitions",
                format!("must be from 1 to 65536, not {}", self.kafka_partitions),
            ));
        }
        if self.kafka_replication_factor == 0 || self.kafka_replication_factor < -1 {
            return Err(SettingError::invalid(
                "kafka_replication_factor",
                "must be at least 1, or -1 for the brokers' default",
            ));
        }
        if self.kafka_session_timeout < Duration::from_secs(1) {
            return Err(SettingError::invalid(
                "kafka_session_timeout",
                "must be at least 1s",
            ));
        }
        let sasl = self.kafka_security_protocol.sasl();
        if sasl && (self.kafka_sasl_mechanism.is_none() || self.kafka_sasl_username.is_none()) {
            return Err(SettingError::invalid(
                "kafka_sasl_mechanism",
                "a sasl_* security protocol needs --kafka-sasl-mechanism and --kafka-sasl-username (and WAYFINDER_KAFKA_SASL_PASSWORD)",
            ));
        }
        if !sasl && self.kafka_sasl_mechanism.is_some() {
            return Err(SettingError::invalid(
                "kafka_sasl_mechanism",
                "needs --kafka-security-protocol sasl_ssl (or sasl_plaintext)",
            ));
        }
        Ok(())
    }

    fn shown(&self) -> Map<String, Value> {
        let mut shown = settings::shown_as_serialized(self);
        shown.insert(
            "kafka_sasl_password".to_owned(),
            match &self.kafka_sasl_password {
                None => Value::Null,
                Some(_) => Value::String("<redacted> (WAYFINDER_KAFKA_SASL_PASSWORD)".to_owned()),
            },
        );
        shown
    }

    fn normalize(&mut self) {
        settings::tidy(&mut self.kafka_brokers);
    }
}
