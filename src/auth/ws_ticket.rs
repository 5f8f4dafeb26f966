//! WebSocket tickets: what a browser puts in `/ws?ticket=` instead of its token.
//!
//! A URL ends up in places a header does not: a reverse proxy's access log, the
//! browser's history. A token there is a session for anyone who reads the log;
//! a ticket there is a used (or soon expired) one-time string. The ticket is 256
//! random bits; the database keeps only its SHA-256, which is cheap enough for
//! the loop (one block) and cannot be turned back into the ticket.

use sha2::{Digest, Sha256};

/// Random bytes in a ticket.
const TICKET_BYTES: usize = 32;

/// A fresh ticket (hex) and the hash to store for it.
pub fn new_ticket() -> (String, Vec<u8>) {
    let mut raw = [0u8; TICKET_BYTES];
    getrandom::fill(&mut raw).expect("the OS random source failed");
    let ticket: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let hash = hash(&ticket);
    (ticket, hash)
}

/// The stored form of a ticket; `None` for a string no ticket can be (it is
/// refused without asking the database).
pub fn ticket_hash(ticket: &str) -> Option<Vec<u8>> {
    (ticket.len() == 2 * TICKET_BYTES
        && ticket
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| hash(ticket))
}

fn hash(ticket: &str) -> Vec<u8> {
    Sha256::digest(ticket.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_fresh_and_checked() {
        let (a, ha) = new_ticket();
        let (b, _) = new_ticket();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(ticket_hash(&a), Some(ha.clone()));
        assert_eq!(ha.len(), 32);
        assert_eq!(ticket_hash(&a.to_uppercase()), None);
        assert_eq!(ticket_hash(&a[1..]), None);
        assert_eq!(ticket_hash(""), None);
        assert_eq!(ticket_hash(&"g".repeat(64)), None);
    }
}
