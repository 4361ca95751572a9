//! What the fleet's tests share: a collector process of the fleet, the partitions each owns,
//! traces sent and counted.

#![allow(
    dead_code,
    reason = "each of the fleet's test files uses its part of this module"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use wayfinder_collector::testing::{span, trace_request};

use crate::common::{self, Killed};

/// The spans topic's partitions in the fleet's tests.
pub(crate) const PARTITIONS: u32 = 6;

/// A collector of the fleet: its process and its addresses.
pub(crate) struct Collector {
    pub(crate) process: Killed,
    pub(crate) otlp_http: SocketAddr,
    pub(crate) query_http: SocketAddr,
    pub(crate) query_grpc: SocketAddr,
}

/// A `wayfinder serve` of the fleet on `broker`, with `args` and `env` added.
pub(crate) fn collector(broker: SocketAddr, args: &[&str], env: &[(&str, String)]) -> Collector {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .arg("serve")
        .args(["--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0"])
        .args(["--query-http", "127.0.0.1:0", "--query-grpc", "127.0.0.1:0"])
        .args(["--kafka-brokers", &broker.to_string()])
        .args(["--kafka-partitions", &PARTITIONS.to_string()])
        .args(["--log-level", "warn"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let addrs = common::listening(&mut child);
    Collector {
        process: Killed(child),
        otlp_http: addrs["otlp-http"],
        query_http: addrs["query-http"],
        query_grpc: addrs["query-grpc"],
    }
}

/// The partitions a collector's `/metrics` says it owns.
pub(crate) fn owned(query: SocketAddr) -> BTreeSet<u32> {
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
pub(crate) fn shared(collectors: &[&Collector]) -> bool {
    let owners: Vec<BTreeSet<u32>> = collectors.iter().map(|c| owned(c.query_http)).collect();
    let all: Vec<u32> = owners.iter().flatten().copied().collect();
    all.len() == PARTITIONS as usize && all.iter().collect::<BTreeSet<_>>().len() == all.len()
}

pub(crate) fn trace_id(n: u32) -> [u8; 16] {
    let mut id = [0x5au8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id
}

/// Sends trace `n` (two spans, one request, started now: sealed files past the retention are
/// deleted) to `to`; whether it was acknowledged.
pub(crate) fn send(to: SocketAddr, n: u32) -> bool {
    let id = trace_id(n);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64;
    let spans = vec![
        span(id, u64::from(n) * 2 + 1, "GET /a", now, now + 8_000),
        span(id, u64::from(n) * 2 + 2, "GET /b", now + 1_000, now + 7_000),
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
pub(crate) fn stored(collectors: &[&Collector]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for collector in collectors {
        let (_, answer) = sql(
            collector,
            "SELECT trace_id, count(*) FROM spans GROUP BY trace_id",
        );
        for row in answer["rows"].as_array().expect("rows") {
            let id = row[0].as_str().expect("a trace id").to_owned();
            *counts.entry(id).or_insert(0) += row[1].as_u64().expect("a count");
        }
    }
    counts
}

/// Waits until `ready` holds, for at most `within`; `what` says what did not happen.
pub(crate) fn wait_for(within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Load on every collector of `fleet` from a thread of its own; after `before`, the first is
/// killed with SIGKILL (no goodbye to the group, which waits out the session timeout) and
/// removed; once the survivors own every partition (within 15 s), and a second more, the load
/// stops. The traces acknowledged, and how long after the kill the partitions were owned again.
pub(crate) fn kill_under_load(
    fleet: &mut Vec<Collector>,
    before: Duration,
) -> (Vec<u32>, Duration) {
    let targets: Vec<SocketAddr> = fleet.iter().map(|c| c.otlp_http).collect();
    let running = Arc::new(AtomicBool::new(true));
    let sender = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut n = 0u32;
            while running.load(Ordering::Relaxed) {
                n += 1;
                if send(targets[n as usize % targets.len()], n) {
                    acked.push(n);
                }
            }
            acked
        })
    };
    let started = Instant::now();
    wait_for(before * 2, "the load's start", || {
        started.elapsed() >= before
    });
    let dead = fleet.remove(0);
    drop(dead.process);
    let killed = Instant::now();
    let survivors: Vec<&Collector> = fleet.iter().collect();
    wait_for(
        Duration::from_secs(15),
        "the survivors did not take the dead collector's partitions",
        || shared(&survivors),
    );
    let moved = killed.elapsed();
    wait_for(
        Duration::from_secs(2),
        "a second of load after the move",
        || killed.elapsed() >= moved + Duration::from_secs(1),
    );
    running.store(false, Ordering::Relaxed);
    let acked = sender.join().expect("the sender");
    assert!(
        acked.len() > 50,
        "load was sent: {} acknowledged",
        acked.len()
    );
    (acked, moved)
}

/// `sql` on `collector`: the response's head and its JSON answer (a 200 is asserted).
pub(crate) fn sql(collector: &Collector, sql: &str) -> (String, serde_json::Value) {
    let body = serde_json::json!({ "sql": sql }).to_string();
    let response = common::http_exchange(
        collector.query_http,
        "POST /api/v1/sql",
        "Content-Type: application/json\r\n",
        &body,
        Duration::from_secs(20),
    );
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    (head.to_owned(), serde_json::from_str(body).expect("JSON"))
}
