//! `wayfinder-bench fleet`: the balancers side by side on a real fleet on loopback.
//!
//! Ten instances of a real HTTP service (lognormal service times, a concurrency limit per
//! instance so that queues form), open-loop Poisson load from four clients at a share of the
//! fleet's capacity, every CLIENT span flowing to a real collector in this process. Each
//! scenario runs once per policy ([`Policy`]) on fresh instances, and reports the clients'
//! p50/p99/p999, error rate, retries, and each instance's share of the traffic.

pub mod instance;
pub mod policy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp};
use tokio::time::Instant;

pub use instance::{Fault, Instance, ServiceTime};
pub use policy::{FleetClient, Policy};

/// What goes wrong in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// (a) One instance 5× slower.
    Slow,
    /// (b) One instance failing fast on 20% of its requests.
    Failing,
    /// (c) One instance pausing 500 ms every 5 s.
    Pause,
    /// (d) An eleventh instance joins a third of the way in.
    Join,
    /// (e) One instance 5× slower and the collector unreachable.
    CollectorDown,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 5] = [
        Scenario::Slow,
        Scenario::Failing,
        Scenario::Pause,
        Scenario::Join,
        Scenario::CollectorDown,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Slow => "(a) one instance 5x slower",
            Scenario::Failing => "(b) one instance failing fast on 20%",
            Scenario::Pause => "(c) one instance pausing 500 ms every 5 s",
            Scenario::Join => "(d) an instance joins at 1/3",
            Scenario::CollectorDown => "(e) 5x slower, collector down",
        }
    }

    /// Its short key for `--scenarios`.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::Slow => "slow",
            Scenario::Failing => "failing",
            Scenario::Pause => "pause",
            Scenario::Join => "join",
            Scenario::CollectorDown => "collector-down",
        }
    }

    fn fault(self, index: usize) -> Fault {
        let faulty = index == 0;
        match self {
            Scenario::Slow | Scenario::CollectorDown if faulty => Fault {
                slowdown: 5.0,
                ..Fault::none()
            },
            Scenario::Failing if faulty => Fault {
                fail_rate: 0.2,
                ..Fault::none()
            },
            Scenario::Pause if faulty => Fault {
                pause: Some((Duration::from_millis(500), Duration::from_secs(5))),
                ..Fault::none()
            },
            _ => Fault::none(),
        }
    }

    /// Whether instance 0 is the odd one (its share is not a healthy one).
    fn has_faulty(self) -> bool {
        self != Scenario::Join
    }
}

/// How the fleet benchmark runs.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Instances at the start.
    pub instances: usize,
    /// Their service time.
    pub service_time: ServiceTime,
    /// Clients, each with its own balancer.
    pub clients: usize,
    /// The offered load as a share of the fleet's capacity.
    pub load: f64,
    /// How long each run lasts.
    pub duration: Duration,
    /// Latencies and shares before this are not counted (convergence).
    pub warmup: Duration,
    /// The scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// The policies to compare.
    pub policies: Vec<Policy>,
    /// Wayfinder's cost tolerance, when not its default.
    pub cost_tolerance: Option<f64>,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The scenario.
    pub scenario: Scenario,
    /// The policy.
    pub policy: Policy,
    /// Calls measured (after the warm-up).
    pub calls: u64,
    /// Latency quantiles in ms: p50, p99, p999.
    pub latency_ms: [f64; 3],
    /// Calls that failed (not 200, transport error or 10 s timeout), as a share.
    pub error_rate: f64,
    /// Attempts beyond the calls, over the whole run.
    pub retries: u64,
    /// Each instance's share of the requests it received after the warm-up.
    pub shares: Vec<f64>,
    /// The largest deviation of a healthy instance's share from their mean, relative.
    pub healthy_spread: f64,
}

struct Recorder {
    histogram: Histogram<u64>,
    /// Calls sent over the whole run.
    sent: u64,
    /// Calls measured (sent after the warm-up).
    calls: u64,
    errors: u64,
}

/// Runs every scenario × policy of `config` against `collector` (its OTLP receives the spans,
/// its registry the instances); one report per run.
pub async fn run(
    config: &FleetConfig,
    collector: &wayfinder_collector::RunningCollector,
) -> anyhow::Result<Vec<RunReport>> {
    let mut reports = Vec::new();
    for (s, &scenario) in config.scenarios.iter().enumerate() {
        for (p, &policy) in config.policies.iter().enumerate() {
            let service = format!("fleet-{}-{}", scenario.key(), p);
            let report = run_one(
                config,
                collector,
                scenario,
                policy,
                &service,
                (s * 10 + p) as u64,
            )
            .await?;
            eprintln!(
                "{} / {}: p99 {:.1} ms, errors {:.2}%, retries {}, shares {:?}",
                scenario.name(),
                policy.name(),
                report.latency_ms[1],
                report.error_rate * 100.0,
                report.retries,
                report
                    .shares
                    .iter()
                    .map(|s| format!("{:.1}%", s * 100.0))
                    .collect::<Vec<_>>()
            );
            reports.push(report);
        }
    }
    Ok(reports)
}

fn register(
    collector: &wayfinder_collector::RunningCollector,
    service: &str,
    id: usize,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    crate::fleet::register(
        collector,
        service,
        format!("{service}-{id}"),
        Some(addr.to_string()),
    )
    .map_err(anyhow::Error::msg)
}

