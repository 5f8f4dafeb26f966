//! A small Chrome DevTools Protocol client for the browser tests: launches the
//! system's `chromium` headless, and speaks JSON-RPC over its DevTools WebSocket —
//! one isolated browser context per simulated person, flat sessions, script
//! evaluation, real keyboard and IME input, screenshots, and a record of console
//! errors and dialogs per page.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

/// How long a page condition may take to become true.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

/// What can go wrong talking to the browser.
#[derive(Debug)]
pub enum CdpError {
    /// No browser binary was found.
    NoBrowser(String),
    /// The browser started but never printed its DevTools address.
    NoDevTools(String),
    /// The DevTools socket failed.
    Socket(String),
    /// A command was answered with an error.
    Command { method: String, error: Value },
    /// No answer in time.
    Timeout(String),
}

impl fmt::Display for CdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CdpError::NoBrowser(why) => write!(f, "{why}"),
            CdpError::NoDevTools(log) => {
                write!(
                    f,
                    "chromium did not report a DevTools address; its output:\n{log}"
                )
            }
            CdpError::Socket(e) => write!(f, "DevTools socket: {e}"),
            CdpError::Command { method, error } => write!(f, "{method} failed: {error}"),
            CdpError::Timeout(what) => write!(f, "no answer to {what} in time"),
        }
    }
}

/// The browser binary: `KLAV_CHROMIUM`, else the first of the usual names on `PATH`.
pub fn find_chromium() -> Result<PathBuf, CdpError> {
    if let Ok(p) = std::env::var("KLAV_CHROMIUM") {
        if !p.trim().is_empty() {
            return Ok(PathBuf::from(p));
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-headless-shell",
        "chromium-browser",
        "google-chrome",
    ] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(CdpError::NoBrowser(
        "the browser tests need Chromium: install the Debian package `chromium` \
         (apt-get install chromium fonts-noto-cjk; `.ci/run` does), or set KLAV_CHROMIUM \
         to a Chrome/Chromium binary"
            .into(),
    ))
}

struct Inner {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    /// Console errors, uncaught exceptions and non-network log errors, by session.
    errors: HashMap<String, Vec<String>>,
    /// Network-level log errors (failed loads, refused WebSockets), by session.
    network_errors: HashMap<String, Vec<String>>,
    /// Messages of `alert`/`confirm`/`prompt` dialogs that opened, by session.
    dialogs: HashMap<String, Vec<String>>,
}

/// A headless Chromium, killed (with its whole process group) when dropped.
pub struct Browser {
    child: Child,
    inner: RefCell<Inner>,
    _profile: TempDir,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    pub fn launch() -> Result<Browser, CdpError> {
        let bin = find_chromium()?;
        let profile = std::env::temp_dir().join(format!(
            "klav-chromium-{}-{}",
            std::process::id(),
            PROFILE_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).map_err(|e| CdpError::Socket(e.to_string()))?;
        let profile = TempDir(profile);
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                // Needed when run as root (CI); the tests load only their own server.
                "--no-sandbox",
                "--remote-debugging-port=0",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--lang=ko-KR",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that dropping the browser ends every
            // process it started and nothing else.
            .process_group(0)
            .spawn()
            .map_err(|e| CdpError::NoBrowser(format!("cannot run {}: {e}", bin.display())))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(url) = line.split("DevTools listening on ").nth(1) {
                        let _ = tx.send(Ok(url.trim().to_string()));
                        sent = true;
                    } else {
                        seen.push_str(&line);
                        seen.push('\n');
                    }
                }
                // Keep draining so the browser never blocks on a full pipe.
            }
            if !sent {
                let _ = tx.send(Err(seen));
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(url)) => url,
            Ok(Err(log)) => {
                kill_group(&mut child);
                return Err(CdpError::NoDevTools(log));
            }
            Err(_) => {
                kill_group(&mut child);
                return Err(CdpError::NoDevTools("(nothing within 60 s)".into()));
            }
        };
        let ws = devtools_socket(&url).inspect_err(|_| kill_group(&mut child))?;
        Ok(Browser {
            child,
            inner: RefCell::new(Inner {
                ws,
                next_id: 1,
                errors: HashMap::new(),
                network_errors: HashMap::new(),
                dialogs: HashMap::new(),
            }),
            _profile: profile,
        })
    }

    /// Sends a command (to a page when `session` is set) and waits for its result,
    /// recording events that arrive meanwhile.
    pub fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, CdpError> {
        let mut inner = self.inner.borrow_mut();
        let id = inner.next_id;
        inner.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        inner
            .ws
            .send(Message::text(msg.to_string()))
            .map_err(|e| CdpError::Socket(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CdpError::Timeout(method.to_string()));
            }
            let Some(v) = inner.read(left)? else { continue };
            if v["id"].as_u64() == Some(id) {
                if v.get("error").is_some() {
                    return Err(CdpError::Command {
                        method: method.to_string(),
                        error: v["error"].clone(),
                    });
                }
                return Ok(v["result"].clone());
            }
            inner.record(&v);
        }
    }

    /// Reads whatever events are waiting.
    pub fn pump(&self) {
        let mut inner = self.inner.borrow_mut();
        while let Ok(Some(v)) = inner.read(Duration::from_millis(20)) {
            inner.record(&v);
        }
    }

    /// A fresh browser context (its own cookies and storage: one person) with one
    /// page, `width`×`height` CSS pixels.
    pub fn new_page(&self, width: u32, height: u32) -> Result<Page<'_>, CdpError> {
        let ctx = self.call(None, "Target.createBrowserContext", json!({}))?;
        let ctx = ctx["browserContextId"].as_str().unwrap_or("").to_string();
        let target = self.call(
            None,
            "Target.createTarget",
            json!({ "url": "about:blank", "browserContextId": ctx }),
        )?;
        let target = target["targetId"].as_str().unwrap_or("").to_string();
        let att = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )?;
        let session = att["sessionId"].as_str().unwrap_or("").to_string();
        let page = Page {
            browser: self,
            session,
            target,
            context: ctx,
        };
        for m in ["Runtime.enable", "Page.enable", "Log.enable"] {
            page.call(m, json!({}))?;
        }
        page.resize(width, height)?;
        Ok(page)
    }
}

