//! Several hosts on one machine: network namespaces made by the test (a bridge, veth pairs,
//! addresses from 198.18.0.0/15), real python services in them, one real sniffer per host,
//! then `sniffer merge`. And two namespaces reusing one loopback 4-tuple under one sniffer.
use std::{collections::HashMap, ffi::OsString, path::Path, time::Duration};

use serde_json::Value;
use sniffer_tests::{
    Interactive, Running, fixture, kernel_tests,
    netns::{Lab, Service, TwoHosts, netns_of},
    sniffer_tool,
};

const LIMIT: Duration = Duration::from_secs(60);

/// The exchange records of a JSONL file.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// The host name an end of a record names.
fn host(r: &Value, end: &str) -> Option<String> {
    r[end]["host"]["name"].as_str().map(str::to_owned)
}

/// The `### [N] ...` lines of a numbered log, without their numbers.
fn titles(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("### ["))
        .map(|l| l.split_once("] ").map_or(l, |(_, t)| t).to_owned())
        .collect()
}

fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// `sniffer merge` of the two hosts' JSONL: (merged log, merged records, stderr).
fn merge(scene: &TwoHosts, extra: &[&str]) -> (String, Vec<Value>, String) {
    let out = scene.dir.path();
    let (log, jsonl) = (out.join("merged.log"), out.join("merged.jsonl"));
    let mut args: Vec<OsString> = vec![
        "merge".into(),
        scene.controller.jsonl_path().into(),
        scene.compute1.jsonl_path().into(),
        "-o".into(),
        log.clone().into(),
        "--jsonl".into(),
        jsonl.clone().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let (code, _, err) = sniffer_tool(&args, LIMIT);
    assert_eq!(code, 0, "sniffer merge failed:\n{err}");
    let text = std::fs::read_to_string(&log).expect("merged log");
    (text, records(&jsonl), err)
}

/// compute1's offset and uncertainty as the merge reported them, in seconds.
fn reported_offset(stderr: &str) -> (f64, f64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("host compute1"))
        .unwrap_or_else(|| panic!("no offset for compute1 in:\n{stderr}"));
    let after = |key: &str| {
        let at = line
            .find(key)
            .unwrap_or_else(|| panic!("no {key:?} in {line}"));
        line[at + key.len()..].trim_start().to_owned()
    };
    let secs: f64 = after("clock ")
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no offset in {line}"));
    let u = after("± ");
    let mut parts = u.split([' ', ',']);
    let n: f64 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .expect("uncertainty");
    let unit = parts.next().unwrap_or("");
    let u = match unit {
        "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        other => panic!("unit {other:?} in {line}"),
    };
    (secs, u)
}

/// Every request in a service's own log is one exchange of the merged capture, served by
/// that process on that host, from that client socket.
fn assert_each_request_once(services: &[&Service], merged: &[Value]) -> usize {
    let mut total = 0;
    for s in services {
        let lines = s.requests();
        assert!(!lines.is_empty(), "{} on {} served nothing", s.name, s.host);
        for line in lines {
            let w: Vec<&str> = line.split(' ').collect();
            let (method, path, peer) = (w[0], w[1], format!("{}:{}", w[2], w[3]));
            let found: Vec<&Value> = merged
                .iter()
                .filter(|r| {
                    r["server"]["pid"].as_u64() == Some(u64::from(s.pid()))
                        && r["server"]["peer"] == peer.as_str()
                        && host(r, "server").as_deref() == Some(s.host.as_str())
                        && r["method"] == method
                        && path_of(r["url"].as_str().unwrap_or("")) == path
                })
                .collect();
            assert_eq!(
                found.len(),
                1,
                "{} on {}: {line}: {found:#?}",
                s.name,
                s.host
            );
            total += 1;
        }
    }
    total
}

