//! The client layer: opens a CLIENT span per outgoing call and writes its trace context into
//! the request.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use http::{Request, Response};
use opentelemetry::trace::{SpanBuilder, SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Attempt;
use super::attributes;
use super::body::{Completion, Side, TracedBody};
use super::request_id::{self, RequestId};
use crate::BoxError;
use crate::grpc;
use crate::propagation::Propagation;
use crate::tracer;

/// A tower [`Layer`] for outgoing calls: a hyper-util client, a tonic `Channel`, any
/// `Service<http::Request<B>>`. Each call gets a CLIENT span (HTTP or gRPC attributes by the
/// semantic conventions), the span's context is written into the request headers
/// ([`Propagation`], W3C by default), and the `x-request-id` of the request being served is
/// forwarded when the call has none of its own.
///
/// The span ends with the response body, so a gRPC status in the trailers is recorded. Errors
/// of the inner service are recorded as `error.type` (`timeout` for tower's and tokio's
/// timeouts and I/O timeouts); a call dropped before it answered is `cancelled`.
///
/// ```
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use wayfinder_middleware::ClientLayer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let client = tower::ServiceBuilder::new().layer(ClientLayer::new()).service(client);
/// # let _ = client;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ClientLayer {
    propagation: Propagation,
    conventions: grpc::RpcConventions,
}

impl Default for ClientLayer {
    fn default() -> Self {
        ClientLayer::new()
    }
}

impl ClientLayer {
    /// Injects what [`Propagation::current`] says: W3C `traceparent`, `tracestate` and
    /// `baggage` unless `init()` was told otherwise.
    pub fn new() -> Self {
        ClientLayer {
            propagation: Propagation::current(),
            conventions: grpc::RpcConventions::from_env(),
        }
    }

    /// Injects with `propagation` instead (for example also B3 for a mesh).
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Follows these RPC conventions for gRPC spans (default: what
    /// `OTEL_SEMCONV_STABILITY_OPT_IN` says).
    pub fn rpc_conventions(mut self, conventions: grpc::RpcConventions) -> Self {
        self.conventions = conventions;
        self
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService {
            inner,
            propagation: self.propagation.clone(),
            conventions: self.conventions,
        }
    }
}

/// The service [`ClientLayer`] produces.
#[derive(Clone, Debug)]
pub struct ClientService<S> {
    inner: S,
    propagation: Propagation,
    conventions: grpc::RpcConventions,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClientService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = BoxError;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let grpc = grpc::is_grpc(request.headers());
        let builder = if grpc {
            grpc_span(&request, self.conventions)
        } else {
            http_span(&request)
        };
        let attempt = request.extensions().get::<Attempt>();
        let deadline = attempt.map(|a| Box::pin(tokio::time::sleep_until(a.deadline)));
        let builder = with_attempt(builder, attempt);
        let cx = start(builder, &self.propagation, request.headers_mut());
        let inner = self.inner.call(request);
        ClientFuture {
            inner,
            completion: Some(
                Completion::new(cx, Side::Client, grpc).with_conventions(self.conventions),
            ),
            deadline,
        }
    }
}

/// Adds how the balancer routed this attempt, if it did.
pub(crate) fn with_attempt(mut builder: SpanBuilder, attempt: Option<&Attempt>) -> SpanBuilder {
    if let Some(attempt) = attempt {
        let mut attributes = builder.attributes.take().unwrap_or_default();
        attempt.attributes(&mut attributes);
        builder.attributes = Some(attributes);
    }
    builder
}

/// Starts the CLIENT span as a child of the current context and writes its trace context and
/// the served request's `x-request-id` into `headers`.
pub(crate) fn start(
    builder: SpanBuilder,
    propagation: &Propagation,
    headers: &mut http::HeaderMap,
) -> Context {
    let cx = tracer::start(builder, &current_context());
    propagation.inject_into(&cx, headers);
    if !headers.contains_key(request_id::HEADER)
        && let Some(id) = RequestId::from_context(&cx)
    {
        headers.insert(request_id::HEADER, id.header_value().clone());
    }
    cx
}

/// The context of the caller: the attached OpenTelemetry context, or else the current
/// `tracing` span's (for a subscriber that does not activate contexts on span entry).
fn current_context() -> Context {
    let current = Context::current();
    if current.span().span_context().is_valid() {
        return current;
    }
    let span = tracing::Span::current();
    if span.is_disabled() {
        current
    } else {
        span.context()
    }
}

fn http_span<B>(request: &Request<B>) -> SpanBuilder {
    let mut attributes = Vec::with_capacity(8);
    let method = attributes::push_method(&mut attributes, request.method());
    attributes::push_server(&mut attributes, request);
    attributes.push(KeyValue::new(
        "url.full",
        attributes::url_full(request.uri()),
    ));
    if let Some(version) = attributes::protocol_version(request.version()) {
        attributes.push(KeyValue::new("network.protocol.version", version));
    }
    SpanBuilder::from_name(attributes::route_less_name(method))
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
}

fn grpc_span<B>(request: &Request<B>, conventions: grpc::RpcConventions) -> SpanBuilder {
    let path = request.uri().path();
    let mut attributes = Vec::with_capacity(6);
    // A client calls through its stub: the method is the one it means.
    attributes::push_rpc(
        &mut attributes,
        path,
        conventions,
        attributes::Recognized::Yes,
    );
    attributes::push_server(&mut attributes, request);
    SpanBuilder::from_name(grpc::span_name(path, conventions))
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
}

/// A low-cardinality `error.type` for a failed call: `timeout` when any error in the chain is
/// a timeout, else `_OTHER`.
pub(crate) fn error_type(error: &(dyn StdError + 'static)) -> &'static str {
    let mut current = Some(error);
    while let Some(error) = current {
        let timed_out = error.is::<tower::timeout::error::Elapsed>()
            || error.is::<tokio::time::error::Elapsed>()
            || error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || error
                .downcast_ref::<::reqwest::Error>()
                .is_some_and(::reqwest::Error::is_timeout);
        if timed_out {
            return "timeout";
        }
        current = error.source();
    }
    "_OTHER"
}

pin_project! {
    /// The response future of [`ClientService`].
    pub struct ClientFuture<F> {
        #[pin]
        inner: F,
        completion: Option<Completion>,
        // The balancer's deadline for this attempt.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: fmt::Debug> fmt::Debug for ClientFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<TracedBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                let Some(deadline) = this.deadline.as_mut() else {
                    return Poll::Pending;
                };
                ready!(deadline.as_mut().poll(cx));
                let error = tower::timeout::error::Elapsed::new();
                if let Some(completion) = this.completion.as_mut() {
                    completion.failed("timeout", error.to_string());
                }
                return Poll::Ready(Err(error.into()));
            }
        };
        let mut completion = this.completion.take();
        match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                if let Some(completion) = completion.as_mut() {
                    completion.response(parts.status, &parts.headers);
                }
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    TracedBody::new(body, completion),
                )))
            }
            Err(error) => {
                let error: BoxError = error.into();
                if let Some(completion) = completion.as_mut() {
                    completion.failed(error_type(error.as_ref()), error.to_string());
                }
                Poll::Ready(Err(error))
            }
        }
    }
}
