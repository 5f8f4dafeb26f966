//! Accounts: registering, logging in, what a password must be and how it is
//! stored (argon2id, legacy plain text upgraded on login), and hashes that must
//! never be verified.

use std::time::{Duration, Instant};

use klav::db::jobs::Registration;
use klav::db::queries::{self, Stmts};
use klav::db::{Job, Outcome};
use serde_json::json;

use crate::harness::*;

#[test]
fn register_then_login() {
    let s = TestServer::start();
    let r = s.post(
        "/register",
        json!({"username": "alice", "password": PASSWORD, "nickname": "Al"}),
    );
    assert_eq!((r.status, r.json()), (200, json!({"status": "CREATED"})));
    // Existing username: ALREADY, password not checked, nothing changed.
    let r = s.post(
        "/register",
        json!({"username": "alice", "password": "other"}),
    );
    assert_eq!((r.status, r.json()), (200, json!({"status": "ALREADY"})));
    assert_eq!(s.login("alice", "other").status, 401);

    let r = s.login("alice", PASSWORD);
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in_minutes"], 60);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);

    // Stored as argon2id, with the nickname given.
    let row = s
        .db()
        .query_one(
            "SELECT password, nickname FROM users WHERE username = 'alice'",
            &[],
        )
        .unwrap();
    let (pw, nick): (String, String) = (row.get(0), row.get(1));
    assert!(pw.starts_with("$argon2id$"), "{pw}");
    assert_eq!(nick, "Al");
}

#[test]
fn nickname_defaults_to_username() {
    let s = TestServer::start();
    s.post(
        "/register",
        json!({"username": "bob", "password": PASSWORD}),
    );
    s.post(
        "/register",
        json!({"username": "carol", "password": PASSWORD, "nickname": "  "}),
    );
    let mut db = s.db();
    for u in ["bob", "carol"] {
        let nick: String = db
            .query_one("SELECT nickname FROM users WHERE username = $1", &[&u])
            .unwrap()
            .get(0);
        assert_eq!(nick, u);
    }
}

#[test]
fn register_validation() {
    let s = TestServer::start();
    for bad in ["", "has space", "semi;colon", &"x".repeat(101), "slash/"] {
        let r = s.post("/register", json!({"username": bad, "password": PASSWORD}));
        assert_eq!(
            (r.status, r.detail().as_str()),
            (400, "invalid username"),
            "{bad:?}"
        );
    }
    let ok = "a".repeat(100);
    assert_eq!(
        s.post("/register", json!({"username": ok, "password": PASSWORD}))
            .json()["status"],
        "CREATED"
    );
    assert_eq!(
        s.post(
            "/register",
            json!({"username": "u.n-d_1", "password": PASSWORD})
        )
        .json()["status"],
        "CREATED"
    );
    let r = s.post("/register", json!({"username": "emptypw", "password": ""}));
    assert_eq!(r.status, 400);
    for body in [
        "[]",
        "not json",
        "{\"username\": 5, \"password\": \"x\"}",
        "{\"username\": \"x\"}",
    ] {
        let r = s.http("POST", "/register", Some(body));
        assert_eq!(r.status, 422, "{body}");
        assert!(!r.detail().is_empty());
    }
    // Nothing was stored by the failures.
    let n: i64 = s.count("SELECT count(*) FROM users", &[]);
    assert_eq!(n, 2);
}

/// New accounts need `KLAV_MIN_PASSWORD_LEN` (8) characters — characters, not
/// bytes; accounts made before the rule keep their passwords, and registering
/// their name again is still `ALREADY`.
#[test]
fn new_passwords_have_a_minimum_length() {
    let s = TestServer::start();
    for short in ["x", "1234567", "가나다라마바사"] {
        let r = s.post(
            "/register",
            json!({"username": "newbie", "password": short}),
        );
        assert_eq!(r.status, 400, "{short:?}: {}", r.body);
        assert!(r.detail().contains("at least 8 characters"), "{}", r.body);
    }
    let n: i64 = s.count("SELECT count(*) FROM users", &[]);
    assert_eq!(n, 0);
    for (user, ok) in [("eight", "12345678"), ("hangul", "가나다라마바사아")] {
        let r = s.post("/register", json!({"username": user, "password": ok}));
        assert_eq!(r.json()["status"], "CREATED", "{ok:?}: {}", r.body);
        assert_eq!(s.login(user, ok).status, 200);
    }
    s.db()
        .execute(
            "INSERT INTO users (username, password, nickname) VALUES ('old', 'pw', 'Old')",
            &[],
        )
        .unwrap();
    assert_eq!(s.login("old", "pw").status, 200);
    let r = s.post("/register", json!({"username": "old", "password": "pw"}));
    assert_eq!((r.status, r.json()), (200, json!({"status": "ALREADY"})));
}

