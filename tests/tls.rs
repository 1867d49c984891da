//! HTTPS on the real kernel: plaintext read in OpenSSL through uprobes, joined to its socket.
//! Python's ssl module (libssl through _ssl, loaded by dlopen) and curl (libssl linked) as
//! clients, a Python HTTPS server; both ends traced, one end traced, keep-alive, bodies larger
//! than a TLS record, chunked, and a library loaded after sniffer started.
use std::{fs, path::Path, process::Command, time::Duration};

use sniffer_tests::{
    Capture, Interactive, Running, Server, fixture, kernel_tests, pattern, sniff_command_with,
};

const LIMIT: Duration = Duration::from_secs(180);

/// One test at a time: a sniffer whose TLS probes sit on every process (a command traced)
/// would put its breakpoints in the processes another test looks at.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A self-signed certificate for 127.0.0.1 (clients take it as their CA): cert.pem, key.pem.
fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("openssl")
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
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    dir
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn titles(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with("### ["))
        .map(str::to_owned)
        .collect()
}

fn jsonl(cap: &Capture) -> Vec<serde_json::Value> {
    fs::read_to_string(cap.dir.path().join("exchanges.jsonl"))
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn run(args: &[&str], command: &[&str]) -> Capture {
    let cap = sniff_command_with(args, command, LIMIT, false);
    assert!(cap.status.success(), "{}", cap.describe());
    cap
}

/// What each test here starts from: its turn (see [`SERIAL`]), a certificate, an HTTPS server
/// with it, and the CA file clients check it with. `None` without kernel tests.
struct HttpsBed {
    _serial: std::sync::MutexGuard<'static, ()>,
    server: Server,
    ca: String,
    _certs: tempfile::TempDir,
}

fn https_bed() -> Option<HttpsBed> {
    if !kernel_tests() {
        return None;
    }
    let serial = serial();
    let certs = certs();
    let server = https_server(certs.path());
    let ca = path(certs.path(), "cert.pem");
    Some(HttpsBed {
        _serial: serial,
        server,
        ca,
        _certs: certs,
    })
}

fn https_server(certs: &Path) -> Server {
    Server::script(
        "http_variety.py",
        &["--tls", &path(certs, "cert.pem"), &path(certs, "key.pem")],
    )
}

#[test]
fn python_https_both_ends_traced_every_framing_on_one_keep_alive_connection() {
    let Some(bed) = https_bed() else { return };
    let (server, ca) = (&bed.server, bed.ca.clone());
    const BIG: usize = 3 << 20;
    let port = server.port.to_string();
    let client = fixture("http_variety_client.py").display().to_string();
    let out = tempfile::tempdir().expect("tempdir");
    let conns_file = path(out.path(), "connections.txt");
    let cap = run(
        &[
            "-v",
            "--pid",
            &server.pid().to_string(),
            "--connections",
            &conns_file,
        ],
        &["python3", &client, &port, &BIG.to_string(), "--tls", &ca],
    );
    let u = format!("https://127.0.0.1:{port}");
    let (c, s) = ("(http_variety_client.py)", "(http_variety.py)");
    let want = [
        format!("### [1] {c} REQ >>> {s} : GET {u}/len"),
        format!("### [2] {c} RESP <<< {s} : 200 OK GET {u}/len"),
        format!("### [3] {c} REQ >>> {s} : GET {u}/chunked"),
        format!("### [4] {c} RESP <<< {s} : 200 OK GET {u}/chunked"),
        format!("### [5] {c} REQ >>> {s} : HEAD {u}/head"),
        format!("### [6] {c} RESP <<< {s} : 200 OK HEAD {u}/head"),
        format!("### [7] {c} REQ >>> {s} : GET {u}/nocontent"),
        format!("### [8] {c} RESP <<< {s} : 204 No Content GET {u}/nocontent"),
        format!("### [9] {c} REQ >>> {s} : POST {u}/echo"),
        format!("### [10] {c} RESP <<< {s} : 200 OK POST {u}/echo"),
        format!("### [11] {c} REQ >>> {s} : GET {u}/big?n={BIG}"),
        format!("### [12] {c} RESP <<< {s} : 200 OK GET {u}/big?n={BIG}"),
        format!("### [13] {c} REQ >>> {s} : PUT https://127.0.0.1/upload"),
        format!("### [14] {c} RESP <<< {s} : 201 Created PUT https://127.0.0.1/upload"),
        format!("### [15] {c} REQ >>> {s} : GET {u}/close"),
        format!("### [16] {c} RESP <<< {s} : 200 OK GET {u}/close"),
    ];
    assert_eq!(titles(&cap.log), want, "{}", cap.describe());
    assert!(
        cap.log
            .contains("\n\nhello chunked world\n[trailer] X-Checksum: 42\n"),
        "chunked plaintext decoded:\n{}",
        cap.log
    );
    assert!(
        !cap.log.contains("hunter2"),
        "a password leaked into the log"
    );
    let hex: String = pattern(32).iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        cap.log
            .contains(&format!("\n<octet-stream {BIG} bytes> 0x{hex}\n")),
        "the 3 MiB body (many TLS records) has its size and first bytes:\n{}",
        cap.log
    );
    let ex = jsonl(&cap);
    assert_eq!(ex.len(), 8, "one record per exchange");
    for x in &ex {
        assert!(
            x["client"].is_object() && x["server"].is_object(),
            "both ends' views joined: {x}"
        );
        assert_eq!(x["tls"], true, "{x}");
        assert!(x["url"].as_str().unwrap().starts_with("https://"), "{x}");
    }
    let big = ex
        .iter()
        .find(|x| x["url"].as_str().unwrap().contains("/big?"))
        .unwrap();
    assert_eq!(big["response"]["body_size"], BIG as u64);
    // The connections: plaintext streams, ciphertext counted (more than the plaintext).
    let conns = fs::read_to_string(&conns_file).expect("conns");
    let tls_lines: Vec<&str> = conns.lines().filter(|l| l.contains("TLS: ")).collect();
    assert!(tls_lines.len() >= 4, "two connections, both ends:\n{conns}");
    assert!(
        conns.contains("TLS plaintext: sent"),
        "plaintext streams:\n{conns}"
    );
    assert!(
        !cap.stderr.contains("counted, not read"),
        "every TLS connection read:\n{}",
        cap.stderr
    );
    // Each library file is probed as one library, whatever path or file system it is reached
    // through (on overlayfs, as in vm-test's guests, stat() and the maps named it apart). The
    // line saying so is an -v one.
    let mut probed: Vec<&str> = cap
        .stderr
        .lines()
        .filter_map(|l| l.split("reading TLS plaintext through ").nth(1))
        .filter_map(|l| l.split(" (").next())
        .collect();
    assert!(!probed.is_empty(), "{}", cap.stderr);
    let n = probed.len();
    probed.sort_unstable();
    probed.dedup();
    assert_eq!(probed.len(), n, "a library probed twice:\n{}", cap.stderr);
}