#[test]
fn two_hosts_merge_into_one_story_with_a_clock_five_seconds_off() {
    if !kernel_tests() {
        return;
    }
    let scene = TwoHosts::run("mh", 31, 5_000);
    let c = &scene.compute1;
    assert!(c.status.success(), "compute1's sniffer: {}", c.describe());
    assert!(
        scene.controller.status.success(),
        "{}",
        scene.controller.describe()
    );
    let (log, merged, err) = merge(&scene, &[]);
    eprintln!("{err}");
    let ctl = format!("198.18.{}.1", scene.subnet);
    let ks = format!("http://{ctl}:5000");
    let g = format!("http://{ctl}:9292");
    let local = "http://127.0.0.1:9292";
    // Nested calls sit inside their callers although compute1's times are 5 s ahead.
    assert_eq!(
        titles(&log),
        [
            format!("(openstack) REQ >>> (keystone) : GET {ks}/v3"),
            format!("(openstack) RESP <<< (keystone) : 200 OK GET {ks}/v3"),
            format!("(openstack) REQ >>> (glance-api@controller) : POST {g}/v2/images"),
            format!("(glance-api@controller) REQ >>> (keystone) : POST {ks}/v3/auth/tokens"),
            format!(
                "(glance-api@controller) RESP <<< (keystone) : 201 Created POST {ks}/v3/auth/tokens"
            ),
            format!(
                "(openstack) RESP <<< (glance-api@controller) : 201 Created POST {g}/v2/images"
            ),
            format!("(openstack) REQ >>> (glance-api@compute1) : GET {local}/v2/images"),
            format!("(glance-api@compute1) REQ >>> (keystone) : POST {ks}/v3/auth/tokens"),
            format!(
                "(glance-api@compute1) RESP <<< (keystone) : 201 Created POST {ks}/v3/auth/tokens"
            ),
            format!("(openstack) RESP <<< (glance-api@compute1) : 200 OK GET {local}/v2/images"),
        ],
        "merged log:\n{log}\nstderr:\n{err}"
    );
    // Every request the services logged, once.
    let served = assert_each_request_once(
        &[
            &scene.keystone,
            &scene.glance_controller,
            &scene.glance_compute1,
        ],
        &merged,
    );
    assert_eq!((served, merged.len()), (5, 5));
    // The calls from compute1 to the controller have both ends, each named by its host.
    let across: Vec<&Value> = merged
        .iter()
        .filter(|r| {
            host(r, "client").as_deref() == Some("compute1")
                && host(r, "server").as_deref() == Some("controller")
        })
        .collect();
    assert_eq!(across.len(), 3, "{merged:#?}");
    // The clock: 5 s, found from those three exchanges alone.
    let (offset, uncertainty) = reported_offset(&err);
    assert!(
        (offset - 5.0).abs() <= uncertainty + 0.000_2 && uncertainty < 0.05,
        "estimated {offset} s ± {uncertainty} s, injected 5 s:\n{err}"
    );
    assert!(err.contains("from 3 exchanges with controller"), "{err}");
    // The converters read the merged files as they read a run's.
    let out = scene.dir.path();
    let diagram = out.join("diagram.md");
    let (code, _, e) = sniffer_tool(
        &[
            OsString::from("diagram"),
            out.join("merged.log").into(),
            "-o".into(),
            diagram.clone().into(),
            "--standalone".into(),
        ],
        LIMIT,
    );
    assert_eq!(code, 0, "{e}");
    let d = std::fs::read_to_string(&diagram).expect("diagram");
    assert!(d.contains(" as glance-api@controller"), "{d}");
    assert_eq!(d.matches("->>").count(), 10, "{d}");
    let har = out.join("merged.har");
    let (code, _, e) = sniffer_tool(
        &[
            OsString::from("har"),
            out.join("merged.jsonl").into(),
            "-o".into(),
            har.clone().into(),
        ],
        LIMIT,
    );
    assert_eq!(code, 0, "{e}");
    let h: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&har).expect("har")).expect("har json");
    assert_eq!(h["log"]["entries"].as_array().map(Vec::len), Some(5));
}

