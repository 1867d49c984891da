//! `sniffer report` in a real browser: headless Chromium (Debian's) opens the page from disk and
//! is driven as a user would (mouse clicks, keys, typing) over the DevTools protocol. The DOM
//! must show one arrow per message, the participants in order of first appearance, and a click
//! must open that message's headers and body. Screenshots stay under target/report-test/ for a
//! person to look at. No kernel needed: the inputs are logs.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sniffer_tests::{browser::Browser, sniffer_bin, workspace};

/// One `### ` entry of a numbered log, read here independently of sniffer's reader.
struct Entry {
    from: String,
    to: String,
    method: String,
    body: String,
}

fn entries(log: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let lines: Vec<&str> = log.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("### "))
        .collect();
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let title = lines[s];
        let open = title.find('(').unwrap();
        let close = title[open..].find(')').unwrap() + open;
        let from = title[open + 1..close].to_owned();
        let rest = &title[close + 1..];
        let open2 = rest.find('(').unwrap();
        let close2 = rest.find(") : ").unwrap();
        let to = rest[open2 + 1..close2].to_owned();
        let what = &rest[close2 + 4..];
        let method = if rest.contains("REQ >>>") {
            what.split(' ').next().unwrap().to_owned()
        } else {
            let w: Vec<&str> = what.split(' ').collect();
            w[w.len().saturating_sub(2)].to_owned()
        };
        let section = &lines[s + 1..end];
        let blank = section.iter().position(|l| l.is_empty()).unwrap();
        let mut body: Vec<&str> = section[blank + 1..].to_vec();
        // The log's note of what a service received behind a proxy is not the body.
        if body.first().is_some_and(|l| l.starts_with("[served as ")) {
            body.remove(0);
        }
        while body.last().is_some_and(|l| l.is_empty()) {
            body.pop();
        }
        out.push(Entry {
            from,
            to,
            method,
            body: body.join("\n"),
        });
    }
    out
}

fn out_dir() -> PathBuf {
    let d = workspace().join("target/report-test");
    fs::create_dir_all(&d).unwrap();
    d
}

