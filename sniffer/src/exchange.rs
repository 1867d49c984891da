//! Requests paired with their responses on each connection.
//!
//! Each connection gets a parser per direction once it is known which direction carries
//! requests (from connect/accept, or from the first bytes). Responses are paired FIFO with the
//! requests whose heads were seen (keep-alive, pipelining); interim 1xx responses are not the
//! final answer (100-continue). A response is only paired with a request that began before it,
//! so a request lost in a gap makes its response an orphan instead of shifting every pairing
//! after it. HEAD and CONNECT change how a response is framed, so response bytes that arrive
//! before any request head is known wait (bounded) for it.
use std::collections::{HashMap, VecDeque};

use sniffer_common::{CopyCtl, dir as kdir};

use crate::{
    conns::{Conn, ConnSink},
    events::{Dir, Role},
    http::{
        head::{Head, request_body, response_body, starts_like_response},
        parser::{CopyWant, DirParser, Message, Parsed},
    },
    probe::CopyHint,
    procs::ProcTable,
    stream::Piece,
};

/// Response bytes held while waiting for the request they answer.
const MAX_HELD: usize = 1 << 20;

/// One message of one connection: (connection id, carries a request, sequence in direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsgKey {
    pub conn: u64,
    pub request: bool,
    pub seq: u64,
    /// The connection is the client's end (it sends the requests).
    pub client_view: bool,
}

/// What the exchange layer reports about the messages of a connection.
#[derive(Debug)]
pub enum HttpEvent {
    /// A message's first byte was seen at `ts`: its place in the order.
    Begin { key: MsgKey, ts: u64 },
    /// A request head is complete (its body may follow).
    RequestHead { key: MsgKey, head: Head },
    /// A request ended.
    Request { key: MsgKey, msg: Message },
    /// A response ended. `request` is the request it answers; None for an orphan.
    Response {
        key: MsgKey,
        msg: Message,
        request: Option<MsgKey>,
        /// A 1xx before the final response.
        interim: bool,
    },
    /// What began as `key` is not a usable message.
    Broken {
        key: MsgKey,
        ts: u64,
        reason: &'static str,
    },
}

/// What the exchange layer feeds: the stitching step.
pub trait HttpSink {
    fn event(&mut self, conn: &Conn, ev: HttpEvent, procs: &ProcTable);
    /// The connection ended; every message of it was reported.
    fn conn_ended(&mut self, _conn: &Conn, _procs: &ProcTable) {}
    fn close(&mut self) {}
}

#[derive(Debug)]
struct PendingRequest {
    key: MsgKey,
    method: String,
    first_ts: u64,
}

#[derive(Debug)]
struct HttpConn {
    /// Which direction carries requests, once known.
    req_dir: Option<Dir>,
    /// Parsers by [`Dir::index`], created with `req_dir`.
    parsers: [Option<DirParser>; 2],
    /// Requests with a head, waiting for their final response.
    pending: VecDeque<PendingRequest>,
    /// Pieces held until `req_dir` is known or a request is pending, with their directions.
    held: Vec<(Dir, Piece)>,
    held_bytes: usize,
    seq: [u64; 2],
    /// The message in progress per direction (after its Begin).
    current: [Option<(MsgKey, u64)>; 2],
    /// What the kernel was last told to copy, per direction.
    told: [Option<CopyWant>; 2],
}

impl HttpConn {
    fn new() -> Self {
        Self {
            req_dir: None,
            parsers: [None, None],
            pending: VecDeque::new(),
            held: Vec::new(),
            held_bytes: 0,
            seq: [0, 0],
            current: [None, None],
            told: [None, None],
        }
    }
}

/// The per-connection HTTP state of every live connection.
pub struct Exchanges<S: HttpSink> {
    conns: HashMap<u64, HttpConn>,
    preview_limit: usize,
    /// Bounded copy: the credit window in bytes, or None to copy everything.
    copy_window: Option<u64>,
    /// What the kernel should copy, for the probe to apply.
    pub hints: Vec<CopyHint>,
    pub sink: S,
    scratch: Vec<Parsed>,
}

impl<S: HttpSink> Exchanges<S> {
    pub fn new(sink: S, preview_limit: usize) -> Self {
        Self {
            conns: HashMap::new(),
            preview_limit,
            copy_window: None,
            hints: Vec::new(),
            sink,
            scratch: Vec::new(),
        }
    }

    /// Tells the kernel, through [`Self::hints`], to copy only what the log can show: heads,
    /// previews, and `window` bytes of credit ahead.
    pub fn with_bounded_copy(mut self, window: u64) -> Self {
        self.copy_window = Some(window);
        self
    }

