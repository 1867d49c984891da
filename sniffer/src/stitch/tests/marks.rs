//! What the log and the JSONL say about messages read leniently or broken, and the URL of
//! other request-target forms.
use super::*;

fn entry(text: &str, n: usize) -> String {
    let start = text
        .find(&format!("### [{n}] "))
        .unwrap_or_else(|| panic!("no entry {n} in\n{text}"));
    let rest = &text[start..];
    let end = rest[4..].find("\n### [").map_or(rest.len(), |i| i + 4);
    rest[..end].to_owned()
}

#[test]
fn a_malformed_request_is_an_entry_marked_broken_and_its_400_pairs_with_it() {
    let mut w = World::new(None);
    let bad = b"POST /hello HTTP/1.1\r\nHost: 127.0.0.1:9292\r\n  folded\r\n\r\n";
    let answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    w.bytes(1, Dir::Send, 10, bad);
    w.bytes(2, Dir::Recv, 11, bad);
    w.bytes(2, Dir::Send, 20, answer);
    w.bytes(1, Dir::Recv, 21, answer);
    let lines = w.end_all(1000);
    assert_eq!(
        lines,
        [
            "### [1] (openstack) REQ >>> (glance-api) : POST http://127.0.0.1:9292/hello",
            "### [2] (openstack) RESP <<< (glance-api) : 400 Bad Request POST http://127.0.0.1:9292/hello",
        ]
    );
    let text = w.http.sink.sink.text();
    assert_eq!(
        entry(&text, 1),
        "### [1] (openstack) REQ >>> (glance-api) : POST http://127.0.0.1:9292/hello\n\
         Host: 127.0.0.1:9292\n\
         \n\
         [broken: a header line starts with whitespace (obs-fold in a request, RFC 9112 §5.2, or whitespace after the start line, §2.2)]\n\
         none\n\n"
    );
    let rec = &w.http.sink.sink.records[0];
    assert_eq!(
        rec["request"]["broken"],
        crate::http::head::BROKEN_FOLD,
        "{rec}"
    );
    assert_eq!(rec["incomplete"], true);
    assert_eq!(w.http.sink.stats.broken, 1, "counted once for both views");
}

#[test]
fn a_bare_lf_is_marked_in_the_log_and_the_jsonl() {
    let mut w = World::new(None);
    let req = b"POST /hello HTTP/1.1\r\nHost: 127.0.0.1:9292\nContent-Length: 23\r\n\r\nGET /admin HTTP/1.1\r\n\r\n";
    w.bytes(1, Dir::Send, 10, req);
    w.bytes(2, Dir::Recv, 11, req);
    w.bytes(2, Dir::Send, 20, TOKENS_OK);
    w.bytes(1, Dir::Recv, 21, TOKENS_OK);
    let lines = w.end_all(1000);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let text = w.http.sink.sink.text();
    assert_eq!(
        entry(&text, 1),
        "### [1] (openstack) REQ >>> (glance-api) : POST http://127.0.0.1:9292/hello\n\
         Host: 127.0.0.1:9292\n\
         Content-Length: 23\n\
         \n\
         [lenient: a bare LF ends a line where CRLF belongs (RFC 9112 §2.2)]\n\
         GET /admin HTTP/1.1\n\n"
    );
    let rec = &w.http.sink.sink.records[0];
    assert_eq!(
        rec["request"]["lenient"],
        serde_json::json!([crate::http::head::NOTE_BARE_LF])
    );
    assert!(
        rec["response"].get("lenient").is_none(),
        "nothing lenient, no field"
    );
}

#[test]
fn connect_is_logged_by_its_authority_and_the_tunnel_is_not_http() {
    let mut w = World::new(None);
    let connect =
        b"CONNECT foo.bar.com:443 HTTP/1.1\r\nHost: foo.bar.com:443\r\nContent-Length: 10\r\n\r\n";
    let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let inside = b"GET /inside HTTP/1.1\r\nHost: foo.bar.com\r\n\r\n";
    let inside_ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    w.bytes(1, Dir::Send, 10, connect);
    w.bytes(2, Dir::Recv, 11, connect);
    w.bytes(2, Dir::Send, 20, ok);
    w.bytes(1, Dir::Recv, 21, ok);
    w.bytes(1, Dir::Send, 30, inside);
    w.bytes(2, Dir::Recv, 31, inside);
    w.bytes(2, Dir::Send, 40, inside_ok);
    w.bytes(1, Dir::Recv, 41, inside_ok);
    assert_eq!(
        w.end_all(1000),
        [
            "### [1] (openstack) REQ >>> (glance-api) : CONNECT foo.bar.com:443",
            "### [2] (openstack) RESP <<< (glance-api) : 200 Connection established CONNECT foo.bar.com:443",
        ]
    );
    let text = w.http.sink.sink.text();
    assert!(
        entry(&text, 1).ends_with(
            "\n\n[lenient: Content-Length or Transfer-Encoding on a CONNECT request, which has no content (RFC 9110 §9.3.6)]\nnone\n\n"
        ),
        "{text}"
    );
}
