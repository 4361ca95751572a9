//! OTLP trace requests → [`SpanBatch`], with the per-span validation the OTLP specification asks
//! for: an invalid span is rejected on its own and the rest of the request is kept.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_schema::ArrowError;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::SpanBatch;
use crate::columns::{Columns, Resource, Times, type_of};
use crate::facts::SpanFacts;
use crate::options::{DecodeOptions, Extractor, ResourceValues};
use crate::view::{Attr, SpanView, attrs_from_prost, string_attr, value_text};

/// A status message in the facts (a metric label) is cut to this many bytes.
const MAX_STATUS_MESSAGE: usize = 256;

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
    /// Its resource's `service.name` or `service.instance.id` has a control character
    /// ([`crate::is_clean_name`]).
    pub invalid_name: u64,
    /// A string of it is not UTF-8, or its values nest past the recursion limit (with
    /// [`DecodeOptions::salvage`]; without, the request is refused).
    pub invalid_value: u64,
}

impl Rejections {
    /// How many spans were rejected in all.
    pub fn total(&self) -> u64 {
        self.invalid_trace_id
            + self.invalid_span_id
            + self.invalid_parent_span_id
            + self.end_before_start
            + self.timestamp_out_of_range
            + self.invalid_name
            + self.invalid_value
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
            (
                self.invalid_name,
                "a control character in service.name or service.instance.id",
            ),
            (
                self.invalid_value,
                "a string that is not UTF-8 or values nested past the recursion limit",
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
    pub fn by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("invalid_trace_id", self.invalid_trace_id),
            ("invalid_span_id", self.invalid_span_id),
            ("invalid_parent_span_id", self.invalid_parent_span_id),
            ("end_before_start", self.end_before_start),
            ("timestamp_out_of_range", self.timestamp_out_of_range),
            ("invalid_name", self.invalid_name),
            ("invalid_value", self.invalid_value),
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
/// let decoded = wayfinder_decode::decode_traces(&request).unwrap();
/// assert_eq!(decoded.accepted(), 1);
/// assert_eq!(decoded.rejections.invalid_trace_id, 1, "an all-zero trace id is rejected");
/// ```
pub fn decode_traces(request: &ExportTraceServiceRequest) -> Result<DecodedTraces, ArrowError> {
    decode_traces_with(request, &DecodeOptions::default())
}

/// Like [`decode_traces`] without the topology facts, for a collector whose topology is off.
pub fn decode_spans_only(request: &ExportTraceServiceRequest) -> Result<DecodedTraces, ArrowError> {
    let options = DecodeOptions {
        facts: false,
        ..DecodeOptions::default()
    };
    decode_traces_with(request, &options)
}

/// Like [`decode_traces`], taking what `options` asks for from each span.
pub fn decode_traces_with(
    request: &ExportTraceServiceRequest,
    options: &DecodeOptions,
) -> Result<DecodedTraces, ArrowError> {
    let mut decoder = TraceDecoder::new(span_count(request), options);
    let mut attributes = Vec::new();
    let mut view = SpanView::default();
    for resource_spans in &request.resource_spans {
        attributes.clear();
        if let Some(resource) = &resource_spans.resource {
            attrs_from_prost(&resource.attributes, &mut attributes);
        }
        let resource = decoder.resource(&attributes);
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref();
            let mut scope = Scope::new(
                scope.map_or("", |s| s.name.as_str()),
                scope.map_or("", |s| s.version.as_str()),
            );
            for span in &scope_spans.spans {
                view.fill_from_prost(span);
                decoder.span(&resource, &mut scope, &view);
            }
        }
    }
    decoder.finish()
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

/// The conversion both decoders share: resources, scopes and spans in, a batch, facts and
/// rejections out.
pub(crate) struct TraceDecoder<'o> {
    columns: Columns,
    facts: Vec<SpanFacts>,
    rejections: Rejections,
    scratch: String,
    /// A resource attribute's value behind its type letter.
    typed: String,
    options: &'o DecodeOptions,
    /// Span names handed to facts, one allocation per distinct name of a request.
    names: hashbrown::HashSet<Arc<str>>,
    /// The configured attributes' values.
    extractor: Extractor,
}

/// A resource's column keys and the names and values its spans' facts carry.
pub(crate) struct ResourceKeys {
    columns: Resource,
    /// Its service or instance name has a control character: its spans are rejected.
    unclean: bool,
    service: Arc<str>,
    instance: Option<Arc<str>>,
    values: ResourceValues,
}

/// A scope of a resource: its name and version, and its origin row once a span needs it.
pub(crate) struct Scope<'a> {
    name: Option<&'a str>,
    version: Option<&'a str>,
    origin: Option<i32>,
}

impl<'a> Scope<'a> {
    /// A scope named `name` at `version` (empty: none).
    pub(crate) fn new(name: &'a str, version: &'a str) -> Self {
        Self {
            name: (!name.is_empty()).then_some(name),
            version: (!version.is_empty()).then_some(version),
            origin: None,
        }
    }
}

impl<'o> TraceDecoder<'o> {
    /// A decoder with room for `count` spans.
    pub(crate) fn new(count: usize, options: &'o DecodeOptions) -> Self {
        Self {
            columns: Columns::with_capacity(count),
            facts: Vec::with_capacity(if options.facts { count } else { 0 }),
            rejections: Rejections::default(),
            scratch: String::new(),
            typed: String::new(),
            options,
            names: hashbrown::HashSet::new(),
            extractor: Extractor::default(),
        }
    }

