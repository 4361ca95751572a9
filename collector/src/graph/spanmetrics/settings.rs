//! Span metrics' settings (`[spanmetrics]`): how many series, their extra labels, and the
//! sampling multiplier.

use serde::{Deserialize, Serialize};

use crate::util::settings::{self, Settings, tidy};

/// Span metrics' settings.
///
/// ```
/// use clap::Parser;
/// use wayfinder_collector::config::{Config, ServeArgs};
///
/// let args = ServeArgs::try_parse_from(["serve", "--span-metrics-dimensions", "http.route"])
///     .unwrap();
/// let config = Config::resolve(&args).unwrap();
/// assert_eq!(config.spanmetrics.span_metrics_dimensions, ["http.route"]);
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SpanMetricsSettings {
    /// How many span-metrics series are tracked at most; further ones go to the overflow
    /// series.
    #[arg(
        long,
        env = "WAYFINDER_SPAN_METRICS_MAX_SERIES",
        default_value = "10000"
    )]
    pub span_metrics_max_series: usize,
    /// Span or resource attributes that become extra labels of the span-metrics series,
    /// comma-separated.
    #[arg(long, env = "WAYFINDER_SPAN_METRICS_DIMENSIONS", value_delimiter = ',')]
    pub span_metrics_dimensions: Vec<String>,
    /// Attribute holding the probability a span was sampled with; the span counts for
    /// 1/probability in the Prometheus series.
    #[arg(long, env = "WAYFINDER_SPAN_MULTIPLIER_KEY")]
    pub span_multiplier_key: Option<String>,
    /// Adds the span's status message as the `status_message` label (Tempo's opt-in intrinsic
    /// dimension; each distinct message is its own series, within the series limit).
    #[arg(long, env = "WAYFINDER_SPAN_METRICS_STATUS_MESSAGE")]
    pub span_metrics_status_message: bool,
}

impl Default for SpanMetricsSettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl Settings for SpanMetricsSettings {
    const SECTION: &'static str = "spanmetrics";

    fn normalize(&mut self) {
        tidy(&mut self.span_metrics_dimensions);
        self.span_multiplier_key = self.span_multiplier_key.take().filter(|k| !k.is_empty());
    }
}
