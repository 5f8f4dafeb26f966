//! Any text as a WebSocket request frame: decoding and parsing (as the loop does
//! before applying a request) must not panic, whatever the JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = klav::handlers::decode_frame(text);
    }
});
