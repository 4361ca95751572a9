//! One balanced call: choose an endpoint, send, judge the outcome, and retry where it is safe
//! and the budget allows, until the call's deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use tokio::time::Instant;
use tower::retry::budget::Budget;
use tower::{Service, ServiceExt};

use super::Balancer;
use super::body::{Buffered, RequestBody};
use super::error::BalanceError;
use super::retry::{self, Verdict};
use crate::BoxError;
use crate::grpc;
use crate::http::Attempt;

/// The response future of [`Balance`](super::Balance).
pub type ResponseFuture<ResBody> =
    Pin<Box<dyn Future<Output = Result<Response<ResBody>, BoxError>> + Send + 'static>>;

/// Runs one call through `balancer` and `inner`.
pub(crate) async fn call<S, B, ResBody>(
    balancer: Balancer,
    inner: S,
    request: Request<B>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send,
{
    let config = &balancer.shared.config;
    let start = Instant::now();
    let (parts, body) = request.into_parts();
    let is_grpc = grpc::is_grpc(&parts.headers);
    let mut limit = config.deadline;
    let caller_timeout = is_grpc
        .then(|| retry::grpc_timeout(&parts.headers))
        .flatten();
    if let Some(timeout) = caller_timeout {
        limit = limit.min(timeout);
    }
    let deadline = start + limit;
    let idempotent = retry::is_idempotent(
        &parts.method,
        parts.uri.path(),
        &parts.headers,
        is_grpc,
        &config.idempotent_grpc_methods,
    );
    let mut body = if config.max_attempts > 1 {
        Buffered::read(body, config.max_replay_bytes)
            .await
            .map_err(|e| for_caller(BalanceError::Body(e), is_grpc))?
    } else {
        Buffered::once(body)
    };
    balancer.shared.budget.deposit();

    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut resend_count = 0u32;
    loop {
        let picked = balancer.pick(&tried).map_err(|e| for_caller(e, is_grpc))?;
        let endpoint = picked.endpoint;
        let attempt_deadline = deadline.min(Instant::now() + config.attempt_timeout);
        let mut attempt_parts = parts.clone();
        attempt_parts.uri = with_authority(&parts.uri, &endpoint.authority)?;
        // The caller's own gRPC deadline goes on, shortened by what the earlier attempts took.
        // (The attempt timeout is the balancer's, to the response head; the server never
        // sees it, so that a long stream is not cut.)
        if caller_timeout.is_some() {
            attempt_parts.headers.insert(
                "grpc-timeout",
                retry::grpc_timeout_value(deadline.saturating_duration_since(Instant::now())),
            );
        }
        attempt_parts.extensions.insert(Attempt {
            endpoint: endpoint.address.clone(),
            reason: picked.reason,
            resend_count,
            deadline: attempt_deadline,
        });
        let request = Request::from_parts(attempt_parts, body.next());

        let in_flight = endpoint.start();
        let sent = Instant::now();
        let mut service = inner.clone();
        let result = tokio::time::timeout_at(attempt_deadline, async move {
            service.ready().await?;
            service.call(request).await
        })
        .await;
        drop(in_flight);
        let (verdict, result) = match result {
            Ok(Ok(response)) => (
                retry::response_verdict(response.status(), response.headers(), is_grpc),
                Ok(response),
            ),
            Ok(Err(error)) => {
                let error: BoxError = error.into();
                (retry::error_verdict(error.as_ref()), Err(error))
            }
            Err(elapsed) => (Verdict::RetryIfIdempotent, Err(BoxError::from(elapsed))),
        };
        endpoint.record(sent, verdict.failed(), config, fastrand::f64());

        let may_retry = verdict.allows_retry(idempotent)
            && body.replayable()
            && resend_count + 1 < config.max_attempts;
        if !may_retry {
            return finish(result, deadline, limit, is_grpc);
        }
        let headers = result.as_ref().ok().map(Response::headers);
        let Some(wait) = retry::wait_before_retry(
            config,
            resend_count + 1,
            headers,
            deadline,
            &balancer.shared.budget,
        ) else {
            // No time left for the wait and an attempt, or no budget: the outcome as it is.
            return finish(result, deadline, limit, is_grpc);
        };
        drop(result);
        tokio::time::sleep(wait).await;
        tried.push(endpoint.address.clone());
        resend_count += 1;
    }
}

/// The last attempt's outcome; a timeout past the call's deadline says so.
fn finish<ResBody>(
    result: Result<Response<ResBody>, BoxError>,
    deadline: Instant,
    limit: std::time::Duration,
    grpc: bool,
) -> Result<Response<ResBody>, BoxError> {
    match result {
        Err(error) if is_elapsed(error.as_ref()) => {
            if Instant::now() >= deadline {
                Err(for_caller(BalanceError::DeadlineExceeded(limit), grpc))
            } else if grpc {
                Err(grpc_status(
                    GrpcCode::DeadlineExceeded,
                    format!("attempt timed out: {error}"),
                ))
            } else {
                Err(error)
            }
        }
        other => other,
    }
}

/// The balancer's own error as the caller reads it: a [`BalanceError`], or for gRPC a
/// `tonic::Status` with the matching code (tonic turns any other error into `UNKNOWN`).
fn for_caller(error: BalanceError, grpc: bool) -> BoxError {
    if !grpc {
        return error.into();
    }
    let message = error.to_string();
    let code = match error {
        BalanceError::NoEndpoints { .. } => GrpcCode::Unavailable,
        BalanceError::DeadlineExceeded(_) => GrpcCode::DeadlineExceeded,
        _ => GrpcCode::Internal,
    };
    grpc_status(code, message)
}

#[derive(Debug, Clone, Copy)]
enum GrpcCode {
    Unavailable,
    DeadlineExceeded,
    Internal,
}

/// A `tonic::Status` (without the `tonic` feature no tonic client can be the caller, and the
/// [`BalanceError`] message is the error).
#[cfg(feature = "tonic")]
fn grpc_status(code: GrpcCode, message: String) -> BoxError {
    let code = match code {
        GrpcCode::Unavailable => tonic::Code::Unavailable,
        GrpcCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        GrpcCode::Internal => tonic::Code::Internal,
    };
    tonic::Status::new(code, message).into()
}

#[cfg(not(feature = "tonic"))]
fn grpc_status(_code: GrpcCode, message: String) -> BoxError {
    message.into()
}

fn is_elapsed(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<tokio::time::error::Elapsed>() || error.is::<tower::timeout::error::Elapsed>()
}

/// `uri` aimed at `authority` (`http` unless it says otherwise).
fn with_authority(uri: &Uri, authority: &Authority) -> Result<Uri, BoxError> {
    let mut parts = uri.clone().into_parts();
    if parts.scheme.is_none() {
        parts.scheme = Some(Scheme::HTTP);
    }
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Ok(Uri::from_parts(parts)?)
}
