//! The ranges of the settings that have one, checked once they are resolved.

use std::time::Duration;

use super::{Config, ConfigError};
use crate::store::log::WalSync;

impl Config {
    /// Checks the settings that have a range (the weight rule's, the weights' TTL); `resolve`
    /// and [`Collector::start`](crate::Collector::start) call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        // NaN fails every comparison, so each check below refuses it too.
        let at_least = |key: &'static str, value: f64, lo: f64| {
            if value.is_finite() && value >= lo {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("must be a number of at least {lo}, not {value}"),
                ))
            }
        };
        let within = |key: &'static str, value: f64, lo_open: bool, lo: f64, hi: f64| {
            let above_lo = if lo_open { value > lo } else { value >= lo };
            if above_lo && value <= hi {
                Ok(())
            } else {
                let open = if lo_open { '(' } else { '[' };
                Err(invalid(
                    key,
                    format!("must be within {open}{lo}, {hi}], not {value}"),
                ))
            }
        };
        let buckets = &self.service_graph_buckets;
        if buckets.is_empty()
            || buckets.iter().any(Duration::is_zero)
            || buckets.windows(2).any(|pair| pair[0] >= pair[1])
        {
            return Err(invalid(
                "service_graph_buckets",
                "must be one or more durations above zero, ascending (e.g. 10ms,100ms,1s)"
                    .to_owned(),
            ));
        }
        if self.database_name_attributes.is_empty() {
            return Err(invalid(
                "database_name_attributes",
                "must name at least one attribute (e.g. db.namespace)".to_owned(),
            ));
        }
        if self.wal_sync == WalSync::Interval(Duration::ZERO) {
            return Err(invalid(
                "wal_sync_interval",
                "must be above zero (use --wal-sync always to sync every request)".to_owned(),
            ));
        }
        if self.seal_interval.is_zero() {
            return Err(invalid("seal_interval", "must be above zero".to_owned()));
        }
        if self.history.is_some() && self.data_dir.is_none() {
            return Err(invalid(
                "history",
                "needs --data-dir: sealed files are replayed from the write-ahead log there"
                    .to_owned(),
            ));
        }
        if self.header_read_timeout.is_zero() {
            return Err(invalid(
                "header_read_timeout",
                "must be above zero".to_owned(),
            ));
        }
        if self.body_read_timeout.is_zero() {
            return Err(invalid(
                "body_read_timeout",
                "must be above zero".to_owned(),
            ));
        }
        if self.max_heartbeat_ttl.is_zero() {
            return Err(invalid(
                "max_heartbeat_ttl",
                "must be above zero".to_owned(),
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid("idle_timeout", "must be above zero".to_owned()));
        }
        if self.max_connections == 0 {
            return Err(invalid(
                "max_connections",
                "must be at least 1, not 0".to_owned(),
            ));
        }
        if self.max_watchers == 0 {
            return Err(invalid(
                "max_watchers",
                "must be at least 1, not 0".to_owned(),
            ));
        }
        if self.query_max_concurrent == 0 {
            return Err(invalid(
                "query_max_concurrent",
                "must be at least 1, not 0".to_owned(),
            ));
        }
        if !(self.weight_gamma.is_finite() && self.weight_gamma > 0.0) {
            return Err(invalid(
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
            return Err(invalid(
                "weight_ttl",
                format!(
                    "must be at least 1ms (it is sent in milliseconds), not {}",
                    humantime::format_duration(self.weight_ttl)
                ),
            ));
        }
        if self.weight_ttl <= self.weight_update_period {
            return Err(invalid(
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
}
