//! The balancer's errors, and how a caller reads them (for gRPC, a `tonic::Status`).

use crate::BoxError;

/// Why a balanced call, or the balancer itself, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BalanceError {
    /// No endpoint is known for the service: no seed, and nothing from the collector.
    #[error("no endpoint of service {service} is known")]
    NoEndpoints {
        /// The logical service.
        service: String,
    },
    /// The call's deadline passed (its attempts and backoff included).
    #[error("the call's deadline of {0:?} passed")]
    DeadlineExceeded(std::time::Duration),
    /// The request body could not be read.
    #[error("reading the request body failed: {0}")]
    Body(#[source] crate::BoxError),
    /// An invalid setting.
    #[error("invalid balancer setting: {0}")]
    Config(String),
}

/// The balancer's own error as the caller reads it: a [`BalanceError`], or for gRPC a
/// `tonic::Status` with the matching code (tonic turns any other error into `UNKNOWN`).
pub(crate) fn for_caller(error: BalanceError, grpc: bool) -> BoxError {
    if !grpc {
        return error.into();
    }
    let message = error.to_string();
    let code = match error {
        BalanceError::NoEndpoints { .. } => GrpcCode::Unavailable,
        BalanceError::DeadlineExceeded(_) => GrpcCode::DeadlineExceeded,
        _ => GrpcCode::Internal,
    };
    grpc_status(code, message)
}

/// The gRPC codes the balancer answers with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GrpcCode {
    Unavailable,
    DeadlineExceeded,
    Internal,
}

/// A `tonic::Status` (without the `tonic` feature no tonic client can be the caller, and the
/// [`BalanceError`] message is the error).
#[cfg(feature = "tonic")]
pub(crate) fn grpc_status(code: GrpcCode, message: String) -> BoxError {
    let code = match code {
        GrpcCode::Unavailable => tonic::Code::Unavailable,
        GrpcCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        GrpcCode::Internal => tonic::Code::Internal,
    };
    tonic::Status::new(code, message).into()
}

#[cfg(not(feature = "tonic"))]
pub(crate) fn grpc_status(_code: GrpcCode, message: String) -> BoxError {
    message.into()
}
