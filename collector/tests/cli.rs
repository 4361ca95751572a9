//! The `wayfinder serve` binary: addresses from flags and environment, the `listening` lines,
//! and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// One request without a body (`request_line` and `headers`, each header ending in CRLF) on
/// a connection of its own; the whole response as text.
fn http_request(addr: SocketAddr, request_line: &str, headers: &str) -> String {
    common::http_exchange(addr, request_line, headers, "", Duration::from_secs(5))
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    http_request(addr, &format!("GET {path}"), "")
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "polls a child process from a synchronous test"
)]
fn serve_prints_its_addresses_and_exits_cleanly_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .args([
            "serve",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--query-http",
            "127.0.0.1:0",
            "--query-grpc",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        // The environment fills what the flags leave out.
        .env("WAYFINDER_OTLP_HTTP", "127.0.0.1:0")
        .env("WAYFINDER_QUERY_HTTP", "127.0.0.1:1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addrs = std::collections::HashMap::new();
    for _ in 0..4 {
        let line = lines.next().expect("a line").expect("text");
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("listening"), "{line}");
        let name = words.next().expect("a listener name").to_owned();
        let addr: SocketAddr = words
            .next()
            .expect("an address")
            .parse()
            .expect("a socket address");
        assert_ne!(addr.port(), 0, "the real port is printed");
        addrs.insert(name, addr);
    }
    assert_eq!(addrs.len(), 4, "{addrs:?}");
    // The signals are taken before the addresses are printed: a SIGHUP at once (whose default
    // action would end the process) is a reload, and the collector goes on.
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let query = addrs["query-http"];
    assert_ne!(query.port(), 1, "the flag beats the environment");
    assert!(http_get(query, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http_get(query, "/readyz").starts_with("HTTP/1.1 200"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let cases = [
        (
            vec!["serve", "--retention", "forever"],
            "forever",
            "a bad duration",
        ),
        (
            vec!["serve", "--otlp-grpc", "localhost"],
            "localhost",
            "an address without a port",
        ),
        (
            vec!["serve", "--config", "/nonexistent/wayfinder.toml"],
            "cannot read the config file",
            "a missing config file",
        ),
    ];
    for (args, expected, reason) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
            .args(&args)
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{reason}: exits non-zero");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{reason}: {stderr}");
        assert!(!stderr.contains("panicked"), "{reason}: no panic");
    }
}

/// An empty OTLP/HTTP export (a valid request with no spans) with `authorization`.
fn post_traces(addr: SocketAddr, authorization: &str) -> String {
    http_request(
        addr,
        "POST /v1/traces",
        &format!(
            "Authorization: {authorization}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n"
        ),
    )
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "polls a child process from a synchronous test"
)]
fn a_token_from_the_environment_guards_ingest_and_never_reaches_the_log() {
    const SECRET: &str = "the-ingest-secret-4711";
    const GUESS: &str = "a-wrong-guess-0815";
    let mut child = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .args([
            "serve",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
        ])
        .args(["--query-http", "127.0.0.1:0", "--query-grpc", "127.0.0.1:0"])
        .args(["--log-level", "debug"])
        .env("WAYFINDER_INGEST_TOKEN", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut otlp_http = None;
    for _ in 0..4 {
        let line = lines.next().expect("a line").expect("text");
        if let Some(addr) = line.strip_prefix("listening otlp-http ") {
            otlp_http = Some(addr.parse::<SocketAddr>().unwrap());
        }
    }
    let otlp_http = otlp_http.expect("the OTLP/HTTP address");
    let refused = post_traces(otlp_http, &format!("Bearer {GUESS}"));
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let taken = post_traces(otlp_http, &format!("Bearer {SECRET}"));
    assert!(taken.starts_with("HTTP/1.1 200"), "{taken}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("collector started"),
        "the debug log was read: {log}"
    );
    assert!(!log.contains(SECRET), "the token is in the log: {log}");
    assert!(!log.contains(GUESS), "a refused token is in the log: {log}");
}
