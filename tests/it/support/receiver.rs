//! A webhook receiver for the tests: a plain HTTP/1.1 server on std::net,
//! keeping every POST it got (keep-alive connections included), answering 200
//! while up; while down it refuses connections (the port is closed) and drops
//! those open; while hanging it reads requests and never answers (nor keeps
//! them). Each request's `Klav-Signature` is checked here, against the
//! secret, independently of klav's own code.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::harness::WAIT;
use crate::support::wait::eventually;

/// The secret the tests' servers sign with (32 bytes or more).
pub const HOOK_SECRET: &str = "it-webhook-secret-0123456789abcdef";

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub raw: String,
    pub signature: String,
    /// Whether the signature is valid for the body and its `t` within five
    /// minutes of the receiver's clock.
    pub signed: bool,
}

impl Received {
    pub fn id(&self) -> &str {
        self.body["id"].as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    got: Mutex<Vec<Received>>,
    down: AtomicBool,
    hang: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

/// The receiver; stops with the test.
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Receiver {
            addr,
            inner: Arc::new(Inner::default()),
            accept: None,
            stop: Arc::new(AtomicBool::new(false)),
        };
        r.serve(listener);
        r
    }

    /// `http://…/hooks` for `KLAV_WEBHOOK_URL`.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let (inner, stop) = (self.inner.clone(), self.stop.clone());
        self.accept = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        inner.open.lock().unwrap().push(s.try_clone().unwrap());
                        let inner = inner.clone();
                        std::thread::spawn(move || connection(s, &inner));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// Closes the port and every open connection: attempts fail to connect.
    pub fn go_down(&mut self) {
        self.inner.down.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
        for s in self.inner.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port.
    pub fn come_back(&mut self) {
        let listener = eventually(WAIT, Duration::from_millis(50), || {
            TcpListener::bind(self.addr).map_err(|e| format!("rebind {}: {e}", self.addr))
        });
        self.stop = Arc::new(AtomicBool::new(false));
        self.inner.down.store(false, Ordering::Release);
        self.serve(listener);
    }

    /// Whether requests get no answer (the connection stays open, silent).
    pub fn hang(&self, hang: bool) {
        self.inner.hang.store(hang, Ordering::Release);
    }

    /// Everything received so far, in arrival order.
    pub fn got(&self) -> Vec<Received> {
        self.inner.got.lock().unwrap().clone()
    }

    /// Those of one type, in arrival order.
    pub fn of(&self, kind: &str) -> Vec<Received> {
        self.got()
            .into_iter()
            .filter(|r| r.kind() == kind)
            .collect()
    }

    /// Waits (at most `within`) until `n` events of `kind` have arrived
    /// (distinct ids); returns them in arrival order, first arrivals only.
    pub fn wait_for(&self, kind: &str, n: usize, within: Duration) -> Vec<Received> {
        eventually(within, Duration::from_millis(50), || {
            let got = first_arrivals(self.of(kind));
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} of {n} {kind} events arrived", got.len()))
            }
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.go_down();
    }
}

/// Each id's first arrival, in arrival order (later ones are retries).
pub fn first_arrivals(got: Vec<Received>) -> Vec<Received> {
    let mut seen = std::collections::HashSet::new();
    got.into_iter()
        .filter(|r| seen.insert(r.id().to_string()))
        .collect()
}

fn connection(s: TcpStream, inner: &Inner) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut out = s;
    loop {
        let Some((headers, body)) = read_request(&mut reader) else {
            return;
        };
        if inner.hang.load(Ordering::Acquire) {
            while inner.hang.load(Ordering::Acquire) && !inner.down.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
        if inner.down.load(Ordering::Acquire) {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
        let signature = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("klav-signature"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let received = Received {
            body: serde_json::from_str(&body).unwrap_or(Value::Null),
            signed: verify(&signature, &body),
            raw: body,
            signature,
        };
        inner.got.lock().unwrap().push(received);
        let reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// One request's headers and body; `None` at the end of the connection.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<(Vec<(String, String)>, String)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse().ok()?;
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((headers, String::from_utf8(body).ok()?))
}

/// `t=<secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, with `t` within
/// five minutes of now.
pub fn verify(header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == v1
}
