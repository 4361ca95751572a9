//! The topology builder alone: how many spans a second it takes in, on the load generator's
//! workload (client/server pairs across 6 services × 3 instances, database calls, root spans).
#![allow(missing_docs)] // criterion_group! makes an undocumented public function

use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wayfinder_bench::workload::{Shape, Workload};
use wayfinder_collector::testing::{TopologyBuilder, TopologyConfig};
use wayfinder_decode::{SpanFacts, decode_traces};

fn topology_builder(c: &mut Criterion) {
    let mut workload = Workload::new(
        Shape {
            spans_per_request: 500,
            ..Shape::default()
        },
        42,
    );
    // A pool of distinct traces, cycled through, so that ids do not repeat within the edge wait.
    let pool: Vec<Vec<SpanFacts>> = (0..100)
        .map(|_| decode_traces(&workload.request()).expect("valid").facts)
        .collect();
    let spans = pool[0].len();

    let mut group = c.benchmark_group("topology");
    group.throughput(Throughput::Elements(spans as u64));
    let mut builder = TopologyBuilder::new(TopologyConfig::default());
    let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut next = 0;
    group.bench_function("builder_ingest_500", |b| {
        // The copy of each batch (the builder takes parts of its input, as it does of the
        // dispatcher's) is made outside the measured time.
        b.iter_batched(
            || {
                next += 1;
                pool[next % pool.len()].clone()
            },
            |mut batch| {
                // 1 ms between batches: 500 k spans/s of simulated arrival.
                now += Duration::from_millis(1);
                builder.ingest(&mut batch, now);
                batch
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let counters = builder.counters();
    eprintln!(
        "after the run: {} paired, {} virtual, {} unpaired clients, {} unpaired servers, {} pending",
        counters.paired,
        counters.virtual_edges,
        counters.unpaired_client,
        counters.unpaired_server,
        builder.pending()
    );
}

criterion_group!(benches, topology_builder);
criterion_main!(benches);
