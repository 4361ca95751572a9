//! What the JSON answers about windows share: the `window` parameter and latency quantiles.

use std::time::Duration;

use wayfinder_api::topology::LatencyMs;

use super::error::ApiError;
use crate::graph::topology::stats::Latency;

/// The default window.
const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// Quantiles and mean of a window's latency, rounded to the microsecond; `None` when empty.
pub(super) fn latency(latency: &Latency) -> Option<LatencyMs> {
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    Some(LatencyMs {
        p50: round(latency.quantile(0.5)?),
        p90: round(latency.quantile(0.9)?),
        p99: round(latency.quantile(0.99)?),
        mean: round(latency.mean()?),
    })
}

/// Parses `window` (e.g. `5m`): at least a minute, at most the retention.
pub(super) fn window(text: Option<&str>, retention: Duration) -> Result<Duration, ApiError> {
    let Some(text) = text else {
        return Ok(DEFAULT_WINDOW.min(retention));
    };
    let window = crate::util::units::parse_duration(text).map_err(ApiError::BadRequest)?;
    if window < Duration::from_secs(60).min(retention) || window > retention {
        return Err(ApiError::BadRequest(format!(
            "window must be between 1m and the retention ({}); got {text}",
            humantime::format_duration(retention)
        )));
    }
    Ok(window)
}

/// `part / whole`, 0 when `whole` is 0: error rates, and requests over a window's seconds.
pub(super) fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}
