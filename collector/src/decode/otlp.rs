//! OTLP trace requests → [`SpanBatch`], with the per-span validation the OTLP specification asks
//! for: an invalid span is rejected on its own and the rest of the request is kept.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, Int64Array, ListArray, StringBuilder, StructArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
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
        let service_name = columns.service_name.intern(service);
        let namespace = string_attr(resource_attrs, "service.namespace").filter(|s| !s.is_empty());
        let namespace = namespace.map(|n| columns.service_namespace.intern(n));
        let instance = string_attr(resource_attrs, "service.instance.id").filter(|s| !s.is_empty());
        let (fact_service, fact_instance): (Arc<str>, Option<Arc<str>>) = if with_facts {
            (Arc::from(service), instance.map(Arc::from))
        } else {
            (Arc::from(""), None)
        };
        let instance = instance.map(|i| columns.instance_id.intern(i));
        let resource_entries: Vec<(i32, Option<i32>)> = resource_attrs
            .iter()
            .map(|kv| {
                let value = value_text(kv.value.as_ref(), &mut scratch);
                columns.resource_attributes.intern(&kv.key, value)
            })
            .collect();

        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref();
            let scope_name = scope.map(|s| s.name.as_str()).filter(|s| !s.is_empty());
            let scope_name = scope_name.map(|n| columns.scope_name.intern(n));
            let scope_version = scope.map(|s| s.version.as_str()).filter(|s| !s.is_empty());
            let scope_version = scope_version.map(|v| columns.scope_version.intern(v));

            for span in &scope_spans.spans {
                let Some(times) = validate(span, &mut rejections) else {
                    continue;
                };
                columns.push_span(span, times, &mut scratch);
                if with_facts {
                    let duration = u64::try_from(times.end - times.start).unwrap_or(0);
                    facts.push(SpanFacts::of(
                        span,
                        duration,
                        &fact_service,
                        fact_instance.as_ref(),
                    ));
                }
                columns.service_name.push_key(service_name);
                push_key_or_null(&mut columns.service_namespace, namespace);
                push_key_or_null(&mut columns.instance_id, instance);
                push_key_or_null(&mut columns.scope_name, scope_name);
                push_key_or_null(&mut columns.scope_version, scope_version);
                columns.resource_attributes.push_interned(&resource_entries);
                columns.resource_attributes.end_row();
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

/// Every column of the span schema under construction.
struct Columns {
    rows: usize,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    trace_state: DictBuilder,
    service_name: DictBuilder,
    service_namespace: DictBuilder,
    instance_id: DictBuilder,
    span_name: DictBuilder,
    span_kind: DictBuilder,
    start_time: Vec<i64>,
    end_time: Vec<i64>,
    duration: Vec<i64>,
    status_code: DictBuilder,
    status_message: DictBuilder,
    scope_name: DictBuilder,
    scope_version: DictBuilder,
    attributes: MapBuilder,
    resource_attributes: MapBuilder,
    events: Events,
    links: Links,
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
            trace_id: StringBuilder::with_capacity(rows, rows * 32),
            span_id: StringBuilder::with_capacity(rows, rows * 16),
            parent_span_id: StringBuilder::with_capacity(rows, rows * 16),
            trace_state: DictBuilder::with_capacity(rows),
            service_name: DictBuilder::with_capacity(rows),
            service_namespace: DictBuilder::with_capacity(rows),
            instance_id: DictBuilder::with_capacity(rows),
            span_name: DictBuilder::with_capacity(rows),
            span_kind: DictBuilder::with_capacity(rows),
            start_time: Vec::with_capacity(rows),
            end_time: Vec::with_capacity(rows),
            duration: Vec::with_capacity(rows),
            status_code: DictBuilder::with_capacity(rows),
            status_message: DictBuilder::with_capacity(rows),
            scope_name: DictBuilder::with_capacity(rows),
            scope_version: DictBuilder::with_capacity(rows),
            attributes: MapBuilder::with_capacity(rows, rows * 10),
            resource_attributes: MapBuilder::with_capacity(rows, rows * 8),
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

    /// Appends the span's own columns (not those that come from its resource and scope).
    fn push_span(&mut self, span: &Span, times: Times, scratch: &mut String) {
        self.rows += 1;
        push_hex(&mut self.trace_id, &span.trace_id);
        push_hex(&mut self.span_id, &span.span_id);
        if span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|&b| b == 0) {
            self.parent_span_id.append_null();
        } else {
            push_hex(&mut self.parent_span_id, &span.parent_span_id);
        }
        self.trace_state.push_non_empty(Some(&span.trace_state));
        self.span_name.push(&span.name);
        let kind = usize::try_from(span.kind)
            .ok()
            .and_then(|k| KINDS.get(k))
            .copied()
            .unwrap_or(KINDS[0]);
        self.span_kind.push(kind);
        self.start_time.push(times.start);
        self.end_time.push(times.end);
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

        for kv in &span.attributes {
            let value = value_text(kv.value.as_ref(), scratch);
            self.attributes.push_entry(&kv.key, value);
        }
        self.attributes.end_row();

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
        let end = Int64Array::from(std::mem::take(&mut self.end_time));
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

        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.trace_state.finish()?),
            Arc::new(self.service_name.finish()?),
            Arc::new(self.service_namespace.finish()?),
            Arc::new(self.instance_id.finish()?),
            Arc::new(self.span_name.finish()?),
            Arc::new(self.span_kind.finish()?),
            to_ts(start),
            to_ts(end),
            duration,
            Arc::new(self.status_code.finish()?),
            Arc::new(self.status_message.finish()?),
            Arc::new(self.scope_name.finish()?),
            Arc::new(self.scope_version.finish()?),
            Arc::new(self.attributes.finish()?),
            Arc::new(self.resource_attributes.finish()?),
            Arc::new(events),
            Arc::new(links),
        ];
        RecordBatch::try_new(schema::span_schema(), columns)
    }
}
