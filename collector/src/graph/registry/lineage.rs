//! Which heartbeat speaks for an instance: the arbitration between beats of one instance id.
//!
//! A beat carries the instance's incarnation (when its process started, in Unix milliseconds;
//! the middleware sends it as `health.incarnation`) and a `seq` that grows within it. A newer
//! incarnation is a restart: it takes over at once, so that a restarted instance is back
//! without waiting for the old one's TTL or tombstone. A stranger can claim a newer
//! incarnation too, so the takeover is checked afterwards: if the incarnation it replaced
//! beats again, two processes claim the instance, and the one that was there first is put
//! back and guarded: while it keeps beating, no newer incarnation takes over. A newer
//! incarnation at another address than a live one (its last beat within its TTL) waits until
//! the live one is quiet. A beat from the future (an incarnation or a `seq` ahead of the
//! collector's clock, in milliseconds, by more than [`MAX_SKEW`]) is refused: one beat with
//! `seq` 2^64−1 outranked every real beat of an instance for ever.
//!
//! This is the rule of a registry without authentication (Consul without ACLs, Nacos without
//! auth): an impostor can speak for an instance for at most one of its beat intervals, not
//! take it over. With `--ingest-token-file`, strangers cannot beat at all.
//!
//! Within an incarnation, `seq` grows by one a beat: a beat whose `seq` runs further ahead
//! than the beats its incarnation could have sent since its last one (ten a second, and ten
//! besides) is refused, so that one beat cannot outrank every later beat of the process.
//!
//! Beats without an incarnation (older middleware, other senders) are the oldest incarnation
//! of all, ordered by `seq`: an instance heard with an incarnation takes no beat without one,
//! unless it is the incarnation replaced, beating again; and a sender without incarnations
//! that restarts (its `seq` leaping ahead) comes back once its old beats are quiet.

use std::time::{Duration, SystemTime};

/// How far ahead of the collector's clock a beat's incarnation or `seq` (as milliseconds since
/// the epoch) may be: clocks of hosts disagree by less.
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(300);

/// How many beats an incarnation may send a second, and besides, as `seq` steps: a sender
/// beats every few seconds, and retries sooner.
const BEATS_PER_SECOND: u64 = 10;
const BEATS_BESIDES: u64 = 10;

/// What is known of the incarnation that speaks for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lineage {
    /// Its incarnation; `None` for beats that carry none.
    pub(crate) incarnation: Option<u64>,
    /// The `seq` of its last beat.
    pub(crate) seq: Option<u64>,
    /// When its last beat came, and how long that beat holds.
    pub(crate) last_beat: SystemTime,
    pub(crate) ttl: Duration,
    /// Where it serves.
    pub(crate) address: Option<String>,
    /// The incarnation it took over from: if that one beats again, two processes claim the
    /// instance.
    pub(crate) replaced: Option<Replaced>,
    /// Set once a replaced incarnation came back: newer incarnations are refused while it
    /// keeps beating.
    pub(crate) guarded: bool,
}

/// An incarnation that was taken over from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replaced {
    pub(crate) incarnation: Option<u64>,
    /// Its last `seq`.
    pub(crate) seq: Option<u64>,
    /// When its last beat runs out: until then it may still live.
    pub(crate) until: SystemTime,
}

/// A beat, as the arbitration sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim<'a> {
    pub(crate) incarnation: Option<u64>,
    pub(crate) seq: Option<u64>,
    pub(crate) address: Option<&'a str>,
}

/// What becomes of a beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It continues the incarnation that speaks for the instance.
    Continue,
    /// A newer incarnation: it speaks for the instance from now on (a restart).
    TakeOver,
    /// The incarnation that was replaced beats again: it speaks for the instance again, and
    /// is guarded.
    Restore,
    /// Not newer than the last beat of its incarnation, or of an older incarnation.
    Stale,
    /// A newer incarnation refused while the current one is guarded, or lives at another
    /// address; or a beat without an incarnation for an instance that has one.
    Contested,
    /// Its incarnation or `seq` is ahead of the clock.
    Future,
}