static PROFILE_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Inner {
    fn read(&mut self, wait: Duration) -> Result<Option<Value>, CdpError> {
        self.ws
            .get_mut()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| CdpError::Socket(e.to_string()))?;
        match self.ws.read() {
            Ok(Message::Text(t)) => Ok(serde_json::from_str(t.as_str()).ok()),
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                Ok(None)
            }
            Err(e) => Err(CdpError::Socket(e.to_string())),
        }
    }

    fn record(&mut self, v: &Value) {
        let session = v["sessionId"].as_str().unwrap_or("").to_string();
        let p = &v["params"];
        match v["method"].as_str().unwrap_or("") {
            "Runtime.consoleAPICalled"
                if matches!(p["type"].as_str(), Some("error" | "assert")) =>
            {
                let text: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| {
                                x["value"]
                                    .as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| x["description"].to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.errors
                    .entry(session)
                    .or_default()
                    .push(format!("console.error: {}", text.join(" ")));
            }
            "Runtime.exceptionThrown" => {
                let d = &p["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("?");
                self.errors
                    .entry(session)
                    .or_default()
                    .push(format!("uncaught: {text}"));
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => {
                let e = &p["entry"];
                let line = format!(
                    "{} log: {} {}",
                    e["source"].as_str().unwrap_or("?"),
                    e["text"].as_str().unwrap_or(""),
                    e["url"].as_str().unwrap_or("")
                );
                if e["source"] == "network" {
                    self.network_errors.entry(session).or_default().push(line);
                } else {
                    self.errors.entry(session).or_default().push(line);
                }
            }
            "Page.javascriptDialogOpening" => {
                self.dialogs
                    .entry(session)
                    .or_default()
                    .push(p["message"].as_str().unwrap_or("").to_string());
            }
            _ => {}
        }
    }
}

/// The DevTools WebSocket (`ws://127.0.0.1:<port>/devtools/browser/<id>`).
fn devtools_socket(url: &str) -> Result<tungstenite::WebSocket<TcpStream>, CdpError> {
    let host = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| CdpError::Socket(format!("unexpected DevTools address {url}")))?;
    let stream = TcpStream::connect(host).map_err(|e| CdpError::Socket(e.to_string()))?;
    stream.set_nodelay(true).ok();
    let (ws, _) =
        tungstenite::client::client(url, stream).map_err(|e| CdpError::Socket(e.to_string()))?;
    Ok(ws)
}

fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) on the process group this test started.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(&mut self.child);
    }
}

/// One page in its own browser context.
pub struct Page<'b> {
    browser: &'b Browser,
    pub session: String,
    target: String,
    context: String,
}

