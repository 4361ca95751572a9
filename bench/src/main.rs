//! `wayfinder-bench`: a load generator for the collector (after the OpenTelemetry Collector's
//! `telemetrygen`), and a measurement of the span store's memory per span.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bounds;
mod compare;
mod compare_fleet;
mod decode;
mod delay;
mod export_tls;
mod fleet_failover;
mod load;
mod sealed_sql;
mod snapshot;
mod soak;

use load::{LoadArgs, resident_bytes};
use wayfinder_bench::workload::{Shape, Workload};

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
    /// Wayfinder (the whole pipeline) and rotel (blackhole exporter) side by side: the same
    /// pre-encoded OTLP/gRPC load at each in turn, spans/s and CPU per span, and their ratio.
    CompareRotel(compare::CompareArgs),
    /// The `wayfinder` binary memory-only, with its write-ahead log, and in fleet mode on a
    /// Kafka-protocol broker (tansu), on the same load in one run: spans/s, CPU per span until
    /// every acknowledged span is stored (the broker's apart), and the export p99.
    CompareFleet(compare_fleet::CompareFleetArgs),
    /// Three collectors in fleet mode, one killed with SIGKILL: how long until the others own
    /// every partition again, and until a trace the dead one owned is answered.
    FleetFailover(fleet_failover::FleetFailoverArgs),
    /// The collector (with `--data-dir`) at about twice the rate it sustains for a bounded
    /// time: resident memory against its budgets, readiness and queries answering, every
    /// refusal retryable, every acknowledged span stored.
    Soak(soak::SoakArgs),
    /// The trace decoders side by side in this process: prost then Arrow, against the wire
    /// decoder (protobuf bytes straight into Arrow), in nanoseconds a span.
    Decode(decode::DecodeArgs),
    /// Topology snapshots over a full hour of simulated traffic: what a reader costs the
    /// builder's lock on the first snapshot of a minute and on the ones after it.
    Snapshot(snapshot::SnapshotArgs),
    /// SQL over sealed Parquet files: each query's cold first run (every footer read) and its
    /// warm runs (footers and statistics from the engine's shared caches).
    SealedSql(sealed_sql::SealedSqlArgs),
    /// The bounds against hostile input: the largest statements taken and their time, the
    /// time from a query's limit to its slot coming back, trace answers by attribute count, a
    /// damaged log's recovery.
    Bounds(bounds::BoundsArgs),
    /// The middleware's span exporter over TLS against plaintext, OTLP/HTTP and OTLP/gRPC, to
    /// the `wayfinder` binary: CPU per span of the exporting process.
    ExportTls(export_tls::ExportTlsArgs),
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
    /// Wayfinder's `cost_tolerance` [default: the balancer's, 0.5]; 0 is tower's strict
    /// comparison.
    #[arg(long)]
    cost_tolerance: Option<f64>,
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
    /// Also on a fleet of three collectors on a Kafka-protocol broker (tansu:
    /// `WAYFINDER_TANSU` or `tansu` on PATH), the watcher on a collector the spans do not reach;
    /// and the partials' bytes.
    #[arg(long)]
    fleet: bool,
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

/// The collector binary's allocator, so that `memory` and the in-process benchmarks measure what
/// `wayfinder` does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Load(args) => runtime.block_on(load::load(args)),
        Command::CompareRotel(args) => runtime.block_on(compare::compare_rotel(args)),
        Command::CompareFleet(args) => runtime.block_on(compare_fleet::compare_fleet(args)),
        Command::FleetFailover(args) => runtime.block_on(fleet_failover::fleet_failover(args)),
        Command::Soak(args) => runtime.block_on(soak::soak(args)),
        Command::Memory(args) => memory(args),
        Command::Decode(args) => decode::decode(args),
        Command::Snapshot(args) => snapshot::snapshot(args),
        Command::SealedSql(args) => runtime.block_on(sealed_sql::sealed_sql(args)),
        Command::Bounds(args) => runtime.block_on(bounds::bounds(args)),
        Command::ExportTls(args) => runtime.block_on(export_tls::export_tls(args)),
        Command::Weights(args) => {
            weights_memory(&args)?;
            runtime.block_on(weights_delay(args))
        }
        Command::Fleet(args) => runtime.block_on(fleet(args)),
    }
}

/// Totals of a run, shared by the connections.
fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    use wayfinder_collector::testing::{MemoryStore, SpanStore, StoreConfig};
    let metrics = Arc::new(wayfinder_collector::testing::Metrics::new());
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
    // How resident memory grows with stored spans: a point every tenth of the run.
    let step = (args.spans / 10).max(1);
    let mut next_point = step;
    let mut line = Vec::new();
    while store.stats().rows < args.spans {
        let request = workload.request();
        let decoded = wayfinder_decode::decode_traces(&request)?;
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
        let rows = store.stats().rows;
        if rows >= next_point {
            line.push((
                rows,
                resident_bytes(pid)?.saturating_sub(before),
                store.stats().bytes,
            ));
            next_point += step;
        }
    }
    println!("stored spans → resident growth (arrow bytes), bytes per span:");
    for (rows, resident, arrow) in &line {
        println!(
            "  {rows:>10} → {:>5} MiB ({:>4} MiB)  {:.0} ({:.0})",
            resident >> 20,
            arrow >> 20,
            *resident as f64 / *rows as f64,
            *arrow as f64 / *rows as f64
        );
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
    // The stored layout (ids in binary, resource and scope in the `origin` dictionary).
    let schema = wayfinder_decode::schema::stored_schema();
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
    use wayfinder_collector::testing::{WeightsConfig, WeightsEngine};
    let pid = std::process::id();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let instances = fleet::instances(args.services, args.instances);
    let before = resident_bytes(pid)?;
    let engine = WeightsEngine::new(
        WeightsConfig::default(),
        wayfinder_collector::testing::Clock::new(),
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

/// Times, over `trials` latency changes, how long a `Watch`er waits for a version that reacts:
/// on one collector, and with `--fleet` on a fleet of three (spans into two, the watcher on the
/// third), in the same run.
async fn weights_delay(args: WeightsArgs) -> anyhow::Result<()> {
    let mut config = wayfinder_bench::fleet::loopback_config();
    config.weights.weight_update_period = args.period;
    let collector = wayfinder_collector::Collector::start(config).await?;
    let addrs = collector.addrs();
    for i in 0..3 {
        wayfinder_bench::fleet::register(&collector, "cart", format!("cart-{i}"), None)
            .map_err(anyhow::Error::msg)?;
    }
    let one = delay::latency_change_delays(
        &[addrs.otlp_grpc],
        addrs.query_grpc,
        args.period,
        args.trials,
    )
    .await?;
    collector.shutdown().await;
    if !args.fleet {
        delay::report("one collector", &one, args.period);
    } else {
        let fleet = delay::fleet_delays(args.period, args.trials).await?;
        delay::report("one collector", &one, args.period);
        delay::report(
            "a fleet of three (spans into two, the watcher on the third)",
            &fleet,
            args.period,
        );
    }
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
    // OTLP/gRPC to the gRPC port: the clients' CLIENT spans feed the collector's weights. (Until
    // 2026-12-07 the protocol was left at its default, OTLP/HTTP, against this gRPC port, and
    // every export failed: the weights never had a span.)
    let _telemetry = wayfinder_middleware::Telemetry::new()
        .service_name("fleet-client")
        .protocol(wayfinder_middleware::OtlpProtocol::Grpc)
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
        cost_tolerance: args.cost_tolerance,
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
