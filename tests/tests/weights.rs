//! Weights over HTTP: instances registered by heartbeats, spans over OTLP/HTTP, then
//! `GET /api/v1/weights/{service}` and its long-poll, with 1,000 watchers at once; and the same
//! over gRPC `Watch`.

use std::time::Duration;

use prost::Message as _;
use serde_json::{Value, json};
use wayfinder_collector::testing::{span, trace_request, with_instance_id};
use wayfinder_e2e::{http_client, loopback_config, metrics_text, start};

/// 50 SERVER spans of `instance`, each lasting `ms`.
fn server_spans(instance: &str, ms: u64, seed: u8) -> Vec<u8> {
    let spans = (0..50u64)
        .map(|i| {
            let mut s = span(
                [seed; 16],
                i + 1,
                "GET /cart",
                1_000,
                1_000 + ms * 1_000_000,
            );
            s.kind = 2;
            s
        })
        .collect();
    with_instance_id(trace_request(Some("cart"), spans), instance).encode_to_vec()
}

/// A collector that updates weights every 50 ms, with cart-1..3 registered by heartbeats.
async fn start_with_three() -> (wayfinder_collector::RunningCollector, reqwest::Client) {
    let mut config = loopback_config();
    config.weights.weight_update_period = Duration::from_millis(50);
    let collector = start(config).await;
    let client = http_client();
    register_three(&client, collector.addrs().otlp_http).await;
    (collector, client)
}

