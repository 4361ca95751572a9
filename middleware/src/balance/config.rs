//! Every setting of the balancer, with its default. `docs/balancing.md` explains each one.

use std::time::Duration;

/// How the balancer chooses, ejects, times out and retries. `Default` gives the documented
/// defaults; [`BalancerBuilder`](super::BalancerBuilder) sets them one by one.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BalanceConfig {
    /// Round trip assumed for an endpoint that has not answered yet (Peak-EWMA). Default 30 ms,
    /// as linkerd uses it.
    pub default_rtt: Duration,
    /// Peak-EWMA's decay time τ. Default 10 s.
    pub decay: Duration,
    /// The second candidate of a choice wins only when its local cost × (1 + this) is still
    /// below the first's: costs closer than that are a tie, and ties go to the first draw, by
    /// the shares. Default 0, tower's strict comparison. 0.5 leaves a 50% difference in
    /// Peak-EWMA (its noise between healthy endpoints) to the collector's weights, which evens
    /// out a light client's traffic over equally weighted instances, but it cost 3–5 ms of p99
    /// in the fleet benchmark's scenarios (e) and (a) (`docs/benchmarks.md`).
    pub cost_tolerance: f64,
    /// A failed attempt counts as at least this many times the endpoint's successful round
    /// trip. Default 5.
    pub failure_penalty: f64,
    /// Consecutive failures that eject an endpoint. Default 5; 0 turns this off.
    pub consecutive_failures: u32,
    /// A failure share over `failure_rate_window` at or above this ejects. Default 0.2;
    /// above 1 turns this off.
    pub failure_rate: f64,
    /// Requests the window needs before `failure_rate` counts. Default 20.
    pub failure_rate_min_requests: u32,
    /// The window of `failure_rate`. Default 10 s.
    pub failure_rate_window: Duration,
    /// The first ejection lasts this long, the n-th n times as long. Default 30 s.
    pub base_ejection: Duration,
    /// The longest ejection. Default 5 min.
    pub max_ejection: Duration,
    /// At most this share of the endpoints is ejected at once; beyond it the least bad keep
    /// traffic (Envoy's `max_ejection_percent`). Default 0.5.
    pub max_ejection_share: f64,
    /// An endpoint that comes back from an ejection ramps from 10% to its full share over this
    /// long. Default 10 s.
    pub slow_start: Duration,
    /// Time limit of one attempt (to the response head). Default 2 s.
    pub attempt_timeout: Duration,
    /// Time limit of the whole call, attempts and backoff included; a gRPC `grpc-timeout`
    /// shortens it. Default 10 s.
    pub deadline: Duration,
    /// Most attempts of one call (the first included). Default 3.
    pub max_attempts: u32,
    /// Retries may be at most this share of the requests … Default 0.2.
    pub retry_percent: f32,
    /// … plus this many per second. Default 10.
    pub retry_min_per_sec: u32,
    /// … over this window (1 s to 60 s). Default 10 s (Finagle's and tower's `TpsBudget`'s).
    pub retry_budget_window: Duration,
    /// The first retry waits a random time in `[0, backoff_base]`, the n-th in
    /// `[0, backoff_base × 2ⁿ⁻¹]` (full jitter), at most `backoff_max`. Default 25 ms.
    pub backoff_base: Duration,
    /// See `backoff_base`. Default 1 s.
    pub backoff_max: Duration,
    /// Request bodies up to this size are kept so that the request can be retried; a larger
    /// one is sent once. Default 64 KiB.
    pub max_replay_bytes: usize,
    /// gRPC methods (`/package.Service/Method`) that may be retried like idempotent HTTP
    /// methods. Default none.
    pub idempotent_grpc_methods: Vec<String>,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            cost_tolerance: 0.0,
            failure_penalty: 5.0,
            consecutive_failures: 5,
            failure_rate: 0.2,
            failure_rate_min_requests: 20,
            failure_rate_window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_share: 0.5,
            slow_start: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
            max_attempts: 3,
            retry_percent: 0.2,
            retry_min_per_sec: 10,
            retry_budget_window: Duration::from_secs(10),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            max_replay_bytes: 64 * 1024,
            idempotent_grpc_methods: Vec::new(),
        }
    }
}

impl BalanceConfig {
    /// What is wrong with these settings, if anything.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let window = self.retry_budget_window;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&window) {
            return Err(format!(
                "retry_budget_window must be between 1s and 60s, not {window:?}"
            ));
        }
        if !(0.0..=1000.0).contains(&self.retry_percent) {
            return Err(format!(
                "retry_percent must be between 0 and 1000, not {}",
                self.retry_percent
            ));
        }
        if !(0.0..=1.0).contains(&self.max_ejection_share) {
            return Err(format!(
                "max_ejection_share must be between 0 and 1, not {}",
                self.max_ejection_share
            ));
        }
        if !(self.cost_tolerance >= 0.0 && self.cost_tolerance.is_finite()) {
            return Err(format!(
                "cost_tolerance must be zero or more, not {}",
                self.cost_tolerance
            ));
        }
        if self.failure_penalty.is_nan() || self.failure_penalty < 1.0 {
            return Err(format!(
                "failure_penalty must be at least 1, not {}",
                self.failure_penalty
            ));
        }
        if self.decay.is_zero() || self.default_rtt.is_zero() {
            return Err("decay and default_rtt must be longer than zero".to_owned());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".to_owned());
        }
        if self.failure_rate_window < Duration::from_secs(1) {
            return Err("failure_rate_window must be at least 1s".to_owned());
        }
        Ok(())
    }
}
