//! Server API keys (`klav_api_keys`): what `klav api-key create|list|revoke`
//! does to the database, and the check a worker makes for a key presented to
//! `/api/v1/`.
//!
//! A key is `klav_` and 32 random bytes in hex, shown once when it is made;
//! only its SHA-256 is stored (a slow hash adds nothing to a key that cannot
//! be guessed). A revoked key keeps its row, so its name stays taken and the
//! list shows when it stopped working.

use std::time::SystemTime;

use postgres::{GenericClient, NoTls};
use sha2::{Digest, Sha256};

use super::error::DbError;
use super::rows::Stmts;

/// What every key starts with (so that a key pasted in the wrong place is
/// recognised, and a secret scanner can find one).
pub const KEY_PREFIX: &str = "klav_";
/// Random bytes in a key.
const KEY_BYTES: usize = 32;
/// Longest key name (the column's width).
pub const MAX_NAME: usize = 100;

/// The stored form of a key; `None` for a string that cannot be one (refused
/// without asking the database).
pub fn key_hash(key: &str) -> Option<[u8; 32]> {
    let hex = key.strip_prefix(KEY_PREFIX)?;
    let well_formed = hex.len() == 2 * KEY_BYTES
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    well_formed.then(|| Sha256::digest(key.as_bytes()).into())
}

/// A fresh key from the OS's cryptographic RNG.
pub fn new_key() -> String {
    let mut raw = [0u8; KEY_BYTES];
    getrandom::fill(&mut raw).expect("the OS random source failed");
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_PREFIX}{hex}")
}

/// Why an operator's key command failed.
#[derive(Debug)]
pub enum KeyError {
    /// The name is empty, too long, or holds control characters.
    BadName,
    /// A key (live or revoked) has this name already.
    NameTaken,
    /// No key has this name.
    NotFound,
    /// The key with this name was revoked already.
    AlreadyRevoked,
    Db(DbError),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::BadName => write!(
                f,
                "a key name is 1 to {MAX_NAME} characters, without control characters"
            ),
            KeyError::NameTaken => {
                write!(f, "a key with this name exists (revoked keys keep theirs)")
            }
            KeyError::NotFound => write!(f, "no key has this name"),
            KeyError::AlreadyRevoked => write!(f, "this key was revoked already"),
            KeyError::Db(e) => write!(f, "{e}"),
        }
    }
}

impl From<DbError> for KeyError {
    fn from(e: DbError) -> KeyError {
        KeyError::Db(e)
    }
}

impl From<postgres::Error> for KeyError {
    fn from(e: postgres::Error) -> KeyError {
        KeyError::Db(e.into())
    }
}

/// One key as `klav api-key list` shows it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub name: String,
    pub created_at: SystemTime,
    pub last_used_at: Option<SystemTime>,
    pub revoked_at: Option<SystemTime>,
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME || name.chars().any(char::is_control) || name.trim() != name {
        return Err(KeyError::BadName);
    }
    Ok(())
}

/// Connects to the database at `url` with the schema applied (the command
/// may run before the server ever has).
fn connect(url: &str) -> Result<postgres::Client, KeyError> {
    let pg = super::pg_config(url, "klav api-key")?;
    super::apply_schema(&pg)?;
    pg.connect(NoTls)
        .map_err(|e| KeyError::Db(DbError::Unavailable(e.to_string())))
}

/// Makes a key named `name` and returns it (the only time it is shown).
pub fn create(url: &str, name: &str) -> Result<String, KeyError> {
    check_name(name)?;
    let mut c = connect(url)?;
    let key = new_key();
    let hash = key_hash(&key).expect("a new key is well formed");
    let n = c.execute(
        "INSERT INTO klav_api_keys (name, key_hash) VALUES ($1, $2) \
         ON CONFLICT (name) DO NOTHING",
        &[&name, &hash.as_slice()],
    )?;
    match n {
        0 => Err(KeyError::NameTaken),
        _ => Ok(key),
    }
}

/// Every key, oldest first.
pub fn list(url: &str) -> Result<Vec<KeyInfo>, KeyError> {
    let mut c = connect(url)?;
    let rows = c.query(
        "SELECT name, created_at, last_used_at, revoked_at FROM klav_api_keys \
         ORDER BY created_at, name",
        &[],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| KeyInfo {
            name: r.get(0),
            created_at: r.get(1),
            last_used_at: r.get(2),
            revoked_at: r.get(3),
        })
        .collect())
}

/// Revokes the key named `name`: every node refuses it within a second (see
/// [`check`]).
pub fn revoke(url: &str, name: &str) -> Result<(), KeyError> {
    let mut c = connect(url)?;
    let row = c.query_opt(
        "UPDATE klav_api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE name = $1 \
         RETURNING revoked_at = now()",
        &[&name],
    )?;
    match row.map(|r| r.get::<_, bool>(0)) {
        None => Err(KeyError::NotFound),
        Some(false) => Err(KeyError::AlreadyRevoked),
        Some(true) => Ok(()),
    }
}

/// `Job::ApiKey`: the name of the live key with this hash, if any; its
/// `last_used_at` moved to now when it is a minute old (one UPDATE that
/// finds nothing to change most of the time).
pub fn check<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    hash: &[u8],
) -> Result<Option<String>, DbError> {
    let s = st.get(
        c,
        "UPDATE klav_api_keys SET last_used_at = now() \
         WHERE key_hash = $1 AND revoked_at IS NULL \
           AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute') \
         RETURNING name",
    )?;
    if let Some(r) = c.query_opt(&s, &[&hash])? {
        return Ok(Some(r.get(0)));
    }
    let s = st.get(
        c,
        "SELECT name FROM klav_api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )?;
    Ok(c.query_opt(&s, &[&hash])?.map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_hex_and_hash_only_when_well_formed() {
        let k = new_key();
        assert!(k.starts_with("klav_") && k.len() == 5 + 64, "{k}");
        assert!(key_hash(&k).is_some());
        assert_ne!(new_key(), k);
        for bad in [
            "",
            "klav_",
            "klav_zz",
            &k[1..],
            &k.to_uppercase(),
            &format!("{k}0"),
        ] {
            assert!(key_hash(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("backend").is_ok());
        for bad in ["", " x", "a\nb", &"n".repeat(MAX_NAME + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
