//! `compare-fleet`: the same `wayfinder` binary in three modes on the same pre-encoded
//! OTLP/gRPC load, in one run: memory only, with its write-ahead log (`--wal-sync interval`),
//! and in fleet mode on a Kafka-protocol broker on loopback (tansu, in memory; one collector in
//! the group, so it owns every partition and stores what it produced). Each run counts the
//! collector's CPU from the first request until every acknowledged span is stored (in fleet
//! mode they come back through the consumer), so that the three pay for the same work; the
//! broker's CPU is reported apart (tansu's cost says nothing of Kafka's). Rounds rotate the
//! order, so that a noisy machine hurts every mode alike.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::compare::{Running, cpu_seconds, free_port, median, wait_listening, wayfinder_binary};
use crate::load::{self, LoadArgs, Protocol};
use wayfinder_collector::testing::Broker;

#[derive(Debug, clap::Args)]
pub(crate) struct CompareFleetArgs {
    /// The `wayfinder` binary (default: the one next to this program).
    #[arg(long)]
    wayfinder: Option<PathBuf>,
    /// Rounds; each runs every mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// How long each run sends.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Spans per request.
    #[arg(long, default_value_t = 500)]
    spans_per_request: usize,
    /// Partitions of the spans topic in fleet mode.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Where the write-ahead log runs' data directories go (a real disk).
    #[arg(long, default_value = "target/bench-data")]
    data_parent: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Memory,
    Wal,
    Fleet,
}

#[derive(Debug, Clone)]
struct Run {
    spans_per_sec: f64,
    collector_us_per_span: f64,
    broker_us_per_span: Option<f64>,
    p99_ms: f64,
    refused: u64,
    drain: Duration,
}

/// A value of the collector's `/metrics` (summed over its series), 0 when absent.
async fn metric(query: u16, name: &str) -> f64 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", query)).await else {
        return 0.0;
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = "GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0.0;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Spans the collector has stored (those evicted or sealed out of memory since included).
async fn stored(query: u16) -> f64 {
    metric(query, "wayfinder_store_spans").await
        + metric(query, "wayfinder_store_evicted_spans_total").await
        + metric(query, "wayfinder_sealed_spans_total").await
}

