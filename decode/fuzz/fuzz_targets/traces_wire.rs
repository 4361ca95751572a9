//! The wire decoder against prost on any bytes: both refuse, or both give the same batch,
//! facts and rejections (`wayfinder_decode::oracle`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(difference) = wayfinder_decode::oracle::compare_with_prost(data) {
        panic!("{difference}");
    }
});
