//! Health reporting: the instance registers itself with the collector and beats, staggered,
//! with the status of its own checks, and leaves with `down`.
//!
//! - [`HealthReporter`] builds the reporter: the instance (`service.name`,
//!   `service.instance.id`, the address it serves on), the transport (OTLP/gRPC logs to the
//!   tracer's endpoint, or `POST /v1/health`), the interval (5 s), the TTL (15 s, three
//!   intervals) and the checks.
//! - The reporter is one task with its own timer: it never sits on the request path. The first
//!   beat comes after a random delay in `[0, interval)`, the next ones every `interval ± 20%`
//!   (Consul's stagger), so that a fleet started together never beats together. When a send
//!   fails it backs off (`[cap/2, cap]`, `cap = min(interval × 2ⁿ, ttl)`) and resumes with the
//!   current state.
//! - Checks come in two tiers ([`HealthReporter::liveness`] on every beat,
//!   [`HealthReporter::check`] at its own lower rate with a timeout and a cached result). A
//!   failing check gives `warning`, and `critical` only after `failures_before_critical` (3)
//!   failures in a row.
//! - `seq` starts at the wall clock in milliseconds and grows by one a beat, so that it also
//!   grows across restarts (the collector ignores beats older than the last one it saw).
//! - [`Health::shutdown`] stops the beats and sends `down`; [`Health::routes`] is an axum
//!   router with `/readyz` and `/livez`, and [`Health::tonic_service`] the standard gRPC health
//!   service, that reflect the same state.
//! - [`GracefulShutdown`] is the sequence on SIGTERM: `down` first, a drain period, then the
//!   servers stop accepting and finish what is in flight, up to a deadline.
//!
//! ```no_run
//! use std::time::Duration;
//! use wayfinder_middleware::health::HealthReporter;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let health = HealthReporter::new("orders", "orders-1")
//!     .address("10.0.0.7:8080")
//!     .http("http://127.0.0.1:4318")
//!     .check("database", Duration::from_secs(30), Duration::from_secs(2), || async {
//!         Ok(()) // e.g. `SELECT 1`
//!     })
//!     .start()?;
//! let app: axum::Router = axum::Router::new().merge(health.routes());
//! // … serve `app`; on the way out:
//! health.shutdown().await;
//! # Ok(()) }
//! ```

mod checks;
#[cfg(feature = "tonic")]
mod grpc;
mod schedule;
mod shutdown;
mod transport;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

#[cfg(feature = "axum")]
use axum::{Router, http::StatusCode, routing::get};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use wayfinder_api::health::HealthReport;

pub use checks::{CheckResult, Status};
pub use shutdown::{DeadlinePassed, GracefulShutdown};

use checks::Check;
use transport::Transport;

/// Builds the health reporter of one instance.
#[must_use]
pub struct HealthReporter {
    service: String,
    instance_id: String,
    address: Option<String>,
    transport: Option<Result<Transport, String>>,
    interval: Duration,
    ttl: Duration,
    failures_before_critical: u32,
    checks: Vec<Check>,
    /// The `authorization` header value sent with every beat (never shown by `Debug`).
    authorization: Option<String>,
}

impl std::fmt::Debug for HealthReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthReporter")
            .field("service", &self.service)
            .field("instance_id", &self.instance_id)
            .field("address", &self.address)
            .field("interval", &self.interval)
            .field("ttl", &self.ttl)
            .field("checks", &self.checks)
            .finish_non_exhaustive()
    }
}

/// Why the reporter could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// No transport, or a bad endpoint.
    #[error("health reporter: {0}")]
    Config(String),
}

/// How long one send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

