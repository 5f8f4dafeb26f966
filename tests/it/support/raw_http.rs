//! HTTP written and read by hand over plain sockets: exact bytes on the wire,
//! requests from a chosen source address, pipelines, and connections watched
//! until the server closes them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{PASSWORD, WAIT};

/// A TCP connection to `addr` from a chosen loopback source address (all of
/// 127.0.0.0/8 is local), to act as different clients.
pub fn connect_from(src: [u8; 4], addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(dst) = addr else {
        panic!("IPv4 expected")
    };
    // SAFETY: plain socket calls on a descriptor we own; it is handed to TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes(src);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len),
            0,
            "bind"
        );
        let mut da: libc::sockaddr_in = std::mem::zeroed();
        da.sin_family = libc::AF_INET as libc::sa_family_t;
        da.sin_port = dst.port().to_be();
        da.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
        assert_eq!(
            libc::connect(fd, &da as *const _ as *const libc::sockaddr, len),
            0,
            "connect"
        );
        let s = <TcpStream as std::os::unix::io::FromRawFd>::from_raw_fd(fd);
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }
}

/// A TCP connection to `addr`: no Nagle delay, reads time out after 10 s.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn detail(&self) -> String {
        self.json()["detail"].as_str().unwrap_or("").to_string()
    }
}

/// Reads one response (head + Content-Length body) from a stream; `None` on EOF.
pub fn read_response(s: &mut TcpStream) -> Option<Response> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) => buf.push(byte[0]),
            Err(e) => panic!("reading a response: {e}"),
        }
    }
    let head = String::from_utf8(buf).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    Some(Response {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    })
}

/// Whether the server closed the connection (EOF or reset) within `wait`.
pub fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + wait;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// A `/ws?token=` upgrade written by hand (`headers`: more header lines, each
/// ending in CRLF); returns the socket and the status.
pub fn upgrade_status(addr: SocketAddr, token: &str, headers: &str) -> (TcpStream, u16) {
    let (s, r) = upgrade_response(addr, token, headers);
    (s, r.status)
}

/// [`upgrade_status`], with the whole response.
pub fn upgrade_response(addr: SocketAddr, token: &str, headers: &str) -> (TcpStream, Response) {
    let mut s = connect(addr);
    write!(
        s,
        "GET /ws?token={token} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    .unwrap();
    let r = read_response(&mut s).expect("an upgrade response");
    (s, r)
}

/// A request as a client writes it: the request line, `Host: test`, `headers`
/// in order, the body's `Content-Length`, and the body.
pub fn http_request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

/// Writes `request` (see [`http_request`]) and reads the response to it.
pub fn exchange(s: &mut TcpStream, request: &str) -> Response {
    s.write_all(request.as_bytes()).unwrap();
    read_response(s).expect("a response")
}

/// One HTTP request to `addr` on a fresh connection (`Connection: close`).
pub fn http_to(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Response {
    let headers = [
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ];
    let request = http_request(method, path, &headers, body.unwrap_or(""));
    exchange(&mut connect(addr), &request)
}

/// `POST /ws-ticket` to `addr`, with `Authorization: Bearer <token>` (none:
/// without the header).
pub fn ws_ticket_at(addr: SocketAddr, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Connection", "close")];
    if let Some(auth) = &auth {
        headers.insert(0, ("Authorization", auth.as_str()));
    }
    exchange(
        &mut connect(addr),
        &http_request("POST", "/ws-ticket", &headers, ""),
    )
}

/// Registers `user` (password [`PASSWORD`]) on the server at `addr` and returns a token.
pub fn user_at(addr: SocketAddr, user: &str) -> String {
    let body = json!({"username": user, "password": PASSWORD}).to_string();
    let r = http_to(addr, "POST", "/register", Some(&body));
    assert_eq!(r.status, 200, "register {user}: {}", r.body);
    let r = http_to(addr, "POST", "/login", Some(&body));
    assert_eq!(r.status, 200, "login {user}: {}", r.body);
    r.json()["access_token"].as_str().unwrap().to_string()
}
