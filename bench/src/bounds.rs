//! What the bounds of issue 28 cost and hold, on an in-process collector, through its HTTP
//! API: the largest statements the SQL check takes (planned and run) and the time to refuse
//! ones past it; the longest single call a query may make; the time from a query's time
//! limit to its slot coming back (its work stopped); the trace endpoint by a span's attribute
//! count; and the recovery of a damaged write-ahead log segment.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use wayfinder_collector::testing::wal::{RecordKind, Wal, WalConfig, WalSync};

/// Arguments of `wayfinder-bench bounds`.
#[derive(Debug, clap::Args)]
pub(crate) struct BoundsArgs {
    /// Runs of each statement; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Records of the damaged log segment (64 KiB each).
    #[arg(long, default_value_t = 1_000)]
    records: u64,
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Runs the benchmark and prints its tables.
pub(crate) async fn bounds(args: BoundsArgs) -> anyhow::Result<()> {
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    statements(&args, &client).await?;
    timeouts(&client).await?;
    traces(&client).await?;
    damaged_log(&args).await?;
    Ok(())
}

fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

async fn statements(args: &BoundsArgs, client: &Client) -> anyhow::Result<()> {
    let mut config = wayfinder_bench::fleet::loopback_config();
    config.query.query_timeout = Duration::from_secs(60);
    let collector = wayfinder_collector::Collector::start(config).await?;
    let query = collector.addrs().query_http;
    let otlp = collector.addrs().otlp_http;
    post(client, otlp, "/v1/traces", &spans("bench", 1, 10_000, 2)).await?;
    while count(client, query).await? < 10_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<String> = (0..5_000).map(|i| format!("'{i:032x}'")).collect();
    let joins = {
        let mut sql = String::from("SELECT count(*) FROM spans t0");
        for i in 1..40 {
            sql += &format!(" JOIN spans t{i} ON t{i}.span_id = t0.span_id");
        }
        sql
    };
    let shapes = [
        (
            "a sum of 250 terms (the depth bound is 256)",
            format!("SELECT {}", chain("1", "+", 250)),
            200,
        ),
        (
            "200 ANDs over 10,000 spans",
            format!(
                "SELECT count(*) FROM spans WHERE {}",
                chain("duration_ns >= 0", " AND ", 200)
            ),
            200,
        ),
        (
            "45 UNION ALL terms over spans (the relation bound is 100)",
            chain("SELECT count(*) FROM spans", " UNION ALL ", 45),
            200,
        ),
        ("40 tables joined", joins, 200),
        (
            "an IN list of 5,000 trace ids",
            format!(
                "SELECT count(*) FROM spans WHERE trace_id IN ({})",
                ids.join(",")
            ),
            200,
        ),
        (
            "refused: a sum of 2,000 terms",
            format!("SELECT {}", chain("1", "+", 2_000)),
            400,
        ),
        (
            "refused: 5,000 UNION ALL terms",
            chain("SELECT 1", " UNION ALL ", 5_000),
            400,
        ),
        (
            "refused: repeat('x', 10^9)",
            "SELECT length(repeat('x', 1000000000))".to_owned(),
            422,
        ),
        (
            "the longest call taken: levenshtein over 5,000 × 5,000 characters (2.5·10^7 steps; the bound is 2^25)",
            "SELECT levenshtein(repeat('a', 5000), repeat('b', 5000))".to_owned(),
            200,
        ),
    ];
    println!("| statement | answer | median of {} |", args.runs);
    println!("|---|---|---|");
    for (name, sql, want) in shapes {
        let mut times = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let (status, took, body) = sql_request(client, query, &sql).await?;
            if status != want {
                bail!("{name}: {status}, not {want}: {body}");
            }
            times.push(took);
        }
        times.sort();
        println!("| {name} | {want} | {:.1?} |", times[times.len() / 2]);
    }
    collector.shutdown().await;
    Ok(())
}

