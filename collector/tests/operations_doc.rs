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
