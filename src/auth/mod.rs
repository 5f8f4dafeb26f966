//! Authentication: JWTs (an HMAC: cheap enough for the event loop) and passwords
//! (argon2id: deliberately slow, so only ever on the hashing threads), and the
//! one-time tickets that open a WebSocket without a token in its URL.

pub mod jwt;
pub mod password;
pub mod ws_ticket;
