//! Phase 3: the writes, batched over arrays, in the import's one transaction.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use postgres::Transaction;

use crate::auth::password::{hash_password, is_hashed};
use crate::db::DbError;

use super::plan::*;
use super::report::{say, Counts, ImportError, Layout, Summary, PROGRESS_EVERY};
use super::source::*;

/// Rows per INSERT: large enough that tens of thousands of entries take a handful
/// of round trips, small enough to keep each statement's arrays modest.
const BATCH: usize = 5_000;

pub(super) fn write(
    tx: &mut Transaction<'_>,
    source: &Source,
    plan: Plan,
    progress: &mut dyn Write,
) -> Result<Summary, ImportError> {
    let inserted_users = write_users(tx, source, &plan, progress)?;
    let missing_users = write_missing_users(tx, &plan)?;
    let inserted_rooms = write_rooms(tx, source, &plan)?;
    let inserted_members = write_memberships(tx, &plan)?;
    let inserted_follows = write_follows(tx, &plan)?;
    let inserted_entries = insert_entries(tx, source, &plan, progress)?;
    write_last_messages(tx, &plan)?;
    let mut summary = Summary {
        dry_run: false,
        layout: source.layout,
        users: Counts::of(source.users.len(), inserted_users),
        follows: Counts::of(source.follows.len(), inserted_follows),
        rooms: Counts::of(source.rooms.len(), inserted_rooms),
        memberships: Counts::of(plan.memberships_total, inserted_members),
        entries: Counts::of(plan.entries_total, inserted_entries),
        missing_users,
        notes: source.notes.clone(),
    };
    plan.note_pruned(&mut summary);
    Ok(summary)
}

/// The files' users that are new. Plain-text passwords are hashed here, so that
/// imported users log in with their old passwords and no plain text is ever
/// stored. Returns how many were inserted.
fn write_users(
    tx: &mut Transaction<'_>,
    source: &Source,
    plan: &Plan,
    progress: &mut dyn Write,
) -> Result<usize, ImportError> {
    let plain: Vec<&str> = plan
        .new_users
        .iter()
        .map(|&i| source.users[i].password.as_str())
        .filter(|p| !is_hashed(p))
        .collect();
    let mut hashed = hash_all(&plain, progress).into_iter();
    let mut names = Vec::new();
    let mut passwords = Vec::new();
    let mut nicknames = Vec::new();
    let mut extras = Vec::new();
    for &i in &plan.new_users {
        let u = &source.users[i];
        names.push(u.username.clone());
        passwords.push(if is_hashed(&u.password) {
            u.password.clone()
        } else {
            hashed.next().expect("one hash per plain-text password")
        });
        nicknames.push(u.nickname.clone());
        extras.push(u.extra.clone());
    }
    Ok(insert_users(tx, &names, &passwords, &nicknames, &extras)?.len())
}

/// Users that something references and nobody has: created with an unusable
/// password. Returns the names created.
fn write_missing_users(tx: &mut Transaction<'_>, plan: &Plan) -> Result<Vec<String>, ImportError> {
    let names: Vec<String> = plan.missing.iter().map(|m| m.username.clone()).collect();
    let passwords: Vec<String> = plan.missing.iter().map(|_| unusable_password()).collect();
    let nicknames: Vec<String> = plan.missing.iter().map(|m| m.nickname.clone()).collect();
    let extras = vec![String::new(); names.len()];
    let created = insert_users(tx, &names, &passwords, &nicknames, &extras)?;
    let created: HashSet<String> = created.into_iter().collect();
    Ok(names.into_iter().filter(|n| created.contains(n)).collect())
}