impl HealthReporter {
    /// The reporter of instance `instance_id` of `service`; beats every 5 s with a 15 s TTL.
    pub fn new(service: impl Into<String>, instance_id: impl Into<String>) -> Self {
        HealthReporter {
            service: service.into(),
            instance_id: instance_id.into(),
            address: None,
            transport: None,
            interval: Duration::from_secs(5),
            ttl: Duration::from_secs(15),
            failures_before_critical: 3,
            checks: Vec::new(),
            authorization: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every beat, for a collector started with
    /// `--ingest-token-file` (the token of its OTLP ports).
    pub fn bearer_token(mut self, token: &str) -> Self {
        self.authorization = Some(format!("Bearer {}", token.trim()));
        self
    }

    /// The reporter of the instance `telemetry` names, beating to the collector its spans go
    /// to: its `service.name` and `service.instance.id` (so that beats and spans are one
    /// instance at the collector), and its OTLP endpoint and protocol (OTLP/gRPC log events
    /// for `grpc`, `POST /v1/health` for `http/protobuf`). With a custom span exporter set a
    /// transport yourself.
    pub fn for_telemetry(telemetry: &crate::TelemetryGuard) -> Self {
        let reporter = HealthReporter::new(
            telemetry
                .resource_attribute("service.name")
                .unwrap_or_else(|| "unknown_service".to_owned()),
            telemetry
                .resource_attribute("service.instance.id")
                .unwrap_or_default(),
        );
        match telemetry.collector() {
            Some((crate::OtlpProtocol::Grpc, endpoint)) => reporter.otlp_grpc(endpoint),
            Some((crate::OtlpProtocol::HttpProtobuf, endpoint)) => reporter.http(endpoint),
            None => reporter,
        }
    }

    /// Where it serves (`host:port`): the address the collector gives balancers.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Beats as `wayfinder.health` OTLP log events to the OTLP/gRPC `endpoint`
    /// (`http://host:4317`, the tracer's).
    pub fn otlp_grpc(mut self, endpoint: &str) -> Self {
        self.transport = Some(Transport::otlp_grpc(endpoint, SEND_TIMEOUT));
        self
    }

    /// Beats as JSON to `POST /v1/health` on the collector's OTLP/HTTP `base`
    /// (`http://host:4318`).
    pub fn http(mut self, base: &str) -> Self {
        self.transport = Some(Transport::http(base, SEND_TIMEOUT));
        self
    }

    /// The transport from `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_EXPORTER_OTLP_PROTOCOL`, as
    /// the tracer reads them: `POST /v1/health` for `http/protobuf` (the default, as for the
    /// tracer, `http://localhost:4318`), OTLP/gRPC log events for `grpc`
    /// (`http://localhost:4317`).
    pub fn endpoint_from_env(self) -> Self {
        self.endpoint_from(|name| std::env::var(name).ok())
    }

    /// [`endpoint_from_env`](Self::endpoint_from_env) over another source of variables.
    pub fn endpoint_from(self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let protocol = lookup("OTEL_EXPORTER_OTLP_PROTOCOL")
            .unwrap_or_else(|| "http/protobuf".to_owned())
            .trim()
            .to_ascii_lowercase();
        let endpoint = lookup("OTEL_EXPORTER_OTLP_ENDPOINT");
        // The exporter's headers, as the tracer reads them: the collector's token goes there.
        let mut this = self;
        if let Some(value) = lookup("OTEL_EXPORTER_OTLP_HEADERS") {
            match crate::init::parse_headers("OTEL_EXPORTER_OTLP_HEADERS", &value) {
                Ok(headers) => {
                    if let Some((_, value)) =
                        headers.into_iter().find(|(k, _)| k == "authorization")
                    {
                        this.authorization = Some(value);
                    }
                }
                Err(error) => {
                    this.transport = Some(Err(error.to_string()));
                    return this;
                }
            }
        }
        let this = this;
        match protocol.as_str() {
            "grpc" => {
                let endpoint = endpoint.unwrap_or_else(|| "http://localhost:4317".to_owned());
                this.otlp_grpc(&endpoint)
            }
            "http/protobuf" | "http/json" => {
                let endpoint = endpoint.unwrap_or_else(|| "http://localhost:4318".to_owned());
                this.http(&endpoint)
            }
            other => {
                let mut this = this;
                this.transport = Some(Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not grpc, http/protobuf or http/json"
                )));
                this
            }
        }
    }

    /// Beats every `interval` (±20%); the TTL stays as set (default 15 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long a beat holds at the collector (default 15 s, three intervals).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Failures in a row of one check that make the instance `critical` (default 3).
    pub fn failures_before_critical(mut self, n: u32) -> Self {
        self.failures_before_critical = n.max(1);
        self
    }

    /// A cheap liveness check, run on every beat (with a 1 s timeout).
    pub fn liveness<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckResult> + Send + 'static,
    {
        self.checks.push(Check::new(
            "liveness".into(),
            None,
            Duration::from_secs(1),
            check,
        ));
        self
    }

