//! OTLP trace requests → [`SpanBatch`], with the per-span validation the OTLP specification asks
//! for: an invalid span is rejected on its own and the rest of the request is kept.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, DictionaryArray, FixedSizeBinaryBuilder, Int32Array, Int64Array,
    ListArray, StringBuilder, StructArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::Int32Type;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use hashbrown::HashMap;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::Span;

use super::SpanBatch;
use super::builders::{DictBuilder, ListOffsets, MapBuilder};
use super::facts::SpanFacts;
use super::schema;

/// What came out of one trace request.
#[derive(Debug)]
pub struct DecodedTraces {
    /// The accepted spans; `None` when the request held none.
    pub batch: Option<SpanBatch>,
    /// The topology facts of the accepted spans, in the same order (empty when not asked for).
    pub facts: Vec<SpanFacts>,
    /// Why spans were rejected, per reason.
    pub rejections: Rejections,
}

impl DecodedTraces {
    /// How many spans were accepted.
    pub fn accepted(&self) -> usize {
        self.batch.as_ref().map_or(0, SpanBatch::rows)
    }
}

/// Counts of rejected spans, per reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rejections {
    /// `trace_id` not 16 bytes, or all zero.
    pub invalid_trace_id: u64,
    /// `span_id` not 8 bytes, or all zero.
    pub invalid_span_id: u64,
    /// `parent_span_id` neither empty nor 8 bytes.
    pub invalid_parent_span_id: u64,
    /// `end_time_unix_nano` before `start_time_unix_nano`.
    pub end_before_start: u64,
    /// A timestamp past the year 2262 (beyond a signed 64-bit nanosecond count).
    pub timestamp_out_of_range: u64,
}

impl Rejections {
    /// How many spans were rejected in all.
    pub fn total(&self) -> u64 {
        self.invalid_trace_id
            + self.invalid_span_id
            + self.invalid_parent_span_id
            + self.end_before_start
            + self.timestamp_out_of_range
    }

    /// The English message for `partial_success.error_message`; `None` when nothing was rejected.
    pub fn message(&self) -> Option<String> {
        if self.total() == 0 {
            return None;
        }
        let reasons = [
            (
                self.invalid_trace_id,
                "an invalid trace_id (must be 16 bytes, not all zero)",
            ),
            (
                self.invalid_span_id,
                "an invalid span_id (must be 8 bytes, not all zero)",
            ),
            (
                self.invalid_parent_span_id,
                "an invalid parent_span_id (must be empty or 8 bytes)",
            ),
            (
                self.end_before_start,
                "end_time_unix_nano before start_time_unix_nano",
            ),
            (
                self.timestamp_out_of_range,
                "a timestamp beyond the year 2262",
            ),
        ];
        let mut message = format!("rejected {} span(s): ", self.total());
        let mut first = true;
        for (count, reason) in reasons {
            if count > 0 {
                if !first {
                    message.push_str("; ");
                }
                first = false;
                let _ = write!(message, "{count} with {reason}");
            }
        }
        Some(message)
    }

    /// The reasons as `(label, count)` pairs, for metrics.
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("invalid_trace_id", self.invalid_trace_id),
            ("invalid_span_id", self.invalid_span_id),
            ("invalid_parent_span_id", self.invalid_parent_span_id),
            ("end_before_start", self.end_before_start),
            ("timestamp_out_of_range", self.timestamp_out_of_range),
        ]
    }
}

/// Decodes a trace request into Arrow, rejecting invalid spans one by one.
///
/// ```
/// use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
/// use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
///
/// let span = |trace: u8| Span {
///     trace_id: vec![trace; 16],
///     span_id: vec![1; 8],
///     start_time_unix_nano: 1,
///     end_time_unix_nano: 2,
///     ..Default::default()
/// };
/// let request = ExportTraceServiceRequest {
///     resource_spans: vec![ResourceSpans {
///         scope_spans: vec![ScopeSpans { spans: vec![span(7), span(0)], ..Default::default() }],
///         ..Default::default()
///     }],
/// };
/// let decoded = wayfinder_collector::decode::decode_traces(&request).unwrap();
/// assert_eq!(decoded.accepted(), 1);
/// assert_eq!(decoded.rejections.invalid_trace_id, 1, "an all-zero trace id is rejected");
/// ```
pub fn decode_traces(request: &ExportTraceServiceRequest) -> Result<DecodedTraces, ArrowError> {
    decode(request, true)
}

/// Like [`decode_traces`] without the topology facts, for a collector whose topology is off.
pub fn decode_spans_only(request: &ExportTraceServiceRequest) -> Result<DecodedTraces, ArrowError> {
    decode(request, false)
}

