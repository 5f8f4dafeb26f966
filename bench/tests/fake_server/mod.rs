//! A small in-process stand-in for the Klav server, speaking the subset of the protocol
//! the bench uses (register, login, health, the WebSocket upgrade, create_room, join, msg,
//! room_dm, history, friend_follow, presence), with optional faults so the bench's checks can
//! be seen to catch them. One thread per connection: only for small runs.
//!
//! [`FakeServer::start_nodes`] listens on several ports sharing one state: a cluster
//! of nodes that see each other's events, as Klav's nodes will through their shared
//! database.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message;

/// Misbehaviour to inject.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Skip every Nth delivery of a `message` to a connection that did not send it
    /// (and of a `dm`).
    pub drop_every: Option<u64>,
    /// Deliver every Nth `message` twice to connections that did not send it (and
    /// every Nth `dm`).
    pub duplicate_every: Option<u64>,
    /// Hold every Nth `dm` delivery back and deliver it after the next `dm` to the
    /// same connection: out of its sender's order.
    pub hold_back_every: Option<u64>,
    /// Answer every Nth `msg` with `RATE_LIMITED` instead of delivering it.
    pub rate_limit_every: Option<u64>,
    /// Give every Nth message the id 1, below the ids delivered before it (its
    /// sender's sequence stays in order).
    pub id_backwards_every: Option<u64>,
}

#[derive(Default)]
struct Room {
    members: HashSet<String>,
    log: Vec<Value>,
}

#[derive(Default)]
struct State {
    users: HashSet<String>,
    rooms: HashMap<String, Room>,
    conns: HashMap<String, Vec<(u64, Sender<String>)>>,
    followers: HashMap<String, HashSet<String>>,
    subscribed: HashSet<u64>,
    /// `hold_back_every`: a `dm` frame held back, by connection.
    held: HashMap<u64, String>,
    next_room: u64,
    next_msg: u64,
    next_conn: u64,
    deliveries: u64,
    msgs: u64,
}

pub struct FakeServer {
    /// Every node's address.
    pub addrs: Vec<SocketAddr>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    pub logins: Arc<AtomicU64>,
    /// WebSocket upgrades accepted, by node.
    pub websockets: Arc<Vec<AtomicU64>>,
}

impl FakeServer {
    pub fn start(faults: Faults) -> FakeServer {
        FakeServer::start_nodes(1, faults)
    }

    /// `nodes` listeners (each its own port) sharing one state.
    pub fn start_nodes(nodes: usize, faults: Faults) -> FakeServer {
        let listeners: Vec<TcpListener> = (0..nodes)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let server = FakeServer {
            addrs,
            state: Arc::new(Mutex::new(State::default())),
            stop: Arc::new(AtomicBool::new(false)),
            logins: Arc::new(AtomicU64::new(0)),
            websockets: Arc::new((0..nodes).map(|_| AtomicU64::new(0)).collect()),
        };
        for (node, listener) in listeners.into_iter().enumerate() {
            let state = server.state.clone();
            let stop = server.stop.clone();
            let logins = server.logins.clone();
            let websockets = server.websockets.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    let logins = logins.clone();
                    let stop = stop.clone();
                    let websockets = websockets.clone();
                    std::thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            let _ = serve(stream, state, faults, logins, stop, &websockets[node]);
                        })
                        .expect("spawn");
                }
            });
        }
        server
    }

    /// The `--addr` value: one address, or the nodes' comma-separated.
    pub fn addr(&self) -> String {
        self.addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn websockets(&self, node: usize) -> u64 {
        self.websockets[node].load(Ordering::Relaxed)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for a in &self.addrs {
            let _ = TcpStream::connect(a);
        }
    }
}

