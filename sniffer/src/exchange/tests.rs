use std::net::SocketAddr;

use super::*;
use crate::{
    events::{Endpoint, Transport},
    stream::{GapKind, Stream},
};

#[derive(Default)]
struct Record {
    log: Vec<String>,
}

impl HttpSink for Record {
    fn event(&mut self, _conn: &Conn, ev: HttpEvent, _procs: &ProcTable) {
        let k = |k: &MsgKey| format!("{}{}", if k.request { "q" } else { "r" }, k.seq);
        let line = match ev {
            HttpEvent::Begin { key, ts, .. } => format!("begin {} @{ts}", k(&key)),
            HttpEvent::RequestHead { key, head } => {
                format!("head {} {}", k(&key), head.method().unwrap_or("?"))
            }
            HttpEvent::Request { key, msg } => {
                format!(
                    "req {} body {}",
                    k(&key),
                    String::from_utf8_lossy(&msg.body.preview)
                )
            }
            HttpEvent::Response {
                key,
                msg,
                request,
                interim,
            } => format!(
                "resp {} {} for {}{}",
                k(&key),
                msg.head.status().unwrap_or(0),
                request.map_or("none".to_owned(), |r| k(&r)),
                if interim { " interim" } else { "" }
            ),
            HttpEvent::Broken { key, reason, .. } => format!("broken {} {reason}", k(&key)),
            HttpEvent::Unanswered { key } => format!("unanswered {}", k(&key)),
        };
        self.log.push(line);
    }
}

fn conn(role: Role) -> Conn {
    let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    Conn {
        id: 1,
        tgid: 7,
        fd: 3,
        sk: 1,
        peer_sk: 0,
        peer_tgid: 0,
        netns: 0,
        role,
        transport: Transport::Tcp,
        local: Endpoint::Inet(a),
        peer: Endpoint::Inet(b),
        opened_ns: 0,
        last_ns: 0,
        ended: None,
        streams: [Stream::new(), Stream::new()],
        open_lost: false,
        end_known: true,
        tls: None,
        not_http: None,
        total: None,
    }
}

/// A sequence of (dir, bytes or gap) fed with increasing offsets and times.
struct Feeder {
    ex: Exchanges<Record>,
    conn: Conn,
    off: [u64; 2],
    ts: u64,
}

impl Feeder {
    fn new(role: Role) -> Self {
        Self {
            ex: Exchanges::new(Record::default(), 1024),
            conn: conn(role),
            off: [0, 0],
            ts: 0,
        }
    }

    fn data(&mut self, dir: Dir, bytes: &[u8]) -> &mut Self {
        self.ts += 10;
        let p = Piece::Data {
            off: self.off[dir.index()],
            bytes: bytes.to_vec().into(),
            ts_ns: self.ts,
        };
        self.off[dir.index()] += bytes.len() as u64;
        self.ex.pieces(&self.conn, dir, &[p], &ProcTable::new());
        self
    }

    fn gap(&mut self, dir: Dir, len: u64) -> &mut Self {
        self.gap_of(dir, len, GapKind::Lost)
    }

    fn gap_of(&mut self, dir: Dir, len: u64, kind: GapKind) -> &mut Self {
        self.ts += 10;
        let p = Piece::Gap {
            off: self.off[dir.index()],
            len,
            kind,
            ts_ns: self.ts,
        };
        self.off[dir.index()] += len;
        self.ex.pieces(&self.conn, dir, &[p], &ProcTable::new());
        self
    }

    fn end(&mut self) -> Vec<String> {
        self.ex.ended(&self.conn, &ProcTable::new());
        self.ex.sink.log.clone()
    }
}

fn lines(log: &[String], prefix: &str) -> Vec<String> {
    log.iter()
        .filter(|l| l.starts_with(prefix))
        .cloned()
        .collect()
}

