//! One direction of a connection as a sequence of HTTP/1.x messages.
//!
//! Fed stream pieces in order (bytes, and gaps of known size), it reports where each message
//! begins, its head when complete, and the message when it ends, keeping a bounded preview of
//! the body and its exact size. Bytes missing inside a body are skipped by count, so the next
//! message is framed right; a gap or garbage where a head should be breaks that message (still
//! reported as a message when its start line can be read) and the parser resynchronises at the
//! next start line. After a request whose answer may switch protocols (CONNECT, Upgrade), what
//! follows waits for that answer: a tunnel, or HTTP again.
use super::{
    chunked::Chunked,
    framing::{BodyRule, Framing},
    head::{
        Head, HeadParse, find_start_line, lenient_notes, parse_head, partial_head,
        skip_leading_crlf,
    },
    message::{Body, Ending, Message},
    uwsgi,
};
use crate::stream::{GapKind, Piece};

/// Largest header block accepted; a longer one breaks the message.
pub const MAX_HEAD: usize = 64 << 10;
/// While resynchronising, the tail kept to find a start line split across pieces.
const RESYNC_KEEP: usize = 8 << 10;
/// Bytes sent after a CONNECT or Upgrade request held while its answer is awaited; past this
/// the wait ends and they are read as HTTP.
pub const MAX_AWAIT: usize = 64 << 10;

/// Bytes of non-HTTP data read while resynchronising before the direction is taken for
/// something else than HTTP and no longer copied.
pub const MAX_GARBAGE: u64 = 1 << 20;

/// What of this direction is worth copying from now on, in stream offsets: everything before
/// `credit_until` except the `skip` range (a body beyond its preview), and with `heads` past
/// the credit the first bytes of each syscall (where a head would start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyWant {
    pub credit_until: u64,
    pub skip: Option<(u64, u64)>,
    pub heads: bool,
}

/// What the parser reports, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The first byte of what should be a message; `after_gap`: bytes went missing since the
    /// message before ended (messages may have been lost in them).
    Begin { off: u64, ts: u64, after_gap: bool },
    /// Its head is complete (before its body).
    Head {
        off: u64,
        head: std::sync::Arc<Head>,
    },
    /// The message ended.
    End(Message),
    /// What began at `off` is not a message (no start line could be read); nothing else will
    /// be reported for it.
    Broken {
        off: u64,
        ts: u64,
        reason: &'static str,
    },
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

#[derive(Debug)]
enum State {
    /// Between messages.
    Idle,
    /// Collecting a head in `buf`.
    Head,
    /// In the body of `msg`.
    Body(BodyState),
    /// Looking for the next start line in `buf`; `from_start` when `buf` begins right after a
    /// gap, where a message may begin too.
    Resync { from_start: bool },
    /// After a request whose answer may switch protocols: the pieces since, held until the
    /// answer says whether they are HTTP ([`DirParser::resume`]) or a tunnel's
    /// ([`DirParser::switch_protocols`]); `bytes` counts their data.
    Await {
        held: Vec<Piece<'static>>,
        bytes: usize,
    },
    /// No longer HTTP (CONNECT tunnel, Upgrade).
    Tunnel,
}

/// What comes after the message in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// The next message.
    Http,
    /// The answer to this request may switch protocols: wait for it.
    Await,
    /// The protocol was switched already: a tunnel.
    Tunnel,
}

/// Parser of one direction. `requests` says which kind of start line it expects.
#[derive(Debug)]
pub struct DirParser {
    requests: bool,
    state: State,
    buf: Vec<u8>,
    buf_off: u64,
    buf_ts: u64,
    msg: Option<Message>,
    preview_limit: usize,
    after_gap: bool,
    /// Offset of the next byte expected.
    pos: u64,
    /// Bytes read while resynchronising since the last start line.
    garbage: u64,
    /// The gap being handled is lost bytes (not merely uncopied ones).
    lost_gap: bool,
    /// After the message in progress.
    then: Then,
}

