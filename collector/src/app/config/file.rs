//! The optional TOML file of `wayfinder serve`: a section per part (`[store]`, `[weights]` …)
//! and `log_level` at the top. The flat keys of earlier releases (`retention = "2h"` at the
//! top) are still read for one release, each with a warning naming its section.

use std::path::Path;

use super::ConfigError;

/// The file's sections and what they hold, as read.
#[derive(Debug, Default)]
pub(super) struct FileConfig {
    /// Each section's keys and values, flat keys moved into their section.
    pub(super) sections: std::collections::BTreeMap<String, toml::Table>,
    /// The log filter, if the file sets one.
    pub(super) log_level: Option<String>,
    /// The flat keys of an earlier release, in the file's order, each with the section it was
    /// moved into (each is warned about as it is read).
    pub(super) moved: Vec<(String, &'static str)>,
}

impl FileConfig {
    /// The keys and values the file gives `section` (none: an empty table).
    pub(super) fn section(&self, section: &str) -> toml::Table {
        self.sections.get(section).cloned().unwrap_or_default()
    }
}

/// Reads `path`: `sections` are the parts' section names, each with its keys.
pub(super) fn read_file(
    path: &Path,
    sections: &[(&'static str, Vec<String>)],
) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parse = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| parse(e.to_string()))?;
    let mut file = FileConfig::default();
    for (key, value) in table {
        if key == "log_level" {
            let level = value
                .as_str()
                .ok_or_else(|| parse("invalid type: `log_level` must be a string".to_owned()))?;
            file.log_level = Some(level.to_owned());
            continue;
        }
        // A section; `topology = false` at the top is the flat key of `[topology]`.
        if sections.iter().any(|(name, _)| *name == key)
            && let toml::Value::Table(entries) = value
        {
            file.sections.entry(key).or_default().extend(entries);
            continue;
        }
        // A flat key of an earlier release: into the section that has it.
        let Some((name, _)) = sections.iter().find(|(_, keys)| keys.contains(&key)) else {
            return Err(parse(format!("unknown field `{key}`")));
        };
        tracing::warn!(
            file = %path.display(),
            key,
            section = name,
            "a setting at the top of the configuration file is read for this release only: write `{key}` under [{name}]"
        );
        file.moved.push((key.clone(), name));
        // The section's own spelling wins over the old one.
        let section = file.sections.entry((*name).to_owned()).or_default();
        section.entry(key).or_insert(value);
    }
    Ok(file)
}
