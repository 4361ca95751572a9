//! The choice per request: weighted power of two choices.
//!
//! Two distinct candidates are drawn, each with probability proportional to its share (the
//! collector's weight times the local slow-start ramp, or the ramp alone when the weights are
//! stale): the first among all, the second among the others. The second gets the request only
//! when its local cost — Peak-EWMA round trip × (requests in flight + 1), tower's `PeakEwma`
//! load — is lower than the first's by more than the tolerance (`second × (1 + tolerance) <
//! first`); otherwise the first does, so that when the local costs are within the tolerance the
//! pick is exactly proportional to the shares (`P(i) = P(first = i) = sᵢ`) and the central
//! weights decide. The tolerance is 0 by default (the lower cost wins, as in tower). It exists
//! because Peak-EWMA is noisy: between two healthy endpoints it differs by 10–60% from one
//! moment to the next, and a strict comparison hands the whole pair to whichever leads at the
//! moment (a light client of two equally weighted instances saw 34% and 64% of its calls go to
//! them in the demo); at heavy load, though, small differences are real queueing
//! (`docs/balancing.md`). When an endpoint is locally slower or busier it loses its
//! comparisons, so the local view corrects the central weights within a request; and because the candidates are random,
//! many clients with the same weights do not herd onto the same endpoint (Mitzenmacher's two
//! choices, as tower's `balance::p2c` and Finagle use them; drawing by weight is how gRPC's
//! weighted round robin (A58) and Envoy's weighted least-request spread unequal shares).
//!
//! The two candidates are distinct, as in tower's p2c: a pair drawn with replacement would be
//! the same endpoint `Σ sᵢ²` of the time (10% with ten equal endpoints), and those picks would
//! go out with no comparison at all, as with a random choice. The price:
//! when costs differ by noise alone, unequal shares are flattened a little towards each other
//! (with shares ½, ¼, ¼ and coin-flip comparisons the first gets 42% instead of 50%).

/// One endpoint in a choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    /// How likely it is drawn (any positive scale).
    pub(crate) share: f64,
    /// Its local cost; lower wins.
    pub(crate) cost: f64,
}

/// The index of the chosen candidate; `None` when no candidate has a positive share.
pub(crate) fn choose(
    candidates: &[Candidate],
    tolerance: f64,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let total: f64 = candidates
        .iter()
        .map(|c| c.share)
        .filter(|s| *s > 0.0)
        .sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let first = draw(candidates, total, None, rng);
    let rest = total - candidates[first].share;
    if rest <= 0.0 || candidates.iter().filter(|c| c.share > 0.0).count() < 2 {
        return Some(first);
    }
    let second = draw(candidates, rest, Some(first), rng);
    if candidates[second].cost * (1.0 + tolerance) < candidates[first].cost {
        Some(second)
    } else {
        Some(first)
    }
}

/// One candidate, other than `skip`, drawn in proportion to its share (`total` is the sum of
/// the shares it draws from).
fn draw(
    candidates: &[Candidate],
    total: f64,
    skip: Option<usize>,
    rng: &mut fastrand::Rng,
) -> usize {
    let mut point = rng.f64() * total;
    let mut last = 0;
    for (i, candidate) in candidates.iter().enumerate() {
        if candidate.share <= 0.0 || Some(i) == skip {
            continue;
        }
        last = i;
        if point < candidate.share {
            return i;
        }
        point -= candidate.share;
    }
    // Rounding left the point past the end: the last positive share.
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pearson's χ² statistic of `counts` against `expected` shares.
    fn chi_square(counts: &[u64], expected: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        let total: f64 = expected.iter().sum();
        counts
            .iter()
            .zip(expected)
            .map(|(&c, &e)| {
                let e = e / total * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn equal_costs_pick_in_proportion_to_the_shares() {
        let shares = [0.5, 0.25, 0.15, 0.1];
        let candidates: Vec<_> = shares
            .iter()
            .map(|&share| Candidate { share, cost: 1.0 })
            .collect();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0u64; 4];
        for _ in 0..20_000 {
            counts[choose(&candidates, 0.0, &mut rng).unwrap()] += 1;
        }
        // 3 degrees of freedom: P(χ² > 16.27) = 0.001.
        let chi = chi_square(&counts, &shares);
        assert!(chi < 16.27, "χ² = {chi:.2} for {counts:?}");
    }

    #[test]
    fn a_costlier_endpoint_loses_its_comparisons() {
        // Equal shares; the third has three requests in flight (4× the cost).
        let candidates = [
            Candidate {
                share: 1.0,
                cost: 1.0,
            },
            Candidate {
                share: 1.0,
                cost: 1.0,
            },
            Candidate {
                share: 1.0,
                cost: 4.0,
            },
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        let mut counts = [0u64; 3];
        for _ in 0..30_000 {
            counts[choose(&candidates, 0.0, &mut rng).unwrap()] += 1;
        }
        // Always compared with a cheaper one: never chosen while the others are idle.
        assert_eq!(counts[2], 0, "the busy endpoint loses every comparison");
        let share = counts[0] as f64 / 30_000.0;
        assert!(
            (share - 0.5).abs() < 0.01,
            "the others split it: {share:.3}"
        );
    }

    #[test]
    fn no_positive_share_chooses_nothing() {
        let rows: [(&[Candidate], Option<usize>, &str); 3] = [
            (&[], None, "no candidates"),
            (
                &[Candidate {
                    share: 0.0,
                    cost: 1.0,
                }],
                None,
                "only a zero share",
            ),
            (
                &[
                    Candidate {
                        share: 0.0,
                        cost: 0.0,
                    },
                    Candidate {
                        share: 2.0,
                        cost: 9.0,
                    },
                ],
                Some(1),
                "a zero share is never drawn, however cheap",
            ),
        ];
        let mut rng = fastrand::Rng::with_seed(1);
        for (candidates, expected, reason) in rows {
            for _ in 0..100 {
                assert_eq!(choose(candidates, 0.0, &mut rng), expected, "{reason}");
            }
        }
    }

    #[test]
    fn costs_within_the_tolerance_leave_the_choice_to_the_shares() {
        // Equal shares, one endpoint 10% costlier (Peak-EWMA's noise): a strict comparison
        // gives it only the pairs where it is drawn alone, none here; within the tolerance the
        // two split evenly.
        let candidates = [
            Candidate {
                share: 1.0,
                cost: 1.0,
            },
            Candidate {
                share: 1.0,
                cost: 1.1,
            },
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        let rows: [(f64, f64, f64, &str); 3] = [
            (
                0.0,
                1.0,
                1.0,
                "strict (tower's): the cheaper takes every pair",
            ),
            (
                0.5,
                0.47,
                0.53,
                "a 10% difference is a tie: the weighted first draw decides",
            ),
            (
                0.05,
                1.0,
                1.0,
                "a tolerance below the difference: the cheaper wins again",
            ),
        ];
        for (tolerance, low, high, reason) in rows {
            let mut first = 0u64;
            for _ in 0..20_000 {
                if choose(&candidates, tolerance, &mut rng) == Some(0) {
                    first += 1;
                }
            }
            let share = first as f64 / 20_000.0;
            assert!((low..=high).contains(&share), "{reason}: {share}");
        }
        // Past the tolerance the cheaper still wins: one more request in flight is 2×.
        let busy = [
            Candidate {
                share: 1.0,
                cost: 1.0,
            },
            Candidate {
                share: 1.0,
                cost: 2.0,
            },
        ];
        for _ in 0..1_000 {
            assert_eq!(choose(&busy, 0.5, &mut rng), Some(0), "2× loses at 0.5");
        }
    }
}
