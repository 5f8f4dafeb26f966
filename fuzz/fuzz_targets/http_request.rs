//! Any bytes as an HTTP request head and body: the parser must not panic, must
//! never claim more bytes than it was given, and must respect its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    klav::http::check_parse_invariants(data);
});
