//! What a sniffer leaves behind: nothing. Its BPF programs go with its process, even when it is
//! killed with SIGKILL; SIGINT, SIGTERM and SIGHUP flush what was half done, marked incomplete.
use std::{
    collections::HashSet,
    io::Write as _,
    net::TcpStream,
    time::{Duration, Instant},
};

use sniffer_tests::{Running, Server, kernel_tests};

/// The BPF programs process `pid` holds, by id (its fds' `prog_id` in /proc/PID/fdinfo): other
/// sniffers running at the same time hold their own.
fn programs_of(pid: u32) -> HashSet<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return HashSet::new();
    };
    fds.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// Which of `ids` are still loaded in the kernel.
fn still_loaded(ids: &HashSet<u32>) -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| ids.contains(id))
        .collect()
}

#[test]
fn sigkill_leaves_no_bpf_program_attached() {
    if !kernel_tests() {
        return;
    }
    let running = Running::start(&["--comm", "nothing-to-see"]);
    let ours = programs_of(running.pid());
    // sys_enter, sys_exit, sched_process_{fork,exec,exit}, and the TLS probes.
    assert!(ours.len() >= 5, "sniffer's programs are loaded: {ours:?}");
    assert_eq!(still_loaded(&ours).len(), ours.len());
    running.kill();
    // The kernel frees programs when their last reference (link, fd) goes: shortly after.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = still_loaded(&ours);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs still loaded 10 s after SIGKILL: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, and SIGHUP (the ssh session sniffer ran in ended), stop it as Ctrl-C does.
#[test]
fn sigterm_and_sighup_flush_a_half_done_exchange_marked_incomplete() {
    if !kernel_tests() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let www = tempfile::tempdir().unwrap();
        let server = Server::start(www.path(), &[]);
        let running = Running::start(&["--pid", &server.pid().to_string()]);
        // A request whose body never finishes arriving.
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly part of it",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let cap = running.stop_with(sig);
        assert!(cap.status.success(), "signal {sig}: {}", cap.describe());
        assert!(
            cap.log
                .contains("REQ >>> (http_server.py) : POST http://x/upload"),
            "signal {sig}: {}",
            cap.describe()
        );
        assert!(
            cap.log.contains(
                "[incomplete: the connection ended before this message did]\nonly part of it"
            ),
            "signal {sig}: {}",
            cap.log
        );
        drop(s);
    }
}
