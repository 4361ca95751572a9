//! The exporters around the configured one. [`Counted`] makes export failures visible: the SDK's batch processor drops a failed export quietly (its
//! internal logs are off in this build), so the exporter is wrapped to count every failed
//! batch and its spans, and to say so in a `tracing` warning at most once every
//! [`WARN_EVERY`], with the count since the last warning.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use parking_lot::Mutex;

/// At most one warning this often.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// What failed to export, shared with the [`TelemetryGuard`](crate::TelemetryGuard).
#[derive(Debug, Default)]
pub(crate) struct Failures {
    pub(crate) batches: AtomicU64,
    pub(crate) spans: AtomicU64,
    /// When the last warning was written, and the failed batches since.
    last_warning: Mutex<(Option<Instant>, u64)>,
    /// The last failure's cause, as the exporter's client saw it: the OTLP/HTTP exporter says
    /// only "network error", the client knows a certificate did not verify.
    pub(crate) cause: crate::tls::LastError,
}

impl Failures {
    fn record(&self, spans: usize, error: &dyn std::fmt::Display) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        let mut last = self.last_warning.lock();
        last.1 += 1;
        let due = last.0.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            let batches = std::mem::take(&mut last.1);
            last.0 = Some(Instant::now());
            drop(last);
            let cause = self
                .cause
                .lock()
                .take()
                .map(|cause| format!(" ({cause})"))
                .unwrap_or_default();
            tracing::warn!(
                target: "wayfinder_middleware::export",
                failed_batches = batches,
                failed_spans_total = self.spans.load(Ordering::Relaxed),
                "span export failed: {error}{cause}"
            );
        }
    }
}

/// A span exporter that counts its failures.
#[derive(Debug)]
pub(crate) struct Counted<E> {
    inner: E,
    failures: Arc<Failures>,
}

impl<E> Counted<E> {
    pub(crate) fn new(inner: E, failures: Arc<Failures>) -> Self {
        Counted { inner, failures }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(error) = &result {
            self.failures.record(spans, error);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A span exporter that drops everything (`OTEL_TRACES_EXPORTER=none`, `OTEL_SDK_DISABLED`).
#[derive(Debug)]
pub(crate) struct NoExporter;

impl opentelemetry_sdk::trace::SpanExporter for NoExporter {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}
