//! Requests paired with their responses on each connection.
//!
//! Each connection gets a parser per direction once it is known which direction carries
//! requests (from connect/accept, or from the first bytes). Responses are paired FIFO with the
//! requests whose heads were seen (keep-alive, pipelining); interim 1xx responses are not the
//! final answer (100-continue). A response is only paired with a request that began before it,
//! so a request lost in a gap makes its response an orphan instead of shifting every pairing
//! after it. HEAD and CONNECT change how a response is framed, so response bytes that arrive
//! before any request head is known wait (bounded) for it. The answer to a CONNECT or Upgrade
//! request decides whether the connection stays HTTP both ways.
use std::collections::VecDeque;

use foldhash::HashMap;

use sniffer_common::{CopyCtl, copy_flags, dir as kdir};

use crate::{
    conns::{Conn, ConnSink},
    events::{Dir, Role},
    http::{
        framing::{may_switch, request_body, response_body},
        head::{Head, starts_like_response},
        message::Message,
        parser::{CopyWant, DirParser, Parsed},
    },
    probe::CopyHint,
    procs::ProcTable,
    stream::{GapKind, Piece},
};

/// Response bytes held while waiting for the request they answer.
const MAX_HELD: usize = 1 << 20;

/// Bounded copy's window grows, stream by stream, up to this. Once a stream's credit ran out
/// the kernel sends only lengths, which do not wake the reader early (its wakeups come by
/// ring bytes), so the reader runs one poll (10 ms) behind: a window smaller than a stream's
/// 10 ms of bytes never catches up again (a 64 MB/s stream of small responses: 640 KB). Half
/// the default ring: a window copies at most that ahead while the reader is away.
const MAX_WINDOW: u64 = 4 << 20;

/// One message of one connection: (connection id, carries a request, sequence in direction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
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
    /// A message's first byte was seen at `ts`: its place in the order. For a response, the
    /// request it will answer if the pairing holds (a 1xx or a gap can change it).
    Begin {
        key: MsgKey,
        ts: u64,
        answers: Option<MsgKey>,
    },
    /// A request head is complete (its body may follow).
    RequestHead {
        key: MsgKey,
        head: std::sync::Arc<Head>,
    },
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
    /// The request `key` will have no response on this connection: the answers to it went
    /// missing with bytes the kernel lost or did not copy (a later response answers a later
    /// request).
    Unanswered { key: MsgKey },
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
    /// Its head (shared with the stitcher's exchange): the method frames the response.
    head: std::sync::Arc<Head>,
    first_ts: u64,
    /// Its answer may end HTTP on the connection (CONNECT, Upgrade).
    switches: bool,
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
    held: Vec<(Dir, Piece<'static>)>,
    held_bytes: usize,
    seq: [u64; 2],
    /// The message in progress per direction (after its Begin).
    current: [Option<(MsgKey, u64)>; 2],
    /// What the kernel copies, per direction: at first its first window (bounded copy's
    /// initial credit, without word from userspace), then what it was last told.
    told: [CopyWant; 2],
    /// Whether the kernel was told anything of each direction (its word is taken back at the
    /// end).
    said: [bool; 2],
    /// Bounded copy's credit window per direction: the configured one, doubled each time the
    /// kernel left bytes uncopied that were wanted (see [`MAX_WINDOW`]).
    window: [u64; 2],
}