    /// A heavy check (a database, a downstream), run every `every` with a `timeout`; its last
    /// result counts between runs.
    pub fn check<F, Fut>(
        mut self,
        name: impl Into<String>,
        every: Duration,
        timeout: Duration,
        check: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckResult> + Send + 'static,
    {
        self.checks
            .push(Check::new(name.into(), Some(every), timeout, check));
        self
    }

    /// Starts beating on the current tokio runtime.
    pub fn start(self) -> Result<Health, HealthError> {
        let transport = match self.transport {
            None => {
                return Err(HealthError::Config(
                    "no transport: call otlp_grpc, http or endpoint_from_env".to_owned(),
                ));
            }
            Some(Err(message)) => return Err(HealthError::Config(message)),
            Some(Ok(transport)) => transport
                .with_authorization(self.authorization.as_deref())
                .map_err(HealthError::Config)?,
        };
        if self.interval.is_zero() || self.ttl < self.interval {
            return Err(HealthError::Config(format!(
                "the TTL ({:?}) must be at least the interval ({:?}), which must be positive",
                self.ttl, self.interval
            )));
        }
        // The process's start: its incarnation, and the first `seq` (so that a collector that
        // orders by `seq` alone also takes a restart's beats as newer).
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let (status, _) = watch::channel(Status::Passing);
        let shared = Arc::new(Shared {
            service: self.service,
            instance_id: self.instance_id,
            address: self.address,
            ttl: self.ttl,
            transport,
            seq: AtomicU64::new(started),
            incarnation: started,
            status,
            output: Mutex::new(None),
            stop: Notify::new(),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let task = tokio::spawn(beat(
            shared.clone(),
            self.checks,
            self.interval,
            self.failures_before_critical,
        ));
        Ok(Health {
            shared,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }
}

struct Shared {
    service: String,
    instance_id: String,
    address: Option<String>,
    ttl: Duration,
    transport: Transport,
    seq: AtomicU64,
    incarnation: u64,
    status: watch::Sender<Status>,
    output: Mutex<Option<String>>,
    stop: Notify,
    sent: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    fn report(&self, status: Status) -> HealthReport {
        HealthReport {
            service: self.service.clone(),
            instance_id: self.instance_id.clone(),
            address: self.address.clone(),
            status: status.as_str().to_owned(),
            ttl_ms: Some(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)),
            seq: Some(self.seq.fetch_add(1, Ordering::Relaxed)),
            incarnation: Some(self.incarnation),
            output: self.output.lock().clone(),
        }
    }

    async fn send(&self, status: Status) -> bool {
        let report = self.report(status);
        match self.shared_send(&report).await {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(error) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "health beat not delivered");
                false
            }
        }
    }

    async fn shared_send(&self, report: &HealthReport) -> Result<(), String> {
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(report)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {SEND_TIMEOUT:?}")),
        }
    }
}

/// The running reporter: its state, its readiness routes, and its shutdown. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("instance_id", &self.shared.instance_id)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// The status the last beat reported (`Down` once shutting down).
    pub fn status(&self) -> Status {
        *self.shared.status.borrow()
    }

    /// A receiver of every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// Whether the instance should get traffic: passing or warning, not shutting down.
    pub fn ready(&self) -> bool {
        matches!(self.status(), Status::Passing | Status::Warning)
    }

    /// Beats delivered, and beats that did not arrive.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.sent.load(Ordering::Relaxed),
            self.shared.failed.load(Ordering::Relaxed),
        )
    }

    /// An axum router with `GET /readyz` (200 while [`ready`](Self::ready), else 503) and
    /// `GET /livez` (200 until the instance is critical or down), for Kubernetes probes.
    #[cfg(feature = "axum")]
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let ready = self.clone();
        let live = self.clone();
        Router::new()
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move { probe(ready.ready(), ready.status()) }
                }),
            )
            .route(
                "/livez",
                get(move || {
                    let live = live.clone();
                    async move {
                        let status = live.status();
                        probe(!matches!(status, Status::Critical | Status::Down), status)
                    }
                }),
            )
    }

    /// Stops the beats and sends `down` (one try, at most 2 s): the collector removes the
    /// instance at once and balancers stop sending it new requests from their next update.
    /// Readiness fails from now on.
    pub async fn shutdown(&self) {
        self.shared.status.send_replace(Status::Down);
        self.shared.stop.notify_one();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.shared.send(Status::Down).await;
    }
}

#[cfg(feature = "axum")]
fn probe(ok: bool, status: Status) -> (StatusCode, &'static str) {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, status.as_str())
}

