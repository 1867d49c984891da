//! Traced services' other connections on the real kernel: Redis and memcached (Debian's
//! servers) are set aside at their first bytes, counted by protocol, and the kernel sends
//! nothing more of them; the process's HTTP goes on being read.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use sniffer_tests::{Guard, Server, kernel_tests, sniff_command_with};

const LIMIT: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn redis() -> (Guard, u16) {
    let port = free_port();
    let g = Guard::spawn(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null()),
    );
    wait_port(port);
    (g, port)
}

/// The `, N connections set aside as not HTTP (...)` part of the summary.
fn set_aside(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("sniffer: ") && l.contains(" exchanges, "))
        .unwrap_or_else(|| panic!("no summary in\n{stderr}"));
    line.split(", ")
        .skip_while(|p| !p.contains("set aside as not HTTP"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn a_traced_redis_server_under_load_is_set_aside_without_loss_or_breakage() {
    if !kernel_tests() {
        return;
    }
    let (server, port) = redis();
    let out = tempfile::tempdir().unwrap();
    let conns = out.path().join("connections.txt");
    let conns_arg = conns.display().to_string();
    let port_s = port.to_string();
    let cap = sniff_command_with(
        &[
            "--pid",
            &server.pid().to_string(),
            "--connections",
            &conns_arg,
        ],
        &[
            "redis-benchmark",
            "-p",
            &port_s,
            "-c",
            "20",
            "-n",
            "20000",
            "-t",
            "set,get",
            "-q",
        ],
        LIMIT,
        false,
    );
    assert!(cap.status.success(), "{}", cap.describe());
    assert!(
        !cap.log.contains("### ["),
        "nothing of Redis in the log:\n{}",
        cap.log
    );
    assert!(
        cap.stderr
            .contains(" exchanges, 0 messages, 0 body bytes, 0 events lost, 0 broken "),
        "{}",
        cap.stderr
    );
    assert!(
        !cap.stderr.contains("dropped"),
        "no loss warning:\n{}",
        cap.stderr
    );
    let aside = set_aside(&cap.stderr);
    // redis-benchmark opens 20 connections per test, and one to ask for the configuration.
    let n: u64 = aside
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(n >= 40, "{aside}");
    assert!(aside.contains(&format!("(redis {n})")), "{aside}");
    // The kernel sent next to nothing of them: each connection's first bytes, its open and
    // close, and what was under way when the word came.
    let events: u64 = cap
        .stderr
        .split(" kernel events")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        events < 40_000,
        "80,000 requests and answers, {events} kernel events"
    );
    let listing = fs::read_to_string(&conns).unwrap();
    assert!(
        listing.contains("not HTTP (redis): set aside at its first bytes"),
        "{listing}"
    );
}

#[test]
fn memcached_and_redis_beside_http_in_one_process() {
    if !kernel_tests() {
        return;
    }
    let (_redis, rport) = redis();
    let mport = free_port();
    let _memcached = Guard::spawn(
        Command::new("memcached")
            .args(["-u", "nobody", "-l", "127.0.0.1", "-p", &mport.to_string()])
            .args(["-U", "0"]),
    );
    wait_port(mport);
    let www = tempfile::tempdir().unwrap();
    fs::write(www.path().join("hi.txt"), "hello\n").unwrap();
    let web = Server::start(www.path(), &[]);
    // One process: a memcached set/get, a Redis SET/GET, then an HTTP GET.
    let script = format!(
        "import socket, urllib.request\n\
         m = socket.create_connection(('127.0.0.1', {mport}))\n\
         m.sendall(b'set k 0 0 5\\r\\nhello\\r\\n'); assert m.recv(100) == b'STORED\\r\\n'\n\
         m.sendall(b'get k\\r\\n'); print(m.recv(100))\n\
         r = socket.create_connection(('127.0.0.1', {rport}))\n\
         r.sendall(b'*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$1\\r\\nv\\r\\n'); print(r.recv(100))\n\
         print(urllib.request.urlopen('http://127.0.0.1:{}/hi.txt').read())\n",
        web.port
    );
    let cap = sniff_command_with(&[], &["python3", "-c", &script], LIMIT, false);
    assert!(cap.status.success(), "{}", cap.describe());
    let titles: Vec<&str> = cap.log.lines().filter(|l| l.starts_with("### [")).collect();
    assert_eq!(titles.len(), 2, "the HTTP exchange only:\n{}", cap.log);
    assert!(titles[0].ends_with("/hi.txt"), "{titles:?}");
    assert!(
        set_aside(&cap.stderr).contains("(memcached 1, redis 1)"),
        "{}",
        cap.stderr
    );
}

#[test]
fn a_redis_connection_older_than_the_tracing_is_set_aside_by_unmistakable_bytes() {
    if !kernel_tests() {
        return;
    }
    let (_redis, port) = redis();
    // A client connected before sniffer starts: its socket's role is unknown to the kernel,
    // its first bytes seen could fall anywhere; a RESP array is Redis wherever it falls.
    let mut client = Guard::spawn(
        Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import socket, sys\n\
                 s = socket.create_connection(('127.0.0.1', {port}))\n\
                 print('ready', flush=True)\n\
                 for line in sys.stdin:\n\
                 \x20   s.sendall(b'*1\\r\\n$4\\r\\nPING\\r\\n'); s.recv(100)\n\
                 print('done', flush=True)\n"
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped()),
    );
    let mut out = client.child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    let running = sniffer_tests::Running::start(&["--pid", &client.pid().to_string()]);
    let mut stdin = client.child.stdin.take().unwrap();
    for _ in 0..50 {
        stdin.write_all(b"x\n").unwrap();
    }
    drop(stdin);
    client.wait_timeout(LIMIT);
    let cap = running.stop();
    assert!(
        set_aside(&cap.stderr).contains("(redis 1)"),
        "{}",
        cap.stderr
    );
    assert!(cap.stderr.contains(" 0 broken "), "{}", cap.stderr);
}