fn decode(
    request: &ExportTraceServiceRequest,
    with_facts: bool,
) -> Result<DecodedTraces, ArrowError> {
    let count = span_count(request);
    let mut columns = Columns::with_capacity(count);
    let mut facts = Vec::with_capacity(if with_facts { count } else { 0 });
    let mut rejections = Rejections::default();
    let mut scratch = String::new();

    for resource_spans in &request.resource_spans {
        let resource_attrs: &[KeyValue] = resource_spans
            .resource
            .as_ref()
            .map_or(&[], |r| &r.attributes);
        let service = string_attr(resource_attrs, "service.name").unwrap_or("unknown_service");
        let namespace = string_attr(resource_attrs, "service.namespace").filter(|s| !s.is_empty());
        let instance = string_attr(resource_attrs, "service.instance.id").filter(|s| !s.is_empty());
        let (fact_service, fact_instance): (Arc<str>, Option<Arc<str>>) = if with_facts {
            (Arc::from(service), instance.map(Arc::from))
        } else {
            (Arc::from(""), None)
        };
        let origins = &mut columns.origins;
        let resource = Resource {
            service: origins.service_name.intern(service),
            namespace: namespace.map(|n| origins.service_namespace.intern(n)),
            instance: instance.map(|i| origins.instance_id.intern(i)),
            attributes: resource_attrs
                .iter()
                .map(|kv| {
                    let value = value_text(kv.value.as_ref(), &mut scratch);
                    origins.resource_attributes.intern(&kv.key, value)
                })
                .collect(),
        };

        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref();
            let scope_name = scope.map(|s| s.name.as_str()).filter(|s| !s.is_empty());
            let scope_version = scope.map(|s| s.version.as_str()).filter(|s| !s.is_empty());
            // One origin row per (resource, scope) that has a valid span.
            let mut origin = None;

            for span in &scope_spans.spans {
                let Some(times) = validate(span, &mut rejections) else {
                    continue;
                };
                let key = *origin.get_or_insert_with(|| {
                    columns.origins.push(&resource, scope_name, scope_version)
                });
                columns.push_span(span, times, key, &mut scratch);
                if with_facts {
                    let duration = u64::try_from(times.end - times.start).unwrap_or(0);
                    facts.push(SpanFacts::of(
                        span,
                        duration,
                        &fact_service,
                        fact_instance.as_ref(),
                    ));
                }
            }
        }
    }

    let batch = if columns.rows == 0 {
        None
    } else {
        Some(SpanBatch::new(columns.finish()?))
    };
    Ok(DecodedTraces {
        batch,
        facts,
        rejections,
    })
}

/// How many spans a request holds, valid or not.
pub fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

/// Start and end of a valid span, in signed nanoseconds.
#[derive(Clone, Copy)]
struct Times {
    start: i64,
    end: i64,
}

fn validate(span: &Span, rejections: &mut Rejections) -> Option<Times> {
    if span.trace_id.len() != 16 || span.trace_id.iter().all(|&b| b == 0) {
        rejections.invalid_trace_id += 1;
        return None;
    }
    if span.span_id.len() != 8 || span.span_id.iter().all(|&b| b == 0) {
        rejections.invalid_span_id += 1;
        return None;
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        rejections.invalid_parent_span_id += 1;
        return None;
    }
    let (Ok(start), Ok(end)) = (
        i64::try_from(span.start_time_unix_nano),
        i64::try_from(span.end_time_unix_nano),
    ) else {
        rejections.timestamp_out_of_range += 1;
        return None;
    };
    if end < start {
        rejections.end_before_start += 1;
        return None;
    }
    Some(Times { start, end })
}

fn push_key_or_null(builder: &mut DictBuilder, key: Option<i32>) {
    match key {
        Some(k) => builder.push_key(k),
        None => builder.push_null(),
    }
}

/// The value of a string attribute.
fn string_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// An attribute value as text (see [`schema`] for the rules); `None` when it has no value.
fn value_text<'a>(value: Option<&'a AnyValue>, scratch: &'a mut String) -> Option<&'a str> {
    let value = value?.value.as_ref()?;
    scratch.clear();
    match value {
        Value::StringValue(s) => return Some(s.as_str()),
        Value::BoolValue(b) => scratch.push_str(if *b { "true" } else { "false" }),
        Value::IntValue(i) => {
            let _ = write!(scratch, "{i}");
        }
        // An index into a profile's string table: meaningless here, kept as the number.
        Value::StringValueStrindex(i) => {
            let _ = write!(scratch, "{i}");
        }
        Value::DoubleValue(d) => {
            let _ = write!(scratch, "{d}");
        }
        Value::BytesValue(b) => base64::engine::general_purpose::STANDARD.encode_string(b, scratch),
        Value::ArrayValue(_) | Value::KvlistValue(_) => {
            scratch.push_str(&any_to_json(value).to_string());
        }
    }
    Some(scratch.as_str())
}

