//! The split by trace against prost on any bytes (`wayfinder_decode::oracle::check_split`):
//! where prost decodes a request, the pieces decode, each holds one trace's spans under their
//! resource and scope, and together they hold every span with a valid trace id once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(difference) = wayfinder_decode::oracle::check_split(data) {
        panic!("{difference}");
    }
});
