//! The middleware end to end: an axum gateway (A) calls the axum `orders` example (B) over
//! HTTP through hyper and the client layer; B calls the tonic `inventory` example (C) over
//! gRPC; C calls B back for a price with reqwest. Each service runs on its own runtime with its
//! own telemetry, exporting over real OTLP (gRPC for A and C, HTTP for B) to a collector on
//! loopback, and the test reads the trace back through `/api/v1/sql`.

#[path = "../../middleware/examples/orders.rs"]
#[allow(dead_code, unreachable_pub)]
mod orders;

#[path = "../../middleware/examples/inventory.rs"]
#[allow(dead_code, unreachable_pub)]
mod inventory;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::oneshot;
use tower::ServiceExt;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use wayfinder_e2e::{http_client, loopback_config, sql, start, wait_for_rows};
use wayfinder_middleware::{ClientLayer, OtlpProtocol, ServerLayer, Telemetry};

/// Log lines of one service.
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

/// A service on its own thread and current-thread runtime, with its own telemetry as that
/// thread's default subscriber.
struct Service {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    logs: Logs,
}

impl Service {
    fn start<F, Fut>(name: &'static str, protocol: OtlpProtocol, endpoint: String, serve: F) -> Self
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = oneshot::channel();
        let logs = Logs::default();
        let writer = logs.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let mut telemetry = Telemetry::new().service_name(name);
                if name != "gateway" {
                    // The gateway keeps the default: a fresh UUID.
                    telemetry = telemetry.instance_id(format!("{name}-1"));
                }
                let telemetry = telemetry
                    .endpoint(endpoint)
                    .protocol(protocol)
                    .log_writer(BoxMakeWriter::new(move || writer.clone()))
                    .build()
                    .expect("telemetry builds");
                let default = telemetry.set_default();
                serve(stopped).await;
                drop(default);
                telemetry.shutdown().await.expect("spans flushed");
            });
        });
        Service {
            stop: Some(stop),
            thread: Some(thread),
            logs,
        }
    }

    /// Stops serving and waits until the service has flushed its spans.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the service thread ends cleanly");
        }
    }

    fn log_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.logs.0.lock())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn loopback_listener() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("an address");
    (listener, addr)
}

type HttpClient = wayfinder_middleware::http::ClientService<
    Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
>;

/// Service A: `GET /checkout/{sku}?quantity=N` places the order with B and relays B's answer.
fn gateway(orders: SocketAddr) -> Router {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client: HttpClient = tower::ServiceBuilder::new()
        .layer(ClientLayer::new())
        .service(client);
    Router::new()
        .route("/checkout/{sku}", get(checkout))
        .with_state((client, orders))
        .layer(ServerLayer::new().response_traceparent(true))
}

async fn checkout(
    State((client, orders)): State<(HttpClient, SocketAddr)>,
    Path(sku): Path<String>,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    let uri = format!("http://{orders}/orders/{sku}?{}", query.unwrap_or_default());
    let request = http::Request::post(uri)
        .body(Full::new(Bytes::new()))
        .expect("a request");
    match client.oneshot(request).await {
        Ok(response) => {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, body).into_response()
        }
        Err(error) => (http::StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

/// One row of the spans of a trace.
#[derive(Debug)]
struct Row {
    service: String,
    name: String,
    kind: String,
    status: String,
    span_id: String,
    parent: Option<String>,
    attributes: HashMap<String, String>,
}

async fn trace_rows(collector: &wayfinder_collector::RunningCollector, trace_id: &str) -> Vec<Row> {
    let query = format!(
        "SELECT service_name, span_name, span_kind, status_code, span_id, parent_span_id, \
         attributes FROM spans WHERE trace_id = '{trace_id}' ORDER BY start_time"
    );
    let response = sql(collector, &query).await;
    response
        .rows
        .iter()
        .map(|row| {
            let text = |i: usize| row[i].as_str().unwrap_or_default().to_owned();
            let attributes = match &row[6] {
                Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
                Value::Array(pairs) => pairs
                    .iter()
                    .filter_map(|pair| {
                        Some((
                            pair["key"].as_str()?.to_owned(),
                            pair["value"].as_str()?.to_owned(),
                        ))
                    })
                    .collect(),
                other => panic!("attributes as {other}"),
            };
            Row {
                service: text(0),
                name: text(1),
                kind: text(2),
                status: text(3),
                span_id: text(4),
                parent: row[5].as_str().map(str::to_owned),
                attributes,
            }
        })
        .collect()
}

/// The span of `service` with `kind` whose parent is `parent`.
fn child<'a>(rows: &'a [Row], parent: Option<&str>, service: &str, kind: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.service == service && r.kind == kind && r.parent.as_deref() == parent)
        .unwrap_or_else(|| panic!("no {service} {kind} span under {parent:?} in {rows:#?}"))
}

