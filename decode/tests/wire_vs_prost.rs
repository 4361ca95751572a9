//! The wire decoder against prost: requests prost encodes, requests written byte by byte the
//! way other encoders may write them (fields out of order, messages in parts, unknown fields),
//! requests both must refuse, and mutations of a rich request.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;
use wayfinder_decode::oracle::{Agreement, compare_with_prost};

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(s: &str) -> Value {
    Value::StringValue(s.into())
}

fn span(trace: u8, id: u8) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: format!("op-{id}"),
        kind: 2,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000 + u64::from(id),
        ..Default::default()
    }
}

fn request(resource_spans: Vec<ResourceSpans>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest { resource_spans }
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                kv("service.name", text(service)),
                kv("service.instance.id", text(&format!("{service}-1"))),
            ],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "lib".into(),
                version: "1.0".into(),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A request with every kind of field and value.
fn rich() -> ExportTraceServiceRequest {
    let mut client = span(1, 2);
    client.kind = 3;
    client.parent_span_id = vec![1; 8];
    client.trace_state = "k=v".into();
    client.flags = 0x301;
    client.status = Some(Status {
        code: 2,
        message: "boom".into(),
    });
    client.attributes = vec![
        kv("peer.service", text("cart")),
        kv("server.address", text("10.0.0.7")),
        kv("server.port", Value::IntValue(8080)),
        kv("http.request.method", text("GET")),
        kv("retry", Value::BoolValue(true)),
        kv("ratio", Value::DoubleValue(0.25)),
        kv("nan", Value::DoubleValue(f64::NAN)),
        kv("blob", Value::BytesValue(vec![0, 1, 2, 255])),
        kv("index", Value::StringValueStrindex(7)),
        kv(
            "list",
            Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(Value::IntValue(1)),
                    },
                    AnyValue { value: None },
                    AnyValue {
                        value: Some(Value::DoubleValue(f64::INFINITY)),
                    },
                ],
            }),
        ),
        kv(
            "map",
            Value::KvlistValue(KeyValueList {
                values: vec![
                    kv("b", text("x")),
                    kv("a", Value::BoolValue(false)),
                    kv("b", text("later wins")),
                ],
            }),
        ),
        KeyValue {
            key: "no value".into(),
            value: None,
            ..Default::default()
        },
    ];
    client.events = vec![Event {
        time_unix_nano: 1_500,
        name: "retry".into(),
        attributes: vec![kv("attempt", Value::IntValue(2))],
        dropped_attributes_count: 1,
    }];
    client.links = vec![
        Link {
            trace_id: vec![9; 16],
            span_id: vec![8; 8],
            trace_state: "a=b".into(),
            attributes: vec![kv("link", text("yes"))],
            flags: 1,
            ..Default::default()
        },
        Link {
            trace_id: vec![9; 3],
            span_id: vec![],
            ..Default::default()
        },
    ];
    let mut db = span(1, 3);
    db.kind = 3;
    db.attributes = vec![
        kv("db.system", text("postgresql")),
        kv("db.name", text("orders")),
    ];
    let mut consumer = span(4, 5);
    consumer.kind = 5;
    consumer.attributes = vec![
        kv("messaging.system", text("kafka")),
        kv("messaging.destination.name", text("orders")),
    ];
    let mut no_resource = resource_spans("x", vec![span(6, 6)]);
    no_resource.resource = None;
    no_resource.scope_spans[0].scope = None;
    request(vec![
        resource_spans("checkout", vec![span(1, 1), client, db]),
        resource_spans("worker", vec![consumer, span(0, 9)]),
        no_resource,
    ])
}

fn agree(bytes: &[u8], why: &str) -> Agreement {
    match compare_with_prost(bytes) {
        Ok(agreement) => agreement,
        Err(difference) => panic!("{why}: {difference}"),
    }
}