#[test]
fn keep_alive_pairs_in_order() {
    let mut f = Feeder::new(Role::Client);
    f.data(Dir::Send, b"GET /a HTTP/1.1\r\n\r\n")
        .data(Dir::Recv, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")
        .data(Dir::Send, b"GET /b HTTP/1.1\r\n\r\n")
        .data(
            Dir::Recv,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        );
    let log = f.end();
    assert_eq!(
        lines(&log, "resp"),
        vec!["resp r0 200 for q0", "resp r1 404 for q1"]
    );
    assert_eq!(
        lines(&log, "begin"),
        vec![
            "begin q0 @10",
            "begin r0 @20",
            "begin q1 @30",
            "begin r1 @40"
        ]
    );
}

#[test]
fn pipelined_requests_pair_fifo_and_head_frames_its_response() {
    let mut f = Feeder::new(Role::Client);
    f.data(Dir::Send, b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n").data(
        Dir::Recv,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    );
    let log = f.end();
    assert_eq!(
        lines(&log, "resp"),
        vec!["resp r0 200 for q0", "resp r1 200 for q1"]
    );
}

#[test]
fn continue_100_is_interim_and_the_final_response_pairs() {
    let mut f = Feeder::new(Role::Client);
    f.data(
        Dir::Send,
        b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .data(Dir::Recv, b"HTTP/1.1 100 Continue\r\n\r\n")
    .data(Dir::Send, b"data")
    .data(
        Dir::Recv,
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    );
    let log = f.end();
    assert_eq!(
        lines(&log, "resp"),
        vec!["resp r0 100 for q0 interim", "resp r1 201 for q0"]
    );
    assert_eq!(lines(&log, "req"), vec!["req q0 body data"]);
}

#[test]
fn server_side_view_uses_recv_for_requests() {
    let mut f = Feeder::new(Role::Server);
    f.data(
        Dir::Recv,
        b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    )
    .data(Dir::Send, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let log = f.end();
    assert_eq!(lines(&log, "resp"), vec!["resp r0 200 for q0"]);
}

#[test]
fn unknown_role_is_decided_by_the_first_bytes() {
    // A connection found at first use: it receives a request, so this end is the server.
    let mut f = Feeder::new(Role::Unknown);
    f.data(Dir::Recv, b"GET /x HTTP/1.1\r\n\r\n")
        .data(Dir::Send, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let log = f.end();
    assert_eq!(lines(&log, "resp"), vec!["resp r0 200 for q0"]);
}

#[test]
fn a_response_arriving_before_its_request_head_waits_for_it() {
    let mut f = Feeder::new(Role::Client);
    // Cross-CPU order: the response to HEAD lands before the request is delivered.
    f.data(Dir::Recv, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    f.ts = 0; // the request was sent first
    f.data(Dir::Send, b"HEAD /a HTTP/1.1\r\n\r\n");
    let log = f.end();
    assert_eq!(lines(&log, "resp"), vec!["resp r0 200 for q0"]);
    assert!(lines(&log, "broken").is_empty(), "{log:?}");
}

#[test]
fn a_request_lost_in_a_gap_leaves_its_response_unpaired_not_shifted() {
    let mut f = Feeder::new(Role::Client);
    f.data(Dir::Send, b"GET /a HTTP/1.1\r\n\r\n")
        .data(Dir::Recv, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")
        .gap(Dir::Send, 19) // GET /b lost
        .data(
            Dir::Recv,
            b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nB",
        )
        .data(Dir::Send, b"GET /c HTTP/1.1\r\n\r\n")
        .data(
            Dir::Recv,
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 1\r\n\r\nC",
        );
    let log = f.end();
    assert_eq!(
        lines(&log, "resp"),
        vec![
            "resp r0 200 for q0",
            "resp r1 201 for none",
            "resp r2 202 for q1"
        ]
    );
    assert_eq!(lines(&log, "head"), vec!["head q0 GET", "head q1 GET"]);
}

#[test]
fn responses_lost_in_a_gap_leave_their_requests_unanswered_not_shifted() {
    let mut f = Feeder::new(Role::Client);
    f.data(Dir::Send, b"GET /a HTTP/1.1\r\n\r\n")
        .data(Dir::Recv, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")
        .data(Dir::Send, b"GET /b HTTP/1.1\r\n\r\n")
        .gap(Dir::Recv, 44) // the answer to /b lost
        .data(Dir::Send, b"GET /c HTTP/1.1\r\n\r\n")
        .data(Dir::Recv, b"HTTP/1.1 203 Non\r\nContent-Length: 1\r\n\r\nC")
        .data(Dir::Send, b"GET /d HTTP/1.1\r\n\r\n")
        .data(Dir::Recv, b"HTTP/1.1 204 No Content\r\n\r\n")
        .data(Dir::Send, b"GET /e HTTP/1.1\r\n\r\n")
        // The answer to /e broken by a gap inside its head, the one to /f whole.
        .data(Dir::Recv, b"HTTP/1.1 205 Re")
        .gap(Dir::Recv, 30)
        .data(Dir::Send, b"GET /f HTTP/1.1\r\n\r\n")
        .data(
            Dir::Recv,
            b"HTTP/1.1 206 Partial\r\nContent-Length: 1\r\n\r\nF",
        );
    let log = f.end();
    assert_eq!(
        lines(&log, "resp"),
        vec![
            "resp r0 200 for q0",
            "resp r1 203 for q2",
            "resp r2 204 for q3",
            "resp r4 206 for q5"
        ]
    );
    assert_eq!(
        lines(&log, "broken"),
        vec!["broken r3 bytes missing in a header block"]
    );
    // Said at once, not left to the connection's end: the stitcher holds an exchange until
    // its answer or word that none comes.
    assert_eq!(
        lines(&log, "unanswered"),
        vec!["unanswered q1", "unanswered q4"]
    );
}

#[test]
fn a_gap_inside_a_known_body_keeps_pipelined_responses_in_order() {
    // Both requests are pending when the first answer begins; a body beyond its preview is
    // skipped by length, and no answer can be in it.
    let mut f = Feeder::new(Role::Client);
    f.data(Dir::Send, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
        .data(
            Dir::Recv,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nAB",
        )
        .gap(Dir::Recv, 8)
        .data(
            Dir::Recv,
            b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nB",
        );
    let log = f.end();
    assert_eq!(
        lines(&log, "resp"),
        vec!["resp r0 200 for q0", "resp r1 201 for q1"]
    );
}

#[test]
fn connection_end_flushes_incomplete_messages() {
    let mut f = Feeder::new(Role::Client);
    f.data(
        Dir::Send,
        b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
    );
    let log = f.end();
    assert_eq!(lines(&log, "req"), vec!["req q0 body abc"]);
}

/// A client's CONNECT with a Content-Length, then its first tunnel bytes.
const CONNECT: &[u8] = b"CONNECT foo.bar.com:443 HTTP/1.1\r\nHost: foo.bar.com:443\r\nContent-Length: 10\r\n\r\nGET /inside HTTP/1.1\r\n\r\n";

#[test]
fn an_accepted_connect_makes_both_directions_a_tunnel() {
    for role in [Role::Client, Role::Server] {
        let mut f = Feeder::new(role);
        let (out, inn) = if role == Role::Client {
            (Dir::Send, Dir::Recv)
        } else {
            (Dir::Recv, Dir::Send)
        };
        f.data(out, CONNECT)
            .data(
                inn,
                b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            )
            .data(out, b"GET /inside-again HTTP/1.1\r\n\r\n");
        let log = f.end();
        assert_eq!(
            log,
            vec![
                "begin q0 @10",
                "head q0 CONNECT",
                "req q0 body ",
                "begin r0 @20",
                "resp r0 200 for q0",
            ],
            "{role:?}: the tunnelled requests are not HTTP to the proxy"
        );
    }
}

#[test]
fn a_refused_connect_leaves_the_connection_http() {
    let mut f = Feeder::new(Role::Client);
    f.data(Dir::Send, CONNECT).data(
        Dir::Recv,
        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
    );
    // What the client sent after the CONNECT is read as HTTP once the answer says so.
    f.data(
        Dir::Recv,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let log = f.end();
    assert_eq!(
        lines(&log, "head"),
        vec!["head q0 CONNECT", "head q1 GET"],
        "{log:?}"
    );
    assert_eq!(
        lines(&log, "resp"),
        vec!["resp r0 407 for q0", "resp r1 404 for q1"]
    );
}

#[test]
fn a_connect_never_answered_leaves_what_followed_as_http() {
    let mut f = Feeder::new(Role::Client);
    f.data(Dir::Send, CONNECT);
    let log = f.end();
    assert_eq!(lines(&log, "head"), vec!["head q0 CONNECT", "head q1 GET"]);
}

#[test]
fn a_101_answer_makes_both_directions_a_tunnel() {
    let mut f = Feeder::new(Role::Client);
    f.data(
        Dir::Send,
        b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .data(
        Dir::Recv,
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi",
    )
    .data(
        Dir::Send,
        b"\x81\x85\x00\x00\x00\x00hello GET / HTTP/1.1\r\n\r\n",
    );
    let log = f.end();
    assert_eq!(lines(&log, "head"), vec!["head q0 GET"]);
    assert_eq!(lines(&log, "resp"), vec!["resp r0 101 for q0"]);
    assert!(lines(&log, "broken").is_empty(), "{log:?}");
}

/// The hints of a connection under bounded copy (window 1000, preview 4): what
/// the kernel copies without a word (its first window) is not said again.
#[test]
fn bounded_copy_says_only_what_differs_from_the_first_window() {
    let mut f = Feeder::new(Role::Client);
    f.ex = Exchanges::new(Record::default(), 4).with_bounded_copy(1000);
    f.data(Dir::Send, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    f.data(Dir::Recv, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    assert!(
        f.ex.hints.is_empty(),
        "small exchanges within the first window: nothing to say"
    );
    // A body past the 4-byte preview (from 81 + 10 bytes, to 81 + 1000): its rest is skipped,
    // credit a window beyond it.
    f.data(Dir::Send, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    f.data(
        Dir::Recv,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
    );
    let recv = kernel_dir(Dir::Recv);
    let said: Vec<_> =
        f.ex.hints
            .iter()
            .map(|h| {
                (
                    h.dir,
                    h.ctl
                        .map(|c| (c.skip_from, c.skip_until, c.credit_until, c.flags)),
                )
            })
            .collect();
    assert_eq!(
        said,
        [(recv, Some((91, 1081, 2081, copy_flags::HEADS)))],
        "past the credit, the kernel still copies each syscall's first bytes"
    );
    f.ex.hints.clear();
    f.end();
    let taken_back: Vec<_> =
        f.ex.hints
            .iter()
            .map(|h| (h.dir, h.ctl.is_none()))
            .collect();
    assert_eq!(
        taken_back,
        [(recv, true)],
        "only the direction told is taken back"
    );
}

/// A body read until the close, past its preview, is not copied at all: not even the first
/// bytes of each syscall, which may hold a head elsewhere.
#[test]
fn a_body_read_until_the_close_past_its_preview_copies_nothing() {
    let mut f = Feeder::new(Role::Client);
    f.ex = Exchanges::new(Record::default(), 4).with_bounded_copy(1000);
    f.data(Dir::Send, b"GET /a HTTP/1.0\r\n\r\n");
    f.data(Dir::Recv, b"HTTP/1.0 200 OK\r\n\r\n0123456789");
    let ctl: Vec<_> =
        f.ex.hints
            .iter()
            .filter_map(|h| h.ctl.map(|c| (c.credit_until, c.flags)))
            .collect();
    assert_eq!(ctl, [(29, 0)]);
}

/// Wanted bytes the kernel did not copy (its credit ran out) double that stream's window,
/// up to [`MAX_WINDOW`]; bytes of a body told skipped do not.
#[test]
fn uncopied_wanted_bytes_widen_the_streams_window() {
    let mut f = Feeder::new(Role::Client);
    f.ex = Exchanges::new(Record::default(), 4).with_bounded_copy(1000);
    let uncopied = |f: &mut Feeder, dir: Dir, len: u64| {
        f.gap_of(dir, len, GapKind::Uncaptured);
    };
    let credit = |f: &Feeder| {
        f.ex.hints
            .iter()
            .rev()
            .find(|h| h.dir == kernel_dir(Dir::Recv))
            .and_then(|h| h.ctl)
            .map(|c| c.credit_until)
    };
    f.data(Dir::Send, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789";
    f.data(Dir::Recv, head);
    let h = head.len() as u64 - 10;
    // The body beyond its preview comes uncopied, as told: the window stays 1000.
    uncopied(&mut f, Dir::Recv, 990);
    assert_eq!(f.ex.conns[&f.conn.id].window, [1000, 1000]);
    // A body sent by sendfile: no window brings it, none is said (nginx's static files, a
    // hint per connection).
    f.data(Dir::Send, b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n");
    let sent = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n";
    f.data(Dir::Recv, sent);
    let hints = f.ex.hints.len();
    f.gap_of(Dir::Recv, 6, GapKind::Uncopyable);
    assert_eq!(f.ex.conns[&f.conn.id].window, [1000, 1000]);
    assert_eq!(f.ex.hints.len(), hints);
    let h = h + sent.len() as u64 + 6;
    // The next answer's head never came (the kernel's credit ran out): twice the window.
    f.data(Dir::Send, b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
    uncopied(&mut f, Dir::Recv, 300);
    assert_eq!(f.ex.conns[&f.conn.id].window[Dir::Recv.index()], 2000);
    assert_eq!(credit(&f), Some(h + 1000 + 300 + 2000), "said at once");
    for _ in 0..20 {
        uncopied(&mut f, Dir::Recv, 10);
    }
    assert_eq!(f.ex.conns[&f.conn.id].window[Dir::Recv.index()], MAX_WINDOW);
    assert_eq!(f.ex.conns[&f.conn.id].window[Dir::Send.index()], 1000);
}
