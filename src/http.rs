//! HTTP/1.1 as far as Klav needs it: a request head parsed with `httparse` (CRLF
//! line ends only), a `Content-Length` body (`Expect: 100-continue` honoured),
//! keep-alive and pipelining, JSON responses, and the limits (8 KiB of headers,
//! 64 KiB of body).

use std::fmt;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// A request that cannot be served; each maps to a status and a `detail`.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpError {
    HeadTooLarge,
    BodyTooLarge,
    Malformed(&'static str),
    /// An `Expect` other than `100-continue`.
    Expectation,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::Malformed(_) => 400,
            HttpError::Expectation => 417,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadTooLarge => {
                write!(f, "request headers too large (limit {MAX_HEAD} bytes)")
            }
            HttpError::BodyTooLarge => write!(f, "request body too large (limit {MAX_BODY} bytes)"),
            HttpError::Malformed(why) => write!(f, "malformed request: {why}"),
            HttpError::Expectation => {
                write!(f, "unsupported Expect (only 100-continue is supported)")
            }
        }
    }
}

/// A complete request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl Request {
    /// A header's value (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header that may appear more than once, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header contains `token` (case-insensitively).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k)? == name)
                .then(|| percent_decode(v))
                .flatten()
        })
    }
}

/// Tries to take one request from the front of `buf`. `Ok(None)`: not complete yet.
/// On success also returns how many bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    Ok(match parse_step(buf)? {
        Step::Done(req, used) => Some((req, used)),
        Step::Partial | Step::NeedBytes { .. } => None,
    })
}

/// The interim response that tells a client sending `Expect: 100-continue` to
/// go on with its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How far a parse of the front of a buffer got.
enum Step {
    /// The head is not complete.
    Partial,
    /// The head is complete; the whole request needs this many bytes, and the
    /// client waits for [`CONTINUE`] before sending the rest.
    NeedBytes {
        needed: usize,
        expects_continue: bool,
    },
    Done(Request, usize),
}

/// Where parsing of the request at the front of a connection's buffer stopped, so
/// that a request trickling in a few bytes per read is not parsed again from its
/// first byte at every read: the head is parsed again only when a new line has
/// arrived (at most once per header line, and there are at most
/// [`MAX_HEADERS`]), and once the head is complete the body is just waited for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParseProgress {
    /// Bytes of the buffer already looked at.
    scanned: usize,
    /// Bytes the request needs in all, once its head has been parsed.
    needed: Option<usize>,
    /// Times the head parser ran for the current request (for tests).
    runs: u32,
    /// The head asked for `100 Continue` and it has not been handed out yet.
    continue_due: bool,
}

impl ParseProgress {
    /// Whether `100 Continue` is due now: once per request, when its head is
    /// complete and acceptable and its body is awaited.
    pub fn take_continue(&mut self) -> bool {
        std::mem::take(&mut self.continue_due)
    }
}

