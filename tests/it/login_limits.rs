//! Budgets on the doors to an account: registrations per address, hashing kept
//! for logins under a flood of registrations, failed logins backing off per
//! (username, address) and per address, and the client address behind a
//! trusted proxy.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use klav::client_addr::TrustedProxies;
use serde_json::{json, Value};

use crate::harness::*;

/// A POST from behind a proxy: `X-Forwarded-For: <client>`.
fn post_as(s: &TestServer, client: &str, path: &str, body: Value) -> Response {
    let headers = [("X-Forwarded-For", client), ("Connection", "close")];
    exchange(
        &mut connect(s.addr),
        &http_request("POST", path, &headers, &body.to_string()),
    )
}

/// A login from behind a proxy (see [`post_as`]).
fn login_as(s: &TestServer, client: &str, user: &str, password: &str) -> Response {
    post_as(
        s,
        client,
        "/login",
        json!({"username": user, "password": password}),
    )
}

/// Trusts the loopback address as a proxy: `X-Forwarded-For` names the client.
fn behind_proxy(c: &mut klav::config::Config) {
    c.trusted_proxies = TrustedProxies::parse("127.0.0.1").unwrap();
}

/// A login from a loopback address of our choosing (see [`connect_from`]).
fn login_from(src: [u8; 4], addr: SocketAddr, user: &str, password: &str) -> Response {
    let body = json!({"username": user, "password": password}).to_string();
    let request = http_request("POST", "/login", &[("Connection", "close")], &body);
    exchange(&mut connect_from(src, addr), &request)
}

/// One address cannot register without limit (429 + Retry-After), a taken name
/// costs no hash, and a flood of registrations leaves logins answered promptly.
#[test]
fn registration_is_budgeted_per_address() {
    let s = TestServer::with(|c| {
        c.register_per_addr = 3;
        behind_proxy(c);
    });
    for i in 0..3 {
        let r = post_as(
            &s,
            "203.0.113.1",
            "/register",
            json!({"username": format!("r{i}"), "password": PASSWORD}),
        );
        assert_eq!(r.json()["status"], "CREATED", "{}", r.body);
    }
    let r = post_as(
        &s,
        "203.0.113.1",
        "/register",
        json!({"username": "r9", "password": PASSWORD}),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=600).contains(&wait), "{wait}");
    // Another address has its own budget; logins are not affected.
    let r = post_as(
        &s,
        "203.0.113.2",
        "/register",
        json!({"username": "r9", "password": PASSWORD}),
    );
    assert_eq!(r.json()["status"], "CREATED");
    assert_eq!(login_as(&s, "203.0.113.1", "r0", PASSWORD).status, 200);

    // A taken name is answered from the database alone.
    let hashed = metric(s.addr, "klav_register_hashes_total");
    assert_eq!(hashed, 4);
    for n in 0..3 {
        let r = post_as(
            &s,
            &format!("198.51.100.{n}"),
            "/register",
            json!({"username": "r0", "password": "other"}),
        );
        assert_eq!(r.json()["status"], "ALREADY");
    }
    assert_eq!(metric(s.addr, "klav_register_hashes_total"), hashed);
}

