//! The answers to a refused request: HTTP 429 or 503 with `Retry-After`, or for gRPC a
//! trailers-only `RESOURCE_EXHAUSTED` / `UNAVAILABLE` with `RetryInfo` and
//! `grpc-retry-pushback-ms`, so that clients (Wayfinder's balancer among them) wait as asked.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use tonic_types::{ErrorDetails, StatusExt};

use crate::grpc;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over the rate limit.
    Rate,
    /// Over the concurrency limit.
    Overloaded,
}

/// The refusal of a request with these headers, asking to retry after `wait`.
pub(crate) fn refuse<B: Default>(
    headers: &http::HeaderMap,
    refusal: Refusal,
    wait: Duration,
) -> Response<B> {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if grpc::is_grpc(headers) {
        let message = match refusal {
            Refusal::Rate => "rate limit exceeded",
            Refusal::Overloaded => "too many requests in flight",
        };
        let details = ErrorDetails::with_retry_info(Some(wait));
        let status = match refusal {
            Refusal::Rate => {
                tonic::Status::with_error_details(tonic::Code::ResourceExhausted, message, details)
            }
            Refusal::Overloaded => {
                tonic::Status::with_error_details(tonic::Code::Unavailable, message, details)
            }
        };
        let (mut parts, _) = status.into_http::<B>().into_parts();
        let pushback = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        parts.headers.insert(
            "grpc-retry-pushback-ms",
            HeaderValue::from_str(&pushback.to_string()).expect("digits"),
        );
        return Response::from_parts(parts, B::default());
    }
    let status = match refusal {
        Refusal::Rate => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.max(1).to_string()).expect("digits"),
    );
    response
}
