//! The HTTP listeners' serve loop (hyper-util's HTTP/1 and HTTP/2 builder, as `axum::serve`
//! uses), with what `axum::serve` does not set: a timer, so that a client that sends its
//! request headers too slowly is closed after `--header-read-timeout` (the slow-loris
//! attack), a deadline for each request's body ([`DeadlineBody`]), and graceful shutdown that
//! lets requests in flight finish.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::connections::Conn;
use crate::access::DeadlineBody;

/// How long a client has for its request's headers, and then for its body.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub(super) headers: Duration,
    pub(super) body: Duration,
}

/// Serves `router` on each connection of `accepted` until `stop`, then waits for the requests
/// in flight (the caller bounds how long).
pub(super) async fn serve(
    mut accepted: mpsc::Receiver<Conn>,
    router: axum::Router,
    timeouts: Timeouts,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.headers);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let conn = tokio::select! {
            conn = accepted.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
            () = stop.cancelled() => break,
        };
        let body_timeout = timeouts.body;
        let service = TowerToHyperService::new(router.clone().map_request(
            move |request: http::Request<hyper::body::Incoming>| {
                request.map(|body| axum::body::Body::new(DeadlineBody::new(body, body_timeout)))
            },
        ));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(conn), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "an HTTP connection ended with an error");
            }
        });
    }
    drop(accepted);
    graceful.shutdown().await;
}
