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
    /// When its process started (Unix milliseconds), when given.
    pub incarnation: Option<u64>,
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
/// let decoded = wayfinder_decode::health::decode_health_logs(&request);
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

/// The largest double up to which doubles hold every integer exactly: 2^53 − 1 (JavaScript's
/// `Number.MAX_SAFE_INTEGER`). A larger double may not be the number that was
/// written (2^53 + 1 arrives as 2^53), so it is refused rather than silently changed.
const MAX_EXACT_DOUBLE: f64 = 9_007_199_254_740_991.0;

/// How much of a refused string value a rejection message quotes.
const MAX_QUOTED: usize = 64;

/// The value of an integer attribute (`server.port`, `health.ttl_ms`, `health.seq`).
///
/// Three forms are accepted, because pipelines differ in how they carry numbers:
/// - an int (`int_value`), as SDKs send it;
/// - a double (`double_value`) that is a whole number no larger than 2^53 − 1, as the
///   OpenTelemetry Collector sends it after a `filelog` receiver's `json_parser` (its JSON
///   parsing turns every number into a double: `8080` becomes `8080.0`);
/// - a string (`string_value`) of decimal digits, surrounding whitespace ignored, as
///   pipelines that carry every value as text send it (`"8080"`, `" 15000 "`).
///
/// Anything else is refused with a message that names the attribute and the value: a
/// negative number, a fraction, NaN or an infinity, a double beyond 2^53 − 1, a string that
/// is not plain decimal digits (no sign, no decimal point, no exponent), a bool, bytes, an
/// array or a map.
fn integer(key: &str, value: &Value) -> Result<u64, String> {
    let refused = |what: String| format!("{key} must be a non-negative integer, got {what}");
    match value {
        Value::IntValue(i) => u64::try_from(*i).map_err(|_| refused(format!("the int {i}"))),
        Value::DoubleValue(d) => {
            if !d.is_finite() || *d < 0.0 {
                Err(refused(format!("the double {d:?}")))
            } else if d.fract() != 0.0 {
                Err(refused(format!("the double {d:?}, a fraction")))
            } else if *d > MAX_EXACT_DOUBLE {
                Err(refused(format!(
                    "the double {d:?}, beyond 2^53 - 1 where doubles no longer hold every \
                     integer (send it as an int or a string)"
                )))
            } else {
                // A whole number in 0..=2^53 - 1: the conversion is exact (`-0.0` is 0).
                Ok(*d as u64)
            }
        }
        Value::StringValue(s) => {
            let digits = s.trim();
            let quoted = super::truncated(s, MAX_QUOTED);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(refused(format!("the string {quoted:?}")));
            }
            digits
                .parse()
                .map_err(|_| refused(format!("the string {quoted:?}, larger than 2^64 - 1")))
        }
        Value::BoolValue(b) => Err(refused(format!("the bool {b}"))),
        Value::BytesValue(_) => Err(refused("bytes".into())),
        Value::ArrayValue(_) => Err(refused("an array".into())),
        Value::KvlistValue(_) => Err(refused("a map".into())),
        Value::StringValueStrindex(_) => Err(refused("a string table index".into())),
    }
}

/// `server.port`: an [`integer`] from 1 to 65535.
fn port(value: &Value) -> Result<u16, String> {
    let port = integer("server.port", value)?;
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("server.port must be from 1 to 65535, got {port}"))
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
        attr(attrs, key).map(|v| integer(key, v)).transpose()
    };
    let port = attr(attrs, "server.port").map(port).transpose()?;
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
        incarnation: number("health.incarnation")?,
        output: text("health.output"),
    })
}

