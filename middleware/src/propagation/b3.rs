//! B3 headers: the single `b3` header and the multiple `X-B3-*` ones.
//!
//! Written here rather than taken from `opentelemetry-zipkin`: that crate is deprecated as a
//! whole (its propagator with it), and its injector writes the `X-B3-*` headers even when asked
//! for the single header only, and `b3: 0` ("do not sample") when there is no trace at all,
//! which makes the next service drop a trace it was free to start.
//!
//! Reading follows the B3 specification: trace id 16 or 32 lowercase hex digits (a 64-bit id
//! is zero-padded on the left), span id 16, sampling state `1`, `0` or `d` (debug, implies
//! sampled), parent span id optional and ignored. A header with only a sampling state carries
//! no parent and is ignored. When the sampling state is absent ("deferred": the receiver
//! decides) the context is taken as sampled, which is what this service's default sampler
//! (`parentbased_always_on`) would decide for a root.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, TraceId};

use super::{is_lower_hex, remote_context};

/// The single header.
pub(crate) const SINGLE: &str = "b3";
/// The multiple headers.
pub(crate) const MULTI: [&str; 3] = ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled"];

/// `b3: {trace id}-{span id}-{1|0}`.
pub(crate) fn inject_single(context: &SpanContext, injector: &mut dyn Injector) {
    if context.is_valid() {
        let sampled = sampled(context);
        injector.set(
            SINGLE,
            format!("{}-{}-{sampled}", context.trace_id(), context.span_id()),
        );
    }
}

/// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`.
pub(crate) fn inject_multi(context: &SpanContext, injector: &mut dyn Injector) {
    if context.is_valid() {
        injector.set(MULTI[0], context.trace_id().to_string());
        injector.set(MULTI[1], context.span_id().to_string());
        injector.set(MULTI[2], sampled(context).to_owned());
    }
}

fn sampled(context: &SpanContext) -> &'static str {
    if context.is_sampled() { "1" } else { "0" }
}

/// The span context of a valid single `b3` header.
pub(crate) fn extract_single(extractor: &dyn Extractor) -> Option<SpanContext> {
    let value = extractor.get(SINGLE)?.trim();
    let mut parts = value.split('-');
    let trace_id = trace_id(parts.next()?)?;
    let span_id = span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => true,
        Some(state) => sampling_state(state)?,
    };
    if let Some(parent) = parts.next() {
        span_id_any(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    remote_context(trace_id, span_id, sampled)
}

/// The span context of valid `X-B3-*` headers.
pub(crate) fn extract_multi(extractor: &dyn Extractor) -> Option<SpanContext> {
    let trace_id = trace_id(extractor.get(MULTI[0])?.trim())?;
    let span_id = span_id(extractor.get(MULTI[1])?.trim())?;
    let debug = extractor.get("x-b3-flags").map(str::trim) == Some("1");
    let sampled = match extractor.get(MULTI[2]).map(str::trim) {
        None => true,
        Some("1" | "true") => true,
        Some("0" | "false") => debug,
        Some(_) => return None,
    };
    remote_context(trace_id, span_id, sampled || debug)
}

fn trace_id(field: &str) -> Option<TraceId> {
    if !(field.len() == 16 || field.len() == 32) || !is_lower_hex(field.as_bytes()) {
        return None;
    }
    u128::from_str_radix(field, 16).ok().map(TraceId::from)
}

fn span_id(field: &str) -> Option<SpanId> {
    span_id_any(field).map(SpanId::from)
}

fn span_id_any(field: &str) -> Option<u64> {
    if field.len() != 16 || !is_lower_hex(field.as_bytes()) {
        return None;
    }
    u64::from_str_radix(field, 16).ok()
}

fn sampling_state(field: &str) -> Option<bool> {
    match field {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}
