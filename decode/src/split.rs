//! An OTLP trace request split by trace id at the wire level, for Kafka: one request per trace
//! id, holding that trace's spans with their resources and scopes, the bytes of each span,
//! resource and scope copied as they came (nothing is decoded but the trace ids, so nothing is
//! lost or changed: unknown fields stay, and a span the decoder refuses travels as it is).
//!
//! ```
//! use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
//! use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
//! use prost::Message as _;
//!
//! let span = |trace: u8, name: &str| Span {
//!     trace_id: vec![trace; 16],
//!     span_id: vec![1; 8],
//!     name: name.into(),
//!     ..Span::default()
//! };
//! let request = ExportTraceServiceRequest {
//!     resource_spans: vec![ResourceSpans {
//!         scope_spans: vec![ScopeSpans {
//!             spans: vec![span(1, "a"), span(2, "b"), span(1, "c")],
//!             ..ScopeSpans::default()
//!         }],
//!         ..ResourceSpans::default()
//!     }],
//! };
//! let split = wayfinder_decode::split::by_trace(&request.encode_to_vec()).unwrap();
//! assert_eq!(split.len(), 2);
//! let first = ExportTraceServiceRequest::decode(&split[0].1[..]).unwrap();
//! assert_eq!(first.resource_spans[0].scope_spans[0].spans.len(), 2, "a and c");
//! ```

use std::collections::HashMap;

use crate::wire::{Message, WireError, WireType};

/// Field numbers of the OTLP trace messages.
const RESOURCE_SPANS: u32 = 1;
const SCOPE_SPANS: u32 = 2;
const SPANS: u32 = 2;
const TRACE_ID: u32 = 1;

/// The raw bytes of a trace's span fields under one scope, by the scope's index in its
/// resource.
type ScopeSpans = (usize, Vec<u8>);

/// One trace's part of a request: per resource (by its index in the request), its scopes.
#[derive(Default)]
struct Trace {
    resources: Vec<(usize, Vec<ScopeSpans>)>,
}

/// One trace's spans as a request of their own, with its trace id.
pub type TraceRequest = ([u8; 16], Vec<u8>);

/// The request's spans by trace id, in the order each trace id first appears: the id and the
/// encoded `ExportTraceServiceRequest` of its spans. Spans whose trace id is not 16 bytes, or
/// is all zeros, have no place: they are left out. Bytes that are not a trace request are an
/// error.
pub fn by_trace(request: &[u8]) -> Result<Vec<TraceRequest>, WireError> {
    // Each resource's fields other than its scopes, and each scope's fields other than its
    // spans, as raw bytes: copied into every trace that has spans under them.
    let mut resource_heads: Vec<Vec<u8>> = Vec::new();
    let mut scope_heads: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut index: HashMap<[u8; 16], usize> = HashMap::new();
    let mut traces: Vec<([u8; 16], Trace)> = Vec::new();
    let mut top = Message::top(request);
    while let Some((tag, wire_type)) = top.next_field()? {
        if tag != RESOURCE_SPANS {
            top.skip(tag, wire_type)?;
            continue;
        }
        let resource_index = resource_heads.len();
        let mut resource = top.message(tag, wire_type)?;
        let mut head = Vec::new();
        let mut scopes = Vec::new();
        loop {
            let before = resource.rest();
            let Some((tag, wire_type)) = resource.next_field()? else {
                break;
            };
            if tag != SCOPE_SPANS || wire_type != WireType::LengthDelimited {
                resource.skip(tag, wire_type)?;
                head.extend_from_slice(&before[..before.len() - resource.rest().len()]);
                continue;
            }
            let scope_index = scopes.len();
            let mut scope = resource.message(tag, wire_type)?;
            let mut scope_head = Vec::new();
            loop {
                let before = scope.rest();
                let Some((tag, wire_type)) = scope.next_field()? else {
                    break;
                };
                if tag != SPANS || wire_type != WireType::LengthDelimited {
                    scope.skip(tag, wire_type)?;
                    scope_head.extend_from_slice(&before[..before.len() - scope.rest().len()]);
                    continue;
                }
                let span = scope.message(tag, wire_type)?;
                let raw = &before[..before.len() - scope.rest().len()];
                let Some(id) = trace_id(span)? else {
                    continue;
                };
                let trace = *index.entry(id).or_insert_with(|| {
                    traces.push((id, Trace::default()));
                    traces.len() - 1
                });
                let resources = &mut traces[trace].1.resources;
                if resources.last().is_none_or(|(r, _)| *r != resource_index) {
                    resources.push((resource_index, Vec::new()));
                }
                let scopes_of = &mut resources.last_mut().expect("just pushed").1;
                if scopes_of.last().is_none_or(|(s, _)| *s != scope_index) {
                    scopes_of.push((scope_index, Vec::new()));
                }
                scopes_of
                    .last_mut()
                    .expect("just pushed")
                    .1
                    .extend_from_slice(raw);
            }
            scopes.push(scope_head);
        }
        resource_heads.push(head);
        scope_heads.push(scopes);
    }
    Ok(traces
        .into_iter()
        .map(|(id, trace)| {
            let mut out = Vec::new();
            for (r, scopes) in trace.resources {
                let mut resource = resource_heads[r].clone();
                for (s, spans) in scopes {
                    let mut scope = scope_heads[r][s].clone();
                    scope.extend_from_slice(&spans);
                    field(&mut resource, SCOPE_SPANS, &scope);
                }
                field(&mut out, RESOURCE_SPANS, &resource);
            }
            (id, out)
        })
        .collect())
}