#[test]
fn curl_client_only_traced_over_https() {
    curl_over_https(&[]);
}

/// With probes on the traced command only, placed while it waits between fork and exec: curl
/// is done with its TLS exchange within milliseconds of its exec.
#[test]
fn curl_over_https_with_probes_on_traced_processes_only() {
    curl_over_https(&["--tls-probes", "traced"]);
}

fn curl_over_https(args: &[&str]) {
    let Some(bed) = https_bed() else { return };
    let (server, ca) = (&bed.server, bed.ca.clone());
    let url = format!("https://127.0.0.1:{}/big?n=200000", server.port);
    let cap = run(
        args,
        &["curl", "-s", "--cacert", &ca, "-o", "/dev/null", &url],
    );
    let t = titles(&cap.log);
    assert_eq!(t.len(), 2, "{}", cap.describe());
    assert!(
        t[0].starts_with("### [1] (curl) REQ >>> ") && t[0].ends_with(&format!(" : GET {url}")),
        "{t:?}"
    );
    let ex = jsonl(&cap);
    assert_eq!(ex[0]["response"]["body_size"], 200_000, "{}", ex[0]);
    assert_eq!(ex[0]["tls"], true);
}

#[test]
fn a_tls_library_loaded_after_sniffer_started_is_found_and_read() {
    let Some(bed) = https_bed() else { return };
    let (server, ca) = (&bed.server, bed.ca.clone());
    // Python maps libssl only when `ssl` is imported: well after exec, by dlopen.
    let script = format!(
        "import time; time.sleep(0.3)\n\
         import ssl, urllib.request\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         print(urllib.request.urlopen('https://127.0.0.1:{}/len', context=ctx).read())",
        server.port
    );
    let cap = run(&[], &["python3", "-c", &script]);
    let t = titles(&cap.log);
    assert_eq!(t.len(), 2, "{}", cap.describe());
    assert!(
        t[0].ends_with(&format!(" : GET https://127.0.0.1:{}/len", server.port)),
        "{t:?}"
    );
    assert!(cap.log.contains("\n\nlength body\n"), "{}", cap.log);
}

