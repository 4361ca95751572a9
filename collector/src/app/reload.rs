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
use crate::metrics::{Metrics, OutcomeLabels};
use crate::net::access::{Deadlines, TlsFiles, Tokens};
use crate::pipeline::QueueBudget;
use crate::serve::query::ApiState;
use crate::serve::sql::QueryLimits;
use crate::store::SpanStore;

/// The settings (as config-file keys) that a reload changes in place.
pub const IN_PLACE: &[&str] = &[
    "max_ingest_bytes",
    "retention",
    "max_store_bytes",
    "query_timeout",
    "query_memory_bytes",
    "query_max_rows",
    "query_max_concurrent",
    "deregister_after",
    "max_heartbeat_ttl",
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
    "max_connections",
    "max_watchers",
    "header_read_timeout",
    "body_read_timeout",
    "idle_timeout",
    "disk_reserve",
];

/// The settings (as config-file keys) that a reload changes in place while the feature they
/// belong to stays on (the tokens of ingest, the tokens of the query API, TLS): another file or
/// variable is taken at once; turning the feature on or off needs a restart.
pub const SWITCHED_IN_PLACE: &[&str] = &[
    "ingest_token_file",
    "ingest_token",
    "query_token_file",
    "query_token",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
];

/// What a reload did.
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
    pub(super) metrics: Arc<Metrics>,
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
        self.metrics
            .config_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        result
    }

    fn apply(&self, new: Config) -> Result<Reloaded, ConfigError> {
        let mut current = self.config.lock();
        let (before, after) = (current.in_force(), new.in_force());
        let mut reloaded = Reloaded::default();
        if let (Some(before), Some(after)) = (before.as_object(), after.as_object()) {
            for (key, value) in after {
                if before.get(key) != Some(value) {
                    let in_place = IN_PLACE.contains(&key.as_str())
                        || (SWITCHED_IN_PLACE.contains(&key.as_str())
                            && stays_on(key, &current, &new));
                    if in_place {
                        reloaded.applied.push(key.clone());
                    } else {
                        reloaded.needs_restart.push(key.clone());
                    }
                }
            }
        }
        let merged = merged(&current, &new);
        // The new values must hold together with the running ones they stay beside (a new
        // `weight_ttl` against the running `weight_update_period`).
        merged.validate()?;
        if reloaded.applied.is_empty() {
            return Ok(reloaded);
        }
        // The files named anew are read before anything changes: one that cannot be read
        // refuses the whole reload. Files already in force are not read again here.
        let unreadable = |key: &'static str, error: &dyn std::fmt::Display| ConfigError::Invalid {
            key,
            message: format!("{error}; the running configuration stays"),
        };
        let mut tokens_anew = Vec::new();
        for (tokens, running, source, key) in [
            (
                &self.ingest_tokens,
                &current.ingest_token,
                &merged.ingest_token,
                "ingest_token_file",
            ),
            (
                &self.query_tokens,
                &current.query_token,
                &merged.query_token,
                "query_token_file",
            ),
        ] {
            if let (Some(tokens), Some(source)) = (tokens, source)
                && running.as_ref() != Some(source)
            {
                let loaded = Tokens::load(source).map_err(|e| unreadable(key, &e))?;
                tokens_anew.push((tokens, loaded));
            }
        }
        let tls_anew = match (&self.tls, &merged.tls) {
            (Some(tls), Some(paths)) if current.tls.as_ref() != Some(paths) => Some((
                tls,
                TlsFiles::load(paths.clone()).map_err(|e| unreadable("tls_cert", &e))?,
            )),
            _ => None,
        };
        for (tokens, loaded) in tokens_anew {
            tokens.adopt(&loaded);
        }
        if let Some((tls, loaded)) = tls_anew {
            tls.adopt(&loaded);
        }
        self.queue.set(merged.max_ingest_bytes);
        self.store
            .set_limits(merged.retention, merged.max_store_bytes);
        self.api.engine.set_limits(QueryLimits {
            timeout: merged.query_timeout,
            memory_bytes: merged.query_memory_bytes,
            max_rows: merged.query_max_rows,
            max_concurrent: merged.query_max_concurrent,
        });
        self.api
            .registry
            .set_deregister_after(merged.deregister_after);
        self.api.registry.set_max_ttl(merged.max_heartbeat_ttl);
        let weights = merged.weights();
        self.api.weights.set_rule(weights.rule, weights.ttl);
        self.caps.set(merged.max_connections);
        self.deadlines.set(
            merged.header_read_timeout,
            merged.body_read_timeout,
            merged.idle_timeout,
        );
        self.api.watchers.set_max(merged.max_watchers);
        if let Some(disk) = &self.disk {
            disk.set_reserve(merged.disk_reserve as u64);
        }
        *self.api.config.write() = Arc::new(merged.in_force());
        *current = merged;
        Ok(reloaded)
    }
}

