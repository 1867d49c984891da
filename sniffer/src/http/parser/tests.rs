use super::*;
use crate::http::{
    framing::{request_body, response_body},
    message::Message,
};

pub(super) fn data(off: u64, bytes: &[u8], ts: u64) -> Piece<'static> {
    Piece::Data {
        off,
        bytes: bytes.to_vec().into(),
        ts_ns: ts,
    }
}

pub(super) fn gap(off: u64, len: u64) -> Piece<'static> {
    Piece::Gap {
        off,
        len,
        kind: GapKind::Lost,
        ts_ns: 0,
    }
}

/// Feeds `pieces` to a parser of requests (or of responses to GETs).
pub(super) fn run(requests: bool, pieces: &[Piece]) -> Vec<Parsed> {
    let mut p = DirParser::new(requests, 64);
    let mut out = Vec::new();
    let mut rule = |h: &Head, _: u64| {
        if requests {
            request_body(h)
        } else {
            response_body(h, Some("GET"))
        }
    };
    for piece in pieces {
        p.feed(piece, &mut rule, &mut out);
    }
    p.finish(&mut out);
    out
}

/// Cuts `bytes` into pieces at `cuts` (offsets), with increasing times.
pub(super) fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Piece<'static>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, &c) in cuts.iter().chain(std::iter::once(&bytes.len())).enumerate() {
        if c > start {
            pieces.push(data(start as u64, &bytes[start..c], 100 + i as u64));
            start = c;
        }
    }
    pieces
}

pub(super) fn ends(out: &[Parsed]) -> Vec<&Message> {
    out.iter()
        .filter_map(|p| match p {
            Parsed::End(m) => Some(m),
            _ => None,
        })
        .collect()
}

pub(super) fn target(m: &Message) -> String {
    match &m.head.start {
        crate::http::head::StartLine::Request { method, target, .. } => {
            format!("{method} {target}")
        }
        crate::http::head::StartLine::Response { status, .. } => status.to_string(),
    }
}

const POST: &[u8] =
    b"POST /v3/auth/tokens HTTP/1.1\r\nHost: k\r\nContent-Length: 11\r\n\r\n{\"a\": true}";

#[test]
fn a_request_split_at_every_point_parses_the_same() {
    for cut in 0..=POST.len() {
        let pieces = split(POST, &[cut]);
        let Piece::Data { ts_ns: first, .. } = pieces[0] else {
            unreachable!()
        };
        let out = run(true, &pieces);
        let msgs = ends(&out);
        assert_eq!(msgs.len(), 1, "cut {cut}: {out:?}");
        let m = msgs[0];
        assert_eq!(target(m), "POST /v3/auth/tokens");
        assert_eq!(m.body.preview, b"{\"a\": true}");
        assert_eq!(m.body.len, 11);
        assert_eq!(m.ending, Ending::Complete);
        assert_eq!(m.first_ts, first, "cut {cut}: first byte time");
        assert_eq!(
            out[0],
            Parsed::Begin {
                off: 0,
                ts: first,
                after_gap: false
            }
        );
    }
}

#[test]
fn pipelined_requests_in_one_piece() {
    let mut bytes = POST.to_vec();
    bytes.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: k\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n");
    let out = run(true, &[data(0, &bytes, 5)]);
    let got: Vec<String> = ends(&out).iter().map(|m| target(m)).collect();
    assert_eq!(got, vec!["POST /v3/auth/tokens", "GET /a", "HEAD /b"]);
    let begins: Vec<u64> = out
        .iter()
        .filter_map(|p| match p {
            Parsed::Begin { off, .. } => Some(*off),
            _ => None,
        })
        .collect();
    assert_eq!(begins, vec![0, POST.len() as u64, POST.len() as u64 + 28]);
}

#[test]
fn chunked_response_with_extensions_and_trailers() {
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    for cut in 0..resp.len() {
        let out = run(false, &split(resp, &[cut]));
        let msgs = ends(&out);
        assert_eq!(msgs.len(), 2, "cut {cut}");
        assert_eq!(msgs[0].body.preview, b"hello");
        assert_eq!(msgs[0].trailers, vec![b"X-T: 1".to_vec()]);
        assert_eq!(msgs[1].head.status(), Some(204));
    }
}

#[test]
fn close_delimited_response_ends_at_finish() {
    let out = run(false, &[data(0, b"HTTP/1.0 200 OK\r\n\r\nall of it", 1)]);
    let m = ends(&out)[0];
    assert_eq!(m.body.preview, b"all of it");
    assert_eq!(m.ending, Ending::Complete);
}

