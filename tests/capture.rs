//! The kernel capture path, end to end: real servers and clients on 127.0.0.1, the real
//! sniffer binary with its BPF programs loaded into this kernel, and assertions on the bytes.
use std::{fs, path::Path, process::Command, time::Duration};

use sniffer_tests::{
    Capture, ConnRecord, Interactive, Running, Server, fixture, kernel_tests, pattern,
    sniff_command, sniff_command_with,
};

const LIMIT: Duration = Duration::from_secs(120);
const HELLO: &[u8] = b"hello from sniffer's test server\n";

/// A directory to serve: hi.txt and a 100 kB binary blob.
fn www() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("hi.txt"), HELLO).expect("write");
    fs::write(dir.path().join("blob"), pattern(100_000)).expect("write");
    dir
}

fn one<'a>(
    conns: impl IntoIterator<Item = &'a ConnRecord>,
    what: &str,
    cap: &Capture,
) -> &'a ConnRecord {
    let all: Vec<&ConnRecord> = conns.into_iter().collect();
    assert_eq!(
        all.len(),
        1,
        "expected one {what} connection\n{}",
        cap.describe()
    );
    all[0]
}

fn assert_no_gaps(c: &ConnRecord) {
    assert!(c.end_known && !c.open_lost, "{c:#?}");
    for d in [&c.send, &c.recv] {
        assert!(d.gaps.is_empty(), "unexpected gaps in {c:#?}");
        assert_eq!(d.bytes, d.captured, "{c:#?}");
    }
}

#[test]
fn curl_and_server_streams_are_the_same_bytes_in_order() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &[]);
    let url = format!("http://127.0.0.1:{}/blob", server.port);
    let out = www.path().join("out");
    let cap = sniff_command(
        &["--pid", &server.pid().to_string()],
        &["curl", "-s", "-o", out.to_str().unwrap(), &url],
        LIMIT,
    );
    assert!(cap.status.success(), "{}", cap.describe());
    let client = one(cap.conns.iter().filter(|c| c.comm == "curl"), "curl", &cap);
    let srv = one(cap.conns_of(server.pid()), "server", &cap);

    let request = cap.stream(client, "send");
    let host = format!("Host: 127.0.0.1:{}\r\n", server.port);
    assert!(
        request.starts_with(b"GET /blob HTTP/1.1\r\n"),
        "{}",
        String::from_utf8_lossy(&request)
    );
    assert!(request.windows(host.len()).any(|w| w == host.as_bytes()));
    assert!(request.ends_with(b"\r\n\r\n"));
    assert_eq!(
        request,
        cap.stream(srv, "recv"),
        "client sent what the server received"
    );

    let response = cap.stream(client, "recv");
    assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        response.ends_with(&pattern(100_000)),
        "the body, byte for byte, at the end"
    );
    assert_eq!(
        response,
        cap.stream(srv, "send"),
        "server sent what the client received"
    );
    assert_no_gaps(client);
    assert_no_gaps(srv);

    assert_eq!(
        (client.role.as_str(), srv.role.as_str()),
        ("client", "server")
    );
    assert_eq!(client.transport, "tcp");
    assert_eq!(client.peer, format!("127.0.0.1:{}", server.port));
    assert_eq!(srv.local, client.peer);
    assert_eq!(srv.peer, client.local);
    assert_eq!(client.end.as_deref(), Some("closed"));

    // The raw view shows both sides' syscalls with their addresses.
    let curl_line = format!("fd {} {} -> {} send", client.fd, client.local, client.peer);
    let srv_line = format!("fd {} {} -> {} recv", srv.fd, srv.local, srv.peer);
    assert!(
        cap.raw.contains(&curl_line),
        "raw lacks {curl_line:?}:\n{}",
        cap.raw
    );
    assert!(
        cap.raw.contains(&srv_line),
        "raw lacks {srv_line:?}:\n{}",
        cap.raw
    );
    assert!(cap.raw.contains("\"GET /blob HTTP/1.1\\r\\n"));
    assert_eq!(fs::read(&out).unwrap(), pattern(100_000));
}

