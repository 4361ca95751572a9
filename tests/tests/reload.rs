//! A configuration reloaded into a running collector: the settings that change in place do,
//! at once and without dropping a connection or a span; one that needs a restart is reported
//! and keeps its running value; an invalid configuration changes nothing.

use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wayfinder_collector::config::TokenSource;
use wayfinder_collector::testing::{span, trace_request};
use wayfinder_e2e::{http_client, loopback_config, sql, sql_raw, start, wait_for_rows};

/// One request on a kept-alive connection; the answer's status line.
async fn keep_alive_get(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // The probe's answer is short: its headers and body arrive together.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "the connection was closed");
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_in_place_and_a_listen_address_waits_for_a_restart() {
    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    let body = trace_request(
        Some("reloaded"),
        (1..=3).map(|id| span([9; 16], id, "op", 1, 2)).collect(),
    )
    .encode_to_vec();
    let posted = http_client()
        .post(format!("http://{}/v1/traces", addrs.otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(
        wait_for_rows(&collector, "service_name = 'reloaded'", 3).await,
        3
    );
    let mut kept = tokio::net::TcpStream::connect(addrs.query_http)
        .await
        .unwrap();
    assert!(keep_alive_get(&mut kept, "/healthz").await.contains("200"));

    let running = collector.config();
    let mut new = running.clone();
    new.query.query_max_rows = 2;
    new.weights.weight_gamma = running.weights.weight_gamma * 2.0;
    new.query.max_watchers = 7;
    new.ingest.max_ingest_bytes = running.ingest.max_ingest_bytes / 2;
    new.store.retention = running.store.retention * 2;
    new.listeners.otlp_grpc = "127.0.0.1:1".parse().unwrap();
    let reloaded = collector.reload(new).expect("a valid configuration");
    let mut applied = reloaded.applied.clone();
    applied.sort();
    assert_eq!(
        applied,
        [
            "max_ingest_bytes",
            "max_watchers",
            "query_max_rows",
            "retention",
            "weight_gamma"
        ]
    );
    assert_eq!(reloaded.needs_restart, ["otlp_grpc"]);

    // In force at once: an answer of more rows than the new limit is refused.
    let (status, body) = sql_raw(
        &collector,
        "SELECT span_id FROM spans WHERE service_name = 'reloaded'",
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("more than 2 rows"), "{body}");
    let answer = sql(
        &collector,
        "SELECT span_id FROM spans WHERE service_name = 'reloaded' LIMIT 2",
    )
    .await;
    assert_eq!(answer.rows.len(), 2);
    // The configuration shown is the one in force: the new limits, the running address.
    let shown: serde_json::Value = http_client()
        .get(format!("http://{}/api/v1/config", addrs.query_http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["query_max_rows"], 2);
    assert_eq!(shown["max_watchers"], 7);
    // The queue's budget, as its gauge reports it.
    let metrics = wayfinder_e2e::metrics_text(&collector).await;
    let capacity = format!(
        "wayfinder_ingest_queue_capacity_bytes {}",
        running.ingest.max_ingest_bytes / 2
    );
    assert!(metrics.contains(&capacity), "{capacity} in:\n{metrics}");
    assert_eq!(shown["otlp_grpc"], running.listeners.otlp_grpc.to_string());
    assert_eq!(
        collector.weights().config().rule.gamma,
        running.weights.weight_gamma * 2.0
    );
    // The connection opened before the reload is still served.
    assert!(keep_alive_get(&mut kept, "/healthz").await.contains("200"));

    // An invalid configuration (a TTL shorter than the update period) changes nothing.
    let mut invalid = collector.config();
    invalid.query.query_max_rows = 1;
    invalid.weights.weight_ttl = invalid.weights.weight_update_period / 2;
    let error = collector.reload(invalid).expect_err("refused");
    assert!(error.to_string().contains("weight_ttl"), "{error}");
    assert_eq!(collector.config().query.query_max_rows, 2);
    // Counted (read from a fresh exposition: `/metrics` answers from a copy for a second).
    for outcome in ["applied", "rejected"] {
        let counted = collector
            .metrics()
            .value("wayfinder_config_reloads_total", &[("outcome", outcome)])
            as u64;
        assert_eq!(counted, 1, "{outcome}");
    }
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_named_anew_is_taken_and_turning_tokens_off_waits_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::write(&old, "old-token\n").unwrap();
    std::fs::write(&new, "new-token\n").unwrap();
    let mut config = loopback_config();
    config.access.set_query_tokens(Some(TokenSource::File(old)));
    let collector = start(config).await;
    let url = format!("http://{}/api/v1/services", collector.addrs().query_http);
    let status = |token: &'static str| {
        let url = url.clone();
        async move {
            http_client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("old-token").await, 200);

    let mut renamed = collector.config();
    renamed
        .access
        .set_query_tokens(Some(TokenSource::File(new)));
    let reloaded = collector.reload(renamed).unwrap();
    assert_eq!(reloaded.applied, ["query_token_file"]);
    assert_eq!(
        status("new-token").await,
        200,
        "the new file's token is admitted"
    );
    assert_eq!(status("old-token").await, 401, "the old file's is not");

    // A file that cannot be read refuses the reload; the tokens in force stay.
    let mut missing = collector.config();
    missing
        .access
        .set_query_tokens(Some(TokenSource::File(dir.path().join("missing"))));
    let error = collector
        .reload(missing)
        .expect_err("an unreadable token file");
    assert!(error.to_string().contains("query_token_file"), "{error}");
    assert_eq!(status("new-token").await, 200);

    // Turning tokens off needs a restart: reported, and the API stays guarded.
    let mut open = collector.config();
    open.access.set_query_tokens(None);
    let reloaded = collector.reload(open).unwrap();
    assert!(reloaded.applied.is_empty(), "{reloaded:?}");
    assert_eq!(reloaded.needs_restart, ["query_token_file"]);
    assert_eq!(status("new-token").await, 200);
    assert_eq!(status("no-token").await, 401);
    collector.shutdown().await;
}

/// Sends `request` on a new connection and reads until the collector closes it or `patience`
/// runs out: what came back, or `None` when it was still open.
async fn closed_within(
    addr: std::net::SocketAddr,
    request: &str,
    patience: Duration,
) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(patience, stream.read_to_end(&mut answer))
        .await
        .ok()
        .map(|_| String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_body_deadlines_change_in_place() {
    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    let stalled = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"resource";
    let patience = Duration::from_millis(1500);
    // With the defaults (10 s, 30 s) neither a silent connection nor a stalled body is closed
    // within 1.5 s.
    assert_eq!(closed_within(addrs.otlp_http, "", patience).await, None);
    assert_eq!(
        closed_within(addrs.otlp_http, stalled, patience).await,
        None
    );

    let mut new = collector.config();
    new.listeners.header_read_timeout = Duration::from_millis(300);
    new.listeners.body_read_timeout = Duration::from_millis(300);
    let reloaded = collector.reload(new).expect("a valid configuration");
    let mut applied = reloaded.applied.clone();
    applied.sort();
    assert_eq!(applied, ["body_read_timeout", "header_read_timeout"]);
    assert!(reloaded.needs_restart.is_empty(), "{reloaded:?}");

    // The next connections have the new limits.
    let silent = closed_within(addrs.otlp_http, "", patience).await;
    assert_eq!(silent.as_deref(), Some(""), "closed without an answer");
    let answer = closed_within(addrs.otlp_http, stalled, patience)
        .await
        .expect("closed within 1.5 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("within 300ms"), "{answer}");
    collector.shutdown().await;
}
