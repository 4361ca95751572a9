//! Sealed history in an S3-compatible bucket: the `wayfinder` binary with
//! `--history s3://bucket/spans` against moto's S3 server on loopback (a real HTTP S3 API, with
//! credentials and endpoint from the `AWS_*` variables as an operator sets them): SIGTERM seals
//! the spans into the bucket under `spans/hour=…/`, and a restart answers them by SQL and by
//! the trace endpoint, once. Skipped without Python's moto unless `WAYFINDER_REQUIRE_MOTO=1`
//! (as in `.ci/run`, which installs it).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Killed;

mod common;

/// One HTTP/1.1 request; the status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let response = common::http_exchange(
        addr,
        &format!("{method} {path}"),
        "Content-Type: application/json\r\n",
        body,
        Duration::from_secs(20),
    );
    let status = response[9..12].parse().expect("a status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The binary with its history in `s3://spans-test/spans` at `endpoint`; its query and OTLP/HTTP
/// addresses.
fn serve(data_dir: &Path, endpoint: SocketAddr) -> (Killed, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .arg("serve")
        .args(["--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0"])
        .args(["--query-http", "127.0.0.1:0", "--query-grpc", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--history", "s3://spans-test/spans", "--log-level", "warn"])
        .env("AWS_ENDPOINT", format!("http://{endpoint}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let addrs = common::listening(&mut child);
    (Killed(child), addrs["query-http"], addrs["otlp-http"])
}

fn stop(mut collector: Killed) {
    let pid = collector.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    assert!(
        collector.0.wait().unwrap().success(),
        "exit 0 after SIGTERM"
    );
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[test]
fn sealed_spans_go_to_the_bucket_and_come_back_from_it() {
    let required = std::env::var("WAYFINDER_REQUIRE_MOTO").is_ok_and(|v| v == "1");
    let Some((_moto, endpoint)) = common::moto("spans-test") else {
        assert!(
            !required,
            "WAYFINDER_REQUIRE_MOTO=1 but moto's server does not start"
        );
        eprintln!("skipped: no moto for python3 (pip install 'moto[server]')");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (collector, _, otlp) = serve(dir.path(), endpoint);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let spans: Vec<String> = (1..=5)
        .map(|i| {
            format!(
                r#"{{"traceId":"{TRACE}","spanId":"00000000000000{i:02}","name":"GET /","kind":2,"startTimeUnixNano":"{now}","endTimeUnixNano":"{}"}}"#,
                now + 1_000_000
            )
        })
        .collect();
    let request = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"bucketed"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    );
    assert_eq!(http(otlp, "POST", "/v1/traces", &request).0, 200);
    stop(collector);

    let (status, listing) = http(endpoint, "GET", "/spans-test?list-type=2", "");
    assert_eq!(status, 200);
    assert!(
        listing.contains("<Key>spans/hour=20") && listing.contains(".parquet</Key>"),
        "sealed into the bucket's hourly layout: {listing}"
    );

    let (collector, query, _) = serve(dir.path(), endpoint);
    let sql = serde_json::json!({
        "sql": format!("SELECT count(*) FROM spans WHERE trace_id = '{TRACE}'")
    });
    let (status, body) = http(query, "POST", "/api/v1/sql", &sql.to_string());
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["rows"][0][0], 5, "each span once, from the bucket");
    let (status, body) = http(query, "GET", &format!("/api/v1/traces/{TRACE}"), "");
    assert_eq!(status, 200, "{body}");
    let trace: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(trace["spans"].as_array().unwrap().len(), 5);
    stop(collector);
}
