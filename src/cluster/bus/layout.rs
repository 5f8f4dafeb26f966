//! A sealed payload's layout: the first line's tag and MAC digits, and the
//! most bytes each part may take.
//!
//! ```text
//! klav1 <HMAC-SHA256, 64 hex digits>\n<node>\n<incarnation> <sequence> <time µs>\n<JSON array of events>
//! ```
//!
//! Apart because three others size or parse by it: the sealer writes it, the
//! inbox reads it back, and the packer fills event arrays to what it leaves.

/// Largest payload sent: under PostgreSQL's 8,000-byte limit with room to spare.
pub const MAX_PAYLOAD: usize = 7_800;

/// Longest node name a header carries (`KLAV_NODE_NAME` is at most 64 bytes).
pub const MAX_NODE_NAME: usize = 64;

/// The most a sealed payload's header takes: the version and MAC line, the
/// node name and the numbers line.
pub const MAX_HEADER: usize = VERSION.len() + 1 + 2 * MAC_LEN + 1 + MAX_NODE_NAME + 1 + 3 * 20 + 3;

/// Largest events array in a payload: what [`MAX_PAYLOAD`] leaves after the
/// header.
pub const MAX_BODY: usize = MAX_PAYLOAD - MAX_HEADER;

/// The first line's tag: this payload format and MAC.
pub(super) const VERSION: &str = "klav1";

/// Bytes of an HMAC-SHA256.
pub(super) const MAC_LEN: usize = 32;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes MAC bytes as lowercase hex digits, as the first line carries them.
pub(super) fn push_hex(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

/// A MAC's bytes from the first line's hex digits (lowercase, exactly
/// [`MAC_LEN`] of them).
pub(super) fn unhex(s: &str) -> Option<[u8; MAC_LEN]> {
    let s = s.as_bytes();
    if s.len() != 2 * MAC_LEN {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; MAC_LEN];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}
