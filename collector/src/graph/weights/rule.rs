//! The weight rule for one service: from each instance's latency, errors, volume and health to
//! its share of the traffic. The formula, and where each part comes from, is in
//! `docs/weights.md`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::window::WindowStats;
use crate::graph::registry::InstanceStatus;

/// The rule's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleConfig {
    /// `γ`: how strongly weight follows speed, `w ∝ (L_ref / L)^γ`.
    pub gamma: f64,
    /// `k`: how much errors count, `L · (1 + k · err)`.
    pub error_penalty: f64,
    /// Largest change of an instance's multiplier per update (×step or ÷step).
    pub max_step: f64,
    /// Changes of a target smaller than this ratio are ignored (no dithering on noise).
    pub deadband: f64,
    /// Weights stay within `[min_factor, max_factor] ×` the mean weight.
    pub min_factor: f64,
    /// See `min_factor`.
    pub max_factor: f64,
    /// Below this many requests in the window an instance gets the mean weight.
    pub min_requests: u64,
    /// New instances ramp up over this long.
    pub slow_start: Duration,
    /// At most this share of a service's instances is ejected (weight 0) at once.
    pub max_ejection: f64,
    /// An instance that falls below `min_requests` keeps the multiplier it last earned, easing
    /// back to the mean with this half-life (the window's length); zero gives it the mean at once.
    pub quiet_half_life: Duration,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            gamma: 1.0,
            error_penalty: 10.0,
            max_step: 1.25,
            deadband: 1.05,
            min_factor: 0.1,
            max_factor: 10.0,
            min_requests: 10,
            slow_start: Duration::from_secs(30),
            max_ejection: 0.5,
            quiet_half_life: Duration::from_secs(30),
        }
    }
}

/// One instance as the rule sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// `service.instance.id`.
    pub instance_id: Arc<str>,
    /// Its registry status.
    pub health: InstanceStatus,
    /// What it did over the window (its SERVER spans, else its callers' CLIENT spans).
    pub stats: WindowStats,
    /// The same over the last 5–10 seconds.
    pub recent: WindowStats,
    /// When the weights engine first saw it.
    pub first_seen: SystemTime,
}

/// What the rule keeps per instance between updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Kept {
    /// The multiplier (relative to the mean, before normalisation).
    pub multiplier: f64,
    /// Whether the multiplier was earned: the instance had enough requests to be judged (or
    /// holds what it earned so). A new instance's ramp is not earned.
    pub earned: bool,
    /// Since when the instance has been below the minimum volume, and the multiplier it had
    /// then; `None` while it has enough requests to be judged.
    pub quiet: Option<Quiet>,
}

/// An instance gone quiet: when, and the multiplier it had earned by then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quiet {
    /// The first update that found it below the minimum volume.
    pub since: SystemTime,
    /// Its multiplier at that update.
    pub multiplier: f64,
}

impl Quiet {
    /// The multiplier held at `now`: the one earned, eased towards the mean (1) in log space
    /// with the given half-life, so that ×0.1 becomes ×0.32 after one half-life and ×0.56 after
    /// two, as a peak-EWMA's idle estimate decays until the endpoint is tried again.
    fn held(&self, now: SystemTime, half_life: Duration) -> f64 {
        if half_life.is_zero() {
            return 1.0;
        }
        let quiet_for = now.duration_since(self.since).unwrap_or(Duration::ZERO);
        let remaining = 0.5f64.powf(quiet_for.as_secs_f64() / half_life.as_secs_f64());
        self.multiplier.powf(remaining)
    }
}

/// The rule's answer for one instance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    /// `service.instance.id`.
    pub instance_id: Arc<str>,
    /// Its share, all shares of the service summing to 1.
    pub weight: f64,
    /// The multiplier to keep for the next update.
    pub kept: Kept,
    /// Why, in a few words.
    pub reason: String,
}

/// Requests the recent buckets need before their p90 counts.
const MIN_RECENT_REQUESTS: u64 = 5;

/// The latency the rule compares: the window's p90, or the recent buckets' p90 when higher
/// (a peak shows at once and fades only as it leaves the window, as a peak-EWMA does).
fn peak_p90(candidate: &Candidate) -> Option<f64> {
    let window = candidate.stats.latency.quantile(0.9)?;
    let recent = (candidate.recent.requests >= MIN_RECENT_REQUESTS)
        .then(|| candidate.recent.latency.quantile(0.9))
        .flatten();
    Some(recent.map_or(window, |r| r.max(window)))
}

