//! Follows as the general workers read and write them: whom a user follows,
//! who follows them, follow and unfollow; and turning `(username, nickname)`
//! rows into [`UserRef`]s, which room member lists share.

use postgres::GenericClient;

use crate::db::error::DbError;
use crate::db::jobs::{FollowStatus, UserRef};
use crate::db::rows::{display_nickname, Stmts};

fn user_refs(rows: Vec<postgres::Row>) -> Vec<UserRef> {
    rows.into_iter()
        .map(|r| {
            let username: String = r.get(0);
            let nickname = display_nickname(&username, r.get(1));
            UserRef { username, nickname }
        })
        .collect()
}

/// The users a one-parameter statement selects (`username, nickname`).
pub(super) fn users_by<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    sql: &'static str,
    key: &str,
) -> Result<Vec<UserRef>, DbError> {
    let s = st.get(c, sql)?;
    Ok(user_refs(c.query(&s, &[&key])?))
}

/// `Job::Following`: whom `username` follows, by username.
pub(super) fn following<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
) -> Result<Vec<UserRef>, DbError> {
    users_by(
        c,
        st,
        "SELECT u.username, u.nickname FROM follows f \
         JOIN users u ON u.username = f.followee_username \
         WHERE f.follower_username = $1 ORDER BY u.username",
        username,
    )
}

/// `Job::Followers`: who follows `username`, by username.
pub(super) fn followers<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
) -> Result<Vec<UserRef>, DbError> {
    users_by(
        c,
        st,
        "SELECT u.username, u.nickname FROM follows f \
         JOIN users u ON u.username = f.follower_username \
         WHERE f.followee_username = $1 ORDER BY u.username",
        username,
    )
}

/// `Job::Follow`: `from` follows `to`, if `to` is registered and does not
/// block `from` (read in the follow's transaction: a block committed first
/// refuses it; see `db::writer::blocks` for one committed at the same time).
pub(super) fn follow<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    from: &str,
    to: &str,
) -> Result<FollowStatus, DbError> {
    let exists = st.get(
        c,
        "SELECT EXISTS (SELECT 1 FROM klav_blocks WHERE blocker = $1 AND blocked = $2) \
         FROM users WHERE username = $1",
    )?;
    let blocked: bool = match c.query_opt(&exists, &[&to, &from])? {
        None => return Ok(FollowStatus::NotRegistered),
        Some(r) => r.get(0),
    };
    if blocked {
        return Ok(FollowStatus::Blocked);
    }
    let ins = st.get(
        c,
        "INSERT INTO follows (follower_username, followee_username, created_at) \
         VALUES ($1, $2, now()) \
         ON CONFLICT (follower_username, followee_username) DO NOTHING",
    )?;
    Ok(if c.execute(&ins, &[&from, &to])? == 1 {
        FollowStatus::Followed
    } else {
        FollowStatus::Already
    })
}

/// `Job::Unfollow`: whether `from` followed `to` until now.
pub(super) fn unfollow<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    from: &str,
    to: &str,
) -> Result<bool, DbError> {
    let s = st.get(
        c,
        "DELETE FROM follows WHERE follower_username = $1 AND followee_username = $2",
    )?;
    Ok(c.execute(&s, &[&from, &to])? > 0)
}
