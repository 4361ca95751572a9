//! The instance registry's settings (`[registry]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::settings::{self, SettingError, Settings, above_zero, duration};
use crate::util::units::parse_duration;

/// The instance registry's settings.
///
/// ```
/// use std::time::Duration;
/// use wayfinder_collector::Config;
///
/// let mut config = Config::default();
/// config.registry.deregister_after = Duration::from_secs(120);
/// config.validate().unwrap();
/// config.registry.max_heartbeat_ttl = Duration::ZERO;
/// assert!(config.validate().is_err(), "a beat must hold for some time");
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RegistrySettings {
    /// How long an instance stays critical (or silent) before it is removed.
    #[arg(long, env = "WAYFINDER_DEREGISTER_AFTER", default_value = "60s", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub deregister_after: Duration,
    /// The longest TTL a heartbeat may have; a longer one is refused.
    #[arg(long, env = "WAYFINDER_MAX_HEARTBEAT_TTL", default_value = "10m", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub max_heartbeat_ttl: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl Settings for RegistrySettings {
    const SECTION: &'static str = "registry";
    const IN_PLACE: &'static [&'static str] = &["deregister_after", "max_heartbeat_ttl"];

    fn validate(&self) -> Result<(), SettingError> {
        above_zero("max_heartbeat_ttl", self.max_heartbeat_ttl)
    }
}
