//! Graceful shutdown that deregisters first, end to end: three axum instances reporting their
//! health to a real collector, a client load through the balancer, and one instance leaving in
//! the middle (`down`, drain, stop accepting, finish in flight): no request fails. And the gRPC
//! health service following the same state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use wayfinder_e2e::{loopback_config, start};
use wayfinder_middleware::balance::{BalanceLayer, Balancer, RequestBody};
use wayfinder_middleware::health::{GracefulShutdown, Health, HealthReporter};

struct Instance {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    shutdown: GracefulShutdown,
    server: tokio::task::JoinHandle<
        Result<std::io::Result<()>, wayfinder_middleware::health::DeadlinePassed>,
    >,
}

async fn instance(i: usize, otlp_http: SocketAddr) -> Instance {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = HealthReporter::new("api", format!("api-{i}"))
        .address(addr.to_string())
        .http(&format!("http://{otlp_http}"))
        .interval(Duration::from_millis(200))
        .ttl(Duration::from_secs(2))
        .start()
        .unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let app = Router::new()
        .route(
            "/work",
            get(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    "done"
                }
            }),
        )
        .merge(health.routes());
    let shutdown = GracefulShutdown::new()
        .health(health)
        .drain(Duration::from_secs(1))
        .deadline(Duration::from_secs(5));
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.signal());
            shutdown.run(server).await
        })
    };
    Instance {
        addr,
        received,
        shutdown,
        server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_leaving_under_load_fails_no_request() {
    let mut config = loopback_config();
    config.weights.weight_update_period = Duration::from_millis(100);
    let collector = start(config).await;
    let addrs = collector.addrs();
    let mut instances = Vec::new();
    for i in 0..3 {
        instances.push(instance(i, addrs.otlp_http).await);
    }
    let balancer = Balancer::builder("api")
        .seed(instances.iter().map(|i| i.addr.to_string()))
        .collector_grpc(format!("http://{}", addrs.query_grpc))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while balancer
        .endpoints()
        .iter()
        .filter(|e| e.weight.is_some())
        .count()
        < 3
    {
        assert!(tokio::time::Instant::now() < deadline, "the three register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let client = Client::builder(TokioExecutor::new()).build_http::<RequestBody>();
    let service = tower::ServiceBuilder::new()
        .layer(BalanceLayer::new(balancer.clone()))
        .service(client);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (service, stop, ok, failed) =
                (service.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = http::Request::get("http://api/work")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let outcome = match service.clone().oneshot(request).await {
                        Ok(response) if response.status() == 200 => {
                            response.into_body().collect().await.is_ok()
                        }
                        _ => false,
                    };
                    if outcome { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let leaving = instances.remove(0);
    let before = leaving.received.load(Ordering::Relaxed);
    assert!(before > 0, "it served before leaving");
    leaving.shutdown.trigger();
    let result = leaving.server.await.unwrap();
    assert!(
        matches!(result, Ok(Ok(()))),
        "it finished what was in flight within the deadline: {result:?}"
    );
    assert!(leaving.shutdown.is_stopping());
    let served = leaving.received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(ok.load(Ordering::Relaxed) > 200, "the load went on");
    assert!(
        balancer
            .endpoints()
            .iter()
            .all(|e| e.address != leaving.addr.to_string()),
        "the balancer dropped it"
    );
    assert_eq!(
        leaving.received.load(Ordering::Relaxed),
        served,
        "nothing after it stopped"
    );
    for instance in &instances {
        instance.shutdown.trigger();
    }
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_health_service_follows_the_reporter() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    let health: Health = HealthReporter::new("inventory", "inventory-1")
        .http(&format!("http://{}", addrs.otlp_http))
        .interval(Duration::from_millis(100))
        .ttl(Duration::from_secs(1))
        .start()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = health.tonic_service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let check = |client: &mut HealthClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while check(&mut client).await != ServingStatus::Serving {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SERVING while ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    health.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while check(&mut client).await != ServingStatus::NotServing {
        assert!(
            tokio::time::Instant::now() < deadline,
            "NOT_SERVING once leaving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    collector.shutdown().await;
}
