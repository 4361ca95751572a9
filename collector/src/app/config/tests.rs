//! The settings' three spellings, their precedence and their errors.

use clap::Parser as _;

use std::time::Duration;

use super::*;
use crate::graph::weights::WeightsConfig;

#[test]
fn flags_beat_file_beats_defaults() {
    let dir = std::env::temp_dir().join(format!("wayfinder-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wayfinder.toml");
    std::fs::write(
        &path,
        "otlp_grpc = \"127.0.0.1:5000\"\notlp_http = \"127.0.0.1:5001\"\nmax_store_bytes = \"2GiB\"\nquery_max_rows = 7\nretention = \"10m\"\n",
    )
    .unwrap();
    let args = ServeArgs::try_parse_from([
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--otlp-grpc",
        "127.0.0.1:6000",
    ])
    .unwrap();
    let config = Config::resolve(&args).unwrap();
    assert_eq!(
        config.listeners.otlp_grpc,
        "127.0.0.1:6000".parse().unwrap(),
        "the flag beats the file"
    );
    assert_eq!(
        config.listeners.otlp_http,
        "127.0.0.1:5001".parse().unwrap(),
        "the file beats the default"
    );
    assert_eq!(
        config.store.max_store_bytes,
        2 * 1024 * 1024 * 1024,
        "sizes with units in the file"
    );
    assert_eq!(config.query.query_max_rows, 7);
    assert_eq!(config.store.retention, Duration::from_secs(600));
    assert_eq!(
        config.listeners.query_http,
        Config::default().listeners.query_http,
        "unset everywhere: the default"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("wayfinder-config-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "unknown_key = 1\n",
            "unknown field",
            "an unknown key is refused, not ignored",
        ),
        (
            "retention = \"soon\"\n",
            "`retention`",
            "a bad duration names its key",
        ),
        (
            "max_store_bytes = \"lots\"\n",
            "`max_store_bytes`",
            "a bad size names its key",
        ),
        (
            "otlp_grpc = 4317\n",
            "invalid type",
            "a port alone is not an address",
        ),
        (
            "service_graph_buckets = [\"100ms\", \"10ms\"]\n",
            "`service_graph_buckets` (`--service-graph-buckets`): must be one or more durations above zero, ascending",
            "histogram bounds out of order",
        ),
        (
            "service_graph_buckets = [\"fast\"]\n",
            "`service_graph_buckets`",
            "a bound that is not a duration names its key",
        ),
    ];
    for (i, (text, expected, reason)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let args =
            ServeArgs::try_parse_from(["serve", "--config", path.to_str().unwrap()]).unwrap();
        let err = Config::resolve(&args).expect_err(reason).to_string();
        assert!(err.contains(expected), "{reason}: got {err}");
    }
    let missing =
        ServeArgs::try_parse_from(["serve", "--config", "/nonexistent/wayfinder.toml"]).unwrap();
    assert!(matches!(
        Config::resolve(&missing),
        Err(ConfigError::Read { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The weight settings, by file key.
const WEIGHT_KEYS: [&str; 10] = [
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
];

fn resolve(flags: &[&str]) -> Result<Config, ConfigError> {
    let args = ServeArgs::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
        .expect("the flags parse");
    Config::resolve(&args)
}

#[test]
fn the_weight_defaults_are_the_engines() {
    let config = Config::default();
    assert_eq!(config.weights.engine(), WeightsConfig::default());
    assert_eq!(resolve(&[]).unwrap(), config, "nothing set: the defaults");
    config.validate().expect("the defaults are valid");
}

#[test]
fn every_weight_setting_has_a_flag_an_env_var_and_a_file_key() {
    use clap::CommandFactory as _;
    let command = ServeArgs::command();
    for key in WEIGHT_KEYS {
        let flag = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()))
            .unwrap_or_else(|| panic!("--{flag} exists"));
        let env = format!("WAYFINDER_{}", key.to_uppercase());
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(env.as_str()),
            "--{flag} reads {env}"
        );
        assert!(
            !arg.get_default_values().is_empty(),
            "--{flag} says its default (clap shows it in --help)"
        );
    }
    let file = "weight_ttl = \"2m\"\nweight_gamma = 2\nweight_error_penalty = 5.5\n\
                weight_max_step = 1.5\nweight_deadband = 1.1\nweight_min_factor = 0.2\n\
                weight_max_factor = 5.0\nweight_min_requests = 20\n\
                weight_slow_start = \"1m\"\nweight_max_ejection = 0.25\n";
    for key in WEIGHT_KEYS {
        assert!(
            file.contains(&format!("{key} = ")),
            "the file below sets {key}"
        );
    }
    let dir = std::env::temp_dir().join(format!("wayfinder-config-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wayfinder.toml");
    std::fs::write(&path, file).unwrap();
    let parsed = resolve(&["--config", path.to_str().unwrap()]).expect("every key is known");
    assert_eq!(
        parsed.weights.weight_gamma, 2.0,
        "an integer is a float too"
    );
    let config = resolve(&["--config", path.to_str().unwrap(), "--weight-gamma", "3"]).unwrap();
    let rule = config.weights.engine().rule;
    assert_eq!(config.weights.engine().ttl, Duration::from_secs(120));
    assert_eq!(rule.gamma, 3.0, "the flag beats the file");
    assert_eq!(rule.error_penalty, 5.5);
    assert_eq!(rule.max_step, 1.5);
    assert_eq!(rule.deadband, 1.1);
    assert_eq!(rule.min_factor, 0.2);
    assert_eq!(rule.max_factor, 5.0);
    assert_eq!(rule.min_requests, 20);
    assert_eq!(rule.slow_start, Duration::from_secs(60));
    assert_eq!(rule.max_ejection, 0.25);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A row of a table of valid settings: the flags, what the configuration must then say, and
/// why the value is valid.
type Valid = (&'static [&'static str], fn(&Config) -> bool, &'static str);

#[test]
fn weight_settings_in_range_are_taken() {
    let cases: [Valid; 14] = [
        (
            &["--weight-ttl", "10m"],
            |c| c.weights.weight_ttl == Duration::from_secs(600),
            "a longer TTL",
        ),
        (
            &["--weight-ttl", "2s"],
            |c| c.weights.weight_ttl == Duration::from_secs(2),
            "a TTL just longer than the update period",
        ),
        (
            &["--weight-gamma", "0.5"],
            |c| c.weights.weight_gamma == 0.5,
            "a gentler rule",
        ),
        (
            &["--weight-gamma", "3"],
            |c| c.weights.weight_gamma == 3.0,
            "a sharper rule",
        ),
        (
            &["--weight-error-penalty", "0"],
            |c| c.weights.weight_error_penalty == 0.0,
            "errors may be ignored",
        ),
        (
            &["--weight-max-step", "1"],
            |c| c.weights.weight_max_step == 1.0,
            "a step of 1 holds",
        ),
        (
            &["--weight-deadband", "1"],
            |c| c.weights.weight_deadband == 1.0,
            "no deadband",
        ),
        (
            &["--weight-min-factor", "1"],
            |c| c.weights.weight_min_factor == 1.0,
            "no trickle below the mean",
        ),
        (
            &["--weight-min-factor", "1", "--weight-max-factor", "1"],
            |c| c.weights.weight_min_factor == 1.0 && c.weights.weight_max_factor == 1.0,
            "every weight the mean: balancing off",
        ),
        (
            &["--weight-min-requests", "0"],
            |c| c.weights.weight_min_requests == 0,
            "any volume counts",
        ),
        (
            &["--weight-slow-start", "0s"],
            |c| c.weights.weight_slow_start.is_zero(),
            "slow start off",
        ),
        (
            &["--weight-max-ejection", "0"],
            |c| c.weights.weight_max_ejection == 0.0,
            "never eject",
        ),
        (
            &["--weight-max-ejection", "1"],
            |c| c.weights.weight_max_ejection == 1.0,
            "eject all critical but one",
        ),
        (
            &["--weight-update-period", "100ms", "--weight-ttl", "200ms"],
            |c| c.weights.weight_ttl == Duration::from_millis(200),
            "a short TTL with a shorter update period",
        ),
    ];
    for (flags, check, reason) in cases {
        let config = resolve(flags).unwrap_or_else(|e| panic!("{reason}: {e}"));
        assert!(check(&config), "{reason}: {config:?}");
    }
}

#[test]
fn weight_settings_out_of_range_are_clear_errors() {
    let cases: [(&[&str], &str, &str, &str); 20] = [
        (
            &["--weight-ttl", "0s"],
            "weight_ttl",
            "at least 1ms",
            "a zero TTL",
        ),
        (
            &["--weight-ttl", "1s"],
            "weight_ttl",
            "longer than weight_update_period (1s)",
            "weights stale before the next update",
        ),
        (
            &["--weight-gamma", "0"],
            "weight_gamma",
            "greater than 0",
            "gamma 0: every weight equal",
        ),
        (
            &["--weight-gamma=-1"],
            "weight_gamma",
            "greater than 0",
            "a negative gamma favours slow ones",
        ),
        (&["--weight-gamma", "NaN"], "weight_gamma", "not NaN", "NaN"),
        (
            &["--weight-gamma", "inf"],
            "weight_gamma",
            "not inf",
            "infinity",
        ),
        (
            &["--weight-error-penalty=-1"],
            "weight_error_penalty",
            "at least 0",
            "a negative penalty makes failures fast",
        ),
        (
            &["--weight-max-step", "0.9"],
            "weight_max_step",
            "at least 1",
            "a step below 1",
        ),
        (
            &["--weight-max-step", "NaN"],
            "weight_max_step",
            "not NaN",
            "NaN step",
        ),
        (
            &["--weight-deadband", "0.95"],
            "weight_deadband",
            "at least 1",
            "a deadband below 1",
        ),
        (
            &["--weight-min-factor", "0"],
            "weight_min_factor",
            "within (0, 1]",
            "no floor: no probes",
        ),
        (
            &["--weight-min-factor", "1.5"],
            "weight_min_factor",
            "within (0, 1]",
            "a floor above the mean",
        ),
        (
            &["--weight-min-factor", "NaN"],
            "weight_min_factor",
            "not NaN",
            "NaN floor",
        ),
        (
            &["--weight-max-factor", "0.5"],
            "weight_max_factor",
            "at least 1",
            "a ceiling below the mean",
        ),
        (
            &["--weight-max-factor", "inf"],
            "weight_max_factor",
            "not inf",
            "no ceiling",
        ),
        (
            &["--weight-max-ejection=-0.1"],
            "weight_max_ejection",
            "within [0, 1]",
            "a negative share",
        ),
        (
            &["--weight-max-ejection", "1.5"],
            "weight_max_ejection",
            "within [0, 1]",
            "more than every instance",
        ),
        (
            &["--weight-max-ejection", "NaN"],
            "weight_max_ejection",
            "not NaN",
            "NaN share",
        ),
        (
            &["--weight-update-period", "5s", "--weight-ttl", "5s"],
            "weight_ttl",
            "longer than weight_update_period (5s)",
            "a TTL equal to the update period",
        ),
        (
            &[
                "--weight-window",
                "1m",
                "--weight-gamma",
                "0",
                "--weight-max-step",
                "0",
            ],
            "weight_gamma",
            "greater than 0",
            "the first bad setting is named",
        ),
    ];
    for (flags, key, expected, reason) in cases {
        let err = resolve(flags).expect_err(reason);
        assert!(
            matches!(&err, ConfigError::Invalid { key: k, .. } if *k == key),
            "{reason}: names {key}, got {err:?}"
        );
        let text = err.to_string();
        let flag = format!("--{}", key.replace('_', "-"));
        assert!(
            text.contains(expected) && text.contains(&flag),
            "{reason}: got {text}"
        );
    }
}

#[test]
fn bad_weight_values_in_the_file_are_refused_too() {
    let dir = std::env::temp_dir().join(format!(
        "wayfinder-config-bad-weights-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "weight_deadband = 0.5\n",
            "`weight_deadband`",
            "out of range in the file",
        ),
        (
            "weight_ttl = \"never\"\n",
            "`weight_ttl`",
            "a bad duration names its key",
        ),
        (
            "weight_gamma = \"big\"\n",
            "invalid type",
            "a number, not a string",
        ),
        (
            "weight_min_requests = -1\n",
            "weight_min_requests",
            "a count is not negative",
        ),
    ];
    for (i, (text, expected, reason)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let err = resolve(&["--config", path.to_str().unwrap()])
            .expect_err(reason)
            .to_string();
        assert!(err.contains(expected), "{reason}: got {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sizes_and_durations() {
    let sizes = [
        ("4194304", Some(4_194_304), "plain bytes"),
        ("256MiB", Some(256 * 1024 * 1024), "binary unit"),
        ("1GB", Some(1_000_000_000), "decimal unit"),
        ("-1", None, "negative"),
        ("many", None, "not a number"),
    ];
    for (text, expected, reason) in sizes {
        assert_eq!(parse_size(text).ok(), expected, "{reason}");
    }
    assert_eq!(parse_duration("1h").ok(), Some(Duration::from_secs(3600)));
    assert_eq!(
        parse_duration("250ms").ok(),
        Some(Duration::from_millis(250))
    );
    assert!(parse_duration("1 fortnight").is_err());
}

#[test]
fn service_graph_buckets_from_the_command_line() {
    let args =
        ServeArgs::try_parse_from(["serve", "--service-graph-buckets", "10ms,100ms,1s"]).unwrap();
    let config = Config::resolve(&args).unwrap();
    assert_eq!(
        config.topology.service_graph_buckets,
        [
            Duration::from_millis(10),
            Duration::from_millis(100),
            Duration::from_secs(1)
        ]
    );
    assert_eq!(
        Config::default().topology.service_graph_buckets.len(),
        16,
        "the connector's 16 bounds by default"
    );
}

#[test]
fn dimensions_multiplier_and_database_names() {
    let dir = std::env::temp_dir().join(format!("wayfinder-config-dims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dims.toml");
    std::fs::write(
        &file,
        "service_graph_dimensions = [\"deployment.environment\"]\n\
         span_metrics_dimensions = [\"http.route\"]\n\
         span_multiplier_key = \"sampling.ratio\"\n\
         database_name_attributes = [\"db.namespace\"]\n",
    )
    .unwrap();
    let resolve = |flags: &[&str]| {
        let mut all = vec!["serve", "--config", file.to_str().unwrap()];
        all.extend_from_slice(flags);
        Config::resolve(&ServeArgs::try_parse_from(all).unwrap())
    };
    let from_file = resolve(&[]).unwrap();
    assert_eq!(
        from_file.topology.service_graph_dimensions,
        ["deployment.environment"]
    );
    assert_eq!(
        from_file.spanmetrics.span_metrics_dimensions,
        ["http.route"]
    );
    assert_eq!(
        from_file.spanmetrics.span_multiplier_key.as_deref(),
        Some("sampling.ratio")
    );
    assert_eq!(
        from_file.topology.database_name_attributes,
        ["db.namespace"]
    );
    let flags = resolve(&[
        "--service-graph-dimensions",
        "a,b,",
        "--database-name-attributes",
        "db.cluster,peer.service",
    ])
    .unwrap();
    assert_eq!(
        flags.topology.service_graph_dimensions,
        ["a", "b"],
        "the flag wins over the file; a trailing comma adds nothing"
    );
    assert_eq!(
        flags.topology.database_name_attributes,
        ["db.cluster", "peer.service"]
    );
    assert_eq!(
        Config::default().topology.database_name_attributes[0],
        "peer.service",
        "the default precedence starts with peer.service"
    );
    std::fs::write(&file, "database_name_attributes = []\n").unwrap();
    let err = resolve(&[])
        .expect_err("an empty list names no database")
        .to_string();
    assert!(err.contains("database_name_attributes"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_dir_and_wal_sync() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wal.toml");
    std::fs::write(
        &file,
        "data_dir = \"/var/lib/wayfinder\"\nwal_sync = \"interval\"\nwal_sync_interval = \"1s\"\n",
    )
    .unwrap();
    let resolve = |flags: &[&str]| {
        let mut all = vec!["serve", "--config", file.to_str().unwrap()];
        all.extend_from_slice(flags);
        Config::resolve(&ServeArgs::try_parse_from(all).unwrap())
    };
    let defaults = Config::default();
    assert_eq!(defaults.store.data_dir, None, "memory only unless asked");
    assert_eq!(
        defaults.store.wal_sync(),
        WalSync::Interval(Duration::from_millis(200))
    );
    let from_file = resolve(&[]).unwrap();
    assert_eq!(
        from_file.store.data_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/wayfinder"))
    );
    assert_eq!(
        from_file.store.wal_sync(),
        WalSync::Interval(Duration::from_secs(1))
    );
    let flags = resolve(&["--data-dir", "/data", "--wal-sync", "always"]).unwrap();
    assert_eq!(
        flags.store.data_dir.as_deref(),
        Some(std::path::Path::new("/data"))
    );
    assert_eq!(
        flags.store.wal_sync(),
        WalSync::Always,
        "the flag wins over the file"
    );
    let err = resolve(&["--wal-sync-interval", "0s"])
        .expect_err("an interval of zero never waits")
        .to_string();
    assert!(err.contains("wal_sync_interval"), "{err}");
    assert!(
        ServeArgs::try_parse_from(["serve", "--wal-sync", "sometimes"]).is_err(),
        "only always and interval"
    );
}

#[test]
fn sealed_history_settings() {
    let resolve = |flags: &[&str]| {
        let mut all = vec!["serve"];
        all.extend_from_slice(flags);
        Config::resolve(&ServeArgs::try_parse_from(all).unwrap())
    };
    let defaults = Config::default();
    assert_eq!(defaults.store.history, None, "DIR/spans under --data-dir");
    assert_eq!(defaults.store.seal_interval, Duration::from_secs(60));
    let set = resolve(&[
        "--data-dir",
        "/data",
        "--history",
        "s3://bucket/spans",
        "--seal-interval",
        "10s",
    ])
    .unwrap();
    assert_eq!(set.store.history.as_deref(), Some("s3://bucket/spans"));
    assert_eq!(set.store.seal_interval, Duration::from_secs(10));
    // (flags, the setting named in the error, why)
    let refused: [(&[&str], &str, &str); 2] = [
        (
            &["--history", "/elsewhere"],
            "history",
            "sealing replays from the log, so it needs --data-dir",
        ),
        (
            &["--data-dir", "/data", "--seal-interval", "0s"],
            "seal_interval",
            "an interval of zero would seal every tick",
        ),
    ];
    for (flags, setting, why) in refused {
        let err = resolve(flags).expect_err(why).to_string();
        assert!(err.contains(setting), "{why}: {err}");
    }
}

#[test]
fn tokens_come_from_a_file_or_a_variable_never_a_flag() {
    let args = |flags: &[&str]| {
        let mut all = vec!["serve"];
        all.extend_from_slice(flags);
        ServeArgs::try_parse_from(all).unwrap()
    };
    let no_env = |_: &str| None;
    let from_var = |name: &str| (name == "WAYFINDER_QUERY_TOKEN").then(|| "q-secret".to_owned());
    let config =
        Config::resolve_with(&args(&["--ingest-token-file", "/etc/wf/ingest"]), from_var).unwrap();
    assert_eq!(
        config.access.ingest_tokens().unwrap(),
        Some(TokenSource::File("/etc/wf/ingest".into()))
    );
    assert_eq!(
        config.access.query_tokens().unwrap(),
        Some(TokenSource::Value(Secret::new("q-secret")))
    );
    assert!(
        !format!("{config:?}").contains("q-secret"),
        "the configuration's Debug hides the token"
    );
    assert_eq!(
        Config::resolve_with(&args(&[]), no_env)
            .unwrap()
            .access
            .query_tokens()
            .unwrap(),
        None
    );
    let both = Config::resolve_with(&args(&["--query-token-file", "/etc/wf/query"]), from_var)
        .expect_err("a file and a variable for one listener")
        .to_string();
    assert!(both.contains("WAYFINDER_QUERY_TOKEN"), "{both}");
    assert!(
        ServeArgs::try_parse_from(["serve", "--query-token", "x"]).is_err(),
        "no flag carries a token"
    );
}

#[test]
fn the_configuration_in_force_reads_back_as_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.store.retention = Duration::from_secs(5400);
    config.store.data_dir = Some(dir.path().join("data"));
    config.store.set_wal_sync(WalSync::Always);
    config.topology.service_graph_dimensions = vec!["deployment.environment".into()];
    config.weights.weight_max_step = 1.5;
    config
        .access
        .set_ingest_tokens(Some(TokenSource::File(dir.path().join("ingest-tokens"))));
    config
        .access
        .set_query_tokens(Some(TokenSource::Value(Secret::new("never-shown"))));
    let shown = config.in_force();
    assert!(!shown.to_string().contains("never-shown"));
    assert_eq!(shown["query_token"], "<redacted> (WAYFINDER_QUERY_TOKEN)");
    // Every key but the redacted token is a key of the file, in the file's format.
    let mut file = String::new();
    for (key, value) in shown.as_object().unwrap() {
        if value.is_null() || key == "query_token" {
            continue;
        }
        file.push_str(&format!("{key} = {value}\n"));
    }
    let path = dir.path().join("in-force.toml");
    std::fs::write(&path, &file).unwrap();
    let args = ServeArgs::try_parse_from(["serve", "--config", path.to_str().unwrap()]).unwrap();
    let var = |name: &str| (name == "WAYFINDER_QUERY_TOKEN").then(|| "never-shown".to_owned());
    let read_back = Config::resolve_with(&args, var).unwrap_or_else(|e| panic!("{e}\n{file}"));
    assert_eq!(read_back, config, "{file}");
}

#[test]
fn each_part_reads_its_section_and_flat_keys_still_load_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wayfinder.toml");
    std::fs::write(
        &path,
        "log_level = \"debug\"\nretention = \"2h\"\n\n[weights]\nweight_gamma = 2.5\n\n\
         [store]\nmax_store_bytes = \"2GiB\"\n\n[listeners]\notlp_grpc = \"127.0.0.1:5000\"\n",
    )
    .unwrap();
    let logged = crate::testing::LogCapture::on_this_thread();
    let config = resolve(&["--config", path.to_str().unwrap(), "--weight-max-step", "2"]).unwrap();
    assert_eq!(config.weights.weight_gamma, 2.5, "[weights] is read");
    assert_eq!(
        config.weights.weight_max_step, 2.0,
        "the flag beats the file"
    );
    assert_eq!(config.store.max_store_bytes, 2 << 30, "[store] is read");
    assert_eq!(
        config.listeners.otlp_grpc.port(),
        5000,
        "[listeners] is read"
    );
    assert_eq!(
        config.store.retention.as_secs(),
        7200,
        "a flat key still loads"
    );
    let logged = logged.text();
    assert!(
        logged.contains("write `retention` under [store]"),
        "the warning names the new place: {logged}"
    );
    assert!(
        !logged.contains("weight_gamma"),
        "keys in their sections are quiet: {logged}"
    );
    let file = super::file::read_file(&path, &super::sections()).unwrap();
    assert_eq!(
        file.moved,
        [("retention".to_owned(), "store")],
        "the flat key is warned about, with its section; keys in their sections are quiet"
    );
    // (file, the error's words, why)
    let refused = [
        (
            "[weights]\nretention = \"2h\"\n",
            "unknown field `retention` in [weights]",
            "a key in another part's section",
        ),
        (
            "[nowhere]\nx = 1\n",
            "unknown field `nowhere`",
            "a section no part has",
        ),
        (
            "[store]\nretention = \"soon\"\n",
            "`retention`",
            "a bad value in a section names its key",
        ),
    ];
    for (text, expected, why) in refused {
        std::fs::write(&path, text).unwrap();
        let error = resolve(&["--config", path.to_str().unwrap()])
            .expect_err(why)
            .to_string();
        assert!(error.contains(expected), "{why}: {error}");
    }
}
