//! The receivers' side of fleet mode: each accepted request goes to the spans topic as one
//! message per trace (split at the wire level, `wayfinder_decode::split`), keyed by the hex trace id and partitioned by
//! murmur2, from an idempotent producer with `acks=all`; the request is answered once every
//! message is acknowledged. A full producer buffer, or brokers that do not answer within the
//! delivery timeout, refuse the request retryably: the exporter sends it again (a request
//! refused half-way may then be stored twice, never lost).

use std::time::Duration;

use prost::Message as _;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::{KafkaError, KafkaSettings, client_config};
use crate::decode::DecodedTraces;
use crate::decode::health::HealthEvent;
use crate::ingest::{Ingest, IngestError, Protocol, TraceRequest};
use wayfinder_api::health::HealthReport;

/// How long the brokers have to acknowledge a message (librdkafka retries within it): an
/// exporter's own timeout is 10 s, so that a refusal reaches it before it gives up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(8);

/// The most the producer buffers for the brokers; past it requests are refused retryably.
const BUFFER_KBYTES: usize = 256 * 1024;

/// Produces the spans and health events of accepted requests.
#[derive(Clone)]
pub(crate) struct SpanProducer {
    producer: FutureProducer,
    topic: String,
    health_topic: String,
}

impl std::fmt::Debug for SpanProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Why spans could not be handed to the brokers: both are retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProduceError {
    /// The producer's buffer is full: the brokers are slower than the receivers.
    #[error("the producer's buffer for the brokers is full")]
    Full,
    /// The brokers did not take the spans.
    #[error("the brokers did not take the spans: {0}")]
    Unavailable(String),
}

impl SpanProducer {
    /// A producer to the spans topic of `settings`.
    pub(crate) fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let producer = client_config(settings)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // A keyed record where Kafka's Java client puts it.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("queue.buffering.max.kbytes", BUFFER_KBYTES.to_string())
            .create()
            .map_err(|source| KafkaError::Client {
                what: "producer",
                source,
            })?;
        Ok(SpanProducer {
            producer,
            topic: settings.spans_topic(),
            health_topic: settings.health_topic(),
        })
    }

    /// Hands health events to the producer, each as the JSON of a `POST /v1/health` beat keyed
    /// by its `service.name` (so that a service's beats stay in order on one partition).
    pub(crate) fn send_beats(&self, events: &[HealthEvent]) -> Result<Produced, ProduceError> {
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            let payload = serde_json::to_vec(&report_of(event)).unwrap_or_default();
            let record = FutureRecord::to(&self.health_topic)
                .key(&event.service)
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(ProduceError::Full);
                }
                Err((error, _)) => return Err(ProduceError::Unavailable(error.to_string())),
            }
        }
        Ok(Produced(deliveries))
    }

    /// Hands the traces of `request` (an encoded `ExportTraceServiceRequest`) to the producer,
    /// split at the wire level (its bytes copied as they came); the answer says when the
    /// brokers have them all.
    pub(crate) fn send(&self, request: &[u8]) -> Result<Produced, ProduceError> {
        let traces = crate::decode::split::by_trace(request)
            .map_err(|e| ProduceError::Unavailable(format!("the request cannot be split: {e}")))?;
        let mut deliveries = Vec::with_capacity(traces.len());
        for (id, payload) in traces {
            let key = const_hex::encode(id);
            let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(ProduceError::Full);
                }
                Err((error, _)) => return Err(ProduceError::Unavailable(error.to_string())),
            }
        }
        Ok(Produced(deliveries))
    }
}

/// A valid health event as the beat it came as (or as the beat an OTLP log event says).
fn report_of(event: &HealthEvent) -> HealthReport {
    HealthReport {
        service: event.service.clone(),
        instance_id: event.instance_id.clone(),
        address: event.address.clone(),
        status: event.status.as_str().to_owned(),
        ttl_ms: Some(u64::try_from(event.ttl.as_millis()).unwrap_or(u64::MAX)),
        seq: event.seq,
        incarnation: event.incarnation,
        output: event.output.clone(),
    }
}

/// Messages on their way to the brokers.
#[must_use = "a request is acknowledged only once the brokers have its spans"]
pub(crate) struct Produced(Vec<DeliveryFuture>);

impl std::fmt::Debug for Produced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Produced").field(&self.0.len()).finish()
    }
}

impl Produced {
    /// Waits until the brokers acknowledged every message.
    pub(crate) async fn acknowledged(self) -> Result<(), ProduceError> {
        for delivery in self.0 {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(ProduceError::Unavailable(error.to_string())),
                Err(_) => {
                    return Err(ProduceError::Unavailable(
                        "the producer stopped before the brokers answered".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Ingest {
    /// Fleet mode's part of [`Ingest::prepare_traces`]: the request's traces handed to the
    /// producer (refused retryably when its buffer is full).
    pub(crate) fn produce(
        &self,
        producer: &SpanProducer,
        protocol: Protocol,
        request: TraceRequest<'_>,
        decoded: &DecodedTraces,
    ) -> Result<Produced, IngestError> {
        let encoded;
        let bytes = match request {
            TraceRequest::Protobuf(bytes) => bytes,
            TraceRequest::Message(message) => {
                encoded = message.encode_to_vec();
                &encoded
            }
        };
        producer.send(bytes).map_err(|refused| {
            let error = match refused {
                ProduceError::Full => IngestError::Overloaded,
                ProduceError::Unavailable(why) => IngestError::Unavailable(why),
            };
            self.refuse_traces(protocol, decoded, &error);
            error
        })
    }
}
