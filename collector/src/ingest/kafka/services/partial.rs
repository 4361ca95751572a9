//! A partial: what one collector saw of one server service in the last seconds, as it travels
//! on the partials topic (protobuf, keyed by the service), and the sum of every collector's
//! partials that the service's owner keeps ([`Figures`]).
//!
//! Partials replace, they do not add up: each carries, per instance (and per address its
//! callers aimed at) and per 5-second slot, this collector's whole count for that slot so far.
//! The owner keeps the latest per `(collector, key, slot)` and sums over collectors, so a
//! partial read twice (a new owner reading the topic again) counts once.

use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::graph::topology::stats::Latency;
use crate::graph::weights::window::{Bucket, Window};
use crate::graph::weights::{Buckets, Key};

/// The partial's format; another is refused (and counted) rather than misread.
pub(crate) const FORMAT: u32 = 1;

/// One collector's figures of one service.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Partial {
    /// [`FORMAT`].
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The collector (one id per process start: a restarted collector's counts start again).
    #[prost(string, tag = "2")]
    pub collector: String,
    /// `service.name` of the server.
    #[prost(string, tag = "3")]
    pub service: String,
    /// When it was sent, in milliseconds since the epoch.
    #[prost(uint64, tag = "4")]
    pub sent_ms: u64,
    /// Per instance (its SERVER spans).
    #[prost(message, repeated, tag = "5")]
    pub instances: Vec<KeyFigures>,
    /// Per address of an instance of the service (its callers' CLIENT spans).
    #[prost(message, repeated, tag = "6")]
    pub addresses: Vec<KeyFigures>,
    /// The service graph's series that belong to the service, per minute.
    #[prost(message, repeated, tag = "7")]
    pub topology: Vec<super::topology::SeriesFigures>,
}

/// An instance's or an address's slots.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct KeyFigures {
    /// `service.instance.id`, or the address.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its slots, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub slots: Vec<SlotFigures>,
}

/// What one slot holds.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SlotFigures {
    /// The 5-second slot since the epoch.
    #[prost(uint64, tag = "1")]
    pub slot: u64,
    /// Requests.
    #[prost(uint64, tag = "2")]
    pub requests: u64,
    /// Failed requests.
    #[prost(uint64, tag = "3")]
    pub errors: u64,
    /// The latency sketch ([`Latency::to_bytes`]).
    #[prost(bytes = "vec", tag = "4")]
    pub latency: Vec<u8>,
}

impl KeyFigures {
    pub(crate) fn new(key: String, buckets: &Buckets) -> Self {
        KeyFigures {
            key,
            slots: buckets
                .iter()
                .map(|(slot, b)| SlotFigures {
                    slot: *slot,
                    requests: b.requests,
                    errors: b.errors,
                    latency: b.latency.to_bytes(),
                })
                .collect(),
        }
    }
}

/// Why a partial was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PartialError {
    #[error("not a partial: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("format {0}, this collector reads {FORMAT}")]
    Format(u32),
    #[error("a latency sketch: {0}")]
    Sketch(String),
    #[error("service {0:?} is owned through another partition")]
    Misplaced(String),
}

impl Partial {
    /// Decodes and checks a partial.
    pub(crate) fn decode_checked(bytes: &[u8]) -> Result<Partial, PartialError> {
        let partial = <Partial as prost::Message>::decode(bytes)?;
        if partial.format != FORMAT {
            return Err(PartialError::Format(partial.format));
        }
        Ok(partial)
    }
}

/// A service's windows summed over the fleet: by instance, and by address.
pub(crate) type FleetWindows = (Vec<(Key, Window)>, Vec<(String, Window)>);

/// Per slot, each collector's bucket.
type Slots = BTreeMap<u64, BTreeMap<Arc<str>, Bucket>>;

/// The fleet's figures of one service: every collector's latest partial, per key and slot.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    instances: HashMap<String, Slots>,
    addresses: HashMap<String, Slots>,
}

impl Figures {
    /// Takes in a partial (replacing what the same collector said of the same slots); a
    /// partial with a broken sketch is taken not at all.
    pub(crate) fn take(&mut self, partial: &Partial) -> Result<(), PartialError> {
        let collector: Arc<str> = Arc::from(partial.collector.as_str());
        let instances = decode(&partial.instances)?;
        let addresses = decode(&partial.addresses)?;
        for (decoded, into) in [
            (instances, &mut self.instances),
            (addresses, &mut self.addresses),
        ] {
            for (key, slot, bucket) in decoded {
                into.entry_ref(key)
                    .or_default()
                    .entry(slot)
                    .or_default()
                    .insert(collector.clone(), bucket);
            }
        }
        Ok(())
    }

