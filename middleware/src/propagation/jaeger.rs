//! Jaeger's `uber-trace-id` header.
//!
//! Written here rather than taken from `opentelemetry-jaeger-propagator`: that crate's newest
//! release depends on an older `opentelemetry` than the rest of the workspace, and two copies
//! of `opentelemetry` in one tree mean two `Context` types that do not see each other's spans.
//! The format is one line: `{trace-id}:{span-id}:{parent-span-id}:{flags}`, ids in hex (the
//! trace id may be 64 or 128 bits, shorter ids are zero-padded on the left), the parent id
//! deprecated and ignored, flags bit 0 = sampled and bit 1 = debug. Clients that put the header
//! in a URL encode the colons as `%3A`, which is accepted too.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, TraceId};

use super::remote_context;

/// The header's name.
pub(crate) const HEADER: &str = "uber-trace-id";

/// The span context in an `uber-trace-id` value, if the value is well formed and its ids are
/// not zero.
pub(crate) fn extract(extractor: &dyn Extractor) -> Option<SpanContext> {
    let value = extractor.get(HEADER)?.trim();
    let decoded;
    let value = if value.contains('%') {
        decoded = value.replace("%3A", ":").replace("%3a", ":");
        decoded.as_str()
    } else {
        value
    };
    let mut parts = value.split(':');
    let (trace_id, span_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from(parse_hex(trace_id, 32)?);
    let span_id = SpanId::from(u64::try_from(parse_hex(span_id, 16)?).ok()?);
    parse_hex(parent_id, 16)?;
    let flags = u8::try_from(parse_hex(flags, 2)?).ok()?;
    // Debug (bit 1) implies sampled.
    remote_context(trace_id, span_id, flags & 0b11 != 0)
}

/// Writes `context` as an `uber-trace-id` header (parent id `0`, flags `1` or `0`).
pub(crate) fn inject(context: &SpanContext, injector: &mut dyn Injector) {
    if !context.is_valid() {
        return;
    }
    let flags = if context.is_sampled() { 1 } else { 0 };
    injector.set(
        HEADER,
        format!("{}:{}:0:{flags}", context.trace_id(), context.span_id()),
    );
}

/// Parses 1 to `max_len` hex digits (either case).
fn parse_hex(field: &str, max_len: usize) -> Option<u128> {
    if field.is_empty() || field.len() > max_len || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(field, 16).ok()
}
