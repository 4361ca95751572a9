//! The configuration of `wayfinder serve`: every part's settings, each part's own struct
//! ([`StoreSettings`], [`WeightsSettings`] …) in its section. Flags beat environment
//! variables, which beat the optional TOML file, which beats the defaults.
//!
//! Every setting has the three spellings, e.g. `--retention`, `WAYFINDER_RETENTION` and
//! `retention = "…"` under `[store]` in the file given by `--config`. Durations are written the
//! `humantime` way (`30s`, `1h`, `500ms`) and sizes in bytes or with a unit (`256MiB`, `1GiB`,
//! `4194304`).
//!
//! ```
//! use clap::Parser;
//! use wayfinder_collector::config::{Config, ServeArgs};
//!
//! let args = ServeArgs::try_parse_from(["serve", "--otlp-grpc", "127.0.0.1:0", "--retention", "2h"]).unwrap();
//! let config = Config::resolve(&args).unwrap();
//! assert_eq!(config.listeners.otlp_grpc.port(), 0);
//! assert_eq!(config.store.retention.as_secs(), 7200);
//! assert_eq!(config.ingest.max_ingest_bytes, 256 * 1024 * 1024); // the default
//! ```

mod args;
mod file;

use std::path::PathBuf;

pub use args::ServeArgs;
use file::{FileConfig, read_file};

pub use crate::graph::registry::RegistrySettings;
pub use crate::graph::spanmetrics::SpanMetricsSettings;
pub use crate::graph::topology::TopologySettings;
pub use crate::graph::weights::WeightsSettings;
pub use crate::ingest::IngestSettings;
pub use crate::ingest::kafka::{KafkaSaslMechanism, KafkaSecurity, KafkaSettings};
pub use crate::net::ListenerSettings;
/// The types of the settings' values: a token and where it comes from, TLS files, log syncing.
pub use crate::net::access::{AccessSettings, SWITCHED_IN_PLACE, Secret, TlsPaths, TokenSource};
pub use crate::serve::QuerySettings;
pub use crate::store::log::WalSync;
pub use crate::store::{StoreSettings, WalSyncMode};
use crate::util::settings::{self, SettingError, Settings};
pub use crate::util::units::{parse_duration, parse_size};

/// The resolved configuration of one collector: each part's settings.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Config {
    /// Where the listeners listen, their connections and deadlines (`[listeners]`).
    pub listeners: ListenerSettings,
    /// Tokens and TLS (`[access]`).
    pub access: AccessSettings,
    /// The receivers' limits and the ingest queue (`[ingest]`).
    pub ingest: IngestSettings,
    /// Fleet mode: the brokers, topics and group (`[kafka]`).
    pub kafka: KafkaSettings,
    /// The span store, the log and the history (`[store]`).
    pub store: StoreSettings,
    /// The instance registry (`[registry]`).
    pub registry: RegistrySettings,
    /// The service graph (`[topology]`).
    pub topology: TopologySettings,
    /// Span metrics (`[spanmetrics]`).
    pub spanmetrics: SpanMetricsSettings,
    /// The weights (`[weights]`).
    pub weights: WeightsSettings,
    /// The query API (`[query]`).
    pub query: QuerySettings,
}

