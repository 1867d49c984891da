//! The OpenStack test bed (tests/openstack/bed.py) driven from Rust: start it, run openstack
//! commands under sniffer, read what sniffer and the services logged.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{Guard, Lines, sniffer_bin, workspace};

pub struct Bed {
    _process: BedProcess,
    pub keystone: Service,
    pub glance: Service,
    /// swift-proxy-server's pid, when the bed has swift.
    pub swift_proxy: Option<u32>,
    /// Apache in front (`--apache`): its parent's pid and access log.
    pub apache: Option<Service>,
    /// devstack's tls-proxy (`--tls`): the certificate clients take as their CA.
    pub cacert: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub venv: PathBuf,
}

impl Bed {
    /// What the services wrote since keystone's and glance's logs were `k0` and `g0` bytes long,
    /// and the ends of the bed's other logs: the why of a failed command (a 500's traceback).
    pub fn logs_since(&self, k0: u64, g0: u64) -> String {
        let mut out = String::new();
        let state = self.glance.log.parent().unwrap_or(Path::new("."));
        let logs = [
            ("keystone", self.keystone.log.clone(), k0),
            ("glance", self.glance.log.clone(), g0),
            ("servers.err", state.join("servers.err"), 0),
            ("apache error.log", state.join("apache/error.log"), 0),
        ];
        for (name, path, from) in logs {
            let Ok(text) = fs::read(&path) else { continue };
            let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
            // keystonemiddleware's warnings about the options it shares with the bed fill
            // servers.err; they say nothing of a failure.
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.ends_with("is not known to keystonemiddleware"))
                .collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "\n--- {name} ({}), its last {} lines:\n",
                path.display(),
                tail.len()
            ));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// A running bed.py.
pub struct BedProcess {
    guard: Guard,
}

