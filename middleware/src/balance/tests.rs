//! The balancer under tokio's paused clock, over an in-process inner service that records
//! every attempt it sees.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::http::Attempt;
use tower::{Service, ServiceExt};
use wayfinder_api::weights::{Endpoint as WireEndpoint, EndpointLatency, ServiceWeights};

use super::*;

/// Weights for `cart` at `version`: `(address, weight)` pairs.
fn weights(version: u64, endpoints: &[(&str, f64)]) -> ServiceWeights {
    ServiceWeights {
        service: "cart".into(),
        version,
        generated_at: "2026-12-01T00:00:00.000Z".into(),
        ttl_ms: 60_000,
        endpoints: endpoints
            .iter()
            .enumerate()
            .map(|(i, (address, weight))| WireEndpoint {
                instance_id: format!("cart-{i}"),
                address: Some((*address).to_owned()),
                weight: *weight,
                health: "passing".into(),
                latency_ms: EndpointLatency {
                    p50: None,
                    p90: None,
                    p99: None,
                    ewma: None,
                },
                error_rate: 0.0,
                requests_per_sec: 0.0,
                reason: "normal".into(),
            })
            .collect(),
    }
}

fn balancer(seed: &[&str], change: impl FnOnce(&mut BalanceConfig)) -> Balancer {
    Balancer::builder("cart")
        .seed(seed.iter().copied())
        .configure(change)
        .build()
        .expect("a valid balancer")
}

/// Picks `n` times (each attempt finished at once, with the same round trip) and counts the
/// picks per address.
fn count_picks(balancer: &Balancer, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(42);
    for _ in 0..n {
        let picked = balancer.shared.pick(&[], &mut rng).expect("an endpoint");
        *counts
            .entry(picked.endpoint.address.to_string())
            .or_default() += 1;
    }
    counts
}

