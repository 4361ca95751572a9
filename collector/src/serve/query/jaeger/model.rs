//! Rows of the spans table as Jaeger's JSON: spans with typed tags, logs and references, and
//! the processes they ran in.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

pub(super) fn tag(key: &str, value: &Value) -> Value {
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
pub(super) fn typed_tags(attributes: &Value, types: &Value) -> Vec<Value> {
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

pub(super) fn tags_of(object: &Value, skip: &[&str]) -> Vec<Value> {
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
pub(super) fn micros_of(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(0, |t| t.timestamp_micros())
}

/// One trace in Jaeger's JSON: spans with `processID`s, and the processes.
pub(super) fn jaeger_trace(trace_id: &str, rows: &[BTreeMap<String, Value>]) -> Value {
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
