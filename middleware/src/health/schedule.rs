//! When the reporter beats: a random first delay in `[0, interval)` (Consul's stagger), then
//! every `interval ± 20%`, so that a fleet started together never beats together; after `n`
//! failed sends in a row, a wait drawn in `[cap/2, cap]` with `cap = min(interval × 2ⁿ, ttl)`
//! (exponential backoff with "equal jitter": spread, but never retrying at once, and never
//! waiting past the TTL).

use std::time::Duration;

use backon::BackoffBuilder;

/// The delay before the first beat (`unit` in `[0, 1)`).
pub(crate) fn first_delay(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(unit.clamp(0.0, 0.999_999))
}

/// The delay between two beats that were sent (`unit` in `[0, 1)`): `interval × [0.8, 1.2)`.
pub(crate) fn next_delay(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
}

/// The delay after `failures` failed sends in a row (≥ 1).
pub(crate) fn backoff_delay(
    interval: Duration,
    ttl: Duration,
    failures: u32,
    unit: f64,
) -> Duration {
    let cap = backon::ExponentialBuilder::new()
        .with_min_delay(interval.saturating_mul(2))
        .with_max_delay(ttl.max(interval))
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(failures.saturating_sub(1) as usize)
        .unwrap_or(ttl)
        .min(ttl.max(interval));
    cap.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(5);
    const TTL: Duration = Duration::from_secs(15);

    #[test]
    fn a_fleet_started_together_spreads_its_beats() {
        let mut rng = fastrand::Rng::with_seed(5);
        let firsts: Vec<Duration> = (0..1000)
            .map(|_| first_delay(INTERVAL, rng.f64()))
            .collect();
        assert!(
            firsts.iter().all(|d| *d < INTERVAL),
            "the first beat comes within one interval"
        );
        // Ten slots of half a second: each holds about a tenth of the fleet, none is a storm.
        let mut slots = [0u32; 10];
        for d in &firsts {
            slots[(d.as_millis() / 500) as usize] += 1;
        }
        assert!(
            slots.iter().all(|n| (60..=140).contains(n)),
            "spread: {slots:?}"
        );

        let rows = [
            (0.0, 4000, "at least 80% of the interval"),
            (0.5, 5000, "the interval on average"),
            (1.0, 6000, "at most 120%"),
        ];
        for (unit, ms, reason) in rows {
            assert_eq!(
                next_delay(INTERVAL, unit),
                Duration::from_millis(ms),
                "{reason}"
            );
        }
    }

    #[test]
    fn backoff_grows_but_never_past_the_ttl() {
        let rows = [
            (
                1,
                1.0,
                10_000,
                "the first failure waits up to twice the interval",
            ),
            (1, 0.0, 5_000, "and at least half that"),
            (2, 1.0, 15_000, "then doubles, capped at the TTL"),
            (9, 1.0, 15_000, "and stays capped"),
            (9, 0.0, 7_500, "never retrying at once"),
        ];
        for (failures, unit, ms, reason) in rows {
            let delay = backoff_delay(INTERVAL, TTL, failures, unit);
            assert_eq!(delay.as_millis().abs_diff(ms), 0, "{reason}: {delay:?}");
        }
    }
}
