//! Measures the loop's cost of decoding the widest frames a client may send:
//! `cargo run --release --example decode_cost`.
use std::time::Instant;

fn main() {
    // As many keys as fit in a 64 KiB frame, and a normal request for scale.
    let mut wide = String::from("{\"type\":\"msg\"");
    let mut i = 0;
    while wide.len() < 64 * 1024 - 16 {
        wide.push_str(&format!(",\"k{i}\":0"));
        i += 1;
    }
    wide.push('}');
    let normal = r#"{"type":"msg","room_id":"r_0123abcd","text":"hello there","req_id":7}"#;
    for (name, frame) in [("normal", normal.to_string()), ("wide", wide)] {
        let n = if name == "wide" { 2_000 } else { 200_000 };
        let t = Instant::now();
        for _ in 0..n {
            let _ = std::hint::black_box(klav::protocol::Request::decode(&frame));
        }
        let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
        let v = Instant::now();
        for _ in 0..n {
            let _ = std::hint::black_box(serde_json::from_str::<serde_json::Value>(&frame));
        }
        let generic = v.elapsed().as_secs_f64() / n as f64 * 1e6;
        println!(
            "{name:6} {:6} bytes, {i:5} keys: {per:8.2} µs per frame (a generic JSON value: {generic:8.2} µs)",
            frame.len()
        );
    }
}
