//! The end of a traced exchange: the span stays open until the response body has been sent or
//! received, because a gRPC status arrives in the trailers after the last message.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;

use crate::grpc;

/// Which end of the call a span describes; it decides which HTTP statuses are errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// 5xx is an error: the server failed. 4xx is the client's fault.
    Server,
    /// 4xx and 5xx are errors: the call did not get what it asked for.
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for the response head.
    Pending,
    /// The head is in; the body is streaming.
    Streaming,
    /// Everything is recorded.
    Done,
}

/// Records the outcome of a call on its span and ends the span when dropped. A call whose
/// future is dropped before the response (a caller's timeout, a disconnect) is recorded as
/// `error.type = "cancelled"`.
#[derive(Debug)]
pub(crate) struct Completion {
    cx: Context,
    side: Side,
    grpc: bool,
    stage: Stage,
    conventions: grpc::RpcConventions,
    /// The stable `rpc.method` to write when the call completes (`package.Service/Method`).
    deferred_method: Option<String>,
}

impl Completion {
    /// `cx` holds the call's span.
    pub(crate) fn new(cx: Context, side: Side, grpc: bool) -> Self {
        Completion {
            cx,
            side,
            grpc,
            stage: Stage::Pending,
            conventions: grpc::RpcConventions::default(),
            deferred_method: None,
        }
    }

    /// Writes the stable `rpc.method` when the call completes: `_OTHER` with
    /// `rpc.method_original` if the server answers UNIMPLEMENTED, else `method`.
    pub(crate) fn with_deferred_method(mut self, method: Option<String>) -> Self {
        self.deferred_method = method;
        self
    }

    /// The deferred `rpc.method`, once: `unimplemented` says the server did not know it.
    fn record_method(&mut self, unimplemented: bool) {
        if let Some(method) = self.deferred_method.take() {
            if unimplemented {
                self.set("rpc.method", "_OTHER");
                self.set("rpc.method_original", method);
            } else {
                self.set("rpc.method", method);
            }
        }
    }

    /// Follows `conventions` for the RPC attributes.
    pub(crate) fn with_conventions(mut self, conventions: grpc::RpcConventions) -> Self {
        self.conventions = conventions;
        self
    }

    /// The context with the call's span.
    pub(crate) fn context(&self) -> &Context {
        &self.cx
    }

    fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    fn fail(&self, error_type: impl Into<opentelemetry::Value>, description: String) {
        self.set("error.type", error_type);
        self.cx.span().set_status(Status::error(description));
    }

    /// Records the response head. A gRPC status in the head (a trailers-only response) ends
    /// the call here; otherwise it is awaited in the trailers.
    pub(crate) fn response(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.stage = Stage::Streaming;
        if self.grpc {
            if let Some(code) = grpc::status(headers) {
                self.grpc_status(code);
            } else if status != StatusCode::OK {
                self.grpc_status(grpc::status_from_http(status));
            }
            return;
        }
        self.set("http.response.status_code", i64::from(status.as_u16()));
        let failed = match self.side {
            Side::Server => status.is_server_error(),
            Side::Client => status.is_client_error() || status.is_server_error(),
        };
        if failed {
            // The conventions ask for no description when the status code says it all.
            self.fail(status.as_str().to_owned(), String::new());
        }
    }

    /// Records a handler that panicked: its response is the 500 the panic handler made
    /// (`error.type = "panic"`; for gRPC also `rpc.grpc.status_code = 13`, INTERNAL).
    pub(crate) fn panicked(&mut self, message: &str) {
        if self.grpc {
            if self.conventions.experimental() {
                self.set("rpc.grpc.status_code", 13_i64);
            }
            if self.conventions.stable() {
                self.set("rpc.response.status_code", "INTERNAL");
            }
        } else {
            self.set("http.response.status_code", 500_i64);
        }
        self.fail("panic", format!("panic: {message}"));
        self.record_method(false);
        self.stage = Stage::Done;
    }

