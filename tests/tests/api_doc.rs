//! `docs/api.md` cannot drift from the code: every documented HTTP example is sent to a live
//! collector fed by the demo's fleet, and the answer must have the documented shape (the same
//! keys, recursively, with values of the same JSON types; `null` matches anything, since a
//! documented field may be absent in one answer); every field of the gRPC messages is
//! documented, and `Get` and `Watch` answer over a real tonic client.

use std::time::Duration;

use serde_json::Value;
use wayfinder_e2e::{http_client, loopback_config, sql, start};

/// One documented example: the method, the path (placeholders filled in), a body, and the
/// documented answer.
#[derive(Debug)]
struct Example {
    method: String,
    path: String,
    body: Option<String>,
    status: u16,
    answer: Option<Value>,
}

/// The examples of `docs/api.md`: an ```` ```http ```` block (`METHOD PATH`, then optionally
/// a blank line and a body), followed by the answer: a ```` ```json ```` block, or a
/// `→ NNN` line for an answer that is not JSON.
fn examples(doc: &str) -> Vec<Example> {
    let mut found = Vec::new();
    let mut rest = doc;
    while let Some(at) = rest.find("```http\n") {
        rest = &rest[at + "```http\n".len()..];
        let end = rest.find("```").expect("a closed http block");
        let block = &rest[..end];
        rest = &rest[end + 3..];
        let (head, body) = match block.split_once("\n\n") {
            Some((head, body)) => (head, Some(body.trim().to_owned())),
            None => (block, None),
        };
        let (method, path) = head.trim().split_once(' ').expect("METHOD PATH");
        let next = rest.trim_start();
        let (status, answer) = if let Some(json) = next.strip_prefix("```json\n") {
            let end = json.find("```").expect("a closed json block");
            let value: Value = serde_json::from_str(&json[..end]).unwrap_or_else(|e| {
                panic!("{method} {path}: the documented answer is not JSON: {e}")
            });
            (200, Some(value))
        } else if let Some(line) = next.strip_prefix("→ ") {
            let code = line.split_whitespace().next().unwrap_or_default();
            (code.parse().expect("→ a status"), None)
        } else {
            panic!("{method} {path}: no documented answer after the request");
        };
        found.push(Example {
            method: method.to_owned(),
            path: path.to_owned(),
            body,
            status,
            answer,
        });
    }
    found
}

/// Objects whose keys are data (attribute names, Jaeger process ids), not fields: every value
/// has the shape of the documented one.
const MAPS: [&str; 5] = [
    "attributes",
    "attribute_types",
    "resource_attributes",
    "resource_attribute_types",
    "processes",
];

