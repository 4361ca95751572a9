//! `load`: pre-encoded OTLP trace requests sent to a collector on a few connections, one
//! request in flight on each, as fast as accepted or at a set rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use prost::Message;
use wayfinder_bench::workload::{Shape, Workload};
use wayfinder_collector::testing::{RawCodec, TRACE_EXPORT_PATH};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// OTLP protocol.
    #[arg(long, value_enum, default_value = "grpc")]
    pub(crate) protocol: Protocol,
    /// Collector address (host:port of its OTLP/gRPC or OTLP/HTTP listener).
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub(crate) endpoint: String,
    /// Concurrent connections, one request in flight on each.
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Spans per second to aim at across all connections; 0 sends as fast as accepted.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Spans per request (whole traces, so slightly more).
    #[arg(long, default_value_t = 500)]
    pub(crate) spans_per_request: usize,
    /// Instances per service in the call graph.
    #[arg(long, default_value_t = 3)]
    pub(crate) instances: usize,
    /// Distinct pre-encoded requests to cycle through.
    #[arg(long, default_value_t = 64)]
    pub(crate) distinct_requests: usize,
    /// Copies of the call graph with their own service names: 5 distinct edges each.
    #[arg(long, default_value_t = 1)]
    pub(crate) graphs: usize,
    /// URLs (`http://host:port/path`) that a reader fetches in a loop, one after the other on
    /// one keep-alive connection, while the load runs (e.g. the collector's `/api/v1/topology`
    /// and `/metrics`): to see what readers do to ingest. It asks for gzip, as Prometheus,
    /// browsers and Grafana do, and decompresses what it gets.
    #[arg(long = "read-url")]
    pub(crate) read_urls: Vec<String>,
    /// The collector's process id: its resident memory is read before and after the run.
    #[arg(long)]
    pub(crate) collector_pid: Option<u32>,
    /// Stamp the spans from now on, as live traffic is (a collector with `--data-dir` deletes
    /// sealed spans older than its retention), instead of from a fixed date in 2025.
    #[arg(long)]
    pub(crate) live_timestamps: bool,
}

#[derive(Default)]
struct Totals {
    requests_ok: AtomicU64,
    spans_ok: AtomicU64,
    refused_retryable: AtomicU64,
    failed: AtomicU64,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub(crate) struct LoadReport {
    /// Spans accepted.
    pub(crate) spans: u64,
    /// Spans accepted per second.
    pub(crate) spans_per_sec: f64,
    /// Requests refused retryably.
    pub(crate) refused: u64,
    /// Requests that failed otherwise.
    pub(crate) failed: u64,
    /// Request latency p99, in milliseconds.
    pub(crate) p99_ms: f64,
}

/// `load`: one run, printed.
pub(crate) async fn load(args: LoadArgs) -> anyhow::Result<()> {
    run(&args, true).await.map(|_| ())
}

/// Sends the workload of `args` for its duration; prints what it measured when `print`.
pub(crate) async fn run(args: &LoadArgs, print: bool) -> anyhow::Result<LoadReport> {
    let shape = Shape {
        instances: args.instances,
        spans_per_request: args.spans_per_request,
        graphs: args.graphs,
        ..Shape::default()
    };
    let mut workload = Workload::new(shape, 42);
    if args.live_timestamps {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        workload = workload.starting_at(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX));
    }
    let mut bodies = Vec::with_capacity(args.distinct_requests);
    for _ in 0..args.distinct_requests.max(1) {
        let request = workload.request();
        let spans: usize = wayfinder_decode::span_count(&request);
        let body = match args.protocol {
            Protocol::Grpc | Protocol::HttpProtobuf => Bytes::from(request.encode_to_vec()),
            Protocol::HttpJson => Bytes::from(serde_json::to_vec(&request)?),
        };
        bodies.push((body, spans as u64));
    }
    let bodies = Arc::new(bodies);
    let mean_spans = bodies.iter().map(|b| b.1).sum::<u64>() as f64 / bodies.len() as f64;
    let wire_bytes = bodies.iter().map(|b| b.0.len()).sum::<usize>() / bodies.len();
    if print {
        println!(
            "sending {:?} to {} on {} connection(s) for {:?}: {:.0} spans and {} bytes a request",
            args.protocol, args.endpoint, args.connections, args.duration, mean_spans, wire_bytes
        );
    }
    let rss_before = args.collector_pid.map(resident_bytes).transpose()?;

