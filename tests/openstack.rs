//! End to end on a real OpenStack: keystone and glance-api from PyPI under uWSGI (devstack's
//! process names), the openstack CLI, and sniffer tracing all three. Run by `cargo xtask e2e`,
//! which makes the venv (SNIFFER_OPENSTACK_VENV).
//!
//! For each of `image create/list/show/save`, the log must hold exactly the requests keystone
//! and glance-api logged themselves in the same run, between exactly openstack, keystone and
//! glance-api, with glance-api's calls to keystone nested inside openstack's call to glance-api;
//! the image bodies show as binary previews with their exact sizes; the saved image is
//! byte-identical to the uploaded one.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sniffer_tests::{Guard, Lines, kernel_tests, sniffer_bin, workspace};

struct Bed {
    _guard: Guard,
    keystone: Service,
    glance: Service,
    env: Vec<(String, String)>,
    venv: PathBuf,
}

struct Service {
    pid: u32,
    log: PathBuf,
}

impl Service {
    fn from(v: &Value) -> Self {
        Self {
            pid: v["pid"].as_u64().expect("pid") as u32,
            log: PathBuf::from(v["log"].as_str().expect("log")),
        }
    }

    /// (method, path, status) of every request uWSGI logged after byte `from` of its log.
    fn served_since(&self, from: u64) -> Vec<(String, String, u16)> {
        let text = fs::read(&self.log).unwrap_or_default();
        uwsgi_requests(&String::from_utf8_lossy(&text[from as usize..]))
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }
}

/// uWSGI request lines: `... [date] PUT /v2/images/x/file => generated 0 bytes in 33 msecs
/// (HTTP/1.1 204) ...`.
fn uwsgi_requests(text: &str) -> Vec<(String, String, u16)> {
    text.lines()
        .filter_map(|l| {
            let (before, after) = l.split_once(" => generated ")?;
            let mut words = before.rsplit(' ');
            let path = words.next()?.to_owned();
            let method = words.next()?.to_owned();
            let status = after.split("(HTTP/1.").nth(1)?.get(2..5)?.parse().ok()?;
            Some((method, path, status))
        })
        .collect()
}

fn start_bed() -> Bed {
    let venv = PathBuf::from(
        std::env::var("SNIFFER_OPENSTACK_VENV")
            .expect("SNIFFER_OPENSTACK_VENV: run `cargo xtask e2e`"),
    );
    let state = workspace().join("target").join("e2e-state");
    let _ = fs::remove_dir_all(&state);
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("tests/openstack/bed.py"))
        .arg(&venv)
        .arg(&state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut guard = Guard::spawn(&mut cmd);
    let lines = Lines::new(guard.child.stdout.take().expect("stdout"));
    let info: Value =
        serde_json::from_str(&lines.expect("{", Duration::from_secs(180))).expect("bed json");
    let env = info["env"]
        .as_object()
        .expect("env")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
        .collect();
    Bed {
        keystone: Service::from(&info["keystone"]),
        glance: Service::from(&info["glance"]),
        _guard: guard,
        env,
        venv,
    }
}

struct Run {
    dir: PathBuf,
    stdout: String,
    log: String,
    exchanges: Vec<Value>,
    keystone: Vec<(String, String, u16)>,
    glance: Vec<(String, String, u16)>,
}

/// Runs `openstack ARGS` under sniffer tracing both services; writes into target/e2e-out/NAME.
fn sniff(bed: &Bed, name: &str, args: &[&str]) -> Run {
    let dir = workspace().join("target").join("e2e-out").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let (k0, g0) = (bed.keystone.log_len(), bed.glance.log_len());
    let out = Command::new(sniffer_bin())
        .args([
            "--pid",
            &bed.keystone.pid.to_string(),
            "--pid",
            &bed.glance.pid.to_string(),
        ])
        .arg("-o")
        .arg(dir.join("sniffer.log"))
        .arg("--jsonl")
        .arg(dir.join("exchanges.jsonl"))
        .arg("--har")
        .arg(dir.join("run.har"))
        .arg("--")
        .arg(bed.venv.join("bin/openstack"))
        .args(args)
        .envs(bed.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run sniffer");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "openstack {args:?} under sniffer failed:\n{stderr}"
    );
    // uWSGI writes its request line after the response: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let log = fs::read_to_string(dir.join("sniffer.log")).unwrap();
    let exchanges = fs::read_to_string(dir.join("exchanges.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        dir,
        log,
        exchanges,
        keystone: bed.keystone.served_since(k0),
        glance: bed.glance.served_since(g0),
    }
}

fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or("/".to_owned(), |i| rest[i..].to_owned())
}

/// Multiset of (method, path, status) of the exchanges sniffer saw served by `to`.
fn seen_by(run: &Run, to: &str) -> Vec<(String, String, u16)> {
    let mut v: Vec<(String, String, u16)> = run
        .exchanges
        .iter()
        .filter(|x| x["to"] == to)
        .map(|x| {
            (
                x["method"].as_str().unwrap_or("").to_owned(),
                path_of(x["url"].as_str().unwrap_or("")),
                x["status"].as_u64().unwrap_or(0) as u16,
            )
        })
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<(String, String, u16)>) -> Vec<(String, String, u16)> {
    v.sort();
    v
}

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
    let diagram = run.dir.join("diagram.md");
    let st = Command::new(sniffer_bin())
        .arg("diagram")
        .arg(run.dir.join("sniffer.log"))
        .arg("-o")
        .arg(&diagram)
        .arg("--body")
        .arg(run.dir.join("body.md"))
        .arg("--placeholders")
        .status()
        .unwrap();
    assert!(st.success());
    let d = fs::read_to_string(&diagram).unwrap();
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

fn find<'a>(run: &'a Run, method: &str, path_suffix: &str) -> &'a Value {
    run.exchanges
        .iter()
        .find(|x| x["method"] == method && x["url"].as_str().unwrap_or("").ends_with(path_suffix))
        .unwrap_or_else(|| panic!("no {method} ...{path_suffix} in {}", run.dir.display()))
}

#[test]
fn openstack_image_commands_traced_end_to_end() {
    if !kernel_tests() {
        return;
    }
    let bed = start_bed();
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
