//! Packing encoded events into event arrays, each small enough to be sealed
//! into one payload.
//!
//! Apart because more than the sealer packs: the loop's typing notices
//! (`cluster::clock`) are packed the same way, and only the layout's
//! [`MAX_BODY`] bounds them.

use super::layout::MAX_BODY;

/// Packs encoded events into event arrays of at most [`MAX_BODY`] bytes, each
/// to be sealed into one payload ([`Sealer::seal`](crate::cluster::bus::Sealer::seal))
/// where it is sent.
#[derive(Default)]
pub struct Payloads {
    out: Vec<String>,
    cur: String,
}

impl Payloads {
    pub fn new() -> Payloads {
        Payloads::default()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty() && self.cur.is_empty()
    }

    /// Adds one encoded event; `fallback` encodes a smaller stand-in (a
    /// reference) for an event too large for a payload of its own.
    pub fn push(&mut self, event: String, fallback: impl FnOnce() -> String) {
        let event = if event.len() + 2 > MAX_BODY {
            fallback()
        } else {
            event
        };
        if !self.cur.is_empty() && self.cur.len() + event.len() + 2 > MAX_BODY {
            self.flush();
        }
        if self.cur.is_empty() {
            self.cur.push('[');
        } else {
            self.cur.push(',');
        }
        self.cur.push_str(&event);
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.cur.push(']');
            self.out.push(std::mem::take(&mut self.cur));
        }
    }

    /// The event arrays, in order.
    pub fn finish(mut self) -> Vec<String> {
        self.flush();
        self.out
    }

    /// The event arrays filled so far (tests take the first full one).
    #[cfg(test)]
    pub(super) fn filled(&mut self) -> &mut Vec<String> {
        &mut self.out
    }
}
