//! One OTLP request as one message per trace: the spans of each trace id with their resource
//! and scope, keyed by the id as 32 lowercase hexadecimal characters — the key and the value
//! (OTLP protobuf) of the OpenTelemetry Collector's `kafka` exporter with
//! `partition_traces_by_id`, which splits per resource and scope as well (its messages and these
//! land on the same partition and read the same).

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

/// The spans of `request` by trace, in the order each trace first appears. Spans whose trace id
/// is not 16 bytes, or is all zeros, have no key: they are left out (the decoder has refused
/// them already, through the request's partial success).
pub(crate) fn by_trace(
    request: ExportTraceServiceRequest,
) -> Vec<(String, ExportTraceServiceRequest)> {
    let mut index: HashMap<[u8; 16], usize> = HashMap::new();
    let mut traces: Vec<([u8; 16], ExportTraceServiceRequest)> = Vec::new();
    for resource_spans in request.resource_spans {
        // The trace's copy of this resource: `(trace, its resource_spans index)`.
        let mut resource_of: HashMap<usize, usize> = HashMap::new();
        for scope_spans in resource_spans.scope_spans {
            let mut scope_of: HashMap<usize, usize> = HashMap::new();
            for span in scope_spans.spans {
                let Ok(id) = <[u8; 16]>::try_from(span.trace_id.as_slice()) else {
                    continue;
                };
                if id == [0; 16] {
                    continue;
                }
                let trace = *index.entry(id).or_insert_with(|| {
                    traces.push((id, ExportTraceServiceRequest::default()));
                    traces.len() - 1
                });
                let request = &mut traces[trace].1;
                let resource = *resource_of.entry(trace).or_insert_with(|| {
                    request.resource_spans.push(ResourceSpans {
                        resource: resource_spans.resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: resource_spans.schema_url.clone(),
                    });
                    request.resource_spans.len() - 1
                });
                let scopes = &mut request.resource_spans[resource].scope_spans;
                let scope = *scope_of.entry(trace).or_insert_with(|| {
                    scopes.push(ScopeSpans {
                        scope: scope_spans.scope.clone(),
                        spans: Vec::new(),
                        schema_url: scope_spans.schema_url.clone(),
                    });
                    scopes.len() - 1
                });
                scopes[scope].spans.push(span);
            }
        }
    }
    traces
        .into_iter()
        .map(|(id, request)| (const_hex::encode(id), request))
        .collect()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;

    fn span(trace: u8, id: u8) -> Span {
        Span {
            trace_id: if trace == 0 {
                vec![0; 16]
            } else {
                vec![trace; 16]
            },
            span_id: vec![id; 8],
            name: format!("op-{id}"),
            ..Span::default()
        }
    }

    fn resource(service: &str, spans: Vec<Vec<Span>>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![crate::testing::string_attribute("service.name", service)],
                ..Resource::default()
            }),
            scope_spans: spans
                .into_iter()
                .map(|spans| ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                })
                .collect(),
            schema_url: String::new(),
        }
    }

    #[test]
    fn each_trace_is_one_message_with_its_resources_and_scopes() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                resource("cart", vec![vec![span(1, 1), span(2, 2)], vec![span(1, 3)]]),
                resource("shop", vec![vec![span(2, 4), span(0, 5)]]),
            ],
        };
        let split = by_trace(request);
        let keys: Vec<&str> = split.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "01010101010101010101010101010101",
                "02020202020202020202020202020202"
            ],
            "lowercase hex, in order of first appearance; the all-zero id has no key"
        );
        let (_, first) = &split[0];
        assert_eq!(first.resource_spans.len(), 1, "trace 1 is cart's alone");
        assert_eq!(
            first.resource_spans[0].scope_spans.len(),
            2,
            "both of cart's scopes"
        );
        let (_, second) = &split[1];
        assert_eq!(
            second.resource_spans.len(),
            2,
            "trace 2 spans cart and shop"
        );
        let names: Vec<&str> = second
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["op-2", "op-4"]);
    }
}
