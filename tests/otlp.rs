//! `--otlp` against real receivers: Arize Phoenix (a trace store from PyPI, read back through
//! its REST API) for a live run and for `sniffer merge --otlp` of two hosts; the OpenTelemetry
//! project's own protobuf classes for what the wire carries; a backend that refuses once and
//! one that never answers.
use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    fs,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use sniffer_tests::{
    Capture, Server, fixture, kernel_tests,
    netns::TwoHosts,
    phoenix::{self, Phoenix, attr},
    sniff_command_with, sniffer_tool,
};

const LIMIT: Duration = Duration::from_secs(120);

/// curl -> front -> back: front calls back while it serves curl (tests/fixtures/chain_server.py),
/// all traced, spans to `otlp`.
fn chain(otlp: &str, extra: &[&str]) -> Capture {
    let back = Server::script("chain_server.py", &[]);
    let front = Server::script("chain_server.py", &["--next", &back.port.to_string()]);
    let url = format!("http://127.0.0.1:{}/work", front.port);
    let (fp, bp) = (front.pid().to_string(), back.pid().to_string());
    let (fname, bname) = (format!("{fp}=front"), format!("{bp}=back"));
    let mut args = vec![
        "--pid", &fp, "--pid", &bp, "--name", &fname, "--name", &bname, "--otlp", otlp,
    ];
    args.extend(extra);
    sniff_command_with(
        &args,
        &["curl", "-s", "-o", "/dev/null", &url],
        LIMIT,
        false,
    )
}

/// Phoenix's spans whose service is one of `services`, by (service, name).
fn by_service_and_name<'a>(
    spans: &'a [Value],
    services: &[&str],
) -> HashMap<(String, String), &'a Value> {
    let mut out = HashMap::new();
    for s in spans {
        let service = attr(s, "service.name").as_str().unwrap_or("").to_owned();
        if services.contains(&service.as_str()) {
            let name = s["name"].as_str().unwrap_or("").to_owned();
            assert!(
                out.insert((service.clone(), name.clone()), s).is_none(),
                "two spans of {service} named {name}: {spans:#?}"
            );
        }
    }
    out
}

fn span_id(s: &Value) -> &str {
    s["context"]["span_id"].as_str().unwrap_or("?")
}

fn trace_id(s: &Value) -> &str {
    s["context"]["trace_id"].as_str().unwrap_or("?")
}

fn count_of(spans: &[Value], services: &[&str]) -> usize {
    spans
        .iter()
        .filter(|s| services.contains(&attr(s, "service.name").as_str().unwrap_or("")))
        .count()
}

