//! The shape every part's settings take: one struct per part, in the part's own folder, that
//! is at once its command-line flags (clap flattens it; each flag has its environment
//! variable and its default), its section of the configuration file (serde), and the values
//! in force. A setting is written once, as a field of its part's struct:
//!
//! ```text
//! /// How often load-balancing weights are computed.
//! #[arg(long, env = "WAYFINDER_WEIGHT_UPDATE_PERIOD", default_value = "1s", value_parser = parse_duration)]
//! #[serde(with = "duration")]
//! pub weight_update_period: Duration,
//! ```
//!
//! The field's name is its key everywhere: the flag (`--weight-update-period`), the file key
//! (`weight_update_period`, in the part's section), the key of `GET /api/v1/config`. Its
//! default is the flag's, so that `--help` shows the one that is used.
//!
//! Precedence: a flag, then its environment variable, then the file, then the default
//! ([`layer`]).

use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A part's settings.
pub(crate) trait Settings:
    Args + FromArgMatches + Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq
{
    /// The section of the configuration file, e.g. `weights` for `[weights]`.
    const SECTION: &'static str;

    /// The keys a reload changes in place; the others need a restart.
    const IN_PLACE: &'static [&'static str] = &[];

    /// Checks the values that have a range, and those that go together.
    fn validate(&self) -> Result<(), SettingError> {
        Ok(())
    }

    /// Takes from `new` what [`IN_PLACE`](Self::IN_PLACE) names (a reload).
    fn take_in_place(&mut self, new: &Self) {
        let (mut running, new) = (to_map(self), to_map(new));
        for key in Self::IN_PLACE {
            if let Some(value) = new.get(*key) {
                running.insert((*key).to_owned(), value.clone());
            }
        }
        match serde_json::from_value(Value::Object(running)) {
            Ok(merged) => *self = merged,
            // Values that serialised from this type read back as it.
            Err(error) => {
                tracing::error!(section = Self::SECTION, %error, "settings do not read back")
            }
        }
    }

    /// The settings as `GET /api/v1/config` shows them, keyed as in the file.
    fn shown(&self) -> Map<String, Value> {
        to_map(self)
    }

    /// What the command line said that the struct's own fields do not carry (a negated flag).
    fn given(&mut self, _matches: &ArgMatches) {}

    /// Puts the values in their one form once layered (list items trimmed, empty ones
    /// dropped; a floor raised to).
    fn normalize(&mut self) {}
}

/// A setting that is not valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum SettingError {
    /// A value in the file could not be read for its key.
    #[error("invalid value for `{key}`: {message}")]
    Value {
        /// The key.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// The file has a key no part knows, or a section that is not a table.
    #[error("{0}")]
    Parse(String),
    /// A setting is outside its range.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl SettingError {
    /// An out-of-range `key`.
    pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            message: message.into(),
        }
    }
}

/// The settings as serialised, keyed as in the file (what [`Settings::shown`] starts from).
pub(crate) fn shown_as_serialized(settings: &impl Serialize) -> Map<String, Value> {
    to_map(settings)
}

