//! Writing B3 headers.
//!
//! Reading them is `opentelemetry-zipkin`'s propagator. Writing is done here because that
//! propagator writes the `X-B3-*` headers even when asked for the single header only, and
//! writes `b3: 0` ("do not sample") when there is no trace at all, which would make the next
//! service drop a trace it was free to start.

use opentelemetry::propagation::Injector;
use opentelemetry::trace::SpanContext;

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
