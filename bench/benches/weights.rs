//! The weights engine: one update for 1,000 services × 20 instances, each with a full 30-second
//! window of traffic.
#![allow(missing_docs)] // criterion_group! makes an undocumented public function

use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use wayfinder_bench::fleet;
use wayfinder_collector::testing::Clock;
use wayfinder_collector::testing::{WeightsConfig, WeightsEngine};

const SERVICES: usize = 1000;
const INSTANCES: usize = 20;

fn weights_update(c: &mut Criterion) {
    let engine = WeightsEngine::new(WeightsConfig::default(), Clock::new());
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let instances = fleet::instances(SERVICES, INSTANCES);
    // 30 s of traffic: 5 requests per instance per second, latencies spread 5–50 ms.
    for second in 0..30u64 {
        let now = t0 + Duration::from_secs(second);
        engine.record_at(now, &fleet::second_of_traffic(&instances, second, true));
    }
    let mut now = t0 + Duration::from_secs(29);
    engine.update_with(now, &instances);
    c.bench_function("weights_update_1000x20", |b| {
        b.iter(|| {
            now += Duration::from_millis(1);
            engine.update_with(now, &instances);
        })
    });
}

criterion_group!(benches, weights_update);
criterion_main!(benches);
