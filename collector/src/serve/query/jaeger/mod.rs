//! Jaeger-compatible query endpoints, with Jaeger's JSON shapes and units (microseconds), so that
//! Grafana's Jaeger data source and the Jaeger UI work against the collector unchanged:
//! `/api/services` (and `/api/v3/services`, which the UI asks since 2.15),
//! `/api/services/{service}/operations`, `/api/operations`, `/api/traces`,
//! `/api/traces/{traceID}`, `/api/dependencies`, and the metrics API of the Monitor tab
//! (`/api/metrics/*`, in [`metrics`]).
//!
//! Spans come from the span store through SQL (the same limits as `/api/v1/sql`); dependencies
//! come from the topology.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::sql_response;
use super::state::ApiState;
use crate::serve::sql::QueryError;

mod metrics;
mod model;
mod search;

pub(crate) use metrics::{calls, errors, latencies, min_step};
use model::jaeger_trace;
pub(crate) use search::SearchQuery;
use search::{search_filter, search_tags};

/// Jaeger's default and largest number of traces per search.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1500;

/// An error in Jaeger's envelope: `{"data": null, "errors": [{"code", "msg"}]}`.
#[derive(Debug)]
pub(crate) struct JaegerError {
    status: StatusCode,
    message: String,
}

impl JaegerError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<QueryError> for JaegerError {
    fn from(error: QueryError) -> Self {
        let status = match error {
            QueryError::Timeout(_) | QueryError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::TooManyRows(_) | QueryError::TooLarge(_) | QueryError::OutOfMemory(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            QueryError::TooComplex(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: error.to_string(),
        }
    }
}

impl From<super::error::ApiError> for JaegerError {
    fn from(error: super::error::ApiError) -> Self {
        use super::error::ApiError;
        // The message as the API's own answer gives it, never Rust's debug form.
        match error {
            ApiError::BadRequest(message) => Self::bad_request(message),
            ApiError::NotFound(message) => Self {
                status: StatusCode::NOT_FOUND,
                message,
            },
            ApiError::Internal(message) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message,
            },
            ApiError::Unavailable(message) => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message,
            },
            ApiError::Query(error) => error.into(),
        }
    }
}

impl IntoResponse for JaegerError {
    fn into_response(self) -> Response {
        let body = json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": self.status.as_u16(), "msg": self.message}],
        });
        (self.status, Json(body)).into_response()
    }
}

/// Jaeger's success envelope.
fn envelope(data: Value) -> Json<Value> {
    envelope_with_errors(data, Value::Null)
}

