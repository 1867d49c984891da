//! The framing cases a conformance check found read wrongly (issue 12), byte for byte: a
//! Transfer-Encoding list across field lines, CONNECT, lenient line endings said, malformed
//! heads kept as broken messages.
use super::{
    tests::{data, ends, run, split, target},
    *,
};
use crate::http::{
    framing::{NOTE_CONNECT_CONTENT, NOTE_TE_AND_CL, request_body, response_body},
    head::{BROKEN_FOLD, NOTE_BARE_LF, NOTE_OBS_FOLD},
};

/// Every split of `bytes` in two gives `want` (target, body, ending, lenient) per message.
fn each_split(
    requests: bool,
    bytes: &[u8],
    want: &[(&str, &[u8], Ending, &[&str])],
) -> Vec<Parsed> {
    let mut last = Vec::new();
    for cut in 0..=bytes.len() {
        let out = run(requests, &split(bytes, &[cut]));
        let got: Vec<(String, Vec<u8>, Ending, Vec<&str>)> = ends(&out)
            .iter()
            .map(|m| {
                (
                    target(m),
                    m.body.preview.clone(),
                    m.ending,
                    m.lenient.clone(),
                )
            })
            .collect();
        let want: Vec<(String, Vec<u8>, Ending, Vec<&str>)> = want
            .iter()
            .map(|(t, b, e, l)| ((*t).to_owned(), b.to_vec(), *e, l.to_vec()))
            .collect();
        assert_eq!(got, want, "cut at {cut}");
        last = out;
    }
    last
}

#[test]
fn deflate_then_chunked_on_two_lines_is_chunked() {
    let req = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
    each_split(
        true,
        req,
        &[
            ("POST /up", b"hello", Ending::Complete, &[]),
            ("GET /next", b"", Ending::Complete, &[]),
        ],
    );
}

#[test]
fn a_request_whose_final_coding_is_not_chunked_is_broken_not_chunked() {
    // A front end reading the first line only would frame this as chunked and see GET /smuggled
    // as a second request; the RFC says it cannot be framed at all.
    let req = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: deflate\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
    let out = run(true, &split(req, &[]));
    let msgs = ends(&out);
    assert_eq!(target(msgs[0]), "POST /up");
    assert_eq!(
        msgs[0].ending,
        Ending::Broken("request Transfer-Encoding whose final coding is not chunked")
    );
    assert_eq!(msgs[0].body.len, 0, "not framed as chunked");
    // What follows is resynchronised on: the next start line is found, not a body.
    assert_eq!(target(msgs[1]), "GET /smuggled");
}

#[test]
fn a_response_with_chunked_not_final_is_read_until_close() {
    let resp =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    each_split(
        false,
        resp,
        &[("200", b"5\r\nhello\r\n0\r\n\r\n", Ending::Complete, &[])],
    );
}

#[test]
fn transfer_encoding_with_content_length_is_chunked_and_said() {
    let req = b"POST /x HTTP/1.1\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
    each_split(
        true,
        req,
        &[("POST /x", b"hi", Ending::Complete, &[NOTE_TE_AND_CL])],
    );
}

/// A CONNECT request with a Content-Length, then the client's first tunnel bytes.
const CONNECT: &[u8] = b"CONNECT foo.bar.com:443 HTTP/1.1\r\nHost: foo.bar.com:443\r\nContent-Length: 10\r\n\r\nGET /inside HTTP/1.1\r\nHost: foo.bar.com\r\n\r\n";
const CONNECT_HEAD: usize = 79;

fn connect_parser() -> (DirParser, Vec<Parsed>) {
    assert!(CONNECT[..CONNECT_HEAD].ends_with(b"\r\n\r\n"));
    let mut p = DirParser::new(true, 64);
    let mut out = Vec::new();
    let mut rule = |h: &Head, _: u64| request_body(h);
    for piece in split(CONNECT, &[CONNECT_HEAD + 3]) {
        p.feed(&piece, &mut rule, &mut out);
    }
    (p, out)
}

