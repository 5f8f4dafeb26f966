//! Tokens made by the test rather than by `/login`: short-lived, not yet valid,
//! signed with another key or algorithm, or carrying a login time of our choosing.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

use crate::harness::SECRET;

/// Seconds since the epoch, as tokens count time.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Any claims, signed with any secret and algorithm.
pub fn sign(claims: &Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Claims signed as the server signs (its secret, HS256).
pub fn mint_claims(claims: Value) -> String {
    sign(&claims, SECRET, Algorithm::HS256)
}

/// A token the server would accept for `user`, valid from now for `lifetime_secs`.
pub fn mint(user: &str, lifetime_secs: u64) -> String {
    let now = unix_now();
    mint_claims(json!({"sub": user, "iat": now, "exp": now + lifetime_secs}))
}

/// The claims of a token the server signed.
pub fn claims_of(token: &str) -> Value {
    jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .unwrap()
    .claims
}