fn respond(stream: &mut TcpStream, status: u16, body: &Value) -> io::Result<()> {
    let body = body.to_string();
    let reason = if status == 200 { "OK" } else { "Error" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn user_of_token(token: &str) -> Option<String> {
    if let Some(u) = token.strip_prefix("fake-") {
        return Some(u.to_string());
    }
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["sub"].as_str().map(str::to_string)
}

fn serve(
    mut stream: TcpStream,
    state: Arc<Mutex<State>>,
    faults: Faults,
    logins: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    websockets: &AtomicU64,
) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // One request head.
        let (method, path, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let headers: HashMap<String, String> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (
                    req.method.unwrap().to_string(),
                    req.path.unwrap().to_string(),
                    headers,
                    n,
                );
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..head_len);
        if method == "GET" && path.starts_with("/ws") {
            return websocket(stream, buf, headers, state, faults, stop, websockets);
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Value = serde_json::from_slice(&buf[..len]).unwrap_or(Value::Null);
        buf.drain(..len);
        let username = body["username"].as_str().unwrap_or("").to_string();
        match path.as_str() {
            "/register" => {
                let created = state.lock().unwrap().users.insert(username);
                let status = if created { "CREATED" } else { "ALREADY" };
                respond(&mut stream, 200, &json!({ "status": status }))?;
            }
            "/login" => {
                logins.fetch_add(1, Ordering::Relaxed);
                if state.lock().unwrap().users.contains(&username) {
                    respond(
                        &mut stream,
                        200,
                        &json!({"access_token": format!("fake-{username}"), "token_type": "bearer"}),
                    )?;
                } else {
                    respond(&mut stream, 401, &json!({"detail": "not registered"}))?;
                }
            }
            "/health" => respond(&mut stream, 200, &json!({"status": "ok"}))?,
            _ => respond(&mut stream, 404, &json!({"detail": "not found"}))?,
        }
    }
}

fn send_to_user(st: &State, user: &str, frame: &str) {
    if let Some(conns) = st.conns.get(user) {
        for (_, tx) in conns {
            let _ = tx.send(frame.to_string());
        }
    }
}

fn presence(st: &State, user: &str, status: &str) {
    let Some(followers) = st.followers.get(user) else {
        return;
    };
    let frame = json!({"type": "presence_change", "scope": "friends", "user": user, "name": user, "status": status})
        .to_string();
    for f in followers {
        if let Some(conns) = st.conns.get(f) {
            for (id, tx) in conns {
                if st.subscribed.contains(id) {
                    let _ = tx.send(frame.clone());
                }
            }
        }
    }
}

fn websocket(
    mut stream: TcpStream,
    rest: Vec<u8>,
    headers: HashMap<String, String>,
    state: Arc<Mutex<State>>,
    faults: Faults,
    stop: Arc<AtomicBool>,
    websockets: &AtomicU64,
) -> io::Result<()> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
        .unwrap_or_default();
    let user = match user_of_token(&token) {
        Some(u) if state.lock().unwrap().users.contains(&u) => u,
        _ => return respond(&mut stream, 403, &json!({"detail": "invalid token"})),
    };
    let key = headers
        .get("sec-websocket-key")
        .cloned()
        .unwrap_or_default();
    websockets.fetch_add(1, Ordering::Relaxed);
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )?;
    stream.set_read_timeout(Some(Duration::from_millis(2)))?;
    let mut ws = WebSocket::from_partially_read(stream, rest, Role::Server, None);
    let (tx, rx): (Sender<String>, Receiver<String>) = channel();
    let conn_id = {
        let mut st = state.lock().unwrap();
        st.next_conn += 1;
        let id = st.next_conn;
        let entry = st.conns.entry(user.clone()).or_default();
        entry.push((id, tx.clone()));
        if entry.len() == 1 {
            presence(&st, &user, "online");
        }
        id
    };
    let result = ws_loop(&mut ws, &rx, &tx, &user, conn_id, &state, faults, &stop);
    {
        let mut st = state.lock().unwrap();
        st.subscribed.remove(&conn_id);
        let now_empty = {
            let entry = st.conns.entry(user.clone()).or_default();
            entry.retain(|(id, _)| *id != conn_id);
            entry.is_empty()
        };
        if now_empty {
            st.conns.remove(&user);
            presence(&st, &user, "offline");
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn ws_loop(
    ws: &mut WebSocket<TcpStream>,
    rx: &Receiver<String>,
    tx: &Sender<String>,
    user: &str,
    conn_id: u64,
    state: &Arc<Mutex<State>>,
    faults: Faults,
    stop: &AtomicBool,
) -> io::Result<()> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                let req: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                handle(&req, user, conn_id, tx, state, faults);
            }
            Ok(Message::Close(_)) => {}
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(_) => return Ok(()),
        }
        let mut wrote = false;
        while let Ok(frame) = rx.try_recv() {
            if ws.write(Message::text(frame)).is_err() {
                return Ok(());
            }
            wrote = true;
        }
        if wrote && ws.flush().is_err() {
            return Ok(());
        }
    }
}

