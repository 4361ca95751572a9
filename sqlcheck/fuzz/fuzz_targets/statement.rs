//! The statement check on any text: it never panics or overflows its stack, and it is
//! deterministic; what it lets through is one statement or text sqlparser cannot parse (for
//! DataFusion to refuse), never two statements it could.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wayfinder_sqlcheck::{SqlCheckError, check};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let first = check(sql);
    assert_eq!(first, check(sql), "the same answer twice");
    if let Err(SqlCheckError::Several(n)) = first {
        assert!(n >= 2, "several means two or more, not {n}");
    }
});