    /// Forgets slots before `oldest`; says whether anything is left.
    pub(crate) fn prune(&mut self, oldest: u64) -> bool {
        for map in [&mut self.instances, &mut self.addresses] {
            map.retain(|_, slots| {
                slots.retain(|slot, _| *slot >= oldest);
                !slots.is_empty()
            });
        }
        !(self.instances.is_empty() && self.addresses.is_empty())
    }

    /// The fleet's windows of `service`: every collector's buckets summed per slot.
    pub(crate) fn windows(&self, service: &Arc<str>) -> FleetWindows {
        let instances = self
            .instances
            .iter()
            .map(|(id, slots)| ((service.clone(), Arc::from(id.as_str())), window(slots)))
            .collect();
        let addresses = self
            .addresses
            .iter()
            .map(|(address, slots)| (address.clone(), window(slots)))
            .collect();
        (instances, addresses)
    }

    /// The instances that sent spans, each with the newest slot it sent them in.
    pub(crate) fn instances_seen(&self) -> impl Iterator<Item = (&str, u64)> {
        self.instances
            .iter()
            .filter_map(|(id, slots)| Some((id.as_str(), *slots.keys().next_back()?)))
    }
}

/// A partial's figures with their sketches decoded: `(key, slot, bucket)`.
fn decode(figures: &[KeyFigures]) -> Result<Vec<(&str, u64, Bucket)>, PartialError> {
    let mut out = Vec::new();
    for key in figures {
        for slot in &key.slots {
            let latency = Latency::from_bytes(&slot.latency).map_err(PartialError::Sketch)?;
            let bucket = Bucket {
                requests: slot.requests,
                errors: slot.errors.min(slot.requests),
                latency,
            };
            out.push((key.key.as_str(), slot.slot, bucket));
        }
    }
    Ok(out)
}

fn window(slots: &Slots) -> Window {
    let mut window = Window::default();
    for (slot, by_collector) in slots {
        for bucket in by_collector.values() {
            window.add(*slot, bucket);
        }
    }
    window
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn partial(collector: &str, slot: u64, latencies_ms: &[u64]) -> Partial {
        let mut bucket = Bucket::default();
        for ms in latencies_ms {
            bucket.requests += 1;
            bucket.latency.record(ms * 1_000_000);
        }
        let buckets = vec![(slot, bucket)];
        Partial {
            format: FORMAT,
            collector: collector.into(),
            service: "cart".into(),
            sent_ms: 0,
            instances: vec![KeyFigures::new("cart-1".into(), &buckets)],
            addresses: vec![],
            topology: vec![],
        }
    }

    #[test]
    fn partials_replace_per_collector_and_sum_across_collectors() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let slot = crate::graph::weights::window::slot_of(t0);
        let mut figures = Figures::default();
        // Collector a says 2 requests, then (the same slot, later) 3: the 3 replaces the 2.
        figures.take(&partial("a", slot, &[10, 20])).unwrap();
        figures.take(&partial("a", slot, &[10, 20, 30])).unwrap();
        // Collector b's slot adds; read twice, it counts once.
        let b = partial("b", slot, &[40]);
        figures.take(&b).unwrap();
        figures.take(&b).unwrap();
        let service: Arc<str> = Arc::from("cart");
        let (instances, _) = figures.windows(&service);
        assert_eq!(instances.len(), 1);
        let stats = instances[0].1.stats(t0, Duration::from_secs(30));
        assert_eq!(stats.requests, 4, "3 from a (its latest), 1 from b (once)");
        assert_eq!(stats.latency.count(), 4);
        let max = stats.latency.quantile(1.0).unwrap();
        assert!(
            (max - 40.0).abs() / 40.0 < 0.01,
            "the merged sketch holds b's 40 ms: {max}"
        );
        assert!(figures.prune(slot), "the slot is kept");
        assert!(!figures.prune(slot + 1), "older slots go");
    }

    #[test]
    fn another_format_or_a_broken_sketch_is_refused() {
        let mut wrong = partial("a", 1, &[10]);
        wrong.format = 2;
        let bytes = prost::Message::encode_to_vec(&wrong);
        assert!(matches!(
            Partial::decode_checked(&bytes),
            Err(PartialError::Format(2))
        ));
        assert!(Partial::decode_checked(b"\xff\xff\xff").is_err());
        let mut broken = partial("a", 1, &[10]);
        broken.instances[0].slots[0].latency = vec![1, 2, 3];
        assert!(Figures::default().take(&broken).is_err());
    }
}
