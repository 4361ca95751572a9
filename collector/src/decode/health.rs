//! Health events: OTLP log records with event name `wayfinder.health`, or the JSON body of
//! `POST /v1/health`, turned into one [`HealthEvent`] form and validated.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use wayfinder_api::health::HealthReport;

/// The event name that marks a log record as a health event.
pub const HEALTH_EVENT_NAME: &str = "wayfinder.health";

/// How long a beat holds when it does not say.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// Names and addresses are kept to this many bytes, outputs to [`MAX_OUTPUT`].
const MAX_NAME: usize = 256;
/// The longest `output` kept, in bytes.
const MAX_OUTPUT: usize = 4096;

/// The longest TTL accepted (a day): longer ones are a mistake, not a heartbeat.
const MAX_TTL: Duration = Duration::from_secs(86_400);

/// What an instance says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// Healthy.
    Passing,
    /// Serving, but something is off.
    Warning,
    /// Not fit to serve.
    Critical,
    /// Shutting down: remove it now.
    Down,
}

impl HealthStatus {
    /// Parses `passing`, `warning`, `critical` or `down`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            "down" => Some(Self::Down),
            _ => None,
        }
    }

    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Down => "down",
        }
    }
}

/// One validated heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// `service.name`.
    pub service: String,
    /// `service.instance.id`.
    pub instance_id: String,
    /// `host:port` it serves on, when given.
    pub address: Option<String>,
    /// What it says.
    pub status: HealthStatus,
    /// How long the beat holds.
    pub ttl: Duration,
    /// Its sequence number, when given.
    pub seq: Option<u64>,
    /// Free text.
    pub output: Option<String>,
}

/// Health events found in a logs request, and why others were rejected.
#[derive(Debug, Default)]
pub struct DecodedHealth {
    /// The valid events, in request order.
    pub events: Vec<HealthEvent>,
    /// Health records refused, with the first reasons (at most a few, for the response).
    pub rejected: u64,
    /// Why, for the first few.
    pub reasons: Vec<String>,
    /// Log records that are not health events.
    pub other_records: u64,
}

impl DecodedHealth {
    /// The `partial_success.error_message`, when something was rejected.
    pub fn message(&self) -> Option<String> {
        (self.rejected > 0).then(|| {
            format!(
                "rejected {} health event(s): {}",
                self.rejected,
                self.reasons.join("; ")
            )
        })
    }
}

/// Takes the health events out of a logs request.
///
/// ```
/// use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
/// use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
///
/// let record = LogRecord { event_name: "wayfinder.health".into(), ..Default::default() };
/// let request = ExportLogsServiceRequest {
///     resource_logs: vec![ResourceLogs {
///         scope_logs: vec![ScopeLogs { log_records: vec![record], ..Default::default() }],
///         ..Default::default()
///     }],
/// };
/// let decoded = wayfinder_collector::decode::health::decode_health_logs(&request);
/// assert_eq!(decoded.rejected, 1, "no service.name, no instance id, no status");
/// ```
pub fn decode_health_logs(request: &ExportLogsServiceRequest) -> DecodedHealth {
    let mut decoded = DecodedHealth::default();
    for resource_logs in &request.resource_logs {
        let resource: &[KeyValue] = resource_logs
            .resource
            .as_ref()
            .map_or(&[], |r| &r.attributes);
        for record in resource_logs.scope_logs.iter().flat_map(|s| &s.log_records) {
            if !is_health_event(record) {
                decoded.other_records += 1;
                continue;
            }
            match from_record(resource, record) {
                Ok(event) => decoded.events.push(event),
                Err(reason) => decoded.reject(reason),
            }
        }
    }
    decoded
}

impl DecodedHealth {
    fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.reasons.len() < 5 {
            self.reasons.push(reason);
        }
    }
}