#[test]
fn python_urllib_client_is_captured_but_its_file_io_is_not() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &[]);
    let url = format!("http://127.0.0.1:{}/hi.txt", server.port);
    let body_out = www.path().join("body");
    let marker_file = www.path().join("marker");
    let marker = format!("FILE-MARKER-{}-must-not-be-captured", std::process::id());
    let cap = sniff_command(
        &["--pid", &server.pid().to_string()],
        &[
            "python3",
            fixture("urllib_client.py").to_str().unwrap(),
            &url,
            body_out.to_str().unwrap(),
            marker_file.to_str().unwrap(),
            &marker,
        ],
        LIMIT,
    );
    assert!(cap.status.success(), "{}", cap.describe());
    let client = one(
        cap.conns.iter().filter(|c| c.role == "client"),
        "client",
        &cap,
    );
    let srv = one(cap.conns_of(server.pid()), "server", &cap);
    assert_ne!(client.pid, server.pid());

    let request = cap.stream(client, "send");
    assert!(request.starts_with(b"GET /hi.txt HTTP/1.1\r\n"));
    assert!(String::from_utf8_lossy(&request).contains("User-Agent: Python-urllib/"));
    assert_eq!(request, cap.stream(srv, "recv"));
    let response = cap.stream(client, "recv");
    assert!(response.ends_with(HELLO));
    assert_eq!(response, cap.stream(srv, "send"));
    assert_no_gaps(client);

    // urllib on a plain socket: sendall -> sendto(2), recv_into -> recvfrom(2).
    let tag = format!("[{}] fd {} ", client.pid, client.fd);
    assert!(
        cap.raw
            .lines()
            .any(|l| l.contains(&tag) && l.contains(" send sendto ")),
        "no sendto by the client:\n{}",
        cap.raw
    );
    assert!(
        cap.raw
            .lines()
            .any(|l| l.contains(&tag) && l.contains(" recv recvfrom ")),
        "no recvfrom by the client:\n{}",
        cap.raw
    );
    // The marker went through write(2)/read(2) on a file, never a socket.
    let all = cap.all_output();
    assert!(
        !all.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "file bytes leaked into the capture"
    );
    assert_eq!(fs::read(&body_out).unwrap(), HELLO);
}

#[test]
fn comm_traces_a_process_started_after_the_sniffer() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &[]);
    let url = format!("http://127.0.0.1:{}/hi.txt", server.port);
    // A command name of our own: the kernel names a process after the file it execs.
    let name = format!("sncomm{}", std::process::id() % 100_000);
    let link = www.path().join(&name);
    std::os::unix::fs::symlink(which("curl"), &link).expect("symlink");

    let running = Running::start(&["--comm", &name]);
    let traced = Command::new(&link)
        .args(["-s", "-o", "/dev/null", &url])
        .status()
        .unwrap();
    assert!(traced.success());
    curl(&url); // named curl: not traced
    let cap = running.stop();
    assert!(cap.status.success(), "{}", cap.describe());

    let c = one(cap.conns.iter().filter(|c| c.comm == name), &name, &cap);
    assert!(
        cap.stream(c, "send")
            .starts_with(b"GET /hi.txt HTTP/1.1\r\n")
    );
    assert!(cap.stream(c, "recv").ends_with(HELLO));
    assert_eq!(c.peer, format!("127.0.0.1:{}", server.port));
    assert!(
        cap.conns.iter().all(|c| c.comm == name),
        "only the named process is traced\n{}",
        cap.describe()
    );
}

#[test]
fn pid_of_a_preforked_master_traces_its_existing_workers() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &["--mode", "prefork", "--workers", "2"]);
    let workers: Vec<u32> = server
        .lines
        .expect("WORKERS ", Duration::from_secs(20))
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap())
        .collect();
    let running = Running::start(&["--pid", &server.pid().to_string()]);
    let url = format!("http://127.0.0.1:{}/hi.txt", server.port);
    for _ in 0..4 {
        curl(&url);
    }
    let cap = running.stop();
    let served: Vec<&ConnRecord> = cap.conns.iter().filter(|c| c.role == "server").collect();
    assert_eq!(served.len(), 4, "{}", cap.describe());
    for c in served {
        assert!(
            workers.contains(&c.pid),
            "served by a worker, not pid {}",
            c.pid
        );
        assert!(
            cap.stream(c, "recv")
                .starts_with(b"GET /hi.txt HTTP/1.1\r\n")
        );
        assert!(cap.stream(c, "send").ends_with(HELLO));
        assert_eq!(c.local, format!("127.0.0.1:{}", server.port));
    }
}

