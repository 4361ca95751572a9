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
//! ```
//! use std::time::{Duration, SystemTime};
//! use wayfinder_api::health::HealthReport;
//! use wayfinder_collector::decode::health::validate;
//! use wayfinder_collector::registry::{InstanceRegistry, InstanceStatus, RegistryConfig};
//!
//! let mut registry = InstanceRegistry::new(RegistryConfig::default());
//! let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
//! let beat = validate(HealthReport {
//!     service: "cart".into(), instance_id: "cart-1".into(), address: Some("10.0.0.7:8080".into()),
//!     status: "passing".into(), ttl_ms: Some(5_000), seq: Some(1), incarnation: None,
//!     output: None,
//! }).unwrap();
//! registry.beat(beat, t0);
//! assert_eq!(registry.instances(None)[0].status, InstanceStatus::Passing);
//! registry.tick(t0 + Duration::from_secs(6)); // the beat's TTL ran out
//! assert_eq!(registry.instances(None)[0].status, InstanceStatus::Critical);
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::clock::Clock;
use crate::decode::health::{HealthEvent, HealthStatus};
use crate::decode::{SpanFacts, SpanKind};
use crate::metrics::LogEvery;
use lineage::{Claim, Lineage, Verdict, replaced_by_takeover};

mod lineage;
mod metrics;
mod table;

pub use metrics::RegistryMetrics;
pub use table::health_events_schema;

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
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(600);

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

/// What an instance costs beside its strings (the map's entry, the struct, its lineage).
const INSTANCE_OVERHEAD: usize = 320;
/// What a transition costs beside its strings.
const EVENT_OVERHEAD: usize = 160;

/// The state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstanceStatus {
    /// Healthy, by its own word.
    Passing,
    /// Serving, with a warning.
    Warning,
    /// Not fit to serve: reported, or its beats stopped.
    Critical,
    /// Seen only in spans: alive while it keeps sending them.
    Unknown,
}

impl InstanceStatus {
    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Unknown => "unknown",
        }
    }

    /// Every status, for metrics.
    pub const ALL: [InstanceStatus; 4] =
        [Self::Passing, Self::Warning, Self::Critical, Self::Unknown];
}

/// Where the registry learned of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Its health events.
    Health,
    /// Only its spans.
    Traces,
}

impl Source {
    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Traces => "traces",
        }
    }
}

/// One instance in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `service.name`.
    pub service: Arc<str>,
    /// `service.instance.id`.
    pub instance_id: Arc<str>,
    /// Its state.
    pub status: InstanceStatus,
    /// Where the registry learned of it.
    pub source: Source,
    /// Where it serves, when known.
    pub address: Option<String>,
    /// When its last accepted beat came.
    pub last_beat: Option<SystemTime>,
    /// When its last span came.
    pub last_seen: Option<SystemTime>,
    /// Since when it has had its current status.
    pub since: SystemTime,
    /// The TTL of its last beat.
    pub ttl: Option<Duration>,
    /// The `seq` of its last beat.
    pub seq: Option<u64>,
    /// The output of its last beat.
    pub output: Option<String>,
    /// Which incarnation speaks for it (instances that beat).
    pub(crate) lineage: Option<Lineage>,
}

impl Instance {
    /// The bytes it takes in the registry.
    fn bytes(&self) -> usize {
        INSTANCE_OVERHEAD
            + self.service.len()
            + self.instance_id.len()
            + self.address.as_ref().map_or(0, String::len)
            + self.output.as_ref().map_or(0, String::len)
            + self
                .lineage
                .as_ref()
                .and_then(|l| l.address.as_ref())
                .map_or(0, String::len)
    }
}

/// A change of an instance's state: a row of the `health_events` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// When.
    pub time: SystemTime,
    /// `service.name`.
    pub service: Arc<str>,
    /// `service.instance.id`.
    pub instance_id: Arc<str>,
    /// The status before; `None` for a new instance.
    pub previous: Option<&'static str>,
    /// The status after: a status, or `removed`.
    pub status: &'static str,
    /// Why: `reported`, `ttl_expired`, `deregistered`, `down`, `traffic`, `no_traffic`.
    pub reason: &'static str,
    /// Its address then.
    pub address: Option<String>,
    /// The output of the beat, when a beat caused it.
    pub output: Option<String>,
}

impl Transition {
    /// The bytes it takes (as [`InstanceRegistry::record`] counts them).
    fn bytes(&self) -> usize {
        EVENT_OVERHEAD
            + self.service.len()
            + self.instance_id.len()
            + self.address.as_ref().map_or(0, String::len)
            + self.output.as_ref().map_or(0, String::len)
    }
}

/// What became of a beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatOutcome {
    /// It updated the registry.
    Accepted,
    /// Its `seq` was not newer than `last`: ignored.
    Stale {
        /// The newest `seq` seen from the instance.
        last: u64,
    },
    /// The registry is full and this instance is new: not tracked.
    Full,
    /// Another incarnation speaks for the instance and this one may not take over (see
    /// [`lineage`]).
    Contested,
    /// Its incarnation or `seq` is ahead of the collector's clock.
    Future,
    /// Its TTL is longer than `--max-heartbeat-ttl`.
    TtlTooLong {
        /// The longest TTL taken.
        max: Duration,
    },
}

