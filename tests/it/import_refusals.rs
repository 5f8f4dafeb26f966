//! What `klav import-json` refuses, all or nothing: malformed files (named by
//! file and JSON path), password hashes out of bounds, and the command line's
//! exit codes.

use std::path::Path;

use klav::import::{import_dir, ImportError};
use serde_json::{json, Value};

use crate::harness::*;
use crate::support::legacy_json::*;

#[test]
fn malformed_files_leave_the_database_untouched() {
    let url = pg().fresh_db();
    import(&url, &sample_dir());
    let before = snapshot(&url);

    type Corrupt = Box<dyn Fn(&Path)>;
    let chat_edit = |f: fn(&mut Value)| -> Corrupt {
        Box::new(move |dir: &Path| {
            let mut chat = read_sample("chat_state.json");
            f(&mut chat);
            write_json(dir, "chat_state.json", &chat);
        })
    };
    let cases: Vec<(&str, Corrupt, &str, &str)> = vec![
        (
            "ts not a string",
            chat_edit(|c| c["chat_logs"]["r_955219ce"][3]["ts"] = json!(12345)),
            "chat_state.json",
            "chat_logs.r_955219ce[3].ts",
        ),
        (
            "ts not a timestamp",
            chat_edit(|c| c["chat_logs"]["r_b37574bc"][7]["ts"] = json!("yesterday")),
            "chat_state.json",
            "chat_logs.r_b37574bc[7].ts",
        ),
        (
            "unknown kind",
            chat_edit(|c| c["chat_logs"]["r_955219ce"][0]["kind"] = json!("shout")),
            "chat_state.json",
            "chat_logs.r_955219ce[0].kind",
        ),
        (
            "members not a list",
            chat_edit(|c| c["room_members"]["r_955219ce"] = json!("user1")),
            "chat_state.json",
            "room_members.r_955219ce",
        ),
        (
            "room name missing",
            chat_edit(|c| {
                c["room_infos"]["r_322c18a5"]
                    .as_object_mut()
                    .unwrap()
                    .remove("name");
            }),
            "chat_state.json",
            "room_infos.r_322c18a5.name",
        ),
        (
            "truncated JSON",
            Box::new(|dir: &Path| {
                let text = std::fs::read_to_string(sample_dir().join("users.json")).unwrap();
                std::fs::write(dir.join("users.json"), &text[..text.len() / 2]).unwrap();
            }),
            "users.json",
            "",
        ),
        (
            "password not a string",
            Box::new(|dir: &Path| {
                let mut users = read_sample("users.json");
                users["userinfo"]["tab2"]["password"] = json!(1234);
                write_json(dir, "users.json", &users);
            }),
            "users.json",
            "userinfo.tab2.password",
        ),
        (
            "followee not a string",
            Box::new(|dir: &Path| {
                write_json(
                    dir,
                    "friends_state.json",
                    &json!({"following": {"user1": [["user2"]]}}),
                );
            }),
            "friends_state.json",
            "following.user1[0]",
        ),
    ];
    for (what, corrupt, file, path) in cases {
        let dir = sample_copy("malformed");
        // Something new beside the defect, which must not be imported either.
        let mut users = read_sample("users.json");
        users["userinfo"]["newbie"] =
            json!({"username": "newbie", "password": "x", "nickname": "n"});
        write_json(&dir, "users.json", &users);
        corrupt(&dir);
        let mut progress = Vec::new();
        let err = import_dir(&url, &dir, false, &mut progress).expect_err(what);
        match &err {
            ImportError::Json {
                file: f, path: p, ..
            } => {
                assert_eq!((*f, p.as_str()), (file, path), "{what}: {err}");
            }
            other => panic!("{what}: expected a JSON error, got {other}"),
        }
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{file}: {path}")),
            "{what}: {message}"
        );
        assert_eq!(snapshot(&url), before, "{what}: the database changed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    // The message a user sees, in full, for the first case.
    let dir = sample_copy("malformed-msg");
    chat_edit(|c| c["chat_logs"]["r_955219ce"][3]["ts"] = json!(12345))(&dir);
    let err = import_dir(&url, &dir, false, &mut Vec::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "chat_state.json: chat_logs.r_955219ce[3].ts: expected a string, found a number"
    );
    // Paths through keys that are not identifiers are quoted.
    chat_edit(|c| {
        c.as_object_mut().unwrap().remove("room_infos");
        c["chat_logs"] = json!({"새 대화방": [{"ts": "2025-01-01T00:00:00Z", "kind": "msg"}]});
    })(&dir);
    let err = import_dir(&url, &dir, false, &mut Vec::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "chat_state.json: chat_logs[\"새 대화방\"][0].text: expected a string, but it is missing"
    );
    // A missing file names its path.
    std::fs::remove_file(dir.join("friends_state.json")).unwrap();
    let err = import_dir(&url, &dir, false, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ImportError::Io { .. }), "{err}");
    assert!(err.to_string().contains("friends_state.json"), "{err}");
    assert_eq!(snapshot(&url), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `import-json` refuses a file whose argon2 hash is out of bounds, naming the
/// user, and writes nothing.
#[test]
fn import_refuses_out_of_bounds_hashes() {
    let dir = sample_copy("argon");
    let mut users = read_sample("users.json");
    let victim = users["userinfo"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    users["userinfo"][&victim]["password"] =
        json!("$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo");
    write_json(&dir, "users.json", &users);

    let url = pg().fresh_db();
    let err = import_dir(&url, &dir, false, &mut Vec::new())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(&format!("{victim:?}")) && err.contains("out of bounds"),
        "{err}"
    );
    let mut db = connect_db(&url);
    let n: i64 = db
        .query_one("SELECT count(*) FROM users", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "all or nothing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_klav");
    let url = pg().fresh_db();
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .env("DATABASE_URL", &url)
            .env(
                "KLAV_DATA_DIR",
                std::env::temp_dir().join("klav-import-cli-unused"),
            )
            .output()
            .unwrap()
    };
    let sample = sample_dir();
    let sample = sample.to_str().unwrap();

    let out = run(&["import-json"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["import-json", sample, "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["import-json", "/nonexistent/klav-legacy"]);
    assert_eq!(out.status.code(), Some(2));

    let out = run(&["import-json", sample, "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("dry run"), "{stdout}");
    assert_eq!(row_counts(&url), vec![0, 0, 0, 0, 0]);

    let out = run(&["import-json", sample]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("473"));
    assert_eq!(row_counts(&url), vec![10, 26, 14, 20, 473]);

    let dir = sample_copy("cli-bad");
    std::fs::write(dir.join("chat_state.json"), "{\"chat_logs\": [").unwrap();
    let out = run(&["import-json", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("chat_state.json: not valid JSON"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
