//! Jaeger-compatible query endpoints, with Jaeger's JSON shapes and units (microseconds), so that
//! Grafana's Jaeger data source and the Jaeger UI work against the collector unchanged:
//! `/api/services`, `/api/services/{service}/operations`, `/api/operations`, `/api/traces`,
//! `/api/traces/{traceID}`, `/api/dependencies`.
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
use crate::sql::QueryError;

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
            QueryError::TooManyRows(_) => StatusCode::UNPROCESSABLE_ENTITY,
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
    let result = state.engine.sql(sql).await?;
    let response = tokio::task::spawn_blocking(move || sql_response(&result))
        .await
        .map_err(|e| JaegerError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        })??;
    let names: Vec<String> = response.columns.into_iter().map(|c| c.name).collect();
    Ok(response
        .rows
        .into_iter()
        .map(|row| names.iter().cloned().zip(row).collect())
        .collect())
}

pub(crate) async fn services(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<Value>, JaegerError> {
    let rows = rows(
        &state,
        "SELECT DISTINCT service_name FROM spans ORDER BY service_name",
    )
    .await?;
    let names: Vec<Value> = rows
        .into_iter()
        .filter_map(|mut r| r.remove("service_name"))
        .collect();
    Ok(envelope(Value::Array(names)))
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

/// Parses a Go duration as Jaeger takes it (`1.5s`, `300ms`, `2h45m`, `10us`, `10µs`).
fn go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (e.g. 300ms, 1.5s, 2m)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * nanos_per_unit;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// The tags of a search: `tags={"k":"v"}` (Jaeger UI, Grafana) or repeated `tag=k:v`.
fn search_tags(raw: &str) -> Result<Vec<(String, String)>, JaegerError> {
    let mut tags = Vec::new();
    for (key, value) in form_urlencoded_pairs(raw) {
        match key.as_str() {
            "tags" => {
                let object: HashMap<String, Value> = serde_json::from_str(&value).map_err(|e| {
                    JaegerError::bad_request(format!("tags must be a JSON object: {e}"))
                })?;
                for (k, v) in object {
                    let v = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    tags.push((k, v));
                }
            }
            "tag" => {
                let (k, v) = value.split_once(':').ok_or_else(|| {
                    JaegerError::bad_request(format!("tag must be key:value; got {value}"))
                })?;
                tags.push((k.to_owned(), v.to_owned()));
            }
            _ => {}
        }
    }
    tags.sort();
    Ok(tags)
}

/// `application/x-www-form-urlencoded` pairs (serde's `Query` keeps only one `tag`).
fn form_urlencoded_pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchQuery {
    service: Option<String>,
    operation: Option<String>,
    start: Option<String>,
    end: Option<String>,
    #[serde(rename = "minDuration")]
    min_duration: Option<String>,
    #[serde(rename = "maxDuration")]
    max_duration: Option<String>,
    limit: Option<String>,
}

/// The `WHERE` clause that a span of a matching trace satisfies.
fn search_filter(query: &SearchQuery, tags: &[(String, String)]) -> Result<String, JaegerError> {
    let service = query
        .service
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| JaegerError::bad_request("parameter 'service' is required"))?;
    let mut clauses = vec![format!("service_name = {}", literal(service))];
    if let Some(operation) = query.operation.as_deref().filter(|o| !o.is_empty()) {
        clauses.push(format!("span_name = {}", literal(operation)));
    }
    let micros = |name: &str, v: &Option<String>| -> Result<Option<i64>, JaegerError> {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>().map_err(|_| {
                    JaegerError::bad_request(format!("{name} must be microseconds since the epoch"))
                })
            })
            .transpose()
    };
    let in_range = |name: &str, v: Option<i64>| -> Result<Option<i64>, JaegerError> {
        match v {
            // Timestamps in nanoseconds must fit in an i64: up to the year 2262.
            Some(v) if !(0..=9_223_372_036_854_775).contains(&v) => Err(JaegerError::bad_request(
                format!("{name} must be microseconds since the epoch, before the year 2262"),
            )),
            v => Ok(v),
        }
    };
    if let Some(start) = in_range("start", micros("start", &query.start)?)? {
        clauses.push(format!("start_time >= to_timestamp_micros({start})"));
    }
    if let Some(end) = in_range("end", micros("end", &query.end)?)? {
        clauses.push(format!("start_time <= to_timestamp_micros({end})"));
    }
    let nanos = |v: &Option<String>| -> Result<Option<u128>, JaegerError> {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                go_duration(s)
                    .map(|d| d.as_nanos())
                    .map_err(JaegerError::bad_request)
            })
            .transpose()
    };
    if let Some(min) = nanos(&query.min_duration)? {
        clauses.push(format!("duration_ns >= {min}"));
    }
    if let Some(max) = nanos(&query.max_duration)? {
        clauses.push(format!("duration_ns <= {max}"));
    }
    for (key, value) in tags {
        clauses.push(match key.as_str() {
            "error" => {
                let op = if value == "true" { "=" } else { "<>" };
                format!("status_code {op} 'error'")
            }
            "span.kind" => format!("span_kind = {}", literal(value)),
            "otel.status_code" => format!("status_code = {}", literal(&value.to_lowercase())),
            _ => format!(
                "(attributes[{k}] = {v} OR resource_attributes[{k}] = {v})",
                k = literal(key),
                v = literal(value)
            ),
        });
    }
    Ok(clauses.join(" AND "))
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
    let rows = rows(state, &sql).await?;
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
}

