//! A full ingest queue is refused with a retryable error on both protocols, and every span
//! that was acknowledged reaches the store.

use std::sync::Arc;

use bytes::Bytes;

use prost::Message;
use tonic_types::StatusExt;
use wayfinder_collector::testing::IngestQueue;
use wayfinder_collector::testing::Metrics;
use wayfinder_collector::testing::{Ingest, otlp_http};
use wayfinder_collector::testing::{MemoryStore, SpanStore};
use wayfinder_collector::testing::{RawCodec, TRACE_EXPORT_PATH, TraceService};
use wayfinder_collector::testing::{span, trace_request};

fn body(first: u64) -> Vec<u8> {
    let spans = (first..first + 50)
        .map(|i| span([3; 16], i + 1, "op", 1, 2))
        .collect();
    trace_request(None, spans).encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_refused_retryably_and_acknowledged_spans_are_kept() {
    // A queue with room for a few requests whose consumer has not started yet: it fills up.
    let metrics = Arc::new(Metrics::new());
    let (queue, dispatcher) = IngestQueue::new(64 * 1024);
    let ingest = Arc::new(Ingest::new(queue, metrics.clone()));

    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http_listener.local_addr().unwrap();
    let http_server = tokio::spawn(
        axum::serve(http_listener, otlp_http::router(ingest.clone(), 1 << 20)).into_future(),
    );
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc_listener.local_addr().unwrap();
    let grpc_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceService::new(ingest.clone(), 1 << 20))
            .serve_with_incoming(tokio_stream_from(grpc_listener)),
    );

    let client = wayfinder_e2e::http_client();
    let mut accepted = 0u64;
    let mut refused_http = None;
    for i in 0..200u64 {
        let response = client
            .post(format!("http://{http_addr}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(body(i * 50))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            accepted += 50;
        } else {
            refused_http = Some(response);
            break;
        }
    }
    let refused = refused_http.expect("the queue fills up within 200 requests");
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers()["retry-after"],
        "1",
        "the refusal says when to retry"
    );
    assert!(
        accepted > 0,
        "some requests were accepted before the queue filled"
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(Bytes::from(body(1_000_000))),
            http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH),
            RawCodec,
        )
        .await
        .expect_err("the full queue refuses gRPC too");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.get_details_retry_info().is_some(),
        "UNAVAILABLE carries RetryInfo"
    );

    // Now the consumer runs: everything acknowledged reaches the store, nothing else.
    let store = Arc::new(MemoryStore::new(Default::default(), metrics.clone()));
    let draining = tokio::spawn(dispatcher.run(store.clone()));
    for _ in 0..500 {
        if store.stats().rows as u64 >= accepted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    draining.abort();
    http_server.abort();
    grpc_server.abort();
    assert_eq!(
        store.stats().rows as u64,
        accepted,
        "every acknowledged span is stored"
    );
    let text = metrics.encode();
    assert!(text.contains("wayfinder_receiver_refused_requests_total{protocol=\"http/protobuf\",reason=\"queue_full\"} 1"), "{text}");
    assert!(
        text.contains(
            "wayfinder_receiver_refused_requests_total{protocol=\"grpc\",reason=\"queue_full\"} 1"
        ),
        "{text}"
    );
}

