//! The Jaeger endpoints' parsing and JSON shapes.

use super::search::go_duration;
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
