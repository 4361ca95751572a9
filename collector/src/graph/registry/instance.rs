//! What the registry holds and answers: its instances ([`Instance`]), the changes of their
//! state ([`Transition`], the rows of `health_events`), and what became of a beat
//! ([`BeatOutcome`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::lineage::{self, Lineage};

/// What an instance costs beside its strings (the map's entry, the struct, its lineage).
pub(super) const INSTANCE_OVERHEAD: usize = 320;
/// What a transition costs beside its strings.
pub(super) const EVENT_OVERHEAD: usize = 160;

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
    /// Its form in `GET /api/v1/instances`.
    pub(crate) fn to_api(&self) -> wayfinder_api::topology::Instance {
        use crate::util::clock::rfc3339;
        wayfinder_api::topology::Instance {
            service: self.service.to_string(),
            instance_id: self.instance_id.to_string(),
            status: self.status.as_str().to_owned(),
            address: self.address.clone(),
            source: self.source.as_str().to_owned(),
            last_beat: self.last_beat.map(rfc3339),
            last_seen: self.last_seen.map(rfc3339),
            since: rfc3339(self.since),
            ttl_ms: self
                .ttl
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            seq: self.seq,
            output: self.output.clone(),
        }
    }

    /// The bytes it takes in the registry.
    pub(super) fn bytes(&self) -> usize {
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
    pub(super) fn bytes(&self) -> usize {
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
