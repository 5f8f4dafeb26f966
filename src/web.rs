//! The browser client: the files under `web/`, embedded in the binary and served
//! from memory by the loop at `/`, `/app.js`, `/app.css`, the favicon, and the
//! client library `/klav.js` (which `app.js` imports as an ES module, and apps of
//! their own may load too; like every other file here it is 404 with `KLAV_WEB=off`).
//!
//! Every response is built once (at start, or on the first request) with its headers, a strong
//! `ETag` (a hash of the bytes) and `Cache-Control: no-cache`, so a page load costs
//! the loop one copy of prebuilt bytes and a revalidation costs a `304` of a few
//! hundred bytes. Only the page itself varies per request: its
//! `Content-Security-Policy` names the page's own `ws:`/`wss:` origin (taken from
//! `Host`), which `connect-src 'self'` does not cover in every browser.

use std::borrow::Cow;
use std::sync::OnceLock;

use crate::http::Request;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// The HTML page: gets the full per-request `Content-Security-Policy`.
    document: bool,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../web/index.html"),
        document: true,
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../web/app.js"),
        document: false,
    },
    // The client library (docs/protocol.md, "Writing a client").
    Asset {
        path: "/klav.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../web/klav.js"),
        document: false,
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../web/app.css"),
        document: false,
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../web/favicon.svg"),
        document: false,
    },
    // Browsers that ignore `<link rel="icon">` ask for this name; same image.
    Asset {
        path: "/favicon.ico",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../web/favicon.svg"),
        document: false,
    },
];

/// What `Allow` lists for the client's paths.
pub const ALLOWED: &str = "GET, HEAD";

/// Headers every asset response carries besides type, length and validators.
const COMMON: &str = "Cache-Control: no-cache\r\n\
                      X-Content-Type-Options: nosniff\r\n\
                      Referrer-Policy: no-referrer\r\n\
                      X-Frame-Options: DENY\r\n";

/// The policy for the page, up to `connect-src 'self'`; the page's WebSocket
/// origins and the rest follow per request.
const CSP_HEAD: &str = "Content-Security-Policy: default-src 'self'; script-src 'self'; \
                        style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; \
                        form-action 'self'; frame-ancestors 'none'; connect-src 'self'";
/// The policy for everything that is not the page: it loads nothing.
const CSP_RESOURCE: &str =
    "Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n";

/// An asset's responses, built once.
struct Prebuilt {
    path: &'static str,
    etag: String,
    document: bool,
    /// `200`, headers then body, for keep-alive (`[0]`) and `Connection: close`
    /// (`[1]`). For the page the headers stop before its `Content-Security-Policy`
    /// (at `head_split`), which is spliced in per request.
    ok: [Vec<u8>; 2],
    /// Where the head ends (the body starts) in `ok[i]`; a `HEAD` sends up to here.
    head_len: [usize; 2],
    /// For the page: where the per-request policy goes in `ok[i]`.
    head_split: [usize; 2],
    /// `304`, keep-alive and close.
    not_modified: [Vec<u8>; 2],
}

fn table() -> &'static [Prebuilt] {
    static TABLE: OnceLock<Vec<Prebuilt>> = OnceLock::new();
    TABLE.get_or_init(|| ASSETS.iter().map(build_responses).collect())
}

/// A strong validator: FNV-1a (64 bit) of the bytes, with the length.
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}-{:x}\"", bytes.len())
}

