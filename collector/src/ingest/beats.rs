//! Health events taken in: OTLP log records named `wayfinder.health` and `POST /v1/health`
//! beats, made durable (on the write-ahead log, or in fleet mode on the health topic) and then
//! applied to the registry; other log records are counted.

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message as _;
use std::time::SystemTime;
use wayfinder_api::health::{HealthAck, HealthReport};

use super::{Ingest, IngestError, Protocol, ProtocolLabels};
use crate::decode::health::{HealthEvent, decode_health_logs, validate};
use crate::graph::registry::BeatOutcome;
use crate::store::log::RecordKind;

/// Why a `POST /v1/health` heartbeat was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HealthRefusal {
    /// The heartbeat is not valid (400).
    #[error("{0}")]
    Invalid(String),
    /// The collector cannot take it now (503, retryable).
    #[error(transparent)]
    Refused(#[from] IngestError),
}

impl Ingest {
    /// Accepts the log records of one request: health events go to the registry (invalid ones
    /// are rejected through `partial_success`); other records are counted, not stored. With a
    /// write-ahead log, a request with health events is written to it first.
    pub async fn export_logs(
        &self,
        protocol: Protocol,
        request: &ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse, IngestError> {
        let decoded = decode_health_logs(request);
        if !decoded.events.is_empty() {
            self.persist_beats(&decoded.events, RecordKind::Logs, || {
                request.encode_to_vec()
            })
            .await
            .inspect_err(|e| self.refuse_request(protocol, e.reason()))?;
        }
        let labels = ProtocolLabels {
            protocol: protocol.label(),
        };
        self.metrics
            .accepted_log_records
            .get_or_create(&labels)
            .inc_by(decoded.other_records);
        let accepted = decoded.events.len() as u64;
        for event in decoded.events.iter().cloned() {
            self.apply_beat(event, None);
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
        Ok(ExportLogsServiceResponse {
            partial_success: decoded
                .message()
                .map(|error_message| ExportLogsPartialSuccess {
                    rejected_log_records: i64::try_from(decoded.rejected).unwrap_or(i64::MAX),
                    error_message,
                }),
        })
    }

    /// Accepts one `POST /v1/health` heartbeat (written to the write-ahead log first, if
    /// there is one).
    pub async fn export_health(&self, report: HealthReport) -> Result<HealthAck, HealthRefusal> {
        let labels = ProtocolLabels {
            protocol: Protocol::HttpJson.label(),
        };
        let event = validate(report.clone()).map_err(|message| {
            self.metrics
                .refused_health_events
                .get_or_create(&labels)
                .inc();
            HealthRefusal::Invalid(message)
        })?;
        self.persist_beats(std::slice::from_ref(&event), RecordKind::Health, || {
            serde_json::to_vec(&report).unwrap_or_default()
        })
        .await?;
        self.metrics.health_events.get_or_create(&labels).inc();
        let outcome = self.apply_beat(event, None);
        Ok(HealthAck {
            accepted: outcome == BeatOutcome::Accepted,
            reason: outcome.reason(),
        })
    }

    /// Makes health events durable before they are applied: in fleet mode on the health topic
    /// (every collector's registry takes them from there, this one's too), else as a record of
    /// the write-ahead log, if there is one.
    async fn persist_beats(
        &self,
        events: &[HealthEvent],
        kind: RecordKind,
        payload: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), IngestError> {
        #[cfg(feature = "kafka")]
        if let Some(producer) = &self.producer {
            let unavailable = |e: super::kafka::produce::ProduceError| match e {
                super::kafka::produce::ProduceError::Full => IngestError::Overloaded,
                super::kafka::produce::ProduceError::Unavailable(why) => {
                    IngestError::Unavailable(why)
                }
            };
            return producer
                .send_beats(events)
                .map_err(unavailable)?
                .acknowledged()
                .await
                .map_err(unavailable);
        }
        #[cfg(not(feature = "kafka"))]
        let _ = events;
        self.persist(kind, payload).await
    }

    /// Writes a record to the write-ahead log, if there is one, and waits until it is durable.
    async fn persist(
        &self,
        kind: RecordKind,
        payload: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), IngestError> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        if let Some(disk) = &self.disk
            && disk.is_low()
        {
            return Err(IngestError::DiskLow);
        }
        let unavailable =
            |e: crate::store::log::AppendError| IngestError::Unavailable(e.to_string());
        wal.append(kind, SystemTime::now(), &payload())
            .map_err(unavailable)?
            .durable()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(super) fn apply_beat(&self, event: HealthEvent, at: Option<SystemTime>) -> BeatOutcome {
        match (&self.registry, at) {
            (Some(registry), None) => registry.beat(event),
            (Some(registry), Some(at)) => registry.beat_at(event, at),
            (None, _) => BeatOutcome::Accepted,
        }
    }
}