#[test]
fn prost_encoded_requests() {
    let mut bad_ids = span(1, 1);
    bad_ids.span_id = vec![1; 7];
    let mut zero_trace = span(0, 1);
    zero_trace.trace_id = vec![0; 16];
    let mut bad_parent = span(1, 1);
    bad_parent.parent_span_id = vec![1; 3];
    let mut backwards = span(1, 1);
    backwards.end_time_unix_nano = 1;
    let mut far = span(1, 1);
    far.end_time_unix_nano = u64::MAX;
    let cases = [
        (request(vec![]), 0, "no resource spans"),
        (
            rich(),
            5,
            "every field and value kind; six spans, one with a zero trace id",
        ),
        (
            request(vec![resource_spans(
                "svc",
                vec![bad_ids, zero_trace, bad_parent, backwards, far, span(1, 2)],
            )]),
            1,
            "one span per rejection reason and one valid span",
        ),
        (
            request(vec![ResourceSpans::default()]),
            0,
            "a resource spans with nothing in it",
        ),
        (
            request(vec![
                resource_spans("inj\"svc\n", vec![span(1, 1), span(1, 2)]),
                resource_spans("clean", vec![span(1, 3)]),
            ]),
            1,
            "a service name with a line feed: its spans are rejected, another resource's kept",
        ),
    ];
    for (request, accepted, why) in cases {
        let bytes = request.encode_to_vec();
        assert_eq!(agree(&bytes, why), Agreement::Same { accepted }, "{why}");
    }
}

/// A hand-written field: key, then the payload as the wire type wants it.
fn field(tag: u32, wire_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(u64::from(tag << 3 | u32::from(wire_type)), &mut out);
    if wire_type == 2 {
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
    }
    out.extend_from_slice(payload);
    out
}

fn message(tag: u32, parts: &[Vec<u8>]) -> Vec<u8> {
    field(tag, 2, &parts.concat())
}

fn varint(tag: u32, value: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    prost::encoding::encode_varint(value, &mut payload);
    field(tag, 0, &payload)
}

/// A valid span's fields, in the order given.
fn span_fields(name: &str) -> Vec<Vec<u8>> {
    vec![
        field(1, 2, &[3; 16]),
        field(2, 2, &[4; 8]),
        field(5, 2, name.as_bytes()),
        field(7, 1, &10u64.to_le_bytes()),
        field(8, 1, &20u64.to_le_bytes()),
    ]
}

fn string_kv(key: &str, value: &str) -> Vec<u8> {
    [
        field(1, 2, key.as_bytes()),
        message(2, &[field(1, 2, value.as_bytes())]),
    ]
    .concat()
}

