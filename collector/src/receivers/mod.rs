//! The OTLP receivers: gRPC ([`grpc`]) and HTTP ([`http`]), both handing requests to one
//! [`Ingest`], which decodes them once and queues the result.

pub mod grpc;
pub mod http;
pub mod pool;

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use wayfinder_api::health::{HealthAck, HealthReport};

use crate::decode::health::{decode_health_logs, validate};
use crate::decode::{DecodeError, DecodeOptions, decode_traces_wire_with, decode_traces_with};
use crate::metrics::{Metrics, ProtocolLabels, RefusalLabels};
use crate::pipeline::{IngestQueue, Refusal};
use crate::registry::{BeatOutcome, Registry};

/// How a request reached the collector, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    HttpProtobuf,
    /// OTLP/HTTP with a JSON body.
    HttpJson,
}

impl Protocol {
    /// The label value, as in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
        }
    }
}

/// Why a whole request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The ingest queue is full: retry later.
    #[error("the collector is overloaded (ingest queue full); retry later")]
    Overloaded,
    /// The collector is shutting down: retry against another one, or later.
    #[error("the collector is shutting down; retry later")]
    ShuttingDown,
    /// The request is not valid OTLP (the receiver counts it as `malformed`).
    #[error("{0}")]
    Malformed(String),
    /// The request could not be turned into Arrow (a bug, not bad input).
    #[error("internal error while storing spans: {0}")]
    Internal(String),
}