impl BeatOutcome {
    /// Why the beat changed nothing, for its sender; `None` when it was accepted.
    pub fn reason(&self) -> Option<String> {
        Some(match self {
            Self::Accepted => return None,
            Self::Stale { last } => {
                format!("seq is not newer than the last one seen of its incarnation ({last})")
            }
            Self::Full => "the registry is full; this instance is not tracked".into(),
            Self::Contested => "this beat may not speak for the instance now: another \
                 incarnation of it is beating (a newer incarnation at another address while it \
                 lives, or while it is guarded after a conflict), or its seq leaps past the beats \
                 its incarnation could have sent"
                .into(),
            Self::Future => format!(
                "the incarnation or seq is ahead of the collector's clock in milliseconds by more \
                 than {}",
                humantime::format_duration(lineage::MAX_SKEW)
            ),
            Self::TtlTooLong { max } => format!(
                "health.ttl_ms is longer than --max-heartbeat-ttl ({})",
                humantime::format_duration(*max)
            ),
        })
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

/// The shared registry: the state machine behind a lock, with the clock.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<InstanceRegistry>,
    clock: Clock,
    /// The `health_events` batch of a registry version: every SQL query registers the table,
    /// and transitions are rare.
    table: Mutex<Option<(u64, datafusion::arrow::record_batch::RecordBatch)>>,
}

impl Registry {
    /// An empty registry reading time from `clock`.
    pub fn new(config: RegistryConfig, clock: Clock) -> Self {
        Self {
            inner: Mutex::new(InstanceRegistry::new(config)),
            clock,
            table: Mutex::new(None),
        }
    }

    /// A new `--deregister-after` (a configuration reload), from the next tick on.
    pub fn set_deregister_after(&self, deregister_after: Duration) {
        self.inner.lock().config.deregister_after = deregister_after;
    }

    /// A new `--max-heartbeat-ttl` (a configuration reload), for the beats that come next.
    pub fn set_max_ttl(&self, max_ttl: Duration) {
        self.inner.lock().config.max_ttl = max_ttl;
    }

    /// Applies a heartbeat that arrived now.
    pub fn beat(&self, event: HealthEvent) -> BeatOutcome {
        let now = self.clock.now();
        self.inner.lock().beat(event, now)
    }

    /// Applies a heartbeat that arrived at `at` (the replay of the write-ahead log at start:
    /// a heartbeat keeps the age it had, so that an instance that stopped beating before the
    /// restart is not taken for alive).
    pub fn beat_at(&self, event: HealthEvent, at: SystemTime) -> BeatOutcome {
        self.inner.lock().beat(event, at)
    }

    /// Applies the passing of time; run every second.
    pub fn tick(&self) {
        let now = self.clock.now();
        self.inner.lock().tick(now);
    }

    /// The instances, of one service or all.
    pub fn instances(&self, service: Option<&str>) -> Vec<Instance> {
        self.inner.lock().instances(service)
    }

    /// At most `limit` instances, of one service or all, by service then id, after the
    /// instance `after` (service, id); and whether more follow.
    pub fn instances_page(
        &self,
        service: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
    ) -> (Vec<Instance>, bool) {
        let inner = self.inner.lock();
        let mut keys: Vec<&Key> = inner
            .instances
            .keys()
            .filter(|(s, _)| service.is_none_or(|wanted| &**s == wanted))
            .filter(|(s, i)| after.is_none_or(|(a, b)| (&**s, &**i) > (a.as_str(), b.as_str())))
            .collect();
        keys.sort_unstable();
        let more = keys.len() > limit;
        let page = keys
            .into_iter()
            .take(limit)
            .filter_map(|key| inner.instances.get(key).cloned())
            .collect();
        (page, more)
    }

    /// Runs `f` on the state machine under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&InstanceRegistry) -> R) -> R {
        f(&self.inner.lock())
    }
}

impl crate::pipeline::FactsConsumer for Registry {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn consume(&self, facts: &[SpanFacts]) {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        // Spans of one resource are adjacent and share their strings: one look-up per run.
        let mut i = 0;
        while i < facts.len() {
            let span = &facts[i];
            let Some(instance) = &span.instance else {
                i += 1;
                continue;
            };
            let same = |other: &SpanFacts| {
                Arc::ptr_eq(&other.service, &span.service)
                    && other
                        .instance
                        .as_ref()
                        .is_some_and(|x| Arc::ptr_eq(x, instance))
            };
            let end = i + facts[i..].iter().take_while(|s| same(s)).count();
            // Where it serves: the `server.address` of one of its SERVER spans.
            let address = facts[i..end]
                .iter()
                .filter(|s| matches!(s.kind, SpanKind::Server | SpanKind::Consumer))
                .find_map(|s| s.peer.as_deref().filter(|p| p.server_address.is_some()))
                .and_then(crate::decode::PeerAttributes::peer_address);
            inner.observe(&span.service, instance, address, now);
            i = end.max(i + 1);
        }
    }
}

#[cfg(test)]
mod tests;
