//! Authentication: JWTs (an HMAC: cheap enough for the event loop) and passwords
//! (argon2id: deliberately slow, so only ever on the hashing threads).

pub mod jwt;
pub mod password;
