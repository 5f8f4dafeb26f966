//! How the nodes set up and use their database connections: nodes started
//! together on an empty database all come up (schema setup is serialised),
//! and every connection is named by node and role, the workers' with a
//! statement timeout.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// `n` klav processes started at the same moment on the database at `db`
/// (none waits for another to report its address), `n0` … `n{n-1}`.
fn start_together(db: &str, n: usize, dir: &std::path::Path) -> Vec<Klav> {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (db, dir) = (db.to_string(), dir.join(format!("n{i}")));
            std::thread::spawn(move || {
                let name = format!("n{i}");
                spawn_klav(
                    &dir,
                    &[
                        ("DATABASE_URL", db.as_str()),
                        ("KLAV_NODE_NAME", name.as_str()),
                        ("KLAV_DB_WORKERS", "1"),
                        ("KLAV_NODE_TIMEOUT_SECS", "3"),
                    ],
                )
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("every node came up"))
        .collect()
}

/// Six nodes started at once on an empty database (a first rollout with
/// several replicas) all come up, every time: they take turns setting the
/// schema up instead of deadlocking on each other's DDL.
#[test]
fn six_nodes_started_at_once_on_an_empty_database_all_come_up() {
    let dir = std::env::temp_dir().join(format!("klav-six-{}", std::process::id()));
    for round in 0..3 {
        let db = pg().empty_db();
        let nodes = start_together(&db, 6, &dir.join(round.to_string()));
        let mut client = connect_db(&db);
        let registered: i64 = client
            .query_one("SELECT count(*) FROM klav_nodes", &[])
            .unwrap()
            .get(0);
        assert_eq!(registered, 6, "round {round}: every node registered");
        for k in &nodes {
            assert!(
                !k.stderr().contains("deadlock"),
                "round {round}: {}",
                k.stderr()
            );
            let r = http_to(k.addr, "GET", "/health", None);
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node whose `schema.sql` is already applied takes no table lock at
/// start: it starts while another session holds `chat_logs` locked.
#[test]
fn a_node_on_a_current_schema_starts_while_tables_are_locked() {
    let db = pg().fresh_db();
    let mut locker = connect_db(&db);
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE chat_logs, rooms IN ACCESS SHARE MODE")
        .unwrap();
    let s = TestServer::on_db(&db, |_| {});
    let r = s.http("GET", "/health", None);
    assert_eq!(r.status, 200);
    tx.rollback().unwrap();
}

/// A general worker's statement runs at most `KLAV_STATEMENT_TIMEOUT_MS`: a
/// read stuck behind a lock is cut off and answered `UNAVAILABLE`, and the
/// worker serves the next request; the writer's connection has no limit.
#[test]
fn a_stuck_worker_query_is_cut_off_by_the_statement_timeout() {
    let s = TestServer::with(|c| {
        c.db_workers = 1;
        c.statement_timeout = Duration::from_millis(400);
    });
    let mut ws = s.client("alice");
    let room = ws.create_room("r");
    ws.join(&room);
    let mut db = s.db();
    let mut locker = s.db();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE room_members IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let e = ws.request(json!({"type": "my_rooms"}));
    assert_eq!(e["code"], "UNAVAILABLE", "{e}");
    tx.rollback().unwrap();
    let r = ws.request(json!({"type": "my_rooms"}));
    assert_eq!(r["type"], "my_rooms", "{r}");
    assert_eq!(r["rooms"].as_array().map(Vec::len), Some(1), "{r}");
    // Each connection says what it is for; the worker's carries the timeout.
    let names: Vec<String> = db
        .query(
            "SELECT application_name FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'klav %'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(" worker 0"))
            && names.iter().any(|n| n.ends_with(" writer")),
        "{names:?}"
    );
}

/// A connection that finds itself on a read-only server (as on a standby,
/// or a primary demoted by a failover: SQLSTATE 25006) makes its request
/// `UNAVAILABLE` and is replaced, not pooled again: once the database
/// accepts writes, new connections do too and sending works again.
#[test]
fn a_connection_on_a_read_only_server_is_replaced() {
    let s = TestServer::start();
    let mut ws = s.client("alice");
    let room = ws.create_room("r");
    ws.join(&room);
    let mut db = s.db();
    let name: String = db
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0);
    db.batch_execute(&format!(
        "ALTER DATABASE {name} SET default_transaction_read_only = on; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ))
    .unwrap();
    let e = ws.request(json!({"type": "msg", "room_id": room, "text": "read-only"}));
    assert_eq!(e["code"], "UNAVAILABLE", "{e}");
    db.batch_execute(&format!(
        "ALTER DATABASE {name} RESET default_transaction_read_only"
    ))
    .unwrap();
    let got = eventually(WAIT, Duration::from_millis(200), || {
        let r = ws.request(json!({"type": "msg", "room_id": room, "text": "writable"}));
        match r["type"] == "message" {
            true => Ok(r),
            false => Err(format!("sending never worked again: {r}")),
        }
    });
    assert_eq!(got["text"], "writable");
    assert_eq!(
        s.count(
            "SELECT count(*) FROM chat_logs WHERE text = 'read-only'",
            &[]
        ),
        0
    );
}
