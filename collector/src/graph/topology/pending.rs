//! A bounded map whose entries expire in insertion order: the halves of edges waiting for their
//! other half, and the recent spans that a child in another service may name as its parent.

use std::collections::VecDeque;
use std::time::SystemTime;

use hashbrown::HashMap;

use crate::decode::SpanRef;

/// Entries keyed by span, each with a deadline; at most `capacity` of them.
#[derive(Debug)]
pub(super) struct Expiring<V> {
    map: HashMap<SpanRef, (V, u64)>,
    /// Deadlines in insertion order (the wait is the same for all, so also in deadline order),
    /// with the entry's generation: an entry removed or replaced leaves a stale item here that is
    /// skipped when it reaches the front.
    order: VecDeque<(SystemTime, SpanRef, u64)>,
    generation: u64,
    capacity: usize,
}

impl<V> Expiring<V> {
    /// An empty map that holds at most `capacity` entries.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
            capacity: capacity.max(1),
        }
    }

    /// How many entries wait.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds (or replaces) an entry; when full, the oldest entry makes room and is returned.
    pub(super) fn insert(&mut self, key: SpanRef, value: V, deadline: SystemTime) -> Option<V> {
        let evicted = if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            self.pop_oldest()
        } else {
            None
        };
        self.generation += 1;
        self.map.insert(key, (value, self.generation));
        self.order.push_back((deadline, key, self.generation));
        if self.order.len() > 2 * self.capacity + 1024 {
            self.compact();
        }
        evicted
    }

    /// Removes and returns the entry for `key`.
    pub(super) fn remove(&mut self, key: &SpanRef) -> Option<V> {
        self.map.remove(key).map(|(value, _)| value)
    }

    /// The entry for `key`, left in place.
    pub(super) fn get(&self, key: &SpanRef) -> Option<&V> {
        self.map.get(key).map(|(value, _)| value)
    }

    /// Removes the entries whose deadline is at or before `now`, oldest first.
    pub(super) fn expire(&mut self, now: SystemTime, mut each: impl FnMut(V)) {
        while let Some(&(deadline, key, generation)) = self.order.front() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            if self.map.get(&key).is_some_and(|(_, g)| *g == generation)
                && let Some((value, _)) = self.map.remove(&key)
            {
                each(value);
            }
        }
    }

    fn pop_oldest(&mut self) -> Option<V> {
        while let Some((_, key, generation)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|(_, g)| *g == generation) {
                return self.map.remove(&key).map(|(value, _)| value);
            }
        }
        None
    }

    /// Drops the stale items of the order queue.
    fn compact(&mut self) {
        let map = &self.map;
        self.order
            .retain(|(_, key, generation)| map.get(key).is_some_and(|(_, g)| g == generation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(n: u8) -> SpanRef {
        SpanRef {
            trace_id: [1; 16],
            span_id: [n; 8],
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn expires_in_order_and_skips_removed() {
        let mut map = Expiring::new(10);
        map.insert(key(1), "a", at(10));
        map.insert(key(2), "b", at(11));
        map.insert(key(3), "c", at(12));
        assert_eq!(map.remove(&key(2)), Some("b"));
        let mut expired = Vec::new();
        map.expire(at(11), |v| expired.push(v));
        assert_eq!(expired, ["a"], "b was removed; c is not due");
        map.expire(at(12), |v| expired.push(v));
        assert_eq!(expired, ["a", "c"]);
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn full_map_evicts_the_oldest() {
        let mut map = Expiring::new(2);
        assert_eq!(map.insert(key(1), 1, at(10)), None);
        assert_eq!(map.insert(key(2), 2, at(11)), None);
        assert_eq!(
            map.insert(key(3), 3, at(12)),
            Some(1),
            "the oldest makes room"
        );
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.insert(key(3), 4, at(13)),
            None,
            "replacing takes no room"
        );
        let mut expired = Vec::new();
        map.expire(at(100), |v| expired.push(v));
        assert_eq!(
            expired,
            [2, 4],
            "the replaced entry expires at its new deadline only"
        );
    }

    #[test]
    fn stale_order_items_are_compacted() {
        let mut map = Expiring::new(1);
        for round in 0..5000u64 {
            map.insert(key(1), round, at(round));
            map.remove(&key(1));
        }
        assert!(map.order.len() <= 2 * map.capacity + 1024);
    }
}
