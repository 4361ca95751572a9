//! Connections that do nothing do not keep their places: a real HTTP/2 client that goes idle is
//! closed after `--idle-timeout` (and comes back when it has something to ask), HTTP/2
//! prefaces that never open a stream are dropped after `--header-read-timeout`, a full
//! listener closes its idle connections so that a new client gets in, and the probes get
//! through a query port held full by requests in flight.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use wayfinder_api::grpc::GetWeightsRequest;
use wayfinder_api::grpc::weights_client::WeightsClient;
use wayfinder_collector::RunningCollector;
use wayfinder_collector::testing::{span, trace_request};
use wayfinder_e2e::{loopback_config, start};

/// The client preface of HTTP/2 and an empty SETTINGS frame: a client that starts and asks
/// for nothing.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn closed(collector: &RunningCollector, listener: &'static str, reason: &'static str) -> u64 {
    collector.metrics().value(
        "wayfinder_closed_idle_connections_total",
        &[("listener", listener), ("reason", reason)],
    ) as u64
}

/// Waits (up to 10 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 10 s: {what}");
}

/// Whether the server closes `stream` within `within` (whatever it sent before).
async fn closes_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut rest))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_client_is_closed_and_comes_back_when_it_asks() {
    let mut config = loopback_config();
    config.listeners.idle_timeout = Duration::from_secs(1);
    let collector = start(config).await;
    let addr = collector.addrs().query_grpc;
    let mut weights = WeightsClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let ask = || GetWeightsRequest {
        service: "nobody".into(),
    };
    let status = weights.get(ask()).await.expect_err("no such service");
    assert_eq!(status.code(), tonic::Code::NotFound);
    // tonic's channel keeps its HTTP/2 connection open, idle, for as long as the server lets it.
    eventually("the idle connection is closed", || {
        closed(&collector, "query-grpc", "idle") == 1
    })
    .await;
    // The client reconnects for its next call.
    let status = weights.get(ask()).await.expect_err("no such service");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(closed(&collector, "query-grpc", "never_started"), 0);
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefaces_that_never_ask_are_dropped_and_exports_go_on() {
    let mut config = loopback_config();
    config.listeners.header_read_timeout = Duration::from_millis(500);
    let collector = start(config).await;
    let addrs = collector.addrs();
    // Each row: a listener that speaks HTTP/2, and its name.
    let cases: [(SocketAddr, &'static str); 3] = [
        (addrs.otlp_grpc, "otlp-grpc"),
        (addrs.query_grpc, "query-grpc"),
        (addrs.query_http, "query-http"),
    ];
    let mut idle = Vec::new();
    for (addr, listener) in cases {
        for _ in 0..3 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(PREFACE).await.unwrap();
            idle.push((stream, listener));
        }
    }
    let mut exporter = TraceServiceClient::connect(format!("http://{}", addrs.otlp_grpc))
        .await
        .unwrap();
    exporter
        .export(trace_request(
            Some("beside-prefaces"),
            vec![span([7; 16], 1, "ok", 1, 2)],
        ))
        .await
        .expect("an export beside them");
    for (mut stream, listener) in idle {
        assert!(
            closes_within(&mut stream, Duration::from_secs(5)).await,
            "{listener}: a preface and nothing more is not closed within 5 s"
        );
    }
    for (_, listener) in cases {
        assert_eq!(
            closed(&collector, listener, "never_started"),
            3,
            "{listener}"
        );
    }
    assert_eq!(
        wayfinder_e2e::wait_for_rows(&collector, "service_name = 'beside-prefaces'", 1).await,
        1
    );
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_closes_idle_connections_for_a_new_client() {
    let mut config = loopback_config();
    config.listeners.max_connections = 4;
    let collector = start(config).await;
    let addr = collector.addrs().otlp_grpc;
    // Four prefaces take the four places, and would hold them for the first-request deadline.
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(PREFACE).await.unwrap();
        holders.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A real exporter finds the listener full: the idle ones make room for it.
    let mut exporter = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    exporter
        .export(trace_request(
            Some("made-room"),
            vec![span([8; 16], 1, "ok", 1, 2)],
        ))
        .await
        .expect("the export gets a place");
    assert!(closed(&collector, "otlp-grpc", "evicted") >= 1);
    let refused = collector.metrics().value(
        "wayfinder_refused_connections_total",
        &[("listener", "otlp-grpc")],
    );
    assert_eq!(refused, 0.0, "nobody was turned away");
    collector.shutdown().await;
}

/// One HTTP/1.1 exchange on a fresh connection: the status line, or "" if closed unanswered.
async fn status_line(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer or a close within 10 s")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_get_through_a_full_query_port_and_the_rest_is_refused_retryably() {
    let mut config = loopback_config();
    config.listeners.max_connections = 2;
    let collector = start(config).await;
    let addr = collector.addrs().query_http;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // Two requests in flight (their bodies still coming) hold the two places: not idle.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /api/v1/sql HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Each row: a path asked on a connection past the cap, the status, and why.
    let cases = [
        ("/healthz", "HTTP/1.1 200 OK", "the liveness probe"),
        ("/livez", "HTTP/1.1 200 OK", "its other name"),
        ("/readyz", "HTTP/1.1 200 OK", "the readiness probe"),
        (
            "/api/v1/services",
            "HTTP/1.1 503 Service Unavailable",
            "anything else waits for a place: refused, retryably",
        ),
    ];
    for (path, want, why) in cases {
        assert_eq!(status_line(addr, &get(path)).await, want, "{why}");
    }
    let refused = || {
        collector.metrics().value(
            "wayfinder_refused_connections_total",
            &[("listener", "query-http")],
        ) as u64
    };
    assert_eq!(refused(), 0);
    // With the probes' places taken too (by clients that send nothing), one more waits for a
    // place and is closed unanswered.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    assert_eq!(
        status_line(addr, &get("/healthz")).await,
        "",
        "no place left"
    );
    assert_eq!(refused(), 1);
    // A request in flight that ends gives its place back.
    drop(busy.pop());
    let mut answered = String::new();
    for _ in 0..50 {
        answered = status_line(addr, &get("/api/v1/services")).await;
        if answered.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answered, "HTTP/1.1 200 OK",
        "a freed place serves everything"
    );
    drop((busy, silent));
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_client_never_takes_does_not_hold_the_connection() {
    let mut config = loopback_config();
    config.listeners.idle_timeout = Duration::from_secs(1);
    let collector = start(config).await;
    let mut stream = TcpStream::connect(collector.addrs().query_http)
        .await
        .unwrap();
    // A client that opens its window to nothing (SETTINGS_INITIAL_WINDOW_SIZE = 0) and asks for
    // /metrics: the answer's headers go out, its body can never follow.
    let settings = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00";
    let block: &[u8] = b"\x82\x86\x44\x08/metrics\x41\x09localhost";
    let mut headers = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    headers.extend_from_slice(block);
    stream.write_all(&PREFACE[..24]).await.unwrap();
    stream.write_all(settings).await.unwrap();
    stream.write_all(&headers).await.unwrap();
    assert!(
        closes_within(&mut stream, Duration::from_secs(10)).await,
        "a stalled answer holds its connection"
    );
    assert_eq!(closed(&collector, "query-http", "stalled"), 1);
    collector.shutdown().await;
}
