//! One balanced call: choose an endpoint, send, judge the outcome, and retry where it is safe
//! and the budget allows, until the call's deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use tokio::time::Instant;
use tower::retry::budget::Budget;
use tower::{Service, ServiceExt};

use super::Balancer;
use super::attempt::Attempt;
use super::body::{Buffered, RequestBody};
use super::error::BalanceError;
use super::retry::{self, Verdict};
use crate::grpc;
use crate::http::BoxError;

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
    let (mut parts, body) = request.into_parts();
    let is_grpc = grpc::is_grpc(&parts.headers);
    let mut limit = config.deadline;
    if is_grpc && let Some(timeout) = retry::grpc_timeout(&parts.headers) {
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
            .map_err(|e| BoxError::from(BalanceError::Body(e)))?
    } else {
        Buffered::once(body)
    };
    balancer.shared.budget.deposit();

    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut resend_count = 0u32;
    loop {
        let picked = balancer.pick(&tried)?;
        let endpoint = picked.endpoint;
        let attempt_deadline = deadline.min(Instant::now() + config.attempt_timeout);
        let mut attempt_parts = parts.clone();
        attempt_parts.uri = with_authority(&parts.uri, &endpoint.authority)?;
        if is_grpc {
            attempt_parts.headers.insert(
                "grpc-timeout",
                retry::grpc_timeout_value(
                    attempt_deadline.saturating_duration_since(Instant::now()),
                ),
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
            return finish(result, deadline, limit);
        }
        let mut wait = retry::backoff(
            resend_count + 1,
            config.backoff_base,
            config.backoff_max,
            fastrand::f64(),
        );
        if let Ok(response) = &result
            && let Some(asked) = retry::retry_after(response.headers(), SystemTime::now())
        {
            wait = wait.max(asked);
        }
        // No time left for the wait and an attempt, or no budget: the outcome as it is.
        if Instant::now() + wait >= deadline || !balancer.shared.budget.withdraw() {
            return finish(result, deadline, limit);
        }
        drop(result);
        tokio::time::sleep(wait).await;
        tried.push(endpoint.address.clone());
        resend_count += 1;
        parts.extensions.remove::<Attempt>();
    }
}

/// The last attempt's outcome; a timeout past the call's deadline says so.
fn finish<ResBody>(
    result: Result<Response<ResBody>, BoxError>,
    deadline: Instant,
    limit: std::time::Duration,
) -> Result<Response<ResBody>, BoxError> {
    match result {
        Err(error) if Instant::now() >= deadline && is_elapsed(error.as_ref()) => {
            Err(BalanceError::DeadlineExceeded(limit).into())
        }
        other => other,
    }
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