async fn run_one(
    config: &FleetConfig,
    collector: &wayfinder_collector::RunningCollector,
    scenario: Scenario,
    policy: Policy,
    service: &str,
    seed: u64,
) -> anyhow::Result<RunReport> {
    let mut instances = Vec::new();
    for i in 0..config.instances {
        let instance = Instance::start(
            config.service_time,
            scenario.fault(i),
            seed * 100 + i as u64,
        )
        .await?;
        register(collector, service, i, instance.addr)?;
        instances.push(instance);
    }
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let watch = if scenario == Scenario::CollectorDown {
        // Nothing listens there: the balancer never gets weights.
        let unused = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        format!("http://{unused}")
    } else {
        format!("http://{}", collector.addrs().query_grpc)
    };
    let clients: Vec<FleetClient> = (0..config.clients)
        .map(|_| policy::client(policy, service, &addrs, &watch, config.cost_tolerance))
        .collect::<anyhow::Result<_>>()?;

    let rate = config.load * config.service_time.capacity() * config.instances as f64;
    let per_client = rate / config.clients as f64;
    let start = Instant::now();
    let measured_from = start + config.warmup;
    let end = start + config.duration;
    let recorder = Arc::new(Mutex::new(Recorder {
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        sent: 0,
        calls: 0,
        errors: 0,
    }));
    let mut drivers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let client = client.clone();
        let recorder = recorder.clone();
        drivers.push(tokio::spawn(drive(
            client,
            per_client,
            end,
            measured_from,
            recorder,
            seed * 1000 + c as u64,
        )));
    }
    // Shares are counted from the warm-up on; (d) starts its new instance a third in.
    tokio::time::sleep_until(measured_from.min(start + config.duration / 3)).await;
    let mut joined = None;
    if scenario == Scenario::Join {
        tokio::time::sleep_until(start + config.duration / 3).await;
        let instance = Instance::start(config.service_time, Fault::none(), seed * 100 + 99).await?;
        register(collector, service, config.instances, instance.addr)?;
        for client in &clients {
            client.join(instance.addr);
        }
        joined = Some(instance);
    }
    tokio::time::sleep_until(measured_from.max(Instant::now())).await;
    let before: Vec<u64> = instances.iter().map(Instance::received).collect();
    let joined_before = joined.as_ref().map_or(0, Instance::received);
    for driver in drivers {
        driver.await??;
    }
    let mut received: Vec<u64> = instances
        .iter()
        .zip(&before)
        .map(|(i, b)| i.received() - b)
        .collect();
    if let Some(instance) = &joined {
        received.push(instance.received() - joined_before);
    }
    let total: u64 = received.iter().sum::<u64>().max(1);
    let shares: Vec<f64> = received.iter().map(|r| *r as f64 / total as f64).collect();
    // The healthy instances of the start: the faulty one and a newcomer (still ramping up) are
    // reported apart.
    let healthy: &[f64] = if scenario.has_faulty() {
        &shares[1..config.instances]
    } else {
        &shares[..config.instances]
    };
    let mean = healthy.iter().sum::<f64>() / healthy.len().max(1) as f64;
    let healthy_spread = healthy
        .iter()
        .map(|s| (s - mean).abs() / mean)
        .fold(0.0, f64::max);
    let recorder = recorder.lock();
    let quantile = |q: f64| recorder.histogram.value_at_quantile(q) as f64 / 1000.0;
    let attempts: u64 = clients.iter().map(FleetClient::attempts).sum();
    Ok(RunReport {
        scenario,
        policy,
        calls: recorder.calls,
        latency_ms: [quantile(0.5), quantile(0.99), quantile(0.999)],
        error_rate: recorder.errors as f64 / recorder.calls.max(1) as f64,
        retries: attempts.saturating_sub(recorder.sent),
        shares,
        healthy_spread,
    })
}

/// How long a call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Open-loop Poisson arrivals at `rate` per second until `end`: each call starts at its
/// scheduled time whatever the earlier ones do, and its latency counts from that time (no
/// coordinated omission).
async fn drive(
    client: FleetClient,
    rate: f64,
    end: Instant,
    measured_from: Instant,
    recorder: Arc<Mutex<Recorder>>,
    seed: u64,
) -> anyhow::Result<()> {
    let gaps = Exp::new(rate)?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut next = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    loop {
        next += Duration::from_secs_f64(gaps.sample(&mut rng));
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next).await;
        let scheduled = next;
        let call = client.call();
        let recorder = recorder.clone();
        calls.spawn(async move {
            let result = tokio::time::timeout(CALL_TIMEOUT, call).await;
            let latency = scheduled.elapsed();
            let ok = matches!(result, Ok(Ok(status)) if status == http::StatusCode::OK);
            let mut recorder = recorder.lock();
            recorder.sent += 1;
            if scheduled >= measured_from {
                recorder.calls += 1;
                if !ok {
                    recorder.errors += 1;
                }
                let micros = latency.as_micros().clamp(1, 60_000_000) as u64;
                let _ = recorder.histogram.record(micros);
            }
        });
        // Reap what finished, so the set stays small.
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
    Ok(())
}

/// The report as a Markdown table.
pub fn table(reports: &[RunReport]) -> String {
    let mut out = String::from(
        "| scenario | policy | p50 ms | p99 ms | p999 ms | errors | retries | faulty share | healthy spread |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let faulty = if r.scenario == Scenario::Join {
            format!(
                "new: {:.1}%",
                r.shares.last().copied().unwrap_or(0.0) * 100.0
            )
        } else {
            format!("{:.1}%", r.shares[0] * 100.0)
        };
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2}% | {} | {} | ±{:.1}% |\n",
            r.scenario.name(),
            r.policy.name(),
            r.latency_ms[0],
            r.latency_ms[1],
            r.latency_ms[2],
            r.error_rate * 100.0,
            r.retries,
            faulty,
            r.healthy_spread * 100.0,
        ));
    }
    out
}