#[test]
fn a_gap_in_a_body_is_skipped_and_the_next_request_is_framed() {
    let head = b"PUT /file HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789";
    let next = b"GET /next HTTP/1.1\r\n\r\n";
    let h = head.len() as u64;
    let pieces = vec![data(0, head, 1), gap(h, 90), data(h + 90, next, 2)];
    let out = run(true, &pieces);
    let msgs = ends(&out);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].body.len, 100);
    assert_eq!(msgs[0].body.missing, 90);
    assert_eq!(msgs[0].body.preview, b"0123456789");
    assert!(!msgs[0].body.preview_is_whole());
    assert_eq!(target(msgs[1]), "GET /next");
    assert!(!msgs[1].after_gap, "the gap was inside the body");
}

#[test]
fn lost_and_uncopied_body_bytes_are_told_apart() {
    let head = b"PUT /file HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
    let h = head.len() as u64;
    let uncopied = Piece::Gap {
        off: h,
        len: 60,
        kind: GapKind::Uncaptured,
        ts_ns: 2,
    };
    let out = run(true, &[data(0, head, 1), uncopied, gap(h + 60, 40)]);
    let m = ends(&out)[0];
    assert_eq!((m.body.len, m.body.missing, m.body.lost), (100, 100, 40));
}

#[test]
fn a_gap_past_a_body_end_resyncs_at_the_next_start_line() {
    let head = b"PUT /file HTTP/1.1\r\nContent-Length: 4\r\n\r\n";
    let h = head.len() as u64;
    // The gap covers the 4 body bytes and 30 more (a whole lost request?).
    let next = b"GET /after HTTP/1.1\r\n\r\n";
    let out = run(true, &[data(0, head, 1), gap(h, 34), data(h + 34, next, 2)]);
    let msgs = ends(&out);
    assert_eq!(msgs.len(), 2, "{out:?}");
    assert_eq!(msgs[0].ending, Ending::Complete);
    assert_eq!(target(msgs[1]), "GET /after");
    assert!(msgs[1].after_gap, "something may have been lost before it");
}

#[test]
fn a_uwsgi_packet_split_at_every_point_is_a_request_with_its_body() {
    let mut bytes = uwsgi::tests::packet(uwsgi::tests::KEYSTONE_POST);
    let head_len = bytes.len() as u64;
    bytes.extend_from_slice(b"{}");
    for cut in 0..=bytes.len() {
        let out = run(true, &split(&bytes, &[cut]));
        let msgs = ends(&out);
        assert_eq!(msgs.len(), 1, "cut {cut}: {out:?}");
        assert_eq!(target(msgs[0]), "POST /identity/v3/auth/tokens");
        assert_eq!(msgs[0].head.len as u64, head_len);
        assert_eq!(msgs[0].body.preview, b"{}", "cut {cut}");
        assert_eq!(msgs[0].ending, Ending::Complete);
        assert_eq!(msgs[0].head.cgi_var("REMOTE_PORT"), Some("40312"));
    }
}

