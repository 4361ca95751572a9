//! `wayfinder-bench`: a load generator for the collector (after the OpenTelemetry Collector's
//! `telemetrygen`), and a measurement of the span store's memory per span.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use prost::Message;
use wayfinder_bench::workload::{Shape, Workload};
use wayfinder_collector::receivers::grpc::{RawCodec, TRACE_EXPORT_PATH};

#[derive(Debug, Parser)]
#[command(
    name = "wayfinder-bench",
    about = "Load generator and benchmarks for the Wayfinder collector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send OTLP trace requests to a collector and report what it accepted.
    Load(LoadArgs),
    /// Decode and store spans in this process and report memory per stored span.
    Memory(MemoryArgs),
    /// Weights: memory per tracked instance, and the delay from a latency change in the span
    /// stream to a gRPC watcher seeing a new version.
    Weights(WeightsArgs),
    /// Balancers side by side on a real fleet on loopback: round robin, tower's p2c over
    /// PeakEwma, and Wayfinder's, under five fault scenarios.
    Fleet(FleetArgs),
}

#[derive(Debug, clap::Args)]
struct FleetArgs {
    /// Instances at the start of each run.
    #[arg(long, default_value_t = 10)]
    instances: usize,
    /// Median service time.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    median: Duration,
    /// σ of the lognormal service time.
    #[arg(long, default_value_t = 0.5)]
    sigma: f64,
    /// Requests an instance serves at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Clients, each with its own balancer.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Offered load as a share of the fleet's capacity.
    #[arg(long, default_value_t = 0.7)]
    load: f64,
    /// Length of each run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Start of the measurement in each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Scenarios: slow, failing, pause, join, collector-down (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct WeightsArgs {
    /// Services for the memory figure.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Instances per service for the memory figure.
    #[arg(long, default_value_t = 20)]
    instances: usize,
    /// Latency changes to time.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// The collector's `--weight-update-period`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    period: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// OTLP protocol.
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    /// Collector address (host:port of its OTLP/gRPC or OTLP/HTTP listener).
    #[arg(long, default_value = "127.0.0.1:4317")]
    endpoint: String,
    /// Concurrent connections, one request in flight on each.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Spans per second to aim at across all connections; 0 sends as fast as accepted.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Spans per request (whole traces, so slightly more).
    #[arg(long, default_value_t = 500)]
    spans_per_request: usize,
    /// Instances per service in the call graph.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Distinct pre-encoded requests to cycle through.
    #[arg(long, default_value_t = 64)]
    distinct_requests: usize,
    /// The collector's process id: its resident memory is read before and after the run.
    #[arg(long)]
    collector_pid: Option<u32>,
}

#[derive(Debug, clap::Args)]
struct MemoryArgs {
    /// Spans to store.
    #[arg(long, default_value_t = 1_000_000)]
    spans: usize,
    /// Spans per request.
    #[arg(long, default_value_t = 500)]
    spans_per_request: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Load(args) => runtime.block_on(load(args)),
        Command::Memory(args) => memory(args),
        Command::Weights(args) => {
            weights_memory(&args)?;
            runtime.block_on(weights_delay(args))
        }
        Command::Fleet(args) => runtime.block_on(fleet(args)),
    }
}

