//! Trace-context extraction on any headers: W3C `traceparent`/`tracestate`/`baggage`, B3
//! single and multi, Jaeger `uber-trace-id`. It never panics, and what it extracts survives a
//! round trip through each format that carries a span context: injected in it alone, then
//! extracted again, the same trace id, span id and sampled flag.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt as _;
use wayfinder_middleware::{PropagationFormat, Propagation};

/// The headers the propagators read; a byte of the input picks one.
const NAMES: [&str; 11] = [
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "uber-trace-id",
    "uberctx-user",
];

/// The formats that carry a span context (baggage carries none). Extraction reads every
/// format whatever is injected; the round trip goes through each of these alone.
const FORMATS: [PropagationFormat; 4] = [
    PropagationFormat::TraceContext,
    PropagationFormat::B3,
    PropagationFormat::B3Multi,
    PropagationFormat::Jaeger,
];

fuzz_target!(|data: &[u8]| {
    // Lines of `<name byte><value>`, split at newlines.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(NAMES[usize::from(pick) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    for format in FORMATS {
        let propagation = Propagation::inject([format]);
        let cx = propagation.extract(&headers);
        let span = cx.span();
        let first = span.span_context();
        let mut carried = HeaderMap::new();
        propagation.inject_into(&cx, &mut carried);
        let again = propagation.extract(&carried);
        let span_again = again.span();
        let second = span_again.span_context();
        if first.is_valid() {
            assert_eq!(first.trace_id(), second.trace_id(), "{format:?}: {headers:?}");
            assert_eq!(first.span_id(), second.span_id(), "{format:?}: {headers:?}");
            assert_eq!(first.is_sampled(), second.is_sampled(), "{format:?}: {headers:?}");
        } else {
            assert!(!second.is_valid(), "{format:?}: nothing extracted, nothing injected");
        }
    }
});
