use http::HeaderMap;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};

use opentelemetry::propagation::TextMapPropagator;

use super::{Propagation, PropagationFormat};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            value.parse().expect("test header value"),
        );
    }
    map
}

/// What extraction should find: `None` is a new root trace.
type Expected = Option<(&'static str, &'static str, bool)>;
/// Header name and value.
type Headers = Vec<(&'static str, String)>;
/// Header name and value, borrowed.
type Written<'a> = Vec<(&'static str, &'a str)>;

#[test]
fn extraction_accepts_valid_headers_of_every_format_and_skips_invalid_ones() {
    let traceparent = format!("00-{TRACE}-{SPAN}-01");
    let cases: Vec<(&str, Headers, Expected)> = vec![
        (
            "W3C, sampled",
            vec![("traceparent", traceparent.clone())],
            Some((TRACE, SPAN, true)),
        ),
        (
            "W3C, flags 00 is a valid unsampled parent",
            vec![("traceparent", format!("00-{TRACE}-{SPAN}-00"))],
            Some((TRACE, SPAN, false)),
        ),
        (
            "W3C, unknown flag bits are accepted",
            vec![("traceparent", format!("00-{TRACE}-{SPAN}-09"))],
            Some((TRACE, SPAN, true)),
        ),
        (
            "W3C, uppercase hex is invalid",
            vec![(
                "traceparent",
                format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            )],
            None,
        ),
        (
            "W3C, 54 characters (short trace id) is invalid",
            vec![("traceparent", format!("00-{}-{SPAN}-01", &TRACE[1..]))],
            None,
        ),
        (
            "W3C, version 00 with a trailing field is invalid (must be exactly 55 chars)",
            vec![("traceparent", format!("{traceparent}-extra"))],
            None,
        ),
        (
            "W3C, a later version may carry trailing fields",
            vec![("traceparent", format!("01-{TRACE}-{SPAN}-01-extra"))],
            Some((TRACE, SPAN, true)),
        ),
        (
            "W3C, a later version's extra data must start with a dash",
            vec![("traceparent", format!("01-{TRACE}-{SPAN}-01x"))],
            None,
        ),
        (
            "W3C, version ff is invalid",
            vec![("traceparent", format!("ff-{TRACE}-{SPAN}-01"))],
            None,
        ),
        (
            "W3C, all-zero trace id is invalid",
            vec![("traceparent", format!("00-{}-{SPAN}-01", "0".repeat(32)))],
            None,
        ),
        (
            "W3C, all-zero parent id is invalid",
            vec![("traceparent", format!("00-{TRACE}-{}-01", "0".repeat(16)))],
            None,
        ),
        (
            "W3C, a sign in the version is not hex",
            vec![("traceparent", format!("+0-{TRACE}-{SPAN}-01"))],
            None,
        ),
        (
            "W3C, wrong separators",
            vec![("traceparent", format!("00_{TRACE}_{SPAN}_01"))],
            None,
        ),
        (
            "W3C, empty value",
            vec![("traceparent", String::new())],
            None,
        ),
        (
            "W3C wins over B3 when both are valid",
            vec![
                ("traceparent", traceparent.clone()),
                (
                    "b3",
                    "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".into(),
                ),
            ],
            Some((TRACE, SPAN, true)),
        ),
        (
            "an invalid W3C header falls through to a valid B3 one",
            vec![
                ("traceparent", "00-garbage".into()),
                (
                    "b3",
                    "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".into(),
                ),
            ],
            Some(("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", true)),
        ),
        (
            "B3 single, unsampled",
            vec![("b3", format!("{TRACE}-{SPAN}-0"))],
            Some((TRACE, SPAN, false)),
        ),
        (
            "B3 single, 64-bit trace id is left-padded",
            vec![("b3", format!("a3ce929d0e0e4736-{SPAN}-1"))],
            Some(("0000000000000000a3ce929d0e0e4736", SPAN, true)),
        ),
        (
            "B3 single with only a sampling decision carries no parent",
            vec![("b3", "1".into())],
            None,
        ),
        (
            "B3 single, uppercase is invalid",
            vec![("b3", format!("{}-{SPAN}-1", TRACE.to_uppercase()))],
            None,
        ),
        (
            "B3 multi",
            vec![
                ("x-b3-traceid", TRACE.into()),
                ("x-b3-spanid", SPAN.into()),
                ("x-b3-sampled", "1".into()),
            ],
            Some((TRACE, SPAN, true)),
        ),
        (
            "B3 multi without a span id is invalid",
            vec![("x-b3-traceid", TRACE.into())],
            None,
        ),
        (
            "B3 wins over Jaeger",
            vec![
                ("b3", format!("{TRACE}-{SPAN}-1")),
                ("uber-trace-id", "1:2:0:1".into()),
            ],
            Some((TRACE, SPAN, true)),
        ),
        (
            "Jaeger",
            vec![("uber-trace-id", format!("{TRACE}:{SPAN}:0:1"))],
            Some((TRACE, SPAN, true)),
        ),
        (
            "Jaeger, unsampled",
            vec![("uber-trace-id", format!("{TRACE}:{SPAN}:0:0"))],
            Some((TRACE, SPAN, false)),
        ),
        (
            "Jaeger, debug flag implies sampled",
            vec![("uber-trace-id", format!("{TRACE}:{SPAN}:0:2"))],
            Some((TRACE, SPAN, true)),
        ),
        (
            "Jaeger, URL-encoded colons",
            vec![("uber-trace-id", format!("{TRACE}%3A{SPAN}%3A0%3A1"))],
            Some((TRACE, SPAN, true)),
        ),
        (
            "Jaeger, short ids are zero-padded",
            vec![("uber-trace-id", "abc:f0:0:1".into())],
            Some(("00000000000000000000000000000abc", "00000000000000f0", true)),
        ),
        (
            "Jaeger, zero trace id is invalid",
            vec![("uber-trace-id", format!("0:{SPAN}:0:1"))],
            None,
        ),
        (
            "Jaeger, too many fields",
            vec![("uber-trace-id", format!("{TRACE}:{SPAN}:0:1:9"))],
            None,
        ),
        (
            "Jaeger, trace id longer than 128 bits",
            vec![("uber-trace-id", format!("1{TRACE}:{SPAN}:0:1"))],
            None,
        ),
        (
            "Jaeger, non-hex flags",
            vec![("uber-trace-id", format!("{TRACE}:{SPAN}:0:zz"))],
            None,
        ),
        ("no headers at all", vec![], None),
    ];
    for (reason, pairs, expected) in cases {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cx = Propagation::default().extract(&headers(&pairs));
        let span = cx.span();
        let found = span.span_context();
        match expected {
            Some((trace, span_id, sampled)) => {
                assert!(
                    found.is_valid(),
                    "{reason}: expected a parent, got a new root"
                );
                assert!(found.is_remote(), "{reason}: the parent is remote");
                assert_eq!(found.trace_id().to_string(), trace, "{reason}");
                assert_eq!(found.span_id().to_string(), span_id, "{reason}");
                assert_eq!(found.is_sampled(), sampled, "{reason}: sampled flag");
            }
            None => assert!(
                !found.is_valid(),
                "{reason}: expected a new root, got {found:?}"
            ),
        }
    }
}

#[test]
fn extraction_keeps_tracestate_and_baggage() {
    let cx = Propagation::default().extract(&headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "vendor=abc,other=x:y"),
        ("baggage", "tenant=acme;prop=1,plan=gold"),
    ]));
    assert_eq!(
        cx.span().span_context().trace_state().header(),
        "vendor=abc,other=x:y"
    );
    assert_eq!(
        cx.baggage()
            .get("tenant")
            .map(|value| value.as_str().to_owned()),
        Some("acme".to_owned())
    );
    assert_eq!(cx.baggage().len(), 2);
}

