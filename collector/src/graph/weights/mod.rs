//! Latency-adaptive load-balancing weights: every `--weight-update-period`, for each service,
//! how much traffic each of its live instances should get, from their latency, errors, volume
//! and health ([`rule`]), published as shared snapshots that any number of watchers read.
//!
//! (Its example runs as the unit test `examples::example`.)

pub(crate) mod rule;
pub(crate) mod window;

mod metrics;
mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;
use parking_lot::Mutex;
use tokio::sync::watch;
use wayfinder_api::weights::{Endpoint, EndpointLatency, ServiceWeights};

pub(crate) use metrics::WeightsMetrics;
pub(crate) use rule::RuleConfig;
pub use settings::WeightsSettings;

use self::rule::{Candidate, Kept, decide};
use self::window::Window;
use crate::decode::{SpanFacts, SpanKind};
use crate::graph::registry::Instance;
use crate::util::clock::Clock;

/// How the engine runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightsConfig {
    /// How often weights are computed (`--weight-update-period`).
    pub update_period: Duration,
    /// The sliding window of latency and errors (`--weight-window`).
    pub window: Duration,
    /// How long a snapshot holds without a newer one (`ttl_ms` of the answer).
    pub ttl: Duration,
    /// The rule's parameters.
    pub rule: RuleConfig,
    /// Most instance and address windows tracked.
    pub max_windows: usize,
}

impl Default for WeightsConfig {
    fn default() -> Self {
        Self {
            update_period: Duration::from_secs(1),
            window: Duration::from_secs(30),
            ttl: Duration::from_secs(60),
            rule: RuleConfig::default(),
            max_windows: 200_000,
        }
    }
}

/// Every service's weights at one update.
#[derive(Debug, Clone, Default)]
pub struct WeightsSnapshot {
    /// When computed.
    pub generated_at: Option<SystemTime>,
    /// By service.
    pub services: BTreeMap<String, Arc<ServiceWeights>>,
}

/// `(service, instance)`.
pub(crate) type Key = (Arc<str>, Arc<str>);

/// The buckets of a window.
pub(crate) type Buckets = Vec<(u64, window::Bucket)>;

fn buckets(window: &Window, slot: u64) -> Buckets {
    window.since(slot).map(|(s, b)| (s, b.clone())).collect()
}

/// Every window's recent buckets ([`WeightsEngine::windows_since`]).
#[derive(Debug, Default)]
pub(crate) struct Windows {
    /// By `(service, instance)`: its SERVER spans.
    pub instances: Vec<(Key, Buckets)>,
    /// By address: its callers' CLIENT spans.
    pub addresses: Vec<(String, Buckets)>,
}

/// What the rule keeps of a service between updates ([`WeightsEngine::memory`]), as it
/// travels between collectors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ServiceMemory {
    /// Its last version.
    pub version: u64,
    /// Per instance.
    pub instances: Vec<InstanceMemory>,
    /// The last published `(instance, address, weight, health)`.
    pub last: Vec<(String, Option<String>, f64, String)>,
}

/// What the rule keeps of an instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct InstanceMemory {
    /// `service.instance.id`.
    pub id: String,
    /// Its multiplier, when it has one (not ejected).
    pub multiplier: Option<f64>,
    /// Whether the multiplier was earned.
    pub earned: bool,
    /// Since when it has been quiet, in milliseconds since the epoch.
    pub quiet_since_ms: Option<u64>,
    /// The multiplier it had when it went quiet.
    pub quiet_multiplier: Option<f64>,
    /// When its ramp started, in milliseconds since the epoch.
    pub first_seen_ms: u64,
    /// Its latency's EWMA.
    pub ewma_ms: Option<f64>,
}

/// A [`Key`] by reference: hashes and compares as the key does.
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == &*key.0 && self.1 == &*key.1
    }
}

/// What each instance and each called address did, per window.
#[derive(Debug, Default)]
struct Inputs {
    instances: HashMap<Key, Window>,
    addresses: HashMap<String, Window>,
    dropped: u64,
}

