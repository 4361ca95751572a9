//! Wire types of Wayfinder's query API.
//!
//! The collector serves these types and clients (the CLI, the middleware's balancer, tests and
//! anything else that reads the API) deserialize them. This crate depends on nothing of
//! Wayfinder's own, so that every other crate can share it.
//!
//! ```
//! use wayfinder_api::sql::{SqlRequest, SqlResponse};
//!
//! let request = SqlRequest { sql: "SELECT count(*) AS n FROM spans".into() };
//! assert_eq!(serde_json::to_string(&request).unwrap(), r#"{"sql":"SELECT count(*) AS n FROM spans"}"#);
//!
//! let response: SqlResponse =
//!     serde_json::from_str(r#"{"columns":[{"name":"n","type":"Int64"}],"rows":[[42]]}"#).unwrap();
//! assert_eq!(response.rows[0][0], 42);
//! ```

pub mod error;
pub mod health;
pub mod sql;
pub mod topology;
pub mod weights;

/// The gRPC API (`proto/wayfinder/v1/*.proto`): messages, the `Weights` client the middleware's
/// balancer uses, and the server trait the collector implements.
#[cfg(feature = "grpc")]
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod grpc {
    tonic::include_proto!("wayfinder.v1");
}

pub use error::ErrorBody;
