//! Reading the standard `OTEL_*` variables: each value checked, each error naming its
//! variable.

use opentelemetry::KeyValue;

use super::{InitError, SamplerKind};

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
        (Some("http"), Some(_)) => Ok(()),
        (Some("https"), Some(_)) => Err(invalid(
            variable,
            endpoint,
            "https:// needs TLS, which this build does not include: use http:// (a sidecar or mesh can add TLS)",
        )),
        _ => Err(invalid(
            variable,
            endpoint,
            "expected an http:// URL with a host",
        )),
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
pub(crate) fn parse_headers(
    variable: &'static str,
    value: &str,
) -> Result<Vec<(String, String)>, InitError> {
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
