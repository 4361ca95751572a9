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
