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
