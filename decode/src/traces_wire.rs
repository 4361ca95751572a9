//! OTLP trace requests read straight from their protobuf bytes into the Arrow columns and the
//! topology facts, borrowing strings and ids from the request instead of copying them into
//! prost's `String`s and `Vec`s first.
//!
//! It gives what [`decode_traces`](crate::decode_traces) gives for the prost message of the same
//! bytes, and refuses what prost refuses: every field is read or skipped as prost would,
//! including the ones nothing here uses (scope attributes, entity references, schema URLs), so
//! that a request prost would refuse is refused here too. The tests below and the fuzz target
//! `traces_wire` in `decode/fuzz` compare the two on any input.

use arrow_schema::ArrowError;
use thiserror::Error;

use crate::options::DecodeOptions;
use crate::otlp::{DecodedTraces, ResourceKeys, Scope, TraceDecoder};
use crate::view::{Attr, EventView, LinkView, SpanView, ValueRef, scalar_json};
use crate::wire::{Message, WireError};

/// Why a request's bytes could not be decoded.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The bytes are not an `ExportTraceServiceRequest`: the client's error.
    #[error("cannot decode ExportTraceServiceRequest: {0}")]
    Malformed(#[from] WireError),
    /// The Arrow batch could not be built: a bug, not bad input.
    #[error("cannot build the span batch: {0}")]
    Arrow(#[from] ArrowError),
}

/// Decodes the protobuf bytes of an `ExportTraceServiceRequest` into Arrow and topology facts,
/// rejecting invalid spans one by one as [`decode_traces`](crate::decode_traces) does.
///
/// ```
/// use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
/// use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
/// use prost::Message as _;
///
/// let span = Span {
///     trace_id: vec![7; 16],
///     span_id: vec![1; 8],
///     name: "GET /cart".into(),
///     start_time_unix_nano: 1,
///     end_time_unix_nano: 2,
///     ..Default::default()
/// };
/// let request = ExportTraceServiceRequest {
///     resource_spans: vec![ResourceSpans {
///         scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
///         ..Default::default()
///     }],
/// };
/// let decoded = wayfinder_decode::decode_traces_wire(&request.encode_to_vec()).unwrap();
/// assert_eq!(decoded.accepted(), 1);
/// assert!(wayfinder_decode::decode_traces_wire(&[0x0a, 0x05]).is_err(), "a cut-off message");
/// ```
pub fn decode_traces_wire(bytes: &[u8]) -> Result<DecodedTraces, DecodeError> {
    decode_traces_wire_with(bytes, &DecodeOptions::default())
}

/// Like [`decode_traces_wire`] without the topology facts, for a collector whose topology is off.
pub fn decode_spans_only_wire(bytes: &[u8]) -> Result<DecodedTraces, DecodeError> {
    let options = DecodeOptions {
        facts: false,
        ..DecodeOptions::default()
    };
    decode_traces_wire_with(bytes, &options)
}

/// The vectors reused for every resource and span of one request.
#[derive(Default)]
struct Scratch<'a> {
    resource_attributes: Vec<Attr<'a>>,
    view: SpanView<'a>,
}

/// Like [`decode_traces_wire`], taking what `options` asks for from each span.
pub fn decode_traces_wire_with(
    bytes: &[u8],
    options: &DecodeOptions,
) -> Result<DecodedTraces, DecodeError> {
    let mut decoder = TraceDecoder::new(span_count_wire(bytes), options);
    let mut scratch = Scratch::default();
    let mut request = Message::top(bytes);
    while let Some((tag, wire_type)) = request.next_field()? {
        match tag {
            1 => resource_spans(request.message(tag, wire_type)?, &mut decoder, &mut scratch)?,
            _ => request.skip(tag, wire_type)?,
        }
    }
    Ok(decoder.finish()?)
}

/// How many spans the bytes hold, for the columns' capacity; 0 when they do not decode (the
/// decode itself then says why).
fn span_count_wire(bytes: &[u8]) -> usize {
    fn count(bytes: &[u8]) -> Result<usize, WireError> {
        let mut spans = 0;
        let mut request = Message::top(bytes);
        while let Some((tag, wire_type)) = request.next_field()? {
            if tag != 1 {
                request.skip(tag, wire_type)?;
                continue;
            }
            let mut resource_spans = request.message(tag, wire_type)?;
            while let Some((tag, wire_type)) = resource_spans.next_field()? {
                if tag != 2 {
                    resource_spans.skip(tag, wire_type)?;
                    continue;
                }
                let mut scope_spans = resource_spans.message(tag, wire_type)?;
                while let Some((tag, wire_type)) = scope_spans.next_field()? {
                    spans += usize::from(tag == 2);
                    scope_spans.skip(tag, wire_type)?;
                }
            }
        }
        Ok(spans)
    }
    count(bytes).unwrap_or(0)
}

