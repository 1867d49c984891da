//! `cargo xtask bench`: what tracing costs, as ratios measured in the same run.
//!
//! nginx (Debian's) is the traced server and wrk the load, both on 127.0.0.1. Each case runs
//! untraced and traced alternately (pairs), so the machine's noise hits both sides alike. First,
//! what one syscall costs, from a loop of them (`syscalls`); later, sniffer held up under load
//! (`stall`). The table goes to stdout and `target/bench/results.json`.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{run_cmd, workspace};

mod peers;
mod redis;
mod stall;
mod syscalls;

pub use syscalls::loop_main as syscall_loop;

/// Settings of a bench run.
pub struct Settings {
    pub seconds: u64,
    pub pairs: usize,
    pub soak_seconds: u64,
    pub big_mib: u64,
    /// Only the syscall loops.
    pub syscalls_only: bool,
    /// Only the held-up reader.
    pub stall_only: bool,
}

/// A child killed when dropped.
struct Proc(Child);

impl Proc {
    /// A process that does nothing, for sniffer to trace while others run untraced.
    fn idle() -> anyhow::Result<Self> {
        Ok(Self(
            Command::new("sleep")
                .arg("100000")
                .spawn()
                .context("starting an idle process")?,
        ))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers then (SIGKILL would orphan them).
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("nginx", "nginx"),
        ("wrk", "wrk"),
        ("curl", "curl"),
        ("httpry", "httpry"),
        ("tshark", "tshark"),
        ("openssl", "openssl"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
    ]
    .into_iter()
    .filter(|(bin, _)| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} from Debian", missing.join(", "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert, key).
fn make_cert(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_cmd(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    Ok((cert, key))
}

/// nginx serving `www` on a port of its own (HTTP), another (HTTPS, the system's OpenSSL) and
/// the unix socket [`unix_socket`] (HTTP), one worker, no access log. Returns (nginx, port, TLS
/// port, master pid).
fn start_nginx(dir: &Path, www: &Path) -> anyhow::Result<(Proc, u16, u16, u32)> {
    let unix = unix_socket();
    let _ = fs::remove_file(&unix);
    let port = free_port()?;
    let tls_port = free_port()?;
    let (cert, key) = make_cert(dir)?;
    let tmp = dir.join("nginx-tmp");
    fs::create_dir_all(&tmp)?;
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 100000000;\n  \
             keepalive_timeout 120;\n  client_body_temp_path {t};\n  proxy_temp_path {t};\n  \
             fastcgi_temp_path {t};\n  uwsgi_temp_path {t};\n  scgi_temp_path {t};\n  \
             server {{\n    listen 127.0.0.1:{port};\n    listen unix:{u};\n    root {w};\n  }}\n  \
             server {{\n    listen 127.0.0.1:{tls_port} ssl;\n    ssl_certificate {c};\n    \
             ssl_certificate_key {k};\n    root {w};\n  }}\n}}\n",
            d = dir.display(),
            t = tmp.display(),
            w = www.display(),
            u = unix.display(),
            c = cert.display(),
            k = key.display(),
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not listen on {port}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok((Proc(child), port, tls_port, pid))
}

/// nginx's unix socket: in the temporary directory, as a path in the workspace can pass the
/// 107 bytes a unix socket's path may have.
fn unix_socket() -> PathBuf {
    std::env::temp_dir().join(format!("sniffer-bench-{}.sock", std::process::id()))
}

/// A python server that reads and discards uploads (for the upload case).
fn start_sink() -> anyhow::Result<(Proc, u16, u32)> {
    let mut child = Command::new("python3")
        .arg(workspace().join("tests/fixtures/http_variety.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the upload sink")?;
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("sink said {line:?}"))?;
    let pid = child.id();
    Ok((Proc(child), port, pid))
}

/// What one traced run's summary line says.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub exchanges: u64,
    pub lost: u64,
    pub broken: u64,
    pub payload: u64,
    pub cpu_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    /// Kernel time in sniffer's programs, from a `--bpf-stats` run (0 otherwise).
    pub bpf_s: f64,
    pub peak_rss_kib: u64,
}