/// A query past its time limit: when its answer comes, and when its slot (held until its work
/// has stopped) is free again.
async fn timeouts(client: &Client) -> anyhow::Result<()> {
    let mut config = wayfinder_bench::fleet::loopback_config();
    config.query.query_timeout = Duration::from_secs(2);
    config.query.query_max_concurrent = 1;
    let collector = wayfinder_collector::Collector::start(config).await?;
    let query = collector.addrs().query_http;
    post(
        client,
        collector.addrs().otlp_http,
        "/v1/traces",
        &spans("bench", 2, 5_000, 1),
    )
    .await?;
    while count(client, query).await? < 5_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!();
    println!(
        "| a query past its 2 s limit | answered | slot back after the answer | query threads' CPU idle after the answer |"
    );
    println!("|---|---|---|---|");
    let shapes = [
        (
            "a cross join (cancelled between batches)",
            "SELECT count(*) FROM spans a CROSS JOIN spans b CROSS JOIN spans c",
        ),
        (
            "levenshtein calls near the step bound, batch after batch",
            "SELECT sum(levenshtein(repeat('a', 60), CAST(value AS VARCHAR) || repeat('b', 50))) FROM range(100000000)",
        ),
    ];
    for (name, sql) in shapes {
        let (status, took, body) = sql_request(client, query, sql).await?;
        if status != 503 {
            bail!("{name}: {status}, not 503: {body}");
        }
        let answered = Instant::now();
        // The query threads' CPU, sampled every 10 ms until a sample finds it still.
        let idle = tokio::spawn(async move {
            let mut last = query_threads_cpu();
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = query_threads_cpu();
                if now == last {
                    return answered.elapsed();
                }
                last = now;
            }
        });
        loop {
            let (status, _, _) = sql_request(client, query, "SELECT 1").await?;
            if status == 200 {
                break;
            }
            if answered.elapsed() > Duration::from_secs(30) {
                bail!("{name}: the slot did not come back within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let slot = answered.elapsed();
        let idle = idle.await?;
        println!("| {name} | {took:.2?} | {slot:.0?} | {idle:.0?} |");
    }
    collector.shutdown().await;
    Ok(())
}

/// The CPU time of this process's query threads (`wayfinder-query`), in clock ticks.
fn query_threads_cpu() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter(|stat| stat.contains("(wayfinder-query)"))
        .filter_map(|stat| {
            // After the name: state, then 10 fields, then utime and stime.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// `GET /api/v1/traces/{id}` of one span with many attributes.
async fn traces(client: &Client) -> anyhow::Result<()> {
    println!();
    println!("| attributes of the span | /api/v1/traces/{{id}} | SQL of its attributes |");
    println!("|---|---|---|");
    for (trace, attributes) in [(3u8, 5_000usize), (4, 40_000), (5, 200_000)] {
        let collector =
            wayfinder_collector::Collector::start(wayfinder_bench::fleet::loopback_config())
                .await?;
        let query = collector.addrs().query_http;
        post(
            client,
            collector.addrs().otlp_http,
            "/v1/traces",
            &spans("wide", trace, 1, attributes),
        )
        .await?;
        while count(client, query).await? < 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let id = format!("{:032x}", u128::from(trace) << 64);
        let started = Instant::now();
        let request = http::Request::get(format!("http://{query}/api/v1/traces/{id}"))
            .body(Full::new(Bytes::new()))?;
        let answer = client.request(request).await?;
        let status = answer.status();
        let _ = answer.into_body().collect().await?;
        let trace_took = started.elapsed();
        if !status.is_success() {
            bail!("the trace of {attributes} attributes: {status}");
        }
        let (status, sql_took, body) = sql_request(
            client,
            query,
            &format!("SELECT attributes FROM spans WHERE trace_id = '{id}'"),
        )
        .await?;
        if status != 200 {
            bail!("SQL of {attributes} attributes: {status} {body}");
        }
        println!("| {attributes} | {trace_took:.2?} | {sql_took:.2?} |");
        collector.shutdown().await;
    }
    Ok(())
}

/// A segment of `records` records of 64 KiB, four bytes flipped in its middle: what opening
/// the log finds, keeps and costs.
async fn damaged_log(args: &BoundsArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = WalConfig::new(dir.path(), WalSync::Interval(Duration::from_millis(200)));
    config.segment_bytes = u64::MAX;
    let payload = vec![7u8; 64 << 10];
    let (wal, _) = Wal::open(config.clone())?;
    for _ in 0..args.records {
        wal.append(RecordKind::Traces, SystemTime::now(), &payload)?
            .durable()
            .await?;
    }
    wal.close().await;
    let (_, segment) = wayfinder_collector::testing::wal::segment::list(dir.path())?
        .pop()
        .context("a segment")?;
    let mut bytes = std::fs::read(&segment)?;
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 4] {
        *byte ^= 0xa5;
    }
    std::fs::write(&segment, &bytes)?;
    let started = Instant::now();
    let (wal, recovery) = Wal::open(config)?;
    let took = started.elapsed();
    let lost: u64 = recovery.damage.iter().filter_map(|d| d.records).sum();
    let moved: u64 = recovery.damage.iter().map(|d| d.bytes).sum();
    println!();
    println!(
        "| damaged segment | records back | records lost | bytes moved aside | open (scan, move aside, rewrite) |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {:.1} MB, {} records, 4 bytes flipped in the middle | {} | {lost} | {moved} | {took:.0?} |",
        bytes.len() as f64 / 1e6,
        args.records,
        recovery.records,
    );
    drop(wal);
    Ok(())
}

/// An OTLP/JSON request of `n` spans of trace `trace`, each with `attributes` attributes.
fn spans(service: &str, trace: u8, n: u64, attributes: usize) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let attributes: Vec<serde_json::Value> = (0..attributes)
        .map(|i| serde_json::json!({"key": format!("k{i}"), "value": {"stringValue": format!("v{i}")}}))
        .collect();
    let spans: Vec<serde_json::Value> = (1..=n)
        .map(|i| {
            serde_json::json!({
                "traceId": format!("{:032x}", u128::from(trace) << 64 | u128::from(i / 10)),
                "spanId": format!("{i:016x}"), "name": format!("op {}", i % 7), "kind": 2,
                "startTimeUnixNano": (now + i).to_string(),
                "endTimeUnixNano": (now + i + 1_000_000).to_string(),
                "attributes": attributes
            })
        })
        .collect();
    serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": spans}]
    }]})
}

async fn post(
    client: &Client,
    addr: std::net::SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let answer = client.request(request).await?;
    if !answer.status().is_success() {
        bail!("POST {path}: {}", answer.status());
    }
    Ok(())
}

async fn count(client: &Client, query: std::net::SocketAddr) -> anyhow::Result<u64> {
    let (status, _, body) = sql_request(client, query, "SELECT count(*) FROM spans").await?;
    if status != 200 {
        bail!("count: {status} {body}");
    }
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    answer["rows"][0][0].as_u64().context("a count")
}

/// One statement through `POST /api/v1/sql`: its status, time and body.
async fn sql_request(
    client: &Client,
    query: std::net::SocketAddr,
    sql: &str,
) -> anyhow::Result<(u16, Duration, String)> {
    let request = http::Request::post(format!("http://{query}/api/v1/sql"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({ "sql": sql }).to_string(),
        )))?;
    let started = Instant::now();
    let answer = client.request(request).await?;
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await?.to_bytes();
    Ok((
        status,
        started.elapsed(),
        String::from_utf8_lossy(&body).into_owned(),
    ))
}