#[test]
fn pid_follows_children_forked_after_attaching() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &["--mode", "fork"]);
    let running = Running::start(&["--pid", &server.pid().to_string()]);
    let url = format!("http://127.0.0.1:{}/hi.txt", server.port);
    for _ in 0..2 {
        curl(&url);
    }
    let cap = running.stop();
    // The parent accepts and closes its copy; the child it forks after that serves.
    let served: Vec<&ConnRecord> = cap
        .conns
        .iter()
        .filter(|c| c.role == "server" && c.recv.bytes > 0)
        .collect();
    assert_eq!(served.len(), 2, "{}", cap.describe());
    assert_ne!(
        served[0].pid, served[1].pid,
        "one forked child per connection"
    );
    for c in served {
        assert_ne!(c.pid, server.pid(), "served by the child");
        assert!(
            cap.stream(c, "recv")
                .starts_with(b"GET /hi.txt HTTP/1.1\r\n")
        );
        assert!(cap.stream(c, "send").ends_with(HELLO));
    }
    let accepted = cap.conns_of(server.pid());
    assert_eq!(
        accepted.len(),
        2,
        "the parent's accepted sockets\n{}",
        cap.describe()
    );
    assert!(
        accepted
            .iter()
            .all(|c| c.role == "server" && c.recv.bytes == 0)
    );
    assert!(
        cap.raw.contains(&format!("fork from {}", server.pid())),
        "{}",
        cap.raw
    );
}

#[test]
fn connection_opened_before_attaching_is_captured_with_its_addresses() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &[]);
    let port = server.port.to_string();
    let mut client =
        Interactive::python("preconnected_client.py", &["127.0.0.1", &port, "/hi.txt"]);
    let local_port: u16 = client.lines.expect_value("LOCAL ", Duration::from_secs(20));
    let running = Running::start(&["--pid", &client.guard.pid().to_string()]);
    client.send_line("go");
    client.lines.expect("GOT ", Duration::from_secs(20));
    client.guard.wait_timeout(Duration::from_secs(20));
    let cap = running.stop();

    let c = one(cap.conns_of(client.guard.pid()), "client", &cap);
    assert_eq!(c.local, format!("127.0.0.1:{local_port}"));
    assert_eq!(c.peer, format!("127.0.0.1:{}", server.port));
    assert_eq!(c.role, "unknown", "found at first use, not at connect");
    assert!(
        cap.stream(c, "send")
            .starts_with(b"GET /hi.txt HTTP/1.1\r\n")
    );
    assert!(cap.stream(c, "recv").ends_with(HELLO));
    assert_no_gaps(c);
}

/// A thread blocked in recv(2) since before the attach, on a socket another thread then
/// writes to: the recv's enter was never seen, so its bytes may not be read from its
/// arguments, but they are the stream's, and the stream keeps them as a gap of their exact
/// length (and the kernel counts the call), never a stream silently shorter.
#[test]
fn a_read_begun_before_the_attach_is_a_gap_of_its_length() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &[]);
    let port = server.port.to_string();
    let mut client =
        Interactive::python("split_reader_client.py", &["127.0.0.1", &port, "/hi.txt"]);
    client.lines.expect("LOCAL ", Duration::from_secs(20));
    let running = Running::start(&["--pid", &client.guard.pid().to_string()]);
    client.send_line("go");
    let first: u64 = client.lines.expect_value("FIRST ", Duration::from_secs(20));
    let total: u64 = client.lines.expect_value("GOT ", Duration::from_secs(20));
    client.guard.wait_timeout(Duration::from_secs(20));
    let cap = running.stop();

    let c = one(cap.conns_of(client.guard.pid()), "client", &cap);
    assert!(
        cap.stream(c, "send")
            .starts_with(b"GET /hi.txt HTTP/1.1\r\n")
    );
    assert!(first > 0 && total >= first, "{first} {total}");
    // The first recv's bytes: counted at their place, not read.
    assert_eq!(c.recv.bytes, total, "{c:#?}");
    assert_eq!(c.recv.uncaptured, first, "{c:#?}");
    assert_eq!(c.recv.captured, total - first, "{c:#?}");
    assert!(
        cap.stderr
            .contains("data syscalls whose enter was not seen (bytes counted, not read): 1"),
        "{}",
        cap.stderr
    );
}