/// Reads the `sniffer: N exchanges, ...` line.
pub fn parse_summary(stderr: &str) -> Option<Summary> {
    let line = stderr
        .lines()
        .find(|l| l.contains(" exchanges, ") && l.starts_with("sniffer:"))?;
    let num = |after: &str| -> Option<f64> {
        let i = line.find(after)?;
        line[..i].rsplit([' ', '(']).next()?.parse().ok()
    };
    Some(Summary {
        exchanges: num(" exchanges,")? as u64,
        lost: num(" events lost")? as u64,
        broken: num(" broken")? as u64,
        payload: num(" payload bytes captured")? as u64,
        cpu_s: line.split("cpu ").nth(1)?.split(' ').next()?.parse().ok()?,
        user_s: line
            .split("(user ")
            .nth(1)?
            .split(',')
            .next()?
            .parse()
            .ok()?,
        sys_s: line
            .split(", sys ")
            .nth(1)?
            .split(')')
            .next()?
            .parse()
            .ok()?,
        bpf_s: line
            .split(", bpf ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|ms| ms.parse::<f64>().ok())
            .map_or(0.0, |ms| ms / 1e3),
        peak_rss_kib: line
            .split("peak rss ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()?,
    })
}

/// A sniffer in the background, stopped with SIGINT.
struct Sniffer {
    child: Proc,
    stderr: mpsc::Receiver<String>,
}

impl Sniffer {
    fn start(bin: &Path, log: &Path, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .arg("-o")
            .arg(log)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sniffer")?;
        let err = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("tracing") => break,
                Ok(l) => seen.push_str(&l),
                Err(_) => bail!("sniffer did not start: {seen}"),
            }
        }
        Ok(Self {
            child: Proc(child),
            stderr: rx,
        })
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn stop(self) -> anyhow::Result<Summary> {
        self.stop_with_text().map(|(s, _)| s)
    }

    /// Its summary and everything it wrote to stderr after starting.
    fn stop_with_text(mut self) -> anyhow::Result<(Summary, String)> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGINT) };
        let _ = self.child.0.wait();
        // Its stderr's reader stops at the pipe's end: every line, the notes after the
        // summary too (bounded, should something else hold the pipe).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lines = Vec::new();
        while let Ok(l) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            lines.push(l);
        }
        let text = lines.join("\n");
        let summary =
            parse_summary(&text).ok_or_else(|| anyhow!("no summary from sniffer:\n{text}"))?;
        Ok((summary, text))
    }
}

/// wrk's result: (requests completed, requests per second).
fn wrk(
    url: &str,
    conns: u32,
    threads: u32,
    seconds: u64,
    close: bool,
) -> anyhow::Result<(u64, f64)> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        &threads.to_string(),
        "-c",
        &conns.to_string(),
        "-d",
        &format!("{seconds}s"),
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let reqs = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("wrk said:\n{text}"))?;
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|r| r.trim().parse().ok())
        .ok_or_else(|| anyhow!("wrk said:\n{text}"))?;
    Ok((reqs, rate))
}

/// curl's transfer speed (bytes/s), downloading or uploading.
fn curl_speed(args: &[&str], field: &str) -> anyhow::Result<f64> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", &format!("%{{{field}}}")])
        .args(args)
        .output()
        .context("running curl")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| anyhow!("curl said {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// One case's figures over its pairs.
#[derive(Debug, Default, serde::Serialize)]
pub struct CaseResult {
    pub name: String,
    /// Traced / untraced throughput, per pair.
    pub ratios: Vec<f64>,
    pub untraced: Vec<f64>,
    pub traced: Vec<f64>,
    /// Requests the load generator completed in traced runs, and exchanges sniffer logged.
    pub completed: Vec<u64>,
    pub logged: Vec<u64>,
    pub summaries: Vec<Summary>,
    /// CPU per request, from the case's `--bpf-stats` run.
    pub cpu: Option<CpuFigures>,
    pub notes: String,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() { 0.0 } else { s[s.len() / 2] }
}

/// A wrk load: URL, connections, and whether each request has a connection of its own.
struct Load<'a> {
    /// An http:// or https:// URL for wrk, or `unix:PATH`: a connection per request over that
    /// unix socket from `tests/fixtures/unix_churn.py` (wrk has no unix sockets).
    url: &'a str,
    conns: u32,
    close: bool,
}