#[test]
fn several_tracestate_and_baggage_lines_are_one_list() {
    let cx = Propagation::default().extract(&headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "first=1"),
        ("tracestate", "second=2"),
        ("baggage", "a=1"),
        ("baggage", "b=2"),
    ]));
    assert_eq!(
        cx.span().span_context().trace_state().header(),
        "first=1,second=2"
    );
    assert_eq!(cx.baggage().len(), 2, "both baggage lines");
}

#[test]
fn propagation_none_extracts_nothing() {
    let cx = Propagation::none().extract(&headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("baggage", "tenant=acme"),
    ]));
    assert!(!cx.span().span_context().is_valid());
    assert_eq!(cx.baggage().len(), 0);
}

fn sampled_context() -> Context {
    let span_context = SpanContext::new(
        TraceId::from_hex(TRACE).expect("test id"),
        SpanId::from_hex(SPAN).expect("test id"),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "abc")]).expect("test tracestate"),
    );
    Context::new()
        .with_remote_span_context(span_context)
        .with_baggage([KeyValue::new("tenant", "acme")])
}

#[test]
fn injection_writes_the_configured_formats_only() {
    let traceparent = format!("00-{TRACE}-{SPAN}-01");
    let b3 = format!("{TRACE}-{SPAN}-1");
    let jaeger = format!("{TRACE}:{SPAN}:0:1");
    let cases: Vec<(&str, Propagation, Written)> = vec![
        (
            "the default is W3C trace context and baggage",
            Propagation::default(),
            vec![
                ("traceparent", &traceparent),
                ("tracestate", "vendor=abc"),
                ("baggage", "tenant=acme"),
            ],
        ),
        (
            "B3 single only, for a mesh",
            Propagation::inject([PropagationFormat::B3]),
            vec![("b3", &b3)],
        ),
        (
            "B3 multi only",
            Propagation::inject([PropagationFormat::B3Multi]),
            vec![
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", SPAN),
                ("x-b3-sampled", "1"),
            ],
        ),
        (
            "W3C and Jaeger",
            Propagation::inject([PropagationFormat::TraceContext, PropagationFormat::Jaeger]),
            vec![
                ("traceparent", &traceparent),
                ("tracestate", "vendor=abc"),
                ("uber-trace-id", &jaeger),
            ],
        ),
        ("none writes nothing", Propagation::none(), vec![]),
    ];
    for (reason, propagation, expected) in cases {
        let mut out = HeaderMap::new();
        propagation.inject_into(&sampled_context(), &mut out);
        let mut written: Vec<(String, String)> = out
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
            .collect();
        written.sort();
        let mut expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        expected.sort();
        assert_eq!(written, expected, "{reason}");
        let fields: Vec<&str> = TextMapPropagator::fields(&propagation).collect();
        for (name, _) in &expected {
            assert!(
                fields.contains(&name.as_str()),
                "{reason}: fields() lists {name}"
            );
        }
    }
}