/// A server thread blocked in accept(2) since before the attach gets a socket the sniffer
/// first sees at its read; the kernel may have put it where a traced client's socket just was.
/// It must not keep that client's role: the exchange would be paired backwards.
#[test]
fn a_reused_socket_does_not_keep_the_role_of_the_one_before() {
    if !kernel_tests() {
        return;
    }
    const THREADS: usize = 12;
    let script = fixture("stale_role.py");
    let script = script.to_str().unwrap();
    let threads = THREADS.to_string();
    let server = Server::spawn(&mut Server::command("stale_role.py", &["server", &threads]));
    server.lines.expect("READY", Duration::from_secs(20));
    let mut client = Interactive::start(Command::new("python3").args([
        script,
        "client",
        &server.port.to_string(),
        &threads,
        "16",
    ]));
    let running = Running::start(&[
        "--pid",
        &server.pid().to_string(),
        "--pid",
        &client.guard.pid().to_string(),
    ]);
    client.send_line("go");
    client.lines.expect("DONE", Duration::from_secs(60));
    let cap = running.stop();

    let served: Vec<&ConnRecord> = cap
        .conns_of(server.pid())
        .into_iter()
        .filter(|c| c.recv.bytes > 0)
        .collect();
    assert_eq!(served.len(), THREADS, "{}", cap.describe());
    for c in &served {
        assert_ne!(
            c.role,
            "client",
            "an accepted socket took a closed client socket's role\n{}",
            cap.describe()
        );
        assert!(cap.stream(c, "recv").starts_with(b"GET /n"), "{c:#?}");
    }
    // Each request once, from the client to the server, answered.
    let requests = cap.log.matches(") REQ >>> (").count();
    let answers = cap.log.matches(" : 200 OK GET http://127.0.0.1:").count();
    assert_eq!((requests, answers), (THREADS, THREADS), "{}", cap.log);
}

/// Downloads 50 MB through a traced server with curl (under sh, so following a fork is part of
/// it) and checks both views of the body against curl's own count. Returns the capture, the
/// client and server records, and the total.
fn fifty_megabytes(extra: &[&str]) -> (Capture, u64, ConnRecord, ConnRecord) {
    const SIZE: usize = 50 << 20;
    let www = www();
    fs::write(www.path().join("big"), pattern(SIZE)).expect("write");
    let server = Server::start(www.path(), &[]);
    let url = format!("http://127.0.0.1:{}/big", server.port);
    let sizes = www.path().join("sizes");
    let script = format!(
        "curl -s -o /dev/null -w '%{{size_header}} %{{size_download}}' '{url}' > '{}'",
        sizes.display()
    );
    let pid = server.pid().to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(extra);
    let cap = sniff_command(&args, &["sh", "-c", &script], LIMIT);
    assert!(cap.status.success(), "{}", cap.describe());
    let reported = fs::read_to_string(&sizes).unwrap();
    let total: u64 = reported
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert!(total > SIZE as u64);

    let client = one(cap.conns.iter().filter(|c| c.comm == "curl"), "curl", &cap).clone();
    let srv = one(cap.conns_of(server.pid()), "server", &cap).clone();
    assert!(
        client.end_known && srv.end_known,
        "final lengths known\n{}",
        cap.describe()
    );
    for (who, d) in [("client recv", &client.recv), ("server send", &srv.send)] {
        assert_eq!(
            d.bytes, total,
            "{who}: the stream is exactly as long as the transfer"
        );
        let gap_bytes: u64 = d.gaps.iter().map(|g| g.len).sum();
        assert_eq!(
            d.captured + gap_bytes,
            d.bytes,
            "{who}: captured + gaps = all"
        );
        assert_eq!(
            d.uncaptured + d.lost,
            gap_bytes,
            "{who}: every gap has a cause"
        );
        assert!(
            d.gaps
                .iter()
                .all(|g| g.kind == "lost" || g.kind == "uncaptured")
        );
    }
    // Whatever was lost is also reported by the run, never silent.
    if client.recv.lost + srv.send.lost > 0 {
        assert!(
            cap.stderr.contains("data bytes lost"),
            "losses not reported:\n{}",
            cap.stderr
        );
    } else {
        let got = cap.stream(&client, "recv");
        assert!(
            got.ends_with(&pattern(SIZE)),
            "with nothing lost, the body is intact"
        );
    }
    (cap, total, client, srv)
}