#[test]
fn a_connect_request_has_no_content_and_what_follows_waits_for_the_answer() {
    let (mut p, out) = connect_parser();
    let msgs = ends(&out);
    assert_eq!(msgs.len(), 1, "{out:?}");
    assert_eq!(target(msgs[0]), "CONNECT foo.bar.com:443");
    assert_eq!(msgs[0].body.len, 0, "Content-Length: 10 is not a body");
    assert_eq!(msgs[0].lenient, vec![NOTE_CONNECT_CONTENT]);
    assert!(p.is_awaiting());
    // A 2xx: the client's bytes after it were the tunnel's, never a request.
    p.switch_protocols();
    assert!(p.is_tunnel());
    let mut out = Vec::new();
    p.feed(
        &data(CONNECT.len() as u64, b"GET /more HTTP/1.1\r\n\r\n", 9),
        &mut |h: &Head, _| request_body(h),
        &mut out,
    );
    p.finish(&mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_refused_connect_leaves_http_and_what_waited_is_read() {
    let (mut p, _) = connect_parser();
    // A 407: the bytes sent after the CONNECT are HTTP after all.
    let mut out = Vec::new();
    p.resume(&mut |h: &Head, _| request_body(h), &mut out);
    let msgs = ends(&out);
    assert_eq!(msgs.len(), 1, "{out:?}");
    assert_eq!(target(msgs[0]), "GET /inside");
    assert_eq!(msgs[0].off, CONNECT_HEAD as u64);
    assert_eq!(
        out[0],
        Parsed::Begin {
            off: CONNECT_HEAD as u64,
            ts: 100,
            after_gap: false
        },
        "its first byte keeps its time"
    );
    assert!(!p.is_awaiting() && !p.is_tunnel());
}

/// The answer to an Upgrade request with content came before all its content: the body goes
/// on, the bytes after it are the next request (found by the fuzzer: the answer reset the
/// direction to "between messages" and its content was read as heads).
#[test]
fn an_answer_before_the_end_of_an_upgrade_request_body_leaves_that_body_alone() {
    const UP: &[u8] =
        b"POST /up HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 6\r\n\r\n";
    let mut rule = |h: &Head, _: u64| request_body(h);
    let mut p = DirParser::new(true, 64);
    let mut out = Vec::new();
    let mut at = 0u64;
    for bytes in [UP, b"abc"] {
        p.feed(&data(at, bytes, 1), &mut rule, &mut out);
        at += bytes.len() as u64;
    }
    assert!(p.is_awaiting());
    p.resume(&mut rule, &mut out);
    for bytes in [&b"def"[..], b"GET /next HTTP/1.1\r\n\r\n"] {
        p.feed(&data(at, bytes, 2), &mut rule, &mut out);
        at += bytes.len() as u64;
    }
    p.finish(&mut out);
    let msgs = ends(&out);
    let got: Vec<_> = msgs
        .iter()
        .map(|m| (target(m), m.body.preview.clone(), m.ending))
        .collect();
    assert_eq!(
        got,
        vec![
            ("POST /up".to_owned(), b"abcdef".to_vec(), Ending::Complete),
            ("GET /next".to_owned(), Vec::new(), Ending::Complete),
        ],
        "{out:?}"
    );
}

/// An answer told to a direction that is not waiting (a head in progress) changes nothing:
/// the head's bytes so far stay its own.
#[test]
fn resume_outside_a_wait_keeps_a_head_in_progress() {
    let mut rule = |h: &Head, _: u64| request_body(h);
    let mut p = DirParser::new(true, 64);
    let mut out = Vec::new();
    let first = b"GET /a HTTP/1.1\r\nHost: x\r\n";
    p.feed(&data(0, first, 1), &mut rule, &mut out);
    p.resume(&mut rule, &mut out);
    p.feed(&data(first.len() as u64, b"\r\n", 2), &mut rule, &mut out);
    p.finish(&mut out);
    let msgs = ends(&out);
    assert_eq!(msgs.len(), 1, "{out:?}");
    assert_eq!(target(msgs[0]), "GET /a");
    assert_eq!(msgs[0].ending, Ending::Complete);
}

#[test]
fn a_bare_lf_between_header_lines_is_accepted_and_said() {
    // A strict parser sees one field `Host: a\nContent-Length: 23` (invalid) and answers 400;
    // read leniently, the 23 bytes are a body and GET /admin is not a request: say so.
    let req = b"POST /hello HTTP/1.1\r\nHost: a\nContent-Length: 23\r\n\r\nGET /admin HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
    each_split(
        true,
        req,
        &[
            (
                "POST /hello",
                b"GET /admin HTTP/1.1\r\n\r\n",
                Ending::Complete,
                &[NOTE_BARE_LF],
            ),
            ("GET /next", b"", Ending::Complete, &[]),
        ],
    );
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n";
    each_split(
        false,
        resp,
        &[("200", b"hello", Ending::Complete, &[NOTE_BARE_LF])],
    );
}

#[test]
fn a_malformed_head_leaves_a_broken_message_with_its_start_line_then_resyncs() {
    // obs-fold in a request: a server must reject it (RFC 9112 §5.2).
    let req = b"POST /hello HTTP/1.1\r\nHost: a\r\n  folded\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
    let out = each_split(
        true,
        req,
        &[
            ("POST /hello", b"", Ending::Broken(BROKEN_FOLD), &[]),
            ("GET /next", b"", Ending::Complete, &[]),
        ],
    );
    let post = ends(&out)[0];
    assert_eq!(post.off, 0);
    assert_eq!(
        post.head.headers.iter().collect::<Vec<_>>(),
        [crate::http::head::Header {
            name: "Host",
            value: b"a"
        }],
        "the fields before the fault"
    );
    assert!(
        matches!(&out[1], Parsed::Head { off: 0, head } if head.method() == Some("POST")),
        "{out:?}"
    );
    // Bytes that do not begin with a start line are still not a message.
    let out = run(
        true,
        &split(b"\x16\x03\x01\x00\r\nGET /ok HTTP/1.1\r\n\r\n", &[]),
    );
    assert!(matches!(out[1], Parsed::Broken { off: 0, .. }), "{out:?}");
    assert_eq!(ends(&out).len(), 1);
}

#[test]
fn a_folded_response_field_is_unfolded_and_said() {
    // RFC 9112 §5.2: a user agent replaces obs-fold in a response with SP.
    let resp = b"HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 2\r\n\r\nhi";
    let out = each_split(
        false,
        resp,
        &[("200", b"hi", Ending::Complete, &[NOTE_OBS_FOLD])],
    );
    assert_eq!(ends(&out)[0].head.header("x-long"), Some(&b"a   b"[..]));
}

#[test]
fn an_upgrade_answered_101_is_a_tunnel_both_ways() {
    let mut req = DirParser::new(true, 64);
    let mut resp = DirParser::new(false, 64);
    let mut out = Vec::new();
    req.feed(
        &data(
            0,
            b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
            1,
        ),
        &mut |h: &Head, _| request_body(h),
        &mut out,
    );
    assert!(req.is_awaiting());
    resp.feed(
        &data(0, b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02ok", 2),
        &mut |h: &Head, _| response_body(h, Some("GET")),
        &mut out,
    );
    assert!(resp.is_tunnel());
    req.switch_protocols();
    assert!(req.is_tunnel());
    req.finish(&mut out);
    resp.finish(&mut out);
    assert_eq!(ends(&out).len(), 2);
    assert!(!out.iter().any(|p| matches!(p, Parsed::Broken { .. })));
}
