//! A new configuration applied to a running collector (SIGHUP, or a changed config file): the
//! settings that can change in place do, without dropping a connection or a span; the others
//! keep their running values and are reported as needing a restart; a configuration that does
//! not validate changes nothing.
//!
//! Token files and TLS files are read again whenever they change (every second), whichever way
//! the collector was started. Which files (or variables) they are is a setting: it changes in
//! place while the listeners keep using tokens or TLS ([`SWITCHED_IN_PLACE`]); turning tokens
//! or TLS on or off needs a restart.

use std::sync::Arc;

use parking_lot::Mutex;

use super::listeners::Caps;
use crate::app::config::{Config, ConfigError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::{Metrics, OutcomeLabels};
use crate::net::access::{Deadlines, TlsFiles, Tokens};
use crate::pipeline::QueueBudget;
use crate::serve::query::ApiState;
use crate::store::SpanStore;

pub use crate::app::config::{IN_PLACE, SWITCHED_IN_PLACE};

/// What a reload did (see [`RunningCollector::reload`](crate::RunningCollector::reload)).
///
/// ```
/// use wayfinder_collector::Reloaded;
///
/// let nothing = Reloaded::default();
/// assert!(nothing.applied.is_empty() && nothing.needs_restart.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// The settings changed in place, as config-file keys.
    pub applied: Vec<String>,
    /// The settings that differ but need a restart: their running values stay in force.
    pub needs_restart: Vec<String>,
}

/// What a reload reaches in the running collector.
#[derive(Debug)]
pub(super) struct Live {
    /// The configuration in force.
    pub(super) config: Mutex<Config>,
    pub(super) store: Arc<dyn SpanStore>,
    pub(super) api: Arc<ApiState>,
    pub(super) caps: Caps,
    pub(super) deadlines: Deadlines,
    pub(super) queue: QueueBudget,
    pub(super) ingest_tokens: Option<Tokens>,
    pub(super) query_tokens: Option<Tokens>,
    pub(super) tls: Option<TlsFiles>,
    /// `wayfinder_config_reloads_total`, per outcome ([`Live::count`]).
    pub(super) reloads: Family<OutcomeLabels, Counter>,
    /// The data directory's free space, with a data directory.
    pub(super) disk: Option<crate::store::log::DiskWatch>,
}

impl Live {
    /// Applies what can change of `new` in place; see the module's documentation.
    pub(super) fn reload(&self, new: Config) -> Result<Reloaded, ConfigError> {
        let result = self.apply(new);
        let outcome = match &result {
            Ok(reloaded) if reloaded.applied.is_empty() => "unchanged",
            Ok(_) => "applied",
            Err(_) => "rejected",
        };
        self.count(outcome);
        result
    }

