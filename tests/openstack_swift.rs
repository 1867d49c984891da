//! The reference's full picture on a real swift: glance-api stores images in a single-node swift
//! 2.38 (proxy on :8080 with keystonemiddleware, account/container/object servers), and sniffer
//! traces keystone, glance-api and swift-proxy-server by pid. Run by `cargo xtask e2e`, which
//! makes the venvs (SNIFFER_OPENSTACK_VENV, SNIFFER_SWIFT_VENV). Its own test binary: the bed
//! takes port 8080, and cargo runs test binaries one at a time.
use std::{fs, path::PathBuf, process::Command};

use serde_json::Value;
use sniffer_tests::{
    kernel_tests,
    openstack::{Run, draw, find, sniff, start_bed},
    pattern, workspace,
};

/// (request number, response number) of an exchange.
fn numbers(x: &Value) -> (u64, u64) {
    (
        x["request"]["number"].as_u64().expect("request number"),
        x["response"]["number"].as_u64().expect("response number"),
    )
}

fn exchanges<'a>(run: &'a Run, from: &str, to: &str) -> Vec<&'a Value> {
    run.exchanges
        .iter()
        .filter(|x| x["from"] == from && x["to"] == to)
        .collect()
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
    let swift_venv = PathBuf::from(
        std::env::var("SNIFFER_SWIFT_VENV").expect("SNIFFER_SWIFT_VENV: run `cargo xtask e2e`"),
    );
    let bed = start_bed("e2e-swift-state", Some(&swift_venv), false);
    assert!(bed.swift_proxy.is_some(), "the bed has swift");
    let work = workspace().join("target").join("e2e-swift-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let raw = work.join("disk.raw");
    fs::write(&raw, pattern(20 << 20)).unwrap();
    let img = work.join("cirros.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img)
        .status()
        .expect("qemu-img (Debian's qemu-utils) is needed to make a qcow2 image");
    assert!(st.success());
    let size = fs::metadata(&img).unwrap().len();
    assert!(size > 20_000_000, "a 20 MB image: {size}");

    // image create: openstack -> glance-api -> swift-proxy-server -> its servers, keystone.
    let create = sniff(
        &bed,
        "swift-image-create",
        &[
            "image",
            "create",
            "--disk-format",
            "qcow2",
            "--file",
            img.to_str().unwrap(),
            "--public",
            "cirros",
            "-f",
            "value",
            "-c",
            "id",
        ],
    );
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
    let to_swift = exchanges(&create, "glance-api", "swift-proxy-server");
    let head = to_swift
        .iter()
        .find(|x| x["method"] == "HEAD" && x["url"].as_str().unwrap().ends_with("/glance"))
        .unwrap_or_else(|| panic!("no HEAD .../glance: {}", ctx()));
    assert!(
        head["url"].as_str().unwrap().contains("/v1/AUTH_"),
        "{head}"
    );
    assert_eq!(head["status"], 404, "the first upload finds no container");
    let container = to_swift
        .iter()
        .find(|x| x["method"] == "PUT" && x["url"].as_str().unwrap().ends_with("/glance"))
        .unwrap_or_else(|| panic!("no PUT of the container: {}", ctx()));
    let object = to_swift
        .iter()
        .find(|x| {
            x["method"] == "PUT"
                && x["url"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/glance/{id}"))
        })
        .unwrap_or_else(|| panic!("no PUT of the object: {}", ctx()));
    assert_eq!(object["status"], 201);
    for put in [upload, *object] {
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
    let full = draw(&create, "diagram-full", "body-full", &[]);
    assert!(
        full.contains("swift-proxy-server->>swift-object-server: PUT "),
        "{full}"
    );
    // Without the backends, the view of the reference, with its placeholders.
    let filter = reference_view_filter(&create.dir);
    let d = draw(
        &create,
        "diagram",
        "body",
        &["--filter", filter.to_str().unwrap()],
    );
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
    let fetch = exchanges(&save, "glance-api", "swift-proxy-server")
        .into_iter()
        .find(|x| {
            x["method"] == "GET"
                && x["url"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/glance/{id}"))
        })
        .unwrap_or_else(|| {
            panic!(
                "glance does not GET the object: log in {}",
                save.dir.display()
            )
        });
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
    let full = draw(&save, "diagram-full", "body-full", &[]);
    assert!(
        full.contains("swift-proxy-server->>swift-object-server: GET "),
        "{full}"
    );
    let filter = reference_view_filter(&save.dir);
    let d = draw(
        &save,
        "diagram",
        "body",
        &["--filter", filter.to_str().unwrap()],
    );
    assert!(
        d.lines()
            .any(|l| l.trim()
                == "glance-api->>swift-proxy-server: GET /v1/{account}/glance/{image_id}"),
        "{d}"
    );
}
