//! Health events as log pipelines deliver them, over real OTLP/HTTP (`POST /v1/logs`,
//! protobuf and JSON) to a collector on loopback, then read back from `GET /api/v1/instances`.
//!
//! A service that writes its heartbeats as JSON lines to a file, shipped by the OpenTelemetry
//! Collector (`filelog` receiver with a `json_parser` operator, `otlphttp` exporter), arrives
//! as a log record whose body is the raw line and whose attributes are the parsed fields, every
//! number a double (`"server.port": 8080` becomes `double_value: 8080.0`). Other pipelines send
//! every value as a string. Both must register the instance; a fraction must not.

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use serde_json::{Value, json};
use wayfinder_collector::RunningCollector;
use wayfinder_collector::testing::attribute as kv;
use wayfinder_e2e::{http_client, loopback_config, start};

/// When the filelog receiver read the line (it sets `observed_time_unix_nano`, not the time).
const OBSERVED: u64 = 1_732_480_501_003_000_000;

fn string(text: &str) -> any_value::Value {
    any_value::Value::StringValue(text.into())
}

fn double(number: f64) -> any_value::Value {
    any_value::Value::DoubleValue(number)
}

/// The numbers of one heartbeat, in the form the pipeline carries them.
struct Numbers {
    port: any_value::Value,
    ttl_ms: any_value::Value,
    seq: any_value::Value,
}

/// A heartbeat line of `instance` of cart at `10.0.0.N:port`, as the filelog receiver turns it
/// into a log record: the line as the body, `log.file.name`, then the parsed fields as
/// attributes (the service's own fields included; the resource stays empty).
fn filelog_record(instance: &str, host: &str, numbers: Numbers) -> LogRecord {
    let line = json!({
        "event.name": "wayfinder.health", "service.name": "cart",
        "service.instance.id": instance, "health.status": "passing",
        "server.address": host,
    })
    .to_string();
    LogRecord {
        observed_time_unix_nano: OBSERVED,
        body: Some(AnyValue {
            value: Some(string(&line)),
        }),
        attributes: vec![
            kv("log.file.name", string("health.log")),
            kv("event.name", string("wayfinder.health")),
            kv("service.name", string("cart")),
            kv("service.instance.id", string(instance)),
            kv("health.status", string("passing")),
            kv("server.address", string(host)),
            kv("server.port", numbers.port),
            kv("health.ttl_ms", numbers.ttl_ms),
            kv("health.seq", numbers.seq),
        ],
        ..Default::default()
    }
}

fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource::default()),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The same record as the `otlphttp` exporter writes it with `encoding: json`: attribute
/// values as `{"stringValue": …}` / `{"doubleValue": …}`, a whole double written without a
/// decimal point (`8080`), the time as a decimal string.
fn filelog_json_record(instance: &str, host: &str, numbers: [(&str, Value); 3]) -> Value {
    let line = json!({
        "event.name": "wayfinder.health", "service.name": "cart",
        "service.instance.id": instance, "health.status": "passing",
        "server.address": host,
    })
    .to_string();
    let text = |key: &str, value: &str| json!({"key": key, "value": {"stringValue": value}});
    let mut attributes = vec![
        text("log.file.name", "health.log"),
        text("event.name", "wayfinder.health"),
        text("service.name", "cart"),
        text("service.instance.id", instance),
        text("health.status", "passing"),
        text("server.address", host),
    ];
    for (key, (kind, value)) in ["server.port", "health.ttl_ms", "health.seq"]
        .into_iter()
        .zip(numbers)
    {
        attributes.push(json!({"key": key, "value": {kind: value}}));
    }
    json!({
        "observedTimeUnixNano": OBSERVED.to_string(),
        "body": {"stringValue": line},
        "attributes": attributes,
    })
}

fn json_request(records: Vec<Value>) -> String {
    json!({"resourceLogs": [{"resource": {}, "scopeLogs": [{"scope": {}, "logRecords": records}]}]})
        .to_string()
}

fn logs_url(collector: &RunningCollector) -> String {
    format!("http://{}/v1/logs", collector.addrs().otlp_http)
}

/// Sends `request` as OTLP/HTTP protobuf; the status and the decoded answer.
async fn send_protobuf(
    collector: &RunningCollector,
    request: &ExportLogsServiceRequest,
) -> (u16, ExportLogsServiceResponse) {
    let response = http_client()
        .post(logs_url(collector))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .expect("the OTLP/HTTP port answers");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    let answer = ExportLogsServiceResponse::decode(body).expect("an ExportLogsServiceResponse");
    (status, answer)
}

/// Sends `body` as OTLP/HTTP JSON; the status and the JSON answer.
async fn send_json(collector: &RunningCollector, body: String) -> (u16, Value) {
    let response = http_client()
        .post(logs_url(collector))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the OTLP/HTTP port answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// `(instance_id, status, address, ttl_ms, seq)` of every instance in `GET /api/v1/instances`.
async fn instances(collector: &RunningCollector) -> Vec<(Value, Value, Value, Value, Value)> {
    let url = format!("http://{}/api/v1/instances", collector.addrs().query_http);
    let response = http_client()
        .get(url)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 200);
    let registry: Value = response.json().await.expect("a JSON body");
    registry["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            assert_eq!(i["service"], "cart", "{i}");
            assert_eq!(i["source"], "health", "{i}");
            (
                i["instance_id"].clone(),
                i["status"].clone(),
                i["address"].clone(),
                i["ttl_ms"].clone(),
                i["seq"].clone(),
            )
        })
        .collect()
}

