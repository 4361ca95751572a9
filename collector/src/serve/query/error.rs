//! The query API's error answers, in one place: a status code and `{"error": "…"}`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use wayfinder_api::ErrorBody;

use crate::serve::sql::QueryError;

/// An error answer of the query API.
#[derive(Debug, Clone)]
pub(crate) enum ApiError {
    /// 400: the request is wrong.
    BadRequest(String),
    /// 404: nothing there.
    NotFound(String),
    /// A query error, mapped to its status.
    Query(QueryError),
    /// 503 with `Retry-After`: a cap is reached (e.g. `--max-watchers`); retry later.
    Unavailable(String),
    /// 500.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let busy = matches!(
            self,
            ApiError::Query(QueryError::Busy(_)) | ApiError::Unavailable(_)
        );
        let (status, error) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Query(e) => {
                let status = match e {
                    QueryError::Invalid(_)
                    | QueryError::NotReadOnly(_)
                    | QueryError::TooComplex(_) => StatusCode::BAD_REQUEST,
                    QueryError::Execution(_)
                    | QueryError::TooLarge(_)
                    | QueryError::OutOfMemory(_)
                    | QueryError::TooManyRows(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    QueryError::Timeout(_) | QueryError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                (status, e.to_string())
            }
        };
        let mut response = (status, axum::Json(ErrorBody { error })).into_response();
        if busy {
            // The running queries end within the query timeout; a second is a fair first wait.
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