/// The new rooms; returns how many were inserted.
fn write_rooms(
    tx: &mut Transaction<'_>,
    source: &Source,
    plan: &Plan,
) -> Result<usize, ImportError> {
    let ids: Vec<&str> = plan
        .new_rooms
        .iter()
        .map(|&i| plan.room_ids[i].as_str())
        .collect();
    let room_names: Vec<&str> = plan
        .new_rooms
        .iter()
        .map(|&i| source.rooms[i].name.as_str())
        .collect();
    // A room without a recorded creation time is as old as its first entry.
    let created_at: Vec<Option<SystemTime>> = plan
        .new_rooms
        .iter()
        .map(|&i| {
            let r = &source.rooms[i];
            r.created_at
                .or_else(|| r.entries.iter().map(|e| e.ts).min())
        })
        .collect();
    let inserted_rooms = tx
        .query(
            "INSERT INTO rooms (id, name, created_at) \
             SELECT i, n, COALESCE(c, now()) \
             FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(i, n, c) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
            &[&ids, &room_names, &created_at],
        )?
        .len();
    if source.layout == Layout::ByName && inserted_rooms != ids.len() {
        // A minted id was taken between the check and the insert (the server
        // created a room meanwhile): rare enough that running again is the answer.
        return Err(ImportError::Db(DbError::Query(
            "a newly minted room id was taken concurrently; run the import again".into(),
        )));
    }
    Ok(inserted_rooms)
}

/// The new memberships; returns how many were inserted.
fn write_memberships(tx: &mut Transaction<'_>, plan: &Plan) -> Result<usize, ImportError> {
    let (rooms_col, users_col): (Vec<&str>, Vec<&str>) = plan
        .new_memberships
        .iter()
        .map(|(r, u)| (r.as_str(), u.as_str()))
        .unzip();
    Ok(tx.execute(
        "INSERT INTO room_members (room_id, username, joined_at) \
         SELECT r, u, now() FROM unnest($1::text[], $2::text[]) AS t(r, u) \
         ON CONFLICT (room_id, username) DO NOTHING",
        &[&rooms_col, &users_col],
    )? as usize)
}

/// The new follows; returns how many were inserted.
fn write_follows(tx: &mut Transaction<'_>, plan: &Plan) -> Result<usize, ImportError> {
    let (followers, followees): (Vec<&str>, Vec<&str>) = plan
        .new_follows
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .unzip();
    Ok(tx.execute(
        "INSERT INTO follows (follower_username, followee_username, created_at) \
         SELECT a, b, now() FROM unnest($1::text[], $2::text[]) AS t(a, b) \
         ON CONFLICT (follower_username, followee_username) DO NOTHING",
        &[&followers, &followees],
    )? as usize)
}

/// Rooms' last messages: only where the import brings something newer than
/// what the room shows, so a re-import, or a room the server has written to
/// since, keeps its last message.
fn write_last_messages(tx: &mut Transaction<'_>, plan: &Plan) -> Result<(), ImportError> {
    let mut l_ids = Vec::new();
    let mut l_texts = Vec::new();
    let mut l_froms = Vec::new();
    let mut l_kinds = Vec::new();
    let mut l_ts = Vec::new();
    for (id, l) in &plan.lasts {
        l_ids.push(id.as_str());
        l_texts.push(l.text.as_str());
        l_froms.push(l.from.as_str());
        l_kinds.push(l.kind.as_str());
        l_ts.push(l.ts);
    }
    tx.execute(
        "UPDATE rooms SET last_message_text = u.t, last_message_from = u.f, \
                last_message_kind = u.k, last_message_ts = u.ts \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
              AS u(id, t, f, k, ts) \
         WHERE rooms.id = u.id \
           AND (rooms.last_message_ts IS NULL OR rooms.last_message_ts < u.ts)",
        &[&l_ids, &l_texts, &l_froms, &l_kinds, &l_ts],
    )?;
    Ok(())
}

