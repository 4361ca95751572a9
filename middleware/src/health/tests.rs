//! The reporter's settings: where beats go, with which token, and what refuses to start.

use std::time::Duration;

use super::HealthReporter;
use super::transport::Transport;

#[test]
fn the_reporter_registers_under_the_tracers_name_and_instance() {
    let telemetry = crate::Telemetry::new()
        .service_name("orders")
        .instance_id("orders-7")
        .build_with_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
        .unwrap();
    let reporter = HealthReporter::for_telemetry(&telemetry);
    assert_eq!(reporter.service, "orders");
    assert_eq!(reporter.instance_id, "orders-7");

    let generated = crate::Telemetry::new()
        .service_name("orders")
        .build_with_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
        .unwrap();
    let reporter = HealthReporter::for_telemetry(&generated);
    assert_eq!(
        Some(reporter.instance_id.clone()),
        generated.resource_attribute("service.instance.id"),
        "the generated instance id is the spans' one"
    );
    assert_eq!(reporter.instance_id.len(), 36, "a UUID");
}

#[test]
fn the_transport_follows_the_tracers_variables() {
    let env = |protocol: Option<&'static str>| {
        move |name: &str| match name {
            "OTEL_EXPORTER_OTLP_PROTOCOL" => protocol.map(str::to_owned),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4999".to_owned()),
            _ => None,
        }
    };
    let rows = [
        (
            None,
            "http://collector:4999/v1/health",
            "http/protobuf by default, as the tracer",
        ),
        (
            Some("http/protobuf"),
            "http://collector:4999/v1/health",
            "POST /v1/health",
        ),
        (Some(" GRPC "), "otlp", "grpc, any case: OTLP log events"),
        (
            Some(""),
            "http://collector:4999/v1/health",
            "an empty variable is unset, as for the tracer",
        ),
    ];
    for (protocol, expected, reason) in rows {
        let reporter = HealthReporter::new("a", "a-1").endpoint_from(env(protocol));
        let got = match reporter.transport {
            Some(Ok(Transport::Http { url, .. })) => url,
            Some(Ok(Transport::OtlpGrpc { .. })) => "otlp".to_owned(),
            other => panic!("{reason}: {other:?}"),
        };
        assert_eq!(got, expected, "{reason}");
    }
}

#[test]
fn the_token_comes_from_the_exporters_headers_or_from_code() {
    let env = |headers: &'static str| {
        move |name: &str| (name == "OTEL_EXPORTER_OTLP_HEADERS").then(|| headers.to_owned())
    };
    let rows = [
        (
            "x-team=core,authorization=Bearer%20abc",
            Some("Bearer abc"),
            "percent-decoded, among other headers",
        ),
        ("x-team=core", None, "no authorization header"),
    ];
    for (headers, expected, reason) in rows {
        let reporter = HealthReporter::new("a", "a-1").endpoint_from(env(headers));
        assert_eq!(reporter.authorization.as_deref(), expected, "{reason}");
    }
    let bad = HealthReporter::new("a", "a-1").endpoint_from(env("authorization"));
    assert!(
        matches!(&bad.transport, Some(Err(m)) if m.contains("OTEL_EXPORTER_OTLP_HEADERS")),
        "a malformed variable is an error, not a lost token: {:?}",
        bad.transport
    );
    let coded = HealthReporter::new("a", "a-1").bearer_token(" t0ken\n");
    assert_eq!(coded.authorization.as_deref(), Some("Bearer t0ken"));
    assert!(
        !format!("{coded:?}").contains("t0ken"),
        "Debug does not show the token"
    );
}

#[test]
fn a_reporter_needs_a_transport_and_a_sane_ttl() {
    let rows: [(HealthReporter, &str); 4] = [
        (
            HealthReporter::new("a", "a-1")
                .tls(crate::tls::ClientTls::new().ca_file("/nonexistent/wayfinder-ca.pem"))
                .http("https://collector:4318"),
            "wayfinder-ca.pem",
        ),
        (HealthReporter::new("a", "a-1"), "no transport"),
        (
            HealthReporter::new("a", "a-1").endpoint_from(|name| {
                (name == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "carrier-pigeon".to_owned())
            }),
            "carrier-pigeon",
        ),
        (
            HealthReporter::new("a", "a-1")
                .http("http://127.0.0.1:4318")
                .ttl(Duration::from_secs(1)),
            "TTL",
        ),
    ];
    for (reporter, expected) in rows {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime.block_on(async { reporter.start().unwrap_err() });
        assert!(error.to_string().contains(expected), "{expected}: {error}");
    }
}

/// A collector stand-in on loopback that answers every `POST /v1/health` with 200 and counts
/// them.
async fn counting_collector() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let mut read = 0;
                // The head and a JSON body of its Content-Length.
                loop {
                    let Ok(n) = stream.read(&mut buffer[read..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    read += n;
                    let text = String::from_utf8_lossy(&buffer[..read]).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn beats_go_to_the_next_collector_when_one_is_down() {
    let (up, count) = counting_collector().await;
    // Nothing listens on port 1 of loopback: that collector refuses at once.
    let transport = Transport::each(&format!("http://127.0.0.1:1, http://{up}"), |b| {
        Transport::http(b, Duration::from_secs(2), &crate::tls::ClientTls::new())
    })
    .unwrap();
    let Transport::Several { current, .. } = &transport else {
        panic!("two collectors: {transport:?}");
    };
    let beat = wayfinder_api::health::HealthReport {
        service: "a".into(),
        instance_id: "a-1".into(),
        address: None,
        status: "passing".into(),
        ttl_ms: Some(15_000),
        seq: Some(1),
        incarnation: None,
        output: None,
    };
    transport
        .send(&beat)
        .await
        .expect("the second collector takes it");
    assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        current.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the next beat goes straight to the collector that took this one"
    );
    transport.send(&beat).await.expect("again");
    assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 2);
    // None takes it: the error names both.
    let none = Transport::each("http://127.0.0.1:1,http://127.0.0.1:2", |b| {
        Transport::http(b, Duration::from_secs(2), &crate::tls::ClientTls::new())
    })
    .unwrap();
    let error = none.send(&beat).await.unwrap_err();
    assert!(
        error.contains("127.0.0.1:1") && error.contains("127.0.0.1:2"),
        "{error}"
    );
    assert!(
        Transport::each(" , ", |b| Transport::http(
            b,
            Duration::from_secs(1),
            &crate::tls::ClientTls::new()
        ))
        .is_err()
    );
}
