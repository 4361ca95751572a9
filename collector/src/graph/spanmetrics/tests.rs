use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
}

fn span(service: &str, name: &str, kind: SpanKind, ms: u64) -> SpanFacts {
    let mut span = crate::testing::facts(&Arc::from(service), None, kind, ms * 1_000_000);
    span.name = Arc::from(name);
    span
}

fn failed(mut span: SpanFacts) -> SpanFacts {
    span.error = true;
    span
}

fn ok(mut span: SpanFacts) -> SpanFacts {
    span.status_ok = true;
    span
}

fn exposition(metrics: Arc<SpanMetrics>) -> String {
    let all = crate::metrics::Metrics::new();
    all.register_collector(Box::new(SpanMetricsExposition(metrics.clone())));
    all.register_exposition(Box::new(SpanMetricsExposition(metrics)));
    all.encode()
}

#[test]
fn series_per_service_name_kind_and_status() {
    let metrics = Arc::new(SpanMetrics::new(
        SpanMetricsConfig::default(),
        Clock::starting_at(at(0)),
    ));
    metrics.ingest(&[
        span("cart", "GET /cart", SpanKind::Server, 3),
        span("cart", "GET /cart", SpanKind::Server, 30),
        failed(span("cart", "GET /cart", SpanKind::Server, 300)),
        ok(span("cart", "SELECT", SpanKind::Client, 1)),
        span("front", "GET /cart", SpanKind::Server, 5),
    ]);
    let text = exposition(metrics);
    let cases = [
        (
            r#"traces_spanmetrics_calls_total{service="cart",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"} 2"#,
            "two unset calls of one operation",
        ),
        (
            r#"traces_spanmetrics_calls_total{service="cart",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR"} 1"#,
            "the failed one is its own series",
        ),
        (
            r#"traces_spanmetrics_calls_total{service="cart",span_name="SELECT",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_OK"} 1"#,
            "kind and Ok status",
        ),
        (
            r#"traces_spanmetrics_calls_total{service="front",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"} 1"#,
            "the same name in another service is another series",
        ),
        (
            r#"traces_spanmetrics_latency_bucket{service="cart",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET",le="0.004"} 1 # {trace_id=""#,
            "3 ms in the 4 ms bucket, with its trace",
        ),
        (
            r#"traces_spanmetrics_latency_bucket{service="cart",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET",le="0.05"} 2 # {trace_id=""#,
            "30 ms in the 50 ms bucket, cumulative",
        ),
        (
            r#"traces_spanmetrics_latency_count{service="cart",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR"} 1"#,
            "the failed call's duration",
        ),
        (
            "# TYPE traces_spanmetrics_calls counter\n",
            "the counter family, with help",
        ),
        (
            "# HELP traces_spanmetrics_latency Span durations",
            "the histogram family, with help",
        ),
    ];
    for (line, why) in cases {
        assert!(text.contains(line), "{why}: {line} in\n{text}");
    }
}

#[test]
fn span_bytes_are_counted_unweighted_and_the_status_message_is_a_label_when_asked() {
    let sized = |bytes: u64, weight: f64, message: Option<&str>| {
        let mut span = failed(span("cart", "GET /cart", SpanKind::Server, 3));
        span.size = bytes;
        span.weight = weight;
        span.status_message = message.map(Arc::from);
        span
    };
    let spans = [
        sized(120, 1.0, Some("timeout")),
        sized(80, 4.0, Some("timeout")),
        sized(50, 1.0, Some("refused")),
    ];
    let plain = Arc::new(SpanMetrics::new(
        SpanMetricsConfig::default(),
        Clock::starting_at(at(0)),
    ));
    plain.ingest(&spans);
    let labelled = Arc::new(SpanMetrics::new(
        SpanMetricsConfig {
            status_message: true,
            ..SpanMetricsConfig::default()
        },
        Clock::starting_at(at(0)),
    ));
    labelled.ingest(&spans);
    let base = r#"service="cart",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR""#;
    let rows: [(&Arc<SpanMetrics>, String, &str); 5] = [
        (
            &plain,
            format!("traces_spanmetrics_size_total{{{base}}} 250\n"),
            "every span's bytes, the weight of 4 not applied (Tempo counts bytes received)",
        ),
        (
            &plain,
            format!("traces_spanmetrics_calls_total{{{base}}} 6\n"),
            "calls are weighted",
        ),
        (
            &labelled,
            format!("traces_spanmetrics_calls_total{{{base},status_message=\"timeout\"}} 5\n"),
            "one series per message when asked",
        ),
        (
            &labelled,
            format!("traces_spanmetrics_size_total{{{base},status_message=\"refused\"}} 50\n"),
            "its bytes too",
        ),
        (
            &plain,
            "# TYPE traces_spanmetrics_size counter\n".to_owned(),
            "the size family, a counter",
        ),
    ];
    for (metrics, line, why) in rows {
        let text = exposition(metrics.clone());
        assert!(text.contains(&line), "{why}: {line} in\n{text}");
    }
    assert!(
        !exposition(plain).contains("status_message"),
        "no status_message label unless asked"
    );
}

