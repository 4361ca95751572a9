//! [`HealthReporter`]: the settings of one instance's reporter, checked when it starts.

use std::future::Future;
use std::time::Duration;

use super::beat::Shared;
use super::checks::{Check, CheckResult};
use super::transport::Transport;
use super::{Health, HealthError, SEND_TIMEOUT};
use crate::tls::ClientTls;

/// Builds the health reporter of one instance.
#[must_use]
pub struct HealthReporter {
    pub(super) service: String,
    pub(super) instance_id: String,
    address: Option<String>,
    pub(super) transport: Option<Result<Transport, String>>,
    interval: Duration,
    ttl: Duration,
    failures_before_critical: u32,
    checks: Vec<Check>,
    /// The `authorization` header value sent with every beat (never shown by `Debug`).
    pub(super) authorization: Option<String>,
    /// TLS for `https://` collectors.
    tls: ClientTls,
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
            tls: ClientTls::new(),
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
        let reporter = reporter.tls(telemetry.collector_tls().clone());
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

    /// TLS settings for `https://` collectors (the system's roots by default; a CA file and a
    /// client certificate for mutual TLS). Set it before the transport
    /// ([`otlp_grpc`](Self::otlp_grpc), [`http`](Self::http)), which reads its files.
    /// [`for_telemetry`](Self::for_telemetry) and [`endpoint_from_env`](Self::endpoint_from_env)
    /// take the exporter's.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = tls;
        self
    }

    /// Beats as `wayfinder.health` OTLP log events to the OTLP/gRPC `endpoint`
    /// (`http://host:4317`, the tracer's; `https://` for TLS). A fleet's collectors,
    /// comma-separated: a beat goes to the one that took the last, else to the next that takes
    /// it.
    pub fn otlp_grpc(mut self, endpoint: &str) -> Self {
        let tls = &self.tls;
        self.transport = Some(Transport::each(endpoint, |e| {
            Transport::otlp_grpc(e, SEND_TIMEOUT, tls)
        }));
        self
    }

    /// Beats as JSON to `POST /v1/health` on the collector's OTLP/HTTP `base`
    /// (`http://host:4318`; `https://` for TLS); several, comma-separated, as with
    /// [`otlp_grpc`](Self::otlp_grpc).
    pub fn http(mut self, base: &str) -> Self {
        let tls = &self.tls;
        self.transport = Some(Transport::each(base, |b| {
            Transport::http(b, SEND_TIMEOUT, tls)
        }));
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
    pub fn endpoint_from(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        // The exporter's variables, read once for the crate (`init/env.rs`).
        match crate::init::OtlpEnv::from_lookup(lookup) {
            Ok(env) => {
                if env.authorization.is_some() {
                    self.authorization = env.authorization;
                }
                self.tls = env.tls;
                match env.protocol {
                    crate::OtlpProtocol::Grpc => self.otlp_grpc(&env.endpoint),
                    crate::OtlpProtocol::HttpProtobuf => self.http(&env.endpoint),
                }
            }
            Err(error) => {
                self.transport = Some(Err(error.to_string()));
                self
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
        Ok(Health::start(
            Shared::new(
                self.service,
                self.instance_id,
                self.address,
                self.ttl,
                transport,
            ),
            self.checks,
            self.interval,
            self.failures_before_critical,
        ))
    }
}
