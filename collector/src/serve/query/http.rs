//! The SQL, trace, metrics and probe endpoints: `POST /api/v1/sql`,
//! `GET /api/v1/traces/{trace_id}`, `GET /metrics`, `GET /readyz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::ipc::writer::StreamWriter;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value};
use wayfinder_api::sql::{ARROW_STREAM_MEDIA_TYPE, Column, SqlRequest, SqlResponse};

use super::error::ApiError;
use super::state::ApiState;
use crate::decode::schema::{col, span_schema};
use crate::serve::sql::json::{column_values, type_name, value_at};
use crate::serve::sql::{AnswerBudget, QueryError, QueryResult};
use crate::store::view;
use crate::util::reuse::SharedBody;

pub(super) async fn sql(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: SqlRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body must be {{\"sql\": \"…\"}}: {e}")))?;
    let wants_arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with(ARROW_STREAM_MEDIA_TYPE))
        });
    // The answer is made on the query threads, within the query's time and memory.
    let (content_type, bytes) = state
        .engine
        .sql_with(&request.sql, move |result| {
            if wants_arrow {
                Ok((ARROW_STREAM_MEDIA_TYPE, arrow_stream(result)?))
            } else {
                Ok(("application/json", json_body(&sql_response(result)?)?))
            }
        })
        .await
        .map_err(ApiError::Query)?;
    let response = ([(header::CONTENT_TYPE, content_type)], bytes).into_response();
    #[cfg(feature = "kafka")]
    let response = super::fleet::with_freshness(&state, response);
    Ok(response)
}

fn arrow_stream(mut result: QueryResult) -> Result<Vec<u8>, QueryError> {
    let failed = |e: datafusion::arrow::error::ArrowError| QueryError::Execution(e.to_string());
    let mut writer = StreamWriter::try_new(Vec::new(), &result.schema).map_err(failed)?;
    for batch in &result.batches {
        let before = writer.get_ref().len();
        writer.write(batch).map_err(failed)?;
        result.budget.take(writer.get_ref().len() - before)?;
        result.budget.check()?;
    }
    writer.finish().map_err(failed)?;
    writer.into_inner().map_err(failed)
}

/// `value` as JSON text.
pub(crate) fn json_body(value: &impl serde::Serialize) -> Result<Vec<u8>, QueryError> {
    serde_json::to_vec(value).map_err(|e| QueryError::Execution(e.to_string()))
}

/// The JSON form of a query result, made within the answer's budget.
pub(crate) fn sql_response(mut result: QueryResult) -> Result<SqlResponse, QueryError> {
    let columns = result
        .schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: type_name(f.data_type()),
        })
        .collect();
    let budget = &mut result.budget;
    let mut rows = Vec::with_capacity(result.batches.iter().map(RecordBatch::num_rows).sum());
    for batch in &result.batches {
        let mut columns = batch
            .columns()
            .iter()
            .map(|c| column_values(c, budget).map(Vec::into_iter))
            .collect::<Result<Vec<_>, _>>()?;
        for _ in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter_mut()
                    .map(|c| c.next().unwrap_or(Value::Null))
                    .collect(),
            );
        }
    }
    Ok(SqlResponse { columns, rows })
}

/// `GET /api/v1/traces/{trace_id}`: every stored span of a trace, by start time. It takes a
/// slot of the query limit (503 + `Retry-After` beyond it), reads only the segments whose
/// trace filter may hold the trace, and answers at most `--query-max-rows` spans (the earliest,
/// with `"truncated": true`), within the query limits' time and memory.
pub(super) async fn trace(
    State(state): State<Arc<ApiState>>,
    Path(trace_id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(wanted) = view::parse_trace_id(&trace_id.to_ascii_lowercase()) else {
        return Err(ApiError::BadRequest(format!(
            "`{trace_id}` is not a trace id: 32 hexadecimal characters"
        )));
    };
    let max_rows = state.engine.limits().max_rows;
    let view = state.engine.store().view();
    let answer = move |spans: Vec<Value>, truncated: bool| {
        if spans.is_empty() {
            return Ok(None);
        }
        json_body(&serde_json::json!({
            "trace_id": const_hex::encode(wanted),
            "spans": spans,
            "truncated": truncated,
        }))
        .map(Some)
    };
    let body = if view.files.is_empty() {
        state
            .engine
            .bounded(move |mut budget| {
                let (spans, truncated) =
                    spans_of_trace(&view.batches, wanted, max_rows, &mut budget)?;
                answer(spans, truncated)
            })
            .await
    } else {
        // Sealed spans too: SQL reads memory and the files whose Bloom filters may hold it.
        let sql = format!(
            "SELECT * FROM spans WHERE trace_id = '{}' ORDER BY start_time LIMIT {}",
            const_hex::encode(wanted),
            max_rows.saturating_add(1)
        );
        state
            .engine
            .sql_with(&sql, move |mut result| {
                let (spans, truncated) =
                    rows_as_objects(&result.batches, max_rows, &mut result.budget)?;
                answer(spans, truncated)
            })
            .await
    }
    .map_err(ApiError::Query)?;
    match body {
        Some(body) => Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response()),
        None => Err(ApiError::NotFound(format!(
            "no spans of trace {trace_id} are stored"
        ))),
    }
}

