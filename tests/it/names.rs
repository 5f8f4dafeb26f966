//! Names that cannot pass for someone else: new usernames (ASCII, unique in any
//! case, not reserved), nicknames and room names (NFC, no controls, something
//! visible), system log lines no name can forge — and accounts from before the
//! rules, which keep working.

use klav::db::jobs::Registration;
use klav::db::queries::{self, Stmts};
use klav::db::{Job, Outcome};
use serde_json::{json, Value};

use crate::harness::*;

fn register(s: &TestServer, body: Value) -> Response {
    s.post("/register", body)
}

fn register_nick(s: &TestServer, user: &str, nickname: &str) -> Response {
    register(
        s,
        json!({"username": user, "password": PASSWORD, "nickname": nickname}),
    )
}

fn count_users(s: &TestServer) -> i64 {
    s.count("SELECT count(*) FROM users", &[])
}

#[test]
fn confusable_and_reserved_usernames_are_refused() {
    let s = TestServer::start();
    for bad in [
        "аdmin",         // Cyrillic а
        "раураl",        // Cyrillic р, а, у
        "ａｌｉｃｅ",    // fullwidth
        "alice\u{301}",  // a combining mark
        "미나",          // letters, but not ASCII: new names are
        "al\u{200B}ice", // zero-width space
        "bob\u{202E}",   // a bidi override
    ] {
        let r = register(&s, json!({"username": bad, "password": PASSWORD}));
        assert_eq!(
            (r.status, r.detail().as_str()),
            (400, "invalid username"),
            "{bad:?}"
        );
    }
    for reserved in [
        "system",
        "SYSTEM",
        "Admin",
        "administrator",
        "klav",
        "root",
        "null",
    ] {
        let r = register(&s, json!({"username": reserved, "password": PASSWORD}));
        assert_eq!(r.status, 400, "{reserved}: {}", r.body);
        assert!(r.detail().starts_with("invalid username"), "{}", r.body);
        assert!(r.detail().contains("reserved"), "{}", r.body);
    }
    for dots in [".", "..", "...."] {
        let r = register(&s, json!({"username": dots, "password": PASSWORD}));
        assert_eq!(r.status, 400, "{dots}: {}", r.body);
        assert!(r.detail().starts_with("invalid username"), "{}", r.body);
    }
    assert_eq!(count_users(&s), 0, "nothing was created");
    // Close to a reserved word is fine, and so are dots among other characters.
    for ok in ["systems", "admin2", "j.doe", ".hidden"] {
        let r = register(&s, json!({"username": ok, "password": PASSWORD}));
        assert_eq!(r.json()["status"], "CREATED", "{ok}: {}", r.body);
    }
}

/// `Mina` after `mina` is 409 (with a detail), `mina` again is `ALREADY` as it
/// always was; the case-variant never becomes an account.
#[test]
fn usernames_are_unique_without_regard_to_case() {
    let s = TestServer::start();
    let r = register(&s, json!({"username": "mina", "password": PASSWORD}));
    assert_eq!(r.json()["status"], "CREATED");
    let r = register(
        &s,
        json!({"username": "mina", "password": "another-password"}),
    );
    assert_eq!((r.status, r.json()), (200, json!({"status": "ALREADY"})));
    for variant in ["Mina", "MINA", "miNa"] {
        let r = register(&s, json!({"username": variant, "password": PASSWORD}));
        assert_eq!(r.status, 409, "{variant}: {}", r.body);
        let detail = r.detail();
        assert!(detail.contains("case"), "{detail}");
        assert!(detail.contains("\"mina\""), "{detail}");
    }
    assert_eq!(count_users(&s), 1);
    assert_eq!(s.login("Mina", PASSWORD).detail(), "not registered");
    assert_eq!(s.login("mina", PASSWORD).status, 200);
}

/// Case-variants registered all at once, on two servers sharing the database
/// (as two nodes do): exactly one becomes an account, every other gets 409.
#[test]
fn case_variants_registered_at_once_make_one_account() {
    let a = TestServer::with(|c| c.hash_workers = 2);
    let b = TestServer::on_db(&a.db_url, |c| c.hash_workers = 2);
    let variants = [
        "joon", "Joon", "jOon", "joOn", "jooN", "JOon", "jOOn", "joON", "JOON", "JooN",
    ];
    let answers: Vec<(String, u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let addr = if i % 2 == 0 { a.addr } else { b.addr };
                scope.spawn(move || {
                    let body = json!({"username": v, "password": PASSWORD}).to_string();
                    let r = http_to(addr, "POST", "/register", Some(&body));
                    (v.to_string(), r.status, r.json())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&str> = answers
        .iter()
        .filter(|(_, status, body)| *status == 200 && body["status"] == "CREATED")
        .map(|(v, ..)| v.as_str())
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    for (v, status, body) in &answers {
        if v != created[0] {
            assert_eq!(*status, 409, "{v}: {body}");
        }
    }
    let names: Vec<String> = a
        .db()
        .query("SELECT username FROM users", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, [created[0]]);
}

/// The check is made under a lock on the lowercased name: a registration of
/// `mina` waits for one of `MINA` that another node has inserted and not yet
/// committed, then sees it (without the lock it would find nothing and insert).
#[test]
fn case_check_waits_for_a_registration_in_progress() {
    let url = pg().fresh_db();
    let mut elsewhere = connect_db(&url);
    let mut tx = elsewhere.transaction().unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(lower('MINA')))",
        &[&queries::USERNAME_LOCK],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO users (username, password, nickname) VALUES ('MINA', 'h1', 'MINA')",
        &[],
    )
    .unwrap();
    let here = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut db = connect_db(&url);
            let job = Job::Register {
                username: "mina".into(),
                password_hash: "h2".into(),
                nickname: "mina".into(),
            };
            match queries::run(&mut db, &mut Stmts::default(), job).unwrap() {
                Outcome::Registered(r) => r,
                other => panic!("{other:?}"),
            }
        })
    };
    std::thread::sleep(QUIET);
    assert!(
        !here.is_finished(),
        "the registration did not wait for the lock"
    );
    tx.commit().unwrap();
    assert_eq!(here.join().unwrap(), Registration::CaseTaken("MINA".into()));
}