fn handle(
    req: &Value,
    user: &str,
    conn_id: u64,
    tx: &Sender<String>,
    state: &Arc<Mutex<State>>,
    faults: Faults,
) {
    let reply = |mut v: Value| {
        if let Some(id) = req.get("req_id") {
            v["req_id"] = id.clone();
        }
        let _ = tx.send(v.to_string());
    };
    let mut st = state.lock().unwrap();
    let room_id = req["room_id"].as_str().unwrap_or("").to_string();
    match req["type"].as_str().unwrap_or("") {
        "create_room" => {
            st.next_room += 1;
            let id = format!("r_{:08x}", st.next_room);
            st.rooms.insert(id.clone(), Room::default());
            reply(
                json!({"type": "create_room_ack", "status": "CREATED", "room_id": id, "name": req["name"]}),
            );
        }
        "join" => {
            let Some(room) = st.rooms.get_mut(&room_id) else {
                return reply(json!({"type": "error", "code": "ROOM_NOT_FOUND"}));
            };
            if !room.members.insert(user.to_string()) {
                return reply(json!({"type": "join_ack", "room": room_id, "status": "ALREADY"}));
            }
            let frame =
                json!({"type": "system", "room": room_id, "event": "joined", "user": user, "user_nickname": user})
                    .to_string();
            let members: Vec<String> = room.members.iter().cloned().collect();
            for m in members {
                send_to_user(&st, &m, &frame);
            }
        }
        "msg" => {
            st.msgs += 1;
            if faults
                .rate_limit_every
                .is_some_and(|n| st.msgs.is_multiple_of(n))
            {
                return reply(json!({"type": "error", "code": "RATE_LIMITED"}));
            }
            let Some(room) = st.rooms.get(&room_id) else {
                return reply(json!({"type": "error", "code": "ROOM_NOT_FOUND"}));
            };
            if !room.members.contains(user) {
                return reply(json!({"type": "error", "code": "NOT_A_MEMBER"}));
            }
            st.next_msg += 1;
            let id = if faults
                .id_backwards_every
                .is_some_and(|n| st.next_msg.is_multiple_of(n))
            {
                1
            } else {
                st.next_msg
            };
            let item = json!({"type": "message", "id": id, "room": room_id, "from": user,
                              "from_nickname": user, "text": req["text"], "ts": "2025-01-01T00:00:00.000000+00:00"});
            let frame = item.to_string();
            let members: Vec<String> = st.rooms[&room_id].members.iter().cloned().collect();
            st.rooms.get_mut(&room_id).unwrap().log.push(item);
            for m in members {
                let Some(conns) = st.conns.get(&m).cloned() else {
                    continue;
                };
                for (id, ctx) in conns {
                    if id == conn_id {
                        let _ = ctx.send(frame.clone());
                        continue;
                    }
                    st.deliveries += 1;
                    let d = st.deliveries;
                    if faults.drop_every.is_some_and(|n| d.is_multiple_of(n)) {
                        continue;
                    }
                    let _ = ctx.send(frame.clone());
                    if faults.duplicate_every.is_some_and(|n| d.is_multiple_of(n)) {
                        let _ = ctx.send(frame.clone());
                    }
                }
            }
        }
        "room_dm" => {
            let to = req["to"].as_str().unwrap_or("").to_string();
            let ack = |status: &str| {
                reply(json!({"type": "dm_ack", "room": room_id, "to": to, "status": status}))
            };
            let Some(room) = st.rooms.get(&room_id) else {
                return ack("SENDER_NOT_IN_ROOM");
            };
            if !room.members.contains(user) {
                return ack("SENDER_NOT_IN_ROOM");
            }
            if !room.members.contains(&to) {
                return ack("RECIPIENT_NOT_IN_ROOM");
            }
            st.next_msg += 1;
            let frame = json!({"type": "dm", "id": st.next_msg, "room": room_id, "from": user,
                               "from_nickname": user, "to": to, "text": req["text"],
                               "ts": "2025-01-01T00:00:00.000000+00:00"})
            .to_string();
            let Some(conns) = st.conns.get(&to).cloned() else {
                return ack("QUEUED");
            };
            for (id, ctx) in conns {
                st.deliveries += 1;
                let d = st.deliveries;
                if faults.drop_every.is_some_and(|n| d.is_multiple_of(n)) {
                    continue;
                }
                if faults.hold_back_every.is_some_and(|n| d.is_multiple_of(n))
                    && !st.held.contains_key(&id)
                {
                    st.held.insert(id, frame.clone());
                    continue;
                }
                let _ = ctx.send(frame.clone());
                if faults.duplicate_every.is_some_and(|n| d.is_multiple_of(n)) {
                    let _ = ctx.send(frame.clone());
                }
                if let Some(held) = st.held.remove(&id) {
                    let _ = ctx.send(held);
                }
            }
            ack("DELIVERED");
        }
        "history" => {
            let Some(room) = st.rooms.get(&room_id) else {
                return reply(json!({"type": "error", "code": "ROOM_NOT_FOUND"}));
            };
            let limit = req["limit"].as_u64().unwrap_or(20).clamp(1, 200) as usize;
            let items: Vec<Value> = room.log.iter().rev().take(limit).rev().cloned().collect();
            reply(json!({"type": "history", "room": room_id, "items": items}));
        }
        "friend_follow" => {
            let to = req["to"].as_str().unwrap_or("").to_string();
            let status = if st
                .followers
                .entry(to.clone())
                .or_default()
                .insert(user.to_string())
            {
                "FOLLOWED"
            } else {
                "ALREADY"
            };
            reply(json!({"type": "friend_follow_ack", "to": to, "status": status}));
        }
        "presence_friends_subscribe" => {
            st.subscribed.insert(conn_id);
            reply(json!({"type": "online_friends", "users": []}));
        }
        _ => reply(json!({"type": "error", "code": "UNKNOWN_TYPE"})),
    }
}
