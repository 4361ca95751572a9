//! Every connection the middleware makes, over TLS to a real collector with `--tls-cert` and
//! `--tls-key`, then also `--tls-client-ca` (mutual TLS on the OTLP receivers): spans over
//! OTLP/HTTP and OTLP/gRPC, beats over both transports, the weights `Watch` and long-poll, and
//! balanced HTTPS and gRPC-over-TLS calls to an instance that serves TLS. And a CA that did not
//! sign the collector: nothing arrives, the failures are counted and said, and the service goes
//! on answering its callers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use tower::ServiceExt as _;
use wayfinder_collector::RunningCollector;
use wayfinder_collector::config::TlsPaths;
use wayfinder_e2e::pki::Pki;
use wayfinder_e2e::{loopback_config, start};
use wayfinder_middleware::balance::{BalanceLayer, Balancer, RequestBody, WeightSource};
use wayfinder_middleware::health::HealthReporter;
use wayfinder_middleware::tls::ClientTls;
use wayfinder_middleware::{ClientLayer, OtlpProtocol, ServerLayer, Telemetry};

/// The PKI, a collector serving TLS with its certificate, and the client's files.
struct Setup {
    pki: Pki,
    collector: RunningCollector,
    ca: PathBuf,
    /// A client certificate and key the CA signed.
    identity: (PathBuf, PathBuf),
}

async fn setup(mutual: bool) -> Setup {
    let pki = Pki::new();
    let mut files = pki.server_files();
    if !mutual {
        files.client_ca = None;
    }
    let mut config = loopback_config();
    config.access.set_tls(Some(files));
    config.weights.weight_update_period = Duration::from_millis(100);
    let collector = start(config).await;
    let ca = pki.write("trusted-ca.pem", &pki.ca_pem);
    let (cert, key) = pki.leaf();
    let identity = (
        pki.write("client.pem", &cert),
        pki.write("client.key", &key),
    );
    Setup {
        pki,
        collector,
        ca,
        identity,
    }
}

impl Setup {
    fn tls(&self) -> ClientTls {
        ClientTls::new()
            .ca_file(&self.ca)
            .client_identity(&self.identity.0, &self.identity.1)
    }

    fn url(&self, addr: SocketAddr) -> String {
        format!("https://{addr}")
    }
}

/// An instance of `inventory` serving TLS (HTTP/1.1 and HTTP/2 by ALPN) with a certificate for
/// the name `inventory`: `GET /items` and the gRPC health service.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

