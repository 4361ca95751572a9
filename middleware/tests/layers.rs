//! The server and client layers on real axum servers and hyper clients (loopback), with spans
//! collected by the SDK's in-memory exporter and logs by an in-memory writer.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use parking_lot::Mutex;
use tower::{Layer, ServiceExt};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use wayfinder_middleware::{
    ClientLayer, LogFormat, ScopedTelemetry, ServerLayer, Telemetry, TelemetryGuard,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Log lines written by the subscriber under test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A subscriber like `init()` builds, set as this thread's default, spans in memory.
struct Harness {
    exporter: InMemorySpanExporter,
    logs: Logs,
    _default: ScopedTelemetry,
    guard: TelemetryGuard,
}

impl Harness {
    fn new(format: LogFormat) -> Self {
        let exporter = InMemorySpanExporter::default();
        let logs = Logs::default();
        let writer = logs.clone();
        let guard = Telemetry::new()
            .service_name("layers-test")
            .log_format(format)
            .log_writer(BoxMakeWriter::new(move || writer.clone()))
            .build_with_exporter(exporter.clone())
            .expect("the subscriber builds");
        let default = guard.set_default();
        Harness {
            exporter,
            guard,
            logs,
            _default: default,
        }
    }

    async fn spans(&self) -> Vec<SpanData> {
        self.guard.flush().await.expect("the provider flushes");
        self.exporter.get_finished_spans().expect("finished spans")
    }
}

fn attributes(span: &SpanData) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

fn app() -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(|| async {
                tracing::info!("looking the user up");
                "user"
            }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/nested",
            get(|| async {
                let lookup = tracing::info_span!("load user");
                lookup.in_scope(|| tracing::info!("inside the handler's own span"));
                let task = wayfinder_middleware::spawn(async {
                    tracing::info!("from a spawned task");
                    wayfinder_middleware::current_trace_id().map(|id| id.to_string())
                });
                task.await.ok().flatten().unwrap_or_default()
            }),
        )
}

async fn call(app: Router, request: Request<axum::body::Body>) -> http::Response<Bytes> {
    let response = app.oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a body").to_bytes();
    http::Response::from_parts(parts, body)
}

fn get_request(uri: &str, headers: &[(&str, &str)]) -> Request<axum::body::Body> {
    let mut builder = Request::get(uri).header("host", "shop.local:8080");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(axum::body::Body::empty()).expect("a request")
}

