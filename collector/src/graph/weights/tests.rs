//! Deterministic scenarios: synthetic SERVER spans at a simulated time, one update a second.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::decode::{SpanFacts, SpanKind};
use crate::graph::registry::{Instance, InstanceStatus};
use crate::testing::{facts, registered_instance};

const T0: u64 = 1_800_000_000;

struct Sim {
    engine: WeightsEngine,
    now: SystemTime,
    instances: Vec<Instance>,
    /// Per instance: base latency (ms) and error share.
    load: Vec<(f64, f64)>,
    /// Per instance: `Some(k)` sends one request every `k` seconds instead of 50 a second.
    trickle: Vec<Option<u64>>,
    seconds: u64,
}

fn instance(id: &str) -> Instance {
    registered_instance(&Arc::from("cart"), id, Some(format!("{id}:8080")))
}

impl Sim {
    fn new(latencies: &[f64]) -> Self {
        Self {
            engine: WeightsEngine::new(WeightsConfig::default(), Clock::new()),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
            instances: (0..latencies.len())
                .map(|i| instance(&format!("cart-{i}")))
                .collect(),
            load: latencies.iter().map(|&l| (l, 0.0)).collect(),
            trickle: vec![None; latencies.len()],
            seconds: 0,
        }
    }

    /// One second: 50 requests per instance, latencies spread ±20% around its base, the first
    /// `error share × 50` failing; then an update.
    fn second(&mut self) -> Vec<f64> {
        let mut spans = Vec::new();
        for (i, instance) in self.instances.iter().enumerate() {
            let (base, errors) = self.load[i];
            if base.is_nan() {
                continue; // no traffic
            }
            let count = match self.trickle.get(i).copied().flatten() {
                Some(every) if self.seconds.is_multiple_of(every) => 1,
                Some(_) => 0,
                None => 50usize,
            };
            let failing = (errors * count as f64).round() as usize;
            for j in 0..count {
                let ms = base * (0.8 + 0.4 * j as f64 / 49.0);
                let mut span = facts(
                    &instance.service,
                    Some(&instance.instance_id),
                    SpanKind::Server,
                    (ms * 1e6) as u64,
                );
                span.error = j < failing;
                spans.push(span);
            }
        }
        self.engine.record_at(self.now, &spans);
        self.engine.update_with(self.now, &self.instances);
        self.now += Duration::from_secs(1);
        self.seconds += 1;
        self.weights()
    }

    /// One second with no weights read back (for when the service has none).
    fn second_without_check(&mut self) {
        self.engine.update_with(self.now, &self.instances);
        self.now += Duration::from_secs(1);
    }

    fn run(&mut self, seconds: usize) -> Vec<f64> {
        let mut last = Vec::new();
        for _ in 0..seconds {
            last = self.second();
        }
        last
    }

    fn weights(&self) -> Vec<f64> {
        let published = self.engine.get("cart").expect("cart has weights");
        self.instances
            .iter()
            .map(|i| {
                published
                    .endpoints
                    .iter()
                    .find(|e| *e.instance_id == *i.instance_id)
                    .map_or(f64::NAN, |e| e.weight)
            })
            .collect()
    }

    fn endpoint(&self, index: usize) -> wayfinder_api::weights::Endpoint {
        let id = self.instances[index].instance_id.to_string();
        let published = self.engine.get("cart").unwrap();
        published
            .endpoints
            .iter()
            .find(|e| e.instance_id == id)
            .unwrap()
            .clone()
    }
}

