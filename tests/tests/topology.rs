//! A known call graph, sent by the OpenTelemetry SDK's OTLP exporters (gRPC and HTTP) from four
//! services, plus heartbeats over `POST /v1/health` and OTLP logs; then the topology, services,
//! instances, Jaeger and metrics endpoints are checked against the exact graph and counts.
//!
//! ```text
//! user ─http─> frontend ─http─> cart ─database─> carts
//!                                  └─messaging (via order-events)─> billing
//! ```
//! Four requests; the frontend fails the fourth, cart fails the second (on cart-2); cart has two
//! instances that take two requests each, in turn.

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prost::Message as _;
use serde_json::{Value, json};
use wayfinder_collector::RunningCollector;
use wayfinder_e2e::{http_client, loopback_config, metrics_text, sql, start, wait_for_rows};

const REQUESTS: usize = 4;

fn provider(service: &str, instance: &str, exporter: SpanExporter) -> SdkTracerProvider {
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
        .build();
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource)
        .build()
}

fn grpc(endpoint: &str) -> SpanExporter {
    SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .expect("the gRPC exporter builds")
}

fn http(endpoint: &str) -> SpanExporter {
    SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .expect("the HTTP exporter builds")
}

/// A context whose parent is `span` seen from another process, as a propagator's `extract`
/// makes it (remote, so the child's OTLP flags say so).
fn remote_parent(span: &opentelemetry::trace::SpanContext) -> Context {
    let remote = opentelemetry::trace::SpanContext::new(
        span.trace_id(),
        span.span_id(),
        span.trace_flags(),
        true,
        span.trace_state().clone(),
    );
    Context::new().with_remote_span_context(remote)
}

/// Sends the call graph; returns the trace ids in order.
fn send_call_graph(grpc_endpoint: String, http_endpoint: String) -> Vec<String> {
    let frontend = provider("frontend", "frontend-1", grpc(&grpc_endpoint));
    let carts = [
        provider("cart", "cart-1", http(&http_endpoint)),
        provider("cart", "cart-2", http(&http_endpoint)),
    ];
    let billing = provider("billing", "billing-1", grpc(&grpc_endpoint));
    let front = frontend.tracer("e2e");
    let bill = billing.tracer("e2e");
    let mut traces = Vec::new();

    for i in 0..REQUESTS {
        let cart = carts[i % 2].tracer("e2e");
        let root = front
            .span_builder("GET /checkout")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", "GET")])
            .start(&front);
        let root_cx = Context::current_with_span(root);
        traces.push(root_cx.span().span_context().trace_id().to_string());
        let call = front
            .span_builder("POST /cart")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("url.full", "http://cart.local:8080/cart"),
                KeyValue::new("server.address", "cart.local"),
                KeyValue::new("server.port", 8080i64),
            ])
            .start_with_context(&front, &root_cx);

        // Cart is another process: its parent is the frontend's client span, remote.
        let remote = remote_parent(call.span_context());
        let mut served = cart
            .span_builder("POST /cart")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", "POST")])
            .start_with_context(&cart, &remote);
        if i == 1 {
            served.set_status(Status::error("out of stock"));
        }
        let served_cx = Context::current_with_span(served);
        cart.span_builder("SELECT carts")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.namespace", "carts"),
            ])
            .start_with_context(&cart, &served_cx)
            .end();
        let publish = cart
            .span_builder("order-events publish")
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", "order-events"),
            ])
            .start_with_context(&cart, &served_cx);
        let message = remote_parent(publish.span_context());
        bill.span_builder("order-events process")
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", "order-events"),
                // Values of each type, and a text that reads as a number.
                KeyValue::new("messaging.batch.message_count", 3i64),
                KeyValue::new("messaging.kafka.message.tombstone", false),
                KeyValue::new("billing.share", 0.5),
                KeyValue::new("messaging.message.id", "42"),
            ])
            .start_with_context(&bill, &message)
            .end();
        drop(publish); // ends it
        served_cx.span().end();
        drop(call);
        if i == REQUESTS - 1 {
            root_cx.span().set_status(Status::error("payment declined"));
        }
        root_cx.span().end();
    }
    for p in [frontend, billing].into_iter().chain(carts) {
        p.shutdown().expect("the provider flushes");
    }
    traces
}