/// What the engine keeps per instance between updates.
#[derive(Debug, Clone, Copy)]
struct InstanceState {
    kept: Option<Kept>,
    first_seen: SystemTime,
    ewma_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct ServiceState {
    version: u64,
    instances: HashMap<Arc<str>, InstanceState>,
    /// The last published `(instance, address, weight, health)`, to tell a change.
    last: Vec<(String, Option<String>, f64, String)>,
}

/// Computes and publishes the weights.
#[derive(Debug)]
pub struct WeightsEngine {
    /// The rule and the TTL change in place on a configuration reload
    /// ([`WeightsEngine::set_rule`]).
    config: parking_lot::RwLock<WeightsConfig>,
    clock: Clock,
    inputs: Mutex<Inputs>,
    state: Mutex<HashMap<String, ServiceState>>,
    /// The next version: one counter for all services, starting at the engine's start time in
    /// milliseconds, so that a service's version never goes back, not even when it disappears
    /// and comes back or the collector restarts.
    next_version: Mutex<u64>,
    tx: watch::Sender<Arc<WeightsSnapshot>>,
}

/// EWMA smoothing per update.
const EWMA_ALPHA: f64 = 0.3;

impl WeightsEngine {
    /// An engine with nothing recorded.
    pub fn new(config: WeightsConfig, clock: Clock) -> Self {
        let (tx, _) = watch::channel(Arc::new(WeightsSnapshot::default()));
        Self {
            config: parking_lot::RwLock::new(config),
            clock,
            inputs: Mutex::new(Inputs::default()),
            state: Mutex::new(HashMap::new()),
            next_version: Mutex::new(crate::util::clock::unix_millis(clock.now()).max(1)),
            tx,
        }
    }

    /// Its configuration in force.
    pub fn config(&self) -> WeightsConfig {
        *self.config.read()
    }

    /// A new rule and TTL (a configuration reload), used from the next update on. The state
    /// kept per instance (multipliers, ejections, slow starts) carries over: the new rule
    /// moves weights from where they are, within its own step limits.
    pub fn set_rule(&self, rule: RuleConfig, ttl: Duration) {
        let mut config = self.config.write();
        config.rule = rule;
        config.ttl = ttl;
    }

    /// Records the spans of a batch that arrived at `now`: SERVER spans per instance, CLIENT
    /// spans per address they called.
    pub fn record_at(&self, now: SystemTime, spans: &[SpanFacts]) {
        let mut inputs = self.inputs.lock();
        let inputs = &mut *inputs;
        let max = self.config.read().max_windows;
        let mut address = String::new();
        for span in spans {
            let full = inputs.instances.len() + inputs.addresses.len() >= max;
            match span.kind {
                SpanKind::Server => {
                    let Some(instance) = &span.instance else {
                        continue;
                    };
                    // Looked up by reference: no key is built unless it is new.
                    let borrowed = KeyRef(&span.service, instance);
                    let window = match inputs.instances.get_mut(&borrowed) {
                        Some(window) => window,
                        None if full => {
                            inputs.dropped += 1;
                            continue;
                        }
                        None => inputs
                            .instances
                            .entry((span.service.clone(), instance.clone()))
                            .or_default(),
                    };
                    window.record(now, span.duration_ns, span.error);
                }
                SpanKind::Client => {
                    let Some(peer) = span.peer.as_deref() else {
                        continue;
                    };
                    if !peer.write_peer_address(&mut address) {
                        continue;
                    }
                    let window = match inputs.addresses.get_mut(address.as_str()) {
                        Some(window) => window,
                        None if full => {
                            inputs.dropped += 1;
                            continue;
                        }
                        None => inputs.addresses.entry(address.clone()).or_default(),
                    };
                    window.record(now, span.duration_ns, span.error);
                }
                _ => {}
            }
        }
    }

    /// Computes every service's weights at the clock's now, from the registry's instances.
    pub fn update(&self, instances: &[Instance]) {
        self.update_with(self.clock.now(), instances);
    }

    /// Computes every service's weights at `now` for these instances (the registry's), and
    /// publishes them.
    pub fn update_with(&self, now: SystemTime, instances: &[Instance]) {
        let config = self.config();
        let window = config.window;
        let mut by_service: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
        for instance in instances {
            by_service
                .entry(&instance.service)
                .or_default()
                .push(instance);
        }
        let generated_at = crate::util::clock::rfc3339(now);
        let ttl_ms = u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX);
        let window_secs = window.as_secs_f64().max(1.0);