/// Totals of a run, shared by the connections.
#[derive(Default)]
struct Totals {
    requests_ok: AtomicU64,
    spans_ok: AtomicU64,
    refused_retryable: AtomicU64,
    failed: AtomicU64,
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let shape = Shape {
        instances: args.instances,
        spans_per_request: args.spans_per_request,
        ..Shape::default()
    };
    let mut workload = Workload::new(shape, 42);
    let mut bodies = Vec::with_capacity(args.distinct_requests);
    for _ in 0..args.distinct_requests.max(1) {
        let request = workload.request();
        let spans: usize = wayfinder_collector::decode::span_count(&request);
        let body = match args.protocol {
            Protocol::Grpc | Protocol::HttpProtobuf => Bytes::from(request.encode_to_vec()),
            Protocol::HttpJson => Bytes::from(serde_json::to_vec(&request)?),
        };
        bodies.push((body, spans as u64));
    }
    let bodies = Arc::new(bodies);
    let mean_spans = bodies.iter().map(|b| b.1).sum::<u64>() as f64 / bodies.len() as f64;
    let wire_bytes = bodies.iter().map(|b| b.0.len()).sum::<usize>() / bodies.len();
    println!(
        "sending {:?} to {} on {} connection(s) for {:?}: {:.0} spans and {} bytes a request",
        args.protocol, args.endpoint, args.connections, args.duration, mean_spans, wire_bytes
    );
    let rss_before = args.collector_pid.map(resident_bytes).transpose()?;

    let totals = Arc::new(Totals::default());
    let deadline = Instant::now() + args.duration;
    let per_connection_interval = (args.rate > 0).then(|| {
        let requests_per_sec = args.rate as f64 / mean_spans / args.connections as f64;
        Duration::from_secs_f64(1.0 / requests_per_sec)
    });
    let started = Instant::now();
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
    let spans = totals.spans_ok.load(Ordering::Relaxed);
    println!(
        "accepted: {} requests, {} spans, {:.0} spans/s",
        totals.requests_ok.load(Ordering::Relaxed),
        spans,
        spans as f64 / elapsed
    );
    println!(
        "refused: {} retryable (UNAVAILABLE / 503), {} failed",
        totals.refused_retryable.load(Ordering::Relaxed),
        totals.failed.load(Ordering::Relaxed)
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0
    );
    if let (Some(pid), Some(before)) = (args.collector_pid, rss_before) {
        let after = resident_bytes(pid)?;
        println!(
            "collector resident memory: {} MiB before, {} MiB after, {:.0} bytes per accepted span",
            before >> 20,
            after >> 20,
            after.saturating_sub(before) as f64 / spans.max(1) as f64
        );
    }
    Ok(())
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
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
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

fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    use wayfinder_collector::store::{MemoryStore, SpanStore, StoreConfig};
    let metrics = Arc::new(wayfinder_collector::metrics::Metrics::new());
    let store = MemoryStore::new(
        StoreConfig {
            max_bytes: usize::MAX,
            ..StoreConfig::default()
        },
        metrics,
    );
    let mut workload = Workload::new(
        Shape {
            spans_per_request: args.spans_per_request,
            ..Shape::default()
        },
        42,
    );
    let pid = std::process::id();
    let before = resident_bytes(pid)?;
    let started = Instant::now();
    let mut requests = 0u64;
    while store.stats().rows < args.spans {
        let request = workload.request();
        let decoded = wayfinder_collector::decode::decode_traces(&request)?;
        if decoded.rejections.total() > 0 {
            bail!("the workload made invalid spans");
        }
        if let Some(batch) = decoded.batch {
            store.append_at(batch, SystemTime::now());
        }
        requests += 1;
        // The collector runs its upkeep (which compacts sealed segments) every second; at the
        // measured ingest rates that is every few hundred requests. Do it every 128 here.
        if requests.is_multiple_of(128) {
            store.maintain(SystemTime::now());
        }
    }
    // Seal and compact the last open segment, as the collector's upkeep does every second.
    store.maintain(SystemTime::now() + Duration::from_secs(60));
    let elapsed = started.elapsed();
    let after = resident_bytes(pid)?;
    let stats = store.stats();
    println!(
        "stored {} spans in {} batches in {:.1} s ({:.0} spans/s decode+store on one thread)",
        stats.rows,
        stats.batches,
        elapsed.as_secs_f64(),
        stats.rows as f64 / elapsed.as_secs_f64()
    );
    println!(
        "arrow bytes per span: {:.0}",
        stats.bytes as f64 / stats.rows as f64
    );
    let schema = wayfinder_collector::decode::schema::span_schema();
    let snapshot = store.snapshot();
    let mut by_column: Vec<(String, usize)> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                f.name().clone(),
                snapshot
                    .iter()
                    .map(|b| b.column(i).get_array_memory_size())
                    .sum(),
            )
        })
        .collect();
    by_column.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    let per_column: Vec<String> = by_column
        .iter()
        .map(|(name, bytes)| format!("{name} {:.0}", *bytes as f64 / stats.rows as f64))
        .collect();
    println!("bytes per span by column: {}", per_column.join(", "));
    println!(
        "resident bytes per span: {:.0} (RSS {} MiB → {} MiB)",
        after.saturating_sub(before) as f64 / stats.rows as f64,
        before >> 20,
        after >> 20
    );
    Ok(())
}