/// The effective latency of an instance: its peak p90 (ms), inflated by its error rate so that
/// fast failures never look fast; `None` without requests.
fn effective_latency(candidate: &Candidate, config: &RuleConfig) -> Option<f64> {
    let stats = &candidate.stats;
    let p90 = peak_p90(candidate)?.max(1e-3);
    Some(p90 * (1.0 + config.error_penalty * stats.error_rate()))
}

/// How much an instance's own figures count: `n / min_requests` for `n` requests in the window,
/// up to 1 (limited-fluctuation credibility, linear so that one odd request moves little).
fn credibility(candidate: &Candidate, config: &RuleConfig) -> f64 {
    if config.min_requests == 0 {
        return 1.0;
    }
    (candidate.stats.requests as f64 / config.min_requests as f64).min(1.0)
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Decides the weights of one service's instances at `now`, given what was kept last time.
pub(crate) fn decide(
    candidates: &[Candidate],
    previous: impl Fn(&str) -> Option<Kept>,
    config: &RuleConfig,
    now: SystemTime,
) -> Vec<Decision> {
    let n = candidates.len();
    if n == 0 {
        return Vec::new();
    }
    // What each instance's requests show, however few, and how much that counts; `latency`
    // only for the instances with the full minimum volume, which alone set the reference.
    let measured: Vec<Option<f64>> = candidates
        .iter()
        .map(|c| effective_latency(c, config))
        .collect();
    let credibility: Vec<f64> = candidates.iter().map(|c| credibility(c, config)).collect();
    let latency: Vec<Option<f64>> = (0..n)
        .map(|i| measured[i].filter(|_| credibility[i] >= 1.0))
        .collect();

    // Ejection: critical instances get nothing, but never more than the allowed share; when too
    // many are critical, the least bad (lowest effective latency) keep traffic.
    // Never everyone, whatever the configured share.
    let max_ejected = ((config.max_ejection * n as f64).floor() as usize).min(n - 1);
    let mut critical: Vec<usize> = (0..n)
        .filter(|&i| candidates[i].health == InstanceStatus::Critical)
        .collect();
    critical.sort_by(|&a, &b| {
        let key = |i: usize| latency[i].unwrap_or(f64::INFINITY);
        key(b).total_cmp(&key(a)) // worst first
    });
    let ejected: Vec<bool> = {
        let mut ejected = vec![false; n];
        for &i in critical.iter().take(max_ejected) {
            ejected[i] = true;
        }
        ejected
    };

    let mut known: Vec<f64> = (0..n)
        .filter(|&i| !ejected[i])
        .filter_map(|i| latency[i])
        .collect();
    let reference = median(&mut known);

    // Targets relative to the mean, before slow start.
    // Bounded before averaging, so that one instance with a near-zero latency cannot push every
    // other target to the floor.
    let raw: Vec<f64> = (0..n)
        .map(|i| match (measured[i], reference) {
            _ if ejected[i] => 0.0,
            (Some(l), Some(r)) => (r / l)
                .powf(config.gamma)
                .clamp(config.min_factor, config.max_factor),
            _ => f64::NAN, // the mean, filled in below
        })
        .collect();
    let live: Vec<usize> = (0..n).filter(|&i| !ejected[i]).collect();
    let known_raw: Vec<f64> = live
        .iter()
        .filter(|&&i| latency[i].is_some())
        .map(|&i| raw[i])
        .collect();
    let mean_raw = if known_raw.is_empty() {
        1.0
    } else {
        known_raw.iter().sum::<f64>() / known_raw.len() as f64
    };

    let mut decisions: Vec<Decision> = Vec::with_capacity(n);
    let mut multipliers = vec![0.0; n];
    let mut reasons = vec![String::new(); n];
    let mut quiets: Vec<Option<Quiet>> = vec![None; n];
    let mut earned = vec![false; n];
    for i in 0..n {
        let candidate = &candidates[i];
        if ejected[i] {
            reasons[i] = "critical".into();
            continue;
        }
        // What its own requests say, relative to the mean.
        let judged = if raw[i].is_nan() {
            1.0
        } else {
            (raw[i] / mean_raw).clamp(config.min_factor, config.max_factor)
        };
        let age = now
            .duration_since(candidate.first_seen)
            .unwrap_or(Duration::ZERO);
        let ramp = if config.slow_start.is_zero() || age >= config.slow_start {
            None
        } else {
            Some((age.as_secs_f64() / config.slow_start.as_secs_f64()).max(config.min_factor))
        };
        let kept = previous(&candidate.instance_id).filter(|k| k.multiplier > 0.0);
        let z = credibility[i];
        // Below the minimum volume after being judged: what it earned is the prior, held and
        // easing to the mean. Snapping to the mean would undo a slow instance's low weight as
        // soon as its callers stopped sending it enough requests, send it traffic again, find
        // it slow again: a see-saw. Never judged, the prior is the mean.
        let quiet = match kept {
            Some(k) if z < 1.0 && k.earned => Some(k.quiet.unwrap_or(Quiet {
                since: now,
                multiplier: k.multiplier,
            })),
            _ => None,
        };
        let held = quiet.map(|q| q.held(now, config.quiet_half_life));
        // Its few requests count for `z` of the answer (in log space), the prior for the rest.
        let mut target = judged.powf(z) * held.unwrap_or(1.0).powf(1.0 - z);
        match ramp {
            // What was held already went through the ramp when it was earned.
            Some(ramp) if held.is_some() => target = target.min(ramp),
            Some(ramp) => target *= ramp,
            None => {}
        }
        let multiplier = match kept {
            // First sight: straight to the target (slow start already holds new ones back).
            None => target,
            Some(prev) => {
                // A held target moves on its own clock, so the deadband cannot stall it.
                let prev = prev.multiplier;
                let ratio = target / prev;
                if ratio <= config.deadband && ratio >= 1.0 / config.deadband {
                    prev
                } else {
                    prev * ratio.clamp(1.0 / config.max_step, config.max_step)
                }
            }
        };
        quiets[i] = quiet;
        earned[i] = z >= 1.0 || quiet.is_some();
        multipliers[i] = multiplier;
        reasons[i] = reason(candidate, measured[i], z, reference, ramp, held, config);
    }

    // Keep every live weight within [min, max] × the mean, then normalise to a sum of 1.
    let live_count = live.len().max(1) as f64;
    let mean = live.iter().map(|&i| multipliers[i]).sum::<f64>() / live_count;
    if mean > 0.0 {
        for &i in &live {
            multipliers[i] =
                multipliers[i].clamp(config.min_factor * mean, config.max_factor * mean);
        }
    }
    let total: f64 = live.iter().map(|&i| multipliers[i]).sum();
    for i in 0..n {
        let weight = if ejected[i] || total <= 0.0 {
            0.0
        } else {
            multipliers[i] / total
        };
        decisions.push(Decision {
            instance_id: candidates[i].instance_id.clone(),
            weight,
            kept: Kept {
                multiplier: multipliers[i],
                earned: earned[i],
                quiet: quiets[i],
            },
            reason: std::mem::take(&mut reasons[i]),
        });
    }
    decisions
}

fn reason(
    candidate: &Candidate,
    latency: Option<f64>,
    credibility: f64,
    reference: Option<f64>,
    ramp: Option<f64>,
    held: Option<f64>,
    config: &RuleConfig,
) -> String {
    let critical = candidate.health == InstanceStatus::Critical;
    let mut parts: Vec<String> = Vec::new();
    if critical {
        parts.push("critical, kept: too many ejected".into());
    }
    if let Some(ramp) = ramp {
        parts.push(format!("slow start {:.0}%", ramp * 100.0));
    }
    let relative = match (latency, reference) {
        (Some(l), Some(r)) if r > 0.0 => Some(l / r),
        _ => None,
    };
    if credibility < 1.0 {
        let mut part = format!(
            "low volume ({} < {} requests)",
            candidate.stats.requests, config.min_requests
        );
        if let Some(ratio) = relative.filter(|_| credibility > 0.0) {
            part.push_str(&format!(
                ": effective p90 {ratio:.1}x median, counted {:.0}%",
                credibility * 100.0
            ));
            match held {
                Some(held) => part.push_str(&format!(", the rest held at {held:.2}x")),
                None => part.push_str(", the rest at the mean"),
            }
        } else {
            match held {
                Some(held) => part.push_str(&format!(": held at {held:.2}x, easing to the mean")),
                None => part.push_str(": mean weight"),
            }
        }
        parts.push(part);
    } else if let Some(ratio) = relative {
        let r = reference.unwrap_or(1.0);
        let err = candidate.stats.error_rate();
        let p90 = peak_p90(candidate).unwrap_or(0.0);
        if err >= 0.01 {
            parts.push(format!(
                "errors {:.0}%: effective p90 {:.1}x median",
                err * 100.0,
                ratio
            ));
        } else if ratio >= 1.5 {
            parts.push(format!("slow: p90 {:.1}x median", p90 / r));
        } else if ratio <= 1.0 / 1.5 {
            parts.push(format!("fast: p90 {:.1}x median", p90 / r));
        }
    }
    if candidate.health == InstanceStatus::Warning {
        parts.push("health warning".into());
    }
    if parts.is_empty() {
        "normal".into()
    } else {
        parts.join("; ")
    }
}