/// A span's trace id, when it is 16 bytes and not all zeros (the last one, as prost keeps).
fn trace_id(mut span: Message<'_>) -> Result<Option<[u8; 16]>, WireError> {
    let mut id = None;
    while let Some((tag, wire_type)) = span.next_field()? {
        if tag == TRACE_ID {
            id = Some(span.bytes(tag, wire_type)?);
        } else {
            span.skip(tag, wire_type)?;
        }
    }
    Ok(id
        .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
        .filter(|id| *id != [0; 16]))
}

/// Appends a length-delimited field.
fn field(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    varint(out, u64::from(tag << 3 | 2));
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;

    use crate::oracle::check_split;

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

    fn resource(dropped: u32, scopes: Vec<Vec<Span>>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                dropped_attributes_count: dropped,
                ..Resource::default()
            }),
            scope_spans: scopes
                .into_iter()
                .enumerate()
                .map(|(i, spans)| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: format!("scope-{i}"),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    schema_url: format!("https://schema/{i}"),
                })
                .collect(),
            schema_url: "https://resource".into(),
        }
    }

    #[test]
    fn the_pieces_hold_every_span_once_under_its_resource_and_scope() {
        // Each row: a request, how many spans the pieces hold, and why.
        let cases = [
            (ExportTraceServiceRequest::default(), 0, "no spans"),
            (
                ExportTraceServiceRequest {
                    resource_spans: vec![
                        resource(1, vec![vec![span(1, 1), span(2, 2)], vec![span(1, 3)]]),
                        resource(2, vec![vec![span(2, 4), span(0, 5)]]),
                    ],
                },
                4,
                "two traces over two resources and three scopes; the all-zero id left out",
            ),
            (
                ExportTraceServiceRequest {
                    resource_spans: vec![resource(
                        3,
                        vec![vec![Span {
                            trace_id: vec![7; 15],
                            ..span(7, 6)
                        }]],
                    )],
                },
                0,
                "a 15-byte id has no place",
            ),
        ];
        for (request, spans, why) in cases {
            assert_eq!(check_split(&request.encode_to_vec()), Ok(spans), "{why}");
        }
    }

    #[test]
    fn unknown_fields_travel_with_their_resource() {
        // Field 99 of a resource, which this reader does not know, in every piece under it.
        let mut bytes = Vec::new();
        let mut resource = resource(1, vec![vec![span(1, 1), span(2, 2)]]).encode_to_vec();
        resource.extend_from_slice(&[0x98, 0x06, 0x2a]); // field 99, varint 42
        super::field(&mut bytes, 1, &resource);
        let pieces = super::by_trace(&bytes).unwrap();
        assert_eq!(pieces.len(), 2);
        for (_, piece) in pieces {
            assert!(
                piece.windows(3).any(|w| w == [0x98, 0x06, 0x2a]),
                "the unknown field is kept"
            );
        }
    }
}
