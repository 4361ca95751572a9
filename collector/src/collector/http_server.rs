//! The HTTP listeners' serve loop (hyper-util's HTTP/1 and HTTP/2 builder, as `axum::serve`
//! uses), with what `axum::serve` does not set: a timer, so that a client that sends its
//! request headers too slowly is closed after `--header-read-timeout` (the slow-loris
//! attack), a deadline for each request's body ([`DeadlineBody`]), and graceful shutdown that
//! lets requests in flight finish.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::connections::Conn;
use crate::access::{DeadlineBody, Deadlines};

/// Serves `router` on each connection of `accepted` until `stop`, then waits for the requests
/// in flight (the caller bounds how long).
pub(super) async fn serve(
    mut accepted: mpsc::Receiver<Conn>,
    router: axum::Router,
    deadlines: Deadlines,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let conn = tokio::select! {
            conn = accepted.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
            () = stop.cancelled() => break,
        };
        // The limits in force as the connection starts (a reload changes them for the next).
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(deadlines.headers());
        builder.http2().timer(TokioTimer::new());
        let body_timeout = deadlines.body();
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