    /// A hint when what direction `dir` of `conn` is worth copying changed enough to say.
    fn advise(&mut self, conn: &Conn, dir: Dir) {
        let Some(window) = self.copy_window else {
            return;
        };
        let Some(st) = self.conns.get_mut(&conn.id) else {
            return;
        };
        let Some(parser) = st.parsers[dir.index()].as_ref() else {
            return;
        };
        let want = parser.copy_want(window);
        let told = &mut st.told[dir.index()];
        let worth = match told {
            None => true,
            Some(t) => {
                t.skip != want.skip
                    || want.credit_until < t.credit_until
                    || want.credit_until >= t.credit_until + window / 2
            }
        };
        if !worth {
            return;
        }
        *told = Some(want);
        let (skip_from, skip_until) = want.skip.unwrap_or((u64::MAX, u64::MAX));
        self.hints.push(CopyHint {
            tgid: conn.tgid,
            fd: conn.fd,
            dir: kernel_dir(dir),
            ctl: Some(CopyCtl {
                sk: conn.sk,
                credit_until: want.credit_until,
                skip_from,
                skip_until,
            }),
        });
    }

    /// Feeds one piece of direction `dir`. `wait`: response bytes may be held until their request
    /// is known (false when the connection ends or too much waited).
    fn feed(&mut self, conn: &Conn, dir: Dir, piece: &Piece, procs: &ProcTable, wait: bool) {
        let preview_limit = self.preview_limit;
        let st = self.conns.entry(conn.id).or_insert_with(HttpConn::new);
        if st.req_dir.is_none() {
            let decided = match conn.role {
                Role::Client => Some(Dir::Send),
                Role::Server => Some(Dir::Recv),
                Role::Unknown => match piece {
                    Piece::Data { bytes, .. } => {
                        starts_like_response(bytes).map(|resp| if resp { other(dir) } else { dir })
                    }
                    Piece::Gap { .. } => None,
                },
            };
            match decided {
                Some(req_dir) => {
                    st.req_dir = Some(req_dir);
                    st.parsers[req_dir.index()] = Some(DirParser::new(true, preview_limit));
                    st.parsers[other(req_dir).index()] = Some(DirParser::new(false, preview_limit));
                }
                None if wait => {
                    hold(st, dir, piece.clone());
                    return;
                }
                None => return,
            }
            let held = std::mem::take(&mut st.held);
            st.held_bytes = 0;
            for (d, p) in held {
                self.feed(conn, d, &p, procs, wait);
            }
            self.feed(conn, dir, piece, procs, wait);
            return;
        }
        let req_dir = st.req_dir.unwrap_or(Dir::Send);
        let is_request = dir == req_dir;
        // A response waits for a request head to be known, unless a response is already being
        // read, or the connection is ending. Too much waiting goes on without the request.
        let resp_idle = st.parsers[dir.index()]
            .as_ref()
            .is_some_and(DirParser::is_idle);
        if !is_request && wait && st.pending.is_empty() && resp_idle {
            hold(st, dir, piece.clone());
            if st.held_bytes >= MAX_HELD {
                self.release_held(conn, procs, false);
            }
            return;
        }
        let mut out = std::mem::take(&mut self.scratch);
        {
            let pending = &st.pending;
            let Some(parser) = st.parsers[dir.index()].as_mut() else {
                return;
            };
            let mut rule = |h: &Head, first_ts: u64| {
                if is_request {
                    request_body(h)
                } else {
                    // Framed by the request it answers, if that began before it.
                    let method = pending
                        .front()
                        .filter(|r| r.first_ts <= first_ts)
                        .map(|r| r.method.as_str());
                    response_body(h, method)
                }
            };
            parser.feed(piece, &mut rule, &mut out);
        }
        let request_head = self.report(conn, dir, is_request, &mut out, procs);
        self.scratch = out;
        self.advise(conn, dir);
        if request_head {
            self.release_held(conn, procs, wait);
        }
    }