/// Heartbeats of cart-1..3 (passing, at 10.0.0.N:8080) to `POST /v1/health`.
async fn register_three(client: &reqwest::Client, otlp_http: std::net::SocketAddr) {
    for i in 1..=3 {
        let beat = json!({"service": "cart", "instance_id": format!("cart-{i}"),
                          "address": format!("10.0.0.{i}:8080"), "status": "passing", "ttl_ms": 60_000});
        let response = client
            .post(format!("http://{otlp_http}/v1/health"))
            .json(&beat)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_follow_latency_and_long_polls_wake() {
    let (collector, client) = start_with_three().await;
    let addrs = collector.addrs();
    let url = format!("http://{}/api/v1/weights/cart", addrs.query_http);
    let get = |query: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client.get(format!("{url}{query}")).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    // The updates publish the three instances at the mean weight (no traffic yet); the beats
    // may straddle an update, so follow the versions until all three are in.
    let mut first = get("?after_version=0&wait=10s".into()).await;
    for _ in 0..100 {
        if first["endpoints"].as_array().unwrap().len() == 3 {
            break;
        }
        let v = first["version"].as_u64().unwrap();
        first = get(format!("?after_version={v}&wait=10s")).await;
    }
    let endpoints = first["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3);
    for endpoint in endpoints {
        assert!((endpoint["weight"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert!(endpoint["reason"].as_str().unwrap().contains("low volume"));
    }
    assert_eq!(endpoints[0]["address"], "10.0.0.1:8080");
    assert_eq!(first["ttl_ms"], 60_000);
    let version = first["version"].as_u64().unwrap();

    // 1,000 watchers (a connection each) wait for a newer version.
    let watchers: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(get(format!("?after_version={version}&wait=20s"))))
        .collect();
    let otlp = format!("http://{}/v1/traces", addrs.otlp_http);
    for (instance, ms, seed) in [("cart-1", 10, 1), ("cart-2", 10, 2), ("cart-3", 50, 3)] {
        let response = client
            .post(&otlp)
            .header("content-type", "application/x-protobuf")
            .body(server_spans(instance, ms, seed))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    for watcher in watchers {
        let answer = watcher.await.unwrap();
        assert!(
            answer["version"].as_u64().unwrap() > version,
            "every watcher wakes: {answer}"
        );
    }

    // Follow the versions until cart-3 (5x slower) is down to at most a third of a peer.
    let mut latest = first;
    for _ in 0..100 {
        let v = latest["version"].as_u64().unwrap();
        latest = get(format!("?after_version={v}&wait=5s")).await;
        let weight = |i: usize| latest["endpoints"][i]["weight"].as_f64().unwrap();
        if weight(2) <= weight(0) / 3.0 {
            break;
        }
    }
    let weight = |i: usize| latest["endpoints"][i]["weight"].as_f64().unwrap();
    assert!(weight(2) <= weight(0) / 3.0, "{latest:#}");
    assert!((weight(0) + weight(1) + weight(2) - 1.0).abs() < 1e-9);
    assert!(
        latest["endpoints"][2]["reason"]
            .as_str()
            .unwrap()
            .contains("slow")
    );

    // A long-poll for a version that will not come answers the latest when its wait ends.
    let future = latest["version"].as_u64().unwrap() + 1_000_000;
    let asked = std::time::Instant::now();
    let answer = get(format!("?after_version={future}&wait=300ms")).await;
    assert!(asked.elapsed() >= Duration::from_millis(300), "it waited");
    assert!(answer["version"].as_u64().unwrap() >= latest["version"].as_u64().unwrap());
    assert!(answer["version"].as_u64().unwrap() < future);

    let missing = client
        .get(format!("http://{}/api/v1/weights/nobody", addrs.query_http))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let metrics = metrics_text(&collector).await;
    assert!(metrics.contains(r#"wayfinder_endpoint_weight{service="cart",instance="cart-3"}"#));

    // A long-poll in flight does not hold the shutdown: it is answered at once.
    let pending = tokio::spawn(get(format!("?after_version={future}&wait=30s")));
    let _ = client
        .get(format!("http://{}/healthz", addrs.query_http))
        .send()
        .await;
    tokio::time::timeout(Duration::from_secs(10), collector.shutdown())
        .await
        .expect("shutdown does not wait for long-polls");
    let _ = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the long-poll ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_grpc_watchers_see_the_first_snapshot_and_the_next_version() {
    use wayfinder_api::grpc::weights_client::WeightsClient;
    use wayfinder_api::grpc::{GetWeightsRequest, WatchWeightsRequest};

    let (collector, client) = start_with_three().await;
    let addrs = collector.addrs();
    // Wait until an update has all three instances (the beats may straddle one).
    let mut get = WeightsClient::connect(format!("http://{}", addrs.query_grpc))
        .await
        .expect("connects");
    let mut seen = 0;
    for _ in 0..200 {
        let mut watch = get
            .watch(WatchWeightsRequest {
                service: "cart".into(),
                after_version: 0,
            })
            .await
            .unwrap()
            .into_inner();
        seen = watch.message().await.unwrap().unwrap().endpoints.len();
        if seen == 3 {
            break;
        }
        // The next version comes within an update period.
        let _ = watch.message().await;
    }
    assert_eq!(seen, 3);
    let endpoint = format!("http://{}", addrs.query_grpc);
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            WeightsClient::connect(endpoint.clone())
                .await
                .expect("connects"),
        );
    }

    // 1,000 watchers over 4 connections: each gets the current snapshot, then a newer one.
    let mut streams = Vec::new();
    for i in 0..1000 {
        let mut client = channels[i % 4].clone();
        let request = WatchWeightsRequest {
            service: "cart".into(),
            after_version: 0,
        };
        streams.push(
            client
                .watch(request)
                .await
                .expect("watch opens")
                .into_inner(),
        );
    }
    let mut first_versions = Vec::new();
    for stream in &mut streams {
        let first = stream
            .message()
            .await
            .expect("a message")
            .expect("not ended");
        assert_eq!(first.endpoints.len(), 3);
        first_versions.push(first.version);
    }
    let otlp = format!("http://{}/v1/traces", addrs.otlp_http);
    for (instance, ms, seed) in [("cart-1", 10, 1), ("cart-2", 10, 2), ("cart-3", 50, 3)] {
        client
            .post(&otlp)
            .header("content-type", "application/x-protobuf")
            .body(server_spans(instance, ms, seed))
            .send()
            .await
            .unwrap();
    }
    let watchers: Vec<_> = streams
        .into_iter()
        .zip(first_versions)
        .map(|(mut stream, first)| {
            tokio::spawn(async move {
                let next = stream
                    .message()
                    .await
                    .expect("a message")
                    .expect("not ended");
                assert!(next.version > first, "a newer version");
                // Keep the stream open: shutdown must end it.
                (next.version, stream)
            })
        })
        .collect();
    let mut open = Vec::new();
    for watcher in watchers {
        open.push(watcher.await.unwrap());
    }
    assert_eq!(open.len(), 1000);

    let weights = get
        .get(GetWeightsRequest {
            service: "cart".into(),
        })
        .await
        .expect("cart is known")
        .into_inner();
    let total: f64 = weights.endpoints.iter().map(|e| e.weight).sum();
    assert!((total - 1.0).abs() < 1e-9);
    let missing = get
        .get(GetWeightsRequest {
            service: "nobody".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Shutdown does not wait for the watchers: their streams end.
    tokio::time::timeout(Duration::from_secs(20), collector.shutdown())
        .await
        .expect("shutdown completes with watchers connected");
    let (_, mut stream) = open.pop().unwrap();
    // Versions sent before the shutdown may still be buffered; then the stream ends.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
    assert!(drained.is_ok(), "the stream ended");
}