fn weights_memory(args: &WeightsArgs) -> anyhow::Result<()> {
    use wayfinder_bench::fleet;
    use wayfinder_collector::weights::{WeightsConfig, WeightsEngine};
    let pid = std::process::id();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let instances = fleet::instances(args.services, args.instances);
    let before = resident_bytes(pid)?;
    let engine = WeightsEngine::new(
        WeightsConfig::default(),
        wayfinder_collector::clock::Clock::new(),
    );
    for second in 0..30u64 {
        let now = t0 + Duration::from_secs(second);
        engine.record_at(now, &fleet::second_of_traffic(&instances, second, false));
        engine.update_with(now, &instances);
    }
    let after = resident_bytes(pid)?;
    println!(
        "weights: {} instances tracked with full 30 s windows: resident {} MiB -> {} MiB, {:.0} bytes per instance",
        instances.len(),
        before >> 20,
        after >> 20,
        after.saturating_sub(before) as f64 / instances.len() as f64
    );
    Ok(())
}

/// Times, over `trials` latency changes, how long a `Watch`er waits for a version that reacts.
async fn weights_delay(args: WeightsArgs) -> anyhow::Result<()> {
    use wayfinder_api::grpc::WatchWeightsRequest;
    use wayfinder_api::grpc::weights_client::WeightsClient;

    let mut config = wayfinder_bench::fleet::loopback_config();
    config.weight_update_period = args.period;
    let collector = wayfinder_collector::Collector::start(config).await?;
    let addrs = collector.addrs();
    for i in 0..3 {
        wayfinder_bench::fleet::register(&collector, "cart", format!("cart-{i}"), None)
            .map_err(anyhow::Error::msg)?;
    }

    // Traffic: every 100 ms, 10 SERVER spans of each instance over OTLP/gRPC; cart-2's latency
    // is switched by the trials.
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs.otlp_grpc))?
        .connect()
        .await?;
    let sender = {
        let slow = slow.clone();
        tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            let mut seq = 0u64;
            loop {
                for i in 0..3u64 {
                    let ms = if i == 2 && slow.load(Ordering::Relaxed) {
                        50
                    } else {
                        10
                    };
                    seq += 1;
                    let spans = (0..10u64)
                        .map(|j| {
                            let mut span = wayfinder_collector::testing::span(
                                [((seq % 250) + 1) as u8; 16],
                                seq * 100 + j + 1,
                                "GET /cart",
                                1_000,
                                1_000 + ms * 1_000_000,
                            );
                            span.kind = 2;
                            span
                        })
                        .collect();
                    let request = wayfinder_collector::testing::with_instance_id(
                        wayfinder_collector::testing::trace_request(Some("cart"), spans),
                        &format!("cart-{i}"),
                    );
                    if grpc.ready().await.is_err() {
                        return;
                    }
                    let body = Bytes::from(request.encode_to_vec());
                    let _ = grpc
                        .unary(
                            tonic::Request::new(body),
                            http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH),
                            RawCodec,
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut client = WeightsClient::connect(format!("http://{}", addrs.query_grpc)).await?;
    let mut stream = client
        .watch(WatchWeightsRequest {
            service: "cart".into(),
            after_version: 0,
        })
        .await?
        .into_inner();
    let weight_of_2 = |w: &wayfinder_api::grpc::ServiceWeights| {
        w.endpoints
            .iter()
            .find(|e| e.instance_id == "cart-2")
            .map_or(0.0, |e| e.weight)
    };
    // Past the slow start, with a full window.
    let warm = Duration::from_secs(35);
    println!("warming up for {warm:?} (slow start and a full window)");
    let warm_until = Instant::now() + warm;
    let mut latest = None;
    while Instant::now() < warm_until {
        if let Ok(Ok(Some(message))) =
            tokio::time::timeout(Duration::from_secs(1), stream.message()).await
        {
            latest = Some(message);
        }
    }
    let mut delays = Vec::new();
    for trial in 0..args.trials {
        let before = latest.as_ref().map_or(1.0 / 3.0, weight_of_2);
        slow.store(true, Ordering::Relaxed);
        let changed = Instant::now();
        loop {
            let message = stream.message().await?.context("the stream ended")?;
            let weight = weight_of_2(&message);
            latest = Some(message);
            if weight < before * 0.95 {
                break;
            }
        }
        let delay = changed.elapsed();
        println!(
            "trial {trial}: a watcher saw cart-2's weight fall {:.0} ms after it turned 5x slower",
            delay.as_secs_f64() * 1e3
        );
        delays.push(delay);
        // Back to normal, and wait until the slow spell has left the window.
        slow.store(false, Ordering::Relaxed);
        let recover_until = Instant::now() + Duration::from_secs(40);
        while Instant::now() < recover_until {
            if let Ok(Ok(Some(message))) =
                tokio::time::timeout(Duration::from_secs(1), stream.message()).await
            {
                latest = Some(message);
            }
        }
    }
    delays.sort();
    let periods: Vec<String> = delays
        .iter()
        .map(|d| format!("{:.2}", d.as_secs_f64() / args.period.as_secs_f64()))
        .collect();
    println!(
        "delay from a latency change to a watcher seeing it: median {:.0} ms, max {:.0} ms ({} update periods)",
        delays[delays.len() / 2].as_secs_f64() * 1e3,
        delays.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        periods.join(", ")
    );
    sender.abort();
    collector.shutdown().await;
    Ok(())
}

async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    use wayfinder_bench::balancing::{self, FleetConfig, Policy, Scenario, ServiceTime};

    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|key| {
                Scenario::ALL
                    .into_iter()
                    .find(|s| s.key() == key)
                    .with_context(|| format!("no scenario `{key}`"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let config = wayfinder_bench::fleet::loopback_config();
    let collector = wayfinder_collector::Collector::start(config).await?;
    let _telemetry = wayfinder_middleware::Telemetry::new()
        .service_name("fleet-client")
        .endpoint(format!("http://{}", collector.addrs().otlp_grpc))
        .log_filter("warn")
        .init()?;
    let config = FleetConfig {
        instances: args.instances,
        service_time: ServiceTime {
            median: args.median,
            sigma: args.sigma,
            concurrency: args.concurrency,
        },
        clients: args.clients,
        load: args.load,
        duration: args.duration,
        warmup: args.warmup,
        scenarios,
        policies: vec![Policy::RoundRobin, Policy::P2c, Policy::Wayfinder],
    };
    eprintln!(
        "fleet: {} instances, capacity {:.0} req/s each, offered {:.0} req/s from {} clients, {:?} runs measured after {:?}",
        config.instances,
        config.service_time.capacity(),
        config.load * config.service_time.capacity() * config.instances as f64,
        config.clients,
        config.duration,
        config.warmup,
    );
    let reports = balancing::run(&config, &collector).await?;
    println!("{}", balancing::table(&reports));
    Ok(())
}
