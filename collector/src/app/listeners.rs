//! The network servers: the OTLP receivers and the query API, each a [`Stage`].

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::graph::weights::WeightsEngine;
use crate::ingest::grpc::{LogsService, TraceService};
use crate::ingest::{Ingest, http as otlp_http};
use crate::net::access::{Deadlines, Protocols, RequireTokenLayer, Style, TlsFiles, Tokens};
use crate::net::activity::Pressure;
use crate::net::connections::{Accept, Conn, ListenerTls, PROBE_PLACES};
use crate::net::http_server::{self, Http2, Serve};
use crate::net::metrics::{ListenerLabels, ListenerMetrics};
use crate::serve::query::ApiState;
use crate::util::cap::Cap;

/// The OTLP/gRPC receiver's HTTP/2 window per stream: a typical export (a few hundred KB)
/// arrives without waiting for the client to be told it may send more.
const OTLP_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// The OTLP/gRPC receiver's HTTP/2 window per connection.
const OTLP_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// HTTP/2 streams per connection on the query gRPC port (each `Watch` holds one).
const QUERY_GRPC_MAX_STREAMS: u32 = 10_000;
/// HTTP/2 streams per connection elsewhere: hyper's default (tonic's server set none).
const MAX_STREAMS: u32 = 200;

/// How each listener takes connections: its cap, how long a client has to start, its TLS.
#[derive(Debug, Clone)]
pub(super) struct Bounds {
    pub(super) caps: Caps,
    /// How long a connection has to start, a request for its headers and then its body.
    pub(super) deadlines: Deadlines,
    pub(super) tls: Option<TlsFiles>,
    pub(super) metrics: Arc<ListenerMetrics>,
}

/// The four listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listener {
    OtlpGrpc,
    OtlpHttp,
    QueryHttp,
    QueryGrpc,
}

impl Listener {
    /// The name in metrics and logs.
    fn name(self) -> &'static str {
        match self {
            Self::OtlpGrpc => "otlp-grpc",
            Self::OtlpHttp => "otlp-http",
            Self::QueryHttp => "query-http",
            Self::QueryGrpc => "query-grpc",
        }
    }

    fn protocols(self) -> Protocols {
        match self {
            Self::OtlpGrpc | Self::QueryGrpc => Protocols::Grpc,
            Self::OtlpHttp | Self::QueryHttp => Protocols::Http,
        }
    }

    /// The OTLP receivers ask for client certificates when a client CA is set.
    fn mutual(self) -> bool {
        matches!(self, Self::OtlpGrpc | Self::OtlpHttp)
    }
}

/// The connection cap of each listener (`--max-connections` each), kept to be changed by a
/// reload.
#[derive(Debug, Clone)]
pub(crate) struct Caps([Cap; 4]);

impl Caps {
    pub(crate) fn new(max: usize) -> Self {
        Self(std::array::from_fn(|_| Cap::new(max)))
    }

    pub(crate) fn set(&self, max: usize) {
        for cap in &self.0 {
            cap.set(max);
        }
    }
}

impl Bounds {
    /// Starts accepting on `listener`; the connections come out with the pressure that their
    /// listener's accept loop squeezes when it is full.
    fn accept(
        &self,
        tcp: TcpListener,
        listener: Listener,
        stop: &CancellationToken,
    ) -> (mpsc::Receiver<Conn>, Pressure) {
        let pressure = Pressure::default();
        let accepted = Accept {
            name: listener.name(),
            cap: self.caps.0[listener as usize].clone(),
            deadlines: self.deadlines.clone(),
            tls: self.tls.clone().map(|files| ListenerTls {
                files,
                protocols: listener.protocols(),
                mutual: listener.mutual(),
            }),
            metrics: self.metrics.clone(),
            pressure: pressure.clone(),
            probes: (listener == Listener::QueryHttp).then(|| Cap::new(PROBE_PLACES)),
        }
        .spawn(tcp, stop.clone());
        (accepted, pressure)
    }

