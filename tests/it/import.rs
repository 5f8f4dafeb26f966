//! `klav import-json`: the legacy JSON files into the schema, checked through the
//! protocol the imported users will use; imports again adding only what is
//! new; dry runs; tens of thousands of entries.

use std::time::{Duration, Instant};

use klav::import::{import_dir, Layout};
use serde_json::{json, Value};

use crate::harness::*;
use crate::support::legacy_json::*;

#[test]
fn sample_imports_and_serves_over_the_protocol() {
    let url = pg().fresh_db();
    let summary = import(&url, &sample_dir());
    assert!(!summary.dry_run);
    assert_eq!(summary.layout, Layout::ById);
    assert_eq!(summary.users, counts(10, 0));
    assert_eq!(summary.follows, counts(26, 0));
    assert_eq!(summary.rooms, counts(14, 0));
    assert_eq!(summary.memberships, counts(20, 0));
    assert_eq!(summary.entries, counts(473, 0));
    assert!(
        summary.missing_users.is_empty(),
        "{:?}",
        summary.missing_users
    );
    assert_eq!(row_counts(&url), vec![10, 26, 14, 20, 473]);
    let printed = summary.to_string();
    assert!(
        printed.contains("chat entries") && printed.contains("473"),
        "{printed}"
    );

    // No plain text is stored.
    let mut c = connect_db(&url);
    for r in c.query("SELECT password FROM users", &[]).unwrap() {
        let pw: String = r.get(0);
        assert!(pw.starts_with("$argon2id$"), "{pw}");
    }

    let s = TestServer::on_db(&url, |_| {});
    assert_eq!(s.login("user1", "wrong").status, 401);
    let token = s.login_token("user1", "1234");
    let mut ws = s.ws(&token);

    // my_rooms: user1's six rooms, most recent last message first.
    let rooms = ws.request(json!({"type": "my_rooms"}));
    assert_eq!(
        rooms["rooms"],
        json!([
            "r_15efde17",
            "r_e90f3a81",
            "r_fae01f29",
            "r_6d8badaf",
            "r_322c18a5",
            "r_955219ce"
        ]),
        "{rooms}"
    );
    let info = rooms["rooms_info"].as_array().unwrap();
    let by_id = |id: &str| info.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(
        by_id("r_955219ce"),
        json!({"id": "r_955219ce", "name": "대화방1", "last": {
            "text": "안뇽하세요 저도", "from": "user2", "kind": "msg",
            "ts": "2025-10-21T09:27:17.705068+00:00"}, "read_id": 0, "unread": 1})
    );
    // A room with only system entries shows the newest one.
    assert_eq!(
        by_id("r_fae01f29")["last"],
        json!({"text": "사용자1 님이 입장하셨습니다", "from": "system", "kind": "system",
               "ts": "2025-10-23T02:17:47.383349+00:00"})
    );
    // Every room's last is what room_infos recorded.
    let chat = read_sample("chat_state.json");
    for r in info {
        let id = r["id"].as_str().unwrap();
        assert_eq!(r["name"], chat["room_infos"][id]["name"]);
        assert_eq!(r["last"], chat["room_infos"][id]["last"], "{id}");
    }

    // history: oldest first, original timestamps, nicknames filled in from users.json
    // where the entry has none, `system` for system entries.
    let h = ws.request(json!({"type": "history", "room_id": "r_955219ce"}));
    let items = h["items"].as_array().unwrap();
    let got: Vec<(String, String, String, String, String)> = items
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap().to_string();
            (s("ts"), s("kind"), s("from"), s("from_nickname"), s("text"))
        })
        .collect();
    let want: Vec<(String, String, String, String, String)> = [
        (
            "2025-10-21T09:26:24.400576+00:00",
            "system",
            "system",
            "system",
            "대화방 \"대화방1\"을 사용자1 님이 만들었습니다",
        ),
        (
            "2025-10-21T09:26:24.622369+00:00",
            "system",
            "system",
            "system",
            "사용자1 님이 입장하셨습니다",
        ),
        (
            "2025-10-21T09:26:28.622197+00:00",
            "msg",
            "user1",
            "사용자1",
            "안뇽하세요",
        ),
        (
            "2025-10-21T09:27:10.920761+00:00",
            "system",
            "system",
            "system",
            "사용자2 님이 입장하셨습니다",
        ),
        (
            "2025-10-21T09:27:17.705068+00:00",
            "msg",
            "user2",
            "사용자2",
            "안뇽하세요 저도",
        ),
    ]
    .iter()
    .map(|(a, b, c, d, e)| {
        (
            a.to_string(),
            b.to_string(),
            c.to_string(),
            d.to_string(),
            e.to_string(),
        )
    })
    .collect();
    assert_eq!(got, want);
    assert!(items
        .iter()
        .all(|i| i["room"] == "r_955219ce" && i["id"].is_i64()));

    // Follows, both ways, with nicknames.
    let f = ws.request(json!({"type": "following_list"}));
    assert_eq!(
        f["following"],
        json!([{"username": "user2", "nickname": "사용자2"}])
    );
    let f = ws.request(json!({"type": "followers_list"}));
    assert_eq!(
        f["followers"],
        json!([{"username": "user2", "nickname": "사용자2"}])
    );

    // A busier room, whole: every entry as the file has it, in order.
    let token = s.login_token("tab44", "1234");
    let mut ws = s.ws(&token);
    let h = ws.request(json!({"type": "history", "room_id": "r_b37574bc", "limit": 200}));
    let items = h["items"].as_array().unwrap();
    let file = chat["chat_logs"]["r_b37574bc"].as_array().unwrap();
    assert_eq!(items.len(), file.len());
    for (item, e) in items.iter().zip(file) {
        let from = e["from"].as_str().unwrap();
        let nick = match (e["kind"].as_str().unwrap(), e["from_nickname"].as_str()) {
            ("system", _) => "system".to_string(),
            (_, Some(n)) if !n.is_empty() => n.to_string(),
            _ => nickname_in_sample(from),
        };
        assert_eq!(
            klav::time::parse_iso(item["ts"].as_str().unwrap()),
            klav::time::parse_iso(e["ts"].as_str().unwrap())
        );
        assert_eq!(item["kind"], e["kind"]);
        assert_eq!(item["from"], e["from"]);
        assert_eq!(item["text"], e["text"]);
        assert_eq!(item["from_nickname"], nick.as_str(), "{item}");
    }
    let ids: Vec<i64> = items.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids follow time");
    let f = ws.request(json!({"type": "following_list"}));
    let names: Vec<&str> = f["following"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tab11", "tab22", "tab33"]);
    assert_eq!(f["following"][2]["nickname"], "[3]김은영");
    let f = ws.request(json!({"type": "followers_list"}));
    assert_eq!(f["followers"].as_array().unwrap().len(), 3);
}