fn build_responses(a: &Asset) -> Prebuilt {
    let etag = etag(a.bytes);
    let build = |keep_alive: bool| {
        let mut head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nETag: {etag}\r\n{COMMON}",
            a.content_type,
            a.bytes.len()
        );
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        let split = head.len();
        if !a.document {
            head.push_str(CSP_RESOURCE);
        }
        head.push_str("\r\n");
        let head_len = head.len();
        let mut out = head.into_bytes();
        out.extend_from_slice(a.bytes);
        (out, head_len, split)
    };
    let (ka, ka_head, ka_split) = build(true);
    let (close, close_head, close_split) = build(false);
    let nm = |keep_alive: bool| {
        let mut s = format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n{COMMON}");
        if !keep_alive {
            s.push_str("Connection: close\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    Prebuilt {
        path: a.path,
        document: a.document,
        ok: [ka, close],
        head_len: [ka_head, close_head],
        head_split: [ka_split, close_split],
        not_modified: [nm(true), nm(false)],
        etag,
    }
}

/// Builds every response now (otherwise the first request does).
pub fn prebuild() {
    table();
}

/// Whether `path` is one of the client's files.
pub fn is_asset(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The response to a `GET` or `HEAD` of one of the client's files; `None` when the
/// path is not one (the caller answers 404) — the method is the caller's to check.
/// Borrowed from the prebuilt table except for the page (its policy names `Host`).
pub fn serve(req: &Request) -> Option<Cow<'static, [u8]>> {
    let asset = table().iter().find(|p| p.path == req.path)?;
    let k = usize::from(!req.keep_alive);
    if req
        .header("if-none-match")
        .is_some_and(|v| etag_matches(v, &asset.etag))
    {
        return Some(Cow::Borrowed(&asset.not_modified[k]));
    }
    let full = &asset.ok[k];
    let end = if req.method == "HEAD" {
        asset.head_len[k]
    } else {
        full.len()
    };
    if !asset.document {
        return Some(Cow::Borrowed(&full[..end]));
    }
    let split = asset.head_split[k];
    let csp = document_csp(req.header("host"));
    let mut out = Vec::with_capacity(end + csp.len());
    out.extend_from_slice(&full[..split]);
    out.extend_from_slice(csp.as_bytes());
    out.extend_from_slice(&full[split..end]);
    Some(Cow::Owned(out))
}

/// The answer to any request for one of the client's files: the file for
/// `GET` and `HEAD`, 405 with `Allow` for other methods, 404 for a path that is
/// not one.
pub fn response(req: &Request) -> Cow<'static, [u8]> {
    let ka = req.keep_alive;
    let served = match req.method.as_str() {
        "GET" | "HEAD" => serve(req),
        _ if is_asset(&req.path) => None,
        _ => return Cow::Owned(crate::http::error(404, "not found", ka)),
    };
    served.unwrap_or_else(|| {
        if !is_asset(&req.path) {
            return Cow::Owned(crate::http::error(404, "not found", ka));
        }
        Cow::Owned(crate::http::response(
            405,
            "application/json",
            br#"{"detail":"method not allowed"}"#,
            ka,
            &[("Allow", ALLOWED.to_string())],
        ))
    })
}

/// `If-None-Match`: `*` or a list of entity tags, compared weakly (RFC 9110 13.1.2).
fn etag_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// The page's policy, with `ws://host wss://host` when `Host` is a plain host name
/// or address (anything else would let a client write into the header).
fn document_csp(host: Option<&str>) -> String {
    let host = host.filter(|h| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    match host {
        Some(h) => format!("{CSP_HEAD} ws://{h} wss://{h}\r\n"),
        None => format!("{CSP_HEAD}\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Request {
        crate::http::parse(raw.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn page_carries_policy_for_its_own_origin() {
        let r = serve(&req("GET / HTTP/1.1\r\nHost: chat.example:5000\r\n\r\n")).unwrap();
        let text = String::from_utf8(r.into_owned()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(
            text.contains("connect-src 'self' ws://chat.example:5000 wss://chat.example:5000\r\n")
        );
        assert!(text.contains("frame-ancestors 'none'"));
        assert!(!text.contains("Connection: close"));
        assert!(text.contains("<!doctype html>"));
    }

    #[test]
    fn hostile_host_is_left_out_of_the_policy() {
        let r = serve(&req("GET / HTTP/1.1\r\nHost: a b;script-src *\r\n\r\n")).unwrap();
        let text = String::from_utf8(r.into_owned()).unwrap();
        assert!(text.contains("connect-src 'self'\r\n"), "{text}");
    }

    #[test]
    fn head_and_revalidation() {
        let full = serve(&req("GET /app.js HTTP/1.1\r\n\r\n")).unwrap();
        let head = serve(&req("HEAD /app.js HTTP/1.1\r\nConnection: close\r\n\r\n")).unwrap();
        let head = String::from_utf8(head.into_owned()).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Connection: close"));
        assert!(full.len() > head.len());
        let tag = head
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .unwrap()
            .to_string();
        let nm = serve(&req(&format!(
            "GET /app.js HTTP/1.1\r\nIf-None-Match: \"x\", W/{tag}\r\n\r\n"
        )))
        .unwrap();
        assert!(nm.starts_with(b"HTTP/1.1 304"));
        assert!(serve(&req("GET /nope HTTP/1.1\r\n\r\n")).is_none());
    }

    #[test]
    fn client_library_served_like_the_other_scripts() {
        let r = serve(&req("GET /klav.js HTTP/1.1\r\n\r\n")).unwrap();
        let text = String::from_utf8(r.into_owned()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: text/javascript; charset=utf-8\r\n"));
        assert!(text.contains("Cache-Control: no-cache\r\n"));
        assert!(text.contains("X-Content-Type-Options: nosniff\r\n"));
        assert!(text
            .contains("Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n"));
        assert!(text.contains("export class Klav"));
        let tag = text
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .unwrap()
            .to_string();
        let nm = serve(&req(&format!(
            "GET /klav.js HTTP/1.1\r\nIf-None-Match: {tag}\r\n\r\n"
        )))
        .unwrap();
        assert!(nm.starts_with(b"HTTP/1.1 304"));
        assert!(is_asset("/klav.js"));
    }
}
