//! `soak`: the collector (the `wayfinder` binary, with `--data-dir`) under about twice the load
//! it sustains, for a bounded time, on loopback. First a probe finds the rate it accepts when
//! sent as fast as it answers; then the soak sends `--factor` times that at a set pace on
//! `--connections` connections, while a monitor samples its resident memory and asks
//! `/readyz` and a SQL count. It checks what issue 16 asks: memory stays under the configured
//! budgets plus an allowance, the probes and queries keep answering, every refusal is
//! retryable, and every acknowledged span is stored (the SQL count over memory and the sealed
//! files equals what was acknowledged). It prints the figures and exits non-zero on a miss.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use parking_lot::Mutex;

use crate::compare::{Running, free_port};
use crate::load::{self, LoadArgs, Protocol, resident_bytes};

#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    /// The `wayfinder` binary (default: the one next to this program).
    #[arg(long)]
    wayfinder: Option<PathBuf>,
    /// How long the soak sends.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long the probe sends, as fast as accepted, to find the sustainable rate.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    probe: Duration,
    /// The soak's rate as a multiple of the probe's.
    #[arg(long, default_value_t = 2.0)]
    factor: f64,
    /// Concurrent connections, one request in flight on each.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// The collector's `--max-ingest-bytes`.
    #[arg(long, default_value = "64MiB")]
    max_ingest_bytes: String,
    /// The collector's `--max-store-bytes`.
    #[arg(long, default_value = "512MiB")]
    max_store_bytes: String,
    /// The collector's `--topology-max-bytes`.
    #[arg(long, default_value = "64MiB")]
    topology_max_bytes: String,
    /// The collector's `--query-memory-bytes`.
    #[arg(long, default_value = "128MiB")]
    query_memory_bytes: String,
    /// What the process may hold beyond those budgets (the write-ahead log's 64 MiB buffer,
    /// the runtimes, decode buffers, allocator slack).
    #[arg(long, default_value = "384MiB")]
    allowance: String,
    /// Where the run's data directory goes (a real disk: tmpfs syncs cost nothing).
    #[arg(long, default_value = "target/bench-data")]
    data_parent: PathBuf,
}

fn bytes_of(text: &str) -> anyhow::Result<u64> {
    wayfinder_collector::config::parse_size(text)
        .map(|n| n as u64)
        .map_err(anyhow::Error::msg)
}

/// What the monitor saw.
#[derive(Debug, Default)]
struct Watch {
    samples: u64,
    peak_rss: u64,
    probes: u64,
    probes_failed: u64,
    slowest_probe: Duration,
    queries: u64,
    queries_failed: u64,
    slowest_query: Duration,
    first_failure: Option<String>,
    /// The largest figures the collector reported of its own budgets.
    peak_store_bytes: u64,
    peak_queue_bytes: u64,
}