/// A python process with OpenSSL loaded that reports how many breakpoints sit in its libssl
/// and makes HTTPS requests when asked (tests/fixtures/tls_probe_site.py).
fn probe_site(ca: &str) -> Interactive {
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("tls_probe_site.py")).arg(ca);
    let p = Interactive::start(&mut cmd);
    p.lines.expect("ready ", Duration::from_secs(20));
    p
}

/// The probe attachments process `pid` holds (BPF links, or perf events before 5.15).
fn probe_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("sniffer's fds")
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|l| {
            let l = l.to_string_lossy();
            l == "anon_inode:bpf_link" || l == "anon_inode:[perf_event]"
        })
        .count()
}

fn breakpoints(p: &mut Interactive) -> usize {
    p.send_line("breakpoints");
    let l = p.lines.expect("breakpoints ", Duration::from_secs(10));
    l["breakpoints ".len()..].parse().unwrap()
}

/// The TLS probes sit on traced processes only: the kernel puts its breakpoints (int3, 0xcc) in
/// libssl's code in a traced process's memory and in no other's, so an untraced process using
/// OpenSSL pays nothing; a child the traced process forks gets its own probes and is read.
#[test]
fn tls_probes_sit_on_traced_processes_only() {
    let Some(bed) = https_bed() else { return };
    let (server, ca) = (&bed.server, bed.ca.clone());
    let url = |who: &str| format!("https://127.0.0.1:{}/len?who={who}", server.port);
    let mut traced = probe_site(&ca);
    let mut other = probe_site(&ca);
    assert_eq!(
        breakpoints(&mut traced),
        0,
        "breakpoints before sniffer started"
    );
    assert_eq!(breakpoints(&mut other), 0);

    let sniffer = Running::start(&["--pid", &traced.guard.pid().to_string()]);
    let sites = breakpoints(&mut traced);
    assert!(sites > 0, "the traced process is probed");
    assert_eq!(breakpoints(&mut other), 0, "an untraced one is not");
    for (p, who) in [(&mut traced, "traced"), (&mut other, "other")] {
        p.send_line(&format!("get {}", url(who)));
        assert_eq!(p.lines.expect("got ", LIMIT), "got 200");
    }
    assert_eq!(breakpoints(&mut other), 0, "still not, after its TLS calls");
    traced.send_line(&format!("fork {}", url("child")));
    assert_eq!(
        traced.lines.expect("child got ", LIMIT),
        format!("child got 200 {sites}"),
        "a forked child has probes of its own"
    );
    // The traced process ends: its probes (an entry and a return at each breakpoint) come off.
    let probes_before = probe_fds(sniffer.pid());
    traced.send_line("exit");
    traced.guard.wait_timeout(Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe_fds(sniffer.pid()) + 2 * sites > probes_before {
        assert!(
            std::time::Instant::now() < deadline,
            "probes still on: {} of {probes_before}",
            probe_fds(sniffer.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cap = sniffer.stop();
    let t = titles(&cap.log);
    let gets: Vec<&String> = t.iter().filter(|l| l.contains(" : GET ")).collect();
    assert_eq!(gets.len(), 2, "{}", cap.describe());
    assert!(gets[0].ends_with(&url("traced")), "{gets:?}");
    assert!(gets[1].ends_with(&url("child")), "{gets:?}");
    assert!(
        cap.log.contains("\n\nlength body\n"),
        "plaintext read: {}",
        cap.log
    );
}