#[test]
fn past_the_limit_spans_go_to_one_overflow_series() {
    let config = SpanMetricsConfig {
        max_series: 2,
        ..SpanMetricsConfig::default()
    };
    let metrics = Arc::new(SpanMetrics::new(config, Clock::starting_at(at(0))));
    let spans: Vec<SpanFacts> = (0..5)
        .map(|i| span("cart", &format!("GET /item/{i}"), SpanKind::Server, 2))
        .collect();
    metrics.ingest(&spans);
    metrics.ingest(&spans[..1]);
    let text = exposition(metrics.clone());
    let calls: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("traces_spanmetrics_calls_total"))
        .collect();
    assert_eq!(
        calls,
        [
            r#"traces_spanmetrics_calls_total{service="cart",span_name="GET /item/0",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"} 2"#,
            r#"traces_spanmetrics_calls_total{service="cart",span_name="GET /item/1",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"} 1"#,
            r#"traces_spanmetrics_calls_total{otel_metric_overflow="true"} 3"#,
        ],
        "two tracked, the three others counted in the overflow series, none lost"
    );
    assert!(
        text.contains(r#"traces_spanmetrics_latency_count{otel_metric_overflow="true"} 3"#),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn operations_of_a_service_over_a_window() {
    let clock = Clock::starting_at(at(0));
    let metrics = SpanMetrics::new(SpanMetricsConfig::default(), clock);
    metrics.ingest(&[span("cart", "old", SpanKind::Server, 10)]);
    tokio::time::advance(Duration::from_secs(600)).await;
    metrics.ingest(&[
        span("cart", "GET /cart", SpanKind::Server, 10),
        failed(span("cart", "GET /cart", SpanKind::Server, 20)),
        span("cart", "GET /cart", SpanKind::Client, 1),
        span("front", "GET /", SpanKind::Server, 1),
    ]);
    let operations = metrics.operations("cart", Duration::from_secs(300));
    let got: Vec<(&str, SpanKind, u64, u64)> = operations
        .iter()
        .map(|o| (&*o.name, o.kind, o.summary.requests, o.summary.errors))
        .collect();
    assert_eq!(
        got,
        [
            ("GET /cart", SpanKind::Server, 2, 1),
            ("GET /cart", SpanKind::Client, 1, 0),
        ],
        "statuses summed per name and kind; `old` is outside the window; `front` is another service"
    );
    assert_eq!(
        operations[0].summary.server.count(),
        2,
        "the durations are in the window's sketch"
    );
    assert_eq!(
        metrics.operations("cart", Duration::from_secs(3600)).len(),
        3,
        "an hour holds `old` too"
    );
    assert!(
        metrics
            .operations("nobody", Duration::from_secs(300))
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn series_past_the_retention_are_dropped() {
    let clock = Clock::starting_at(at(0));
    let config = SpanMetricsConfig {
        retention: Duration::from_secs(600),
        ..SpanMetricsConfig::default()
    };
    let metrics = SpanMetrics::new(config, clock);
    metrics.ingest(&[span("cart", "old", SpanKind::Server, 1)]);
    tokio::time::advance(Duration::from_secs(1200)).await;
    metrics.ingest(&[span("cart", "new", SpanKind::Server, 1)]);
    let names: Vec<Arc<str>> = metrics
        .state
        .lock()
        .series
        .keys()
        .map(|k| k.name.clone())
        .collect();
    assert_eq!(
        names,
        [Arc::from("new")],
        "`old` had nothing in ten minutes"
    );
}

/// A span's values of the configured attributes, as the decoder hands them over.
fn with_values(mut span: SpanFacts, values: &[Option<&str>]) -> SpanFacts {
    let values: Vec<Option<Arc<str>>> = values.iter().map(|v| v.map(Arc::from)).collect();
    span.attributes = Some(Arc::from(values));
    span
}

#[test]
fn configured_dimensions_are_labels_and_weights_count() {
    let mut plan = crate::graph::dimensions::AttributePlan::default();
    let config = SpanMetricsConfig {
        dimensions: Arc::from([
            plan.dimension("http.route"),
            plan.dimension("deployment.environment"),
        ]),
        ..SpanMetricsConfig::default()
    };
    let metrics = Arc::new(SpanMetrics::new(config, Clock::starting_at(at(0))));
    let mut sampled = with_values(
        span("cart", "GET", SpanKind::Server, 3),
        &[Some("/cart"), None],
    );
    sampled.weight = 4.0; // kept with probability 1/4
    metrics.ingest(&[
        sampled,
        with_values(
            span("cart", "GET", SpanKind::Server, 3),
            &[Some("/cart"), None],
        ),
        with_values(
            span("cart", "GET", SpanKind::Server, 3),
            &[Some("/items"), Some("prod")],
        ),
    ]);
    let text = exposition(metrics);
    let base = r#"service="cart",span_name="GET",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET""#;
    let cases = [
        (
            format!("traces_spanmetrics_calls_total{{{base},http_route=\"/cart\"}} 5\n"),
            "a span sampled at 1/4 counts for four, the other for one; the absent dimension is no label",
        ),
        (
            format!(
                "traces_spanmetrics_calls_total{{{base},http_route=\"/items\",deployment_environment=\"prod\"}} 1\n"
            ),
            "each value set its own series, labels named as Prometheus allows",
        ),
        (
            format!("traces_spanmetrics_latency_count{{{base},http_route=\"/cart\"}} 5\n"),
            "the histogram counts the weight too",
        ),
        (
            format!("traces_spanmetrics_latency_sum{{{base},http_route=\"/cart\"}} 0.015\n"),
            "and its sum: five requests of 3 ms",
        ),
    ];
    for (line, why) in cases {
        assert!(text.contains(&line), "{why}: {line} in\n{text}");
    }
}
