//! `sniffer demo` on the real kernel, as a newcomer runs it: the chain of services is traced,
//! `--follow` shows the calls nested as they happen, the diagram is printed, the files are
//! written with every token and the password redacted, the report opens in Chromium, and the
//! services are stopped at the end.
use std::{fs, net::TcpStream, process::Command};

use sniffer_tests::{browser::Browser, kernel_tests, sniffer_bin, workspace};

#[test]
fn the_demo_traces_its_chain_and_writes_log_diagram_and_report() {
    if !kernel_tests() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(sniffer_bin())
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run sniffer demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    // --follow: the client's call to api with api's calls indented under it.
    let follow: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('['))
        .collect();
    let put = follow
        .iter()
        .position(|l| l.starts_with("[5] client -> api  PUT /v1/items/42  204 No Content  "))
        .unwrap_or_else(|| panic!("{ctx}"));
    for (k, want) in [
        "  [6] api -> auth  GET /v3  200 OK  ",
        "  [8] api -> auth  POST /v3/auth/tokens  201 Created  ",
        "  [10] api -> auth  GET /v3/auth/tokens  200 OK  ",
        "  [12] api -> store  PUT /items/42  204 No Content  ",
    ]
    .iter()
    .enumerate()
    {
        assert!(follow[put + 1 + k].starts_with(want), "{want}: {ctx}");
    }
    assert_eq!(follow.len(), 13, "13 exchanges: {ctx}");
    // The diagram, printed, with the service's token issue boxed.
    for line in [
        "    participant client",
        "    client->>api: PUT /v1/items/42",
        "    opt api token issue",
        "      api->>auth: POST /v3/auth/tokens",
        "    store-->>api: 204 No Content /items/42",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}: {ctx}");
    }
    // The files, with no secret in any of them.
    let log = fs::read_to_string(dir.path().join("sniffer.log")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("### [")).count(),
        26,
        "{log}"
    );
    assert!(log.contains("\"password\": \"<redacted sha256:"), "{log}");
    assert!(log.contains("X-Subject-Token: <redacted sha256:"), "{log}");
    for f in [
        "sniffer.log",
        "exchanges.jsonl",
        "diagram.md",
        "report.html",
    ] {
        let text = fs::read_to_string(dir.path().join(f)).unwrap();
        for secret in ["s3cret-demo-password", "gAAAAABdemo"] {
            assert!(!text.contains(secret), "{secret} in {f}");
        }
        assert!(
            stdout.contains(&dir.path().join(f).display().to_string()),
            "{f}: {ctx}"
        );
    }
    // Everything it started is stopped: the services' ports refuse.
    let ports: Vec<u16> = stdout
        .lines()
        .next()
        .unwrap_or("")
        .split("127.0.0.1:")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert_eq!(ports.len(), 3, "{ctx}");
    for p in ports {
        assert!(
            TcpStream::connect(("127.0.0.1", p)).is_err(),
            "port {p} still open"
        );
    }

    // The report: every message an arrow; a click on the client's login shows it redacted,
    // with its times from the JSONL.
    let mut b = Browser::start(1400, 900);
    b.open_report(&dir.path().join("report.html"));
    assert_eq!(b.arrows(), 26);
    assert_eq!(b.open_message(3), "[3] POST /v3/auth/tokens");
    let body = b.text("#detail pre.body");
    assert!(body.contains("\"password\": \"<redacted sha256:"), "{body}");
    let info = b.text("#detail table.info");
    assert!(info.contains("exchange took"), "{info}");
    let shots = workspace().join("target/report-test");
    fs::create_dir_all(&shots).unwrap();
    b.screenshot(&shots.join("demo.png"));
}
