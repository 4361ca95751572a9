//! Fixtures for tests and benchmarks: OTLP trace requests built from a few fields, so that the
//! collector's unit tests and the end-to-end tests share one way of making them.
//!
//! ```
//! use wayfinder_collector::testing::{span, trace_request};
//! let request = trace_request(Some("checkout"), vec![span([1; 16], 1, "op", 1, 2)]);
//! assert_eq!(wayfinder_collector::decode::span_count(&request), 1);
//! ```

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// A request with one resource (with `service.name` when given) and one scope holding `spans`.
pub fn trace_request(service: Option<&str>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let resource = service.map(|name| Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(name.into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource,
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A span with the given ids, name and times (nanoseconds since the epoch).
pub fn span(trace_id: [u8; 16], span_id: u64, name: &str, start: u64, end: u64) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_be_bytes().to_vec(),
        name: name.to_owned(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Default::default()
    }
}
