//! What one syscall costs with sniffer loaded, without the noise of a load test: a single
//! thread making the same syscall in a loop, timed with nothing loaded, with sniffer tracing
//! an idle process (every process's cost), and with sniffer tracing the loop itself.
//!
//! The loop runs in a child (`cargo xtask syscall-loop`, hidden), which sniffer can trace by
//! pid without tracing the bench. It reads one order per line on stdin (`<kind> <count>`) and
//! answers the nanoseconds per iteration. Kinds:
//! - `getppid`: a syscall sniffer does not read (only the first test of its programs);
//! - `read`: read(2) of one byte from /dev/zero, a syscall sniffer reads, not on a socket;
//! - `http`: one HTTP/1.1 exchange over a loopback TCP connection inside the process: the
//!   client's write, the server's read, the server's write, the client's read (4 syscalls).
use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{ChildStdin, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};

use super::{Proc, Sniffer, median};

const REQUEST: &[u8] = b"GET /syscalls HTTP/1.1\r\nHost: bench\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The loops: kind, iterations per measure, syscalls per iteration.
const KINDS: [(&str, u64, f64); 3] = [
    ("getppid", 2_000_000, 1.0),
    ("read", 2_000_000, 1.0),
    ("http", 200_000, 4.0),
];

/// The child's side: answers each order on stdin with the nanoseconds per iteration.
pub fn loop_main() -> anyhow::Result<()> {
    let zero = fs::File::open("/dev/zero").context("opening /dev/zero")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (kind, n) = line
            .split_once(' ')
            .ok_or_else(|| anyhow!("order {line:?}: want `<kind> <count>`"))?;
        let n: u64 = n.parse().context("count")?;
        let start = Instant::now();
        match kind {
            "getppid" => {
                for _ in 0..n {
                    // SAFETY: no preconditions.
                    unsafe { libc::getppid() };
                }
            }
            "read" => {
                let mut b = [0u8; 1];
                for _ in 0..n {
                    (&zero).read_exact(&mut b)?;
                }
            }
            "http" => {
                let mut buf = [0u8; 256];
                for _ in 0..n {
                    client.write_all(REQUEST)?;
                    read_len(&mut server, &mut buf, REQUEST.len())?;
                    server.write_all(RESPONSE)?;
                    read_len(&mut client, &mut buf, RESPONSE.len())?;
                }
            }
            other => bail!("unknown kind {other:?}"),
        }
        let ns = start.elapsed().as_nanos() as f64 / n as f64;
        writeln!(stdout.lock(), "{ns:.1}")?;
    }
    Ok(())
}

/// Reads exactly `len` bytes (one read when the peer's write is whole, as here).
fn read_len(s: &mut TcpStream, buf: &mut [u8], len: usize) -> anyhow::Result<()> {
    let mut got = 0;
    while got < len {
        let n = s.read(&mut buf[got..len])?;
        if n == 0 {
            bail!("the loop's connection closed");
        }
        got += n;
    }
    Ok(())
}

/// A running loop child.
struct Looper {
    child: Proc,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Looper {
    fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("the xtask binary")?;
        let mut child = Command::new(exe)
            .arg("syscall-loop")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the syscall loop")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        Ok(Self {
            child: Proc(child),
            stdin,
            stdout,
        })
    }

    /// Nanoseconds per iteration of `n` iterations of `kind`.
    fn measure(&mut self, kind: &str, n: u64) -> anyhow::Result<f64> {
        writeln!(self.stdin, "{kind} {n}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the syscall loop ended");
        }
        line.trim()
            .parse()
            .with_context(|| format!("the loop's answer {line:?}"))
    }
}

/// Who sniffer traces while the loop runs.
#[derive(Clone, Copy, PartialEq)]
enum Setting {
    /// sniffer not running.
    Off,
    /// sniffer tracing an idle process: the loop is untraced.
    Idle,
    /// sniffer tracing the loop.
    Traced,
}