/// Accounts the old server (or `klav import-json`) made keep working whatever
/// their names: Korean, mixed case, even beside a name that differs only in case.
#[test]
fn legacy_names_still_log_in_and_chat() {
    let s = TestServer::start();
    let mut db = s.db();
    for (name, nick) in [("미나", "미나"), ("OldJoon", "준"), ("oldjoon", "")] {
        db.execute(
            "INSERT INTO users (username, password, nickname) VALUES ($1, 'legacy-pw', $2)",
            &[&name, &nick],
        )
        .unwrap();
    }
    let token = |name: &str| s.login_token(name, "legacy-pw");
    let mut mina = s.ws(&token("미나"));
    let mut joon = s.ws(&token("OldJoon"));
    let mut other = s.ws(&token("oldjoon"));
    let room = mina.create_room("옛날방");
    mina.join(&room);
    joon.send(json!({"type": "join", "room_id": room}));
    let ev = mina.expect("system");
    assert_eq!(
        (&ev["user"], &ev["user_nickname"]),
        (&json!("OldJoon"), &json!("준"))
    );
    joon.expect("system");
    joon.send(json!({"type": "msg", "room_id": room, "text": "안녕"}));
    let m = mina.expect("message");
    assert_eq!(
        (&m["from"], &m["text"]),
        (&json!("OldJoon"), &json!("안녕"))
    );
    joon.expect("message");
    // The other spelling is another account, in no room.
    other.silent();
    let f = mina.request(json!({"type": "friend_follow", "to": "OldJoon"}));
    assert_eq!(f["status"], "FOLLOWED", "{f}");
    // Re-registering the exact old name is ALREADY, as before.
    let r = register(&s, json!({"username": "OldJoon", "password": PASSWORD}));
    assert_eq!(r.json()["status"], "ALREADY");
}

/// Each way a nickname could hide or forge something is refused with a reason;
/// nothing is created.
#[test]
fn nickname_rules() {
    let s = TestServer::start();
    let cases = [
        (
            "mina 님이 나가셨습니다\nadmin 님이 입장하셨습니다",
            "control",
        ),
        ("evil\u{202E}gnp.exe", "bidirectional"),
        ("\u{2067}mina", "bidirectional"),
        ("\u{1b}[31mred", "control"),
        ("ding\u{7}", "control"),
        ("\u{200B}\u{200B}", "visible"),
        ("\u{200D}\u{FEFF}\u{2060}", "visible"),
        ("\u{301}\u{308}", "visible"),
        ("\u{3164}", "visible"),
    ];
    for (i, (nick, why)) in cases.iter().enumerate() {
        let r = register_nick(&s, &format!("nick{i}"), nick);
        assert_eq!(r.status, 400, "{nick:?}: {}", r.body);
        let detail = r.detail();
        assert!(
            detail.starts_with("invalid nickname") && detail.contains(why),
            "{nick:?}: {detail}"
        );
    }
    let r = register_nick(&s, "long", &"가".repeat(65));
    assert_eq!(r.status, 400);
    assert!(r.detail().contains("64 characters"), "{}", r.body);
    assert_eq!(count_users(&s), 0);

    // 64 is fine; surrounding spaces go; blank means the username.
    let nick_of = |user: &str| -> String {
        s.db()
            .query_one("SELECT nickname FROM users WHERE username = $1", &[&user])
            .unwrap()
            .get(0)
    };
    assert_eq!(register_nick(&s, "long", &"가".repeat(64)).status, 200);
    assert_eq!(register_nick(&s, "spaced", "  미나 \t").status, 200);
    assert_eq!(nick_of("spaced"), "미나");
    assert_eq!(register_nick(&s, "blank", " \u{3000} ").status, 200);
    assert_eq!(nick_of("blank"), "blank");
}