/// An OTLP value as JSON, for arrays and key-value lists.
fn any_to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    let inner = |v: &AnyValue| v.value.as_ref().map_or(J::Null, any_to_json);
    match value {
        Value::StringValue(s) => J::String(s.clone()),
        Value::BoolValue(b) => J::Bool(*b),
        Value::IntValue(i) => J::from(*i),
        Value::StringValueStrindex(i) => J::from(*i),
        Value::DoubleValue(d) => {
            serde_json::Number::from_f64(*d).map_or_else(|| J::String(d.to_string()), J::Number)
        }
        Value::BytesValue(b) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::ArrayValue(a) => J::Array(a.values.iter().map(inner).collect()),
        Value::KvlistValue(kv) => J::Object(
            kv.values
                .iter()
                .map(|e| (e.key.clone(), e.value.as_ref().map_or(J::Null, inner)))
                .collect(),
        ),
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
struct Columns {
    rows: usize,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent_span_id: FixedSizeBinaryBuilder,
    trace_state: DictBuilder,
    origin: Vec<i32>,
    origins: Origins,
    span_name: DictBuilder,
    span_kind: DictBuilder,
    start_time: Vec<i64>,
    duration: Vec<i64>,
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
}

impl AttributeSets {
    fn with_capacity(rows: usize) -> Self {
        Self {
            keys: Vec::with_capacity(rows),
            sets: MapBuilder::with_capacity(rows / 4, rows * 2),
            index: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    fn push(&mut self, attributes: &[KeyValue], text: &mut String) {
        self.scratch.clear();
        for kv in attributes {
            let value = value_text(kv.value.as_ref(), text);
            self.scratch.push(self.sets.intern(&kv.key, value));
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
struct Resource {
    service: i32,
    namespace: Option<i32>,
    instance: Option<i32>,
    attributes: Vec<(i32, Option<i32>)>,
}

/// The values of the `origin` dictionary: one row per (resource, scope).
struct Origins {
    rows: i32,
    service_name: DictBuilder,
    service_namespace: DictBuilder,
    instance_id: DictBuilder,
    scope_name: DictBuilder,
    scope_version: DictBuilder,
    resource_attributes: MapBuilder,
}

impl Origins {
    fn new() -> Self {
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

    /// Adds a row and returns its key.
    fn push(&mut self, resource: &Resource, scope: Option<&str>, version: Option<&str>) -> i32 {
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

const KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];
const STATUS_CODES: [&str; 3] = ["unset", "ok", "error"];

impl Columns {
    fn with_capacity(rows: usize) -> Self {
        Self {
            rows: 0,
            trace_id: FixedSizeBinaryBuilder::with_capacity(rows, 16),
            span_id: FixedSizeBinaryBuilder::with_capacity(rows, 8),
            parent_span_id: FixedSizeBinaryBuilder::with_capacity(rows, 8),
            trace_state: DictBuilder::with_capacity(rows),
            origin: Vec::with_capacity(rows),
            origins: Origins::new(),
            span_name: DictBuilder::with_capacity(rows),
            span_kind: DictBuilder::with_capacity(rows),
            start_time: Vec::with_capacity(rows),
            duration: Vec::with_capacity(rows),
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
    fn push_span(&mut self, span: &Span, times: Times, origin: i32, scratch: &mut String) {
        self.rows += 1;
        // `validate` checked the lengths, which is all `append_value` can refuse.
        let _ = self.trace_id.append_value(&span.trace_id);
        let _ = self.span_id.append_value(&span.span_id);
        if span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|&b| b == 0) {
            self.parent_span_id.append_null();
        } else {
            let _ = self.parent_span_id.append_value(&span.parent_span_id);
        }
        self.origin.push(origin);
        self.trace_state.push_non_empty(Some(&span.trace_state));
        self.span_name.push(&span.name);
        let kind = usize::try_from(span.kind)
            .ok()
            .and_then(|k| KINDS.get(k))
            .copied()
            .unwrap_or(KINDS[0]);
        self.span_kind.push(kind);
        self.start_time.push(times.start);
        self.duration.push(times.end - times.start);
        let status = span.status.as_ref();
        let code = status
            .and_then(|s| usize::try_from(s.code).ok())
            .and_then(|c| STATUS_CODES.get(c))
            .copied()
            .unwrap_or(STATUS_CODES[0]);
        self.status_code.push(code);
        self.status_message
            .push_non_empty(status.map(|s| s.message.as_str()));

        self.attributes.push(&span.attributes, scratch);

        for event in &span.events {
            self.events
                .time
                .push(i64::try_from(event.time_unix_nano).unwrap_or(i64::MAX));
            self.events.name.push(&event.name);
            for kv in &event.attributes {
                let value = value_text(kv.value.as_ref(), scratch);
                self.events.attributes.push_entry(&kv.key, value);
            }
            self.events.attributes.end_row();
        }
        self.events.offsets.end_row(self.events.time.len());

        for link in &span.links {
            push_hex(&mut self.links.trace_id, &link.trace_id);
            push_hex(&mut self.links.span_id, &link.span_id);
            self.links
                .trace_state
                .push_non_empty(Some(&link.trace_state));
            for kv in &link.attributes {
                let value = value_text(kv.value.as_ref(), scratch);
                self.links.attributes.push_entry(&kv.key, value);
            }
            self.links.attributes.end_row();
        }
        self.links.offsets.end_row(self.links.trace_id.len());
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
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
        ];
        RecordBatch::try_new(schema::stored_schema(), columns)
    }
}
