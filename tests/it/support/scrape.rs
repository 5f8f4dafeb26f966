//! Reading `/metrics` the way a scraper does: one page per request, samples by
//! their exact name (labels included, e.g. `klav_disconnects_total{reason="peer"}`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::{http_to, WAIT};
use crate::support::wait::eventually;

/// `GET /metrics` (a fresh connection each time), which must be served.
pub fn metrics_text(addr: SocketAddr) -> String {
    let r = http_to(addr, "GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// The value of one sample on a page (`name` or `name{labels}`, spelled exactly),
/// as written.
fn value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| Some(l.strip_prefix(name)?.strip_prefix(' ')?.trim()))
}

/// The value of one sample on a page, any number (a histogram's sum too).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    value(text, name)?.parse().ok()
}

/// A counter or gauge, read from a fresh page: it must be there, a whole number.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = metrics_text(addr);
    let v = value(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"));
    v.parse()
        .unwrap_or_else(|e| panic!("{name} is {v:?}, not a count ({e})"))
}

/// Reads a counter or gauge until `ok` holds (within [`WAIT`]); returns its value.
pub fn wait_metric(addr: SocketAddr, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
    eventually(WAIT, Duration::from_millis(50), || {
        let v = metric(addr, name);
        if ok(v) {
            Ok(v)
        } else {
            Err(format!("{name} stayed at {v}"))
        }
    })
}

/// The sample counting closes for one reason.
pub fn disconnects(reason: &str) -> String {
    format!("klav_disconnects_total{{reason=\"{reason}\"}}")
}
