//! Durability of the `wayfinder` binary with `--data-dir`: SIGKILL in the middle of a sustained
//! OTLP/gRPC ingest with `--wal-sync always`, a restart on the same directory, and every
//! acknowledged span is there exactly once; SIGTERM in the middle of one: exit 0 within 10 s
//! and nothing acknowledged lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use wayfinder_collector::testing::{RawCodec, TRACE_EXPORT_PATH};
use wayfinder_collector::testing::{span, trace_request};

mod common;

/// Senders, each with a trace of its own, sending requests one after another.
const SENDERS: u8 = 4;
const SPANS_PER_REQUEST: u64 = 50;
/// Acknowledged requests (all senders together) after which the collector is killed.
const KILL_AFTER: u64 = 120;

struct Serve {
    child: Child,
    addrs: HashMap<String, SocketAddr>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data_dir: &Path, sync: &str) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .arg("serve")
        .args(["--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0"])
        .args(["--query-http", "127.0.0.1:0", "--query-grpc", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--wal-sync", sync, "--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let addrs = common::listening(&mut child);
    Serve { child, addrs }
}

/// One SQL query through `POST /api/v1/sql`, its rows as JSON.
fn sql(addr: SocketAddr, query: &str) -> Vec<Vec<serde_json::Value>> {
    let body = serde_json::json!({ "sql": query }).to_string();
    let response = common::http_exchange(
        addr,
        "POST /api/v1/sql",
        "Content-Type: application/json\r\n",
        &body,
        Duration::from_secs(20),
    );
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{query}: {response}");
    let answer: serde_json::Value = serde_json::from_str(body).expect("JSON");
    serde_json::from_value(answer["rows"].clone()).expect("rows")
}

fn int(value: &serde_json::Value) -> u64 {
    value.as_u64().expect("an integer")
}

fn trace_id(sender: u8) -> [u8; 16] {
    [sender + 1; 16]
}

/// Sends requests of spans numbered 1, 2, 3... until one fails; returns how many spans were
/// acknowledged (always a whole number of requests: the first ones).
async fn send_until_refused(grpc_addr: SocketAddr, sender: u8, acked: Arc<AtomicU64>) -> u64 {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
    else {
        return 0;
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH);
    let mut next = 1u64;
    loop {
        let spans = (next..next + SPANS_PER_REQUEST)
            .map(|id| span(trace_id(sender), id, "work", 1_000, 2_000))
            .collect();
        let body = trace_request(Some("crashy"), spans).encode_to_vec();
        if grpc.ready().await.is_err() {
            return next - 1;
        }
        let answer = grpc
            .unary(
                tonic::Request::new(Bytes::from(body)),
                path.clone(),
                RawCodec,
            )
            .await;
        if answer.is_err() {
            return next - 1;
        }
        acked.fetch_add(1, Ordering::Relaxed);
        next += SPANS_PER_REQUEST;
    }
}

/// [`SENDERS`] senders at work against one collector.
struct Load {
    senders: Vec<tokio::task::JoinHandle<u64>>,
    acked_requests: Arc<AtomicU64>,
}

impl Load {
    fn start(grpc_addr: SocketAddr) -> Self {
        let acked_requests = Arc::new(AtomicU64::new(0));
        let senders = (0..SENDERS)
            .map(|sender| {
                tokio::spawn(send_until_refused(
                    grpc_addr,
                    sender,
                    acked_requests.clone(),
                ))
            })
            .collect();
        Self {
            senders,
            acked_requests,
        }
    }

    /// Waits (up to 30 s) until `requests` are acknowledged; whether they were.
    async fn until_acknowledged(&self, requests: u64) -> bool {
        for _ in 0..3000 {
            if self.acked_requests.load(Ordering::Relaxed) >= requests {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// The spans each sender had acknowledged when it was refused.
    async fn finish(self) -> Vec<u64> {
        let mut acked = Vec::new();
        for sender in self.senders {
            acked.push(
                tokio::time::timeout(Duration::from_secs(20), sender)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        acked
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = serve(dir.path(), "always");
    let grpc_addr = first.addrs["otlp-grpc"];
    let load = Load::start(grpc_addr);
    // Killed while the senders are at work: at least KILL_AFTER requests acknowledged, more
    // on the way.
    let reached = load.until_acknowledged(KILL_AFTER).await;
    assert!(reached, "the collector acknowledged too little in 30 s");
    first.child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    first.child.wait().unwrap();
    let acked = load.finish().await;
    assert!(
        acked.iter().all(|&n| n > 0),
        "every sender was acknowledged: {acked:?}"
    );
    drop(first);

    let second = serve(dir.path(), "always");
    let query = second.addrs["query-http"];
    check_every_acknowledged_span_once(query, &acked).await;
}

/// Waits until the restarted collector holds the spans, then checks each sender's trace: no
/// span twice, every acknowledged one there, and at most the request in flight besides.
async fn check_every_acknowledged_span_once(query: SocketAddr, acked: &[u64]) {
    let per_trace = move || {
        tokio::task::spawn_blocking(move || {
            sql(
                query,
                "SELECT trace_id, count(*), count(DISTINCT span_id) FROM spans GROUP BY trace_id ORDER BY trace_id",
            )
        })
    };
    // The replay is queued before the listeners answer; the store takes it a moment later.
    let total: u64 = acked.iter().sum();
    let mut rows = Vec::new();
    for _ in 0..500 {
        rows = per_trace().await.unwrap();
        let stored: u64 = rows.iter().map(|row| int(&row[1])).sum();
        if stored >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rows.len(), usize::from(SENDERS), "{rows:?}");
    for (sender, row) in rows.iter().enumerate() {
        let (count, distinct) = (int(&row[1]), int(&row[2]));
        let acked = acked[sender];
        assert_eq!(
            count, distinct,
            "sender {sender}: a span stored twice ({row:?})"
        );
        // The request in flight at the kill may have reached the log unacknowledged: it is
        // kept too, whole, and nothing else.
        assert!(
            count == acked || count == acked + SPANS_PER_REQUEST,
            "sender {sender}: {acked} spans acknowledged, {count} stored"
        );
    }
    // Every acknowledged span, by its id: the first `acked` of each trace.
    for (sender, &acked) in acked.iter().enumerate() {
        let hex: String = trace_id(sender as u8)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let last = format!("{acked:016x}");
        let rows = tokio::task::spawn_blocking(move || {
            sql(
                query,
                &format!(
                    "SELECT count(DISTINCT span_id) FROM spans WHERE trace_id = '{hex}' AND span_id <= '{last}'"
                ),
            )
        })
        .await
        .unwrap();
        assert_eq!(int(&rows[0][0]), acked, "sender {sender}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_in_time_and_keeps_every_acknowledged_span() {
    let dir = tempfile::tempdir().unwrap();
    // Interval mode with the default interval: what SIGTERM must not lose is what was
    // written and not yet synced, and what is queued.
    let mut first = serve(dir.path(), "interval");
    let grpc_addr = first.addrs["otlp-grpc"];
    let load = Load::start(grpc_addr);
    load.until_acknowledged(KILL_AFTER).await;
    let status = Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut exit = None;
    for _ in 0..500 {
        exit = first.child.try_wait().unwrap();
        if exit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = exit.expect("the collector exits within 10 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let acked = load.finish().await;
    assert!(
        acked.iter().all(|&n| n > 0),
        "every sender was acknowledged: {acked:?}"
    );

    let second = serve(dir.path(), "interval");
    check_every_acknowledged_span_once(second.addrs["query-http"], &acked).await;
}