#[test]
fn injection_of_an_empty_context_writes_no_trace_headers() {
    let mut out = HeaderMap::new();
    Propagation::inject([
        PropagationFormat::TraceContext,
        PropagationFormat::B3,
        PropagationFormat::Jaeger,
    ])
    .inject_into(&Context::new(), &mut out);
    assert!(out.is_empty(), "nothing to propagate: {out:?}");
}

#[test]
fn extract_then_inject_round_trips_every_format() {
    for format in [
        PropagationFormat::TraceContext,
        PropagationFormat::B3,
        PropagationFormat::B3Multi,
        PropagationFormat::Jaeger,
    ] {
        let mut wire = HeaderMap::new();
        Propagation::inject([format]).inject_into(&sampled_context(), &mut wire);
        let back = Propagation::default().extract(&wire);
        assert_eq!(
            back.span().span_context().trace_id().to_string(),
            TRACE,
            "{format} round trip"
        );
        assert_eq!(
            back.span().span_context().span_id().to_string(),
            SPAN,
            "{format}"
        );
    }
}

#[test]
fn otel_propagators_values() {
    let cases = [
        ("", true, "empty means the default"),
        ("tracecontext,baggage", true, "the SDK default spelled out"),
        (
            " b3multi , jaeger ",
            true,
            "spaces around names are allowed",
        ),
        ("none", true, "none disables propagation"),
        (
            "xray",
            false,
            "AWS X-Ray is not supported: a clear error, not a silent default",
        ),
        (
            "tracecontext,ottrace",
            false,
            "one unknown name fails the whole value",
        ),
    ];
    for (value, ok, reason) in cases {
        assert_eq!(
            Propagation::from_otel_propagators(value).is_ok(),
            ok,
            "{reason}"
        );
    }
    // What a valid value configures, by the headers it writes and what it reads.
    let fields = |value: &str| -> Vec<String> {
        let propagation = Propagation::from_otel_propagators(value).expect("valid");
        TextMapPropagator::fields(&propagation)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        fields(""),
        ["traceparent", "tracestate", "baggage"],
        "the default"
    );
    assert_eq!(
        fields("b3multi,jaeger"),
        [
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
            "uber-trace-id"
        ]
    );
    assert!(fields("none").is_empty(), "none writes nothing");
    let none = Propagation::from_otel_propagators("tracecontext,none").expect("valid");
    let cx = none.extract(&headers(&[(
        "traceparent",
        &format!("00-{TRACE}-{SPAN}-01"),
    )]));
    assert!(
        !cx.span().span_context().is_valid(),
        "none reads nothing either"
    );
}

