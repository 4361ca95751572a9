//! OTLP/gRPC: `TraceService/Export` and `LogsService/Export`.
//!
//! The services are written against tonic's server machinery with a pass-through codec rather
//! than tonic's generated servers, for two reasons: an undecodable request must be answered
//! `INVALID_ARGUMENT` (the generated code answers `INTERNAL`), and the queue's budget is checked
//! before the protobuf is decoded.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures::future::{BoxFuture, ready};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{Ingest, IngestError, PreparedTraces, Protocol, Refusal, TraceRequest};
use crate::net::access::{BodyTimedOut, DeadlineBody, Deadlines};

/// How long a refused client is asked to wait before it retries.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A codec that passes message bytes through unchanged: the collector decodes them itself, and
/// the load generator sends pre-encoded requests with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// gRPC path of the trace export.
pub const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// gRPC path of the logs export.
pub(crate) const LOGS_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// What one OTLP export service takes: its name, its one method's path, and what it does
/// with a message (traces and logs differ only there).
pub trait Export: Send + Sync + 'static {
    /// The service's gRPC name.
    const NAME: &'static str;
    /// Its `Export` method's path.
    const PATH: &'static str;

    /// Takes one message (the request's protobuf bytes), answering the response's bytes.
    fn export(ingest: Arc<Ingest>, body: Bytes) -> BoxFuture<'static, Result<Bytes, Status>>;
}

/// An OTLP export service (`TraceService`, `LogsService`) on tonic's server machinery with the
/// pass-through codec.
#[derive(Debug)]
pub struct ExportService<E> {
    ingest: Arc<Ingest>,
    max_message_bytes: usize,
    deadlines: Deadlines,
    export: std::marker::PhantomData<fn() -> E>,
}

impl<E> Clone for ExportService<E> {
    fn clone(&self) -> Self {
        Self {
            ingest: self.ingest.clone(),
            max_message_bytes: self.max_message_bytes,
            deadlines: self.deadlines.clone(),
            export: std::marker::PhantomData,
        }
    }
}

/// The OTLP `TraceService`.
pub type TraceService = ExportService<Traces>;
/// The OTLP `LogsService`.
pub(crate) type LogsService = ExportService<Logs>;

impl<E: Export> ExportService<E> {
    /// The service, refusing messages over `max_message_bytes` after decompression.
    pub fn new(ingest: Arc<Ingest>, max_message_bytes: usize) -> Self {
        Self {
            ingest,
            max_message_bytes,
            deadlines: Deadlines::default(),
            export: std::marker::PhantomData,
        }
    }

    /// Refuses (`DEADLINE_EXCEEDED`) a request whose message has not arrived in full within
    /// `deadlines`' body limit of its headers, read at each request (a reload changes it in
    /// place); 30 s unless set.
    pub fn deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }
}

/// `request` with its body due within `timeout`: past it, the call fails `DEADLINE_EXCEEDED`
/// (tonic answers a `Status` found in a body error as it is), counted as `body_timeout`.
fn with_deadline(request: HttpRequest, timeout: Duration, ingest: &Arc<Ingest>) -> HttpRequest {
    let ingest = ingest.clone();
    request.map(|body| {
        tonic::body::Body::new(http_body_util::BodyExt::map_err(
            DeadlineBody::new(body, timeout),
            move |error| -> Box<dyn std::error::Error + Send + Sync> {
                if BodyTimedOut::is_cause_of(&*error) {
                    ingest.refuse_request(Protocol::Grpc, Refusal::BodyTimeout);
                    Box::new(Status::deadline_exceeded(format!(
                        "{error}; send it faster, or raise --body-read-timeout"
                    )))
                } else {
                    error
                }
            },
        ))
    })
}

