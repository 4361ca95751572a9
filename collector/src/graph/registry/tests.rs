//! The health state machine, step by step with explicit times, and under tokio's paused clock.

use std::time::{Duration, SystemTime};

use super::*;
use crate::decode::health::{HealthEvent, HealthStatus};
use crate::util::clock::Clock;

const T0: u64 = 1_800_000_000;

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + seconds)
}

fn beat(status: HealthStatus, seq: u64) -> HealthEvent {
    HealthEvent {
        service: "cart".into(),
        instance_id: "cart-1".into(),
        address: Some("10.0.0.7:8080".into()),
        status,
        ttl: Duration::from_secs(15),
        seq: Some(seq),
        incarnation: None,
        output: None,
    }
}

fn status(registry: &InstanceRegistry) -> Option<InstanceStatus> {
    registry.instances(Some("cart")).first().map(|i| i.status)
}

/// `(previous, status, reason)` of every transition.
fn history(registry: &InstanceRegistry) -> Vec<(Option<&'static str>, &'static str, &'static str)> {
    registry
        .transitions()
        .map(|t| (t.previous, t.status, t.reason))
        .collect()
}

#[test]
fn state_machine_steps() {
    use HealthStatus::{Critical, Down, Passing, Warning};
    use InstanceStatus as S;
    let mut registry = InstanceRegistry::new(RegistryConfig::default());
    // (time, beat to send, expected status after it and a tick at that time, why)
    #[rustfmt::skip]
    let steps: Vec<(u64, Option<HealthEvent>, Option<S>, &str)> = vec![
        (0, Some(beat(Passing, 1)), Some(S::Passing), "a first beat registers it"),
        (10, Some(beat(Warning, 2)), Some(S::Warning), "warning as reported"),
        (12, Some(beat(Passing, 1)), Some(S::Warning), "an older seq is ignored"),
        (24, None, Some(S::Warning), "the beat of t=10 holds until t=25"),
        (25, None, Some(S::Critical), "no beat within the TTL: critical"),
        (30, Some(beat(Passing, 3)), Some(S::Passing), "a new beat brings it back"),
        (45, None, Some(S::Critical), "silent again"),
        (104, None, Some(S::Critical), "critical for 59 s: still listed"),
        (105, None, None, "critical for 60 s: deregistered"),
        (106, Some(beat(Critical, 4)), None, "still critical: stays removed"),
        (107, Some(beat(Passing, 5)), Some(S::Passing), "fit again: registers again"),
        (108, Some(beat(Down, 6)), None, "down removes it at once"),
        (109, Some(beat(Passing, 5)), None, "a late, older beat does not bring it back"),
    ];
    for (time, event, want, why) in steps {
        if let Some(event) = event {
            registry.beat(event, at(time));
        }
        registry.tick(at(time));
        assert_eq!(status(&registry), want, "t={time}: {why}");
    }
    // Spans the instance flushed after its `down` beat do not make it `unknown`.
    registry.observe(&Arc::from("cart"), &Arc::from("cart-1"), None, at(110));
    assert_eq!(status(&registry), None, "late spans after down");
    assert_eq!(
        history(&registry),
        [
            (None, "passing", "reported"),
            (Some("passing"), "warning", "reported"),
            (Some("warning"), "critical", "ttl_expired"),
            (Some("critical"), "passing", "reported"),
            (Some("passing"), "critical", "ttl_expired"),
            (Some("critical"), "removed", "deregistered"),
            (None, "passing", "reported"),
            (Some("passing"), "down", "down"),
        ],
        "every transition is one row"
    );
    let (_, stale, _) = registry.counts();
    assert_eq!(stale, 2);
}

