//! Targets by cgroup on the real kernel: `--unit`, `--cgroup` and `--devstack` trace every
//! process of a cgroup v2 directory, the ones in it at start and the ones that join later
//! (started inside, moved in, in a sub-cgroup made later, in the directory of a restarted
//! unit), checked by the kernel at each process's first traced syscall. The tests make their
//! own cgroup directories wherever cgroup2 is mounted; processes outside stay untraced.
use std::{collections::BTreeSet, fs, path::Path, process::Command, thread, time::Duration};

use serde_json::Value;
use sniffer_tests::{Capture, Running, Server, cgroup, kernel_tests, sniffer_bin};

/// Longer than sniffer's look at the cgroup tree (1 s).
const RESCAN: Duration = Duration::from_millis(1600);

fn served_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("hello.txt"), "hello from a cgroup\n").unwrap();
    d
}

fn server(dir: &Path) -> Server {
    Server::start(dir, &[])
}

fn server_inside(dir: &Path, cg: &cgroup::Dir) -> Server {
    let mut cmd = Server::command("http_server.py", &["--dir", dir.to_str().unwrap()]);
    cg.spawn_inside(&mut cmd);
    Server::spawn(&mut cmd)
}

fn curl(port: u16) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/hello.txt"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

/// The server pids of the exchanges sniffer logged.
fn server_pids(c: &Capture) -> BTreeSet<u64> {
    fs::read_to_string(c.dir.path().join("exchanges.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|x| x["server"]["pid"].as_u64())
        .collect()
}

#[test]
fn a_unit_now_after_joins_and_after_a_restart() {
    if !kernel_tests() {
        return;
    }
    let me = std::process::id();
    let top = cgroup::Dir::new(&format!("sniffer-test-{me}-unit"));
    let unit = format!("sniffertest{me}");
    let rel = format!("sniffer-test-{me}-unit/system.slice/{unit}.service");
    let cg = cgroup::Dir::new(&rel);
    let files = served_dir();

    let a = server(files.path());
    cg.adopt(a.pid());
    let outside = server(files.path());
    let moved_later = server(files.path());

    let sniffer = Running::start(&["--unit", &unit]);
    let started_inside = server_inside(files.path(), &cg);
    cg.adopt(moved_later.pid());
    assert_eq!(
        cg.pids().into_iter().collect::<BTreeSet<_>>(),
        [a.pid(), started_inside.pid(), moved_later.pid()].into(),
        "the test's cgroup holds its three servers"
    );
    for s in [&a, &outside, &started_inside, &moved_later] {
        curl(s.port);
    }
    // The unit restarts: its directory goes and comes back (a new cgroup id) with a new server.
    drop(cg);
    drop((a, started_inside, moved_later));
    let cg = cgroup::Dir::new(&rel);
    let restarted = server_inside(files.path(), &cg);
    thread::sleep(RESCAN);
    curl(restarted.port);
    thread::sleep(Duration::from_millis(300));
    let c = sniffer.stop();
    let pids = server_pids(&c);
    let ctx = c.describe();
    assert!(
        c.stderr
            .contains(&format!("tracing the processes of {unit}")),
        "{ctx}"
    );
    assert!(
        !pids.contains(&u64::from(outside.pid())),
        "a server outside the unit was traced: {ctx}"
    );
    assert!(
        pids.contains(&u64::from(restarted.pid())),
        "the restarted unit's server: {ctx}"
    );
    // The first three servers are gone: their pids are in the log by the fork order above.
    assert_eq!(
        pids.len(),
        4,
        "four servers of the unit traced: {pids:?}; {ctx}"
    );
    drop(top);
}

#[test]
fn a_cgroup_path_with_a_subgroup_made_later() {
    if !kernel_tests() {
        return;
    }
    let me = std::process::id();
    let top = cgroup::Dir::new(&format!("sniffer-test-{me}-path"));
    let files = served_dir();
    let sniffer = Running::start(&["--cgroup", top.path.to_str().unwrap()]);
    let sub = cgroup::Dir::new(&format!("sniffer-test-{me}-path/worker"));
    thread::sleep(RESCAN);
    let inside = server_inside(files.path(), &sub);
    let outside = server(files.path());
    curl(inside.port);
    curl(outside.port);
    thread::sleep(Duration::from_millis(300));
    let c = sniffer.stop();
    let pids = server_pids(&c);
    assert_eq!(
        pids,
        [u64::from(inside.pid())].into(),
        "only the server in the sub-cgroup: {}",
        c.describe()
    );
    drop(sub);
    drop(top);
}

#[test]
fn devstack_units_by_their_names() {
    if !kernel_tests() {
        return;
    }
    let me = std::process::id();
    let top = cgroup::Dir::new(&format!("sniffer-test-{me}-devstack"));
    let g_api = cgroup::Dir::new(&format!(
        "sniffer-test-{me}-devstack/system-devstack.slice/devstack@t{me}.service"
    ));
    let other = cgroup::Dir::new(&format!("sniffer-test-{me}-devstack/other{me}.service"));
    let files = served_dir();
    let svc = server_inside(files.path(), &g_api);
    let not_devstack = server_inside(files.path(), &other);
    let sniffer = Running::start(&["--devstack"]);
    curl(svc.port);
    curl(not_devstack.port);
    thread::sleep(Duration::from_millis(300));
    let c = sniffer.stop();
    assert!(
        c.stderr
            .contains(&format!("tracing the processes of devstack@t{me} (")),
        "{}",
        c.describe()
    );
    assert_eq!(
        server_pids(&c),
        [u64::from(svc.pid())].into(),
        "{}",
        c.describe()
    );
    drop((other, g_api, top));
}

#[test]
fn a_path_that_is_not_a_cgroup_is_refused() {
    if !kernel_tests() {
        return;
    }
    let out = Command::new(sniffer_bin())
        .args(["--cgroup", "/tmp", "-o", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cgroup /tmp: not in a cgroup v2 hierarchy"),
        "{err}"
    );
}