#[test]
fn fifty_megabytes_are_counted_to_the_byte() {
    if !kernel_tests() {
        return;
    }
    fifty_megabytes(&[]);
}

#[test]
fn events_lost_to_a_full_ring_are_exact_gaps_not_a_shorter_stream() {
    if !kernel_tests() {
        return;
    }
    // 100 MB of events through a 1 MiB ring: the reader cannot keep up, the kernel drops.
    let (cap, total, client, srv) = fifty_megabytes(&["--ring-mib", "1"]);
    let lost = client.recv.lost + srv.send.lost;
    assert!(
        lost > 0,
        "a 1 MiB ring kept up with 100 MB: this machine is too fast for this test to show \
         losses\n{}",
        cap.stderr
    );
    assert!(lost < 2 * total);
    // The capture still names both ends and the request intact: control events kept their room.
    assert!(
        cap.stream(&client, "send")
            .starts_with(b"GET /big HTTP/1.1\r\n")
    );
    assert!(!client.open_lost && !srv.open_lost);
}

#[test]
fn sendfile_bodies_are_counted_not_copied_and_keep_the_stream_length() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &["--sendfile"]);
    let url = format!("http://127.0.0.1:{}/blob", server.port);
    let cap = sniff_command(
        &["--pid", &server.pid().to_string()],
        &["curl", "-s", "-o", "/dev/null", &url],
        LIMIT,
    );
    assert!(cap.status.success(), "{}", cap.describe());
    let client = one(cap.conns.iter().filter(|c| c.comm == "curl"), "curl", &cap);
    let srv = one(cap.conns_of(server.pid()), "server", &cap);
    // The server's body left by sendfile(2): headers captured, 100000 bytes counted as a gap.
    assert_eq!(srv.send.bytes, client.recv.bytes);
    assert_eq!(srv.send.uncaptured, 100_000, "{srv:#?}");
    let gap = srv.send.gaps.last().expect("a gap for the body");
    assert_eq!((gap.kind.as_str(), gap.len), ("uncaptured", 100_000));
    assert_eq!(
        gap.off + gap.len,
        srv.send.bytes,
        "the body ends the stream"
    );
    assert!(cap.raw.contains(" send sendfile 100000 "), "{}", cap.raw);
    // The client read the same bytes with recv: all of them captured.
    assert!(cap.stream(client, "recv").ends_with(&pattern(100_000)));
}

#[test]
fn ipv6_loopback_connections_have_ipv6_addresses() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &["--bind", "::1"]);
    let url = format!("http://[::1]:{}/hi.txt", server.port);
    let cap = sniff_command(
        &["--pid", &server.pid().to_string()],
        &["curl", "-s", "-o", "/dev/null", &url],
        LIMIT,
    );
    assert!(cap.status.success(), "{}", cap.describe());
    let client = one(cap.conns.iter().filter(|c| c.comm == "curl"), "curl", &cap);
    let srv = one(cap.conns_of(server.pid()), "server", &cap);
    assert_eq!(client.transport, "tcp6");
    assert_eq!(client.peer, format!("[::1]:{}", server.port));
    assert!(client.local.starts_with("[::1]:"), "{}", client.local);
    assert_eq!(
        (srv.local.as_str(), srv.peer.as_str()),
        (client.peer.as_str(), client.local.as_str())
    );
    assert_eq!(cap.stream(client, "send"), cap.stream(srv, "recv"));
    assert!(cap.stream(client, "recv").ends_with(HELLO));
}

#[test]
fn sockets_carry_the_inode_of_their_network_namespace() {
    if !kernel_tests() {
        return;
    }
    use std::os::unix::fs::MetadataExt as _;
    let www = www();
    let server = Server::start(www.path(), &[]);
    let url = format!("http://127.0.0.1:{}/hi.txt", server.port);
    let cap = sniff_command(
        &["--pid", &server.pid().to_string()],
        &["curl", "-s", "-o", "/dev/null", &url],
        LIMIT,
    );
    assert!(cap.status.success(), "{}", cap.describe());
    // What `/proc/PID/ns/net` links to, `net:[INODE]`, is the namespace the kernel read.
    let ns = |pid: u32| {
        fs::metadata(format!("/proc/{pid}/ns/net"))
            .expect("netns of the server")
            .ino() as u32
    };
    let expected = ns(server.pid());
    assert_eq!(expected, ns(std::process::id()));
    let client = one(cap.conns.iter().filter(|c| c.comm == "curl"), "curl", &cap);
    let srv = one(cap.conns_of(server.pid()), "server", &cap);
    assert_eq!(client.netns, Some(expected), "{client:#?}");
    assert_eq!(srv.netns, Some(expected), "{srv:#?}");
}