        let mut inputs = self.inputs.lock();
        inputs.instances.retain(|_, w| w.prune(now, window));
        inputs.addresses.retain(|_, w| w.prune(now, window));
        let mut states = self.state.lock();
        states.retain(|service, _| by_service.contains_key(service.as_str()));
        let mut services = BTreeMap::new();
        for (service, members) in by_service {
            let state = states.entry(service.to_owned()).or_default();
            state
                .instances
                .retain(|id, _| members.iter().any(|m| &m.instance_id == id));
            let candidates: Vec<Candidate> = members
                .iter()
                .map(|m| {
                    let key = (m.service.clone(), m.instance_id.clone());
                    let own = inputs.instances.get(&key).map(|w| w.stats(now, window));
                    // Its own SERVER spans, else what its callers saw at its address.
                    let source = match own {
                        Some(stats) if stats.requests > 0 => inputs.instances.get(&key),
                        _ => m.address.as_ref().and_then(|a| inputs.addresses.get(a)),
                    };
                    let (mut stats, recent) = source
                        .map(|w| (w.stats(now, window), w.recent(now)))
                        .unwrap_or_default();
                    // Either side's errors: failures only its callers saw (timeouts, resets)
                    // count too.
                    if let Some(callers) = m.address.as_ref().and_then(|a| inputs.addresses.get(a))
                    {
                        let seen = callers.stats(now, window);
                        if seen.requests > 0 && stats.requests > 0 {
                            let failed = (seen.error_rate() * stats.requests as f64).round() as u64;
                            stats.errors = stats.errors.max(failed.min(stats.requests));
                        }
                    }
                    let first_seen = state
                        .instances
                        .entry(m.instance_id.clone())
                        .or_insert(InstanceState {
                            kept: None,
                            first_seen: now,
                            ewma_ms: None,
                        })
                        .first_seen;
                    Candidate {
                        instance_id: m.instance_id.clone(),
                        health: m.status,
                        stats,
                        recent,
                        first_seen,
                    }
                })
                .collect();
            let decisions = decide(
                &candidates,
                |id| state.instances.get(id).and_then(|s| s.kept),
                &config.rule,
                now,
            );
            let mut endpoints = Vec::with_capacity(decisions.len());
            for ((decision, candidate), member) in decisions.iter().zip(&candidates).zip(&members) {
                let instance = state
                    .instances
                    .get_mut(&decision.instance_id)
                    .expect("inserted above");
                // A weight of 0 (ejected) restarts the ramp when the instance comes back.
                instance.kept = (decision.weight > 0.0).then_some(decision.kept);
                if decision.weight == 0.0 {
                    instance.first_seen = now;
                }
                let stats = &candidate.stats;
                if let Some(mean) = stats.latency.mean() {
                    instance.ewma_ms = Some(match instance.ewma_ms {
                        Some(prev) => EWMA_ALPHA * mean + (1.0 - EWMA_ALPHA) * prev,
                        None => mean,
                    });
                }
                endpoints.push(Endpoint {
                    instance_id: decision.instance_id.to_string(),
                    address: member.address.clone(),
                    weight: decision.weight,
                    health: candidate.health.as_str().to_owned(),
                    latency_ms: EndpointLatency {
                        p50: stats.latency.quantile(0.5),
                        p90: stats.latency.quantile(0.9),
                        p99: stats.latency.quantile(0.99),
                        ewma: instance.ewma_ms,
                    },
                    error_rate: stats.error_rate(),
                    requests_per_sec: stats.requests as f64 / window_secs,
                    reason: decision.reason.clone(),
                });
            }
            endpoints.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            let now_set: Vec<(String, Option<String>, f64, String)> = endpoints
                .iter()
                .map(|e| {
                    (
                        e.instance_id.clone(),
                        e.address.clone(),
                        e.weight,
                        e.health.clone(),
                    )
                })
                .collect();
            let changed = now_set.len() != state.last.len()
                || now_set.iter().zip(&state.last).any(|(a, b)| {
                    a.0 != b.0 || a.1 != b.1 || a.3 != b.3 || (a.2 - b.2).abs() > 1e-9
                });
            if changed || state.version == 0 {
                let mut next = self.next_version.lock();
                state.version = *next;
                *next += 1;
                state.last = now_set;
            }
            services.insert(
                service.to_owned(),
                Arc::new(ServiceWeights {
                    service: service.to_owned(),
                    version: state.version,
                    generated_at: generated_at.clone(),
                    ttl_ms,
                    endpoints,
                }),
            );
        }
        drop(states);
        drop(inputs);
        self.tx.send_replace(Arc::new(WeightsSnapshot {
            generated_at: Some(now),
            services,
        }));
    }

    /// The latest weights of `service`; `None` when it has no instances.
    pub fn get(&self, service: &str) -> Option<Arc<ServiceWeights>> {
        self.tx.borrow().services.get(service).cloned()
    }