fn to_map(settings: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(settings) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// The settings as a TOML table (which, unlike JSON, keeps a NaN: out-of-range values reach
/// the check, and are refused there with their key). A `None` is an absent key.
fn to_table(settings: &impl Serialize) -> toml::Table {
    toml::Table::try_from(settings).unwrap_or_default()
}

/// The command of `S`'s flags alone, without their environment variables.
fn command<S: Settings>() -> Command {
    S::augment_args(Command::new(S::SECTION).no_binary_name(true))
        .mut_args(|arg| arg.env(None::<&'static str>))
}

/// `S` with every default: its flags' defaults, the environment not read.
pub(crate) fn defaults<S: Settings>() -> S {
    let matches = command::<S>()
        .try_get_matches_from(std::iter::empty::<String>())
        .unwrap_or_else(|e| unreachable!("no flag is required: {e}"));
    S::from_arg_matches(&matches).unwrap_or_else(|e| unreachable!("defaults parse: {e}"))
}

/// The keys of `S`'s section.
pub(crate) fn keys<S: Settings>() -> Vec<String> {
    to_map(&defaults::<S>())
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// `S` from its section of the file (`file`: the keys and values found for it), under what the
/// command line and the environment gave (`matches`, if any): a flag, then its variable, then
/// the file, then the default.
pub(crate) fn layer<S: Settings>(
    file: &toml::Table,
    matches: Option<&ArgMatches>,
) -> Result<S, SettingError> {
    let defaults = defaults::<S>();
    let known = keys::<S>();
    let mut layered = to_table(&defaults);
    // Each key read alone, so that an error names its key.
    for (key, value) in file {
        if !known.contains(key) {
            return Err(SettingError::Parse(format!(
                "unknown field `{key}` in [{}]",
                S::SECTION
            )));
        }
        let mut one = toml::Table::new();
        one.insert(key.clone(), value.clone());
        let read: S = toml::Value::Table(one)
            .try_into()
            .map_err(|e: toml::de::Error| SettingError::Value {
                key: key.clone(),
                message: e.message().trim().to_owned(),
            })?;
        if let Some(value) = to_table(&read).remove(key) {
            layered.insert(key.clone(), value);
        }
    }
    let Some(matches) = matches else {
        let mut settings: S = read_back(layered)?;
        settings.normalize();
        return Ok(settings);
    };
    let given = S::from_arg_matches(matches).map_err(|e| SettingError::Parse(e.to_string()))?;
    let given_table = to_table(&given);
    for (key, value) in given_table {
        // Only the ids present are asked about (a field that is no flag has none).
        let from_user = matches.ids().any(|id| id.as_str() == key)
            && matches!(
                matches.value_source(&key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
        if from_user {
            layered.insert(key, value);
        }
    }
    let mut settings: S = read_back(layered)?;
    settings.given(matches);
    settings.normalize();
    Ok(settings)
}

fn read_back<S: Settings>(table: toml::Table) -> Result<S, SettingError> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| SettingError::Parse(e.message().trim().to_owned()))
}

/// A list setting's items trimmed, empty ones (a trailing comma) dropped.
pub(crate) fn tidy(items: &mut Vec<String>) {
    for item in items.iter_mut() {
        *item = item.trim().to_owned();
    }
    items.retain(|item| !item.is_empty());
}

/// Durations in the file and in `GET /api/v1/config`: `30s`, `1h`, `250ms`.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::util::units::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Lists of durations (histogram bounds).
pub(crate) mod durations {
    use std::time::Duration;

    use serde::ser::SerializeSeq as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(values: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(values.len()))?;
        for value in values {
            seq.serialize_element(&humantime::format_duration(*value).to_string())?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| crate::util::units::parse_duration(text).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Sizes: a number of bytes, or in the file a text with a unit (`256MiB`); shown in bytes.
pub(crate) mod size {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(usize),
        Text(String),
    }

    pub(crate) fn serialize<S: Serializer>(value: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*value as u64)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        match Size::deserialize(d)? {
            Size::Bytes(n) => Ok(n),
            Size::Text(text) => {
                crate::util::units::parse_size(&text).map_err(serde::de::Error::custom)
            }
        }
    }
}

/// A setting's range: a number of at least `lo` (NaN fails every comparison, so it is refused
/// too).
pub(crate) fn at_least(key: &'static str, value: f64, lo: f64) -> Result<(), SettingError> {
    if value.is_finite() && value >= lo {
        Ok(())
    } else {
        Err(SettingError::invalid(
            key,
            format!("must be a number of at least {lo}, not {value}"),
        ))
    }
}

/// A setting's range: within `(lo, hi]` (`lo_open`) or `[lo, hi]`.
pub(crate) fn within(
    key: &'static str,
    value: f64,
    lo_open: bool,
    lo: f64,
    hi: f64,
) -> Result<(), SettingError> {
    let above_lo = if lo_open { value > lo } else { value >= lo };
    if above_lo && value <= hi {
        Ok(())
    } else {
        let open = if lo_open { '(' } else { '[' };
        Err(SettingError::invalid(
            key,
            format!("must be within {open}{lo}, {hi}], not {value}"),
        ))
    }
}

/// A duration that must be above zero.
pub(crate) fn above_zero(key: &'static str, value: Duration) -> Result<(), SettingError> {
    if value.is_zero() {
        Err(SettingError::invalid(key, "must be above zero"))
    } else {
        Ok(())
    }
}
