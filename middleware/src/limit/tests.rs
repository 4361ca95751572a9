//! The limits on an axum router, in process, under tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use tokio::time::Instant;
use tower::ServiceExt;

use super::*;

async fn call(app: &Router, request: Request<Body>) -> Response<Body> {
    app.clone().oneshot(request).await.expect("infallible")
}

fn get_with(headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::get("/work");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).unwrap()
}

fn app(limit: RateLimitLayer) -> Router {
    Router::new()
        .route("/work", get(|| async { "done" }))
        .layer(limit)
}

#[tokio::test(start_paused = true)]
async fn rate_and_burst_are_honoured() {
    let limit = RateLimitLayer::per_second(10, 5);
    let app = app(limit.clone());
    for i in 0..5 {
        let response = call(&app, get_with(&[])).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "request {i} is within the burst"
        );
    }
    let refused = call(&app, get_with(&[])).await;
    assert_eq!(
        refused.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the sixth is over it"
    );
    assert_eq!(
        refused.headers()["retry-after"],
        "1",
        "a wait of 100 ms, rounded up to whole seconds"
    );
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(
        call(&app, get_with(&[])).await.status(),
        StatusCode::OK,
        "one token a 100 ms"
    );
    assert_eq!(
        call(&app, get_with(&[])).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "and only one"
    );
    assert_eq!(limit.refused(), 2);
}

#[tokio::test(start_paused = true)]
async fn keys_have_buckets_of_their_own() {
    let app =
        app(RateLimitLayer::per_second(1, 2)
            .key(KeyBy::Header(HeaderName::from_static("x-api-key"))));
    let rows = [
        ("a", StatusCode::OK, "a's first"),
        ("a", StatusCode::OK, "a's second, within its burst"),
        ("a", StatusCode::TOO_MANY_REQUESTS, "a is over its limit"),
        ("b", StatusCode::OK, "b is not affected by a"),
        ("b", StatusCode::OK, "b's own burst"),
        ("b", StatusCode::TOO_MANY_REQUESTS, "b is over too"),
    ];
    for (key, expected, reason) in rows {
        let response = call(&app, get_with(&[("x-api-key", key)])).await;
        assert_eq!(response.status(), expected, "{reason}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_key_table_is_bounded() {
    // (cap, distinct keys sent, why): the size is read every 64 calls while the table is far
    // from full, so caps below, around and above that period must all hold exactly.
    let rows = [
        (
            10,
            100,
            "a cap below the check period: checked on every call from the start",
        ),
        (
            100,
            300,
            "a cap just above the period: the first periodic check finds it near",
        ),
        (
            1000,
            3000,
            "a cap far above the period: periodic checks, then every call",
        ),
    ];
    for (cap, keys, reason) in rows {
        let limit = RateLimitLayer::per_second(1, 1)
            .key(KeyBy::Header(HeaderName::from_static("x-api-key")))
            .max_keys(cap);
        let app = app(limit.clone());
        for i in 0..keys {
            let key = format!("k{i}");
            call(&app, get_with(&[("x-api-key", &key)])).await;
        }
        // The cap, plus the shared bucket new keys fall into once it is reached.
        let len = limit.limiter.len();
        assert!(len <= cap + 1, "{reason}: {len} keys for a cap of {cap}");
        assert!(
            len >= cap,
            "{reason}: the table fills up to its cap ({len})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn grpc_requests_get_resource_exhausted_with_retry_info() {
    let app = app(RateLimitLayer::per_second(1, 1));
    let grpc = [("content-type", "application/grpc")];
    assert_eq!(call(&app, get_with(&grpc)).await.status(), StatusCode::OK);
    let refused = call(&app, get_with(&grpc)).await;
    assert_eq!(
        refused.status(),
        StatusCode::OK,
        "gRPC errors are trailers-only 200s"
    );
    let headers = refused.headers();
    assert_eq!(headers["grpc-status"], "8", "RESOURCE_EXHAUSTED");
    assert_eq!(headers["grpc-retry-pushback-ms"], "1000");
    let status = tonic::Status::from_header_map(headers).expect("a status");
    let details = tonic_types::StatusExt::get_error_details(&status);
    let retry = details.retry_info().expect("RetryInfo in the details");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn requests_over_the_concurrency_limit_are_shed() {
    let shed = ShedLayer::new(1);
    let app = Router::new()
        .route(
            "/work",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                "done"
            }),
        )
        .layer(shed.clone());
    let first = tokio::spawn({
        let app = app.clone();
        async move { call(&app, get_with(&[])).await.status() }
    });
    tokio::task::yield_now().await;
    let second = call(&app, get_with(&[])).await;
    assert_eq!(
        second.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "shed at once, not queued"
    );
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(
        first.await.unwrap(),
        StatusCode::OK,
        "the one in flight finishes"
    );
    assert_eq!(
        call(&app, get_with(&[])).await.status(),
        StatusCode::OK,
        "room again"
    );
    assert_eq!(shed.shed(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_balancers_retry_waits_for_retry_after() {
    use crate::balance::{Balance, Balancer, RequestBody};

    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let app = Router::new()
        .route(
            "/work",
            get(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }
            }),
        )
        .layer(ShedLayer::new(1));
    let inner = tower::service_fn(move |request: Request<RequestBody>| {
        let app = app.clone();
        async move { app.oneshot(request.map(Body::new)).await }
    });
    let balancer = Balancer::builder("work")
        .seed(["10.0.0.1:80"])
        .build()
        .unwrap();
    let service = Balance::new(balancer, inner);
    let request = || {
        Request::get("http://work/work")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let started = Instant::now();
    let first = tokio::spawn(service.clone().oneshot(request()));
    tokio::task::yield_now().await;
    let second = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK, "shed, then retried");
    assert!(
        Instant::now() - started >= Duration::from_secs(1),
        "the retry waited the second Retry-After asked for"
    );
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(
        served.load(Ordering::Relaxed),
        2,
        "the shed attempt never reached the handler"
    );
}
