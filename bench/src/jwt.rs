//! HS256/384/512 tokens minted with the server's secret, so a run with many users
//! skips one argon2-priced `/login` per user.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};

use crate::options::JwtAlg;

/// A signed token for `sub`, issued at `iat` (Unix seconds), valid for `ttl_secs`.
pub fn mint(secret: &[u8], alg: JwtAlg, sub: &str, iat: u64, ttl_secs: u64) -> String {
    let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, alg.name());
    let claims = serde_json::json!({ "sub": sub, "iat": iat, "exp": iat + ttl_secs }).to_string();
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let sig = match alg {
        JwtAlg::HS256 => sign::<Hmac<Sha256>>(secret, token.as_bytes()),
        JwtAlg::HS384 => sign::<Hmac<Sha384>>(secret, token.as_bytes()),
        JwtAlg::HS512 => sign::<Hmac<Sha512>>(secret, token.as_bytes()),
    };
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    token
}

fn sign<M: Mac + hmac::digest::KeyInit>(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(secret)
        .expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_token_has_header_claims_and_signature() {
        let t = mint(b"secret", JwtAlg::HS256, "alice", 1_700_000_000, 3600);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_003_600u64);
        let expected =
            sign::<Hmac<Sha256>>(b"secret", format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap(), expected);
        assert_eq!(expected.len(), 32);
    }

    #[test]
    fn known_hmac_sha256_vector() {
        // RFC 4231 test case 2.
        let mac = sign::<Hmac<Sha256>>(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn other_algorithms_have_longer_signatures() {
        let t = mint(b"k", JwtAlg::HS512, "bob", 1, 60);
        let sig = URL_SAFE_NO_PAD
            .decode(t.rsplit('.').next().unwrap())
            .unwrap();
        assert_eq!(sig.len(), 64);
        let t = mint(b"k", JwtAlg::HS384, "bob", 1, 60);
        let sig = URL_SAFE_NO_PAD
            .decode(t.rsplit('.').next().unwrap())
            .unwrap();
        assert_eq!(sig.len(), 48);
    }
}
