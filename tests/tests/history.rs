//! Sealed history end to end: spans sealed to Parquet (at shutdown here, deterministically)
//! are answered with the spans in memory as one `spans` table, by SQL, the trace endpoint and
//! Jaeger, once each, across restarts; the files are plain Parquet under `DIR/spans/hour=…/`
//! that DuckDB reads.

use std::path::Path;

use prost::Message as _;
use wayfinder_collector::Config;
use wayfinder_collector::testing::{span, trace_request};
use wayfinder_e2e::{count, get_trace, http_client, loopback_config, start, wait_for_rows};

fn config_in(dir: &Path) -> Config {
    let mut config = loopback_config();
    config.store.data_dir = Some(dir.to_path_buf());
    config
}

/// Sends `n` spans that started a moment ago (the files' retention goes by start hour).
async fn send(otlp_http: std::net::SocketAddr, trace: u8, first_id: u64, n: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let spans = (first_id..first_id + n)
        .map(|id| span([trace; 16], id, "kept", now - 1_000_000 + id, now))
        .collect();
    let answer = http_client()
        .post(format!("http://{otlp_http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(trace_request(Some("archive"), spans).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

fn parquet_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for hour in std::fs::read_dir(dir.join("spans")).unwrap() {
        let hour = hour.unwrap().path();
        for file in std::fs::read_dir(&hour).unwrap() {
            found.push(file.unwrap().path().display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_and_memory_spans_answer_as_one_table_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(config_in(dir.path())).await;
    for request in 0..5 {
        send(first.addrs().otlp_http, 7, request * 10 + 1, 10).await;
    }
    assert_eq!(wait_for_rows(&first, "true", 50).await, 50);
    first.shutdown().await; // seals what is in memory
    let files = parquet_files(dir.path());
    assert!(!files.is_empty(), "shutdown sealed the spans");
    assert!(
        files
            .iter()
            .all(|f| f.contains("/spans/hour=20") && f.ends_with(".parquet")),
        "partitioned by the spans' start hour: {files:?}"
    );

    duckdb_reads(dir.path(), 50);

    let second = start(config_in(dir.path())).await;
    assert_eq!(
        second.store().stats().rows,
        0,
        "sealed records are not replayed into memory"
    );
    send(second.addrs().otlp_http, 8, 1, 10).await;
    assert_eq!(wait_for_rows(&second, "trace_id LIKE '08%'", 10).await, 10);
    assert_eq!(
        second.store().stats().rows,
        10,
        "the new spans are in memory"
    );
    // (query, expected, why)
    let trace7 = "07".repeat(16);
    let cases = [
        (
            "SELECT count(*) FROM spans".to_owned(),
            60,
            "memory and files, each span once",
        ),
        (
            format!("SELECT count(*) FROM spans WHERE trace_id = '{trace7}'"),
            50,
            "a trace only in the files, through their Bloom filters",
        ),
        (
            "SELECT count(DISTINCT span_id) FROM spans WHERE service_name = 'archive'".into(),
            50,
            "50 distinct ids: trace 8 reuses ids 1–10 of trace 7",
        ),
        (
            "SELECT count(*) FROM spans WHERE start_time > now()".into(),
            0,
            "a time filter prunes by statistics and stays exact",
        ),
    ];
    for (query, expected, why) in cases {
        assert_eq!(count(&second, &query).await, expected, "{why}: {query}");
    }
    let answer = get_trace(&second, &trace7).await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        body["spans"].as_array().unwrap().len(),
        50,
        "the trace endpoint reads the files"
    );
    assert_eq!(body["truncated"], false);
    let jaeger = http_client()
        .get(format!(
            "http://{}/api/traces/{trace7}",
            second.addrs().query_http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(jaeger.status(), 200);
    let jaeger: serde_json::Value = jaeger.json().await.unwrap();
    assert_eq!(
        jaeger["data"][0]["spans"].as_array().unwrap().len(),
        50,
        "Jaeger too"
    );
    second.shutdown().await;

    let third = start(config_in(dir.path())).await;
    assert_eq!(
        count(&third, "SELECT count(*) FROM spans").await,
        60,
        "a second restart adds nothing twice"
    );
    third.shutdown().await;
}

/// DuckDB reads the files as they are, with the table's column names: the spans sealed, of
/// the service sent, each once. Skipped without Python's `duckdb` unless
/// `WAYFINDER_REQUIRE_DUCKDB=1` (as in `.ci/run`, which installs it).
fn duckdb_reads(dir: &Path, spans: i64) {
    let required = std::env::var("WAYFINDER_REQUIRE_DUCKDB").is_ok_and(|v| v == "1");
    let glob = dir.join("spans/*/*.parquet");
    let script = format!(
        "import duckdb, json\n\
         rows = duckdb.sql(\"SELECT service_name, count(*), count(DISTINCT span_id), min(hour) \
         FROM read_parquet('{}', hive_partitioning = true) GROUP BY service_name\").fetchall()\n\
         print(json.dumps([list(r) for r in rows]))",
        glob.display()
    );
    let output = std::process::Command::new("python3")
        .args(["-c", &script])
        .output();
    let output = match output {
        Ok(output) if output.status.success() => output,
        other => {
            let why = match &other {
                Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                !required,
                "WAYFINDER_REQUIRE_DUCKDB=1 but DuckDB did not run: {why}"
            );
            eprintln!("skipped: no duckdb for python3 (pip install duckdb): {why}");
            return;
        }
    };
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(rows.as_array().unwrap().len(), 1, "one service: {rows}");
    assert_eq!(row[0], "archive");
    assert_eq!(row[1], spans, "every sealed span, once");
    assert_eq!(row[2], spans, "distinct span ids");
    assert!(
        row[3].as_str().unwrap().starts_with("20"),
        "the hour partition is a column: {row}"
    );
}