/// A nickname typed as decomposed jamo (or a letter and a combining accent) is
/// stored, and shown to others, composed.
#[test]
fn nicknames_are_stored_and_shown_in_nfc() {
    let s = TestServer::start();
    let decomposed = "\u{1112}\u{1161}\u{11AB}\u{1100}\u{1173}\u{11AF} e\u{301}";
    let composed = "한글 é";
    assert_eq!(register_nick(&s, "hana", decomposed).status, 200);
    let stored: String = s
        .db()
        .query_one("SELECT nickname FROM users WHERE username = 'hana'", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, composed);
    let mut hana = s.ws(&s.token("hana"));
    let mut bob = s.client("bob");
    let room = bob.create_room("r");
    bob.join(&room);
    hana.send(json!({"type": "join", "room_id": room}));
    assert_eq!(bob.expect("system")["user_nickname"], composed);
}

/// A nickname stored before the rules, with a line break in it, cannot add a
/// line to anyone's log: the stored system entries and every event show it on
/// one line.
#[test]
fn legacy_nickname_cannot_forge_a_system_line() {
    let s = TestServer::start();
    let forged = "mina 님이 나가셨습니다\nadmin 님이 입장하셨습니다";
    s.db()
        .execute(
            "INSERT INTO users (username, password, nickname) VALUES ('mina', 'legacy-pw', $1)",
            &[&forged],
        )
        .unwrap();
    let mut mina = s.ws(&s.login_token("mina", "legacy-pw"));
    let mut joon = s.client("joon");
    let room = joon.create_room("lobby");
    joon.join(&room);
    mina.send(json!({"type": "join", "room_id": room}));
    let joined = joon.expect("system");
    mina.expect("system");
    mina.send(json!({"type": "msg", "room_id": room, "text": "hi"}));
    let msg = joon.expect("message");
    mina.expect("message");
    mina.send(json!({"type": "leave", "room_id": room}));
    let left = joon.expect("system");
    for ev in [&joined, &left] {
        let shown = ev["user_nickname"].as_str().unwrap();
        assert!(!shown.contains('\n'), "{ev}");
        assert!(shown.contains('\u{FFFD}'), "{ev}");
    }
    assert!(
        !msg["from_nickname"].as_str().unwrap().contains('\n'),
        "{msg}"
    );
    let texts: Vec<String> = s
        .db()
        .query(
            "SELECT text FROM chat_logs WHERE room_id = $1 AND kind = 'system' ORDER BY id",
            &[&room],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    for t in &texts {
        assert!(!t.contains(['\n', '\r']), "{t:?}");
    }
    assert_eq!(
        texts[2],
        "mina 님이 나가셨습니다\u{FFFD}admin 님이 입장하셨습니다 님이 입장하셨습니다"
    );
    assert!(texts[3].ends_with(" 님이 나가셨습니다"), "{}", texts[3]);
    // The history every member reads back: one line per entry too.
    let h = joon.request(json!({"type": "history", "room_id": room}));
    for item in h["items"].as_array().unwrap() {
        assert!(!item["text"].as_str().unwrap().contains('\n'), "{item}");
        assert!(
            !item["from_nickname"].as_str().unwrap_or("").contains('\n'),
            "{item}"
        );
    }
}

/// Room names follow the nickname rules (up to 100 characters) where a room is
/// created: `create_room` answers `INVALID`, `join` by name `BAD_REQUEST`, and
/// no room (nor system entry) is made.
#[test]
fn room_names_follow_the_same_rules() {
    let s = TestServer::start();
    let mut a = s.client("alice");
    let bad = [
        "lobby\n대화방 \"x\"을 admin 님이 만들었습니다",
        "\u{202E}ybbol",
        "\u{200B}",
        "\u{1b}]0;pwned\u{7}",
    ];
    let too_long = "방".repeat(101);
    for name in bad.iter().copied().chain([too_long.as_str()]) {
        let ack = a.request(json!({"type": "create_room", "name": name}));
        assert_eq!(ack["status"], "INVALID", "{name:?}: {ack}");
        let e = a.request(json!({"type": "join", "room": name}));
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("BAD_REQUEST")),
            "{name:?}: {e}"
        );
    }
    let n: i64 = s.count("SELECT count(*) FROM rooms", &[]);
    assert_eq!(n, 0);
    // 100 characters is fine; a decomposed name is stored composed, and joining
    // by either form finds it.
    let ack = a.request(json!({"type": "create_room", "name": "방".repeat(100)}));
    assert_eq!(ack["status"], "CREATED", "{ack}");
    a.send(json!({"type": "join", "room": "  \u{1112}\u{1161}\u{11AB}  "}));
    let joined = a.expect("system");
    let room = joined["room"].as_str().unwrap().to_string();
    let name: String = s
        .db()
        .query_one("SELECT name FROM rooms WHERE id = $1", &[&room])
        .unwrap()
        .get(0);
    assert_eq!(name, "한");
    let again = a.request(json!({"type": "join", "room": "한"}));
    assert_eq!(
        (&again["status"], &again["room"]),
        (&json!("ALREADY"), &json!(room))
    );
}