fn string(value: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

fn int(value: i64) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::IntValue(value)),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> ProtoKeyValue {
    ProtoKeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

/// A `wayfinder.health` log record of billing-1, as OTLP/HTTP protobuf.
fn billing_beat() -> Vec<u8> {
    let record = LogRecord {
        event_name: "wayfinder.health".into(),
        attributes: vec![
            kv("health.status", string("passing")),
            kv("health.ttl_ms", int(60_000)),
            kv("health.seq", int(1)),
            kv("server.address", string("10.0.0.9")),
            kv("server.port", int(9090)),
        ],
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(ProtoResource {
                attributes: vec![
                    kv("service.name", string("billing")),
                    kv("service.instance.id", string("billing-1")),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![record],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

async fn get(collector: &RunningCollector, path: &str) -> (u16, Value) {
    let url = format!("http://{}{path}", collector.addrs().query_http);
    let response = http_client()
        .get(url)
        .send()
        .await
        .expect("the API answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// `(source, target, connection_type, requests, errors)` of every edge.
fn edges(topology: &Value) -> Vec<(String, String, String, u64, u64)> {
    topology["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["connection_type"].as_str().unwrap().to_owned(),
                e["requests"].as_u64().unwrap(),
                e["errors"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn edge(s: &str, t: &str, c: &str, r: u64, e: u64) -> (String, String, String, u64, u64) {
    (s.into(), t.into(), c.into(), r, e)
}

/// Jaeger's metrics API (the Monitor tab's requests, as the UI sends them) gives what the
/// operations API gives for the same spans: cart's `POST /cart`, four calls, one failed.
async fn jaeger_metrics_agree_with_the_operations(
    collector: &RunningCollector,
    operations: &Value,
) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let ui = format!(
        "service=cart&endTs={now_ms}&lookback=300000&ratePer=600000&spanKind=server&step=60000"
    );
    let last = |family: &Value, operation: &str| -> Value {
        let metric = family["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["labels"][1]["value"] == operation)
            .unwrap_or_else(|| panic!("{operation} in {family}"));
        assert_eq!(
            metric["labels"][0],
            json!({"name": "service_name", "value": "cart"})
        );
        metric["metricPoints"].as_array().unwrap().last().unwrap()["gaugeValue"]["doubleValue"]
            .clone()
    };
    let (status, errors) = get(
        collector,
        &format!("/api/metrics/errors?{ui}&quantile=0.95&groupByOperation=true"),
    )
    .await;
    assert_eq!(status, 200, "{errors}");
    assert_eq!(errors["name"], "service_operation_error_rate");
    assert_eq!(
        last(&errors, "POST /cart"),
        json!(0.25),
        "one call in four failed"
    );
    let (_, latencies) = get(
        collector,
        &format!("/api/metrics/latencies?{ui}&quantile=0.9&groupByOperation=true"),
    )
    .await;
    let p90 = operations["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "POST /cart")
        .unwrap()["latency_ms"]["p90"]
        .as_f64()
        .unwrap();
    let from_jaeger = last(&latencies, "POST /cart").as_f64().unwrap();
    assert!(
        (from_jaeger - p90).abs() < 0.001,
        "the same sketch: {from_jaeger} ms against the operations' {p90} ms"
    );
    let (_, calls) = get(collector, &format!("/api/metrics/calls?{ui}")).await;
    assert_eq!(calls["name"], "service_call_rate");
    assert_eq!(calls["type"], "GAUGE");
    let rate = calls["metrics"][0]["metricPoints"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["gaugeValue"]["doubleValue"]
        .as_f64()
        .unwrap();
    assert!(rate > 0.0, "calls a second: {calls}");
    let (status, refused) = get(collector, "/api/metrics/latencies?service=cart").await;
    assert_eq!(status, 400);
    assert_eq!(
        refused["errors"][0]["msg"],
        json!("unable to parse param 'quantile': invalid syntax: \"\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_call_graph_through_every_endpoint() {
    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    let client = http_client();

    // Heartbeats: cart-1 passing, cart-2 warning (JSON), billing-1 over OTLP logs, a bad one.
    let health_url = format!("http://{}/v1/health", addrs.otlp_http);
    for (instance, status, address) in [
        ("cart-1", "passing", "10.0.0.1:8080"),
        ("cart-2", "warning", "10.0.0.2:8080"),
    ] {
        let response = client
            .post(&health_url)
            .json(
                &json!({"service": "cart", "instance_id": instance, "address": address,
                          "status": status, "ttl_ms": 60_000, "seq": 1}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap()["accepted"], true);
    }
    let stale = client
        .post(&health_url)
        .json(&json!({"service": "cart", "instance_id": "cart-1", "status": "critical", "seq": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(
        stale.json::<Value>().await.unwrap()["accepted"],
        false,
        "seq 1 again is stale"
    );
    let bad = client
        .post(&health_url)
        .json(&json!({"service": "cart", "instance_id": "cart-3", "status": "sleepy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("health.status"));
    let logs = client
        .post(format!("http://{}/v1/logs", addrs.otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(billing_beat())
        .send()
        .await
        .unwrap();
    assert_eq!(logs.status(), 200);

    let grpc_endpoint = format!("http://{}", addrs.otlp_grpc);
    let http_endpoint = format!("http://{}/v1/traces", addrs.otlp_http);
    let traces = tokio::task::spawn_blocking(move || send_call_graph(grpc_endpoint, http_endpoint))
        .await
        .unwrap();
    let spans = 6 * REQUESTS as i64;
    assert_eq!(wait_for_rows(&collector, "true", spans).await, spans);

    // The store has every span; the topology is fed right after, so poll it briefly too.
    let expected = vec![
        edge("cart", "billing", "messaging", 4, 0),
        edge("cart", "carts", "database", 4, 0),
        edge("frontend", "cart", "http", 4, 1),
        edge("user", "frontend", "http", 4, 1),
    ];
    let mut topology = Value::Null;
    for _ in 0..250 {
        topology = get(&collector, "/api/v1/topology?window=5m").await.1;
        if edges(&topology) == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        edges(&topology),
        expected,
        "the service graph: {topology:#}"
    );
    assert_eq!(topology["window_seconds"], 300);
    let kinds: BTreeSet<(String, String)> = topology["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().into(),
                n["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("billing", "service"),
        ("cart", "service"),
        ("carts", "database"),
        ("frontend", "service"),
        ("user", "user"),
    ]
    .into_iter()
    .map(|(a, b)| (a.into(), b.into()))
    .collect();
    assert_eq!(kinds, want);
    let cart = topology["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "cart")
        .unwrap();
    assert_eq!(cart["stats"]["requests"], 4);
    assert_eq!(cart["stats"]["errors"], 1);
    let instances: Vec<(Value, Value, Value)> = cart["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].clone(),
                i["stats"]["requests"].clone(),
                i["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        instances,
        [
            (json!("cart-1"), json!(2), json!("passing")),
            (json!("cart-2"), json!(2), json!("warning"))
        ]
    );
    let to_cart = &topology["edges"][2];
    for side in ["server", "client"] {
        let latency = &to_cart["latency_ms"][side];
        // Both present (an absent pair would compare equal) and ordered.
        let p50 = latency["p50"]
            .as_f64()
            .unwrap_or_else(|| panic!("{side} p50: {to_cart}"));
        let p99 = latency["p99"]
            .as_f64()
            .unwrap_or_else(|| panic!("{side} p99: {to_cart}"));
        assert!(p50 > 0.0, "{side}: spans take time: {to_cart}");
        assert!(p99 >= p50, "{side}: {to_cart}");
    }
    assert!(to_cart["rate_per_sec"].as_f64().unwrap() > 0.0);
    // A database edge's server side is the client's duration, as the anchors give it.
    let database = &topology["edges"][1];
    assert_eq!(database["connection_type"], "database");
    assert_eq!(
        database["latency_ms"]["server"], database["latency_ms"]["client"],
        "a database edge's server side"
    );
    assert!(
        database["latency_ms"]["server"]["p50"].as_f64().is_some(),
        "a database edge has a server latency: {topology:#}"
    );

    // Instance level: the frontend's calls split over cart's two instances.
    let (_, by_instance) = get(&collector, "/api/v1/topology?level=instance&service=cart").await;
    let mut to_instances: Vec<_> = edges(&by_instance)
        .into_iter()
        .filter(|e| e.1.starts_with("cart/"))
        .collect();
    to_instances.sort();
    assert_eq!(
        to_instances,
        [
            edge("frontend", "cart/cart-1", "http", 2, 0),
            edge("frontend", "cart/cart-2", "http", 2, 1)
        ]
    );
    let (_, billing) = get(&collector, "/api/v1/topology?service=billing").await;
    assert_eq!(
        edges(&billing),
        [edge("cart", "billing", "messaging", 4, 0)]
    );
    // A client that takes gzip gets the same answer compressed (the shared answer's gzip form).
    for path in ["/api/v1/topology?service=billing", "/metrics"] {
        let url = format!("http://{}{path}", collector.addrs().query_http);
        let response = http_client()
            .get(url)
            .header("accept-encoding", "br;q=1, gzip;q=0.8")
            .send()
            .await
            .expect("the API answers");
        assert_eq!(response.headers()["content-encoding"], "gzip", "{path}");
        assert_eq!(response.headers()["vary"], "accept-encoding", "{path}");
        let compressed = response.bytes().await.expect("a body");
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(compressed.as_ref()),
            &mut text,
        )
        .expect("gzip of UTF-8 text");
        if path == "/metrics" {
            assert!(
                text.contains("traces_service_graph_request_total{"),
                "the metrics text: {text}"
            );
        } else {
            let json: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(edges(&json), edges(&billing), "the same answer as plain");
        }
    }
    let (status, _) = get(&collector, "/api/v1/topology?window=10s").await;
    assert_eq!(status, 400, "a window under a minute is refused");
    let (status, _) = get(&collector, "/api/v1/topology?service=nobody").await;
    assert_eq!(status, 404);

    // Services.
    // SQL: attribute values read as the text they were sent as, their types beside them.
    let typed = sql(
        &collector,
        "SELECT attributes['messaging.batch.message_count'], \
                attribute_types['messaging.batch.message_count'], \
                attributes['messaging.message.id'], attribute_types['messaging.message.id'], \
                attribute_types['billing.share'], attribute_types['messaging.kafka.message.tombstone'] \
         FROM spans WHERE span_name = 'order-events process' LIMIT 1",
    )
    .await;
    assert_eq!(
        typed.rows,
        [vec![
            json!("3"),
            json!("int"),
            json!("42"),
            json!("string"),
            json!("double"),
            json!("bool")
        ]]
    );

    let (_, services) = get(&collector, "/api/v1/services").await;
    let cart = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cart")
        .unwrap()
        .clone();
    assert_eq!(cart["kind"], "service");
    assert_eq!(cart["instance_count"], 2);
    assert_eq!(cart["requests"], 4);
    assert_eq!(cart["error_rate"], 0.25);
    let (p50, p99) = (cart["p50_ms"].as_f64(), cart["p99_ms"].as_f64());
    assert!(
        p50.is_some_and(|p50| p50 > 0.0) && p99 >= p50,
        "cart's latency, present and ordered: {cart}"
    );

    // Span metrics as JSON: cart's operations, every status summed per name and kind.
    let (status, operations) = get(&collector, "/api/v1/operations?service=cart&window=5m").await;
    jaeger_metrics_agree_with_the_operations(&collector, &operations).await;
    assert_eq!(status, 200, "{operations}");
    let listed: Vec<(Value, Value, Value, Value)> = operations["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].clone(),
                o["span_kind"].clone(),
                o["requests"].clone(),
                o["errors"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (json!("POST /cart"), json!("server"), json!(4), json!(1)),
            (json!("SELECT carts"), json!("client"), json!(4), json!(0)),
            (
                json!("order-events publish"),
                json!("producer"),
                json!(4),
                json!(0)
            ),
        ],
        "{operations:#}"
    );
    assert!(
        operations["operations"][0]["latency_ms"]["p99"]
            .as_f64()
            .is_some_and(|p99| p99 > 0.0),
        "a latency: {operations:#}"
    );
    let (status, missing) = get(&collector, "/api/v1/operations").await;
    assert_eq!(status, 400, "the service is required: {missing}");

    // Instances: heartbeats and traffic.
    let (_, registry) = get(&collector, "/api/v1/instances").await;
    let listed: Vec<(Value, Value, Value, Value, Value)> = registry["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["service"].clone(),
                i["instance_id"].clone(),
                i["status"].clone(),
                i["source"].clone(),
                i["address"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (
                json!("billing"),
                json!("billing-1"),
                json!("passing"),
                json!("health"),
                json!("10.0.0.9:9090")
            ),
            (
                json!("cart"),
                json!("cart-1"),
                json!("passing"),
                json!("health"),
                json!("10.0.0.1:8080")
            ),
            (
                json!("cart"),
                json!("cart-2"),
                json!("warning"),
                json!("health"),
                json!("10.0.0.2:8080")
            ),
            (
                json!("frontend"),
                json!("frontend-1"),
                json!("unknown"),
                json!("traces"),
                Value::Null
            ),
        ]
    );
    let (_, only_cart) = get(&collector, "/api/v1/instances?service=cart").await;
    assert_eq!(only_cart["instances"].as_array().unwrap().len(), 2);
    let events = sql(
        &collector,
        "SELECT instance_id, status, reason FROM health_events ORDER BY instance_id, time",
    )
    .await;
    let rows: Vec<(Value, Value, Value)> = events
        .rows
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    assert_eq!(
        rows,
        [
            (json!("billing-1"), json!("passing"), json!("reported")),
            (json!("cart-1"), json!("passing"), json!("reported")),
            (json!("cart-2"), json!("warning"), json!("reported")),
            (json!("frontend-1"), json!("unknown"), json!("traffic")),
        ]
    );

    // Jaeger.
    let (_, services) = get(&collector, "/api/services").await;
    assert_eq!(services["data"], json!(["billing", "cart", "frontend"]));
    let (_, operations) = get(&collector, "/api/services/cart/operations").await;
    assert_eq!(
        operations["data"],
        json!(["POST /cart", "SELECT carts", "order-events publish"])
    );
    let (_, found) = get(&collector, "/api/traces?service=frontend&limit=10").await;
    let found = found["data"].as_array().unwrap();
    assert_eq!(found.len(), REQUESTS);
    for trace in found {
        assert_eq!(trace["spans"].as_array().unwrap().len(), 6);
        assert_eq!(trace["processes"].as_object().unwrap().len(), 3);
    }
    let failed = r#"/api/traces?service=frontend&tags=%7B%22error%22%3A%22true%22%7D"#;
    let (_, failed) = get(&collector, failed).await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    assert_eq!(failed["data"][0]["traceID"], json!(traces[REQUESTS - 1]));
    let (_, slow) = get(&collector, "/api/traces?service=frontend&minDuration=1h").await;
    assert_eq!(slow["data"], json!([]), "no trace lasts an hour");
    // Several ids at once, in the order asked; the unknown one is an error entry.
    let unknown = "00000000000000000000000000000abc";
    let (status, several) = get(
        &collector,
        &format!(
            "/api/traces?traceID={}&traceID={unknown}&traceID={}",
            traces[1],
            traces[0].to_uppercase()
        ),
    )
    .await;
    assert_eq!(status, 200);
    let ids: Vec<_> = several["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].clone())
        .collect();
    assert_eq!(ids, [json!(traces[1]), json!(traces[0])], "{several}");
    assert_eq!(
        several["errors"],
        json!([{"code": 404, "msg": "trace not found", "traceID": unknown}])
    );
    let (status, _) = get(&collector, "/api/traces?traceID=not-hex").await;
    assert_eq!(status, 400, "a bad id is refused");
    let (status, one) = get(&collector, &format!("/api/traces/{}", traces[0])).await;
    assert_eq!(status, 200);
    let spans = one["data"][0]["spans"].as_array().unwrap();
    let consumer = spans
        .iter()
        .find(|s| s["operationName"] == "order-events process")
        .unwrap();
    let producer = spans
        .iter()
        .find(|s| s["operationName"] == "order-events publish")
        .unwrap();
    assert_eq!(
        consumer["flags"], 1,
        "sampled, from the W3C trace flags the SDK sent"
    );
    assert_eq!(consumer["references"][0]["refType"], "CHILD_OF");
    assert_eq!(consumer["references"][0]["spanID"], producer["spanID"]);
    assert!(
        consumer["startTime"].as_i64().unwrap() > 1_600_000_000_000_000,
        "microseconds"
    );
    let kind = consumer["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "span.kind")
        .unwrap();
    assert_eq!(kind["value"], "consumer");
    // Tags keep the types the attributes were sent with.
    let typed: BTreeSet<String> = consumer["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}={}:{}",
                t["key"].as_str().unwrap(),
                t["type"].as_str().unwrap(),
                t["value"]
            )
        })
        .collect();
    for want in [
        "messaging.batch.message_count=int64:3",
        "messaging.kafka.message.tombstone=bool:false",
        "billing.share=float64:0.5",
        r#"messaging.message.id=string:"42""#,
        r#"messaging.system=string:"kafka""#,
    ] {
        assert!(typed.contains(want), "{want} in {typed:?}");
    }
    let process = &one["data"][0]["processes"][consumer["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], "billing");
    let (status, missing) = get(&collector, "/api/traces/00000000000000000000000000000001").await;
    assert_eq!(status, 404);
    assert_eq!(missing["errors"][0]["code"], 404);
    let (_, dependencies) = get(&collector, "/api/dependencies?lookback=3600000").await;
    assert!(
        dependencies["data"]
            .as_array()
            .unwrap()
            .contains(&json!({"parent": "frontend", "child": "cart", "callCount": 4})),
        "{dependencies}"
    );
    // An endTs two hours back: the hour before it saw no traffic.
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 7_200_000;
    let (_, earlier) = get(
        &collector,
        &format!("/api/dependencies?endTs={two_hours_ago}&lookback=3600000"),
    )
    .await;
    assert_eq!(earlier["data"], json!([]), "endTs is honoured: {earlier}");

    // Metrics.
    let metrics = metrics_text(&collector).await;
    for line in [
        // The anchors' labels: a plain call's connection_type is "", and an edge with an
        // uninstrumented side is a virtual_node edge that names the side.
        r#"traces_service_graph_request_total{client="frontend",server="cart",connection_type=""} 4"#,
        r#"traces_service_graph_request_failed_total{client="frontend",server="cart",connection_type=""} 1"#,
        r#"traces_service_graph_request_server_seconds_count{client="frontend",server="cart",connection_type=""} 4"#,
        r#"traces_service_graph_request_client_seconds_count{client="frontend",server="cart",connection_type=""} 4"#,
        r#"traces_service_graph_request_total{client="user",server="frontend",connection_type="virtual_node",virtual_node="client"} 4"#,
        // A producer and its consumer: one edge, as the anchors pair them.
        r#"traces_service_graph_request_total{client="cart",server="billing",connection_type="messaging_system"} 4"#,
        // A database edge has a server side: the client's duration.
        r#"traces_service_graph_request_server_seconds_count{client="cart",server="carts",connection_type="database"} 4"#,
        // Span metrics, with Tempo's names and labels.
        r#"traces_spanmetrics_calls_total{service="cart",span_name="POST /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR"} 1"#,
        r#"traces_spanmetrics_calls_total{service="cart",span_name="POST /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"} 3"#,
        r#"traces_spanmetrics_latency_count{service="billing",span_name="order-events process",span_kind="SPAN_KIND_CONSUMER",status_code="STATUS_CODE_UNSET"} 4"#,
        r#"wayfinder_instance_health{service="cart",instance="cart-2",status="warning"} 1"#,
        r#"wayfinder_instance_health{service="cart",instance="cart-2",status="passing"} 0"#,
        r#"wayfinder_health_stale_beats_total 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    // No label set twice in a family (Prometheus refuses duplicate series).
    let mut seen = BTreeSet::new();
    for sample in metrics.lines().filter(|l| !l.starts_with('#')) {
        let series = sample.rsplit_once(' ').map_or(sample, |(series, _)| series);
        assert!(seen.insert(series.to_owned()), "{series} twice");
    }
    // OpenMetrics: the latency buckets carry exemplars naming traces that were sent.
    let url = format!("http://{}/metrics", collector.addrs().query_http);
    let openmetrics = http_client()
        .get(url)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("the query API answers")
        .text()
        .await
        .expect("a body");
    let exemplars: BTreeSet<&str> = openmetrics
        .lines()
        .filter(|l| {
            l.starts_with(
                r#"traces_service_graph_request_server_seconds_bucket{client="frontend",server="cart","#,
            )
        })
        .filter_map(|l| l.split_once(r#" # {trace_id=""#))
        .map(|(_, rest)| &rest[..32])
        .collect();
    assert!(
        !exemplars.is_empty() && exemplars.iter().all(|t| traces.iter().any(|s| s == t)),
        "exemplars {exemplars:?} among the traces sent {traces:?}:\n{openmetrics}"
    );
    collector.shutdown().await;
}

/// Extra dimensions and the sampling weight, end to end: the OpenTelemetry SDK sends a client
/// span sampled at 1/4 (the ratio in an attribute, Tempo's `span_multiplier_key`) with a
/// resource attribute, and its server half from another service; `/metrics` names each side's
/// value under `client_` / `server_` and counts the pair for four.
#[tokio::test]
async fn configured_dimensions_and_sampling_weight_reach_the_series() {
    let mut config = loopback_config();
    config.topology.service_graph_dimensions = vec!["deployment.environment".into()];
    config.spanmetrics.span_metrics_dimensions = vec!["http.route".into()];
    config.spanmetrics.span_multiplier_key = Some("sampling.ratio".into());
    let collector = start(config).await;
    let endpoint = format!("http://{}", collector.addrs().otlp_grpc);
    tokio::task::spawn_blocking(move || {
        let with_env = |service: &str, env: &str| {
            let resource = Resource::builder()
                .with_service_name(service.to_owned())
                .with_attribute(KeyValue::new("deployment.environment", env.to_owned()))
                .build();
            SdkTracerProvider::builder()
                .with_simple_exporter(grpc(&endpoint))
                .with_resource(resource)
                .build()
        };
        let front = with_env("front", "prod");
        let shop = with_env("shop", "canary");
        let (front_tracer, shop_tracer) = (front.tracer("e2e"), shop.tracer("e2e"));
        let mut call = front_tracer
            .span_builder("GET /items")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("sampling.ratio", 0.25),
            ])
            .start(&front_tracer);
        let parent = remote_parent(call.span_context());
        let mut served = shop_tracer
            .span_builder("GET /items")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.route", "/items"),
                KeyValue::new("sampling.ratio", 0.25),
            ])
            .start_with_context(&shop_tracer, &parent);
        served.end();
        call.end();
        front.shutdown().unwrap();
        shop.shutdown().unwrap();
    })
    .await
    .unwrap();
    let want = [
        r#"traces_service_graph_request_total{client="front",server="shop",connection_type="",client_deployment_environment="prod",server_deployment_environment="canary"} 4"#,
        r#"traces_spanmetrics_calls_total{service="shop",span_name="GET /items",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET",http_route="/items"} 4"#,
    ];
    let mut metrics = String::new();
    for _ in 0..250 {
        metrics = metrics_text(&collector).await;
        if want.iter().all(|line| metrics.contains(line)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for line in want {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    collector.shutdown().await;
}
