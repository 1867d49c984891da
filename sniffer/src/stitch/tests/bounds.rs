//! What waits for its place is bounded by what it holds: a long message at the front (a
//! download, an upload) holds back everything after it only up to the bound.
use super::*;

/// A keystone answer with a body of `n` bytes.
fn tokens_ok(n: usize) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    r.resize(r.len() + n, b'x');
    r
}

/// `n` exchanges glance-api -> keystone (connection 3, client view only), from time `t`, 4 KiB
/// bodies (the world's preview limit): 5-6 KiB each to hold.
fn calls(w: &mut World, t: u64, n: u64) {
    let ok = tokens_ok(4096);
    for i in 0..n {
        w.bytes(3, Dir::Send, t + 2 * i, TOKENS);
        w.bytes(3, Dir::Recv, t + 2 * i + 1, &ok);
    }
}

#[test]
fn a_download_at_the_front_holds_back_what_came_after_it_only_up_to_the_bound() {
    let mut w = World::new(None);
    w.bytes(1, Dir::Send, 10, IMAGES);
    // The answer's head and the first of a million bytes: it ends much later.
    w.bytes(
        1,
        Dir::Recv,
        20,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nxxxx",
    );
    calls(&mut w, 100, 4000);
    w.tick(1_000_000);
    let st = &w.http.sink;
    assert!(
        st.order.weight() <= MAX_QUEUED_BYTES,
        "{}",
        st.order.weight()
    );
    let written = st.sink.lines.len();
    // 16 MiB of 5-6 KiB messages wait; the rest of the 8,000 went out.
    assert!(written > 4000, "{written} written");
    assert!(st.stats.forced > 0);
    // The download's answer, when it ends, is written after what began later.
    w.bytes(1, Dir::Recv, 1_000_001, &vec![b'x'; 1_000_000 - 4]);
    let lines = w.end_all(2_000_000);
    assert_eq!(lines.len(), 2 + 8000);
    assert!(
        lines[lines.len() - 1].contains("RESP <<< (127.0.0.1:9292) : 200 OK GET"),
        "{}",
        lines[lines.len() - 1]
    );
    assert!(w.http.sink.stats.out_of_order > 0);
}

#[test]
fn an_upload_whose_place_went_before_its_body_came_is_still_written() {
    let mut w = World::new(None);
    let head =
        b"PUT /v2/images/1/file HTTP/1.1\r\nHost: 127.0.0.1:9292\r\nContent-Length: 100000\r\n\r\n";
    w.bytes(1, Dir::Send, 10, head);
    w.bytes(1, Dir::Send, 11, &[b'u'; 1000]);
    calls(&mut w, 100, 4000);
    w.tick(1_000_000);
    assert!(w.http.sink.stats.forced > 0, "its place went");
    w.bytes(1, Dir::Send, 1_000_001, &vec![b'u'; 99_000]);
    w.bytes(1, Dir::Recv, 1_000_002, b"HTTP/1.1 204 No Content\r\n\r\n");
    let lines = w.end_all(2_000_000);
    // Numbered after the calls that began later, its answer after it.
    let put: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("/v2/images/1/file"))
        .collect();
    assert_eq!(
        put,
        [
            "### [8001] (openstack) REQ >>> (127.0.0.1:9292) : PUT http://127.0.0.1:9292/v2/images/1/file",
            "### [8002] (openstack) RESP <<< (127.0.0.1:9292) : 204 No Content PUT http://127.0.0.1:9292/v2/images/1/file"
        ]
    );
}
