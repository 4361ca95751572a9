//! Reading the standard `OTEL_*` variables into [`Telemetry`]'s settings
//! ([`Telemetry::from_env`]): each value checked, each error naming its
//! variable.

use opentelemetry::KeyValue;

use tracing_subscriber::EnvFilter;

use super::{ExporterKind, InitError, LogFormat, OtlpProtocol, SamplerKind, Telemetry};
use crate::propagation::Propagation;
use crate::tls::ClientTls;

pub(super) fn invalid(variable: &'static str, value: &str, reason: &str) -> InitError {
    InitError::InvalidVariable {
        variable,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (the W3C Baggage octet rules the
/// OpenTelemetry specification refers to). An entry without `=` or with an empty key fails the
/// whole variable, so a typo does not silently drop an attribute.
pub(super) fn parse_resource_attributes(value: &str) -> Result<Vec<KeyValue>, InitError> {
    let mut attributes = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, raw)) = entry.split_once('=') else {
            return Err(invalid(
                "OTEL_RESOURCE_ATTRIBUTES",
                value,
                &format!("entry {entry:?} has no '='"),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid(
                "OTEL_RESOURCE_ATTRIBUTES",
                value,
                &format!("entry {entry:?} has an empty key"),
            ));
        }
        let decoded = percent_decode(raw.trim()).ok_or_else(|| {
            invalid(
                "OTEL_RESOURCE_ATTRIBUTES",
                value,
                &format!("entry {entry:?} has a bad percent-encoding"),
            )
        })?;
        attributes.push(KeyValue::new(key.to_owned(), decoded));
    }
    Ok(attributes)
}

pub(super) fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(super) fn check_endpoint(variable: &'static str, endpoint: &str) -> Result<(), InitError> {
    let uri: http::Uri = endpoint
        .trim()
        .parse()
        .map_err(|error: http::uri::InvalidUri| invalid(variable, endpoint, &error.to_string()))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(invalid(
            variable,
            endpoint,
            "expected an http:// or https:// URL with a host",
        )),
    }
}

/// `url` is an `http://` or `https://` URL with a host; else why not, naming `what`.
pub(crate) fn check_url(what: &str, url: &str) -> Result<(), String> {
    check_endpoint("URL", url).map_err(|error| match error {
        InitError::InvalidVariable { value, reason, .. } => format!("{what} `{value}`: {reason}"),
        other => format!("{what}: {other}"),
    })
}

/// An OTLP/gRPC endpoint given without a scheme (`collector:4317`) takes one from
/// `OTEL_EXPORTER_OTLP_(TRACES_)INSECURE`: `https://` unless it is `true` (the specification's
/// rule; the variable means nothing for a URL with a scheme, or for OTLP/HTTP).
pub(super) fn with_grpc_scheme(endpoint: &str, insecure: bool) -> String {
    let endpoint = endpoint.trim();
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else if insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    }
}

pub(super) fn parse_sampler(name: &str, arg: Option<&str>) -> Result<SamplerKind, InitError> {
    let ratio = || -> Result<f64, InitError> {
        let Some(arg) = arg else { return Ok(1.0) };
        match arg.trim().parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
            _ => Err(invalid(
                "OTEL_TRACES_SAMPLER_ARG",
                arg,
                "expected a ratio between 0 and 1",
            )),
        }
    };
    Ok(match name.trim() {
        "always_on" => SamplerKind::AlwaysOn,
        "always_off" => SamplerKind::AlwaysOff,
        "traceidratio" => SamplerKind::TraceIdRatio(ratio()?),
        "parentbased_always_on" => SamplerKind::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerKind::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerKind::ParentBasedTraceIdRatio(ratio()?),
        _ => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                name,
                "expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

/// `key1=value1,key2=value2` of `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`, values percent-decoded
/// (the W3C Baggage octet rules the specification refers to). A pair without `=`, with an empty
/// key, or that is not a valid header fails the whole variable: a typo must not silently drop
/// an authorization header.
fn parse_headers(variable: &'static str, value: &str) -> Result<Vec<(String, String)>, InitError> {
    let mut headers = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, raw)) = entry.split_once('=') else {
            return Err(invalid(
                variable,
                value,
                &format!("pair {entry:?} has no '='"),
            ));
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || http::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(invalid(
                variable,
                value,
                &format!("pair {entry:?} does not name a valid header"),
            ));
        }
        let decoded = percent_decode(raw.trim()).ok_or_else(|| {
            invalid(
                variable,
                value,
                &format!("pair {entry:?} has a bad percent-encoding"),
            )
        })?;
        if http::HeaderValue::from_str(&decoded).is_err() {
            return Err(invalid(
                variable,
                value,
                &format!("pair {entry:?} has a value that cannot be a header"),
            ));
        }
        headers.push((key, decoded));
    }
    Ok(headers)
}