async fn tls_backend(pki: &Pki) -> Backend {
    let (cert, key) = pki.leaf_for(&["inventory"]);
    let paths = TlsPaths {
        cert: pki.write("inventory.pem", &cert),
        key: pki.write("inventory.key", &key),
        client_ca: None,
    };
    let config = server_config(&paths);
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::service::Routes::new(health)
        .into_axum_router()
        .route(
            "/items",
            get(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                async { "apples" }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Backend { addr, hits }
}

fn server_config(paths: &TlsPaths) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&paths.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&paths.key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One span of `service` through telemetry over `protocol` to `endpoint` with `tls`; the guard
/// once the export is done.
async fn one_span(
    service: &str,
    protocol: OtlpProtocol,
    endpoint: String,
    tls: ClientTls,
) -> wayfinder_middleware::TelemetryGuard {
    let telemetry = Telemetry::new()
        .service_name(service)
        .protocol(protocol)
        .endpoint(endpoint)
        .tls(tls)
        .build()
        .expect("telemetry builds: the TLS files are there");
    telemetry
        .provider()
        .tracer("tls-test")
        .start(format!("work-{service}"))
        .end();
    telemetry
        .flush()
        .await
        .expect("the export over TLS succeeds");
    telemetry
}

/// The spans named `name` in the collector's store (its query API speaks TLS here, and the
/// tests' own HTTP client does not).
fn rows_of(collector: &RunningCollector, name: &str) -> usize {
    use datafusion::arrow::array::{Array as _, StringArray};
    collector
        .store()
        .snapshot()
        .iter()
        .map(|batch| {
            let column = batch
                .column_by_name("span_name")
                .expect("a span_name column");
            let column = datafusion::arrow::compute::cast(
                column,
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let names = column.as_any().downcast_ref::<StringArray>().unwrap();
            names.iter().filter(|n| *n == Some(name)).count()
        })
        .sum()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 5 s");
}

/// Everything the middleware sends reaches the collector over TLS (with a client certificate
/// when `mutual`), and the balancer reaches the instances over TLS.
async fn everything_arrives(mutual: bool) {
    let setup = setup(mutual).await;
    let addrs = setup.collector.addrs();
    let tls = setup.tls();

    // Spans, over both OTLP protocols.
    let http = one_span(
        "tls-http",
        OtlpProtocol::HttpProtobuf,
        setup.url(addrs.otlp_http),
        tls.clone(),
    )
    .await;
    let grpc = one_span(
        "tls-grpc",
        OtlpProtocol::Grpc,
        setup.url(addrs.otlp_grpc),
        tls.clone(),
    )
    .await;
    for service in ["tls-http", "tls-grpc"] {
        until(&format!("{service}'s span stored"), || {
            rows_of(&setup.collector, &format!("work-{service}")) == 1
        })
        .await;
    }

    if mutual {
        // The receivers ask for the client certificate: without one nothing gets in.
        let anonymous = Telemetry::new()
            .service_name("anonymous")
            .endpoint(setup.url(addrs.otlp_http))
            .tls(ClientTls::new().ca_file(&setup.ca))
            .build()
            .expect("telemetry builds");
        anonymous
            .provider()
            .tracer("tls-test")
            .start("anonymous")
            .end();
        assert!(
            anonymous.flush().await.is_err(),
            "an export without a client certificate is refused"
        );
        assert_eq!(rows_of(&setup.collector, "anonymous"), 0);
    }

    // Beats, over both transports: one by the exporter's own settings (`for_telemetry`).
    let backend = tls_backend(&setup.pki).await;
    let follow = HealthReporter::for_telemetry(&http)
        .address(backend.addr.to_string())
        .interval(Duration::from_millis(100))
        .ttl(Duration::from_secs(5))
        .start()
        .expect("the reporter that follows the exporter starts");
    let beat_http = HealthReporter::new("inventory", "inventory-http")
        .tls(tls.clone())
        .http(&setup.url(addrs.otlp_http))
        .address(backend.addr.to_string())
        .interval(Duration::from_millis(100))
        .ttl(Duration::from_secs(5))
        .start()
        .expect("the HTTP reporter starts");
    let beat_grpc = HealthReporter::new("inventory", "inventory-grpc")
        .tls(tls.clone())
        .otlp_grpc(&setup.url(addrs.otlp_grpc))
        .address(backend.addr.to_string())
        .interval(Duration::from_millis(100))
        .ttl(Duration::from_secs(5))
        .start()
        .expect("the gRPC reporter starts");
    let registry = setup.collector.registry();
    until("both beats registered", || {
        let mut ids: Vec<String> = registry
            .instances(Some("inventory"))
            .into_iter()
            .map(|i| i.instance_id.to_string())
            .collect();
        ids.sort();
        ids == ["inventory-grpc", "inventory-http"]
    })
    .await;
    let tls_http_instance = http.resource_attribute("service.instance.id").unwrap();
    until("the reporter that follows the exporter registered", || {
        registry
            .instances(Some("tls-http"))
            .iter()
            .any(|i| *i.instance_id == *tls_http_instance)
    })
    .await;

    // The weights, from the gRPC Watch and from the long-poll, over TLS (the query API asks
    // for no client certificate; one is offered all the same).
    let watch = Balancer::builder("inventory")
        .collector_grpc(setup.url(addrs.query_grpc))
        .collector_tls(tls.clone())
        .build()
        .expect("the balancer builds");
    let poll = Balancer::builder("inventory")
        .collector_http(setup.url(addrs.query_http))
        .collector_tls(ClientTls::new().ca_file(&setup.ca))
        .build()
        .expect("the balancer builds");
    for (balancer, how) in [(&watch, "the Watch"), (&poll, "the long-poll")] {
        until(&format!("weights through {how}"), || {
            matches!(balancer.source(), WeightSource::Weights { .. })
                && balancer
                    .endpoints()
                    .iter()
                    .any(|e| e.address == backend.addr.to_string())
        })
        .await;
    }

    // Balanced calls to the instance over TLS, its certificate checked for `inventory`.
    let backend_tls = ClientTls::new().ca_file(&setup.ca);
    let client = Client::builder(TokioExecutor::new())
        .build::<_, RequestBody>(watch.https_connector(&backend_tls).unwrap());
    let service = tower::ServiceBuilder::new()
        .layer(BalanceLayer::new(watch.clone()))
        .layer(ClientLayer::new())
        .service(client);
    let request = http::Request::get("https://inventory/items")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = service.oneshot(request).await.expect("the HTTPS call");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"apples");
    assert_eq!(
        backend.hits.load(Ordering::Relaxed),
        1,
        "it reached the instance"
    );
    let channel = watch.tonic_channel_tls(&backend_tls).unwrap();
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the gRPC call over TLS");
    assert_eq!(
        answer.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    for health in [follow, beat_http, beat_grpc] {
        health.shutdown().await;
    }
    http.shutdown().await.unwrap();
    grpc.shutdown().await.unwrap();
    setup.collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_the_middleware_sends_arrives_over_tls() {
    everything_arrives(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_the_middleware_sends_arrives_over_mutual_tls() {
    everything_arrives(true).await;
}

/// A CA that did not sign the collector: no span and no beat arrives, each failure is counted
/// and said (with the reason), and the service keeps answering its callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_the_ca_did_not_sign_gets_nothing_and_the_service_goes_on() {
    let setup = setup(false).await;
    let addrs = setup.collector.addrs();
    let stranger = Pki::new();
    let wrong = ClientTls::new().ca_file(stranger.write("other-ca.pem", &stranger.ca_pem));

    let logs = wayfinder_collector::testing::LogCapture::default();
    let writer = logs.clone();
    let telemetry = Telemetry::new()
        .service_name("untrusting")
        .endpoint(setup.url(addrs.otlp_http))
        .tls(wrong.clone())
        .log_writer(tracing_subscriber::fmt::writer::BoxMakeWriter::new(
            move || writer.clone(),
        ))
        .init()
        .expect("telemetry installs: the files are fine, the CA is just not the collector's");
    let app = axum::Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(ServerLayer::new());
    for _ in 0..3 {
        let response = app
            .clone()
            .oneshot(
                http::Request::get("/hello")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "the service answers its callers");
        // The SERVER span ends with the body.
        let _ = response.into_body().collect().await.unwrap();
        let _ = telemetry.flush().await;
    }
    let (batches, spans) = telemetry.export_failures();
    assert!(
        batches >= 1 && spans >= 3,
        "counted: {batches} batches, {spans} spans\n{}",
        logs.text()
    );
    let text = logs.text();
    assert!(
        text.contains("span export failed") && text.contains("certificate"),
        "the log says why: {text}"
    );

    let health = HealthReporter::new("untrusting", "untrusting-1")
        .tls(wrong.clone())
        .http(&setup.url(addrs.otlp_http))
        .interval(Duration::from_millis(100))
        .ttl(Duration::from_secs(5))
        .start()
        .expect("the reporter starts");
    until("beats fail", || health.counts().1 >= 2).await;
    assert_eq!(health.counts().0, 0, "no beat was delivered");
    let text = logs.text();
    let said: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("health beats not delivered"))
        .collect();
    assert_eq!(
        said.len(),
        1,
        "one warning for the failures within 10 s: {text}"
    );
    assert!(said[0].contains("certificate"), "saying why: {}", said[0]);

    // OTLP/gRPC alike.
    let grpc = Telemetry::new()
        .service_name("untrusting-grpc")
        .protocol(OtlpProtocol::Grpc)
        .endpoint(setup.url(addrs.otlp_grpc))
        .tls(wrong.clone())
        .build()
        .expect("telemetry builds");
    grpc.provider().tracer("tls-test").start("lost").end();
    let error = grpc.flush().await.expect_err("the export fails");
    assert_eq!(grpc.export_failures(), (1, 1), "counted: {error}");
    assert_eq!(rows_of(&setup.collector, "lost"), 0, "no span arrived");
    assert_eq!(
        rows_of(&setup.collector, "GET /hello"),
        0,
        "no span arrived"
    );
    assert!(
        setup
            .collector
            .registry()
            .instances(Some("untrusting"))
            .is_empty(),
        "no beat arrived"
    );
    health.shutdown().await;
    setup.collector.shutdown().await;
}

/// A built example of `wayfinder-middleware` (`cargo test --workspace` builds them next to
/// this test's binary).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("this test's binary");
    let debug = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/debug");
    let path = debug.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test --workspace` (or `cargo build -p wayfinder-middleware --examples`)",
        path.display()
    );
    path
}

/// A child process, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `orders` (OTLP/HTTP) and `inventory` (OTLP/gRPC, its endpoint given without a scheme,
/// which the specification makes TLS) examples, unchanged, against a collector that asks for
/// client certificates, with nothing but the `OTEL_*` variables: both register through their
/// beats and their spans arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_reach_a_tls_collector_with_only_the_otel_variables() {
    let setup = setup(true).await;
    let addrs = setup.collector.addrs();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (orders_addr, inventory_addr) = (free(), free());
    let tls_vars = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", setup.ca.clone()),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            setup.identity.0.clone(),
        ),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", setup.identity.1.clone()),
    ];
    let run = |name: &str, vars: &[(&str, String)]| {
        let mut command = std::process::Command::new(example(name));
        command
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (key, value) in &tls_vars {
            command.env(key, value);
        }
        for (key, value) in vars {
            command.env(key, value);
        }
        Child(command.spawn().expect("the example starts"))
    };
    let _orders = run(
        "orders",
        &[
            ("OTEL_SERVICE_NAME", "orders-tls".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", setup.url(addrs.otlp_http)),
            ("ORDERS_ADDR", orders_addr.to_string()),
            ("INVENTORY_URL", format!("http://{inventory_addr}")),
        ],
    );
    let _inventory = run(
        "inventory",
        &[
            ("OTEL_SERVICE_NAME", "inventory-tls".into()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", addrs.otlp_grpc.to_string()),
            ("INVENTORY_ADDR", inventory_addr.to_string()),
            ("ORDERS_URL", format!("http://{orders_addr}")),
        ],
    );
    let registry = setup.collector.registry();
    for service in ["orders-tls", "inventory-tls"] {
        for _ in 0..200 {
            if !registry.instances(Some(service)).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !registry.instances(Some(service)).is_empty(),
            "{service} registered over TLS within 10 s"
        );
    }
    // An order: orders (HTTP) reserves at inventory (gRPC), which asks orders for a price.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::post(format!("http://{orders_addr}/orders/apple?quantity=1"))
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("orders answers")
        .expect("orders answers");
    assert!(response.status().is_success(), "{}", response.status());
    for name in ["POST /orders/{sku}", "inventory.v1.Inventory/Reserve"] {
        until(&format!("the {name} span stored"), || {
            rows_of(&setup.collector, name) >= 1
        })
        .await;
    }
    setup.collector.shutdown().await;
}
