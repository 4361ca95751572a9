//! The guard that keeps telemetry alive, flushes it and shuts it down, and the scope of a
//! thread's default.

use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;

use super::{InitError, OtlpProtocol, exporters};
use crate::tracer;

/// Keeps the tracer provider alive; flushes the spans still buffered and shuts the exporter
/// down when dropped.
///
/// Dropping it blocks until the export is done (at most the export timeout). On a
/// current-thread Tokio runtime prefer [`TelemetryGuard::shutdown`]: the gRPC exporter's
/// connection runs on the runtime that a blocking drop would stall.
#[derive(Debug)]
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    pub(super) provider: SdkTracerProvider,
    pub(super) resource: Resource,
    /// The OTLP protocol and base URL spans go to (`None` with a custom exporter).
    pub(super) collector: Option<(OtlpProtocol, String)>,
    /// The TLS settings of the exporter, for the health reporter that follows it.
    pub(super) tls: crate::tls::ClientTls,
    pub(super) failures: std::sync::Arc<exporters::Failures>,
    pub(super) dispatch: Dispatch,
    pub(super) timeout: Duration,
    pub(super) shut_down: bool,
}

impl TelemetryGuard {
    /// The resource every span carries (`service.name`, `service.instance.id`, …).
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// A string attribute of the resource, e.g. `service.instance.id` (a fresh UUID unless
    /// one was given), for the health reporter to register under the same name.
    pub fn resource_attribute(&self, key: &'static str) -> Option<String> {
        self.resource
            .get(&opentelemetry::Key::from_static_str(key))
            .map(|value| value.to_string())
    }

    /// The OTLP protocol and collector base URL the spans go to; `None` when built with a
    /// custom exporter.
    pub fn collector(&self) -> Option<(OtlpProtocol, &str)> {
        self.collector.as_ref().map(|(p, url)| (*p, url.as_str()))
    }

    /// The TLS settings the exporter uses for an `https://` collector (what
    /// [`Telemetry::tls`](crate::Telemetry::tls) or the `OTEL_EXPORTER_OTLP_*CERTIFICATE`
    /// variables gave), for other clients of the same collector.
    pub fn collector_tls(&self) -> &crate::tls::ClientTls {
        &self.tls
    }

    /// Batches of spans, and spans, whose export failed so far (each failure is also a
    /// `tracing` warning, at most one every 10 s).
    pub fn export_failures(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.failures.batches.load(Ordering::Relaxed),
            self.failures.spans.load(Ordering::Relaxed),
        )
    }

    /// The tracer provider, for code that creates OpenTelemetry spans directly.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// The `tracing` dispatcher: the subscriber with the OpenTelemetry and log layers.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// Makes this telemetry the current thread's default, for `tracing` and for the layers'
    /// spans, until the returned guard is dropped. [`Telemetry::init`] makes it the process's
    /// default instead.
    ///
    /// ```
    /// use wayfinder_middleware::Telemetry;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let telemetry = Telemetry::new()
    ///     .service_name("orders")
    ///     .build_with_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
    ///     .unwrap();
    /// let _default = telemetry.set_default();
    /// tracing::info!("goes to this telemetry's log writer");
    /// # }
    /// ```
    pub fn set_default(&self) -> ScopedTelemetry {
        ScopedTelemetry {
            _tracer: tracer::set_scoped(tracer::from_provider(&self.provider)),
            _dispatch: tracing::dispatcher::set_default(&self.dispatch),
        }
    }

    /// Exports every finished span now, without blocking the runtime.
    pub async fn flush(&self) -> Result<(), InitError> {
        let provider = self.provider.clone();
        run_blocking(move || provider.force_flush()).await
    }

    /// Flushes and shuts down, without blocking the runtime.
    pub async fn shutdown(mut self) -> Result<(), InitError> {
        self.shut_down = true;
        let provider = self.provider.clone();
        let timeout = self.timeout;
        run_blocking(move || provider.shutdown_with_timeout(timeout)).await
    }
}

/// The guard of [`TelemetryGuard::set_default`]; restores the previous defaults when dropped.
#[derive(Debug)]
#[must_use = "the defaults are restored when this is dropped"]
pub struct ScopedTelemetry {
    _tracer: tracer::Scope,
    _dispatch: tracing::dispatcher::DefaultGuard,
}

async fn run_blocking(
    work: impl FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) -> Result<(), InitError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(InitError::from),
        Err(join) => Err(InitError::Flush(
            opentelemetry_sdk::error::OTelSdkError::InternalFailure(join.to_string()),
        )),
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        let shutdown = || {
            if let Err(error) = self.provider.shutdown_with_timeout(self.timeout) {
                eprintln!("wayfinder-middleware: flushing spans at shutdown failed: {error}");
            }
        };
        match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(shutdown),
            _ => shutdown(),
        }
    }
}
