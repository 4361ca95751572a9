//! One borrowed form of a span, whichever decoder read it: the wire reader (`traces_wire`)
//! fills it from the request bytes, [`SpanView::fill_from_prost`] from a prost message (OTLP/JSON
//! arrives that way). The conversion to Arrow and the topology facts read only this form, so
//! the two decoders cannot differ in what they make of a span.

use std::fmt::Write as _;
use std::ops::Range;

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::Span;

/// An attribute value, borrowed from the request where it can be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ValueRef<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An index into a profile's string table: meaningless here, kept as the number.
    Strindex(i32),
    /// An array or a key-value list: stored as its JSON text.
    Json(serde_json::Value),
}

/// One attribute: a key and, when the request gave one, a value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attr<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: Option<ValueRef<'a>>,
}

/// A span event; its attributes are a range of [`SpanView::event_attributes`].
#[derive(Debug, Clone, Default)]
pub(crate) struct EventView<'a> {
    pub(crate) time: u64,
    pub(crate) name: &'a str,
    pub(crate) attributes: Range<usize>,
}

/// A span link; its attributes are a range of [`SpanView::link_attributes`].
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkView<'a> {
    pub(crate) trace_id: &'a [u8],
    pub(crate) span_id: &'a [u8],
    pub(crate) trace_state: &'a str,
    pub(crate) attributes: Range<usize>,
}

/// A span as both decoders give it. One is reused for every span of a request, so that its
/// vectors allocate once.
#[derive(Debug, Default)]
pub(crate) struct SpanView<'a> {
    pub(crate) trace_id: &'a [u8],
    pub(crate) span_id: &'a [u8],
    pub(crate) parent_span_id: &'a [u8],
    pub(crate) trace_state: &'a str,
    pub(crate) name: &'a str,
    pub(crate) kind: i32,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) flags: u32,
    pub(crate) status_code: i32,
    pub(crate) status_message: &'a str,
    pub(crate) attributes: Vec<Attr<'a>>,
    pub(crate) events: Vec<EventView<'a>>,
    pub(crate) event_attributes: Vec<Attr<'a>>,
    pub(crate) links: Vec<LinkView<'a>>,
    pub(crate) link_attributes: Vec<Attr<'a>>,
    /// The bytes of the span's protobuf message (without its tag and length) as received, or
    /// a prost message's encoded length: what `traces_spanmetrics_size_total` counts.
    pub(crate) encoded_len: usize,
}

impl<'a> SpanView<'a> {
    /// Back to an empty span, keeping the vectors' room.
    pub(crate) fn clear(&mut self) {
        self.trace_id = &[];
        self.span_id = &[];
        self.parent_span_id = &[];
        self.trace_state = "";
        self.name = "";
        self.kind = 0;
        self.start = 0;
        self.end = 0;
        self.flags = 0;
        self.status_code = 0;
        self.status_message = "";
        self.attributes.clear();
        self.events.clear();
        self.event_attributes.clear();
        self.links.clear();
        self.link_attributes.clear();
        self.encoded_len = 0;
    }

    /// The span of a prost message.
    pub(crate) fn fill_from_prost(&mut self, span: &'a Span) {
        self.clear();
        self.encoded_len = prost::Message::encoded_len(span);
        self.trace_id = &span.trace_id;
        self.span_id = &span.span_id;
        self.parent_span_id = &span.parent_span_id;
        self.trace_state = &span.trace_state;
        self.name = &span.name;
        self.kind = span.kind;
        self.start = span.start_time_unix_nano;
        self.end = span.end_time_unix_nano;
        self.flags = span.flags;
        if let Some(status) = &span.status {
            self.status_code = status.code;
            self.status_message = &status.message;
        }
        attrs_from_prost(&span.attributes, &mut self.attributes);
        for event in &span.events {
            let start = self.event_attributes.len();
            attrs_from_prost(&event.attributes, &mut self.event_attributes);
            self.events.push(EventView {
                time: event.time_unix_nano,
                name: &event.name,
                attributes: start..self.event_attributes.len(),
            });
        }
        for link in &span.links {
            let start = self.link_attributes.len();
            attrs_from_prost(&link.attributes, &mut self.link_attributes);
            self.links.push(LinkView {
                trace_id: &link.trace_id,
                span_id: &link.span_id,
                trace_state: &link.trace_state,
                attributes: start..self.link_attributes.len(),
            });
        }
    }
}

