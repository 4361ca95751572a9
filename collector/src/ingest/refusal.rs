//! Why a request or its spans were refused: one name per reason, as the refusal metrics'
//! `reason` label says it, and whether the client should send it again.

/// Why a request (or spans of it) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The ingest queue is full.
    QueueFull,
    /// The span store is over its budget with nothing it may evict.
    StoreFull,
    /// The data directory's disk is below its reserve.
    DiskLow,
    /// The collector is shutting down.
    ShuttingDown,
    /// The write-ahead log could not make the request durable.
    Persistence,
    /// The request is not valid OTLP.
    Malformed,
    /// The message or body is larger than allowed, after decompression.
    TooLarge,
    /// The body did not arrive in full within `--body-read-timeout`.
    BodyTimeout,
    /// A body in a format the receiver does not take.
    UnsupportedMediaType,
    /// A body in an encoding the receiver does not take.
    UnsupportedEncoding,
    /// A heartbeat that is not valid.
    InvalidHealthEvent,
    /// A bug, not bad input.
    Internal,
}

impl Refusal {
    /// The `reason` label of `wayfinder_receiver_refused_requests_total` and
    /// `wayfinder_receiver_refused_spans_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::StoreFull => "store_full",
            Refusal::DiskLow => "disk_low",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Persistence => "persistence",
            Refusal::Malformed => "malformed",
            Refusal::TooLarge => "too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::UnsupportedEncoding => "unsupported_encoding",
            Refusal::InvalidHealthEvent => "invalid_health_event",
            Refusal::Internal => "internal",
        }
    }

    /// Whether the client should send the same request again later (`UNAVAILABLE` with
    /// `RetryInfo`, 503 with `Retry-After`): the collector is short of room or stopping, not
    /// the request wrong.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Refusal::QueueFull
                | Refusal::StoreFull
                | Refusal::DiskLow
                | Refusal::ShuttingDown
                | Refusal::Persistence
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_label_and_only_want_of_room_is_retried() {
        // (reason, label, retryable, why)
        let table = [
            (Refusal::QueueFull, "queue_full", true, "the queue drains"),
            (
                Refusal::StoreFull,
                "store_full",
                true,
                "sealing frees memory",
            ),
            (Refusal::DiskLow, "disk_low", true, "sealing frees the disk"),
            (
                Refusal::ShuttingDown,
                "shutting_down",
                true,
                "another collector, or later",
            ),
            (
                Refusal::Persistence,
                "persistence",
                true,
                "the log catches up",
            ),
            (
                Refusal::Malformed,
                "malformed",
                false,
                "the same bytes fail again",
            ),
            (
                Refusal::TooLarge,
                "too_large",
                false,
                "the same size fails again",
            ),
            (
                Refusal::BodyTimeout,
                "body_timeout",
                false,
                "the client was too slow",
            ),
            (
                Refusal::UnsupportedMediaType,
                "unsupported_media_type",
                false,
                "a wrong type",
            ),
            (
                Refusal::UnsupportedEncoding,
                "unsupported_encoding",
                false,
                "a wrong encoding",
            ),
            (
                Refusal::InvalidHealthEvent,
                "invalid_health_event",
                false,
                "a bad beat",
            ),
            (Refusal::Internal, "internal", false, "a bug"),
        ];
        let mut labels = std::collections::BTreeSet::new();
        for (reason, label, retryable, why) in table {
            assert_eq!(reason.label(), label, "{why}");
            assert_eq!(reason.retryable(), retryable, "{why}");
            assert!(labels.insert(label), "{label} is one reason's");
        }
    }
}
