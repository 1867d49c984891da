//! HTTPS on the real kernel: plaintext read in OpenSSL through uprobes, joined to its socket.
//! Python's ssl module (libssl through _ssl, loaded by dlopen) and curl (libssl linked) as
//! clients, a Python HTTPS server; both ends traced, one end traced, keep-alive, bodies larger
//! than a TLS record, chunked, and a library loaded after sniffer started.
use std::{fs, path::Path, process::Command, time::Duration};

use sniffer_tests::{Capture, Server, fixture, kernel_tests, pattern, sniff_command_with};

const LIMIT: Duration = Duration::from_secs(180);

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

fn https_server(certs: &Path) -> Server {
    Server::script(
        "http_variety.py",
        &["--tls", &path(certs, "cert.pem"), &path(certs, "key.pem")],
    )
}

#[test]
fn python_https_both_ends_traced_every_framing_on_one_keep_alive_connection() {
    if !kernel_tests() {
        return;
    }
    const BIG: usize = 3 << 20;
    let certs = certs();
    let server = https_server(certs.path());
    let port = server.port.to_string();
    let client = fixture("http_variety_client.py").display().to_string();
    let ca = path(certs.path(), "cert.pem");
    let out = tempfile::tempdir().expect("tempdir");
    let conns_file = path(out.path(), "connections.txt");
    let cap = run(
        &[
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
}

#[test]
fn curl_client_only_traced_over_https() {
    if !kernel_tests() {
        return;
    }
    let certs = certs();
    let server = https_server(certs.path());
    let url = format!("https://127.0.0.1:{}/big?n=200000", server.port);
    let ca = path(certs.path(), "cert.pem");
    let cap = run(
        &[],
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
    if !kernel_tests() {
        return;
    }
    let certs = certs();
    let server = https_server(certs.path());
    let ca = path(certs.path(), "cert.pem");
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
