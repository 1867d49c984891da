//! End to end on a real OpenStack: keystone and glance-api from PyPI under uWSGI (devstack's
//! process names), the openstack CLI, and sniffer tracing all three. Run by `cargo xtask e2e`,
//! which makes the venv (SNIFFER_OPENSTACK_VENV).
//!
//! For each of `image create/list/show/save`, the log must hold exactly the requests keystone
//! and glance-api logged themselves in the same run, between exactly openstack, keystone and
//! glance-api, with glance-api's calls to keystone nested inside openstack's call to glance-api;
//! the image bodies show as binary previews with their exact sizes; the saved image is
//! byte-identical to the uploaded one.
use std::{fs, process::Command};

use serde_json::Value;
use sniffer_tests::{
    kernel_tests,
    openstack::{Run, draw, find, seen_by, sniff, sorted, start_bed},
    workspace,
};

/// The checks every command's run must pass.
fn check(run: &Run, what: &str) {
    let ctx = || format!("{what}: log in {}\n{}", run.dir.display(), run.log);
    assert!(!run.exchanges.is_empty(), "{}", ctx());
    // Every request each service logged, exactly once, and nothing it did not serve.
    assert_eq!(
        seen_by(run, "keystone"),
        sorted(run.keystone.clone()),
        "keystone: {}",
        ctx()
    );
    assert_eq!(
        seen_by(run, "glance-api"),
        sorted(run.glance.clone()),
        "glance-api: {}",
        ctx()
    );
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
    assert_eq!(
        names,
        vec!["glance-api", "keystone", "openstack"],
        "{}",
        ctx()
    );
    for x in &run.exchanges {
        assert_eq!(x["incomplete"], false, "{x}\n{}", ctx());
        assert!(
            x["client"].is_object() && x["server"].is_object(),
            "both ends: {x}"
        );
    }
    // glance-api's calls sit inside an openstack -> glance-api exchange.
    let numbers = |x: &Value| {
        (
            x["request"]["number"].as_u64().unwrap(),
            x["response"]["number"].as_u64().unwrap(),
        )
    };
    let outer: Vec<(u64, u64)> = run
        .exchanges
        .iter()
        .filter(|x| x["from"] == "openstack" && x["to"] == "glance-api")
        .map(numbers)
        .collect();
    for inner in run.exchanges.iter().filter(|x| x["from"] == "glance-api") {
        let (a, b) = numbers(inner);
        assert!(
            outer.iter().any(|&(s, e)| s < a && b < e),
            "glance-api's call [{a}]..[{b}] is not inside an openstack call: {}",
            ctx()
        );
    }
    // The log numbers every message once, 1..n.
    let titles: Vec<&str> = run.log.lines().filter(|l| l.starts_with("### [")).collect();
    for (i, t) in titles.iter().enumerate() {
        assert!(t.starts_with(&format!("### [{}] ", i + 1)), "{t}");
    }
    // The converter draws one arrow per message.
    let d = draw(run, "diagram", "body", &[]);
    assert_eq!(
        d.lines().filter(|l| l.contains(">>")).count(),
        titles.len(),
        "{d}"
    );
    let har: Value =
        serde_json::from_str(&fs::read_to_string(run.dir.join("run.har")).unwrap()).unwrap();
    assert_eq!(
        har["log"]["entries"].as_array().map(Vec::len),
        Some(run.exchanges.len())
    );
}

#[test]
fn openstack_image_commands_traced_end_to_end() {
    if !kernel_tests() {
        return;
    }
    let bed = start_bed("e2e-state", None, false);
    let work = workspace().join("target").join("e2e-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    // A real qcow2 (glance checks the format) of a few MB.
    let raw = work.join("disk.raw");
    fs::write(&raw, sniffer_tests::pattern(3 << 20)).unwrap();
    let img = work.join("cirros.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img)
        .status()
        .expect("qemu-img (Debian's qemu-utils) is needed to make a qcow2 image");
    assert!(st.success());
    let size = fs::metadata(&img).unwrap().len();

    let create = sniff(
        &bed,
        "image-create",
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
    check(&create, "image create");
    let id = create.stdout.trim().to_owned();
    assert_eq!(id.len(), 36, "image id: {id:?}");
    let put = find(&create, "PUT", &format!("/v2/images/{id}/file"));
    assert_eq!(put["request"]["body_size"], size);
    let body = put["request"]["body"].as_str().unwrap();
    assert!(
        body.starts_with(&format!("<octet-stream {size} bytes> 0x514649fb")),
        "{body}"
    );

    let list = sniff(&bed, "image-list", &["image", "list", "--all"]);
    check(&list, "image list");
    find(&list, "GET", "/v2/images?visibility=all");

    let show = sniff(&bed, "image-show", &["image", "show", &id, "-f", "json"]);
    check(&show, "image show");
    let shown: Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(shown["id"], id.as_str());

    let out = work.join("saved.qcow2");
    let save = sniff(
        &bed,
        "image-save",
        &["image", "save", "--file", out.to_str().unwrap(), &id],
    );
    check(&save, "image save");
    let get = find(&save, "GET", &format!("/v2/images/{id}/file"));
    assert_eq!(get["response"]["body_size"], size);
    assert!(
        get["response"]["body"]
            .as_str()
            .unwrap()
            .starts_with(&format!("<octet-stream {size} bytes> 0x514649fb"))
    );
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(&img).unwrap(),
        "the saved image is the uploaded one"
    );
}
