//! How a beat reaches the collector: as a `wayfinder.health` OTLP log event over OTLP/gRPC
//! (the tracer's endpoint), or as JSON to `POST /v1/health` on the collector's OTLP/HTTP port.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
#[cfg(feature = "tonic")]
use std::{sync::OnceLock, time::SystemTime};

#[cfg(feature = "tonic")]
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
#[cfg(feature = "tonic")]
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
#[cfg(feature = "tonic")]
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
#[cfg(feature = "tonic")]
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
#[cfg(feature = "tonic")]
use opentelemetry_proto::tonic::resource::v1::Resource;
use wayfinder_api::health::HealthReport;

use super::SEND_TIMEOUT;
use crate::tls::{ClientTls, HttpClient, Loaded};

/// Where beats go.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// OTLP/gRPC logs to this endpoint; the channel is made on the first send (inside the
    /// runtime), then kept.
    #[cfg(feature = "tonic")]
    OtlpGrpc {
        endpoint: Box<crate::tls::GrpcTarget>,
        client: Arc<OnceLock<LogsServiceClient<tonic::transport::Channel>>>,
        authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    },
    /// `POST {base}/v1/health`.
    Http {
        client: Box<HttpClient>,
        url: String,
        authorization: Option<http::HeaderValue>,
    },
    /// A fleet's collectors, which all pass beats to every registry (the health topic): a
    /// beat goes to the one that took the last, else to the next that takes it.
    Several {
        all: Arc<[Transport]>,
        current: Arc<AtomicUsize>,
    },
}

impl Transport {
    /// OTLP/gRPC logs to `endpoint` (`http://host:4317`, or `https://` with `tls`), connected
    /// lazily.
    #[cfg(feature = "tonic")]
    pub(crate) fn otlp_grpc(
        endpoint: &str,
        timeout: Duration,
        tls: &ClientTls,
    ) -> Result<Self, String> {
        let loaded = Loaded::for_url(endpoint, tls).map_err(|e| e.to_string())?;
        let target = crate::tls::grpc_channel(
            endpoint.trim(),
            loaded.as_ref(),
            crate::tls::ServerName::Url,
            |e| e.connect_timeout(timeout).timeout(timeout),
        )
        .map_err(|e| format!("`{endpoint}` is not an OTLP/gRPC endpoint: {e}"))?;
        Ok(Transport::OtlpGrpc {
            endpoint: Box::new(target),
            client: Arc::new(OnceLock::new()),
            authorization: None,
        })
    }

    /// Without tonic there is no OTLP/gRPC: a clear error when the reporter starts.
    #[cfg(not(feature = "tonic"))]
    pub(crate) fn otlp_grpc(
        endpoint: &str,
        _timeout: Duration,
        _tls: &ClientTls,
    ) -> Result<Self, String> {
        Err(format!(
            "`{endpoint}`: health over OTLP/gRPC needs the `tonic` feature of \
             wayfinder-middleware; use http/protobuf (POST /v1/health) or enable it"
        ))
    }

    /// `POST /v1/health` on the collector's OTLP/HTTP `base` (`http://host:4318`, or
    /// `https://` with `tls`).
    pub(crate) fn http(base: &str, timeout: Duration, tls: &ClientTls) -> Result<Self, String> {
        crate::init::check_url("the health reporter's endpoint", base)?;
        let loaded = Loaded::for_url(base, tls).map_err(|e| e.to_string())?;
        let client = Box::new(HttpClient::new(loaded.as_ref(), timeout));
        Ok(Transport::Http {
            client,
            url: format!("{}/v1/health", base.trim_end_matches('/')),
            authorization: None,
        })
    }

