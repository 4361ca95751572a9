//! The instance registry: which instances of which service are alive, from their heartbeats
//! (health events) and from the spans they send.
//!
//! The state machine ([`InstanceRegistry`]) takes explicit times; [`Registry`] is the shared
//! handle with the collector's [`Clock`], fed by the receivers (health events) and the ingest
//! pipeline (spans), ticked every second, and read by the query API.
//!
//! | from | event | to |
//! |---|---|---|
//! | — / any | beat `passing`/`warning`/`critical` | as reported |
//! | any | beat `down` | removed at once |
//! | `passing`/`warning` | no beat within `ttl_ms` | `critical` |
//! | `critical` | `--deregister-after` without a good beat | removed |
//! | removed after reporting health | a `critical` beat (after deregistration), a late span | stays removed (for an hour) |
//! | — | a span from an instance never heard from | `unknown` |
//! | `unknown` | no span for `--deregister-after` | removed |
//!
//! Which beat speaks for an instance is [`lineage`]'s rule: a beat whose `seq` is not newer
//! than the last one of its incarnation is ignored; a newer incarnation (a restart) takes over
//! at once, unless the incarnation it replaces keeps beating (then the first is restored and
//! guarded); beats from the future are refused. The registry is bounded by instances
//! (`max_instances`) and by the bytes their names and texts take (`max_bytes`), its
//! transitions by count and bytes, and a beat's TTL by `--max-heartbeat-ttl`.
//!
//! (Its example runs as the unit test `tests::examples::example`.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;

use crate::decode::health::{HealthEvent, HealthStatus};
use crate::metrics::LogEvery;
use lineage::{Claim, Lineage, Verdict, replaced_by_takeover};

mod handle;
mod instance;
mod lineage;
mod metrics;
mod settings;
mod table;

pub use handle::Registry;
pub(crate) use instance::{BeatOutcome, Transition};
use instance::{EVENT_OVERHEAD, INSTANCE_OVERHEAD};
pub use instance::{Instance, InstanceStatus, Source};

pub(crate) use metrics::RegistryMetrics;
pub use settings::RegistrySettings;
pub(crate) use table::health_events_schema;

/// How the registry is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryConfig {
    /// How long an instance stays `critical` (or, when only known from spans, silent) before it
    /// is removed (`--deregister-after`).
    pub deregister_after: Duration,
    /// Most instances tracked; past it, new ones are counted and not tracked.
    pub max_instances: usize,
    /// Most bytes the instances' names, addresses and outputs may take; past it, new ones
    /// are counted and not tracked.
    pub max_bytes: usize,
    /// Most transitions kept for the `health_events` table; the oldest go first.
    pub max_events: usize,
    /// Most bytes of transitions kept (their names, addresses and outputs); the oldest go
    /// first.
    pub max_event_bytes: usize,
    /// The longest TTL a beat may have (`--max-heartbeat-ttl`): an instance that stops
    /// beating is critical at most this long after its last beat.
    pub max_ttl: Duration,
}

/// `--max-heartbeat-ttl`'s default: a beat every few seconds with a TTL of three beats is the
/// usual; ten minutes leaves room, and bounds how long a stranger's beats can hold a place.
pub(crate) const DEFAULT_MAX_TTL: Duration = Duration::from_secs(600);

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            deregister_after: Duration::from_secs(60),
            max_instances: 100_000,
            max_bytes: 64 << 20,
            max_events: 100_000,
            max_event_bytes: 32 << 20,
            max_ttl: DEFAULT_MAX_TTL,
        }
    }
}

type Key = (Arc<str>, Arc<str>);

/// What is remembered of an instance that reported health and was removed: late beats and late
/// spans (an SDK flushes spans after its `down` beat) must not bring it back, and a newer
/// incarnation (a restart) comes back at once.
#[derive(Debug, Clone)]
struct Tombstone {
    lineage: Lineage,
    removed_at: SystemTime,
    /// Removed for staying critical (not `down`): more `critical` beats keep it removed.
    deregistered: bool,
}

/// How long a removed instance is remembered.
const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

/// The registry's state machine.
#[derive(Debug)]
pub struct InstanceRegistry {
    config: RegistryConfig,
    instances: HashMap<Key, Instance>,
    events: VecDeque<Transition>,
    /// Transitions so far, per status reached.
    transitions: HashMap<&'static str, u64>,
    stale_beats: u64,
    dropped: u64,
    /// Beats refused: from the future, contested, or with too long a TTL.
    refused: u64,
    /// Takeovers undone because the replaced incarnation beat again.
    conflicts: u64,
    /// Bytes of the instances, and of the transitions kept.
    bytes: usize,
    event_bytes: usize,
    /// Bumped by every transition (for caching the `health_events` batch).
    version: u64,
    tombstones: HashMap<Key, Tombstone>,
    /// When the next "registry full" line may be written.
    dropped_log: LogEvery,
    /// When the next line about a contested instance may be written.
    conflict_log: LogEvery,
}

