//! HS256/384/512 access tokens with `sub`, `iat`, `exp`, `auth_time` and `gen`
//! claims. A token that carries `nbf` is refused before that time.
//!
//! `auth_time` (the standard claim's name) is when the user logged in with
//! their password. A refreshed token keeps it, and no token lives past
//! `auth_time` + `KLAV_SESSION_MAX_DAYS`: a stolen token can be refreshed for a
//! while, never for good. Tokens from versions without the claim count from
//! their `iat`.
//!
//! `gen` is the user's token generation when the token was issued: revoking a
//! user's tokens (a password change, `logout_all`, deletion) moves the stored
//! generation on, and a token of an older generation is refused from then on
//! (checked against the database or the loop's memory, not here). Tokens from
//! versions without the claim count as generation 0: they stay valid until a
//! first revocation.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    /// The user's token generation at issue (absent: 0).
    #[serde(default)]
    gen: i64,
}

/// Why a token was refused; the text goes into the 403's `detail`.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    Invalid,
    /// The login it descends from is older than `KLAV_SESSION_MAX_DAYS`.
    SessionEnded,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Missing => "missing token",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::Invalid => "invalid token",
            TokenError::SessionEnded => "session too old: log in again",
        })
    }
}

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub username: String,
    /// Its `exp`.
    pub expires: SystemTime,
    /// Its `auth_time` (or, without one, its `iat`).
    pub auth_time: SystemTime,
    /// Its `gen`: the user's token generation it was issued in (0 without one).
    pub generation: i64,
}

/// A token just signed, and its `exp`.
#[derive(Clone, Debug)]
pub struct Issued {
    pub token: String,
    pub expires: SystemTime,
    /// Whole minutes from now to `expires` (`JWT_EXPIRE_MINUTES`, unless the
    /// login ends sooner).
    pub expires_in_minutes: u64,
}

/// `KLAV_SESSION_MAX_DAYS`' default.
pub const DEFAULT_SESSION_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Signs and checks tokens with the configured secret and algorithm.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    header: Header,
    validation: Validation,
    pub expire_minutes: u64,
    /// The longest a login lasts through refreshes.
    pub session_max: Duration,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
            session_max: DEFAULT_SESSION_MAX,
        }
    }

    /// With `KLAV_SESSION_MAX_DAYS` other than its default.
    pub fn with_session_max(mut self, session_max: Duration) -> Tokens {
        self.session_max = session_max;
        self
    }

    /// A token for a login with a password, now, in token generation 0.
    pub fn issue(&self, username: &str) -> String {
        self.login(username, 0).token
    }

    /// A token for a login with a password, now, in the user's token
    /// `generation`, with its expiry.
    pub fn login(&self, username: &str, generation: i64) -> Issued {
        self.reissue(username, SystemTime::now(), generation)
            .expect("a login that starts now has not ended")
    }

    /// A fresh token for a login made at `auth_time`, in token `generation`:
    /// valid for the usual minutes, but not past the login's end (refused once
    /// it has passed).
    pub fn reissue(
        &self,
        username: &str,
        auth_time: SystemTime,
        generation: i64,
    ) -> Result<Issued, TokenError> {
        self.sign(username, auth_time, generation, self.expire_minutes)
    }

    /// A token for a login the server API vouches for (an application with
    /// its own sign-in), now, in the user's token `generation`, valid for
    /// `minutes` (not past `KLAV_SESSION_MAX_DAYS`).
    pub fn login_for(&self, username: &str, generation: i64, minutes: u64) -> Issued {
        self.sign(username, SystemTime::now(), generation, minutes)
            .expect("a login that starts now has not ended")
    }

    fn sign(
        &self,
        username: &str,
        auth_time: SystemTime,
        generation: i64,
        minutes: u64,
    ) -> Result<Issued, TokenError> {
        let now = unix_secs(SystemTime::now());
        let auth = unix_secs(auth_time);
        let ends = auth.saturating_add(self.session_max.as_secs());
        let exp = now.saturating_add(minutes.saturating_mul(60)).min(ends);
        if exp <= now {
            return Err(TokenError::SessionEnded);
        }
        let claims = Claims {
            sub: username.to_string(),
            iat: now,
            exp,
            auth_time: Some(auth),
            gen: generation,
        };
        Ok(Issued {
            token: encode(&self.header, &claims, &self.encoding).expect("HMAC signing cannot fail"),
            expires: UNIX_EPOCH + Duration::from_secs(exp),
            expires_in_minutes: (exp - now) / 60,
        })
    }

    /// The username a valid token was issued for. Only the configured algorithm
    /// is accepted (so `alg: none` and algorithm swaps are refused).
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        self.verify_claims(token).map(|v| v.username)
    }

    /// Who a valid token is for, until when, and since when.
    pub fn verify_claims(&self, token: &str) -> Result<Verified, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        match decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) if !data.claims.sub.is_empty() => {
                let c = data.claims;
                let auth = c.auth_time.unwrap_or(c.iat);
                // A lowered KLAV_SESSION_MAX_DAYS ends older logins at once.
                if auth.saturating_add(self.session_max.as_secs()) <= unix_secs(SystemTime::now()) {
                    return Err(TokenError::SessionEnded);
                }
                Ok(Verified {
                    username: c.sub,
                    expires: UNIX_EPOCH + Duration::from_secs(c.exp),
                    auth_time: UNIX_EPOCH + Duration::from_secs(auth),
                    generation: c.gen,
                })
            }
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

    #[test]
    fn refreshes_end_with_the_login() {
        let t = Tokens::new(b"secret", Algorithm::HS256, 60)
            .with_session_max(Duration::from_secs(3600));
        let now = SystemTime::now();
        let fresh = t.verify_claims(&t.issue("a")).unwrap();
        assert!(now.duration_since(fresh.auth_time).unwrap_or_default() < Duration::from_secs(2));
        // Ten minutes of the login left: the new token ends with it.
        let late = now - Duration::from_secs(50 * 60);
        let issued = t.reissue("a", late, 3).unwrap();
        let v = t.verify_claims(&issued.token).unwrap();
        assert_eq!(
            v.auth_time,
            UNIX_EPOCH + Duration::from_secs(unix_secs(late))
        );
        assert_eq!(v.expires, issued.expires);
        assert_eq!(v.generation, 3);
        let left = v.expires.duration_since(now).unwrap();
        assert!(
            left <= Duration::from_secs(600) && left > Duration::from_secs(590),
            "{left:?}"
        );
        assert_eq!(
            t.reissue("a", now - Duration::from_secs(3600), 0).err(),
            Some(TokenError::SessionEnded)
        );
        // A token from before `auth_time` counts from its `iat`.
        let secs = unix_secs(now);
        let old = |iat: u64| {
            let claims = serde_json::json!({"sub": "a", "iat": iat, "exp": secs + 60});
            encode(&t.header, &claims, &t.encoding).unwrap()
        };
        assert_eq!(
            t.verify_claims(&old(secs - 60)).unwrap().auth_time,
            UNIX_EPOCH + Duration::from_secs(secs - 60)
        );
        // A token from before `gen` is of generation 0.
        assert_eq!(t.verify_claims(&old(secs - 60)).unwrap().generation, 0);
        assert_eq!(
            t.verify_claims(&old(secs - 3600)),
            Err(TokenError::SessionEnded)
        );
    }
}