    /// Turns parser output into events; returns whether a request head arrived (held response
    /// bytes can go now).
    fn report(
        &mut self,
        conn: &Conn,
        dir: Dir,
        is_request: bool,
        out: &mut Vec<Parsed>,
        procs: &ProcTable,
    ) -> bool {
        let Some(st) = self.conns.get_mut(&conn.id) else {
            return false;
        };
        let mut request_head = false;
        for p in out.drain(..) {
            match p {
                Parsed::Begin { ts, .. } => {
                    let req_dir = if is_request { dir } else { other(dir) };
                    let key = MsgKey {
                        conn: conn.id,
                        request: is_request,
                        seq: st.seq[dir.index()],
                        client_view: req_dir == Dir::Send,
                    };
                    st.seq[dir.index()] += 1;
                    st.current[dir.index()] = Some((key, ts));
                    self.sink.event(conn, HttpEvent::Begin { key, ts }, procs);
                }
                Parsed::Head { head, .. } => {
                    if is_request && let Some((key, ts)) = st.current[dir.index()] {
                        st.pending.push_back(PendingRequest {
                            key,
                            method: head.method().unwrap_or("").to_owned(),
                            first_ts: ts,
                        });
                        request_head = true;
                        self.sink
                            .event(conn, HttpEvent::RequestHead { key, head }, procs);
                    }
                }
                Parsed::End(msg) => {
                    let Some((key, _)) = st.current[dir.index()].take() else {
                        continue;
                    };
                    if is_request {
                        self.sink
                            .event(conn, HttpEvent::Request { key, msg }, procs);
                        continue;
                    }
                    let status = msg.head.status().unwrap_or(0);
                    let interim = (100..200).contains(&status) && status != 101;
                    let request = match st.pending.front() {
                        Some(r) if r.first_ts <= msg.first_ts => {
                            let k = r.key;
                            if !interim {
                                st.pending.pop_front();
                            }
                            Some(k)
                        }
                        _ => None,
                    };
                    self.sink.event(
                        conn,
                        HttpEvent::Response {
                            key,
                            msg,
                            request,
                            interim,
                        },
                        procs,
                    );
                }
                Parsed::Broken { ts, reason, .. } => {
                    if let Some((key, _)) = st.current[dir.index()].take() {
                        if is_request {
                            // A broken request will never be answered in a way we can pair.
                            st.pending.retain(|r| r.key != key);
                        }
                        self.sink
                            .event(conn, HttpEvent::Broken { key, ts, reason }, procs);
                    }
                }
            }
        }
        request_head
    }

    /// Feeds the held pieces again, in order (`wait`: they may be held again).
    fn release_held(&mut self, conn: &Conn, procs: &ProcTable, wait: bool) {
        let Some(st) = self.conns.get_mut(&conn.id) else {
            return;
        };
        if st.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut st.held);
        st.held_bytes = 0;
        for (d, p) in held {
            self.feed(conn, d, &p, procs, wait);
        }
    }
}

const fn kernel_dir(d: Dir) -> u32 {
    match d {
        Dir::Recv => kdir::RECV,
        Dir::Send => kdir::SEND,
    }
}

fn other(d: Dir) -> Dir {
    match d {
        Dir::Recv => Dir::Send,
        Dir::Send => Dir::Recv,
    }
}

fn hold(st: &mut HttpConn, dir: Dir, piece: Piece) {
    if let Piece::Data { bytes, .. } = &piece {
        st.held_bytes += bytes.len();
    }
    st.held.push((dir, piece));
}

impl<S: HttpSink> ConnSink for Exchanges<S> {
    fn pieces(&mut self, conn: &Conn, dir: Dir, pieces: &[Piece], procs: &ProcTable) {
        for p in pieces {
            self.feed(conn, dir, p, procs, true);
        }
    }

    fn ended(&mut self, conn: &Conn, procs: &ProcTable) {
        // Whatever waited goes through now, framed as well as can be.
        self.release_held(conn, procs, false);
        let req_dir = self.conns.get(&conn.id).and_then(|s| s.req_dir);
        if let Some(req_dir) = req_dir {
            let mut out = std::mem::take(&mut self.scratch);
            for dir in [req_dir, other(req_dir)] {
                if let Some(p) = self
                    .conns
                    .get_mut(&conn.id)
                    .and_then(|s| s.parsers[dir.index()].as_mut())
                {
                    p.finish(&mut out);
                }
                self.report(conn, dir, dir == req_dir, &mut out, procs);
            }
            self.scratch = out;
        }
        if let Some(st) = self.conns.remove(&conn.id)
            && self.copy_window.is_some()
        {
            for d in [Dir::Recv, Dir::Send] {
                if st.told[d.index()].is_some() {
                    self.hints.push(CopyHint {
                        tgid: conn.tgid,
                        fd: conn.fd,
                        dir: kernel_dir(d),
                        ctl: None,
                    });
                }
            }
        }
        self.sink.conn_ended(conn, procs);
    }

    fn close(&mut self) {
        self.sink.close()
    }
}

#[cfg(test)]
mod tests {
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
                HttpEvent::Begin { key, ts } => format!("begin {} @{ts}", k(&key)),
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
                bytes: bytes.to_vec(),
                ts_ns: self.ts,
            };
            self.off[dir.index()] += bytes.len() as u64;
            self.ex.pieces(&self.conn, dir, &[p], &ProcTable::new());
            self
        }

        fn gap(&mut self, dir: Dir, len: u64) -> &mut Self {
            self.ts += 10;
            let p = Piece::Gap {
                off: self.off[dir.index()],
                len,
                kind: GapKind::Lost,
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
    fn connection_end_flushes_incomplete_messages() {
        let mut f = Feeder::new(Role::Client);
        f.data(
            Dir::Send,
            b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        );
        let log = f.end();
        assert_eq!(lines(&log, "req"), vec!["req q0 body abc"]);
    }
}
