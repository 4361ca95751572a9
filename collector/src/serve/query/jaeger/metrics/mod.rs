//! Jaeger's metrics API: `/api/metrics/calls`, `/api/metrics/errors`,
//! `/api/metrics/latencies` and `/api/metrics/minstep`, the RED metrics the Jaeger UI's Monitor
//! tab draws, answered from the span metrics the collector keeps, in jaeger-query's shapes (its
//! `MetricFamily` as gogo's jsonpb writes it, labels `service_name` then `operation`), so that
//! the Monitor tab works with no Prometheus in between.
//!
//! The parameters are jaeger-query's (`query_parser.go`): `service` (repeated, required),
//! `groupByOperation`, `spanKind` (repeated; `server` by default), `endTs`, `lookback`, `step`,
//! `ratePer` in milliseconds, and `quantile` for latencies; with its defaults and its error
//! messages. A point at time `t` (from `endTs - lookback` to `endTs`, every `step`, as
//! Prometheus' `query_range` places them) sums the whole minutes of the `ratePer` window that
//! ends with the minute holding `t`, as Prometheus' `rate(…[ratePer])` does at its scrape
//! resolution: calls a second, the fraction of them that failed, and a quantile of their
//! durations in milliseconds. Spans count as they came (not weighted by a sampling ratio), as in
//! the JSON API.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::{Query, State};
use serde_json::{Value, json};

use super::JaegerError;
use crate::decode::SpanKind;
use crate::graph::spanmetrics::{MAX_SERIES_MINUTES, Minute, Selection, Timeline};
use crate::serve::query::state::ApiState;

/// Which figure an endpoint gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Figure {
    /// `/api/metrics/calls`: calls a second.
    Calls,
    /// `/api/metrics/errors`: the fraction of calls that failed, 0 to 1.
    Errors,
    /// `/api/metrics/latencies`: a quantile of the durations, in milliseconds.
    Latencies,
}

/// Prometheus' limit on points per series of a `query_range`, which jaeger-query's answers
/// inherit.
const MAX_POINTS: i64 = 11_000;
/// The span metrics' resolution.
const MINUTE_MS: i64 = 60_000;
/// The most minutes summed over all points of an answer (counts: cheap additions).
const MAX_MINUTE_SUMS: u64 = 5_000_000;
/// The most sketch merges over all points of a latencies answer (each walks up to 1,024
/// bins): about half a second of one core.
const MAX_SKETCH_MERGES: u64 = 200_000;

/// The parameters of a metrics request, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Params {
    services: Vec<String>,
    by_operation: bool,
    kinds: Vec<SpanKind>,
    end_ms: i64,
    lookback_ms: i64,
    step_ms: i64,
    rate_per_ms: i64,
    quantile: f64,
}

fn parse_error(param: &str, reason: impl std::fmt::Display) -> JaegerError {
    JaegerError::bad_request(format!("unable to parse param '{param}': {reason}"))
}

