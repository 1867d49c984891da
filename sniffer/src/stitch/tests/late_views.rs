//! One end's view arriving long after the other's: a client that reads its response late.
use super::*;

/// openstack (100) -> glance-api (200): connections 1/2, and 3/4 for a second connection.
fn two_connections() -> World {
    World::custom(
        &[(100, "openstack"), (200, "glance-api")],
        vec![
            conn(1, 100, Role::Client, "127.0.0.1:40000", "127.0.0.1:9292"),
            conn(2, 200, Role::Server, "127.0.0.1:9292", "127.0.0.1:40000"),
            conn(3, 100, Role::Client, "127.0.0.1:40002", "127.0.0.1:9292"),
            conn(4, 200, Role::Server, "127.0.0.1:9292", "127.0.0.1:40002"),
        ],
        Proxies::default(),
    )
}

const LIST_1: [&str; 2] = [
    "### [1] (openstack) REQ >>> (glance-api) : GET http://127.0.0.1:9292/v2/images",
    "### [2] (openstack) RESP <<< (glance-api) : 200 OK GET http://127.0.0.1:9292/v2/images",
];
const LIST_2: [&str; 2] = [
    "### [3] (openstack) REQ >>> (glance-api) : GET http://127.0.0.1:9292/v2/images",
    "### [4] (openstack) RESP <<< (glance-api) : 200 OK GET http://127.0.0.1:9292/v2/images",
];

/// One exchange on client connection `c` (server `c + 1`) at `t`: the server answers at once,
/// the client reads the answer `late` ns after it was written. Time passes in 100 ms ticks,
/// so the server's view is written long before the client's comes. With `close`, the server
/// closes its end right after answering (a connection per request).
fn late_reader(w: &mut World, c: u64, t: u64, late: u64, close: bool) {
    w.bytes(c, Dir::Send, t, IMAGES);
    w.bytes(c + 1, Dir::Recv, t + 1, IMAGES);
    w.bytes(c + 1, Dir::Send, t + 2, IMAGES_OK);
    if close {
        let server = w.conns[c as usize].clone_for_test();
        w.http.ended(&server, &w.procs);
    }
    let mut now = t;
    while now < t + 2 + late {
        w.tick(now);
        now += 100_000_000;
    }
    w.bytes(c, Dir::Recv, t + 2 + late, IMAGES_OK);
    if close {
        let client = w.conns[(c - 1) as usize].clone_for_test();
        w.http.ended(&client, &w.procs);
    }
    w.tick(t + 2 + late + 1000);
}

#[test]
fn a_client_reading_its_response_late_joins_the_written_exchange() {
    for late in [100_000_000, 600_000_000, 2_000_000_000, 5_000_000_000] {
        for close in [false, true] {
            let mut w = two_connections();
            late_reader(&mut w, 1, 1_000, late, close);
            assert_eq!(
                w.http.sink.sink.lines, LIST_1,
                "late {late} ns, close {close}: written once, from the first view"
            );
            // Keep-alive: the next exchange on the same connection; else a new connection.
            let c = if close { 3 } else { 1 };
            late_reader(&mut w, c, 10_000_000_000, late, close);
            let lines = w.end_all(20_000_000_000);
            let want: Vec<&str> = LIST_1.iter().chain(&LIST_2).copied().collect();
            assert_eq!(lines, want, "late {late} ns, close {close}");
            let ex = &w.http.sink.sink.exchanges;
            assert_eq!(ex.len(), 2, "late {late} ns, close {close}: {ex:?}");
            assert!(ex.iter().all(|(_, both)| *both));
            assert_eq!(
                w.http.sink.sink.records[0]["orphan"], false,
                "late {late} ns, close {close}"
            );
            assert!(
                w.http.sink.exchanges.is_empty(),
                "late {late} ns, close {close}: nothing kept once every view came"
            );
        }
    }
}

#[test]
fn a_written_exchange_waits_no_longer_than_the_late_ends_connection() {
    let mut w = two_connections();
    w.bytes(1, Dir::Send, 10, IMAGES);
    w.bytes(2, Dir::Recv, 11, IMAGES);
    w.bytes(2, Dir::Send, 12, IMAGES_OK);
    w.tick(1_000_000);
    assert_eq!(w.http.sink.sink.lines, LIST_1);
    assert_eq!(w.http.sink.exchanges.len(), 1, "kept for the client's view");
    w.tick(60_000_000_000);
    assert_eq!(
        w.http.sink.exchanges.len(),
        1,
        "not dropped by age while the client's connection lives"
    );
    // The client closes without reading: its view will not come.
    let client = w.conns[0].clone_for_test();
    w.http.ended(&client, &w.procs);
    assert!(w.http.sink.exchanges.is_empty());
    assert_eq!(
        w.http.sink.late.len(),
        1,
        "its place in the list goes lazily"
    );
}

