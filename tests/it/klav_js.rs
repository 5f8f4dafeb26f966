//! The client library `web/klav.js`, tested by its own Node tests
//! (`web/tests/*.test.mjs`, run with `node --test`) against a real server: this
//! test starts the server, registers the users the Node tests act as and hands
//! them the URL and tokens through the environment. It fails when any Node test
//! fails, and is skipped (with a message) only when `node` is not installed
//! or older than 20.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// The users the Node tests share; each test file keeps to its own.
const USERS: &[&str] = &[
    "ana", "ben", "cleo", "dov", "eli", "fay", "gus", "hal", "ivy", "jon", "kit", "lea",
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

#[test]
fn klav_js_node_tests() {
    let Some(major) = node_major() else {
        eprintln!(
            "SKIPPED klav_js_node_tests: `node` is not installed (Node >= 20 runs web/tests)"
        );
        return;
    };
    if major < 20 {
        // A distribution's older Node (Debian 12 ships 18) has no WebSocket,
        // which the library needs from the runtime.
        eprintln!("SKIPPED klav_js_node_tests: klav.js needs Node >= 20, found {major}");
        return;
    }
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
    let mut cmd = Command::new("node");
    if major < 22 {
        cmd.arg("--experimental-websocket");
    }
    // Node's report goes straight to the test's output as it runs.
    let status = cmd
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg("--test-force-exit")
        .args(&files)
        .current_dir(root)
        .env("KLAV_URL", format!("http://{}", s.addr))
        .env("KLAV_TOKENS", serde_json::Value::Object(tokens).to_string())
        .env("KLAV_PASSWORD", PASSWORD)
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