fn sum(weights: &[f64]) -> f64 {
    weights.iter().filter(|w| !w.is_nan()).sum()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn a_five_times_slower_instance_loses_its_traffic_within_ten_seconds() {
    let mut sim = Sim::new(&[10.0; 5]);
    let before = sim.run(40);
    for w in &before {
        assert!((w - 0.2).abs() < 0.01, "equal before: {before:?}");
    }
    sim.load[4].0 = 50.0;
    let after = sim.run(10);
    let peers = &after[..4];
    assert!(
        after[4] <= median(peers) / 3.0,
        "slow {} vs median peer {}: {after:?}",
        after[4],
        median(peers)
    );
    let (lo, hi) = peers
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), &w| (l.min(w), h.max(w)));
    assert!(hi / lo <= 1.10, "peers share evenly: {after:?}");
    assert!((sum(&after) - 1.0).abs() < 1e-9);
    let reason = sim.endpoint(4).reason;
    assert!(reason.starts_with("slow: p90"), "{reason}");
}

#[test]
fn fast_failures_never_look_fast() {
    let mut sim = Sim::new(&[10.0, 10.0, 10.0, 10.0, 5.0]);
    sim.load[4].1 = 0.3;
    let weights = sim.run(40);
    for peer in &weights[..4] {
        assert!(
            weights[4] < *peer,
            "failing instance below every peer: {weights:?}"
        );
    }
    let failing = sim.endpoint(4);
    assert!((failing.error_rate - 0.3).abs() < 0.01);
    assert!(
        failing.latency_ms.p90.unwrap() < 10.0,
        "its latency is the lowest"
    );
    assert!(
        failing.reason.starts_with("errors 30%"),
        "{}",
        failing.reason
    );
}

#[test]
fn critical_gets_nothing_and_down_is_dropped() {
    let mut sim = Sim::new(&[10.0; 4]);
    sim.run(40);
    sim.instances[1].status = InstanceStatus::Critical;
    let weights = sim.second();
    assert_eq!(weights[1], 0.0, "critical: 0 on the next update");
    assert!((sum(&weights) - 1.0).abs() < 1e-9);
    assert_eq!(sim.endpoint(1).reason, "critical");
    sim.instances.remove(1); // down or deregistered: the registry no longer lists it
    let weights = sim.second();
    assert_eq!(weights.len(), 3);
    assert_eq!(sim.engine.get("cart").unwrap().endpoints.len(), 3);
    assert!((sum(&weights) - 1.0).abs() < 1e-9);
}

#[test]
fn a_new_instance_ramps_up_over_slow_start() {
    let mut sim = Sim::new(&[10.0; 4]);
    sim.run(40);
    sim.instances.push(instance("cart-4"));
    sim.load.push((10.0, 0.0));
    let mut ramp = Vec::new();
    for _ in 0..40 {
        ramp.push(sim.second()[4]);
    }
    assert!(
        ramp[0] < 0.2 * 0.2,
        "it starts far below the mean: {ramp:?}"
    );
    assert!(
        ramp[10] < ramp[20] && ramp[20] <= ramp[29],
        "it grows: {ramp:?}"
    );
    assert!(ramp[10] < 0.2 * 0.6, "a third of the way: {}", ramp[10]);
    assert!(
        (ramp[39] - 0.2).abs() < 0.02,
        "the mean after the ramp: {}",
        ramp[39]
    );
    for pair in ramp.windows(2) {
        assert!(pair[1] >= pair[0] - 1e-9, "never backwards: {ramp:?}");
    }
}

