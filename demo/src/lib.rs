//! `wayfinder-demo`: what Wayfinder does, in one command. It starts a collector in process (on
//! its default ports), a small fleet of real services on loopback instrumented with
//! `wayfinder-middleware` (reporting health, calling each other through the balancer), drives
//! traffic, and every few seconds prints what the collector learnt: the edges, and for
//! `checkout` each instance's weight and the share of traffic it really got, so that the slow
//! instance visibly loses both. On Ctrl-C (or after `--duration`) the fleet leaves gracefully
//! and the registry shows each instance `down`.
//!
//! `wayfinder serve` stays the production entry point; the demo only adds the fleet.

pub mod drive;
pub mod fleet;
pub mod options;
pub mod report;

/// The generated gRPC code of `proto/shop/v1/shop.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("shop.v1");
}

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wayfinder_collector::{Collector, Config};

pub use options::{Effect, Fault, Options};

/// What a run showed, for whoever ran it (the test reads it).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Requests the users sent, answered well, and failed.
    pub sent: u64,
    /// Answered with a success.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// The last table's `checkout` lines.
    pub checkout: Vec<report::InstanceLine>,
    /// The instances whose `down` the registry recorded (its `health_events` table).
    pub departed: Vec<String>,
    /// The instances still registered after the fleet left, with their status.
    pub still_registered: BTreeMap<String, String>,
    /// How many instances the fleet had.
    pub fleet_size: usize,
    /// How many tables were printed.
    pub tables: usize,
}

/// Runs the demo: collector, fleet, traffic and tables until Ctrl-C or `--duration`, then a
/// graceful exit. Tables go to `out`.
pub async fn run(options: Options, out: &mut (dyn Write + Send)) -> anyhow::Result<Summary> {
    let mut config = Config::default();
    if !options.default_ports {
        let any = "127.0.0.1:0".parse().expect("a loopback address");
        config.listeners.otlp_grpc = any;
        config.listeners.otlp_http = any;
        config.listeners.query_http = any;
        config.listeners.query_grpc = any;
    }
    let collector = Collector::start(config)
        .await
        .context("starting the collector (are its ports free? try --default-ports false)")?;
    let addrs = collector.addrs();
    let urls = fleet::CollectorUrls::of(&addrs);
    let api = report::Api::new(urls.query_http.clone())?;
    let fleet = fleet::Fleet::start(&urls)?;

    // Faults: the ones due now at once, the others later.
    let mut faulty = Vec::new();
    for fault in options.slow.iter().chain(&options.fail) {
        if fault.instance == "none" {
            continue;
        }
        let knobs = fleet.knobs(&fault.instance)?;
        faulty.push(fault.instance.clone());
        let (effect, after) = (fault.effect, fault.after);
        if after.is_zero() {
            knobs.apply(effect);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                knobs.apply(effect);
            });
        }
    }

    writeln!(
        out,
        "Wayfinder demo: a collector and {} instances on loopback.\n\
         \x20 web UI     http://{}/  (the service map, the weights, the traces, SQL)\n\
         \x20 query API  http://{}  (try /api/v1/topology, /api/v1/weights/checkout, /metrics)\n\
         \x20 OTLP       grpc {}  http {}\n\
         \x20 traffic    {} requests/s to frontend at http://{}/orders\n\
         \x20 faults     {}\n\
         Ctrl-C to stop.",
        fleet.instances.len(),
        addrs.query_http,
        addrs.query_http,
        addrs.otlp_grpc,
        addrs.otlp_http,
        options.rps,
        fleet.frontend(),
        describe(&options),
    )?;

    let mut summary = Summary {
        fleet_size: fleet.instances.len(),
        ..Summary::default()
    };
    let counts = Arc::new(drive::Counts::default());
    let driver = drive::start(fleet.frontend(), options.rps, Arc::clone(&counts));
    let progress = if options.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    progress.enable_steady_tick(Duration::from_millis(200));

    let started = Instant::now();
    let stop = async {
        match options.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let mut tables =
        tokio::time::interval_at(tokio::time::Instant::now() + options.every, options.every);
    let mut last_served = served(&fleet);
    let mut status = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = status.tick() => {
                progress.set_message(format!(
                    "{:>5.0}s  sent {}  ok {}  failed {}",
                    started.elapsed().as_secs_f64(),
                    counts.sent.load(Ordering::Relaxed),
                    counts.ok.load(Ordering::Relaxed),
                    counts.failed.load(Ordering::Relaxed),
                ));
            }
            _ = tables.tick() => {
                let now = served(&fleet);
                let delta: BTreeMap<String, u64> = now
                    .iter()
                    .map(|(id, n)| (id.clone(), n - last_served.get(id).copied().unwrap_or(0)))
                    .collect();
                last_served = now;
                let text = table(&api, &delta, &faulty, started.elapsed(), &counts, &mut summary).await;
                progress.suspend(|| write!(out, "{text}"))?;
            }
        }
    }
    progress.finish_and_clear();
    driver.abort();

    writeln!(
        out,
        "Stopping: every instance sends `down`, drains, and stops…"
    )?;
    fleet.shutdown().await?;
    // The `down` beats went out before each instance stopped; give the collector a moment to
    // have taken them in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    summary.departed = api.departed().await?;
    for instance in api.instances().await?.instances {
        summary
            .still_registered
            .insert(instance.instance_id, instance.status);
    }
    writeln!(
        out,
        "The registry recorded `down` from {} of {} instances ({}); still registered: {}.",
        summary.departed.len(),
        summary.fleet_size,
        summary.departed.join(", "),
        if summary.still_registered.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", summary.still_registered)
        },
    )?;
    summary.sent = counts.sent.load(Ordering::Relaxed);
    summary.ok = counts.ok.load(Ordering::Relaxed);
    summary.failed = counts.failed.load(Ordering::Relaxed);
    collector.shutdown().await;
    Ok(summary)
}

