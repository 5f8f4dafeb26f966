//! HS256/384/512 access tokens with `sub`, `iat` and `exp` claims. A token that
//! carries `nbf` is refused before that time.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

/// Why a token was refused; the text goes into the 403's `detail`.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    Invalid,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Missing => "missing token",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::Invalid => "invalid token",
        })
    }
}

/// Signs and checks tokens with the configured secret and algorithm.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    header: Header,
    validation: Validation,
    pub expire_minutes: u64,
}

impl Tokens {
    pub fn new(secret: &[u8], algorithm: Algorithm, expire_minutes: u64) -> Tokens {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        // Klav never issues `nbf`, but a token that says "not before" must not be
        // honoured early (jsonwebtoken ignores it unless asked).
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            header: Header::new(algorithm),
            validation,
            expire_minutes,
        }
    }

    /// A fresh token for `username`.
    pub fn issue(&self, username: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: username.to_string(),
            iat: now,
            exp: now + self.expire_minutes * 60,
        };
        encode(&self.header, &claims, &self.encoding).expect("HMAC signing cannot fail")
    }

    /// The username a valid token was issued for. Only the configured algorithm
    /// is accepted (so `alg: none` and algorithm swaps are refused).
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        self.verify_expiry(token).map(|(sub, _)| sub)
    }

    /// The username and the expiry (`exp`) of a valid token.
    pub fn verify_expiry(&self, token: &str) -> Result<(String, SystemTime), TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        match decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) if !data.claims.sub.is_empty() => Ok((
                data.claims.sub,
                UNIX_EPOCH + std::time::Duration::from_secs(data.claims.exp),
            )),
            Ok(_) => Err(TokenError::Invalid),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => Err(TokenError::NotYetValid),
                _ => Err(TokenError::Invalid),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify() {
        let t = Tokens::new(b"secret", Algorithm::HS256, 60);
        assert_eq!(t.verify(&t.issue("alice")).unwrap(), "alice");
    }

    #[test]
    fn refuses_other_secret_and_algorithm() {
        let a = Tokens::new(b"secret", Algorithm::HS256, 60);
        let b = Tokens::new(b"other", Algorithm::HS256, 60);
        let c = Tokens::new(b"secret", Algorithm::HS512, 60);
        assert_eq!(a.verify(&b.issue("x")), Err(TokenError::Invalid));
        assert_eq!(a.verify(&c.issue("x")), Err(TokenError::Invalid));
        assert_eq!(a.verify("garbage"), Err(TokenError::Invalid));
        assert_eq!(a.verify(""), Err(TokenError::Missing));
    }

    #[test]
    fn honours_nbf() {
        let t = Tokens::new(b"secret", Algorithm::HS256, 60);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mint = |nbf: u64| {
            let claims = serde_json::json!({"sub": "a", "iat": now, "exp": now + 600, "nbf": nbf});
            encode(&t.header, &claims, &t.encoding).unwrap()
        };
        assert_eq!(t.verify(&mint(now + 300)), Err(TokenError::NotYetValid));
        assert_eq!(t.verify(&mint(now - 1)).unwrap(), "a");
    }
}
