//! The store's settings (`[store]`): how long and how much it keeps in memory, and, with a
//! data directory, the write-ahead log, the sealed history and the room kept on the disk.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::log::WalSync;
use crate::util::settings::{self, SettingError, Settings, above_zero, duration, size};
use crate::util::units::{parse_duration, parse_size};

/// When the write-ahead log acknowledges, as a flag.
///
/// ```
/// use clap::Parser;
/// use wayfinder_collector::config::{Config, ServeArgs, WalSyncMode};
///
/// let args = ServeArgs::try_parse_from(["serve", "--wal-sync", "interval"]).unwrap();
/// assert_eq!(Config::resolve(&args).unwrap().store.wal_sync, WalSyncMode::Interval);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalSyncMode {
    /// After `fdatasync`.
    Always,
    /// After `write`, synced every interval.
    Interval,
}

/// The store's settings.
///
/// ```
/// use wayfinder_collector::Config;
///
/// let mut config = Config::default();
/// assert_eq!(config.store.retention.as_secs(), 3600);
/// // Sealed history is replayed from the write-ahead log: it needs a data directory.
/// config.store.history = Some("file:///var/lib/wayfinder/history".into());
/// let error = config.validate().unwrap_err();
/// assert!(error.to_string().contains("--data-dir"), "{error}");
/// ```
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreSettings {
    /// How long spans are kept.
    #[arg(long, env = "WAYFINDER_RETENTION", default_value = "1h", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Memory budget of the span store.
    #[arg(long, env = "WAYFINDER_MAX_STORE_BYTES", default_value = "1GiB", value_parser = parse_size)]
    #[serde(with = "size")]
    pub max_store_bytes: usize,
    /// Directory of the write-ahead log; every accepted request is written there before it is
    /// acknowledged and replayed at start [default: none, spans are kept in memory only].
    #[arg(long, env = "WAYFINDER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When an accepted request is acknowledged: `always` after it is synced to disk (it
    /// survives a power cut), `interval` once written, synced every --wal-sync-interval (a
    /// power cut loses at most that interval).
    #[arg(
        long,
        env = "WAYFINDER_WAL_SYNC",
        value_enum,
        default_value = "interval"
    )]
    pub wal_sync: WalSyncMode,
    /// How often the write-ahead log is synced in `interval` mode.
    #[arg(long, env = "WAYFINDER_WAL_SYNC_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub wal_sync_interval: Duration,
    /// Where spans sealed out of memory go as Parquet files, with --data-dir: a directory,
    /// `file:///…` or `s3://bucket/prefix` (credentials and endpoint from the `AWS_*`
    /// variables) [default: DIR/spans].
    #[arg(long, env = "WAYFINDER_HISTORY")]
    pub history: Option<String>,
    /// Free space kept on the data directory's disk, with --data-dir: below it ingest is
    /// refused (retryably), so that sealing has room to free the log's space.
    #[arg(long, env = "WAYFINDER_DISK_RESERVE", default_value = "256MiB", value_parser = parse_size)]
    #[serde(with = "size")]
    pub disk_reserve: usize,
    /// The longest spans wait in memory before they are sealed to Parquet (sooner when a
    /// million wait or memory is half full).
    #[arg(long, env = "WAYFINDER_SEAL_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    #[serde(with = "duration")]
    pub seal_interval: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        settings::defaults()
    }
}

impl Settings for StoreSettings {
    const SECTION: &'static str = "store";
    const IN_PLACE: &'static [&'static str] = &["retention", "max_store_bytes", "disk_reserve"];

    fn validate(&self) -> Result<(), SettingError> {
        if self.wal_sync == WalSyncMode::Interval && self.wal_sync_interval.is_zero() {
            return Err(SettingError::invalid(
                "wal_sync_interval",
                "must be above zero (use --wal-sync always to sync every request)",
            ));
        }
        above_zero("seal_interval", self.seal_interval)?;
        Ok(())
    }

    fn shown(&self) -> Map<String, Value> {
        let mut shown = settings::shown_as_serialized(self);
        if self.wal_sync == WalSyncMode::Always {
            // Syncing every request has no interval.
            shown.insert("wal_sync_interval".to_owned(), Value::Null);
        }
        shown
    }
}

impl StoreSettings {
    /// When the log acknowledges.
    ///
    /// ```
    /// use std::time::Duration;
    /// use wayfinder_collector::config::{StoreSettings, WalSync};
    ///
    /// let mut store = StoreSettings::default();
    /// assert_eq!(store.wal_sync(), WalSync::Interval(Duration::from_millis(200)));
    /// store.set_wal_sync(WalSync::Always);
    /// assert_eq!(store.wal_sync(), WalSync::Always);
    /// ```
    pub fn wal_sync(&self) -> WalSync {
        match self.wal_sync {
            WalSyncMode::Always => WalSync::Always,
            WalSyncMode::Interval => WalSync::Interval(self.wal_sync_interval),
        }
    }

    /// Sets when the log acknowledges (`wal_sync` and `wal_sync_interval` at once).
    pub fn set_wal_sync(&mut self, sync: WalSync) {
        match sync {
            WalSync::Always => self.wal_sync = WalSyncMode::Always,
            WalSync::Interval(every) => {
                self.wal_sync = WalSyncMode::Interval;
                self.wal_sync_interval = every;
            }
        }
    }
}