#[test]
fn login_failures() {
    let s = TestServer::start();
    s.register("dave", PASSWORD);
    let r = s.login("nobody", "x");
    assert_eq!((r.status, r.detail().as_str()), (401, "not registered"));
    let r = s.login("dave", "wrong");
    assert_eq!(
        (r.status, r.detail().as_str()),
        (401, "invalid credentials")
    );
    for body in [
        json!({"username": "dave"}),
        json!({"username": "", "password": "x"}),
        json!({}),
    ] {
        let r = s.post("/login", body.clone());
        assert_eq!(
            (r.status, r.detail().as_str()),
            (400, "username/password required"),
            "{body}"
        );
    }
    assert_eq!(s.http("POST", "/login", Some("[1]")).status, 422);
    assert_eq!(
        s.http(
            "POST",
            "/login",
            Some("{\"username\": 1, \"password\": \"x\"}")
        )
        .status,
        422
    );
}

#[test]
fn legacy_plain_text_password_is_upgraded_on_login() {
    let s = TestServer::start();
    s.db()
        .execute(
            "INSERT INTO users (username, password, nickname) VALUES ('old', 'plainpw', 'Old')",
            &[],
        )
        .unwrap();
    assert_eq!(s.login("old", "wrong").status, 401);
    assert_eq!(s.login("old", "plainpw").status, 200);
    // Re-hashed in place, in the background.
    eventually(Duration::from_secs(5), Duration::from_millis(50), || {
        let hashed: String = s
            .db()
            .query_one("SELECT password FROM users WHERE username = 'old'", &[])
            .unwrap()
            .get(0);
        if hashed.starts_with("$argon2id$") {
            Ok(())
        } else {
            Err(hashed)
        }
    });
    assert_eq!(s.login("old", "plainpw").status, 200);
    assert_eq!(s.login("old", "wrong").status, 401);
}

/// The worker retries a job once on a fresh connection when its connection broke
/// mid-query; if the first INSERT had committed, the retry must still say
/// CREATED to the user who was just created — and ALREADY to anyone else.
#[test]
fn register_retried_after_commit_is_still_created() {
    let url = pg().fresh_db();
    let mut db = connect_db(&url);
    let job = |hash: &str| Job::Register {
        username: "mina".into(),
        password_hash: hash.into(),
        nickname: "mina".into(),
    };
    let created = |db: &mut postgres::Client, hash: &str| -> bool {
        match queries::run(db, &mut Stmts::default(), job(hash)).unwrap() {
            Outcome::Registered(r) => r == Registration::Created,
            other => panic!("{other:?}"),
        }
    };
    let mine = klav::auth::password::hash_password("pw");
    assert!(created(&mut db, &mine), "first attempt");
    assert!(created(&mut db, &mine), "the same request, retried");
    let theirs = klav::auth::password::hash_password("pw");
    assert!(!created(&mut db, &theirs), "another request: ALREADY");
}

/// A stored hash asking for 4 TiB, and one asking for 64 MiB × 200 passes: the
/// first aborted the process, the second held the hashing thread for seconds.
/// Both are refused as invalid credentials, without verifying, logged once each.
#[test]
fn crafted_argon2_parameters_are_refused_not_verified() {
    let url = pg().fresh_db();
    let dir = scratch_dir("argon");
    let mut klav = spawn_klav(&dir, &[("DATABASE_URL", &url)]);
    let mut db = connect_db(&url);
    let tail = "c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGg";
    for (user, params) in [
        ("bomb", "m=4294967295,t=1,p=1"),
        ("slow", "m=65536,t=200,p=1"),
    ] {
        db.execute(
            "INSERT INTO users (username, password) VALUES ($1, $2)",
            &[&user, &format!("$argon2id$v=19${params}${tail}")],
        )
        .unwrap();
    }
    let body = |u: &str| json!({"username": u, "password": "guess"}).to_string();
    for _ in 0..3 {
        for user in ["bomb", "slow"] {
            let t0 = Instant::now();
            let r = http_to(klav.addr, "POST", "/login", Some(&body(user)));
            assert_eq!(r.status, 401, "{user}: {}", r.body);
            assert_eq!(r.detail(), "invalid credentials");
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "{user} answered in {:?}",
                t0.elapsed()
            );
        }
    }
    assert!(klav.child.try_wait().unwrap().is_none(), "klav is alive");
    user_at(klav.addr, "fine");
    let log = klav.stderr();
    for user in ["bomb", "slow"] {
        let n = log
            .lines()
            .filter(|l| l.contains(&format!("user \"{user}\" cannot log in")))
            .count();
        assert_eq!(n, 1, "logged once for {user}:\n{log}");
    }
    assert!(klav.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}
