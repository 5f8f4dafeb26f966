//! The bus's own key, derived from `JWT_SECRET`, and the HMAC it keys.
//!
//! Apart because both ends of the bus hold it and nothing else of theirs:
//! the sealer signs with it, the inbox verifies with it.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::layout::MAC_LEN;

/// What the bus key is derived with, from `JWT_SECRET`.
const KEY_LABEL: &[u8] = b"klav bus v1";

type HmacSha256 = Hmac<Sha256>;

/// The bus's key: HMAC-SHA256(`JWT_SECRET`, "klav bus v1"). Every node of a
/// cluster has `JWT_SECRET`; a key of the bus's own means that no bus MAC is
/// ever a token signature, nor the other way round.
#[derive(Clone)]
pub struct BusKey([u8; MAC_LEN]);

impl BusKey {
    pub fn derive(jwt_secret: &[u8]) -> BusKey {
        let mut m = HmacSha256::new_from_slice(jwt_secret).expect("HMAC takes keys of any length");
        m.update(KEY_LABEL);
        BusKey(m.finalize().into_bytes().into())
    }

    pub(super) fn hmac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for BusKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BusKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::bus::fixtures::SECRET;

    #[test]
    fn the_key_is_derived() {
        assert_ne!(BusKey::derive(SECRET).0, BusKey::derive(b"another").0);
        assert_ne!(
            &BusKey::derive(SECRET).0[..],
            SECRET,
            "never the secret itself"
        );
    }
}
