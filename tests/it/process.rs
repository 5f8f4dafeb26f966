//! klav as a process: bad configuration exits 2 with a clear message, SIGTERM
//! closes every client with 1001 and exits 0, a panic aborts, and running out
//! of file descriptors neither spins nor stops it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use klav::db::embedded::{Cluster, ClusterOptions};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::harness::*;

#[test]
fn bad_configuration_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .env("PORT", "seventy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"));
    let out = Command::new(env!("CARGO_BIN_EXE_klav"))
        .env("DATABASE_URL", "mysql://x@y/z")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `JWT_SECRET` shorter than 32 bytes stops klav with exit 2 and a message that
/// does not repeat the secret.
#[test]
fn short_jwt_secret_exits_2() {
    let url = pg().fresh_db();
    let mut child = Command::new(env!("CARGO_BIN_EXE_klav"))
        .env("DATABASE_URL", &url)
        .env("JWT_SECRET", "x")
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        child.try_wait().unwrap()
    });
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("klav started with JWT_SECRET=x");
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("JWT_SECRET") && err.contains("32"), "{err}");
    assert!(!err.contains("\"x\""), "the secret is not printed: {err}");
}

/// SIGTERM: every client gets a 1001 close, a message accepted just before is
/// delivered first (and stored), the process exits 0 within the bound and the
/// embedded PostgreSQL is stopped.
#[test]
fn graceful_shutdown() {
    let dir = cluster_dir("shutdown");
    let bound = 5;
    let env = [
        ("KLAV_SHUTDOWN_SECS", "5"),
        ("KLAV_RATE_PER_SEC", "10000"),
        ("KLAV_RATE_BURST", "10000"),
    ];
    let mut k = spawn_klav(&dir, &env);
    let ta = user_at(k.addr, "sa");
    let tb = user_at(k.addr, "sb");
    let tc = user_at(k.addr, "sc");
    let mut a = Ws::connect(k.addr, &ta).unwrap_or_else(|e| panic!("{e:?}"));
    let mut b = Ws::connect(k.addr, &tb).unwrap_or_else(|e| panic!("{e:?}"));
    let mut c = Ws::connect(k.addr, &tc).unwrap_or_else(|e| panic!("{e:?}"));
    let room = a.create_room("last words");
    join_in_turn(&room, &mut [&mut a, &mut b, &mut c]);

    // A third member keeps sending through the shutdown, collecting what it gets.
    let busy = {
        let room = room.clone();
        std::thread::spawn(move || {
            let mut got: Vec<String> = Vec::new();
            let sock = &mut c.sock;
            sock.get_mut()
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            for n in 0.. {
                if sock.can_write() {
                    let req = json!({"type": "msg", "room_id": room, "text": format!("busy {n}")});
                    let _ = sock.send(Message::text(req.to_string()));
                }
                loop {
                    match sock.read() {
                        Ok(Message::Text(t)) => {
                            let ev: Value = serde_json::from_str(t.as_str()).unwrap();
                            if ev["type"] == "message" && ev["from"] == "sc" {
                                got.push(ev["text"].as_str().unwrap().to_string());
                            }
                        }
                        Ok(Message::Close(f)) => return (got, f),
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            break
                        }
                        Err(e) => panic!("busy client: {e} after {n} messages"),
                    }
                }
            }
            unreachable!()
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    let text = "sent just before SIGTERM";
    a.send(json!({"type": "msg", "room_id": room, "text": text, "req_id": "last"}));
    let t0 = Instant::now();
    k.signal(libc::SIGTERM);
    let (a_events, a_close) = a.events_until_close();
    let (b_events, b_close) = b.events_until_close();
    let (c_got, c_close) = busy.join().unwrap();
    assert_eq!(close_code(&a_close), Some(CloseCode::Away), "{a_close:?}");
    assert_eq!(close_code(&b_close), Some(CloseCode::Away), "{b_close:?}");
    assert_eq!(close_code(&c_close), Some(CloseCode::Away), "{c_close:?}");
    let status = k
        .wait_exit(Duration::from_secs(bound + 10))
        .expect("klav exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(bound + 10));
    assert!(
        !dir.join("pg/postmaster.pid").exists(),
        "embedded PostgreSQL stopped"
    );

    let delivered = a_events
        .iter()
        .find(|e| e["type"] == "message" && e["text"] == text);
    let error = a_events
        .iter()
        .find(|e| e["type"] == "error" && e["req_id"] == "last");
    assert!(
        delivered.is_some() || error.is_some(),
        "the sender got neither its message nor an error before the close: {a_events:?}"
    );
    let mut cluster = Cluster::start(&dir, &ClusterOptions::default()).unwrap();
    let mut db = connect_db(&cluster.url("postgres"));
    let ids: Vec<i64> = db
        .query("SELECT id FROM chat_logs WHERE text = $1", &[&text])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    match delivered {
        Some(ev) => {
            assert_eq!(ids, [ev["id"].as_i64().unwrap()], "delivered means stored");
            let to_b = b_events
                .iter()
                .find(|e| e["type"] == "message" && e["text"] == text);
            assert!(
                to_b.is_some(),
                "the other member got it before the close too: {b_events:?}"
            );
        }
        None => assert!(ids.is_empty(), "refused ({error:?}) yet stored"),
    }
    // The busy member: everything of its that was stored reached it before the
    // close (and, trivially, everything it got was stored).
    let stored: Vec<String> = db
        .query(
            "SELECT text FROM chat_logs WHERE from_user = 'sc' AND kind = 'msg' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !stored.is_empty(),
        "the busy member was served before SIGTERM"
    );
    assert_eq!(
        stored, c_got,
        "stored messages of the busy member vs the message events it received"
    );
    cluster.stop().unwrap();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A panic anywhere aborts the process (SIGABRT) after logging it; without fault
/// injection `__panic` is just an unknown type.
#[test]
fn panic_aborts_the_process() {
    let url = pg().fresh_db();
    let dir = scratch_dir("panic");

    let mut k = spawn_klav(&dir, &[("DATABASE_URL", &url)]);
    let t = user_at(k.addr, "boom");
    let mut ws = Ws::connect(k.addr, &t).unwrap_or_else(|e| panic!("{e:?}"));
    let r = ws.request(json!({"type": "__panic"}));
    assert_eq!(r["code"], "UNKNOWN_TYPE", "{r}");
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    drop(ws);
    assert!(k.terminate().success());

    let mut k = spawn_klav(
        &dir,
        &[("DATABASE_URL", &url), ("KLAV_FAULT_INJECTION", "1")],
    );
    let mut ws = Ws::connect(k.addr, &t).unwrap_or_else(|e| panic!("{e:?}"));
    ws.send(json!({"type": "__panic"}));
    let status = k.wait_exit(WAIT).expect("klav dies after a panic");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let log = k.full_stderr();
    assert!(log.contains("internal error (panic)"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP exchange that may fail (refused, reset, closed without an answer).
fn try_http(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let request = http_request(method, path, &[("Connection", "close")], "");
    s.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Out of file descriptors: the binary under `ulimit -n 64` with more connections
/// than it can accept does not spin on the listener, and serves again once they go.
#[test]
fn fd_exhaustion_does_not_spin() {
    let url = pg().fresh_db();
    let dir = scratch_dir("fd");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("KLAV_DB_WORKERS", "1"),
        ("KLAV_HASH_WORKERS", "1"),
        ("KLAV_HTTP_TIMEOUT_SECS", "120"),
    ];
    let mut k = spawn_klav_with(&dir, &env, Some(64));
    // A pooled database connection exists before descriptors run out.
    let token = user_at(k.addr, "fd");

    let conns: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(k.addr).unwrap())
        .collect();
    k.wait_for_stderr("accept failed", "never ran out of descriptors");
    let clk = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let t0 = cpu_ticks(k.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(k.pid()) - t0;
    assert!(
        used * 4 < clk * 2,
        "spent {used} ticks ({clk}/s) in 2 s while out of descriptors"
    );
    assert!(k.child.try_wait().unwrap().is_none(), "still running");

    drop(conns);
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || match try_http(k.addr, "GET", "/health") {
            Some(200) => Ok(()),
            _ => Err(format!("never served again:\n{}", k.stderr())),
        },
    );
    let mut ws = Ws::connect(k.addr, &token).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(ws.request(json!({"type": "my_rooms"}))["type"], "my_rooms");
    ws.close();
    assert!(k.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}