/// The generic OTLP exporter variables, as this crate's other senders read them (the health
/// reporter's beats): the transport, the collector's base URL and its token, so that they go
/// where the spans go. An empty variable counts as unset, as for [`Telemetry::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtlpEnv {
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc`, else HTTP (`http/protobuf`, the default, or
    /// `http/json`: the beats' own body does not depend on it).
    pub(crate) protocol: OtlpProtocol,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else the protocol's default.
    pub(crate) endpoint: String,
    /// The `authorization` entry of `OTEL_EXPORTER_OTLP_HEADERS`.
    pub(crate) authorization: Option<String>,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`, `_CLIENT_CERTIFICATE` and `_CLIENT_KEY`.
    pub(crate) tls: ClientTls,
}

impl OtlpEnv {
    /// Reads them through `lookup`; a malformed variable is an error naming it.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, InitError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let authorization = match get("OTEL_EXPORTER_OTLP_HEADERS") {
            Some(value) => parse_headers("OTEL_EXPORTER_OTLP_HEADERS", &value)?
                .into_iter()
                .find(|(key, _)| key == "authorization")
                .map(|(_, value)| value),
            None => None,
        };
        let protocol = match get("OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => OtlpProtocol::HttpProtobuf,
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" | "http/json" => OtlpProtocol::HttpProtobuf,
                _ => {
                    return Err(invalid(
                        "OTEL_EXPORTER_OTLP_PROTOCOL",
                        &value,
                        "expected grpc, http/protobuf or http/json",
                    ));
                }
            },
        };
        let insecure = get("OTEL_EXPORTER_OTLP_INSECURE")
            .is_some_and(|value| parse_bool("OTEL_EXPORTER_OTLP_INSECURE", &value).0);
        let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT").map_or_else(
            || protocol.default_endpoint().to_owned(),
            |e| match protocol {
                OtlpProtocol::Grpc => with_grpc_scheme(&e, insecure),
                OtlpProtocol::HttpProtobuf => e.trim().to_owned(),
            },
        );
        Ok(OtlpEnv {
            protocol,
            endpoint,
            authorization,
            tls: ClientTls::from_lookup(&lookup, None),
        })
    }
}

/// A timeout in milliseconds (`OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`).
pub(super) fn parse_timeout(
    variable: &'static str,
    value: &str,
) -> Result<std::time::Duration, InitError> {
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(invalid(
            variable,
            value,
            "expected a positive number of milliseconds",
        )),
    }
}

/// A boolean the specification's way: `true` (any case) is true; anything else is false, and
/// a value other than `false` or empty is worth a warning (returned as `Err`).
pub(super) fn parse_bool(variable: &'static str, value: &str) -> (bool, Option<String>) {
    let trimmed = value.trim();
    if trimmed.eq_ignore_ascii_case("true") {
        (true, None)
    } else if trimmed.eq_ignore_ascii_case("false") || trimmed.is_empty() {
        (false, None)
    } else {
        (
            false,
            Some(format!(
                "{variable}={value:?} is not true or false; taken as false"
            )),
        )
    }
}

impl Telemetry {
    /// Settings from the process environment (see [`VARIABLES`]); unset variables keep the
    /// defaults of [`Telemetry::new`].
    pub fn from_env() -> Result<Self, InitError> {
        Telemetry::from_lookup(|name| std::env::var(name).ok())
    }

