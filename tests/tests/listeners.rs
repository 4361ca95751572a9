//! The listeners as a client meets them: TLS on all four (with client certificates required by
//! the OTLP receivers, and a certificate replaced on disk taken without a restart), and slow
//! clients closed after `--header-read-timeout` while good traffic goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use wayfinder_collector::config::TlsPaths;
use wayfinder_collector::testing::{span, trace_request};
use wayfinder_e2e::pki::Pki;
use wayfinder_e2e::{loopback_config, start};

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One HTTP/1.1 request on `stream`; what came back (possibly nothing) before it closed.
async fn exchange<S>(mut stream: S, request: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let exchange = async {
        if stream.write_all(request.as_bytes()).await.is_err() {
            return String::new();
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        // A TLS peer that refuses may end the stream with an error: what came before counts.
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the exchange ends within 10 s")
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

fn post_traces(service: &str) -> String {
    let body = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "tls", "startTimeUnixNano": "1", "endTimeUnixNano": "2"
        }]}]
    }]})
    .to_string();
    format!(
        "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn counter(
    collector: &wayfinder_collector::RunningCollector,
    listener: &'static str,
) -> (u64, u64) {
    let metrics = collector.metrics();
    let labels = [("listener", listener)];
    (
        metrics.value("wayfinder_tls_handshake_failures_total", &labels) as u64,
        metrics.value("wayfinder_slow_connections_total", &labels) as u64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_speaks_tls_and_the_otlp_receivers_require_a_client_certificate() {
    let pki = Pki::new();
    let mut config = loopback_config();
    config.access.set_tls(Some(pki.server_files()));
    let collector = start(config).await;
    let addrs = collector.addrs();

    // The query API: TLS, no client certificate asked.
    let tls = connect_tls(addrs.query_http, pki.client(false, b"http/1.1"))
        .await
        .unwrap();
    let answer = exchange(tls, &get("/healthz")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // OTLP/HTTP with a client certificate of the CA: accepted and stored.
    let tls = connect_tls(addrs.otlp_http, pki.client(true, b"http/1.1"))
        .await
        .unwrap();
    let answer = exchange(tls, &post_traces("with-cert")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // OTLP/HTTP without one: no answer, and the failed handshake is counted.
    let (failures_before, _) = counter(&collector, "otlp-http");
    let answer = match connect_tls(addrs.otlp_http, pki.client(false, b"http/1.1")).await {
        // TLS 1.3: the client's side of the handshake ends before the server checks it.
        Ok(tls) => exchange(tls, &post_traces("without-cert")).await,
        Err(_) => String::new(),
    };
    assert!(
        answer.is_empty(),
        "no answer without a certificate: {answer}"
    );
    let (failures_after, _) = counter(&collector, "otlp-http");
    assert_eq!(failures_after, failures_before + 1);

    // Plaintext on a TLS port: no HTTP answer either.
    let plain = TcpStream::connect(addrs.query_http).await.unwrap();
    let answer = exchange(plain, &get("/healthz")).await;
    assert!(!answer.contains("HTTP/1.1"), "{answer}");

    // OTLP/gRPC and the query gRPC API over TLS (HTTP/2 by ALPN).
    let channel = grpc_channel(addrs.otlp_grpc, pki.client(true, b"h2")).await;
    let request = trace_request(Some("grpc-tls"), vec![span([7; 16], 1, "g", 1, 2)]);
    TraceServiceClient::new(channel)
        .export(request)
        .await
        .expect("OTLP/gRPC over TLS with a client certificate");
    let channel = grpc_channel(addrs.query_grpc, pki.client(false, b"h2")).await;
    // A gRPC answer over TLS: no instances are known yet.
    let status = wayfinder_api::grpc::weights_client::WeightsClient::new(channel)
        .get(wayfinder_api::grpc::GetWeightsRequest::default())
        .await
        .expect_err("no weights yet");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // The two accepted spans reach the store (the SQL helpers speak plaintext: the store is
    // read directly); the refused request's span never does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.store().stats().rows < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        collector.store().stats().rows,
        2,
        "the span sent without a certificate is not stored"
    );
    collector.shutdown().await;
}

async fn grpc_channel(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://localhost:{}", addr.port()))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let config = config.clone();
            async move {
                connect_tls(addr, config)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .expect("a TLS connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_to_new_connections() {
    let pki = Pki::new();
    let mut config = loopback_config();
    let files = pki.server_files();
    config.access.set_tls(Some(TlsPaths {
        client_ca: None,
        ..files.clone()
    }));
    let collector = start(config).await;
    let addr = collector.addrs().query_http;
    let served = |tls: &Tls| tls.get_ref().1.peer_certificates().unwrap()[0].clone();

    let first = connect_tls(addr, pki.client(false, b"http/1.1"))
        .await
        .unwrap();
    let old = served(&first);

    // A key and certificate pair replaced as a certificate manager does: key, then cert.
    let (cert, key) = pki.leaf();
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.cert, &cert).unwrap();
    let new = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    // The files are looked at every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tls = connect_tls(addr, pki.client(false, b"http/1.1"))
            .await
            .unwrap();
        if served(&tls) == new {
            let answer = exchange(tls, &get("/healthz")).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            break;
        }
        assert_eq!(
            served(&tls),
            old,
            "either the old certificate or the new one"
        );
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the change still works, with its certificate.
    let answer = exchange(first, &get("/healthz")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_and_good_traffic_goes_on() {
    let mut config = loopback_config();
    config.listeners.header_read_timeout = Duration::from_millis(300);
    let collector = start(config).await;
    let addrs = collector.addrs();

    // Each row: a listener, what a slow client sends before it stops, and why it is closed.
    let cases: [(SocketAddr, &'static str, &str, &str); 4] = [
        (addrs.otlp_http, "otlp-http", "", "no first byte"),
        (
            addrs.otlp_http,
            "otlp-http",
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\n",
            "headers never finished (slow loris)",
        ),
        (addrs.query_http, "query-http", "", "no first byte"),
        (addrs.otlp_grpc, "otlp-grpc", "", "no HTTP/2 preface"),
    ];
    let mut slow = Vec::new();
    for (addr, _, sent, _) in &cases {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    // Good traffic beside them.
    let answer = exchange(
        TcpStream::connect(addrs.otlp_http).await.unwrap(),
        &post_traces("beside-slow"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for (mut stream, (_, listener, _, why)) in slow.into_iter().zip(cases) {
        let started = Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .is_ok();
        assert!(closed, "{listener}, {why}: not closed within 5 s");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{listener}, {why}"
        );
    }
    let (_, http_slow) = counter(&collector, "otlp-http");
    let (_, query_slow) = counter(&collector, "query-http");
    let (_, grpc_slow) = counter(&collector, "otlp-grpc");
    // The slow loris sent its first bytes: hyper's header timeout closed it, not the start's.
    assert_eq!((http_slow, query_slow, grpc_slow), (1, 1, 1));
    assert_eq!(
        wayfinder_e2e::wait_for_rows(&collector, "service_name = 'beside-slow'", 1).await,
        1
    );
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_refused_and_good_traffic_goes_on() {
    let mut config = loopback_config();
    config.listeners.body_read_timeout = Duration::from_millis(500);
    let collector = start(config).await;
    let addrs = collector.addrs();

    // Each row: a listener, a request whose headers promise 400 bytes, how its body comes,
    // the status expected, and why.
    let otlp = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n";
    let sql = "POST /api/v1/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n";
    let cases: [(SocketAddr, &str, bool, &str, &str); 3] = [
        (
            addrs.otlp_http,
            otlp,
            false,
            "HTTP/1.1 408",
            "10 bytes, then silence",
        ),
        (
            addrs.otlp_http,
            otlp,
            true,
            "HTTP/1.1 408",
            "a byte every 50 ms: never a long pause, but 20 s in all (a gap timeout would wait)",
        ),
        (
            addrs.query_http,
            sql,
            false,
            "HTTP/1.1 400",
            "the query API, 10 bytes, then silence",
        ),
    ];
    let mut slow = Vec::new();
    for (addr, head, dribble, expected, why) in cases {
        let stream = TcpStream::connect(addr).await.unwrap();
        slow.push(tokio::spawn(async move {
            let (mut read, mut write) = stream.into_split();
            write.write_all(head.as_bytes()).await.unwrap();
            write.write_all(b"{\"resource").await.unwrap();
            let writer = tokio::spawn(async move {
                if dribble {
                    for _ in 0..390 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if write.write_all(b" ").await.is_err() {
                            break;
                        }
                    }
                }
                // Held open (not finished) until the reader is done.
                write
            });
            let started = Instant::now();
            let mut answer = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut answer))
                    .await
                    .is_ok();
            writer.abort();
            let answer = String::from_utf8_lossy(&answer).into_owned();
            assert!(closed, "{why}: not closed within 5 s");
            assert!(answer.starts_with(expected), "{why}: {answer}");
            assert!(
                answer.contains("did not arrive within 500ms"),
                "{why}: the reason: {answer}"
            );
            started.elapsed()
        }));
    }
    // Good traffic beside them.
    let answer = exchange(
        TcpStream::connect(addrs.otlp_http).await.unwrap(),
        &post_traces("beside-slow-bodies"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for case in slow {
        let took = case.await.expect("the case's checks pass");
        assert!(
            took < Duration::from_secs(3),
            "refused near its deadline: {took:?}"
        );
    }
    let refused = collector.metrics().value(
        "wayfinder_receiver_refused_requests_total",
        &[("protocol", "http/json"), ("reason", "body_timeout")],
    ) as u64;
    assert_eq!(refused, 2, "both OTLP bodies counted as body_timeout");
    assert_eq!(
        wayfinder_e2e::wait_for_rows(&collector, "service_name = 'beside-slow-bodies'", 1).await,
        1
    );
    collector.shutdown().await;
}

/// An OTLP/gRPC export over HTTP/2 whose message promises 400 bytes and stops after 10; the
/// `grpc-status` and `grpc-message` it gets back, and how long that took.
async fn stalled_grpc_export(addr: SocketAddr) -> (String, String, Duration) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    let (mut tx, rx) = futures::channel::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>,
    >(4);
    let request = http::Request::post(format!(
        "http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::StreamBody::new(rx))
    .unwrap();
    // The gRPC frame's prefix (uncompressed, 400 bytes), then 10 of them; the sender is kept,
    // so the stream stays open.
    let mut first = vec![0u8, 0, 0, 1, 144];
    first.extend_from_slice(&[0x0a; 10]);
    futures::SinkExt::send(&mut tx, Ok(hyper::body::Frame::data(first.into())))
        .await
        .unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), async {
        let response = sender.send_request(request).await.expect("an answer");
        let (parts, body) = response.into_parts();
        // Trailers-only (the call failed before an answer), or trailers after the body.
        if parts.headers.contains_key("grpc-status") {
            return parts.headers;
        }
        http_body_util::BodyExt::collect(body)
            .await
            .expect("the answer's body")
            .trailers()
            .cloned()
            .unwrap_or_default()
    })
    .await
    .expect("answered within 5 s");
    drop(tx);
    // tonic reads grpc-status and the percent-encoded grpc-message.
    let status = tonic::Status::from_header_map(&response).expect("a grpc-status");
    (
        (status.code() as i32).to_string(),
        status.message().to_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_grpc_message_is_refused_deadline_exceeded() {
    let mut config = loopback_config();
    config.listeners.body_read_timeout = Duration::from_millis(500);
    let collector = start(config).await;
    let addrs = collector.addrs();
    let (status, message, took) = stalled_grpc_export(addrs.otlp_grpc).await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED: {message}");
    assert!(message.contains("did not arrive within 500ms"), "{message}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let refused = collector.metrics().value(
        "wayfinder_receiver_refused_requests_total",
        &[("protocol", "grpc"), ("reason", "body_timeout")],
    ) as u64;
    assert_eq!(refused, 1);
    // An export in time on the same listener is taken.
    let mut client = TraceServiceClient::connect(format!("http://{}", addrs.otlp_grpc))
        .await
        .expect("a gRPC connection");
    client
        .export(trace_request(
            Some("after-stall"),
            vec![span([8; 16], 1, "s", 1, 2)],
        ))
        .await
        .expect("accepted");
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_names_other_certificate_files_serves_them_at_once() {
    let pki = Pki::new();
    let first = pki.server_files();
    let mut config = loopback_config();
    config.access.set_tls(Some(TlsPaths {
        client_ca: None,
        ..first.clone()
    }));
    let collector = start(config).await;
    let addr = collector.addrs().query_http;
    let served = |tls: &Tls| tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let before = served(
        &connect_tls(addr, pki.client(false, b"http/1.1"))
            .await
            .unwrap(),
    );

    let (cert, key) = pki.leaf();
    let moved = TlsPaths {
        cert: pki.write("renewed.pem", &cert),
        key: pki.write("renewed.key", &key),
        client_ca: None,
    };
    let mut renamed = collector.config();
    renamed.access.set_tls(Some(moved.clone()));
    let reloaded = collector.reload(renamed).unwrap();
    let mut applied = reloaded.applied.clone();
    applied.sort();
    assert_eq!(applied, ["tls_cert", "tls_key"]);
    let after = served(
        &connect_tls(addr, pki.client(false, b"http/1.1"))
            .await
            .unwrap(),
    );
    assert_ne!(after, before);
    assert_eq!(
        after,
        CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
    );

    // Turning TLS off needs a restart: reported, and TLS stays.
    let mut plain = collector.config();
    plain.access.set_tls(None);
    let reloaded = collector.reload(plain).unwrap();
    assert_eq!(reloaded.needs_restart, ["tls_cert", "tls_key"]);
    assert!(
        connect_tls(addr, pki.client(false, b"http/1.1"))
            .await
            .is_ok()
    );
    collector.shutdown().await;
}
