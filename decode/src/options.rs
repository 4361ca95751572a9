//! What a decode takes from each span beyond the fixed facts: the values of configured
//! attributes (the service graph's and span metrics' extra dimensions, database naming) and the
//! sampling weight (Tempo's `span_multiplier_key`).

use std::sync::Arc;

use crate::view::{Attr, ValueRef, value_text};

/// How a request is decoded.
///
/// ```
/// use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
/// use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
/// use opentelemetry_proto::tonic::resource::v1::Resource;
/// use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
/// use prost::Message as _;
/// use wayfinder_decode::{DecodeOptions, decode_traces_wire_with};
///
/// let kv = |key: &str, value| KeyValue {
///     key: key.into(),
///     value: Some(AnyValue { value: Some(value) }),
///     ..Default::default()
/// };
/// let span = Span {
///     trace_id: vec![1; 16],
///     span_id: vec![2; 8],
///     attributes: vec![kv("sampling.ratio", Value::DoubleValue(0.25))],
///     ..Default::default()
/// };
/// let request = ExportTraceServiceRequest {
///     resource_spans: vec![ResourceSpans {
///         resource: Some(Resource {
///             attributes: vec![kv("deployment.environment", Value::StringValue("prod".into()))],
///             ..Default::default()
///         }),
///         scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
///         ..Default::default()
///     }],
/// };
/// let options = DecodeOptions {
///     attributes: vec!["deployment.environment".into(), "http.route".into()],
///     multiplier_key: Some("sampling.ratio".into()),
///     ..DecodeOptions::default()
/// };
/// let decoded = decode_traces_wire_with(&request.encode_to_vec(), &options).unwrap();
/// let facts = &decoded.facts[0];
/// let values = facts.attributes.as_deref().unwrap();
/// assert_eq!(values[0].as_deref(), Some("prod"), "from the resource");
/// assert_eq!(values[1], None, "not on the span nor its resource");
/// assert_eq!(facts.weight, 4.0, "kept with probability 1/4: counts for 4");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Whether the facts are taken at all (off when no consumer reads them).
    pub facts: bool,
    /// Attributes whose values each span's facts carry, in this order (a span attribute, else
    /// the resource's, as Tempo and the OpenTelemetry Collector's connectors look them up);
    /// empty: none, and no allocation per span.
    pub attributes: Vec<String>,
    /// An attribute (of the span, else its resource) holding the probability the span was
    /// sampled with, a number in (0, 1]: its facts then weigh `1 / probability` (Tempo's
    /// `span_multiplier_key`). Spans without it, or with a value that is not a positive
    /// number, weigh 1.
    pub multiplier_key: Option<String>,
    /// Whether the protobuf decoder rejects a span one by one when a string of it is not
    /// UTF-8 or its values nest past the recursion limit, keeping the request's other spans
    /// (a partial success, as the OTLP specification has for spans a server cannot take), or
    /// refuses the whole request, as prost does (the default: the decoder then agrees with
    /// prost exactly, which `oracle` checks). The collector's receivers salvage.
    pub salvage: bool,
    /// Whether the facts carry the span's status message (Tempo's opt-in `status_message`
    /// dimension of span metrics); off by default, and then nothing is allocated for it.
    pub status_message: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            facts: true,
            attributes: Vec::new(),
            multiplier_key: None,
            salvage: false,
            status_message: false,
        }
    }
}

/// Values become map keys and metric labels: at most this many bytes are kept.
const MAX_VALUE_TEXT: usize = 256;

/// What a resource gives its spans: its values of the configured attributes and its weight.
#[derive(Debug, Default)]
pub(crate) struct ResourceValues {
    values: Vec<Option<Arc<str>>>,
    weight: Option<f64>,
}

/// Reads the configured attributes, interning their values once per request.
#[derive(Debug, Default)]
pub(crate) struct Extractor {
    interned: hashbrown::HashSet<Arc<str>>,
    scratch: String,
}

