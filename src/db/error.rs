//! The one error every database call returns, split by what the loop does with
//! it (answer `UNAVAILABLE` or report a failure). Its own module so that every
//! part of `db` can name it without reaching into `mod.rs`.

use std::fmt;

use postgres::error::SqlState;

/// A database failure, as the loop needs to tell it apart.
#[derive(Debug)]
pub enum DbError {
    /// PostgreSQL cannot be reached (down, restarting, pool exhausted, queue full).
    /// Nothing was stored.
    Unavailable(String),
    /// PostgreSQL answered with an error (a bug or a constraint): nothing stored.
    Query(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Unavailable(why) => write!(f, "database unavailable: {why}"),
            DbError::Query(why) => write!(f, "database error: {why}"),
        }
    }
}

impl std::error::Error for DbError {}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            // A server-side error on a live connection, except the ones a shutdown
            // or restart produces, and a write refused by a read-only server (a
            // standby, or a primary demoted by a failover): they mean "no
            // writable database reachable right now", and the connection is
            // replaced (see `pool::discard`).
            Some(db)
                if !db.code().code().starts_with("57P")
                    && *db.code() != SqlState::READ_ONLY_SQL_TRANSACTION =>
            {
                DbError::Query(db.message().to_string())
            }
            _ => DbError::Unavailable(e.to_string()),
        }
    }
}
