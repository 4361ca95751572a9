//! Attributes the stages read from spans beyond the fixed facts: the extra labels of the
//! service graph (`client_<name>` / `server_<name>`) and of span metrics, and the attributes
//! that name database nodes. The receivers' decoder takes each configured attribute once per
//! span (see [`DecodeOptions`]); each stage finds its values by index.
//!
//! (Its example runs as the unit test `examples::example`.)

use std::sync::Arc;

use crate::decode::DecodeOptions;

/// One extra label: the attribute's place among the values the facts carry, and the label
/// name it is written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimension {
    /// Index into [`SpanFacts::attributes`](crate::decode::SpanFacts::attributes).
    pub index: usize,
    /// The Prometheus label name: the attribute with every character that a label name cannot
    /// hold made `_`, as the OpenTelemetry Collector's Prometheus exporter writes it.
    pub label: String,
}

impl Dimension {
    /// This dimension's value among a span's values.
    pub fn value<'a>(&self, values: Option<&'a [Option<Arc<str>>]>) -> Option<&'a Arc<str>> {
        values?.get(self.index)?.as_ref()
    }
}

/// The attributes the decoder is asked for, each once, in the order the stages asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributePlan {
    attributes: Vec<String>,
}

impl AttributePlan {
    /// The index of `attribute` among the values the facts carry (added when new).
    pub fn index(&mut self, attribute: &str) -> usize {
        match self.attributes.iter().position(|a| a == attribute) {
            Some(index) => index,
            None => {
                self.attributes.push(attribute.to_owned());
                self.attributes.len() - 1
            }
        }
    }

    /// A dimension over `attribute`.
    pub fn dimension(&mut self, attribute: &str) -> Dimension {
        Dimension {
            index: self.index(attribute),
            label: label_name(attribute),
        }
    }

    /// What the decoder is to take: the facts (or not), these attributes, and the sampling
    /// ratio attribute.
    pub fn decode_options(&self, facts: bool, multiplier_key: Option<String>) -> DecodeOptions {
        DecodeOptions {
            facts,
            attributes: self.attributes.clone(),
            multiplier_key,
            // A span with an invalid value costs itself, not the request.
            salvage: true,
            status_message: false,
        }
    }
}

/// `attribute` as a Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`): other characters become
/// `_`, and a leading digit gets a `_` before it.
pub(crate) fn label_name(attribute: &str) -> String {
    let mut label: String = attribute
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
        label.insert(0, '_');
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names() {
        let cases = [
            ("http.route", "http_route", "dots become underscores"),
            ("k8s.pod-name", "k8s_pod_name", "so do dashes"),
            ("already_ok", "already_ok", "a valid name stays"),
            ("1st", "_1st", "a label name cannot start with a digit"),
            ("", "_", "nor be empty"),
            ("région", "r_gion", "non-ASCII is not a label character"),
        ];
        for (attribute, want, why) in cases {
            assert_eq!(label_name(attribute), want, "{why}");
        }
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example() {
        use crate::graph::dimensions::{AttributePlan, label_name};

        let mut plan = AttributePlan::default();
        let route = plan.dimension("http.route");
        let env = plan.dimension("deployment.environment");
        assert_eq!(
            plan.dimension("http.route").index,
            route.index,
            "asked for twice, read once"
        );
        assert_eq!(env.label, "deployment_environment");
        assert_eq!(label_name("9 lives"), "_9_lives");
        assert_eq!(plan.decode_options(true, None).attributes.len(), 2);
    }
}
