//! The loop closed end to end on loopback: real instances registered in a real collector by
//! heartbeats, a client whose CLIENT spans reach the collector over OTLP, and the balancer
//! between them reading the collector's weights over the gRPC `Watch`.
//!
//! HTTP: five axum instances, one 5× slower and one failing fast on 30% of its requests; a
//! healthy one then sends `down`; then the collector is stopped. gRPC: three tonic instances,
//! one slow, one leaving.

/// The generated gRPC code of the middleware's `inventory` example (included, not a module
/// file, so that rustfmt leaves the generated text as it is).
#[allow(dead_code, unreachable_pub, missing_docs, clippy::all)]
mod inventory {
    include!("../../middleware/examples/proto/inventory.v1.rs");
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::json;
use tower::ServiceExt;
use wayfinder_e2e::{http_client, loopback_config, start};
use wayfinder_middleware::balance::{BalanceLayer, Balancer, RequestBody, WeightSource};
use wayfinder_middleware::{ClientLayer, OtlpProtocol, Telemetry};

/// How one instance behaves.
struct Behaviour {
    delay: Duration,
    /// Share of requests answered at once with a 500.
    fail_rate: f64,
}

/// One instance on loopback, counting what it receives.
struct Instance {
    id: String,
    addr: SocketAddr,
    received: Arc<AtomicU64>,
}

async fn http_instance(id: &str, behaviour: Behaviour) -> Instance {
    let received = Arc::new(AtomicU64::new(0));
    let state = (received.clone(), Arc::new(behaviour), id.to_owned());
    let app = Router::new().route("/work", get(work)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Instance {
        id: id.to_owned(),
        addr,
        received,
    }
}

async fn work(
    State((received, behaviour, id)): State<(Arc<AtomicU64>, Arc<Behaviour>, String)>,
) -> impl IntoResponse {
    received.fetch_add(1, Ordering::Relaxed);
    let headers = [("x-instance", id)];
    if fastrand::f64() < behaviour.fail_rate {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, headers, "failed");
    }
    tokio::time::sleep(behaviour.delay).await;
    (http::StatusCode::OK, headers, "done")
}

/// Registers `instance` of `service` with one heartbeat (`status`).
async fn beat(otlp_http: SocketAddr, service: &str, instance: &Instance, status: &str) {
    let beat = json!({"service": service, "instance_id": instance.id,
                      "address": instance.addr.to_string(), "status": status, "ttl_ms": 120_000});
    let response = http_client()
        .post(format!("http://{otlp_http}/v1/health"))
        .json(&beat)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "heartbeat of {}", instance.id);
}

/// What the clients saw, by phase.
#[derive(Default)]
struct Outcomes {
    /// `(phase, instance header or None for a transport error, status)`.
    results: Mutex<Vec<(u32, Option<String>, u16)>>,
}

impl Outcomes {
    fn transport_errors(&self, phase: u32) -> usize {
        let results = self.results.lock();
        results
            .iter()
            .filter(|r| r.0 == phase && r.1.is_none())
            .count()
    }
    fn count(&self, phase: u32) -> usize {
        self.results.lock().iter().filter(|r| r.0 == phase).count()
    }
}

fn snapshot(instances: &[Instance]) -> Vec<u64> {
    instances
        .iter()
        .map(|i| i.received.load(Ordering::Relaxed))
        .collect()
}

