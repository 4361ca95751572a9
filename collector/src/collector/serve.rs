//! The network servers: the OTLP receivers and the query API, each a [`Stage`].

use std::sync::Arc;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::connections::{Limited, incoming};
use super::stage::Stage;
use crate::access::{RequireTokenLayer, Style, Tokens};
use crate::metrics::{ListenerLabels, Metrics};
use crate::query::ApiState;
use crate::receivers::grpc::{LogsService, TraceService};
use crate::receivers::{Ingest, http as otlp_http};
use crate::weights::WeightsEngine;

/// The OTLP/gRPC receiver's HTTP/2 window per stream: a typical export (a few hundred KB)
/// arrives without waiting for the client to be told it may send more.
const OTLP_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// The OTLP/gRPC receiver's HTTP/2 window per connection.
const OTLP_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// HTTP/2 streams per connection on the query gRPC port (each `Watch` holds one).
const QUERY_GRPC_MAX_STREAMS: u32 = 10_000;

/// How each listener is bounded: at most `max_connections` at once, refusals counted.
#[derive(Debug, Clone)]
pub(super) struct Bounds {
    pub(super) max_connections: usize,
    pub(super) metrics: Arc<Metrics>,
}

impl Bounds {
    /// `listener` with at most `max_connections` connections, each with TCP_NODELAY: without
    /// it a response's last segment waited for the client's delayed ACK (40 ms on Linux).
    fn limit(
        &self,
        listener: TcpListener,
        name: &'static str,
    ) -> Limited<impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr>>
    {
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let refused = self
            .metrics
            .refused_connections
            .get_or_create(&ListenerLabels { listener: name })
            .clone();
        Limited::new(listener, self.max_connections, name, refused)
    }
}

/// The probes a load balancer or an orchestrator calls without a token.
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

/// The token check of one listener, or one that lets everything through.
fn access(
    tokens: &Option<Tokens>,
    style: Style,
    metrics: &Metrics,
    listener: &'static str,
) -> tower::util::Either<RequireTokenLayer, tower::layer::util::Identity> {
    match tokens {
        Some(tokens) => tower::util::Either::Left(
            RequireTokenLayer::new(
                tokens.clone(),
                style,
                metrics
                    .unauthorized
                    .get_or_create(&ListenerLabels { listener })
                    .clone(),
            )
            .open_paths(OPEN_PATHS),
        ),
        None => tower::util::Either::Right(tower::layer::util::Identity::new()),
    }
}

/// OTLP/gRPC: `TraceService/Export` and `LogsService/Export`.
pub(super) fn otlp_grpc(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    max_message_bytes: usize,
    tokens: &Option<Tokens>,
    bounds: &Bounds,
    stop: CancellationToken,
) -> Stage {
    let server = tonic::transport::Server::builder()
        .layer(access(tokens, Style::Grpc, &bounds.metrics, "otlp-grpc"))
        // HTTP/2's default 64 KiB windows make a 200 KB export wait for several
        // WINDOW_UPDATE round trips: with one request in flight per connection, ingest
        // was latency-bound with a core idle.
        .initial_stream_window_size(Some(OTLP_STREAM_WINDOW))
        .initial_connection_window_size(Some(OTLP_CONNECTION_WINDOW))
        .add_service(TraceService::new(ingest.clone(), max_message_bytes))
        .add_service(LogsService::new(ingest, max_message_bytes))
        .serve_with_incoming_shutdown(
            incoming(bounds.limit(listener, "otlp-grpc")),
            stop.cancelled_owned(),
        );
    Stage::spawn("otlp-grpc", async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "the OTLP/gRPC receiver stopped");
        }
    })
}

/// OTLP/HTTP: `/v1/traces` and `/v1/logs`, protobuf and JSON.
pub(super) fn otlp_http(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    max_body_bytes: usize,
    tokens: &Option<Tokens>,
    bounds: &Bounds,
    stop: CancellationToken,
) -> Stage {
    let server = axum::serve(
        bounds.limit(listener, "otlp-http"),
        otlp_http::router(ingest, max_body_bytes).layer(access(
            tokens,
            Style::Http,
            &bounds.metrics,
            "otlp-http",
        )),
    )
    .with_graceful_shutdown(stop.cancelled_owned());
    Stage::spawn("otlp-http", async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "the OTLP/HTTP receiver stopped");
        }
    })
}

/// The query API: HTTP (JSON, Jaeger, `/metrics`, probes, the UI) and gRPC (weights).
pub(super) fn query(
    http: TcpListener,
    grpc: TcpListener,
    state: Arc<ApiState>,
    weights: Arc<WeightsEngine>,
    tokens: &Option<Tokens>,
    bounds: &Bounds,
    stop: CancellationToken,
) -> Stage {
    let metrics = state.metrics.clone();
    let watchers = state.watchers.clone();
    // The UI's own files hold no data: they load without a token, and its calls to the API
    // carry the token the user gives it.
    let http = axum::serve(
        bounds.limit(http, "query-http"),
        crate::query::router(state)
            .layer(access(tokens, Style::Http, &metrics, "query-http"))
            .merge(crate::ui::router()),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let grpc = tonic::transport::Server::builder()
        .layer(access(tokens, Style::Grpc, &metrics, "query-grpc"))
        // Watchers hold a stream each: let many share one connection.
        .max_concurrent_streams(Some(QUERY_GRPC_MAX_STREAMS))
        .add_service(crate::query::grpc::weights_server(
            weights,
            watchers,
            stop.clone(),
        ))
        .serve_with_incoming_shutdown(
            incoming(bounds.limit(grpc, "query-grpc")),
            stop.cancelled_owned(),
        );
    Stage::spawn("query", async move {
        let (http, grpc) = tokio::join!(http, grpc);
        if let Err(error) = http {
            tracing::error!(%error, "the query API stopped");
        }
        if let Err(error) = grpc {
            tracing::error!(%error, "the query gRPC API stopped");
        }
    })
}