impl Drop for BedProcess {
    /// Closing the bed's stdin lets it stop its services in order; the guard then kills what is
    /// left (the services also die with the bed).
    fn drop(&mut self) {
        drop(self.guard.child.stdin.take());
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < end {
            if !matches!(self.guard.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct Service {
    pub pid: u32,
    pub log: PathBuf,
}

impl Service {
    pub fn from(v: &Value) -> Self {
        Self {
            pid: v["pid"].as_u64().expect("pid") as u32,
            log: PathBuf::from(v["log"].as_str().expect("log")),
        }
    }

    /// (method, path, status) of every request uWSGI logged after byte `from` of its log.
    pub fn served_since(&self, from: u64) -> Vec<(String, String, u16)> {
        let text = fs::read(&self.log).unwrap_or_default();
        uwsgi_requests(&String::from_utf8_lossy(&text[from as usize..]))
    }

    pub fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }
}

/// uWSGI request lines: `... [date] PUT /v2/images/x/file => generated 0 bytes in 33 msecs
/// (HTTP/1.1 204) ...`.
pub fn uwsgi_requests(text: &str) -> Vec<(String, String, u16)> {
    text.lines()
        .filter_map(|l| {
            let (before, after) = l.split_once(" => generated ")?;
            let mut words = before.rsplit(' ');
            let path = words.next()?.to_owned();
            let method = words.next()?.to_owned();
            let status = after.split("(HTTP/1.").nth(1)?.get(2..5)?.parse().ok()?;
            Some((method, path, status))
        })
        .collect()
}

/// SNIFFER_OPENSTACK_VENV, which `cargo xtask e2e` sets.
pub fn openstack_venv() -> PathBuf {
    PathBuf::from(
        std::env::var("SNIFFER_OPENSTACK_VENV")
            .expect("SNIFFER_OPENSTACK_VENV: run `cargo xtask e2e`"),
    )
}

/// Runs bed.py in target/<state> with `args` (in network namespace `netns` when given) until
/// it is up; the process and what it printed (pids, logs, the OS_* environment).
pub fn bed_process(
    netns: Option<&str>,
    state: &str,
    args: &[std::ffi::OsString],
) -> (BedProcess, Value) {
    let state = workspace().join("target").join(state);
    let _ = fs::remove_dir_all(&state);
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    cmd.arg(workspace().join("tests/openstack/bed.py"))
        .arg(openstack_venv())
        .arg(&state)
        .args(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut guard = Guard::spawn(&mut cmd);
    let lines = Lines::new(guard.child.stdout.take().expect("stdout"));
    let info: Value =
        serde_json::from_str(&lines.expect("{", Duration::from_secs(300))).expect("bed json");
    (BedProcess { guard }, info)
}

/// The OS_* environment a bed printed.
pub fn bed_env(info: &Value) -> Vec<(String, String)> {
    info["env"]
        .as_object()
        .expect("env")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
        .collect()
}

/// Starts the bed (with swift when `swift_venv` is given, behind Apache when `apache`) in
/// target/<state>.
pub fn start_bed(state: &str, swift_venv: Option<&PathBuf>, apache: bool) -> Bed {
    start_bed_with(state, swift_venv, if apache { &["--apache"] } else { &[] })
}

/// devstack's tls-proxy topology: Apache with mod_ssl on 127.0.0.1:443 in front.
pub fn start_bed_tls(state: &str) -> Bed {
    start_bed_with(state, None, &["--tls"])
}

fn start_bed_with(state: &str, swift_venv: Option<&PathBuf>, flags: &[&str]) -> Bed {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(s) = swift_venv {
        args.push("--swift".into());
        args.push(s.into());
    }
    args.extend(flags.iter().map(Into::into));
    let (process, info) = bed_process(None, state, &args);
    Bed {
        keystone: Service::from(&info["keystone"]),
        glance: Service::from(&info["glance"]),
        swift_proxy: info["swift"]["proxy"].as_u64().map(|p| p as u32),
        apache: info["apache"]
            .is_object()
            .then(|| Service::from(&info["apache"])),
        cacert: info["cacert"].as_str().map(PathBuf::from),
        env: bed_env(&info),
        venv: openstack_venv(),
        _process: process,
    }
}

pub struct Run {
    pub dir: PathBuf,
    pub stdout: String,
    /// What sniffer said on stderr (its summary last).
    pub stderr: String,
    pub log: String,
    pub exchanges: Vec<Value>,
    pub keystone: Vec<(String, String, u16)>,
    pub glance: Vec<(String, String, u16)>,
}

/// What a run traces.
pub struct Trace<'a> {
    pub pids: Vec<u32>,
    /// `openstack` runs under sniffer (`sniffer ... -- openstack ARGS`); else untraced, while
    /// sniffer traces `pids` only.
    pub cli: bool,
    /// More sniffer arguments.
    pub extra: &'a [&'a str],
}

impl Trace<'_> {
    /// The CLI and the services (keystone, glance-api, swift's proxy; Apache too when there).
    pub fn all(bed: &Bed) -> Self {
        let mut t = Self::services(bed, true);
        t.pids.extend(bed.apache.as_ref().map(|a| a.pid));
        t
    }

    /// keystone, glance-api and swift's proxy, not Apache; the CLI when `cli`.
    pub fn services(bed: &Bed, cli: bool) -> Self {
        let mut pids = vec![bed.keystone.pid, bed.glance.pid];
        pids.extend(bed.swift_proxy);
        Trace {
            pids,
            cli,
            extra: &[],
        }
    }
}

/// Runs `openstack ARGS` under sniffer tracing the bed's services (swift's proxy and Apache
/// too when it has them); writes into target/e2e-out/NAME.
pub fn sniff(bed: &Bed, name: &str, args: &[&str]) -> Run {
    sniff_with(bed, name, args, &Trace::all(bed))
}

/// Like [`sniff`], tracing what `t` says.
pub fn sniff_with(bed: &Bed, name: &str, args: &[&str], t: &Trace<'_>) -> Run {
    let dir = workspace().join("target").join("e2e-out").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let (k0, g0) = (bed.keystone.log_len(), bed.glance.log_len());
    let mut sniffer = Command::new(sniffer_bin());
    sniffer
        .args(
            t.pids
                .iter()
                .flat_map(|p| ["--pid".to_owned(), p.to_string()]),
        )
        .args(t.extra)
        .arg("-o")
        .arg(dir.join("sniffer.log"))
        .arg("--jsonl")
        .arg(dir.join("exchanges.jsonl"))
        .arg("--har")
        .arg(dir.join("run.har"))
        .stdin(Stdio::null());
    let mut openstack = Command::new(bed.venv.join("bin/openstack"));
    openstack
        .args(args)
        .envs(bed.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null());
    let (stdout, stderr) = if t.cli {
        let mut cmd = sniffer;
        cmd.arg("--").arg(bed.venv.join("bin/openstack")).args(args);
        cmd.envs(bed.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let out = cmd.output().expect("run sniffer");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "openstack {args:?} under sniffer failed:\n{stderr}{}",
            bed.logs_since(k0, g0)
        );
        (out.stdout, stderr)
    } else {
        sniffer.stderr(Stdio::piped()).stdout(Stdio::null());
        let mut running = Guard::spawn(&mut sniffer);
        let lines = Lines::from_reader(running.child.stderr.take().expect("stderr"));
        lines.expect("sniffer: tracing", Duration::from_secs(60));
        let out = openstack.output().expect("run openstack");
        assert!(
            out.status.success(),
            "openstack {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stderr),
            bed.logs_since(k0, g0)
        );
        // Let the last events come in, then stop it as a user does.
        std::thread::sleep(Duration::from_millis(500));
        running.signal(libc::SIGINT);
        let st = running.wait_timeout(Duration::from_secs(60));
        assert!(st.success(), "sniffer exited with {st}");
        (out.stdout, lines.rest(Duration::from_secs(10)))
    };
    // uWSGI writes its request line after the response: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let log = fs::read_to_string(dir.join("sniffer.log")).unwrap();
    let exchanges = fs::read_to_string(dir.join("exchanges.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Run {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
        dir,
        log,
        exchanges,
        keystone: bed.keystone.served_since(k0),
        glance: bed.glance.served_since(g0),
    }
}

/// SNIFFER_SWIFT_VENV, which `cargo xtask e2e` sets.
pub fn swift_venv() -> PathBuf {
    PathBuf::from(
        std::env::var("SNIFFER_SWIFT_VENV").expect("SNIFFER_SWIFT_VENV: run `cargo xtask e2e`"),
    )
}

/// target/NAME, emptied.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = workspace().join("target").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A real qcow2 (glance checks the format) of `raw_bytes` of test pattern, in `dir`.
pub fn qcow2(dir: &Path, raw_bytes: usize) -> PathBuf {
    let raw = dir.join("disk.raw");
    fs::write(&raw, crate::pattern(raw_bytes)).unwrap();
    let img = dir.join("cirros.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img)
        .status()
        .expect("qemu-img (Debian's qemu-utils) is needed to make a qcow2 image");
    assert!(st.success());
    img
}

/// `openstack image create` of `img` under sniffer (run NAME); its stdout is the image id.
pub fn create_image(bed: &Bed, name: &str, img: &Path) -> Run {
    sniff(bed, name, &create_image_args(img))
}

/// `openstack` arguments that upload `img` as a public qcow2 image and print its id.
pub fn create_image_args(img: &Path) -> [&str; 12] {
    [
        "image",
        "create",
        "--disk-format",
        "qcow2",
        "--file",
        img.to_str().expect("utf-8 path"),
        "--public",
        "cirros",
        "-f",
        "value",
        "-c",
        "id",
    ]
}

/// Every request keystone and glance-api logged in the run's window, exactly once, as sniffer
/// saw them served (`glance_path` maps what sniffer shows to what glance logged).
/// The services' MySQL and memcached connections were set aside (none of them in the log):
/// the summary counts both protocols.
pub fn assert_databases_set_aside(run: &Run, ctx: &str) {
    let summary = run
        .stderr
        .lines()
        .find(|l| l.starts_with("sniffer: ") && l.contains(" exchanges, "))
        .unwrap_or_else(|| panic!("no summary: {}; {ctx}", run.stderr));
    for p in ["memcached ", "mysql "] {
        assert!(
            summary.contains("set aside as not HTTP") && summary.contains(p),
            "{p}connections not set aside: {summary}; {ctx}"
        );
    }
    assert!(
        summary.contains(" 0 broken "),
        "nothing counted broken: {summary}; {ctx}"
    );
    for x in &run.exchanges {
        let url = x["url"].as_str().unwrap_or("");
        assert!(
            !url.contains(":3306") && !url.contains(":11211"),
            "a database in the log: {x}; {ctx}"
        );
    }
}

pub fn assert_served_once(run: &Run, glance_path: fn(String) -> String, ctx: &str) {
    assert_eq!(
        seen_by(run, "keystone"),
        sorted(run.keystone.clone()),
        "keystone: {ctx}"
    );
    let glance = seen_by(run, "glance-api")
        .into_iter()
        .map(|(m, p, s)| (m, glance_path(p), s))
        .collect();
    assert_eq!(
        sorted(glance),
        sorted(run.glance.clone()),
        "glance-api: {ctx}"
    );
}

/// (request number, response number) of an exchange in the JSONL.
pub fn numbers(x: &Value) -> (u64, u64) {
    (
        x["request"]["number"].as_u64().expect("request number"),
        x["response"]["number"].as_u64().expect("response number"),
    )
}

/// Every call `caller` made sits inside an exchange it served.
pub fn assert_nested(run: &Run, caller: &str, ctx: &dyn Fn() -> String) {
    let outer: Vec<(u64, u64)> = run
        .exchanges
        .iter()
        .filter(|x| x["to"] == caller)
        .map(numbers)
        .collect();
    for inner in run.exchanges.iter().filter(|x| x["from"] == caller) {
        let (a, b) = numbers(inner);
        assert!(
            outer.iter().any(|&(s, e)| s < a && b < e),
            "{caller}'s call [{a}]..[{b}] is not inside a call to it: {}",
            ctx()
        );
    }
}

/// The log numbers every message once, 1..n, and the converter draws one arrow per message;
/// returns the diagram (written as diagram.md and body.md beside the log).
pub fn assert_numbered_and_drawn(run: &Run) -> String {
    let titles: Vec<&str> = run.log.lines().filter(|l| l.starts_with("### [")).collect();
    for (i, t) in titles.iter().enumerate() {
        assert!(t.starts_with(&format!("### [{}] ", i + 1)), "{t}");
    }
    let d = draw(run, "diagram", "body", &[]);
    assert_eq!(
        d.lines().filter(|l| l.contains(">>")).count(),
        titles.len(),
        "{d}"
    );
    d
}

pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or("/".to_owned(), |i| rest[i..].to_owned())
}

/// Multiset of (method, path, status) of the exchanges sniffer saw served by `to`.
pub fn seen_by(run: &Run, to: &str) -> Vec<(String, String, u16)> {
    let mut v: Vec<(String, String, u16)> = run
        .exchanges
        .iter()
        .filter(|x| x["to"] == to)
        .map(|x| {
            (
                x["method"].as_str().unwrap_or("").to_owned(),
                path_of(x["url"].as_str().unwrap_or("")),
                x["status"].as_u64().unwrap_or(0) as u16,
            )
        })
        .collect();
    v.sort();
    v
}

/// The participants of a run's exchanges, sorted, each once.
pub fn participants(run: &Run) -> Vec<&str> {
    let mut names: Vec<&str> = run
        .exchanges
        .iter()
        .flat_map(|x| {
            [
                x["from"].as_str().unwrap_or(""),
                x["to"].as_str().unwrap_or(""),
            ]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

pub fn sorted(mut v: Vec<(String, String, u16)>) -> Vec<(String, String, u16)> {
    v.sort();
    v
}

pub fn find<'a>(run: &'a Run, method: &str, path_suffix: &str) -> &'a Value {
    run.exchanges
        .iter()
        .find(|x| x["method"] == method && x["url"].as_str().unwrap_or("").ends_with(path_suffix))
        .unwrap_or_else(|| panic!("no {method} ...{path_suffix} in {}", run.dir.display()))
}

/// The diagram of a run (with --placeholders and the given extra arguments) and its body page,
/// written next to the run's log as NAME.md and BODY.md; returns the diagram.
pub fn draw(run: &Run, name: &str, body: &str, extra: &[&str]) -> String {
    let diagram = run.dir.join(format!("{name}.md"));
    let st = Command::new(sniffer_bin())
        .arg("diagram")
        .arg(run.dir.join("sniffer.log"))
        .arg("-o")
        .arg(&diagram)
        .arg("--body")
        .arg(run.dir.join(format!("{body}.md")))
        .arg("--placeholders")
        .args(extra)
        .status()
        .expect("run sniffer diagram");
    assert!(st.success(), "sniffer diagram failed");
    fs::read_to_string(&diagram).expect("diagram")
}

/// `sniffer report` of a run (its JSONL, with `extra` arguments) opened in headless Chromium:
/// one arrow per message of the log, the participants in the order they first appear, and a
/// click on the arrow labelled `label` opens that message. A screenshot stays in
/// target/report-test/NAME.png. Returns the labels of the arrows.
pub fn assert_report_in_chromium(
    run: &Run,
    name: &str,
    extra: &[&str],
    label: &str,
) -> Vec<String> {
    let html = run.dir.join(format!("{name}.html"));
    let st = Command::new(sniffer_bin())
        .arg("report")
        .arg(run.dir.join("exchanges.jsonl"))
        .arg("-o")
        .arg(&html)
        .args(extra)
        .status()
        .expect("run sniffer report");
    assert!(st.success(), "sniffer report failed");
    let titles = run.log.lines().filter(|l| l.starts_with("### [")).count();
    let mut order: Vec<String> = Vec::new();
    for x in &run.exchanges {
        for k in ["from", "to"] {
            let n = x[k].as_str().unwrap_or("").to_owned();
            if !order.contains(&n) {
                order.push(n);
            }
        }
    }
    let mut b = crate::browser::Browser::start(1400, 900);
    b.open_report(&html);
    assert_eq!(
        b.arrows(),
        titles as u64,
        "{name}: one arrow per message of the log"
    );
    let shown =
        b.eval("[...document.querySelectorAll('#lanes g.participant')].map(g => g.dataset.name)");
    let shown: Vec<String> = serde_json::from_value(shown).expect("names");
    let mut first_seen = shown.clone();
    first_seen.retain(|n| order.contains(n));
    assert_eq!(
        first_seen.len(),
        shown.len(),
        "{name}: {shown:?} vs {order:?}"
    );
    let labels: Vec<String> =
        serde_json::from_value(b.eval("window.__report.model.arrows.map(a => a.label)"))
            .expect("labels");
    let n = labels
        .iter()
        .position(|l| l == label)
        .unwrap_or_else(|| panic!("{name}: no arrow {label:?} in {labels:#?}"))
        + 1;
    assert_eq!(b.open_message(n as u64), format!("[{n}] {label}"));
    let shots = workspace().join("target/report-test");
    fs::create_dir_all(&shots).unwrap();
    b.screenshot(&shots.join(format!("{name}.png")));
    labels
}
