//! `docs/operations.md` lists every setting: each flag `wayfinder serve --help` prints is in its
//! configuration table, with its environment variable, and the table names no flag that does
//! not exist.

use std::collections::BTreeSet;
use std::process::Command;

#[test]
fn every_flag_of_serve_is_in_the_operations_table_and_no_other() {
    let help = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .args(["serve", "--help"])
        .output()
        .expect("wayfinder runs");
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).expect("utf-8");
    // `      --otlp-grpc <OTLP_GRPC>` … `[env: WAYFINDER_OTLP_GRPC=]`
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("--") {
            let flag: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if flag != "help" {
                flags.insert(format!("--{flag}"));
            }
        }
        if let Some((_, env)) = line.split_once("[env: ") {
            envs.insert(env.split('=').next().unwrap_or_default().to_owned());
        }
    }
    assert!(flags.len() > 20, "the flags were read: {flags:?}");

    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .expect("docs/operations.md");
    let section = doc
        .split("## Configuration")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Configuration section");
    let mut documented = BTreeSet::new();
    let mut documented_envs = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        documented.insert(cells[1].trim_matches('`').to_owned());
        documented_envs.insert(cells[2].trim_matches('`').to_owned());
    }
    let missing: Vec<_> = flags.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&flags).collect();
    assert!(
        missing.is_empty(),
        "flags missing from docs/operations.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "documented flags that do not exist: {stale:?}"
    );
    let missing_envs: Vec<_> = envs.difference(&documented_envs).collect();
    assert!(
        missing_envs.is_empty(),
        "variables missing from docs/operations.md: {missing_envs:?}"
    );
}

/// The file keys of the table, with their section (`None`: at the top of the file).
fn documented_keys() -> Vec<(String, Option<String>)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .expect("docs/operations.md");
    let table = doc
        .split("## Configuration")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Configuration section");
    let mut keys = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `--")) {
        let cell = row.split('|').nth(3).expect("a file-key cell").trim();
        // `[store]` `retention`, or `log_level`, or empty (--config).
        let spans: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        match spans.as_slice() {
            [] => {}
            [key, ..] if !key.starts_with('[') => keys.push((key.to_string(), None)),
            [section, key, ..] => {
                let key = key.split(' ').next().unwrap_or_default();
                keys.push((
                    key.to_owned(),
                    Some(section.trim_matches(['[', ']']).to_owned()),
                ));
            }
            [_] => panic!("a section without its key: {row}"),
        }
    }
    keys
}

#[test]
fn the_documented_file_keys_read_the_same_at_the_top_and_in_their_sections() {
    use clap::Parser as _;
    use wayfinder_collector::config::{Config, ServeArgs};

    let keys = documented_keys();
    assert!(keys.len() > 40, "the table's keys were read: {keys:?}");
    // Every key with a value other than the default where one is easy to pick, so that a key
    // read into the wrong place shows.
    let shown = Config::default().in_force();
    let value = |key: &str| -> Option<String> {
        let changed = match key {
            "retention" => serde_json::json!("2h"),
            "weight_gamma" => serde_json::json!(1.5),
            "query_max_rows" => serde_json::json!(7),
            "topology" => serde_json::json!(false),
            "service_graph_dimensions" => serde_json::json!(["deployment.environment"]),
            "log_level" => serde_json::json!("debug"),
            _ => shown.get(key).cloned().unwrap_or_default(),
        };
        (!changed.is_null()).then(|| changed.to_string())
    };
    let (mut flat, mut top, mut sections) = (String::new(), String::new(), String::new());
    let mut by_section: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (key, section) in &keys {
        let Some(value) = value(key) else { continue };
        let line = format!("{key} = {value}\n");
        flat.push_str(&line);
        match section {
            None => top.push_str(&line),
            Some(section) => by_section.entry(section).or_default().push(line),
        }
    }
    for (section, lines) in by_section {
        sections.push_str(&format!("\n[{section}]\n"));
        sections.extend(lines);
    }
    let dir = tempfile::tempdir().unwrap();
    let resolve = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let args = ServeArgs::try_parse_from(["serve", "--config", path.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{e}"));
        let config = Config::resolve(&args).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        let level = Config::log_filter(&args).unwrap();
        (config, level)
    };
    let (from_flat, flat_level) = resolve("flat.toml", &flat);
    let (from_sections, level) = resolve("sections.toml", &format!("{top}{sections}"));
    assert_eq!(from_flat, from_sections, "{flat}\n---\n{top}{sections}");
    assert_eq!((flat_level.as_str(), level.as_str()), ("debug", "debug"));
    assert_eq!(from_sections.store.retention.as_secs(), 7200);
    assert_eq!(from_sections.weights.weight_gamma, 1.5);
    assert_eq!(from_sections.query.query_max_rows, 7);
    assert!(
        !from_sections.topology.topology,
        "`topology = false` in [topology]"
    );
    assert_eq!(
        from_sections.topology.service_graph_dimensions,
        ["deployment.environment"]
    );
}