impl Load<'_> {
    /// Runs the load for `seconds`: (requests completed, requests per second).
    fn run(&self, seconds: u64) -> anyhow::Result<(u64, f64)> {
        let Some(path) = self.url.strip_prefix("unix:") else {
            return wrk(self.url, self.conns, self.conns.min(2), seconds, self.close);
        };
        let out = Command::new("python3")
            .arg(workspace().join("tests/fixtures/unix_churn.py"))
            .arg(path)
            .arg(self.conns.to_string())
            .arg(seconds.to_string())
            .output()
            .context("running the unix socket client")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let done: u64 = text.trim().parse().map_err(|_| {
            anyhow!(
                "the unix socket client said {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((done, done as f64 / seconds as f64))
    }
}

/// One load case: `pairs` of (untraced, sniffer running with `args`) wrk runs, then one more
/// run with `--bpf-stats` for the CPU figures (counting run time costs a little, so the
/// throughput pairs run without it).
fn load_case(
    name: &str,
    bin: &Path,
    dir: &Path,
    args: &[String],
    load: &Load<'_>,
    s: &Settings,
) -> anyhow::Result<CaseResult> {
    let mut r = CaseResult {
        name: name.to_owned(),
        ..CaseResult::default()
    };
    for pair in 0..s.pairs {
        let (_, base) = load.run(s.seconds)?;
        let sniffer = Sniffer::start(bin, &dir.join(format!("{name}-{pair}.log")), args)?;
        let (done, rate) = load.run(s.seconds)?;
        thread::sleep(Duration::from_millis(500));
        let sum = sniffer.stop()?;
        eprintln!(
            "xtask: {name} pair {pair}: untraced {base:.0}/s, traced {rate:.0}/s, {done} completed, {} logged, cpu {:.2} s (user {:.2}, sys {:.2})",
            sum.exchanges, sum.cpu_s, sum.user_s, sum.sys_s
        );
        r.untraced.push(base);
        r.traced.push(rate);
        r.ratios.push(rate / base);
        r.completed.push(done);
        r.logged.push(sum.exchanges);
        r.summaries.push(sum);
    }
    let mut with_stats = args.to_vec();
    with_stats.push("--bpf-stats".into());
    let sniffer = Sniffer::start(bin, &dir.join(format!("{name}-stats.log")), &with_stats)?;
    let (done, _) = load.run(s.seconds)?;
    thread::sleep(Duration::from_millis(500));
    let sum = sniffer.stop()?;
    r.cpu = Some(CpuFigures::new(&sum, done));
    Ok(r)
}

/// What sniffer costs per request, from a `--bpf-stats` run: its own user and system time and
/// the kernel time of its programs (every syscall of every process passes the filter at their
/// start), in microseconds per request the load generator completed.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct CpuFigures {
    pub user_us: f64,
    pub sys_us: f64,
    pub bpf_us: f64,
    pub requests: u64,
}

impl CpuFigures {
    fn new(sum: &Summary, requests: u64) -> Self {
        let per = |secs: f64| {
            if requests == 0 {
                0.0
            } else {
                secs * 1e6 / requests as f64
            }
        };
        Self {
            user_us: per(sum.user_s),
            sys_us: per(sum.sys_s),
            bpf_us: per(sum.bpf_s),
            requests,
        }
    }

    fn total_us(&self) -> f64 {
        self.user_us + self.sys_us + self.bpf_us
    }
}

fn transfer_case(
    name: &str,
    bin: &Path,
    dir: &Path,
    server_pid: u32,
    args: &[&str],
    field: &str,
    s: &Settings,
) -> anyhow::Result<CaseResult> {
    let mut r = CaseResult {
        name: name.to_owned(),
        ..CaseResult::default()
    };
    // A first transfer warms the page cache, so the first pair is not the cold one.
    curl_speed(args, field)?;
    for pair in 0..s.pairs {
        let base = curl_speed(args, field)?;
        let log = dir.join(format!("{name}-{pair}.log"));
        let mut cmd = Command::new(bin);
        cmd.arg("-o").arg(&log).args([
            "--pid",
            &server_pid.to_string(),
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
        ]);
        cmd.arg(format!("%{{{field}}}")).args(args);
        let out = cmd.output().context("running curl under sniffer")?;
        let traced: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0);
        let sum = parse_summary(&String::from_utf8_lossy(&out.stderr))
            .ok_or_else(|| anyhow!("no summary: {}", String::from_utf8_lossy(&out.stderr)))?;
        eprintln!(
            "xtask: {name} pair {pair}: untraced {:.0} MB/s, traced {:.0} MB/s, {} payload bytes through the ring",
            base / 1e6,
            traced / 1e6,
            sum.payload
        );
        r.untraced.push(base);
        r.traced.push(traced);
        r.ratios.push(if base > 0.0 { traced / base } else { 0.0 });
        r.logged.push(sum.exchanges);
        r.completed.push(1);
        r.summaries.push(sum);
    }
    Ok(r)
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn soak(
    bin: &Path,
    dir: &Path,
    nginx_pid: u32,
    port: u16,
    s: &Settings,
) -> anyhow::Result<serde_json::Value> {
    let sniffer = Sniffer::start(
        bin,
        &dir.join("soak.log"),
        &["--pid".into(), nginx_pid.to_string()],
    )?;
    let pid = sniffer.pid();
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut completed = 0;
    let mut round = 0u64;
    let small = format!("http://127.0.0.1:{port}/small.txt");
    while start.elapsed().as_secs() < s.soak_seconds {
        // Mixed traffic in 10 s slices: keep-alive, fresh connections, and a large download.
        let (n, _) = match round % 3 {
            0 => wrk(&small, 20, 2, 10, false)?,
            1 => wrk(&small, 10, 2, 10, true)?,
            _ => {
                curl_speed(
                    &[&format!("http://127.0.0.1:{port}/big.bin")],
                    "speed_download",
                )?;
                thread::sleep(Duration::from_secs(5));
                (1, 0.0)
            }
        };
        completed += n;
        round += 1;
        let rss = rss_kib(pid).unwrap_or(0);
        eprintln!(
            "xtask: soak {:>4}s rss {rss} KiB",
            start.elapsed().as_secs()
        );
        samples.push(serde_json::json!({"t": start.elapsed().as_secs(), "rss_kib": rss}));
    }
    thread::sleep(Duration::from_millis(500));
    let sum = sniffer.stop()?;
    // Several GB of log for the memory figures alone: gone once measured, its size kept.
    let log = dir.join("soak.log");
    let log_bytes = fs::metadata(&log).map_or(0, |m| m.len());
    fs::remove_file(&log).ok();
    let rss: Vec<u64> = samples
        .iter()
        .filter_map(|s| s["rss_kib"].as_u64())
        .collect();
    Ok(serde_json::json!({
        "seconds": s.soak_seconds,
        "rss_start_kib": rss.first(),
        "rss_peak_kib": rss.iter().max(),
        "rss_end_kib": rss.last(),
        "samples": samples,
        "completed": completed,
        "log_bytes": log_bytes,
        "summary": sum,
    }))
}

fn machine() -> String {
    let cores = thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, kernel {}", kernel.trim())
}

/// A run of one case alone: its table to stdout, its figures to `results.json`.
fn one_case(
    dir: &Path,
    runs: &str,
    s: &Settings,
    table: String,
    json: serde_json::Value,
) -> anyhow::Result<()> {
    println!("{}, {} {runs}\n\n{table}", machine(), s.pairs);
    fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}

pub fn bench(bin: &Path, s: &Settings) -> anyhow::Result<()> {
    ensure_tools()?;
    let dir = workspace().join("target").join("bench");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let syscalls = if s.stall_only {
        serde_json::Value::Null
    } else {
        syscalls::case(bin, &dir, s.pairs)?
    };
    if s.syscalls_only {
        let table = syscalls::table(&syscalls);
        return one_case(
            &dir,
            "pairs",
            s,
            table,
            serde_json::json!({ "syscalls": syscalls }),
        );
    }
    let www = dir.join("www");
    fs::create_dir_all(&www)?;
    fs::write(
        www.join("small.txt"),
        "hello from nginx, traced by sniffer\n",
    )?;
    let big = www.join("big.bin");
    let f = fs::File::create(&big)?;
    f.set_len(s.big_mib << 20)?;
    let (_nginx, port, tls_port, nginx_pid) = start_nginx(&dir, &www)?;
    let small = format!("http://127.0.0.1:{port}/small.txt");
    let tls_small = format!("https://127.0.0.1:{tls_port}/small.txt");
    let unix_small = format!("unix:{}", unix_socket().display());
    if s.stall_only {
        let big_url = format!("http://127.0.0.1:{port}/big.bin");
        let stall = stall::case(bin, &dir, nginx_pid, &small, &big_url, s)?;
        let table = stall::table(&stall);
        return one_case(
            &dir,
            "runs of each",
            s,
            table,
            serde_json::json!({ "stall": stall }),
        );
    }
    let mut cases = Vec::new();
    // Nothing busy traced: sniffer follows an idle process while nginx and wrk run untraced.
    // Every syscall of every process still passes the programs' first test.
    let idle = Proc::idle()?;
    let idle_args = ["--pid".to_owned(), idle.0.id().to_string()];
    let nginx_args = ["--pid".to_owned(), nginx_pid.to_string()];
    for (name, url, conns, close, args) in [
        ("untraced (sniffer idle)", &small, 10, false, &idle_args),
        // The TLS probes sit on traced processes only: an untraced nginx's OpenSSL calls
        // do not trap.
        (
            "untraced TLS (sniffer idle)",
            &tls_small,
            10,
            false,
            &idle_args,
        ),
        ("keep-alive", &small, 10, false, &nginx_args),
        ("connection-close", &small, 10, true, &nginx_args),
        // devstack's Apache reaches uwsgi services so: a unix connection per request. Four
        // Python threads are the load, so its throughput is the client's; the logged count,
        // the CPU and the RSS are the figures.
        ("unix connection-close", &unix_small, 4, true, &nginx_args),
        ("200-connections", &small, 200, false, &nginx_args),
        // nginx reads and writes through the system's OpenSSL, which sniffer probes.
        ("TLS keep-alive", &tls_small, 10, false, &nginx_args),
    ] {
        let load = Load { url, conns, close };
        cases.push(load_case(name, bin, &dir, args, &load, s)?);
    }
    drop(idle);
    let big_url = format!("http://127.0.0.1:{port}/big.bin");
    cases.push(transfer_case(
        "download",
        bin,
        &dir,
        nginx_pid,
        &[&big_url],
        "speed_download",
        s,
    )?);
    let ca = dir.join("cert.pem");
    let ca = ca.to_str().ok_or_else(|| anyhow!("path"))?;
    let tls_big = format!("https://127.0.0.1:{tls_port}/big.bin");
    cases.push(transfer_case(
        "TLS download",
        bin,
        &dir,
        nginx_pid,
        &["--cacert", ca, &tls_big],
        "speed_download",
        s,
    )?);
    let (_sink, sink_port, sink_pid) = start_sink()?;
    let up_url = format!("http://127.0.0.1:{sink_port}/sink");
    let big_s = big.to_str().ok_or_else(|| anyhow!("path"))?.to_owned();
    cases.push(transfer_case(
        "upload",
        bin,
        &dir,
        sink_pid,
        &["-T", &big_s, &up_url],
        "speed_upload",
        s,
    )?);
    let stall = stall::case(bin, &dir, nginx_pid, &small, &big_url, s)?;
    let peers = peers::compare(bin, &dir, nginx_pid, port, s)?;
    let redis = redis::case(bin, &dir, s)?;
    let soak = if s.soak_seconds > 0 {
        soak(bin, &dir, nginx_pid, port, s)?
    } else {
        serde_json::Value::Null
    };

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| case | traced/untraced throughput (median) | exchanges logged / completed | payload through ring | sniffer CPU per request, µs: user + sys + BPF = all | sniffer CPU s, user / sys (per run) | peak RSS |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|");
    for c in &cases {
        let logged: u64 = c.logged.iter().sum();
        let completed: u64 = c.completed.iter().sum();
        let rss = c
            .summaries
            .iter()
            .map(|s| s.peak_rss_kib)
            .max()
            .unwrap_or(0);
        let payload = c.summaries.iter().map(|s| s.payload).max().unwrap_or(0);
        let lost: u64 = c.summaries.iter().map(|s| s.lost).sum();
        let broken: u64 = c.summaries.iter().map(|s| s.broken).sum();
        let cpu = c.cpu.map_or_else(
            || "-".to_owned(),
            |f| {
                format!(
                    "{:.2} + {:.2} + {:.2} = {:.2}",
                    f.user_us,
                    f.sys_us,
                    f.bpf_us,
                    f.total_us()
                )
            },
        );
        let split = c
            .summaries
            .iter()
            .map(|s| format!("{:.2} / {:.2}", s.user_s, s.sys_s))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            table,
            "| {} | {:.2} ({}) | {logged} / {completed}{}{} | {} KiB | {cpu} | {split} | {} MiB |",
            c.name,
            median(&c.ratios),
            c.ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            if lost > 0 {
                format!(", {lost} events lost")
            } else {
                String::new()
            },
            if broken > 0 {
                format!(", {broken} broken")
            } else {
                String::new()
            },
            payload >> 10,
            rss >> 10,
        );
    }
    if !soak.is_null() {
        let _ = writeln!(
            table,
            "\nsoak {} s of mixed traffic: sniffer RSS start {} KiB, peak {} KiB, end {} KiB",
            soak["seconds"], soak["rss_start_kib"], soak["rss_peak_kib"], soak["rss_end_kib"]
        );
    }
    let _ = writeln!(table, "\n{}", stall::table(&stall));
    let _ = writeln!(table, "{}", syscalls::table(&syscalls));
    let _ = writeln!(table, "{}", peers::table(&peers));
    let _ = writeln!(table, "{}", redis::table(&redis));
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let header = format!(
        "{date}, {}, {} s per run, {} pairs",
        machine(),
        s.seconds,
        s.pairs
    );
    println!("{header}\n\n{table}");
    let json = serde_json::json!({
        "date": date,
        "machine": machine(),
        "seconds": s.seconds,
        "pairs": s.pairs,
        "cases": cases,
        "syscalls": syscalls,
        "peers": peers,
        "redis": redis,
        "soak": soak,
        "stall": stall,
        "table": table,
    });
    let out: PathBuf = dir.join("results.json");
    fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    eprintln!("xtask: results in {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_figures() {
        let s = parse_summary("x\nsniffer: 12 exchanges, 24 messages, 300 body bytes, 3 events lost, 1 broken (5 connections, 99 kernel events, 4096 payload bytes captured, cpu 0.52 s (user 0.40, sys 0.12), peak rss 20480 KiB)\n").unwrap();
        assert_eq!(
            (s.exchanges, s.lost, s.broken, s.payload, s.peak_rss_kib),
            (12, 3, 1, 4096, 20480)
        );
        assert!((s.cpu_s - 0.52).abs() < 1e-9);
        assert!((s.user_s - 0.40).abs() < 1e-9 && (s.sys_s - 0.12).abs() < 1e-9);
        assert_eq!(s.bpf_s, 0.0);
        let s = parse_summary("sniffer: 1 exchanges, 2 messages, 6 body bytes, 0 events lost, 0 broken (1 connections, 7 kernel events, 276 payload bytes captured, cpu 0.81 s (user 0.49, sys 0.32), bpf 12.5 ms in 10366 runs, peak rss 49816 KiB)").unwrap();
        assert!((s.bpf_s - 0.0125).abs() < 1e-9);
        assert!(parse_summary("nothing").is_none());
    }
}