    /// How `listener` serves `service`.
    fn serve<S>(
        &self,
        listener: Listener,
        service: S,
        probes: Option<S>,
        pressure: Pressure,
    ) -> Serve<S> {
        let http2 = match listener {
            Listener::OtlpGrpc => Http2 {
                only: true,
                max_streams: MAX_STREAMS,
                windows: Some((OTLP_STREAM_WINDOW, OTLP_CONNECTION_WINDOW)),
            },
            Listener::QueryGrpc => Http2 {
                only: true,
                // Watchers hold a stream each: let many share one connection.
                max_streams: QUERY_GRPC_MAX_STREAMS,
                windows: None,
            },
            Listener::OtlpHttp | Listener::QueryHttp => Http2 {
                only: false,
                max_streams: MAX_STREAMS,
                windows: None,
            },
        };
        Serve {
            name: listener.name(),
            service,
            probes,
            http2,
            deadlines: self.deadlines.clone(),
            body_deadline: listener.protocols() == Protocols::Http,
            pressure,
            metrics: self.metrics.clone(),
        }
    }
}

/// The probes a load balancer or an orchestrator calls without a token.
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/livez"];

/// The token check of one listener, or one that lets everything through.
fn access(
    tokens: &Option<Tokens>,
    style: Style,
    metrics: &ListenerMetrics,
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
) -> impl Future<Output = ()> + Send + 'static {
    let routes = tonic::service::Routes::new(
        TraceService::new(ingest.clone(), max_message_bytes).deadlines(bounds.deadlines.clone()),
    )
    .add_service(LogsService::new(ingest, max_message_bytes).deadlines(bounds.deadlines.clone()))
    .prepare();
    let service = tower::ServiceBuilder::new()
        .layer(access(tokens, Style::Grpc, &bounds.metrics, "otlp-grpc"))
        .service(routes);
    let (accepted, pressure) = bounds.accept(listener, Listener::OtlpGrpc, &stop);
    http_server::serve(
        accepted,
        bounds.serve(Listener::OtlpGrpc, service, None, pressure),
        stop,
    )
}

/// OTLP/HTTP: `/v1/traces` and `/v1/logs`, protobuf and JSON.
pub(super) fn otlp_http(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    max_body_bytes: usize,
    tokens: &Option<Tokens>,
    bounds: &Bounds,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let router = otlp_http::router(ingest, max_body_bytes).layer(access(
        tokens,
        Style::Http,
        &bounds.metrics,
        "otlp-http",
    ));
    let (accepted, pressure) = bounds.accept(listener, Listener::OtlpHttp, &stop);
    http_server::serve(
        accepted,
        bounds.serve(Listener::OtlpHttp, router, None, pressure),
        stop,
    )
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
) -> impl Future<Output = ()> + Send + 'static {
    let watchers = state.watchers.clone();
    let probes = crate::serve::query::probes(state.clone());
    // The UI's own files hold no data: they load without a token, and its calls to the API
    // carry the token the user gives it.
    let router = crate::serve::query::router(state)
        .layer(access(tokens, Style::Http, &bounds.metrics, "query-http"))
        .merge(crate::serve::ui::router());
    let (accepted, pressure) = bounds.accept(http, Listener::QueryHttp, &stop);
    let http = http_server::serve(
        accepted,
        bounds.serve(Listener::QueryHttp, router, Some(probes), pressure),
        stop.clone(),
    );
    let routes = tonic::service::Routes::new(crate::serve::query::grpc::weights_server(
        weights,
        watchers,
        stop.clone(),
    ))
    .prepare();
    let service = tower::ServiceBuilder::new()
        .layer(access(tokens, Style::Grpc, &bounds.metrics, "query-grpc"))
        .service(routes);
    let (accepted, pressure) = bounds.accept(grpc, Listener::QueryGrpc, &stop);
    let grpc = http_server::serve(
        accepted,
        bounds.serve(Listener::QueryGrpc, service, None, pressure),
        stop,
    );
    async move {
        tokio::join!(http, grpc);
    }
}
