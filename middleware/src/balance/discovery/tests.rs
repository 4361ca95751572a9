use super::*;

#[test]
fn reconnect_backoff_doubles_to_its_cap_under_full_jitter() {
    let rows = [
        (1, 100, "the first reconnection waits up to 100 ms"),
        (2, 200, "then twice that"),
        (5, 1600, "doubling each time"),
        (8, 10_000, "capped at 10 s"),
        (40, 10_000, "and stays capped"),
    ];
    for (n, cap_ms, reason) in rows {
        let cap = reconnect_cap(n).as_secs_f64() * 1000.0;
        assert_eq!(cap.round() as u64, cap_ms, "{reason}");
    }
    let cap = Duration::from_secs(1);
    assert_eq!(
        full_jitter(cap, 0.0),
        Duration::ZERO,
        "full jitter starts at 0"
    );
    assert_eq!(
        full_jitter(cap, 0.5),
        cap / 2,
        "and is uniform under the cap"
    );
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..1000 {
        assert!(full_jitter(cap, rng.f64()) <= cap, "never past the cap");
    }
}

fn weights(version: u64) -> ServiceWeights {
    ServiceWeights {
        service: "cart".into(),
        version,
        generated_at: String::new(),
        ttl_ms: 10_000,
        endpoints: vec![],
    }
}

fn version(found: &Found) -> Option<u64> {
    match found {
        Found::Weights(w) => Some(w.version),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_failover_never_goes_back_in_version_nor_drops_fresh_weights() {
    let (tx, rx) = watch::channel(Found::Nothing);
    let publish = Publish::new("cart".into(), tx);
    assert_eq!(
        publish.ask_after(),
        0,
        "without weights: the current answer"
    );
    // Rows: (after this long, the answer, the version the balancer then holds, why).
    let rows: [(u64, Option<u64>, Option<u64>, &str); 6] = [
        (0, Some(7), Some(7), "the first collector's weights"),
        (1, Some(5), Some(7), "a collector behind the first: dropped"),
        (
            1,
            None,
            Some(7),
            "a collector that has nothing yet: the fresh weights stay",
        ),
        (
            1,
            Some(7),
            Some(7),
            "the next collector at the same version",
        ),
        (1, Some(8), Some(8), "then newer"),
        (
            11,
            None,
            None,
            "nothing for the service, and the weights past their TTL",
        ),
    ];
    for (secs, answer, held, why) in rows {
        tokio::time::advance(Duration::from_secs(secs)).await;
        assert!(publish.publish(answer.map(weights)), "{why}");
        assert_eq!(version(&rx.borrow()), held, "{why}");
    }
    assert_eq!(publish.ask_after(), 0);
    publish.publish(Some(weights(9)));
    assert_eq!(publish.ask_after(), 8, "one below the version held");
}

#[tokio::test]
async fn several_collectors_are_gone_round_in_pairs() {
    let collector = Collector {
        grpc: split_urls("http://127.0.0.1:1, http://127.0.0.2:1,"),
        http: split_urls("http://127.0.0.1:2"),
        ..Collector::default()
    };
    let targets = targets(&collector).await;
    assert_eq!(
        targets,
        [
            Target {
                grpc: Some("http://127.0.0.1:1".into()),
                http: Some("http://127.0.0.1:2".into())
            },
            Target {
                grpc: Some("http://127.0.0.2:1".into()),
                http: Some("http://127.0.0.1:2".into())
            },
        ]
    );
    // An address stays as it is; a name is expanded only when it resolves to several.
    assert_eq!(resolve("http://[::1]:7").await, ["http://[::1]:7"]);
    assert_eq!(resolve("not a url").await, ["not a url"]);
}

#[test]
fn service_names_are_escaped_in_the_path() {
    assert_eq!(form_path("cart"), "cart");
    assert_eq!(form_path("a b/c"), "a%20b%2Fc");
}