impl Extractor {
    /// A resource's values, for the spans that do not carry their own.
    pub(crate) fn resource(
        &mut self,
        options: &DecodeOptions,
        attributes: &[Attr<'_>],
    ) -> ResourceValues {
        ResourceValues {
            values: options
                .attributes
                .iter()
                .map(|key| self.value(attributes, key))
                .collect(),
            weight: options
                .multiplier_key
                .as_deref()
                .and_then(|key| weight(attributes, key)),
        }
    }

    /// A span's values (its own, else its resource's), `None` when none are configured.
    pub(crate) fn span(
        &mut self,
        options: &DecodeOptions,
        resource: &ResourceValues,
        attributes: &[Attr<'_>],
    ) -> Option<Arc<[Option<Arc<str>>]>> {
        if options.attributes.is_empty() {
            return None;
        }
        let values: Vec<Option<Arc<str>>> = options
            .attributes
            .iter()
            .zip(&resource.values)
            .map(|(key, inherited)| self.value(attributes, key).or_else(|| inherited.clone()))
            .collect();
        Some(Arc::from(values))
    }

    /// A span's weight: its own ratio, else its resource's, else 1.
    pub(crate) fn weight(
        options: &DecodeOptions,
        resource: &ResourceValues,
        attributes: &[Attr<'_>],
    ) -> f64 {
        options
            .multiplier_key
            .as_deref()
            .and_then(|key| weight(attributes, key))
            .or(resource.weight)
            .unwrap_or(1.0)
    }

    fn value(&mut self, attributes: &[Attr<'_>], key: &str) -> Option<Arc<str>> {
        let attr = attributes.iter().find(|a| a.key == key)?;
        let text = value_text(attr.value.as_ref(), &mut self.scratch)?;
        let text = crate::truncated(text, MAX_VALUE_TEXT);
        if text.is_empty() {
            return None;
        }
        Some(match self.interned.get(text) {
            Some(value) => value.clone(),
            None => {
                let value: Arc<str> = Arc::from(text);
                self.interned.insert(value.clone());
                value
            }
        })
    }
}

/// `1 / ratio` of the attribute `key`, when it holds a ratio in (0, 1] (as a double, or an
/// integer 1); an out-of-range or non-numeric value is ignored, as Tempo ignores it.
fn weight(attributes: &[Attr<'_>], key: &str) -> Option<f64> {
    let ratio = match attributes.iter().find(|a| a.key == key)?.value.as_ref()? {
        ValueRef::Double(d) => *d,
        ValueRef::Int(i) => *i as f64,
        _ => return None,
    };
    (ratio > 0.0 && ratio <= 1.0).then(|| 1.0 / ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_of_ratios() {
        let attr = |value| {
            vec![Attr {
                key: "ratio",
                value: Some(value),
            }]
        };
        let cases = [
            (
                ValueRef::Double(0.1),
                Some(10.0),
                "a tenth kept: counts for ten",
            ),
            (ValueRef::Double(1.0), Some(1.0), "all kept"),
            (ValueRef::Int(1), Some(1.0), "an integer 1 is a ratio too"),
            (ValueRef::Double(0.0), None, "zero is no ratio"),
            (ValueRef::Double(-0.5), None, "nor a negative one"),
            (ValueRef::Double(2.0), None, "nor one above 1"),
            (ValueRef::Double(f64::NAN), None, "nor NaN"),
            (ValueRef::Str("0.5"), None, "text is not read as a number"),
        ];
        for (value, want, why) in cases {
            assert_eq!(weight(&attr(value), "ratio"), want, "{why}");
        }
        assert_eq!(
            weight(&attr(ValueRef::Double(0.5)), "other"),
            None,
            "absent"
        );
    }

    #[test]
    fn span_values_fall_back_to_the_resource_and_are_interned() {
        let options = DecodeOptions {
            attributes: vec!["env".into(), "route".into(), "code".into()],
            ..DecodeOptions::default()
        };
        let mut extractor = Extractor::default();
        let resource = extractor.resource(
            &options,
            &[
                Attr {
                    key: "env",
                    value: Some(ValueRef::Str("prod")),
                },
                Attr {
                    key: "route",
                    value: Some(ValueRef::Str("/from-resource")),
                },
            ],
        );
        let span = [
            Attr {
                key: "route",
                value: Some(ValueRef::Str("/cart")),
            },
            Attr {
                key: "code",
                value: Some(ValueRef::Int(404)),
            },
        ];
        let a = extractor.span(&options, &resource, &span).unwrap();
        let texts: Vec<Option<&str>> = a.iter().map(Option::as_deref).collect();
        assert_eq!(
            texts,
            [Some("prod"), Some("/cart"), Some("404")],
            "the resource's env, the span's own route over the resource's, an integer as text"
        );
        let b = extractor.span(&options, &resource, &span).unwrap();
        assert!(
            Arc::ptr_eq(a[1].as_ref().unwrap(), b[1].as_ref().unwrap()),
            "one allocation per distinct value of a request"
        );
        let none = DecodeOptions::default();
        assert_eq!(
            extractor.span(&none, &resource, &span),
            None,
            "none configured"
        );
    }
}
