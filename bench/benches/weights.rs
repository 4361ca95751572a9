//! The weights engine: one update for 1,000 services × 20 instances, each with a full 30-second
//! window of traffic.
#![allow(missing_docs)] // criterion_group! makes an undocumented public function

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use wayfinder_collector::clock::Clock;
use wayfinder_collector::decode::{SpanFacts, SpanKind, SpanRef};
use wayfinder_collector::registry::{Instance, InstanceStatus, Source};
use wayfinder_collector::weights::{WeightsConfig, WeightsEngine};

const SERVICES: usize = 1000;
const INSTANCES: usize = 20;

fn weights_update(c: &mut Criterion) {
    let engine = WeightsEngine::new(WeightsConfig::default(), Clock::new());
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut instances = Vec::with_capacity(SERVICES * INSTANCES);
    for s in 0..SERVICES {
        let service: Arc<str> = Arc::from(format!("service-{s}"));
        for i in 0..INSTANCES {
            instances.push(Instance {
                service: service.clone(),
                instance_id: Arc::from(format!("service-{s}-{i}")),
                status: InstanceStatus::Passing,
                source: Source::Health,
                address: Some(format!("10.{}.{}.{}:8080", s / 256, s % 256, i)),
                last_beat: None,
                last_seen: None,
                since: t0,
                ttl: None,
                seq: None,
                output: None,
            });
        }
    }
    // 30 s of traffic: 5 requests per instance per second, latencies spread 5–50 ms.
    for second in 0..30u64 {
        let now = t0 + Duration::from_secs(second);
        let spans: Vec<SpanFacts> = instances
            .iter()
            .enumerate()
            .flat_map(|(n, instance)| {
                (0..5u64).map(move |j| SpanFacts {
                    id: SpanRef {
                        trace_id: [1; 16],
                        span_id: [1; 8],
                    },
                    parent_span_id: None,
                    parent_is_remote: None,
                    kind: SpanKind::Server,
                    error: j == 0 && n % 7 == 0,
                    duration_ns: 5_000_000 + ((n as u64 * 7 + j * 13 + second) % 45) * 1_000_000,
                    service: instance.service.clone(),
                    instance: Some(instance.instance_id.clone()),
                    links: Vec::new(),
                    peer: None,
                })
            })
            .collect();
        engine.record_at(now, &spans);
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
