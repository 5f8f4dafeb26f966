//! The receiver in docs/webhooks.md, run as it is written (with `python3`)
//! against a real server: it accepts klav's signed events and refuses a
//! forged one. Skipped, with a message, only when `python3` is not installed.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use klav::webhooks::WebhookConfig;

use crate::harness::*;
use crate::support::receiver::HOOK_SECRET;

/// The first ```python block after "A complete receiver" in docs/webhooks.md.
fn documented_receiver() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/webhooks.md")).unwrap();
    let from = doc
        .find("A complete receiver")
        .expect("the receiver's paragraph");
    let rest = &doc[from..];
    let start = rest.find("```python\n").expect("a python block") + "```python\n".len();
    let len = rest[start..].find("\n```").unwrap();
    rest[start..start + len].to_string()
}

struct Python(Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_documented_receiver_verifies_klavs_events() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED the_documented_receiver_verifies_klavs_events: python3 is not installed"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("klav-hooks-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("receiver.py");
    std::fs::write(&script, documented_receiver()).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Python(
        Command::new("python3")
            .arg(&script)
            .args(["--port", &port.to_string(), "--secret", HOOK_SECRET])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let out = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(WAIT, Duration::from_millis(50), || {
        std::net::TcpStream::connect(addr)
            .map(|_| ())
            .map_err(|e| format!("the receiver is not listening: {e}"))
    });

    // A forged event is refused.
    let forged = r#"{"id":"evt_1","type":"user.registered","ts":"x","data":{}}"#;
    let headers = [
        ("Content-Type", "application/json"),
        ("Klav-Signature", "t=1,v1=00"),
        ("Connection", "close"),
    ];
    let r = exchange(
        &mut connect(addr),
        &http_request("POST", "/hooks", &headers, forged),
    );
    assert_eq!(r.status, 401, "{}", r.body);

    let s = TestServer::with(|c| {
        c.webhook = Some(WebhookConfig {
            url: format!("http://{addr}/hooks"),
            secret: HOOK_SECRET.as_bytes().to_vec(),
            threads: 1,
        })
    });
    s.user("mina");
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the receiver printed nothing");
    assert!(line.starts_with("user.registered evt_"), "{line}");
    assert!(line.contains(r#""user": "mina""#), "{line}");
    // klav counts it delivered: the receiver answered 204.
    eventually(WAIT, Duration::from_millis(100), || {
        let text = metrics_text(s.addr);
        match sample(&text, "klav_webhook_deliveries_total{status=\"204\"}") {
            Some(n) if n >= 1.0 => Ok(()),
            _ => Err("no delivery counted".to_string()),
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
