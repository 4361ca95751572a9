//! The query API's settings (`[query]`): the bounds of each SQL query and of the weights'
//! watchers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::settings::{self, SettingError, Settings, duration, size};
use crate::util::units::{parse_duration, parse_size};

/// The query API's settings.
///
/// ```
/// use wayfinder_collector::Config;
///
/// let mut config = Config::default();
/// config.query.query_max_rows = 1_000;
/// config.validate().unwrap();
/// config.query.max_watchers = 0;
/// assert!(config.validate().is_err(), "at least one watcher");
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct QuerySettings {
    /// Time limit of one SQL query.
    #[arg(long, env = "WAYFINDER_QUERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub query_timeout: Duration,
    /// Memory of all SQL queries at once, shared equally among --query-max-concurrent.
    #[arg(long, env = "WAYFINDER_QUERY_MEMORY_BYTES", default_value = "512MiB", value_parser = parse_size)]
    #[serde(with = "size")]
    pub query_memory_bytes: usize,
    /// Most rows in one SQL answer.
    #[arg(long, env = "WAYFINDER_QUERY_MAX_ROWS", default_value = "100000")]
    pub query_max_rows: usize,
    /// Most SQL queries running at once; more get 503 with Retry-After.
    #[arg(long, env = "WAYFINDER_QUERY_MAX_CONCURRENT", default_value = "4")]
    pub query_max_concurrent: usize,
    /// Most clients waiting for weights at once (gRPC Watch streams and HTTP long-polls); more
    /// get a retryable refusal.
    #[arg(long, env = "WAYFINDER_MAX_WATCHERS", default_value = "10000")]
    pub max_watchers: usize,
}

impl Default for QuerySettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl Settings for QuerySettings {
    const SECTION: &'static str = "query";
    const IN_PLACE: &'static [&'static str] = &[
        "query_timeout",
        "query_memory_bytes",
        "query_max_rows",
        "query_max_concurrent",
        "max_watchers",
    ];

    fn validate(&self) -> Result<(), SettingError> {
        if self.max_watchers == 0 {
            return Err(SettingError::invalid(
                "max_watchers",
                "must be at least 1, not 0",
            ));
        }
        if self.query_max_concurrent == 0 {
            return Err(SettingError::invalid(
                "query_max_concurrent",
                "must be at least 1, not 0",
            ));
        }
        Ok(())
    }
}

impl QuerySettings {
    /// The bounds of each SQL query.
    pub(crate) fn limits(&self) -> crate::serve::sql::QueryLimits {
        crate::serve::sql::QueryLimits {
            timeout: self.query_timeout,
            memory_bytes: self.query_memory_bytes,
            max_rows: self.query_max_rows,
            max_concurrent: self.query_max_concurrent,
        }
    }
}
