//! OTLP/HTTP JSON (the specification's example and its number forms), and a table of bad
//! requests: each gets its status, and good data sent after each is still stored.

use std::io::Write as _;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;
use wayfinder_collector::testing::{self, trace_request};
use wayfinder_collector::testing::{RawCodec, TRACE_EXPORT_PATH};
use wayfinder_e2e::{count, http_client, loopback_config, metrics_text, sql, start, wait_for_rows};

const SPEC_EXAMPLE: &str = include_str!("../fixtures/otlp-spec-trace.json");

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    trace_request(Some(service), spans)
}

fn span(trace: [u8; 16], id: u64) -> Span {
    let start = 1_700_000_000_000_000_000;
    testing::span(trace, id, "op", start, start + 1_000_000)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specification_example_json_is_stored_field_by_field() {
    let collector = start(loopback_config()).await;
    let url = format!("http://{}/v1/traces", collector.addrs().otlp_http);
    let response = http_client()
        .post(&url)
        .header("content-type", "application/json")
        .body(SPEC_EXAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the answer uses the request's type"
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        body.get("partialSuccess").is_none_or(Value::is_null),
        "nothing rejected: {body}"
    );

    assert_eq!(
        wait_for_rows(&collector, "service_name = 'my.service'", 1).await,
        1
    );
    let r = sql(
        &collector,
        "SELECT trace_id, span_id, parent_span_id, span_name, span_kind, start_time, end_time, duration_ns, \
         scope_name, scope_version, attributes['my.span.attr'] AS attr FROM spans",
    )
    .await;
    let expected = serde_json::json!([
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "eee19b7ec3c1b173",
        "I'm a server span",
        "server",
        "2018-12-13T14:51:00.000000000Z",
        "2018-12-13T14:51:01.000000000Z",
        1_000_000_000,
        "my.library",
        "1.0.0",
        "some value"
    ]);
    assert_eq!(Value::Array(r.rows[0].clone()), expected);
    assert_eq!(
        r.columns[5].data_type, "Timestamp(ns, \"UTC\")",
        "{:?}",
        r.columns[5]
    );
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_number_forms_and_unknown_fields() {
    let collector = start(loopback_config()).await;
    let url = format!("http://{}/v1/traces", collector.addrs().otlp_http);
    // 64-bit integers as numbers as well as strings, an unknown field at every level, intValue as a string.
    let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"numbers"}}]},
        "futureField":1,
        "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
        "name":"n","kind":3,"startTimeUnixNano":1700000000000000000,"endTimeUnixNano":"1700000000000000500",
        "status":{"code":2,"message":"boom"},"unknownSpanField":{"x":[1,2]},
        "attributes":[{"key":"i","value":{"intValue":"-42"}},{"key":"d","value":{"doubleValue":2.5}},
        {"key":"a","value":{"arrayValue":{"values":[{"stringValue":"x"},{"intValue":1}]}}}]}]}]}]}"#;
    let response = http_client()
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(
        wait_for_rows(&collector, "service_name = 'numbers'", 1).await,
        1
    );
    let r = sql(&collector, "SELECT duration_ns, span_kind, status_code, status_message, attributes['i'], attributes['d'], attributes['a'] FROM spans").await;
    assert_eq!(
        Value::Array(r.rows[0].clone()),
        serde_json::json!([500, "client", "error", "boom", "-42", "2.5", "[\"x\",1]"])
    );
    collector.shutdown().await;
}

