//! The stored span layout under construction: one [`Columns`] per request, filled span by span
//! from a [`SpanView`] and finished into a [`RecordBatch`] of [`schema::stored_schema`].

use std::sync::Arc;

use arrow_array::builder::{ArrayBuilder, FixedSizeBinaryBuilder, StringBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, DictionaryArray, Int32Array, Int64Array, ListArray, RecordBatch, StructArray,
    TimestampNanosecondArray, UInt32Array,
};
use arrow_schema::ArrowError;
use hashbrown::HashMap;

use crate::builders::{DictBuilder, ListOffsets, MapBuilder};
use crate::schema::{self, AttributeType};
use crate::view::{Attr, SpanView, ValueRef, value_text};

pub(crate) fn push_key_or_null(builder: &mut DictBuilder, key: Option<i32>) {
    match key {
        Some(k) => builder.push_key(k),
        None => builder.push_null(),
    }
}

/// Lowercase hex of an id, appended to a string column.
fn push_hex(builder: &mut StringBuilder, bytes: &[u8]) {
    let mut buf = [0u8; 64];
    let len = bytes.len().min(32) * 2;
    if const_hex::encode_to_slice(&bytes[..len / 2], &mut buf[..len]).is_ok()
        && let Ok(text) = std::str::from_utf8(&buf[..len])
    {
        builder.append_value(text);
        return;
    }
    builder.append_value("");
}

/// Every column of the stored span layout under construction.
pub(crate) struct Columns {
    pub(crate) rows: usize,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent_span_id: FixedSizeBinaryBuilder,
    trace_state: DictBuilder,
    origin: Vec<i32>,
    pub(crate) origins: Origins,
    span_name: DictBuilder,
    span_kind: DictBuilder,
    start_time: Vec<i64>,
    duration: Vec<i64>,
    flags: Vec<u32>,
    status_code: DictBuilder,
    status_message: DictBuilder,
    attributes: AttributeSets,
    events: Events,
    links: Links,
}

/// The `attributes` column: a key per span into the distinct attribute sets of the request.
struct AttributeSets {
    keys: Vec<i32>,
    sets: MapBuilder,
    index: HashMap<Vec<(i32, Option<i32>)>, i32>,
    scratch: Vec<(i32, Option<i32>)>,
    typed: String,
}

/// The OTLP type of a value.
pub(crate) fn type_of(value: &ValueRef<'_>) -> AttributeType {
    match value {
        ValueRef::Str(_) => AttributeType::String,
        ValueRef::Bool(_) => AttributeType::Bool,
        ValueRef::Int(_) | ValueRef::Strindex(_) => AttributeType::Int,
        ValueRef::Double(_) => AttributeType::Double,
        ValueRef::Bytes(_) => AttributeType::Bytes,
        ValueRef::Json(serde_json::Value::Array(_)) => AttributeType::Array,
        ValueRef::Json(_) => AttributeType::Kvlist,
    }
}

impl AttributeSets {
    fn with_capacity(rows: usize) -> Self {
        Self {
            keys: Vec::with_capacity(rows),
            sets: MapBuilder::with_capacity(rows / 4, rows * 2),
            index: HashMap::new(),
            scratch: Vec::new(),
            typed: String::new(),
        }
    }