    /// The call failed before a response: `error_type` is a low-cardinality class
    /// (`timeout`, `_OTHER`), `description` the error's message. A gRPC call gets the status
    /// tonic would report: DEADLINE_EXCEEDED for a timeout, UNAVAILABLE for a client's
    /// transport error, UNKNOWN for a server's error.
    pub(crate) fn failed(&mut self, error_type: &'static str, description: String) {
        if self.grpc {
            let code = match (error_type, self.side) {
                ("timeout", _) => 4,
                (_, Side::Client) => 14,
                (_, Side::Server) => 2,
            };
            self.grpc_status_with(code, description);
        } else {
            self.fail(error_type, description);
        }
        self.stage = Stage::Done;
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if self.grpc
            && self.stage != Stage::Done
            && let Some(code) = grpc::status(trailers)
        {
            self.grpc_status(code);
        }
    }

    fn body_failed(&mut self) {
        if self.stage != Stage::Done {
            if self.grpc {
                self.grpc_status_with(2, "the body failed".to_owned());
            } else {
                self.fail("body", "the body failed".to_owned());
            }
            self.stage = Stage::Done;
        }
    }

    fn end_of_stream(&mut self) {
        if self.grpc && self.stage == Stage::Streaming {
            // A gRPC response must end with a status; one without is UNKNOWN.
            self.grpc_status(2);
        }
        self.stage = Stage::Done;
    }

    fn grpc_status(&mut self, code: i32) {
        self.grpc_status_with(code, String::new());
    }

    /// Records a gRPC status; `error.type` is the code's name for every code but OK.
    fn grpc_status_with(&mut self, code: i32, description: String) {
        self.record_method(code == 12);
        if self.conventions.experimental() {
            self.set("rpc.grpc.status_code", i64::from(code));
        }
        if self.conventions.stable() {
            self.set("rpc.response.status_code", grpc::code_name(code));
        }
        // On the server only the server's own codes are errors (the gRPC conventions); on the
        // client every code but OK is.
        let failed = match self.side {
            Side::Server => grpc::is_server_error(code),
            Side::Client => code != 0,
        };
        if failed {
            self.fail(grpc::code_name(code), description);
        }
        if code == 12 && self.side == Side::Server {
            // UNIMPLEMENTED: the method does not exist, so its name is the caller's invention;
            // keep it out of span names (the attributes keep the path).
            if self.conventions.stable() {
                self.cx
                    .span()
                    .update_name(grpc::unknown_method_name(self.conventions));
            } else {
                self.cx.span().update_name("gRPC _OTHER");
            }
        }
        self.stage = Stage::Done;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        match self.stage {
            Stage::Pending if self.grpc => {
                self.grpc_status_with(1, "dropped before the response".to_owned());
            }
            Stage::Pending => self.fail("cancelled", "dropped before the response".to_owned()),
            // The body was dropped before its status arrived: the peer went away.
            Stage::Streaming if self.grpc => self.grpc_status(1),
            Stage::Streaming | Stage::Done => {}
        }
        // A call that ended with no status at all (a non-gRPC answer on a gRPC path): the
        // method as called.
        self.record_method(false);
        self.cx.span().end();
    }
}

pin_project! {
    /// A response body that keeps the call's span open until it ends, and reads the gRPC
    /// status from its trailers.
    #[derive(Debug)]
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        completion: Option<Completion>,
    }
}

impl<B> TracedBody<B> {
    pub(crate) fn new(inner: B, completion: Option<Completion>) -> Self {
        TracedBody { inner, completion }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for TracedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        // Code that runs while a streaming body is polled (a server-streaming RPC, SSE) stays in
        // the request's trace.
        let attached = this
            .completion
            .as_ref()
            .map(|completion| completion.context().clone().attach());
        let frame = ready!(this.inner.poll_frame(cx));
        drop(attached);
        let finished = match &frame {
            Some(Ok(frame)) => match frame.trailers_ref() {
                Some(trailers) => {
                    if let Some(completion) = this.completion.as_mut() {
                        completion.trailers(trailers);
                    }
                    true
                }
                None => false,
            },
            Some(Err(_)) => {
                if let Some(completion) = this.completion.as_mut() {
                    completion.body_failed();
                }
                true
            }
            None => true,
        };
        if finished {
            // Nothing more will come: end the span now rather than whenever the connection
            // gets around to dropping the body.
            if let Some(mut completion) = this.completion.take() {
                completion.end_of_stream();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