/// [`parse`], resuming from `progress` (which must belong to the same buffer and
/// be reset whenever bytes are removed from its front — a successful parse or an
/// error resets it).
pub fn parse_resumable(
    buf: &[u8],
    progress: &mut ParseProgress,
) -> Result<Option<(Request, usize)>, HttpError> {
    match progress.needed {
        Some(needed) if buf.len() < needed => return Ok(None),
        Some(_) => {}
        None => {
            let first = progress.scanned == 0;
            let from = progress.scanned.min(buf.len());
            let new_line = buf[from..].contains(&b'\n');
            progress.scanned = buf.len();
            // The first bytes are parsed at once, so that garbage is refused early.
            if !first && !new_line {
                if buf.len() > MAX_HEAD {
                    *progress = ParseProgress::default();
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(None);
            }
        }
    }
    progress.runs += 1;
    match parse_step(buf) {
        Ok(Step::Partial) => Ok(None),
        Ok(Step::NeedBytes {
            needed,
            expects_continue,
        }) => {
            progress.needed = Some(needed);
            progress.continue_due = expects_continue;
            Ok(None)
        }
        Ok(Step::Done(req, used)) => {
            *progress = ParseProgress::default();
            Ok(Some((req, used)))
        }
        Err(e) => {
            *progress = ParseProgress::default();
            Err(e)
        }
    }
}

fn parse_step(buf: &[u8]) -> Result<Step, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            check_line_ends(buf)?;
            return Ok(Step::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::Malformed("invalid request head")),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    check_line_ends(&buf[..head_len])?;
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let version = req.version.unwrap_or(1);
    let mut content_length: Option<usize> = None;
    let mut expects_continue = false;
    let mut keep_alive = version == 1;
    let mut out_headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed("header value is not UTF-8"))?
            .trim()
            .to_string();
        if h.name.eq_ignore_ascii_case("content-length") {
            // Digits only: `usize::from_str` would also take `+2`, which a proxy in
            // front may read differently (request smuggling).
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed("invalid Content-Length"));
            }
            let n: usize = value
                .parse()
                .map_err(|_| HttpError::Malformed("invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only Content-Length bodies are supported; accepting chunked framing
            // we do not parse would desynchronise the connection.
            return Err(HttpError::Malformed("Transfer-Encoding is not supported"));
        } else if h.name.eq_ignore_ascii_case("expect") && version == 1 {
            // HTTP/1.0 predates `Expect`: a 1.0 request's is ignored (RFC 9110).
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(HttpError::Expectation);
            }
            expects_continue = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in value.split(',') {
                let t = t.trim();
                if t.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        out_headers.push((h.name.to_string(), value));
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    if buf.len() < head_len + body_len {
        // A client that sent part of its body already has stopped waiting;
        // the interim response is harmless to it all the same.
        return Ok(Step::NeedBytes {
            needed: head_len + body_len,
            expects_continue,
        });
    }
    let body = buf[head_len..head_len + body_len].to_vec();
    Ok(Step::Done(
        Request {
            method,
            path,
            query,
            headers: out_headers,
            body,
            keep_alive,
        },
        head_len + body_len,
    ))
}

/// Refuses a head with a line ended by a bare LF. httparse accepts them (as
/// RFC 9112 allows a recipient to), but a proxy in front may not split the
/// lines the same way; with both reading one head differently, a request can
/// be smuggled past it.
fn check_line_ends(head: &[u8]) -> Result<(), HttpError> {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return Err(HttpError::Malformed(
                "bare LF line ending (lines must end with CRLF)",
            ));
        }
        prev = b;
    }
    Ok(())
}