    /// Counts a reload's outcome: `applied`, `unchanged` or `rejected`.
    pub(super) fn count(&self, outcome: &'static str) {
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The counter of reloads per outcome, registered in `metrics`.
    pub(super) fn counter(metrics: &Metrics) -> Family<OutcomeLabels, Counter> {
        let reloads = Family::default();
        metrics.register(
            "wayfinder_config_reloads",
            "Configuration reloads (SIGHUP or a changed file), per outcome: applied, unchanged, rejected",
            reloads.clone(),
        );
        reloads
    }

    fn apply(&self, new: Config) -> Result<Reloaded, ConfigError> {
        let mut current = self.config.lock();
        let mut merged = current.clone();
        merged.take_in_place(&new);
        // The new values must hold together with the running ones they stay beside (a new
        // `weight_ttl` against the running `weight_update_period`).
        merged.validate()?;
        let (running, taken, asked) = (current.in_force(), merged.in_force(), new.in_force());
        let mut reloaded = Reloaded::default();
        if let (Some(running), Some(taken), Some(asked)) =
            (running.as_object(), taken.as_object(), asked.as_object())
        {
            for (key, value) in asked {
                if running.get(key) == Some(value) {
                    continue;
                }
                if taken.get(key) == Some(value) {
                    reloaded.applied.push(key.clone());
                } else {
                    reloaded.needs_restart.push(key.clone());
                }
            }
        }
        if reloaded.applied.is_empty() {
            return Ok(reloaded);
        }
        // The files named anew are read before anything changes: one that cannot be read
        // refuses the whole reload. Files already in force are not read again here.
        let unreadable = |key: &'static str, error: &dyn std::fmt::Display| ConfigError::Invalid {
            key,
            message: format!("{error}; the running configuration stays"),
        };
        let sources = |config: &Config| {
            (
                config.access.ingest_tokens().ok().flatten(),
                config.access.query_tokens().ok().flatten(),
                config.access.tls().ok().flatten(),
            )
        };
        let (running_ingest, running_query, running_tls) = sources(&current);
        let (merged_ingest, merged_query, merged_tls) = sources(&merged);
        let mut tokens_anew = Vec::new();
        for (tokens, running, source, key) in [
            (
                &self.ingest_tokens,
                running_ingest,
                merged_ingest,
                "ingest_token_file",
            ),
            (
                &self.query_tokens,
                running_query,
                merged_query,
                "query_token_file",
            ),
        ] {
            if let (Some(tokens), Some(source)) = (tokens, source)
                && running.as_ref() != Some(&source)
            {
                let loaded = Tokens::load(&source).map_err(|e| unreadable(key, &e))?;
                tokens_anew.push((tokens, loaded));
            }
        }
        let tls_anew = match (&self.tls, merged_tls) {
            (Some(tls), Some(paths)) if running_tls.as_ref() != Some(&paths) => Some((
                tls,
                TlsFiles::load(paths).map_err(|e| unreadable("tls_cert", &e))?,
            )),
            _ => None,
        };
        for (tokens, loaded) in tokens_anew {
            tokens.adopt(&loaded);
        }
        if let Some((tls, loaded)) = tls_anew {
            tls.adopt(&loaded);
        }
        self.queue.set(merged.ingest.max_ingest_bytes);
        self.store
            .set_limits(merged.store.retention, merged.store.max_store_bytes);
        self.api.engine.set_limits(merged.query.limits());
        self.api
            .registry
            .set_deregister_after(merged.registry.deregister_after);
        self.api
            .registry
            .set_max_ttl(merged.registry.max_heartbeat_ttl);
        let weights = merged.weights.engine();
        self.api.weights.set_rule(weights.rule, weights.ttl);
        self.caps.set(merged.listeners.max_connections);
        self.deadlines.set(
            merged.listeners.header_read_timeout,
            merged.listeners.body_read_timeout,
            merged.listeners.idle_timeout,
        );
        self.api.watchers.set_max(merged.query.max_watchers);
        if let Some(disk) = &self.disk {
            disk.set_reserve(merged.store.disk_reserve as u64);
        }
        *self.api.config.write() = Arc::new(merged.in_force());
        *current = merged;
        Ok(reloaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `merged` takes exactly the keys of `IN_PLACE` from the new configuration: a key added to
    /// one and not the other fails here.
    #[test]
    fn merged_takes_the_in_place_keys_and_only_them() {
        let running = Config::default();
        let mut new = Config::default();
        new.ingest.max_ingest_bytes *= 2;
        new.store.retention *= 2;
        new.store.max_store_bytes *= 2;
        new.query.query_timeout *= 2;
        new.query.query_memory_bytes *= 2;
        new.query.query_max_rows *= 2;
        new.query.query_max_concurrent *= 2;
        new.registry.deregister_after *= 2;
        new.registry.max_heartbeat_ttl *= 2;
        new.weights.weight_ttl *= 2;
        new.weights.weight_gamma *= 2.0;
        new.weights.weight_error_penalty *= 2.0;
        new.weights.weight_max_step *= 2.0;
        new.weights.weight_deadband *= 2.0;
        new.weights.weight_min_factor /= 2.0;
        new.weights.weight_max_factor *= 2.0;
        new.weights.weight_min_requests *= 2;
        new.weights.weight_slow_start *= 2;
        new.weights.weight_max_ejection /= 2.0;
        new.listeners.max_connections *= 2;
        new.query.max_watchers *= 2;
        new.listeners.header_read_timeout *= 2;
        new.listeners.body_read_timeout *= 2;
        new.listeners.idle_timeout *= 2;
        new.store.disk_reserve *= 2;
        // And some that need a restart.
        new.listeners.otlp_grpc.set_port(1);
        new.topology.edge_wait *= 2;
        new.ingest.grpc_max_message_bytes *= 2;

        let mut merged = running.clone();
        merged.take_in_place(&new);
        let shown = merged.in_force();
        let (running, new) = (running.in_force(), new.in_force());
        for (key, value) in shown.as_object().unwrap() {
            if IN_PLACE.contains(&key.as_str()) {
                assert_eq!(
                    value, &new[key],
                    "{key} is taken from the new configuration"
                );
                assert_ne!(value, &running[key], "{key} was changed by the test");
            } else {
                assert_eq!(value, &running[key], "{key} keeps its running value");
            }
        }
    }
}