/// Validates a `POST /v1/health` body (and, through it, an OTLP health record).
///
/// ```
/// use wayfinder_api::health::HealthReport;
/// use wayfinder_decode::health::validate;
///
/// let report = HealthReport {
///     service: "cart".into(),
///     instance_id: "cart-1".into(),
///     address: None,
///     status: "sleepy".into(),
///     ttl_ms: None,
///     seq: None,
///     incarnation: None,
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
    for (what, name) in [
        ("service (service.name)", Some(&report.service)),
        (
            "instance_id (service.instance.id)",
            Some(&report.instance_id),
        ),
        (
            "address (server.address and server.port)",
            report.address.as_ref(),
        ),
    ] {
        if name.is_some_and(|name| !crate::is_clean_name(name)) {
            return Err(format!("{what} has a control character"));
        }
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
        incarnation: report.incarnation,
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

    /// Decodes one `passing` beat at 10.0.0.7 with `key` set to `value`; returns that field of
    /// the event (the port, the TTL in ms or the seq), or the rejection message.
    fn decode_one(key: &str, value: Value) -> Result<u64, String> {
        let attributes = vec![
            kv("health.status", s("passing")),
            kv("server.address", s("10.0.0.7")),
            kv(key, value),
        ];
        let decoded = decode_health_logs(&request(vec![beat(attributes, true)]));
        if let Some(message) = decoded.message() {
            return Err(message);
        }
        let event = &decoded.events[0];
        Ok(match key {
            "server.port" => {
                let address = event.address.as_deref().unwrap();
                address.strip_prefix("10.0.0.7:").unwrap().parse().unwrap()
            }
            "health.ttl_ms" => u64::try_from(event.ttl.as_millis()).unwrap(),
            "health.seq" => event.seq.unwrap(),
            _ => unreachable!("not an integer attribute: {key}"),
        })
    }

    #[test]
    fn integer_attributes() {
        use Value::{BoolValue, BytesValue, DoubleValue, IntValue};
        let port = "server.port";
        let ttl = "health.ttl_ms";
        let seq = "health.seq";
        // (attribute, value, the number decoded or a part of the rejection, why)
        #[rustfmt::skip]
        let cases: &[(&str, Value, Result<u64, &str>, &str)] = &[
            (port, IntValue(8080),                  Ok(8080),              "an int, as SDKs send it"),
            (port, DoubleValue(8080.0),             Ok(8080),              "a whole double, as filelog's json_parser makes every number"),
            (ttl,  DoubleValue(15000.0),            Ok(15000),             "a whole double TTL"),
            (seq,  DoubleValue(1.7e12),             Ok(1_700_000_000_000), "a millisecond clock as seq, as a double"),
            (seq,  DoubleValue(MAX_EXACT_DOUBLE),   Ok(9_007_199_254_740_991), "2^53 - 1 is the largest double kept"),
            (seq,  DoubleValue(-0.0),               Ok(0),                 "negative zero is zero"),
            (port, s("8080"),                       Ok(8080),              "a decimal string, as pipelines that send only strings"),
            (ttl,  s(" 15000 "),                    Ok(15000),             "whitespace around the digits is ignored"),
            (seq,  s("18446744073709551615"),       Ok(u64::MAX),          "a string holds every u64"),
            (port, DoubleValue(8080.5),             Err("the double 8080.5, a fraction"), "a fraction is not a port"),
            (ttl,  DoubleValue(0.5),                Err("0.5"),            "nor a TTL"),
            (port, IntValue(-1),                    Err("the int -1"),     "a negative int"),
            (seq,  DoubleValue(-1.0),               Err("the double -1.0"), "a negative double"),
            (ttl,  s("-1"),                         Err(r#"the string "-1""#), "a negative string"),
            (seq,  DoubleValue(f64::NAN),           Err("NaN"),            "NaN"),
            (seq,  DoubleValue(f64::NEG_INFINITY),  Err("-inf"),           "an infinity"),
            (seq,  DoubleValue(9_007_199_254_740_992.0), Err("beyond 2^53 - 1"), "2^53 may have been 2^53 + 1: precision is lost"),
            (seq,  DoubleValue(1e300),              Err("1e300"),          "a huge double"),
            (seq,  s("18446744073709551616"),       Err("larger than 2^64 - 1"), "a string beyond u64"),
            (port, IntValue(65536),                 Err("from 1 to 65535, got 65536"), "a port past 65535"),
            (port, DoubleValue(70000.0),            Err("got 70000"),      "a double port past 65535"),
            (port, s("0"),                          Err("from 1 to 65535, got 0"), "port 0 is not where anything serves"),
            (ttl,  DoubleValue(0.0),                Err("must be positive"), "a zero TTL, as a double"),
            (ttl,  s("86400001"),                   Err("86400001 is longer than a day"), "a TTL over a day, as a string"),
            (port, s("http"),                       Err(r#"the string "http""#), "a name is not a number"),
            (port, s("8080.0"),                     Err(r#""8080.0""#),    "a string takes digits only, no decimal point"),
            (port, s("+8080"),                      Err(r#""+8080""#),     "nor a sign"),
            (ttl,  s("1e4"),                        Err(r#""1e4""#),       "nor an exponent"),
            (port, s(" "),                          Err(r#"the string " ""#), "blank"),
            (port, BoolValue(true),                 Err("the bool true"),  "a bool"),
            (seq,  BytesValue(vec![1]),             Err("bytes"),          "bytes"),
            (port, s(&"9".repeat(1000)),            Err("larger than 2^64 - 1"), "a long string is quoted in part"),
        ];
        for (key, value, want, why) in cases {
            match (decode_one(key, value.clone()), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{why}"),
                (Err(error), Err(part)) => {
                    assert!(error.contains(key), "{why}: names the attribute: {error}");
                    assert!(error.contains(part), "{why}: {error}");
                    assert!(error.len() < 200, "{why}: a short message: {error}");
                }
                (got, want) => panic!("{why}: {key} = {value:?}: got {got:?}, want {want:?}"),
            }
        }
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
            incarnation: None,
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
            (
                report("inj\"svc\n", "c1", "passing", None),
                Err("service (service.name) has a control character"),
                "a line feed in a name would start a line in logs and scrapes",
            ),
            (
                report("cart", "c1\u{7}", "passing", None),
                Err("instance_id (service.instance.id) has a control character"),
                "a bell in an instance id",
            ),
            (
                report("cart é", "c-1 😀", "passing", None),
                Ok(DEFAULT_TTL),
                "non-ASCII is not a control character",
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