#[test]
fn unix_stream_sockets_are_captured_with_their_path() {
    if !kernel_tests() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("srv.sock");
    let cap = sniff_command(
        &[],
        &[
            "python3",
            fixture("unix_pair.py").to_str().unwrap(),
            path.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert!(cap.status.success(), "{}", cap.describe());
    let unix = format!("unix:{}", path.display());
    let client = one(
        cap.conns.iter().filter(|c| c.role == "client"),
        "client",
        &cap,
    );
    let srv = one(
        cap.conns.iter().filter(|c| c.role == "server"),
        "server",
        &cap,
    );
    assert_eq!(client.transport, "unix");
    assert_eq!(client.peer, unix, "the client's peer is the server's path");
    assert_eq!(srv.local, unix);
    assert_eq!(
        cap.stream(client, "send"),
        b"GET /over-unix HTTP/1.1\r\nHost: localhost\r\n\r\n"
    );
    assert_eq!(cap.stream(client, "send"), cap.stream(srv, "recv"));
    assert_eq!(cap.stream(client, "recv"), cap.stream(srv, "send"));
    assert!(cap.stream(client, "recv").ends_with(b"unix says hi\n"));
}

/// An untraced `curl` of `url` that must succeed.
fn curl(url: &str) {
    let st = Command::new("curl")
        .args(["-s", "-o", "/dev/null", url])
        .status()
        .expect("run curl");
    assert!(st.success(), "curl {url}: {st}");
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|p| Path::new(p).is_file())
        })
        .unwrap_or_else(|| panic!("{program} not on PATH"))
}

#[test]
fn kernel_diagnostics_show_with_vv_and_only_then() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &[]);
    let url = format!("http://127.0.0.1:{}/blob", server.port);
    let pid = server.pid().to_string();
    // 16 KiB per syscall at most: the server's writes of the 100 kB blob are cut short in the
    // kernel, which says so (with pid and fd) at -vv, and only there.
    for (verbose, expect) in [(true, true), (false, false)] {
        let mut args = vec!["--pid", &pid, "--full-capture", "--max-capture-kib", "16"];
        if verbose {
            args.push("-vv");
        }
        let cap = sniff_command_with(
            &args,
            &["curl", "-s", "-o", "/dev/null", &url],
            LIMIT,
            false,
        );
        assert!(cap.status.success(), "{}", cap.describe());
        let said = cap.stderr.lines().any(|l| {
            l.contains("sniffer::kernel")
                && l.contains(&format!("pid {pid} fd "))
                && l.contains("bytes counted, not copied")
        });
        assert_eq!(said, expect, "-vv {verbose}:\n{}", cap.stderr);
    }
}

/// `python3 FIXTURE 127.0.0.1 PORT /hi.txt ARGS...` run under sniffer to its end.
fn sniff_client(fixture_name: &str, port: &str, args: &[&str]) -> Capture {
    let script = fixture(fixture_name);
    let mut command = vec![
        "python3",
        script.to_str().unwrap(),
        "127.0.0.1",
        port,
        "/hi.txt",
    ];
    command.extend_from_slice(args);
    sniff_command(&[], &command, Duration::from_secs(60))
}

/// The connections of a capture to 127.0.0.1:`port`.
fn conns_to<'a>(cap: &'a Capture, port: &str) -> impl Iterator<Item = &'a ConnRecord> {
    let peer = format!("127.0.0.1:{port}");
    cap.conns.iter().filter(move |c| c.peer == peer)
}

