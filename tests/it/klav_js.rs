//! The client library `web/klav.js`, tested by its own Node tests
//! (`web/tests/*.test.mjs`, run with `node --test`) against a real server: this
//! test starts the server, registers the users the Node tests act as and hands
//! them the URL and tokens through the environment. It fails when any Node test
//! fails, and is skipped (with a message) only when `node` is not installed
//! or older than 20.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::support::nodes::Nodes;
use crate::support::switch_proxy::SwitchProxy;

/// The users the Node tests share; each test file keeps to its own.
const USERS: &[&str] = &[
    "ana", "ben", "cleo", "dov", "eli", "fay", "gus", "hal", "ivy", "jon", "kit", "lea", "max",
];

/// Node's major version, or `None` when it is missing.
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    v.trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Node >= 20, or why the Node tests are skipped (printed by the caller).
fn usable_node(test: &str) -> Option<u32> {
    let Some(major) = node_major() else {
        eprintln!("SKIPPED {test}: `node` is not installed (Node >= 20 runs web/tests)");
        return None;
    };
    if major < 20 {
        // A distribution's older Node (Debian 12 ships 18) has no WebSocket,
        // which the library needs from the runtime.
        eprintln!("SKIPPED {test}: klav.js needs Node >= 20, found {major}");
        return None;
    }
    Some(major)
}

/// `node --test` on `files` (paths under the repository), with the server's
/// URL and the users' tokens in the environment. Node's report goes straight
/// to the test's output as it runs.
fn node_test(major: u32, files: &[String], url: &str, tokens: serde_json::Value) -> Command {
    let mut cmd = Command::new("node");
    if major < 22 {
        cmd.arg("--experimental-websocket");
    }
    cmd.arg("--test")
        .arg("--test-reporter=spec")
        .arg("--test-force-exit")
        .args(files)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .env("KLAV_URL", url)
        .env("KLAV_TOKENS", tokens.to_string())
        .env("KLAV_PASSWORD", PASSWORD);
    cmd
}

#[test]
fn klav_js_node_tests() {
    let Some(major) = usable_node("klav_js_node_tests") else {
        return;
    };
    // `close` so that a connection is told `token_expiring` and the library's
    // refresh can be seen; tokens from `/login` live an hour, so no other test
    // meets it.
    let s = TestServer::with(|c| c.ws_token_expiry_close = true);
    let mut tokens = serde_json::Map::new();
    for u in USERS {
        tokens.insert((*u).to_string(), s.user(u).into());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `KLAV_JS_TESTS=resume` runs only the files whose names contain it.
    let only = std::env::var("KLAV_JS_TESTS").unwrap_or_default();
    let mut files: Vec<String> = std::fs::read_dir(root.join("web/tests"))
        .expect("web/tests")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            (name.ends_with(".test.mjs") && name.contains(only.as_str()))
                .then(|| format!("web/tests/{name}"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no Node tests under web/tests");
    let status = node_test(
        major,
        &files,
        &format!("http://{}", s.addr),
        serde_json::Value::Object(tokens),
    )
    // A token that expires within the minute: the server says
    // `token_expiring` as soon as a connection opens with it.
    .env("KLAV_SHORT_TOKEN", mint("lea", 45))
    .status()
    .expect("run node --test");
    assert!(
        status.success(),
        "node --test failed ({status}): see its report above"
    );
}

/// Exactly once across real restarts and node switches: two cluster nodes
/// behind a proxy that sends each new connection to the next node; while
/// `web/tests/restarts.fault.mjs` sends 300 messages from two clients and a
/// third listens, the nodes are killed (`SIGKILL`) or stopped (`SIGTERM`) one
/// after the other and started again. Node checks that each send resolved
/// once, that history and every receiver hold each message once and in id
/// order; here the database is checked as well.
#[test]
fn klav_js_exactly_once_across_restarts_and_nodes() {
    let Some(major) = usable_node("klav_js_exactly_once_across_restarts_and_nodes") else {
        return;
    };
    let mut c = Nodes::start(2);
    let mut tokens = serde_json::Map::new();
    for u in ["fay", "gus", "hal"] {
        tokens.insert(u.to_string(), c.user(u).into());
    }
    let proxy = SwitchProxy::start(vec![c.addr(0), c.addr(1)]);
    let mut node = node_test(
        major,
        &["web/tests/restarts.fault.mjs".to_string()],
        &format!("http://{}", proxy.addr),
        serde_json::Value::Object(tokens),
    )
    .spawn()
    .expect("run node --test");

    // Restart one node after the other until Node is done: every other round
    // a kill, which leaves commits unacknowledged, else a graceful stop.
    let mut restarts = 0;
    let status = loop {
        std::thread::sleep(Duration::from_millis(400));
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        let i = restarts % 2;
        proxy.set(i, None);
        if restarts % 4 < 2 {
            c.node_mut(i).signal(libc::SIGKILL);
            c.node_mut(i).wait_exit(WAIT).expect("killed node exits");
        } else {
            c.node_mut(i).terminate();
        }
        c.respawn(i);
        proxy.set(i, Some(c.addr(i)));
        restarts += 1;
    };
    assert!(
        status.success(),
        "node --test failed ({status}): see its report above"
    );
    assert!(restarts >= 4, "only {restarts} restarts happened");
    let taken = proxy.taken();
    assert!(
        taken.iter().all(|&n| n >= 3),
        "connections by node: {taken:?}"
    );
    // The database holds each text once.
    let mut db = c.db();
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT text) FROM chat_logs \
             WHERE kind = 'msg' AND text LIKE '% restart #%'",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (300, 300));
}
