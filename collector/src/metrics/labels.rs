//! Label values as the exposition formats write them, for every family of `/metrics`: the
//! ones prometheus-client encodes ([`Labels`]) and the histograms written by hand
//! ([`super::HistogramFamily`]) go through one [`escape_value`]. prometheus-client writes a
//! label value as it is, so that a span named `a"} 1\nfake 42` put a line of its own into the
//! scrape and made Prometheus refuse all of it.
//!
//! (Its example runs as the unit test `examples::example`.)

use prometheus_client::encoding::{
    EncodeLabel as _, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

/// Writes `value` into `out` as a label value is written between its quotes: a backslash, a
/// double quote and a line feed escaped (`\\`, `\"`, `\n`), as the Prometheus text format and
/// OpenMetrics both define; every other character as it is.
pub(crate) fn escape_value(out: &mut impl std::fmt::Write, value: &str) -> std::fmt::Result {
    let mut rest = value;
    while let Some(at) = rest.find(['\\', '"', '\n']) {
        out.write_str(&rest[..at])?;
        out.write_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[at + 1..];
    }
    out.write_str(rest)
}

/// A label value written escaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Escaped<'a>(pub &'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        escape_value(encoder, self.0)
    }
}

/// A series' labels, names and values, its values written escaped: what every family whose
/// label values come from outside (service, instance and span names) encodes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Labels<'a>(pub &'a [(&'a str, &'a str)]);

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        for &(name, value) in self.0 {
            (name, Escaped(value)).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// `value` escaped, as a string.
#[cfg(test)]
pub(crate) fn escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let _ = escape_value(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_characters_the_formats_escape() {
        // Each row: a value, how it is written, and why.
        let cases = [
            ("cart", "cart", "plain text as it is"),
            ("a\"b", "a\\\"b", "a quote would end the value"),
            ("a\\b", "a\\\\b", "a backslash would start an escape"),
            ("a\nb", "a\\nb", "a line feed would start a line"),
            (
                "a}\tb é",
                "a}\tb é",
                "anything else as it is, tabs and non-ASCII included",
            ),
            ("\\n", "\\\\n", "a backslash before an n is not a line feed"),
        ];
        for (value, want, why) in cases {
            assert_eq!(escaped(value), want, "{why}");
        }
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example() {
        use crate::metrics::Labels;
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::gauge::ConstGauge;

        let mut registry = prometheus_client::registry::Registry::default();
        struct One;
        impl std::fmt::Debug for One {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("One")
            }
        }
        impl prometheus_client::collector::Collector for One {
            fn encode(
                &self,
                mut encoder: prometheus_client::encoding::DescriptorEncoder,
            ) -> std::fmt::Result {
                let mut family = encoder.encode_descriptor(
                    "up",
                    "Up",
                    None,
                    prometheus_client::metrics::MetricType::Gauge,
                )?;
                ConstGauge::new(1)
                    .encode(family.encode_family(&Labels(&[("span", "a\"}\nfake 42")]))?)
            }
        }
        registry.register_collector(Box::new(One));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("up{span=\"a\\\"}\\nfake 42\"} 1\n"));
    }
}