/// A traced client's socket fd comes to hold a file without a close(2) sniffer sees (dup2,
/// close_range and a reopen, an exec closing the close-on-exec socket and a reopen), and the
/// fd is then read: the file's bytes, which look like an HTTP response, are not the
/// connection's. The kernel side must notice the fd holds another file, in each way.
#[test]
fn an_fd_replaced_without_a_close_is_not_read_as_its_old_socket() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let fake = www.path().join("fake");
    fs::write(
        &fake,
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nnot a socket\n",
    )
    .expect("write");
    let server = Server::start(www.path(), &[]);
    let port = server.port.to_string();
    for mode in ["dup2", "close_range", "exec"] {
        let cap = sniff_client("fd_replaced.py", &port, &[fake.to_str().unwrap(), mode]);
        assert!(cap.status.success(), "{mode}: {}", cap.describe());
        let c = one(conns_to(&cap, &port), mode, &cap);
        let recv = cap.stream(c, "recv");
        assert!(recv.ends_with(HELLO), "{mode}: {}", cap.describe());
        assert!(
            !recv.windows(12).any(|w| w == b"not a socket"),
            "{mode}: the file's bytes were taken for the connection's: {}",
            cap.describe()
        );
        assert_eq!(c.recv.bytes, recv.len() as u64, "{mode}: {c:#?}");
        let log = fs::read_to_string(cap.log_path()).expect("log");
        assert_eq!(
            log.matches(" RESP <<< ").count(),
            1,
            "{mode}: one response only:\n{log}"
        );
    }
}

/// The other way round: an fd number that held a file (read, so the kernel side noted it holds
/// no socket, `Target::no_socket`) is taken by a copy of a socket: after its close by a dup, a
/// way sniffer does not watch, or by a dup2 over the open file. The close or the dup2 must
/// have voided the note, or the copy's traffic would go unseen.
#[test]
fn a_socket_taking_a_files_fd_number_is_read() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &[]);
    let port = server.port.to_string();
    let file = www.path().join("hi.txt");
    for mode in ["close", "dup2"] {
        let cap = sniff_client(
            "fd_reused_by_dup.py",
            &port,
            &[file.to_str().unwrap(), mode],
        );
        assert!(cap.status.success(), "{mode}: {}", cap.describe());
        // The socket's own fd (known from its connect) moved nothing; the copy moved it all.
        let dup = conns_to(&cap, &port).filter(|c| c.send.bytes > 0);
        let c = one(dup, "the copy", &cap);
        assert!(
            cap.stream(c, "send")
                .starts_with(b"GET /hi.txt HTTP/1.1\r\n"),
            "{mode}: {}",
            cap.describe()
        );
        assert!(
            cap.stream(c, "recv").ends_with(HELLO),
            "{mode}: {}",
            cap.describe()
        );
    }
}

#[test]
fn small_iovecs_of_one_sendmsg_go_in_one_record_and_the_streams_stay_exact() {
    if !kernel_tests() {
        return;
    }
    let script = fixture("gather.py");
    let cap = sniff_command(&[], &["python3", script.to_str().unwrap()], LIMIT);
    assert!(cap.status.success(), "{}", cap.describe());
    let client = one(
        cap.conns.iter().filter(|c| c.role == "client"),
        "client",
        &cap,
    );
    let server = one(
        cap.conns.iter().filter(|c| c.role == "server"),
        "server",
        &cap,
    );
    assert_no_gaps(client);
    assert_no_gaps(server);
    let request = b"GET /gather HTTP/1.1\r\nHost: gather\r\n\r\n".to_vec();
    assert_eq!(cap.stream(client, "send"), request);
    assert_eq!(cap.stream(server, "recv"), request);
    let big: Vec<u8> = (0..40000u32).map(|i| ((i * 7 + 3) % 251) as u8).collect();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        11 + big.len() + 5
    );
    let mut response = head.clone().into_bytes();
    response.extend_from_slice(b"small-part|");
    response.extend_from_slice(&big);
    response.extend_from_slice(b"|tail");
    assert_eq!(cap.stream(server, "send"), response);
    assert_eq!(cap.stream(client, "recv"), response);

    // The records, as the raw view lists them: the request's three iovecs in one; the
    // response's head and first part in one, the large iovec in chunks, the small one after it
    // alone.
    let sizes = |c: &ConnRecord| -> Vec<String> {
        let marker = format!("fd {} {} -> {} send sendmsg ", c.fd, c.local, c.peer);
        cap.raw
            .lines()
            .filter_map(|l| l.split_once(&marker))
            .map(|(_, rest)| rest.split(' ').next().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(sizes(client), [request.len().to_string()], "{}", cap.raw);
    let total = response.len();
    let expect: Vec<String> = [head.len() + 11, 16384, 16384, 40000 - 2 * 16384, 5]
        .iter()
        .map(|n| format!("{n}/{total}"))
        .collect();
    assert_eq!(sizes(server), expect, "{}", cap.raw);
}