#[test]
fn steady_input_is_stable_and_steps_are_capped_without_overshoot() {
    let mut sim = Sim::new(&[10.0, 12.0, 14.0, 16.0, 18.0]);
    sim.run(40);
    let mut previous = sim.weights();
    for _ in 0..20 {
        let weights = sim.second();
        for (w, p) in weights.iter().zip(&previous) {
            assert!(
                (w / p - 1.0).abs() <= 0.01,
                "steady: {previous:?} -> {weights:?}"
            );
        }
        previous = weights;
    }
    let version = sim.engine.get("cart").unwrap().version;
    sim.second();
    assert_eq!(
        sim.engine.get("cart").unwrap().version,
        version,
        "no change, same version"
    );

    // A step: the fastest instance turns 4x slower.
    sim.load[0].0 = 40.0;
    let multiplier = |sim: &Sim| {
        let states = sim.engine.state.lock();
        states["cart"].instances[&Arc::from("cart-0")]
            .kept
            .expect("not ejected")
            .multiplier
    };
    let mut series = vec![previous[0]];
    let mut multipliers = vec![multiplier(&sim)];
    for _ in 0..40 {
        series.push(sim.second()[0]);
        multipliers.push(multiplier(&sim));
    }
    let settled = *series.last().unwrap();
    assert!(
        settled < previous[0] / 2.0,
        "it follows the step: {series:?}"
    );
    let cap = sim.engine.config().rule.max_step;
    for pair in multipliers.windows(2) {
        let ratio = pair[1] / pair[0];
        assert!(
            ratio >= 1.0 / cap - 1e-9 && ratio <= cap + 1e-9,
            "one step at most per update: {multipliers:?}"
        );
    }
    let lowest = multipliers.iter().copied().fold(f64::MAX, f64::min);
    let last = *multipliers.last().unwrap();
    assert!(
        lowest >= last * (1.0 - 1e-9),
        "no overshoot past where it settles: {multipliers:?}"
    );
    for pair in series.windows(2) {
        assert!(pair[1] <= pair[0] + 1e-9, "it only goes down: {series:?}");
    }
    assert!(
        sim.engine.get("cart").unwrap().version > version,
        "changes bump the version"
    );
}

#[test]
fn never_more_than_the_allowed_share_is_ejected() {
    let mut sim = Sim::new(&[10.0, 20.0, 30.0, 40.0]);
    sim.run(40);
    for i in 1..4 {
        sim.instances[i].status = InstanceStatus::Critical;
    }
    let weights = sim.second();
    let ejected = weights.iter().filter(|&&w| w == 0.0).count();
    assert_eq!(ejected, 2, "half of 4 at most: {weights:?}");
    assert!(
        weights[1] > 0.0,
        "the least bad critical one keeps traffic: {weights:?}"
    );
    assert_eq!(
        (weights[2], weights[3]),
        (0.0, 0.0),
        "the worst go: {weights:?}"
    );
    assert!((sum(&weights) - 1.0).abs() < 1e-9);
    assert!(sim.endpoint(1).reason.contains("kept: too many ejected"));
}

#[test]
fn low_volume_gets_the_mean() {
    // A fourth instance that gets no traffic (NaN: no spans), past its slow start.
    let mut sim = Sim::new(&[10.0, 10.0, 10.0, f64::NAN]);
    let weights = sim.run(40);
    for w in &weights {
        assert!((w - 0.25).abs() < 1e-6, "all at the mean: {weights:?}");
    }
    let quiet = sim.endpoint(3);
    assert!(
        quiet.reason.starts_with("low volume (0 < 10 requests)"),
        "{}",
        quiet.reason
    );
    assert_eq!(quiet.latency_ms.p90, None);
}

