//! The OTLP receivers: gRPC ([`grpc`]) and HTTP ([`http`]), both handing requests to one
//! [`Ingest`], which decodes them once and queues the result.

mod beats;
pub(crate) mod grpc;
pub mod http;
pub(crate) mod kafka;
mod metrics;
pub(crate) mod pool;
mod refusal;
pub(crate) mod replay;
mod settings;

pub(crate) use beats::HealthRefusal;
pub use refusal::Refusal;
pub use settings::IngestSettings;

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::time::SystemTime;

use prost::Message as _;

use crate::decode::{
    DecodeError, DecodeOptions, DecodedTraces, decode_traces_wire_with, decode_traces_with,
};
use crate::graph::registry::Registry;
use crate::metrics::Metrics;
use crate::pipeline::{IngestQueue, Refusal as QueueRefusal, Reservation};
use crate::store::log::{RecordKind, Ticket, Wal};
pub(crate) use metrics::{IngestMetrics, ProtocolLabels, RefusalLabels};

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
    /// The span store is over its memory budget with nothing it may evict (spans waiting to
    /// be sealed to disk): retry later.
    #[error("the collector's span store is full until it seals to disk; retry later")]
    StoreFull,
    /// The data directory's disk is below `--disk-reserve`: what is left is kept for
    /// sealing, which frees the log's space: retry later.
    #[error(
        "the collector's disk is below its reserve (--disk-reserve) until sealing frees space; retry later"
    )]
    DiskLow,
    /// The collector is shutting down: retry against another one, or later.
    #[error("the collector is shutting down; retry later")]
    ShuttingDown,
    /// The request is not valid OTLP (the receiver counts it as `malformed`).
    #[error("{0}")]
    Malformed(String),
    /// The request could not be made durable (the write-ahead log could not write it, or is
    /// behind): nothing of it is kept; retry later.
    #[error("the collector cannot persist the request now ({0}); retry later")]
    Unavailable(String),
    /// The request could not be turned into Arrow (a bug, not bad input).
    #[error("internal error while storing spans: {0}")]
    Internal(String),
}

impl IngestError {
    /// Why, as the refusal metrics count it.
    pub fn reason(&self) -> Refusal {
        match self {
            IngestError::Overloaded => Refusal::QueueFull,
            IngestError::StoreFull => Refusal::StoreFull,
            IngestError::DiskLow => Refusal::DiskLow,
            IngestError::ShuttingDown => Refusal::ShuttingDown,
            IngestError::Malformed(_) => Refusal::Malformed,
            IngestError::Unavailable(_) => Refusal::Persistence,
            IngestError::Internal(_) => Refusal::Internal,
        }
    }
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
    metrics: Arc<IngestMetrics>,
    /// What is taken from each span beyond the batch: the facts (off when the topology is
    /// off), configured attributes, the sampling weight.
    options: Arc<DecodeOptions>,
    /// Where health events go.
    registry: Option<Arc<Registry>>,
    /// Where every accepted request is written before it is acknowledged (`--data-dir`).
    wal: Option<Wal>,
    /// The store, asked whether it is over a budget it cannot evict from.
    store: Option<Arc<dyn crate::store::SpanStore>>,
    /// The data directory's disk, asked whether it is below its reserve.
    disk: Option<crate::store::log::DiskWatch>,
    /// Fleet mode: accepted spans go to the brokers, not to this collector's queue.
    #[cfg(feature = "kafka")]
    producer: Option<kafka::produce::SpanProducer>,
}

/// A decoded trace request on its way in: its share of the queue taken and, with a
/// write-ahead log, its record on the way to disk. [`Ingest::commit_traces`] finishes it.
#[derive(Debug)]
#[must_use = "a prepared request is acknowledged only once committed"]
pub struct PreparedTraces {
    protocol: Protocol,
    decoded: DecodedTraces,
    reservation: Option<Reservation>,
    ticket: Option<Ticket>,
    /// Fleet mode: the messages on their way to the brokers.
    #[cfg(feature = "kafka")]
    produced: Option<kafka::produce::Produced>,
}

impl Ingest {
    /// Receivers that push into `queue`; their figures are registered in `metrics`.
    pub fn new(queue: IngestQueue, metrics: Arc<Metrics>) -> Self {
        Self {
            queue,
            pool: pool::DecodePool::default(),
            metrics: Arc::new(IngestMetrics::register(&metrics)),
            options: Arc::new(DecodeOptions::default()),
            registry: None,
            wal: None,
            store: None,
            disk: None,
            #[cfg(feature = "kafka")]
            producer: None,
        }
    }

