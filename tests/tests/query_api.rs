//! The query API: read-only SQL with its refusals, the Arrow IPC answer, the traces endpoint,
//! health and metrics.

use prost::Message;
use wayfinder_collector::testing::{span, trace_request};
use wayfinder_e2e::{get_trace, http_client, loopback_config, sql, sql_raw, start, wait_for_rows};

async fn send_spans(collector: &wayfinder_collector::RunningCollector, n: u64) {
    let base = 1_700_000_000_000_000_000;
    let spans = (1..=n)
        .map(|i| {
            span(
                [0xab; 16],
                i,
                &format!("op-{}", i % 2),
                base + i,
                base + i * 1000,
            )
        })
        .collect();
    send_request(collector, &trace_request(None, spans), n as i64).await;
}

/// Posts `request` as OTLP/HTTP protobuf and waits until the store holds `rows` spans.
async fn send_request(
    collector: &wayfinder_collector::RunningCollector,
    request: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    rows: i64,
) {
    let response = http_client()
        .post(format!("http://{}/v1/traces", collector.addrs().otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(wait_for_rows(collector, "true", rows).await, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_read_queries_run() {
    let mut config = loopback_config();
    config.query.query_max_rows = 30;
    let collector = start(config).await;
    send_spans(&collector, 6).await;
    let cases = [
        (
            "CREATE TABLE t AS SELECT 1",
            400,
            "only read queries",
            "DDL is refused",
        ),
        (
            "DROP TABLE spans",
            400,
            "only read queries",
            "DDL is refused",
        ),
        (
            "INSERT INTO spans SELECT * FROM spans",
            400,
            "only read queries (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE) are allowed; this is INSERT",
            "DML is refused",
        ),
        (
            "COPY (SELECT 1) TO '/tmp/wayfinder-copy.csv'",
            400,
            "are allowed; this is COPY",
            "COPY is refused",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            400,
            "only read queries",
            "SET is refused",
        ),
        (
            "SELECT 1; SELECT 2",
            400,
            "invalid query: one statement at a time, not 2",
            "more than one statement is refused",
        ),
        ("SELEC 1", 400, "invalid query", "a syntax error is a 400"),
        (
            "SELECT nope FROM spans",
            400,
            "invalid query",
            "an unknown column is a 400",
        ),
        (
            "SELECT a.span_id FROM spans a, spans b",
            422,
            "more than 30 rows",
            "answers are bounded in rows (6 × 6 = 36)",
        ),
        (
            "SELECT span_name, count(*) AS n FROM spans GROUP BY span_name ORDER BY span_name",
            200,
            "op-0",
            "an aggregate",
        ),
        ("SHOW TABLES", 200, "spans", "SHOW is a read"),
        (
            "EXPLAIN SELECT count(*) FROM spans",
            200,
            "plan",
            "EXPLAIN is a read",
        ),
    ];
    for (query, status, contains, reason) in cases {
        assert!(
            !contains.is_empty(),
            "{reason}: an expectation that can fail"
        );
        let (got, body) = sql_raw(&collector, query).await;
        assert_eq!(got, status, "{reason}: {query} → {body}");
        assert!(body.contains(contains), "{reason}: {body}");
    }
    // Nothing above changed the table, and the collector still answers.
    let r = sql(&collector, "SELECT count(*) AS n FROM spans").await;
    assert_eq!(r.rows[0][0], 6);
    let (status, body) = {
        let response = http_client()
            .post(format!(
                "http://{}/api/v1/sql",
                collector.addrs().query_http
            ))
            .body("not json")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(
        status, 400,
        "a body that is not {{\"sql\"}} is a 400: {body}"
    );
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrow_stream_traces_health_and_metrics() {
    let collector = start(loopback_config()).await;
    send_spans(&collector, 4).await;
    let base = format!("http://{}", collector.addrs().query_http);
    let client = http_client();

    let response = client
        .post(format!("{base}/api/v1/sql"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(
            &serde_json::json!({"sql": "SELECT span_id, duration_ns FROM spans ORDER BY span_id"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = response.bytes().await.unwrap();
    let reader = datafusion_arrow_reader(&bytes);
    assert_eq!(
        reader,
        (4, vec!["span_id".to_owned(), "duration_ns".to_owned()])
    );

    let trace_id = "ab".repeat(16);
    let trace: serde_json::Value = client
        .get(format!("{base}/api/v1/traces/{trace_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let starts: Vec<&str> = trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["start_time"].as_str().unwrap())
        .collect();
    assert_eq!(starts.len(), 4);
    assert!(
        starts.windows(2).all(|w| w[0] <= w[1]),
        "spans by start time: {starts:?}"
    );
    assert_eq!(trace["truncated"], false, "all four, within the row limit");
    let cases = [
        ("cd".repeat(16), 404, "a well-formed id with no spans"),
        ("xyz".to_owned(), 400, "not hex"),
        ("ab".repeat(8), 400, "too short"),
    ];
    for (id, status, reason) in cases {
        let response = client
            .get(format!("{base}/api/v1/traces/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{reason}");
        let body: wayfinder_api::ErrorBody = response.json().await.unwrap();
        assert!(!body.error.is_empty(), "{reason}: the error says why");
    }

    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "wayfinder_receiver_accepted_spans_total{protocol=\"http/protobuf\"} 4",
        "wayfinder_store_spans 4",
        "wayfinder_sql_queries_total{outcome=\"ok\"}",
        "wayfinder_sql_query_duration_seconds_count",
        "wayfinder_ingest_queue_capacity_bytes 268435456",
    ] {
        assert!(
            metrics.contains(expected),
            "metrics lack {expected}:\n{metrics}"
        );
    }
    collector.shutdown().await;
}

/// Rows and column names of an Arrow IPC stream.
fn datafusion_arrow_reader(bytes: &[u8]) -> (usize, Vec<String>) {
    use datafusion::arrow::ipc::reader::StreamReader;
    let reader = StreamReader::try_new(bytes, None).expect("an Arrow IPC stream");
    let names = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let rows = reader.map(|b| b.expect("a batch").num_rows()).sum();
    (rows, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jaeger_search_past_the_row_limit_gives_fewer_traces_not_an_error() {
    // 4 traces of 4 spans under a 10-row limit: the 16 spans of all four do not fit, the 8 of
    // the latest two do.
    let mut config = loopback_config();
    config.query.query_max_rows = 10;
    let collector = start(config).await;
    let base = 1_700_000_000_000_000_000u64;
    let spans = (1..=4u8)
        .flat_map(|trace| {
            (1..=4u64).map(move |i| {
                let start = base + u64::from(trace) * 1_000_000 + i;
                let mut span = span([trace; 16], i, "op", start, start + 10);
                // W3C trace flags in the low byte: every other span sampled.
                span.flags = u32::from(i % 2 == 1);
                span
            })
        })
        .collect();
    send_request(&collector, &trace_request(Some("svc"), spans), 16).await;
    let url = format!(
        "http://{}/api/traces?service=svc&limit=4",
        collector.addrs().query_http
    );
    let answer = http_client().get(url).send().await.unwrap();
    assert_eq!(answer.status(), 200, "fewer traces, not an error");
    let body: serde_json::Value = answer.json().await.unwrap();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "04040404040404040404040404040404",
            "03030303030303030303030303030303"
        ],
        "the latest two, latest first"
    );
    let flags: Vec<(&str, u64)> = body["data"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["spanID"].as_str().unwrap(), s["flags"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        flags,
        [
            ("0000000000000001", 1),
            ("0000000000000002", 0),
            ("0000000000000003", 1),
            ("0000000000000004", 0)
        ],
        "Jaeger's flags are each span's sampled bit"
    );
    collector.shutdown().await;
}

/// A query that needs more than its share of query memory fails alone, with a message that
/// says what to do, and the next one runs (nothing spills to disk instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_memory_share_fails_alone() {
    let mut config = loopback_config();
    config.query.query_memory_bytes = 8 << 20;
    config.query.query_max_concurrent = 2;
    let collector = start(config).await;
    let (status, body) = sql_raw(
        &collector,
        "SELECT value FROM range(0, 3000000) ORDER BY value DESC",
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("needed more than its 4.0 MiB of query memory")
            && body.contains("--query-memory-bytes"),
        "the share, and what to change: {body}"
    );
    let answer = sql(&collector, "SELECT count(*) FROM range(0, 1000)").await;
    assert_eq!(
        answer.rows,
        [vec![serde_json::json!(1000)]],
        "the next query runs"
    );
    collector.shutdown().await;
}

/// A trace with more spans than the row limit answers the earliest ones and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_past_the_row_limit_is_truncated() {
    let mut config = loopback_config();
    config.query.query_max_rows = 3;
    let collector = start(config).await;
    send_spans(&collector, 5).await;
    let trace: serde_json::Value = get_trace(&collector, &"AB".repeat(16))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        trace["trace_id"],
        "ab".repeat(16),
        "upper-case hex is the same id"
    );
    let ids: Vec<&str> = trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["0000000000000001", "0000000000000002", "0000000000000003"],
        "the three earliest of five"
    );
    assert_eq!(trace["truncated"], true);
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_past_the_concurrency_limit_are_refused_with_retry_after() {
    let mut config = loopback_config();
    config.query.query_max_concurrent = 1;
    config.query.query_timeout = std::time::Duration::from_secs(3);
    let collector = start(config).await;
    let url = format!("http://{}/api/v1/sql", collector.addrs().query_http);
    let post = |sql: &'static str| {
        let url = url.clone();
        async move {
            http_client()
                .post(url)
                .json(&serde_json::json!({ "sql": sql }))
                .send()
                .await
                .expect("the query API answers")
        }
    };
    // A query that runs until its timeout holds the one slot.
    const SLOW: &str = "SELECT count(*) FROM range(0, 100000000000)";
    let mut slow = tokio::spawn(post(SLOW));
    let mut refused = None;
    for _ in 0..200 {
        if slow.is_finished() {
            // It came while a `SELECT 1` held the slot, and was refused: send it again.
            let answer = slow.await.unwrap();
            assert_eq!(answer.status(), 503, "refused, not run");
            slow = tokio::spawn(post(SLOW));
        }
        let answer = post("SELECT 1").await;
        if answer.status() == 503 {
            refused = Some(answer);
            break;
        }
        assert_eq!(answer.status(), 200, "before the slow query starts");
    }
    let refused = refused.expect("a second query is refused while the first runs");
    assert_eq!(refused.headers()["retry-after"], "1");
    // A trace lookup reads the store too: it takes a slot as well.
    let lookup = get_trace(&collector, &"ab".repeat(16)).await;
    assert_eq!(lookup.status(), 503, "no slot for the trace lookup either");
    assert_eq!(lookup.headers()["retry-after"], "1");
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("the most allowed at once; retry shortly"),
        "{body}"
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), 503, "the slow one ran into its timeout");
    assert!(
        slow.text().await.unwrap().contains("ran longer than 3s"),
        "and says so"
    );
    // The slot is freed when the slow query's work has stopped, which follows its answer by
    // a few milliseconds (its operators yield every 10 ms): within a second, as documented.
    let freed = tokio::time::Instant::now();
    loop {
        let answer = post("SELECT 1").await;
        if answer.status() == 200 {
            break;
        }
        assert_eq!(answer.status(), 503, "only refused while the slot is held");
        assert!(
            freed.elapsed() < std::time::Duration::from_secs(1),
            "the slot is free again within a second of the timeout"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    collector.shutdown().await;
}
