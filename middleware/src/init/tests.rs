use super::*;

fn from(pairs: &[(&str, &str)]) -> Result<Telemetry, InitError> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Telemetry::from_lookup(move |name| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

#[test]
fn valid_variables() {
    let t = from(&[]).expect("no variables: defaults");
    assert_eq!(t.service_name, "unknown_service");
    assert_eq!(
        t.protocol,
        OtlpProtocol::HttpProtobuf,
        "the OpenTelemetry default"
    );
    assert_eq!(t.sampler, SamplerKind::ParentBasedAlwaysOn);

    let t = from(&[
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attrs,service.namespace=shop,team=a%2Cb",
        ),
        ("OTEL_SERVICE_NAME", "checkout"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ("OTEL_PROPAGATORS", "tracecontext,b3"),
        ("WAYFINDER_LOG_FORMAT", "json"),
    ])
    .expect("valid variables");
    assert_eq!(
        t.service_name, "checkout",
        "OTEL_SERVICE_NAME wins over the attribute"
    );
    assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
    assert_eq!(t.protocol, OtlpProtocol::Grpc);
    assert_eq!(t.sampler, SamplerKind::ParentBasedTraceIdRatio(0.25));
    assert_eq!(t.log_format, LogFormat::Json);
    let written: Vec<&str> =
        opentelemetry::propagation::TextMapPropagator::fields(&t.propagation).collect();
    assert_eq!(
        written,
        ["traceparent", "tracestate", "b3"],
        "OTEL_PROPAGATORS is applied"
    );
    let team = t.resource.iter().find(|kv| kv.key.as_str() == "team");
    assert_eq!(
        team.map(|kv| kv.value.to_string()),
        Some("a,b".to_owned()),
        "percent-decoded"
    );

    let t = from(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")]).expect("valid");
    assert_eq!(
        t.service_name, "from-attrs",
        "service.name from the attributes alone"
    );
    let t = from(&[]).expect("valid").service_name_or("orders");
    assert_eq!(
        t.service_name, "orders",
        "the program's name when the deployment gives none"
    );
    let t = from(&[("OTEL_SERVICE_NAME", "orders-eu")])
        .expect("valid")
        .service_name_or("orders");
    assert_eq!(
        t.service_name, "orders-eu",
        "the deployment's name wins over the program's"
    );
    let t = from(&[("OTEL_TRACES_SAMPLER", "traceidratio")]).expect("valid");
    assert_eq!(
        t.sampler,
        SamplerKind::TraceIdRatio(1.0),
        "the argument defaults to 1"
    );
}

#[test]
fn invalid_variables_are_errors_naming_the_variable() {
    let cases = [
        (
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json is not built in: an error, not a silent switch to protobuf",
        ),
        (
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "unknown protocol",
        ),
        (
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317"),
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "no scheme for OTLP/HTTP: the exporter would fail later with a worse message",
        ),
        (
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://host"),
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "wrong scheme",
        ),
        (
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://exa mple"),
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "not a URL",
        ),
        (
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            "OTEL_TRACES_SAMPLER",
            "unsupported sampler",
        ),
        (
            ("OTEL_PROPAGATORS", "tracecontext,xray"),
            "xray",
            "unknown propagator",
        ),
        (
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name"),
            "OTEL_RESOURCE_ATTRIBUTES",
            "entry without '='",
        ),
        (
            ("OTEL_RESOURCE_ATTRIBUTES", "=x"),
            "OTEL_RESOURCE_ATTRIBUTES",
            "empty key",
        ),
        (
            ("OTEL_RESOURCE_ATTRIBUTES", "a=%zz"),
            "OTEL_RESOURCE_ATTRIBUTES",
            "bad percent-encoding",
        ),
        (("RUST_LOG", "info,[bad"), "RUST_LOG", "unparsable filter"),
        (
            ("WAYFINDER_LOG_FORMAT", "yaml"),
            "WAYFINDER_LOG_FORMAT",
            "unknown log format",
        ),
    ];
    for ((name, value), mentioned, reason) in cases {
        let error = from(&[(name, value)]).expect_err(reason);
        assert!(error.to_string().contains(mentioned), "{reason}: {error}");
    }
    for arg in ["1.5", "-0.1", "half", "NaN"] {
        let error = from(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", arg),
        ])
        .expect_err("a ratio outside [0, 1] is an error");
        assert!(
            error.to_string().contains("OTEL_TRACES_SAMPLER_ARG"),
            "{arg}: {error}"
        );
    }
}

#[test]
fn grpc_without_a_runtime_is_an_error_not_a_panic() {
    let error = Telemetry::new()
        .protocol(OtlpProtocol::Grpc)
        .build()
        .expect_err("no Tokio runtime here");
    assert!(matches!(error, InitError::NoRuntime), "{error}");
}

#[test]
fn signal_specific_variables_beat_the_generic_ones() {
    type Row = (&'static [(&'static str, &'static str)], &'static str);
    let rows: [Row; 3] = [
        (
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "HTTP/PROTOBUF"),
            ],
            "the traces protocol wins, in any case",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")],
            "the traces protocol alone",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
            "the generic one alone",
        ),
    ];
    for (pairs, reason) in rows {
        assert_eq!(
            from(pairs).unwrap().protocol,
            OtlpProtocol::HttpProtobuf,
            "{reason}"
        );
    }
    let t = from(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://traces:9999/custom/path",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1500"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-generic=1"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "Authorization=Bearer%20abc, x-team = shop ",
        ),
    ])
    .unwrap();
    assert_eq!(
        t.traces_endpoint.as_deref(),
        Some("http://traces:9999/custom/path"),
        "used as is, without /v1/traces"
    );
    assert_eq!(t.endpoint.as_deref(), Some("http://generic:4318"));
    assert_eq!(
        t.export_timeout,
        Duration::from_millis(1500),
        "the traces timeout wins"
    );
    assert_eq!(
        t.headers,
        [
            ("authorization".to_owned(), "Bearer abc".to_owned()),
            ("x-team".to_owned(), "shop".to_owned())
        ],
        "the traces headers replace the generic ones, percent-decoded"
    );
}