#[test]
fn a_malformed_uwsgi_packet_breaks_and_the_next_one_is_read() {
    // A var whose value size runs past the packet's end.
    let mut bad = uwsgi::tests::packet(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/a")]);
    let n = bad.len();
    bad[n - 4] = 0x7f;
    let good = uwsgi::tests::packet(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/b")]);
    let mut bytes = bad.clone();
    bytes.extend_from_slice(&good);
    let out = run(true, &split(&bytes, &[3, bad.len() + 7]));
    assert!(
        matches!(out[1], Parsed::Broken { off: 0, reason, .. } if reason.contains("uwsgi")),
        "{out:?}"
    );
    let msgs = ends(&out);
    assert_eq!(msgs.len(), 1, "{out:?}");
    assert_eq!(target(msgs[0]), "GET /b");
    assert_eq!(msgs[0].off, bad.len() as u64);
}

#[test]
fn garbage_breaks_and_the_stream_resyncs() {
    let bytes = b"\x16\x03\x01garbage\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = run(true, &split(bytes, &[5, 20]));
    assert!(matches!(out[1], Parsed::Broken { off: 0, .. }), "{out:?}");
    let msgs = ends(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!(target(msgs[0]), "GET /ok");
    assert_eq!(msgs[0].off, 12);
}

#[test]
fn a_gap_inside_a_head_breaks_that_message_only() {
    let a = b"GET /lost HTTP/1.1\r\nHo";
    let b = b"GET /found HTTP/1.1\r\n\r\n";
    let out = run(true, &[data(0, a, 1), gap(22, 10), data(32, b, 2)]);
    // Its start line was read: it is still a message, broken, with what was wrong.
    let msgs = ends(&out);
    assert_eq!(msgs.len(), 2, "{out:?}");
    assert_eq!(target(msgs[0]), "GET /lost");
    assert_eq!(
        msgs[0].ending,
        Ending::Broken("bytes missing in a header block")
    );
    assert_eq!(target(msgs[1]), "GET /found");
    assert_eq!(msgs[1].ending, Ending::Complete);
}

#[test]
fn head_204_304_have_no_body() {
    let mut p = DirParser::new(false, 64);
    let mut out = Vec::new();
    let mut methods = vec!["HEAD", "GET", "GET"].into_iter();
    let mut rule = |h: &Head, _: u64| response_body(h, methods.next());
    let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n";
    p.feed(&data(0, bytes, 1), &mut rule, &mut out);
    let msgs = ends(&out);
    assert_eq!(
        msgs.iter()
            .map(|m| m.head.status().unwrap())
            .collect::<Vec<_>>(),
        vec![200, 204, 304]
    );
    assert!(msgs.iter().all(|m| m.body.len == 0));
    assert!(p.is_idle());
}

#[test]
fn connection_end_mid_body_is_incomplete() {
    let out = run(
        true,
        &[data(
            0,
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
            1,
        )],
    );
    let m = ends(&out)[0];
    assert_eq!(m.ending, Ending::Incomplete);
    assert_eq!(m.body.len, 3);
}

#[test]
fn preview_is_bounded_but_the_length_is_exact() {
    let mut bytes = b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 1000));
    let m = ends(&run(true, &split(&bytes, &[100, 500])))[0].clone();
    assert_eq!(m.body.len, 1000);
    assert_eq!(m.body.preview.len(), 64);
}

#[test]
fn copy_wants_skip_bodies_beyond_the_preview() {
    let mut p = DirParser::new(true, 4);
    let mut out = Vec::new();
    let mut rule = |h: &Head, _: u64| request_body(h);
    assert_eq!(
        p.copy_want(100),
        CopyWant {
            credit_until: 100,
            skip: None,
            heads: true
        }
    );
    let head = b"PUT /f HTTP/1.1\r\nContent-Length: 1000\r\n\r\n";
    let h = head.len() as u64;
    p.feed(&data(0, head, 1), &mut rule, &mut out);
    assert_eq!(
        p.copy_want(100),
        CopyWant {
            credit_until: h + 100,
            skip: None,
            heads: true
        },
        "preview first"
    );
    p.feed(&data(h, b"abcdef", 2), &mut rule, &mut out);
    assert_eq!(
        p.copy_want(100),
        CopyWant {
            credit_until: h + 1000 + 100,
            skip: Some((h + 6, h + 1000)),
            heads: true
        },
        "the rest of the body skipped, the next head copied"
    );
    // Chunked: the rest of the current chunk.
    let mut p = DirParser::new(false, 2);
    let mut rule = |h: &Head, _: u64| response_body(h, Some("GET"));
    let bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabcd";
    p.feed(&data(0, bytes, 1), &mut rule, &mut out);
    let end = bytes.len() as u64;
    assert_eq!(p.copy_want(8).skip, Some((end, end + 12)));
    // Close-delimited and tunnels: nothing more, not even a syscall's first bytes.
    let mut p = DirParser::new(false, 2);
    p.feed(
        &data(0, b"HTTP/1.0 200 OK\r\n\r\nabc", 1),
        &mut rule,
        &mut out,
    );
    assert_eq!(
        p.copy_want(8),
        CopyWant {
            credit_until: 22,
            skip: None,
            heads: false
        }
    );
}

#[test]
fn connect_turns_the_connection_into_a_tunnel() {
    let mut p = DirParser::new(false, 64);
    let mut out = Vec::new();
    let mut rule = |h: &Head, _: u64| response_body(h, Some("CONNECT"));
    p.feed(
        &data(0, b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01binary", 1),
        &mut rule,
        &mut out,
    );
    assert_eq!(ends(&out).len(), 1);
    assert!(p.is_tunnel());
    assert!(!out.iter().any(|p| matches!(p, Parsed::Broken { .. })));
}