#[test]
fn phoenix_stores_a_live_run_and_a_merged_capture_as_traces_of_the_calls_shape() {
    if !kernel_tests() {
        return;
    }
    let phoenix = Phoenix::start();
    // A live run: one trace, curl -> front -> back.
    let cap = chain(&phoenix.otlp_url(), &[]);
    assert!(cap.status.success(), "{}", cap.describe());
    assert!(cap.stderr.contains(": 4 spans sent in "), "{}", cap.stderr);
    let live = ["curl", "front", "back"];
    let spans = phoenix.wait_spans("the live run's 4 spans", |s| count_of(s, &live) >= 4);
    assert_eq!(count_of(&spans, &live), 4, "{spans:#?}");
    let by = by_service_and_name(&spans, &live);
    let get = |service: &str, name: &str| {
        *by.get(&(service.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no span {service} {name} in {spans:#?}"))
    };
    let curl = get("curl", "GET /work");
    let front_in = get("front", "GET /work");
    let front_out = get("front", "GET /inner");
    let back = get("back", "GET /inner");
    assert!(curl["parent_id"].is_null(), "{curl:#}");
    assert_eq!(front_in["parent_id"], span_id(curl));
    assert_eq!(front_out["parent_id"], span_id(front_in));
    assert_eq!(back["parent_id"], span_id(front_out));
    let traces: HashSet<&str> = [curl, front_in, front_out, back]
        .into_iter()
        .map(trace_id)
        .collect();
    assert_eq!(traces.len(), 1);
    assert_eq!(attr(back, "http.response.status_code"), 200);
    assert_eq!(attr(curl, "http.request.method"), "GET");
    assert!(
        attr(curl, "url.full")
            .as_str()
            .unwrap_or("")
            .ends_with("/work")
    );
    assert_eq!(attr(curl, "server.address"), "127.0.0.1");
    assert!(
        attr(curl, "host.name")
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );

    // Two hosts merged: openstack on compute1 -> glance-api on compute1 -> keystone on the
    // controller is one trace across both hosts.
    let scene = TwoHosts::run("ox", 34, 2_000);
    let args: Vec<OsString> = vec![
        "merge".into(),
        scene.controller.jsonl_path().into(),
        scene.compute1.jsonl_path().into(),
        "-o".into(),
        scene.dir.path().join("merged.log").into(),
        "--otlp".into(),
        phoenix.otlp_url().into(),
    ];
    let (code, _, err) = sniffer_tool(&args, LIMIT);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(": 10 spans sent in "), "{err}");
    let merged = [
        "openstack",
        "keystone",
        "glance-api@controller",
        "glance-api@compute1",
    ];
    let spans = phoenix.wait_spans("the merge's 10 spans", |s| count_of(s, &merged) >= 10);
    assert_eq!(count_of(&spans, &merged), 10, "{spans:#?}");
    let traces: HashSet<&str> = spans
        .iter()
        .filter(|s| merged.contains(&attr(s, "service.name").as_str().unwrap_or("")))
        .map(trace_id)
        .collect();
    assert_eq!(
        traces.len(),
        3,
        "GET /v3, POST to the controller's glance, GET to compute1's"
    );
    // Services and hosts as the merge named them: the CLIENT and SERVER spans of one name
    // differ by service.
    let by_host: HashSet<(String, String)> = spans
        .iter()
        .filter(|s| merged.contains(&attr(s, "service.name").as_str().unwrap_or("")))
        .map(|s| {
            (
                attr(s, "service.name").as_str().unwrap_or("").to_owned(),
                attr(s, "host.name").as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want: HashSet<(String, String)> = [
        ("openstack", "compute1"),
        ("keystone", "controller"),
        ("glance-api@controller", "controller"),
        ("glance-api@compute1", "compute1"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert_eq!(by_host, want);
    let find = |service: &str, name: &str, host: &str| {
        let found: Vec<&Value> = spans
            .iter()
            .filter(|s| {
                attr(s, "service.name") == service
                    && s["name"] == name
                    && attr(s, "host.name") == host
            })
            .collect();
        assert_eq!(found.len(), 1, "{service} {name} on {host}: {found:#?}");
        found[0]
    };
    let cli = find("openstack", "GET /v2/images", "compute1");
    let g1 = find("glance-api@compute1", "GET /v2/images", "compute1");
    let g1_out = find("glance-api@compute1", "POST /v3/auth/tokens", "compute1");
    let ks = spans
        .iter()
        .find(|s| attr(s, "service.name") == "keystone" && s["parent_id"] == span_id(g1_out))
        .unwrap_or_else(|| panic!("no keystone span under compute1's glance-api: {spans:#?}"));
    assert_eq!(g1["parent_id"], span_id(cli));
    assert_eq!(g1_out["parent_id"], span_id(g1));
    assert_eq!(attr(ks, "host.name"), "controller");
    assert_eq!(trace_id(ks), trace_id(cli));
}

/// The requests a strict receiver took (tests/fixtures/otlp_receiver.py), one JSON per line.
fn received(path: &std::path::Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Starts the strict receiver with `args`; returns it, its URL and where it writes.
fn receiver(args: &[&str]) -> (Server, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("received.jsonl");
    let python = phoenix::venv().join("bin/python");
    let mut cmd = Command::new(python);
    cmd.arg(fixture("otlp_receiver.py")).arg(&out).args(args);
    let srv = Server::spawn(&mut cmd);
    let url = format!("http://127.0.0.1:{}", srv.port);
    (srv, url, dir)
}

#[test]
fn the_wire_is_otlp_protobuf_as_the_reference_classes_read_it_and_a_busy_answer_is_retried() {
    if !kernel_tests() {
        return;
    }
    let (_rx, url, dir) = receiver(&["--fail-first", "1"]);
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let cap = chain(&url, &[]);
    assert!(cap.status.success(), "{}", cap.describe());
    assert!(
        cap.stderr
            .contains(": 4 spans sent in 2 requests (1 retries)"),
        "{}",
        cap.stderr
    );
    let got = received(&dir.path().join("received.jsonl"));
    assert_eq!(got[0], serde_json::json!({"refused": true}));
    assert!(got.iter().all(|r| r.get("bad").is_none()), "{got:#?}");
    // (service, kind) -> span, with the resource each came under.
    let mut spans: HashMap<(String, String), Value> = HashMap::new();
    for req in &got[1..] {
        for rs in req["resource_spans"].as_array().expect("resource_spans") {
            let res: HashMap<&str, &Value> = rs["resource"]["attributes"]
                .as_array()
                .expect("resource attributes")
                .iter()
                .map(|kv| (kv["key"].as_str().unwrap_or(""), &kv["value"]))
                .collect();
            let service = res["service.name"]["string_value"]
                .as_str()
                .expect("service.name");
            assert!(res["host.name"]["string_value"].is_string());
            assert!(
                res["process.pid"]["int_value"].is_string(),
                "int64 in the JSON mapping"
            );
            for ss in rs["scope_spans"].as_array().expect("scope_spans") {
                assert_eq!(ss["scope"]["name"], "sniffer");
                for s in ss["spans"].as_array().expect("spans") {
                    let kind = s["kind"].as_str().unwrap_or("").to_owned();
                    spans.insert((service.to_owned(), kind), s.clone());
                }
            }
        }
    }
    let keys: HashSet<(&str, &str)> = spans
        .keys()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let want: HashSet<(&str, &str)> = [
        ("curl", "SPAN_KIND_CLIENT"),
        ("front", "SPAN_KIND_SERVER"),
        ("front", "SPAN_KIND_CLIENT"),
        ("back", "SPAN_KIND_SERVER"),
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, want);
    let s = |svc: &str, kind: &str| &spans[&(svc.to_owned(), format!("SPAN_KIND_{kind}"))];
    // Ids: 16 and 8 bytes (base64 in the JSON mapping: 24 and 12 characters).
    for v in spans.values() {
        assert_eq!(v["trace_id"].as_str().map(str::len), Some(24), "{v:#}");
        assert_eq!(v["span_id"].as_str().map(str::len), Some(12), "{v:#}");
        let (a, b): (u64, u64) = (
            v["start_time_unix_nano"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("start"),
            v["end_time_unix_nano"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("end"),
        );
        assert!(t0 <= a && a <= b, "{v:#}");
    }
    assert!(s("curl", "CLIENT").get("parent_span_id").is_none());
    assert_eq!(
        s("front", "SERVER")["parent_span_id"],
        s("curl", "CLIENT")["span_id"]
    );
    assert_eq!(
        s("front", "CLIENT")["parent_span_id"],
        s("front", "SERVER")["span_id"]
    );
    assert_eq!(
        s("back", "SERVER")["parent_span_id"],
        s("front", "CLIENT")["span_id"]
    );
    let attrs: HashSet<&str> = s("front", "CLIENT")["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .filter_map(|kv| kv["key"].as_str())
        .collect();
    for k in [
        "http.request.method",
        "url.full",
        "server.address",
        "server.port",
        "http.response.status_code",
        "service.name",
        "host.name",
    ] {
        assert!(attrs.contains(k), "{k} missing: {attrs:?}");
    }
}

#[test]
fn a_backend_that_never_answers_holds_up_no_capture_and_the_loss_is_counted() {
    if !kernel_tests() {
        return;
    }
    let (_rx, url, _dir) = receiver(&["--stall"]);
    let www = tempfile::tempdir().expect("tempdir");
    fs::write(www.path().join("hi.txt"), b"hello\n").expect("write");
    let server = Server::start(www.path(), &[]);
    let target = format!("http://127.0.0.1:{}/hi.txt", server.port);
    let mut command = vec!["curl", "-s"];
    for _ in 0..100 {
        command.extend([target.as_str(), "-o", "/dev/null"]);
    }
    let t0 = Instant::now();
    let pid = server.pid().to_string();
    let cap = sniff_command_with(&["--pid", &pid, "--otlp", &url], &command, LIMIT, false);
    let took = t0.elapsed();
    // Every exchange is in the log; the end waited for the backend a bounded time.
    assert!(
        cap.stderr.contains("sniffer: 100 exchanges"),
        "{}",
        cap.stderr
    );
    assert!(took < Duration::from_secs(45), "took {took:?}");
    let otlp = cap
        .stderr
        .lines()
        .find(|l| l.starts_with("sniffer: otlp "))
        .unwrap_or_else(|| panic!("no otlp summary: {}", cap.stderr));
    assert!(otlp.contains(": 0 spans sent in "), "{otlp}");
    assert!(
        otlp.contains("; 0 dropped (queue full), 200 not delivered, 0 rejected"),
        "{otlp}"
    );
    // An output that lost what it was given: exit code 74, as for a full disk.
    assert_eq!(cap.status.code(), Some(74), "{}", cap.stderr);
}
