//! A synthetic fleet for the weights benchmarks: `services × instances` registered instances
//! and one second of their SERVER-span facts at a time.

use std::net::SocketAddr;
use std::sync::Arc;

use wayfinder_collector::testing::Instance;
use wayfinder_collector::testing::{facts, registered_instance};
use wayfinder_decode::{SpanFacts, SpanKind};

/// `services × instances` passing instances, `service-S-I` at `10.S/256.S%256.I:8080`.
pub fn instances(services: usize, instances: usize) -> Vec<Instance> {
    let mut fleet = Vec::with_capacity(services * instances);
    for s in 0..services {
        let service: Arc<str> = Arc::from(format!("service-{s}"));
        for i in 0..instances {
            let address = format!("10.{}.{}.{}:8080", s / 256, s % 256, i);
            fleet.push(registered_instance(
                &service,
                &format!("service-{s}-{i}"),
                Some(address),
            ));
        }
    }
    fleet
}

/// Second `second` of traffic: 5 SERVER spans per instance, latencies spread 5–50 ms; with
/// `errors`, the first span of every seventh instance fails.
pub fn second_of_traffic(fleet: &[Instance], second: u64, errors: bool) -> Vec<SpanFacts> {
    fleet
        .iter()
        .enumerate()
        .flat_map(|(n, instance)| {
            (0..5u64).map(move |j| {
                let ms = 5 + (n as u64 * 7 + j * 13 + second) % 45;
                let mut span = facts(
                    &instance.service,
                    Some(&instance.instance_id),
                    SpanKind::Server,
                    ms * 1_000_000,
                );
                span.error = errors && j == 0 && n % 7 == 0;
                span
            })
        })
        .collect()
}

/// A collector configuration with every listener on a free loopback port.
pub fn loopback_config() -> wayfinder_collector::Config {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = wayfinder_collector::Config::default();
    config.listeners.otlp_grpc = any;
    config.listeners.otlp_http = any;
    config.listeners.query_http = any;
    config.listeners.query_grpc = any;
    config
}

/// Registers `instance_id` of `service` (at `address`) as passing for ten minutes (the longest
/// TTL the collector takes by default), as one heartbeat would.
pub fn register(
    collector: &wayfinder_collector::RunningCollector,
    service: &str,
    instance_id: String,
    address: Option<String>,
) -> Result<(), String> {
    let event = wayfinder_decode::health::validate(wayfinder_api::health::HealthReport {
        service: service.to_owned(),
        instance_id,
        address,
        status: "passing".into(),
        ttl_ms: Some(600_000),
        seq: None,
        incarnation: None,
        output: None,
    })?;
    collector.registry().beat(event);
    Ok(())
}
