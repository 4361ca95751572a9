//! The `OTEL_EXPORTER_OTLP_*` variables as the exporter really uses them: spans arrive at a
//! real collector on the traces signal's own endpoint while the generic one points nowhere.

use opentelemetry::trace::{Span, Tracer, TracerProvider};
use wayfinder_e2e::{loopback_config, start, wait_for_rows};
use wayfinder_middleware::{OtlpProtocol, Telemetry};

/// One span of `service` through telemetry made from `vars`.
async fn send_one(
    service: &str,
    vars: Vec<(&'static str, String)>,
) -> wayfinder_middleware::TelemetryGuard {
    let telemetry = Telemetry::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .expect("valid variables")
    .service_name(service)
    .build()
    .expect("telemetry builds");
    let tracer = telemetry.provider().tracer("otel-env-test");
    let mut span = tracer.start("work");
    span.end();
    telemetry.flush().await.expect("the export succeeds");
    telemetry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traces_endpoint_and_protocol_beat_the_generic_ones() {
    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    let nowhere = "http://127.0.0.1:9".to_owned();

    // HTTP: the signal's URL is used as is; the generic endpoint (and protocol) are not used.
    let guard = send_one(
        "env-http",
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", nowhere.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "http/protobuf".to_owned(),
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("http://{}/v1/traces", addrs.otlp_http),
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "x-team=shop".to_owned(),
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "5000".to_owned()),
        ],
    )
    .await;
    assert_eq!(
        wait_for_rows(&collector, "service_name = 'env-http'", 1).await,
        1
    );
    guard.shutdown().await.expect("shut down");

    // gRPC: the traces protocol picks gRPC over the generic http/protobuf.
    let guard = send_one(
        "env-grpc",
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", nowhere.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "GRPC".to_owned()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("http://{}", addrs.otlp_grpc),
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20t".to_owned(),
            ),
        ],
    )
    .await;
    assert_eq!(
        wait_for_rows(&collector, "service_name = 'env-grpc'", 1).await,
        1
    );
    assert_eq!(
        guard.collector().map(|(p, _)| p),
        Some(OtlpProtocol::Grpc),
        "the health reporter would follow the same protocol"
    );
    guard.shutdown().await.expect("shut down");

    // Disabled: nothing is exported, and nothing fails.
    let guard = send_one(
        "env-off",
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", addrs.otlp_http),
            ),
            ("OTEL_SDK_DISABLED", "true".to_owned()),
        ],
    )
    .await;
    assert!(guard.collector().is_none(), "no collector when disabled");
    // The enabled services' spans are in; the disabled one's never came.
    assert_eq!(
        wait_for_rows(&collector, "service_name LIKE 'env-%'", 2).await,
        2
    );
    let counted = wayfinder_e2e::count(
        &collector,
        "SELECT count(*) FROM spans WHERE service_name = 'env-off'",
    )
    .await;
    assert_eq!(counted, 0);
    collector.shutdown().await;
}

// The only test of this binary that installs the global subscriber (the batch processor
// exports on a thread of its own, so its warnings go to the global one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_failures_are_counted_and_logged() {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let logs = wayfinder_collector::testing::LogCapture::default();
    let writer = logs.clone();
    let telemetry = Telemetry::new()
        .service_name("env-failing")
        .endpoint(format!("http://{nowhere}"))
        .log_writer(tracing_subscriber::fmt::writer::BoxMakeWriter::new(
            move || writer.clone(),
        ))
        .init()
        .expect("telemetry installs");
    let tracer = telemetry.provider().tracer("otel-env-test");
    // Three batches of one span each, each export failing.
    for _ in 0..3 {
        tracer.start("lost").end();
        let _ = telemetry.flush().await;
    }
    let (batches, spans) = telemetry.export_failures();
    assert_eq!(batches, 3, "each failed export is counted");
    assert_eq!(spans, 3, "with its spans");
    let text = logs.text();
    assert!(
        text.contains("span export failed"),
        "and said in a warning: {text}"
    );
    assert_eq!(
        text.matches("span export failed").count(),
        1,
        "one warning for three failures within 10 s"
    );
}

/// What a receiving server saw: the headers of each export request.
type Seen = std::sync::Arc<parking_lot::Mutex<Vec<http::HeaderMap>>>;

/// An OTLP/gRPC trace receiver that records each request's metadata.
#[derive(Clone, Default)]
struct GrpcReceiver(Seen);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for GrpcReceiver
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        self.0
            .lock()
            .push(request.metadata().clone().into_headers());
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headers_variables_reach_the_receiving_server() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;

    // OTLP/HTTP: an axum receiver at /v1/traces that answers an empty (valid) response.
    let http_seen = Seen::default();
    let recorder = http_seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: http::HeaderMap| {
            let recorder = recorder.clone();
            async move {
                recorder.lock().push(headers);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = listener.local_addr().unwrap();
    let http_server = tokio::spawn(async move { axum::serve(listener, app).await });

    // OTLP/gRPC: a tonic TraceService.
    let grpc = GrpcReceiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    let grpc_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(grpc.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    // (variables, the receiver's record, the headers it must have seen, why)
    type Row = (
        Vec<(&'static str, String)>,
        Seen,
        Vec<(&'static str, &'static str)>,
        &'static str,
    );
    let rows: Vec<Row> = vec![
        (
            vec![
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{http_addr}")),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "x-team=shop,authorization=Bearer%20abc".to_owned(),
                ),
            ],
            http_seen.clone(),
            vec![("x-team", "shop"), ("authorization", "Bearer abc")],
            "generic headers over HTTP, the value percent-decoded",
        ),
        (
            vec![
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc".to_owned()),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    format!("http://{grpc_addr}"),
                ),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-team=generic".to_owned()),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                    "x-team=traces".to_owned(),
                ),
            ],
            grpc.0.clone(),
            vec![("x-team", "traces")],
            "the traces headers win over the generic ones, as gRPC metadata",
        ),
    ];
    for (vars, seen, expected, reason) in rows {
        let guard = send_one("env-headers", vars).await;
        guard.shutdown().await.expect("shut down");
        let seen = seen.lock();
        let last = seen
            .last()
            .unwrap_or_else(|| panic!("{reason}: no export arrived"));
        for (name, value) in expected {
            assert_eq!(
                last.get(name).and_then(|v| v.to_str().ok()),
                Some(value),
                "{reason}: {name}"
            );
        }
    }
    http_server.abort();
    grpc_server.abort();
}