/// The value of an unlabelled series in Prometheus text.
fn series(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// One request with a 10 s limit: its status and body.
async fn exchange(
    client: &Client,
    request: http::Request<Full<Bytes>>,
) -> anyhow::Result<(u16, Bytes)> {
    let answer = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .context("no answer within 10 s")??;
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn count_spans(client: &Client, query: &str) -> anyhow::Result<u64> {
    let request = http::Request::post(format!("http://{query}/api/v1/sql"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({"sql": "SELECT count(*) FROM spans"}).to_string(),
        )))?;
    let (status, body) = exchange(client, request).await?;
    if status != 200 {
        bail!(
            "the count answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    answer["rows"][0][0].as_u64().context("a count")
}

/// Samples memory every 250 ms, asks `/readyz` every 500 ms and the SQL count every 2 s,
/// until `done`.
async fn monitor(pid: u32, query: String, done: Arc<AtomicBool>, watch: Arc<Mutex<Watch>>) {
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut round = 0u64;
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        round += 1;
        if let Ok(rss) = resident_bytes(pid) {
            let mut watch = watch.lock();
            watch.samples += 1;
            watch.peak_rss = watch.peak_rss.max(rss);
        }
        if round.is_multiple_of(2) {
            let started = Instant::now();
            let ready = match http::Request::get(format!("http://{query}/readyz"))
                .body(Full::new(Bytes::new()))
            {
                Ok(request) => exchange(&client, request).await,
                Err(error) => Err(error.into()),
            };
            let took = started.elapsed();
            let mut watch = watch.lock();
            watch.probes += 1;
            watch.slowest_probe = watch.slowest_probe.max(took);
            if !matches!(ready, Ok((200, _))) {
                watch.probes_failed += 1;
                watch
                    .first_failure
                    .get_or_insert_with(|| format!("/readyz: {ready:?}"));
            }
        }
        if round.is_multiple_of(8)
            && let Ok(request) =
                http::Request::get(format!("http://{query}/metrics")).body(Full::new(Bytes::new()))
            && let Ok((200, body)) = exchange(&client, request).await
        {
            let text = String::from_utf8_lossy(&body);
            let mut watch = watch.lock();
            if let Some(bytes) = series(&text, "wayfinder_store_bytes") {
                watch.peak_store_bytes = watch.peak_store_bytes.max(bytes);
            }
            if let Some(bytes) = series(&text, "wayfinder_ingest_queue_bytes") {
                watch.peak_queue_bytes = watch.peak_queue_bytes.max(bytes);
            }
        }
        if round.is_multiple_of(8) {
            let started = Instant::now();
            let counted = count_spans(&client, &query).await;
            let took = started.elapsed();
            let mut watch = watch.lock();
            watch.queries += 1;
            watch.slowest_query = watch.slowest_query.max(took);
            if let Err(error) = counted {
                watch.queries_failed += 1;
                watch
                    .first_failure
                    .get_or_insert_with(|| format!("SQL: {error:#}"));
            }
        }
    }
}

pub(crate) async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let program = match &args.wayfinder {
        Some(program) => program.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench's directory")?
            .join("wayfinder"),
    };
    let budgets = [
        &args.max_ingest_bytes,
        &args.max_store_bytes,
        &args.topology_max_bytes,
        &args.query_memory_bytes,
    ]
    .into_iter()
    .map(|text| bytes_of(text))
    .sum::<anyhow::Result<u64>>()?;
    let ceiling = budgets + bytes_of(&args.allowance)?;

    let (grpc, query) = (free_port()?, free_port()?);
    let data_dir = args.data_parent.join(format!("soak-{grpc}"));
    std::fs::create_dir_all(&data_dir)?;
    let child = Command::new(&program)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data_dir)
        .args([
            "--otlp-grpc",
            &format!("127.0.0.1:{grpc}"),
            "--otlp-http",
            &format!("127.0.0.1:{}", free_port()?),
            "--query-http",
            &format!("127.0.0.1:{query}"),
            "--query-grpc",
            &format!("127.0.0.1:{}", free_port()?),
            "--max-ingest-bytes",
            &args.max_ingest_bytes,
            "--max-store-bytes",
            &args.max_store_bytes,
            "--topology-max-bytes",
            &args.topology_max_bytes,
            "--query-memory-bytes",
            &args.query_memory_bytes,
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let running = Running(child);
    let pid = running.0.id();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", query))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the collector did not listen within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let query = format!("127.0.0.1:{query}");
    let load_args = |duration: Duration, rate: u64| LoadArgs {
        protocol: Protocol::Grpc,
        endpoint: format!("127.0.0.1:{grpc}"),
        connections: args.connections,
        duration,
        rate,
        spans_per_request: 500,
        instances: 3,
        distinct_requests: 64,
        graphs: 1,
        read_urls: Vec::new(),
        collector_pid: None,
        live_timestamps: true,
    };

    let watch = Arc::new(Mutex::new(Watch::default()));
    let done = Arc::new(AtomicBool::new(false));
    let monitoring = tokio::spawn(monitor(pid, query.clone(), done.clone(), watch.clone()));

    println!(
        "probe: {} connections as fast as accepted for {:?}",
        args.connections, args.probe
    );
    let probe = load::run(&load_args(args.probe, 0), false).await?;
    let rate = (probe.spans_per_sec * args.factor) as u64;
    println!(
        "probe: {:.0} spans/s accepted, {} refused (retryable), {} failed",
        probe.spans_per_sec, probe.refused, probe.failed
    );
    println!(
        "soak: {rate} spans/s ({}× the probe) on {} connections for {:?}",
        args.factor, args.connections, args.duration
    );
    let soak = load::run(&load_args(args.duration, rate), false).await?;
    done.store(true, Ordering::Relaxed);
    monitoring.await?;

    // Everything acknowledged reaches the store through the queue: wait for the count.
    let acknowledged = probe.spans + soak.spans;
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let stored = loop {
        let stored = count_spans(&client, &query).await?;
        if stored >= acknowledged || Instant::now() > drain_deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let rss_after = resident_bytes(pid)?;
    drop(running);
    let _ = std::fs::remove_dir_all(&data_dir);

    let watch = watch.lock();
    println!(
        "soak: {:.0} spans/s accepted, {} refused (retryable), {} failed, p99 {:.1} ms",
        soak.spans_per_sec, soak.refused, soak.failed, soak.p99_ms
    );
    println!(
        "memory: peak {} MiB resident over {} samples ({} MiB at the end); ceiling {} MiB = budgets {} MiB + allowance {}",
        watch.peak_rss >> 20,
        watch.samples,
        rss_after >> 20,
        ceiling >> 20,
        budgets >> 20,
        args.allowance
    );
    println!(
        "budgets in use at their peaks (as the collector reports them): store {} MiB, ingest queue {} MiB",
        watch.peak_store_bytes >> 20,
        watch.peak_queue_bytes >> 20
    );
    println!(
        "readiness: {} probes, {} failed, slowest {:.1} ms; SQL: {} counts, {} failed, slowest {:.1} ms",
        watch.probes,
        watch.probes_failed,
        watch.slowest_probe.as_secs_f64() * 1e3,
        watch.queries,
        watch.queries_failed,
        watch.slowest_query.as_secs_f64() * 1e3
    );
    println!("stored: {stored} of {acknowledged} acknowledged spans");

    let mut misses = Vec::new();
    if watch.peak_rss > ceiling {
        misses.push(format!(
            "resident memory reached {} MiB, over the ceiling of {} MiB",
            watch.peak_rss >> 20,
            ceiling >> 20
        ));
    }
    if watch.probes_failed > 0 || watch.queries_failed > 0 {
        misses.push(format!(
            "{} readiness probes and {} queries failed (first: {})",
            watch.probes_failed,
            watch.queries_failed,
            watch.first_failure.as_deref().unwrap_or("?")
        ));
    }
    if probe.failed + soak.failed > 0 {
        misses.push(format!(
            "{} requests failed with a non-retryable error",
            probe.failed + soak.failed
        ));
    }
    if stored != acknowledged {
        misses.push(format!(
            "{stored} spans stored for {acknowledged} acknowledged"
        ));
    }
    if soak.refused == 0 {
        println!("note: nothing was refused: the soak did not reach the collector's limits");
    }
    if misses.is_empty() {
        println!("soak: passed");
        Ok(())
    } else {
        bail!("soak: {}", misses.join("; "))
    }
}