#[test]
fn hand_written_requests() {
    let service = message(1, &[message(1, &[string_kv("service.name", "a")])]);
    let service_b = message(1, &[message(1, &[string_kv("service.namespace", "ns")])]);
    let one_span = message(2, &[message(2, &span_fields("s"))]);
    let mut reversed = span_fields("reversed");
    reversed.reverse();
    let two_values = [
        field(1, 2, b"k"),
        message(2, &[message(6, &[message(1, &[string_kv("x", "1")])])]),
        message(2, &[message(6, &[message(1, &[string_kv("y", "2")])])]),
    ]
    .concat();
    let replaced_value = [
        field(1, 2, b"k"),
        message(2, &[message(5, &[message(1, &[field(1, 2, b"in array")])])]),
        message(2, &[field(1, 2, b"a string replaces the array")]),
    ]
    .concat();
    let unknown_everywhere = [
        varint(99, 5),
        field(98, 1, &[0; 8]),
        field(97, 5, &[0; 4]),
        field(96, 2, b"xyz"),
        vec![0xfb, 0x05, 0x08, 0x01, 0xfc, 0x05], // group 95 with a varint inside
    ]
    .concat();
    let mut span_with_unknowns = span_fields("unknowns");
    span_with_unknowns.push(unknown_everywhere.clone());
    let cases: Vec<(Vec<u8>, Option<usize>, &str)> = vec![
        (
            message(1, &[one_span.clone(), service.clone()]),
            Some(1),
            "the resource after its scope spans",
        ),
        (
            message(1, &[service.clone(), one_span.clone(), service_b.clone()]),
            Some(1),
            "the resource in two parts, merged",
        ),
        (
            message(
                1,
                &[message(
                    2,
                    &[
                        message(1, &[field(1, 2, b"first")]),
                        message(2, &span_fields("s")),
                        message(1, &[field(2, 2, b"2.0")]),
                    ],
                )],
            ),
            Some(1),
            "the scope in two parts around the span",
        ),
        (
            message(1, &[message(2, &[message(2, &reversed)])]),
            Some(1),
            "a span's fields in reverse order",
        ),
        (
            message(
                1,
                &[message(
                    2,
                    &[message(
                        2,
                        &[
                            span_fields("s").concat(),
                            message(9, std::slice::from_ref(&two_values)),
                        ],
                    )],
                )],
            ),
            Some(1),
            "a value given twice as key-value lists: merged",
        ),
        (
            message(
                1,
                &[message(
                    2,
                    &[message(
                        2,
                        &[
                            span_fields("s").concat(),
                            message(9, std::slice::from_ref(&replaced_value)),
                        ],
                    )],
                )],
            ),
            Some(1),
            "an array value replaced by a later string",
        ),
        (
            [
                unknown_everywhere.clone(),
                message(
                    1,
                    &[
                        unknown_everywhere.clone(),
                        message(
                            2,
                            &[unknown_everywhere.clone(), message(2, &span_with_unknowns)],
                        ),
                    ],
                ),
            ]
            .concat(),
            Some(1),
            "unknown fields of every wire type at every level",
        ),
        (
            message(
                1,
                &[message(
                    2,
                    &[message(
                        2,
                        &[
                            span_fields("s").concat(),
                            message(15, &[varint(3, 2)]),
                            message(15, &[field(2, 2, b"msg")]),
                        ],
                    )],
                )],
            ),
            Some(1),
            "the status in two parts: code from one, message from the other",
        ),
        (
            message(
                1,
                &[message(
                    2,
                    &[message(
                        2,
                        &[span_fields("s").concat(), varint(6, u64::MAX)],
                    )],
                )],
            ),
            Some(1),
            "a kind beyond 32 bits keeps the low bits",
        ),
        (
            message(
                1,
                &[message(
                    2,
                    &[
                        message(1, &[message(3, &[field(1, 2, &[0xff, 0xfe])])]),
                        one_span.clone(),
                    ],
                )],
            ),
            None,
            "a scope attribute key that is not UTF-8: refused though unused",
        ),
        (
            message(
                1,
                &[
                    message(1, &[message(3, &[field(3, 2, &[0xc3])])]),
                    one_span.clone(),
                ],
            ),
            None,
            "an entity reference id key that is not UTF-8",
        ),
        (
            message(
                1,
                &[message(
                    2,
                    &[message(2, &[span_fields("s").concat(), field(6, 2, b"x")])],
                )],
            ),
            None,
            "the kind with the wrong wire type",
        ),
        (
            message(
                1,
                &[message(
                    2,
                    &[message(2, &[span_fields("s").concat(), field(3, 0, &[1])])],
                )],
            ),
            None,
            "trace_state as a varint",
        ),
        (
            [
                message(1, std::slice::from_ref(&one_span)),
                vec![0x0a, 0x10, 0x01],
            ]
            .concat(),
            None,
            "a second resource spans cut short",
        ),
        (
            message(
                1,
                &[message(
                    2,
                    &[message(
                        2,
                        &[span_fields("s").concat(), field(5, 2, &[b'a', 0x80])],
                    )],
                )],
            ),
            None,
            "a span name that is not UTF-8",
        ),
    ];
    for (bytes, accepted, why) in cases {
        let want = accepted.map_or(Agreement::BothRefused, |accepted| Agreement::Same {
            accepted,
        });
        assert_eq!(agree(&bytes, why), want, "{why}");
    }
}

/// An attribute whose value is arrays nested `depth` deep.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut value = message(1, &[field(1, 2, b"leaf")]); // AnyValue { string }
    for _ in 0..depth {
        // AnyValue { array_value: ArrayValue { values: [value] } }
        value = message(1, &[message(5, &[value])]);
    }
    value
}

