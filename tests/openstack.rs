//! End to end on a real OpenStack: keystone and glance-api from PyPI under uWSGI (devstack's
//! process names), the openstack CLI, and sniffer tracing all three. Run by `cargo xtask e2e`,
//! which makes the venv (SNIFFER_OPENSTACK_VENV).
//!
//! For each of `image create/list/show/save`, the log must hold exactly the requests keystone
//! and glance-api logged themselves in the same run, between exactly openstack, keystone and
//! glance-api, with glance-api's calls to keystone nested inside openstack's call to glance-api;
//! the image bodies show as binary previews with their exact sizes; the saved image is
//! byte-identical to the uploaded one.
use std::fs;

use serde_json::Value;
use sniffer_tests::{
    kernel_tests,
    openstack::{
        Run, assert_databases_set_aside, assert_nested, assert_numbered_and_drawn,
        assert_served_once, create_image, find, fresh_dir, participants, qcow2, sniff, start_bed,
    },
};

/// The checks every command's run must pass.
fn check(run: &Run, what: &str) {
    let ctx = || format!("{what}: log in {}\n{}", run.dir.display(), run.log);
    assert!(!run.exchanges.is_empty(), "{}", ctx());
    // Every request each service logged, exactly once, and nothing it did not serve.
    assert_served_once(run, |p| p, &ctx());
    // MariaDB and memcached, as devstack has them: set aside, never in the log.
    assert_databases_set_aside(run, &ctx());
    assert_eq!(
        participants(run),
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
    assert_nested(run, "glance-api", &ctx);
    assert_numbered_and_drawn(run);
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
    let work = fresh_dir("e2e-work");
    let img = qcow2(&work, 3 << 20);
    let size = fs::metadata(&img).unwrap().len();

    let create = create_image(&bed, "image-create", &img);
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
