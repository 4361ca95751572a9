//! Asking another collector of the fleet for a trace: a plain HTTP client to the owners' query
//! APIs, the caller's token passed on, the answer passed back as it came.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http::{HeaderName, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::error::ApiError;

/// The mark of a lookup another collector sent on: answered here, never forwarded again.
pub(super) const FORWARDED: HeaderName = HeaderName::from_static("x-wayfinder-forwarded");

/// How long the owner has to answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// The client that asks the owners.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder(Client<HttpConnector, Empty<Bytes>>);

impl Default for Forwarder {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Forwarder(Client::builder(TokioExecutor::new()).build(connector))
    }
}

pub(super) async fn forward(
    forwarder: &Forwarder,
    base: &str,
    path: &str,
    headers: Vec<(HeaderName, http::HeaderValue)>,
) -> Response {
    let uri: Uri = match format!("{base}{path}").parse() {
        Ok(uri) => uri,
        Err(error) => {
            return ApiError::Internal(format!("the owner's URL {base} is not valid: {error}"))
                .into_response();
        }
    };
    let mut forwarded = http::Request::get(uri).header(FORWARDED, "1");
    for (name, value) in headers {
        forwarded = forwarded.header(name, value);
    }
    let forwarded = match forwarded.body(Empty::new()) {
        Ok(forwarded) => forwarded,
        Err(error) => return ApiError::Internal(error.to_string()).into_response(),
    };
    match tokio::time::timeout(FORWARD_TIMEOUT, forwarder.0.request(forwarded)).await {
        Ok(Ok(answer)) => answer.map(Body::new).into_response(),
        Ok(Err(error)) => ApiError::Unavailable(format!(
            "the collector that owns this trace's partition ({base}) did not answer: {error}; retry"
        ))
        .into_response(),
        Err(_) => ApiError::Unavailable(format!(
            "the collector that owns this trace's partition ({base}) did not answer within {FORWARD_TIMEOUT:?}; retry"
        ))
        .into_response(),
    }
}
