//! Accounts: registration (one name in any case, under an advisory lock),
//! the existence check before hashing, and the stored password and its
//! upgrade from plain text. Separate from sessions, which read an account's
//! state once it is signed in.

use postgres::{GenericClient, Transaction};

use crate::db::error::DbError;
use crate::db::jobs::{Outcome, Registration};
use crate::db::outbox::{self, Outbox};
use crate::db::rows::Stmts;

/// First key of the advisory lock on a lowercased username (the second is
/// its hash): registrations of names equal but for case take turns.
pub const USERNAME_LOCK: i32 = 7_283_912;

/// The account `Job::Register` asks for.
pub(super) struct NewAccount<'a> {
    pub(super) username: &'a str,
    pub(super) password_hash: &'a str,
    pub(super) nickname: &'a str,
}

/// `Job::Register`: [`register`] in its own transaction, with its
/// `user.registered` event when webhooks are on (an account inserted by this
/// very transaction only: a retried job that finds its own row reports nothing
/// again).
pub(super) fn register_account<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    outbox: Option<&Outbox>,
    new: &NewAccount<'_>,
) -> Result<Registration, DbError> {
    let mut tx = c.transaction()?;
    let (result, inserted) = register(&mut tx, st, new.username, new.password_hash, new.nickname)?;
    if let (true, Some(outbox)) = (inserted, outbox) {
        let event = outbox::user_registered(new.username, new.nickname);
        outbox.insert(&mut tx, st, &[event])?;
    }
    tx.commit()?;
    if let Some(outbox) = outbox {
        outbox.committed();
    }
    Ok(result)
}

/// The existing username equal to `username` without regard to case, the
/// same spelling first (rows from before the rule may differ only in case),
/// with its stored password field and whether the account was deleted (its
/// name stays reserved).
pub(super) fn same_name<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
) -> Result<Option<(String, String, bool)>, DbError> {
    let s = st.get(
        c,
        "SELECT username, password, klav_deleted_at IS NOT NULL FROM users \
         WHERE lower(username) = lower($1) \
         ORDER BY username = $1 DESC LIMIT 1",
    )?;
    Ok(c.query_opt(&s, &[&username])?
        .map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// Inserts the account unless its name is taken in any case. Without the lock
/// two registrations of `Mina` and `mina` (on two nodes, say) would both find
/// nothing and both insert; with it the second finds the first. The flag:
/// whether this call inserted the row.
fn register(
    tx: &mut Transaction<'_>,
    st: &mut Stmts,
    username: &str,
    password_hash: &str,
    nickname: &str,
) -> Result<(Registration, bool), DbError> {
    let lock = st.get(tx, "SELECT pg_advisory_xact_lock($1, hashtext(lower($2)))")?;
    tx.execute(&lock, &[&USERNAME_LOCK, &username])?;
    match same_name(tx, st, username)? {
        Some((name, _, true)) => Ok((Registration::Reserved(name), false)),
        // Already there with this very hash: the hash carries a fresh random
        // salt, so only this request can have written it — an earlier attempt
        // of the same job that committed before its connection broke, which
        // the worker then retried.
        Some((name, stored, _)) if name == username => Ok((
            if stored == password_hash {
                Registration::Created
            } else {
                Registration::Already
            },
            false,
        )),
        Some((name, _, _)) => Ok((Registration::CaseTaken(name), false)),
        None => {
            let s = st.get(
                tx,
                "INSERT INTO users (username, password, nickname, extra, created_at) \
                 VALUES ($1, $2, $3, '', now()) ON CONFLICT (username) DO NOTHING",
            )?;
            // A row inserted without the lock (`klav import-json`) is the
            // only way the name can have appeared since.
            Ok(
                match tx.execute(&s, &[&username, &password_hash, &nickname])? {
                    1 => (Registration::Created, true),
                    _ => (Registration::Already, false),
                },
            )
        }
    }
}

/// `Job::Credentials`: the stored password field and token generation, if the
/// user exists (a deleted account does not).
pub(super) fn credentials<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: String,
) -> Result<Outcome, DbError> {
    let s = st.get(
        c,
        "SELECT password, klav_token_gen FROM users \
         WHERE username = $1 AND klav_deleted_at IS NULL",
    )?;
    let row = c.query_opt(&s, &[&username])?;
    let (password, generation) = match row {
        Some(r) => (Some(r.get(0)), r.get(1)),
        None => (None, 0),
    };
    Ok(Outcome::Credentials {
        username,
        password,
        generation,
    })
}

/// `Job::UpgradePassword`: the hash replaces the legacy password, if that is
/// still the one stored.
pub(super) fn upgrade_password<C: GenericClient>(
    c: &mut C,
    st: &mut Stmts,
    username: &str,
    legacy: &str,
    new_hash: &str,
) -> Result<Outcome, DbError> {
    let s = st.get(
        c,
        "UPDATE users SET password = $2 WHERE username = $1 AND password = $3",
    )?;
    c.execute(&s, &[&username, &new_hash, &legacy])?;
    Ok(Outcome::Done)
}
