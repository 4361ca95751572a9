//! The answers to a refused request: HTTP 429 or 503 with `Retry-After`, or for gRPC a
//! trailers-only `RESOURCE_EXHAUSTED` / `UNAVAILABLE` with `RetryInfo` and
//! `grpc-retry-pushback-ms`, so that clients (Wayfinder's balancer among them) wait as asked.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
#[cfg(feature = "tonic")]
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
        let mut parts = grpc_refusal(refusal, message, wait);
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

/// A trailers-only gRPC answer with `RetryInfo` in `grpc-status-details-bin`.
#[cfg(feature = "tonic")]
fn grpc_refusal(refusal: Refusal, message: &str, wait: Duration) -> http::response::Parts {
    let details = ErrorDetails::with_retry_info(Some(wait));
    let code = match refusal {
        Refusal::Rate => tonic::Code::ResourceExhausted,
        Refusal::Overloaded => tonic::Code::Unavailable,
    };
    let status = tonic::Status::with_error_details(code, message, details);
    status.into_http::<()>().into_parts().0
}

/// A trailers-only gRPC answer from the headers alone (`grpc-status`, `grpc-message`); without
/// tonic there is no protobuf `RetryInfo`, and `grpc-retry-pushback-ms` carries the wait.
#[cfg(not(feature = "tonic"))]
fn grpc_refusal(refusal: Refusal, message: &str, _wait: Duration) -> http::response::Parts {
    let code = match refusal {
        Refusal::Rate => "8",        // RESOURCE_EXHAUSTED
        Refusal::Overloaded => "14", // UNAVAILABLE
    };
    let mut response = Response::new(());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static(code));
    headers.insert(
        "grpc-message",
        HeaderValue::from_str(&message.replace(' ', "%20")).expect("ascii"),
    );
    response.into_parts().0
}