/// Appends prost attributes to `out`.
pub(crate) fn attrs_from_prost<'a>(attributes: &'a [KeyValue], out: &mut Vec<Attr<'a>>) {
    out.extend(attributes.iter().map(|kv| {
        Attr {
            key: &kv.key,
            value: kv
                .value
                .as_ref()
                .and_then(|v| v.value.as_ref())
                .map(value_from_prost),
        }
    }));
}

fn value_from_prost(value: &Value) -> ValueRef<'_> {
    match value {
        Value::StringValue(s) => ValueRef::Str(s),
        Value::BoolValue(b) => ValueRef::Bool(*b),
        Value::IntValue(i) => ValueRef::Int(*i),
        Value::DoubleValue(d) => ValueRef::Double(*d),
        Value::BytesValue(b) => ValueRef::Bytes(b),
        Value::StringValueStrindex(i) => ValueRef::Strindex(*i),
        Value::ArrayValue(_) | Value::KvlistValue(_) => ValueRef::Json(prost_json(value)),
    }
}

/// A prost value as JSON, for arrays and key-value lists.
fn prost_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    let inner = |v: &AnyValue| v.value.as_ref().map_or(J::Null, prost_json);
    match value {
        Value::ArrayValue(a) => J::Array(a.values.iter().map(inner).collect()),
        Value::KvlistValue(kv) => J::Object(
            kv.values
                .iter()
                .map(|e| (e.key.clone(), e.value.as_ref().map_or(J::Null, inner)))
                .collect(),
        ),
        scalar => scalar_json(&value_from_prost(scalar)),
    }
}

/// A scalar value as JSON: what it is inside an array or a key-value list.
pub(crate) fn scalar_json(value: &ValueRef<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        ValueRef::Str(s) => J::String((*s).to_owned()),
        ValueRef::Bool(b) => J::Bool(*b),
        ValueRef::Int(i) => J::from(*i),
        ValueRef::Strindex(i) => J::from(*i),
        ValueRef::Double(d) => {
            serde_json::Number::from_f64(*d).map_or_else(|| J::String(d.to_string()), J::Number)
        }
        ValueRef::Bytes(b) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
        ValueRef::Json(json) => json.clone(),
    }
}

/// A value as text (see the `schema` module for the rules); `None` when it has no value.
pub(crate) fn value_text<'s>(
    value: Option<&'s ValueRef<'s>>,
    scratch: &'s mut String,
) -> Option<&'s str> {
    let value = value?;
    scratch.clear();
    match value {
        ValueRef::Str(s) => return Some(s),
        ValueRef::Bool(b) => scratch.push_str(if *b { "true" } else { "false" }),
        ValueRef::Int(i) => {
            let _ = write!(scratch, "{i}");
        }
        ValueRef::Strindex(i) => {
            let _ = write!(scratch, "{i}");
        }
        ValueRef::Double(d) => {
            let _ = write!(scratch, "{d}");
        }
        ValueRef::Bytes(b) => base64::engine::general_purpose::STANDARD.encode_string(b, scratch),
        ValueRef::Json(json) => {
            let _ = write!(scratch, "{json}");
        }
    }
    Some(scratch.as_str())
}

/// The value of a string attribute: the first attribute named `key`, if its value is a string.
pub(crate) fn string_attr<'a>(attributes: &[Attr<'a>], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value {
            Some(ValueRef::Str(s)) => Some(s),
            _ => None,
        })
}