impl HttpConn {
    /// `window`: bounded copy's, None when the kernel copies everything.
    fn new(window: Option<u64>) -> Self {
        let first = CopyWant {
            credit_until: window.unwrap_or(u64::MAX),
            skip: None,
            heads: true,
        };
        Self {
            req_dir: None,
            parsers: [None, None],
            pending: VecDeque::new(),
            held: Vec::new(),
            held_bytes: 0,
            seq: [0, 0],
            current: [None, None],
            told: [first, first],
            said: [false, false],
            window: [window.unwrap_or(0); 2],
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
            conns: HashMap::default(),
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
        if self.copy_window.is_none() {
            return;
        }
        let Some(st) = self.conns.get_mut(&conn.id) else {
            return;
        };
        let window = st.window[dir.index()];
        let Some(parser) = st.parsers[dir.index()].as_ref() else {
            return;
        };
        let want = parser.copy_want(window);
        let told = &mut st.told[dir.index()];
        let worth = told.skip != want.skip
            || told.heads != want.heads
            || want.credit_until < told.credit_until
            || want.credit_until >= told.credit_until + window / 2;
        if !worth {
            return;
        }
        *told = want;
        st.said[dir.index()] = true;
        let (skip_from, skip_until) = want.skip.unwrap_or((u64::MAX, u64::MAX));
        self.hints.push(CopyHint {
            tgid: conn.tgid,
            fd: conn.fd,
            dir: kernel_dir(dir),
            ctl: Some(CopyCtl {
                flags: if want.heads { copy_flags::HEADS } else { 0 },
                _pad: 0,
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
        let window = self.copy_window;
        let st = self
            .conns
            .entry(conn.id)
            .or_insert_with(|| HttpConn::new(window));
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
                    hold(st, dir, piece);
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
            hold(st, dir, piece);
            if st.held_bytes >= MAX_HELD {
                self.release_held(conn, procs, false);
            }
            return;
        }
        if let Piece::Gap {
            off,
            len,
            kind: GapKind::Uncaptured,
            ..
        } = *piece
            && window.is_some()
        {
            let told = &st.told[dir.index()];
            let skipped = told
                .skip
                .is_some_and(|(from, until)| off >= from && off + len <= until);
            if !skipped {
                // Wanted bytes the kernel did not copy: its credit ran out before sniffer read
                // this far (a fast stream, a reader held up). A bigger window from now on.
                let w = &mut st.window[dir.index()];
                *w = (*w * 2).min(MAX_WINDOW);
            }
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
                        .map(|r| r.head.method().unwrap_or(""));
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
        // The final answer to a request that may switch protocols: whether it did.
        let mut answer: Option<bool> = None;
        for p in out.drain(..) {
            match p {
                Parsed::Begin { ts, after_gap, .. } => {
                    let req_dir = if is_request { dir } else { other(dir) };
                    let key = MsgKey {
                        conn: conn.id,
                        request: is_request,
                        seq: st.seq[dir.index()],
                        client_view: req_dir == Dir::Send,
                    };
                    st.seq[dir.index()] += 1;
                    st.current[dir.index()] = Some((key, ts));
                    let answers = if is_request {
                        None
                    } else {
                        if after_gap {
                            skip_answers_lost(&mut st.pending, ts, &mut |key| {
                                self.sink.event(conn, HttpEvent::Unanswered { key }, procs);
                            });
                        }
                        st.pending.front().map(|r| r.key)
                    };
                    self.sink
                        .event(conn, HttpEvent::Begin { key, ts, answers }, procs);
                }
                Parsed::Head { head, .. } => {
                    if is_request && let Some((key, ts)) = st.current[dir.index()] {
                        st.pending.push_back(PendingRequest {
                            key,
                            head: head.clone(),
                            first_ts: ts,
                            switches: may_switch(&head),
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
                    // RFC 9110 §15.2.2: after a 101 the connection is the new protocol.
                    if status == 101 {
                        answer = Some(true);
                    }
                    let request = match st.pending.front() {
                        Some(r) if r.first_ts <= msg.first_ts => {
                            let k = r.key;
                            if !interim {
                                // RFC 9110 §9.3.6: a 2xx to CONNECT makes the connection a
                                // tunnel both ways; any other final answer leaves it HTTP.
                                let tunnel = r.head.method() == Some("CONNECT")
                                    && (200..300).contains(&status);
                                if tunnel || r.switches {
                                    answer = Some(answer.unwrap_or(false) || tunnel);
                                }
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
        if let Some(switched) = answer {
            self.answered(conn, switched, procs, true);
        }
        request_head
    }

    /// The answer to a CONNECT or Upgrade request came: it `switched` protocols (the request
    /// direction is a tunnel from the end of that request), or not (what the client sent after
    /// it is HTTP, read now). `wait`: as for [`Self::feed`].
    fn answered(&mut self, conn: &Conn, switched: bool, procs: &ProcTable, wait: bool) {
        let Some(st) = self.conns.get_mut(&conn.id) else {
            return;
        };
        let Some(req_dir) = st.req_dir else {
            return;
        };
        let Some(parser) = st.parsers[req_dir.index()].as_mut() else {
            return;
        };
        if switched {
            parser.switch_protocols();
            return;
        }
        let mut out = Vec::new();
        parser.resume(&mut |h: &Head, _| request_body(h), &mut out);
        if self.report(conn, req_dir, true, &mut out, procs) {
            self.release_held(conn, procs, wait);
        }
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

/// After bytes of the responses went missing where messages may have been (not inside a known
/// body: a body beyond its preview is skipped by length), a response that begins at `ts`
/// answers the latest pending request that began before it: a client that does not pipeline
/// sends a request only after the answer to the one before, so the older pending ones had their
/// answers in the gap (they stay unanswered). Without it every later response would be paired
/// with the request before its own. (A pipelining client's responses after a gap can be paired
/// wrongly either way.) Each request skipped goes to `skipped`.
fn skip_answers_lost(
    pending: &mut VecDeque<PendingRequest>,
    ts: u64,
    skipped: &mut impl FnMut(MsgKey),
) {
    while pending.get(1).is_some_and(|r| r.first_ts <= ts) {
        if let Some(r) = pending.pop_front() {
            skipped(r.key);
        }
    }
}

fn hold(st: &mut HttpConn, dir: Dir, piece: &Piece) {
    if let Piece::Data { bytes, .. } = piece {
        st.held_bytes += bytes.len();
    }
    st.held.push((dir, piece.to_owned_piece()));
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
            let awaiting = self
                .conns
                .get(&conn.id)
                .and_then(|s| s.parsers[req_dir.index()].as_ref())
                .is_some_and(DirParser::is_awaiting);
            if awaiting {
                // No answer came: what waited for it is read as HTTP.
                self.answered(conn, false, procs, false);
            }
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
                if st.said[d.index()] {
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
mod tests;
