//! The Grafana dashboards and provisioning in `dashboards/` against a live collector: the demo's
//! fleet sends real traffic to a collector on loopback (every kind of edge, heartbeats, weights),
//! plus a refused request and SQL queries; then every panel's PromQL, parsed with
//! `promql-parser`, may only name metrics and labels that the collector's `/metrics` exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::parser::{Expr, LabelModifier};
use serde_json::Value;
use wayfinder_e2e::{http_client, loopback_config, metrics_text, sql, start};

/// Metric sample names (as PromQL sees them: `_total`, `_bucket`, `_sum`, `_count` included)
/// and the label names each carries, from the Prometheus text exposition.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = metrics.entry(line[..name_end].to_owned()).or_default();
        if let Some(rest) = line[name_end..].strip_prefix('{') {
            let body = &rest[..rest.rfind('}').expect("a closing brace")];
            // Label names are before `="`; values are quoted and may hold commas.
            let mut rest = body;
            while let Some(eq) = rest.find("=\"") {
                labels.insert(rest[..eq].trim_start_matches(',').trim().to_owned());
                let mut end = eq + 2;
                let bytes = rest.as_bytes();
                while end < bytes.len() && !(bytes[end] == b'"' && bytes[end - 1] != b'\\') {
                    end += 1;
                }
                rest = &rest[(end + 1).min(rest.len())..];
            }
        }
    }
    metrics
}