    fn push(&mut self, attributes: &[Attr<'_>], text: &mut String) {
        self.scratch.clear();
        for attr in attributes {
            // The value's type goes first, as one letter, so that readers can tell the number
            // 42 from the text "42" (`attribute_types`, Jaeger's typed tags).
            let letter = attr.value.as_ref().map(|v| type_of(v).letter());
            let value = value_text(attr.value.as_ref(), text).map(|value| {
                self.typed.clear();
                self.typed.push(char::from(letter.unwrap_or(b's')));
                self.typed.push_str(value);
                self.typed.as_str()
            });
            self.scratch.push(self.sets.intern(attr.key, value));
        }
        let key = match self.index.get(self.scratch.as_slice()) {
            Some(&key) => key,
            None => {
                // Fewer sets than spans, and a request holds fewer than 2^31 spans.
                let key = i32::try_from(self.index.len()).unwrap_or(i32::MAX);
                self.sets.push_interned(&self.scratch);
                self.sets.end_row();
                self.index.insert(self.scratch.clone(), key);
                key
            }
        };
        self.keys.push(key);
    }

    fn finish(self) -> Result<DictionaryArray<Int32Type>, ArrowError> {
        DictionaryArray::try_new(Int32Array::from(self.keys), Arc::new(self.sets.finish()?))
    }
}

/// A resource's columns, interned once for all its spans.
pub(crate) struct Resource {
    pub(crate) service: i32,
    pub(crate) namespace: Option<i32>,
    pub(crate) instance: Option<i32>,
    pub(crate) attributes: Vec<(i32, Option<i32>)>,
}

/// The values of the `origin` dictionary: one row per (resource, scope).
pub(crate) struct Origins {
    rows: i32,
    pub(crate) service_name: DictBuilder,
    pub(crate) service_namespace: DictBuilder,
    pub(crate) instance_id: DictBuilder,
    scope_name: DictBuilder,
    scope_version: DictBuilder,
    pub(crate) resource_attributes: MapBuilder,
}

impl Default for Origins {
    fn default() -> Self {
        Self {
            rows: 0,
            service_name: DictBuilder::default(),
            service_namespace: DictBuilder::default(),
            instance_id: DictBuilder::default(),
            scope_name: DictBuilder::default(),
            scope_version: DictBuilder::default(),
            resource_attributes: MapBuilder::with_capacity(0, 0),
        }
    }
}

impl Origins {
    /// Adds a row and returns its key.
    pub(crate) fn push(
        &mut self,
        resource: &Resource,
        scope: Option<&str>,
        version: Option<&str>,
    ) -> i32 {
        self.service_name.push_key(resource.service);
        push_key_or_null(&mut self.service_namespace, resource.namespace);
        push_key_or_null(&mut self.instance_id, resource.instance);
        self.scope_name.push_non_empty(scope);
        self.scope_version.push_non_empty(version);
        self.resource_attributes.push_interned(&resource.attributes);
        self.resource_attributes.end_row();
        self.rows += 1;
        self.rows - 1
    }