#[test]
fn a_slow_instance_gone_quiet_keeps_its_weight_and_eases_back() {
    // Judged slow, then its callers stop sending it requests (as a client balancer does with a
    // slow endpoint): it must not snap back to the mean weight, which would send it traffic
    // again, find it slow again and see-saw; it holds what it earned, easing to the mean with
    // a half-life of one window (30 s).
    let mut sim = Sim::new(&[10.0, 10.0, 10.0, 50.0]);
    let before = sim.run(40);
    let earned = before[3] / before[0];
    assert!(earned < 0.3, "judged slow first: {before:?}");
    sim.load[3].0 = f64::NAN;
    // Its requests stay in the window for up to 30 s; then it is quiet.
    let mut quiet_at = None;
    for second in 0..40 {
        sim.second();
        if sim.endpoint(3).reason.starts_with("low volume") {
            quiet_at = Some(second);
            break;
        }
    }
    assert!(
        quiet_at.is_some(),
        "quiet once its requests left the window"
    );
    let held = sim.weights();
    let ratio = |w: &[f64]| w[3] / w[0];
    assert!(
        (ratio(&held) / earned - 1.0).abs() < 0.3,
        "held near its earned weight ({earned:.3}), not the mean: {held:?}"
    );
    let reason = sim.endpoint(3).reason;
    assert!(reason.contains("held at"), "{reason}");
    // One half-life on: the multiplier's log is halved (×0.2 becomes about ×0.45).
    let half = sim.run(30);
    let expected = (ratio(&held)).sqrt();
    assert!(
        (ratio(&half) / expected - 1.0).abs() < 0.15,
        "about {expected:.3} after one half-life: {half:?}"
    );
    assert!(ratio(&half) > ratio(&held), "easing up: {half:?}");
    // Five half-lives on: close to the mean, never past it.
    let late = sim.run(120);
    assert!(ratio(&late) > 0.9 && ratio(&late) <= 1.0 + 1e-9, "{late:?}");
    // Traffic again, fast now: judged again, and back to an even share by bounded steps.
    sim.load[3].0 = 10.0;
    let back = sim.run(40);
    assert!((ratio(&back) - 1.0).abs() < 0.1, "{back:?}");
    assert!(!sim.endpoint(3).reason.contains("low volume"));
    assert!((sum(&back) - 1.0).abs() < 1e-9);
}

#[test]
fn a_few_slow_requests_count_in_proportion() {
    // Its callers avoided it from the start (their own peak-EWMA saw it slow first): one request
    // every 4 s, 7 or 8 in the window, never the 10 that judge it fully. Those few requests, all
    // 7x slower than its peers', still lower its weight in proportion to their number; the mean
    // weight would tell the clients it is as good as the others.
    let mut sim = Sim::new(&[10.0, 10.0, 10.0, 70.0]);
    sim.trickle[3] = Some(4);
    let weights = sim.run(60);
    let ratio = weights[3] / weights[0];
    let requests = (sim.endpoint(3).requests_per_sec * 30.0).round();
    assert!((1.0..10.0).contains(&requests), "{requests}");
    // (peers' p90 / its p90)^(n/10).
    let p90 = |i: usize| sim.endpoint(i).latency_ms.p90.expect("a p90");
    let expected = (p90(0) / p90(3)).powf(requests / 10.0);
    assert!(expected < 0.5, "{expected}");
    assert!(
        (ratio / expected - 1.0).abs() < 0.25,
        "{ratio:.3} against about {expected:.3} ({requests} requests): {weights:?}"
    );
    let reason = sim.endpoint(3).reason;
    assert!(
        reason.starts_with(&format!(
            "low volume ({requests} < 10 requests): effective p90 "
        )) && reason.contains(&format!("x median, counted {}%", requests * 10.0))
            && reason.ends_with("the rest at the mean"),
        "{reason}"
    );
    assert!((sum(&weights) - 1.0).abs() < 1e-9);
}