    let totals = Arc::new(Totals::default());
    let deadline = Instant::now() + args.duration;
    let per_connection_interval = (args.rate > 0).then(|| {
        let requests_per_sec = args.rate as f64 / mean_spans / args.connections as f64;
        Duration::from_secs_f64(1.0 / requests_per_sec)
    });
    let started = Instant::now();
    let reader = (!args.read_urls.is_empty())
        .then(|| tokio::spawn(read_loop(args.read_urls.clone(), deadline)));
    let mut tasks = Vec::new();
    for connection in 0..args.connections {
        let sender = Sender::connect(args.protocol, &args.endpoint).await?;
        let (bodies, totals) = (bodies.clone(), totals.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3).expect("a histogram");
            let mut tick = per_connection_interval.map(tokio::time::interval);
            let mut i = connection;
            while Instant::now() < deadline {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                let (body, spans) = &bodies[i % bodies.len()];
                i += 1;
                let sent = Instant::now();
                let outcome = sender.send(body.clone()).await;
                let _ = latencies.record(sent.elapsed().as_micros() as u64);
                match outcome {
                    Outcome::Accepted => {
                        totals.requests_ok.fetch_add(1, Ordering::Relaxed);
                        totals.spans_ok.fetch_add(*spans, Ordering::Relaxed);
                    }
                    Outcome::Retryable => {
                        totals.refused_retryable.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Outcome::Failed(message) => {
                        if totals.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failure: {message}");
                        }
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    for task in tasks {
        latencies.add(task.await?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reads = match reader {
        Some(reader) => Some(reader.await??),
        None => None,
    };
    let spans = totals.spans_ok.load(Ordering::Relaxed);
    let report = LoadReport {
        spans,
        spans_per_sec: spans as f64 / elapsed,
        refused: totals.refused_retryable.load(Ordering::Relaxed),
        failed: totals.failed.load(Ordering::Relaxed),
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    };
    if !print {
        return Ok(report);
    }
    println!(
        "accepted: {} requests, {} spans, {:.0} spans/s",
        totals.requests_ok.load(Ordering::Relaxed),
        spans,
        report.spans_per_sec
    );
    println!(
        "refused: {} retryable (UNAVAILABLE / 503), {} failed",
        report.refused, report.failed
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        report.p99_ms,
        latencies.max() as f64 / 1000.0
    );
    if let Some((reads, bytes, slowest)) = reads {
        println!(
            "reader: {reads} reads of {} ({:.1} a second, {:.1} MB each on average, slowest {:.1} ms)",
            args.read_urls.join(" and "),
            reads as f64 / elapsed,
            bytes as f64 / reads.max(1) as f64 / 1e6,
            slowest.as_secs_f64() * 1e3
        );
    }
    if let (Some(pid), Some(before)) = (args.collector_pid, rss_before) {
        let after = resident_bytes(pid)?;
        println!(
            "collector resident memory: {} MiB before, {} MiB after, {:.0} bytes per accepted span",
            before >> 20,
            after >> 20,
            after.saturating_sub(before) as f64 / spans.max(1) as f64
        );
    }
    Ok(report)
}

enum Outcome {
    Accepted,
    Retryable,
    Failed(String),
}

#[allow(
    clippy::large_enum_variant,
    reason = "one Sender per connection, made once"
)]
enum Sender {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http {
        client: hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            Full<Bytes>,
        >,
        uri: http::Uri,
        content_type: &'static str,
    },
}

impl Sender {
    async fn connect(protocol: Protocol, endpoint: &str) -> anyhow::Result<Self> {
        Ok(match protocol {
            Protocol::Grpc => {
                let channel =
                    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
                        .connect()
                        .await
                        .with_context(|| format!("cannot connect to {endpoint}"))?;
                Sender::Grpc(tonic::client::Grpc::new(channel))
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .pool_max_idle_per_host(1)
                .build_http();
                let content_type = if matches!(protocol, Protocol::HttpJson) {
                    "application/json"
                } else {
                    "application/x-protobuf"
                };
                Sender::Http {
                    client,
                    uri: format!("http://{endpoint}/v1/traces").parse()?,
                    content_type,
                }
            }
        })
    }

    async fn send(&self, body: Bytes) -> Outcome {
        match self {
            Sender::Grpc(grpc) => {
                let mut grpc = grpc.clone();
                if let Err(e) = grpc.ready().await {
                    return Outcome::Failed(e.to_string());
                }
                let path = http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH);
                match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
                    Ok(_) => Outcome::Accepted,
                    Err(status) if status.code() == tonic::Code::Unavailable => Outcome::Retryable,
                    Err(status) => Outcome::Failed(status.to_string()),
                }
            }
            Sender::Http {
                client,
                uri,
                content_type,
            } => {
                let request = http::Request::post(uri.clone())
                    .header("content-type", *content_type)
                    .body(Full::new(body));
                let request = match request {
                    Ok(r) => r,
                    Err(e) => return Outcome::Failed(e.to_string()),
                };
                match client.request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        if status.is_success() {
                            Outcome::Accepted
                        } else if status.as_u16() == 503 || status.as_u16() == 429 {
                            Outcome::Retryable
                        } else {
                            Outcome::Failed(format!("HTTP {status}"))
                        }
                    }
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
        }
    }
}

/// Resident memory of a process, from `/proc/PID/status`.
pub(crate) fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

/// Fetches `urls` in turn on one keep-alive HTTP/1 connection until `deadline`; returns how
/// many reads, how many bytes, and the slowest read.
async fn read_loop(urls: Vec<String>, deadline: Instant) -> anyhow::Result<(u64, u64, Duration)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let urls = urls
        .iter()
        .map(|url| url.parse::<http::Uri>())
        .collect::<Result<Vec<_>, _>>()?;
    let (mut reads, mut bytes, mut slowest) = (0u64, 0u64, Duration::ZERO);
    for uri in urls.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        let sent = Instant::now();
        // As Prometheus, browsers and Grafana ask: gzip, decompressed here as they would.
        let request = http::Request::get(uri.clone())
            .header(http::header::ACCEPT_ENCODING, "gzip")
            .body(Full::new(Bytes::new()))?;
        let answer = client.request(request).await?;
        if !answer.status().is_success() {
            anyhow::bail!("{uri} answered {}", answer.status());
        }
        let gzip = answer
            .headers()
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v == "gzip");
        let body = answer.into_body().collect().await?.to_bytes();
        bytes += if gzip {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(body.as_ref()),
                &mut plain,
            )?;
            plain.len() as u64
        } else {
            body.len() as u64
        };
        slowest = slowest.max(sent.elapsed());
        reads += 1;
    }
    Ok((reads, bytes, slowest))
}