fn report(input: &Path, html: &Path, extra: &[&str]) {
    let out = Command::new(sniffer_bin())
        .arg("report")
        .arg(input)
        .arg("-o")
        .arg(html)
        .args(extra)
        .output()
        .expect("run sniffer report");
    assert!(
        out.status.success(),
        "sniffer report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The checks every report gets, against its log read independently.
fn check_page(b: &mut Browser, log: &str, name: &str) {
    let want = entries(log);
    assert_eq!(
        b.arrows(),
        want.len() as u64,
        "{name}: one arrow per message"
    );
    let mut order: Vec<&str> = Vec::new();
    for e in &want {
        for n in [e.from.as_str(), e.to.as_str()] {
            if !order.contains(&n) {
                order.push(n);
            }
        }
    }
    let shown =
        b.eval("[...document.querySelectorAll('#lanes g.participant')].map(g => g.dataset.name)");
    assert_eq!(
        shown,
        serde_json::json!(order),
        "{name}: participants in order of appearance"
    );
    // Responses dashed, requests not: one class each, as many as the log has.
    let resp = b.eval("document.querySelectorAll('#diagram g.msg.resp').length");
    assert_eq!(resp, count_responses(log), "{name}: responses are dashed");

    // A click on the third arrow opens the third message.
    let title = b.open_message(3);
    assert!(title.starts_with("[3] "), "{name}: {title}");
    assert_eq!(
        b.text("#detail pre.body"),
        want[2].body,
        "{name}: the body of [3]"
    );
    // Keyboard: j goes to the next message, Escape closes.
    b.key("j");
    let title = b.eval("document.querySelector('#detail h2').textContent");
    assert!(
        title.as_str().unwrap().starts_with("[4] "),
        "{name}: {title}"
    );
    b.screenshot(&out_dir().join(format!("{name}.png")));
    b.key("Escape");
    assert_eq!(
        b.eval("document.querySelectorAll('#detail.open').length"),
        0
    );

    // Typing a participant's name keeps the exchanges it takes part in.
    let who = want[0].to.clone();
    b.click_on("#q");
    b.type_text(&who);
    let involving = want.iter().filter(|e| e.from == who || e.to == who).count();
    b.wait(
        &format!("document.querySelectorAll('#diagram g.msg').length === {involving}"),
        Duration::from_secs(5),
    );
    assert!(
        involving < want.len(),
        "{name}: the filter must leave some out to prove itself"
    );
    b.key("Escape");
    b.eval("(() => { const q = document.getElementById('q'); q.value = ''; q.dispatchEvent(new Event('input')); })()");
    // The method filter: only the exchanges whose method is POST.
    b.eval("(() => { const s = document.getElementById('method'); s.value = 'POST'; s.dispatchEvent(new Event('change')); })()");
    let posts = want.iter().filter(|e| e.method == "POST").count();
    b.wait(
        &format!("document.querySelectorAll('#diagram g.msg').length === {posts}"),
        Duration::from_secs(5),
    );
}

fn count_responses(log: &str) -> usize {
    log.lines()
        .filter(|l| l.starts_with("### ") && l.contains(" RESP <<< "))
        .count()
}

/// The instrumented devstack's own logs (the reference pages' captures).
#[test]
fn devstack_reference_logs_in_chromium() {
    let mut b = Browser::start(1400, 900);
    for name in ["image-list", "image-show", "image-create"] {
        let log_path = workspace()
            .join("sniffer/src/diagram/fixtures/reference")
            .join(name)
            .join("requestshook.log");
        let log = fs::read_to_string(&log_path).expect("reference log");
        let html = out_dir().join(format!("{name}.html"));
        report(&log_path, &html, &["--placeholders"]);
        b.open_report(&html);
        check_page(&mut b, &log, name);
        if name == "image-create" {
            // The service token block, boxed as mermaid's opt.
            let label = b.eval("document.querySelector('#diagram g.block text').textContent");
            assert_eq!(label, "opt glance-api token issue");
        }
    }
}

/// A numbered log of `groups` calls client -> api, each with api -> store inside: 4 messages
/// a group.
fn big_log(groups: usize) -> String {
    let mut s = String::new();
    let mut n = 0;
    let mut entry = |s: &mut String, title: String, body: &str| {
        n += 1;
        s.push_str(&format!(
            "\n### [{n}] {title}\nHost: 127.0.0.1\n\n{body}\n\n"
        ));
    };
    for i in 0..groups {
        let u = format!("http://127.0.0.1:8080/v1/items/{i}");
        let v = format!("http://127.0.0.1:9090/items/{i}");
        entry(&mut s, format!("(client) REQ >>> (api) : GET {u}"), "none");
        entry(&mut s, format!("(api) REQ >>> (store) : GET {v}"), "none");
        let body = format!("{{\n  \"id\": {i}\n}}");
        entry(
            &mut s,
            format!("(api) RESP <<< (store) : 200 OK GET {v}"),
            &body,
        );
        entry(
            &mut s,
            format!("(client) RESP <<< (api) : 200 OK GET {u}"),
            &body,
        );
    }
    s
}

#[test]
fn ten_thousand_messages_render_and_scroll() {
    let dir = out_dir();
    let log_path = dir.join("big.log");
    fs::write(&log_path, big_log(2500)).unwrap();
    let html = dir.join("big.html");
    report(&log_path, &html, &[]);
    let mut b = Browser::start(1400, 900);
    let load = b.open_report(&html);
    let drawn = b.arrows();
    assert!(
        (10..500).contains(&drawn),
        "only the rows near the view are drawn, not {drawn} of 10000"
    );
    let rows = b.eval("window.__report.shown().length");
    assert_eq!(rows, 10000);
    // Jump through the page as a user scrolling fast would: the drawing each jump needs is
    // timed in the page (synchronous work on the main thread), and a frame must follow.
    let mut worst = 0.0f64;
    for frac in [0.1, 0.5, 0.9, 1.0] {
        let ms = b
            .eval(&format!(
                "(() => {{ const s = document.getElementById('scroll'); \
                 s.scrollTop = (s.scrollHeight - s.clientHeight) * {frac}; \
                 return window.__report.redraw(); }})()"
            ))
            .as_f64()
            .unwrap();
        worst = worst.max(ms);
        b.eval("new Promise(r => requestAnimationFrame(() => r(1)))");
    }
    let last = b.eval("document.querySelectorAll(\"#diagram g.msg[data-n='10000']\").length");
    assert_eq!(last, 1, "the last arrow is drawn at the bottom");
    assert_eq!(b.open_message(10000), "[10000] 200 OK /v1/items/2499");
    assert_eq!(b.text("#detail pre.body"), "{\n  \"id\": 2499\n}");
    b.screenshot(&dir.join("big.png"));
    eprintln!(
        "10,000 messages: page ready in {load:?} (navigation to first drawing), the slowest \
         scroll jump drawn in {worst:.1} ms of script, {drawn} arrows in the DOM at a time"
    );
    assert!(load < Duration::from_secs(20), "loading took {load:?}");
    assert!(worst < 200.0, "a scroll took {worst} ms to draw");
}

/// A real capture: the Apache end-to-end run's `openstack image create` (keystone and glance
/// behind devstack's Apache, glance on swift; `cargo xtask e2e`), its log and JSONL kept as
/// fixtures. The report of either, both path views.
#[test]
fn the_apache_e2e_capture_in_both_path_views() {
    let dir = workspace().join("tests/fixtures/e2e/apache-image-create");
    let log = fs::read_to_string(dir.join("sniffer.log")).expect("fixture log");
    let mut b = Browser::start(1400, 900);
    for (input, view, put) in [
        (
            "sniffer.log",
            "client",
            "PUT /image/v2/images/{image_id}/file",
        ),
        (
            "exchanges.jsonl",
            "served",
            "PUT /v2/images/{image_id}/file",
        ),
    ] {
        let name = format!("apache-image-create-{view}");
        let html = out_dir().join(format!("{name}.html"));
        report(
            &dir.join(input),
            &html,
            &["--placeholders", "--paths", view],
        );
        b.open_report(&html);
        check_page(&mut b, &log, &name);
        b.open_report(&html);
        let labels: Vec<String> =
            serde_json::from_value(b.eval("window.__report.model.arrows.map(a => a.label)"))
                .unwrap();
        let n = labels.iter().position(|l| l == put).unwrap_or_else(|| {
            panic!("{name}: no arrow {put:?} in {labels:#?}");
        }) as u64
            + 1;
        assert_eq!(b.open_message(n), format!("[{n}] {put}"));
        let info = b.text("#detail table.info");
        assert!(
            info.contains("the service received/v2/images/") && info.contains("(via apache2)"),
            "{name}: {info}"
        );
        b.screenshot(&out_dir().join(format!("{name}-put.png")));
    }
    // The same view as mermaid: the reference pages' arrows.
    let out = Command::new(sniffer_bin())
        .arg("diagram")
        .arg(dir.join("sniffer.log"))
        .args(["-o", "-", "--placeholders", "--paths", "served"])
        .output()
        .unwrap();
    let d = String::from_utf8_lossy(&out.stdout);
    for line in [
        "openstack->>glance-api: POST /v2/images",
        "glance-api-->>openstack: 201 Created /v2/images",
        "openstack->>glance-api: PUT /v2/images/{image_id}/file",
        "openstack->>keystone: POST /identity/v3/auth/tokens",
        "glance-api->>swift-proxy-server: PUT /v1/{account}/glance/{image_id}",
    ] {
        assert!(d.lines().any(|l| l.trim() == line), "{line}:\n{d}");
    }
    assert!(!d.contains("/image/"), "{d}");
}