/// Hundreds of registrations at once (from many addresses) do not queue ahead of
/// logins: past a few per hashing thread they get 503 + Retry-After, and a login
/// is answered meanwhile in well under a second.
#[test]
fn registration_flood_leaves_hashing_for_logins() {
    let s = TestServer::with(behind_proxy);
    s.user("owner");
    let mut socks: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut c = connect(s.addr);
            let body = json!({"username": format!("flood{i}"), "password": PASSWORD}).to_string();
            let client = format!("10.9.{}.{}", i / 250, i % 250);
            let headers = [
                ("X-Forwarded-For", client.as_str()),
                ("Connection", "close"),
            ];
            c.write_all(http_request("POST", "/register", &headers, &body).as_bytes())
                .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let r = s.login("owner", PASSWORD);
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    let (mut created, mut busy) = (0, 0);
    for c in socks.iter_mut() {
        let r = read_response(c).expect("a response");
        match r.status {
            200 => created += 1,
            503 => {
                assert!(r.header("Retry-After").is_some());
                busy += 1;
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    assert!(created >= 1 && busy >= 1, "created {created}, busy {busy}");
    assert!(took < Duration::from_millis(1500), "login took {took:?}");
}

/// Failures count per (username, address): a guesser elsewhere slows down (429
/// with a growing wait) while the owner, from their own address, logs in. The
/// address is the client's behind a trusted proxy, and the peer otherwise.
#[test]
fn failed_logins_back_off_per_user_and_address() {
    let s = TestServer::with(behind_proxy);
    s.user("owner");
    let guesser = "203.0.113.66";
    for _ in 0..6 {
        let r = login_as(&s, guesser, "owner", "wrong");
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = login_as(&s, guesser, "owner", PASSWORD);
    assert_eq!(r.status, 429, "the guesser waits: {}", r.body);
    assert_eq!(r.header("Retry-After"), Some("1"));
    // The owner, from elsewhere (and through the proxy without a header), is in.
    assert_eq!(login_as(&s, "198.51.100.7", "owner", PASSWORD).status, 200);
    assert_eq!(s.login("owner", PASSWORD).status, 200);
    // The wait grows with each further failure.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(login_as(&s, guesser, "owner", "wrong").status, 401);
    let r = login_as(&s, guesser, "owner", "wrong");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Retry-After"), Some("2"));

    // One address spraying many usernames is capped; others are not.
    let sprayer = "203.0.113.77";
    for i in 0..20 {
        assert_eq!(login_as(&s, sprayer, &format!("u{i}"), "x").status, 401);
    }
    assert_eq!(login_as(&s, sprayer, "owner", PASSWORD).status, 429);
    assert_eq!(login_as(&s, "198.51.100.8", "owner", PASSWORD).status, 200);
}

/// Without trusted proxies, `X-Forwarded-For` is the client's own claim and is
/// ignored: changing it does not reset the count.
#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let s = TestServer::start();
    s.user("owner");
    for i in 0..6 {
        let r = login_as(&s, &format!("10.0.0.{i}"), "owner", "wrong");
        assert_eq!(r.status, 401);
    }
    assert_eq!(login_as(&s, "10.0.0.99", "owner", PASSWORD).status, 429);
}

/// A username that could never be registered is refused before it becomes a
/// throttle key (or a query), however long it is.
#[test]
fn invalid_login_names_are_not_kept() {
    let s = TestServer::start();
    let huge = "a".repeat(60_000);
    for name in [huge.as_str(), "has space", "semi;colon"] {
        let r = s.login(name, PASSWORD);
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.detail(), "invalid credentials");
    }
    assert_eq!(metric(s.addr, "klav_login_throttle_keys"), 0);
    assert_eq!(s.login("nobody_here", PASSWORD).detail(), "not registered");
    assert_eq!(
        metric(s.addr, "klav_login_throttle_keys"),
        2,
        "the pair and the address"
    );
}

/// Failed logins are throttled per (username, client address) — past the free
/// failures each one doubles a wait — and per client address for any username,
/// with 429 + `Retry-After`; the owner elsewhere is not locked out, and a success
/// clears the pair's failures.
#[test]
fn failed_logins_are_throttled() {
    let s = TestServer::with(|c| {
        c.login_max_failures = 2;
        c.login_max_failures_per_addr = 5;
    });
    for u in ["victim", "bystander", "clearme", "guessed"] {
        assert_eq!(s.register(u, PASSWORD).status, 200);
    }
    let throttled = |r: &Response, what: &str| {
        assert_eq!(r.status, 429, "{what}: {}", r.body);
        let secs: u64 = r
            .header("Retry-After")
            .unwrap_or_else(|| panic!("{what}: no Retry-After"))
            .parse()
            .unwrap();
        assert!((1..=300).contains(&secs), "{what}: Retry-After {secs}");
    };

    // Per (username, address): two free failures, a third, then even the right
    // password waits there...
    for _ in 0..3 {
        assert_eq!(
            login_from([127, 0, 0, 2], s.addr, "victim", "wrong").status,
            401
        );
    }
    throttled(
        &login_from([127, 0, 0, 2], s.addr, "victim", PASSWORD),
        "same address",
    );
    // ...but not from the owner's own address.
    assert_eq!(
        login_from([127, 0, 0, 3], s.addr, "victim", PASSWORD).status,
        200
    );
    // That address is not throttled for other users.
    assert_eq!(
        login_from([127, 0, 0, 2], s.addr, "bystander", PASSWORD).status,
        200
    );

    // Per address: five failures over five usernames, then any username waits there.
    for i in 0..5 {
        assert_eq!(
            login_from([127, 0, 0, 4], s.addr, &format!("nobody{i}"), "x").status,
            401
        );
    }
    throttled(
        &login_from([127, 0, 0, 4], s.addr, "bystander", PASSWORD),
        "guessing address",
    );
    assert_eq!(
        login_from([127, 0, 0, 5], s.addr, "bystander", PASSWORD).status,
        200
    );

    // A success clears the pair's count: 2 failures, success, 2 failures, success.
    for _ in 0..2 {
        for _ in 0..2 {
            assert_eq!(
                login_from([127, 0, 0, 6], s.addr, "clearme", "wrong").status,
                401
            );
        }
        assert_eq!(
            login_from([127, 0, 0, 6], s.addr, "clearme", PASSWORD).status,
            200
        );
    }
    // Without a success in between, the same count throttles.
    for _ in 0..3 {
        assert_eq!(
            login_from([127, 0, 0, 7], s.addr, "guessed", "wrong").status,
            401
        );
    }
    throttled(
        &login_from([127, 0, 0, 7], s.addr, "guessed", PASSWORD),
        "no success between",
    );
}