/// The reporter's task.
async fn beat(
    shared: Arc<Shared>,
    mut checks: Vec<Check>,
    interval: Duration,
    failures_before_critical: u32,
) {
    let mut wait = schedule::first_delay(interval, fastrand::f64());
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stop.notified() => return,
        }
        let now = Instant::now();
        for check in &mut checks {
            check.refresh(now).await;
        }
        let (status, output) = checks::status(&checks, failures_before_critical);
        *shared.output.lock() = output;
        if *shared.status.borrow() == Status::Down {
            return;
        }
        shared.status.send_replace(status);
        if shared.send(status).await {
            failures = 0;
            wait = schedule::next_delay(interval, fastrand::f64());
        } else {
            failures = failures.saturating_add(1);
            wait = schedule::backoff_delay(interval, shared.ttl, failures, fastrand::f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reporter_registers_under_the_tracers_name_and_instance() {
        let telemetry = crate::Telemetry::new()
            .service_name("orders")
            .instance_id("orders-7")
            .build_with_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
            .unwrap();
        let reporter = HealthReporter::for_telemetry(&telemetry);
        assert_eq!(reporter.service, "orders");
        assert_eq!(reporter.instance_id, "orders-7");

        let generated = crate::Telemetry::new()
            .service_name("orders")
            .build_with_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
            .unwrap();
        let reporter = HealthReporter::for_telemetry(&generated);
        assert_eq!(
            Some(reporter.instance_id.clone()),
            generated.resource_attribute("service.instance.id"),
            "the generated instance id is the spans' one"
        );
        assert_eq!(reporter.instance_id.len(), 36, "a UUID");
    }

    #[test]
    fn the_transport_follows_the_tracers_variables() {
        let env = |protocol: Option<&'static str>| {
            move |name: &str| match name {
                "OTEL_EXPORTER_OTLP_PROTOCOL" => protocol.map(str::to_owned),
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4999".to_owned()),
                _ => None,
            }
        };
        let rows = [
            (
                None,
                "http://collector:4999/v1/health",
                "http/protobuf by default, as the tracer",
            ),
            (
                Some("http/protobuf"),
                "http://collector:4999/v1/health",
                "POST /v1/health",
            ),
            (Some(" GRPC "), "otlp", "grpc, any case: OTLP log events"),
        ];
        for (protocol, expected, reason) in rows {
            let reporter = HealthReporter::new("a", "a-1").endpoint_from(env(protocol));
            let got = match reporter.transport {
                Some(Ok(Transport::Http { url, .. })) => url,
                Some(Ok(Transport::OtlpGrpc { .. })) => "otlp".to_owned(),
                other => panic!("{reason}: {other:?}"),
            };
            assert_eq!(got, expected, "{reason}");
        }
    }

    #[test]
    fn the_token_comes_from_the_exporters_headers_or_from_code() {
        let env = |headers: &'static str| {
            move |name: &str| (name == "OTEL_EXPORTER_OTLP_HEADERS").then(|| headers.to_owned())
        };
        let rows = [
            (
                "x-team=core,authorization=Bearer%20abc",
                Some("Bearer abc"),
                "percent-decoded, among other headers",
            ),
            ("x-team=core", None, "no authorization header"),
        ];
        for (headers, expected, reason) in rows {
            let reporter = HealthReporter::new("a", "a-1").endpoint_from(env(headers));
            assert_eq!(reporter.authorization.as_deref(), expected, "{reason}");
        }
        let bad = HealthReporter::new("a", "a-1").endpoint_from(env("authorization"));
        assert!(
            matches!(&bad.transport, Some(Err(m)) if m.contains("OTEL_EXPORTER_OTLP_HEADERS")),
            "a malformed variable is an error, not a lost token: {:?}",
            bad.transport
        );
        let coded = HealthReporter::new("a", "a-1").bearer_token(" t0ken\n");
        assert_eq!(coded.authorization.as_deref(), Some("Bearer t0ken"));
        assert!(
            !format!("{coded:?}").contains("t0ken"),
            "Debug does not show the token"
        );
    }

    #[test]
    fn a_reporter_needs_a_transport_and_a_sane_ttl() {
        let rows: [(HealthReporter, &str); 4] = [
            (
                HealthReporter::new("a", "a-1").http("https://collector:4318"),
                "TLS",
            ),
            (HealthReporter::new("a", "a-1"), "no transport"),
            (
                HealthReporter::new("a", "a-1").endpoint_from(|name| {
                    (name == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "carrier-pigeon".to_owned())
                }),
                "carrier-pigeon",
            ),
            (
                HealthReporter::new("a", "a-1")
                    .http("http://127.0.0.1:4318")
                    .ttl(Duration::from_secs(1)),
                "TTL",
            ),
        ];
        for (reporter, expected) in rows {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let error = runtime.block_on(async { reporter.start().unwrap_err() });
            assert!(error.to_string().contains(expected), "{expected}: {error}");
        }
    }
}
