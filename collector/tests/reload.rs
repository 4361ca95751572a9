//! `wayfinder serve --config FILE` reloads its file when it changes and on SIGHUP: a limit and
//! the log level change in place, an invalid file is refused and the running configuration
//! stays, and the process keeps serving throughout.

use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn config_value(addr: SocketAddr, key: &str) -> String {
    let answer = common::http_exchange(addr, "GET /api/v1/config", "", "", Duration::from_secs(5));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
    json[key].to_string()
}

/// Polls until `key` shows `want`, for at most 10 s.
#[allow(
    clippy::disallowed_methods,
    reason = "polls a child process from a synchronous test"
)]
fn wait_for(addr: SocketAddr, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = config_value(addr, key);
        if shown == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key} is {shown}, not {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "polls a child process from a synchronous test"
)]
fn the_config_file_is_watched_and_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wayfinder.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    let listen = r#"
otlp_grpc = "127.0.0.1:0"
otlp_http = "127.0.0.1:0"
query_http = "127.0.0.1:0"
query_grpc = "127.0.0.1:0"
"#;
    write(&format!(
        "{listen}query_max_rows = 100\nlog_level = \"info\"\n"
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .args(["serve", "--config"])
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Read as it comes: a debug log left in a full pipe would stop the collector.
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut query = None;
    for _ in 0..4 {
        let line = lines.next().expect("a line").expect("text");
        if let Some(addr) = line.strip_prefix("listening query-http ") {
            query = Some(addr.parse::<SocketAddr>().expect("an address"));
        }
    }
    let query = query.expect("the query API's address");
    assert_eq!(config_value(query, "query_max_rows"), "100");

    // A changed file is seen without a signal.
    write(&format!(
        "{listen}query_max_rows = 7\nlog_level = \"debug\"\n"
    ));
    wait_for(query, "query_max_rows", "7");

    // An invalid file, then SIGHUP: refused, the running configuration stays.
    write("query_max_rows = \"many\"\n");
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = common::http_exchange(query, "GET /metrics", "", "", Duration::from_secs(5));
        if metrics.contains("wayfinder_config_reloads_total{outcome=\"rejected\"}") {
            break;
        }
        assert!(Instant::now() < deadline, "no refused reload counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(config_value(query, "query_max_rows"), "7");

    // A listen address differs: reported as needing a restart, the running one stays.
    write(&format!(
        "{}query_max_rows = 9\n",
        listen.replace(
            "query_grpc = \"127.0.0.1:0\"",
            "query_grpc = \"127.0.0.1:1\""
        )
    ));
    signal(&child, "HUP");
    wait_for(query, "query_max_rows", "9");
    assert_eq!(config_value(query, "query_grpc"), "\"127.0.0.1:0\"");

    signal(&child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    let stderr = stderr.join().unwrap();
    assert!(stderr.contains("log filter changed"), "{stderr}");
    assert!(
        stderr.contains("the new configuration is refused"),
        "{stderr}"
    );
    assert!(
        stderr.contains("needs_restart=[\"query_grpc\"]"),
        "{stderr}"
    );
}
