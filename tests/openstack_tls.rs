//! devstack's tls-proxy topology on a real OpenStack: Apache with mod_ssl on 127.0.0.1:443 (a
//! certificate the bed makes; the CLI gets it as OS_CACERT, glance's keystonemiddleware as its
//! cafile) in front of keystone (uwsgi over a unix socket) and glance (uWSGI on :60999). Every
//! client call is HTTPS, glance's own calls to keystone too. Run by `cargo xtask e2e`.
//!
//! With the CLI, Apache and the services traced, sniffer reads the TLS plaintext in OpenSSL on
//! both sides (Python's _ssl in the CLI and glance, mod_ssl in Apache), so the log is the Apache
//! topology's: participants, counts equal to the services' own logs, nesting, exact bodies,
//! URLs `https://127.0.0.1/...`.
use std::fs;

use sniffer_tests::{
    kernel_tests,
    openstack::{
        Run, assert_databases_set_aside, assert_nested, assert_numbered_and_drawn,
        assert_served_once, create_image, fresh_dir, path_of, qcow2, sniff, start_bed_tls,
    },
};

/// A client's path to glance-api with Apache's `/image` prefix taken off.
fn without_image_prefix(p: String) -> String {
    match p.strip_prefix("/image") {
        Some("") => "/".to_owned(),
        Some(rest) => rest.to_owned(),
        None => p,
    }
}

fn check(run: &Run, what: &str) {
    let ctx = || format!("{what}: log in {}", run.dir.display());
    assert!(!run.exchanges.is_empty(), "{}", ctx());
    assert_served_once(run, without_image_prefix, &ctx());
    // MariaDB and memcached, as devstack has them: set aside, never in the log.
    assert_databases_set_aside(run, &ctx());
    let mut names: Vec<&str> = run
        .exchanges
        .iter()
        .flat_map(|x| [x["from"].as_str(), x["to"].as_str()])
        .flatten()
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names,
        ["glance-api", "keystone", "openstack"],
        "participants; {}",
        ctx()
    );
    for x in &run.exchanges {
        assert_eq!(x["incomplete"], false, "{x}\n{}", ctx());
        let url = x["url"].as_str().unwrap_or("");
        let prefix = match x["to"].as_str().unwrap_or("") {
            "keystone" => "https://127.0.0.1/identity/",
            "glance-api" => "https://127.0.0.1/image",
            other => panic!("a call to {other}: {x}"),
        };
        assert!(url.starts_with(prefix), "{url}; {}", ctx());
        assert_eq!(x["via"], "apache2", "{x}");
        assert_eq!(x["tls"], true, "the client's hop is TLS: {x}");
        assert!(
            x["client"].is_object() && x["server"].is_object(),
            "both ends of the TLS hop read: {x}"
        );
    }
    assert!(
        run.exchanges
            .iter()
            .any(|x| x["from"] == "glance-api" && x["to"] == "keystone"),
        "glance's own calls to keystone, through HTTPS: {}",
        ctx()
    );
    assert_nested(run, "glance-api", &ctx);
    let d = assert_numbered_and_drawn(run);
    assert!(!d.contains("apache2"), "{d}");
}

#[test]
fn devstack_tls_proxy_apache_with_mod_ssl_in_front_of_keystone_and_glance() {
    if !kernel_tests() {
        return;
    }
    let bed = start_bed_tls("e2e-tls-state");
    assert!(bed.cacert.is_some(), "the bed speaks TLS");
    let work = fresh_dir("e2e-tls-work");
    let img = qcow2(&work, 2 << 20);
    let size = fs::metadata(&img).unwrap().len();

    let create = create_image(&bed, "tls-image-create", &img);
    check(&create, "image create");
    let id = create.stdout.trim().to_owned();
    assert_eq!(id.len(), 36, "image id {id:?}");
    let upload = create
        .exchanges
        .iter()
        .find(|x| x["method"] == "PUT" && x["to"] == "glance-api")
        .expect("the upload");
    assert_eq!(
        path_of(upload["url"].as_str().unwrap()),
        format!("/image/v2/images/{id}/file")
    );
    assert_eq!(upload["request"]["body_size"], size, "{upload}");

    let list = sniff(&bed, "tls-image-list", &["image", "list"]);
    check(&list, "image list");
    assert!(list.stdout.contains(&id), "{}", list.stdout);
    let show = sniff(&bed, "tls-image-show", &["image", "show", &id]);
    check(&show, "image show");
    let out = work.join("saved.qcow2");
    let save = sniff(
        &bed,
        "tls-image-save",
        &["image", "save", "--file", out.to_str().unwrap(), &id],
    );
    check(&save, "image save");
    let download = save
        .exchanges
        .iter()
        .find(|x| x["method"] == "GET" && x["url"].as_str().unwrap().ends_with("/file"))
        .expect("the download");
    assert_eq!(download["response"]["body_size"], size, "{download}");
    assert_eq!(fs::read(&out).unwrap(), fs::read(&img).unwrap());
}