/// Writes `head` and then whatever `body` yields (stopping at the first failed write: the
/// server may answer and close before it), and returns the status line of the answer, read
/// while writing (so that a reset after the answer cannot hide it).
async fn raw_request(addr: std::net::SocketAddr, head: &str, body: Vec<Vec<u8>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let reading = tokio::spawn(async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        answer
    });
    writer.write_all(head.as_bytes()).await.unwrap();
    // Bounded: a server that neither reads nor closes must not hang the test.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        for chunk in body {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
        }
    })
    .await;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), reading)
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_remaining_budget_is_refused_before_it_is_read() {
    // Room for 64 KiB, of which one request takes some; the consumer never runs.
    let metrics = Arc::new(Metrics::new());
    let (queue, _dispatcher) = IngestQueue::new(64 * 1024);
    let ingest = Arc::new(Ingest::new(queue, metrics.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, otlp_http::router(ingest.clone(), 20 << 20)).into_future(),
    );
    let first = wayfinder_e2e::http_client()
        .post(format!("http://{addr}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body(0))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200, "the first request fits");

    // A declared megabyte: refused on its headers alone (no byte of the body is ever sent).
    let status = raw_request(
        addr,
        &format!(
            "POST /v1/traces HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-protobuf\r\n\
             content-length: {}\r\n\r\n",
            1 << 20
        ),
        Vec::new(),
    )
    .await;
    assert_eq!(
        status, "HTTP/1.1 503 Service Unavailable",
        "refused retryably"
    );

    // A chunked body without a length: refused once what came in no longer fits, long before
    // its 20 MiB limit.
    let chunk = {
        let mut chunk = format!("{:x}\r\n", 16 * 1024).into_bytes();
        chunk.extend(std::iter::repeat_n(0u8, 16 * 1024));
        chunk.extend_from_slice(b"\r\n");
        chunk
    };
    let status = raw_request(
        addr,
        &format!(
            "POST /v1/traces HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-protobuf\r\n\
             transfer-encoding: chunked\r\n\r\n"
        ),
        vec![chunk; 16],
    )
    .await;
    assert_eq!(
        status, "HTTP/1.1 503 Service Unavailable",
        "refused retryably"
    );

    let text = metrics.encode();
    assert!(
        text.contains(
            "wayfinder_receiver_refused_requests_total{protocol=\"http/protobuf\",reason=\"queue_full\"} 2"
        ),
        "both refused as queue_full, not as too large or malformed:\n{text}"
    );
    server.abort();
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_core_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_core_stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

mod futures_core_stream {
    pub(crate) use futures::stream::{Stream, unfold};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_beyond_max_watchers_are_refused_retryably() {
    use std::time::Duration;
    use wayfinder_e2e::{http_client, loopback_config, start};

    let mut config = loopback_config();
    config.query.max_watchers = 1;
    config.weights.weight_update_period = Duration::from_millis(100);
    let collector = start(config).await;
    let addrs = collector.addrs();
    let beat = serde_json::json!({
        "service": "polled", "instance_id": "polled-1", "status": "passing", "seq": 1,
        "ttl_ms": 60000, "address": "127.0.0.1:9100"
    });
    let client = http_client();
    client
        .post(format!("http://{}/v1/health", addrs.otlp_http))
        .json(&beat)
        .send()
        .await
        .unwrap();
    let url = format!("http://{}/api/v1/weights/polled", addrs.query_http);
    let mut version = None;
    for _ in 0..100 {
        let answer = client.get(&url).send().await.unwrap();
        if answer.status() == 200 {
            let body: serde_json::Value = answer.json().await.unwrap();
            version = body["version"].as_u64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    version.expect("the service's weights appear");
    // A version far ahead: the long-poll waits its whole wait (slow start changes the weights,
    // and so their version, at every update).
    let version = u64::MAX / 2;
    // Two long-polls at once: whichever comes second finds the one place taken.
    let poll = || {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let answer = client
                .get(format!("{url}?after_version={version}&wait=2s"))
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let retry_after = answer
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, retry_after, answer.text().await.unwrap())
        })
    };
    let (first, second) = (poll(), poll());
    // A plain read, which does not wait, is answered meanwhile.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let mut answers = vec![first.await.unwrap(), second.await.unwrap()];
    answers.sort();
    let (waited, refused) = (&answers[0], &answers[1]);
    assert_eq!(waited.0, 200, "one waits its whole wait: {answers:?}");
    assert_eq!(refused.0, 503, "the other is refused: {answers:?}");
    assert_eq!(refused.1.as_deref(), Some("1"), "with Retry-After");
    assert!(refused.2.contains("--max-watchers"), "{}", refused.2);
    assert_eq!(
        collector
            .metrics()
            .value("wayfinder_refused_watchers_total", &[]),
        1.0
    );
    collector.shutdown().await;
}
