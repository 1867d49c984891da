//! The reference's full picture on a real swift: glance-api stores images in a single-node swift
//! 2.38 (proxy on :8080 with keystonemiddleware, account/container/object servers), and sniffer
//! traces keystone, glance-api and swift-proxy-server by pid. Run by `cargo xtask e2e`, which
//! makes the venvs (SNIFFER_OPENSTACK_VENV, SNIFFER_SWIFT_VENV). Its own test binary: the bed
//! takes port 8080, and cargo runs test binaries one at a time.
use std::{fs, path::PathBuf};

use serde_json::Value;
use sniffer_tests::{
    kernel_tests,
    openstack::{
        Run, create_image, draw, find, fresh_dir, numbers, qcow2, sniff, start_bed, swift_venv,
    },
};

fn exchanges<'a>(run: &'a Run, from: &str, to: &str) -> Vec<&'a Value> {
    run.exchanges
        .iter()
        .filter(|x| x["from"] == from && x["to"] == to)
        .collect()
}

/// The exchange `from` -> `to` with `method` whose URL ends with `url_end`.
fn call<'a>(run: &'a Run, from: &str, to: &str, method: &str, url_end: &str) -> &'a Value {
    exchanges(run, from, to)
        .into_iter()
        .find(|x| x["method"] == method && x["url"].as_str().unwrap().ends_with(url_end))
        .unwrap_or_else(|| {
            panic!(
                "no {from} -> {to} {method} ...{url_end}: log in {}",
                run.dir.display()
            )
        })
}

/// Draws the run twice: in full (diagram-full.md, which must show the proxy's `op` to the
/// object server) and without the backends, as the reference (diagram.md, returned).
fn views(run: &Run, op: &str) -> String {
    let full = draw(run, "diagram-full", "body-full", &[]);
    assert!(
        full.contains(&format!("swift-proxy-server->>swift-object-server: {op} ")),
        "{full}"
    );
    let filter = reference_view_filter(&run.dir);
    draw(
        run,
        "diagram",
        "body",
        &["--filter", filter.to_str().unwrap()],
    )
}

/// The `to` names of the swift proxy's own calls.
fn backends(run: &Run) -> Vec<String> {
    let mut v: Vec<String> = run
        .exchanges
        .iter()
        .filter(|x| x["from"] == "swift-proxy-server" && x["to"] != "keystone")
        .map(|x| x["to"].as_str().unwrap_or("").to_owned())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// A filter that leaves the proxy's backend servers out, as the in-process hooks never saw them.
fn reference_view_filter(dir: &std::path::Path) -> PathBuf {
    let f = dir.join("no-swift-backends.json");
    fs::write(
        &f,
        r#"{"filters": [
  {"from": "swift-proxy-server", "to": "swift-account-server"},
  {"from": "swift-proxy-server", "to": "swift-container-server"},
  {"from": "swift-proxy-server", "to": "swift-object-server"}
]}
"#,
    )
    .expect("write filter");
    f
}