    /// One transport per endpoint of `endpoints` (comma-separated), made by `make`: the
    /// transport itself for one, [`Transport::Several`] for more.
    pub(crate) fn each(
        endpoints: &str,
        make: impl Fn(&str) -> Result<Transport, String>,
    ) -> Result<Self, String> {
        let mut all = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(make)
            .collect::<Result<Vec<_>, String>>()?;
        match all.len() {
            0 => Err(format!("`{endpoints}` names no collector")),
            1 => Ok(all.remove(0)),
            _ => Ok(Transport::Several {
                all: all.into(),
                current: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// Sends `value` as the `authorization` header of every beat.
    pub(crate) fn with_authorization(mut self, value: Option<&str>) -> Result<Self, String> {
        let Some(value) = value else {
            return Ok(self);
        };
        let invalid = |_| "the health reporter's token is not a valid header value".to_owned();
        match &mut self {
            Transport::Http { authorization, .. } => {
                let mut header = http::HeaderValue::from_str(value).map_err(invalid)?;
                header.set_sensitive(true);
                *authorization = Some(header);
            }
            #[cfg(feature = "tonic")]
            Transport::OtlpGrpc { authorization, .. } => {
                *authorization = Some(
                    value
                        .parse()
                        .map_err(|_| "the health reporter's token is not a valid header value")?,
                );
            }
            Transport::Several { all, current } => {
                let all = all
                    .iter()
                    .cloned()
                    .map(|t| t.with_authorization(Some(value)))
                    .collect::<Result<Vec<_>, String>>()?;
                return Ok(Transport::Several {
                    all: all.into(),
                    current: current.clone(),
                });
            }
        }
        Ok(self)
    }

    /// Sends one beat; `Err` says why it did not arrive.
    pub(crate) async fn send(&self, beat: &HealthReport) -> Result<(), String> {
        if let Transport::Several { all, current } = self {
            // The collector that took the last beat first, then the others in turn: a beat
            // reaches the fleet while any collector takes it.
            let start = current.load(Ordering::Relaxed);
            let mut errors = Vec::new();
            for k in 0..all.len() {
                let i = (start + k) % all.len();
                match Box::pin(all[i].send(beat)).await {
                    Ok(()) => {
                        current.store(i, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(error) => errors.push(error),
                }
            }
            return Err(errors.join("; "));
        }
        match self {
            Transport::Several { .. } => unreachable!("sent above"),
            Transport::Http {
                client,
                url,
                authorization,
            } => {
                let body = serde_json::to_vec(beat).map_err(|e| format!("a beat as JSON: {e}"))?;
                let mut request = http::Request::post(url.as_str())
                    .header(http::header::CONTENT_TYPE, "application/json");
                if let Some(value) = authorization {
                    request = request.header(http::header::AUTHORIZATION, value.clone());
                }
                let request = request
                    .body(bytes::Bytes::from(body))
                    .map_err(|e| format!("POST {url}: {e}"))?;
                let response = client
                    .send(request, SEND_TIMEOUT)
                    .await
                    .map_err(|e| format!("POST {e}"))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    let status = response.status();
                    let body = String::from_utf8_lossy(response.body());
                    let body: String = body.chars().take(512).collect();
                    Err(format!("POST {url}: {status} {body}"))
                }
            }
            #[cfg(feature = "tonic")]
            Transport::OtlpGrpc {
                endpoint,
                client,
                authorization,
            } => {
                let mut client = client
                    .get_or_init(|| LogsServiceClient::new((**endpoint).clone().connect_lazy()))
                    .clone();
                let mut request = tonic::Request::new(log_request(beat));
                if let Some(value) = authorization {
                    request
                        .metadata_mut()
                        .insert("authorization", value.clone());
                }
                let response = client
                    .export(request)
                    .await
                    .map_err(|status| format!("OTLP logs export: {status}"))?
                    .into_inner();
                match response.partial_success {
                    Some(partial) if partial.rejected_log_records > 0 => Err(format!(
                        "the collector rejected the beat: {}",
                        partial.error_message
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

#[cfg(feature = "tonic")]
fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

#[cfg(feature = "tonic")]
fn int(key: &str, value: u64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(
                i64::try_from(value).unwrap_or(i64::MAX),
            )),
        }),
        ..Default::default()
    }
}

/// The OTLP form of a beat: a log record with event name `wayfinder.health`, the instance in
/// the resource.
#[cfg(feature = "tonic")]
pub(crate) fn log_request(beat: &HealthReport) -> ExportLogsServiceRequest {
    let mut attributes = vec![string("health.status", &beat.status)];
    if let Some(ttl) = beat.ttl_ms {
        attributes.push(int("health.ttl_ms", ttl));
    }
    if let Some(seq) = beat.seq {
        attributes.push(int("health.seq", seq));
    }
    if let Some(incarnation) = beat.incarnation {
        attributes.push(int("health.incarnation", incarnation));
    }
    if let Some(address) = &beat.address {
        match address.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
            Some((host, Ok(port))) => {
                attributes.push(string("server.address", host));
                attributes.push(int("server.port", u64::from(port)));
            }
            _ => attributes.push(string("server.address", address)),
        }
    }
    if let Some(output) = &beat.output {
        attributes.push(string("health.output", output));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", &beat.service),
                    string("service.instance.id", &beat.instance_id),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: now,
                    observed_time_unix_nano: now,
                    event_name: "wayfinder.health".to_owned(),
                    attributes,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