    /// Settings from `lookup(name)`, read as [`Telemetry::from_env`] reads the environment.
    ///
    /// ```
    /// use wayfinder_middleware::Telemetry;
    ///
    /// let env = |name: &str| match name {
    ///     "OTEL_TRACES_SAMPLER" => Some("traceidratio".to_owned()),
    ///     "OTEL_TRACES_SAMPLER_ARG" => Some("1.5".to_owned()),
    ///     _ => None,
    /// };
    /// let error = Telemetry::from_lookup(env).unwrap_err();
    /// assert!(error.to_string().contains("OTEL_TRACES_SAMPLER_ARG"));
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, InitError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let mut telemetry = Telemetry::new();
        if let Some(attributes) = get("OTEL_RESOURCE_ATTRIBUTES") {
            telemetry.resource = parse_resource_attributes(&attributes)?;
            if let Some(name) = telemetry
                .resource
                .iter()
                .find(|kv| kv.key.as_str() == "service.name")
            {
                telemetry.service_name = name.value.to_string();
                telemetry.service_name_set = true;
            }
        }
        if let Some(name) = get("OTEL_SERVICE_NAME") {
            telemetry.service_name = name.trim().to_owned();
            telemetry.service_name_set = true;
        }
        // The traces signal's own variable beats the generic one, which beats the default
        // (the OTLP exporter specification).
        let pick = |specific: &'static str, generic: &'static str| {
            get(specific)
                .map(|v| (specific, v))
                .or_else(|| get(generic).map(|v| (generic, v)))
        };
        if let Some((variable, protocol)) = pick(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            telemetry.protocol = match protocol.trim().to_ascii_lowercase().as_str() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" => OtlpProtocol::HttpProtobuf,
                "http/json" => {
                    return Err(invalid(
                        variable,
                        &protocol,
                        "http/json is not supported; use grpc or http/protobuf",
                    ));
                }
                _ => {
                    return Err(invalid(
                        variable,
                        &protocol,
                        "expected grpc or http/protobuf",
                    ));
                }
            };
        }
        let insecure = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
            "OTEL_EXPORTER_OTLP_INSECURE",
        ) {
            Some((variable, value)) => {
                let (insecure, warning) = parse_bool(variable, &value);
                telemetry.warnings.extend(warning);
                insecure
            }
            None => false,
        };
        let protocol = telemetry.protocol;
        let scheme = |endpoint: String| match protocol {
            OtlpProtocol::Grpc => with_grpc_scheme(&endpoint, insecure),
            OtlpProtocol::HttpProtobuf => endpoint.trim().to_owned(),
        };
        if let Some(endpoint) = get("OTEL_EXPORTER_OTLP_ENDPOINT").map(scheme) {
            check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)?;
            telemetry.endpoint = Some(endpoint);
        }
        if let Some(endpoint) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").map(scheme) {
            check_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint)?;
            telemetry.traces_endpoint = Some(endpoint);
        }
        telemetry.tls = ClientTls::from_lookup(&lookup, Some("TRACES"));
        if let Some((variable, timeout)) = pick(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            telemetry.export_timeout = parse_timeout(variable, &timeout)?;
        }
        if let Some((variable, headers)) = pick(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            telemetry.headers = parse_headers(variable, &headers)?;
        }
        if let Some(exporters) = get("OTEL_TRACES_EXPORTER") {
            let kinds: Vec<String> = exporters
                .split(',')
                .map(|e| e.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect();
            telemetry.exporter_kind = match kinds.as_slice() {
                [one] if one == "otlp" => ExporterKind::Otlp,
                [one] if one == "console" => ExporterKind::Console,
                [one] if one == "none" => ExporterKind::None,
                [_] => {
                    return Err(invalid(
                        "OTEL_TRACES_EXPORTER",
                        &exporters,
                        "expected otlp, console or none",
                    ));
                }
                _ => {
                    return Err(invalid(
                        "OTEL_TRACES_EXPORTER",
                        &exporters,
                        "one exporter at a time: otlp, console or none",
                    ));
                }
            };
        }
        if let Some(disabled) = get("OTEL_SDK_DISABLED") {
            let (disabled, warning) = parse_bool("OTEL_SDK_DISABLED", &disabled);
            telemetry.warnings.extend(warning);
            if disabled {
                telemetry.exporter_kind = ExporterKind::None;
            }
        }
        if let Some(propagators) = get("OTEL_PROPAGATORS") {
            telemetry.propagation = Propagation::from_otel_propagators(&propagators)?;
        }
        let sampler_arg = get("OTEL_TRACES_SAMPLER_ARG");
        if let Some(sampler) = get("OTEL_TRACES_SAMPLER") {
            telemetry.sampler = parse_sampler(&sampler, sampler_arg.as_deref())?;
        }
        if let Some(filter) = get("RUST_LOG") {
            EnvFilter::try_new(&filter)
                .map_err(|error| invalid("RUST_LOG", &filter, &error.to_string()))?;
            telemetry.log_filter = filter;
        }
        if let Some(format) = get("WAYFINDER_LOG_FORMAT") {
            telemetry.log_format = match format.trim().to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(invalid(
                        "WAYFINDER_LOG_FORMAT",
                        &format,
                        "expected text or json",
                    ));
                }
            };
        }
        Ok(telemetry)
    }
}
