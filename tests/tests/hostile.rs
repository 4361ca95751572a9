//! Hostile input on every endpoint, as a table: huge attribute counts, deeply nested values,
//! 10 MB strings, invalid UTF-8, absurd timestamps, tens of thousands of distinct names, and
//! abuse of the query API's parameters. Each row gets a clear error or is bounded, and after
//! each one good traffic is still accepted, stored and answered. (Slow clients and connection
//! floods are in `listeners.rs` and `collector/tests/cli.rs`.)

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, KeyValueList, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use wayfinder_collector::testing::{self, string_attribute, trace_request};
use wayfinder_e2e::{http_client, loopback_config, metrics_text, start, wait_for_rows};

const START: u64 = 1_700_000_000_000_000_000;

fn span(trace: u8, id: u64) -> Span {
    testing::span([trace; 16], id, "op", START, START + 1_000_000)
}

fn request(service: &str, spans: Vec<Span>) -> Vec<u8> {
    trace_request(Some(service), spans).encode_to_vec()
}

/// A value nested `depth` key-value lists deep.
fn nested(depth: usize) -> AnyValue {
    let mut value = AnyValue {
        value: Some(any_value::Value::StringValue("bottom".into())),
    };
    for _ in 0..depth {
        value = AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".into(),
                    value: Some(value),
                    ..Default::default()
                }],
            })),
        };
    }
    value
}

fn nested_json(depth: usize) -> String {
    let mut value = r#"{"stringValue":"bottom"}"#.to_owned();
    for _ in 0..depth {
        value = format!(r#"{{"kvlistValue":{{"values":[{{"key":"k","value":{value}}}]}}}}"#);
    }
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{{"key":"deep","value":{value}}}]}}]}}]}}]}}"#
    )
}

/// What a row sends.
enum Send {
    /// `POST path` with a content type and a body.
    Post(&'static str, &'static str, Vec<u8>),
    /// `GET path_and_query`.
    Get(String),
}

struct Row {
    why: &'static str,
    send: Send,
    /// The status the row must get.
    status: u16,
    /// For an accepted trace request: how many of its spans are refused one by one.
    rejected: Option<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_clear_error_or_is_bounded_and_good_traffic_goes_on() {
    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();

    let many_attributes = {
        let mut span = span(1, 1);
        span.attributes = (0..100_000)
            .map(|i| string_attribute(&format!("k{i}"), "v"))
            .collect();
        request("many-attributes", vec![span])
    };
    let deep = {
        let mut span = span(1, 2);
        span.attributes = vec![KeyValue {
            key: "deep".into(),
            value: Some(nested(200)),
            ..Default::default()
        }];
        request("deep", vec![span])
    };
    let ten_mb = {
        let mut span = span(1, 3);
        span.attributes = vec![string_attribute("big", &"x".repeat(10 << 20))];
        request("ten-mb", vec![span])
    };
    let invalid_utf8 = {
        let mut bytes = request("bad-utf8", vec![testing::span([1; 16], 4, "XXXX", 1, 2)]);
        let at = bytes.windows(4).position(|w| w == b"XXXX").unwrap();
        bytes[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
        bytes
    };
    let absurd_times = {
        let mut past_i64 = span(1, 5);
        past_i64.start_time_unix_nano = u64::MAX - 1;
        past_i64.end_time_unix_nano = u64::MAX;
        let mut whole_range = span(1, 6);
        whole_range.start_time_unix_nano = 0;
        whole_range.end_time_unix_nano = i64::MAX as u64;
        request("absurd-times", vec![past_i64, whole_range])
    };
    let many_services = ExportTraceServiceRequest {
        resource_spans: (0..20_000u64)
            .flat_map(|i| {
                let mut server = span(2, i + 1);
                server.kind = 2; // SERVER: a node of its own per service
                trace_request(Some(&format!("svc-{i}")), vec![server]).resource_spans
            })
            .collect(),
    }
    .encode_to_vec();
    let negative_json = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","startTimeUnixNano":"-5","endTimeUnixNano":"2"}]}]}]}"#;
    let sql_body = |sql: String| serde_json::json!({ "sql": sql }).to_string().into_bytes();

    let rows = vec![
        Row {
            why: "100,000 attributes on one span: bounded by the body limit, stored",
            send: Send::Post("/v1/traces", "application/x-protobuf", many_attributes),
            status: 200,
            rejected: Some(0),
        },
        Row {
            why: "a value nested 200 deep (protobuf): past the decoder's recursion limit, that \
                  span rejected alone (a partial success)",
            send: Send::Post("/v1/traces", "application/x-protobuf", deep),
            status: 200,
            rejected: Some(1),
        },
        Row {
            why: "a value nested 200 deep (JSON): past the parser's recursion limit",
            send: Send::Post(
                "/v1/traces",
                "application/json",
                nested_json(200).into_bytes(),
            ),
            status: 400,
            rejected: None,
        },
        Row {
            why: "a 10 MB string attribute: under the 20 MiB body limit, stored",
            send: Send::Post("/v1/traces", "application/x-protobuf", ten_mb),
            status: 200,
            rejected: Some(0),
        },
        Row {
            why: "invalid UTF-8 in a span name: that span rejected alone (a partial success)",
            send: Send::Post("/v1/traces", "application/x-protobuf", invalid_utf8),
            status: 200,
            rejected: Some(1),
        },
        Row {
            why: "timestamps past what a signed nanosecond count holds: that span refused",
            send: Send::Post("/v1/traces", "application/x-protobuf", absurd_times),
            status: 200,
            rejected: Some(1),
        },
        Row {
            why: "a negative timestamp in JSON",
            send: Send::Post("/v1/traces", "application/json", negative_json.into()),
            status: 400,
            rejected: None,
        },
        Row {
            why: "20,000 distinct services in one request: stored, the graph capped",
            send: Send::Post("/v1/traces", "application/x-protobuf", many_services),
            status: 200,
            rejected: Some(0),
        },
        Row {
            why: "a health event that is not JSON",
            send: Send::Post("/v1/health", "application/json", b"{\"service\":".to_vec()),
            status: 400,
            rejected: None,
        },
        Row {
            why: "SQL nested 5,000 parentheses deep: an error, not a stack overflow",
            send: Send::Post(
                "/api/v1/sql",
                "application/json",
                sql_body(format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000))),
            ),
            status: 400,
            rejected: None,
        },
        Row {
            why: "a 3 MB SQL statement: over the API's body limit",
            send: Send::Post(
                "/api/v1/sql",
                "application/json",
                sql_body(format!("SELECT '{}'", "x".repeat(3 << 20))),
            ),
            status: 413,
            rejected: None,
        },
        Row {
            why: "a trace id that is not hex",
            send: Send::Get(format!("/api/v1/traces/{}", "z".repeat(32))),
            status: 400,
            rejected: None,
        },
        Row {
            why: "a window of a hundred thousand years",
            send: Send::Get("/api/v1/topology?window=876000000h".into()),
            status: 400,
            rejected: None,
        },
        Row {
            why: "a Jaeger search with a negative limit",
            send: Send::Get("/api/traces?service=x&limit=-1".into()),
            status: 400,
            rejected: None,
        },
        Row {
            why: "a 16 KB service name in a query: not found, nothing built for it",
            send: Send::Get(format!("/api/v1/weights/{}", "s".repeat(16 << 10))),
            status: 404,
            rejected: None,
        },
    ];