impl DirParser {
    pub fn new(requests: bool, preview_limit: usize) -> Self {
        Self {
            requests,
            state: State::Idle,
            buf: Vec::new(),
            buf_off: 0,
            buf_ts: 0,
            msg: None,
            preview_limit,
            after_gap: false,
            pos: 0,
            garbage: 0,
            lost_gap: false,
            then: Then::Http,
        }
    }

    pub const fn carries_requests(&self) -> bool {
        self.requests
    }

    /// Whether the parser is between messages (nothing begun and unfinished).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle) && self.buf.is_empty()
    }

    /// Whether the direction stopped being HTTP.
    pub fn is_tunnel(&self) -> bool {
        matches!(self.state, State::Tunnel)
    }

    /// Whether what follows a request waits for its answer (CONNECT, Upgrade).
    pub fn is_awaiting(&self) -> bool {
        matches!(self.state, State::Await { .. }) || self.then == Then::Await
    }

    /// The answer switched protocols (a 2xx to CONNECT, 101): from the end of the request in
    /// progress on, this direction is a tunnel, not HTTP.
    pub fn switch_protocols(&mut self) {
        match self.state {
            State::Body(_) => self.then = Then::Tunnel,
            _ => {
                self.state = State::Tunnel;
                self.then = Then::Http;
                self.buf = Vec::new();
            }
        }
    }

    /// The answer did not switch protocols: what waited is HTTP, read now.
    pub fn resume(&mut self, rule: &mut dyn FnMut(&Head, u64) -> Framing, out: &mut Vec<Parsed>) {
        if self.then == Then::Await {
            self.then = Then::Http;
        }
        // Only a direction that waits has bytes held: a request still in its body (an Upgrade
        // with content) or a head in progress is left as it is.
        let held = match &mut self.state {
            State::Await { held, .. } => std::mem::take(held),
            _ => return,
        };
        self.state = State::Idle;
        if let Some(first) = held.first() {
            self.pos = first.off();
        }
        for piece in &held {
            self.feed(piece, rule, out);
        }
    }

    /// Feeds one piece. `rule` decides the body of a message from its head and the time of its
    /// first byte (a response is framed by the request it answers).
    pub fn feed(
        &mut self,
        piece: &Piece,
        rule: &mut dyn FnMut(&Head, u64) -> Framing,
        out: &mut Vec<Parsed>,
    ) {
        if let State::Await { held, bytes } = &mut self.state {
            if let Piece::Data { bytes: b, .. } = piece {
                *bytes += b.len();
            }
            let too_much = *bytes > MAX_AWAIT;
            held.push(piece.to_owned_piece());
            if too_much {
                // The answer is long in coming: read what waited as HTTP.
                self.resume(rule, out);
            }
            return;
        }
        match piece {
            Piece::Data { off, bytes, ts_ns } => {
                self.sync_to(*off, *ts_ns, out);
                self.data(bytes, *ts_ns, rule, out);
                self.pos = off + bytes.len() as u64;
            }
            Piece::Gap {
                off,
                len,
                ts_ns,
                kind,
            } => {
                self.sync_to(*off, *ts_ns, out);
                self.lost_gap = *kind == GapKind::Lost;
                self.gap(*off, *len, *ts_ns, out);
                self.pos = off + len;
            }
        }
    }

    /// A piece that does not start where the last one ended (a caller's mistake or a stream
    /// fed from the middle) is a gap of the difference.
    fn sync_to(&mut self, off: u64, ts: u64, out: &mut Vec<Parsed>) {
        if off > self.pos && self.pos > 0 {
            let len = off - self.pos;
            self.lost_gap = true;
            self.gap(self.pos, len, ts, out);
        }
        self.pos = off;
    }

    fn begin(&mut self, off: u64, ts: u64, out: &mut Vec<Parsed>) {
        // A head is read from its first byte: nothing before it is part of it.
        self.buf.clear();
        self.buf_off = off;
        self.buf_ts = ts;
        out.push(Parsed::Begin {
            off,
            ts,
            after_gap: self.after_gap,
        });
    }

    /// Parses data bytes at stream offset `at`. Bytes that must be read again (after a
    /// resynchronisation found a start line) go on a work stack rather than into recursion, so
    /// garbage full of false starts costs no stack.
    fn data(
        &mut self,
        bytes: &[u8],
        ts: u64,
        rule: &mut dyn FnMut(&Head, u64) -> Framing,
        out: &mut Vec<Parsed>,
    ) {
        let mut work: Vec<(Vec<u8>, u64)> = Vec::new();
        if let Some(again) = self.data_once(bytes, self.pos, ts, rule, out) {
            work.push(again);
        }
        while let Some((bytes, at)) = work.pop() {
            if let Some(again) = self.data_once(&bytes, at, ts, rule, out) {
                work.push(again);
            }
        }
    }

    /// One pass over `bytes`; returns bytes to parse again from state Idle, with their offset.
    fn data_once(
        &mut self,
        mut bytes: &[u8],
        mut at: u64,
        ts: u64,
        rule: &mut dyn FnMut(&Head, u64) -> Framing,
        out: &mut Vec<Parsed>,
    ) -> Option<(Vec<u8>, u64)> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Tunnel => return None,
                State::Await { held, bytes: n } => {
                    // Bytes after a CONNECT or Upgrade request wait for its answer.
                    *n += bytes.len();
                    held.push(Piece::Data {
                        off: at,
                        bytes: bytes.to_vec().into(),
                        ts_ns: ts,
                    });
                    return None;
                }
                State::Idle => {
                    // RFC 9112 §2.2: empty lines before a start line are ignored.
                    let skip = skip_leading_crlf(bytes);
                    bytes = &bytes[skip..];
                    at += skip as u64;
                    if bytes.is_empty() {
                        return None;
                    }
                    self.begin(at, ts, out);
                    self.state = State::Head;
                }
                State::Head => {
                    let before = self.buf.len();
                    let take = bytes.len().min(MAX_HEAD + 1 - before);
                    if before == 0
                        && let HeadParse::Complete(head) = self.parse_head(&bytes[..take])
                    {
                        // A head whole in one piece (most are) is read where it lies, not
                        // copied first.
                        let notes = if head.cgi.is_empty() {
                            lenient_notes(&bytes[..head.len])
                        } else {
                            Vec::new()
                        };
                        bytes = &bytes[head.len..];
                        at += head.len as u64;
                        self.head_done(head, notes, ts, rule, out);
                        continue;
                    }
                    self.buf.extend_from_slice(&bytes[..take]);
                    let parsed = self.parse_head(&self.buf);
                    match parsed {
                        HeadParse::Complete(head) => {
                            // buf held no complete head before, so the head ends in `bytes`.
                            let used = head.len - before;
                            bytes = &bytes[used..];
                            at += used as u64;
                            let notes = if head.cgi.is_empty() {
                                lenient_notes(&self.buf[..head.len])
                            } else {
                                Vec::new()
                            };
                            self.buf.clear();
                            self.head_done(head, notes, ts, rule, out);
                        }
                        HeadParse::Partial if self.buf.len() <= MAX_HEAD => {
                            bytes = &bytes[take..];
                            at += take as u64;
                        }
                        parsed => {
                            let reason = match parsed {
                                HeadParse::Invalid(r) => r,
                                _ => "header block too large",
                            };
                            bytes = &bytes[take..];
                            at += take as u64;
                            if let Some(again) = self.broken(reason, out) {
                                // Parse the rest after what was found again.
                                let mut v = again.0;
                                v.extend_from_slice(bytes);
                                return Some((v, again.1));
                            }
                        }
                    }
                }
                State::Body(body) => {
                    let msg = self.msg.as_mut().expect("a message in its body");
                    msg.last_ts = ts;
                    let preview_limit = self.preview_limit;
                    let keep = |msg: &mut Message, data: &[u8]| {
                        msg.body.len += data.len() as u64;
                        if msg.body.missing == 0 && msg.body.preview.len() < preview_limit {
                            let n = data.len().min(preview_limit - msg.body.preview.len());
                            msg.body.preview.extend_from_slice(&data[..n]);
                        }
                    };
                    let (used, done) = match body {
                        BodyState::Length(left) => {
                            let n = (*left).min(bytes.len() as u64) as usize;
                            keep(msg, &bytes[..n]);
                            *left -= n as u64;
                            (n, *left == 0)
                        }
                        BodyState::UntilClose => {
                            keep(msg, bytes);
                            (bytes.len(), false)
                        }
                        BodyState::Chunked(c) => match c.feed(bytes) {
                            Ok(fed) => {
                                if c.bare_lf {
                                    msg.note(super::head::NOTE_BARE_LF);
                                }
                                for (a, b) in &fed.data {
                                    keep(msg, &bytes[*a..*b]);
                                }
                                if fed.done {
                                    msg.trailers = std::mem::take(&mut c.trailers);
                                }
                                (fed.consumed, fed.done)
                            }
                            Err(e) => {
                                self.end_message(Ending::Broken(chunk_reason(&e)), out);
                                self.buf_off = at;
                                self.state = State::Resync { from_start: false };
                                continue;
                            }
                        },
                    };
                    bytes = &bytes[used..];
                    at += used as u64;
                    if done {
                        self.end_message(Ending::Complete, out);
                    }
                }
                State::Resync { from_start } => {
                    let from_start = *from_start;
                    self.garbage += bytes.len() as u64;
                    if self.buf.is_empty() {
                        self.buf_off = at;
                        self.buf_ts = ts;
                    }
                    self.buf.extend_from_slice(bytes);
                    return self.resync(from_start);
                }
            }
        }
        None
    }

    /// A head at the start of `buf`: a uwsgi packet's on a request stream that starts like
    /// one, else HTTP's.
    fn parse_head(&self, buf: &[u8]) -> HeadParse {
        if self.requests && uwsgi::is_packet_start(buf) {
            uwsgi::parse_packet(buf)
        } else {
            parse_head(buf)
        }
    }

    /// Looks for a start line in `buf`. Found: returns the bytes from it on, to be parsed from
    /// state Idle. Not found: keeps a bounded tail and waits for more.
    fn resync(&mut self, from_start: bool) -> Option<(Vec<u8>, u64)> {
        let found = if from_start && plausible_start(&self.buf, self.requests) {
            Some(0)
        } else {
            let line = find_start_line(&self.buf, self.requests);
            let packet = if self.requests {
                uwsgi::find_packet(&self.buf)
            } else {
                None
            };
            match (line, packet) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        match found {
            Some(i) => {
                let off = self.buf_off + i as u64;
                let tail = self.buf.split_off(i);
                self.buf.clear();
                self.garbage = 0;
                self.state = State::Idle;
                Some((tail, off))
            }
            None => {
                if self.buf.len() > RESYNC_KEEP {
                    let cut = self.buf.len() - RESYNC_KEEP;
                    self.buf.drain(..cut);
                    self.buf_off += cut as u64;
                }
                // A start line right at the gap could still be arriving: keep looking there
                // while too few bytes have come to judge.
                self.state = State::Resync {
                    from_start: from_start && self.buf.len() < 16,
                };
                None
            }
        }
    }

    /// A head is complete: report it and frame its body. `lenient`: what its bytes were read
    /// leniently with.
    fn head_done(
        &mut self,
        head: Head,
        mut lenient: Vec<&'static str>,
        ts: u64,
        rule: &mut dyn FnMut(&Head, u64) -> Framing,
        out: &mut Vec<Parsed>,
    ) {
        let framing = rule(&head, self.buf_ts);
        let head = std::sync::Arc::new(head);
        out.push(Parsed::Head {
            off: self.buf_off,
            head: head.clone(),
        });
        lenient.extend(framing.note);
        self.msg = Some(Message {
            head,
            off: self.buf_off,
            first_ts: self.buf_ts,
            last_ts: ts,
            body: Body::default(),
            ending: Ending::Complete,
            trailers: Vec::new(),
            after_gap: std::mem::take(&mut self.after_gap),
            lenient,
        });
        if framing.switch_on_answer {
            self.then = Then::Await;
        }
        match framing.rule {
            BodyRule::None | BodyRule::Length(0) => self.end_message(Ending::Complete, out),
            BodyRule::Length(n) => self.state = State::Body(BodyState::Length(n)),
            BodyRule::Chunked => self.state = State::Body(BodyState::Chunked(Chunked::new())),
            BodyRule::UntilClose => self.state = State::Body(BodyState::UntilClose),
            BodyRule::Tunnel => {
                self.end_message(Ending::Complete, out);
                self.state = State::Tunnel;
            }
            BodyRule::Invalid(reason) => {
                self.end_message(Ending::Broken(reason), out);
                self.state = State::Resync { from_start: false };
            }
        }
    }

    fn end_message(&mut self, ending: Ending, out: &mut Vec<Parsed>) {
        if let Some(mut msg) = self.msg.take() {
            msg.ending = ending;
            out.push(Parsed::End(msg));
        }
        self.state = match (std::mem::replace(&mut self.then, Then::Http), ending) {
            (Then::Tunnel, _) => State::Tunnel,
            (Then::Await, Ending::Complete) => State::Await {
                held: Vec::new(),
                bytes: 0,
            },
            _ => State::Idle,
        };
    }

    /// The head collected in `buf` broke (`reason`). With a start line that can be read it is
    /// still a message, ending broken: its start line and the fields before the fault, so the
    /// log shows what it was and what was wrong. Otherwise it is not a message.
    fn head_broken(&mut self, reason: &'static str, out: &mut Vec<Parsed>) {
        let (off, ts) = (self.buf_off, self.buf_ts);
        let head = if self.requests && uwsgi::is_packet_start(&self.buf) {
            None
        } else {
            partial_head(&self.buf, self.requests)
        };
        match head {
            Some(head) => {
                let head = std::sync::Arc::new(head);
                out.push(Parsed::Head {
                    off,
                    head: head.clone(),
                });
                out.push(Parsed::End(Message {
                    head,
                    off,
                    first_ts: ts,
                    last_ts: ts,
                    body: Body::default(),
                    ending: Ending::Broken(reason),
                    trailers: Vec::new(),
                    after_gap: std::mem::take(&mut self.after_gap),
                    lenient: Vec::new(),
                }));
            }
            None => out.push(Parsed::Broken { off, ts, reason }),
        }
    }

    /// What began in `buf` broke: report it and look for the next start line from the byte
    /// after its first. Returns bytes to parse again when one is found.
    fn broken(&mut self, reason: &'static str, out: &mut Vec<Parsed>) -> Option<(Vec<u8>, u64)> {
        self.head_broken(reason, out);
        if !self.buf.is_empty() {
            self.buf.drain(..1);
            self.buf_off += 1;
        }
        self.resync(false)
    }

    /// `len` bytes from offset `off` are missing.
    fn gap(&mut self, off: u64, len: u64, ts: u64, out: &mut Vec<Parsed>) {
        match &mut self.state {
            State::Tunnel => {}
            State::Await { held, .. } => held.push(Piece::Gap {
                off,
                len,
                kind: if self.lost_gap {
                    GapKind::Lost
                } else {
                    GapKind::Uncaptured
                },
                ts_ns: ts,
            }),
            State::Idle => {
                self.after_gap = true;
                self.buf.clear();
                self.state = State::Resync { from_start: true };
            }
            State::Head => {
                self.head_broken("bytes missing in a header block", out);
                self.buf.clear();
                self.after_gap = true;
                self.state = State::Resync { from_start: true };
            }
            State::Resync { .. } => {
                self.buf.clear();
                self.after_gap = true;
                self.state = State::Resync { from_start: true };
            }
            State::Body(body) => {
                let msg = self.msg.as_mut().expect("a message in its body");
                msg.last_ts = ts;
                match body {
                    BodyState::Length(left) => {
                        let n = len.min(*left);
                        msg.body.len += n;
                        msg.body.missing += n;
                        if self.lost_gap {
                            msg.body.lost += n;
                        }
                        *left -= n;
                        if *left == 0 {
                            self.end_message(Ending::Complete, out);
                            if len > n {
                                // The gap runs on past this body: the next message may be in it.
                                self.gap(off + n, len - n, ts, out);
                            }
                        }
                    }
                    BodyState::UntilClose => {
                        msg.body.len += len;
                        msg.body.missing += len;
                        if self.lost_gap {
                            msg.body.lost += len;
                        }
                    }
                    BodyState::Chunked(c) => {
                        if c.skip(len).is_ok() {
                            msg.body.len += len;
                            msg.body.missing += len;
                            if self.lost_gap {
                                msg.body.lost += len;
                            }
                        } else {
                            msg.body.missing += len.min(c.data_left());
                            self.end_message(Ending::Broken("bytes missing in chunk framing"), out);
                            self.after_gap = true;
                            self.buf.clear();
                            self.state = State::Resync { from_start: true };
                        }
                    }
                }
            }
        }
    }

    /// What is worth copying of this direction from its current position, keeping `window`
    /// bytes of credit ahead for heads to come: a body with a known length is skipped once its
    /// preview is full (the next head, right after it, is copied); a close-delimited body, a
    /// tunnel, or a stream that has shown only non-HTTP bytes for long are not copied at all.
    pub fn copy_want(&self, window: u64) -> CopyWant {
        let pos = self.pos;
        let open = CopyWant {
            credit_until: pos + window,
            skip: None,
            heads: true,
        };
        let stop = CopyWant {
            credit_until: pos,
            skip: None,
            heads: false,
        };
        match &self.state {
            State::Tunnel => stop,
            State::Resync { .. } if self.garbage > MAX_GARBAGE => stop,
            State::Body(body) => {
                let Some(msg) = &self.msg else { return open };
                let preview_done =
                    msg.body.missing > 0 || msg.body.preview.len() >= self.preview_limit;
                if !preview_done {
                    return open;
                }
                let left = match body {
                    BodyState::Length(left) => *left,
                    BodyState::Chunked(c) => c.data_left(),
                    BodyState::UntilClose => return stop,
                };
                if left == 0 {
                    return open;
                }
                CopyWant {
                    credit_until: pos + left + window,
                    skip: Some((pos, pos + left)),
                    heads: true,
                }
            }
            _ => open,
        }
    }

    /// The stream ended (close, exit, or the sniffer stops): a close-delimited body is
    /// complete, anything else in progress is incomplete.
    pub fn finish(&mut self, out: &mut Vec<Parsed>) {
        match &self.state {
            State::Body(BodyState::UntilClose) => self.end_message(Ending::Complete, out),
            State::Body(_) => self.end_message(Ending::Incomplete, out),
            State::Head if !self.buf.is_empty() => {
                self.head_broken("the connection ended inside a header block", out);
                self.buf.clear();
            }
            _ => {}
        }
        self.buf.clear();
        self.state = State::Idle;
        self.then = Then::Http;
    }
}

fn chunk_reason(e: &super::chunked::ChunkError) -> &'static str {
    match e {
        super::chunked::ChunkError::Size => "invalid chunk size line",
        super::chunked::ChunkError::DataEnd => "chunk data not followed by CRLF",
        super::chunked::ChunkError::LineTooLong => "chunk line too long",
        super::chunked::ChunkError::Gap => "bytes missing in chunk framing",
    }
}

/// A start line at the very start of `buf` (right after a gap).
fn plausible_start(buf: &[u8], requests: bool) -> bool {
    if requests {
        if uwsgi::is_packet_start(buf) {
            return !matches!(uwsgi::parse_packet(buf), HeadParse::Invalid(_));
        }
        let m = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
        m > 0 && m <= 16 && buf.get(m) == Some(&b' ')
    } else {
        buf.starts_with(b"HTTP/1.")
    }
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;
