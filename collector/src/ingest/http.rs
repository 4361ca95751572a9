//! OTLP/HTTP: `POST /v1/traces` and `POST /v1/logs`, protobuf or JSON, optionally gzip.
//!
//! Status codes follow the OTLP specification: 200 (with `partial_success` when spans were
//! rejected), 400 for a body that does not decode, 405 for another method, 413 for a body over
//! the limit after decompression, 415 for an unsupported `Content-Type` or `Content-Encoding`,
//! 503 with `Retry-After` when the ingest queue is full. Error bodies are a `google.rpc.Status`
//! in the request's format.

use std::io::Read as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Serialize;

use super::grpc::RETRY_AFTER;
use super::{HealthRefusal, Ingest, IngestError, Protocol, Refusal, TraceRequest};
use crate::net::access::BodyTimedOut;

/// The router of the OTLP/HTTP port.
pub fn router(ingest: Arc<Ingest>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .route("/v1/health", post(health))
        .with_state(Arc::new(HttpState {
            ingest,
            max_body_bytes,
        }))
}

#[derive(Debug)]
struct HttpState {
    ingest: Arc<Ingest>,
    max_body_bytes: usize,
}

/// The body format, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn protocol(self) -> Protocol {
        match self {
            Format::Protobuf => Protocol::HttpProtobuf,
            Format::Json => Protocol::HttpJson,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// `google.rpc.Status`, the error body of OTLP/HTTP.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// A refused request: the HTTP status, the gRPC code for the body, a message.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    code: tonic::Code,
    message: String,
    reason: Refusal,
}

impl Refused {
    fn new(
        status: StatusCode,
        code: tonic::Code,
        reason: Refusal,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            reason,
        }
    }

    fn into_response(self, format: Format) -> Response {
        let body = RpcStatus {
            code: self.code as i32,
            message: self.message,
        };
        let mut response = encode(format, self.status, &body, body.encode_to_vec());
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        response
    }
}

impl From<IngestError> for Refused {
    fn from(error: IngestError) -> Self {
        let reason = error.reason();
        let (status, code) = match error {
            _ if reason.retryable() => (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
            IngestError::Malformed(_) => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal),
        };
        Refused::new(status, code, reason, error.to_string())
    }
}

