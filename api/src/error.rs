//! The body of every error answer of the query API.

use serde::{Deserialize, Serialize};

/// What the query API answers with a 4xx or 5xx status.
///
/// ```
/// # use wayfinder_api::ErrorBody;
/// let body: ErrorBody = serde_json::from_str(r#"{"error":"only read queries are allowed"}"#).unwrap();
/// assert!(body.error.contains("read"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A sentence in English that says what was wrong.
    pub error: String,
}