impl Params {
    /// The query's pairs, read as jaeger-query reads them; `now_ms` is the default `endTs`.
    pub(crate) fn parse(
        pairs: &[(String, String)],
        figure: Figure,
        now_ms: i64,
    ) -> Result<Params, JaegerError> {
        let first = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let all = |name: &str| -> Vec<&str> {
            pairs
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        // jaeger-query reads the quantile first, and only for latencies.
        let quantile = if figure == Figure::Latencies {
            let text = first("quantile").unwrap_or("");
            let quantile: f64 = text
                .parse()
                .map_err(|_| parse_error("quantile", format!("invalid syntax: {text:?}")))?;
            if !(quantile > 0.0 && quantile <= 1.0) {
                return Err(parse_error("quantile", "must be in (0, 1]"));
            }
            quantile
        } else {
            0.0
        };
        let services: Vec<String> = all("service").into_iter().map(str::to_owned).collect();
        if services.is_empty() {
            return Err(parse_error(
                "service",
                "please provide at least one service name",
            ));
        }
        let by_operation = match first("groupByOperation").unwrap_or("") {
            "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            other => {
                return Err(parse_error(
                    "groupByOperation",
                    format!("invalid syntax: {other:?}"),
                ));
            }
        };
        let kinds = match all("spanKind").as_slice() {
            [] => vec![SpanKind::Server],
            given => given
                .iter()
                .map(|kind| {
                    span_kind(kind).ok_or_else(|| {
                        parse_error("spanKind", format!("unsupported span kind: '{kind}'"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let millis = |param: &str, default: i64| -> Result<i64, JaegerError> {
            match first(param).unwrap_or("") {
                "" => Ok(default),
                text => text
                    .parse::<i64>()
                    .map_err(|_| parse_error(param, format!("invalid syntax: {text:?}"))),
            }
        };
        let end_ms = millis("endTs", now_ms)?;
        let lookback_ms = millis("lookback", 3_600_000)?;
        let step_ms = millis("step", 5_000)?;
        let rate_per_ms = millis("ratePer", 600_000)?;
        // jaeger-query passes these on to Prometheus, which refuses them (a 500 there).
        for (param, value) in [("step", step_ms), ("ratePer", rate_per_ms)] {
            if value <= 0 {
                return Err(parse_error(
                    param,
                    "must be a positive number of milliseconds",
                ));
            }
        }
        if lookback_ms < 0 {
            return Err(parse_error("lookback", "must not be negative"));
        }
        if lookback_ms / step_ms + 1 > MAX_POINTS {
            return Err(JaegerError::bad_request(format!(
                "exceeded maximum resolution of {MAX_POINTS} points per timeseries: raise step or lower lookback"
            )));
        }
        Ok(Params {
            services,
            by_operation,
            kinds,
            end_ms,
            lookback_ms,
            step_ms,
            rate_per_ms,
            quantile,
        })
    }
}

/// `spanKind`'s values (any case), as jaeger-query maps them.
fn span_kind(text: &str) -> Option<SpanKind> {
    Some(match text.to_ascii_lowercase().as_str() {
        "unspecified" => SpanKind::Unspecified,
        "internal" => SpanKind::Internal,
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        _ => return None,
    })
}

/// The family's name and help, as jaeger-query's Prometheus reader gives them.
fn family_name(figure: Figure, params: &Params) -> (&'static str, String) {
    let (name, operation_name, help) = match figure {
        Figure::Calls => (
            "service_call_rate",
            "service_operation_call_rate",
            "calls/sec, grouped by service".to_owned(),
        ),
        Figure::Errors => (
            "service_error_rate",
            "service_operation_error_rate",
            "error rate, computed as a fraction of errors/sec over calls/sec, grouped by service"
                .to_owned(),
        ),
        Figure::Latencies => (
            "service_latencies",
            "service_operation_latencies",
            format!(
                "{:.2}th quantile latency, grouped by service",
                params.quantile
            ),
        ),
    };
    if params.by_operation {
        (operation_name, format!("{help} & operation"))
    } else {
        (name, help)
    }
}

/// The family: one metric per timeline, one point per step from the timeline's first minute
/// up to `now_ms`.
/// The times of a timeline's points: from `endTs - lookback`, every `step`, up to `endTs` and
/// no later than now, from the timeline's first minute on.
fn points(params: &Params, timeline: &Timeline, now_ms: i64) -> impl Iterator<Item = i64> {
    let first_minute = timeline.minutes.keys().next().copied().unwrap_or(0) as i64;
    let start = params.end_ms - params.lookback_ms;
    let last = params.end_ms.min(now_ms);
    let step = params.step_ms;
    // The first step at or after the first minute's start.
    let skip = ((first_minute * MINUTE_MS - start).max(0) + step - 1) / step;
    (skip..)
        .map(move |k| start + k * step)
        .take_while(move |t| *t <= last)
}

/// The work an answer takes: the minutes summed over all its points (each a sketch merge for
/// latencies).
pub(crate) fn work(params: &Params, timelines: &[Timeline], now_ms: i64) -> u64 {
    let window_minutes = (params.rate_per_ms / MINUTE_MS).max(1) as u64;
    timelines
        .iter()
        .map(|timeline| {
            let per_point = window_minutes.min(timeline.minutes.len() as u64);
            points(params, timeline, now_ms).count() as u64 * per_point
        })
        .sum()
}

/// The family: one metric per timeline, one point per step from the timeline's first minute
/// up to `now_ms`.
pub(crate) fn family(
    figure: Figure,
    params: &Params,
    timelines: &[Timeline],
    now_ms: i64,
) -> Value {
    let (name, help) = family_name(figure, params);
    let window_minutes = (params.rate_per_ms / MINUTE_MS).max(1);
    let metrics: Vec<Value> = timelines
        .iter()
        .map(|timeline| {
            let points: Vec<Value> = points(params, timeline, now_ms)
                .map(|t| {
                    let minute = t.div_euclid(MINUTE_MS).max(0);
                    let since = (minute - window_minutes + 1).max(0) as u64;
                    let mut sum = Minute::default();
                    for (_, one) in timeline.minutes.range(since..=minute as u64) {
                        sum.requests += one.requests;
                        sum.errors += one.errors;
                        if figure == Figure::Latencies {
                            sum.latency.merge(&one.latency);
                        }
                    }
                    // The seconds the window's minutes cover, up to now.
                    let covered_ms =
                        ((minute + 1) * MINUTE_MS).min(now_ms) - since as i64 * MINUTE_MS;
                    let value = value_of(figure, &sum, covered_ms, params.quantile);
                    json!({
                        "gaugeValue": {"doubleValue": number(value)},
                        "timestamp": timestamp(t),
                    })
                })
                .collect();
            let mut labels = vec![json!({"name": "service_name", "value": &*timeline.service})];
            if let Some(operation) = &timeline.operation {
                labels.push(json!({"name": "operation", "value": &**operation}));
            }
            json!({"labels": labels, "metricPoints": points})
        })
        .collect();
    json!({"name": name, "type": "GAUGE", "help": help, "metrics": metrics})
}

/// One point's figure over the window's sum.
fn value_of(figure: Figure, sum: &Minute, covered_ms: i64, quantile: f64) -> f64 {
    match figure {
        Figure::Calls => sum.requests as f64 * 1000.0 / covered_ms.max(1) as f64,
        // 0/0 is NaN, as Prometheus' division gives: no calls, no rate.
        Figure::Errors => sum.errors as f64 / sum.requests as f64,
        // The sketches hold milliseconds, the unit the UI draws.
        Figure::Latencies => sum.latency.quantile(quantile).unwrap_or(f64::NAN),
    }
}

/// A double as jsonpb writes it: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
fn number(value: f64) -> Value {
    if value.is_nan() {
        Value::from("NaN")
    } else if value.is_infinite() {
        Value::from(if value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Value::from(value)
    }
}

/// A time as jsonpb writes a `Timestamp`: RFC 3339 in UTC, with milliseconds only when there
/// are any.
fn timestamp(ms: i64) -> String {
    let time = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    if ms.rem_euclid(1000) == 0 {
        time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `GET /api/metrics/{calls,errors,latencies}`.
pub(crate) async fn answer(
    state: Arc<ApiState>,
    figure: Figure,
    pairs: Vec<(String, String)>,
) -> Result<Json<Value>, JaegerError> {
    let spanmetrics = state.spanmetrics.clone().ok_or_else(|| JaegerError {
        status: http::StatusCode::NOT_IMPLEMENTED,
        message: "trace metrics are currently disabled - span metrics are off on this collector (--no-topology)".to_owned(),
    })?;
    let now_ms = unix_ms(spanmetrics.now());
    let params = Params::parse(&pairs, figure, now_ms)?;
    // Merging sketches over many windows is CPU work: not on a runtime worker.
    tokio::task::spawn_blocking(move || {
        let window_minutes = (params.rate_per_ms / MINUTE_MS).max(1);
        let first = (params.end_ms - params.lookback_ms).div_euclid(MINUTE_MS) - window_minutes;
        let last = params.end_ms.min(now_ms).div_euclid(MINUTE_MS);
        let retained = spanmetrics.retention().as_millis() as i64 / MINUTE_MS;
        let first = first.max(now_ms.div_euclid(MINUTE_MS) - retained).max(0) as u64;
        let timelines = if last < 0 || (last as u64) < first {
            Vec::new()
        } else {
            spanmetrics
                .timelines(
                    Selection {
                        services: &params.services,
                        kinds: &params.kinds,
                        by_operation: params.by_operation,
                        latency: figure == Figure::Latencies,
                        minutes: (first, last as u64),
                    },
                    MAX_SERIES_MINUTES,
                )
                .map_err(|series_minutes| {
                    too_much(format!(
                        "{series_minutes} series-minutes to merge, at most {MAX_SERIES_MINUTES}"
                    ))
                })?
        };
        let most = match figure {
            Figure::Latencies => MAX_SKETCH_MERGES,
            Figure::Calls | Figure::Errors => MAX_MINUTE_SUMS,
        };
        let work = work(&params, &timelines, now_ms);
        if work > most {
            return Err(too_much(format!(
                "{work} window-minutes over its points, at most {most}"
            )));
        }
        Ok(Json(family(figure, &params, &timelines, now_ms)))
    })
    .await
    .map_err(|e| JaegerError {
        status: http::StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("the metrics answer failed: {e}"),
    })?
}

/// A request whose answer would cost more than the bounds allow: refused before the work.
fn too_much(what: String) -> JaegerError {
    JaegerError::bad_request(format!(
        "the answer is too large ({what}): ask for fewer services or operations, a larger step or a smaller ratePer"
    ))
}

pub(crate) async fn calls(
    State(state): State<Arc<ApiState>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, JaegerError> {
    answer(state, Figure::Calls, pairs).await
}

pub(crate) async fn errors(
    State(state): State<Arc<ApiState>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, JaegerError> {
    answer(state, Figure::Errors, pairs).await
}

pub(crate) async fn latencies(
    State(state): State<Arc<ApiState>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, JaegerError> {
    answer(state, Figure::Latencies, pairs).await
}

/// `GET /api/metrics/minstep`: the finest step that means anything here, in milliseconds, in
/// Jaeger's envelope (jaeger-query served it until 2.18; no UI asks for it): the span metrics
/// are kept per minute.
pub(crate) async fn min_step() -> Json<Value> {
    Json(json!({"data": MINUTE_MS, "total": 0, "limit": 0, "offset": 0, "errors": null}))
}

#[cfg(test)]
mod tests;