fn resource_spans<'a>(
    message: Message<'a>,
    decoder: &mut TraceDecoder<'_>,
    scratch: &mut Scratch<'a>,
) -> Result<(), WireError> {
    // The resource first: it may follow its spans on the wire, and it may come in parts (a
    // repeated message field is merged, as prost merges it).
    scratch.resource_attributes.clear();
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => resource(
                fields.message(tag, wire_type)?,
                &mut scratch.resource_attributes,
            )?,
            // The scope spans, in the second pass; checked there.
            2 => drop(fields.message(tag, wire_type)?),
            3 => drop(fields.string(tag, wire_type)?),
            _ => fields.skip(tag, wire_type)?,
        }
    }
    let keys = decoder.resource(&scratch.resource_attributes);
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            2 => scope_spans(
                fields.message(tag, wire_type)?,
                decoder,
                &keys,
                &mut scratch.view,
            )?,
            // Read in the first pass.
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(())
}

fn resource<'a>(message: Message<'a>, attributes: &mut Vec<Attr<'a>>) -> Result<(), WireError> {
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => attributes.push(key_value(fields.message(tag, wire_type)?)?),
            2 => drop(fields.varint(tag, wire_type)?),
            3 => entity_ref(fields.message(tag, wire_type)?)?,
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(())
}

/// An `EntityRef`: not used, but checked as prost checks it.
fn entity_ref(message: Message<'_>) -> Result<(), WireError> {
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1..=4 => drop(fields.string(tag, wire_type)?),
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(())
}

fn scope_spans<'a>(
    message: Message<'a>,
    decoder: &mut TraceDecoder<'_>,
    resource: &ResourceKeys,
    view: &mut SpanView<'a>,
) -> Result<(), WireError> {
    let (mut name, mut version) = ("", "");
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => scope(fields.message(tag, wire_type)?, &mut name, &mut version)?,
            2 => drop(fields.message(tag, wire_type)?),
            3 => drop(fields.string(tag, wire_type)?),
            _ => fields.skip(tag, wire_type)?,
        }
    }
    let mut scope = Scope::new(name, version);
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            2 => match span(fields.message(tag, wire_type)?, view) {
                Ok(()) => decoder.span(resource, &mut scope, view),
                // The span's own bytes are framed: what is wrong inside them costs it alone.
                Err(WireError::InvalidUtf8 | WireError::RecursionLimit) if decoder.salvages() => {
                    decoder.reject_invalid_value();
                }
                Err(error) => return Err(error),
            },
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(())
}

fn scope<'a>(
    message: Message<'a>,
    name: &mut &'a str,
    version: &mut &'a str,
) -> Result<(), WireError> {
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => *name = fields.string(tag, wire_type)?,
            2 => *version = fields.string(tag, wire_type)?,
            3 => drop(key_value(fields.message(tag, wire_type)?)?),
            4 => drop(fields.varint(tag, wire_type)?),
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(())
}

fn span<'a>(message: Message<'a>, view: &mut SpanView<'a>) -> Result<(), WireError> {
    view.clear();
    view.encoded_len = message.remaining();
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => view.trace_id = fields.bytes(tag, wire_type)?,
            2 => view.span_id = fields.bytes(tag, wire_type)?,
            3 => view.trace_state = fields.string(tag, wire_type)?,
            4 => view.parent_span_id = fields.bytes(tag, wire_type)?,
            5 => view.name = fields.string(tag, wire_type)?,
            // An `int32` (an enum) takes the low 32 bits of the varint, as prost does.
            6 => view.kind = fields.varint(tag, wire_type)? as i32,
            7 => view.start = fields.fixed64(tag, wire_type)?,
            8 => view.end = fields.fixed64(tag, wire_type)?,
            9 => {
                let attribute = key_value(fields.message(tag, wire_type)?)?;
                view.attributes.push(attribute);
            }
            11 => event(fields.message(tag, wire_type)?, view)?,
            13 => link(fields.message(tag, wire_type)?, view)?,
            15 => status(fields.message(tag, wire_type)?, view)?,
            16 => view.flags = fields.fixed32(tag, wire_type)?,
            10 | 12 | 14 => drop(fields.varint(tag, wire_type)?),
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(())
}

fn event<'a>(message: Message<'a>, view: &mut SpanView<'a>) -> Result<(), WireError> {
    let mut event = EventView {
        attributes: view.event_attributes.len()..view.event_attributes.len(),
        ..EventView::default()
    };
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => event.time = fields.fixed64(tag, wire_type)?,
            2 => event.name = fields.string(tag, wire_type)?,
            3 => {
                let attribute = key_value(fields.message(tag, wire_type)?)?;
                view.event_attributes.push(attribute);
            }
            4 => drop(fields.varint(tag, wire_type)?),
            _ => fields.skip(tag, wire_type)?,
        }
    }
    event.attributes.end = view.event_attributes.len();
    view.events.push(event);
    Ok(())
}

