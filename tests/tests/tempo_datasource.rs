//! Grafana's Tempo data source against a real Prometheus scraping the collector: the PromQL it
//! issues for the service graph (`makePromServiceMapRequest` in grafana's
//! `public/app/plugins/datasource/tempo/datasource.ts`, over the metric names of
//! `graphTransform.ts`) and for the APM table (`rateMetric`, `errorRateMetric`,
//! `durationMetric` through `buildExpr`, with `defaultTableFilter`) answers with the figures of
//! the spans sent. `$__range` is what Grafana's Prometheus data source puts there: the
//! dashboard's range in seconds.
//!
//! Skipped without a `prometheus` binary unless `WAYFINDER_REQUIRE_PROMETHEUS=1` (as in
//! `.ci/run`, which installs Debian's `prometheus`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use prost::Message as _;
use serde_json::Value;
use wayfinder_collector::testing::{span, trace_request};
use wayfinder_e2e::{http_client, loopback_config, post_traces, start};

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
    /// The evaluation time of instant queries (`time=`), once set: Grafana's queries of one
    /// refresh are evaluated at one instant, so ratios between them are exact.
    at: Option<f64>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus scraping `target`'s `/metrics` every second; `None` when there is none to run.
fn prometheus(target: std::net::SocketAddr) -> Option<Prometheus> {
    let required = std::env::var("WAYFINDER_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: wayfinder\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawned = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => Some(Prometheus {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
            at: None,
        }),
        Err(e) if required => {
            panic!("WAYFINDER_REQUIRE_PROMETHEUS=1 but prometheus does not run: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no prometheus on PATH (apt-get install prometheus): {e}");
            None
        }
    }
}

