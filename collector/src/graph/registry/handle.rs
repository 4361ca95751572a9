//! The shared registry ([`Registry`]): the state machine behind a lock, with the collector's
//! clock, fed by the receivers (beats) and the ingest pipeline (spans).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::{BeatOutcome, Instance, InstanceRegistry, Key, RegistryConfig};
use crate::decode::health::HealthEvent;
use crate::decode::{SpanFacts, SpanKind};
use crate::util::clock::Clock;

/// The shared registry: the state machine behind a lock, with the clock.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<InstanceRegistry>,
    clock: Clock,
    /// The `health_events` batch of a registry version: every SQL query registers the table,
    /// and transitions are rare.
    pub(super) table: Mutex<Option<(u64, datafusion::arrow::record_batch::RecordBatch)>>,
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

    /// Notes that `instance` of `service` sent spans at `at` (another collector saw them).
    pub(crate) fn observe_at(&self, service: &Arc<str>, instance: &Arc<str>, at: SystemTime) {
        let mut inner = self.inner.lock();
        let key: Key = (service.clone(), instance.clone());
        let newer = inner
            .instances
            .get(&key)
            .is_none_or(|i| i.last_seen.is_none_or(|seen| seen < at));
        if newer {
            inner.observe(service, instance, None, at);
        }
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
        // The keys are copied out (two reference counts each) and sorted outside the lock,
        // which beats and span batches wait for.
        let mut keys: Vec<Key> = self
            .inner
            .lock()
            .instances
            .keys()
            .filter(|(s, _)| service.is_none_or(|wanted| &**s == wanted))
            .filter(|(s, i)| after.is_none_or(|(a, b)| (&**s, &**i) > (a.as_str(), b.as_str())))
            .cloned()
            .collect();
        let more = keys.len() > limit;
        if more {
            keys.select_nth_unstable(limit);
            keys.truncate(limit);
        }
        keys.sort_unstable();
        // An instance removed in between is left out of the page.
        let inner = self.inner.lock();
        let page = keys
            .iter()
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
