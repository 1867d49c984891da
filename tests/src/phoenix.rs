//! A real trace store for the OTLP tests: Arize Phoenix from PyPI, installed by `cargo xtask
//! test` into target/phoenix-venv (SNIFFER_PHOENIX_VENV), started on 127.0.0.1 with its data in
//! a temporary directory, stopped on drop. It takes OTLP over HTTP (protobuf) at /v1/traces and
//! serves the spans back through its REST API.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Guard, workspace};

/// The venv with Phoenix (and the OpenTelemetry protobuf classes it brings).
pub fn venv() -> PathBuf {
    let venv = std::env::var_os("SNIFFER_PHOENIX_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/phoenix-venv"));
    assert!(
        venv.join("bin/phoenix").is_file(),
        "Arize Phoenix is not installed in {}: `cargo xtask test` installs it (pip install \
         arize-phoenix into target/phoenix-venv), or set SNIFFER_PHOENIX_VENV",
        venv.display()
    );
    venv
}

/// A free TCP port on loopback (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "-f", "--max-time", "10", "--noproxy", "*", url])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Phoenix {
    _guard: Guard,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Phoenix {
    /// Starts Phoenix and waits (two minutes at most) until it answers.
    pub fn start() -> Self {
        let venv = venv();
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, grpc) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("phoenix.log")).expect("log file");
        let mut cmd = Command::new(venv.join("bin/phoenix"));
        cmd.arg("serve")
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", port.to_string())
            .env("PHOENIX_GRPC_PORT", grpc.to_string())
            .env("PHOENIX_WORKING_DIR", dir.path())
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let mut guard = Guard::spawn(&mut cmd);
        let start = Instant::now();
        loop {
            if get(&format!("http://127.0.0.1:{port}/healthz")).is_some() {
                break;
            }
            if let Ok(Some(st)) = guard.child.try_wait() {
                panic!(
                    "Phoenix exited ({st}) before it answered:\n{}",
                    std::fs::read_to_string(dir.path().join("phoenix.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "Phoenix did not answer within 120 s:\n{}",
                std::fs::read_to_string(dir.path().join("phoenix.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(500));
        }
        Self {
            _guard: guard,
            port,
            _dir: dir,
        }
    }

    /// Where OTLP/HTTP goes (sniffer adds /v1/traces).
    pub fn otlp_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span of the default project, as the REST API gives them.
    pub fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "http://127.0.0.1:{}/v1/projects/default/spans?limit=1000",
                self.port
            );
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            // A project appears with its first span.
            let Some(text) = get(&url) else { return out };
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("Phoenix answered {text}: {e}"));
            out.extend(v["data"].as_array().cloned().unwrap_or_default());
            match v["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return out,
            }
        }
    }

    /// The spans once `done` says they are all in (Phoenix stores them in the background),
    /// waiting a minute at most.
    pub fn wait_spans(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "Phoenix did not get {what} within 60 s; it has {} spans: {:?}\n{spans:#?}",
                spans.len(),
                spans
                    .iter()
                    .map(|s| (attr(s, "service.name"), &s["name"]))
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A span attribute by its dotted name (the REST API keeps the names flat; a nested form
/// `{"service": {"name": ..}}` is read too).
pub fn attr<'a>(span: &'a Value, dotted: &str) -> &'a Value {
    let attrs = &span["attributes"];
    match &attrs[dotted] {
        Value::Null => dotted.split('.').fold(attrs, |v, k| &v[k]),
        v => v,
    }
}
