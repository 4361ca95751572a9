//! The middleware's health reporter against a real collector on loopback: registration over
//! `POST /v1/health` and over OTLP/gRPC logs, warning then critical from a failing check,
//! `down` on shutdown, readiness routes, and backoff while the collector is away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use wayfinder_e2e::{http_client, loopback_config, start};
use wayfinder_middleware::health::{HealthReporter, Status};
use wayfinder_middleware::{OtlpProtocol, Telemetry};

/// The instance `id` as `GET /api/v1/instances` shows it, if it is there.
async fn instance(query_http: std::net::SocketAddr, id: &str) -> Option<Value> {
    let url = format!("http://{query_http}/api/v1/instances");
    let body: Value = http_client()
        .get(url)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let list = body
        .get("instances")
        .and_then(Value::as_array)
        .cloned()
        .or_else(|| body.as_array().cloned())?;
    list.into_iter().find(|i| i["instance_id"] == id)
}

/// Polls (every 50 ms, at most `limit`) until the instance matches `check`.
async fn wait_for(
    query_http: std::net::SocketAddr,
    id: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(Option<&Value>) -> bool,
) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = instance(query_http, id).await;
        if check(seen.as_ref()) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}, last seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_registers_degrades_and_leaves() {
    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let health = HealthReporter::new("orders", "orders-1")
        .address("127.0.0.1:8080")
        .http(&format!("http://{}", addrs.otlp_http))
        .interval(Duration::from_millis(200))
        .ttl(Duration::from_secs(2))
        .failures_before_critical(2)
        .check(
            "database",
            Duration::from_millis(300),
            Duration::from_millis(100),
            move || {
                let f = f.clone();
                async move {
                    if f.load(Ordering::Relaxed) {
                        Err("connection refused".to_owned())
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .start()
        .expect("the reporter starts");
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let seen = wait_for(
        addrs.query_http,
        "orders-1",
        Duration::from_secs(3),
        "registered",
        |i| i.is_some_and(|i| i["status"] == "passing"),
    )
    .await
    .unwrap();
    assert_eq!(seen["service"], "orders");
    assert_eq!(seen["address"], "127.0.0.1:8080");
    assert_eq!(seen["ttl_ms"], 2000);
    assert_eq!(seen["source"], "health");
    let seq = seen["seq"].as_u64().unwrap();
    assert!(
        seq + 60_000 >= started_ms,
        "seq starts at the wall clock in ms, so it grows across restarts: {seq}"
    );

    // Readiness follows the same state.
    let app = health.routes::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let probes = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let ready = |path: &'static str| async move {
        http_client()
            .get(format!("http://{probes}{path}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ready("/readyz").await, 200);

    failing.store(true, Ordering::Relaxed);
    wait_for(
        addrs.query_http,
        "orders-1",
        Duration::from_secs(3),
        "warning",
        |i| i.is_some_and(|i| i["status"] == "warning"),
    )
    .await;
    let critical = wait_for(
        addrs.query_http,
        "orders-1",
        Duration::from_secs(3),
        "critical",
        |i| i.is_some_and(|i| i["status"] == "critical"),
    )
    .await
    .unwrap();
    assert!(
        critical["output"]
            .as_str()
            .is_some_and(|o| o.contains("database: connection refused")),
        "the output says why: {critical}"
    );
    assert_eq!(health.status(), Status::Critical);
    assert_eq!(
        ready("/readyz").await,
        503,
        "a critical instance is not ready"
    );
    assert_eq!(ready("/livez").await, 503);

    failing.store(false, Ordering::Relaxed);
    wait_for(
        addrs.query_http,
        "orders-1",
        Duration::from_secs(3),
        "passing again",
        |i| i.is_some_and(|i| i["status"] == "passing"),
    )
    .await;

    health.shutdown().await;
    assert_eq!(health.status(), Status::Down);
    assert_eq!(ready("/readyz").await, 503, "not ready once leaving");
    wait_for(
        addrs.query_http,
        "orders-1",
        Duration::from_secs(3),
        "removed on down",
        |i| i.is_none(),
    )
    .await;
    let (sent, _) = health.counts();
    assert!(sent >= 5, "beats were delivered: {sent}");
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_also_arrive_as_otlp_log_events_where_the_spans_go() {
    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    // The tracer's settings: the reporter beats where the spans go, under the same names.
    let telemetry = Telemetry::new()
        .service_name("inventory")
        .instance_id("inventory-7")
        .endpoint(format!("http://{}", addrs.otlp_grpc))
        .protocol(OtlpProtocol::Grpc)
        .build()
        .expect("telemetry builds");
    let health = HealthReporter::for_telemetry(&telemetry)
        .address("127.0.0.1:50051")
        .interval(Duration::from_millis(200))
        .ttl(Duration::from_secs(2))
        .start()
        .expect("the reporter starts");
    let seen = wait_for(
        addrs.query_http,
        "inventory-7",
        Duration::from_secs(3),
        "registered over OTLP",
        |i| i.is_some_and(|i| i["status"] == "passing"),
    )
    .await
    .unwrap();
    assert_eq!(
        seen["address"], "127.0.0.1:50051",
        "server.address and server.port"
    );
    health.shutdown().await;
    wait_for(
        addrs.query_http,
        "inventory-7",
        Duration::from_secs(3),
        "removed",
        |i| i.is_none(),
    )
    .await;
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_backed_off_and_never_blocks() {
    // Nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let health = HealthReporter::new("orders", "orders-2")
        .http(&format!("http://{dead}"))
        .interval(Duration::from_millis(100))
        .ttl(Duration::from_millis(800))
        .start()
        .expect("the reporter starts");
    let started = tokio::time::Instant::now();
    assert_eq!(
        health.status(),
        Status::Passing,
        "reading the state never waits"
    );
    // Generous: on a loaded 2-core machine the test thread itself may be preempted for more
    // than 10 ms (this bound failed so in a CI run); a read that waited for a send would wait
    // for the send timeout (2 s).
    assert!(started.elapsed() < Duration::from_millis(500));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (sent, failed) = health.counts();
    assert_eq!(sent, 0);
    // Without backoff: about 30 tries in 3 s. With it: the waits grow to 0.4–0.8 s.
    assert!(failed >= 3, "it keeps trying: {failed}");
    assert!(failed <= 10, "but backs off: {failed} tries in 3 s");
    let stopping = tokio::time::Instant::now();
    health.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "shutdown gives up on an unreachable collector within the send timeout"
    );
}