/// What a PromQL expression selects: each selector's metric and matcher labels, and the labels
/// it groups or matches by.
#[derive(Debug, Default)]
struct Uses {
    selectors: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

fn walk(expr: &Expr, uses: &mut Uses) {
    match expr {
        Expr::Aggregate(aggregate) => {
            if let Some(LabelModifier::Include(labels) | LabelModifier::Exclude(labels)) =
                &aggregate.modifier
            {
                uses.grouping.extend(labels.labels.iter().cloned());
            }
            walk(&aggregate.expr, uses);
            if let Some(param) = &aggregate.param {
                walk(param, uses);
            }
        }
        Expr::Unary(unary) => walk(&unary.expr, uses),
        Expr::Binary(binary) => {
            if let Some(LabelModifier::Include(labels) | LabelModifier::Exclude(labels)) =
                binary.modifier.as_ref().and_then(|m| m.matching.as_ref())
            {
                uses.grouping.extend(labels.labels.iter().cloned());
            }
            walk(&binary.lhs, uses);
            walk(&binary.rhs, uses);
        }
        Expr::Paren(paren) => walk(&paren.expr, uses),
        Expr::Subquery(subquery) => walk(&subquery.expr, uses),
        Expr::VectorSelector(selector) => selected(selector, uses),
        Expr::MatrixSelector(matrix) => selected(&matrix.vs, uses),
        Expr::Call(call) => {
            for arg in &call.args.args {
                walk(arg, uses);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selected(selector: &promql_parser::parser::VectorSelector, uses: &mut Uses) {
    let name = selector
        .name
        .clone()
        .expect("every selector names its metric");
    let labels = selector
        .matchers
        .matchers
        .iter()
        .map(|m| m.name.clone())
        .filter(|n| n != "__name__")
        .collect();
    uses.selectors.push((name, labels));
}

/// Grafana's variables as PromQL can parse them: intervals as a duration, others as a value.
fn substitute(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        out.push_str(if name.starts_with("__") { "1m" } else { "x" });
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// Checks one expression against what is exported; returns the problems.
fn check_expr(
    where_: &str,
    expr: &str,
    legend: Option<&str>,
    metrics: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let parsed = match promql_parser::parser::parse(&substitute(expr)) {
        Ok(parsed) => parsed,
        Err(error) => return vec![format!("{where_}: `{expr}` does not parse: {error}")],
    };
    let mut uses = Uses::default();
    walk(&parsed, &mut uses);
    let mut available: BTreeSet<String> = BTreeSet::new();
    for (name, labels) in &uses.selectors {
        let Some(exported_labels) = metrics.get(name) else {
            problems.push(format!("{where_}: `{name}` is not exported"));
            continue;
        };
        available.extend(exported_labels.iter().cloned());
        for label in labels {
            if !exported_labels.contains(label) {
                problems.push(format!("{where_}: `{name}` has no label `{label}`"));
            }
        }
    }
    for label in &uses.grouping {
        if !available.contains(label) {
            problems.push(format!(
                "{where_}: grouping by `{label}`, which no selected metric has"
            ));
        }
    }
    if let Some(legend) = legend {
        for part in legend.split("{{").skip(1) {
            let label = part.split("}}").next().unwrap_or("").trim();
            if !available.contains(label) {
                problems.push(format!(
                    "{where_}: the legend names `{label}`, which no selected metric has"
                ));
            }
        }
    }
    problems
}

/// Sends the demo fleet's traffic until the series every dashboard needs are there.
async fn live_metrics() -> (BTreeMap<String, BTreeSet<String>>, String) {
    let mut config = loopback_config();
    // Small enough that the traffic below evicts by size, so the eviction series exist.
    config.store.max_store_bytes = 256 * 1024;
    let collector = start(config).await;
    let addrs = collector.addrs();
    let urls = wayfinder_demo::fleet::CollectorUrls::of(&addrs);
    let fleet = wayfinder_demo::fleet::Fleet::start(&urls).expect("the fleet starts");
    fleet
        .knobs("checkout-3")
        .expect("checkout-3")
        .apply(wayfinder_demo::Effect::Slow);
    let counts = std::sync::Arc::new(wayfinder_demo::drive::Counts::default());
    let driver = wayfinder_demo::drive::start(fleet.frontend(), 40, counts);

    // A refused request, a refused heartbeat and a stale one, and SQL queries.
    let client = http_client();
    let refused = client
        .post(format!("http://{}/v1/traces", addrs.otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .expect("the receiver answers");
    assert_eq!(refused.status(), 400, "garbage is refused");
    let beat = |seq: u64| {
        serde_json::json!({
            "service": "probe", "instance_id": "probe-1", "status": "passing",
            "ttl_ms": 15000, "seq": seq,
        })
    };
    let invalid = serde_json::json!({
        "service": "probe", "instance_id": "probe-1", "status": "sideways",
    });
    for body in [beat(2), beat(1), invalid] {
        let _ = client
            .post(format!("http://{}/v1/health", addrs.otlp_http))
            .json(&body)
            .send()
            .await
            .expect("the receiver answers");
    }

    // A span with an all-zero trace id, refused alone.
    let refused_span = serde_json::json!({"resourceSpans": [{"resource": {"attributes": []},
        "scopeSpans": [{"spans": [{"traceId": "00000000000000000000000000000000",
        "spanId": "0102030405060708", "name": "bad", "kind": 2,
        "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]});
    let answer = client
        .post(format!("http://{}/v1/traces", addrs.otlp_http))
        .json(&refused_span)
        .send()
        .await
        .expect("the receiver answers");
    assert!(answer.status().is_success(), "a partial success");

    // Series that only exist once the fleet's spans and the weights have come through.
    let needed = [
        "traces_service_graph_request_total{",
        "traces_service_graph_request_server_seconds_bucket{",
        "wayfinder_endpoint_weight{service=\"checkout\"",
        "wayfinder_endpoint_latency_ewma_seconds{service=\"checkout\"",
        "wayfinder_store_evicted_spans_total{",
        "wayfinder_sql_query_duration_seconds_bucket{",
    ];
    let mut text = String::new();
    for _ in 0..160 {
        sql(&collector, "SELECT count(*) FROM spans").await;
        text = metrics_text(&collector).await;
        if needed.iter().all(|series| text.contains(series)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let missing: Vec<_> = needed.iter().filter(|s| !text.contains(**s)).collect();
    assert!(missing.is_empty(), "never exported: {missing:?}\n{text}");
    driver.abort();
    fleet.shutdown().await.expect("the fleet leaves");
    // The `down` transitions are in now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text_after = metrics_text(&collector).await;
    // A scraper that asks for OpenMetrics (Prometheus does) gets it.
    let openmetrics = http_client()
        .get(format!("http://{}/metrics", collector.addrs().query_http))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .expect("the query API answers");
    assert!(
        openmetrics.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        openmetrics.headers()
    );
    let body = openmetrics.text().await.expect("a body");
    assert!(
        body.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with # EOF"
    );
    assert!(
        body.contains("# TYPE traces_service_graph_request counter"),
        "OpenMetrics names the counter family without _total"
    );
    collector.shutdown().await;
    let mut metrics = exported(&text);
    for (name, labels) in exported(&text_after) {
        metrics.entry(name).or_default().extend(labels);
    }
    (metrics, text_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_queries_only_what_the_collector_exports() {
    let (metrics, text) = live_metrics().await;
    let dir = dashboards_dir();
    let mut problems = Vec::new();
    let mut panels = 0;
    let mut uids = BTreeSet::new();
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("grafana"))
        .expect("dashboards/grafana")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(files.len() >= 3, "the three dashboards: {files:?}");
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let uid = dashboard["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_owned()), "{name}: uid {uid} twice");
        assert!(dashboard["title"].is_string(), "{name}: a title");
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let query = variable["query"]["query"].as_str().unwrap_or_default();
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{name}: variable query `{query}`"));
            let (metric, label) = inner.split_once(',').expect("metric, label");
            let (metric, label) = (metric.trim(), label.trim());
            match metrics.get(metric) {
                Some(labels) if labels.contains(label) => {}
                _ => problems.push(format!(
                    "{name}: variable `{query}` names what is not exported"
                )),
            }
        }
        for panel in dashboard["panels"].as_array().expect("panels") {
            panels += 1;
            let title = panel["title"].as_str().unwrap_or("?");
            if panel["datasource"]["uid"] != "wayfinder-prometheus" {
                problems.push(format!("{name} / {title}: not the provisioned data source"));
            }
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name} / {title}: a query");
            for target in targets {
                let expr = target["expr"].as_str().expect("an expr");
                problems.extend(check_expr(
                    &format!("{name} / {title}"),
                    expr,
                    target["legendFormat"].as_str(),
                    &metrics,
                ));
            }
        }
    }
    assert!(panels >= 20, "{panels} panels");
    assert!(
        problems.is_empty(),
        "{}\n\nexported:\n{text}",
        problems.join("\n")
    );
    promtool_finds_nothing(&text);
}

/// `promtool check metrics` over the live exposition (the text format, as curl and promtool get
/// it): every series with help text and in base units. Skipped without promtool unless
/// `WAYFINDER_REQUIRE_PROMTOOL=1` (as in `.ci/run`, which installs Debian's `prometheus`).
fn promtool_finds_nothing(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let required = std::env::var("WAYFINDER_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                !required,
                "WAYFINDER_REQUIRE_PROMTOOL=1 but promtool does not run: {e}"
            );
            eprintln!("skipped: no promtool on PATH (apt-get install prometheus): {e}");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("the exposition written to promtool");
    let output = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}",
        output.status
    );
    assert!(
        text.contains("# HELP traces_service_graph_request_total "),
        "the text format names counters with _total"
    );
}

#[test]
fn provisioning_points_at_the_dashboards_and_the_data_source_every_panel_uses() {
    let dir = dashboards_dir();
    let read = |path: &str| {
        let text =
            std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let sources = &read("provisioning/datasources/wayfinder.yaml")[0];
    let uids: Vec<&str> = sources["datasources"]
        .as_vec()
        .expect("datasources")
        .iter()
        .filter_map(|s| s["uid"].as_str())
        .collect();
    assert!(uids.contains(&"wayfinder-prometheus"), "{uids:?}");
    assert!(uids.contains(&"wayfinder-jaeger"), "{uids:?}");

    let providers = &read("provisioning/dashboards/wayfinder.yaml")[0];
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("the provider's path");
    // The compose file mounts dashboards/grafana where the provider reads.
    let compose = &read("docker-compose.yml")[0];
    let volumes: Vec<&str> = compose["services"]["grafana"]["volumes"]
        .as_vec()
        .expect("grafana's volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let mounted = volumes
        .iter()
        .find_map(|v| {
            v.strip_suffix(":ro")
                .unwrap_or(v)
                .split_once(':')
                .filter(|(_, to)| *to == path)
        })
        .map(|(from, _)| from)
        .unwrap_or_else(|| panic!("nothing mounted at {path}: {volumes:?}"));
    let folder = dir.join(mounted.trim_start_matches("./"));
    let dashboards = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    assert!(
        dashboards >= 3,
        "the provider's folder holds the dashboards"
    );
    let prometheus = &read("prometheus.yml")[0];
    assert_eq!(
        prometheus["scrape_configs"][0]["metrics_path"].as_str(),
        Some("/metrics")
    );
}

#[test]
fn substitution_and_label_parsing_are_right() {
    // (Grafana expression, what PromQL gets, why)
    let rows = [
        (
            "rate(x_total{a=~\"$client\"}[$__rate_interval])",
            "rate(x_total{a=~\"x\"}[1m])",
            "a variable in a matcher and an interval",
        ),
        ("up", "up", "nothing to substitute"),
    ];
    for (grafana, promql, why) in rows {
        assert_eq!(substitute(grafana), promql, "{why}");
    }
    let metrics = exported(
        "# TYPE a_total counter\na_total{x=\"1,2\",y=\"q\\\"z\"} 3\nb 1\nc_bucket{le=\"+Inf\"} 2\n",
    );
    assert_eq!(
        metrics["a_total"],
        BTreeSet::from(["x".to_owned(), "y".to_owned()]),
        "commas and escaped quotes inside values"
    );
    assert!(metrics["b"].is_empty(), "a metric without labels");
    assert!(metrics["c_bucket"].contains("le"), "a bucket's le");
    let problems = check_expr("t", "sum by (nope) (rate(a_total[1m]))", None, &metrics);
    assert_eq!(
        problems.len(),
        1,
        "an unknown grouping label is found: {problems:?}"
    );
    let problems = check_expr("t", "rate(missing_total[1m])", None, &metrics);
    assert_eq!(
        problems.len(),
        1,
        "an unknown metric is found: {problems:?}"
    );
}
