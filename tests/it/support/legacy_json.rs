//! The JSON generation's files (`users.json`, `friends_state.json`,
//! `chat_state.json`) for the import tests: the sample kept with the tests,
//! scratch copies to change, and the database seen table by table.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use klav::import::{import_dir, Counts, Summary};
use serde_json::Value;

use crate::harness::*;

/// The real files of the JSON generation (a copy of the shared legacy sample, kept
/// with the tests so they run from any checkout).
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-sample")
}

/// One of the sample's files, parsed.
pub fn read_sample(file: &str) -> Value {
    serde_json::from_slice(&std::fs::read(sample_dir().join(file)).unwrap()).unwrap()
}

/// A fresh, empty scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = scratch_dir(&format!("import-{name}-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A scratch directory holding a copy of the sample.
pub fn sample_copy(name: &str) -> PathBuf {
    let dir = scratch(name);
    for f in ["users.json", "friends_state.json", "chat_state.json"] {
        std::fs::copy(sample_dir().join(f), dir.join(f)).unwrap();
    }
    dir
}

/// Writes `v` as `file` in `dir`.
pub fn write_json(dir: &Path, file: &str, v: &Value) {
    std::fs::write(dir.join(file), serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// Writes the three files of an export.
pub fn write_files(dir: &Path, users: Value, friends: Value, chat: Value) {
    write_json(dir, "users.json", &users);
    write_json(dir, "friends_state.json", &friends);
    write_json(dir, "chat_state.json", &chat);
}

/// Imports `dir` into the database at `url`, which must succeed.
pub fn import(url: &str, dir: &Path) -> Summary {
    let mut progress = Vec::new();
    import_dir(url, dir, false, &mut progress)
        .unwrap_or_else(|e| panic!("import of {} failed: {e}", dir.display()))
}

/// A summary's line: how many rows were imported and how many were there already.
pub fn counts(imported: u64, skipped: u64) -> Counts {
    Counts { imported, skipped }
}

/// The tables an import writes, in the order of [`row_counts`].
pub const TABLES: [&str; 5] = ["users", "follows", "rooms", "room_members", "chat_logs"];

/// The number of rows in each of [`TABLES`].
pub fn row_counts(url: &str) -> Vec<i64> {
    let mut c = connect_db(url);
    TABLES
        .iter()
        .map(|t| {
            c.query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .unwrap()
                .get(0)
        })
        .collect()
}

/// Every row of the five tables, hashed: equal snapshots mean nothing changed.
pub fn snapshot(url: &str) -> Vec<String> {
    let mut c = connect_db(url);
    TABLES
        .iter()
        .map(|t| {
            c.query_one(
                &format!(
                    "SELECT count(*)::text || ':' || \
                     coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x"
                ),
                &[],
            )
            .unwrap()
            .get(0)
        })
        .collect()
}

/// The nickname `users.json` gives `user` (the username where it gives none).
pub fn nickname_in_sample(user: &str) -> String {
    let users = read_sample("users.json");
    users["userinfo"][user]["nickname"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or(user)
        .to_string()
}