/// The stored spans of a trace as JSON objects (one key per column), by start time: at most
/// `max_rows` of them, and whether there were more.
fn spans_of_trace(
    batches: &[crate::store::StoredBatch],
    wanted: view::TraceId,
    max_rows: usize,
    budget: &mut AnswerBudget,
) -> Result<(Vec<Value>, bool), QueryError> {
    let failed = |e: datafusion::arrow::error::ArrowError| QueryError::Execution(e.to_string());
    let schema = span_schema();
    let wanted = [wanted];
    let mut matched = Vec::new();
    for stored in batches.iter().filter(|b| b.wanted(Some(&wanted))) {
        budget.check()?;
        if let Some(rows) =
            view::public_batch(&stored.batch, &schema, None, Some(&wanted)).map_err(failed)?
        {
            budget.take(rows.get_array_memory_size())?;
            matched.push(rows);
        }
    }
    // (start, batch, row), earliest first; only the kept rows become JSON.
    let mut order: Vec<(i64, usize, usize)> = Vec::new();
    for (b, batch) in matched.iter().enumerate() {
        let starts = batch
            .column(col::START_TIME)
            .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>();
        order.extend((0..batch.num_rows()).map(|row| (starts.value(row), b, row)));
    }
    order.sort_unstable();
    objects_at(&matched, order, max_rows, budget)
}

/// The rows of `spans` batches, in order, as JSON objects: at most `max_rows`, and whether
/// there were more.
fn rows_as_objects(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    max_rows: usize,
    budget: &mut AnswerBudget,
) -> Result<(Vec<Value>, bool), QueryError> {
    let order = batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |row| (0, b, row)))
        .collect();
    objects_at(batches, order, max_rows, budget)
}

fn objects_at(
    matched: &[datafusion::arrow::record_batch::RecordBatch],
    mut order: Vec<(i64, usize, usize)>,
    max_rows: usize,
    budget: &mut AnswerBudget,
) -> Result<(Vec<Value>, bool), QueryError> {
    let truncated = order.len() > max_rows;
    order.truncate(max_rows);
    let mut spans = Vec::with_capacity(order.len());
    for (_, b, row) in order {
        let batch = &matched[b];
        let mut object = Map::new();
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            object.insert(
                field.name().clone(),
                value_at(column.as_ref(), row, budget)?,
            );
        }
        spans.push(Value::Object(object));
    }
    Ok((spans, truncated))
}

/// Whether the client takes a gzip body (`Accept-Encoding: gzip`, not with `q=0`).
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip")) && !refused
        })
}

/// A shared body, plain or in its shared gzip form (CPU work the first time in a period: call it
/// on a blocking thread).
pub(crate) fn shared_body(body: &SharedBody, gzip: bool) -> (Bytes, bool) {
    if gzip {
        (body.gzip(), true)
    } else {
        (body.plain().clone(), false)
    }
}

/// The response for [`shared_body`]'s answer.
pub(crate) fn shared_response(content_type: &'static str, (body, gzip): (Bytes, bool)) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

pub(super) async fn metrics(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    // Encoding walks every series (the service graph's included): off the runtime's workers,
    // and shared by the scrapes of the same second.
    let metrics = state.metrics.clone();
    let gzip = accepts_gzip(&headers);
    // OpenMetrics for scrapers that ask for it (Prometheus does), else the text format 0.0.4,
    // as Prometheus' own client libraries negotiate.
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    let text = tokio::task::spawn_blocking(move || {
        let body = if openmetrics {
            metrics.encode_shared()
        } else {
            metrics.encode_shared_text()
        };
        shared_body(&body, gzip)
    });
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    match text.await {
        Ok(text) => shared_response(content_type, text),
        Err(e) => ApiError::Internal(format!("encoding the metrics failed: {e}")).into_response(),
    }
}

pub(super) async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    let exits = state.tasks.exits();
    if !exits.is_empty() {
        let ended: Vec<String> = exits.iter().map(ToString::to_string).collect();
        let body = format!("not ready: task ended: {}\n", ended.join(", "));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let down = state.pipeline.down();
    if down.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = format!("not ready: ingest stage down: {}\n", down.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// `GET /api/v1/config`: the configuration in force, with the config file's keys, tokens
/// redacted.
pub(crate) async fn config(State(state): State<Arc<ApiState>>) -> axum::Json<serde_json::Value> {
    let config = state.config.read().clone();
    axum::Json((*config).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_when_accepted() {
        let cases: &[(&[&str], bool, &str)] = &[
            (&[], false, "no Accept-Encoding"),
            (&["gzip"], true, "gzip"),
            (
                &["gzip, deflate, br"],
                true,
                "as browsers and Prometheus send it",
            ),
            (&["br;q=1.0, GZIP;q=0.5"], true, "any case, with a weight"),
            (&["gzip;q=0"], false, "refused with q=0"),
            (&["identity"], false, "identity only"),
            (
                &["deflate", "x-gzip"],
                true,
                "in a second header, the old name",
            ),
            (&["gzipped"], false, "not a prefix match"),
        ];
        for (values, want, why) in cases {
            let mut headers = HeaderMap::new();
            for value in *values {
                headers.append(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            }
            assert_eq!(accepts_gzip(&headers), *want, "{why}");
        }
    }
}