fn link<'a>(message: Message<'a>, view: &mut SpanView<'a>) -> Result<(), WireError> {
    let mut link = LinkView {
        attributes: view.link_attributes.len()..view.link_attributes.len(),
        ..LinkView::default()
    };
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => link.trace_id = fields.bytes(tag, wire_type)?,
            2 => link.span_id = fields.bytes(tag, wire_type)?,
            3 => link.trace_state = fields.string(tag, wire_type)?,
            4 => {
                let attribute = key_value(fields.message(tag, wire_type)?)?;
                view.link_attributes.push(attribute);
            }
            5 => drop(fields.varint(tag, wire_type)?),
            6 => drop(fields.fixed32(tag, wire_type)?),
            _ => fields.skip(tag, wire_type)?,
        }
    }
    link.attributes.end = view.link_attributes.len();
    view.links.push(link);
    Ok(())
}

fn status<'a>(message: Message<'a>, view: &mut SpanView<'a>) -> Result<(), WireError> {
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            2 => view.status_message = fields.string(tag, wire_type)?,
            3 => view.status_code = fields.varint(tag, wire_type)? as i32,
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(())
}

/// An `AnyValue` being read: its `value` oneof as prost would hold it.
#[derive(Default)]
enum AnyValue<'a> {
    #[default]
    Unset,
    Scalar(ValueRef<'a>),
    Array(Vec<serde_json::Value>),
    Kvlist(Vec<(String, serde_json::Value)>),
}

impl<'a> AnyValue<'a> {
    fn into_value(self) -> Option<ValueRef<'a>> {
        match self {
            Self::Unset => None,
            Self::Scalar(value) => Some(value),
            nested => Some(ValueRef::Json(nested.into_json())),
        }
    }

    fn into_json(self) -> serde_json::Value {
        match self {
            Self::Unset => serde_json::Value::Null,
            Self::Scalar(value) => scalar_json(&value),
            Self::Array(values) => serde_json::Value::Array(values),
            Self::Kvlist(entries) => serde_json::Value::Object(entries.into_iter().collect()),
        }
    }
}

fn key_value(message: Message<'_>) -> Result<Attr<'_>, WireError> {
    let mut key = "";
    let mut value = AnyValue::Unset;
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => key = fields.string(tag, wire_type)?,
            2 => any_value(fields.message(tag, wire_type)?, &mut value)?,
            3 => drop(fields.varint(tag, wire_type)?),
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(Attr {
        key,
        value: value.into_value(),
    })
}

/// Merges one `AnyValue` message into `value`: a later member of the oneof replaces an earlier
/// one, and a second array or key-value list extends the first, as prost merges them.
fn any_value<'a>(message: Message<'a>, value: &mut AnyValue<'a>) -> Result<(), WireError> {
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        let scalar = match tag {
            1 => ValueRef::Str(fields.string(tag, wire_type)?),
            2 => ValueRef::Bool(fields.varint(tag, wire_type)? != 0),
            3 => ValueRef::Int(fields.varint(tag, wire_type)? as i64),
            4 => ValueRef::Double(f64::from_bits(fields.fixed64(tag, wire_type)?)),
            5 => {
                let array = fields.message(tag, wire_type)?;
                if !matches!(value, AnyValue::Array(_)) {
                    *value = AnyValue::Array(Vec::new());
                }
                if let AnyValue::Array(values) = value {
                    array_value(array, values)?;
                }
                continue;
            }
            6 => {
                let list = fields.message(tag, wire_type)?;
                if !matches!(value, AnyValue::Kvlist(_)) {
                    *value = AnyValue::Kvlist(Vec::new());
                }
                if let AnyValue::Kvlist(entries) = value {
                    kvlist_value(list, entries)?;
                }
                continue;
            }
            7 => ValueRef::Bytes(fields.bytes(tag, wire_type)?),
            8 => ValueRef::Strindex(fields.varint(tag, wire_type)? as i32),
            _ => {
                fields.skip(tag, wire_type)?;
                continue;
            }
        };
        *value = AnyValue::Scalar(scalar);
    }
    Ok(())
}

fn array_value(message: Message<'_>, values: &mut Vec<serde_json::Value>) -> Result<(), WireError> {
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => {
                let mut element = AnyValue::Unset;
                any_value(fields.message(tag, wire_type)?, &mut element)?;
                values.push(element.into_json());
            }
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(())
}

fn kvlist_value(
    message: Message<'_>,
    entries: &mut Vec<(String, serde_json::Value)>,
) -> Result<(), WireError> {
    let mut fields = message;
    while let Some((tag, wire_type)) = fields.next_field()? {
        match tag {
            1 => {
                let entry = key_value(fields.message(tag, wire_type)?)?;
                let json = match entry.value {
                    None => serde_json::Value::Null,
                    Some(ValueRef::Json(json)) => json,
                    Some(scalar) => scalar_json(&scalar),
                };
                entries.push((entry.key.to_owned(), json));
            }
            _ => fields.skip(tag, wire_type)?,
        }
    }
    Ok(())
}