fn tag(key: &str, value: &Value) -> Value {
    match value {
        Value::Bool(b) => json!({"key": key, "type": "bool", "value": b}),
        Value::Number(n) if n.is_i64() => json!({"key": key, "type": "int64", "value": n}),
        Value::Number(n) => json!({"key": key, "type": "float64", "value": n}),
        Value::String(s) => json!({"key": key, "type": "string", "value": s}),
        other => json!({"key": key, "type": "string", "value": other.to_string()}),
    }
}

/// A span's attributes as Jaeger tags of the types they were sent with (`attribute_types`):
/// integers as `int64`, doubles as `float64`, booleans as `bool`, bytes as `binary` (base64),
/// the rest (strings, arrays and maps as JSON) as `string`.
fn typed_tags(attributes: &Value, types: &Value) -> Vec<Value> {
    let Some(map) = attributes.as_object() else {
        return Vec::new();
    };
    map.iter()
        .map(|(key, value)| {
            let text = value.as_str();
            let typed = match (types[key].as_str(), text) {
                (Some("int"), Some(t)) => t.parse::<i64>().ok().map(|n| ("int64", json!(n))),
                (Some("double"), Some(t)) => t
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(|n| ("float64", Value::Number(n))),
                (Some("bool"), Some(t)) => t.parse::<bool>().ok().map(|b| ("bool", json!(b))),
                (Some("bytes"), Some(t)) => Some(("binary", json!(t))),
                _ => None,
            };
            match typed {
                Some((kind, value)) => json!({"key": key, "type": kind, "value": value}),
                None => tag(key, value),
            }
        })
        .collect()
}

fn tags_of(object: &Value, skip: &[&str]) -> Vec<Value> {
    object
        .as_object()
        .map(|map| {
            map.iter()
                .filter(|(k, _)| !skip.contains(&k.as_str()))
                .map(|(k, v)| tag(k, v))
                .collect()
        })
        .unwrap_or_default()
}

/// An RFC 3339 time (as the JSON conversion writes it) in microseconds since the epoch.
fn micros_of(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(0, |t| t.timestamp_micros())
}

