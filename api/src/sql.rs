//! `POST /api/v1/sql`: a read-only SQL query over the collector's tables.

use serde::{Deserialize, Serialize};

/// Media type of the Arrow IPC stream that `/api/v1/sql` returns when asked for it in `Accept`.
pub const ARROW_STREAM_MEDIA_TYPE: &str = "application/vnd.apache.arrow.stream";

/// The body of `POST /api/v1/sql`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One read-only statement (`SELECT`, `WITH … SELECT`, `EXPLAIN`, `SHOW`, `DESCRIBE`).
    pub sql: String,
}

/// The JSON answer of `POST /api/v1/sql`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlResponse {
    /// The result's columns, in order.
    pub columns: Vec<Column>,
    /// The rows, each with one value per column: numbers, strings, booleans, `null`, RFC 3339
    /// strings for timestamps, objects for maps and structs, arrays for lists.
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// One column of a [`SqlResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// The column's name as the query gave it.
    pub name: String,
    /// The Arrow type of the column's values (dictionary encoding is not shown), e.g. `Utf8`,
    /// `Int64`, `Timestamp(ns, "UTC")`.
    #[serde(rename = "type")]
    pub data_type: String,
}

impl SqlResponse {
    /// The index of the column called `name`, if there is one.
    ///
    /// ```
    /// # use wayfinder_api::sql::{Column, SqlResponse};
    /// let response = SqlResponse {
    ///     columns: vec![Column { name: "n".into(), data_type: "Int64".into() }],
    ///     rows: vec![],
    /// };
    /// assert_eq!(response.column("n"), Some(0));
    /// assert_eq!(response.column("m"), None);
    /// ```
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}