/// Inserts users that do not exist yet; returns the usernames inserted.
pub(super) fn insert_users(
    tx: &mut Transaction<'_>,
    names: &[String],
    passwords: &[String],
    nicknames: &[String],
    extras: &[String],
) -> Result<Vec<String>, ImportError> {
    let mut inserted = Vec::new();
    for start in (0..names.len()).step_by(BATCH) {
        let end = (start + BATCH).min(names.len());
        let rows = tx.query(
            "INSERT INTO users (username, password, nickname, extra, created_at) \
             SELECT u, p, n, e, now() \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(u, p, n, e) \
             ON CONFLICT (username) DO NOTHING RETURNING username",
            &[
                &&names[start..end],
                &&passwords[start..end],
                &&nicknames[start..end],
                &&extras[start..end],
            ],
        )?;
        inserted.extend(rows.into_iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(inserted)
}

/// The password of a user created for a dangling reference: nobody knows it, so
/// nobody can log in as that user (an administrator can set one later).
///
/// It is deliberately not an argon2 string: the server treats any other stored
/// value as a legacy plain-text password and compares the typed password with it,
/// in constant time. 256 random bits behind a `!disabled:` prefix cannot be
/// guessed, and the prefix tells a reader of the table what it is.
pub(super) fn unusable_password() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS random source failed");
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("!disabled:{hex}")
}

/// Hashes on all cores (argon2id takes tens of milliseconds each by design);
/// results in input order.
pub(super) fn hash_all(passwords: &[&str], progress: &mut dyn Write) -> Vec<String> {
    if passwords.is_empty() {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(passwords.len());
    say(
        progress,
        format_args!("hashing {} passwords on {threads} threads", passwords.len()),
    );
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let mut out = vec![String::new(); passwords.len()];
    std::thread::scope(|s| {
        let (next, done) = (&next, &done);
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(pw) = passwords.get(i) else { break };
                        mine.push((i, hash_password(pw)));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    mine
                })
            })
            .collect();
        let mut reported = Instant::now();
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if reported.elapsed() >= PROGRESS_EVERY {
                reported = Instant::now();
                let n = done.load(Ordering::Relaxed);
                say(progress, format_args!("  hashed {n}/{}", passwords.len()));
            }
        }
        for w in workers {
            for (i, h) in w.join().expect("a hashing thread panicked") {
                out[i] = h;
            }
        }
    });
    out
}

/// Multi-row INSERTs of the new entries, oldest first; returns how many were written.
pub(super) fn insert_entries(
    tx: &mut Transaction<'_>,
    source: &Source,
    plan: &Plan,
    progress: &mut dyn Write,
) -> Result<usize, ImportError> {
    let total = plan.new_entries.len();
    if total == 0 {
        return Ok(0);
    }
    say(progress, format_args!("writing {total} chat entries"));
    // from_nickname: the entry's own, else the sender's nickname, else the username.
    let nick_of: HashMap<&str, &str> = source
        .users
        .iter()
        .filter(|u| !u.nickname.is_empty())
        .map(|u| (u.username.as_str(), u.nickname.as_str()))
        .collect();
    let mut written = 0;
    let mut reported = Instant::now();
    for chunk in plan.new_entries.chunks(BATCH) {
        let mut rooms = Vec::with_capacity(chunk.len());
        let mut ts = Vec::with_capacity(chunk.len());
        let mut kinds = Vec::with_capacity(chunk.len());
        let mut froms = Vec::with_capacity(chunk.len());
        let mut nicks = Vec::with_capacity(chunk.len());
        let mut tos = Vec::with_capacity(chunk.len());
        let mut texts = Vec::with_capacity(chunk.len());
        for &(r, i) in chunk {
            let e = &source.rooms[r].entries[i];
            rooms.push(plan.room_ids[r].as_str());
            ts.push(e.ts);
            kinds.push(e.kind.as_str());
            froms.push(e.from.as_str());
            nicks.push(match (&e.from_nickname, e.kind) {
                (_, Kind::System) => "system",
                (Some(n), _) => n.as_str(),
                (None, _) => nick_of
                    .get(e.from.as_str())
                    .copied()
                    .unwrap_or(e.from.as_str()),
            });
            tos.push(e.to.as_deref());
            texts.push(e.text.as_str());
        }
        written += tx.execute(
            "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, to_user, text) \
             SELECT r, ts, k, f, n, t, x \
             FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::text[]) WITH ORDINALITY AS u(r, ts, k, f, n, t, x, o) \
             ORDER BY o",
            &[&rooms, &ts, &kinds, &froms, &nicks, &tos, &texts],
        )? as usize;
        if reported.elapsed() >= PROGRESS_EVERY && written < total {
            reported = Instant::now();
            say(progress, format_args!("  written {written}/{total}"));
        }
    }
    Ok(written)
}