#[test]
fn instances_seen_only_in_spans_are_unknown_while_they_serve() {
    let mut registry = InstanceRegistry::new(RegistryConfig::default());
    let (service, instance) = (Arc::from("cart"), Arc::from("cart-9"));
    registry.observe(&service, &instance, Some("10.0.0.9:80".into()), at(0));
    registry.observe(&service, &instance, None, at(50));
    registry.tick(at(100));
    let listed = registry.instances(None);
    assert_eq!(listed[0].status, InstanceStatus::Unknown);
    assert_eq!(listed[0].source, Source::Traces);
    assert_eq!(listed[0].address.as_deref(), Some("10.0.0.9:80"));
    registry.tick(at(110));
    assert!(registry.instances(None).is_empty(), "60 s without a span");
    // A beat turns a traffic-only instance into a health-reporting one.
    registry.observe(&service, &instance, None, at(200));
    let mut event = beat(HealthStatus::Passing, 1);
    event.instance_id = "cart-9".into();
    registry.beat(event, at(201));
    let listed = registry.instances(None);
    assert_eq!(
        (listed[0].status, listed[0].source),
        (InstanceStatus::Passing, Source::Health)
    );
}

#[tokio::test(start_paused = true)]
async fn ttl_expires_under_the_paused_clock() {
    let registry = Registry::new(RegistryConfig::default(), Clock::starting_at(at(0)));
    registry.beat(beat(HealthStatus::Passing, 1));
    assert_eq!(registry.health_events().unwrap().num_rows(), 1);
    tokio::time::advance(Duration::from_secs(14)).await;
    registry.tick();
    assert_eq!(registry.instances(None)[0].status, InstanceStatus::Passing);
    tokio::time::advance(Duration::from_secs(1)).await;
    registry.tick();
    assert_eq!(registry.instances(None)[0].status, InstanceStatus::Critical);
    tokio::time::advance(Duration::from_secs(60)).await;
    registry.tick();
    assert!(registry.instances(None).is_empty());
    let batch = registry.health_events().unwrap();
    assert_eq!(
        batch.num_rows(),
        3,
        "passing, critical, removed: the cached batch was rebuilt"
    );
}

/// A beat of `cart-1` from incarnation `incarnation` (ms) with `seq`, at `address`.
fn claim(incarnation: u64, seq: u64, address: &str, status: HealthStatus) -> HealthEvent {
    HealthEvent {
        incarnation: Some(incarnation),
        address: Some(address.into()),
        ..beat(status, seq)
    }
}

fn address(registry: &InstanceRegistry) -> Option<String> {
    registry
        .instances(Some("cart"))
        .first()
        .and_then(|i| i.address.clone())
}

#[test]
fn a_strangers_beats_cannot_take_over_a_live_instance() {
    use HealthStatus::{Critical, Down, Passing};
    use InstanceStatus as S;
    let ms = |seconds: u64| (T0 + seconds) * 1000;
    let real = ms(0) - 3_600_000; // started an hour before t=0
    let (here, fake) = ("10.0.0.7:8080", "10.6.6.6:1");
    let mut registry = InstanceRegistry::new(RegistryConfig::default());
    // (time, beat, status and address after it, why)
    #[rustfmt::skip]
    let steps: Vec<(u64, HealthEvent, Option<S>, &str, &str)> = vec![
        (0, claim(real, real + 700, here, Passing), Some(S::Passing), here, "the real instance"),
        (1, claim(real, u64::MAX, fake, Critical), Some(S::Passing), here,
            "seq 2^64-1 is from the future: refused (it locked the instance out for good)"),
        (2, claim(ms(2), ms(2), fake, Critical), Some(S::Passing), here,
            "a newer incarnation at another address while the real one lives: refused"),
        (3, claim(real, ms(3), fake, Critical), Some(S::Passing), here,
            "seq = now in ms within the real incarnation: more beats than it could have sent"),
        (4, claim(ms(4), ms(4), here, Critical), Some(S::Critical), here,
            "a newer incarnation at the same address takes over at once, as a restart would"),
        (5, claim(real, real + 701, here, Passing), Some(S::Passing), here,
            "the replaced incarnation beats again: it is put back, and guarded"),
        (6, claim(ms(6), ms(6), here, Down), Some(S::Passing), here,
            "while it beats, no newer incarnation takes over"),
        (10, claim(real, real + 702, here, Passing), Some(S::Passing), here, "the real beats go on"),
        (40, claim(ms(40), ms(40), here, Passing), Some(S::Passing), here,
            "quiet past its TTL (and critical), the guarded incarnation gives way to a restart"),
        (41, claim(real, real + 703, here, Passing), Some(S::Passing), here,
            "the restart's predecessor beats once more: a conflict again, it is put back"),
    ];
    for (time, event, status_after, address_after, why) in steps {
        registry.beat(event, at(time));
        registry.tick(at(time));
        assert_eq!(status(&registry), status_after, "t={time}: {why}");
        if status_after.is_some() {
            assert_eq!(
                address(&registry).as_deref(),
                Some(address_after),
                "t={time}: {why}"
            );
        }
    }
    let (refused, conflicts, _, _) = registry.guard_counts();
    assert_eq!((refused, conflicts), (4, 2));
}

