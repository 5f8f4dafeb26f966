//! The server API's reads (`/api/v1/`): its key check, users and rooms as an
//! application names them, a room's history without DMs, its members, and
//! the cluster's presence of a list of users.

use postgres::GenericClient;

use super::rooms;
use crate::db::api_keys;
use crate::db::error::DbError;
use crate::db::jobs::{ApiMembers, ApiOutcome, ApiQuery, ApiUser, HistoryQuery};
use crate::db::nodes;
use crate::db::rows::{display_nickname, Stmts};

pub(super) fn run<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    q: ApiQuery,
) -> Result<ApiOutcome, DbError> {
    Ok(match q {
        ApiQuery::Key { hash } => ApiOutcome::Key(api_keys::check(c, st, &hash)?),
        ApiQuery::User { username } => ApiOutcome::User(user(c, st, username)?),
        ApiQuery::Room { room } => ApiOutcome::Room(room_exists(c, st, &room)?),
        ApiQuery::History {
            room,
            limit,
            before_id,
            after_id,
        } => {
            if !room_exists(c, st, &room)? {
                return Ok(ApiOutcome::History(None));
            }
            // No username is empty: a DM is never one of the query's.
            let q = HistoryQuery {
                room,
                username: String::new(),
                limit,
                before: None,
                after: None,
                before_id,
                after_id,
            };
            let items = rooms::history(c, st, &q)?;
            ApiOutcome::History(Some(items.into_iter().filter(|e| e.kind != "dm").collect()))
        }
        ApiQuery::Members { room, cluster } => {
            if !room_exists(c, st, &room)? {
                return Ok(ApiOutcome::Members(None));
            }
            let members = rooms::room_members(c, st, &room)?;
            let online = match cluster {
                true => Some(nodes::online_members(c, st, &room)?),
                false => None,
            };
            ApiOutcome::Members(Some(ApiMembers { members, online }))
        }
        ApiQuery::Presence { users } => ApiOutcome::Presence(presence(c, st, &users)?),
    })
}

fn user<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: String,
) -> Result<Option<ApiUser>, DbError> {
    let s = st.get(
        c,
        "SELECT nickname FROM users WHERE username = $1 AND klav_deleted_at IS NULL",
    )?;
    Ok(c.query_opt(&s, &[&username])?.map(|r| ApiUser {
        nickname: display_nickname(&username, r.get(0)),
        username,
    }))
}

fn room_exists<C: GenericClient>(c: &mut C, st: &mut Stmts, room: &str) -> Result<bool, DbError> {
    let s = st.get(c, "SELECT 1 FROM rooms WHERE id = $1")?;
    Ok(c.query_opt(&s, &[&room])?.is_some())
}

fn presence<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    users: &[String],
) -> Result<Vec<(String, i64)>, DbError> {
    let s = st.get(
        c,
        "SELECT username, sum(conns)::int8 FROM klav_presence \
         WHERE username = ANY($1) GROUP BY username",
    )?;
    Ok(c.query(&s, &[&users])?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
