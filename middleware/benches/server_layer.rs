//! The server layer's cost per request, side by side with what a Rust user would pick instead,
//! in one criterion run: the same axum handler, the same request, spans going to the same
//! exporter (one that keeps nothing) through a batch processor.
//!
//! - `bare_axum`: the handler alone;
//! - `wayfinder_*`: `ServerLayer` with the subscriber `Telemetry` builds; `wayfinder_full` adds
//!   a running health reporter (beating to a loopback sink) and a rate limiter that admits
//!   everything (its bucket is still checked per request);
//! - `axum_tracing_opentelemetry`: `OtelAxumLayer` with `init-tracing-opentelemetry`'s tracer
//!   provider and propagator, under `tracing-opentelemetry`;
//! - `tower_http_trace`: tower-http's `TraceLayer` making an info span whose parent is the
//!   extracted W3C context, under `tracing-opentelemetry` (the recipe of their docs).
//!
//! Each peer has its own `tracing` dispatcher, made the thread's default only while it is
//! measured. Run it with `cargo bench -p wayfinder-middleware --bench server_layer`.
#![allow(missing_docs)] // criterion_group! makes an undocumented public function

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::BodyExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tower::ServiceExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use wayfinder_middleware::health::HealthReporter;
use wayfinder_middleware::limit::RateLimitLayer;
use wayfinder_middleware::{ServerLayer, Telemetry};

/// Accepts every batch and keeps nothing: the cost measured is the middleware's and the SDK's,
/// not a network's.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

fn router() -> Router {
    Router::new().route("/users/{id}", get(|| async { "ok" }))
}

fn request(traceparent: bool) -> Request<Body> {
    let mut builder = Request::get("/users/42")
        .header("host", "users.local:8080")
        .header("user-agent", "bench/1.0");
    if traceparent {
        builder = builder.header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    }
    builder.body(Body::empty()).expect("a request")
}

async fn serve(router: Router, request: Request<Body>) -> usize {
    let response = router.oneshot(request).await.expect("infallible");
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.into_body().collect().await.expect("a body");
    body.to_bytes().len()
}

/// A `tracing` subscriber as the peers' docs build it: `tracing-opentelemetry` over the
/// provider `init-tracing-opentelemetry` makes (its resource detection; the provider as its
/// `init_tracerprovider` builds one with the exporter added by its `transform` hook: that
/// function is behind the crate's `otlp` feature, which would switch reqwest to
/// `rustls-no-provider` for the whole build), plus a log layer writing nowhere (as the
/// Wayfinder subscriber here).
fn peer_subscriber() -> (tracing::Dispatch, SdkTracerProvider) {
    let resource = init_tracing_opentelemetry::resource::DetectResource::default()
        .with_fallback_service_name("bench")
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(Discard)
        .build();
    let tracer = provider.tracer("bench");
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
    (tracing::Dispatch::new(subscriber), provider)
}

use tracing_subscriber::Layer as _;

/// tower-http's `TraceLayer` with the W3C parent set on its span.
fn tower_http_router() -> Router {
    use tower_http::trace::TraceLayer;
    router().layer(
        TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
            let span = tracing::info_span!(
                "request",
                http.request.method = %request.method(),
                url.path = %request.uri().path(),
                otel.kind = "server",
            );
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
            });
            let _ = span.set_parent(parent);
            span
        }),
    )
}

/// A loopback sink for health beats (`POST /v1/health` answered 200).
async fn health_sink() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("an address");
    let app = Router::new().route("/v1/health", post(|| async { "" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

fn server_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("server_layer");

    let bare = router();
    group.bench_function("bare_axum", |b| {
        b.iter(|| runtime.block_on(serve(bare.clone(), request(true))))
    });

    // Wayfinder.
    let telemetry = Telemetry::new()
        .service_name("bench")
        .log_writer(tracing_subscriber::fmt::writer::BoxMakeWriter::new(
            std::io::sink,
        ))
        .build_with_exporter(Discard)
        .expect("the subscriber builds");
    {
        let _default = telemetry.set_default();
        let traced = router().layer(ServerLayer::new());
        group.bench_function("wayfinder_new_root", |b| {
            b.iter(|| runtime.block_on(serve(traced.clone(), request(false))))
        });
        group.bench_function("wayfinder_with_traceparent", |b| {
            b.iter(|| runtime.block_on(serve(traced.clone(), request(true))))
        });

        // The reporter and its sink run on a runtime of their own, as on a service's other
        // workers (the measured runtime only polls what a request needs).
        let background = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let sink = background.block_on(health_sink());
        let health = background.block_on(async {
            HealthReporter::new("bench", "bench-1")
                .address("127.0.0.1:8080")
                .http(&sink)
                .interval(Duration::from_secs(1))
                .start()
                .expect("the reporter starts")
        });
        let limit = RateLimitLayer::per_second(u32::MAX, u32::MAX);
        let full = router()
            .merge(health.routes())
            .layer(limit.clone())
            .layer(ServerLayer::new());
        group.bench_function("wayfinder_full_with_traceparent", |b| {
            b.iter(|| runtime.block_on(serve(full.clone(), request(true))))
        });
        assert_eq!(limit.refused(), 0, "the limiter admitted every request");
        assert!(
            health.counts().0 > 0,
            "the health reporter beat while measured: {:?}",
            health.counts()
        );
        background.block_on(health.shutdown());
    }
    drop(telemetry);

    // axum-tracing-opentelemetry + init-tracing-opentelemetry.
    init_tracing_opentelemetry::init_propagator().expect("the W3C propagator");
    let (dispatch, provider) = peer_subscriber();
    tracing::dispatcher::with_default(&dispatch, || {
        let otel_axum =
            router().layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default());
        group.bench_function("axum_tracing_opentelemetry_with_traceparent", |b| {
            b.iter(|| runtime.block_on(serve(otel_axum.clone(), request(true))))
        });
        let tower_http = tower_http_router();
        group.bench_function("tower_http_trace_with_traceparent", |b| {
            b.iter(|| runtime.block_on(serve(tower_http.clone(), request(true))))
        });
    });
    let _ = provider.shutdown();
    group.finish();
}

criterion_group!(benches, server_layer);
criterion_main!(benches);