/// Where the tests save their screenshots.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("web-screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl Page<'_> {
    pub fn call(&self, method: &str, params: Value) -> Result<Value, CdpError> {
        self.browser.call(Some(&self.session), method, params)
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<(), CdpError> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
        )?;
        Ok(())
    }

    /// Loads `url` and waits until the document and its scripts have loaded.
    pub fn goto(&self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }))
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        self.wait_for(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            "the page to load",
        );
    }

    /// The value of a JavaScript expression (promises awaited).
    pub fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Page::eval`], with failures (e.g. during a navigation) as errors.
    pub fn try_eval(&self, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .map_err(|e| format!("evaluate {expr}: {e}"))?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("evaluate {expr} threw: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expr` is truthy; panics naming `what` (and saves a screenshot).
    pub fn wait_for(&self, expr: &str, what: &str) -> Value {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            // A page in the middle of loading has no context to evaluate in yet.
            let v = self.try_eval(expr).unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot(&format!("failed-{}", self.session));
                panic!(
                    "timed out waiting for {what} ({expr}); screenshot {}",
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `document.querySelector` of a `data-testid`, as JavaScript.
    pub fn q(testid: &str) -> String {
        format!("document.querySelector('[data-testid=\"{testid}\"]')")
    }

    /// Focuses an element and replaces its content by typing `text` (real input
    /// events, as an on-screen keyboard or IME would produce).
    pub fn fill(&self, testid: &str, text: &str) {
        self.eval(&format!(
            "(() => {{ const e = {}; e.focus(); e.select && e.select(); return true; }})()",
            Page::q(testid)
        ));
        self.call("Input.insertText", json!({ "text": text }))
            .unwrap_or_else(|e| panic!("type into {testid}: {e}"));
    }

    /// Clicks an element with the mouse, at its centre.
    pub fn click(&self, testid: &str) {
        self.click_selector(&format!("[data-testid=\"{testid}\"]"));
    }

    pub fn click_selector(&self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let pos = self.wait_for(
            &format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return r.width > 0 ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()"
            ),
            &format!("{selector} to be visible"),
        );
        let (x, y) = (pos[0].as_f64().unwrap(), pos[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .unwrap_or_else(|e| panic!("click {selector}: {e}"));
        }
    }

    /// Presses a key (`Enter`, `Tab`, …) with optional modifiers (8 = Shift).
    pub fn press(&self, key: &str, code: u32, modifiers: u32) {
        let text = if key == "Enter" { "\r" } else { "" };
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code,
                    "nativeVirtualKeyCode": code, "text": text, "unmodifiedText": text,
                    "modifiers": modifiers }),
        )
        .unwrap_or_else(|e| panic!("press {key}: {e}"));
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code,
                    "nativeVirtualKeyCode": code, "modifiers": modifiers }),
        )
        .unwrap_or_else(|e| panic!("release {key}: {e}"));
    }

    /// Enter as the page sees it while an IME owns the key: a key-down with no
    /// character (the IME consumes it), reporting `code` as its key code (13, or
    /// 229 as some browsers report every key during or ending a composition).
    pub fn ime_enter(&self, code: u32) {
        for kind in ["rawKeyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": "Enter", "code": "Enter",
                        "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code }),
            )
            .unwrap_or_else(|e| panic!("IME Enter: {e}"));
        }
    }

    pub fn enter(&self) {
        self.press("Enter", 13, 0);
    }

    /// An IME composition in progress (text not yet committed).
    pub fn ime_compose(&self, text: &str) {
        let n = text.chars().count();
        self.call(
            "Input.imeSetComposition",
            json!({ "text": text, "selectionStart": n, "selectionEnd": n }),
        )
        .unwrap_or_else(|e| panic!("compose {text}: {e}"));
    }

    /// Commits text (ends any composition with it).
    pub fn ime_commit(&self, text: &str) {
        self.call("Input.insertText", json!({ "text": text }))
            .unwrap_or_else(|e| panic!("commit {text}: {e}"));
    }

    /// Saves a PNG under [`screenshot_dir`]; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{name}.png"));
        match self.call("Page.captureScreenshot", json!({ "format": "png" })) {
            Ok(r) => {
                let bytes = base64_decode(r["data"].as_str().unwrap_or(""));
                std::fs::write(&path, bytes).unwrap();
            }
            Err(e) => eprintln!("screenshot {name}: {e}"),
        }
        path
    }

    /// Console errors, uncaught exceptions and non-network error logs so far.
    pub fn errors(&self) -> Vec<String> {
        self.browser.pump();
        let inner = self.browser.inner.borrow();
        inner.errors.get(&self.session).cloned().unwrap_or_default()
    }

    /// Failed loads and refused connections so far.
    pub fn network_errors(&self) -> Vec<String> {
        self.browser.pump();
        let inner = self.browser.inner.borrow();
        inner
            .network_errors
            .get(&self.session)
            .cloned()
            .unwrap_or_default()
    }

    /// Dialogs (`alert` and friends) that opened so far.
    pub fn dialogs(&self) -> Vec<String> {
        self.browser.pump();
        let inner = self.browser.inner.borrow();
        inner
            .dialogs
            .get(&self.session)
            .cloned()
            .unwrap_or_default()
    }

    /// Asserts the page logged no error of any kind.
    pub fn assert_clean(&self, name: &str) {
        let errors = self.errors();
        assert!(errors.is_empty(), "{name}: console errors: {errors:#?}");
        let dialogs = self.dialogs();
        assert!(dialogs.is_empty(), "{name}: dialogs opened: {dialogs:?}");
    }

    /// Closes the page (its WebSocket goes with it) and its browser context.
    pub fn close(self) {
        let _ = self.browser.call(
            None,
            "Target.closeTarget",
            json!({ "targetId": self.target }),
        );
        let _ = self.browser.call(
            None,
            "Target.disposeBrowserContext",
            json!({ "browserContextId": self.context }),
        );
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
