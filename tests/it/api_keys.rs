//! API keys as an operator and a backend meet them: `klav api-key create`,
//! `list` and `revoke`; every route of the server API with a good key, a
//! bad one and a revoked one; a key revoked on one node refused on another
//! within a second; each key's request budget; the OpenAPI document and the
//! routes the server answers, held together.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::api::*;
use crate::support::nodes::Nodes;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_cli_creates_lists_and_revokes_keys_and_the_server_follows() {
    let db = pg().fresh_db();
    let out = klav_api_key(&db, &["create", "backend"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let key = text(&out.stdout).trim().to_string();
    assert!(key.starts_with("klav_") && key.len() == 69, "{key:?}");
    assert!(
        text(&out.stderr).contains("shown this once"),
        "{}",
        text(&out.stderr)
    );
    // Only its hash is stored.
    let stored: i64 = connect_db(&db)
        .query_one(
            "SELECT count(*) FROM klav_api_keys WHERE position($1::bytea in key_hash) > 0",
            &[&key.as_bytes()],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    // A name is taken once; bad usage is told apart from failure.
    let again = klav_api_key(&db, &["create", "backend"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("exists"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(klav_api_key(&db, &["create"]).status.code(), Some(2));
    assert_eq!(klav_api_key(&db, &["frobnicate"]).status.code(), Some(2));
    let help = klav_api_key(&db, &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("klav api-key create NAME"));

    let list = text(&klav_api_key(&db, &["list"]).stdout);
    let line = list
        .lines()
        .find(|l| l.starts_with("backend\t"))
        .expect(&list);
    assert!(line.ends_with("\t-\tactive"), "never used yet: {line}");

    // The key works; its use is recorded.
    let s = TestServer::on_db(&db, |_| {});
    let path = "/api/v1/presence?users=nobody";
    assert_eq!(api(s.addr, Some(&key), "GET", path, None).status, 200);
    let list = text(&klav_api_key(&db, &["list"]).stdout);
    let line = list
        .lines()
        .find(|l| l.starts_with("backend\t"))
        .expect(&list);
    assert!(
        !line.contains("\t-\t") && line.ends_with("\tactive"),
        "{line}"
    );

    // Revoked: listed as such, refused by the server.
    let out = klav_api_key(&db, &["revoke", "backend"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        klav_api_key(&db, &["revoke", "backend"]).status.code(),
        Some(1)
    );
    assert_eq!(
        klav_api_key(&db, &["revoke", "nobody"]).status.code(),
        Some(1)
    );
    let list = text(&klav_api_key(&db, &["list"]).stdout);
    let line = list
        .lines()
        .find(|l| l.starts_with("backend\t"))
        .expect(&list);
    assert!(line.contains("\trevoked "), "{line}");
    eventually(Duration::from_secs(2), Duration::from_millis(50), || {
        let r = api(s.addr, Some(&key), "GET", path, None);
        match r.status {
            401 => Ok(()),
            other => Err(format!("a revoked key answered {other}")),
        }
    });
}

/// Each route, made concrete: method, path, body.
fn concrete_routes(room: &str) -> Vec<(&'static str, String, Option<Value>)> {
    klav::handlers::http::api::ROUTES
        .iter()
        .map(|(method, pattern, _)| {
            let path = pattern
                .replace("{room_id}", room)
                .replace("{username}", "bob");
            let path = match *pattern {
                "/api/v1/presence" => format!("{path}?users=bob"),
                _ => path,
            };
            let body = match (*method, *pattern) {
                ("POST", "/api/v1/users") => Some(json!({"username": "carol"})),
                ("POST", "/api/v1/tokens") => Some(json!({"username": "bob"})),
                ("POST", "/api/v1/rooms") => Some(json!({"name": "made"})),
                ("POST", p) if p.ends_with("/messages") => Some(json!({"text": "hi"})),
                _ => None,
            };
            (*method, path, body)
        })
        .collect()
}

#[test]
fn every_route_refuses_a_missing_a_bad_and_a_revoked_key_and_serves_a_good_one() {
    // Bad keys are slowed down per address (see the test below): not here.
    let s = TestServer::with(|c| {
        c.login_max_failures = 1_000;
        c.login_max_failures_per_addr = 1_000;
    });
    s.user("bob");
    let good = api_key(&s.db_url, "good");
    let revoked = api_key(&s.db_url, "revoked");
    klav::db::api_keys::revoke(&s.db_url, "revoked").unwrap();
    let room = api_ok(
        s.addr,
        &good,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "lobby"})),
        201,
    )["room_id"]
        .as_str()
        .unwrap()
        .to_string();
    let malformed = "klav_not-a-key";
    let unknown = format!("klav_{}", "0".repeat(64));
    let unauthorized0 = metric(s.addr, "klav_api_unauthorized_total");
    let requests0 = metric(s.addr, "klav_api_requests_total");
    let mut counted = 0;
    for (method, path, body) in concrete_routes(&room) {
        if path == "/api/v1/openapi.json" {
            // The document is public.
            assert_eq!(api(s.addr, None, method, &path, None).status, 200);
            continue;
        }
        for key in [
            None,
            Some(malformed),
            Some(unknown.as_str()),
            Some(revoked.as_str()),
        ] {
            let r = api(s.addr, key, method, &path, body.clone());
            assert_eq!(r.status, 401, "{method} {path} with {key:?}: {}", r.body);
            assert_eq!(r.json()["code"], "UNAUTHORIZED", "{}", r.body);
            assert!(r.detail().len() > 5, "{}", r.body);
            assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
        }
        counted += 1;
        let r = api(s.addr, Some(&good), method, &path, body.clone());
        assert!(
            (200..300).contains(&r.status),
            "{method} {path} with a good key: {} {}",
            r.status,
            r.body
        );
    }
    let unauthorized = metric(s.addr, "klav_api_unauthorized_total") - unauthorized0;
    let requests = metric(s.addr, "klav_api_requests_total") - requests0;
    assert_eq!((unauthorized, requests), (4 * counted, counted));
}

#[test]
fn a_key_revoked_on_one_node_is_refused_on_the_other_within_a_second() {
    let c = Nodes::start(2);
    let key = api_key(&c.db, "backend");
    let path = "/api/v1/presence?users=bob";
    // Both nodes know the key live (and trust it for a while).
    for i in 0..2 {
        assert_eq!(api(c.addr(i), Some(&key), "GET", path, None).status, 200);
    }
    let out = klav_api_key(&c.db, &["revoke", "backend"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let revoked_at = Instant::now();
    // A second, and as much again for a machine shared with other builds.
    eventually(Duration::from_secs(2), Duration::from_millis(20), || {
        let r = api(c.addr(1), Some(&key), "GET", path, None);
        match r.status {
            401 => Ok(()),
            other => Err(format!(
                "node n1 still answers {other} {:?} after the revocation",
                revoked_at.elapsed()
            )),
        }
    });
    assert_eq!(api(c.addr(0), Some(&key), "GET", path, None).status, 401);
}

#[test]
fn each_key_has_its_own_request_budget() {
    let s = TestServer::with(|c| {
        c.api_rate = 1;
        c.api_burst = 3;
    });
    let (a, b) = (api_key(&s.db_url, "a"), api_key(&s.db_url, "b"));
    let path = "/api/v1/presence?users=x";
    for _ in 0..3 {
        assert_eq!(api(s.addr, Some(&a), "GET", path, None).status, 200);
    }
    let r = api(s.addr, Some(&a), "GET", path, None);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (429, Some("RATE_LIMITED")),
        "{}",
        r.body
    );
    let wait: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    // Another key is not held up by it.
    assert_eq!(api(s.addr, Some(&b), "GET", path, None).status, 200);
    // And the budget refills.
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(200),
        || match api(s.addr, Some(&a), "GET", path, None).status {
            200 => Ok(()),
            other => Err(format!("still {other}")),
        },
    );
}

#[test]
fn an_address_that_presents_bad_keys_is_slowed_down_before_anything_is_read() {
    let s = TestServer::with(|c| {
        c.login_max_failures = 2;
        c.login_max_failures_per_addr = 1_000;
    });
    let good = api_key(&s.db_url, "good");
    let path = "/api/v1/presence?users=x";
    let bad = format!("klav_{}", "1".repeat(64));
    let from = |src: [u8; 4], key: &str| {
        let auth = format!("Bearer {key}");
        let req = http_request(
            "GET",
            path,
            &[("Authorization", &auth), ("Connection", "close")],
            "",
        );
        exchange(&mut connect_from(src, s.addr), &req)
    };
    for key in [bad.as_str(), "klav_malformed", bad.as_str()] {
        assert_eq!(from([127, 0, 0, 7], key).status, 401);
    }
    let r = from([127, 0, 0, 7], &bad);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (429, Some("RATE_LIMITED")),
        "{}",
        r.body
    );
    assert!(r.header("Retry-After").is_some());
    // Nothing was asked of the database for it; other addresses are not held up.
    assert_eq!(from([127, 0, 0, 8], &bad).status, 401);
    assert_eq!(from([127, 0, 0, 8], &good).status, 200);
    // A key this node found live lately is served without the check.
    assert_eq!(from([127, 0, 0, 7], &good).status, 200);
}

#[test]
fn bodies_are_limited_as_for_register() {
    let s = TestServer::start();
    let key = api_key(&s.db_url, "k");
    let big = json!({"username": "x".repeat(klav::http::MAX_BODY)});
    let r = api(s.addr, Some(&key), "POST", "/api/v1/users", Some(big));
    assert_eq!(r.status, 413, "{}", r.body);
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_the_server_answers() {
    let s = TestServer::start();
    let r = api(s.addr, None, "GET", "/api/v1/openapi.json", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = klav::handlers::http::api::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed);
    // Every route is answered (without a key: 401, not 404), and nothing else
    // under the prefix is.
    for (method, path, body) in concrete_routes("r_00000000") {
        let r = api(s.addr, None, method, &path, body);
        assert!(matches!(r.status, 200 | 401), "{method} {path}: {}", r.body);
    }
    let r = api(s.addr, None, "GET", "/api/v1/rooms/r_1/nothing", None);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let r = api(s.addr, None, "GET", "/api/v1/rooms", None);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (405, Some("METHOD_NOT_ALLOWED"))
    );
    assert_eq!(r.header("Allow"), Some("POST"));
}