#[test]
fn tls_comes_from_an_https_endpoint_and_the_certificate_variables() {
    type Row = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );
    let rows: [Row; 5] = [
        (
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ],
            "https://collector:4317",
            "gRPC without a scheme: secure, as the specification says",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ],
            "http://collector:4317",
            "gRPC without a scheme, INSECURE=true: plaintext",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
                ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "false"),
            ],
            "https://collector:4317",
            "the traces INSECURE wins over the generic one",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "false"),
            ],
            "http://collector:4317",
            "INSECURE means nothing for a URL with a scheme",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")],
            "https://collector:4318",
            "OTLP/HTTP over TLS",
        ),
    ];
    for (pairs, expected, reason) in rows {
        let t = from(pairs).expect(reason);
        assert_eq!(t.endpoint.as_deref(), Some(expected), "{reason}");
    }
    let t = from(&[
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "/etc/me.pem",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/etc/me.key"),
    ])
    .unwrap();
    assert_eq!(
        t.tls,
        crate::tls::ClientTls::new()
            .ca_file("/etc/ca.pem")
            .client_identity("/etc/me.pem", "/etc/me.key"),
        "the certificate variables, each with its traces form first"
    );
}

#[test]
fn a_missing_certificate_file_fails_the_start_naming_it() {
    let error = from(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4318"),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/wayfinder-ca.pem",
        ),
    ])
    .unwrap()
    .build()
    .expect_err("the CA file is read at start");
    assert!(matches!(error, InitError::Tls(_)), "{error}");
    assert!(
        error.to_string().contains("/nonexistent/wayfinder-ca.pem"),
        "{error}"
    );
    let plain = from(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/wayfinder-ca.pem",
        ),
    ])
    .unwrap()
    .build();
    assert!(
        plain.is_ok(),
        "an http:// endpoint never reads the TLS files: {:?}",
        plain.err()
    );
}

#[test]
fn exporter_selection_and_sdk_disabled() {
    type Row = (
        &'static [(&'static str, &'static str)],
        ExporterKind,
        &'static str,
    );
    let rows: [Row; 6] = [
        (&[], ExporterKind::Otlp, "OTLP by default"),
        (
            &[("OTEL_TRACES_EXPORTER", "console")],
            ExporterKind::Console,
            "console",
        ),
        (
            &[("OTEL_TRACES_EXPORTER", "NONE")],
            ExporterKind::None,
            "none, in any case",
        ),
        (
            &[("OTEL_SDK_DISABLED", "True")],
            ExporterKind::None,
            "the SDK disabled",
        ),
        (
            &[
                ("OTEL_SDK_DISABLED", "false"),
                ("OTEL_TRACES_EXPORTER", "otlp"),
            ],
            ExporterKind::Otlp,
            "not disabled",
        ),
        (
            &[("OTEL_SDK_DISABLED", "yes")],
            ExporterKind::Otlp,
            "anything but true is false (the specification), with a warning",
        ),
    ];
    for (pairs, expected, reason) in rows {
        assert_eq!(from(pairs).unwrap().exporter_kind, expected, "{reason}");
    }
    let t = from(&[("OTEL_SDK_DISABLED", "yes")]).unwrap();
    assert_eq!(t.warnings.len(), 1, "the odd value is warned about");
}

#[test]
fn malformed_exporter_variables_are_errors_naming_the_variable() {
    let rows = [
        (
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key"),
            "OTEL_EXPORTER_OTLP_HEADERS",
            "a pair without =",
        ),
        (
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "=v"),
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "an empty key",
        ),
        (
            ("OTEL_EXPORTER_OTLP_HEADERS", "bad key=v"),
            "OTEL_EXPORTER_OTLP_HEADERS",
            "not a header name",
        ),
        (
            ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz"),
            "OTEL_EXPORTER_OTLP_HEADERS",
            "a bad percent-encoding",
        ),
        (
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "milliseconds, not a duration",
        ),
        (
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0"),
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "zero",
        ),
        (
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "traces:4318"),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "no scheme",
        ),
        (
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "unknown protocol",
        ),
        (
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            "OTEL_TRACES_EXPORTER",
            "an exporter not built in",
        ),
        (
            ("OTEL_TRACES_EXPORTER", "otlp,console"),
            "OTEL_TRACES_EXPORTER",
            "one at a time",
        ),
    ];
    for ((name, value), variable, reason) in rows {
        let error = from(&[(name, value)]).expect_err(reason);
        assert!(
            matches!(&error, InitError::InvalidVariable { variable: v, .. } if *v == variable),
            "{reason}: {error}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_export_delay_sends_finished_spans_sooner_than_the_default() {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    // The batch processor runs on a thread of its own with the real clock (a paused tokio
    // clock cannot reach it), so this waits for real, bounded: with a 50 ms delay the span is
    // exported well within 3 s; with the SDK's default (5 s) it would not be.
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let telemetry = Telemetry::new()
        .service_name("delay-test")
        .log_writer(BoxMakeWriter::new(std::io::sink))
        .export_delay(Duration::from_millis(50))
        .build_with_exporter(exporter.clone())
        .expect("telemetry builds");
    let tracer = telemetry.provider().tracer("test");
    tracer.start("work").end();
    let started = std::time::Instant::now();
    while exporter.get_finished_spans().expect("spans").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the span was not exported within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    telemetry.shutdown().await.expect("shut down");
}