impl<E: Export> NamedService for ExportService<E> {
    const NAME: &'static str = E::NAME;
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

fn grpc(max_message_bytes: usize) -> tonic::server::Grpc<RawCodec> {
    tonic::server::Grpc::new(RawCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .apply_max_message_size_config(Some(max_message_bytes), None)
}

impl<E: Export> tower::Service<HttpRequest> for ExportService<E> {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        if request.uri().path() != E::PATH {
            return Box::pin(ready(Ok(
                Status::unimplemented("no such method").into_http()
            )));
        }
        let request = with_deadline(request, self.deadlines.body(), &self.ingest);
        let mut grpc = grpc(self.max_message_bytes);
        let ingest = self.ingest.clone();
        let export = Unary::<E>(ingest.clone(), std::marker::PhantomData);
        Box::pin(async move { Ok(size_refusal(grpc.unary(export, request).await, &ingest)) })
    }
}

/// tonic refuses a message over `--grpc-max-message-bytes` with `OUT_OF_RANGE` when it came
/// plain and `RESOURCE_EXHAUSTED` when it came compressed; gRPC's own servers answer
/// `RESOURCE_EXHAUSTED` for both (grpc-go's "received message larger than max"), and the
/// receivers answer neither code otherwise: one code, counted as `too_large`.
fn size_refusal(response: HttpResponse, ingest: &Ingest) -> HttpResponse {
    match Status::from_header_map(response.headers()) {
        Some(status) if matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted) => {
            ingest.refuse_request(Protocol::Grpc, Refusal::TooLarge);
            Status::resource_exhausted(format!(
                "{}; the most a message may have is --grpc-max-message-bytes, after decompression",
                status.message()
            ))
            .into_http()
        }
        _ => response,
    }
}

/// One export call, as tonic's unary machinery runs it.
struct Unary<E>(Arc<Ingest>, std::marker::PhantomData<fn() -> E>);

impl<E: Export> UnaryService<Bytes> for Unary<E> {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let export = E::export(self.0.clone(), request.into_inner());
        Box::pin(async move { Ok(tonic::Response::new(export.await?)) })
    }
}

/// Traces: decoded straight into Arrow (on the decode pool when large), then queued.
#[derive(Debug)]
pub struct Traces;

impl Export for Traces {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = TRACE_EXPORT_PATH;

    fn export(ingest: Arc<Ingest>, body: Bytes) -> BoxFuture<'static, Result<Bytes, Status>> {
        Box::pin(async move {
            let pool = ingest.pool().clone();
            let decoding = ingest.clone();
            // Decoding is CPU work: large requests leave the runtime's workers.
            let prepared = pool
                .run(body.len(), move || prepare_traces(&decoding, body))
                .await
                .map_err(|e| {
                    ingest.refuse_request(Protocol::Grpc, Refusal::Internal);
                    Status::internal(e.to_string())
                })??;
            let response = ingest.commit_traces(prepared).await.map_err(into_status)?;
            Ok(response.encode_to_vec().into())
        })
    }
}

/// Logs: the health events among them go to the registry.
#[derive(Debug)]
pub(crate) struct Logs;

impl Export for Logs {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = LOGS_EXPORT_PATH;

    fn export(ingest: Arc<Ingest>, body: Bytes) -> BoxFuture<'static, Result<Bytes, Status>> {
        Box::pin(async move {
            let request = ExportLogsServiceRequest::decode(body).map_err(|e| {
                ingest.refuse_request(Protocol::Grpc, Refusal::Malformed);
                Status::invalid_argument(format!("cannot decode ExportLogsServiceRequest: {e}"))
            })?;
            let response = ingest
                .export_logs(Protocol::Grpc, &request)
                .await
                .map_err(into_status)?;
            Ok(response.encode_to_vec().into())
        })
    }
}

fn prepare_traces(ingest: &Ingest, body: Bytes) -> Result<PreparedTraces, Status> {
    ingest
        .check_room(Protocol::Grpc, body.len())
        .map_err(into_status)?;
    ingest
        .prepare_traces(Protocol::Grpc, TraceRequest::Protobuf(&body))
        .map_err(|e| {
            if matches!(e, IngestError::Malformed(_)) {
                ingest.refuse_request(Protocol::Grpc, Refusal::Malformed);
            }
            into_status(e)
        })
}

/// The gRPC status of a refused request: `UNAVAILABLE` with `RetryInfo` for the retryable ones.
pub(crate) fn into_status(error: IngestError) -> Status {
    match error {
        IngestError::Overloaded
        | IngestError::StoreFull
        | IngestError::DiskLow
        | IngestError::ShuttingDown
        | IngestError::Unavailable(_) => Status::with_error_details(
            Code::Unavailable,
            error.to_string(),
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        IngestError::Malformed(message) => Status::invalid_argument(message),
        IngestError::Internal(_) => Status::internal(error.to_string()),
    }
}
