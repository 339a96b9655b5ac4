//! Headless Chromium driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: Chromium reads commands on its fd 3 and
//! writes replies and events on its fd 4, each a JSON message ending in a
//! NUL byte).
//!
//! Why not `--dump-dom --virtual-time-budget`: virtual time stands still
//! while a fetch is pending, and the dashboard's event stream is a fetch that
//! never ends, so the budget never runs out. Over the protocol the page runs
//! in real time, and a test can wait for what it expects, act (create a
//! volume) and look again without a reload.
//!
//! Std and serde_json only: `ballast-bench` includes this file too.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Debian's `chromium` package.
pub const CHROMIUM: &str = "chromium";

/// How long one protocol command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium; closed (and reaped) on drop.
pub struct Browser {
    child: Child,
    commands: ChildStdin,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    /// Protocol events received so far, in order.
    pub events: Vec<Value>,
}

/// One tab, by its protocol session.
pub struct Page {
    session: String,
}

impl Browser {
    /// Start Chromium with a fresh profile in `profile` (an empty scratch
    /// directory the caller owns).
    pub fn launch(profile: &Path) -> io::Result<Browser> {
        let mut child = Command::new("sh")
            .arg("-c")
            // Chromium speaks the protocol on fds 3 and 4: hand it our pipes
            // there, and keep its own chatter off them.
            .arg(r#"exec "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg("sh")
            .arg(CHROMIUM)
            .args([
                "--headless=new",
                // Root (the tests' usual user) cannot use the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let commands = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Browser {
            child,
            commands,
            replies,
            next_id: 0,
            events: Vec::new(),
        })
    }

    /// Send one command, to the browser or to a page, and wait for its
    /// result; events arriving meanwhile are kept in `events`.
    pub fn call(&mut self, page: Option<&Page>, method: &str, params: Value) -> io::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(p) = page {
            msg["sessionId"] = json!(p.session);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.commands.write_all(&bytes)?;
        self.commands.flush()?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .replies
                .recv_timeout(left)
                .map_err(|e| io::Error::other(format!("chromium: no reply to {method} ({e})")))?;
            if m["id"].as_u64() == Some(id) {
                if let Some(e) = m.get("error") {
                    return Err(io::Error::other(format!("chromium: {method}: {e}")));
                }
                return Ok(m["result"].clone());
            }
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    /// Open a tab with a `width`×`height` viewport.
    pub fn new_page(&mut self, width: u32, height: u32) -> io::Result<Page> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].clone();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| io::Error::other(format!("chromium: no session in {attached}")))?
            .to_string();
        let page = Page { session };
        for method in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(Some(&page), method, json!({}))?;
        }
        self.call(
            Some(&page),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        Ok(page)
    }

    /// Start loading `url` in the page (returns once the navigation is
    /// under way, not when the page has loaded).
    pub fn navigate(&mut self, page: &Page, url: &str) -> io::Result<()> {
        let r = self.call(Some(page), "Page.navigate", json!({ "url": url }))?;
        match r.get("errorText").and_then(Value::as_str) {
            Some(e) => Err(io::Error::other(format!(
                "chromium: navigating to {url}: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// The value of a JavaScript expression in the page (promises are
    /// awaited); `null` for `undefined`.
    pub fn eval(&mut self, page: &Page, expr: &str) -> io::Result<Value> {
        let r = self.call(
            Some(page),
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(io::Error::other(format!("chromium: {expr}: {ex}")));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluate `expr` every 20 ms until `done` holds for its value or
    /// `timeout` passes; the last value, and whether `done` held. An
    /// expression that throws (the page not loaded yet) counts as `null`.
    pub fn wait_for(
        &mut self,
        page: &Page,
        expr: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> io::Result<(Value, bool)> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(page, expr).unwrap_or(Value::Null);
            if done(&v) {
                return Ok((v, true));
            }
            if Instant::now() >= deadline {
                return Ok((v, false));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A PNG of the page's viewport.
    pub fn screenshot(&mut self, page: &Page) -> io::Result<Vec<u8>> {
        let r = self.call(
            Some(page),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        )?;
        let data = r["data"]
            .as_str()
            .ok_or_else(|| io::Error::other("chromium: a screenshot without data"))?;
        base64_decode(data)
    }

    /// What went wrong in pages so far: uncaught exceptions, console
    /// errors, and errors the browser logged (failed loads, Content Security
    /// Policy violations).
    pub fn page_errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.events {
            let p = &e["params"];
            match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => {
                    let d = &p["exceptionDetails"];
                    let text = d["exception"]["description"]
                        .as_str()
                        .or(d["text"].as_str())
                        .unwrap_or_default();
                    out.push(format!("exception: {text}"));
                }
                Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                    out.push(format!("console.error: {}", p["args"]));
                }
                Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                    let entry = &p["entry"];
                    out.push(format!(
                        "{}: {} ({})",
                        entry["source"].as_str().unwrap_or_default(),
                        entry["text"].as_str().unwrap_or_default(),
                        entry["url"].as_str().unwrap_or_default()
                    ));
                }
                _ => {}
            }
        }
        out
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .commands
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        let _ = self.commands.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (the protocol's encoding of binary data).
fn base64_decode(s: &str) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b'\r' | b'\n' => continue,
            _ => return Err(io::Error::other(format!("not base64: byte {c}"))),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits).to_le_bytes()[0]);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