fn is_health_event(record: &LogRecord) -> bool {
    record.event_name == HEALTH_EVENT_NAME
        || attr(&record.attributes, "event.name").and_then(as_str) == Some(HEALTH_EVENT_NAME)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn as_str(value: &Value) -> Option<&str> {
    match value {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// An integer attribute, also when sent as a string (some SDKs only send strings).
fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::IntValue(i) => u64::try_from(*i).ok(),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

fn from_record(resource: &[KeyValue], record: &LogRecord) -> Result<HealthEvent, String> {
    let attrs = &record.attributes;
    let text = |key: &str| -> Option<String> {
        attr(attrs, key)
            .or_else(|| attr(resource, key))
            .and_then(as_str)
            .map(str::to_owned)
    };
    let number = |key: &'static str| -> Result<Option<u64>, String> {
        attr(attrs, key)
            .map(|v| as_u64(v).ok_or_else(|| format!("{key} is not a non-negative integer")))
            .transpose()
    };
    let port = number("server.port")?;
    let address = match (text("server.address"), port) {
        (Some(host), Some(port)) => Some(format!("{host}:{port}")),
        (Some(host), None) => Some(host),
        (None, _) => None,
    };
    validate(HealthReport {
        service: text("service.name").unwrap_or_default(),
        instance_id: text("service.instance.id").unwrap_or_default(),
        address,
        status: text("health.status").unwrap_or_default(),
        ttl_ms: number("health.ttl_ms")?,
        seq: number("health.seq")?,
        output: text("health.output"),
    })
}

/// Validates a `POST /v1/health` body (and, through it, an OTLP health record).
///
/// ```
/// use wayfinder_api::health::HealthReport;
/// use wayfinder_collector::decode::health::validate;
///
/// let report = HealthReport {
///     service: "cart".into(),
///     instance_id: "cart-1".into(),
///     address: None,
///     status: "sleepy".into(),
///     ttl_ms: None,
///     seq: None,
///     output: None,
/// };
/// let error = validate(report).unwrap_err();
/// assert!(error.contains("health.status"), "{error}");
/// ```
pub fn validate(report: HealthReport) -> Result<HealthEvent, String> {
    if report.service.trim().is_empty() {
        return Err("service (service.name) is missing or empty".into());
    }
    if report.instance_id.trim().is_empty() {
        return Err("instance_id (service.instance.id) is missing or empty".into());
    }
    let status = HealthStatus::parse(&report.status).ok_or_else(|| {
        format!(
            "health.status `{}` is not one of passing, warning, critical, down",
            report.status
        )
    })?;
    let ttl = match report.ttl_ms {
        None => DEFAULT_TTL,
        Some(0) => return Err("health.ttl_ms must be positive".into()),
        Some(ms) if Duration::from_millis(ms) > MAX_TTL => {
            return Err(format!("health.ttl_ms {ms} is longer than a day"));
        }
        Some(ms) => Duration::from_millis(ms),
    };
    let bounded = |text: String, max: usize| super::truncated(&text, max).to_owned();
    Ok(HealthEvent {
        service: bounded(report.service, MAX_NAME),
        instance_id: bounded(report.instance_id, MAX_NAME),
        address: report
            .address
            .filter(|a| !a.is_empty())
            .map(|a| bounded(a, MAX_NAME)),
        status,
        ttl,
        seq: report.seq,
        output: report.output.map(|o| bounded(o, MAX_OUTPUT)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(text: &str) -> Value {
        Value::StringValue(text.into())
    }

    fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", s("cart")),
                        kv("service.instance.id", s("cart-1")),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn beat(mut attributes: Vec<KeyValue>, by_attribute: bool) -> LogRecord {
        let mut record = LogRecord::default();
        if by_attribute {
            attributes.push(kv("event.name", s(HEALTH_EVENT_NAME)));
        } else {
            record.event_name = HEALTH_EVENT_NAME.into();
        }
        record.attributes = attributes;
        record
    }

    #[test]
    fn records_to_events() {
        let good = vec![
            kv("health.status", s("warning")),
            kv("health.ttl_ms", Value::IntValue(5000)),
            kv("health.seq", Value::IntValue(7)),
            kv("server.address", s("10.0.0.7")),
            kv("server.port", Value::IntValue(8080)),
            kv("health.output", s("disk 91%")),
        ];
        let decoded = request(vec![
            beat(good.clone(), false),
            beat(good, true),
            LogRecord::default(),
            beat(vec![kv("health.status", s("sleepy"))], false),
            beat(
                vec![
                    kv("health.status", s("passing")),
                    kv("health.ttl_ms", Value::IntValue(-5)),
                ],
                true,
            ),
        ]);
        let decoded = decode_health_logs(&decoded);
        assert_eq!(
            decoded.other_records, 1,
            "a plain log record is not a health event"
        );
        assert_eq!(
            decoded.events.len(),
            2,
            "event_name field and event.name attribute"
        );
        let event = &decoded.events[0];
        assert_eq!(event.service, "cart", "service.name from the resource");
        assert_eq!(event.instance_id, "cart-1");
        assert_eq!(event.status, HealthStatus::Warning);
        assert_eq!(event.ttl, Duration::from_secs(5));
        assert_eq!(event.seq, Some(7));
        assert_eq!(event.address.as_deref(), Some("10.0.0.7:8080"));
        assert_eq!(event.output.as_deref(), Some("disk 91%"));
        assert_eq!(decoded.rejected, 2);
        let message = decoded.message().unwrap();
        assert!(message.contains("sleepy"), "{message}");
        assert!(message.contains("health.ttl_ms"), "{message}");
    }

    #[test]
    fn report_validation() {
        let report = |service: &str, instance: &str, status: &str, ttl| HealthReport {
            service: service.into(),
            instance_id: instance.into(),
            address: None,
            status: status.into(),
            ttl_ms: ttl,
            seq: None,
            output: None,
        };
        let cases = [
            (
                report("cart", "c1", "passing", None),
                Ok(DEFAULT_TTL),
                "ttl defaults to 15 s",
            ),
            (
                report("", "c1", "passing", None),
                Err("service"),
                "no service",
            ),
            (
                report("cart", " ", "passing", None),
                Err("instance_id"),
                "blank instance",
            ),
            (
                report("cart", "c1", "ok", None),
                Err("health.status"),
                "unknown status",
            ),
            (
                report("cart", "c1", "down", Some(0)),
                Err("positive"),
                "zero ttl",
            ),
            (
                report("cart", "c1", "down", Some(u64::MAX)),
                Err("a day"),
                "absurd ttl",
            ),
        ];
        for (input, want, why) in cases {
            match (validate(input), want) {
                (Ok(event), Ok(ttl)) => assert_eq!(event.ttl, ttl, "{why}"),
                (Err(error), Err(part)) => assert!(error.contains(part), "{why}: {error}"),
                (got, want) => panic!("{why}: got {got:?}, want {want:?}"),
            }
        }
    }
}
