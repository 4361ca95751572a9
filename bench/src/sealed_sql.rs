//! SQL over sealed Parquet files: an in-process collector with `--data-dir` is fed until it
//! has sealed `--files` files, then each query is timed through `POST /api/v1/sql`. For each
//! query the collector is started afresh on the same directory, so that its first run is cold
//! (every file's footer read and decoded, the statistics gathered for planning: what every
//! query paid while each query had caches of its own) and the runs after it are warm (the
//! footers and statistics from the engine's shared caches). The files stay in the OS page
//! cache throughout: this measures the footer work, not the disk.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use wayfinder_bench::workload::{Shape, Workload};

/// Arguments of `wayfinder-bench sealed-sql`.
#[derive(Debug, clap::Args)]
pub(crate) struct SealedSqlArgs {
    /// Sealed files to build.
    #[arg(long, default_value_t = 50)]
    files: usize,
    /// Spans sent before each seal.
    #[arg(long, default_value_t = 20_000)]
    spans_per_file: usize,
    /// Warm runs of each query, after its cold one.
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Runs the benchmark and prints a table.
pub(crate) async fn sealed_sql(args: SealedSqlArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("wayfinder-sealed-sql-{}", std::process::id()));
    let result = run(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn config(dir: &std::path::Path) -> wayfinder_collector::Config {
    let mut config = wayfinder_bench::fleet::loopback_config();
    config.store.data_dir = Some(dir.to_owned());
    config.store.seal_interval = Duration::from_millis(500);
    config.store.retention = Duration::from_secs(24 * 3600);
    config
}

async fn run(args: &SealedSqlArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
    let mut workload = Workload::new(
        Shape {
            spans_per_request: 1_000,
            ..Shape::default()
        },
        7,
    )
    .starting_at(u64::try_from(now.as_nanos())?);
    let collector = wayfinder_collector::Collector::start(config(dir)).await?;
    let mut otlp =
        TraceServiceClient::connect(format!("http://{}", collector.addrs().otlp_grpc)).await?;
    let mut trace_id = None;
    let mut total = 0u64;
    let started = Instant::now();
    for file in 0..args.files {
        let mut sent = 0;
        while sent < args.spans_per_file {
            let request = workload.request();
            let spans: usize = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            if trace_id.is_none() {
                let first = &request.resource_spans[0].scope_spans[0].spans[0].trace_id;
                trace_id = Some(first.iter().map(|b| format!("{b:02x}")).collect::<String>());
            }
            otlp.export(request).await.context("an export")?;
            sent += spans;
        }
        total += sent as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while collector.metrics().value("wayfinder_sealed_files", &[]) <= file as f64 {
            if Instant::now() > deadline {
                bail!("file {} was not sealed within 30 s", file + 1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let files = collector.metrics().value("wayfinder_sealed_files", &[]);
    let bytes = collector.metrics().value("wayfinder_sealed_bytes", &[]);
    println!(
        "{files} sealed files, {:.1} MB, {total} spans, built in {:.1?}",
        bytes / 1e6,
        started.elapsed()
    );
    collector.shutdown().await;

    let trace_id = trace_id.context("a trace id")?;
    let queries = [
        ("count(*)", "SELECT count(*) FROM spans".to_owned()),
        (
            "one trace by id",
            format!("SELECT span_name FROM spans WHERE trace_id = '{trace_id}'"),
        ),
        (
            "spans per service, last 10 minutes",
            "SELECT service_name, count(*) FROM spans WHERE start_time > now() - INTERVAL '10 minutes' GROUP BY 1 ORDER BY 1"
                .to_owned(),
        ),
    ];
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    println!("| query | cold (first) | warm (median of {}) |", args.runs);
    println!("|---|---|---|");
    for (name, sql) in queries {
        // A fresh collector on the same files: its engine's caches are empty.
        let collector = wayfinder_collector::Collector::start(config(dir)).await?;
        let query = collector.addrs().query_http;
        let (cold, first) = timed(&client, query, &sql).await?;
        let mut warm = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let (took, answer) = timed(&client, query, &sql).await?;
            if answer != first {
                bail!("{name}: a warm run answered differently: {answer} against {first}");
            }
            warm.push(took);
        }
        warm.sort();
        let median = warm.get(warm.len() / 2).copied().unwrap_or_default();
        println!("| {name} | {cold:.1?} | {median:.1?} |");
        collector.shutdown().await;
    }
    Ok(())
}

/// One query's time and its rows.
async fn timed(
    client: &Client,
    query: std::net::SocketAddr,
    sql: &str,
) -> anyhow::Result<(Duration, serde_json::Value)> {
    let request = http::Request::post(format!("http://{query}/api/v1/sql"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({ "sql": sql }).to_string(),
        )))?;
    let started = Instant::now();
    let answer = client.request(request).await?;
    let status = answer.status();
    let body = answer.into_body().collect().await?.to_bytes();
    let took = started.elapsed();
    if !status.is_success() {
        bail!("{sql}: {status} {}", String::from_utf8_lossy(&body));
    }
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    Ok((took, answer["rows"].clone()))
}
