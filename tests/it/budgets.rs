//! Budgets: no client, logged in or not, makes klav hold more than its share —
//! of memory, of the hashing threads, of other users' logins, or of the database.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use klav::client_addr::TrustedProxies;
use klav::db::embedded::{Cluster, PASSWORD_FILE};
use klav::db::jobs::Registration;
use klav::db::queries::{self, Stmts};
use klav::db::{Job, Outcome};
use serde_json::{json, Value};

use crate::harness::*;

/// A POST from behind a proxy: `X-Forwarded-For: <client>`.
fn post_as(s: &TestServer, client: &str, path: &str, body: Value) -> Response {
    let mut c = connect(s.addr);
    let body = body.to_string();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut c).expect("a response")
}

fn login_as(s: &TestServer, client: &str, user: &str, password: &str) -> Response {
    post_as(
        s,
        client,
        "/login",
        json!({"username": user, "password": password}),
    )
}

fn behind_proxy(c: &mut klav::config::Config) {
    c.trusted_proxies = TrustedProxies::parse("127.0.0.1").unwrap();
}

/// A stored hash asking for 4 TiB, and one asking for 64 MiB × 200 passes: the
/// first aborted the process, the second held the hashing thread for seconds.
/// Both are refused as invalid credentials, without verifying, logged once each.
#[test]
fn crafted_argon2_parameters_are_refused_not_verified() {
    let url = pg().fresh_db();
    let dir = std::env::temp_dir().join(format!("klav-it-argon-{}", std::process::id()));
    let mut klav = spawn_klav(&dir, &[("DATABASE_URL", &url)]);
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let tail = "c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGg";
    for (user, params) in [
        ("bomb", "m=4294967295,t=1,p=1"),
        ("slow", "m=65536,t=200,p=1"),
    ] {
        db.execute(
            "INSERT INTO users (username, password) VALUES ($1, $2)",
            &[&user, &format!("$argon2id$v=19${params}${tail}")],
        )
        .unwrap();
    }
    let body = |u: &str| json!({"username": u, "password": "guess"}).to_string();
    for _ in 0..3 {
        for user in ["bomb", "slow"] {
            let t0 = Instant::now();
            let r = http_to(klav.addr, "POST", "/login", Some(&body(user)));
            assert_eq!(r.status, 401, "{user}: {}", r.body);
            assert_eq!(r.detail(), "invalid credentials");
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "{user} answered in {:?}",
                t0.elapsed()
            );
        }
    }
    assert!(klav.child.try_wait().unwrap().is_none(), "klav is alive");
    user_at(klav.addr, "fine");
    let log = klav.stderr();
    for user in ["bomb", "slow"] {
        let n = log
            .lines()
            .filter(|l| l.contains(&format!("user \"{user}\" cannot log in")))
            .count();
        assert_eq!(n, 1, "logged once for {user}:\n{log}");
    }
    assert!(klav.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `import-json` refuses a file whose argon2 hash is out of bounds, naming the
/// user, and writes nothing.
#[test]
fn import_refuses_out_of_bounds_hashes() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-sample");
    let dir = std::env::temp_dir().join(format!("klav-it-import-argon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["friends_state.json", "chat_state.json"] {
        std::fs::copy(sample.join(f), dir.join(f)).unwrap();
    }
    let mut users: Value =
        serde_json::from_slice(&std::fs::read(sample.join("users.json")).unwrap()).unwrap();
    let victim = users["userinfo"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    users["userinfo"][&victim]["password"] =
        json!("$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo");
    std::fs::write(dir.join("users.json"), users.to_string()).unwrap();

    let url = pg().fresh_db();
    let err = klav::import::import_dir(&url, &dir, false, &mut Vec::new())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(&format!("{victim:?}")) && err.contains("out of bounds"),
        "{err}"
    );
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let n: i64 = db
        .query_one("SELECT count(*) FROM users", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "all or nothing");
    let _ = std::fs::remove_dir_all(&dir);
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
            write!(
                c,
                "POST /register HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.9.{}.{}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                i / 250,
                i % 250,
                body.len()
            )
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

/// The worker retries a job once on a fresh connection when its connection broke
/// mid-query; if the first INSERT had committed, the retry must still say
/// CREATED to the user who was just created — and ALREADY to anyone else.
#[test]
fn register_retried_after_commit_is_still_created() {
    let url = pg().fresh_db();
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let job = |hash: &str| Job::Register {
        username: "mina".into(),
        password_hash: hash.into(),
        nickname: "mina".into(),
    };
    let created = |db: &mut postgres::Client, hash: &str| -> bool {
        match queries::run(db, &mut Stmts::default(), job(hash)).unwrap() {
            Outcome::Registered(r) => r == Registration::Created,
            other => panic!("{other:?}"),
        }
    };
    let mine = klav::auth::password::hash_password("pw");
    assert!(created(&mut db, &mine), "first attempt");
    assert!(created(&mut db, &mine), "the same request, retried");
    let theirs = klav::auth::password::hash_password("pw");
    assert!(!created(&mut db, &theirs), "another request: ALREADY");
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
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("klav started with JWT_SECRET=x");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("JWT_SECRET") && err.contains("32"), "{err}");
    assert!(!err.contains("\"x\""), "the secret is not printed: {err}");
}

/// A token that is not valid yet (`nbf` in the future) is refused.
#[test]
fn token_not_yet_valid_is_refused() {
    let s = TestServer::start();
    s.user("alice");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mint = |nbf: u64| {
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice", "iat": now, "exp": now + 3600, "nbf": nbf}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    match Ws::connect(s.addr, &mint(now + 600)) {
        Err((status, body)) => {
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("not yet valid"), "{body}");
        }
        Ok(_) => panic!("a token valid only in ten minutes was accepted"),
    }
    assert!(Ws::connect(s.addr, &mint(now.saturating_sub(5))).is_ok());
}

