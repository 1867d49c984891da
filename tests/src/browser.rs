//! Headless Chromium (Debian's /usr/bin/chromium, never a downloaded browser) driven over the
//! Chrome DevTools protocol: open a page, evaluate in it, click and type as a user does
//! (`Input.dispatch*` events at page coordinates), take a screenshot.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::Guard;

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    _guard: Guard,
    _profile: tempfile::TempDir,
}

/// `GET path` on 127.0.0.1:port; the body (DevTools keeps the connection open: the body is
/// read by its Content-Length).
fn http_get(port: u16, path: &str) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut w = &s;
    write!(
        w,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut r = BufReader::new(&s);
    let mut len = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("DevTools reply body");
    String::from_utf8_lossy(&body).into_owned()
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and connects to its first page.
    pub fn start(width: u32, height: u32) -> Self {
        assert!(
            Path::new(CHROMIUM).is_file(),
            "the report tests need Debian's Chromium at {CHROMIUM}: apt-get install chromium"
        );
        let profile = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--remote-debugging-port=0",
            &format!("--window-size={width},{height}"),
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut guard = Guard::spawn(&mut cmd);
        let err = guard.child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("Chromium did not print its DevTools address within 60 s");
        let port: u16 = url
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("DevTools address {url}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let page = loop {
            let list: Value =
                serde_json::from_str(&http_get(port, "/json/list")).unwrap_or_default();
            let page = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_owned)
            });
            if let Some(p) = page {
                break p;
            }
            assert!(Instant::now() < deadline, "Chromium has no page target");
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let (ws, _) = tungstenite::client(page.as_str(), stream).expect("DevTools websocket");
        let mut b = Self {
            ws,
            next_id: 0,
            _guard: guard,
            _profile: profile,
        };
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Sends one command and waits for its answer (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).expect("send to DevTools");
        loop {
            let m = self.ws.read().expect("read from DevTools");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression (promises awaited); panics on an exception.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Opens `url` and waits until `ready` (an expression) is true; returns how long it took.
    pub fn open(&mut self, url: &str, ready: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        self.call("Page.navigate", json!({"url": url}));
        self.wait(ready, limit);
        start.elapsed()
    }

    /// Opens a `sniffer report` page from disk and waits until it has drawn; returns how long
    /// that took.
    pub fn open_report(&mut self, html: &Path) -> Duration {
        self.open(
            &format!("file://{}", html.display()),
            "document.documentElement.dataset.ready === '1'",
            Duration::from_secs(60),
        )
    }

    /// Arrows drawn now.
    pub fn arrows(&mut self) -> u64 {
        self.eval("document.querySelectorAll('#diagram g.msg').length")
            .as_u64()
            .expect("a count")
    }

    /// Clicks arrow `[n]` and waits for its message; returns the panel's title.
    pub fn open_message(&mut self, n: u64) -> String {
        self.click_on(&format!("#diagram g.msg[data-n='{n}'] line"));
        self.wait(
            "document.querySelector('#detail.open')",
            Duration::from_secs(5),
        );
        self.text("#detail h2")
    }

    /// The text of the first element `selector`.
    pub fn text(&mut self, selector: &str) -> String {
        let s = serde_json::to_string(selector).expect("json");
        self.eval(&format!("document.querySelector({s}).textContent"))
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector}"))
            .to_owned()
    }

    /// Waits until `expr` is true.
    pub fn wait(&mut self, expr: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.call(
                "Runtime.evaluate",
                json!({"expression": format!("!!({expr})"), "returnByValue": true}),
            );
            if ok["result"]["value"] == true {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not true within {limit:?}: {expr}"
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// A left click at page coordinates, as a mouse does it.
    pub fn click(&mut self, x: f64, y: f64) {
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Clicks the middle of the element `selector` (scrolled into view first).
    pub fn click_on(&mut self, selector: &str) {
        let r = self.eval(&format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2]; }})()",
            s = serde_json::to_string(selector).expect("json")
        ));
        let (x, y) = (r[0].as_f64(), r[1].as_f64());
        let (Some(x), Some(y)) = (x, y) else {
            panic!("no element {selector} to click");
        };
        self.click(x, y);
    }

    /// A key press (`j`, `Escape`, `/`), as a keyboard sends it.
    pub fn key(&mut self, key: &str) {
        let text = if key.chars().count() == 1 { key } else { "" };
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyDown", "key": key, "text": text}),
        );
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key}),
        );
    }

    /// Types text into the focused element.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let data = decode_base64(r["data"].as_str().expect("screenshot data"));
        assert!(data.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, data).expect("write screenshot");
    }
}

/// RFC 4648 base64 (what DevTools sends screenshots in).
pub fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::decode_base64("aGVsbG8="), b"hello");
        assert_eq!(super::decode_base64("iVBORw=="), b"\x89PNG");
    }
}
