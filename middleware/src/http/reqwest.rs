//! Tracing for reqwest, as a `reqwest-middleware` middleware.

use http::Extensions;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanBuilder, SpanKind};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use super::Attempt;
use super::attributes;
use super::body::{Completion, Side};
use super::client::{error_type, start, with_attempt};
use crate::propagation::Propagation;

/// A [`reqwest_middleware::Middleware`] that opens a CLIENT span per request and writes its
/// trace context into the request headers, like [`ClientLayer`](crate::ClientLayer) does for
/// tower clients. The span ends when the response head arrives (reqwest hands the body to the
/// caller, outside the middleware).
///
/// ```
/// use reqwest_middleware::ClientBuilder;
/// use wayfinder_middleware::ReqwestTracing;
///
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(ReqwestTracing::new())
///     .build();
/// # let _ = client;
/// ```
#[derive(Clone, Debug)]
pub struct ReqwestTracing {
    propagation: Propagation,
}

impl Default for ReqwestTracing {
    fn default() -> Self {
        ReqwestTracing::new()
    }
}

impl ReqwestTracing {
    /// Injects what [`Propagation::current`] says: W3C `traceparent`, `tracestate` and
    /// `baggage` unless `init()` was told otherwise.
    pub fn new() -> Self {
        ReqwestTracing {
            propagation: Propagation::current(),
        }
    }

    /// Injects with `propagation` instead.
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }
}

#[async_trait::async_trait]
impl Middleware for ReqwestTracing {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let url = request.url();
        let mut attributes = Vec::with_capacity(8);
        let method = attributes::push_method(&mut attributes, request.method());
        if let Some(host) = url.host_str() {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(port) = url.port_or_known_default() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        attributes.push(KeyValue::new("url.full", redacted(url)));
        let builder = SpanBuilder::from_name(attributes::route_less_name(method))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes);
        let builder = with_attempt(builder, extensions.get::<Attempt>());
        let cx = start(builder, &self.propagation, request.headers_mut());
        let mut completion = Completion::new(cx, Side::Client, false);
        let result = next.run(request, extensions).await;
        match &result {
            Ok(response) => completion.response(response.status(), response.headers()),
            Err(reqwest_middleware::Error::Reqwest(error)) => {
                completion.failed(error_type(error), error.to_string())
            }
            Err(error) => completion.failed("_OTHER", error.to_string()),
        }
        result
    }
}

/// The URL without user name, password or signed-URL secrets.
fn redacted(url: &reqwest::Url) -> String {
    let query = url.query().map(attributes::redact_query);
    let changed = query
        .as_ref()
        .is_some_and(|q| matches!(q, std::borrow::Cow::Owned(_)));
    if url.username().is_empty() && url.password().is_none() && !changed {
        return url.to_string();
    }
    let mut url = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        // Setting credentials only fails for URLs that cannot have them, which had none.
        let _ = url.set_username("REDACTED");
        let _ = url.set_password(Some("REDACTED"));
    }
    if changed {
        url.set_query(query.as_deref());
    }
    url.to_string()
}