/// Whether `claim` is from the future at `now`.
pub(crate) fn from_the_future(claim: &Claim<'_>, now: SystemTime) -> bool {
    let horizon = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(MAX_SKEW)
        .as_millis();
    [claim.incarnation, claim.seq]
        .into_iter()
        .flatten()
        .any(|value| u128::from(value) > horizon)
}

/// Judges `claim` at `now` against `current`, the lineage that speaks for the instance.
/// Incarnations compare as options: a beat without one is older than any with one.
pub(crate) fn judge(current: &Lineage, claim: &Claim<'_>, now: SystemTime) -> Verdict {
    if from_the_future(claim, now) {
        return Verdict::Future;
    }
    let newer_seq = |last: Option<u64>| match (claim.seq, last) {
        (Some(seq), Some(last)) => seq > last,
        _ => true,
    };
    let live = now < current.last_beat + current.ttl;
    if claim.incarnation == current.incarnation {
        if !newer_seq(current.seq) {
            return Verdict::Stale;
        }
        let elapsed = now.duration_since(current.last_beat).unwrap_or_default();
        let possible = BEATS_BESIDES
            .saturating_add(BEATS_PER_SECOND.saturating_mul(elapsed.as_secs().saturating_add(1)));
        let leap = match (claim.seq, current.seq) {
            (Some(seq), Some(last)) => seq.saturating_sub(last) > possible,
            _ => false,
        };
        // A leap while the instance lives is not its next beat. Without incarnations, a
        // restarted sender's seq leaps too (it starts at its clock): it comes back once the
        // old beats are quiet.
        return if leap && live {
            Verdict::Contested
        } else {
            Verdict::Continue
        };
    }
    if claim.incarnation > current.incarnation {
        // A claim without an address, for an instance that has one, is elsewhere too.
        let elsewhere = current
            .address
            .as_deref()
            .is_some_and(|old| claim.address != Some(old));
        return if live && (current.guarded || elsewhere) {
            Verdict::Contested
        } else {
            Verdict::TakeOver
        };
    }
    // An older incarnation: the one replaced, beating again, or a late beat.
    match &current.replaced {
        Some(replaced) if replaced.incarnation == claim.incarnation && newer_seq(replaced.seq) => {
            Verdict::Restore
        }
        _ => Verdict::Stale,
    }
}

