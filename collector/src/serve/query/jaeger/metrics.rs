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
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::graph::spanmetrics::{SpanMetrics, SpanMetricsConfig};
    use crate::util::clock::Clock;

    fn pairs(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn parameters_are_read_as_jaeger_query_reads_them() {
        let now = 1_800_000_000_000;
        let ok = |query: &str, figure| Params::parse(&pairs(query), figure, now).unwrap();
        let defaults = ok("service=cart", Figure::Calls);
        assert_eq!(
            defaults,
            Params {
                services: vec!["cart".into()],
                by_operation: false,
                kinds: vec![SpanKind::Server],
                end_ms: now,
                lookback_ms: 3_600_000,
                step_ms: 5_000,
                rate_per_ms: 600_000,
                quantile: 0.0,
            },
            "jaeger-query's defaults: now, 1 h, 5 s, 10 min, server spans"
        );
        let ui = ok(
            "service=cart&service=front&endTs=1700000000123&groupByOperation=true&lookback=900000&quantile=0.75&ratePer=600000&spanKind=server&spanKind=CLIENT&step=60000",
            Figure::Latencies,
        );
        assert_eq!(ui.services, ["cart", "front"], "service repeats");
        assert_eq!(ui.kinds, [SpanKind::Server, SpanKind::Client], "any case");
        assert!(ui.by_operation);
        assert_eq!(
            (ui.end_ms, ui.lookback_ms, ui.step_ms),
            (1_700_000_000_123, 900_000, 60_000)
        );
        assert_eq!(ui.quantile, 0.75);
        assert_eq!(
            ok("service=cart&quantile=0.95", Figure::Calls).quantile,
            0.0,
            "the UI sends quantile with calls too: ignored"
        );
        let rows: [(&str, Figure, &str, &str); 9] = [
            (
                "step=60000",
                Figure::Calls,
                "unable to parse param 'service': please provide at least one service name",
                "no service",
            ),
            (
                "service=cart",
                Figure::Latencies,
                "unable to parse param 'quantile'",
                "latencies need a quantile",
            ),
            (
                "service=cart&quantile=1.5",
                Figure::Latencies,
                "unable to parse param 'quantile': must be in (0, 1]",
                "a quantile past 1",
            ),
            (
                "service=cart&spanKind=sideways",
                Figure::Errors,
                "unable to parse param 'spanKind': unsupported span kind: 'sideways'",
                "an unknown span kind",
            ),
            (
                "service=cart&spanKind=",
                Figure::Errors,
                "unsupported span kind: ''",
                "an empty span kind, as jaeger-query",
            ),
            (
                "service=cart&groupByOperation=maybe",
                Figure::Calls,
                "unable to parse param 'groupByOperation'",
                "not a boolean",
            ),
            (
                "service=cart&endTs=yesterday",
                Figure::Calls,
                "unable to parse param 'endTs'",
                "not milliseconds",
            ),
            (
                "service=cart&step=0",
                Figure::Calls,
                "unable to parse param 'step': must be a positive number of milliseconds",
                "a zero step would never end",
            ),
            (
                "service=cart&lookback=172800000&step=1",
                Figure::Calls,
                "exceeded maximum resolution of 11000 points",
                "two days by the millisecond: Prometheus' bound on points",
            ),
        ];
        for (query, figure, message, reason) in rows {
            let error = Params::parse(&pairs(query), figure, now).expect_err(reason);
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{reason}");
            assert!(
                error.message.contains(message),
                "{reason}: {}",
                error.message
            );
        }
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn span(name: &str, ms: u64, error: bool) -> crate::decode::SpanFacts {
        let mut span =
            crate::testing::facts(&Arc::from("cart"), None, SpanKind::Server, ms * 1_000_000);
        span.name = Arc::from(name);
        span.error = error;
        span
    }

    fn doubles(family: &Value, metric: usize) -> Vec<Value> {
        family["metrics"][metric]["metricPoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["gaugeValue"]["doubleValue"].clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn each_step_sums_its_window_of_the_span_metrics() {
        let metrics = SpanMetrics::new(SpanMetricsConfig::default(), Clock::starting_at(at(0)));
        // Minute 0: ten calls of GET /a (10 ms), two failed; minute 1: twenty of GET /b
        // (20 ms); minute 2: nothing; now is 30 s into minute 2.
        let mut first: Vec<_> = (0..8).map(|_| span("GET /a", 10, false)).collect();
        first.extend((0..2).map(|_| span("GET /a", 10, true)));
        metrics.ingest(&first);
        tokio::time::advance(Duration::from_secs(60)).await;
        metrics.ingest(
            &(0..20)
                .map(|_| span("GET /b", 20, false))
                .collect::<Vec<_>>(),
        );
        tokio::time::advance(Duration::from_secs(90)).await;
        let now = unix_ms(metrics.now());
        let query = |figure, extra: &str| {
            let start = unix_ms(at(0)) + 30_000;
            Params::parse(
                &pairs(&format!(
                    // The first of a repeated parameter counts: `extra` before the defaults.
                    "service=cart{extra}&endTs={}&lookback=120000&step=60000&ratePer=60000&quantile=0.5",
                    start + 120_000
                )),
                figure,
                now,
            )
            .unwrap()
        };
        let family_of = |figure, extra: &str| {
            let params = query(figure, extra);
            let timelines = metrics
                .timelines(
                    Selection {
                        services: &params.services,
                        kinds: &params.kinds,
                        by_operation: params.by_operation,
                        latency: true,
                        minutes: (0, u64::MAX),
                    },
                    usize::MAX,
                )
                .unwrap();
            family(figure, &params, &timelines, now)
        };
        let calls = family_of(Figure::Calls, "");
        assert_eq!(calls["name"], "service_call_rate");
        assert_eq!(calls["type"], "GAUGE");
        assert_eq!(calls["help"], "calls/sec, grouped by service");
        assert_eq!(
            calls["metrics"][0]["labels"],
            json!([{"name": "service_name", "value": "cart"}])
        );
        let times: Vec<&str> = calls["metrics"][0]["metricPoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["timestamp"].as_str().unwrap())
            .collect();
        assert_eq!(
            times,
            [
                "2027-01-15T08:00:30Z",
                "2027-01-15T08:01:30Z",
                "2027-01-15T08:02:30Z"
            ],
            "from endTs - lookback to endTs, every step, as RFC 3339"
        );
        let per_second = |n: f64, seconds: f64| json!(n / seconds);
        assert_eq!(
            doubles(&calls, 0),
            [per_second(10.0, 60.0), per_second(20.0, 60.0), json!(0.0)],
            "each point's one-minute window: 10/min, 20/min, then none (the current minute, 30 s covered)"
        );
        let errors = family_of(Figure::Errors, "");
        assert_eq!(errors["name"], "service_error_rate");
        assert_eq!(
            doubles(&errors, 0),
            [json!(0.2), json!(0.0), json!("NaN")],
            "a fraction of the calls; no calls, no rate (NaN, a gap in the UI)"
        );
        let latencies = family_of(Figure::Latencies, "");
        assert_eq!(latencies["name"], "service_latencies");
        assert_eq!(
            latencies["help"],
            "0.50th quantile latency, grouped by service"
        );
        let medians = doubles(&latencies, 0);
        let ms = |v: &Value| v.as_f64().unwrap();
        assert!(
            (ms(&medians[0]) - 10.0).abs() < 0.3,
            "{medians:?}: milliseconds"
        );
        assert!((ms(&medians[1]) - 20.0).abs() < 0.6, "{medians:?}");
        assert_eq!(medians[2], "NaN");

        let by_operation = family_of(Figure::Calls, "&groupByOperation=true");
        assert_eq!(by_operation["name"], "service_operation_call_rate");
        assert_eq!(
            by_operation["metrics"][1]["labels"],
            json!([{"name": "service_name", "value": "cart"}, {"name": "operation", "value": "GET /b"}]),
            "service_name first (the UI reads labels[0]), then operation"
        );
        assert_eq!(
            doubles(&by_operation, 1).len(),
            2,
            "GET /b has points from its first minute on"
        );
        let wider = family_of(Figure::Calls, "&ratePer=600000");
        assert_eq!(
            doubles(&wider, 0)[2],
            per_second(30.0, 570.0),
            "a ten-minute window: its whole minutes up to now (9.5 minutes), as rate() divides by its range"
        );
        let all = Selection {
            services: &["cart".to_owned()],
            kinds: &[SpanKind::Server],
            by_operation: true,
            latency: true,
            minutes: (0, u64::MAX),
        };
        assert_eq!(
            metrics.timelines(all, 1).map(|t| t.len()),
            Err(3),
            "three series-minutes (GET /a's unset and failed series, GET /b's): refused past the bound, before merging"
        );
        let params = query(Figure::Latencies, "&groupByOperation=true&ratePer=600000");
        let timelines = metrics.timelines(all, 3).unwrap();
        assert_eq!(
            work(&params, &timelines, now),
            3 + 2,
            "GET /a: three points of one minute each; GET /b: two points of one minute each"
        );
        let nobody = Params::parse(&pairs("service=nobody"), Figure::Calls, now).unwrap();
        let empty = family(Figure::Calls, &nobody, &[], now);
        assert_eq!(
            empty["metrics"],
            json!([]),
            "always an array: the UI reads metrics[0]"
        );
    }
}