/// Why the configuration could not be resolved.
///
/// ```
/// use clap::Parser;
/// use wayfinder_collector::config::{Config, ConfigError, ServeArgs};
///
/// let args = ServeArgs::try_parse_from(["serve", "--config", "/nowhere/wayfinder.toml"]).unwrap();
/// assert!(matches!(Config::resolve(&args), Err(ConfigError::Read { .. })));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// A value in the file is not valid for its key.
    #[error("invalid value for `{key}` in {path}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// A setting (from a flag, the environment, the file or the code) is outside its range.
    #[error("invalid `{key}` (`--{}`): {message}", .key.replace('_', "-"))]
    Invalid {
        /// The setting, as its file key.
        key: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl ConfigError {
    /// A setting's error, outside any file.
    pub(crate) fn from_setting(error: SettingError) -> Self {
        Self::of(error, std::path::Path::new(""))
    }

    fn of(error: SettingError, path: &std::path::Path) -> Self {
        match error {
            SettingError::Value { key, message } => Self::Value {
                path: path.to_owned(),
                key,
                message,
            },
            SettingError::Parse(message) => Self::Parse {
                path: path.to_owned(),
                message,
            },
            SettingError::Invalid { key, message } => Self::Invalid { key, message },
        }
    }
}

/// Each part's section and its keys.
fn sections() -> Vec<(&'static str, Vec<String>)> {
    vec![
        (
            ListenerSettings::SECTION,
            settings::keys::<ListenerSettings>(),
        ),
        (AccessSettings::SECTION, settings::keys::<AccessSettings>()),
        (IngestSettings::SECTION, settings::keys::<IngestSettings>()),
        (StoreSettings::SECTION, settings::keys::<StoreSettings>()),
        (
            RegistrySettings::SECTION,
            settings::keys::<RegistrySettings>(),
        ),
        (
            TopologySettings::SECTION,
            settings::keys::<TopologySettings>(),
        ),
        (
            SpanMetricsSettings::SECTION,
            settings::keys::<SpanMetricsSettings>(),
        ),
        (
            WeightsSettings::SECTION,
            settings::keys::<WeightsSettings>(),
        ),
        (QuerySettings::SECTION, settings::keys::<QuerySettings>()),
        (KafkaSettings::SECTION, settings::keys::<KafkaSettings>()),
    ]
}

/// The settings (as config-file keys) that a reload changes in place: each part's own.
///
/// ```
/// use wayfinder_collector::IN_PLACE;
///
/// assert!(IN_PLACE.contains(&"weight_gamma"));
/// assert!(!IN_PLACE.contains(&"otlp_grpc"), "a listener's address needs a restart");
/// ```
pub static IN_PLACE: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    [
        ListenerSettings::IN_PLACE,
        AccessSettings::IN_PLACE,
        IngestSettings::IN_PLACE,
        StoreSettings::IN_PLACE,
        RegistrySettings::IN_PLACE,
        TopologySettings::IN_PLACE,
        SpanMetricsSettings::IN_PLACE,
        WeightsSettings::IN_PLACE,
        QuerySettings::IN_PLACE,
        KafkaSettings::IN_PLACE,
    ]
    .concat()
});