#[test]
fn a_new_instance_without_traffic_still_ramps_to_the_mean() {
    // Nothing earned, nothing held: a new instance that gets no requests yet follows its slow
    // start to the mean, as before the hold existed.
    let mut sim = Sim::new(&[10.0, 10.0, 10.0]);
    sim.run(40);
    sim.instances.push(instance("cart-new"));
    sim.load.push((f64::NAN, 0.0));
    sim.trickle.push(None);
    let early = sim.run(5);
    assert!(
        early[3] < early[0] / 2.0,
        "held back while young: {early:?}"
    );
    let late = sim.run(40);
    assert!(
        (late[3] / late[0] - 1.0).abs() < 0.06,
        "at the mean: {late:?}"
    );
    let reason = sim.endpoint(3).reason;
    assert!(reason.ends_with("mean weight"), "{reason}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_thousand_watchers_share_one_snapshot() {
    let mut sim = Sim::new(&[10.0; 3]);
    sim.run(1);
    let version = sim.engine.get("cart").unwrap().version;
    let engine = Arc::new(sim.engine);
    let watchers: Vec<_> = (0..1000)
        .map(|_| {
            let mut rx = engine.subscribe();
            tokio::spawn(async move {
                loop {
                    rx.changed().await.expect("the engine lives");
                    let snapshot = rx.borrow_and_update().clone();
                    if let Some(weights) = snapshot.services.get("cart")
                        && weights.version > version
                    {
                        return weights.clone();
                    }
                }
            })
        })
        .collect();
    tokio::task::yield_now().await;
    // cart-2 turns critical: one update, one new version.
    sim.instances[2].status = InstanceStatus::Critical;
    engine.update_with(sim.now, &sim.instances);
    let mut seen = Vec::new();
    for watcher in watchers {
        seen.push(watcher.await.unwrap());
    }
    assert_eq!(seen.len(), 1000);
    let first = &seen[0];
    assert!(first.version > version);
    assert!(
        seen.iter().all(|w| Arc::ptr_eq(w, first)),
        "every watcher holds the same snapshot: one computation, shared"
    );
}

#[test]
fn an_instance_without_spans_of_its_own_is_judged_by_its_callers() {
    let mut sim = Sim::new(&[10.0, 10.0, f64::NAN]);
    // cart-2 sends no SERVER spans; its callers' CLIENT spans aimed at its address say 50 ms.
    for _ in 0..40 {
        let front: Arc<str> = Arc::from("front");
        let calls: Vec<SpanFacts> = (0..50)
            .map(|_| {
                let mut call = facts(&front, None, SpanKind::Client, 50_000_000);
                call.peer = Some(Box::new(crate::decode::PeerAttributes {
                    server_address: Some("cart-2".into()),
                    server_port: Some(8080),
                    ..Default::default()
                }));
                call
            })
            .collect();
        sim.engine.record_at(sim.now, &calls);
        sim.second();
    }
    let weights = sim.weights();
    assert!(weights[2] <= weights[0] / 3.0, "{weights:?}");
    let judged = sim.endpoint(2);
    assert!(
        judged.latency_ms.p50.unwrap() > 45.0,
        "its callers' latency: {judged:?}"
    );
}

#[test]
fn one_near_zero_latency_cannot_take_everything() {
    let mut latencies = vec![10.0; 20];
    latencies[0] = 0.000_001;
    let mut sim = Sim::new(&latencies);
    let weights = sim.run(40);
    let mean = 1.0 / 20.0;
    for w in &weights {
        assert!(
            *w <= 10.0 * mean + 1e-9 && *w >= 0.1 * mean - 1e-9,
            "{weights:?}"
        );
    }
    assert!((sum(&weights) - 1.0).abs() < 1e-9);
}

#[test]
fn versions_never_go_back() {
    let mut sim = Sim::new(&[10.0; 2]);
    sim.run(3);
    let before = sim.engine.get("cart").unwrap().version;
    let saved = std::mem::take(&mut sim.instances);
    sim.second_without_check();
    assert!(sim.engine.get("cart").is_none(), "no instances: no service");
    sim.instances = saved;
    sim.run(1);
    assert!(sim.engine.get("cart").unwrap().version > before);
}

#[test]
fn borrowed_keys_find_owned_ones() {
    let mut map: hashbrown::HashMap<Key, u32> = hashbrown::HashMap::new();
    map.insert((Arc::from("cart"), Arc::from("cart-1")), 7);
    assert_eq!(
        map.get(&KeyRef("cart", "cart-1")),
        Some(&7),
        "same hash, same key"
    );
    assert_eq!(map.get(&KeyRef("cart", "cart-2")), None);
    assert_eq!(
        map.get(&KeyRef("cartc", "art-1")),
        None,
        "fields are hashed apart"
    );
}
