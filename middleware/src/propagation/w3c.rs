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
use opentelemetry::trace::{SpanContext, TraceState};

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

/// The members of a (combined) `tracestate` value a receiver may pass on, by the W3C grammar
/// of the current Trace Context recommendation, or `None` when the list must be discarded.
///
/// - at most 32 list members (empty ones between commas, and spaces or tabs around a member,
///   are allowed and skipped); a 33rd makes the whole list invalid: discarded, not truncated;
/// - a key starts with a lowercase letter or a digit and has up to 256 characters of
///   `a-z 0-9 _ - * / @` (the `@` of vendor keys such as `tenant@system` is an ordinary key
///   character since the grammar was simplified);
/// - a value has 1–256 printable characters but `,` and `=`, not ending in a space;
/// - a key given twice keeps its first member (the specification lets a receiver discard
///   duplicates it did not generate).
///
/// The SDK's own parser keeps the first 32 members of a longer list, accepts an empty value,
/// and refuses keys the current grammar allows (`foo@`, `a@b@c`, a 242-character tenant), so
/// the list is parsed here and the SDK never sees the raw header.
pub(crate) fn tracestate_members(value: &str) -> Option<Vec<(&str, &str)>> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    let mut count = 0;
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if !valid_key(key) || !valid_value(value) {
            return None;
        }
        count += 1;
        if count > 32 {
            return None;
        }
        if !members.iter().any(|(seen, _)| *seen == key) {
            members.push((key, value));
        }
    }
    Some(members)
}

/// The caller's parent with the caller's `tracestate` checked by [`tracestate_members`]: an
/// invalid list is dropped whole (the parent stays), and a valid one the SDK's `TraceState`
/// refuses travels beside it as a [`ForwardedTraceState`].
pub(crate) fn with_tracestate(
    parent: &SpanContext,
    tracestate: Option<&str>,
) -> (SpanContext, Option<ForwardedTraceState>) {
    let members = tracestate.and_then(tracestate_members).unwrap_or_default();
    let (state, forwarded) = match TraceState::from_key_value(members.iter().copied()) {
        Ok(state) => (state, None),
        Err(_) => {
            let header = members
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(",");
            let forwarded = ForwardedTraceState {
                trace_id: parent.trace_id(),
                header,
            };
            (TraceState::NONE, Some(forwarded))
        }
    };
    let parent = SpanContext::new(
        parent.trace_id(),
        parent.span_id(),
        parent.trace_flags(),
        true,
        state,
    );
    (parent, forwarded)
}

fn valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    (1..=256).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'))
}

fn valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    (1..=256).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && bytes[bytes.len() - 1] != b' '
}

/// The caller's headers without `tracestate`, for the SDK's propagator: it would parse the
/// list by its older grammar only for the result to be replaced.
pub(crate) struct WithoutTracestate<'a>(pub(crate) &'a dyn opentelemetry::propagation::Extractor);

impl opentelemetry::propagation::Extractor for WithoutTracestate<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key.eq_ignore_ascii_case(TRACESTATE) {
            None
        } else {
            self.0.get(key)
        }
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        if key.eq_ignore_ascii_case(TRACESTATE) {
            None
        } else {
            self.0.get_all(key)
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .into_iter()
            .filter(|key| !key.eq_ignore_ascii_case(TRACESTATE))
            .collect()
    }
}

/// A caller's `tracestate` that the SDK's `TraceState` cannot hold (a key its older grammar
/// refuses), kept in the context so that it is forwarded unchanged on the same trace.
#[derive(Debug, Clone)]
pub(crate) struct ForwardedTraceState {
    pub(crate) trace_id: opentelemetry::trace::TraceId,
    pub(crate) header: String,
}

fn all_zero(field: &[u8]) -> bool {
    field.iter().all(|&byte| byte == b'0')
}

/// Writes `traceparent` and, when the trace state is not empty, `tracestate`. (The SDK's
/// propagator writes an empty `tracestate` header for an empty state.)
/// A state the SDK could not hold is taken from `forwarded` when it belongs to the same trace.
pub(crate) fn inject(
    context: &opentelemetry::trace::SpanContext,
    forwarded: Option<&ForwardedTraceState>,
    injector: &mut dyn opentelemetry::propagation::Injector,
) {
    if !context.is_valid() {
        return;
    }
    injector.set(TRACEPARENT, traceparent(context));
    let state = context.trace_state().header();
    if !state.is_empty() {
        injector.set(TRACESTATE, state);
    } else if let Some(forwarded) = forwarded.filter(|f| f.trace_id == context.trace_id()) {
        injector.set(TRACESTATE, forwarded.header.clone());
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