impl Config {
    /// Resolves flags and environment (already merged in `args` by clap) over the file named by
    /// `args.config`, over the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::resolve_with(args, |name| std::env::var(name).ok())
    }

    /// [`Config::resolve`], reading the variables that only the environment can set (the
    /// tokens: never flags, which `ps` shows) through `var`.
    ///
    /// ```
    /// use clap::Parser;
    /// use wayfinder_collector::config::{Config, ServeArgs};
    ///
    /// let args = ServeArgs::try_parse_from(["serve"]).unwrap();
    /// let env = |name: &str| (name == "WAYFINDER_QUERY_TOKEN").then(|| "s3cret".to_owned());
    /// let config = Config::resolve_with(&args, env).unwrap();
    /// assert!(config.access.query_token.is_some());
    /// ```
    pub fn resolve_with(
        args: &ServeArgs,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (file, path) = match &args.config {
            Some(path) => (read_file(path, &sections())?, path.clone()),
            None => (FileConfig::default(), PathBuf::new()),
        };
        let matches = args.matches.as_ref();
        let of = |error| ConfigError::of(error, &path);
        let mut config = Config {
            listeners: settings::layer(&file.section(ListenerSettings::SECTION), matches)
                .map_err(of)?,
            access: settings::layer(&file.section(AccessSettings::SECTION), matches).map_err(of)?,
            ingest: settings::layer(&file.section(IngestSettings::SECTION), matches).map_err(of)?,
            store: settings::layer(&file.section(StoreSettings::SECTION), matches).map_err(of)?,
            registry: settings::layer(&file.section(RegistrySettings::SECTION), matches)
                .map_err(of)?,
            topology: settings::layer(&file.section(TopologySettings::SECTION), matches)
                .map_err(of)?,
            spanmetrics: settings::layer(&file.section(SpanMetricsSettings::SECTION), matches)
                .map_err(of)?,
            weights: settings::layer(&file.section(WeightsSettings::SECTION), matches)
                .map_err(of)?,
            query: settings::layer(&file.section(QuerySettings::SECTION), matches).map_err(of)?,
            kafka: settings::layer(&file.section(KafkaSettings::SECTION), matches).map_err(of)?,
        };
        let secret = |name: &str| var(name).filter(|v| !v.is_empty()).map(Secret::new);
        config.access.ingest_token = secret("WAYFINDER_INGEST_TOKEN");
        config.access.query_token = secret("WAYFINDER_QUERY_TOKEN");
        config.kafka.kafka_sasl_password = secret("WAYFINDER_KAFKA_SASL_PASSWORD");
        config.validate()?;
        Ok(config)
    }

    /// Checks every part's settings that have a range; `resolve` and
    /// [`Collector::start`](crate::Collector::start) call it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use wayfinder_collector::Config;
    ///
    /// let mut config = Config::default();
    /// config.validate().unwrap();
    /// config.weights.weight_ttl = Duration::from_millis(500); // below the 1 s update period
    /// assert!(config.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |error| ConfigError::of(error, std::path::Path::new(""));
        self.topology.validate().map_err(invalid)?;
        self.store.validate().map_err(invalid)?;
        self.listeners.validate().map_err(invalid)?;
        self.registry.validate().map_err(invalid)?;
        self.query.validate().map_err(invalid)?;
        self.weights.validate().map_err(invalid)?;
        self.access.validate().map_err(invalid)?;
        self.ingest.validate().map_err(invalid)?;
        self.spanmetrics.validate().map_err(invalid)?;
        self.kafka.validate().map_err(invalid)?;
        // Where the spans are logged before they are sealed: the data directory's write-ahead
        // log, or in fleet mode the spans topic.
        if self.kafka.fleet() && self.store.data_dir.is_some() {
            return Err(invalid(SettingError::invalid(
                "data_dir",
                "is not used in fleet mode (--kafka-brokers): the spans topic is the fleet's log; give --history for the sealed files",
            )));
        }
        if self.store.history.is_some() && self.store.data_dir.is_none() && !self.kafka.fleet() {
            return Err(invalid(SettingError::invalid(
                "history",
                "needs --data-dir (sealed files are replayed from the write-ahead log there) or, in fleet mode, --kafka-brokers",
            )));
        }
        Ok(())
    }

    /// The settings in force as `GET /api/v1/config` shows them: with the config file's keys
    /// and formats (durations as `30s`, sizes in bytes), one object for every part; a token set
    /// through the environment shows as `<redacted>`.
    ///
    /// ```
    /// use wayfinder_collector::Config;
    /// use wayfinder_collector::config::{Secret, TokenSource};
    ///
    /// let mut config = Config::default();
    /// config.access.set_query_tokens(Some(TokenSource::Value(Secret::new("s3cret"))));
    /// let shown = config.in_force();
    /// assert_eq!(shown["retention"], "1h");
    /// assert_eq!(shown["query_token"], "<redacted> (WAYFINDER_QUERY_TOKEN)");
    /// assert!(!shown.to_string().contains("s3cret"));
    /// ```
    pub fn in_force(&self) -> serde_json::Value {
        let mut shown = serde_json::Map::new();
        shown.extend(self.listeners.shown());
        shown.extend(self.access.shown());
        shown.extend(self.ingest.shown());
        shown.extend(self.store.shown());
        shown.extend(self.registry.shown());
        shown.extend(self.topology.shown());
        shown.extend(self.spanmetrics.shown());
        shown.extend(self.weights.shown());
        shown.extend(self.query.shown());
        shown.extend(self.kafka.shown());
        serde_json::Value::Object(shown)
    }

    /// The running configuration with what a reload changes in place taken from `new`.
    pub(crate) fn take_in_place(&mut self, new: &Config) {
        self.listeners.take_in_place(&new.listeners);
        self.access.take_in_place(&new.access);
        self.ingest.take_in_place(&new.ingest);
        self.store.take_in_place(&new.store);
        self.registry.take_in_place(&new.registry);
        self.topology.take_in_place(&new.topology);
        self.spanmetrics.take_in_place(&new.spanmetrics);
        self.weights.take_in_place(&new.weights);
        self.query.take_in_place(&new.query);
        self.kafka.take_in_place(&new.kafka);
    }

    /// The log filter: the flag or `RUST_LOG`, else the file's `log_level`, else `info`.
    ///
    /// ```
    /// use clap::Parser;
    /// use wayfinder_collector::config::{Config, ServeArgs};
    ///
    /// let args = ServeArgs::try_parse_from(["serve", "--log-level", "debug"]).unwrap();
    /// assert_eq!(Config::log_filter(&args).unwrap(), "debug");
    /// ```
    pub fn log_filter(args: &ServeArgs) -> Result<String, ConfigError> {
        if let Some(level) = &args.log_level {
            return Ok(level.clone());
        }
        let file = match &args.config {
            Some(path) => read_file(path, &sections())?,
            None => FileConfig::default(),
        };
        Ok(file.log_level.unwrap_or_else(|| "info".to_owned()))
    }
}

#[cfg(test)]
mod tests;