fn encode<T: Serialize>(
    format: Format,
    status: StatusCode,
    value: &T,
    protobuf: Vec<u8>,
) -> Response {
    let body = match format {
        Format::Protobuf => protobuf,
        Format::Json => serde_json::to_vec(value).unwrap_or_default(),
    };
    (
        status,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

/// The format of an export's body, or its refusal, counted (answered in JSON: the body's own
/// format is what is unknown).
fn export_format(state: &HttpState, headers: &HeaderMap) -> Result<Format, Refused> {
    format_of(headers).inspect_err(|refused| {
        state
            .ingest
            .refuse_request(Protocol::HttpProtobuf, refused.reason);
    })
}

async fn traces(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    let format = match export_format(&state, &headers) {
        Ok(format) => format,
        Err(refused) => return refused.into_response(Format::Json),
    };
    let protocol = format.protocol();
    let result = async {
        let room = |bytes| Ok(state.ingest.check_room(protocol, bytes)?);
        let body = read_body(&headers, body, state.max_body_bytes, room).await?;
        state.ingest.check_room(protocol, body.len())?;
        let ingest = state.ingest.clone();
        let bytes = body.len();
        // Decoding is CPU work: large requests leave the runtime's workers.
        let decoded = state.ingest.pool().run(bytes, move || {
            let prepared = match format {
                // Protobuf goes straight into Arrow; JSON through prost's messages.
                Format::Protobuf => ingest.prepare_traces(protocol, TraceRequest::Protobuf(&body)),
                Format::Json => {
                    let request: ExportTraceServiceRequest =
                        decode(format, &body, "ExportTraceServiceRequest")?;
                    ingest.prepare_traces(protocol, TraceRequest::Message(&request))
                }
            };
            Ok::<_, Refused>(prepared?)
        });
        let prepared = decoded.await.map_err(|e| {
            state.ingest.refuse_request(protocol, Refusal::Internal);
            Refused::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                tonic::Code::Internal,
                Refusal::Internal,
                e.to_string(),
            )
        })??;
        Ok::<_, Refused>(state.ingest.commit_traces(prepared).await?)
    }
    .await;
    match result {
        Ok(response) => encode(format, StatusCode::OK, &response, response.encode_to_vec()),
        Err(refused) => {
            // The ingest counted its own refusals; count the ones found here.
            if !(refused.reason.retryable() || refused.reason == Refusal::Internal) {
                state.ingest.refuse_request(protocol, refused.reason);
            }
            refused.into_response(format)
        }
    }
}

async fn logs(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    let format = match export_format(&state, &headers) {
        Ok(format) => format,
        Err(refused) => return refused.into_response(Format::Json),
    };
    let protocol = format.protocol();
    let result = async {
        let body = read_body(&headers, body, state.max_body_bytes, |_| Ok(())).await?;
        let request: ExportLogsServiceRequest = decode(format, &body, "ExportLogsServiceRequest")?;
        Ok::<_, Refused>(state.ingest.export_logs(protocol, &request).await?)
    }
    .await;
    match result {
        Ok(response) => encode(format, StatusCode::OK, &response, response.encode_to_vec()),
        Err(refused) => {
            // The ingest counted its own refusals.
            if refused.reason != Refusal::Persistence {
                state.ingest.refuse_request(protocol, refused.reason);
            }
            refused.into_response(format)
        }
    }
}

/// `POST /v1/health`: one heartbeat as JSON ([`wayfinder_api::health::HealthReport`]).
async fn health(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        if format_of(&headers)? != Format::Json {
            return Err(Refused::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                tonic::Code::InvalidArgument,
                Refusal::UnsupportedMediaType,
                "send the heartbeat as application/json",
            ));
        }
        let body = read_body(&headers, body, state.max_body_bytes, |_| Ok(())).await?;
        let report: wayfinder_api::health::HealthReport =
            serde_json::from_slice(&body).map_err(|e| {
                Refused::new(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    Refusal::Malformed,
                    format!("cannot decode the heartbeat: {e}"),
                )
            })?;
        state
            .ingest
            .export_health(report)
            .await
            .map_err(|refusal| match refusal {
                HealthRefusal::Invalid(message) => Refused::new(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    Refusal::InvalidHealthEvent,
                    message,
                ),
                HealthRefusal::Refused(error) => Refused::from(error),
            })
    }
    .await;
    match result {
        Ok(ack) => (StatusCode::OK, axum::Json(ack)).into_response(),
        Err(refused) => {
            state
                .ingest
                .refuse_request(Protocol::HttpJson, refused.reason);
            refused.into_response(Format::Json)
        }
    }
}

fn format_of(headers: &HeaderMap) -> Result<Format, Refused> {
    let unsupported = |got: &str| {
        Refused::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            Refusal::UnsupportedMediaType,
            format!(
                "unsupported Content-Type {got:?}: use application/x-protobuf or application/json"
            ),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported(""));
    };
    let text = value.to_str().map_err(|_| unsupported("(not text)"))?;
    let media_type = text.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/x-protobuf")
        || media_type.eq_ignore_ascii_case("application/protobuf")
    {
        Ok(Format::Protobuf)
    } else if media_type.eq_ignore_ascii_case("application/json") {
        Ok(Format::Json)
    } else {
        Err(unsupported(text))
    }
}

fn too_large(limit: usize) -> Refused {
    Refused::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        tonic::Code::ResourceExhausted,
        Refusal::TooLarge,
        format!(
            "the request body is larger than {limit} bytes (after decompression); send smaller batches"
        ),
    )
}

/// How much a gzip body is assumed to grow, to check the ingest budget before reading it (the
/// decompressed size is checked again once it is known).
const GZIP_GROWTH: usize = 4;

/// While a body without `Content-Length` streams in, the budget is checked again every this
/// many bytes.
const ROOM_CHECK_STEP: usize = 64 * 1024;