#[test]
fn late_views_are_kept_within_a_cap() {
    // 512 keep-alive connections, each with exchanges whose client reads late.
    const PAIRS: u64 = 512;
    let mut conns = Vec::new();
    for i in 0..PAIRS {
        let client = format!("127.0.0.1:{}", 40_000 + i);
        conns.push(conn(
            2 * i + 1,
            100,
            Role::Client,
            &client,
            "127.0.0.1:9292",
        ));
        conns.push(conn(
            2 * i + 2,
            200,
            Role::Server,
            "127.0.0.1:9292",
            &client,
        ));
    }
    let mut w = World::custom(
        &[(100, "openstack"), (200, "glance-api")],
        conns,
        Proxies::default(),
    );
    w.http.sink.owners = None;
    w.http.sink.sink.keep_records = false;
    let n = late::MAX_LATE as u64 + 2 * PAIRS;
    let mut t = 10;
    for i in 0..n {
        let c = 2 * (i % PAIRS) + 1;
        w.bytes(c, Dir::Send, t, IMAGES);
        w.bytes(c + 1, Dir::Recv, t + 1, IMAGES);
        w.bytes(c + 1, Dir::Send, t + 2, IMAGES_OK);
        t += 10;
        if i % PAIRS == PAIRS - 1 {
            w.tick(t + 1000);
        }
    }
    assert_eq!(w.http.sink.exchanges.len(), late::MAX_LATE);
    // The oldest (two on each connection) were let go: their late views are orphans, the
    // rest join their exchanges.
    for i in 0..n {
        w.bytes(2 * (i % PAIRS) + 1, Dir::Recv, 1_000_000_000 + i, IMAGES_OK);
    }
    let lines = w.end_all(2_000_000_000);
    let orphans = lines.iter().filter(|l| l.contains("(request not seen)"));
    assert_eq!(orphans.count() as u64, 2 * PAIRS);
    assert_eq!(lines.len() as u64, 2 * n + 2 * PAIRS);
}

#[test]
fn a_request_the_client_sends_late_is_named_by_the_traced_client_on_its_connection() {
    let mut w = two_connections();
    // A first exchange seen from both ends: the two ends of the connection are known.
    late_reader(&mut w, 1, 1_000, 0, false);
    // On the same keep-alive connection the server's view of the next request is written
    // before the client's comes (a loaded host: its events came later than the slack).
    let t = 10_000_000_000;
    w.bytes(2, Dir::Recv, t + 1, IMAGES);
    w.tick(t + 1_000_000);
    assert_eq!(
        w.http.sink.sink.lines.get(2).map(String::as_str),
        Some(LIST_2[0]),
        "the caller is the traced process at the connection's other end, not its address"
    );
    w.bytes(1, Dir::Send, t, IMAGES);
    w.bytes(2, Dir::Send, t + 2, IMAGES_OK);
    w.bytes(1, Dir::Recv, t + 3, IMAGES_OK);
    let lines = w.end_all(t + 2_000_000);
    let want: Vec<&str> = LIST_1.iter().chain(&LIST_2).copied().collect();
    assert_eq!(lines, want, "written once, the late view joined");
}

#[test]
fn a_request_the_server_reads_late_is_named_by_the_traced_server_on_its_connection() {
    let mut w = two_connections();
    late_reader(&mut w, 1, 1_000, 0, false);
    // The server is slow to read the next request: the client's view is written first.
    let t = 10_000_000_000;
    w.bytes(1, Dir::Send, t, IMAGES);
    w.tick(t + 1_000_000);
    assert_eq!(
        w.http.sink.sink.lines.get(2).map(String::as_str),
        Some(LIST_2[0]),
        "the callee is the traced process at the connection's other end, not the Host"
    );
    w.bytes(2, Dir::Recv, t + 1, IMAGES);
    w.bytes(2, Dir::Send, t + 2, IMAGES_OK);
    w.bytes(1, Dir::Recv, t + 3, IMAGES_OK);
    let lines = w.end_all(t + 2_000_000);
    let want: Vec<&str> = LIST_1.iter().chain(&LIST_2).copied().collect();
    assert_eq!(lines, want, "written once, the late view joined");
}
