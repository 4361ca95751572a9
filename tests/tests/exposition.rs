//! Every label value on `/metrics` is escaped as the exposition formats define, in every
//! family, whatever names arrive: a property test sends generated names (quotes, backslashes,
//! line feeds, braces, control characters, non-ASCII) as span names, service-graph peers and
//! heartbeat identities, and the Prometheus project's own parser (Python's
//! `prometheus_client`, for the text format and OpenMetrics) must read the whole scrape back,
//! with each name as it was sent and no series that was not made. Names with a control
//! character are refused as identities (a heartbeat's service and instance, a resource's
//! `service.name`), as `wayfinder_decode::is_clean_name` says.
//!
//! Skipped without `prometheus_client` for python3 unless `WAYFINDER_REQUIRE_PROMETHEUS_CLIENT=1`
//! (as in `.ci/run`, which installs it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use wayfinder_e2e::{http_client, loopback_config, start};

/// The characters names are drawn from: what the formats must escape, what could end a label
/// set or a line, control characters, and text beyond ASCII.
const ALPHABET: &[char] = &[
    'a', 'Z', '7', ' ', '"', '\\', '\n', '}', '{', '=', ',', '#', '\t', '\r', '\u{1}', '\u{7f}',
    '\u{85}', '\u{2028}', 'é', '漢', '😀', 'n',
];

/// Names to send: the review's injection, and generated ones (a fixed seed, so that a
/// failure can be replayed).
fn names() -> Vec<String> {
    let mut names = vec![
        "inj\"} 1\nfake_metric{a=\"b\"} 42\n".to_owned(),
        "inj\"svc\n".to_owned(),
        "\\n".to_owned(),
        "plain".to_owned(),
    ];
    let mut rng = fastrand::Rng::with_seed(28);
    for _ in 0..60 {
        let len = rng.usize(1..12);
        names.push(
            (0..len)
                .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
                .collect(),
        );
    }
    // A blank name is not a name (a heartbeat without a service is refused for that).
    names.retain(|n| !n.trim().is_empty());
    names.sort();
    names.dedup();
    names
}