#[test]
fn glance_on_swift_image_create_and_save_three_services_deep() {
    if !kernel_tests() {
        return;
    }
    let bed = start_bed("e2e-swift-state", Some(&swift_venv()), false);
    assert!(bed.swift_proxy.is_some(), "the bed has swift");
    let work = fresh_dir("e2e-swift-work");
    let img = qcow2(&work, 20 << 20);
    let size = fs::metadata(&img).unwrap().len();
    assert!(size > 20_000_000, "a 20 MB image: {size}");

    // image create: openstack -> glance-api -> swift-proxy-server -> its servers, keystone.
    let create = create_image(&bed, "swift-image-create", &img);
    let ctx = || format!("log in {}", create.dir.display());
    let id = create.stdout.trim().to_owned();
    assert_eq!(id.len(), 36, "image id {id:?}; {}", ctx());
    for x in &create.exchanges {
        // The backends are not traced: the proxy's calls to them have its view only.
        let backend = x["to"].as_str().is_some_and(|t| {
            [
                "swift-account-server",
                "swift-container-server",
                "swift-object-server",
            ]
            .contains(&t)
        });
        assert!(
            x["client"].is_object() && (backend || x["server"].is_object()),
            "both ends: {x}"
        );
        assert_eq!(x["incomplete"], false, "{x}");
    }
    let upload = find(&create, "PUT", &format!("/v2/images/{id}/file"));
    let to_swift =
        |method, url_end| call(&create, "glance-api", "swift-proxy-server", method, url_end);
    let head = to_swift("HEAD", "/glance");
    assert!(
        head["url"].as_str().unwrap().contains("/v1/AUTH_"),
        "{head}"
    );
    assert_eq!(head["status"], 404, "the first upload finds no container");
    let container = to_swift("PUT", "/glance");
    let object = to_swift("PUT", &format!("/glance/{id}"));
    assert_eq!(object["status"], 201);
    for put in [upload, object] {
        assert_eq!(put["request"]["body_size"], size, "{put}");
        let body = put["request"]["body"].as_str().unwrap();
        assert!(
            body.starts_with(&format!("<octet-stream {size} bytes> 0x514649fb")),
            "{body}"
        );
    }
    // In order: HEAD 404, then the container, then the object, all inside the upload; swift's
    // token validation inside glance's HEAD; glance's 204 after swift's 201.
    let (u0, u1) = numbers(upload);
    let (h0, h1) = numbers(head);
    let (c0, c1) = numbers(container);
    let (o0, o1) = numbers(object);
    assert!(u0 < h0 && h1 < c0 && c1 < o0 && o1 < u1, "{}", ctx());
    let validation = exchanges(&create, "swift-proxy-server", "keystone")
        .into_iter()
        .find(|x| x["method"] == "GET" && x["url"].as_str().unwrap().contains("/auth/tokens"))
        .unwrap_or_else(|| panic!("swift does not validate glance's token: {}", ctx()));
    let (v0, v1) = numbers(validation);
    assert!(
        h0 < v0 && v1 < h1,
        "the validation sits inside the HEAD: {}",
        ctx()
    );
    assert_eq!(upload["status"], 204);
    // What the in-process hooks never showed: the proxy's own calls, named by their processes.
    assert_eq!(
        backends(&create),
        vec![
            "swift-account-server",
            "swift-container-server",
            "swift-object-server"
        ],
        "{}",
        ctx()
    );
    // Without the backends, the view of the reference, with its placeholders.
    let d = views(&create, "PUT");
    for line in [
        "glance-api->>swift-proxy-server: HEAD /v1/{account}/glance",
        "swift-proxy-server-->>glance-api: 404 Not Found /v1/{account}/glance",
        "glance-api->>swift-proxy-server: PUT /v1/{account}/glance/{image_id}",
        "swift-proxy-server-->>glance-api: 201 Created /v1/{account}/glance/{image_id}",
        "glance-api-->>openstack: 204 No Content /v2/images/{image_id}/file",
        "swift-proxy-server->>keystone: GET /v3/auth/tokens",
    ] {
        assert!(
            d.lines().any(|l| l.trim() == line),
            "diagram lacks {line:?}:\n{d}"
        );
    }
    assert!(!d.contains("swift-object-server"), "{d}");
    assert!(d.contains(&format!("| {{image_id}} | {id} |")), "{d}");
    assert!(d.contains("| {account} | AUTH_"), "{d}");

    // image save: glance-api reads the object from swift while it answers openstack.
    let out = work.join("saved.qcow2");
    let save = sniff(
        &bed,
        "swift-image-save",
        &["image", "save", "--file", out.to_str().unwrap(), &id],
    );
    let download = find(&save, "GET", &format!("/v2/images/{id}/file"));
    let fetch = call(
        &save,
        "glance-api",
        "swift-proxy-server",
        "GET",
        &format!("/glance/{id}"),
    );
    let (d0, d1) = numbers(download);
    let (f0, f1) = numbers(fetch);
    assert!(
        d0 < f0 && f1 < d1,
        "swift's GET sits inside openstack's GET"
    );
    assert_eq!(download["response"]["body_size"], size);
    assert_eq!(fetch["response"]["body_size"], size);
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(&img).unwrap(),
        "the saved image is the uploaded one"
    );
    let d = views(&save, "GET");
    assert!(
        d.lines()
            .any(|l| l.trim()
                == "glance-api->>swift-proxy-server: GET /v1/{account}/glance/{image_id}"),
        "{d}"
    );
}