#[test]
fn without_the_other_host_the_halves_stay_named_as_a_run_names_them() {
    if !kernel_tests() {
        return;
    }
    let scene = TwoHosts::run("mo", 32, -3_000);
    let out = scene.dir.path().join("alone.log");
    let (code, _, err) = sniffer_tool(
        &[
            OsString::from("merge"),
            scene.compute1.jsonl_path().into(),
            "-o".into(),
            out.clone().into(),
        ],
        LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    // compute1 alone: its own log, message for message (the JSONL carries all of it).
    let alone = std::fs::read_to_string(&out).expect("merged");
    assert_eq!(alone, scene.compute1.log, "{err}");
    assert!(err.contains("0 seen from both ends on two hosts"), "{err}");
}

#[test]
fn two_namespaces_reusing_one_loopback_four_tuple_are_not_confused() {
    if !kernel_tests() {
        return;
    }
    // a and b each have a server on 127.0.0.1:18080 and a client from 127.0.0.1:40404: the
    // same 4-tuple twice, at once. b's server reads first, while both requests wait.
    let lab = Lab::new("ns", 33, &["a", "b"]);
    let start = |host: &str, args: &[&str]| {
        let mut cmd = lab.command(host, "python3");
        cmd.arg(fixture("same_tuple.py")).args(args);
        Interactive::start(&mut cmd)
    };
    let sa = start("a", &["server", "18080", "a"]);
    let sb = start("b", &["server", "18080", "b"]);
    for s in [&sa, &sb] {
        s.lines.expect("PORT", Duration::from_secs(20));
    }
    let (na, nb) = (netns_of(sa.guard.pid()), netns_of(sb.guard.pid()));
    let mut ca = start("a", &["client", "18080", "40404"]);
    let mut cb = start("b", &["client", "18080", "40404"]);
    let (mut sa, mut sb) = (sa, sb);
    let label = |who: &Interactive, name: &str| format!("{}={name}", who.guard.pid());
    let pids: Vec<String> = [&sa, &sb, &ca, &cb]
        .iter()
        .map(|p| p.guard.pid().to_string())
        .collect();
    let names = [
        label(&sa, "server-a"),
        label(&sb, "server-b"),
        label(&ca, "client-a"),
        label(&cb, "client-b"),
    ];
    let mut args = Vec::new();
    for (p, n) in pids.iter().zip(&names) {
        args.extend(["--pid", p.as_str(), "--name", n.as_str()]);
    }
    let sniffer = Running::start(&args);
    ca.send_line("go");
    ca.lines.expect("SENT", LIMIT);
    cb.send_line("go");
    cb.lines.expect("SENT", LIMIT);
    sb.send_line("go");
    assert_eq!(cb.lines.expect("BODY", LIMIT), "BODY b");
    sa.send_line("go");
    assert_eq!(ca.lines.expect("BODY", LIMIT), "BODY a");
    std::thread::sleep(Duration::from_millis(500));
    let cap = sniffer.stop();
    assert!(cap.status.success(), "{}", cap.describe());
    // Each client's exchange is stitched with its own namespace's server: both ends in one
    // namespace, and the answer that server sent.
    let recs = records(&cap.jsonl_path());
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let by_from: HashMap<&str, &Value> = recs
        .iter()
        .map(|r| (r["from"].as_str().unwrap_or(""), r))
        .collect();
    for (who, ns, body, other) in [("client-a", na, "a", "b"), ("client-b", nb, "b", "a")] {
        let r = by_from[who];
        let netns = |end: &str| r[end]["netns"].as_u64();
        assert_eq!(
            (netns("client"), netns("server")),
            (Some(u64::from(ns)), Some(u64::from(ns))),
            "{r:#}"
        );
        assert_eq!(r["response"]["body"], body, "{r:#}");
        // Named by its server once that server's view is in (a request written before the
        // server read it keeps the address: sniffer cannot look into another namespace's
        // socket table), never by the other namespace's.
        let to = r["to"].as_str().unwrap_or("");
        assert!(
            to == format!("server-{body}") || to == "127.0.0.1:18080",
            "{r:#}"
        );
        assert!(
            !cap.log
                .contains(&format!("({who}) REQ >>> (server-{other})"))
        );
    }
    assert_ne!(na, nb);
}
