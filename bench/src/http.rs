//! A minimal blocking HTTP/1.1 client for `POST /register`, `POST /login` and
//! `GET /health` over keep-alive connections. Blocking threads are fine here:
//! registrations and logins are bounded by the server's password hashing, never by
//! the number of sockets.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response head or body accepted.
const MAX_RESPONSE: usize = 1 << 20;

/// Why an HTTP exchange failed.
#[derive(Debug)]
pub enum HttpError {
    Connect(io::Error),
    Timeout,
    /// The server closed the connection before a full response.
    Closed,
    Io(io::Error),
    /// Not a parseable HTTP/1.1 response.
    Malformed(&'static str),
}

impl HttpError {
    /// A short stable label for failure counts.
    pub fn label(&self) -> String {
        match self {
            HttpError::Connect(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => "connect_refused".into(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "connect_timeout".into(),
                k => format!("connect_{k:?}").to_ascii_lowercase(),
            },
            HttpError::Timeout => "timeout".into(),
            HttpError::Closed => "closed".into(),
            HttpError::Io(e) => format!("io_{:?}", e.kind()).to_ascii_lowercase(),
            HttpError::Malformed(_) => "malformed_response".into(),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "connect: {e}"),
            HttpError::Timeout => f.write_str("timed out"),
            HttpError::Closed => f.write_str("connection closed before a full response"),
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Malformed(why) => write!(f, "malformed response: {why}"),
        }
    }
}

fn io_err(e: io::Error) -> HttpError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout,
        io::ErrorKind::UnexpectedEof => HttpError::Closed,
        _ => HttpError::Io(e),
    }
}

/// One response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(200)
            .collect()
    }
}

