//! The middleware's server layer: what it adds to a request over a bare axum handler, with the
//! subscriber `wayfinder_middleware::Telemetry` builds (sampling on, batch processor), spans
//! going to an exporter that discards them.
#![allow(missing_docs)] // criterion_group! makes an undocumented public function

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::BodyExt;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tower::ServiceExt;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
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
    let body = response.into_body().collect().await.expect("a body");
    body.to_bytes().len()
}

fn server_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let telemetry = Telemetry::new()
        .service_name("bench")
        .log_writer(BoxMakeWriter::new(std::io::sink))
        .build_with_exporter(Discard)
        .expect("the subscriber builds");
    let default = telemetry.set_default();

    let bare = router();
    let traced = router().layer(ServerLayer::new());
    let mut group = c.benchmark_group("server_layer");
    group.bench_function("bare_axum", |b| {
        b.iter(|| runtime.block_on(serve(bare.clone(), request(true))))
    });
    group.bench_function("traced_new_root", |b| {
        b.iter(|| runtime.block_on(serve(traced.clone(), request(false))))
    });
    group.bench_function("traced_with_traceparent", |b| {
        b.iter(|| runtime.block_on(serve(traced.clone(), request(true))))
    });
    let headers = request(true).headers().clone();
    let propagation = wayfinder_middleware::Propagation::default();
    group.bench_function("extract_traceparent", |b| {
        b.iter(|| propagation.extract(std::hint::black_box(&headers)))
    });
    let empty = request(false).headers().clone();
    group.bench_function("extract_nothing", |b| {
        b.iter(|| propagation.extract(std::hint::black_box(&empty)))
    });
    group.finish();
    drop(default);
    drop(telemetry);
}

criterion_group!(benches, server_layer);
criterion_main!(benches);