/// Reads the body within the limit and undoes its `Content-Encoding`. `room(bytes)` is asked
/// before a byte is read when the length is declared, and every [`ROOM_CHECK_STEP`] bytes
/// while a body without one streams in, so that an overloaded collector refuses at once rather
/// than reading what it would refuse.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    room: impl Fn(usize) -> Result<(), Refused>,
) -> Result<Bytes, Refused> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("" | "identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => {
            return Err(Refused::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                tonic::Code::InvalidArgument,
                Refusal::UnsupportedEncoding,
                format!("unsupported Content-Encoding {other:?}: use gzip or none"),
            ));
        }
    };
    let growth = if gzip { GZIP_GROWTH } else { 1 };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    if let Some(declared) = declared {
        room(declared.saturating_mul(growth))?;
    }
    let mut body = Limited::new(body, limit);
    let mut raw = bytes::BytesMut::with_capacity(declared.unwrap_or(0));
    let mut next_check = ROOM_CHECK_STEP;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large(limit));
            }
            Err(e) if BodyTimedOut::is_cause_of(&*e) => {
                return Err(Refused::new(
                    StatusCode::REQUEST_TIMEOUT,
                    tonic::Code::DeadlineExceeded,
                    Refusal::BodyTimeout,
                    format!("{e}; send it faster, or raise --body-read-timeout"),
                ));
            }
            Err(e) => {
                return Err(Refused::new(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    Refusal::Malformed,
                    format!("could not read the request body: {e}"),
                ));
            }
        };
        if let Ok(data) = frame.into_data() {
            raw.extend_from_slice(&data);
        }
        if declared.is_none() && raw.len() >= next_check {
            room(raw.len().saturating_mul(growth))?;
            next_check = raw.len() + ROOM_CHECK_STEP;
        }
    }
    let raw = raw.freeze();
    if !gzip {
        return Ok(raw);
    }
    gunzip(&raw, limit)
}

/// Decompresses a gzip body, refusing it as soon as it grows past `limit` (a gzip bomb costs
/// no more than `limit` bytes of memory).
pub(crate) fn gunzip_limited(raw: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    let mut decoder = flate2::read::MultiGzDecoder::new(raw).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(GunzipError::Invalid)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

/// Why a gzip body could not be used.
#[derive(Debug)]
pub(crate) enum GunzipError {
    Invalid(std::io::Error),
    TooLarge,
}

fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, Refused> {
    match gunzip_limited(raw, limit) {
        Ok(out) => Ok(out.into()),
        Err(GunzipError::TooLarge) => Err(too_large(limit)),
        Err(GunzipError::Invalid(e)) => Err(Refused::new(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            Refusal::Malformed,
            format!("the body is not valid gzip: {e}"),
        )),
    }
}

fn decode<T>(format: Format, body: &[u8], what: &str) -> Result<T, Refused>
where
    T: Message + Default + serde::de::DeserializeOwned,
{
    let result = match format {
        Format::Protobuf => T::decode(body).map_err(|e| e.to_string()),
        Format::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
    };
    result.map_err(|e| {
        Refused::new(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            Refusal::Malformed,
            format!("cannot decode {what} from {}: {e}", format.content_type()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gunzip_cases() {
        let small = gzip(b"hello");
        let bomb = gzip(&vec![0u8; 10 * 1024 * 1024]);
        assert!(bomb.len() < 64 * 1024, "the bomb is small on the wire");
        assert_eq!(
            gunzip_limited(&small, 5).unwrap(),
            b"hello",
            "exactly at the limit"
        );
        assert!(
            matches!(gunzip_limited(&small, 4), Err(GunzipError::TooLarge)),
            "one byte over"
        );
        assert!(
            matches!(
                gunzip_limited(&bomb, 1024 * 1024),
                Err(GunzipError::TooLarge)
            ),
            "a bomb stops at the limit"
        );
        assert!(
            matches!(
                gunzip_limited(b"not gzip", 100),
                Err(GunzipError::Invalid(_))
            ),
            "garbage"
        );
        let mut two = gzip(b"ab");
        two.extend(gzip(b"cd"));
        assert_eq!(
            gunzip_limited(&two, 100).unwrap(),
            b"abcd",
            "concatenated gzip members"
        );
    }

    #[test]
    fn content_types() {
        let cases = [
            (
                "application/x-protobuf",
                Some(Format::Protobuf),
                "the OTLP protobuf type",
            ),
            ("application/json", Some(Format::Json), "the OTLP JSON type"),
            (
                "application/json; charset=utf-8",
                Some(Format::Json),
                "parameters are ignored",
            ),
            (
                "Application/JSON",
                Some(Format::Json),
                "media types are case-insensitive",
            ),
            ("text/plain", None, "not OTLP"),
            ("", None, "empty"),
        ];
        for (value, expected, reason) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(format_of(&headers).ok(), expected, "{reason}");
        }
        assert!(
            format_of(&HeaderMap::new()).is_err(),
            "a missing Content-Type is refused"
        );
    }
}
