//! One-call setup: the tracer provider, the OTLP exporter, the `tracing` subscriber with
//! `tracing-opentelemetry` and correlated logs, from the standard `OTEL_*` variables or a
//! builder.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{SdkProvidedResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Dispatch;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::logs::TraceIdFormat;

mod env;
pub(crate) use env::{OtlpEnv, check_url};
mod exporters;
mod guard;
mod otlp;

pub use guard::{ScopedTelemetry, TelemetryGuard};

use crate::propagation::{Propagation, UnknownFormat};
use crate::tls::ClientTls;
use crate::tracer;
use env::invalid;

/// What can go wrong while setting up telemetry. Each error names the variable or setting at
/// fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// A variable holds a value this crate cannot use.
    #[error("{variable}={value:?}: {reason}")]
    InvalidVariable {
        /// The variable's name.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `OTEL_PROPAGATORS` names an unknown propagator.
    #[error("OTEL_PROPAGATORS: {0}")]
    Propagators(#[from] UnknownFormat),
    /// The gRPC exporter needs a Tokio runtime to run its connection on.
    #[error(
        "the OTLP/gRPC exporter needs a Tokio runtime: call init() from inside one, or use OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
    )]
    NoRuntime,
    /// OTLP/gRPC was asked for in a build without the `tonic` feature.
    #[error(
        "OTLP/gRPC needs the `tonic` feature of wayfinder-middleware: enable it, or use OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
    )]
    NoGrpc,
    /// The TLS settings cannot be used (a file missing or unreadable, a key without its
    /// certificate, no root certificates).
    #[error("OTLP exporter TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The OTLP/HTTP exporter's thread could not be started.
    #[error("the OTLP/HTTP exporter's thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global `tracing` subscriber was installed already.
    #[error("a global tracing subscriber is already installed: {0}")]
    SubscriberInstalled(#[from] tracing::dispatcher::SetGlobalDefaultError),
    /// Flushing or shutting down the tracer provider failed.
    #[error("flushing spans: {0}")]
    Flush(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtlpProtocol {
    /// OTLP/gRPC, default port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, default port 4318; the OpenTelemetry default.
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The collector's base URL when none is set: `http://localhost:4317` for gRPC,
    /// `http://localhost:4318` for HTTP (the specification's defaults).
    pub(crate) fn default_endpoint(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "http://localhost:4317",
            OtlpProtocol::HttpProtobuf => "http://localhost:4318",
        }
    }
}

/// Which sampler decides whether a new trace is recorded (`OTEL_TRACES_SAMPLER`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum SamplerKind {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with the ratio in `OTEL_TRACES_SAMPLER_ARG`.
    TraceIdRatio(f64),
    /// `parentbased_always_on`, the default: follow the caller's decision, record new roots.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerKind {
    fn sampler(self) -> Sampler {
        match self {
            SamplerKind::AlwaysOn => Sampler::AlwaysOn,
            SamplerKind::AlwaysOff => Sampler::AlwaysOff,
            SamplerKind::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            SamplerKind::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerKind::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerKind::ParentBasedTraceIdRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// One text line per event, `trace_id=… span_id=…` at the end.
    Text,
    /// One JSON object per event, `trace_id` and `span_id` first.
    Json,
}

/// Telemetry settings: start from [`Telemetry::from_env`] (the `OTEL_*` variables) or
/// [`Telemetry::new`] (defaults), change what you need, then [`Telemetry::init`].
///
/// ```no_run
/// use wayfinder_middleware::{OtlpProtocol, Telemetry};
///
/// # #[tokio::main] async fn main() -> Result<(), wayfinder_middleware::InitError> {
/// let _guard = Telemetry::from_env()?
///     .service_name("checkout")
///     .endpoint("http://127.0.0.1:4317")
///     .protocol(OtlpProtocol::Grpc)
///     .init()?;
/// tracing::info!("spans and logs are set up");
/// # Ok(()) }
/// ```
pub struct Telemetry {
    service_name: String,
    service_name_set: bool,
    resource: Vec<KeyValue>,
    endpoint: Option<String>,
    protocol: OtlpProtocol,
    propagation: Propagation,
    sampler: SamplerKind,
    log_format: LogFormat,
    log_filter: String,
    log_writer: Option<BoxMakeWriter>,
    span_filter: String,
    export_timeout: Duration,
    export_delay: Option<Duration>,
    /// The full URL of the traces signal (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), used as is.
    traces_endpoint: Option<String>,
    headers: Vec<(String, String)>,
    /// TLS for an `https://` endpoint.
    tls: ClientTls,
    exporter_kind: ExporterKind,
    /// What the variables said that is worth a warning once logging is up.
    warnings: Vec<String>,
}

/// Where spans go (`OTEL_TRACES_EXPORTER`; `OTEL_SDK_DISABLED=true` means `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExporterKind {
    /// OTLP to the collector (the default).
    Otlp,
    /// One JSON-ish line per span on standard output (`opentelemetry-stdout`).
    Console,
    /// Nowhere: spans are not exported.
    None,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("service_name", &self.service_name)
            .field("resource", &self.resource)
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("propagation", &self.propagation)
            .field("sampler", &self.sampler)
            .field("log_format", &self.log_format)
            .field("log_filter", &self.log_filter)
            .field("span_filter", &self.span_filter)
            .finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// The variables [`Telemetry::from_env`] reads.
pub const VARIABLES: &[&str] = &[
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
    "OTEL_PROPAGATORS",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "RUST_LOG",
    "WAYFINDER_LOG_FORMAT",
];

impl Telemetry {
    /// Defaults: service `unknown_service`, OTLP/HTTP to `http://localhost:4318`, W3C
    /// propagation, `parentbased_always_on`, text logs at `info`.
    pub fn new() -> Self {
        Telemetry {
            service_name: "unknown_service".to_owned(),
            service_name_set: false,
            resource: Vec::new(),
            endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            propagation: Propagation::default(),
            sampler: SamplerKind::ParentBasedAlwaysOn,
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            log_writer: None,
            span_filter: "info".to_owned(),
            export_timeout: Duration::from_secs(10),
            export_delay: None,
            traces_endpoint: None,
            headers: Vec::new(),
            tls: ClientTls::new(),
            exporter_kind: ExporterKind::Otlp,
            warnings: Vec::new(),
        }
    }

    /// `service.name`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self.service_name_set = true;
        self
    }

    /// `service.name`, unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` gave one: the
    /// name a service has when the deployment does not rename it.
    pub fn service_name_or(self, name: impl Into<String>) -> Self {
        if self.service_name_set {
            self
        } else {
            self.service_name(name)
        }
    }

    /// Adds a resource attribute (`service.namespace`, `service.version`,
    /// `deployment.environment.name`, `service.instance.id`, …).
    pub fn resource_attribute(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.resource.retain(|kv| kv.key.as_str() != key);
        self.resource.push(KeyValue::new(key, value.into()));
        self
    }

    /// `service.instance.id`; a fresh UUID when never given.
    pub fn instance_id(self, id: impl Into<String>) -> Self {
        self.resource_attribute("service.instance.id", id)
    }

    /// The collector's base URL (`http://host:port`, or `https://host:port` for TLS); for
    /// OTLP/HTTP `/v1/traces` is appended.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// TLS settings for an `https://` endpoint: the CA that signs the collector (the system's
    /// roots by default) and a client certificate for mutual TLS. From the environment they
    /// are `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, `_CLIENT_CERTIFICATE` and `_CLIENT_KEY`.
    /// The files are read by [`init`](Self::init) and [`build`](Self::build): a missing one is
    /// an error there.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = tls;
        self
    }

    /// The OTLP transport.
    pub fn protocol(mut self, protocol: OtlpProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The propagation the layers use (their `new()` starts from it) and OpenTelemetry's
    /// global text-map propagator.
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// The sampler.
    pub fn sampler(mut self, sampler: SamplerKind) -> Self {
        self.sampler = sampler;
        self
    }

    /// Text or JSON log lines.
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// Which events are logged, as an `EnvFilter` directive (`RUST_LOG`); default `info`.
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Which of the application's `tracing` spans become OpenTelemetry spans, as an
    /// `EnvFilter` directive; default `info`, which leaves out libraries' debug spans. The
    /// layers' own spans are OpenTelemetry spans from the start: the sampler and the server
    /// layer's path filter decide about them, not this filter or `RUST_LOG`.
    pub fn span_filter(mut self, filter: impl Into<String>) -> Self {
        self.span_filter = filter.into();
        self
    }

    /// How long a finished span may wait before its batch is exported: the batch span
    /// processor's schedule delay. Default: `OTEL_BSP_SCHEDULE_DELAY` (milliseconds, read by
    /// the SDK), else 5 s. Shorter means the collector's graph and weights follow sooner, at
    /// the cost of more, smaller export requests.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let telemetry = wayfinder_middleware::Telemetry::new().export_delay(Duration::from_secs(1));
    /// # let _ = telemetry;
    /// ```
    pub fn export_delay(mut self, delay: Duration) -> Self {
        self.export_delay = Some(delay);
        self
    }

    /// Where log lines go; standard output by default.
    pub fn log_writer(mut self, writer: BoxMakeWriter) -> Self {
        self.log_writer = Some(writer);
        self
    }

    /// Builds everything and installs it process-wide: the `tracing` subscriber as the global
    /// default, the tracer provider and the propagation as OpenTelemetry's globals.
    pub fn init(self) -> Result<TelemetryGuard, InitError> {
        let propagation = self.propagation.clone();
        let warnings = self.warnings.clone();
        let guard = self.build()?;
        tracing::dispatcher::set_global_default(guard.dispatch.clone())?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        opentelemetry::global::set_tracer_provider(guard.provider.clone());
        tracer::install(tracer::from_provider(&guard.provider));
        opentelemetry::global::set_text_map_propagator(propagation.clone());
        propagation.install();
        Ok(guard)
    }

    /// Builds everything without installing anything globally; [`TelemetryGuard::set_default`]
    /// makes it the current thread's default (for example one runtime thread per service, to
    /// run several services in one process).
    pub fn build(self) -> Result<TelemetryGuard, InitError> {
        // Endpoints set in code are checked as the variables are.
        if self.exporter_kind == ExporterKind::Otlp {
            if let Some(endpoint) = &self.endpoint {
                env::check_endpoint("endpoint", endpoint)?;
            }
            if let Some(endpoint) = &self.traces_endpoint {
                env::check_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)?;
            }
        }
        match self.exporter_kind {
            ExporterKind::Otlp => {
                let failures = std::sync::Arc::new(exporters::Failures::default());
                let exporter = self.exporter(failures.cause.clone())?;
                let collector = (self.protocol, self.base_endpoint());
                let tls = self.tls.clone();
                let mut guard = self.build_with(exporter, failures)?;
                guard.collector = Some(collector);
                guard.tls = tls;
                Ok(guard)
            }
            ExporterKind::Console => {
                self.build_with_exporter(opentelemetry_stdout::SpanExporter::default())
            }
            ExporterKind::None => self.build_with_exporter(exporters::NoExporter),
        }
    }

    /// Where spans go (`OTEL_TRACES_EXPORTER`): OTLP by default.
    pub fn exporter_kind(mut self, kind: ExporterKind) -> Self {
        self.exporter_kind = kind;
        self
    }

    /// The collector's base URL the exporter uses: the one set, else the protocol's default.
    fn base_endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| self.protocol.default_endpoint().to_owned())
    }

    /// Like [`Telemetry::build`], with spans going to `exporter` (through the batch processor)
    /// instead of OTLP.
    pub fn build_with_exporter<E>(self, exporter: E) -> Result<TelemetryGuard, InitError>
    where
        E: opentelemetry_sdk::trace::SpanExporter + 'static,
    {
        self.build_with(exporter, std::sync::Arc::default())
    }

    fn build_with<E>(
        self,
        exporter: E,
        failures: std::sync::Arc<exporters::Failures>,
    ) -> Result<TelemetryGuard, InitError>
    where
        E: opentelemetry_sdk::trace::SpanExporter + 'static,
    {
        let exporter = exporters::Counted::new(exporter, failures.clone());
        let span_filter = EnvFilter::try_new(&self.span_filter)
            .map_err(|error| invalid("span filter", &self.span_filter, &error.to_string()))?;
        let log_filter = EnvFilter::try_new(&self.log_filter)
            .map_err(|error| invalid("RUST_LOG", &self.log_filter, &error.to_string()))?;
        let mut resource = self.resource;
        if !resource
            .iter()
            .any(|kv| kv.key.as_str() == "service.instance.id")
        {
            resource.push(KeyValue::new(
                "service.instance.id",
                uuid::Uuid::new_v4().to_string(),
            ));
        }
        resource.retain(|kv| kv.key.as_str() != "service.name");
        let resource = Resource::builder_empty()
            .with_detectors(&[
                Box::new(SdkProvidedResourceDetector),
                Box::new(TelemetryResourceDetector),
            ])
            .with_attributes(resource)
            .with_service_name(self.service_name)
            .build();
        let mut batch = opentelemetry_sdk::trace::BatchConfigBuilder::default();
        if let Some(delay) = self.export_delay {
            batch = batch.with_scheduled_delay(delay);
        }
        let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(self.sampler.sampler())
            .with_resource(resource.clone())
            .build();
        let tracer = provider.tracer("tracing-opentelemetry");
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_target(false)
            .with_level(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(span_filter);
        let writer = self
            .log_writer
            .unwrap_or_else(|| BoxMakeWriter::new(std::io::stdout));
        let logs = match self.log_format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .event_format(TraceIdFormat::text(
                    tracing_subscriber::fmt::format().with_ansi(false),
                ))
                .with_filter(log_filter)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(writer)
                .event_format(TraceIdFormat::json(
                    tracing_subscriber::fmt::format().json(),
                ))
                .with_filter(log_filter)
                .boxed(),
        };
        let subscriber = tracing_subscriber::registry().with(spans).with(logs);
        Ok(TelemetryGuard {
            resource,
            collector: None,
            tls: ClientTls::new(),
            failures,
            provider,
            dispatch: Dispatch::new(subscriber),
            timeout: self.export_timeout,
            shut_down: false,
        })
    }
}

/// Sets up telemetry from the `OTEL_*` variables and installs it process-wide; keep the guard
/// alive for as long as the service runs.
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let telemetry = wayfinder_middleware::init()?;
///     // … serve …
///     telemetry.shutdown().await?;
///     Ok(())
/// }
/// ```
pub fn init() -> Result<TelemetryGuard, InitError> {
    Telemetry::from_env()?.init()
}

#[cfg(test)]
mod tests;
