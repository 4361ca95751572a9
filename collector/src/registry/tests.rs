//! The health state machine, step by step with explicit times, and under tokio's paused clock.

use std::time::{Duration, SystemTime};

use super::*;
use crate::decode::health::{HealthEvent, HealthStatus};

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