/// Waits (bounded) until `check` holds, polling every 50 ms.
async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `instances[0]` of `service` sends `down`: once the balancer has the update without it, it
/// gets no new request (over 2 s of traffic). Returns what it had received by then.
async fn depart(
    otlp_http: SocketAddr,
    service: &str,
    balancer: &Balancer,
    instances: &[Instance],
) -> u64 {
    beat(otlp_http, service, &instances[0], "down").await;
    let leaving = instances[0].addr.to_string();
    eventually(
        "the departure reaches the balancer",
        Duration::from_secs(5),
        || balancer.endpoints().iter().all(|e| e.address != leaving),
    )
    .await;
    // Requests already on their way may still arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_update = snapshot(instances)[0];
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        snapshot(instances)[0],
        after_update,
        "no new request for the instance that sent down"
    );
    after_update
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_traffic_leaves_slow_failing_and_departing_instances() {
    let mut config = loopback_config();
    config.weights.weight_update_period = Duration::from_millis(250);
    config.weights.weight_ttl = Duration::from_secs(3);
    let collector = start(config).await;
    let addrs = collector.addrs();

    let mut instances = Vec::new();
    for i in 0..5 {
        let behaviour = match i {
            3 => Behaviour {
                delay: Duration::from_millis(50),
                fail_rate: 0.0,
            },
            4 => Behaviour {
                delay: Duration::from_millis(10),
                fail_rate: 0.3,
            },
            _ => Behaviour {
                delay: Duration::from_millis(10),
                fail_rate: 0.0,
            },
        };
        let instance = http_instance(&format!("backend-{i}"), behaviour).await;
        beat(addrs.otlp_http, "backend", &instance, "passing").await;
        instances.push(instance);
    }
    let seed: Vec<String> = instances.iter().map(|i| i.addr.to_string()).collect();

    // The client: its own thread and runtime with its own telemetry, 12 requests at a time.
    let phase = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Outcomes::default());
    let (balancer_tx, balancer_rx) = tokio::sync::oneshot::channel();
    let client_thread = {
        let (phase, stop, outcomes) = (phase.clone(), stop.clone(), outcomes.clone());
        let otlp = format!("http://{}", addrs.otlp_grpc);
        let query_grpc = format!("http://{}", addrs.query_grpc);
        let query_http = format!("http://{}", addrs.query_http);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let telemetry = Telemetry::new()
                    .service_name("frontend")
                    .endpoint(otlp)
                    .protocol(OtlpProtocol::Grpc)
                    .build()
                    .unwrap();
                let _default = telemetry.set_default();
                let balancer = Balancer::builder("backend")
                    .seed(seed)
                    .collector_grpc(query_grpc)
                    .collector_http(query_http)
                    .build()
                    .unwrap();
                balancer_tx.send(balancer.clone()).unwrap();
                let client = Client::builder(TokioExecutor::new()).build_http::<RequestBody>();
                let service = tower::ServiceBuilder::new()
                    .layer(BalanceLayer::new(balancer))
                    .layer(ClientLayer::new())
                    .service(client);
                let workers: Vec<_> = (0..12)
                    .map(|_| {
                        let (service, phase, stop, outcomes) = (
                            service.clone(),
                            phase.clone(),
                            stop.clone(),
                            outcomes.clone(),
                        );
                        tokio::spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                let request = http::Request::get("http://backend/work")
                                    .body(Empty::<Bytes>::new())
                                    .unwrap();
                                let now = phase.load(Ordering::Relaxed) as u32;
                                let result = service.clone().oneshot(request).await;
                                let entry = match result {
                                    Ok(response) => {
                                        let instance = response
                                            .headers()
                                            .get("x-instance")
                                            .map(|v| v.to_str().unwrap().to_owned());
                                        let status = response.status().as_u16();
                                        let _ = response.into_body().collect().await;
                                        (now, instance, status)
                                    }
                                    Err(_) => (now, None, 0),
                                };
                                outcomes.results.lock().push(entry);
                            }
                        })
                    })
                    .collect();
                for worker in workers {
                    worker.await.unwrap();
                }
                drop(_default);
                // The collector is gone by now: the flush may fail, which is fine here.
                let _ = tokio::time::timeout(Duration::from_secs(2), telemetry.shutdown()).await;
            });
        })
    };
    let balancer = balancer_rx.await.unwrap();

    // Phase 1: within 10 s the slow and the failing instance get clearly less traffic.
    eventually("weights from the collector", Duration::from_secs(5), || {
        matches!(balancer.source(), WeightSource::Weights { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at_5s = snapshot(&instances);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at_10s = snapshot(&instances);
    let shares: Vec<u64> = at_10s.iter().zip(&at_5s).map(|(b, a)| b - a).collect();
    eprintln!("HTTP requests per instance, seconds 5 to 10: {shares:?}");
    let healthy = (shares[0] + shares[1] + shares[2]) as f64 / 3.0;
    assert!(healthy > 50.0, "the healthy instances served: {shares:?}");
    assert!(
        (shares[3] as f64) < 0.5 * healthy,
        "the 5× slower instance gets clearly less: {shares:?}"
    );
    assert!(
        (shares[4] as f64) < 0.5 * healthy,
        "the instance failing 30% gets clearly less: {shares:?}"
    );
    for &share in &shares[..3] {
        let share = share as f64;
        assert!(
            (share - healthy).abs() < 0.35 * healthy,
            "no herding onto one healthy instance: {shares:?}"
        );
    }
    let view = balancer.endpoints();
    let weight = |addr: SocketAddr| {
        view.iter()
            .find(|e| e.address == addr.to_string())
            .and_then(|e| e.weight)
            .unwrap_or(f64::NAN)
    };
    assert!(
        weight(instances[3].addr) < weight(instances[0].addr),
        "the collector's weights moved too: {view:?}"
    );
    assert_eq!(
        outcomes.transport_errors(1),
        0,
        "no call failed in transport"
    );

    // Phase 2: backend-0 leaves; from the next update on it gets nothing, and no call fails.
    phase.store(2, Ordering::Relaxed);
    let after_update = depart(addrs.otlp_http, "backend", &balancer, &instances).await;
    assert_eq!(
        outcomes.transport_errors(2),
        0,
        "its departure failed no call"
    );
    assert!(outcomes.count(2) > 100, "traffic went on");

    // Phase 3: the collector stops. The client keeps its last weights, then (TTL 3 s) falls
    // back to Peak-EWMA, and no call fails for it.
    phase.store(3, Ordering::Relaxed);
    assert!(
        matches!(balancer.source(), WeightSource::Weights { .. }),
        "fresh weights before the stop: {:?}",
        balancer.source()
    );
    // The last update may still arrive while the collector stops: take the version once it
    // has stopped.
    collector.shutdown().await;
    let version = match balancer.source() {
        WeightSource::Weights { version } => version,
        other => panic!("the last weights hold after the stop: {other:?}"),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        balancer.source(),
        WeightSource::Weights { version },
        "the last weights hold until their TTL, and nothing newer comes"
    );
    eventually("weights turn stale", Duration::from_secs(5), || {
        balancer.source() == WeightSource::Stale { version }
    })
    .await;
    let before = outcomes.count(3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        outcomes.count(3) > before + 100,
        "traffic goes on under Peak-EWMA"
    );
    assert_eq!(
        outcomes.transport_errors(3),
        0,
        "the collector's absence failed no call"
    );
    let departed = snapshot(&instances)[0];
    assert_eq!(departed, after_update, "the departed instance stays out");

    stop.store(true, Ordering::Relaxed);
    client_thread.join().unwrap();
}

// ---- gRPC -----------------------------------------------------------------------------------

use inventory::inventory_client::InventoryClient;
use inventory::inventory_server::{Inventory, InventoryServer};
use inventory::{ReserveReply, ReserveRequest};

struct Stock {
    delay: Duration,
    received: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Inventory for Stock {
    async fn reserve(
        &self,
        request: tonic::Request<ReserveRequest>,
    ) -> Result<tonic::Response<ReserveReply>, tonic::Status> {
        self.received.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.delay).await;
        Ok(tonic::Response::new(ReserveReply {
            remaining: request.into_inner().quantity,
            unit_price_cents: 100,
        }))
    }
}

async fn grpc_instance(id: &str, delay: Duration) -> Instance {
    let received = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stock = Stock {
        delay,
        received: received.clone(),
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(InventoryServer::new(stock))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    Instance {
        id: id.to_owned(),
        addr,
        received,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_traffic_leaves_slow_and_departing_instances() {
    let mut config = loopback_config();
    config.weights.weight_update_period = Duration::from_millis(250);
    let collector = start(config).await;
    let addrs = collector.addrs();
    let mut instances = Vec::new();
    for (i, ms) in [10, 10, 50].into_iter().enumerate() {
        let instance = grpc_instance(&format!("inventory-{i}"), Duration::from_millis(ms)).await;
        beat(addrs.otlp_http, "inventory", &instance, "passing").await;
        instances.push(instance);
    }
    let balancer = Balancer::builder("inventory")
        .seed([instances[0].addr.to_string()])
        .collector_grpc(format!("http://{}", addrs.query_grpc))
        .idempotent_grpc_methods(["/inventory.v1.Inventory/Reserve"])
        .build()
        .unwrap();
    eventually(
        "the three instances from the collector",
        Duration::from_secs(5),
        || balancer.endpoints().len() == 3,
    )
    .await;
    let client = InventoryClient::new(balancer.tonic_channel());
    let phase = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (mut client, phase, stop, failures) = (
                client.clone(),
                phase.clone(),
                stop.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = ReserveRequest {
                        sku: "apple".into(),
                        quantity: 1,
                    };
                    if let Err(status) = client.reserve(request).await {
                        failures
                            .lock()
                            .push((phase.load(Ordering::Relaxed), status.to_string()));
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_3s = snapshot(&instances);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let shares: Vec<u64> = snapshot(&instances)
        .iter()
        .zip(&at_3s)
        .map(|(b, a)| b - a)
        .collect();
    eprintln!("RPCs per instance, seconds 3 to 7: {shares:?}");
    let healthy = (shares[0] + shares[1]) as f64 / 2.0;
    assert!(healthy > 50.0, "the healthy instances served: {shares:?}");
    assert!(
        (shares[2] as f64) < 0.5 * healthy,
        "the 5× slower tonic instance gets clearly less: {shares:?}"
    );

    phase.store(2, Ordering::Relaxed);
    depart(addrs.otlp_http, "inventory", &balancer, &instances).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        failures.lock().is_empty(),
        "no RPC failed: {:?}",
        failures.lock()
    );
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_watcher_returns_to_the_seed_when_the_service_disappears() {
    let mut config = loopback_config();
    config.weights.weight_update_period = Duration::from_millis(100);
    config.weights.weight_ttl = Duration::from_secs(2);
    let collector = start(config).await;
    let addrs = collector.addrs();
    let instance = grpc_instance("inventory-9", Duration::from_millis(1)).await;
    beat(addrs.otlp_http, "inventory", &instance, "passing").await;
    let balancer = Balancer::builder("inventory")
        .seed(["127.0.0.1:9"])
        .collector_grpc(format!("http://{}", addrs.query_grpc))
        .build()
        .unwrap();
    eventually("weights from the collector", Duration::from_secs(5), || {
        matches!(balancer.source(), WeightSource::Weights { .. })
    })
    .await;
    // Its only instance leaves: the Watch falls silent, the balancer asks Get after a TTL.
    beat(addrs.otlp_http, "inventory", &instance, "down").await;
    eventually("the seed is back", Duration::from_secs(6), || {
        balancer.source() == WeightSource::Seed
    })
    .await;
    let addresses: Vec<_> = balancer
        .endpoints()
        .into_iter()
        .map(|e| e.address)
        .collect();
    assert_eq!(addresses, ["127.0.0.1:9"]);
    collector.shutdown().await;
}