/// Runs the three settings alternately, `pairs` times, and returns the figures as JSON.
pub fn case(bin: &Path, dir: &Path, pairs: usize) -> anyhow::Result<serde_json::Value> {
    let mut looper = Looper::start()?;
    let idle = Proc::idle()?;
    let log = dir.join("syscalls.log");
    // ns per iteration: [setting][kind] -> one value per pair.
    let settings = [Setting::Off, Setting::Idle, Setting::Traced];
    let mut ns = vec![vec![Vec::new(); KINDS.len()]; settings.len()];
    let mut traced = Vec::new();
    for _ in 0..pairs.max(1) {
        for (si, &setting) in settings.iter().enumerate() {
            let sniffer = match setting {
                Setting::Off => None,
                Setting::Idle => Some(Sniffer::start(
                    bin,
                    &log,
                    &["--pid".to_owned(), idle.0.id().to_string()],
                )?),
                Setting::Traced => Some(Sniffer::start(
                    bin,
                    &log,
                    &["--pid".to_owned(), looper.child.0.id().to_string()],
                )?),
            };
            for (ki, (kind, n, _)) in KINDS.iter().enumerate() {
                ns[si][ki].push(looper.measure(kind, *n)?);
            }
            if let Some(s) = sniffer {
                let sum = s.stop()?;
                if setting == Setting::Traced {
                    traced.push(sum);
                }
            }
        }
    }
    let http_runs = KINDS[2].1 * pairs.max(1) as u64;
    let mut rows = Vec::new();
    for (ki, (kind, _, per)) in KINDS.iter().enumerate() {
        let [off, idle, traced] = [0, 1, 2].map(|si| median(&ns[si][ki]) / *per);
        rows.push(serde_json::json!({
            "kind": kind,
            "ns_per_syscall": { "off": off, "idle": idle, "traced": traced },
            "added_ns_untraced": idle - off,
            "added_ns_traced": traced - off,
        }));
    }
    let logged: u64 = traced.iter().map(|s| s.exchanges).sum();
    let per_exchange = |f: fn(&super::Summary) -> f64| {
        traced.iter().map(f).sum::<f64>() * 1e6 / logged.max(1) as f64
    };
    Ok(serde_json::json!({
        "rows": rows,
        "http_exchanges_logged": logged,
        "http_exchanges_made": http_runs,
        "lost": traced.iter().map(|s| s.lost).sum::<u64>(),
        // The daemon's CPU per exchange logged, over the traced runs (the two other loops
        // give it nothing to do).
        "sniffer_user_us_per_exchange": per_exchange(|s| s.user_s),
        "sniffer_sys_us_per_exchange": per_exchange(|s| s.sys_s),
        "summaries": traced,
    }))
}

/// The markdown table of [`case`]'s figures.
pub fn table(v: &serde_json::Value) -> String {
    let mut t = String::from(
        "| syscall (one thread, in a loop) | ns per syscall: no sniffer / sniffer tracing an idle process / tracing the loop | added, untraced | added, traced |\n|---|---|---|---|\n",
    );
    for r in v["rows"].as_array().into_iter().flatten() {
        let f = |k: &str| r["ns_per_syscall"][k].as_f64().unwrap_or(f64::NAN);
        t.push_str(&format!(
            "| {} | {:.0} / {:.0} / {:.0} | {:+.0} ns | {:+.0} ns |\n",
            r["kind"].as_str().unwrap_or("?"),
            f("off"),
            f("idle"),
            f("traced"),
            r["added_ns_untraced"].as_f64().unwrap_or(f64::NAN),
            r["added_ns_traced"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    t.push_str(&format!(
        "\nhttp exchanges of the traced loop logged / made: {} / {}, {} events lost; sniffer's CPU per exchange: user {:.2} µs, sys {:.2} µs\n",
        v["http_exchanges_logged"],
        v["http_exchanges_made"],
        v["lost"],
        v["sniffer_user_us_per_exchange"].as_f64().unwrap_or(f64::NAN),
        v["sniffer_sys_us_per_exchange"].as_f64().unwrap_or(f64::NAN),
    ));
    t
}
