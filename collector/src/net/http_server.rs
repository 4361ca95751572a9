//! The serve loop of every listener, HTTP and gRPC alike (hyper-util's HTTP/1 and HTTP/2
//! builder, as `axum::serve` and tonic's server use it), with what neither sets:
//! - a timer, so that a client that sends its request headers too slowly is closed after
//!   `--header-read-timeout` (the slow-loris attack), and a deadline for each request's body
//!   ([`DeadlineBody`], HTTP listeners; the gRPC services hold their own);
//! - a first-request deadline and an idle timeout ([`Activity`]): a connection that opens no
//!   request within `--header-read-timeout` is dropped (an HTTP/2 preface and a SETTINGS frame
//!   are not a client), one with nothing open for `--idle-timeout` is closed gracefully
//!   (GOAWAY), and when its listener is full one idle for a second is closed so that a new
//!   client gets its place ([`Pressure`]);
//! - graceful shutdown that lets requests in flight finish, and a hard close for a connection
//!   whose graceful close does not end (a peer that never answers the GOAWAY's ping).
//!
//! tonic's own server loop does the same per connection (its `serve_connection`), without the
//! two timers; serving its routes here keeps one loop for all four listeners.

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected as _;

use super::metrics::{IdleClosedLabels, ListenerMetrics};
use crate::net::access::Deadlines;
use crate::net::activity::{Activity, Closing, Counted, Pressure};
use crate::net::connections::{Conn, Lane};

/// How long a connection asked to close at shutdown has to finish its requests (the caller
/// also bounds the whole shutdown).
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long an idle connection asked to close has to read its GOAWAY: it has nothing open,
/// and a full listener is waiting for its place.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The HTTP/2 settings of a listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Http2 {
    /// Only HTTP/2 (gRPC), or HTTP/1 too.
    pub(crate) only: bool,
    /// Streams a connection may have open at once.
    pub(crate) max_streams: u32,
    /// The window of each stream and of the connection, when not hyper's.
    pub(crate) windows: Option<(u32, u32)>,
}

/// What one listener serves, and how.
pub(crate) struct Serve<S> {
    /// The listener's name in metrics and logs.
    pub(crate) name: &'static str,
    /// The service of every request.
    pub(crate) service: S,
    /// The service of a connection admitted past the cap to answer probes ([`Lane::Probe`]).
    pub(crate) probes: Option<S>,
    pub(crate) http2: Http2,
    pub(crate) deadlines: Deadlines,
    /// Whether request bodies get `--body-read-timeout` here (the HTTP listeners).
    pub(crate) body_deadline: bool,
    pub(crate) pressure: Pressure,
    pub(crate) metrics: std::sync::Arc<ListenerMetrics>,
}

/// Serves each connection of `accepted` until `stop`, then waits for the requests in flight
/// (the caller bounds how long).
pub(crate) async fn serve<S, B>(
    mut accepted: mpsc::Receiver<Conn>,
    serve: Serve<S>,
    stop: CancellationToken,
) where
    S: tower::Service<http::Request<axum::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connections = TaskTracker::new();
    loop {
        let conn = tokio::select! {
            conn = accepted.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
            () = stop.cancelled() => break,
        };
        let service = match (conn.lane(), &serve.probes) {
            (Lane::Probe, Some(probes)) => probes.clone(),
            _ => serve.service.clone(),
        };
        connections.spawn(one(conn, service, &serve, stop.clone()));
    }
    drop(accepted);
    connections.close();
    connections.wait().await;
}

/// Serves one connection until it ends, closes for idleness, or `stop`.
fn one<S, B>(
    conn: Conn,
    service: S,
    serve: &Serve<S>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: tower::Service<http::Request<axum::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The limits in force as the connection starts (a reload changes them for the next).
    let (first, idle) = (serve.deadlines.headers(), serve.deadlines.idle());
    let body_timeout = serve.body_deadline.then(|| serve.deadlines.body());
    let probe = conn.lane() == Lane::Probe;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if serve.http2.only {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(first)
        // A probe's connection answers one request and closes.
        .keep_alive(!probe);
    let http2 = &mut builder.http2();
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(if probe { 1 } else { serve.http2.max_streams });
    if let Some((stream, connection)) = serve.http2.windows {
        http2
            .initial_stream_window_size(stream)
            .initial_connection_window_size(connection);
    }
    let info = conn.connect_info();
    let activity = Activity::new();
    let service = TowerToHyperService::new(tower::ServiceExt::map_request(
        service,
        move |request: http::Request<Incoming>| {
            let mut request = request.map(|body| match body_timeout {
                Some(timeout) => {
                    axum::body::Body::new(crate::net::access::DeadlineBody::new(body, timeout))
                }
                None => axum::body::Body::new(body),
            });
            request.extensions_mut().insert(info.clone());
            request
        },
    ));
    let service = Counted::new(service, activity.clone());
    let pressure = serve.pressure.clone();
    let closed = serve.metrics.closed_idle_connections.clone();
    let listener = serve.name;
    async move {
        let connection = builder.serve_connection(TokioIo::new(conn), service);
        tokio::pin!(connection);
        let hard = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(hard);
        let mut closing = false;
        loop {
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(error) = ended {
                        tracing::debug!(%error, listener, "a connection ended with an error");
                    }
                    break;
                }
                () = stop.cancelled(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    hard.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                why = activity.closing(first, idle, &pressure), if !closing => {
                    closed.get_or_create(&IdleClosedLabels { listener, reason: why.label() }).inc();
                    if matches!(why, Closing::NeverStarted | Closing::Stalled) {
                        // A client that never made a request may not finish a handshake, and
                        // one that does not take its answers would not take a GOAWAY: a
                        // graceful close would wait for them.
                        break;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    hard.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                }
                () = &mut hard, if closing => break,
            }
        }
    }
}