async fn run_one(mode: Mode, wayfinder: &Path, args: &CompareFleetArgs) -> anyhow::Result<Run> {
    let (grpc, query) = (free_port()?, free_port()?);
    let mut command = Command::new(wayfinder);
    command.arg("serve").args([
        "--otlp-grpc",
        &format!("127.0.0.1:{grpc}"),
        "--otlp-http",
        &format!("127.0.0.1:{}", free_port()?),
        "--query-http",
        &format!("127.0.0.1:{query}"),
        "--query-grpc",
        &format!("127.0.0.1:{}", free_port()?),
    ]);
    let data_dir = args.data_parent.join(format!("fleet-run-{grpc}"));
    let mut broker = None;
    match mode {
        Mode::Memory => {}
        Mode::Wal => {
            command
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--wal-sync", "interval"]);
        }
        Mode::Fleet => {
            let started = Broker::start()
                .context("no tansu broker: set WAYFINDER_TANSU or put it on PATH")?;
            let port = started.addr.port();
            broker = Some(started);
            command
                .args(["--kafka-brokers", &format!("127.0.0.1:{port}")])
                .args(["--kafka-partitions", &args.partitions.to_string()]);
        }
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", wayfinder.display()))?;
    let collector = Running(child);
    wait_listening(grpc, "wayfinder").await?;
    wait_listening(query, "wayfinder's query API").await?;
    if mode == Mode::Fleet {
        // The group has settled once the one member owns every partition.
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(query, "wayfinder_kafka_owned_partition").await < f64::from(args.partitions) {
            if Instant::now() > deadline {
                bail!("the collector did not own the partitions within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let pid = collector.0.id();
    let broker_pid = broker.as_ref().map(Broker::pid);
    let load_args = LoadArgs {
        protocol: Protocol::Grpc,
        endpoint: format!("127.0.0.1:{grpc}"),
        connections: args.connections,
        duration: args.duration,
        rate: 0,
        spans_per_request: args.spans_per_request,
        instances: 3,
        distinct_requests: 64,
        graphs: 1,
        read_urls: Vec::new(),
        collector_pid: Some(pid),
        live_timestamps: true,
    };
    let collector_before = cpu_seconds(&pid.to_string())?;
    let broker_before = match broker_pid {
        Some(pid) => Some(cpu_seconds(&pid.to_string())?),
        None => None,
    };
    let report = load::run(&load_args, false).await?;
    // Until every acknowledged span is stored (fleet mode: back through the consumer).
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs(120);
    while stored(query).await < report.spans as f64 {
        if Instant::now() > deadline {
            bail!("{mode:?}: not every acknowledged span was stored within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = sent.elapsed();
    let collector_cpu = cpu_seconds(&pid.to_string())? - collector_before;
    let broker_cpu = match (broker_pid, broker_before) {
        (Some(pid), Some(before)) => Some(cpu_seconds(&pid.to_string())? - before),
        _ => None,
    };
    drop(collector);
    drop(broker);
    if mode == Mode::Wal {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let spans = report.spans.max(1) as f64;
    Ok(Run {
        spans_per_sec: report.spans_per_sec,
        collector_us_per_span: collector_cpu * 1e6 / spans,
        broker_us_per_span: broker_cpu.map(|cpu| cpu * 1e6 / spans),
        p99_ms: report.p99_ms,
        refused: report.refused,
        drain,
    })
}

pub(crate) async fn compare_fleet(args: CompareFleetArgs) -> anyhow::Result<()> {
    let wayfinder = wayfinder_binary(args.wayfinder.as_ref())?;
    println!(
        "{} rounds of {:?}, OTLP/gRPC, {} connections, {} spans a request; fleet: {} partitions, tansu in memory",
        args.rounds, args.duration, args.connections, args.spans_per_request, args.partitions
    );
    println!(
        "{:<6} {:<7} {:>10} {:>12} {:>14} {:>8} {:>8} {:>9}",
        "round",
        "mode",
        "spans/s",
        "µs CPU/span",
        "broker µs/span",
        "p99 ms",
        "refused",
        "drain ms"
    );
    let mut modes = vec![Mode::Memory, Mode::Wal, Mode::Fleet];
    let mut results: Vec<(Mode, Run)> = Vec::new();
    for round in 0..args.rounds {
        for &mode in &modes {
            let run = run_one(mode, &wayfinder, &args).await?;
            println!(
                "{:<6} {:<7} {:>10.0} {:>12.2} {:>14} {:>8.2} {:>8} {:>9}",
                round + 1,
                format!("{mode:?}").to_lowercase(),
                run.spans_per_sec,
                run.collector_us_per_span,
                run.broker_us_per_span
                    .map_or_else(|| "-".to_owned(), |us| format!("{us:.2}")),
                run.p99_ms,
                run.refused,
                run.drain.as_millis()
            );
            results.push((mode, run));
        }
        modes.rotate_left(1);
    }
    let mut medians = Vec::new();
    for mode in [Mode::Memory, Mode::Wal, Mode::Fleet] {
        let runs: Vec<&Run> = results
            .iter()
            .filter(|(m, _)| *m == mode)
            .map(|(_, r)| r)
            .collect();
        let us = median(runs.iter().map(|r| r.collector_us_per_span).collect());
        println!(
            "median {:<7} {:.0} spans/s, {:.2} µs CPU a span, p99 {:.2} ms",
            format!("{mode:?}").to_lowercase(),
            median(runs.iter().map(|r| r.spans_per_sec).collect()),
            us,
            median(runs.iter().map(|r| r.p99_ms).collect())
        );
        medians.push(us);
    }
    println!(
        "fleet / memory CPU a span: {:.2}; fleet / wal: {:.2} (goal: at most 1.50 of the single-process figure)",
        medians[2] / medians[0],
        medians[2] / medians[1]
    );
    Ok(())
}