/// What must hold for any input to [`parse`] (used by the fuzz target and its
/// regression corpus): no panic, no more bytes consumed than given, limits kept,
/// and pipelined requests parse one after another the same way.
pub fn check_parse_invariants(data: &[u8]) {
    let mut rest = data;
    for _ in 0..16 {
        match parse(rest) {
            Ok(Some((req, used))) => {
                assert!(
                    used > 0 && used <= rest.len(),
                    "consumed {used} of {}",
                    rest.len()
                );
                assert!(req.body.len() <= MAX_BODY);
                assert!(used - req.body.len() <= MAX_HEAD);
                let _ = req.query_param("token");
                rest = &rest[used..];
            }
            Ok(None) => {
                assert!(
                    rest.len() <= MAX_HEAD + MAX_BODY,
                    "partial beyond the limits"
                );
                return;
            }
            Err(e) => {
                assert!(matches!(e.status(), 400 | 413 | 417 | 431));
                return;
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A complete response with a body of the given content type.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra: &[(&str, String)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            reason(status),
            body.len()
        )
        .as_bytes(),
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (k, v) in extra {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A JSON response.
pub fn json(status: u16, body: &serde_json::Value, keep_alive: bool) -> Vec<u8> {
    response(
        status,
        "application/json",
        body.to_string().as_bytes(),
        keep_alive,
        &[],
    )
}

/// An error response: `{"detail": "..."}`.
pub fn error(status: u16, detail: &str, keep_alive: bool) -> Vec<u8> {
    json(status, &serde_json::json!({ "detail": detail }), keep_alive)
}

/// A path segment, percent-decoded (`+` stays itself, as in a path); `None`
/// when it is not valid UTF-8 once decoded.
pub fn percent_decode_path(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    percent_decode(&s.replace('+', "%2B"))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_requests() {
        let raw =
            b"POST /login HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /health HTTP/1.1\r\n\r\n";
        let (r1, n1) = parse(raw).unwrap().unwrap();
        assert_eq!(
            (r1.method.as_str(), r1.path.as_str(), r1.body.as_slice()),
            ("POST", "/login", &b"{}"[..])
        );
        let (r2, n2) = parse(&raw[n1..]).unwrap().unwrap();
        assert_eq!(r2.path, "/health");
        assert_eq!(n1 + n2, raw.len());
    }

    #[test]
    fn partial_and_limits() {
        assert!(parse(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        assert!(parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
            .unwrap()
            .is_none());
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(big.as_bytes()).unwrap_err(), HttpError::HeadTooLarge);
        let body = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(parse(body.as_bytes()).unwrap_err(), HttpError::BodyTooLarge);
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        for bad in ["x", "+2", "-0", "2 2", "0x2", ""] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n{{}}");
            assert!(
                matches!(parse(raw.as_bytes()), Err(HttpError::Malformed(_))),
                "Content-Length: {bad:?}"
            );
        }
    }

    #[test]
    fn trickled_requests_are_not_parsed_again_at_every_byte() {
        let head = format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nContent-Length: 300\r\n\r\n",
            "p".repeat(4000)
        );
        let raw = format!("{head}{}", "b".repeat(300));
        let mut progress = ParseProgress::default();
        let mut buf = Vec::new();
        for (i, byte) in raw.bytes().enumerate() {
            buf.push(byte);
            let out = parse_resumable(&buf, &mut progress).unwrap();
            if i + 1 < raw.len() {
                assert!(out.is_none());
            } else {
                let (req, used) = out.expect("complete at the last byte");
                assert_eq!((req.body.len(), used), (300, raw.len()));
            }
            // One run for the first byte, then one per line end: 5 lines.
            assert!(progress.runs <= 6, "parsed {} times", progress.runs);
        }
        assert_eq!(progress, ParseProgress::default(), "reset after a request");

        // Pipelined: the second request is parsed straight after the first.
        let two = b"GET /health HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n";
        let (r1, n1) = parse_resumable(two, &mut progress).unwrap().unwrap();
        let (r2, _) = parse_resumable(&two[n1..], &mut progress).unwrap().unwrap();
        assert_eq!(
            (r1.path.as_str(), r2.path.as_str()),
            ("/health", "/metrics")
        );

        // Limits still hold without line ends, and garbage is refused at once.
        let mut progress = ParseProgress::default();
        let long = vec![b'a'; MAX_HEAD + 1];
        assert!(parse_resumable(&long[..10], &mut progress)
            .unwrap()
            .is_none());
        assert_eq!(
            parse_resumable(&long, &mut progress).unwrap_err(),
            HttpError::HeadTooLarge
        );
        let mut progress = ParseProgress::default();
        assert!(parse_resumable(b"\x00\x01", &mut progress).is_err());
    }

    #[test]
    fn bare_lf_line_ends_are_refused() {
        for raw in [
            &b"GET /health HTTP/1.1\n\n"[..],
            b"GET /health HTTP/1.1\r\nHost: x\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\n\n",
            // Refused before the head is complete, too.
            b"GET /health HTTP/1.1\nHost: x",
        ] {
            assert_eq!(
                parse(raw).unwrap_err(),
                HttpError::Malformed("bare LF line ending (lines must end with CRLF)"),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // A body may hold any bytes.
        let (r, _) = parse(b"POST /login HTTP/1.1\r\nContent-Length: 2\r\n\r\n\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"\n\n");
    }

    #[test]
    fn expectations() {
        let head = "POST /login HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
        let mut progress = ParseProgress::default();
        assert!(parse_resumable(head.as_bytes(), &mut progress)
            .unwrap()
            .is_none());
        assert!(progress.take_continue(), "due once the head is in");
        assert!(!progress.take_continue(), "and only once");
        let full = format!("{head}{{}}");
        let (r, _) = parse_resumable(full.as_bytes(), &mut progress)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"{}");
        assert!(!progress.take_continue());
        // The whole request at once: nothing to wait for.
        let mut progress = ParseProgress::default();
        assert!(parse_resumable(full.as_bytes(), &mut progress)
            .unwrap()
            .is_some());
        assert!(!progress.take_continue());
        // Over the limit: refused from the head alone.
        let big = format!(
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let mut progress = ParseProgress::default();
        assert_eq!(
            parse_resumable(big.as_bytes(), &mut progress).unwrap_err(),
            HttpError::BodyTooLarge
        );
        assert!(!progress.take_continue());
        // Anything else cannot be met.
        let odd = b"POST / HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse(odd).unwrap_err(), HttpError::Expectation);
        assert_eq!(HttpError::Expectation.status(), 417);
        // HTTP/1.0 has no expectations: ignored.
        let old = b"POST / HTTP/1.0\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}";
        assert!(parse(old).unwrap().is_some());
    }

    #[test]
    fn query_and_connection() {
        let (r, _) = parse(b"GET /ws?a=1&token=ab%2Ecd HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.query_param("token").as_deref(), Some("ab.cd"));
        assert_eq!(r.query_param("nope"), None);
        assert!(!r.keep_alive);
        let (r, _) = parse(b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive && r.header_has_token("connection", "upgrade"));
    }
}
