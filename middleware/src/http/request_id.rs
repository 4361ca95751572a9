//! `x-request-id`: kept when the caller sent one, set to a fresh UUID when not, echoed on the
//! response and forwarded unchanged on the calls made while serving the request.

use http::HeaderValue;

/// The header's name.
pub(crate) const HEADER: &str = "x-request-id";

/// The request id of the request being served.
///
/// The server layer puts it in the request's extensions (for handlers) and in the
/// OpenTelemetry context of the request's span (for the client layers, which forward it).
///
/// ```
/// use axum::Extension;
/// use wayfinder_middleware::RequestId;
///
/// async fn handler(Extension(id): Extension<RequestId>) -> String {
///     format!("request {}", id.as_str())
/// }
/// # let _ = axum::Router::<()>::new().route("/", axum::routing::get(handler));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub(crate) HeaderValue);

impl RequestId {
    /// A fresh random id (UUID v4).
    pub(crate) fn generate() -> Self {
        let id = uuid::Uuid::new_v4();
        let mut buffer = uuid::Uuid::encode_buffer();
        let text = id.hyphenated().encode_lower(&mut buffer);
        RequestId(HeaderValue::from_str(text).expect("a UUID is a valid header value"))
    }

    /// The id as text (empty if the caller sent bytes that are not visible ASCII).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    /// The request id carried by an OpenTelemetry context, if a server layer put one there.
    pub fn from_context(cx: &opentelemetry::Context) -> Option<&RequestId> {
        cx.get::<RequestId>()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// The request's id: its `x-request-id` header, set first when missing.
pub(crate) fn ensure(headers: &mut http::HeaderMap) -> RequestId {
    if let Some(existing) = headers.get(HEADER) {
        return RequestId(existing.clone());
    }
    let id = RequestId::generate();
    headers.insert(HEADER, id.0.clone());
    id
}