/// Whether the feature a switched key belongs to is on before and after.
fn stays_on(key: &str, running: &Config, new: &Config) -> bool {
    if key.starts_with("ingest_token") {
        running.ingest_token.is_some() && new.ingest_token.is_some()
    } else if key.starts_with("query_token") {
        running.query_token.is_some() && new.query_token.is_some()
    } else {
        running.tls.is_some() && new.tls.is_some()
    }
}

/// The running configuration with the in-place settings of `new`.
fn merged(running: &Config, new: &Config) -> Config {
    let mut merged = running.clone();
    if running.ingest_token.is_some() && new.ingest_token.is_some() {
        merged.ingest_token = new.ingest_token.clone();
    }
    if running.query_token.is_some() && new.query_token.is_some() {
        merged.query_token = new.query_token.clone();
    }
    if running.tls.is_some() && new.tls.is_some() {
        merged.tls = new.tls.clone();
    }
    merged.max_ingest_bytes = new.max_ingest_bytes;
    merged.retention = new.retention;
    merged.max_store_bytes = new.max_store_bytes;
    merged.query_timeout = new.query_timeout;
    merged.query_memory_bytes = new.query_memory_bytes;
    merged.query_max_rows = new.query_max_rows;
    merged.query_max_concurrent = new.query_max_concurrent;
    merged.deregister_after = new.deregister_after;
    merged.max_heartbeat_ttl = new.max_heartbeat_ttl;
    merged.weight_ttl = new.weight_ttl;
    merged.weight_gamma = new.weight_gamma;
    merged.weight_error_penalty = new.weight_error_penalty;
    merged.weight_max_step = new.weight_max_step;
    merged.weight_deadband = new.weight_deadband;
    merged.weight_min_factor = new.weight_min_factor;
    merged.weight_max_factor = new.weight_max_factor;
    merged.weight_min_requests = new.weight_min_requests;
    merged.weight_slow_start = new.weight_slow_start;
    merged.weight_max_ejection = new.weight_max_ejection;
    merged.max_connections = new.max_connections;
    merged.max_watchers = new.max_watchers;
    merged.header_read_timeout = new.header_read_timeout;
    merged.body_read_timeout = new.body_read_timeout;
    merged.idle_timeout = new.idle_timeout;
    merged.disk_reserve = new.disk_reserve;
    merged
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
        new.max_ingest_bytes *= 2;
        new.retention *= 2;
        new.max_store_bytes *= 2;
        new.query_timeout *= 2;
        new.query_memory_bytes *= 2;
        new.query_max_rows *= 2;
        new.query_max_concurrent *= 2;
        new.deregister_after *= 2;
        new.max_heartbeat_ttl *= 2;
        new.weight_ttl *= 2;
        new.weight_gamma *= 2.0;
        new.weight_error_penalty *= 2.0;
        new.weight_max_step *= 2.0;
        new.weight_deadband *= 2.0;
        new.weight_min_factor /= 2.0;
        new.weight_max_factor *= 2.0;
        new.weight_min_requests *= 2;
        new.weight_slow_start *= 2;
        new.weight_max_ejection /= 2.0;
        new.max_connections *= 2;
        new.max_watchers *= 2;
        new.header_read_timeout *= 2;
        new.body_read_timeout *= 2;
        new.idle_timeout *= 2;
        new.disk_reserve *= 2;
        // And some that need a restart.
        new.otlp_grpc.set_port(1);
        new.edge_wait *= 2;
        new.grpc_max_message_bytes *= 2;

        let shown = merged(&running, &new).in_force();
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
