//! `compare-rotel`: Wayfinder with its whole pipeline (store, registry, weights, topology) and
//! rotel with its blackhole exporter, each as its own process on loopback, fed in turn the same
//! pre-encoded OTLP/gRPC load by this process. Rounds alternate which goes first, so that a
//! noisy machine hurts both alike; the ratio is taken per round, then its median, because only
//! a ratio measured in one run means anything on a shared machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::load::{self, LoadArgs, Protocol, resident_bytes};

#[derive(Debug, clap::Args)]
pub(crate) struct CompareArgs {
    /// The `wayfinder` binary (default: the one next to this program).
    #[arg(long)]
    wayfinder: Option<PathBuf>,
    /// rotel's `rotel-agent` (default: on `PATH`, or `$ROTEL_AGENT`); without it only
    /// Wayfinder runs, and the command says so.
    #[arg(long)]
    rotel: Option<PathBuf>,
    /// Rounds; each runs both.
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
    /// Instances per service in the call graph.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Copies of the call graph with their own service names: 5 distinct edges each.
    #[arg(long, default_value_t = 1)]
    graphs: usize,
    /// Run Wayfinder with its write-ahead log in this mode (`always` or `interval`), each run
    /// in a fresh data directory under `--data-parent`.
    #[arg(long)]
    wal_sync: Option<String>,
    /// Where the runs' data directories go (a real disk: tmpfs syncs cost nothing).
    #[arg(long, default_value = "target/bench-data")]
    data_parent: PathBuf,
}

/// One collector under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Wayfinder,
    Rotel,
}

/// What one run of one peer measured.
#[derive(Debug, Clone)]
struct Run {
    spans_per_sec: f64,
    collector_us_per_span: f64,
    collector_cores: f64,
    generator_us_per_span: f64,
    p99_ms: f64,
    refused: u64,
    rss_mib: u64,
}

