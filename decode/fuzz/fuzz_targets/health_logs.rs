//! The health-event decoder on any bytes that prost reads as an `ExportLogsServiceRequest`:
//! it never panics, and every log record is counted once, as an event, a refusal or another
//! record; every event it gives passes the same validation `POST /v1/health` applies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;
use wayfinder_decode::health::decode_health_logs;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ExportLogsServiceRequest::decode(data) else {
        return;
    };
    let records: u64 = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum();
    let decoded = decode_health_logs(&request);
    assert_eq!(
        decoded.events.len() as u64 + decoded.rejected + decoded.other_records,
        records,
        "every record counted once"
    );
    assert_eq!(decoded.message().is_some(), decoded.rejected > 0);
});
