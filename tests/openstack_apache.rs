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
use std::{fs, path::PathBuf, process::Command};

use serde_json::Value;
use sniffer_tests::{
    kernel_tests,
    openstack::{Bed, Run, Trace, draw, path_of, seen_by, sniff, sniff_with, sorted, start_bed},
    pattern, workspace,
};

type Requests = Vec<(String, String, u16)>;

fn numbers(x: &Value) -> (u64, u64) {
    (
        x["request"]["number"].as_u64().expect("request number"),
        x["response"]["number"].as_u64().expect("response number"),
    )
}

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

/// What sniffer saw glance-api serve, with Apache's `/image` prefix taken off the client's
/// paths (glance logs the path Apache forwarded).
fn glance_seen(run: &Run) -> Requests {
    sorted(
        seen_by(run, "glance-api")
            .into_iter()
            .map(|(m, p, s)| {
                let p = match p.strip_prefix("/image") {
                    Some("") => "/".to_owned(),
                    Some(rest) => rest.to_owned(),
                    None => p,
                };
                (m, p, s)
            })
            .collect(),
    )
}

/// Every call made while serving sits inside an exchange the caller served.
fn assert_nested(run: &Run, caller: &str, ctx: &dyn Fn() -> String) {
    let outer: Vec<(u64, u64)> = run
        .exchanges
        .iter()
        .filter(|x| x["to"] == caller)
        .map(numbers)
        .collect();
    for inner in run.exchanges.iter().filter(|x| x["from"] == caller) {
        let (a, b) = numbers(inner);
        assert!(
            outer.iter().any(|&(s, e)| s < a && b < e),
            "{caller}'s call [{a}]..[{b}] is not inside a call to it: {}",
            ctx()
        );
    }
}

/// The checks of a run through Apache with the CLI and the services traced (`apache_traced`:
/// Apache too, so the client's hop has both ends).
fn check(run: &Run, what: &str, apache_traced: bool) {
    let ctx = || format!("{what}: log in {}", run.dir.display());
    assert!(!run.exchanges.is_empty(), "{}", ctx());
    assert_eq!(
        seen_by(run, "keystone"),
        sorted(run.keystone.clone()),
        "keystone: {}",
        ctx()
    );
    assert_eq!(
        glance_seen(run),
        sorted(run.glance.clone()),
        "glance-api: {}",
        ctx()
    );
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
    let titles: Vec<&str> = run.log.lines().filter(|l| l.starts_with("### [")).collect();
    for (i, t) in titles.iter().enumerate() {
        assert!(t.starts_with(&format!("### [{}] ", i + 1)), "{t}");
    }
    let d = draw(run, "diagram", "body", &[]);
    assert_eq!(
        d.lines().filter(|l| l.contains(">>")).count(),
        titles.len(),
        "{d}"
    );
    assert!(!d.contains("apache2"), "{d}");
}

fn image(work: &std::path::Path) -> PathBuf {
    let raw = work.join("disk.raw");
    fs::write(&raw, pattern(2 << 20)).unwrap();
    let img = work.join("cirros.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img)
        .status()
        .expect("qemu-img (Debian's qemu-utils) is needed to make a qcow2 image");
    assert!(st.success());
    img
}

/// Only keystone, glance-api and swift's proxy traced: neither Apache nor the CLI.
fn services_only(bed: &Bed) {
    let mut pids = vec![bed.keystone.pid, bed.glance.pid];
    pids.extend(bed.swift_proxy);
    let run = sniff_with(
        bed,
        "apache-services-only-image-list",
        &["image", "list"],
        &Trace {
            pids,
            cli: false,
            extra: &[],
        },
    );
    let ctx = || format!("log in {}", run.dir.display());
    // What the services logged, once: keystone's paths are the client's (uwsgi REQUEST_URI),
    // glance's the ones Apache forwarded.
    assert_eq!(
        seen_by(&run, "keystone"),
        sorted(run.keystone.clone()),
        "{}",
        ctx()
    );
    assert_eq!(
        seen_by(&run, "glance-api"),
        sorted(run.glance.clone()),
        "{}",
        ctx()
    );
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
    let swift_venv = PathBuf::from(
        std::env::var("SNIFFER_SWIFT_VENV").expect("SNIFFER_SWIFT_VENV: run `cargo xtask e2e`"),
    );
    let bed = start_bed("e2e-apache-state", Some(&swift_venv), true);
    assert!(bed.apache.is_some(), "the bed has Apache");
    let work = workspace().join("target").join("e2e-apache-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let img = image(&work);
    let size = fs::metadata(&img).unwrap().len();

    let create = sniff(
        &bed,
        "apache-image-create",
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
    assert_eq!(
        seen_by(&hops, "keystone"),
        sorted(hops.keystone.clone()),
        "{}",
        ctx()
    );
    assert_eq!(
        seen_by(&hops, "glance-api"),
        sorted(hops.glance.clone()),
        "{}",
        ctx()
    );

    // The CLI and the services traced, Apache not: the two hops still fold, each end found
    // from the process owning the other end's socket.
    let mut pids = vec![bed.keystone.pid, bed.glance.pid];
    pids.extend(bed.swift_proxy);
    let untraced_front = sniff_with(
        &bed,
        "apache-untraced-image-list",
        &["image", "list"],
        &Trace {
            pids,
            cli: true,
            extra: &[],
        },
    );
    check(&untraced_front, "image list, Apache untraced", false);

    services_only(&bed);
}