fn assert_attributes(row: &Row, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(
            row.attributes.get(*key).map(String::as_str),
            Some(*value),
            "{} {} {}: {key} in {:?}",
            row.service,
            row.kind,
            row.name,
            row.attributes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_axum_hyper_tonic_and_reqwest_into_the_collector() {
    let collector = start(loopback_config()).await;
    let grpc = format!("http://{}", collector.addrs().otlp_grpc);
    let http = format!("http://{}", collector.addrs().otlp_http);

    let (a_listener, a_addr) = loopback_listener();
    let (b_listener, b_addr) = loopback_listener();
    let (c_listener, c_addr) = loopback_listener();

    let mut c = Service::start(
        "inventory",
        OtlpProtocol::Grpc,
        grpc.clone(),
        move |stop| async move {
            let stock = Arc::new(inventory::Stock::new(format!("http://{b_addr}")));
            let listener = tokio::net::TcpListener::from_std(c_listener).expect("a listener");
            tonic::transport::Server::builder()
                .layer(ServerLayer::new())
                .add_service(inventory::service(stock))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stop.await;
                    },
                )
                .await
                .expect("inventory serves");
        },
    );
    let mut b = Service::start(
        "orders",
        OtlpProtocol::HttpProtobuf,
        http,
        move |stop| async move {
            let router = orders::router(&format!("http://{c_addr}")).expect("the orders router");
            let listener = tokio::net::TcpListener::from_std(b_listener).expect("a listener");
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await
            .expect("orders serves");
        },
    );
    let mut a = Service::start(
        "gateway",
        OtlpProtocol::Grpc,
        grpc,
        move |stop| async move {
            let listener = tokio::net::TcpListener::from_std(a_listener).expect("a listener");
            axum::serve(listener, gateway(b_addr))
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await
                .expect("the gateway serves");
        },
    );

    let client = http_client();
    let checkout = |query: &'static str| {
        let client = client.clone();
        async move {
            let response = client
                .get(format!("http://{a_addr}/checkout/apple?{query}"))
                .send()
                .await
                .expect("the gateway answers");
            let traceparent = response.headers()["traceparent"]
                .to_str()
                .expect("ascii")
                .to_owned();
            let trace_id = traceparent
                .split('-')
                .nth(1)
                .expect("a trace id")
                .to_owned();
            let status = response.status().as_u16();
            let body = response.text().await.expect("a body");
            (status, trace_id, body)
        }
    };
    let (ok_status, ok_trace, ok_body) = checkout("quantity=2").await;
    assert_eq!(ok_status, 200, "{ok_body}");
    assert!(
        ok_body.contains("\"total_cents\":240"),
        "the price came back through C → B: {ok_body}"
    );
    let (bad_status, bad_trace, bad_body) = checkout("quantity=0").await;
    assert_eq!(
        bad_status, 500,
        "INVALID_ARGUMENT from C is a 500 from B, relayed by A: {bad_body}"
    );
    assert_ne!(ok_trace, bad_trace, "each request is its own trace");

    // Stopping a service flushes its spans.
    for service in [&mut a, &mut b, &mut c] {
        service.stop();
    }

    // The successful trace: A server → A client → B server → B client → C server, and C's
    // price lookup → B's prices route.
    assert_eq!(
        wait_for_rows(&collector, &format!("trace_id = '{ok_trace}'"), 7).await,
        7
    );
    let rows = trace_rows(&collector, &ok_trace).await;
    assert_eq!(rows.len(), 7, "{rows:#?}");
    let a_server = child(&rows, None, "gateway", "server");
    assert_eq!(a_server.name, "GET /checkout/{sku}");
    assert_attributes(
        a_server,
        &[
            ("http.request.method", "GET"),
            ("http.route", "/checkout/{sku}"),
            ("url.path", "/checkout/apple"),
            ("url.scheme", "http"),
            ("http.response.status_code", "200"),
            ("server.address", "127.0.0.1"),
            ("server.port", &a_addr.port().to_string()),
            ("network.protocol.version", "1.1"),
        ],
    );
    let a_client = child(&rows, Some(&a_server.span_id), "gateway", "client");
    assert_eq!(a_client.name, "POST");
    assert_attributes(
        a_client,
        &[
            ("http.request.method", "POST"),
            ("server.address", "127.0.0.1"),
            ("server.port", &b_addr.port().to_string()),
            (
                "url.full",
                &format!("http://{b_addr}/orders/apple?quantity=2"),
            ),
            ("http.response.status_code", "200"),
        ],
    );
    let b_server = child(&rows, Some(&a_client.span_id), "orders", "server");
    assert_eq!(b_server.name, "POST /orders/{sku}");
    assert_attributes(
        b_server,
        &[
            ("http.route", "/orders/{sku}"),
            ("client.address", "127.0.0.1"),
        ],
    );
    let ok_b_server = b_server.span_id.clone();
    let b_client = child(&rows, Some(&b_server.span_id), "orders", "client");
    let c_server = child(&rows, Some(&b_client.span_id), "inventory", "server");
    for (row, port) in [(b_client, c_addr.port()), (c_server, c_addr.port())] {
        assert_eq!(row.name, "inventory.v1.Inventory/Reserve");
        assert_attributes(
            row,
            &[
                ("rpc.system", "grpc"),
                ("rpc.service", "inventory.v1.Inventory"),
                ("rpc.method", "Reserve"),
                ("rpc.grpc.status_code", "0"),
                ("server.port", &port.to_string()),
            ],
        );
    }
    let c_client = child(&rows, Some(&c_server.span_id), "inventory", "client");
    assert_attributes(c_client, &[("http.response.status_code", "200")]);
    let b_prices = child(&rows, Some(&c_client.span_id), "orders", "server");
    assert_eq!(b_prices.name, "GET /prices/{sku}");
    for row in &rows {
        assert_eq!(row.status, "unset", "nothing failed: {row:?}");
        assert!(!row.attributes.contains_key("error.type"), "{row:?}");
    }

    // The failing trace: C answers INVALID_ARGUMENT, every span on the way back is an error.
    assert_eq!(
        wait_for_rows(&collector, &format!("trace_id = '{bad_trace}'"), 5).await,
        5
    );
    let rows = trace_rows(&collector, &bad_trace).await;
    assert_eq!(
        rows.len(),
        5,
        "no price lookup on a rejected order: {rows:#?}"
    );
    let a_server = child(&rows, None, "gateway", "server");
    let a_client = child(&rows, Some(&a_server.span_id), "gateway", "client");
    let b_server = child(&rows, Some(&a_client.span_id), "orders", "server");
    let b_client = child(&rows, Some(&b_server.span_id), "orders", "client");
    let c_server = child(&rows, Some(&b_client.span_id), "inventory", "server");
    for row in [a_server, a_client, b_server] {
        assert_eq!(row.status, "error", "{row:?}");
        assert_attributes(
            row,
            &[("http.response.status_code", "500"), ("error.type", "500")],
        );
    }
    // The client that got INVALID_ARGUMENT failed; the server that answered it did its job (the
    // gRPC conventions count only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
    // UNAVAILABLE and DATA_LOSS as server errors).
    assert_eq!(b_client.status, "error", "{b_client:?}");
    assert_attributes(
        b_client,
        &[
            ("rpc.grpc.status_code", "3"),
            ("error.type", "INVALID_ARGUMENT"),
        ],
    );
    assert_ne!(c_server.status, "error", "{c_server:?}");
    assert_attributes(c_server, &[("rpc.grpc.status_code", "3")]);
    assert!(
        !c_server.attributes.contains_key("error.type"),
        "{c_server:?}"
    );

    // service.instance.id: as given, or a fresh UUID for the service that gave none.
    let instances = sql(
        &collector,
        "SELECT DISTINCT service_name, instance_id FROM spans ORDER BY service_name",
    )
    .await;
    let instances: Vec<(String, String)> = instances
        .rows
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap_or_default().to_owned(),
                row[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(instances.len(), 3, "{instances:?}");
    assert_eq!(instances[0].0, "gateway");
    let uuid = &instances[0].1;
    assert!(
        uuid.len() == 36 && uuid.matches('-').count() == 4,
        "a generated UUID: {uuid}"
    );
    assert_eq!(
        instances[1],
        ("inventory".to_owned(), "inventory-1".to_owned())
    );
    assert_eq!(instances[2], ("orders".to_owned(), "orders-1".to_owned()));

    // B's log lines carry the trace id of the request they were written for.
    let lines = b.log_lines();
    for (trace, span_id) in [(&ok_trace, &ok_b_server), (&bad_trace, &b_server.span_id)] {
        let line = lines
            .iter()
            .find(|l| l.contains("placing an order") && l.contains(trace.as_str()))
            .unwrap_or_else(|| panic!("B logged the order of trace {trace}: {lines:#?}"));
        assert!(
            line.ends_with(&format!("trace_id={trace} span_id={span_id}")),
            "the handler logs inside B's server span: {line}"
        );
    }
    let warned = lines
        .iter()
        .find(|l| l.contains("reservation failed"))
        .expect("B warned about the rejected reservation");
    assert!(
        warned.contains(&format!("trace_id={bad_trace}")),
        "{warned}"
    );
}