#[test]
fn second_import_changes_nothing() {
    let url = pg().fresh_db();
    import(&url, &sample_dir());
    // A password upgraded since (or changed) must survive a re-import.
    connect_db(&url)
        .execute(
            "UPDATE users SET password = $1 WHERE username = 'user1'",
            &[&klav::auth::password::hash_password("new secret")],
        )
        .unwrap();
    let before = snapshot(&url);
    let again = import(&url, &sample_dir());
    assert_eq!(snapshot(&url), before);
    assert!(again.is_noop(), "{again}");
    assert_eq!(again.users, counts(0, 10));
    assert_eq!(again.follows, counts(0, 26));
    assert_eq!(again.rooms, counts(0, 14));
    assert_eq!(again.memberships, counts(0, 20));
    assert_eq!(again.entries, counts(0, 473));
    assert!(again.missing_users.is_empty());

    let s = TestServer::on_db(&url, |_| {});
    assert_eq!(s.login("user1", "1234").status, 401);
    s.login_token("user1", "new secret");
    s.login_token("user2", "1234");
}

#[test]
fn reimport_adds_only_what_is_new() {
    let url = pg().fresh_db();
    let dir = sample_copy("additions");
    import(&url, &dir);

    // The old server kept running after the first export: one more user, follow,
    // member, message and DM.
    let mut users = read_sample("users.json");
    users["users"].as_array_mut().unwrap().push(json!("user3"));
    users["userinfo"]["user3"] =
        json!({"username": "user3", "password": "pw3", "extra": "x", "nickname": "사용자3"});
    let mut friends = read_sample("friends_state.json");
    friends["following"]["user3"] = json!(["user1"]);
    let mut chat = read_sample("chat_state.json");
    chat["room_members"]["r_955219ce"]
        .as_array_mut()
        .unwrap()
        .push(json!("user3"));
    let log = chat["chat_logs"]["r_955219ce"].as_array_mut().unwrap();
    log.push(
        json!({"ts": "2025-11-02T10:00:00.000001+00:00", "kind": "msg", "room": "r_955219ce",
                    "from": "user3", "from_nickname": "사용자3", "text": "새 메시지"}),
    );
    log.push(
        json!({"ts": "2025-11-02T10:00:05.000000+00:00", "kind": "dm", "room": "r_955219ce",
                    "from": "user3", "to": "user1", "text": "비밀"}),
    );
    write_files(&dir, users, friends, chat);

    let before = row_counts(&url);
    let summary = import(&url, &dir);
    assert_eq!(summary.users, counts(1, 10));
    assert_eq!(summary.follows, counts(1, 26));
    assert_eq!(summary.rooms, counts(0, 14));
    assert_eq!(summary.memberships, counts(1, 20));
    assert_eq!(summary.entries, counts(2, 473));
    let after = row_counts(&url);
    let added: Vec<i64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(added, vec![1, 1, 0, 1, 2]);

    let s = TestServer::on_db(&url, |_| {});
    let token = s.login_token("user1", "1234");
    let mut ws = s.ws(&token);
    let rooms = ws.request(json!({"type": "my_rooms"}));
    // The new message is the room's last; the newer DM does not count.
    assert_eq!(rooms["rooms"][0], "r_955219ce");
    assert_eq!(
        rooms["rooms_info"][0]["last"],
        json!({"text": "새 메시지", "from": "user3", "kind": "msg",
               "ts": "2025-11-02T10:00:00.000001+00:00"})
    );
    let h = ws.request(json!({"type": "history", "room_id": "r_955219ce"}));
    let items = h["items"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    assert_eq!(items[5]["text"], "새 메시지");
    assert_eq!(items[6]["kind"], "dm");
    assert_eq!(items[6]["to"], "user1");
    assert_eq!(items[6]["from_nickname"], "사용자3");
    let f = ws.request(json!({"type": "followers_list"}));
    assert_eq!(
        f["followers"],
        json!([{"username": "user2", "nickname": "사용자2"}, {"username": "user3", "nickname": "사용자3"}])
    );
    s.login_token("user3", "pw3");

    // And once more: nothing new.
    drop(ws);
    s.stop();
    let before = snapshot(&url);
    assert!(import(&url, &dir).is_noop());
    assert_eq!(snapshot(&url), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn name_keyed_layout_mints_ids_and_maps_names_on_reimport() {
    let url = pg().fresh_db();
    // A room of that name that already exists (from the old PostgreSQL server):
    // the file's "old room" is that room, as a join by name would find it.
    connect_db(&url)
        .batch_execute(
            "INSERT INTO rooms (id, name, created_at) \
             VALUES ('r_00000001', 'old room', '2020-01-01T00:00:00Z')",
        )
        .unwrap();
    let dir = scratch("by-name");
    let users = json!({"users": ["alice", "bob", "carol"], "userinfo": {
        "alice": {"username": "alice", "password": "a-pw", "extra": "", "nickname": "앨리스"},
        "bob": {"username": "bob", "password": "b-pw", "extra": "", "nickname": ""},
        "carol": {"username": "carol", "password": "c-pw", "extra": "", "nickname": "Carol"}}});
    let chat = json!({
        "room_members": {"lobby": ["alice", "bob"], "조용한 방": ["alice"], "old room": ["bob"]},
        "chat_logs": {
            "lobby": [
                {"ts": "2024-05-01T08:00:00.000000+00:00", "kind": "system", "room": "lobby", "from": "system",
                 "text": "대화방 \"lobby\"을 앨리스 님이 만들었습니다"},
                {"ts": "2024-05-01T08:00:01.000000+00:00", "kind": "msg", "room": "lobby", "from": "alice",
                 "text": "hello"},
                {"ts": "2024-05-01T08:00:02.500000+00:00", "kind": "msg", "room": "lobby", "from": "bob",
                 "text": "hi alice"},
                {"ts": "2024-05-01T08:00:03.000000+00:00", "kind": "dm", "room": "lobby", "from": "bob",
                 "to": "alice", "text": "psst"},
                {"ts": "2024-05-01T08:05:00.000000+00:00", "kind": "system", "room": "lobby", "from": "system",
                 "text": "bob 님이 나가셨습니다"}
            ],
            "조용한 방": [
                {"ts": "2024-05-02T09:00:00Z", "kind": "system", "room": "조용한 방", "from": "system",
                 "text": "앨리스 님이 입장하셨습니다"}
            ],
            "old room": [
                {"ts": "2021-03-03T03:03:03.000000+00:00", "kind": "msg", "room": "old room", "from": "bob",
                 "text": "still here"}
            ]
        }
    });
    write_files(&dir, users, json!({"following": {"alice": ["bob"]}}), chat);

    let summary = import(&url, &dir);
    assert_eq!(summary.layout, Layout::ByName);
    assert_eq!(summary.rooms, counts(2, 1));
    assert_eq!(summary.entries, counts(7, 0));
    assert_eq!(summary.memberships, counts(4, 0));
    let mut c = connect_db(&url);
    let ids: Vec<(String, String)> = c
        .query("SELECT name, id FROM rooms ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for (name, id) in &ids {
        if name == "old room" {
            assert_eq!(id, "r_00000001");
        } else {
            assert_eq!(id.len(), 10, "{id}");
            assert!(id.starts_with("r_"), "{id}");
            assert!(
                id[2..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
    }
    let lobby = ids.iter().find(|(n, _)| n == "lobby").unwrap().1.clone();
    let quiet = ids
        .iter()
        .find(|(n, _)| n == "조용한 방")
        .unwrap()
        .1
        .clone();

    let s = TestServer::on_db(&url, |_| {});
    let token = s.login_token("alice", "a-pw");
    let mut ws = s.ws(&token);
    let rooms = ws.request(json!({"type": "my_rooms"}));
    // The old server's rule for this layout: the newest msg, else the newest system entry.
    assert_eq!(
        rooms["rooms_info"],
        json!([
            {"id": quiet, "name": "조용한 방", "last": {"text": "앨리스 님이 입장하셨습니다",
             "from": "system", "kind": "system", "ts": "2024-05-02T09:00:00.000000+00:00"},
             "read_id": 0, "unread": 0},
            {"id": lobby, "name": "lobby", "last": {"text": "hi alice", "from": "bob", "kind": "msg",
             "ts": "2024-05-01T08:00:02.500000+00:00"}, "read_id": 0, "unread": 1}
        ])
    );
    let h = ws.request(json!({"type": "history", "room_id": lobby}));
    let nicks: Vec<&str> = item_strs(&h, "from_nickname");
    // bob's nickname is empty in users.json: the username stands in.
    assert_eq!(nicks, ["system", "앨리스", "bob", "bob", "system"]);
    // A join by name lands in the imported room.
    let token = s.login_token("carol", "c-pw");
    let mut carol = s.ws(&token);
    carol.send(json!({"type": "join", "room": "lobby"}));
    let ev = carol.expect("system");
    assert_eq!(ev["room"], lobby.as_str());
    drop((ws, carol));
    s.stop();

    // Re-import: the same names map to the same rooms; nothing is added.
    let before = snapshot(&url);
    let again = import(&url, &dir);
    assert!(again.is_noop(), "{again}");
    assert_eq!(again.rooms, counts(0, 3));
    assert_eq!(again.entries, counts(0, 7));
    assert_eq!(snapshot(&url), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_user_references_are_created_reported_and_cannot_log_in() {
    let url = pg().fresh_db();
    let dir = scratch("missing");
    let users = json!({"users": ["alice", "ghost0"], "userinfo": {
        "alice": {"username": "alice", "password": "pw", "extra": "", "nickname": "Alice"}}});
    let friends = json!({"following": {"alice": ["ghost1"]}});
    let chat = json!({
        "room_members": {"r_aaaaaaaa": ["alice", "ghost2"]},
        "chat_logs": {"r_aaaaaaaa": [
            {"ts": "2025-01-01T00:00:00+00:00", "kind": "msg", "room": "r_aaaaaaaa", "from": "ghost3",
             "from_nickname": "Ghost Three", "text": "boo"},
            {"ts": "2025-01-01T00:00:01+00:00", "kind": "msg", "room": "r_aaaaaaaa", "from": "ghost5",
             "text": "no nickname"},
            {"ts": "2025-01-01T00:00:02+00:00", "kind": "dm", "room": "r_aaaaaaaa", "from": "alice",
             "to": "ghost4", "text": "hello?"}
        ]},
        "room_infos": {"r_aaaaaaaa": {"id": "r_aaaaaaaa", "name": "haunted",
                                      "created_at": "2024-12-31T23:59:59+00:00", "last": null}}
    });
    write_files(&dir, users, friends, chat);

    // A dry run reports them too, and writes nothing.
    let before = snapshot(&url);
    let dry = import_dir(&url, &dir, true, &mut Vec::new()).unwrap();
    assert!(dry.dry_run);
    assert_eq!(
        dry.missing_users,
        ["ghost0", "ghost1", "ghost2", "ghost3", "ghost5", "ghost4"]
    );
    assert_eq!(snapshot(&url), before);

    let summary = import(&url, &dir);
    assert_eq!(summary.users, counts(1, 0));
    assert_eq!(
        summary.missing_users,
        ["ghost0", "ghost1", "ghost2", "ghost3", "ghost5", "ghost4"]
    );
    assert_eq!(summary.entries, counts(3, 0));
    let printed = summary.to_string();
    assert!(
        printed.contains("ghost0, ghost1, ghost2, ghost3, ghost5, ghost4"),
        "{printed}"
    );

    let mut c = connect_db(&url);
    let rows = c
        .query(
            "SELECT username, password, nickname FROM users ORDER BY username",
            &[],
        )
        .unwrap();
    let mut seen_passwords = std::collections::HashSet::new();
    for r in &rows {
        let (name, pw, nick): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if name == "alice" {
            continue;
        }
        assert!(
            pw.starts_with("!disabled:") && pw.len() == 74,
            "{name}: {pw}"
        );
        assert!(
            seen_passwords.insert(pw),
            "every disabled password is distinct"
        );
        let want = if name == "ghost3" {
            "Ghost Three"
        } else {
            name.as_str()
        };
        assert_eq!(nick, want);
    }
    assert_eq!(rows.len(), 7);

    let s = TestServer::on_db(&url, |_| {});
    for ghost in ["ghost0", "ghost1", "ghost2", "ghost3", "ghost4", "ghost5"] {
        for guess in ["", "pw", "!disabled:", ghost] {
            let st = s.login(ghost, guess).status;
            assert!(st == 400 || st == 401, "{ghost}/{guess:?}: {st}");
        }
        // The name is taken: nobody can register it and read what was addressed to it.
        assert_eq!(s.register(ghost, "mine").json()["status"], "ALREADY");
    }
    let token = s.login_token("alice", "pw");
    let mut ws = s.ws(&token);
    let f = ws.request(json!({"type": "following_list"}));
    assert_eq!(
        f["following"],
        json!([{"username": "ghost1", "nickname": "ghost1"}])
    );
    let h = ws.request(json!({"type": "history", "room_id": "r_aaaaaaaa"}));
    let nicks: Vec<&str> = item_strs(&h, "from_nickname");
    assert_eq!(nicks, ["Ghost Three", "ghost5", "Alice"]);
    drop(ws);
    s.stop();

    // Already created: a re-import reports nobody.
    let again = import(&url, &dir);
    assert!(again.missing_users.is_empty());
    assert!(again.is_noop(), "{again}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn entries_pruned_by_retention_are_not_brought_back() {
    let url = pg().fresh_db();
    import(&url, &sample_dir());
    // Retention removed the two oldest entries of a room since.
    connect_db(&url)
        .batch_execute(
            "DELETE FROM chat_logs WHERE id IN \
             (SELECT id FROM chat_logs WHERE room_id = 'r_955219ce' ORDER BY id LIMIT 2)",
        )
        .unwrap();
    let before = snapshot(&url);
    let again = import(&url, &sample_dir());
    assert_eq!(again.entries, counts(0, 473));
    assert!(
        again
            .notes
            .iter()
            .any(|n| n.starts_with("2 chat entries older")),
        "{again}"
    );
    assert_eq!(snapshot(&url), before);
}

#[test]
fn dry_run_counts_without_writing() {
    // On a database without any tables: the dry run must not even create them.
    let url = pg().empty_db();
    let summary = import_dir(&url, &sample_dir(), true, &mut Vec::new()).unwrap();
    assert!(summary.dry_run);
    assert_eq!(summary.users, counts(10, 0));
    assert_eq!(summary.entries, counts(473, 0));
    assert!(summary.to_string().starts_with("dry run"), "{summary}");
    let mut c = connect_db(&url);
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);

    // After an import, a dry run of the same files predicts no change.
    let url = pg().fresh_db();
    let dry = import_dir(&url, &sample_dir(), true, &mut Vec::new()).unwrap();
    assert_eq!(row_counts(&url), vec![0, 0, 0, 0, 0]);
    let real = import(&url, &sample_dir());
    for (d, r) in [
        (dry.users, real.users),
        (dry.follows, real.follows),
        (dry.rooms, real.rooms),
        (dry.memberships, real.memberships),
        (dry.entries, real.entries),
    ] {
        assert_eq!(d, r);
    }
    let dry = import_dir(&url, &sample_dir(), true, &mut Vec::new()).unwrap();
    assert!(dry.is_noop(), "{dry}");
}

#[test]
fn tens_of_thousands_of_entries_import_in_seconds() {
    let url = pg().fresh_db();
    let dir = scratch("large");
    let n_users = 40;
    let n_rooms = 8;
    let per_room = 5_000;
    let mut info = serde_json::Map::new();
    for u in 0..n_users {
        let name = format!("u{u}");
        info.insert(
            name.clone(),
            json!({"username": name, "password": format!("pw{u}"), "nickname": format!("N{u}")}),
        );
    }
    let mut members = serde_json::Map::new();
    let mut logs = serde_json::Map::new();
    let mut infos = serde_json::Map::new();
    let base = 1_700_000_000u64;
    for r in 0..n_rooms {
        let id = format!("r_{r:08x}");
        members.insert(
            id.clone(),
            json!((0..n_users).map(|u| format!("u{u}")).collect::<Vec<_>>()),
        );
        let entries: Vec<Value> = (0..per_room)
            .map(|i| {
                let t = std::time::UNIX_EPOCH
                    + Duration::from_micros(base * 1_000_000 + (i * 1_000 + r) as u64);
                json!({"ts": klav::time::format_iso(t), "kind": "msg", "room": id,
                       "from": format!("u{}", i % n_users), "text": format!("message {i} in {r}")})
            })
            .collect();
        logs.insert(id.clone(), Value::Array(entries));
        infos.insert(
            id.clone(),
            json!({"id": id, "name": format!("room {r}"), "created_at": "2023-11-14T00:00:00Z"}),
        );
    }
    write_files(
        &dir,
        json!({"users": [], "userinfo": info}),
        json!({"following": {}}),
        json!({"room_members": members, "chat_logs": logs, "room_infos": infos}),
    );

    let started = Instant::now();
    let mut progress = Vec::new();
    let summary = import_dir(&url, &dir, false, &mut progress).unwrap();
    let took = started.elapsed();
    assert_eq!(summary.entries, counts((n_rooms * per_room) as u64, 0));
    assert_eq!(summary.users, counts(n_users as u64, 0));
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let progress = String::from_utf8(progress).unwrap();
    assert!(progress.contains("hashing 40 passwords"), "{progress}");
    assert!(
        progress.contains("writing 40000 chat entries"),
        "{progress}"
    );

    // Ids follow time within each room.
    let mut c = connect_db(&url);
    let unordered: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT ts < lag(ts) OVER (PARTITION BY room_id ORDER BY id) AS back \
             FROM chat_logs) x WHERE back",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unordered, 0);

    let started = Instant::now();
    let again = import_dir(&url, &dir, false, &mut Vec::new()).unwrap();
    assert!(again.is_noop());
    assert!(started.elapsed() < Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&dir);
}
