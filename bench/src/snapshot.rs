//! `wayfinder-bench snapshot`: what a topology reader costs the builder's lock over a full hour
//! of windows, without waiting an hour. The load generator's requests are decoded and fed to a
//! `TopologyBuilder` at simulated times across `--minutes` minutes; then snapshots of the whole
//! hour (and of five minutes) are timed: the first in a minute merges every sealed minute of
//! every series (what every snapshot cost before the sealed sums), the ones after it reuse the
//! sealed sums and merge only the current minute.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use wayfinder_bench::workload::{Shape, Workload};
use wayfinder_collector::testing::{TopologyBuilder, TopologyConfig};
use wayfinder_decode::decode_traces;

#[derive(Debug, clap::Args)]
pub(crate) struct SnapshotArgs {
    /// Copies of the call graph (5 edges each).
    #[arg(long, default_value_t = 200)]
    graphs: usize,
    /// Minutes of traffic before the snapshots.
    #[arg(long, default_value_t = 61)]
    minutes: u64,
    /// Requests of 500 spans a minute.
    #[arg(long, default_value_t = 10)]
    requests_per_minute: usize,
    /// Snapshots timed after the first, per window.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
}

pub(crate) fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let mut workload = Workload::new(
        Shape {
            graphs: args.graphs,
            ..Shape::default()
        },
        42,
    );
    let mut builder = TopologyBuilder::new(TopologyConfig {
        retention: Duration::from_secs(2 * 3600),
        ..TopologyConfig::default()
    });
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 60 * 60);
    let mut now = start;
    for minute in 0..args.minutes {
        for request in 0..args.requests_per_minute {
            let mut facts = decode_traces(&workload.request())
                .context("a generated request")?
                .facts;
            let second = request as u64 * 60 / args.requests_per_minute as u64;
            now = start + Duration::from_secs(minute * 60 + second);
            builder.ingest(&mut facts, now);
        }
    }
    let graph = builder.snapshot(Duration::from_secs(3600), now);
    println!(
        "{} minutes, {} edges, {} nodes, {} instance edges in the hour",
        args.minutes,
        graph.edges.len(),
        graph.nodes.len(),
        graph.instance_edges.len()
    );
    println!(
        "| window | first snapshot in a minute | later snapshots (median of {}) |",
        args.repeats
    );
    println!("|---|---|---|");
    // The next minute starts: every series' sums are made anew on the first snapshot.
    let now = now + Duration::from_secs(60);
    for window in [Duration::from_secs(3600), Duration::from_secs(300)] {
        let timed = |builder: &TopologyBuilder| {
            let started = Instant::now();
            let graph = builder.snapshot(window, now);
            (started.elapsed(), graph.edges.len())
        };
        let (first, edges) = timed(&builder);
        let mut later: Vec<Duration> = (0..args.repeats).map(|_| timed(&builder).0).collect();
        later.sort();
        println!(
            "| {} ({edges} edges) | {:.1} ms | {:.1} ms |",
            humantime::format_duration(window),
            first.as_secs_f64() * 1e3,
            later[later.len() / 2].as_secs_f64() * 1e3
        );
    }
    Ok(())
}