/// The faults, in words.
fn describe(options: &Options) -> String {
    let faults: Vec<String> = options
        .slow
        .iter()
        .chain(&options.fail)
        .filter(|f| f.instance != "none")
        .map(|f| {
            let what = match f.effect {
                Effect::Slow => format!("{} +{} ms", f.instance, fleet::SLOW_MS),
                Effect::Fail(rate) => format!("{} fails {:.0}%", f.instance, rate * 100.0),
            };
            if f.after.is_zero() {
                what
            } else {
                format!("{what} after {}", humantime::format_duration(f.after))
            }
        })
        .collect();
    if faults.is_empty() {
        "none".to_owned()
    } else {
        faults.join("; ")
    }
}

/// Calls served by each `checkout` instance so far.
fn served(fleet: &fleet::Fleet) -> BTreeMap<String, u64> {
    fleet
        .instances
        .iter()
        .filter(|i| i.service == "checkout")
        .map(|i| {
            (
                i.knobs.instance.clone(),
                i.knobs.served.load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// One table; what the collector cannot answer yet is said, not fatal.
async fn table(
    api: &report::Api,
    served: &BTreeMap<String, u64>,
    faulty: &[String],
    elapsed: Duration,
    counts: &drive::Counts,
    summary: &mut Summary,
) -> String {
    let sent = counts.sent.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    let mut text = format!(
        "\n── {:.0}s ── {sent} requests sent, {failed} failed ──\n",
        elapsed.as_secs_f64()
    );
    match api.topology("1m").await {
        Ok(topology) => text.push_str(&report::edges_table(&topology)),
        Err(error) => text.push_str(&format!("  (no topology yet: {error})\n")),
    }
    let weights = api.weights("checkout").await.unwrap_or(None);
    let lines = report::instance_lines(weights.as_ref(), served);
    text.push_str(&report::instances_table(&lines, faulty));
    summary.checkout = lines;
    summary.tables += 1;
    text
}