#[test]
fn tracestate_follows_the_w3c_grammar_and_an_invalid_one_is_dropped_whole() {
    let traceparent = format!("00-{TRACE}-{SPAN}-01");
    let long_key = format!("a{}", "b".repeat(255));
    let too_long_key = format!("a{}", "b".repeat(256));
    let tenant_key = format!("{}@{}", "t".repeat(241), "v".repeat(14));
    let long_tenant_key = format!("{}@v", "t".repeat(242));
    let thirty_two: String = (0..32)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let thirty_three: String = (0..33)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let long_value = format!("k={}", "v".repeat(256));
    let too_long_value = format!("k={}", "v".repeat(257));
    let same = |value: &str| Some(value.to_owned());
    // (the caller's tracestate, what the service forwards, why)
    let rows: Vec<(String, Option<String>, &str)> = vec![
        (
            "foo=bar,baz=qux".into(),
            same("foo=bar,baz=qux"),
            "two plain members",
        ),
        (
            "foo@vendor=bar".into(),
            same("foo@vendor=bar"),
            "a tenant@system key",
        ),
        (
            "1tenant@sys=x".into(),
            same("1tenant@sys=x"),
            "a key may start with a digit",
        ),
        (
            format!("{long_key}=v"),
            Some(format!("{long_key}=v")),
            "a 256-character key",
        ),
        (
            format!("{tenant_key}=v"),
            Some(format!("{tenant_key}=v")),
            "a 256-character tenant@system key",
        ),
        (
            format!("{long_tenant_key}=v"),
            Some(format!("{long_tenant_key}=v")),
            "a 242-character tenant: the SDK refuses it, the grammar allows it",
        ),
        (
            "foo@=1,bar=2".into(),
            same("foo@=1,bar=2"),
            "a key ending in @",
        ),
        ("foo@@bar=1".into(), same("foo@@bar=1"), "two @ in a row"),
        ("foo@bar@baz=1".into(), same("foo@bar@baz=1"), "two @ apart"),
        (
            "t@vvvvvvvvvvvvvvv=1".into(),
            same("t@vvvvvvvvvvvvvvv=1"),
            "a 15-character system",
        ),
        (thirty_two.clone(), Some(thirty_two), "32 members"),
        (
            "foo=bar,,  ,baz=qux".into(),
            same("foo=bar,baz=qux"),
            "empty members skipped",
        ),
        (
            long_value.clone(),
            Some(long_value),
            "a 256-character value",
        ),
        (
            "foo=1,foo=2".into(),
            same("foo=1"),
            "a key twice: the first is kept",
        ),
        ("foo=1,foo=1".into(), same("foo=1"), "a member twice: once"),
        (
            "foo=bar ".into(),
            same("foo=bar"),
            "a trailing space is OWS around the member",
        ),
        (
            "foo=ba r".into(),
            same("foo=ba r"),
            "a space inside a value",
        ),
        ("foo=".into(), None, "an empty value"),
        (format!("{too_long_key}=v"), None, "a 257-character key"),
        (too_long_value, None, "a 257-character value"),
        (thirty_three, None, "33 members: discarded, not truncated"),
        ("Foo=bar".into(), None, "an uppercase key"),
        ("foo=b,ar=x,=y".into(), None, "an empty key"),
        ("@foo=1,bar=2".into(), None, "a key starting with @"),
        ("foo.bar=1".into(), None, "a dot in a key"),
        (
            "foo=b\tr".into(),
            None,
            "a tab inside a value (not a tracestate character)",
        ),
        ("foo".into(), None, "a member without ="),
    ];
    for (tracestate, forwarded, reason) in rows {
        let extracted = Propagation::default().extract(&headers(&[
            ("traceparent", &traceparent),
            ("tracestate", &tracestate),
        ]));
        assert_eq!(
            extracted.span().span_context().trace_id().to_string(),
            TRACE,
            "{reason}: the parent is kept"
        );
        let mut out = HeaderMap::new();
        Propagation::default().inject_into(&extracted, &mut out);
        let sent = out
            .get("tracestate")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(sent, forwarded, "{reason}");
    }
}

#[test]
fn a_forwarded_tracestate_stays_on_its_own_trace() {
    // A state the SDK cannot hold travels in the context; a span of another trace started
    // under that context must not carry it.
    let extracted = Propagation::default().extract(&headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "foo@@bar=1"),
    ]));
    let other = SpanContext::new(
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    );
    let mut out = HeaderMap::new();
    Propagation::default().inject_into(&extracted.with_remote_span_context(other), &mut out);
    assert!(out.contains_key("traceparent"), "the other trace is sent");
    assert_eq!(
        out.get("tracestate"),
        None,
        "without the first trace's state"
    );
}

#[test]
fn two_traceparent_headers_start_a_new_trace() {
    let first = format!("00-{TRACE}-{SPAN}-01");
    let second = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let extracted = Propagation::default().extract(&headers(&[
        ("traceparent", &first),
        ("traceparent", second),
    ]));
    assert!(
        !extracted.span().span_context().is_valid(),
        "neither of two traceparents is the parent"
    );
}