    fn finish(self) -> Result<StructArray, ArrowError> {
        StructArray::try_new(
            schema::origin_fields(),
            vec![
                Arc::new(self.service_name.finish()?),
                Arc::new(self.service_namespace.finish()?),
                Arc::new(self.instance_id.finish()?),
                Arc::new(self.scope_name.finish()?),
                Arc::new(self.scope_version.finish()?),
                Arc::new(self.resource_attributes.finish()?),
            ],
            None,
        )
    }
}

struct Events {
    offsets: ListOffsets,
    time: Vec<i64>,
    name: DictBuilder,
    attributes: MapBuilder,
}

struct Links {
    offsets: ListOffsets,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    trace_state: DictBuilder,
    attributes: MapBuilder,
}

const STATUS_CODES: [&str; 3] = ["unset", "ok", "error"];

impl Columns {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            rows: 0,
            trace_id: FixedSizeBinaryBuilder::with_capacity(rows, 16),
            span_id: FixedSizeBinaryBuilder::with_capacity(rows, 8),
            parent_span_id: FixedSizeBinaryBuilder::with_capacity(rows, 8),
            trace_state: DictBuilder::with_capacity(rows),
            origin: Vec::with_capacity(rows),
            origins: Origins::default(),
            span_name: DictBuilder::with_capacity(rows),
            span_kind: DictBuilder::with_capacity(rows),
            start_time: Vec::with_capacity(rows),
            duration: Vec::with_capacity(rows),
            flags: Vec::with_capacity(rows),
            status_code: DictBuilder::with_capacity(rows),
            status_message: DictBuilder::with_capacity(rows),
            attributes: AttributeSets::with_capacity(rows),
            events: Events {
                offsets: ListOffsets::with_capacity(rows),
                time: Vec::new(),
                name: DictBuilder::default(),
                attributes: MapBuilder::with_capacity(0, 0),
            },
            links: Links {
                offsets: ListOffsets::with_capacity(rows),
                trace_id: StringBuilder::new(),
                span_id: StringBuilder::new(),
                trace_state: DictBuilder::default(),
                attributes: MapBuilder::with_capacity(0, 0),
            },
        }
    }

    /// Appends a validated span (ids of the right lengths) whose resource and scope are the
    /// `origin` row.
    pub(crate) fn push_span(
        &mut self,
        span: &SpanView<'_>,
        times: Times,
        origin: i32,
        scratch: &mut String,
    ) {
        self.rows += 1;
        // `validate` checked the lengths, which is all `append_value` can refuse.
        let _ = self.trace_id.append_value(span.trace_id);
        let _ = self.span_id.append_value(span.span_id);
        if span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|&b| b == 0) {
            self.parent_span_id.append_null();
        } else {
            let _ = self.parent_span_id.append_value(span.parent_span_id);
        }
        self.origin.push(origin);
        self.trace_state.push_non_empty(Some(span.trace_state));
        self.span_name.push(span.name);
        self.span_kind
            .push(crate::facts::SpanKind::from_otlp(span.kind).as_str());
        self.start_time.push(times.start);
        self.duration.push(times.end - times.start);
        self.flags.push(span.flags);
        let code = usize::try_from(span.status_code)
            .ok()
            .and_then(|c| STATUS_CODES.get(c))
            .copied()
            .unwrap_or(STATUS_CODES[0]);
        self.status_code.push(code);
        self.status_message
            .push_non_empty(Some(span.status_message));

        self.attributes.push(&span.attributes, scratch);

        for event in &span.events {
            self.events
                .time
                .push(i64::try_from(event.time).unwrap_or(i64::MAX));
            self.events.name.push(event.name);
            for attr in &span.event_attributes[event.attributes.clone()] {
                let value = value_text(attr.value.as_ref(), scratch);
                self.events.attributes.push_entry(attr.key, value);
            }
            self.events.attributes.end_row();
        }
        self.events.offsets.end_row(self.events.time.len());

        for link in &span.links {
            push_hex(&mut self.links.trace_id, link.trace_id);
            push_hex(&mut self.links.span_id, link.span_id);
            self.links
                .trace_state
                .push_non_empty(Some(link.trace_state));
            for attr in &span.link_attributes[link.attributes.clone()] {
                let value = value_text(attr.value.as_ref(), scratch);
                self.links.attributes.push_entry(attr.key, value);
            }
            self.links.attributes.end_row();
        }
        self.links.offsets.end_row(self.links.trace_id.len());
    }

    pub(crate) fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let start = Int64Array::from(std::mem::take(&mut self.start_time));
        let duration: ArrayRef = Arc::new(Int64Array::from(std::mem::take(&mut self.duration)));
        let to_ts = |a: Int64Array| -> ArrayRef {
            Arc::new(TimestampNanosecondArray::new(a.values().clone(), None).with_timezone("UTC"))
        };

        let events = StructArray::try_new(
            schema::event_fields(),
            vec![
                to_ts(Int64Array::from(self.events.time)),
                Arc::new(self.events.name.finish()?),
                Arc::new(self.events.attributes.finish()?),
            ],
            None,
        )?;
        let events = ListArray::try_new(
            schema::event_item(),
            self.events.offsets.finish(),
            Arc::new(events),
            None,
        )?;
        let links = StructArray::try_new(
            schema::link_fields(),
            vec![
                Arc::new(self.links.trace_id.finish()),
                Arc::new(self.links.span_id.finish()),
                Arc::new(self.links.trace_state.finish()?),
                Arc::new(self.links.attributes.finish()?),
            ],
            None,
        )?;
        let links = ListArray::try_new(
            schema::link_item(),
            self.links.offsets.finish(),
            Arc::new(links),
            None,
        )?;

        let origin = DictionaryArray::<Int32Type>::try_new(
            Int32Array::from(std::mem::take(&mut self.origin)),
            Arc::new(self.origins.finish()?),
        )?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.trace_state.finish()?),
            Arc::new(origin),
            Arc::new(self.span_name.finish()?),
            Arc::new(self.span_kind.finish()?),
            to_ts(start),
            duration,
            Arc::new(self.status_code.finish()?),
            Arc::new(self.status_message.finish()?),
            Arc::new(self.attributes.finish()?),
            Arc::new(events),
            Arc::new(links),
            Arc::new(UInt32Array::from(std::mem::take(&mut self.flags))),
        ];
        RecordBatch::try_new(schema::stored_schema(), columns)
    }
}

/// Start and end of a valid span, in signed nanoseconds.
#[derive(Clone, Copy)]
pub(crate) struct Times {
    pub(crate) start: i64,
    pub(crate) end: i64,
}