/// `Content-Length` is digits only: `+2` is a 400, not a two-byte body.
#[test]
fn signed_content_length_is_400() {
    let s = TestServer::start();
    let mut c = connect(s.addr);
    c.write_all(b"POST /login HTTP/1.1\r\nHost: t\r\nContent-Length: +2\r\n\r\n{}")
        .unwrap();
    let r = read_response(&mut c).expect("a response");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(closed_within(&mut c, Duration::from_secs(2)));
}

/// A request trickled in byte by byte is still answered (its head is parsed
/// when lines end, its body once complete).
#[test]
fn trickled_request_is_answered() {
    let s = TestServer::start();
    s.user("tr");
    let body = json!({"username": "tr", "password": PASSWORD}).to_string();
    let raw = format!(
        "POST /login HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\nContent-Length: {}\r\n\r\n{body}",
        "p".repeat(2000),
        body.len()
    );
    let mut c = connect(s.addr);
    for chunk in raw.as_bytes().chunks(7) {
        c.write_all(chunk).unwrap();
    }
    let r = read_response(&mut c).expect("a response");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The embedded cluster is klav's alone: owner-only directories and socket, and
/// a password; a cluster made by an earlier version with `trust` is converted.
#[test]
fn embedded_cluster_is_private() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("klav-it-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    watchdog(&dir);
    let mut cluster = Cluster::start(&dir, &test_cluster_options()).unwrap();
    check_private(&cluster, &dir);
    cluster.stop().unwrap();
    drop(cluster);

    // What an earlier version left: trust authentication, no password file, open
    // directories.
    std::fs::write(
        dir.join("pg/pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    std::fs::remove_file(dir.join(PASSWORD_FILE)).unwrap();
    for d in [dir.clone(), dir.join("run")] {
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let cluster = Cluster::start(&dir, &test_cluster_options()).unwrap();
    check_private(&cluster, &dir);
    let hba = std::fs::read_to_string(dir.join("pg/pg_hba.conf")).unwrap();
    assert!(!hba.contains("trust"), "{hba}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

fn check_private(cluster: &Cluster, dir: &Path) {
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "data directory");
    assert_eq!(mode(&dir.join("pg")), 0o700, "cluster directory");
    assert_eq!(mode(cluster.socket_dir()), 0o700, "socket directory");
    assert_eq!(mode(&dir.join(PASSWORD_FILE)), 0o600, "password file");
    assert_eq!(
        mode(&cluster.socket_dir().join(".s.PGSQL.5432")),
        0o700,
        "socket"
    );
    // klav's URL works; the same without the password does not.
    let url = cluster.url("postgres");
    postgres::Client::connect(&url, postgres::NoTls).expect("klav connects");
    let no_password = format!(
        "postgresql://postgres@localhost/postgres?host={}&port=5432",
        cluster.socket_dir().display()
    );
    assert!(postgres::Client::connect(&no_password, postgres::NoTls).is_err());
    // Another local user cannot even reach the socket.
    if unsafe { libc::geteuid() } == 0 {
        let out = Command::new("runuser")
            .args(["-u", "nobody", "--", "psql", "-w", "-h"])
            .arg(cluster.socket_dir())
            .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
            .current_dir("/")
            .output()
            .expect("runuser and psql");
        assert!(
            !out.status.success(),
            "nobody connected: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Permission denied") || err.contains("password"),
            "{err}"
        );
    }
}

/// A data directory too long for a socket name puts the socket under /tmp, in a
/// directory created owner-only; one planted there by another user is refused.
#[test]
fn tmp_socket_dir_is_owner_only_and_checked() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        return;
    }
    let base = std::env::temp_dir().join(format!("klav-it-long-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    watchdog(&base);
    let dir = base.join("d".repeat(100));
    let cluster = Cluster::start(&dir, &test_cluster_options()).unwrap();
    let socket_dir = cluster.socket_dir().to_path_buf();
    assert!(
        socket_dir.to_string_lossy().starts_with("/tmp/klav-"),
        "{}",
        socket_dir.display()
    );
    let meta = std::fs::metadata(&socket_dir).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    postgres::Client::connect(&cluster.url("postgres"), postgres::NoTls).expect("connects");
    drop(cluster);

    if unsafe { libc::geteuid() } == 0 {
        // Someone else got there first.
        std::fs::remove_dir_all(&socket_dir).unwrap();
        std::fs::create_dir(&socket_dir).unwrap();
        std::os::unix::fs::chown(&socket_dir, Some(65534), Some(65534)).unwrap();
        let err = Cluster::start(&dir, &test_cluster_options())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&socket_dir);
    let _ = std::fs::remove_dir_all(&base);
}

/// `/metrics` is kilobytes of text for a few bytes asked: on the public port
/// each client address gets a scraper's share (a burst of ten, then one a
/// second); past it 429 with `Retry-After` and the connection closes, so a
/// pipeline of them costs one refusal. Another address keeps its own share.
#[test]
fn public_metrics_have_a_budget_per_address() {
    let s = TestServer::with(|c| c.metrics_per_addr_per_sec = 1);
    let get = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut p = connect_from([127, 0, 0, 2], s.addr);
    p.write_all(&get.repeat(40)).unwrap();
    let mut statuses = Vec::new();
    while let Some(r) = read_response(&mut p) {
        if r.status == 429 {
            assert!(r.header("retry-after").is_some(), "{r:?}");
            assert!(r.detail().contains("KLAV_METRICS_ADDR"), "{r:?}");
        } else {
            assert!(r.body.contains("klav_open_connections"), "{r:?}");
        }
        statuses.push(r.status);
    }
    let mut expected = vec![200; 10];
    expected.push(429);
    assert_eq!(statuses, expected);
    assert!(closed_within(&mut p, WAIT), "closed after the refusal");

    for _ in 0..3 {
        let mut c = connect_from([127, 0, 0, 3], s.addr);
        c.write_all(get).unwrap();
        assert_eq!(read_response(&mut c).unwrap().status, 200);
    }
    let mut again = connect_from([127, 0, 0, 2], s.addr);
    again.write_all(get).unwrap();
    let r = read_response(&mut again).unwrap();
    // Its bucket refills at one a second: at most one more got through.
    assert!(r.status == 429 || r.status == 200, "{r:?}");
}

/// With no time to read in a turn, every read goes through the queues of reads
/// put off to later turns (open sessions, everything else, connections that
/// used their share): nothing is lost, doubled or reordered. Readiness is
/// edge-triggered and comes once, so an entry dropped from a queue would stall
/// its connection for good.
#[test]
fn reads_put_off_to_later_turns_lose_nothing() {
    many_clients_at_once_lose_nothing(Duration::ZERO);
}

/// The same with the usual turn: 600 pipelined answers of a 32 KB web asset
/// pass a turn's 256 KiB of HTTP responses many times over, and each
/// connection's 150 messages its share of a turn.
#[test]
fn per_turn_budgets_lose_nothing() {
    many_clients_at_once_lose_nothing(klav::config::Config::defaults().turn_work);
}

/// Three members each send 150 messages at once while 40 HTTP clients pipeline
/// 30 requests each; everyone gets everything, in order.
fn many_clients_at_once_lose_nothing(turn_work: Duration) {
    let s = TestServer::with(|c| {
        c.turn_work = turn_work;
        c.rate_per_sec = 100_000.0;
        c.rate_burst = 100_000.0;
    });
    const SENDERS: usize = 3;
    const EACH: usize = 150;
    let mut members: Vec<Ws> = (0..SENDERS).map(|i| s.client(&format!("q{i}"))).collect();
    let room = members[0].create_room("queues");
    for m in &mut members {
        m.join(&room);
    }
    // HTTP clients pipelining at the same time (each answered in order), half
    // of them asking for a web asset: more than a turn's 256 KiB of responses.
    let script_len = s.http("GET", "/app.js", None).body.len();
    assert!(script_len > 8 * 1024, "{script_len}");
    let pipeline = |i: usize| -> Vec<u8> {
        let path = if i.is_multiple_of(2) {
            "/nope"
        } else {
            "/app.js"
        };
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
            .repeat(30)
            .into_bytes()
    };
    let mut pipelines: Vec<TcpStream> = (0..40)
        .map(|i| {
            let mut c = connect(s.addr);
            c.write_all(&pipeline(i)).unwrap();
            c
        })
        .collect();
    // Each member sends more at once than a connection reads in one turn (64).
    for (i, m) in members.iter_mut().enumerate() {
        for k in 0..EACH {
            let text = format!("{i}:{k}");
            m.sock
                .write(tungstenite::Message::text(
                    json!({"type": "msg", "room_id": room, "text": text}).to_string(),
                ))
                .unwrap();
        }
        m.sock.flush().unwrap();
    }
    for (who, m) in members.iter_mut().enumerate() {
        let mut next = [0usize; SENDERS];
        let mut last_id = 0i64;
        let mut got = 0;
        while got < SENDERS * EACH {
            let ev = m.recv();
            if ev["type"] != "message" {
                continue;
            }
            got += 1;
            let id = ev["id"].as_i64().expect("an id");
            assert!(
                id > last_id,
                "member {who}: ids in order: {id} after {last_id}"
            );
            last_id = id;
            let text = ev["text"].as_str().unwrap();
            let (i, k) = text.split_once(':').unwrap();
            let (i, k): (usize, usize) = (i.parse().unwrap(), k.parse().unwrap());
            assert_eq!(k, next[i], "member {who}: sender {i}'s messages in order");
            next[i] += 1;
        }
        assert_eq!(next, [EACH; SENDERS]);
        m.silent();
    }
    for (i, p) in pipelines.iter_mut().enumerate() {
        for _ in 0..30 {
            let r = read_response(p).expect("every answer");
            if i.is_multiple_of(2) {
                assert_eq!(r.status, 404);
            } else {
                assert_eq!((r.status, r.body.len()), (200, script_len));
            }
        }
    }
    assert!(
        metric(s.addr, "klav_reads_busy_total") > 0,
        "150 messages at once"
    );
    if turn_work.is_zero() {
        // Every read went through the queues, and they are empty now (but for
        // the read of this `/metrics` request itself).
        assert!(metric(s.addr, "klav_reads_put_off_total") > 0);
        for (queue, most) in [("sessions", 0), ("others", 1), ("busy", 0)] {
            let name = format!("klav_reads_waiting{{queue=\"{queue}\"}}");
            assert!(metric(s.addr, &name) <= most, "{name}");
        }
    }
}
