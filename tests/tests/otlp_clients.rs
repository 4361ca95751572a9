//! The Rust OpenTelemetry SDK's own OTLP exporters (gRPC and HTTP/protobuf) send spans to a
//! collector on loopback; SQL and the traces endpoint read them back field by field.

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use wayfinder_e2e::{get_trace, loopback_config, sql, start, wait_for_rows};

#[derive(Clone, Copy, Debug)]
enum Transport {
    Grpc,
    HttpProtobuf,
}

/// Sends a server span with a failing client child through the SDK; returns (trace id,
/// server span id, client span id).
fn send_with_sdk(
    transport: Transport,
    endpoint: String,
    service: &str,
) -> (String, String, String) {
    let exporter = match transport {
        Transport::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        Transport::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build(),
    }
    .expect("the OTLP exporter builds");
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("service.instance.id", format!("{service}-1")))
        .with_attribute(KeyValue::new("service.namespace", "shop"))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("wayfinder-e2e");

    let server = tracer
        .span_builder("GET /orders/{id}")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.route", "/orders/{id}"),
            KeyValue::new("http.response.status_code", 200i64),
            KeyValue::new("sampled.ratio", 0.5),
            KeyValue::new("cache.hit", true),
        ])
        .start(&tracer);
    let cx = Context::current_with_span(server);
    let mut client = tracer
        .span_builder("SELECT orders")
        .with_kind(SpanKind::Client)
        .with_attributes(vec![KeyValue::new("db.system.name", "postgresql")])
        .start_with_context(&tracer, &cx);
    client.add_event("retry", vec![KeyValue::new("attempt", 2i64)]);
    client.set_status(Status::error("connection refused"));
    let ids = (
        cx.span().span_context().trace_id().to_string(),
        cx.span().span_context().span_id().to_string(),
        client.span_context().span_id().to_string(),
    );
    client.end();
    cx.span().end();
    provider
        .shutdown()
        .expect("the provider flushes and shuts down");
    ids
}

async fn sdk_round_trip(transport: Transport) {
    let collector = start(loopback_config()).await;
    let service = match transport {
        Transport::Grpc => "checkout-grpc",
        Transport::HttpProtobuf => "checkout-http",
    };
    let endpoint = match transport {
        Transport::Grpc => format!("http://{}", collector.addrs().otlp_grpc),
        Transport::HttpProtobuf => format!("http://{}/v1/traces", collector.addrs().otlp_http),
    };
    // The SDK's exporters block: run them on a blocking thread inside the runtime.
    let owned = service.to_owned();
    let (trace_id, server_id, client_id) =
        tokio::task::spawn_blocking(move || send_with_sdk(transport, endpoint, &owned))
            .await
            .expect("the SDK thread");

    let filter = format!("service_name = '{service}'");
    assert_eq!(
        wait_for_rows(&collector, &filter, 2).await,
        2,
        "both spans are stored"
    );

    let query = format!(
        "SELECT span_id, parent_span_id, trace_id, span_name, span_kind, status_code, status_message, \
         instance_id, service_namespace, scope_name, attributes['http.route'] AS route, \
         attributes['http.response.status_code'] AS status, attributes['sampled.ratio'] AS ratio, \
         attributes['cache.hit'] AS hit, resource_attributes['service.name'] AS resource_service, \
         duration_ns >= 0 AS nonnegative, end_time >= start_time AS ordered \
         FROM spans WHERE {filter} ORDER BY span_kind DESC"
    );
    let response = sql(&collector, &query).await;
    let get =
        |row: usize, name: &str| response.rows[row][response.column(name).expect(name)].clone();
    // Row 0 is the server span ('server' > 'client'), row 1 the client span.
    let expected: [(&str, Value, Value); 15] = [
        ("span_id", server_id.clone().into(), client_id.into()),
        ("parent_span_id", Value::Null, server_id.into()),
        ("trace_id", trace_id.clone().into(), trace_id.clone().into()),
        (
            "span_name",
            "GET /orders/{id}".into(),
            "SELECT orders".into(),
        ),
        ("span_kind", "server".into(), "client".into()),
        ("status_code", "unset".into(), "error".into()),
        ("status_message", Value::Null, "connection refused".into()),
        (
            "instance_id",
            format!("{service}-1").into(),
            format!("{service}-1").into(),
        ),
        ("service_namespace", "shop".into(), "shop".into()),
        ("scope_name", "wayfinder-e2e".into(), "wayfinder-e2e".into()),
        ("route", "/orders/{id}".into(), Value::Null),
        ("status", "200".into(), Value::Null),
        ("ratio", "0.5".into(), Value::Null),
        ("hit", "true".into(), Value::Null),
        ("resource_service", service.into(), service.into()),
    ];
    for (column, server, client) in expected {
        assert_eq!(get(0, column), server, "server span, column {column}");
        assert_eq!(get(1, column), client, "client span, column {column}");
    }
    assert_eq!(get(0, "nonnegative"), Value::Bool(true));
    assert_eq!(get(1, "ordered"), Value::Bool(true));

    // The same trace through the traces endpoint, with the event of the client span.
    let trace: Value = get_trace(&collector, &trace_id).await.json().await.unwrap();
    let spans = trace["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 2);
    let client_span = spans
        .iter()
        .find(|s| s["span_kind"] == "client")
        .expect("the client span");
    assert_eq!(client_span["events"][0]["name"], "retry");
    assert_eq!(client_span["events"][0]["attributes"]["attempt"], "2");
    assert!(
        client_span["start_time"].as_str().unwrap().ends_with('Z'),
        "timestamps are RFC 3339 UTC"
    );

    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporter_over_grpc() {
    sdk_round_trip(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporter_over_http_protobuf() {
    sdk_round_trip(Transport::HttpProtobuf).await;
}
