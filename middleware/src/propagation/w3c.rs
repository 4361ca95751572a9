//! The strict syntax of a W3C `traceparent` header, checked before the SDK's propagator parses
//! it.
//!
//! `opentelemetry_sdk`'s `TraceContextPropagator` does the parsing, but it accepts fields of the
//! wrong length (`TraceId::from_hex("abc")` is a valid id) and a `+` sign in the version. The
//! W3C Trace Context specification is stricter, and a service that accepts a malformed header
//! joins a trace that nobody else can follow, so the header is checked here first.

/// Whether `value` is a `traceparent` a W3C Trace Context receiver must accept.
///
/// - version `00`: exactly 55 characters, `vv-<32 hex>-<16 hex>-<2 hex>`;
/// - a later version: at least 55 characters, and anything after the first 55 starts with `-`;
/// - version `ff` is invalid, and every hex digit is lowercase;
/// - an all-zero trace id or parent id is invalid.
use super::is_lower_hex;

pub(crate) fn is_valid_traceparent(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return false;
    }
    let (head, rest) = bytes.split_at(55);
    let version = &head[0..2];
    if !is_lower_hex(version) || version == b"ff" {
        return false;
    }
    if version == b"00" && !rest.is_empty() {
        return false;
    }
    if !rest.is_empty() && rest[0] != b'-' {
        return false;
    }
    if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
        return false;
    }
    let trace_id = &head[3..35];
    let parent_id = &head[36..52];
    let flags = &head[53..55];
    is_lower_hex(trace_id)
        && is_lower_hex(parent_id)
        && is_lower_hex(flags)
        && !all_zero(trace_id)
        && !all_zero(parent_id)
}

/// Whether a (combined) `tracestate` value is one a receiver may pass on, by the W3C grammar:
/// at most 32 list members (empty ones between commas are allowed), no key twice, each key a
/// `simple-key` (a lowercase letter, then up to 255 of `a-z 0-9 _ - * /`) or a
/// `tenant@system` key (a tenant of 1–241 characters starting with a letter or digit, a system
/// of 1–14 starting with a letter), each value 1–256 printable characters but `,` and `=`,
/// not ending in a space. The SDK's parser keeps the first 32 members of a longer list and
/// accepts an empty value; the specification wants such a list discarded, so a failed check
/// drops the whole `tracestate` (the trace context itself is kept).
pub(crate) fn is_valid_tracestate(value: &str) -> bool {
    let mut keys: Vec<&str> = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let Some((key, value)) = member.split_once('=') else {
            return false;
        };
        if !valid_key(key) || !valid_value(value) || keys.contains(&key) {
            return false;
        }
        keys.push(key);
        if keys.len() > 32 {
            return false;
        }
    }
    true
}

fn key_char(byte: u8) -> bool {
    matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

fn valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    match key.split_once('@') {
        None => {
            (1..=256).contains(&bytes.len())
                && bytes[0].is_ascii_lowercase()
                && bytes.iter().all(|&b| key_char(b))
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            (1..=241).contains(&t.len())
                && (t[0].is_ascii_lowercase() || t[0].is_ascii_digit())
                && t.iter().all(|&b| key_char(b))
                && (1..=14).contains(&s.len())
                && s[0].is_ascii_lowercase()
                && s.iter().all(|&b| key_char(b))
        }
    }
}

fn valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    (1..=256).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && bytes[bytes.len() - 1] != b' '
}

fn all_zero(field: &[u8]) -> bool {
    field.iter().all(|&byte| byte == b'0')
}

/// Writes `traceparent` and, when the trace state is not empty, `tracestate`. (The SDK's
/// propagator writes an empty `tracestate` header for an empty state.)
pub(crate) fn inject(
    context: &opentelemetry::trace::SpanContext,
    injector: &mut dyn opentelemetry::propagation::Injector,
) {
    if !context.is_valid() {
        return;
    }
    injector.set(TRACEPARENT, traceparent(context));
    let state = context.trace_state().header();
    if !state.is_empty() {
        injector.set(TRACESTATE, state);
    }
}

/// The `traceparent` value of `context` (version 00).
pub(crate) fn traceparent(context: &opentelemetry::trace::SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8() & opentelemetry::trace::TraceFlags::SAMPLED.to_u8()
    )
}

/// The header names.
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";