/// Pearson's χ² of the counts against the expected shares.
fn chi_square(counts: &HashMap<String, usize>, expected: &[(&str, f64)]) -> f64 {
    let n: usize = counts.values().sum();
    expected
        .iter()
        .map(|(address, share)| {
            let e = share * n as f64;
            let c = counts.get(*address).copied().unwrap_or(0) as f64;
            (c - e).powi(2) / e
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn picks_follow_the_collectors_weights() {
    let balancer = balancer(&["10.0.0.9:80"], |_| {});
    let shares = [
        ("10.0.0.1:80", 0.4),
        ("10.0.0.2:80", 0.3),
        ("10.0.0.3:80", 0.2),
        ("10.0.0.4:80", 0.1),
    ];
    balancer.apply(&weights(12, &shares));
    assert_eq!(balancer.source(), WeightSource::Weights { version: 12 });
    let counts = count_picks(&balancer, 20_000);
    assert!(
        !counts.contains_key("10.0.0.9:80"),
        "the seed is not used once weights came"
    );
    // 3 degrees of freedom: P(χ² > 16.27) = 0.001.
    let chi = chi_square(&counts, &shares);
    assert!(chi < 16.27, "χ² = {chi:.2} for {counts:?}");
    let picked = balancer.pick(&[]).unwrap();
    assert_eq!(&*picked.reason, "weights v12");
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_correct_the_weights() {
    let balancer = balancer(&[], |_| {});
    balancer.apply(&weights(1, &[("10.0.0.1:80", 0.5), ("10.0.0.2:80", 0.5)]));
    let busy = balancer
        .endpoints_arc()
        .into_iter()
        .find(|e| &*e.address == "10.0.0.1:80")
        .unwrap();
    // Nine requests stuck on the first: its cost is ten times the other's.
    let stuck: Vec<_> = (0..9).map(|_| busy.start()).collect();
    let counts = count_picks(&balancer, 10_000);
    let share = counts.get("10.0.0.1:80").copied().unwrap_or(0) as f64 / 10_000.0;
    // Two endpoints: every pick compares both, and the busy one always loses.
    assert_eq!(share, 0.0, "busy share {share:.3}");
    drop(stuck);
    let counts = count_picks(&balancer, 10_000);
    let share = counts["10.0.0.1:80"] as f64 / 10_000.0;
    assert!(
        (share - 0.5).abs() < 0.02,
        "back to its weight when idle: {share:.3}"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_weights_fall_back_to_peak_ewma() {
    let balancer = balancer(&[], |_| {});
    // The collector thinks the first is best, but it is locally slow.
    balancer.apply(&weights(3, &[("10.0.0.1:80", 0.8), ("10.0.0.2:80", 0.2)]));
    let config = balancer.config().clone();
    for endpoint in balancer.endpoints_arc() {
        let rtt = if &*endpoint.address == "10.0.0.1:80" {
            100
        } else {
            10
        };
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(rtt)).await;
        endpoint.record(sent, false, &config, 0.5);
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(balancer.source(), WeightSource::Stale { version: 3 });
    assert_eq!(
        &*balancer.pick(&[]).unwrap().reason,
        "peak-ewma: weights stale"
    );
    // Uniform draws, local cost decides: the slow one loses every comparison.
    let counts = count_picks(&balancer, 10_000);
    assert!(
        !counts.contains_key("10.0.0.1:80"),
        "the locally slow one gets nothing instead of its weight 0.8: {counts:?}"
    );

    // Fresh weights again: weighted draws.
    balancer.apply(&weights(4, &[("10.0.0.1:80", 0.5), ("10.0.0.2:80", 0.5)]));
    assert_eq!(balancer.source(), WeightSource::Weights { version: 4 });
}

#[tokio::test(start_paused = true)]
async fn the_seed_serves_until_weights_and_when_the_collector_has_none() {
    let balancer = balancer(&["10.0.0.8:80", "10.0.0.9:80"], |_| {});
    assert_eq!(balancer.source(), WeightSource::Seed);
    assert_eq!(&*balancer.pick(&[]).unwrap().reason, "static seed");
    balancer.apply(&weights(5, &[("10.0.0.1:80", 1.0)]));
    assert_eq!(addresses(&balancer), ["10.0.0.1:80"]);
    // Only ejected (weight 0) endpoints: nothing usable, the seed again.
    balancer.apply(&weights(6, &[("10.0.0.1:80", 0.0)]));
    assert_eq!(balancer.source(), WeightSource::Seed);
    assert_eq!(addresses(&balancer), ["10.0.0.8:80", "10.0.0.9:80"]);
    balancer.apply_none();
    assert_eq!(balancer.source(), WeightSource::Seed);
    let other = weights(7, &[("10.0.0.5:80", 1.0)]);
    let mut other = other;
    other.service = "users".into();
    balancer.apply(&other);
    assert_eq!(
        addresses(&balancer),
        ["10.0.0.8:80", "10.0.0.9:80"],
        "another service's weights are ignored"
    );
    let empty = Balancer::builder("cart").build().unwrap();
    assert!(matches!(
        empty.pick(&[]),
        Err(BalanceError::NoEndpoints { .. })
    ));
}

fn addresses(balancer: &Balancer) -> Vec<String> {
    balancer
        .endpoints()
        .into_iter()
        .map(|e| e.address)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_and_the_endpoint_returns_through_slow_start() {
    let balancer = balancer(
        &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"],
        |_| {},
    );
    let config = balancer.config().clone();
    let bad = balancer.endpoints_arc()[0].clone();
    for i in 0..5 {
        let ejected = bad.record(Instant::now(), true, &config, 0.5);
        assert_eq!(
            ejected,
            i == 4,
            "the fifth failure in a row ejects, not before"
        );
    }
    let view = &balancer.endpoints()[0];
    let ejected_for = view.ejected_for.expect("ejected");
    assert_eq!(
        ejected_for,
        Duration::from_secs(30),
        "30 s × 1 at the middle of the jitter"
    );
    assert!(!count_picks(&balancer, 2_000).contains_key("10.0.0.1:80"));

    // Time is up: back in rotation, probed, at a tenth of its share ramping over 10 s.
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(balancer.endpoints()[0].ejected_for.is_none());
    // Meanwhile the others served in 10 ms.
    for other in &balancer.endpoints_arc()[1..] {
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        other.record(sent, false, &config, 0.5);
    }
    let counts = count_picks(&balancer, 20_000);
    assert!(counts.contains_key("10.0.0.1:80"), "probed again");
    let ramp =
        |endpoint: &Arc<endpoint::Endpoint>| endpoint.ramp(config.slow_start, Instant::now());
    assert!(ramp(&bad) < 0.11, "about 1 s after its return: 10%");
    bad.record(Instant::now(), false, &config, 0.5);
    let returned = Instant::now() - Duration::from_millis(1030);
    tokio::time::advance(Duration::from_secs(5) - (Instant::now() - returned)).await;
    assert!((ramp(&bad) - 0.5).abs() < 1e-9, "5 s after its return: 50%");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(ramp(&bad), 1.0, "a full share after the ramp");
    assert!(
        !bad.record(Instant::now(), true, &config, 0.5),
        "proven by its success, one failure does not eject it again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_probe_ejects_again_for_longer() {
    let balancer = balancer(&["10.0.0.1:80", "10.0.0.2:80"], |_| {});
    let config = balancer.config().clone();
    let bad = balancer.endpoints_arc()[0].clone();
    for _ in 0..5 {
        bad.record(Instant::now(), true, &config, 0.5);
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(
        bad.record(Instant::now(), true, &config, 0.5),
        "the failed probe ejects at once"
    );
    let ejected_for = balancer.endpoints()[0].ejected_for.unwrap();
    assert_eq!(
        ejected_for,
        Duration::from_secs(60),
        "the second ejection lasts 2 × 30 s"
    );
    // Probes that keep failing right at their return: 30 s × n grows until the 5 min cap binds.
    let mut lengths = Vec::new();
    for _ in 0..12 {
        let ejected_for = balancer.endpoints()[0].ejected_for.unwrap();
        lengths.push(ejected_for.as_secs());
        tokio::time::advance(ejected_for + Duration::from_millis(1)).await;
        assert!(
            bad.record(Instant::now(), true, &config, 0.99),
            "re-ejected"
        );
    }
    assert_eq!(lengths[..3], [60, 98, 131], "n × 30 s with +9.8% jitter");
    let last = balancer.endpoints()[0].ejected_for.unwrap();
    assert_eq!(last, Duration::from_secs(300), "at most 5 min");
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_ejects_without_consecutive_failures() {
    let balancer = balancer(&["10.0.0.1:80", "10.0.0.2:80"], |_| {});
    let config = balancer.config().clone();
    let flaky = balancer.endpoints_arc()[0].clone();
    let mut ejected = false;
    // Every third attempt fails (33%): never 5 in a row, but over the 20% threshold.
    for i in 0..30 {
        ejected |= flaky.record(Instant::now(), i % 3 == 0, &config, 0.5);
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(ejected, "a 33% failure rate over 20+ requests ejects");
}

#[tokio::test(start_paused = true)]
async fn no_more_than_half_are_ejected_and_the_least_bad_keep_traffic() {
    let seeds = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
    let balancer = balancer(&seeds, |_| {});
    let config = balancer.config().clone();
    let endpoints = balancer.endpoints_arc();
    // Three of four are ejected, each on its fifth failure in a row (nothing is recorded
    // after, so each one's window is as the ejection left it): the first after 20 successes
    // (20% failed), the second and third failing everything.
    for (i, failures, successes) in [(0, 5, 20), (1, 5, 0), (2, 5, 0)] {
        let endpoint = &endpoints[i];
        for _ in 0..successes {
            endpoint.record(Instant::now(), false, &config, 0.5);
        }
        for _ in 0..failures {
            endpoint.record(Instant::now(), true, &config, 0.5);
        }
    }
    let wants_out = balancer
        .endpoints()
        .iter()
        .filter(|e| e.ejected_for.is_some())
        .count();
    assert_eq!(wants_out, 3, "three crossed a threshold");
    let counts = count_picks(&balancer, 5_000);
    assert!(!counts.contains_key(seeds[1]), "the worst are out");
    assert!(!counts.contains_key(seeds[2]), "the worst are out");
    assert!(
        counts.contains_key(seeds[0]),
        "the least bad of the ejected keeps traffic: 2 of 4 at most are out"
    );
    assert!(counts.contains_key(seeds[3]));

    let single = balancer_with_one();
    let only = single.endpoints_arc()[0].clone();
    for _ in 0..10 {
        only.record(Instant::now(), true, &config, 0.5);
    }
    assert!(
        single.pick(&[]).is_ok(),
        "the only endpoint is never ejected from rotation"
    );
}

fn balancer_with_one() -> Balancer {
    balancer(&["10.0.0.1:80"], |_| {})
}

// ---- The service: attempts, retries, removal -----------------------------------------------

/// What the inner service saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Sent>>>);

/// One attempt as the inner service saw it: authority, method, when, the attempt's data, and
/// its `grpc-timeout`.
type Sent = (
    String,
    http::Method,
    Instant,
    Option<Attempt>,
    Option<String>,
);

impl Seen {
    fn authorities(&self) -> Vec<String> {
        self.0.lock().iter().map(|s| s.0.clone()).collect()
    }
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// An inner service that answers per authority with `answer`.
fn backend(
    seen: Seen,
    answer: impl Fn(&str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
) -> impl Service<
    Request<RequestBody>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<RequestBody>| {
        let seen = seen.clone();
        let answer = answer.clone();
        async move {
            let authority = request.uri().authority().unwrap().to_string();
            seen.0.lock().push((
                authority.clone(),
                request.method().clone(),
                Instant::now(),
                request.extensions().get::<Attempt>().cloned(),
                request
                    .headers()
                    .get("grpc-timeout")
                    .map(|v| v.to_str().unwrap().to_owned()),
            ));
            Ok::<_, BoxError>(answer(&authority))
        }
    })
}

/// One call through `service`.
async fn send<S>(service: &mut S, request: Request<Full<Bytes>>) -> Result<S::Response, S::Error>
where
    S: Service<Request<Full<Bytes>>>,
{
    service.ready().await?.call(request).await
}

fn status(code: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn request(method: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("http://cart/items")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_idempotent_request_is_retried_on_another_endpoint() {
    let seen = Seen::default();
    let balancer = balancer(&["10.0.0.1:80", "10.0.0.2:80"], |c| {
        c.consecutive_failures = 0
    });
    let inner = backend(seen.clone(), |authority| {
        status(if authority == "10.0.0.1:80" { 503 } else { 200 })
    });
    let mut service = Balance::new(balancer, inner);
    for _ in 0..50 {
        let response = send(&mut service, request("GET")).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "every GET ends on the healthy one"
        );
    }
    let attempts = seen.0.lock().clone();
    let retries: Vec<_> = attempts
        .iter()
        .filter(|a| a.3.as_ref().unwrap().resend_count > 0)
        .collect();
    assert!(
        !retries.is_empty(),
        "some first attempts hit the failing endpoint"
    );
    for retry in &retries {
        assert_eq!(
            retry.0, "10.0.0.2:80",
            "a retry goes to the endpoint not yet tried"
        );
        assert_eq!(retry.3.as_ref().unwrap().resend_count, 1);
    }
    assert_eq!(attempts.len(), 50 + retries.len());
}

#[tokio::test(start_paused = true)]
async fn a_post_is_retried_only_with_an_idempotency_key() {
    let seen = Seen::default();
    let balancer = balancer(&["10.0.0.1:80", "10.0.0.2:80"], |c| {
        c.consecutive_failures = 0
    });
    let mut service = Balance::new(balancer, backend(seen.clone(), |_| status(503)));
    let response = send(&mut service, request("POST")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        seen.len(),
        1,
        "a POST that reached a server is never sent again"
    );

    let mut keyed = request("POST");
    keyed
        .headers_mut()
        .insert("idempotency-key", "order-7".parse().unwrap());
    let response = send(&mut service, keyed).await.unwrap();
    assert_eq!(response.status(), 503, "every attempt failed");
    assert_eq!(
        seen.len(),
        1 + 3,
        "with a key it is tried three times (max_attempts)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_post_is_retried_after_a_connection_error() {
    let seen = Seen::default();
    let balancer = balancer(&["10.0.0.1:80", "10.0.0.2:80"], |c| {
        c.consecutive_failures = 0
    });
    let seen2 = seen.clone();
    let inner = tower::service_fn(move |request: Request<RequestBody>| {
        let seen = seen2.clone();
        async move {
            let authority = request.uri().authority().unwrap().to_string();
            seen.0.lock().push((
                authority.clone(),
                request.method().clone(),
                Instant::now(),
                None,
                None,
            ));
            if authority == "10.0.0.1:80" {
                Err::<Response<Full<Bytes>>, BoxError>(Box::new(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                )))
            } else {
                Ok(status(200))
            }
        }
    });
    let mut service = Balance::new(balancer, inner);
    for _ in 0..20 {
        let response = send(&mut service, request("POST")).await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "a refused connection never reached a server"
        );
    }
    assert!(seen.authorities().iter().any(|a| a == "10.0.0.1:80"));
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_bounds_what_a_failing_backend_sees() {
    let seen = Seen::default();
    let balancer = balancer(&["10.0.0.1:80", "10.0.0.2:80"], |c| {
        c.consecutive_failures = 0;
        c.failure_rate = 2.0;
        c.backoff_base = Duration::from_millis(1);
        c.backoff_max = Duration::from_millis(1);
    });
    let mut service = Balance::new(balancer, backend(seen.clone(), |_| status(503)));
    let calls = 2_000;
    let started = Instant::now();
    for _ in 0..calls {
        let response = send(&mut service, request("GET")).await.unwrap();
        assert_eq!(response.status(), 503);
    }
    // Without a budget: 3 attempts a call. With it: 20% of the calls, plus 10 a second over
    // the 10 s window and the (paused) time the calls took.
    let attempts = seen.len();
    let unbounded = calls * 3;
    let seconds = (Instant::now() - started).as_secs() as usize + 1;
    let bound = calls + calls / 5 + 10 * (10 + seconds);
    assert!(attempts > calls, "some retries were sent: {attempts}");
    assert!(
        attempts <= bound,
        "{attempts} attempts for {calls} calls (unbounded: {unbounded}, bound {bound})"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let seen = Seen::default();
    let balancer = balancer(&["10.0.0.1:80"], |c| c.consecutive_failures = 0);
    let inner = backend(seen.clone(), |_| {
        let mut response = status(503);
        response
            .headers_mut()
            .insert("retry-after", "2".parse().unwrap());
        response
    });
    let mut service = Balance::new(balancer, inner);
    let response = send(&mut service, request("GET")).await.unwrap();
    assert_eq!(response.status(), 503);
    let times: Vec<Instant> = seen.0.lock().iter().map(|s| s.2).collect();
    assert_eq!(times.len(), 3);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(2),
            "waited {gap:?}, asked for 2 s"
        );
    }

    // A Retry-After past the deadline: no retry, the answer as it is.
    let seen = Seen::default();
    let balancer = balancer_with_one();
    let inner = backend(seen.clone(), |_| {
        let mut response = status(503);
        response
            .headers_mut()
            .insert("retry-after", "60".parse().unwrap());
        response
    });
    let mut service = Balance::new(balancer, inner);
    let started = Instant::now();
    let response = send(&mut service, request("GET")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(seen.len(), 1, "60 s is past the 10 s deadline");
    assert!(
        Instant::now() - started < Duration::from_secs(1),
        "answered at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_times_out_and_the_retry_succeeds_elsewhere() {
    let balancer = balancer(&["10.0.0.1:80", "10.0.0.2:80"], |c| {
        c.attempt_timeout = Duration::from_millis(500);
    });
    let inner = tower::service_fn(|request: Request<RequestBody>| async move {
        if request.uri().authority().unwrap().as_str() == "10.0.0.1:80" {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok::<_, BoxError>(status(200))
    });
    let mut service = Balance::new(balancer.clone(), inner);
    for _ in 0..20 {
        let started = Instant::now();
        let response = send(&mut service, request("GET")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            Instant::now() - started < Duration::from_secs(2),
            "one timeout at most"
        );
    }
    let stalled = &balancer.endpoints()[0];
    assert!(stalled.failures > 0, "timeouts count as failures");
    assert_eq!(
        stalled.in_flight, 0,
        "timed-out attempts are no longer in flight"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_whole_call() {
    let balancer = balancer(&["10.0.0.1:80"], |c| {
        c.attempt_timeout = Duration::from_secs(5);
        c.deadline = Duration::from_secs(1);
    });
    let inner = tower::service_fn(|_: Request<RequestBody>| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, BoxError>(status(200))
    });
    let mut service = Balance::new(balancer, inner);
    let started = Instant::now();
    let error = send(&mut service, request("GET")).await.unwrap_err();
    assert_eq!(Instant::now() - started, Duration::from_secs(1));
    assert!(
        matches!(
            error.downcast_ref::<BalanceError>(),
            Some(BalanceError::DeadlineExceeded(_))
        ),
        "{error}"
    );

    // A gRPC call's own grpc-timeout shortens it, and each attempt carries what is left.
    let seen = Seen::default();
    let balancer = balancer_with_one();
    let mut service = Balance::new(balancer, backend(seen.clone(), |_| status(200)));
    let grpc = Request::post("http://cart/shop.Cart/Get")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "300m")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&mut service, grpc).await.unwrap();
    let attempt = seen.0.lock()[0].3.clone().unwrap();
    assert_eq!(
        attempt.deadline - seen.0.lock()[0].2,
        Duration::from_millis(300)
    );
    assert_eq!(
        seen.0.lock()[0].4.as_deref(),
        Some("300m"),
        "the caller's grpc-timeout goes on"
    );
    let no_timeout = Request::post("http://cart/shop.Cart/Watch")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&mut service, no_timeout).await.unwrap();
    assert_eq!(
        seen.0.lock()[1].4,
        None,
        "no grpc-timeout of the balancer's own: a long stream is not cut"
    );
}

#[tokio::test(start_paused = true)]
async fn removing_an_endpoint_never_fails_a_request_in_flight() {
    let balancer = balancer(&[], |_| {});
    balancer.apply(&weights(1, &[("10.0.0.1:80", 0.5), ("10.0.0.2:80", 0.5)]));
    let seen = Seen::default();
    let seen2 = seen.clone();
    let inner = tower::service_fn(move |request: Request<RequestBody>| {
        let seen = seen2.clone();
        async move {
            let authority = request.uri().authority().unwrap().to_string();
            seen.0.lock().push((
                authority,
                request.method().clone(),
                Instant::now(),
                None,
                None,
            ));
            tokio::time::sleep(Duration::from_millis(800)).await;
            Ok::<_, BoxError>(status(200))
        }
    });
    let service = Balance::new(balancer.clone(), inner);
    let calls: Vec<_> = (0..40)
        .map(|_| tokio::spawn(service.clone().oneshot(request("GET"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(seen.authorities().iter().any(|a| a == "10.0.0.1:80"));
    // 10.0.0.1 leaves (deregistered) while its requests are in flight.
    balancer.apply(&weights(2, &[("10.0.0.2:80", 1.0)]));
    let before = seen.len();
    for call in calls {
        let response = call.await.unwrap().expect("no request in flight fails");
        assert_eq!(response.status(), 200);
    }
    assert_eq!(before, 40, "all sent before the update");
    for _ in 0..40 {
        service.clone().oneshot(request("GET")).await.unwrap();
    }
    let after: Vec<_> = seen.authorities().split_off(before);
    assert!(
        after.iter().all(|a| a == "10.0.0.2:80"),
        "no new request for the removed endpoint: {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_say_how_they_were_routed() {
    let seen = Seen::default();
    let balancer = balancer(&["10.0.0.1:80"], |_| {});
    let mut service = Balance::new(balancer.clone(), backend(seen.clone(), |_| status(200)));
    send(&mut service, request("GET")).await.unwrap();
    balancer.apply(&weights(12, &[("10.0.0.2:80", 1.0)]));
    send(&mut service, request("GET")).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    send(&mut service, request("GET")).await.unwrap();
    let reasons: Vec<_> = seen
        .0
        .lock()
        .iter()
        .map(|s| s.3.as_ref().unwrap().reason.to_string())
        .collect();
    assert_eq!(
        reasons,
        ["static seed", "weights v12", "peak-ewma: weights stale"]
    );
}
