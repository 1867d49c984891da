//! Harness for sniffer's integration tests on the real kernel: start real servers and clients
//! on loopback, run the real sniffer binary around them, read what it wrote.
//!
//! Every process a test starts is held by a guard that kills it on drop, so a failing test
//! leaves nothing running. Kernel tests need root and BPF; without them they fail with a
//! message saying so, unless SNIFFER_SKIP_KERNEL_TESTS=1 is set.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;

pub mod browser;
pub mod cgroup;
pub mod netns;
pub mod openstack;
pub mod phoenix;

/// Whether kernel tests run here. Panics when they cannot (not root) and were not skipped
/// explicitly: a silent skip would read as a pass.
pub fn kernel_tests() -> bool {
    if std::env::var("SNIFFER_SKIP_KERNEL_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SNIFFER_SKIP_KERNEL_TESTS=1: kernel test skipped");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "sniffer's kernel tests load BPF programs and need root (euid is {euid}); run them as \
         root, or set SNIFFER_SKIP_KERNEL_TESTS=1 to skip them"
    );
    true
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The sniffer binary under test: SNIFFER_BIN (set by `cargo xtask test`), else the debug build.
pub fn sniffer_bin() -> PathBuf {
    let bin = std::env::var_os("SNIFFER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/sniffer"));
    assert!(
        bin.is_file(),
        "no sniffer binary at {}: run the tests with `cargo xtask test`, which builds it",
        bin.display()
    );
    bin
}

pub fn fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(name)
}

/// A child process killed (with its process group) when dropped.
pub struct Guard {
    pub child: Child,
}