    /// A receiver of every published snapshot (one per update).
    pub fn subscribe(&self) -> watch::Receiver<Arc<WeightsSnapshot>> {
        self.tx.subscribe()
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<WeightsSnapshot> {
        self.tx.borrow().clone()
    }

    /// The buckets of every instance's and every address's window from `slot` on: what this
    /// collector tells a service's owner in fleet mode.
    pub(crate) fn windows_since(&self, slot: u64) -> Windows {
        let inputs = self.inputs.lock();
        let instances = inputs
            .instances
            .iter()
            .map(|(key, window)| (key.clone(), buckets(window, slot)))
            .filter(|(_, b)| !b.is_empty())
            .collect();
        let addresses = inputs
            .addresses
            .iter()
            .map(|(address, window)| (address.clone(), buckets(window, slot)))
            .filter(|(_, b)| !b.is_empty())
            .collect();
        Windows {
            instances,
            addresses,
        }
    }

    /// Replaces every window with these (a service's owner in fleet mode computes from the
    /// fleet's figures, not from spans of its own).
    pub(crate) fn set_windows(
        &self,
        instances: impl IntoIterator<Item = (Key, Window)>,
        addresses: impl IntoIterator<Item = (String, Window)>,
    ) {
        let mut inputs = self.inputs.lock();
        inputs.instances = instances.into_iter().collect();
        inputs.addresses = addresses.into_iter().collect();
    }

    /// What the rule keeps of `service` between updates, to carry to another collector.
    pub(crate) fn memory(&self, service: &str) -> Option<ServiceMemory> {
        let states = self.state.lock();
        let state = states.get(service)?;
        let ms = |t: SystemTime| crate::util::clock::unix_millis(t);
        let mut instances: Vec<InstanceMemory> = state
            .instances
            .iter()
            .map(|(id, s)| InstanceMemory {
                id: id.to_string(),
                multiplier: s.kept.map(|k| k.multiplier),
                earned: s.kept.is_some_and(|k| k.earned),
                quiet_since_ms: s.kept.and_then(|k| k.quiet).map(|q| ms(q.since)),
                quiet_multiplier: s.kept.and_then(|k| k.quiet).map(|q| q.multiplier),
                first_seen_ms: ms(s.first_seen),
                ewma_ms: s.ewma_ms,
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Some(ServiceMemory {
            version: state.version,
            instances,
            last: state.last.clone(),
        })
    }

    /// Takes up `service` where another collector left it: the rule's state, and a version that
    /// the next change goes past.
    pub(crate) fn restore(&self, service: &str, memory: &ServiceMemory) {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let instances = memory
            .instances
            .iter()
            .map(|m| {
                let kept = m.multiplier.map(|multiplier| Kept {
                    multiplier,
                    earned: m.earned,
                    quiet: m
                        .quiet_since_ms
                        .zip(m.quiet_multiplier)
                        .map(|(since, multiplier)| rule::Quiet {
                            since: at(since),
                            multiplier,
                        }),
                });
                let state = InstanceState {
                    kept,
                    first_seen: at(m.first_seen_ms),
                    ewma_ms: m.ewma_ms,
                };
                (Arc::<str>::from(m.id.as_str()), state)
            })
            .collect();
        self.state.lock().insert(
            service.to_owned(),
            ServiceState {
                version: memory.version,
                instances,
                last: memory.last.clone(),
            },
        );
        let mut next = self.next_version.lock();
        *next = (*next).max(memory.version.saturating_add(1));
    }

    /// Publishes `snapshot` as its own (fleet mode: the fleet's weights, as every collector
    /// reads them).
    pub(crate) fn publish(&self, snapshot: WeightsSnapshot) {
        self.tx.send_replace(Arc::new(snapshot));
    }

    /// Windows not tracked because the limit was reached.
    pub fn dropped_windows(&self) -> u64 {
        self.inputs.lock().dropped
    }
}

impl crate::pipeline::FactsConsumer for WeightsEngine {
    fn name(&self) -> &'static str {
        "weights"
    }

    // Records SERVER spans per instance and CLIENT spans per address.
    fn consume(&self, facts: &[SpanFacts]) {
        self.record_at(self.clock.now(), facts);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example() {
        use crate::graph::weights::{WeightsConfig, WeightsEngine};
        use crate::util::clock::Clock;
        use std::time::{Duration, SystemTime};

        let engine = WeightsEngine::new(WeightsConfig::default(), Clock::new());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        engine.update_with(t0, &[]); // no instances: no services
        assert!(engine.get("cart").is_none());
    }
}