/// One trace in Jaeger's JSON: spans with `processID`s, and the processes.
fn jaeger_trace(trace_id: &str, rows: &[BTreeMap<String, Value>]) -> Value {
    let mut processes: Vec<(String, Value)> = Vec::new();
    let mut process_ids: HashMap<(String, String), String> = HashMap::new();
    let mut spans = Vec::with_capacity(rows.len());
    for row in rows {
        let service = row["service_name"]
            .as_str()
            .unwrap_or("unknown_service")
            .to_owned();
        let resource = &row["resource_attributes"];
        let process_key = (service.clone(), resource.to_string());
        let process_id = process_ids
            .entry(process_key)
            .or_insert_with(|| {
                let id = format!("p{}", processes.len() + 1);
                // The resource's attributes, typed as the span's are, without the service
                // name (the process's `serviceName`).
                let process_tags: Vec<Value> =
                    typed_tags(resource, &row["resource_attribute_types"])
                        .into_iter()
                        .filter(|tag| tag["key"] != "service.name")
                        .collect();
                processes.push((
                    id.clone(),
                    json!({"serviceName": service, "tags": process_tags}),
                ));
                id
            })
            .clone();

        let mut references = Vec::new();
        if let Some(parent) = row["parent_span_id"].as_str() {
            references.push(json!({"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent}));
        }
        for link in row["links"].as_array().into_iter().flatten() {
            references.push(json!({
                "refType": "FOLLOWS_FROM",
                "traceID": link["trace_id"],
                "spanID": link["span_id"],
            }));
        }

        let mut tags = typed_tags(&row["attributes"], &row["attribute_types"]);
        let kind = row["span_kind"].as_str().unwrap_or("unspecified");
        if !matches!(kind, "unspecified" | "internal") {
            tags.push(tag("span.kind", &json!(kind)));
        }
        match row["status_code"].as_str() {
            Some("error") => {
                tags.push(tag("error", &json!(true)));
                tags.push(tag("otel.status_code", &json!("ERROR")));
            }
            Some("ok") => tags.push(tag("otel.status_code", &json!("OK"))),
            _ => {}
        }
        if let Some(message) = row["status_message"].as_str() {
            tags.push(tag("otel.status_description", &json!(message)));
        }
        if let Some(scope) = row["scope_name"].as_str() {
            tags.push(tag("otel.scope.name", &json!(scope)));
        }
        if let Some(version) = row["scope_version"].as_str() {
            tags.push(tag("otel.scope.version", &json!(version)));
        }
        if let Some(state) = row["trace_state"].as_str() {
            tags.push(tag("w3c.tracestate", &json!(state)));
        }
        let logs: Vec<Value> = row["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|event| {
                let mut fields = vec![tag("event", &event["name"])];
                fields.extend(tags_of(&event["attributes"], &[]));
                json!({"timestamp": micros_of(&event["time"]), "fields": fields})
            })
            .collect();
        let start_ns = row["start_ns"].as_i64().unwrap_or(0);
        let duration_ns = row["duration_ns"].as_i64().unwrap_or(0);
        spans.push(json!({
            "traceID": trace_id,
            "spanID": row["span_id"],
            "operationName": row["span_name"],
            "references": references,
            "startTime": start_ns / 1000,
            "duration": duration_ns / 1000,
            "tags": tags,
            "logs": logs,
            "processID": process_id,
            "warnings": null,
            // Jaeger's sampled bit is bit 0 of the W3C trace flags, which OTLP carries in
            // the low byte of the span's flags (0 from SDKs that do not send them).
            "flags": row["flags"].as_u64().unwrap_or(0) & 0x01,
        }));
    }
    let processes: serde_json::Map<String, Value> = processes.into_iter().collect();
    json!({"traceID": trace_id, "spans": spans, "processes": processes, "warnings": null})
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
    let now_ms = crate::clock::unix_millis(SystemTime::now());
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
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let cases = [
            ("300ms", Some(Duration::from_millis(300)), "milliseconds"),
            ("1.5s", Some(Duration::from_millis(1500)), "a fraction"),
            ("2h45m", Some(Duration::from_secs(9900)), "two units"),
            ("10us", Some(Duration::from_micros(10)), "us"),
            ("10µs", Some(Duration::from_micros(10)), "µs"),
            ("10", None, "no unit"),
            ("ms", None, "no number"),
            ("5 parsecs", None, "unknown unit"),
        ];
        for (text, want, why) in cases {
            assert_eq!(go_duration(text).ok(), want, "{why}");
        }
    }

    #[test]
    fn tags_from_both_forms() {
        let raw = "service=a&tags=%7B%22http.route%22%3A%22%2Fcart%22%7D&tag=error:true";
        let tags = search_tags(raw).unwrap();
        assert_eq!(
            tags,
            [
                ("error".to_owned(), "true".to_owned()),
                ("http.route".to_owned(), "/cart".to_owned())
            ]
        );
        assert!(search_tags("tags=notjson").is_err());
    }

    #[test]
    fn search_filter_quotes_literals() {
        let query = SearchQuery {
            service: Some("o'brien".into()),
            operation: None,
            start: Some("1000".into()),
            end: None,
            min_duration: Some("1ms".into()),
            max_duration: None,
            limit: None,
        };
        let filter = search_filter(&query, &[("k'".into(), "v".into())]).unwrap();
        assert_eq!(
            filter,
            "service_name = 'o''brien' AND start_time >= to_timestamp_micros(1000) AND \
             duration_ns >= 1000000 AND (attributes['k'''] = 'v' OR resource_attributes['k'''] = 'v')"
        );
    }

    /// A process's tags keep the types the resource's attributes were sent with.
    #[test]
    fn process_tags_are_typed() {
        let row: BTreeMap<String, Value> = serde_json::from_value(json!({
            "trace_id": "01", "span_id": "02", "parent_span_id": null, "trace_state": null,
            "service_name": "cart", "span_name": "GET", "span_kind": "server", "start_ns": 0,
            "duration_ns": 1000, "status_code": "unset", "status_message": null,
            "scope_name": null, "scope_version": null, "attributes": {}, "attribute_types": {},
            "events": [], "links": [], "flags": 1,
            "resource_attributes": {"service.name": "cart", "host.cpus": "4", "region": "eu"},
            "resource_attribute_types": {"service.name": "string", "host.cpus": "int", "region": "string"},
        }))
        .unwrap();
        let trace = jaeger_trace("01", &[row]);
        let process = &trace["processes"]["p1"];
        assert_eq!(process["serviceName"], "cart");
        assert_eq!(
            process["tags"],
            json!([
                {"key": "host.cpus", "type": "int64", "value": 4},
                {"key": "region", "type": "string", "value": "eu"},
            ]),
            "the number as int64, the service name not repeated"
        );
    }
}
