//! devstack's topology on a real OpenStack: Apache (Debian's apache2 + mod_proxy_uwsgi, a config
//! of the test's own on 127.0.0.1:80) in front, `/identity` to keystone's uWSGI `--socket` in the
//! uwsgi protocol over a unix socket, `/image` to glance's uWSGI on 127.0.0.1:60999, glance
//! storing in swift. Run by `cargo xtask e2e` (SNIFFER_OPENSTACK_VENV, SNIFFER_SWIFT_VENV).
//!
//! Through Apache, with everything traced, every command shows openstack, keystone, glance-api
//! and swift's servers, never apache2; paths as the client sent them; every request the services
//! logged exactly once; nested calls inside their outer exchange. `--show-proxies` shows
//! Apache's two hops. With only the services traced, the diagram still holds, the callers named
//! from the requests Apache forwarded where they can be known (uwsgi's REMOTE_ADDR/REMOTE_PORT),
//! apache2 otherwise.
use std::fs;

use sniffer_tests::{
    kernel_tests,
    openstack::{
        Bed, Run, Trace, assert_nested, assert_numbered_and_drawn, assert_report_in_chromium,
        assert_served_once, create_image, draw, fresh_dir, path_of, qcow2, sniff, sniff_with,
        start_bed, swift_venv,
    },
};