fn instance(id: &str, address: &str, ttl_ms: u64, seq: u64) -> (Value, Value, Value, Value, Value) {
    (
        json!(id),
        json!("passing"),
        json!(address),
        json!(ttl_ms),
        json!(seq),
    )
}

/// A JSON answer that accepted everything: no `partialSuccess`, or an empty one.
fn fully_accepted(answer: &Value) -> bool {
    let partial = &answer["partialSuccess"];
    partial.is_null() || partial["rejectedLogRecords"].as_i64().unwrap_or(0) == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doubles_from_a_filelog_pipeline_register_the_instance() {
    let collector = start(loopback_config()).await;

    let protobuf = request(vec![filelog_record(
        "cart-1",
        "10.0.0.1",
        Numbers {
            port: double(8080.0),
            ttl_ms: double(15000.0),
            seq: double(1.7e12),
        },
    )]);
    let (status, answer) = send_protobuf(&collector, &protobuf).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer.partial_success, None,
        "whole doubles are accepted over protobuf"
    );

    let body = json_request(vec![filelog_json_record(
        "cart-2",
        "10.0.0.2",
        [
            ("doubleValue", json!(8081)),
            ("doubleValue", json!(20000)),
            ("doubleValue", json!(1.700000000001e12)),
        ],
    )]);
    let (status, answer) = send_json(&collector, body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        fully_accepted(&answer),
        "whole doubles are accepted over JSON: {answer}"
    );

    assert_eq!(
        instances(&collector).await,
        [
            instance("cart-1", "10.0.0.1:8080", 15_000, 1_700_000_000_000),
            instance("cart-2", "10.0.0.2:8081", 20_000, 1_700_000_000_001),
        ]
    );
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_sent_as_strings_register_the_instance() {
    let collector = start(loopback_config()).await;

    let protobuf = request(vec![filelog_record(
        "cart-3",
        "10.0.0.3",
        Numbers {
            port: string("8080"),
            ttl_ms: string(" 15000 "),
            seq: string("42"),
        },
    )]);
    let (status, answer) = send_protobuf(&collector, &protobuf).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer.partial_success, None,
        "decimal strings are accepted over protobuf"
    );

    let body = json_request(vec![filelog_json_record(
        "cart-4",
        "10.0.0.4",
        [
            ("stringValue", json!("9090")),
            ("stringValue", json!("30000")),
            // A millisecond clock, as the middleware's seq is: a seq ahead of the collector's
            // clock is refused by the registry (the decoders take any u64: `decode`'s tests).
            ("stringValue", json!("1700000000000")),
        ],
    )]);
    let (status, answer) = send_json(&collector, body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        fully_accepted(&answer),
        "decimal strings are accepted over JSON: {answer}"
    );

    assert_eq!(
        instances(&collector).await,
        [
            instance("cart-3", "10.0.0.3:8080", 15_000, 42),
            instance("cart-4", "10.0.0.4:9090", 30_000, 1_700_000_000_000),
        ]
    );
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fractional_port_is_rejected_by_name_and_value() {
    let collector = start(loopback_config()).await;
    let good = |port| Numbers {
        port: double(port),
        ttl_ms: double(15000.0),
        seq: double(1.0),
    };

    // One good record and one with port 8080.5: the receiver keeps the first and answers 200
    // with a partial success that counts and explains the second.
    let protobuf = request(vec![
        filelog_record("cart-5", "10.0.0.5", good(8080.0)),
        filelog_record("cart-6", "10.0.0.6", good(8080.5)),
    ]);
    let (status, answer) = send_protobuf(&collector, &protobuf).await;
    assert_eq!(status, 200, "a rejected health event is not a bad request");
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_log_records, 1);
    assert_eq!(
        partial.error_message,
        "rejected 1 health event(s): server.port must be a non-negative integer, got the \
         double 8080.5, a fraction"
    );

    let seq = ("doubleValue", json!(1));
    let ttl = ("doubleValue", json!(15000));
    let body = json_request(vec![
        filelog_json_record(
            "cart-7",
            "10.0.0.7",
            [("doubleValue", json!(8080)), ttl.clone(), seq.clone()],
        ),
        filelog_json_record(
            "cart-8",
            "10.0.0.8",
            [("doubleValue", json!(8080.5)), ttl, seq],
        ),
    ]);
    let (status, answer) = send_json(&collector, body).await;
    assert_eq!(status, 200, "{answer}");
    let partial = &answer["partialSuccess"];
    assert_eq!(partial["rejectedLogRecords"], 1, "{answer}");
    let message = partial["errorMessage"].as_str().expect("an errorMessage");
    assert!(
        message.contains("server.port") && message.contains("8080.5"),
        "names the attribute and the value: {message}"
    );

    assert_eq!(
        instances(&collector).await,
        [
            instance("cart-5", "10.0.0.5:8080", 15_000, 1),
            instance("cart-7", "10.0.0.7:8080", 15_000, 1),
        ],
        "the refused beats registered nothing"
    );
    collector.shutdown().await;
}