impl Prometheus {
    /// `/api/v1/query?query=…`, the expression percent-encoded.
    fn query_url(&self, promql: &str) -> String {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        match self.at {
            Some(at) => format!("{}/api/v1/query?query={encoded}&time={at:.3}", self.url),
            None => format!("{}/api/v1/query?query={encoded}", self.url),
        }
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let response = http_client()
            .get(self.query_url(promql))
            .send()
            .await
            .expect("Prometheus answers");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `promql` has a result.
    async fn until_some(&self, promql: &str) -> Vec<Value> {
        for _ in 0..150 {
            if let Ok(Ok(response)) = tokio::time::timeout(
                Duration::from_secs(2),
                http_client().get(self.query_url(promql)).send(),
            )
            .await
                && let Ok(body) = response.json::<Value>().await
                && body["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            {
                return body["data"]["result"].as_array().cloned().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{promql}: no result within 15 s");
    }
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

/// Four calls from `front` to `cart` (`GET /cart`, 20 ms at the server), one failed; ids from
/// `first`.
fn calls(first: u64) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut front = Vec::new();
    let mut cart = Vec::new();
    for i in 0..4u64 {
        let trace = [(first + i) as u8; 16];
        let client_id = (first + i) * 10 + 1;
        let mut client = span(trace, client_id, "GET cart", now, now + 25_000_000);
        client.kind = 3;
        let mut server = span(
            trace,
            client_id + 1,
            "GET /cart",
            now + 1_000_000,
            now + 21_000_000,
        );
        server.kind = 2;
        server.parent_span_id = client_id.to_be_bytes().to_vec();
        if i == 0 {
            for s in [&mut client, &mut server] {
                s.status = Some(opentelemetry_proto::tonic::trace::v1::Status {
                    code: 2,
                    message: "boom".into(),
                });
            }
        }
        front.push(client);
        cart.push(server);
    }
    let mut request = trace_request(Some("front"), front);
    request
        .resource_spans
        .extend(trace_request(Some("cart"), cart).resource_spans);
    request.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafanas_service_graph_and_apm_queries_answer_through_prometheus() {
    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    let Some(mut prometheus) = prometheus(addrs.query_http) else {
        return;
    };
    let send = |body: Vec<u8>| post_traces(addrs.otlp_http, body);
    // A first batch, scraped, then a second: rate() needs the counters to move between
    // scrapes.
    send(calls(1)).await;
    prometheus
        .until_some("traces_service_graph_request_total")
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send(calls(11)).await;
    let range = "[1m]";
    // The service graph: `sum by (client, server) (rate(<metric>[$__range]))` for each of
    // `serviceMapMetrics`, and the `group by` that gives connection types.
    let rate_of = |metric: &str| format!("sum by (client, server) (rate({metric}{range}))");
    let totals = prometheus
        .until_some(&format!(
            "{} > 0.04",
            rate_of("traces_service_graph_request_total")
        ))
        .await;
    let edge = totals
        .iter()
        .find(|s| s["metric"]["client"] == "front" && s["metric"]["server"] == "cart")
        .unwrap_or_else(|| panic!("front → cart in {totals:?}"));
    let total = value(edge);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // From here on, every query at one instant, as one Grafana refresh.
    prometheus.at = Some(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64(),
    );
    let edge_of = |samples: Vec<Value>| {
        samples
            .into_iter()
            .find(|s| s["metric"]["client"] == "front" && s["metric"]["server"] == "cart")
            .map(|s| value(&s))
    };
    let (total, failed) = (
        edge_of(
            prometheus
                .query(&rate_of("traces_service_graph_request_total"))
                .await,
        )
        .unwrap_or(total),
        edge_of(
            prometheus
                .query(&rate_of("traces_service_graph_request_failed_total"))
                .await,
        )
        .expect("failed calls"),
    );
    assert!(
        (failed / total - 0.25).abs() < 1e-9,
        "one call in four failed: {failed} / {total}"
    );
    let seconds = edge_of(
        prometheus
            .query(&rate_of("traces_service_graph_request_server_seconds_sum"))
            .await,
    )
    .expect("server seconds");
    let mean_ms = seconds / total * 1000.0;
    assert!(
        (mean_ms - 20.0).abs() < 0.5,
        "the node's main stat, (seconds / total) × 1000: {mean_ms} ms"
    );
    assert!(
        edge_of(
            prometheus
                .query(&rate_of(
                    "traces_service_graph_request_server_seconds_bucket"
                ))
                .await
        )
        .is_some(),
        "the histogram's buckets"
    );
    let kinds = prometheus
        .query("group by (client, connection_type, server) (traces_service_graph_request_total)")
        .await;
    // A plain call's `connection_type=""` is no label at all to Prometheus, which is what
    // Grafana reads as a plain edge.
    assert!(
        kinds.iter().any(|s| s["metric"]["client"] == "front"
            && s["metric"]["server"] == "cart"
            && s["metric"].get("connection_type").is_none()),
        "{kinds:?}"
    );
    let p90 = prometheus
        .query(&format!(
            "histogram_quantile(0.9, sum(rate(traces_service_graph_request_server_seconds_bucket{{client=\"front\",server=\"cart\"}}{range})) by (le, client, server))"
        ))
        .await;
    let p90 = value(&p90[0]);
    assert!((0.01..=0.05).contains(&p90), "the edge link's p90: {p90} s");

    // The APM table: rate, then error rate of the names the rate gave, then duration per name.
    let rates = prometheus
        .query(&format!(
            "topk(5, sum(rate(traces_spanmetrics_calls_total{{span_kind=\"SPAN_KIND_SERVER\"}}{range})) by (span_name))"
        ))
        .await;
    let names: Vec<&str> = rates
        .iter()
        .map(|s| s["metric"]["span_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["GET /cart"], "the server operations");
    let calls_rate = value(&rates[0]);
    let errors = prometheus
        .query(&format!(
            "topk(5, sum(rate(traces_spanmetrics_calls_total{{status_code=\"STATUS_CODE_ERROR\",span_name=~\"GET /cart\"}}{range})) by (span_name))"
        ))
        .await;
    assert!(
        (value(&errors[0]) / calls_rate - 0.25).abs() < 1e-9,
        "the error rate column: {errors:?} over {calls_rate}"
    );
    let duration = prometheus
        .query(&format!(
            "histogram_quantile(.9, sum(rate(traces_spanmetrics_latency_bucket{{span_name=~\"GET /cart\"}}{range})) by (le))"
        ))
        .await;
    let p90 = value(&duration[0]);
    assert!(
        (0.01..=0.05).contains(&p90),
        "the Duration (p90) column, from traces_spanmetrics_latency: {p90} s"
    );
    let size = prometheus
        .query(&format!(
            "sum(rate(traces_spanmetrics_size_total{{span_name=\"GET /cart\"}}{range}))"
        ))
        .await;
    assert!(value(&size[0]) > 0.0, "span bytes: {size:?}");
    drop(prometheus);
    collector.shutdown().await;
}
