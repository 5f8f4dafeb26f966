//! The web client's files served at `/`: content types, the content security
//! policy, ETags and revalidation, `HEAD`, and `KLAV_WEB=off`, in process and
//! from the binary.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::harness::*;

#[test]
fn web_assets_cached_with_policy_and_switchable() {
    let s = TestServer::start();
    let mut sock = connect(s.addr);
    write!(
        sock,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        s.addr.port()
    )
    .unwrap();
    let page = read_response(&mut sock).unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        &format!(
            "connect-src 'self' ws://127.0.0.1:{0} wss://127.0.0.1:{0}",
            s.addr.port()
        ),
    ] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(page.body.contains("data-testid=\"message-list\""));
    assert!(!page.body.contains("<script>"), "no inline script");
    let etag = page.header("etag").unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    // Revalidation on the same keep-alive connection: 304, no body.
    write!(sock, "GET / HTTP/1.1\r\nIf-None-Match: {etag}\r\n\r\n").unwrap();
    let nm = read_response(&mut sock).unwrap();
    assert_eq!((nm.status, nm.body.as_str()), (304, ""));
    assert_eq!(nm.header("etag"), Some(etag.as_str()));
    for (path, ctype) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/klav.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let r = s.http("GET", path, None);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ctype), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert!(!r.body.is_empty());
        assert_ne!(
            r.header("etag"),
            Some(etag.as_str()),
            "{path} has its own tag"
        );
    }
    // HEAD: the headers of a GET, no body, and the connection stays usable.
    write!(
        sock,
        "HEAD /app.js HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n"
    )
    .unwrap();
    let head = read_headers_only(&mut sock);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Length: "), "{head}");
    let health = read_response(&mut sock).unwrap();
    assert_eq!(health.status, 200);
    let r = s.http("POST", "/", Some("{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(s.http("GET", "/index.html", None).status, 404);

    let off = TestServer::with(|c| c.web = false);
    for path in ["/", "/app.js", "/klav.js", "/favicon.svg"] {
        assert_eq!(
            off.http("GET", path, None).status,
            404,
            "{path} with KLAV_WEB=off"
        );
    }
    assert_eq!(off.http("GET", "/health", None).status, 200);
}

/// A response head (for `HEAD`, whose `Content-Length` announces no body).
fn read_headers_only(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed");
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

#[test]
fn web_binary_serves_the_client_unless_turned_off() {
    let dir = scratch_dir("web");
    let url = pg().fresh_db();
    let mut k = spawn_klav(&dir, &[("DATABASE_URL", &url)]);
    let r = http_to(k.addr, "GET", "/", None);
    assert_eq!(r.status, 200);
    assert!(r
        .body
        .contains("<script type=\"module\" src=\"/app.js\"></script>"));
    let announced = format!("web client: http://{}/", k.addr);
    k.wait_for_stderr(&announced, &format!("no {announced:?}"));
    assert!(k.terminate().success());

    let mut k = spawn_klav(&dir, &[("DATABASE_URL", &url), ("KLAV_WEB", "off")]);
    for path in ["/", "/app.js", "/app.css", "/favicon.svg"] {
        assert_eq!(http_to(k.addr, "GET", path, None).status, 404, "{path}");
    }
    assert_eq!(http_to(k.addr, "GET", "/health", None).status, 200);
    assert!(k.terminate().success());
    assert!(!k.full_stderr().contains("web client"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The whole page — index.html, app.js, app.css, klav.js and the favicon — stays
/// under 120 KiB uncompressed, and a browser loads five files: the page, its
/// stylesheet, its script, the library the script imports, and the icon (one
/// URL for the tab's icon and the logo) — the page before klav.js plus one.
#[test]
fn web_page_weight_and_requests_stay_small() {
    use crate::support::browser::{browser, open};

    let s = TestServer::start();
    let total: usize = ["/", "/app.js", "/app.css", "/klav.js", "/favicon.svg"]
        .iter()
        .map(|path| {
            let r = s.http("GET", path, None);
            assert_eq!(r.status, 200, "{path}");
            r.body.len()
        })
        .sum();
    assert!(total < 120 * 1024, "the page weighs {total} bytes");

    let (_one, b) = browser();
    let p = open(&b, &s);
    p.wait_for(
        "document.activeElement?.dataset.testid === 'login-username'",
        "the page ready",
    );
    let mut loaded: Vec<String> = serde_json::from_value(
        p.eval("performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)"),
    )
    .unwrap();
    loaded.sort();
    loaded.dedup();
    assert_eq!(loaded, ["/app.css", "/app.js", "/favicon.svg", "/klav.js"]);
    p.assert_clean("page");
}