impl Guard {
    pub fn spawn(cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt as _;
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to end, at most `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                start.elapsed() < limit,
                "process {} still running after {limit:?}",
                self.child.id()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no memory-safety preconditions; negative pid = process group.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Reads lines of a child's stdout on a thread, so tests can wait for one with a deadline.
pub struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    pub fn new(out: ChildStdout) -> Self {
        Self::from_reader(out)
    }

    pub fn from_reader(r: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx }
    }

    /// Every line until the output ends (at most `limit`), joined.
    pub fn rest(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut out = String::new();
        while let Ok(l) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    /// The first line starting with `prefix`, waiting at most `limit`.
    pub fn expect(&self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the output ended before a line starting with {prefix:?} (see its stderr)"
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no line starting with {prefix:?} within {limit:?}")
                }
            }
        }
    }

    /// The value after `prefix` on the next line starting with it (`LOCAL 40112` -> 40112).
    pub fn expect_value<T: std::str::FromStr>(&self, prefix: &str, limit: Duration) -> T {
        let line = self.expect(prefix, limit);
        let value = line[prefix.len()..].trim();
        value
            .parse()
            .unwrap_or_else(|_| panic!("{line:?}: {value:?} is not a value of the kind expected"))
    }
}

/// A test HTTP server (tests/fixtures/http_server.py) on loopback.
pub struct Server {
    pub guard: Guard,
    pub port: u16,
    pub lines: Lines,
}

impl Server {
    /// Serves `dir`; `extra` are more http_server.py arguments (--mode, --bind, ...).
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let dir = dir.to_str().expect("UTF-8 path");
        let mut args = vec!["--dir", dir];
        args.extend_from_slice(extra);
        Self::script("http_server.py", &args)
    }

    /// Runs a server fixture that prints `PORT <n>` once it listens.
    pub fn script(script: &str, args: &[&str]) -> Self {
        Self::spawn(&mut Self::command(script, args))
    }

    /// The command of a server fixture, to adjust before [`Server::spawn`].
    pub fn command(script: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(fixture(script)).args(args);
        cmd
    }

    /// Starts a server fixture's command and waits for its `PORT <n>`.
    pub fn spawn(cmd: &mut Command) -> Self {
        cmd.stdout(Stdio::piped());
        let mut guard = Guard::spawn(cmd);
        let lines = Lines::new(guard.child.stdout.take().expect("stdout"));
        let port = lines
            .expect("PORT ", Duration::from_secs(20))
            .trim_start_matches("PORT ")
            .parse()
            .expect("port number");
        Self { guard, port, lines }
    }

    /// The python process serving (pyenv may put a shim in front: follow it to python).
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

/// What one connection looked like, from index.jsonl.
#[derive(Debug, Deserialize, Clone)]
pub struct ConnRecord {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    pub fd: i32,
    pub role: String,
    pub transport: String,
    pub local: String,
    pub peer: String,
    /// The socket's network namespace inode, when the kernel told.
    #[serde(default)]
    pub netns: Option<u32>,
    pub end: Option<String>,
    pub open_lost: bool,
    pub end_known: bool,
    pub send: DirRecord,
    pub recv: DirRecord,
}

#[derive(Debug, Deserialize, Clone)]
pub struct DirRecord {
    pub file: Option<String>,
    pub bytes: u64,
    pub captured: u64,
    pub uncaptured: u64,
    pub lost: u64,
    pub gaps: Vec<GapRecord>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct GapRecord {
    pub off: u64,
    pub len: u64,
    pub kind: String,
}

/// The results of one sniffer run.
pub struct Capture {
    pub dir: tempfile::TempDir,
    pub conns: Vec<ConnRecord>,
    pub raw: String,
    pub log: String,
    pub stderr: String,
    pub status: ExitStatus,
}

impl Capture {
    fn read(dir: tempfile::TempDir, stderr: String, status: ExitStatus) -> Self {
        let index = fs::read_to_string(dir.path().join("streams/index.jsonl")).unwrap_or_default();
        let conns = index
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad index line {l}: {e}")))
            .collect();
        let raw = fs::read_to_string(dir.path().join("raw.txt")).unwrap_or_default();
        // The numbered log: what a user reads.
        let log = fs::read_to_string(dir.path().join("sniffer.log")).unwrap_or_default();
        Self {
            dir,
            conns,
            raw,
            log,
            stderr,
            status,
        }
    }

    /// The captured bytes of one direction ("send" or "recv") of a connection.
    pub fn stream(&self, c: &ConnRecord, dir: &str) -> Vec<u8> {
        let d = if dir == "send" { &c.send } else { &c.recv };
        d.file
            .as_ref()
            .map(|f| fs::read(self.dir.path().join("streams").join(f)).expect("stream file"))
            .unwrap_or_default()
    }

    pub fn conns_of(&self, pid: u32) -> Vec<&ConnRecord> {
        self.conns.iter().filter(|c| c.pid == pid).collect()
    }

    /// Everything the run wrote, to search for bytes that must not be there.
    pub fn all_output(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for c in &self.conns {
            all.extend(self.stream(c, "send"));
            all.extend(self.stream(c, "recv"));
        }
        all.extend(self.raw.as_bytes());
        all.extend(self.log.as_bytes());
        all
    }

    /// The run's JSONL (`--jsonl`).
    pub fn jsonl_path(&self) -> PathBuf {
        self.dir.path().join("exchanges.jsonl")
    }

    /// The run's numbered log (`-o`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sniffer.log")
    }

    pub fn describe(&self) -> String {
        format!(
            "sniffer stderr:\n{}\nlog:\n{}\nconnections: {:#?}",
            self.stderr, self.log, self.conns
        )
    }
}

fn sniffer_cmd(dir: &Path, args: &[&str], streams: bool) -> Command {
    sniffer_cmd_in(None, dir, args, streams)
}

/// The sniffer command, run in network namespace `netns` when given.
fn sniffer_cmd_in(netns: Option<&str>, dir: &Path, args: &[&str], streams: bool) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(sniffer_bin());
            c
        }
        None => Command::new(sniffer_bin()),
    };
    cmd.arg("-o")
        .arg(dir.join("sniffer.log"))
        .arg("--jsonl")
        .arg(dir.join("exchanges.jsonl"));
    if streams {
        // Every byte of every stream, in files, and every kernel event as a line.
        cmd.arg(format!("--raw={}", dir.join("raw.txt").display()))
            .arg("--dump-streams")
            .arg(dir.join("streams"));
    }
    cmd.args(args);
    cmd
}

/// Runs `sniffer ARGS -- COMMAND` to completion (at most `limit`), with stream dumps.
pub fn sniff_command(args: &[&str], command: &[&str], limit: Duration) -> Capture {
    sniff_command_with(args, command, limit, true)
}

/// Like [`sniff_command`]; `streams: false` leaves out the dumps (and their full copy).
pub fn sniff_command_with(
    args: &[&str],
    command: &[&str],
    limit: Duration,
    streams: bool,
) -> Capture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = sniffer_cmd(dir.path(), args, streams);
    cmd.arg("--")
        .args(command)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let mut g = Guard::spawn(&mut cmd);
    let stderr = g.child.stderr.take().expect("stderr");
    let err_thread = thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = g.wait_timeout(limit);
    let stderr = err_thread.join().unwrap_or_default();
    Capture::read(dir, stderr, status)
}

/// A sniffer running in the background until stopped with SIGINT.
pub struct Running {
    dir: tempfile::TempDir,
    guard: Guard,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    /// Starts `sniffer ARGS` and waits until it traces.
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(None, args, true)
    }

    /// Starts `sniffer ARGS` in network namespace `netns` (a lab's host), with stream dumps
    /// when `streams`, and waits until it traces.
    pub fn start_in(netns: Option<&str>, args: &[&str], streams: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = sniffer_cmd_in(netns, dir.path(), args, streams);
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
        let mut guard = Guard::spawn(&mut cmd);
        let (tx, rx) = mpsc::channel();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let keep = stderr.clone();
        let err = guard.child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if line.contains("tracing") {
                    let _ = tx.send(());
                }
                let mut s = keep.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!(
                "sniffer did not start tracing within 60 s; stderr:\n{}",
                stderr.lock().expect("lock")
            );
        }
        Self { dir, guard, stderr }
    }

    /// The sniffer's pid.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Stops it with SIGINT (as Ctrl-C does) and reads its results.
    pub fn stop(self) -> Capture {
        self.stop_with(libc::SIGINT)
    }

    /// Kills it with SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        self.guard.signal(libc::SIGKILL);
        self.guard.wait_timeout(Duration::from_secs(10));
    }

    /// Stops it with `sig` and reads its results.
    pub fn stop_with(mut self, sig: i32) -> Capture {
        self.guard.signal(sig);
        let status = self.guard.wait_timeout(Duration::from_secs(30));
        thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr.lock().expect("lock").clone();
        Capture::read(self.dir, stderr, status)
    }
}

/// A helper process talking on stdin/stdout (for clients that wait for a go).
pub struct Interactive {
    pub guard: Guard,
    pub lines: Lines,
    stdin: ChildStdin,
}

impl Interactive {
    pub fn start(cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut guard = Guard::spawn(cmd);
        let lines = Lines::new(guard.child.stdout.take().expect("stdout"));
        let stdin = guard.child.stdin.take().expect("stdin");
        Self {
            guard,
            lines,
            stdin,
        }
    }

    /// A Python fixture (tests/fixtures/NAME) with `args`, driven over stdin and stdout.
    pub fn python(name: &str, args: &[&str]) -> Self {
        Self::start(Command::new("python3").arg(fixture(name)).args(args))
    }

    pub fn send_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to child");
        self.stdin.flush().expect("flush");
    }
}

/// Bytes of a file of `size` that no compression or text rule would mistake: a counter pattern.
pub fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// `sniffer ARGS` (a subcommand: merge, diagram, har) to completion within `limit`: its exit
/// code, stdout and stderr.
pub fn sniffer_tool<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    limit: Duration,
) -> (i32, String, String) {
    let mut cmd = Command::new(sniffer_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Guard::spawn(&mut cmd);
    let out = g.child.stdout.take().expect("stdout");
    let err = g.child.stderr.take().expect("stderr");
    let out = thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let err = thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    let status = g.wait_timeout(limit);
    (
        status.code().unwrap_or(-1),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}