    /// Fleet mode: hands accepted spans to the brokers through `producer`, and answers once
    /// they have them; the spans come back through the consumer group.
    #[cfg(feature = "kafka")]
    pub(crate) fn with_producer(mut self, producer: kafka::produce::SpanProducer) -> Self {
        self.producer = Some(producer);
        self
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

    /// Writes every accepted request to `wal` before acknowledging it.
    pub fn with_wal(mut self, wal: Wal) -> Self {
        self.wal = Some(wal);
        self
    }

    /// Refuses requests, retryably, while `store` is over a budget it cannot evict from
    /// ([`SpanStore::over_budget`](crate::store::SpanStore::over_budget)).
    pub fn with_store(mut self, store: Arc<dyn crate::store::SpanStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Refuses requests, retryably, while the data directory's disk is below its reserve.
    pub fn with_disk(mut self, disk: crate::store::log::DiskWatch) -> Self {
        self.disk = Some(disk);
        self
    }

    /// Why nothing more can be taken now, if so: the store over a budget it cannot evict
    /// from, or the disk below its reserve.
    fn full(&self) -> Option<IngestError> {
        if self.store.as_ref().is_some_and(|store| store.over_budget()) {
            Some(IngestError::StoreFull)
        } else if self
            .disk
            .as_ref()
            .is_some_and(crate::store::log::DiskWatch::is_low)
        {
            Some(IngestError::DiskLow)
        } else {
            None
        }
    }

    /// Counts a request refused before it could be decoded (bad body, wrong type, too large).
    pub fn refuse_request(&self, protocol: Protocol, reason: Refusal) {
        // Shutting down is said once, at shutdown.
        let short_of_room = reason.retryable() && reason != Refusal::ShuttingDown;
        if short_of_room && self.metrics.refusal_log.ready() {
            tracing::warn!(
                reason = reason.label(),
                protocol = protocol.label(),
                "refusing requests with a retryable error; exporters retry (logged at most once a minute; counted in wayfinder_receiver_refused_requests_total)"
            );
        }
        self.metrics
            .refused_requests
            .get_or_create(&RefusalLabels {
                protocol: protocol.label(),
                reason: reason.label(),
            })
            .inc();
    }

    /// Whether the queue has room for a request of `bytes` on the wire; refuses (and counts) it if
    /// not, before it is decoded.
    pub fn check_room(&self, protocol: Protocol, bytes: usize) -> Result<(), IngestError> {
        if let Some(full) = self.full() {
            self.refuse_request(protocol, full.reason());
            Err(full)
        } else if self.queue.has_room(bytes) {
            Ok(())
        } else {
            self.refuse_request(protocol, Refusal::QueueFull);
            Err(IngestError::Overloaded)
        }
    }

    /// Validates, decodes and queues the spans of one request ([`Ingest::prepare_traces`]
    /// then [`Ingest::commit_traces`]).
    pub async fn export_traces(
        &self,
        protocol: Protocol,
        request: TraceRequest<'_>,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let prepared = self.prepare_traces(protocol, request)?;
        self.commit_traces(prepared).await
    }

    /// The CPU part of taking a request (run it on the decode pool): decodes it, takes its
    /// share of the queue and, with a write-ahead log, hands the log a copy. Refusals are
    /// counted here.
    pub fn prepare_traces(
        &self,
        protocol: Protocol,
        request: TraceRequest<'_>,
    ) -> Result<PreparedTraces, IngestError> {
        let decoded = match request {
            TraceRequest::Protobuf(bytes) => decode_traces_wire_with(bytes, &self.options),
            TraceRequest::Message(message) => {
                decode_traces_with(message, &self.options).map_err(DecodeError::from)
            }
        };
        let decoded = decoded.map_err(|e| match e {
            DecodeError::Malformed(_) => IngestError::Malformed(e.to_string()),
            DecodeError::Arrow(_) => {
                self.refuse_request(protocol, Refusal::Internal);
                IngestError::Internal(e.to_string())
            }
        })?;
        let Some(batch) = &decoded.batch else {
            // Nothing accepted: nothing to queue or persist.
            return Ok(PreparedTraces {
                protocol,
                decoded,
                reservation: None,
                ticket: None,
                #[cfg(feature = "kafka")]
                produced: None,
            });
        };
        if let Some(error) = self.full() {
            self.refuse_traces(protocol, &decoded, &error);
            return Err(error);
        }
        #[cfg(feature = "kafka")]
        if let Some(producer) = &self.producer {
            let produced = self.produce(producer, protocol, request, &decoded)?;
            return Ok(PreparedTraces {
                protocol,
                decoded,
                reservation: None,
                ticket: None,
                produced: Some(produced),
            });
        }
        let bytes = IngestQueue::bytes_of(batch, &decoded.facts);
        let reservation = self.queue.try_reserve(bytes).map_err(|refusal| {
            let error = match refusal {
                QueueRefusal::Full => IngestError::Overloaded,
                _ => IngestError::ShuttingDown,
            };
            self.refuse_traces(protocol, &decoded, &error);
            error
        })?;
        let ticket = match &self.wal {
            None => None,
            Some(wal) => {
                let appended = match request {
                    TraceRequest::Protobuf(bytes) => {
                        wal.append(RecordKind::Traces, SystemTime::now(), bytes)
                    }
                    TraceRequest::Message(message) => wal.append(
                        RecordKind::Traces,
                        SystemTime::now(),
                        &message.encode_to_vec(),
                    ),
                };
                Some(appended.map_err(|e| {
                    let error = IngestError::Unavailable(e.to_string());
                    self.refuse_traces(protocol, &decoded, &error);
                    error
                })?)
            }
        };
        Ok(PreparedTraces {
            protocol,
            decoded,
            reservation: Some(reservation),
            ticket,
            #[cfg(feature = "kafka")]
            produced: None,
        })
    }

    /// Waits until the request is as durable as the write-ahead log promises (at once without
    /// one), then queues its spans and answers.
    pub async fn commit_traces(
        &self,
        prepared: PreparedTraces,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let PreparedTraces {
            protocol,
            decoded,
            reservation,
            ticket,
            #[cfg(feature = "kafka")]
            produced,
        } = prepared;
        #[cfg(feature = "kafka")]
        if let Some(produced) = produced
            && let Err(refused) = produced.acknowledged().await
        {
            let error = IngestError::Unavailable(refused.to_string());
            self.refuse_traces(protocol, &decoded, &error);
            return Err(error);
        }
        let mut seq = None;
        if let Some(ticket) = ticket {
            match ticket.durable().await {
                Ok(logged) => seq = Some(logged),
                Err(e) => {
                    let error = IngestError::Unavailable(e.to_string());
                    self.refuse_traces(protocol, &decoded, &error);
                    return Err(error);
                }
            }
        }
        let accepted = decoded.accepted();
        if let (Some(reservation), Some(batch)) = (reservation, decoded.batch) {
            // Only a closed queue refuses a reserved push, and the receivers stop before it
            // closes; if it does come, the spans are in the log and the client retries.
            if reservation.push(batch, decoded.facts, seq).is_err() {
                let error = IngestError::ShuttingDown;
                self.refuse_request(protocol, error.reason());
                self.count_refused_spans(protocol, error.reason().label(), accepted as u64);
                return Err(error);
            }
        }
        self.metrics
            .accepted_spans
            .get_or_create(&ProtocolLabels {
                protocol: protocol.label(),
            })
            .inc_by(accepted as u64);
        for (reason, count) in decoded.rejections.by_reason() {
            if count > 0 {
                self.count_refused_spans(protocol, reason, count);
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

    /// Counts a whole decoded request as refused for `error`.
    fn refuse_traces(&self, protocol: Protocol, decoded: &DecodedTraces, error: &IngestError) {
        self.refuse_request(protocol, error.reason());
        let all = decoded.accepted() as u64 + decoded.rejections.total();
        self.count_refused_spans(protocol, error.reason().label(), all);
    }

    /// Counts spans refused for `reason` (a [`Refusal`]'s label, or a span's own from the
    /// decoder).
    fn count_refused_spans(&self, protocol: Protocol, reason: &'static str, count: u64) {
        self.metrics
            .refused_spans
            .get_or_create(&RefusalLabels {
                protocol: protocol.label(),
                reason,
            })
            .inc_by(count);
    }
}

#[cfg(test)]
mod tests;