impl InstanceRegistry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            instances: HashMap::new(),
            events: VecDeque::new(),
            transitions: HashMap::new(),
            stale_beats: 0,
            dropped: 0,
            refused: 0,
            conflicts: 0,
            bytes: 0,
            event_bytes: 0,
            version: 0,
            tombstones: HashMap::new(),
            dropped_log: LogEvery::default(),
            conflict_log: LogEvery::default(),
        }
    }

    /// Changes with every transition.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Applies a heartbeat that arrived at `now`.
    pub fn beat(&mut self, event: HealthEvent, now: SystemTime) -> BeatOutcome {
        if event.ttl > self.config.max_ttl {
            self.refused += 1;
            return BeatOutcome::TtlTooLong {
                max: self.config.max_ttl,
            };
        }
        let key: Key = (
            Arc::from(event.service.as_str()),
            Arc::from(event.instance_id.as_str()),
        );
        let claim = Claim {
            incarnation: event.incarnation,
            seq: event.seq,
            address: event.address.as_deref(),
        };
        let current = match self.instances.get(&key) {
            Some(instance) => instance.lineage.as_ref(),
            None => self.tombstones.get(&key).map(|t| &t.lineage),
        };
        let verdict = match current {
            Some(current) => lineage::judge(current, &claim, now),
            None if lineage::from_the_future(&claim, now) => Verdict::Future,
            None => Verdict::TakeOver,
        };
        let previous = current.cloned();
        match verdict {
            Verdict::Continue | Verdict::TakeOver | Verdict::Restore => {}
            Verdict::Stale => {
                self.stale_beats += 1;
                return BeatOutcome::Stale {
                    last: previous.and_then(|l| l.seq).unwrap_or(0),
                };
            }
            Verdict::Future => {
                self.refused += 1;
                return BeatOutcome::Future;
            }
            Verdict::Contested => {
                self.refused += 1;
                self.log_contested(&key, "a newer incarnation was refused");
                return BeatOutcome::Contested;
            }
        }
        let lineage = self.next_lineage(&key, previous, verdict, &event, now);
        if let Some(tombstone) = self.tombstones.get_mut(&key) {
            if tombstone.deregistered
                && event.status == HealthStatus::Critical
                && verdict == Verdict::Continue
            {
                // Still critical: it stays removed until it reports itself fit again.
                tombstone.lineage = lineage;
                return BeatOutcome::Accepted;
            }
            self.tombstones.remove(&key);
        }
        let status = match event.status {
            HealthStatus::Passing => InstanceStatus::Passing,
            HealthStatus::Warning => InstanceStatus::Warning,
            HealthStatus::Critical => InstanceStatus::Critical,
            HealthStatus::Down => {
                if let Some(gone) = self.remove(&key) {
                    self.record(
                        now,
                        &gone,
                        Some(gone.status.as_str()),
                        "down",
                        "down",
                        event.output,
                    );
                }
                self.bury(&key, lineage, now, false);
                return BeatOutcome::Accepted;
            }
        };
        let before = self.instances.get(&key).map_or(0, Instance::bytes);
        if before == 0 && !self.has_room(&event) {
            self.drop_one();
            return BeatOutcome::Full;
        }
        let previous = self.instances.get(&key).map(|i| i.status);
        let instance = self
            .instances
            .entry(key.clone())
            .or_insert_with(|| Instance {
                service: key.0.clone(),
                instance_id: key.1.clone(),
                status,
                source: Source::Health,
                address: None,
                last_beat: None,
                last_seen: None,
                since: now,
                ttl: None,
                seq: None,
                output: None,
                lineage: None,
            });
        instance.source = Source::Health;
        instance.last_beat = Some(now);
        instance.ttl = Some(event.ttl);
        instance.seq = event.seq.or(instance.seq);
        instance.output = event.output.clone();
        if event.address.is_some() {
            instance.address = event.address;
        }
        instance.lineage = Some(lineage);
        let after = instance.bytes();
        self.bytes = (self.bytes + after).saturating_sub(before);
        if previous != Some(status) || verdict == Verdict::Restore {
            let reason = if verdict == Verdict::Restore {
                "restored"
            } else {
                "reported"
            };
            self.change_status(&key, previous, status, reason, event.output, now);
        }
        BeatOutcome::Accepted
    }

    /// The lineage after an accepted beat.
    fn next_lineage(
        &mut self,
        key: &Key,
        previous: Option<Lineage>,
        verdict: Verdict,
        event: &HealthEvent,
        now: SystemTime,
    ) -> Lineage {
        let mut next = Lineage {
            incarnation: event.incarnation,
            seq: event.seq,
            last_beat: now,
            ttl: event.ttl,
            address: event.address.clone(),
            replaced: None,
            guarded: false,
        };
        match (verdict, previous) {
            (Verdict::Continue, Some(previous)) => {
                next.seq = event.seq.or(previous.seq);
                next.address = event.address.clone().or(previous.address);
                next.replaced = previous.replaced;
                next.guarded = previous.guarded;
            }
            (Verdict::TakeOver, Some(previous)) => {
                next.replaced = Some(replaced_by_takeover(&previous, now));
            }
            (Verdict::Restore, Some(previous)) => {
                // The takeover was not a restart: two processes claim the instance. The one
                // that was there first speaks for it again, and no newer one may take over
                // while it beats.
                self.conflicts += 1;
                self.log_contested(key, "the incarnation that was replaced beats again");
                next.replaced = Some(lineage::Replaced {
                    incarnation: previous.incarnation,
                    seq: previous.seq,
                    until: previous.last_beat + previous.ttl,
                });
                next.guarded = true;
            }
            _ => {}
        }
        next
    }

    /// Whether a new instance that sent `event` fits under the caps.
    fn has_room(&self, event: &HealthEvent) -> bool {
        let bytes = INSTANCE_OVERHEAD
            + event.service.len()
            + event.instance_id.len()
            + 2 * event.address.as_ref().map_or(0, String::len)
            + event.output.as_ref().map_or(0, String::len);
        self.instances.len() < self.config.max_instances
            && self.bytes + bytes <= self.config.max_bytes
    }

    fn log_contested(&self, key: &Key, what: &str) {
        if self.conflict_log.ready() {
            tracing::warn!(
                service = %key.0.escape_debug(),
                instance = %key.1.escape_debug(),
                "{what}: two processes claim one instance, or a stranger's beats do (logged at most once a minute; counted in wayfinder_health_refused_beats_total and wayfinder_health_conflicts_total)"
            );
        }
    }

    /// Removes an instance and its bytes.
    fn remove(&mut self, key: &Key) -> Option<Instance> {
        let gone = self.instances.remove(key)?;
        self.bytes = self.bytes.saturating_sub(gone.bytes());
        Some(gone)
    }

    /// Notes that an instance sent a span at `now` (an instance never heard from becomes
    /// `unknown`).
    pub fn observe(
        &mut self,
        service: &Arc<str>,
        instance_id: &Arc<str>,
        address: Option<String>,
        now: SystemTime,
    ) {
        let key: Key = (service.clone(), instance_id.clone());
        if let Some(instance) = self.instances.get_mut(&key) {
            instance.last_seen = Some(now);
            if instance.address.is_none() {
                let before = instance.bytes();
                instance.address = address;
                self.bytes = (self.bytes + instance.bytes()).saturating_sub(before);
            }
            return;
        }
        if self.tombstones.contains_key(&key) {
            return; // late spans of an instance that reported health and was removed
        }
        let instance = Instance {
            service: key.0.clone(),
            instance_id: key.1.clone(),
            status: InstanceStatus::Unknown,
            source: Source::Traces,
            address,
            last_beat: None,
            last_seen: Some(now),
            since: now,
            ttl: None,
            seq: None,
            output: None,
            lineage: None,
        };
        let bytes = instance.bytes();
        if self.instances.len() >= self.config.max_instances
            || self.bytes + bytes > self.config.max_bytes
        {
            self.drop_one();
            return;
        }
        self.record(now, &instance, None, "unknown", "traffic", None);
        self.bytes += bytes;
        self.instances.insert(key, instance);
    }

    /// Counts an instance not tracked because the registry is full, and says so (at most once a
    /// minute).
    fn drop_one(&mut self) {
        self.dropped += 1;
        if self.dropped_log.ready() {
            tracing::warn!(
                max_instances = self.config.max_instances,
                max_bytes = self.config.max_bytes,
                "an instance beyond the registry's caps was not tracked (logged at most once a minute; counted in wayfinder_registry_dropped_instances_total)"
            );
        }
    }

    /// Applies the passing of time: TTLs run out, critical and silent instances are removed.
    pub fn tick(&mut self, now: SystemTime) {
        let deregister_after = self.config.deregister_after;
        let mut changes: Vec<(Key, Option<InstanceStatus>, &'static str)> = Vec::new();
        for (key, instance) in &self.instances {
            let elapsed = |since: SystemTime| now.duration_since(since).unwrap_or(Duration::ZERO);
            match (instance.source, instance.status) {
                (Source::Health, InstanceStatus::Passing | InstanceStatus::Warning) => {
                    let deadline = instance.last_beat.zip(instance.ttl).map(|(b, t)| b + t);
                    if deadline.is_some_and(|d| now >= d) {
                        changes.push((key.clone(), Some(InstanceStatus::Critical), "ttl_expired"));
                    }
                }
                (Source::Health, InstanceStatus::Critical) => {
                    if elapsed(instance.since) >= deregister_after {
                        changes.push((key.clone(), None, "deregistered"));
                    }
                }
                (Source::Traces, _) | (_, InstanceStatus::Unknown) => {
                    let last = instance.last_seen.unwrap_or(instance.since);
                    if elapsed(last) >= deregister_after {
                        changes.push((key.clone(), None, "no_traffic"));
                    }
                }
            }
        }
        for (key, to, reason) in changes {
            match to {
                Some(status) => {
                    let previous = self.instances.get(&key).map(|i| i.status);
                    self.change_status(&key, previous, status, reason, None, now);
                }
                None => {
                    if let Some(gone) = self.remove(&key) {
                        if let Some(lineage) = gone.lineage.clone() {
                            self.bury(&key, lineage, now, true);
                        }
                        self.record(
                            now,
                            &gone,
                            Some(gone.status.as_str()),
                            "removed",
                            reason,
                            None,
                        );
                    }
                }
            }
        }
        self.tombstones.retain(|_, t| {
            now.duration_since(t.removed_at)
                .is_ok_and(|age| age < TOMBSTONE_TTL)
        });
    }

    /// Gives an instance a new status and records the transition from `previous` (`None` for
    /// an instance just added).
    fn change_status(
        &mut self,
        key: &Key,
        previous: Option<InstanceStatus>,
        status: InstanceStatus,
        reason: &'static str,
        output: Option<String>,
        now: SystemTime,
    ) {
        let Some(instance) = self.instances.get_mut(key) else {
            return;
        };
        let previous = previous.map(InstanceStatus::as_str);
        instance.status = status;
        instance.since = now;
        let snapshot = instance.clone();
        self.record(now, &snapshot, previous, status.as_str(), reason, output);
    }

    /// Remembers a removed instance (at most `max_instances` of them): the lineage that spoke
    /// for it, no longer live, so that a newer incarnation takes over at once.
    fn bury(&mut self, key: &Key, mut lineage: Lineage, now: SystemTime, deregistered: bool) {
        if self.tombstones.len() < self.config.max_instances || self.tombstones.contains_key(key) {
            lineage.ttl = Duration::ZERO;
            lineage.last_beat = now;
            self.tombstones.insert(
                key.clone(),
                Tombstone {
                    lineage,
                    removed_at: now,
                    deregistered,
                },
            );
        }
    }

    fn record(
        &mut self,
        time: SystemTime,
        instance: &Instance,
        previous: Option<&'static str>,
        status: &'static str,
        reason: &'static str,
        output: Option<String>,
    ) {
        *self.transitions.entry(status).or_default() += 1;
        self.version += 1;
        let bytes = EVENT_OVERHEAD
            + instance.service.len()
            + instance.instance_id.len()
            + instance.address.as_ref().map_or(0, String::len)
            + output.as_ref().map_or(0, String::len);
        while !self.events.is_empty()
            && (self.events.len() >= self.config.max_events
                || self.event_bytes + bytes > self.config.max_event_bytes)
        {
            if let Some(old) = self.events.pop_front() {
                self.event_bytes = self.event_bytes.saturating_sub(old.bytes());
            }
        }
        self.event_bytes += bytes;
        self.events.push_back(Transition {
            time,
            service: instance.service.clone(),
            instance_id: instance.instance_id.clone(),
            previous,
            status,
            reason,
            address: instance.address.clone(),
            output,
        });
    }

    /// The instances, of one service or all, by service then id.
    pub fn instances(&self, service: Option<&str>) -> Vec<Instance> {
        let mut list: Vec<Instance> = self
            .instances
            .values()
            .filter(|i| service.is_none_or(|s| &*i.service == s))
            .cloned()
            .collect();
        list.sort_by(|a, b| (&a.service, &a.instance_id).cmp(&(&b.service, &b.instance_id)));
        list
    }

    /// The transitions kept, oldest first.
    pub fn transitions(&self) -> impl Iterator<Item = &Transition> {
        self.events.iter()
    }

    /// Transitions so far per status reached, beats ignored as stale, instances not tracked.
    pub fn counts(&self) -> (Vec<(&'static str, u64)>, u64, u64) {
        let mut transitions: Vec<_> = self.transitions.iter().map(|(k, v)| (*k, *v)).collect();
        transitions.sort();
        (transitions, self.stale_beats, self.dropped)
    }

    /// Beats refused (from the future, contested, too long a TTL), takeovers undone, and the
    /// bytes of the instances and of the transitions kept.
    pub fn guard_counts(&self) -> (u64, u64, usize, usize) {
        (self.refused, self.conflicts, self.bytes, self.event_bytes)
    }
}

#[cfg(test)]
mod tests;