/// A keep-alive connection that reconnects by itself when the server closed it.
pub struct HttpClient {
    addr: SocketAddr,
    /// Connect from this local address (see [`connect_from`]).
    source: Option<IpAddr>,
    host: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl HttpClient {
    pub fn new(addr: SocketAddr, host: &str, timeout: Duration) -> HttpClient {
        HttpClient {
            addr,
            source: None,
            host: host.to_string(),
            timeout,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Connects from `source` instead of the address the kernel picks.
    pub fn with_source(mut self, source: Option<IpAddr>) -> HttpClient {
        self.source = source;
        self
    }

    /// `POST path` with a JSON body. A request on a reused connection that the server
    /// had already closed is retried once on a fresh one.
    pub fn post_json(&mut self, path: &str, body: &str) -> Result<Response, HttpError> {
        self.with_retry(&format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        ))
    }

    /// `GET path`, with the same retry as [`HttpClient::post_json`].
    pub fn get(&mut self, path: &str) -> Result<Response, HttpError> {
        self.with_retry(&format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.host
        ))
    }

    fn with_retry(&mut self, request: &str) -> Result<Response, HttpError> {
        let reused = self.stream.is_some();
        match self.exchange(request) {
            Err(HttpError::Closed) | Err(HttpError::Io(_)) if reused => {
                self.stream = None;
                self.exchange(request)
            }
            other => other,
        }
    }

    fn connect(&mut self) -> Result<(), HttpError> {
        if self.stream.is_none() {
            let s =
                connect_from(self.source, self.addr, self.timeout).map_err(HttpError::Connect)?;
            s.set_nodelay(true).map_err(HttpError::Io)?;
            s.set_read_timeout(Some(self.timeout))
                .map_err(HttpError::Io)?;
            s.set_write_timeout(Some(self.timeout))
                .map_err(HttpError::Io)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        Ok(())
    }

    fn exchange(&mut self, request: &str) -> Result<Response, HttpError> {
        let result = self.connect().and_then(|_| {
            let stream = self.stream.as_mut().expect("connected");
            stream.write_all(request.as_bytes()).map_err(io_err)?;
            read_response(stream, &mut self.buf)
        });
        match result {
            Ok((resp, keep_alive)) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

/// A blocking TCP connection to `dest`, from the local address `source` when given
/// (any port). Servers count budgets per client address; on loopback a client can
/// pick its own (127.0.0.2, ...) to count apart from others on the same machine.
pub(crate) fn connect_from(
    source: Option<IpAddr>,
    dest: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect_timeout(&dest, timeout);
    };
    let (IpAddr::V4(src), SocketAddr::V4(dst)) = (source, dest) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a source address needs IPv4 on both sides",
        ));
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the structs
    // passed live across each call. The descriptor goes to a TcpStream (which
    // closes it) right after it is created.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let local = sockaddr(src, 0);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        // A blocking connect gives up after SO_SNDTIMEO.
        stream.set_write_timeout(Some(timeout))?;
        let remote = sockaddr(*dst.ip(), dst.port());
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Reads one response; `buf` keeps bytes read past it (none, for a well-behaved
/// server answering one request at a time). Returns whether the connection stays open.
fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<(Response, bool), HttpError> {
    let (status, head_len, body_kind, keep_alive) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.ok_or(HttpError::Malformed("no status"))?;
                let mut kind = BodyKind::UntilClose;
                let mut keep_alive = resp.version == Some(1);
                for h in resp.headers.iter() {
                    let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let len = v
                            .parse()
                            .map_err(|_| HttpError::Malformed("content-length"))?;
                        kind = BodyKind::Length(len);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                        && v.to_ascii_lowercase().contains("chunked")
                    {
                        kind = BodyKind::Chunked;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        let v = v.to_ascii_lowercase();
                        if v.contains("close") {
                            keep_alive = false;
                        } else if v.contains("keep-alive") {
                            keep_alive = true;
                        }
                    }
                }
                if matches!(kind, BodyKind::UntilClose) && (status == 204 || status == 304) {
                    kind = BodyKind::Length(0);
                }
                break (status, n, kind, keep_alive);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_RESPONSE {
                    return Err(HttpError::Malformed("head too large"));
                }
                fill(stream, buf)?;
            }
            Err(_) => return Err(HttpError::Malformed("bad head")),
        }
    };
    buf.drain(..head_len);
    let (body, keep_alive) = match body_kind {
        BodyKind::Length(len) => {
            if len > MAX_RESPONSE {
                return Err(HttpError::Malformed("body too large"));
            }
            while buf.len() < len {
                fill(stream, buf)?;
            }
            (buf.drain(..len).collect(), keep_alive)
        }
        BodyKind::Chunked => (read_chunked(stream, buf)?, keep_alive),
        BodyKind::UntilClose => {
            loop {
                match fill(stream, buf) {
                    Ok(()) if buf.len() <= MAX_RESPONSE => {}
                    Ok(()) => return Err(HttpError::Malformed("body too large")),
                    Err(HttpError::Closed) => break,
                    Err(e) => return Err(e),
                }
            }
            (std::mem::take(buf), false)
        }
    };
    Ok((Response { status, body }, keep_alive))
}

enum BodyKind {
    Length(usize),
    Chunked,
    UntilClose,
}

fn fill(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<(), HttpError> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HttpError::Closed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
}

fn read_chunked(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            fill(stream, buf)?;
        };
        let line = std::str::from_utf8(&buf[..line_end])
            .map_err(|_| HttpError::Malformed("chunk size"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| HttpError::Malformed("chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    let empty = p == 0;
                    buf.drain(..p + 2);
                    if empty {
                        return Ok(body);
                    }
                } else {
                    fill(stream, buf)?;
                }
            }
        }
        if body.len() + size > MAX_RESPONSE {
            return Err(HttpError::Malformed("body too large"));
        }
        while buf.len() < size + 2 {
            fill(stream, buf)?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(raw: &str) -> Result<(Response, bool), HttpError> {
        let mut buf = Vec::new();
        read_response(&mut Cursor::new(raw.as_bytes().to_vec()), &mut buf)
    }

    #[test]
    fn content_length_response() {
        let (r, keep) =
            parse("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"status\":\"CREATED\"}").unwrap();
        assert_eq!(r.status, 200);
        assert!(keep);
        assert_eq!(r.json().unwrap()["status"], "CREATED");
    }

    #[test]
    fn connection_close_and_until_eof_bodies() {
        let (r, keep) =
            parse("HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!(r.status, 401);
        assert!(!keep);
        let (r, keep) = parse("HTTP/1.1 200 OK\r\n\r\nhello").unwrap();
        assert_eq!(r.body, b"hello");
        assert!(!keep);
    }

    #[test]
    fn chunked_body() {
        let (r, keep) =
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"Wikipedia");
        assert!(keep);
    }

    #[test]
    fn connects_from_a_chosen_loopback_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = listener.local_addr().unwrap();
        let source: IpAddr = "127.0.0.3".parse().unwrap();
        let _s = connect_from(Some(source), dest, Duration::from_secs(5)).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), source);
    }

    #[test]
    fn truncated_response_is_closed() {
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            Err(HttpError::Closed)
        ));
        assert!(matches!(parse("HTTP/1.1 200"), Err(HttpError::Closed)));
        assert!(matches!(
            parse("garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }
}