#[test]
fn nesting_up_to_prost_recursion_limit() {
    // Request(0) > ResourceSpans(1) > ScopeSpans(2) > Span(3) > KeyValue(4) > AnyValue(5) > ...:
    // each array level adds two messages, and prost stops at 100.
    for depth in [40, 46, 47, 48, 60] {
        let array = nested_arrays(depth);
        // `array` is an ArrayValue's element: unwrap it into a KeyValue's value.
        let key_value = [field(1, 2, b"deep"), message(2, &[message(5, &[array])])].concat();
        let span = [span_fields("s").concat(), message(9, &[key_value])].concat();
        let bytes = message(1, &[message(2, &[message(2, &[span])])]);
        let agreement = agree(&bytes, &format!("arrays nested {depth} deep"));
        if depth <= 40 {
            assert_eq!(
                agreement,
                Agreement::Same { accepted: 1 },
                "{depth} levels are fine"
            );
        }
        if depth >= 60 {
            assert_eq!(
                agreement,
                Agreement::BothRefused,
                "{depth} levels pass the limit"
            );
        }
    }
}

/// A small deterministic generator, so that a failing mutation can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutations_of_a_rich_request() {
    let original = rich().encode_to_vec();
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let (mut refused, mut same) = (0, 0);
    for round in 0..3_000 {
        let mut bytes = original.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = rng.next() as u8,
                2 => bytes.truncate(at),
                _ => bytes.insert(at, rng.next() as u8),
            }
            if bytes.is_empty() {
                break;
            }
        }
        match agree(&bytes, &format!("mutation round {round}")) {
            Agreement::BothRefused => refused += 1,
            Agreement::Same { .. } => same += 1,
        }
    }
    // Both outcomes are exercised, or the test proves little.
    assert!(refused > 100, "only {refused} mutations were refused");
    assert!(same > 100, "only {same} mutations decoded");
}

/// The committed fuzz corpus (seeds, and every input that ever broke the decoder) as a
/// regression test.
#[test]
fn fuzz_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/traces_wire");
    let mut inputs = 0;
    for entry in std::fs::read_dir(dir).expect("the corpus directory") {
        let path = entry.expect("a corpus entry").path();
        let bytes = std::fs::read(&path).expect("a corpus file");
        agree(&bytes, &path.display().to_string());
        inputs += 1;
    }
    assert!(inputs >= 3, "the seeds are there ({inputs} inputs)");
}

#[test]
fn salvaging_rejects_a_span_with_an_invalid_value_and_keeps_the_others() {
    use wayfinder_decode::{DecodeOptions, decode_traces_wire_with};
    let deep = {
        let array = nested_arrays(60);
        let key_value = [field(1, 2, b"deep"), message(2, &[message(5, &[array])])].concat();
        [span_fields("deep").concat(), message(9, &[key_value])].concat()
    };
    let mut not_utf8 = span_fields("x");
    not_utf8[2] = field(5, 2, b"\xff\xfe name");
    let good = |name: &str| span_fields(name).concat();
    // Each row: the spans of one scope, how many a salvaging decoder keeps and rejects, why.
    let cases: [(Vec<Vec<u8>>, u64, u64, &str); 3] = [
        (
            vec![good("a"), not_utf8.concat(), good("b")],
            2,
            1,
            "a span name that is not UTF-8",
        ),
        (
            vec![deep, good("c")],
            1,
            1,
            "an attribute nested 60 arrays deep (past prost's recursion limit)",
        ),
        (
            vec![good("d")],
            1,
            0,
            "nothing wrong: the same as the strict decoder",
        ),
    ];
    let salvaging = DecodeOptions {
        salvage: true,
        ..DecodeOptions::default()
    };
    for (spans, kept, rejected, why) in cases {
        let spans: Vec<Vec<u8>> = spans
            .iter()
            .map(|s| message(2, std::slice::from_ref(s)))
            .collect();
        let bytes = message(1, &[message(2, &spans)]);
        let strict = agree(&bytes, why);
        assert_eq!(
            strict == Agreement::BothRefused,
            rejected > 0,
            "{why}: prost and the strict decoder refuse it whole"
        );
        let decoded = decode_traces_wire_with(&bytes, &salvaging).expect(why);
        assert_eq!(
            (decoded.accepted() as u64, decoded.rejections.invalid_value),
            (kept, rejected),
            "{why}"
        );
    }
}