    let client = http_client();
    for (i, row) in rows.into_iter().enumerate() {
        let response = match row.send {
            Send::Post(path, content_type, body) => {
                let addr = if path.starts_with("/api") {
                    addrs.query_http
                } else {
                    addrs.otlp_http
                };
                client
                    .post(format!("http://{addr}{path}"))
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
            }
            Send::Get(path) => {
                client
                    .get(format!("http://{}{path}", addrs.query_http))
                    .send()
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("{}: no answer: {}", row.why, e.without_url()));
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        assert_eq!(
            status,
            row.status,
            "{}: {}",
            row.why,
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
        if let Some(rejected) = row.rejected {
            let answer = ExportTraceServiceResponse::decode(body).expect("an OTLP answer");
            let refused = answer.partial_success.map_or(0, |p| p.rejected_spans);
            assert_eq!(refused, rejected, "{}", row.why);
        } else if status != 404 {
            assert!(!body.is_empty(), "{}: the error says why", row.why);
        }

        // Good traffic right after: accepted, stored, and the probes answer.
        let good = client
            .post(format!("http://{}/v1/traces", addrs.otlp_http))
            .header("content-type", "application/x-protobuf")
            .body(request("good", vec![span(9, 100 + i as u64)]))
            .send()
            .await
            .unwrap();
        assert_eq!(good.status(), 200, "good data after {}", row.why);
        assert_eq!(
            wait_for_rows(&collector, "service_name = 'good'", i as i64 + 1).await,
            i as i64 + 1,
            "good data after {} is stored",
            row.why
        );
        let ready = client
            .get(format!("http://{}/readyz", addrs.query_http))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "ready after {}", row.why);
    }

    // What the accepted rows left: each stored once, the graph within its series cap.
    for (service, spans) in [("many-attributes", 1), ("ten-mb", 1), ("absurd-times", 1)] {
        assert_eq!(
            wait_for_rows(&collector, &format!("service_name = '{service}'"), spans).await,
            spans,
            "{service}"
        );
    }
    assert_eq!(
        wait_for_rows(&collector, "service_name LIKE 'svc-%'", 20_000).await,
        20_000
    );
    let topology = collector.topology().expect("on by default");
    let (counters, _) = topology.counters();
    assert!(
        counters.series_dropped >= 10_000,
        "past 10,000 nodes the observations are dropped and counted: {counters:?}"
    );
    let metrics = metrics_text(&collector).await;
    assert!(
        metrics.contains("otel_metric_overflow=\"true\""),
        "the span metrics past their cap go to the overflow series"
    );
    collector.shutdown().await;
}
