//! The differential check of the wire decoder against prost: for any bytes, prost and
//! [`decode_traces_wire`] refuse together, or they give the same batch, facts and rejections.
//! With [`DecodeOptions::salvage`] the wire decoder gives the same answer wherever it decodes
//! the bytes without it, and where it refuses them, it either refuses them again or accepts
//! them with spans rejected for an invalid value. The fuzz target `traces_wire` and the
//! crate's tests call it.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use crate::{
    DecodeError, DecodeOptions, DecodedTraces, decode_traces, decode_traces_wire,
    decode_traces_wire_with,
};

/// What both decoders made of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// Both refused the bytes.
    BothRefused,
    /// Both decoded them, to the same result: this many spans accepted.
    Same {
        /// Spans accepted.
        accepted: usize,
    },
}

/// Decodes `bytes` with prost (then [`decode_traces`]) and with [`decode_traces_wire`]; an
/// error says how they differ.
///
/// ```
/// use wayfinder_decode::oracle::{Agreement, compare_with_prost};
/// assert_eq!(compare_with_prost(&[]), Ok(Agreement::Same { accepted: 0 }), "an empty request");
/// assert_eq!(compare_with_prost(&[0x0a, 0x05]), Ok(Agreement::BothRefused), "cut short");
/// ```
pub fn compare_with_prost(bytes: &[u8]) -> Result<Agreement, String> {
    let agreement = strictly(bytes)?;
    let salvaging = DecodeOptions {
        salvage: true,
        ..DecodeOptions::default()
    };
    match (agreement, decode_traces_wire_with(bytes, &salvaging)) {
        (Agreement::Same { .. }, Ok(salvaged)) => {
            let strict = decode_traces_wire(bytes).map_err(|e| e.to_string())?;
            same(&strict, &salvaged).map_err(|e| format!("salvaging changed an answer: {e}"))?;
        }
        (Agreement::Same { .. }, Err(e)) => {
            return Err(format!(
                "salvaging refused what the strict decoder took: {e}"
            ));
        }
        (Agreement::BothRefused, Ok(salvaged)) if salvaged.rejections.invalid_value == 0 => {
            return Err("salvaging took refused bytes without rejecting a span".into());
        }
        (Agreement::BothRefused, _) => {}
    }
    Ok(agreement)
}

fn strictly(bytes: &[u8]) -> Result<Agreement, String> {
    let prost = ExportTraceServiceRequest::decode(bytes);
    let wire = decode_traces_wire(bytes);
    match (prost, wire) {
        (Err(_), Err(DecodeError::Malformed(_))) => Ok(Agreement::BothRefused),
        (Ok(request), Ok(wire)) => {
            let prost = decode_traces(&request)
                .map_err(|e| format!("prost's message did not convert: {e}"))?;
            same(&prost, &wire)?;
            // Bytes that are prost's own encoding (what SDKs send) give every span the size
            // prost gives it.
            if request.encode_to_vec() == bytes {
                let sizes = |d: &DecodedTraces| d.facts.iter().map(|f| f.size).collect::<Vec<_>>();
                if sizes(&prost) != sizes(&wire) {
                    return Err(format!(
                        "span sizes of a canonical encoding differ: prost {:?}, wire {:?}",
                        sizes(&prost),
                        sizes(&wire)
                    ));
                }
            }
            Ok(Agreement::Same {
                accepted: wire.accepted(),
            })
        }
        (Ok(_), Err(e)) => Err(format!(
            "prost decoded the bytes, the wire decoder refused: {e}"
        )),
        (Err(e), Ok(_)) => Err(format!(
            "the wire decoder decoded bytes that prost refused: {e}"
        )),
        (Err(_), Err(e)) => Err(format!("the wire decoder failed inside: {e}")),
    }
}