/// Where `live` does not have the shape of `documented`.
fn shape(documented: &Value, live: &Value, at: &str, problems: &mut Vec<String>) {
    let is_map = MAPS.iter().any(|key| at.ends_with(&format!(".{key}")));
    match (documented, live) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(doc), Value::Object(got)) if is_map => {
            if let Some(doc) = doc.values().next() {
                for (key, value) in got {
                    shape(doc, value, &format!("{at}[{key}]"), problems);
                }
            }
        }
        (Value::Object(doc), Value::Object(got)) => {
            for (key, value) in doc {
                match got.get(key) {
                    Some(live) => shape(value, live, &format!("{at}.{key}"), problems),
                    None if value.is_null() => {}
                    None => problems.push(format!("{at}.{key}: documented, not in the answer")),
                }
            }
            for key in got.keys() {
                if !doc.contains_key(key) {
                    problems.push(format!("{at}.{key}: in the answer, not documented"));
                }
            }
        }
        (Value::Array(doc), Value::Array(got)) => {
            if let (Some(doc), Some(got)) = (doc.first(), got.first()) {
                shape(doc, got, &format!("{at}[0]"), problems);
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        (doc, got) => problems.push(format!(
            "{at}: documented as {}, answered {}",
            kind(doc),
            kind(got)
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md"))
        .expect("docs/api.md")
}

#[test]
fn the_shape_check_finds_what_drifted() {
    let documented: Value =
        serde_json::json!({"a": 1, "b": [{"c": "x"}], "d": null, "attributes": {"k": "v"}});
    // (answer, problems expected, why)
    let rows = [
        (
            serde_json::json!({"a": 2, "b": [{"c": "y"}], "attributes": {}}),
            0,
            "same shape, other values",
        ),
        (
            serde_json::json!({"a": 2, "b": [], "attributes": {}}),
            0,
            "an empty array cannot be checked",
        ),
        (
            serde_json::json!({"a": "2", "b": [], "attributes": {}}),
            1,
            "a number became a string",
        ),
        (
            serde_json::json!({"b": [], "attributes": {}}),
            1,
            "a documented key is gone",
        ),
        (
            serde_json::json!({"a": 1, "b": [], "e": 0, "attributes": {}}),
            1,
            "an undocumented key",
        ),
        (
            serde_json::json!({"a": 1, "b": [{"c": 1}], "attributes": {}}),
            1,
            "a nested type changed",
        ),
    ];
    for (answer, expected, why) in rows {
        let mut problems = Vec::new();
        shape(&documented, &answer, "$", &mut problems);
        assert_eq!(problems.len(), expected, "{why}: {problems:?}");
    }
    let parsed = examples(
        "x\n```http\nPOST /a\n\n{\"q\": 1}\n```\n```json\n{\"r\": 2}\n```\n\
         ```http\nGET /b\n```\n→ 404 (not found)\n",
    );
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].body.as_deref(), Some("{\"q\": 1}"));
    assert_eq!(parsed[1].status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_example_answers_with_the_documented_shape() {
    let collector = start(loopback_config()).await;
    let addrs = collector.addrs();
    let urls = wayfinder_demo::fleet::CollectorUrls::of(&addrs);
    let fleet = wayfinder_demo::fleet::Fleet::start(&urls).expect("the fleet starts");
    let counts = std::sync::Arc::new(wayfinder_demo::drive::Counts::default());
    let driver = wayfinder_demo::drive::start(fleet.frontend(), 40, counts);
    let client = http_client();
    let base = format!("http://{}", addrs.query_http);
    // Until the fleet's spans are stored, the graph has its edges and checkout has weights.
    let mut ready = false;
    for _ in 0..160 {
        let weights = client
            .get(format!("{base}/api/v1/weights/checkout"))
            .send()
            .await
            .expect("the API answers");
        let topology: Value = client
            .get(format!("{base}/api/v1/topology?window=1m"))
            .send()
            .await
            .expect("the API answers")
            .json()
            .await
            .expect("JSON");
        let edges = topology["edges"].as_array().map_or(0, Vec::len);
        if weights.status() == 200 && edges >= 5 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ready, "the fleet's graph and checkout's weights appear");
    let trace_id = sql(
        &collector,
        "SELECT trace_id FROM spans WHERE service_name = 'frontend' LIMIT 1",
    )
    .await
    .rows[0][0]
        .as_str()
        .expect("a trace id")
        .to_owned();

    let examples = examples(&doc());
    assert!(examples.len() >= 15, "{} examples", examples.len());
    let mut problems = Vec::new();
    for example in &examples {
        let path = example.path.replace("{trace_id}", &trace_id);
        let url = format!("{base}{path}");
        let request = match example.method.as_str() {
            "GET" => client.get(&url),
            "POST" => client
                .post(&url)
                .header("content-type", "application/json")
                .body(example.body.clone().unwrap_or_default()),
            other => panic!("{other} {path}: an unknown method"),
        };
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let name = format!("{} {}", example.method, example.path);
        if status != example.status {
            problems.push(format!(
                "{name}: answered {status}, documented {}: {text}",
                example.status
            ));
            continue;
        }
        if let Some(documented) = &example.answer {
            match serde_json::from_str::<Value>(&text) {
                Ok(live) => shape(documented, &live, &name, &mut problems),
                Err(e) => problems.push(format!("{name}: the answer is not JSON ({e}): {text}")),
            }
        }
    }

    // gRPC: a real client; every field of the answers' messages is in the doc.
    let mut weights = wayfinder_api::grpc::weights_client::WeightsClient::connect(format!(
        "http://{}",
        addrs.query_grpc
    ))
    .await
    .expect("the gRPC API answers");
    let got = weights
        .get(wayfinder_api::grpc::GetWeightsRequest {
            service: "checkout".to_owned(),
        })
        .await
        .expect("Get answers")
        .into_inner();
    assert_eq!(got.service, "checkout");
    assert!(!got.endpoints.is_empty(), "checkout's endpoints");
    let mut stream = weights
        .watch(wayfinder_api::grpc::WatchWeightsRequest {
            service: "checkout".to_owned(),
            after_version: 0,
        })
        .await
        .expect("Watch answers")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a first message at once")
        .expect("a message")
        .expect("not the end");
    assert_eq!(first.service, "checkout");
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api/proto/wayfinder/v1/weights.proto"
    ))
    .expect("the proto");
    let doc = doc();
    for line in proto.lines() {
        let line = line.trim();
        // `string service = 1;`, `repeated Endpoint endpoints = 5;`, `optional double p50 = 1;`
        if let Some((decl, _)) = line.split_once(" = ")
            && line.ends_with(';')
            && !line.starts_with("//")
            && !["syntax", "package", "option"]
                .iter()
                .any(|k| line.starts_with(k))
        {
            let field = decl.split_whitespace().last().unwrap_or_default();
            if !doc.contains(&format!("`{field}`")) {
                problems.push(format!("gRPC field `{field}` is not in docs/api.md"));
            }
        }
    }

    driver.abort();
    fleet.shutdown().await.expect("the fleet leaves");
    collector.shutdown().await;
    assert!(
        problems.is_empty(),
        "docs/api.md drifted:\n{}",
        problems.join("\n")
    );
}
