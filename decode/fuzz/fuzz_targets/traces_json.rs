//! OTLP/JSON trace requests: any bytes that serde reads as an `ExportTraceServiceRequest` (as
//! the OTLP/HTTP receiver does for `application/json`) decode without a panic, and the prost
//! encoding of what was read decodes the same through the wire decoder and through prost's
//! messages (`wayfinder_decode::oracle`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<ExportTraceServiceRequest>(data) else {
        return;
    };
    let _ = wayfinder_decode::decode_traces(&request);
    if let Err(difference) = wayfinder_decode::oracle::compare_with_prost(&request.encode_to_vec())
    {
        panic!("{difference}");
    }
});
