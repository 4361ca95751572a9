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

use super::{Ingest, IngestError, PreparedTraces, Protocol, TraceRequest};
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

/// The OTLP `TraceService`.
#[derive(Debug, Clone)]
pub struct TraceService {
    ingest: Arc<Ingest>,
    max_message_bytes: usize,
    deadlines: Deadlines,
}

/// The OTLP `LogsService`.
#[derive(Debug, Clone)]
pub(crate) struct LogsService {
    ingest: Arc<Ingest>,
    max_message_bytes: usize,
    deadlines: Deadlines,
}

impl TraceService {
    /// The service, refusing messages over `max_message_bytes` after decompression.
    pub fn new(ingest: Arc<Ingest>, max_message_bytes: usize) -> Self {
        Self {
            ingest,
            max_message_bytes,
            deadlines: Deadlines::default(),
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

impl LogsService {
    /// The service, refusing messages over `max_message_bytes` after decompression.
    pub(crate) fn new(ingest: Arc<Ingest>, max_message_bytes: usize) -> Self {
        Self {
            ingest,
            max_message_bytes,
            deadlines: Deadlines::default(),
        }
    }

    /// Refuses (`DEADLINE_EXCEEDED`) a request whose message has not arrived in full within
    /// `deadlines`' body limit of its headers, read at each request (a reload changes it in
    /// place); 30 s unless set.
    pub(crate) fn deadlines(mut self, deadlines: Deadlines) -> Self {
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
                    ingest.refuse_request(Protocol::Grpc, "body_timeout");
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

impl NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl NamedService for LogsService {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

fn grpc(max_message_bytes: usize) -> tonic::server::Grpc<RawCodec> {
    tonic::server::Grpc::new(RawCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .apply_max_message_size_config(Some(max_message_bytes), None)
}

impl tower::Service<HttpRequest> for TraceService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        if request.uri().path() != TRACE_EXPORT_PATH {
            return Box::pin(ready(Ok(
                Status::unimplemented("no such method").into_http()
            )));
        }
        let request = with_deadline(request, self.deadlines.body(), &self.ingest);
        let mut grpc = grpc(self.max_message_bytes);
        let ingest = self.ingest.clone();
        let export = ExportTraces(ingest.clone());
        Box::pin(async move { Ok(size_refusal(grpc.unary(export, request).await, &ingest)) })
    }
}

impl tower::Service<HttpRequest> for LogsService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        if request.uri().path() != LOGS_EXPORT_PATH {
            return Box::pin(ready(Ok(
                Status::unimplemented("no such method").into_http()
            )));
        }
        let request = with_deadline(request, self.deadlines.body(), &self.ingest);
        let mut grpc = grpc(self.max_message_bytes);
        let ingest = self.ingest.clone();
        let export = ExportLogs(ingest.clone());
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
            ingest.refuse_request(Protocol::Grpc, "too_large");
            Status::resource_exhausted(format!(
                "{}; the most a message may have is --grpc-max-message-bytes, after decompression",
                status.message()
            ))
            .into_http()
        }
        _ => response,
    }
}

struct ExportTraces(Arc<Ingest>);
struct ExportLogs(Arc<Ingest>);

impl UnaryService<Bytes> for ExportTraces {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let body = request.into_inner();
        let ingest = self.0.clone();
        Box::pin(async move {
            let pool = ingest.pool().clone();
            let decoding = ingest.clone();
            // Decoding is CPU work: large requests leave the runtime's workers.
            let prepared = pool
                .run(body.len(), move || prepare_traces(&decoding, body))
                .await
                .map_err(|e| {
                    ingest.refuse_request(Protocol::Grpc, "internal");
                    Status::internal(e.to_string())
                })??;
            let response = ingest.commit_traces(prepared).await.map_err(into_status)?;
            Ok(tonic::Response::new(response.encode_to_vec().into()))
        })
    }
}

impl UnaryService<Bytes> for ExportLogs {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let body = request.into_inner();
        let ingest = self.0.clone();
        Box::pin(async move {
            let request = ExportLogsServiceRequest::decode(body).map_err(|e| {
                ingest.refuse_request(Protocol::Grpc, "malformed");
                Status::invalid_argument(format!("cannot decode ExportLogsServiceRequest: {e}"))
            })?;
            let response = ingest
                .export_logs(Protocol::Grpc, &request)
                .await
                .map_err(into_status)?;
            Ok(tonic::Response::new(response.encode_to_vec().into()))
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
                ingest.refuse_request(Protocol::Grpc, "malformed");
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
