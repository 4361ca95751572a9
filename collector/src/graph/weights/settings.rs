//! The weights' settings (`[weights]`): how often and over what window they are computed, and
//! the rule's parameters (`docs/weights.md`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{RuleConfig, WeightsConfig};
use crate::util::settings::{self, SettingError, Settings, at_least, duration, within};
use crate::util::units::parse_duration;

/// The weights' settings.
///
/// ```
/// use wayfinder_collector::Config;
///
/// let mut config = Config::default();
/// config.weights.weight_gamma = 2.0; // weight follows speed more strongly
/// config.validate().unwrap();
/// config.weights.weight_gamma = 0.0;
/// let error = config.validate().unwrap_err();
/// assert!(error.to_string().contains("weight_gamma"), "{error}");
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WeightsSettings {
    /// How often load-balancing weights are computed.
    #[arg(long, env = "WAYFINDER_WEIGHT_UPDATE_PERIOD", default_value = "1s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub weight_update_period: Duration,
    /// The sliding window the weights are computed from.
    #[arg(long, env = "WAYFINDER_WEIGHT_WINDOW", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub weight_window: Duration,
    /// How long published weights hold without a newer answer.
    #[arg(long, env = "WAYFINDER_WEIGHT_TTL", default_value = "60s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub weight_ttl: Duration,
    /// How strongly weight follows speed, `(L_ref / L)^gamma`, > 0.
    #[arg(long, env = "WAYFINDER_WEIGHT_GAMMA", default_value = "1")]
    pub weight_gamma: f64,
    /// How much errors inflate latency, `L · (1 + k · err)`, >= 0.
    #[arg(long, env = "WAYFINDER_WEIGHT_ERROR_PENALTY", default_value = "10")]
    pub weight_error_penalty: f64,
    /// Largest change of a weight per update, as a ratio, >= 1.
    #[arg(long, env = "WAYFINDER_WEIGHT_MAX_STEP", default_value = "1.25")]
    pub weight_max_step: f64,
    /// Changes of a target within this ratio are ignored, >= 1.
    #[arg(long, env = "WAYFINDER_WEIGHT_DEADBAND", default_value = "1.05")]
    pub weight_deadband: f64,
    /// Lowest weight as a share of the mean, in (0, 1].
    #[arg(long, env = "WAYFINDER_WEIGHT_MIN_FACTOR", default_value = "0.1")]
    pub weight_min_factor: f64,
    /// Highest weight as a multiple of the mean, >= 1.
    #[arg(long, env = "WAYFINDER_WEIGHT_MAX_FACTOR", default_value = "10")]
    pub weight_max_factor: f64,
    /// Requests in the window that judge an instance fully; below, its own figures count in
    /// proportion, the rest is the mean or the weight it earned.
    #[arg(long, env = "WAYFINDER_WEIGHT_MIN_REQUESTS", default_value = "10")]
    pub weight_min_requests: u64,
    /// How long new instances ramp up; 0s turns it off.
    #[arg(long, env = "WAYFINDER_WEIGHT_SLOW_START", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub weight_slow_start: Duration,
    /// Largest share of a service's instances ejected at once, in [0, 1].
    #[arg(long, env = "WAYFINDER_WEIGHT_MAX_EJECTION", default_value = "0.5")]
    pub weight_max_ejection: f64,
}

impl Default for WeightsSettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl Settings for WeightsSettings {
    const SECTION: &'static str = "weights";
    const IN_PLACE: &'static [&'static str] = &[
        "weight_ttl",
        "weight_gamma",
        "weight_error_penalty",
        "weight_max_step",
        "weight_deadband",
        "weight_min_factor",
        "weight_max_factor",
        "weight_min_requests",
        "weight_slow_start",
        "weight_max_ejection",
    ];

    fn validate(&self) -> Result<(), SettingError> {
        if !(self.weight_gamma.is_finite() && self.weight_gamma > 0.0) {
            return Err(SettingError::invalid(
                "weight_gamma",
                format!("must be a number greater than 0, not {}", self.weight_gamma),
            ));
        }
        at_least("weight_error_penalty", self.weight_error_penalty, 0.0)?;
        at_least("weight_max_step", self.weight_max_step, 1.0)?;
        at_least("weight_deadband", self.weight_deadband, 1.0)?;
        within("weight_min_factor", self.weight_min_factor, true, 0.0, 1.0)?;
        at_least("weight_max_factor", self.weight_max_factor, 1.0)?;
        within(
            "weight_max_ejection",
            self.weight_max_ejection,
            false,
            0.0,
            1.0,
        )?;
        if self.weight_ttl < Duration::from_millis(1) {
            return Err(SettingError::invalid(
                "weight_ttl",
                format!(
                    "must be at least 1ms (it is sent in milliseconds), not {}",
                    humantime::format_duration(self.weight_ttl)
                ),
            ));
        }
        if self.weight_ttl <= self.weight_update_period {
            return Err(SettingError::invalid(
                "weight_ttl",
                format!(
                    "must be longer than weight_update_period ({}), not {}",
                    humantime::format_duration(self.weight_update_period),
                    humantime::format_duration(self.weight_ttl)
                ),
            ));
        }
        Ok(())
    }

    fn normalize(&mut self) {
        // Faster than every 10 ms costs a core for nothing a balancer could use.
        self.weight_update_period = self.weight_update_period.max(Duration::from_millis(10));
    }
}

impl WeightsSettings {
    /// The weights engine's configuration.
    pub(crate) fn engine(&self) -> WeightsConfig {
        WeightsConfig {
            update_period: self.weight_update_period,
            window: self.weight_window,
            ttl: self.weight_ttl,
            rule: RuleConfig {
                gamma: self.weight_gamma,
                error_penalty: self.weight_error_penalty,
                max_step: self.weight_max_step,
                deadband: self.weight_deadband,
                min_factor: self.weight_min_factor,
                max_factor: self.weight_max_factor,
                min_requests: self.weight_min_requests,
                slow_start: self.weight_slow_start,
                max_ejection: self.weight_max_ejection,
                quiet_half_life: self.weight_window,
            },
            ..WeightsConfig::default()
        }
    }
}