/// Linux's `USER_HZ`: the unit of `/proc/*/stat` CPU times.
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds of a process so far, from `/proc/PID/stat`.
pub(crate) fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after = &stat[stat.rfind(')').context("a stat line")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / TICKS_PER_SEC)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A collector process, killed when dropped.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start(
    peer: Peer,
    program: &Path,
    grpc: u16,
    wal: Option<(&str, &Path)>,
) -> anyhow::Result<Running> {
    let mut command = Command::new(program);
    match peer {
        Peer::Wayfinder => {
            if let Some((mode, dir)) = wal {
                command
                    .arg("serve")
                    .arg("--data-dir")
                    .arg(dir)
                    .args(["--wal-sync", mode]);
            } else {
                command.arg("serve");
            }
            command.args([
                "--otlp-grpc",
                &format!("127.0.0.1:{grpc}"),
                "--otlp-http",
                &format!("127.0.0.1:{}", free_port()?),
                "--query-http",
                &format!("127.0.0.1:{}", free_port()?),
                "--query-grpc",
                &format!("127.0.0.1:{}", free_port()?),
            ]);
        }
        Peer::Rotel => {
            command.args([
                "start",
                "--exporter",
                "blackhole",
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{grpc}"),
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{}", free_port()?),
            ]);
        }
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let running = Running(child);
    wait_listening(grpc, &format!("{peer:?}")).await?;
    Ok(running)
}

/// Waits (up to 15 s) until something accepts on loopback `port`; `what` names it in the
/// error.
pub(crate) async fn wait_listening(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on 127.0.0.1:{port} within 15 s")
}

async fn run_one(peer: Peer, program: &Path, args: &CompareArgs) -> anyhow::Result<Run> {
    let grpc = free_port()?;
    // A fresh data directory a run, removed after it: a log left by the last run would be
    // replayed at start.
    let data_dir = args.data_parent.join(format!("run-{grpc}"));
    let wal = args
        .wal_sync
        .as_deref()
        .map(|mode| (mode, data_dir.as_path()));
    let running = start(peer, program, grpc, wal).await?;
    let pid = running.0.id();
    let load_args = LoadArgs {
        protocol: Protocol::Grpc,
        endpoint: format!("127.0.0.1:{grpc}"),
        connections: args.connections,
        duration: args.duration,
        rate: 0,
        spans_per_request: args.spans_per_request,
        instances: args.instances,
        distinct_requests: 64,
        graphs: args.graphs,
        read_urls: Vec::new(),
        collector_pid: Some(pid),
        live_timestamps: args.wal_sync.is_some(),
    };
    let (collector_before, generator_before) =
        (cpu_seconds(&pid.to_string())?, cpu_seconds("self")?);
    let started = Instant::now();
    let report = load::run(&load_args, false).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let collector_cpu = cpu_seconds(&pid.to_string())? - collector_before;
    let generator_cpu = cpu_seconds("self")? - generator_before;
    let rss = resident_bytes(pid)?;
    drop(running);
    if wal.is_some() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let spans = report.spans.max(1) as f64;
    Ok(Run {
        spans_per_sec: report.spans_per_sec,
        collector_us_per_span: collector_cpu * 1e6 / spans,
        collector_cores: collector_cpu / elapsed,
        generator_us_per_span: generator_cpu * 1e6 / spans,
        p99_ms: report.p99_ms,
        refused: report.refused,
        rss_mib: rss >> 20,
    })
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The `wayfinder` binary: `given`, else the one next to this program; an error naming how to
/// build it when it is not there.
pub(crate) fn wayfinder_binary(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let wayfinder = match given {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program's folder")?
            .join("wayfinder"),
    };
    if !wayfinder.is_file() {
        bail!(
            "no wayfinder binary at {} (build it with `cargo build --release --bin wayfinder`, or pass --wayfinder)",
            wayfinder.display()
        );
    }
    Ok(wayfinder)
}

pub(crate) async fn compare_rotel(args: CompareArgs) -> anyhow::Result<()> {
    let wayfinder = wayfinder_binary(args.wayfinder.as_ref())?;
    let rotel = args
        .rotel
        .clone()
        .or_else(|| std::env::var_os("ROTEL_AGENT").map(PathBuf::from))
        .or_else(|| on_path("rotel-agent"));
    if rotel.is_none() {
        println!(
            "rotel-agent not found (pip install rotel, then pass --rotel or set ROTEL_AGENT): Wayfinder alone, no ratio"
        );
    }
    println!(
        "{} rounds of {:?}, OTLP/gRPC, {} connections, {} spans a request, {} instances a service",
        args.rounds, args.duration, args.connections, args.spans_per_request, args.instances
    );
    if let Some(mode) = &args.wal_sync {
        println!(
            "Wayfinder with --data-dir under {} and --wal-sync {mode}",
            args.data_parent.display()
        );
    }
    println!(
        "{:<6} {:<10} {:>12} {:>12} {:>7} {:>13} {:>8} {:>8} {:>8}",
        "round",
        "peer",
        "spans/s",
        "µs CPU/span",
        "cores",
        "gen µs/span",
        "p99 ms",
        "refused",
        "RSS MiB"
    );
    let mut ratios = Vec::new();
    let mut results: Vec<(Peer, Run)> = Vec::new();
    for round in 0..args.rounds {
        let mut peers = vec![(Peer::Wayfinder, wayfinder.clone())];
        if let Some(rotel) = &rotel {
            peers.push((Peer::Rotel, rotel.clone()));
        }
        if round % 2 == 1 {
            peers.reverse();
        }
        let mut this_round = Vec::new();
        for (peer, program) in peers {
            let run = run_one(peer, &program, &args).await?;
            println!(
                "{:<6} {:<10} {:>12.0} {:>12.2} {:>7.2} {:>13.2} {:>8.2} {:>8} {:>8}",
                round + 1,
                format!("{peer:?}").to_lowercase(),
                run.spans_per_sec,
                run.collector_us_per_span,
                run.collector_cores,
                run.generator_us_per_span,
                run.p99_ms,
                run.refused,
                run.rss_mib
            );
            this_round.push((peer, run));
        }
        let rate = |p: Peer| {
            this_round
                .iter()
                .find(|(peer, _)| *peer == p)
                .map(|(_, r)| r.spans_per_sec)
        };
        if let (Some(w), Some(r)) = (rate(Peer::Wayfinder), rate(Peer::Rotel)) {
            ratios.push(w / r);
        }
        results.extend(this_round);
    }
    for peer in [Peer::Wayfinder, Peer::Rotel] {
        let runs: Vec<&Run> = results
            .iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, r)| r)
            .collect();
        if runs.is_empty() {
            continue;
        }
        println!(
            "median {:<10} {:.0} spans/s, {:.2} µs CPU a span, {:.2} cores",
            format!("{peer:?}").to_lowercase(),
            median(runs.iter().map(|r| r.spans_per_sec).collect()),
            median(runs.iter().map(|r| r.collector_us_per_span).collect()),
            median(runs.iter().map(|r| r.collector_cores).collect())
        );
    }
    if !ratios.is_empty() {
        let ratios_text: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let ratio = median(ratios);
        println!(
            "ratio wayfinder / rotel: {} per round, median {ratio:.2} (target at least 1.50: {})",
            ratios_text.join(", "),
            if ratio >= 1.5 { "met" } else { "not met" }
        );
    }
    Ok(())
}