fn names(run: &Run) -> Vec<String> {
    let mut v: Vec<String> = run
        .exchanges
        .iter()
        .flat_map(|x| [x["from"].to_string(), x["to"].to_string()])
        .map(|s| s.trim_matches('"').to_owned())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// A client's path to glance-api with Apache's `/image` prefix taken off (glance logs the path
/// Apache forwarded).
fn without_image_prefix(p: String) -> String {
    match p.strip_prefix("/image") {
        Some("") => "/".to_owned(),
        Some(rest) => rest.to_owned(),
        None => p,
    }
}

/// The checks of a run through Apache with the CLI and the services traced (`apache_traced`:
/// Apache too, so the client's hop has both ends).
fn check(run: &Run, what: &str, apache_traced: bool) {
    let ctx = || format!("{what}: log in {}", run.dir.display());
    assert!(!run.exchanges.is_empty(), "{}", ctx());
    assert_served_once(run, without_image_prefix, &ctx());
    let n = names(run);
    for must in ["openstack", "keystone", "glance-api"] {
        assert!(
            n.iter().any(|x| x == must),
            "{must} missing: {n:?}; {}",
            ctx()
        );
    }
    let allowed = [
        "openstack",
        "keystone",
        "glance-api",
        "swift-proxy-server",
        "swift-account-server",
        "swift-container-server",
        "swift-object-server",
    ];
    assert!(
        n.iter().all(|x| allowed.contains(&x.as_str())),
        "participants {n:?}; {}",
        ctx()
    );
    for x in &run.exchanges {
        assert_eq!(x["incomplete"], false, "{x}\n{}", ctx());
        let url = x["url"].as_str().unwrap_or("");
        match x["to"].as_str().unwrap_or("") {
            // The client's own URLs, and Apache's hop folded into them.
            "keystone" => {
                assert!(url.starts_with("http://127.0.0.1/identity/"), "{url}");
                assert_eq!(x["via"], "apache2", "{x}");
                assert!(
                    x["client"].is_object() && x["server"].is_object() == apache_traced,
                    "{x}"
                );
                assert!(x["upstream"]["server"]["pid"].is_u64(), "{x}");
            }
            "glance-api" => {
                assert!(url.starts_with("http://127.0.0.1/image"), "{url}");
                assert_eq!(x["via"], "apache2", "{x}");
                // The service's own end of Apache's hop, and the path it was sent.
                assert!(x["upstream"]["server"]["pid"].is_u64(), "{x}");
                let target = x["upstream"]["target"].as_str().unwrap_or("");
                assert!(
                    target.starts_with('/') && !target.starts_with("/image"),
                    "{x}"
                );
            }
            _ => {}
        }
    }
    assert_nested(run, "glance-api", &ctx);
    assert_nested(run, "swift-proxy-server", &ctx);
    let d = assert_numbered_and_drawn(run);
    assert!(!d.contains("apache2"), "{d}");
}

/// Only keystone, glance-api and swift's proxy traced: neither Apache nor the CLI.
fn services_only(bed: &Bed) {
    let run = sniff_with(
        bed,
        "apache-services-only-image-list",
        &["image", "list"],
        &Trace::services(bed, false),
    );
    let ctx = || format!("log in {}", run.dir.display());
    // What the services logged, once: keystone's paths are the client's (uwsgi REQUEST_URI),
    // glance's the ones Apache forwarded.
    assert_served_once(&run, |p| p, &ctx());
    for x in &run.exchanges {
        let from = x["from"].as_str().unwrap_or("");
        match x["to"].as_str().unwrap_or("") {
            // Over uwsgi, Apache passes the client's socket: the caller by its process.
            "keystone" => assert!(from == "openstack" || from == "glance-api", "{x}"),
            // Over HTTP only X-Forwarded-For's address: Apache it is.
            "glance-api" => assert_eq!(from, "apache2", "{x}"),
            _ => {}
        }
    }
    assert!(
        run.exchanges
            .iter()
            .any(|x| x["to"] == "keystone" && x["from"] == "openstack"),
        "{}",
        ctx()
    );
    assert_nested(&run, "glance-api", &ctx);
    draw(&run, "diagram", "body", &[]);
}

#[test]
fn devstack_topology_apache_in_front_of_keystone_glance_and_swift() {
    if !kernel_tests() {
        return;
    }
    let bed = start_bed("e2e-apache-state", Some(&swift_venv()), true);
    assert!(bed.apache.is_some(), "the bed has Apache");
    let work = fresh_dir("e2e-apache-work");
    let img = qcow2(&work, 2 << 20);
    let size = fs::metadata(&img).unwrap().len();

    let create = create_image(&bed, "apache-image-create", &img);
    check(&create, "image create", true);
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
    assert!(
        create
            .exchanges
            .iter()
            .any(|x| x["from"] == "glance-api" && x["to"] == "swift-proxy-server"),
        "glance stores in swift"
    );
    // The services' view (--paths served): glance's arrows without Apache's /image, as the
    // reference pages (hooks inside the services) draw them; keystone's unchanged (uwsgi
    // passes the client's REQUEST_URI).
    let served = draw(
        &create,
        "diagram-served",
        "body-served",
        &["--paths", "served"],
    );
    for line in [
        "openstack->>glance-api: POST /v2/images",
        "glance-api-->>openstack: 201 Created /v2/images",
        "openstack->>glance-api: PUT /v2/images/{image_id}/file",
        "openstack->>keystone: POST /identity/v3/auth/tokens",
    ] {
        assert!(
            served.lines().any(|l| l.trim() == line),
            "{line}:\n{served}"
        );
    }
    assert!(!served.contains(": POST /image/"), "{served}");
    // The report of the run, both views, in a real browser.
    assert_report_in_chromium(
        &create,
        "apache-image-create",
        &["--placeholders"],
        "PUT /image/v2/images/{image_id}/file",
    );
    assert_report_in_chromium(
        &create,
        "apache-image-create-served",
        &["--placeholders", "--paths", "served"],
        "PUT /v2/images/{image_id}/file",
    );

    let list = sniff(&bed, "apache-image-list", &["image", "list"]);
    check(&list, "image list", true);
    assert!(list.stdout.contains(&id), "{}", list.stdout);
    let show = sniff(&bed, "apache-image-show", &["image", "show", &id]);
    check(&show, "image show", true);
    let out = work.join("saved.qcow2");
    let save = sniff(
        &bed,
        "apache-image-save",
        &["image", "save", "--file", out.to_str().unwrap(), &id],
    );
    check(&save, "image save", true);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&img).unwrap());

    // --show-proxies: Apache's two hops, the client talking to apache2 only.
    let mut t = Trace::all(&bed);
    t.extra = &["--show-proxies"];
    let hops = sniff_with(
        &bed,
        "apache-image-list-show-proxies",
        &["image", "list"],
        &t,
    );
    let ctx = || format!("log in {}", hops.dir.display());
    assert!(
        hops.exchanges
            .iter()
            .filter(|x| x["from"] == "openstack")
            .all(|x| x["to"] == "apache2"),
        "{}",
        ctx()
    );
    for service in ["keystone", "glance-api"] {
        assert!(
            hops.exchanges
                .iter()
                .any(|x| x["from"] == "apache2" && x["to"] == service),
            "no apache2 -> {service}: {}",
            ctx()
        );
    }
    assert_served_once(&hops, |p| p, &ctx());

    // The CLI and the services traced, Apache not: the two hops still fold, each end found
    // from the process owning the other end's socket.
    let untraced_front = sniff_with(
        &bed,
        "apache-untraced-image-list",
        &["image", "list"],
        &Trace::services(&bed, true),
    );
    check(&untraced_front, "image list, Apache untraced", false);

    services_only(&bed);
}