fn same(prost: &DecodedTraces, wire: &DecodedTraces) -> Result<(), String> {
    if prost.rejections != wire.rejections {
        return Err(format!(
            "rejections differ: prost {:?}, wire {:?}",
            prost.rejections, wire.rejections
        ));
    }
    let batch = |d: &DecodedTraces| d.batch.as_ref().map(|b| b.record_batch().clone());
    if batch(prost) != batch(wire) {
        return Err(format!(
            "batches differ:\nprost {:?}\nwire  {:?}",
            batch(prost),
            batch(wire)
        ));
    }
    // A span's size is the bytes of its message as received, prost's its re-encoding: they
    // differ where the bytes are not prost's own encoding (unknown fields, defaults written
    // out, repeated copies, varints of another length), which `strictly` checks apart.
    let sized_as_prost = |facts: &[crate::SpanFacts]| -> Vec<crate::SpanFacts> {
        facts
            .iter()
            .map(|f| crate::SpanFacts {
                size: 0,
                ..f.clone()
            })
            .collect()
    };
    if sized_as_prost(&prost.facts) != sized_as_prost(&wire.facts) {
        return Err(format!(
            "facts differ:\nprost {:?}\nwire  {:?}",
            prost.facts, wire.facts
        ));
    }
    Ok(())
}

/// The split by trace ([`crate::split::by_trace`]) against prost: where prost decodes `bytes`,
/// the split's pieces decode too, each holds the spans of one trace id alone, under the
/// resource and scope they had, and together they hold every span with a valid trace id once,
/// in order; where prost refuses `bytes`, so may the split (it reads only the ids). The fuzz
/// target `split_traces` and the crate's tests call it.
///
/// ```
/// assert_eq!(wayfinder_decode::oracle::check_split(&[]), Ok(0), "an empty request");
/// ```
pub fn check_split(bytes: &[u8]) -> Result<usize, String> {
    let Ok(request) = ExportTraceServiceRequest::decode(bytes) else {
        return Ok(0);
    };
    let pieces = crate::split::by_trace(bytes)
        .map_err(|e| format!("prost decodes the request, the split refuses it: {e}"))?;
    // Every span with a valid id, with its resource and scope, in request order; compared as
    // bytes (a NaN attribute is not equal to itself as a value).
    type Placed = (
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        String,
        String,
        Vec<u8>,
        Vec<u8>,
    );
    let place = |request: &ExportTraceServiceRequest| -> Vec<Placed> {
        let mut spans = Vec::new();
        for resource in &request.resource_spans {
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    let valid = span.trace_id.len() == 16 && span.trace_id.iter().any(|b| *b != 0);
                    if valid {
                        spans.push((
                            resource
                                .resource
                                .as_ref()
                                .map(prost::Message::encode_to_vec),
                            scope.scope.as_ref().map(prost::Message::encode_to_vec),
                            resource.schema_url.clone(),
                            scope.schema_url.clone(),
                            span.trace_id.clone(),
                            span.encode_to_vec(),
                        ));
                    }
                }
            }
        }
        spans
    };
    let expected = place(&request);
    let mut found: Vec<Placed> = Vec::new();
    for (id, piece) in &pieces {
        let piece = ExportTraceServiceRequest::decode(&piece[..])
            .map_err(|e| format!("a piece does not decode: {e}"))?;
        let spans = place(&piece);
        if spans.iter().any(|placed| placed.4 != id[..]) {
            return Err(format!("the piece of {id:02x?} holds another trace's span"));
        }
        found.extend(spans);
    }
    // The pieces go trace by trace: compare each trace's spans in order.
    let by_trace = |spans: &[Placed]| {
        let mut traces: Vec<(Vec<u8>, Vec<Placed>)> = Vec::new();
        for placed in spans {
            match traces.iter_mut().find(|(id, _)| *id == placed.4) {
                Some((_, list)) => list.push(placed.clone()),
                None => traces.push((placed.4.clone(), vec![placed.clone()])),
            }
        }
        traces
    };
    if by_trace(&expected) != by_trace(&found) {
        return Err(format!(
            "the pieces hold other spans than the request: {} expected, {} found",
            expected.len(),
            found.len()
        ));
    }
    Ok(found.len())
}
