//! Blocks as the general workers read them: whom a user blocks (the writes
//! are the writer's, `db::writer::blocks`).

use postgres::GenericClient;

use super::follows::users_by;
use crate::db::error::DbError;
use crate::db::jobs::UserRef;
use crate::db::rows::Stmts;

/// `Job::BlockedList`: whom `username` blocks, by username.
pub(super) fn blocked_list<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
) -> Result<Vec<UserRef>, DbError> {
    users_by(
        c,
        st,
        "SELECT u.username, u.nickname FROM klav_blocks b \
         JOIN users u ON u.username = b.blocked \
         WHERE b.blocker = $1 ORDER BY u.username",
        username,
    )
}

/// Whether `blocker` blocks `blocked`.
pub(crate) fn blocks<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    blocker: &str,
    blocked: &str,
) -> Result<bool, DbError> {
    let s = st.get(
        c,
        "SELECT 1 FROM klav_blocks WHERE blocker = $1 AND blocked = $2",
    )?;
    Ok(c.query_opt(&s, &[&blocker, &blocked])?.is_some())
}
