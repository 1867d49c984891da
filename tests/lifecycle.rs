//! What a sniffer leaves behind: nothing. Its BPF programs go with its process, even when it is
//! killed with SIGKILL; SIGINT and SIGTERM flush what was half done, marked incomplete.
use std::{
    io::Write as _,
    net::TcpStream,
    time::{Duration, Instant},
};

use sniffer_tests::{Running, Server, kernel_tests};

/// Programs of ours loaded in the kernel now (named after their tracepoints; the kernel keeps
/// 15 bytes of a name).
fn our_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            let name = p.name_as_str().unwrap_or("");
            name == "sys_enter"
                || name.starts_with("sys_exit")
                || name.starts_with("sched_process_")
                || name == "copy_more"
        })
        .count()
}

#[test]
fn sigkill_leaves_no_bpf_program_attached() {
    if !kernel_tests() {
        return;
    }
    let before = our_programs();
    let running = Running::start(&["--comm", "nothing-to-see"]);
    let during = our_programs();
    assert!(
        // sys_enter, sys_exit, and sched_process_{fork,exec,exit}.
        during >= before + 5,
        "sniffer's programs are loaded: {before} -> {during}"
    );
    running.kill();
    // The kernel frees programs when their last reference (link, fd) goes: shortly after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while our_programs() > before {
        assert!(
            Instant::now() < deadline,
            "programs still loaded 10 s after SIGKILL: {}",
            our_programs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_flushes_a_half_done_exchange_marked_incomplete() {
    if !kernel_tests() {
        return;
    }
    let www = tempfile::tempdir().unwrap();
    let server = Server::start(www.path(), &[]);
    let running = Running::start(&["--pid", &server.pid().to_string()]);
    // A request whose body never finishes arriving.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly part of it")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let cap = running.stop_with(libc::SIGTERM);
    assert!(cap.status.success(), "{}", cap.describe());
    assert!(
        cap.log
            .contains("REQ >>> (http_server.py) : POST http://x/upload"),
        "{}",
        cap.describe()
    );
    assert!(
        cap.log.contains(
            "[incomplete: the connection ended before this message did]\nonly part of it"
        ),
        "{}",
        cap.log
    );
    drop(s);
}