/// What `current` remembers as replaced when a newer incarnation takes over from it at `now`:
/// itself, unless it took over from one that may still live (its TTL not run out), which it
/// keeps, so that a second claim cannot push the first claimant out of reach.
pub(crate) fn replaced_by_takeover(current: &Lineage, now: SystemTime) -> Replaced {
    match &current.replaced {
        Some(earlier) if now < earlier.until => earlier.clone(),
        _ => Replaced {
            incarnation: current.incarnation,
            seq: current.seq,
            until: current.last_beat + current.ttl,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_800_000_000_000;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn current(incarnation: Option<u64>, seq: u64) -> Lineage {
        Lineage {
            incarnation,
            seq: Some(seq),
            last_beat: at(NOW_MS - 1_000),
            ttl: Duration::from_secs(15),
            address: Some("10.0.0.7:8080".into()),
            replaced: None,
            guarded: false,
        }
    }

    fn claim(incarnation: Option<u64>, seq: u64, address: &str) -> Claim<'_> {
        Claim {
            incarnation,
            seq: Some(seq),
            address: Some(address),
        }
    }

    #[test]
    fn who_speaks_for_an_instance() {
        let started = NOW_MS - 3_600_000;
        let live = current(Some(started), started + 700);
        let mut taken = current(Some(NOW_MS - 5_000), NOW_MS - 4_999);
        taken.replaced = Some(replaced_by_takeover(&live, at(NOW_MS - 5_000)));
        let mut guarded = live.clone();
        guarded.guarded = true;
        let mut quiet_guarded = guarded.clone();
        quiet_guarded.last_beat = at(NOW_MS - 60_000);
        let legacy = current(None, started + 700);
        let here = "10.0.0.7:8080";
        // Each row: who speaks now, the beat, the verdict, and why.
        let cases: Vec<(&Lineage, Claim, Verdict, &str)> = vec![
            (
                &live,
                claim(Some(started), started + 701, here),
                Verdict::Continue,
                "the next beat",
            ),
            (
                &live,
                claim(Some(started), started + 720, here),
                Verdict::Continue,
                "retries between beats: twenty steps in a second",
            ),
            (
                &live,
                claim(Some(started), NOW_MS, here),
                Verdict::Contested,
                "seq = now in ms within the incarnation: more beats than it could have sent",
            ),
            (
                &live,
                claim(Some(started), started + 700, here),
                Verdict::Stale,
                "the same seq again",
            ),
            (
                &live,
                claim(Some(NOW_MS - 10), NOW_MS - 9, here),
                Verdict::TakeOver,
                "a restart at the same address: back at once",
            ),
            (
                &live,
                claim(Some(NOW_MS - 10), NOW_MS - 9, "10.6.6.6:1"),
                Verdict::Contested,
                "a newer incarnation elsewhere while this one lives",
            ),
            (
                &taken,
                claim(Some(started), started + 701, here),
                Verdict::Restore,
                "the replaced incarnation beats again: two claim the instance",
            ),
            (
                &taken,
                claim(Some(started), started + 700, here),
                Verdict::Stale,
                "a beat the replaced incarnation sent before the takeover",
            ),
            (
                &guarded,
                claim(Some(NOW_MS - 10), NOW_MS - 9, here),
                Verdict::Contested,
                "guarded while it keeps beating",
            ),
            (
                &quiet_guarded,
                claim(Some(NOW_MS - 10), NOW_MS - 9, here),
                Verdict::TakeOver,
                "a guarded incarnation quiet past its TTL is gone",
            ),
            (
                &live,
                claim(Some(started), u64::MAX, here),
                Verdict::Future,
                "seq 2^64-1: the review's lock-out",
            ),
            (
                &live,
                claim(Some(NOW_MS + 3_600_000), 1, here),
                Verdict::Future,
                "an incarnation an hour ahead",
            ),
            (
                &live,
                claim(Some(NOW_MS + 60_000), NOW_MS + 60_000, here),
                Verdict::TakeOver,
                "a minute of skew is a clock, not an attack",
            ),
            (
                &live,
                claim(None, NOW_MS, here),
                Verdict::Stale,
                "no incarnation for an instance that has one: the oldest of all",
            ),
            (
                &legacy,
                claim(None, started + 701, here),
                Verdict::Continue,
                "beats without incarnations order by seq",
            ),
            (
                &legacy,
                claim(None, NOW_MS + 200_000, here),
                Verdict::Contested,
                "without incarnations, a seq leap while the instance lives",
            ),
            (
                &legacy,
                claim(Some(started), started + 1, here),
                Verdict::TakeOver,
                "an upgraded instance starts sending one, at its address",
            ),
            (
                &legacy,
                claim(Some(NOW_MS), NOW_MS, "10.6.6.6:1"),
                Verdict::Contested,
                "an incarnation elsewhere while the instance without one lives",
            ),
        ];
        for (current, claim, want, why) in cases {
            assert_eq!(judge(current, &claim, at(NOW_MS)), want, "{why}");
        }
    }

    #[test]
    fn a_second_claim_keeps_the_first_claimant_within_reach() {
        let started = NOW_MS - 3_600_000;
        let live = current(Some(started), started + 700);
        let here = "10.0.0.7:8080";
        // A stranger claims A+1, then A+2, at the instance's address.
        let first = Lineage {
            replaced: Some(replaced_by_takeover(&live, at(NOW_MS))),
            ..current(Some(started + 1), started + 1)
        };
        let second = Lineage {
            replaced: Some(replaced_by_takeover(&first, at(NOW_MS))),
            ..current(Some(started + 2), started + 2)
        };
        assert_eq!(
            judge(
                &second,
                &claim(Some(started), started + 701, here),
                at(NOW_MS)
            ),
            Verdict::Restore,
            "the real incarnation, beating again, is restored past both claims"
        );
    }
}