/// A trace request as a receiver holds it.
#[derive(Debug, Clone, Copy)]
pub enum TraceRequest<'a> {
    /// The protobuf bytes of an `ExportTraceServiceRequest` (OTLP/gRPC, OTLP/HTTP protobuf):
    /// decoded straight into Arrow, borrowing from the bytes.
    Protobuf(&'a [u8]),
    /// A decoded message (OTLP/JSON).
    Message(&'a ExportTraceServiceRequest),
}

/// The shared entry point of the receivers.
#[derive(Debug, Clone)]
pub struct Ingest {
    queue: IngestQueue,
    /// Where large requests are decoded.
    pool: pool::DecodePool,
    metrics: Arc<Metrics>,
    /// What is taken from each span beyond the batch: the facts (off when the topology is
    /// off), configured attributes, the sampling weight.
    options: Arc<DecodeOptions>,
    /// Where health events go.
    registry: Option<Arc<Registry>>,
}

impl Ingest {
    /// Receivers that push into `queue` and count into `metrics`.
    pub fn new(queue: IngestQueue, metrics: Arc<Metrics>) -> Self {
        Self {
            queue,
            pool: pool::DecodePool::default(),
            metrics,
            options: Arc::new(DecodeOptions::default()),
            registry: None,
        }
    }

    /// Decodes on `pool` (default: one slot per core).
    pub fn with_pool(mut self, pool: pool::DecodePool) -> Self {
        self.pool = pool;
        self
    }

    /// Where large requests are decoded, off the runtime's workers.
    pub fn pool(&self) -> &pool::DecodePool {
        &self.pool
    }

    /// Sends health events (OTLP log records named `wayfinder.health`, `POST /v1/health`) to
    /// `registry`.
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Whether to take the topology facts of each span (default on).
    pub fn with_facts(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.options).facts = on;
        self
    }

    /// Decodes with `options` (the facts, configured attributes and sampling weight).
    pub fn with_decode_options(mut self, options: DecodeOptions) -> Self {
        self.options = Arc::new(options);
        self
    }

    /// Counts a request refused before it could be decoded (bad body, wrong type, too large).
    pub fn refuse_request(&self, protocol: Protocol, reason: &'static str) {
        self.metrics
            .refused_requests
            .get_or_create(&RefusalLabels {
                protocol: protocol.label(),
                reason,
            })
            .inc();
    }

    /// Whether the queue has room for a request of `bytes` on the wire; refuses (and counts) it if
    /// not, before it is decoded.
    pub fn check_room(&self, protocol: Protocol, bytes: usize) -> Result<(), IngestError> {
        if self.queue.has_room(bytes) {
            Ok(())
        } else {
            self.refuse_request(protocol, "queue_full");
            Err(IngestError::Overloaded)
        }
    }

    /// Validates, decodes and queues the spans of one request.
    pub fn export_traces(
        &self,
        protocol: Protocol,
        request: TraceRequest<'_>,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let labels = |reason| RefusalLabels {
            protocol: protocol.label(),
            reason,
        };
        let decoded = match request {
            TraceRequest::Protobuf(bytes) => decode_traces_wire_with(bytes, &self.options),
            TraceRequest::Message(message) => {
                decode_traces_with(message, &self.options).map_err(DecodeError::from)
            }
        };
        let decoded = decoded.map_err(|e| match e {
            DecodeError::Malformed(_) => IngestError::Malformed(e.to_string()),
            DecodeError::Arrow(_) => {
                self.refuse_request(protocol, "internal");
                IngestError::Internal(e.to_string())
            }
        })?;
        let accepted = decoded.accepted();
        if let Some(batch) = decoded.batch
            && let Err(refusal) = self.queue.try_push(batch, decoded.facts)
        {
            let reason = match refusal {
                Refusal::Full => "queue_full",
                _ => "shutting_down",
            };
            self.refuse_request(protocol, reason);
            let all = accepted as u64 + decoded.rejections.total();
            self.metrics
                .refused_spans
                .get_or_create(&labels(reason))
                .inc_by(all);
            return Err(match refusal {
                Refusal::Full => IngestError::Overloaded,
                _ => IngestError::ShuttingDown,
            });
        }
        self.metrics
            .accepted_spans
            .get_or_create(&ProtocolLabels {
                protocol: protocol.label(),
            })
            .inc_by(accepted as u64);
        for (reason, count) in decoded.rejections.by_reason() {
            if count > 0 {
                self.metrics
                    .refused_spans
                    .get_or_create(&labels(reason))
                    .inc_by(count);
            }
        }
        let partial_success =
            decoded
                .rejections
                .message()
                .map(|error_message| ExportTracePartialSuccess {
                    rejected_spans: i64::try_from(decoded.rejections.total()).unwrap_or(i64::MAX),
                    error_message,
                });
        Ok(ExportTraceServiceResponse { partial_success })
    }

    /// Accepts the log records of one request: health events go to the registry (invalid ones
    /// are rejected through `partial_success`); other records are counted, not stored.
    pub fn export_logs(
        &self,
        protocol: Protocol,
        request: &ExportLogsServiceRequest,
    ) -> ExportLogsServiceResponse {
        let decoded = decode_health_logs(request);
        let labels = ProtocolLabels {
            protocol: protocol.label(),
        };
        self.metrics
            .accepted_log_records
            .get_or_create(&labels)
            .inc_by(decoded.other_records);
        let accepted = decoded.events.len() as u64;
        for event in decoded.events.iter().cloned() {
            self.apply_beat(event);
        }
        self.metrics
            .health_events
            .get_or_create(&labels)
            .inc_by(accepted);
        if decoded.rejected > 0 {
            self.metrics
                .refused_health_events
                .get_or_create(&labels)
                .inc_by(decoded.rejected);
        }
        ExportLogsServiceResponse {
            partial_success: decoded
                .message()
                .map(|error_message| ExportLogsPartialSuccess {
                    rejected_log_records: i64::try_from(decoded.rejected).unwrap_or(i64::MAX),
                    error_message,
                }),
        }
    }

    /// Accepts one `POST /v1/health` heartbeat; `Err` says why it is invalid.
    pub fn export_health(&self, report: HealthReport) -> Result<HealthAck, String> {
        let labels = ProtocolLabels {
            protocol: Protocol::HttpJson.label(),
        };
        let event = validate(report).inspect_err(|_| {
            self.metrics
                .refused_health_events
                .get_or_create(&labels)
                .inc();
        })?;
        self.metrics.health_events.get_or_create(&labels).inc();
        Ok(match self.apply_beat(event) {
            BeatOutcome::Accepted => HealthAck {
                accepted: true,
                reason: None,
            },
            BeatOutcome::Stale { last } => HealthAck {
                accepted: false,
                reason: Some(format!("seq is not newer than the last one seen ({last})")),
            },
            BeatOutcome::Full => HealthAck {
                accepted: false,
                reason: Some("the registry is full; this instance is not tracked".into()),
            },
        })
    }

    fn apply_beat(&self, event: crate::decode::health::HealthEvent) -> BeatOutcome {
        match &self.registry {
            Some(registry) => registry.beat(event),
            None => BeatOutcome::Accepted,
        }
    }
}