#[tokio::test(flavor = "current_thread")]
async fn http_server_spans_follow_the_semantic_conventions() {
    let valid = format!("00-{TRACE}-{PARENT}-01");
    struct Row {
        reason: &'static str,
        uri: &'static str,
        headers: Vec<(&'static str, String)>,
        name: &'static str,
        status: u16,
        error: bool,
        remote_parent: bool,
        expected: Vec<(&'static str, &'static str)>,
        absent: Vec<&'static str>,
    }
    let rows = vec![
        Row {
            reason: "a routed request joins the caller's trace, named after the route",
            uri: "/users/7?full=1",
            headers: vec![
                ("traceparent", valid.clone()),
                ("user-agent", "curl/8".into()),
            ],
            name: "GET /users/{id}",
            status: 200,
            error: false,
            remote_parent: true,
            expected: vec![
                ("http.request.method", "GET"),
                ("http.route", "/users/{id}"),
                ("url.path", "/users/7"),
                ("url.query", "full=1"),
                ("url.scheme", "http"),
                ("server.address", "shop.local"),
                ("server.port", "8080"),
                ("network.protocol.version", "1.1"),
                ("user_agent.original", "curl/8"),
                ("http.response.status_code", "200"),
            ],
            absent: vec!["error.type"],
        },
        Row {
            reason: "a 5xx is a server error",
            uri: "/fail",
            headers: vec![],
            name: "GET /fail",
            status: 500,
            error: true,
            remote_parent: false,
            expected: vec![("http.response.status_code", "500"), ("error.type", "500")],
            absent: vec![],
        },
        Row {
            reason: "a 404 has no route, so the name is the method alone; 4xx is not a server error",
            uri: "/nowhere",
            headers: vec![],
            name: "GET",
            status: 404,
            error: false,
            remote_parent: false,
            expected: vec![("http.response.status_code", "404")],
            absent: vec!["http.route", "error.type"],
        },
        Row {
            reason: "an invalid traceparent starts a new root and never fails the request",
            uri: "/users/8",
            headers: vec![(
                "traceparent",
                format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            )],
            name: "GET /users/{id}",
            status: 200,
            error: false,
            remote_parent: false,
            expected: vec![("http.response.status_code", "200")],
            absent: vec![],
        },
        Row {
            reason: "X-Forwarded-For is not trusted by default: anyone can send it",
            uri: "/users/9",
            headers: vec![("x-forwarded-for", "203.0.113.7, 10.0.0.1".into())],
            name: "GET /users/{id}",
            status: 200,
            error: false,
            remote_parent: false,
            expected: vec![],
            absent: vec!["client.address"],
        },
    ];
    for row in rows {
        let harness = Harness::new(LogFormat::Text);
        let headers: Vec<(&str, &str)> =
            row.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = call(
            app().layer(ServerLayer::new()),
            get_request(row.uri, &headers),
        )
        .await;
        assert_eq!(response.status().as_u16(), row.status, "{}", row.reason);
        let spans = harness.spans().await;
        assert_eq!(spans.len(), 1, "{}: one span", row.reason);
        let span = &spans[0];
        assert_eq!(span.name, row.name, "{}", row.reason);
        assert_eq!(span.span_kind, SpanKind::Server, "{}", row.reason);
        assert_eq!(
            matches!(span.status, Status::Error { .. }),
            row.error,
            "{}: status {:?}",
            row.reason,
            span.status
        );
        for kv in &span.attributes {
            if matches!(kv.key.as_str(), "http.response.status_code" | "server.port") {
                assert!(
                    matches!(kv.value, opentelemetry::Value::I64(_)),
                    "{}: {} is an integer, not {:?}",
                    row.reason,
                    kv.key,
                    kv.value
                );
            }
        }
        let attrs = attributes(span);
        for (key, value) in &row.expected {
            assert_eq!(
                attrs.get(*key).map(String::as_str),
                Some(*value),
                "{}: {key}",
                row.reason
            );
        }
        for key in &row.absent {
            assert!(
                !attrs.contains_key(*key),
                "{}: {key} should be absent",
                row.reason
            );
        }
        if row.remote_parent {
            assert_eq!(
                span.span_context.trace_id().to_string(),
                TRACE,
                "{}",
                row.reason
            );
            assert_eq!(span.parent_span_id.to_string(), PARENT, "{}", row.reason);
            assert!(span.parent_span_is_remote, "{}", row.reason);
        } else {
            assert_ne!(
                span.span_context.trace_id().to_string(),
                TRACE,
                "{}",
                row.reason
            );
            assert_eq!(
                span.parent_span_id,
                opentelemetry::trace::SpanId::INVALID,
                "{}: a root",
                row.reason
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn request_ids_health_paths_and_the_optional_traceparent() {
    let harness = Harness::new(LogFormat::Text);
    let layer = ServerLayer::new().response_traceparent(true);

    let response = call(
        app().layer(layer.clone()),
        get_request("/users/1", &[("x-request-id", "req-42")]),
    )
    .await;
    assert_eq!(
        response.headers()["x-request-id"],
        "req-42",
        "a caller's id is echoed unchanged"
    );
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .expect("ascii")
        .to_owned();

    let response = call(app().layer(layer.clone()), get_request("/users/2", &[])).await;
    let generated = response.headers()["x-request-id"].to_str().expect("ascii");
    assert_eq!(
        generated.len(),
        36,
        "a fresh UUID when missing: {generated}"
    );

    let response = call(app().layer(layer.clone()), get_request("/healthz", &[])).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().contains_key("x-request-id"),
        "untraced paths still get an id"
    );
    assert!(
        !response.headers().contains_key("traceparent"),
        "no span, no traceparent"
    );

    let response = call(
        app().layer(ServerLayer::new()),
        get_request("/users/3", &[]),
    )
    .await;
    assert!(
        !response.headers().contains_key("traceparent"),
        "traceparent on responses is opt-in"
    );

    let spans = harness.spans().await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(
        names, ["GET /users/{id}"; 3],
        "the health check is not traced"
    );
    let first = &spans[0];
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            first.span_context.trace_id(),
            first.span_context.span_id()
        ),
        "the response's traceparent is the server span's"
    );

    // The filter is the user's to change.
    let traced_all = ServerLayer::new().filter(|_| true);
    call(app().layer(traced_all), get_request("/healthz", &[])).await;
    let spans = harness.spans().await;
    assert_eq!(spans.last().map(|s| s.name.as_ref()), Some("GET /healthz"));
}

#[tokio::test(flavor = "current_thread")]
async fn log_lines_inside_a_handler_carry_the_request_trace_id() {
    for format in [LogFormat::Text, LogFormat::Json] {
        let harness = Harness::new(format);
        tracing::info!("outside any request");
        let traceparent = format!("00-{TRACE}-{PARENT}-01");
        call(
            app().layer(ServerLayer::new()),
            get_request("/users/5", &[("traceparent", &traceparent)]),
        )
        .await;
        let spans = harness.spans().await;
        let span_id = spans[0].span_context.span_id().to_string();
        let lines = harness.logs.lines();
        let line = lines
            .iter()
            .find(|line| line.contains("looking the user up"))
            .unwrap_or_else(|| panic!("{format:?}: the handler's line in {lines:?}"));
        let outside = lines
            .iter()
            .find(|l| l.contains("outside any request"))
            .expect("the first line");
        assert!(
            !outside.contains("trace_id"),
            "{format:?}: no trace outside a request: {outside}"
        );
        match format {
            LogFormat::Text => {
                assert!(
                    line.ends_with(&format!("trace_id={TRACE} span_id={span_id}")),
                    "{line}"
                );
            }
            _ => {
                let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                assert_eq!(value["trace_id"], TRACE, "{line}");
                assert_eq!(value["span_id"], span_id.as_str(), "{line}");
                assert_eq!(value["fields"]["message"], "looking the user up", "{line}");
            }
        }
    }
}

/// Serves `app` on a loopback port until the test ends.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

// Real time, not the paused clock: tokio advances a paused clock whenever no task is ready,
// which includes waiting on a real socket, so a timeout could fire on a call that is merely
// waiting for loopback. The timeout here is 200 ms of real time against a 10 s handler.
#[tokio::test(flavor = "current_thread")]
async fn client_spans_carry_context_to_the_server_and_record_failures() {
    let harness = Harness::new(LogFormat::Text);
    let addr = serve(app().layer(ServerLayer::new())).await;
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = tower::ServiceBuilder::new()
        .layer(ClientLayer::new())
        .service(hyper.clone());
    let timed = tower::ServiceBuilder::new()
        .layer(ClientLayer::new())
        .timeout(Duration::from_millis(200))
        .service(hyper);

    let parent = tracing::info_span!("job");
    let outcomes = {
        let request = |path: &str| {
            Request::get(format!("http://{addr}{path}"))
                .body(Full::new(Bytes::new()))
                .expect("a request")
        };
        use tracing::Instrument;
        async {
            let ok = client
                .clone()
                .oneshot(request("/users/1"))
                .await
                .map(|r| r.status());
            let failed = client
                .clone()
                .oneshot(request("/fail"))
                .await
                .map(|r| r.status());
            let missing = client
                .clone()
                .oneshot(request("/nowhere"))
                .await
                .map(|r| r.status());
            let timed_out = timed
                .clone()
                .oneshot(request("/slow"))
                .await
                .map(|r| r.status());
            (ok, failed, missing, timed_out)
        }
        .instrument(parent.clone())
        .await
    };
    drop(parent);
    assert_eq!(outcomes.0.expect("200"), 200);
    assert_eq!(outcomes.1.expect("500"), 500);
    assert_eq!(outcomes.2.expect("404"), 404);
    assert!(
        outcomes.3.is_err(),
        "the 200 ms timeout fires before the 10 s handler"
    );

    let spans = harness.spans().await;
    let job = spans
        .iter()
        .find(|s| s.name == "job")
        .expect("the parent span");
    let clients: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    assert_eq!(clients.len(), 4, "{spans:#?}");
    for client in &clients {
        assert_eq!(client.name, "GET");
        assert_eq!(
            client.parent_span_id,
            job.span_context.span_id(),
            "client spans are children of the caller's span"
        );
        assert_eq!(client.span_context.trace_id(), job.span_context.trace_id());
        let attrs = attributes(client);
        assert_eq!(attrs["server.address"], "127.0.0.1");
        assert_eq!(attrs["server.port"], addr.port().to_string());
        assert!(
            attrs["url.full"].starts_with(&format!("http://{addr}/")),
            "{attrs:?}"
        );
    }
    let by_path = |path: &str| {
        clients
            .iter()
            .find(|s| attributes(s)["url.full"].ends_with(path))
            .copied()
            .unwrap_or_else(|| panic!("a client span for {path}"))
    };
    assert_eq!(by_path("/users/1").status, Status::Unset);
    assert_eq!(attributes(by_path("/fail"))["error.type"], "500");
    assert!(matches!(by_path("/fail").status, Status::Error { .. }));
    assert_eq!(
        attributes(by_path("/nowhere"))["error.type"],
        "404",
        "a 4xx is an error for the client"
    );
    assert!(matches!(by_path("/nowhere").status, Status::Error { .. }));
    assert_eq!(attributes(by_path("/slow"))["error.type"], "timeout");
    assert!(matches!(by_path("/slow").status, Status::Error { .. }));

    // Each server span is the child of the client span that called it: the headers carried it.
    for path in ["/users/1", "/fail"] {
        let client = by_path(path);
        let server = spans
            .iter()
            .find(|s| {
                s.span_kind == SpanKind::Server && s.parent_span_id == client.span_context.span_id()
            })
            .unwrap_or_else(|| panic!("the server span under the client span for {path}"));
        assert!(server.parent_span_is_remote);
        assert_eq!(server.span_context.trace_id(), job.span_context.trace_id());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn request_id_tracestate_and_baggage_are_forwarded_on_outgoing_calls() {
    let _harness = Harness::new(LogFormat::Text);
    let echo = serve(
        Router::new()
            .route(
                "/echo",
                get(|headers: http::HeaderMap| async move {
                    let get = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    format!(
                        "{} | {} | {}",
                        get("x-request-id"),
                        get("tracestate"),
                        get("baggage")
                    )
                }),
            )
            .layer(ServerLayer::new()),
    )
    .await;
    let client = tower::ServiceBuilder::new()
        .layer(ClientLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let front = Router::new()
        .route(
            "/relay",
            get(move || {
                let client = client.clone();
                async move {
                    let request = Request::get(format!("http://{echo}/echo"))
                        .body(Full::new(Bytes::new()))
                        .expect("a request");
                    let response = client.oneshot(request).await.expect("the echo answers");
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .expect("a body")
                        .to_bytes();
                    String::from_utf8_lossy(&body).into_owned()
                }
            }),
        )
        .layer(ServerLayer::new());

    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let response = call(
        front.clone(),
        get_request(
            "/relay",
            &[
                ("x-request-id", "abc-1"),
                ("traceparent", &traceparent),
                ("tracestate", "vendor=opaque,other=x"),
                ("baggage", "tenant=acme"),
            ],
        ),
    )
    .await;
    assert_eq!(
        response.body().as_ref(),
        b"abc-1 | vendor=opaque,other=x | tenant=acme",
        "the caller's x-request-id, tracestate and baggage reach the next service unchanged"
    );

    let response = call(front, get_request("/relay", &[])).await;
    let generated = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(
        String::from_utf8_lossy(response.body()),
        format!("{generated} | - | -"),
        "a generated id is forwarded too; nothing is invented for absent tracestate and baggage"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn handler_spans_and_spawned_tasks_stay_in_the_request_trace() {
    let harness = Harness::new(LogFormat::Text);
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let response = call(
        app().layer(ServerLayer::new()),
        get_request("/nested", &[("traceparent", &traceparent)]),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(response.body()),
        TRACE,
        "current_trace_id() in a spawned task is the request's"
    );
    let spans = harness.spans().await;
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("the server span");
    let inner = spans
        .iter()
        .find(|s| s.name == "load user")
        .expect("the handler's tracing span");
    assert_eq!(
        inner.parent_span_id,
        server.span_context.span_id(),
        "a tracing span in a handler is a child of the request's span"
    );
    assert_eq!(inner.span_context.trace_id().to_string(), TRACE);
    let lines = harness.logs.lines();
    let in_span = lines
        .iter()
        .find(|l| l.contains("inside the handler's own span"))
        .expect("the line");
    assert!(
        in_span.ends_with(&format!("span_id={}", inner.span_context.span_id())),
        "the line names the innermost span: {in_span}"
    );
    let spawned = lines
        .iter()
        .find(|l| l.contains("from a spawned task"))
        .expect("the line");
    assert!(
        spawned.ends_with(&format!(
            "trace_id={TRACE} span_id={}",
            server.span_context.span_id()
        )),
        "a task started with spawn() logs in the request's span: {spawned}"
    );
}

/// A response body made of the given frames, in order.
struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn trailers(status: &str) -> http_body::Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    map.insert("grpc-status", status.parse().expect("a value"));
    http_body::Frame::trailers(map)
}

#[tokio::test(flavor = "current_thread")]
async fn grpc_status_comes_from_headers_or_trailers() {
    struct Row {
        reason: &'static str,
        http_status: u16,
        header_status: Option<&'static str>,
        frames: Vec<http_body::Frame<Bytes>>,
        read_to_end: bool,
        code: &'static str,
        error: Option<&'static str>,
    }
    let data = || http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\0"));
    let rows = vec![
        Row {
            reason: "OK in the trailers after a message",
            http_status: 200,
            header_status: None,
            frames: vec![data(), trailers("0")],
            read_to_end: true,
            code: "0",
            error: None,
        },
        Row {
            reason: "an error in the trailers",
            http_status: 200,
            header_status: None,
            frames: vec![data(), trailers("13")],
            read_to_end: true,
            code: "13",
            error: Some("INTERNAL"),
        },
        Row {
            reason: "a trailers-only response: the status is in the headers; NOT_FOUND is the caller's business, not a server error",
            http_status: 200,
            header_status: Some("5"),
            frames: vec![],
            read_to_end: true,
            code: "5",
            error: None,
        },
        Row {
            reason: "a body that ends without a status is UNKNOWN",
            http_status: 200,
            header_status: None,
            frames: vec![data()],
            read_to_end: true,
            code: "2",
            error: Some("UNKNOWN"),
        },
        Row {
            reason: "a body dropped before its status: the peer went away, CANCELLED, not a server error",
            http_status: 200,
            header_status: None,
            frames: vec![data(), data(), trailers("0")],
            read_to_end: false,
            code: "1",
            error: None,
        },
        Row {
            reason: "an HTTP 503 without grpc-status maps to UNAVAILABLE",
            http_status: 503,
            header_status: None,
            frames: vec![],
            read_to_end: true,
            code: "14",
            error: Some("UNAVAILABLE"),
        },
    ];
    for row in rows {
        let harness = Harness::new(LogFormat::Text);
        let frames = Mutex::new(Some(row.frames));
        let (status, header) = (row.http_status, row.header_status);
        let service = tower::service_fn(move |_request: Request<Full<Bytes>>| {
            let frames = frames.lock().take().unwrap_or_default();
            async move {
                let mut builder = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/grpc");
                if let Some(code) = header {
                    builder = builder.header("grpc-status", code);
                }
                Ok::<_, std::convert::Infallible>(
                    builder.body(Frames(frames.into())).expect("a response"),
                )
            }
        });
        let request = Request::post("http://inventory.local:50051/shop.v1.Orders/Get")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let response = ServerLayer::new()
            .layer(service)
            .oneshot(request)
            .await
            .expect("infallible");
        let mut body = response.into_body();
        if row.read_to_end {
            while body.frame().await.is_some() {}
        } else {
            body.frame().await;
        }
        drop(body);
        let spans = harness.spans().await;
        assert_eq!(spans.len(), 1, "{}", row.reason);
        let span = &spans[0];
        assert_eq!(span.name, "shop.v1.Orders/Get", "{}", row.reason);
        let attrs = attributes(span);
        assert_eq!(attrs["rpc.system"], "grpc", "{}", row.reason);
        assert_eq!(attrs["rpc.service"], "shop.v1.Orders", "{}", row.reason);
        assert_eq!(attrs["rpc.method"], "Get", "{}", row.reason);
        assert_eq!(attrs["server.address"], "inventory.local", "{}", row.reason);
        assert_eq!(attrs["rpc.grpc.status_code"], row.code, "{}", row.reason);
        assert_eq!(
            attrs.get("error.type").map(String::as_str),
            row.error,
            "{}",
            row.reason
        );
        assert_eq!(
            matches!(span.status, Status::Error { .. }),
            row.error.is_some(),
            "{}: only the server's own codes are errors on the server",
            row.reason
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_dropped_before_its_response_is_recorded_as_cancelled() {
    let harness = Harness::new(LogFormat::Text);
    let never = tower::service_fn(|_request: Request<Full<Bytes>>| {
        std::future::pending::<Result<http::Response<Full<Bytes>>, std::convert::Infallible>>()
    });
    let request = Request::get("http://users.local/users/1")
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let call = ServerLayer::new().layer(never).oneshot(request);
    // The caller gives up: the future is dropped without an answer.
    let gave_up = tokio::time::timeout(Duration::from_millis(1), call).await;
    assert!(gave_up.is_err(), "the service never answers");
    let spans = harness.spans().await;
    assert_eq!(spans.len(), 1);
    assert_eq!(attributes(&spans[0])["error.type"], "cancelled");
    assert!(matches!(spans[0].status, Status::Error { .. }));
}

// Real time (loopback sockets); the attempt timeout is 200 ms against a 10 s handler.
#[tokio::test(flavor = "current_thread")]
async fn balanced_attempts_are_client_spans_of_their_own() {
    use wayfinder_middleware::balance::{BalanceLayer, Balancer, RequestBody};

    let harness = Harness::new(LogFormat::Text);
    let failing =
        serve(Router::new().route("/items", get(|| async { StatusCode::SERVICE_UNAVAILABLE })))
            .await;
    let healthy = serve(Router::new().route("/items", get(|| async { "items" }))).await;
    let stalled = serve(Router::new().route(
        "/items",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "late"
        }),
    ))
    .await;
    let hyper = Client::builder(TokioExecutor::new()).build_http::<RequestBody>();
    let balancer = Balancer::builder("cart")
        .seed([failing.to_string(), healthy.to_string()])
        .configure(|c| c.consecutive_failures = 0)
        .build()
        .expect("a balancer");
    let client = tower::ServiceBuilder::new()
        .layer(BalanceLayer::new(balancer))
        .layer(ClientLayer::new())
        .service(hyper.clone());
    for _ in 0..10 {
        let request = Request::get("http://cart/items")
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let response = client.clone().oneshot(request).await.expect("an answer");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "retried onto the healthy one"
        );
    }
    let slow = Balancer::builder("slow")
        .seed([stalled.to_string()])
        .configure(|c| {
            c.attempt_timeout = Duration::from_millis(200);
            c.max_attempts = 1;
        })
        .build()
        .expect("a balancer");
    let slow_client = tower::ServiceBuilder::new()
        .layer(BalanceLayer::new(slow))
        .layer(ClientLayer::new())
        .service(hyper);
    let request = Request::get("http://slow/items")
        .body(Full::new(Bytes::new()))
        .expect("a request");
    assert!(
        slow_client.oneshot(request).await.is_err(),
        "the attempt timed out"
    );

    let spans = harness.spans().await;
    let client_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .map(attributes)
        .collect();
    let first: Vec<_> = client_spans
        .iter()
        .filter(|a| !a.contains_key("http.request.resend_count"))
        .collect();
    let resends: Vec<_> = client_spans
        .iter()
        .filter(|a| a.contains_key("http.request.resend_count"))
        .collect();
    assert_eq!(
        first.len(),
        11,
        "one span per call's first attempt: {client_spans:?}"
    );
    assert!(
        !resends.is_empty(),
        "some first attempts hit the failing instance"
    );
    for attempt in &first[..10] {
        assert_eq!(attempt["wayfinder.balancer.reason"], "static seed");
        let endpoint = &attempt["wayfinder.balancer.endpoint"];
        assert!(
            *endpoint == failing.to_string() || *endpoint == healthy.to_string(),
            "{attempt:?}"
        );
        assert_eq!(
            attempt["server.port"],
            endpoint.rsplit(':').next().unwrap(),
            "the span names the instance it went to"
        );
    }
    for resend in &resends {
        assert_eq!(resend["http.request.resend_count"], "1");
        assert_eq!(resend["wayfinder.balancer.endpoint"], healthy.to_string());
        assert_eq!(resend["http.response.status_code"], "200");
    }
    let failed_first = first
        .iter()
        .filter(|a| a.get("http.response.status_code").map(String::as_str) == Some("503"))
        .count();
    assert_eq!(failed_first, resends.len(), "each 503 was retried once");
    let timed_out = &first[10];
    assert_eq!(
        timed_out["wayfinder.balancer.endpoint"],
        stalled.to_string()
    );
    assert_eq!(
        timed_out["error.type"], "timeout",
        "the attempt deadline is recorded as a timeout, not a cancellation"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn forwarded_headers_count_only_from_a_trusted_proxy() {
    let peer: std::net::SocketAddr = "10.0.0.1:45678".parse().unwrap();
    type Row = (
        bool,
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
        &'static str,
    );
    let rows: [Row; 6] = [
        (
            false,
            &[],
            "10.0.0.1",
            "http",
            "without a proxy: the socket's peer",
        ),
        (
            false,
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
            ],
            "10.0.0.1",
            "http",
            "untrusted headers are ignored",
        ),
        (
            true,
            &[
                ("x-forwarded-for", "203.0.113.7, 10.0.0.9"),
                ("x-forwarded-proto", "https"),
            ],
            "203.0.113.7",
            "https",
            "a trusted proxy's X-Forwarded-*",
        ),
        (
            true,
            &[(
                "forwarded",
                "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.9",
            )],
            "2001:db8::1",
            "https",
            "RFC 7239 Forwarded, brackets and port removed",
        ),
        (
            true,
            &[
                ("forwarded", "for=198.51.100.17:8080"),
                ("x-forwarded-for", "203.0.113.7"),
            ],
            "198.51.100.17",
            "http",
            "Forwarded beats X-Forwarded-For",
        ),
        (
            true,
            &[("forwarded", "for=unknown")],
            "10.0.0.1",
            "http",
            "an unknown client falls back to the peer",
        ),
    ];
    for (trust, headers, client, scheme, reason) in rows {
        let harness = Harness::new(LogFormat::Text);
        let mut request = get_request("/users/1", headers);
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        call(
            app().layer(ServerLayer::new().trust_forwarded_headers(trust)),
            request,
        )
        .await;
        let spans = harness.spans().await;
        let server = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .expect(reason);
        let attributes = attributes(server);
        assert_eq!(attributes["client.address"], client, "{reason}");
        assert_eq!(attributes["url.scheme"], scheme, "{reason}");
        assert_eq!(
            attributes["network.peer.address"], "10.0.0.1",
            "{reason}: always the socket"
        );
        assert_eq!(attributes["network.peer.port"], "45678", "{reason}");
        assert!(
            attributes["http.request.header.x-request-id"].len() > 2,
            "{reason}: the request id is on the span"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_handler_answers_500_and_its_span_says_panic() {
    let harness = Harness::new(LogFormat::Text);
    let app = Router::new()
        .route(
            "/boom",
            get(|| async {
                if true {
                    panic!("the handler broke");
                }
                "never"
            }),
        )
        .route("/fine", get(|| async { "fine" }))
        .layer(ServerLayer::new());
    let response = call(app.clone(), get_request("/boom", &[])).await;
    assert_eq!(
        response.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "a 500, not a dropped connection"
    );
    let response = call(app, get_request("/fine", &[])).await;
    assert_eq!(response.status(), StatusCode::OK, "the service goes on");
    let spans = harness.spans().await;
    let boom = spans
        .iter()
        .find(|s| s.name == "GET /boom")
        .expect("the panicking request has its span");
    let attributes = attributes(boom);
    assert_eq!(attributes["error.type"], "panic");
    assert_eq!(attributes["http.response.status_code"], "500");
    assert!(
        matches!(&boom.status, Status::Error { description } if description.contains("the handler broke")),
        "the message is the status description: {:?}",
        boom.status
    );
}

#[tokio::test(flavor = "current_thread")]
async fn rpc_spans_follow_the_conventions_opted_in() {
    use wayfinder_middleware::grpc::RpcConventions;
    struct Row {
        conventions: RpcConventions,
        /// The server's known methods (`ServerLayer::rpc_methods`), if given.
        methods: Option<Vec<&'static str>>,
        /// The `grpc-status` the service answers.
        status: &'static str,
        path: &'static str,
        name: &'static str,
        expected: Vec<(&'static str, &'static str)>,
        absent: Vec<&'static str>,
        reason: &'static str,
    }
    let rows = vec![
        Row {
            conventions: RpcConventions::Experimental,
            methods: None,
            status: "5",
            path: "/shop.v1.Orders/Get",
            name: "shop.v1.Orders/Get",
            expected: vec![
                ("rpc.system", "grpc"),
                ("rpc.service", "shop.v1.Orders"),
                ("rpc.method", "Get"),
                ("rpc.grpc.status_code", "5"),
            ],
            absent: vec!["rpc.system.name", "rpc.response.status_code"],
            reason: "the default: the experimental conventions, as before",
        },
        Row {
            conventions: RpcConventions::Stable,
            methods: None,
            status: "5",
            path: "/shop.v1.Orders/Get",
            name: "shop.v1.Orders/Get",
            expected: vec![
                ("rpc.system.name", "grpc"),
                ("rpc.method", "shop.v1.Orders/Get"),
                ("rpc.response.status_code", "NOT_FOUND"),
            ],
            absent: vec![
                "rpc.system",
                "rpc.service",
                "rpc.grpc.status_code",
                "error.type",
            ],
            reason: "rpc: the stable conventions only",
        },
        Row {
            conventions: RpcConventions::Stable,
            methods: None,
            status: "5",
            path: "/not-a-method",
            name: "grpc",
            expected: vec![
                ("rpc.method", "_OTHER"),
                ("rpc.method_original", "/not-a-method"),
            ],
            absent: vec![],
            reason: "rpc: an unparsable path is _OTHER, the span named after the system",
        },
        Row {
            conventions: RpcConventions::Both,
            methods: None,
            status: "5",
            path: "/shop.v1.Orders/Get",
            name: "shop.v1.Orders/Get",
            expected: vec![
                ("rpc.system", "grpc"),
                ("rpc.system.name", "grpc"),
                ("rpc.service", "shop.v1.Orders"),
                ("rpc.method", "shop.v1.Orders/Get"),
                ("rpc.grpc.status_code", "5"),
                ("rpc.response.status_code", "NOT_FOUND"),
            ],
            absent: vec![],
            reason: "rpc/dup: both, rpc.method with its stable value",
        },
        Row {
            conventions: RpcConventions::Stable,
            methods: None,
            status: "12",
            path: "/shop.v1.Orders/Nope",
            name: "grpc",
            expected: vec![
                ("rpc.method", "_OTHER"),
                ("rpc.method_original", "shop.v1.Orders/Nope"),
                ("rpc.response.status_code", "UNIMPLEMENTED"),
                ("error.type", "UNIMPLEMENTED"),
            ],
            absent: vec![],
            reason: "rpc: UNIMPLEMENTED means the server does not know the method: _OTHER",
        },
        Row {
            conventions: RpcConventions::Both,
            methods: None,
            status: "12",
            path: "/shop.v1.Orders/Nope",
            name: "grpc",
            expected: vec![
                ("rpc.service", "shop.v1.Orders"),
                ("rpc.method", "_OTHER"),
                ("rpc.method_original", "shop.v1.Orders/Nope"),
                ("rpc.grpc.status_code", "12"),
            ],
            absent: vec![],
            reason: "rpc/dup: the shared rpc.method key takes the stable _OTHER",
        },
        Row {
            conventions: RpcConventions::Stable,
            methods: Some(vec!["shop.v1.Orders/Get"]),
            status: "5",
            path: "/shop.v1.Orders/Get",
            name: "shop.v1.Orders/Get",
            expected: vec![("rpc.method", "shop.v1.Orders/Get")],
            absent: vec!["rpc.method_original"],
            reason: "rpc with a method list: a listed method by its name from the start",
        },
        Row {
            conventions: RpcConventions::Stable,
            methods: Some(vec!["shop.v1.Orders/Get"]),
            status: "0",
            path: "/shop.v1.Orders/Other",
            name: "grpc",
            expected: vec![
                ("rpc.method", "_OTHER"),
                ("rpc.method_original", "shop.v1.Orders/Other"),
                ("rpc.response.status_code", "OK"),
            ],
            absent: vec!["error.type"],
            reason: "rpc with a method list: an unlisted method is _OTHER even when it answers",
        },
    ];
    for row in rows {
        let harness = Harness::new(LogFormat::Text);
        let status = row.status;
        let service = tower::service_fn(move |_request: Request<Full<Bytes>>| async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", status)
                    .body(Full::new(Bytes::new()))
                    .expect("a response"),
            )
        });
        let request = Request::post(format!("http://inventory.local:50051{}", row.path))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let mut layer = ServerLayer::new().rpc_conventions(row.conventions);
        if let Some(methods) = &row.methods {
            layer = layer.rpc_methods(methods.iter().copied());
        }
        let response = layer
            .layer(service)
            .oneshot(request)
            .await
            .expect("infallible");
        let mut body = response.into_body();
        while body.frame().await.is_some() {}
        drop(body);
        let spans = harness.spans().await;
        let span = &spans[0];
        assert_eq!(span.name, row.name, "{}", row.reason);
        let scope = &span.instrumentation_scope;
        assert_eq!(scope.name(), "wayfinder-middleware");
        assert_eq!(
            scope.version(),
            Some(env!("CARGO_PKG_VERSION")),
            "the tracer's version"
        );
        assert_eq!(
            scope.schema_url(),
            Some("https://opentelemetry.io/schemas/1.37.0"),
            "the schema of the conventions (no OTEL_SEMCONV_STABILITY_OPT_IN here)"
        );
        let mut keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), before, "{}: no attribute twice", row.reason);
        let attrs = attributes(span);
        for (key, value) in &row.expected {
            assert_eq!(
                attrs.get(*key).map(String::as_str),
                Some(*value),
                "{}: {key}",
                row.reason
            );
        }
        for key in &row.absent {
            assert!(
                !attrs.contains_key(*key),
                "{}: {key} must be absent",
                row.reason
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn handlers_add_attributes_and_an_edge_can_refuse_baggage() {
    use opentelemetry::baggage::BaggageExt;
    let app = || {
        Router::new().route(
            "/orders/{id}",
            get(|| async {
                // The documented way: the request's span is the active OpenTelemetry span.
                opentelemetry::trace::get_active_span(|span| {
                    span.set_attribute(opentelemetry::KeyValue::new("order.id", "o-42"))
                });
                let cx = opentelemetry::Context::current();
                let member = cx.baggage().get("tenant").map(|v| v.to_string());
                member.unwrap_or_else(|| "no baggage".to_owned())
            }),
        )
    };
    let headers = [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("baggage", "tenant=acme"),
    ];
    type Row = (bool, &'static str, &'static str);
    let rows: [Row; 2] = [
        (true, "acme", "baggage is taken in by default"),
        (false, "no baggage", "an edge that refuses baggage drops it"),
    ];
    for (accept, expected, reason) in rows {
        let harness = Harness::new(LogFormat::Text);
        let response = call(
            app().layer(ServerLayer::new().accept_baggage(accept)),
            get_request("/orders/42", &headers),
        )
        .await;
        assert_eq!(response.body(), expected, "{reason}");
        let spans = harness.spans().await;
        let server = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .expect(reason);
        assert_eq!(
            server.span_context.trace_id().to_string(),
            TRACE,
            "{reason}: the trace context is kept either way"
        );
        assert_eq!(
            attributes(server)["order.id"],
            "o-42",
            "{reason}: the handler's attribute"
        );
    }
}