    /// Interns a resource's columns once for all its spans.
    pub(crate) fn resource(&mut self, attributes: &[Attr<'_>]) -> ResourceKeys {
        let service = string_attr(attributes, "service.name").unwrap_or("unknown_service");
        let namespace = string_attr(attributes, "service.namespace").filter(|s| !s.is_empty());
        let instance = string_attr(attributes, "service.instance.id").filter(|s| !s.is_empty());
        let unclean =
            !crate::is_clean_name(service) || instance.is_some_and(|i| !crate::is_clean_name(i));
        let origins = &mut self.columns.origins;
        let columns = Resource {
            service: origins.service_name.intern(service),
            namespace: namespace.map(|n| origins.service_namespace.intern(n)),
            instance: instance.map(|i| origins.instance_id.intern(i)),
            // Typed as span attributes are: the value's type letter before its text.
            attributes: attributes
                .iter()
                .map(|attr| {
                    let letter = attr.value.as_ref().map(|v| type_of(v).letter());
                    let value = value_text(attr.value.as_ref(), &mut self.scratch).map(|text| {
                        self.typed.clear();
                        self.typed.push(char::from(letter.unwrap_or(b's')));
                        self.typed.push_str(text);
                        self.typed.as_str()
                    });
                    origins.resource_attributes.intern(attr.key, value)
                })
                .collect(),
        };
        let (service, instance, values) = if self.options.facts {
            let values = self.extractor.resource(self.options, attributes);
            (Arc::from(service), instance.map(Arc::from), values)
        } else {
            (Arc::from(""), None, ResourceValues::default())
        };
        ResourceKeys {
            columns,
            unclean,
            service,
            instance,
            values,
        }
    }

    /// Whether a span that cannot be read is rejected alone ([`DecodeOptions::salvage`]).
    pub(crate) fn salvages(&self) -> bool {
        self.options.salvage
    }

    /// Counts a span that could not be read (an invalid value): rejected alone.
    pub(crate) fn reject_invalid_value(&mut self) {
        self.rejections.invalid_value += 1;
    }

    /// Validates a span and, when it is valid, appends it.
    pub(crate) fn span(
        &mut self,
        resource: &ResourceKeys,
        scope: &mut Scope<'_>,
        span: &SpanView<'_>,
    ) {
        if resource.unclean {
            self.rejections.invalid_name += 1;
            return;
        }
        let Some(times) = validate(span, &mut self.rejections) else {
            return;
        };
        // One origin row per (resource, scope) that has a valid span.
        let columns = &mut self.columns;
        let origin = *scope.origin.get_or_insert_with(|| {
            columns
                .origins
                .push(&resource.columns, scope.name, scope.version)
        });
        columns.push_span(span, times, origin, &mut self.scratch);
        if self.options.facts {
            let duration = u64::try_from(times.end - times.start).unwrap_or(0);
            let start = u64::try_from(times.start).unwrap_or(0);
            let name = match self.names.get(span.name) {
                Some(name) => name.clone(),
                None => {
                    let name: Arc<str> = Arc::from(span.name);
                    self.names.insert(name.clone());
                    name
                }
            };
            let mut facts = SpanFacts::of(
                span,
                (start, duration),
                name,
                &resource.service,
                resource.instance.as_ref(),
            );
            facts.attributes =
                self.extractor
                    .span(self.options, &resource.values, &span.attributes);
            facts.weight = Extractor::weight(self.options, &resource.values, &span.attributes);
            if self.options.status_message && !span.status_message.is_empty() {
                facts.status_message = Some(Arc::from(crate::truncated(
                    span.status_message,
                    MAX_STATUS_MESSAGE,
                )));
            }
            self.facts.push(facts);
        }
    }

    /// The batch of the valid spans, their facts and the rejections.
    pub(crate) fn finish(self) -> Result<DecodedTraces, ArrowError> {
        let batch = if self.columns.rows == 0 {
            None
        } else {
            Some(SpanBatch::new(self.columns.finish()?))
        };
        Ok(DecodedTraces {
            batch,
            facts: self.facts,
            rejections: self.rejections,
        })
    }
}

fn validate(span: &SpanView<'_>, rejections: &mut Rejections) -> Option<Times> {
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
    let (Ok(start), Ok(end)) = (i64::try_from(span.start), i64::try_from(span.end)) else {
        rejections.timestamp_out_of_range += 1;
        return None;
    };
    if end < start {
        rejections.end_before_start += 1;
        return None;
    }
    Some(Times { start, end })
}
