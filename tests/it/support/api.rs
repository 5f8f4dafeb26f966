//! The server API (`/api/v1/`) as a backend calls it: keys made in the
//! database (as `klav api-key create` makes them), requests with or without
//! one, and the `klav api-key` command itself.

use std::net::SocketAddr;
use std::process::Output;

use serde_json::Value;

use crate::harness::*;

/// A new API key named `name` in the database at `db`.
pub fn api_key(db: &str, name: &str) -> String {
    klav::db::api_keys::create(db, name).unwrap_or_else(|e| panic!("api key {name}: {e}"))
}

/// One API request to `addr` on a fresh connection, with `key` as its bearer
/// token (none: without `Authorization`).
pub fn api(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    exchange(
        &mut connect(addr),
        &http_request(method, path, &headers, &body),
    )
}

/// An API request that must answer `status`; its JSON body.
#[track_caller]
pub fn api_ok(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let r = api(addr, Some(key), method, path, body);
    assert_eq!(r.status, status, "{method} {path}: {}", r.body);
    r.json()
}

/// An API request that must fail with `status` and `code`; its `detail`.
#[track_caller]
pub fn api_err(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
    code: &str,
) -> String {
    let r = api(addr, Some(key), method, path, body);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (status, Some(code)),
        "{method} {path}: {}",
        r.body
    );
    r.detail()
}

/// `klav api-key ARGS` on the database at `db`, in an empty directory.
pub fn klav_api_key(db: &str, args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!("klav-it-api-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_klav"))
        .arg("api-key")
        .args(args)
        .current_dir(&dir)
        .env("DATABASE_URL", db)
        .output()
        .unwrap()
}
