//! The usual start of a chat test: a server that does not stand in the way of
//! long pipelines, a room whose members are connected and joined, messages
//! posted and their ids, a room as `my_rooms` shows it, and years of chat
//! written straight into the tables.

use std::borrow::BorrowMut;

use serde_json::{json, Value};

use crate::harness::{TestServer, Ws};

/// A server whose request rate and reconnect budgets do not get in the way of
/// long pipelines and reconnect loops (those budgets have tests of their own).
pub fn unthrottled_server() -> TestServer {
    TestServer::with(|c| {
        c.rate_per_sec = 100_000.0;
        c.rate_burst = 100_000.0;
        c.ws_opens_per_user_per_min = 1_000_000;
    })
}

/// A room named `room` with the given members connected and joined (each join
/// event consumed by every member already in).
pub fn room_with(s: &TestServer, users: &[&str]) -> (String, Vec<Ws>) {
    room_named(s, "room", users)
}

/// [`room_with`], for a room of another name.
pub fn room_named(s: &TestServer, name: &str, users: &[&str]) -> (String, Vec<Ws>) {
    let mut clients: Vec<Ws> = users.iter().map(|u| s.client(u)).collect();
    let room = clients[0].create_room(name);
    join_in_turn(&room, &mut clients);
    (room, clients)
}

/// Joins `room` with each member in turn; every member already in consumes
/// (and checks) the `joined` event of each one after it.
pub fn join_in_turn<W: BorrowMut<Ws>>(room: &str, members: &mut [W]) {
    for i in 0..members.len() {
        members[i].borrow_mut().join(room);
        for earlier in members.iter_mut().take(i) {
            assert_eq!(earlier.borrow_mut().expect("system")["event"], "joined");
        }
    }
}

/// The id of an entry event.
pub fn id_of(ev: &Value) -> i64 {
    ev["id"].as_i64().unwrap_or_else(|| panic!("no id in {ev}"))
}

/// Posts a message and returns its id (the sender's echo).
pub fn post(ws: &mut Ws, room: &str, text: &str) -> i64 {
    let ev = ws.request(json!({"type": "msg", "room_id": room, "text": text}));
    assert_eq!(ev["type"], "message", "{ev}");
    id_of(&ev)
}

/// One string field of every item of a reply's `items` (a `history`), in order.
pub fn item_strs<'a>(reply: &'a Value, field: &str) -> Vec<&'a str> {
    reply["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[field].as_str().unwrap())
        .collect()
}

/// One room's entry in `my_rooms` (`rooms_info`), which must be there.
pub fn room_info(ws: &mut Ws, room: &str) -> Value {
    let r = ws.request(json!({"type": "my_rooms"}));
    r["rooms_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == room)
        .cloned()
        .unwrap_or_else(|| panic!("{room} not in {r}"))
}

/// Adds `n` messages of `text` by `from` to `room` straight into the table (as
/// another program, or years of chat, would have), and moves the room's
/// newest entry along as the writer does.
pub fn fill_room(db: &mut postgres::Client, room: &str, from: &str, n: i64, text: &str) {
    db.execute(
        "INSERT INTO chat_logs (room_id, ts, kind, from_user, from_nickname, text) \
         SELECT $1, now(), 'msg', $2, $2, $4 FROM generate_series(1, $3::int8)",
        &[&room, &from, &n, &text],
    )
    .unwrap();
    db.execute(
        "UPDATE rooms SET klav_last_entry_id = \
         (SELECT max(id) FROM chat_logs WHERE room_id = $1) WHERE id = $1",
        &[&room],
    )
    .unwrap();
}