#[test]
fn a_restarted_instance_is_back_at_once() {
    use HealthStatus::{Down, Passing};
    let ms = |seconds: u64| (T0 + seconds) * 1000;
    let here = "10.0.0.7:8080";
    // Each row: how the first process ended, and why the second is back at once.
    let cases: [(Option<HealthStatus>, &str); 2] = [
        (
            Some(Down),
            "after it said down (its tombstone lasts an hour)",
        ),
        (None, "after a crash, before its TTL ran out"),
    ];
    for (end, why) in cases {
        let mut registry = InstanceRegistry::new(RegistryConfig::default());
        registry.beat(claim(ms(0), ms(0), here, Passing), at(0));
        if let Some(end) = end {
            registry.beat(claim(ms(0), ms(0) + 1, here, end), at(1));
        }
        assert_eq!(
            registry.beat(claim(ms(2), ms(2), here, Passing), at(2)),
            BeatOutcome::Accepted,
            "{why}"
        );
        assert_eq!(status(&registry), Some(InstanceStatus::Passing), "{why}");
    }
}

#[test]
fn the_registry_is_bounded_by_bytes_and_ttl() {
    let config = RegistryConfig {
        max_bytes: 64 << 10,
        max_event_bytes: 16 << 10,
        ..RegistryConfig::default()
    };
    let mut registry = InstanceRegistry::new(config);
    let big = |i: usize| HealthEvent {
        instance_id: format!("{i:0>256}"),
        address: Some("a".repeat(256)),
        output: Some("o".repeat(4096)),
        ..beat(HealthStatus::Passing, 1)
    };
    let mut full = 0;
    for i in 0..100 {
        if registry.beat(big(i), at(0)) == BeatOutcome::Full {
            full += 1;
        }
    }
    let (_, _, bytes, event_bytes) = registry.guard_counts();
    assert!(
        full > 80,
        "about 13 instances of 5 KB fit in 64 KiB: {full} refused"
    );
    assert!(
        bytes <= 64 << 10 && event_bytes <= 16 << 10,
        "{bytes} {event_bytes}"
    );
    let too_long = HealthEvent {
        ttl: Duration::from_secs(86_400),
        ..beat(HealthStatus::Passing, 1)
    };
    assert_eq!(
        registry.beat(too_long, at(0)),
        BeatOutcome::TtlTooLong {
            max: DEFAULT_MAX_TTL
        }
    );
}

mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    #[test]
    fn example() {
        use crate::decode::health::validate;
        use crate::graph::registry::{InstanceRegistry, InstanceStatus, RegistryConfig};
        use std::time::{Duration, SystemTime};
        use wayfinder_api::health::HealthReport;

        let mut registry = InstanceRegistry::new(RegistryConfig::default());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let beat = validate(HealthReport {
            service: "cart".into(),
            instance_id: "cart-1".into(),
            address: Some("10.0.0.7:8080".into()),
            status: "passing".into(),
            ttl_ms: Some(5_000),
            seq: Some(1),
            incarnation: None,
            output: None,
        })
        .unwrap();
        registry.beat(beat, t0);
        assert_eq!(registry.instances(None)[0].status, InstanceStatus::Passing);
        registry.tick(t0 + Duration::from_secs(6)); // the beat's TTL ran out
        assert_eq!(registry.instances(None)[0].status, InstanceStatus::Critical);
    }
}