/// Every sample of `scrape` as Python's `prometheus_client` parses it in `format` (`text` or
/// `openmetrics`): (name, labels). `None` when the parser is not installed (and not required).
fn parsed(format: &str, scrape: &str) -> Option<Vec<(String, BTreeMap<String, String>)>> {
    let required = std::env::var("WAYFINDER_REQUIRE_PROMETHEUS_CLIENT").is_ok_and(|v| v == "1");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), scrape).unwrap();
    let script = "import sys, json\n\
         from prometheus_client.parser import text_string_to_metric_families as text\n\
         from prometheus_client.openmetrics.parser import text_string_to_metric_families as om\n\
         parse = om if sys.argv[1] == 'openmetrics' else text\n\
         # newline='': a carriage return inside a label value is text, not the end of a line.\n\
         scrape = open(sys.argv[2], encoding='utf-8', newline='').read()\n\
         print(json.dumps([[s.name, s.labels] for f in parse(scrape) for s in f.samples]))";
    let output = std::process::Command::new("python3")
        .args(["-c", script, format])
        .arg(file.path())
        .output();
    match output {
        Ok(output) if output.status.success() => {
            Some(serde_json::from_slice(&output.stdout).expect("the parser's JSON"))
        }
        Ok(output)
            if String::from_utf8_lossy(&output.stderr)
                .contains("No module named 'prometheus_client'") =>
        {
            assert!(
                !required,
                "WAYFINDER_REQUIRE_PROMETHEUS_CLIENT=1 but prometheus_client is not installed"
            );
            eprintln!("skipped: no prometheus_client for python3 (pip install prometheus_client)");
            None
        }
        Ok(output) => panic!(
            "the {format} parser refused the scrape (kept at {}): {}",
            file.keep().unwrap().1.display(),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => {
            assert!(!required, "python3 did not run: {error}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_name_reads_back_from_the_scrape_in_both_formats() {
    let mut config = loopback_config();
    config.topology.edge_wait = Duration::from_millis(100);
    let collector = start(config).await;
    let client = http_client();
    let otlp = format!("http://{}", collector.addrs().otlp_http);
    let names = names();
    let clean: BTreeSet<&String> = names
        .iter()
        .filter(|n| wayfinder_decode::is_clean_name(n))
        .collect();
    assert!(
        clean.len() > 5 && clean.len() < names.len(),
        "both kinds drawn"
    );

    // Each name as a span's name, and as the peer of a database call; the spans' service is
    // the name itself, so that a name with a control character is also a refused resource.
    let mut resources = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let span = |id: usize, kind: u8, attributes: serde_json::Value| {
            json!({
                "traceId": format!("{:032x}", i + 1), "spanId": format!("{:016x}", id),
                "name": name, "kind": kind,
                "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000001000000",
                "attributes": attributes
            })
        };
        for service in [name.as_str(), "prop-svc"] {
            resources.push(json!({
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"spans": [
                    span(2 * i + 1, 2, json!([])),
                    span(2 * i + 2, 3, json!([
                        {"key": "db.system", "value": {"stringValue": "postgresql"}},
                        {"key": "peer.service", "value": {"stringValue": name}}
                    ])),
                ]}]
            }));
        }
    }
    let answer: serde_json::Value = client
        .post(format!("{otlp}/v1/traces"))
        .json(&json!({ "resourceSpans": resources }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let unclean = names.len() - clean.len();
    assert_eq!(
        answer["partialSuccess"]["rejectedSpans"],
        json!(2 * unclean),
        "the spans of each service named with a control character: {answer}"
    );
    // Each name as a heartbeat's service and instance.
    for name in &names {
        let status = client
            .post(format!("{otlp}/v1/health"))
            .json(&json!({"service": name, "instance_id": name, "status": "passing"}))
            .send()
            .await
            .unwrap()
            .status();
        let want = if clean.contains(name) { 200 } else { 400 };
        assert_eq!(status.as_u16(), want, "a heartbeat from {name:?}");
    }

    // The series show up once the pipeline has taken the spans.
    let query = format!("http://{}/metrics", collector.addrs().query_http);
    let mut scrapes = Vec::new();
    for _ in 0..100 {
        scrapes.clear();
        for accept in ["text/plain", "application/openmetrics-text; version=1.0.0"] {
            let text = client
                .get(&query)
                .header("accept", accept)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            scrapes.push(text);
        }
        let graph_edges = scrapes[0]
            .lines()
            .filter(|l| l.starts_with("traces_service_graph_request_total{client=\"prop-svc\""))
            .count();
        if graph_edges >= names.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (format, scrape) in ["text", "openmetrics"].into_iter().zip(&scrapes) {
        let Some(samples) = parsed(format, scrape) else {
            collector.shutdown().await;
            return;
        };
        let values =
            |metric: &str, label: &str, filter: &dyn Fn(&BTreeMap<String, String>) -> bool| {
                samples
                    .iter()
                    .filter(|(name, labels)| name == metric && filter(labels))
                    .filter_map(|(_, labels)| labels.get(label).cloned())
                    .collect::<BTreeSet<String>>()
            };
        let all: BTreeSet<String> = names.iter().cloned().collect();
        let prop_svc =
            |l: &BTreeMap<String, String>| l.get("service").is_some_and(|s| s == "prop-svc");
        assert_eq!(
            values("traces_spanmetrics_calls_total", "span_name", &prop_svc),
            all,
            "{format}: every span name, as sent"
        );
        let from_prop =
            |l: &BTreeMap<String, String>| l.get("client").is_some_and(|s| s == "prop-svc");
        assert_eq!(
            values("traces_service_graph_request_total", "server", &from_prop),
            all,
            "{format}: every database peer, as sent"
        );
        let clean_names: BTreeSet<String> = clean.iter().map(|s| (*s).clone()).collect();
        let any = |_: &BTreeMap<String, String>| true;
        assert_eq!(
            values("wayfinder_instance_health", "instance", &any),
            clean_names,
            "{format}: every clean heartbeat's instance, none other"
        );
        assert_eq!(
            values("traces_spanmetrics_calls_total", "service", &any)
                .into_iter()
                .filter(|s| s != "prop-svc")
                .collect::<BTreeSet<_>>(),
            clean_names,
            "{format}: the spans of clean services only"
        );
        let families: BTreeSet<&str> = samples
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !name.starts_with("wayfinder_") && !name.starts_with("traces_"))
            .collect();
        assert!(
            families.is_empty(),
            "{format}: series that nobody made: {families:?}"
        );
    }
    collector.shutdown().await;
}
