//! A Jaeger search (`/api/traces?service=…&tags=…&minDuration=…`) as a SQL filter over the
//! spans table.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{JaegerError, literal};

/// Parses a Go duration as Jaeger takes it (`1.5s`, `300ms`, `2h45m`, `10us`, `10µs`).
pub(super) fn go_duration(text: &str) -> Result<Duration, String> {
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

/// The most tags one search may have. Each is a clause of one `AND` chain, which the SQL
/// check bounds in depth (256): 32 leaves the rest of the filter room, and is more than the
/// Jaeger UI or Grafana send.
pub(super) const MAX_TAGS: usize = 32;

/// The tags of a search: `tags={"k":"v"}` (Jaeger UI, Grafana) or repeated `tag=k:v`; at most
/// [`MAX_TAGS`].
pub(super) fn search_tags(raw: &str) -> Result<Vec<(String, String)>, JaegerError> {
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
        if tags.len() > MAX_TAGS {
            return Err(JaegerError::bad_request(format!(
                "a search has at most {MAX_TAGS} tags"
            )));
        }
    }
    tags.sort();
    Ok(tags)
}

/// `application/x-www-form-urlencoded` pairs (serde's `Query` keeps only one `tag`).
pub(super) fn form_urlencoded_pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchQuery {
    pub(super) service: Option<String>,
    pub(super) operation: Option<String>,
    pub(super) start: Option<String>,
    pub(super) end: Option<String>,
    #[serde(rename = "minDuration")]
    pub(super) min_duration: Option<String>,
    #[serde(rename = "maxDuration")]
    pub(super) max_duration: Option<String>,
    pub(super) limit: Option<String>,
}

/// The `WHERE` clause that a span of a matching trace satisfies.
pub(super) fn search_filter(
    query: &SearchQuery,
    tags: &[(String, String)],
) -> Result<String, JaegerError> {
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