/// One bad request: what is sent, what must come back, and why.
struct Case {
    name: &'static str,
    method: &'static str,
    content_type: &'static str,
    content_encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// For a 200: how many spans the partial success must report rejected.
    rejected: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_their_status_and_lose_nothing_else() {
    let mut config = loopback_config();
    config.ingest.http_max_body_bytes = 64 * 1024;
    let collector = start(config).await;
    let url = format!("http://{}/v1/traces", collector.addrs().otlp_http);
    let good = request("good", vec![span([7; 16], 1)]).encode_to_vec();
    let mut truncated = request("bad", vec![span([7; 16], 1), span([7; 16], 2)]).encode_to_vec();
    truncated.truncate(truncated.len() - 5);
    let zero_ids = request(
        "zero",
        vec![span([0; 16], 1), span([9; 16], 0), span([9; 16], 5)],
    )
    .encode_to_vec();
    let mut end_before_start = span([3; 16], 1);
    end_before_start.end_time_unix_nano = end_before_start.start_time_unix_nano - 1;
    let backwards = request("backwards", vec![end_before_start]).encode_to_vec();
    // A span whose name is not UTF-8 beside a valid one: prost refuses such a request whole.
    let mut not_utf8 = span([8; 16], 1);
    not_utf8.name = "MARKMARK".into();
    let mut not_utf8 = request("salvaged", vec![not_utf8, span([8; 16], 2)]).encode_to_vec();
    let at = not_utf8
        .windows(8)
        .position(|w| w == b"MARKMARK")
        .expect("the name");
    not_utf8[at..at + 8].copy_from_slice(b"\xff\xfe\xfd\xfcMARK");
    let base64_ids = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"W47/95gDgQPSabYzgT/GDA==","spanId":"7uGbfsPBsXQ=","name":"x"}]}]}]}"#;
    let oversize = request("big", (1..3000).map(|i| span([5; 16], i)).collect()).encode_to_vec();
    assert!(oversize.len() > 64 * 1024);
    let bomb = gzip(&vec![b' '; 8 * 1024 * 1024]);

    let cases = vec![
        Case {
            name: "truncated protobuf",
            method: "POST",
            content_type: "application/x-protobuf",
            content_encoding: None,
            body: truncated,
            status: 400,
            rejected: 0,
        },
        Case {
            name: "garbage JSON",
            method: "POST",
            content_type: "application/json",
            content_encoding: None,
            body: b"{\"resourceSpans\": [".to_vec(),
            status: 400,
            rejected: 0,
        },
        Case {
            name: "JSON with base64 ids (the spec says hex)",
            method: "POST",
            content_type: "application/json",
            content_encoding: None,
            body: base64_ids.into(),
            status: 400,
            rejected: 0,
        },
        Case {
            name: "wrong content type",
            method: "POST",
            content_type: "text/plain",
            content_encoding: None,
            body: good.clone(),
            status: 415,
            rejected: 0,
        },
        Case {
            name: "unsupported content encoding",
            method: "POST",
            content_type: "application/x-protobuf",
            content_encoding: Some("br"),
            body: good.clone(),
            status: 415,
            rejected: 0,
        },
        Case {
            name: "body over the limit",
            method: "POST",
            content_type: "application/x-protobuf",
            content_encoding: None,
            body: oversize,
            status: 413,
            rejected: 0,
        },
        Case {
            name: "gzip bomb: small on the wire, over the limit inflated",
            method: "POST",
            content_type: "application/json",
            content_encoding: Some("gzip"),
            body: bomb,
            status: 413,
            rejected: 0,
        },
        Case {
            name: "not gzip though it says so",
            method: "POST",
            content_type: "application/x-protobuf",
            content_encoding: Some("gzip"),
            body: good.clone(),
            status: 400,
            rejected: 0,
        },
        Case {
            name: "wrong method",
            method: "GET",
            content_type: "application/x-protobuf",
            content_encoding: None,
            body: Vec::new(),
            status: 405,
            rejected: 0,
        },
        Case {
            name: "all-zero trace id, all-zero span id: rejected one by one, the valid span kept",
            method: "POST",
            content_type: "application/x-protobuf",
            content_encoding: None,
            body: zero_ids,
            status: 200,
            rejected: 2,
        },
        Case {
            name: "end before start: rejected",
            method: "POST",
            content_type: "application/x-protobuf",
            content_encoding: None,
            body: backwards,
            status: 200,
            rejected: 1,
        },
        Case {
            name: "a span name that is not UTF-8: that span rejected, the valid one kept",
            method: "POST",
            content_type: "application/x-protobuf",
            content_encoding: None,
            body: not_utf8,
            status: 200,
            rejected: 1,
        },
    ];

    let client = http_client();
    for (i, case) in cases.into_iter().enumerate() {
        let mut builder = client
            .request(case.method.parse().unwrap(), &url)
            .header("content-type", case.content_type);
        if let Some(encoding) = case.content_encoding {
            builder = builder.header("content-encoding", encoding);
        }
        let response = builder.body(case.body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        let bytes = response.bytes().await.unwrap();
        if case.status == 200 {
            let answer = ExportTraceServiceResponse::decode(bytes).expect("a protobuf answer");
            let partial = answer.partial_success.expect("a partial success");
            assert_eq!(partial.rejected_spans, case.rejected, "{}", case.name);
            assert!(
                !partial.error_message.is_empty(),
                "{}: the rejection says why",
                case.name
            );
        } else if case.status != 405 {
            assert!(!bytes.is_empty(), "{}: an error body says why", case.name);
        }
        // Good data right after the bad request is still accepted and stored.
        let response = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(request("good", vec![span([7; 16], 100 + i as u64)]).encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "good data after {}", case.name);
        let stored = wait_for_rows(&collector, "service_name = 'good'", i as i64 + 1).await;
        assert_eq!(
            stored,
            i as i64 + 1,
            "good data after {} is stored",
            case.name
        );
    }
    assert_eq!(
        count(
            &collector,
            "SELECT count(*) FROM spans WHERE service_name = 'zero'"
        )
        .await,
        1,
        "the valid span of a partly bad request is kept"
    );
    assert_eq!(
        count(
            &collector,
            "SELECT count(*) FROM spans WHERE service_name IN ('bad', 'big', 'backwards')"
        )
        .await,
        0
    );

    let metrics = metrics_text(&collector).await;
    for line in [
        "wayfinder_receiver_refused_spans_total{protocol=\"http/protobuf\",reason=\"invalid_trace_id\"} 1",
        "wayfinder_receiver_refused_spans_total{protocol=\"http/protobuf\",reason=\"end_before_start\"} 1",
        "wayfinder_receiver_refused_requests_total{protocol=\"http/protobuf\",reason=\"too_large\"} 1",
        "wayfinder_receiver_refused_requests_total{protocol=\"http/json\",reason=\"too_large\"} 1",
        "wayfinder_receiver_refused_spans_total{protocol=\"http/protobuf\",reason=\"invalid_value\"} 1",
        // 12 good requests of one span each, and the valid spans of the zero-id and not-UTF-8
        // requests.
        "wayfinder_receiver_accepted_spans_total{protocol=\"http/protobuf\"} 14",
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_requests() {
    let mut config = loopback_config();
    config.ingest.grpc_max_message_bytes = 64 << 10;
    let collector = start(config).await;
    let mut grpc = wayfinder_e2e::raw_grpc(collector.addrs().otlp_grpc).await;
    let path = http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH);
    let mut send = async |body: Vec<u8>| {
        grpc.ready().await.unwrap();
        grpc.unary(
            tonic::Request::new(Bytes::from(body)),
            path.clone(),
            RawCodec,
        )
        .await
    };

    let status = send(b"\xff\xff\xff garbage".to_vec())
        .await
        .expect_err("undecodable");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let answer = send(request("zero", vec![span([0; 16], 1), span([4; 16], 1)]).encode_to_vec())
        .await
        .expect("partly valid");
    let answer = ExportTraceServiceResponse::decode(answer.into_inner()).unwrap();
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("trace_id"),
        "{}",
        partial.error_message
    );

    let answer = send(request("good", vec![span([4; 16], 2)]).encode_to_vec())
        .await
        .expect("valid");
    assert!(
        ExportTraceServiceResponse::decode(answer.into_inner())
            .unwrap()
            .partial_success
            .is_none()
    );
    assert_eq!(
        wait_for_rows(&collector, "service_name IN ('zero', 'good')", 2).await,
        2
    );

    // gzip-compressed gRPC messages are accepted.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", collector.addrs().otlp_grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut gzipped =
        tonic::client::Grpc::new(channel).send_compressed(tonic::codec::CompressionEncoding::Gzip);
    gzipped.ready().await.unwrap();
    let body = Bytes::from(request("gzip-grpc", vec![span([6; 16], 1)]).encode_to_vec());
    gzipped
        .unary(tonic::Request::new(body), path.clone(), RawCodec)
        .await
        .expect("a gzip message is accepted");
    assert_eq!(
        wait_for_rows(&collector, "service_name = 'gzip-grpc'", 1).await,
        1
    );

    // A message over --grpc-max-message-bytes: one code, plain or compressed, and counted.
    let spans = (0..2_000).map(|i| span([7; 16], i + 1)).collect();
    let big = Bytes::from(request("too-big", spans).encode_to_vec());
    assert!(big.len() > 64 << 10);
    let plain = send(big.to_vec()).await.expect_err("too large");
    gzipped.ready().await.unwrap();
    let compressed = gzipped
        .unary(tonic::Request::new(big), path.clone(), RawCodec)
        .await
        .expect_err("too large once decompressed");
    for (status, why) in [(plain, "plain"), (compressed, "gzip")] {
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{why}: {status:?}"
        );
        assert!(
            status.message().contains("--grpc-max-message-bytes"),
            "{why}"
        );
    }
    let counted = collector.metrics().value(
        "wayfinder_receiver_refused_requests_total",
        &[("protocol", "grpc"), ("reason", "too_large")],
    ) as u64;
    assert_eq!(counted, 2, "both counted as too_large");

    // And gzip-compressed OTLP/HTTP bodies too.
    let response = http_client()
        .post(format!("http://{}/v1/traces", collector.addrs().otlp_http))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gzip(
            &request("gzip-http", vec![span([6; 16], 2)]).encode_to_vec(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        wait_for_rows(&collector, "service_name = 'gzip-http'", 1).await,
        1
    );
    collector.shutdown().await;
}