/// Jaeger's answer with `errors` (an array, or null when there are none).
fn envelope_with_errors(data: Value, errors: Value) -> Json<Value> {
    let total = data.as_array().map_or(0, Vec::len);
    Json(json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": errors}))
}

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Rows of a query as JSON objects keyed by column name.
async fn rows(state: &ApiState, sql: &str) -> Result<Vec<BTreeMap<String, Value>>, JaegerError> {
    rows_then(state, sql, Ok).await
}

/// Rows of a query as JSON objects keyed by column name, turned into an answer by `then`: both
/// on the query threads, within the query's time limit.
async fn rows_then<T: Send + 'static>(
    state: &ApiState,
    sql: &str,
    then: impl FnOnce(Vec<BTreeMap<String, Value>>) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, JaegerError> {
    let answer = state
        .engine
        .sql_with(sql, move |result| {
            let response = sql_response(result)?;
            let names: Vec<String> = response.columns.into_iter().map(|c| c.name).collect();
            then(
                response
                    .rows
                    .into_iter()
                    .map(|row| names.iter().cloned().zip(row).collect())
                    .collect(),
            )
        })
        .await?;
    Ok(answer)
}

pub(crate) async fn services(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<Value>, JaegerError> {
    Ok(envelope(Value::Array(service_names(&state).await?)))
}

/// `GET /api/v3/services`: the same names as jaeger-query's API v3 gives them
/// (`{"services": [...]}`), which the Jaeger UI reads since 2.15.
pub(crate) async fn services_v3(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<Value>, JaegerError> {
    Ok(Json(json!({"services": service_names(&state).await?})))
}

async fn service_names(state: &ApiState) -> Result<Vec<Value>, JaegerError> {
    let rows = rows(
        state,
        "SELECT DISTINCT service_name FROM spans ORDER BY service_name",
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|mut r| r.remove("service_name"))
        .collect())
}

pub(crate) async fn service_operations(
    State(state): State<Arc<ApiState>>,
    Path(service): Path<String>,
) -> Result<Json<Value>, JaegerError> {
    let sql = format!(
        "SELECT DISTINCT span_name FROM spans WHERE service_name = {} ORDER BY span_name",
        literal(&service)
    );
    let names: Vec<Value> = rows(&state, &sql)
        .await?
        .into_iter()
        .filter_map(|mut r| r.remove("span_name"))
        .collect();
    Ok(envelope(Value::Array(names)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct OperationsQuery {
    service: Option<String>,
    #[serde(rename = "spanKind")]
    span_kind: Option<String>,
}

pub(crate) async fn operations(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<OperationsQuery>,
) -> Result<Json<Value>, JaegerError> {
    let service = query
        .service
        .ok_or_else(|| JaegerError::bad_request("parameter 'service' is required"))?;
    let mut sql = format!(
        "SELECT DISTINCT span_name, span_kind FROM spans WHERE service_name = {}",
        literal(&service)
    );
    if let Some(kind) = query.span_kind.filter(|k| !k.is_empty()) {
        sql.push_str(&format!(" AND span_kind = {}", literal(&kind)));
    }
    sql.push_str(" ORDER BY span_name, span_kind");
    let operations: Vec<Value> = rows(&state, &sql)
        .await?
        .into_iter()
        .map(|r| json!({"name": r["span_name"], "spanKind": r["span_kind"]}))
        .collect();
    Ok(envelope(Value::Array(operations)))
}

pub(crate) async fn search(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<SearchQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, JaegerError> {
    // `?traceID=a&traceID=b`: those traces, as Jaeger's query service answers it (the other
    // parameters are then not a search); a missing one is an entry of `errors`.
    let requested: Vec<String> = form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .filter(|(key, _)| key == "traceID")
        .map(|(_, value)| normalized_trace_id(&value))
        .collect::<Result<_, _>>()?;
    if !requested.is_empty() {
        return traces_with_ids(&state, &requested).await;
    }
    let tags = search_tags(raw.as_deref().unwrap_or(""))?;
    let filter = search_filter(&query, &tags)?;
    let limit = match query.limit.as_deref().filter(|l| !l.is_empty()) {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| JaegerError::bad_request("limit must be a number"))?
            .clamp(1, MAX_LIMIT),
    };
    let ids = rows(
        &state,
        &format!(
            "SELECT trace_id, max(start_time) AS latest FROM spans WHERE {filter} \
             GROUP BY trace_id ORDER BY latest DESC, trace_id LIMIT {limit}"
        ),
    )
    .await?;
    let ids: Vec<String> = ids
        .into_iter()
        .filter_map(|r| r.get("trace_id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    if ids.is_empty() {
        return Ok(envelope(Value::Array(Vec::new())));
    }
    // The spans of `limit` large traces may pass the query's row limit: then fewer traces
    // (the latest), halving until they fit, rather than an error (one trace that alone passes
    // the limit still fails, with the limit's message).
    let mut ids = ids;
    let traces = loop {
        match traces_by_id(&state, &ids).await {
            Err(error) if error.status == StatusCode::UNPROCESSABLE_ENTITY && ids.len() > 1 => {
                ids.truncate(ids.len() / 2);
            }
            result => break result?,
        }
    };
    // Latest first, as the search ordered them.
    let data = ids
        .iter()
        .filter_map(|id| traces.get(id).cloned())
        .collect();
    Ok(envelope(Value::Array(data)))
}

/// A trace id as Jaeger takes it: hexadecimal, any case, 64-bit ids padded to our 128 bits.
fn normalized_trace_id(text: &str) -> Result<String, JaegerError> {
    let id = text.to_ascii_lowercase();
    let id = if id.len() < 32 {
        format!("{id:0>32}")
    } else {
        id
    };
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(JaegerError::bad_request(format!(
            "`{text}` is not a trace id (hexadecimal, at most 32 characters)"
        )));
    }
    Ok(id)
}

/// The traces of `ids` in the order asked, and a 404 entry of `errors` for each one not found.
async fn traces_with_ids(state: &ApiState, ids: &[String]) -> Result<Json<Value>, JaegerError> {
    let traces = traces_by_id(state, ids).await?;
    let mut data = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for id in ids {
        if !seen.insert(id) {
            continue;
        }
        match traces.get(id) {
            Some(trace) => data.push(trace.clone()),
            None => errors.push(json!({"code": 404, "msg": "trace not found", "traceID": id})),
        }
    }
    let errors = if errors.is_empty() {
        Value::Null
    } else {
        Value::Array(errors)
    };
    Ok(envelope_with_errors(Value::Array(data), errors))
}

pub(crate) async fn trace(
    State(state): State<Arc<ApiState>>,
    Path(trace_id): Path<String>,
) -> Result<Json<Value>, JaegerError> {
    let id = normalized_trace_id(&trace_id)?;
    let traces = traces_by_id(&state, std::slice::from_ref(&id)).await?;
    match traces.get(&id) {
        Some(trace) => Ok(envelope(Value::Array(vec![trace.clone()]))),
        None => Err(JaegerError {
            status: StatusCode::NOT_FOUND,
            message: "trace not found".into(),
        }),
    }
}

/// The traces with these ids, in Jaeger's shape.
async fn traces_by_id(
    state: &ApiState,
    ids: &[String],
) -> Result<HashMap<String, Value>, JaegerError> {
    let list = ids
        .iter()
        .map(|id| literal(id))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT trace_id, span_id, parent_span_id, trace_state, service_name, span_name, \
         span_kind, CAST(start_time AS BIGINT) AS start_ns, duration_ns, status_code, \
         status_message, scope_name, scope_version, attributes, attribute_types, \
         resource_attributes, resource_attribute_types, events, links, flags FROM spans \
         WHERE trace_id IN ({list}) \
         ORDER BY start_time, span_id"
    );
    rows_then(state, &sql, |rows| {
        let mut by_trace: BTreeMap<String, Vec<BTreeMap<String, Value>>> = BTreeMap::new();
        for row in rows {
            let id = row["trace_id"].as_str().unwrap_or_default().to_owned();
            by_trace.entry(id).or_default().push(row);
        }
        Ok(by_trace
            .into_iter()
            .map(|(id, spans)| {
                let trace = jaeger_trace(&id, &spans);
                (id, trace)
            })
            .collect())
    })
    .await
}

#[derive(Debug, Deserialize)]
pub(crate) struct DependenciesQuery {
    #[serde(rename = "endTs")]
    end_ts: Option<u64>,
    lookback: Option<u64>,
}

/// `/api/dependencies`: the service graph's edges as `{parent, child, callCount}`.
///
/// The topology keeps per-minute figures up to the retention, counted from now; the window is
/// the span from `endTs - lookback` to now, clamped to one minute and the retention.
pub(crate) async fn dependencies(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<DependenciesQuery>,
) -> Result<Json<Value>, JaegerError> {
    let Some(topology) = &state.topology else {
        return Ok(envelope(Value::Array(Vec::new())));
    };
    let now_ms = crate::util::clock::unix_millis(SystemTime::now());
    let end = query.end_ts.unwrap_or(now_ms).min(now_ms);
    let lookback = query.lookback.unwrap_or(86_400_000);
    let since = end.saturating_sub(lookback);
    // A window that ends now is a shared snapshot; one that ends earlier (Jaeger's `endTs` in
    // the past) sums the minutes from `endTs - lookback` to `endTs`.
    let graph = if now_ms.saturating_sub(end) < 60_000 {
        let window = Duration::from_millis(now_ms.saturating_sub(since))
            .max(Duration::from_secs(60))
            .min(topology.retention());
        super::topology::snapshot(topology, window).await?
    } else {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let (from, to) = (at(since), at(end));
        let topology = topology.clone();
        tokio::task::spawn_blocking(move || Arc::new(topology.snapshot_between(from, to)))
            .await
            .map_err(|e| JaegerError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("the topology snapshot failed: {e}"),
            })?
    };
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for edge in &graph.edges {
        *counts
            .entry((
                edge.key.client.name.to_string(),
                edge.key.server.name.to_string(),
            ))
            .or_default() += edge.summary.requests;
    }
    let data = counts
        .into_iter()
        .map(|((parent, child), calls)| json!({"parent": parent, "child": child, "callCount": calls}))
        .collect();
    Ok(envelope(Value::Array(data)))
}

#[cfg(test)]
mod tests;
