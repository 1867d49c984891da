//! One direction of a connection as a sequence of HTTP/1.x messages.
//!
//! Fed stream pieces in order (bytes, and gaps of known size), it reports where each message
//! begins, its head when complete, and the message when it ends, keeping a bounded preview of
//! the body and its exact size. Bytes missing inside a body are skipped by count, so the next
//! message is framed right; a gap or garbage where a head should be breaks that message and the
//! parser resynchronises at the next start line.
use super::{
    chunked::Chunked,
    head::{BodyRule, Head, HeadParse, find_start_line, parse_head, skip_leading_crlf},
    uwsgi,
};
use crate::stream::{GapKind, Piece};

/// Largest header block accepted; a longer one breaks the message.
pub const MAX_HEAD: usize = 64 << 10;
/// While resynchronising, the tail kept to find a start line split across pieces.
const RESYNC_KEEP: usize = 8 << 10;

/// The body of a message as seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    /// Body length: payload bytes (chunked: decoded data), captured or not.
    pub len: u64,
    /// The first body bytes, up to the preview limit and the first missing byte.
    pub preview: Vec<u8>,
    /// Body bytes the capture does not have (not copied by the kernel, or lost).
    pub missing: u64,
    /// Of those, the ones whose events were lost (ring buffer full).
    pub lost: u64,
}

impl Body {
    /// The preview holds the whole body.
    pub fn preview_is_whole(&self) -> bool {
        self.missing == 0 && self.preview.len() as u64 == self.len
    }
}

/// How a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Its framing said it was complete.
    Complete,
    /// The connection ended (or the sniffer stopped) before it was complete.
    Incomplete,
    /// Its framing broke (bytes missing in chunk framing, invalid chunk): what is shown is what
    /// was read until then.
    Broken(&'static str),
}

/// A message whose head was parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub head: Head,
    /// Stream offset of its first byte.
    pub off: u64,
    /// Kernel time of its first and last bytes.
    pub first_ts: u64,
    pub last_ts: u64,
    pub body: Body,
    pub ending: Ending,
    /// Chunked trailer fields, raw.
    pub trailers: Vec<Vec<u8>>,
    /// Bytes were missing right before this message: something may have been lost before it.
    pub after_gap: bool,
}

/// Bytes of non-HTTP data read while resynchronising before the direction is taken for
/// something else than HTTP and no longer copied.
pub const MAX_GARBAGE: u64 = 1 << 20;

/// What of this direction is worth copying from now on, in stream offsets: everything before
/// `credit_until` except the `skip` range (a body beyond its preview).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyWant {
    pub credit_until: u64,
    pub skip: Option<(u64, u64)>,
}

/// What the parser reports, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The first byte of what should be a message.
    Begin { off: u64, ts: u64 },
    /// Its head is complete (before its body).
    Head { off: u64, head: Head },
    /// The message ended.
    End(Message),
    /// What began at `off` is not a usable message; nothing else will be reported for it.
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
    /// No longer HTTP (CONNECT tunnel, Upgrade).
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

    /// Feeds one piece. `rule` decides the body of a message from its head and the time of its
    /// first byte (a response is framed by the request it answers).
    pub fn feed(
        &mut self,
        piece: &Piece,
        rule: &mut dyn FnMut(&Head, u64) -> BodyRule,
        out: &mut Vec<Parsed>,
    ) {
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
                self.gap(*len, *ts_ns, out);
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
            self.gap(len, ts, out);
        }
        self.pos = off;
    }

    fn begin(&mut self, off: u64, ts: u64, out: &mut Vec<Parsed>) {
        self.buf_off = off;
        self.buf_ts = ts;
        out.push(Parsed::Begin { off, ts });
    }

    /// Parses data bytes at stream offset `at`. Bytes that must be read again (after a
    /// resynchronisation found a start line) go on a work stack rather than into recursion, so
    /// garbage full of false starts costs no stack.
    fn data(
        &mut self,
        bytes: &[u8],
        ts: u64,
        rule: &mut dyn FnMut(&Head, u64) -> BodyRule,
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
        rule: &mut dyn FnMut(&Head, u64) -> BodyRule,
        out: &mut Vec<Parsed>,
    ) -> Option<(Vec<u8>, u64)> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Tunnel => return None,
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
                    self.buf.extend_from_slice(&bytes[..take]);
                    let parsed = if self.requests && uwsgi::is_packet_start(&self.buf) {
                        uwsgi::parse_packet(&self.buf)
                    } else {
                        parse_head(&self.buf)
                    };
                    match parsed {
                        HeadParse::Complete(head) => {
                            // buf held no complete head before, so the head ends in `bytes`.
                            let used = head.len - before;
                            bytes = &bytes[used..];
                            at += used as u64;
                            self.buf.clear();
                            self.head_done(head, ts, rule, out);
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

    fn head_done(
        &mut self,
        head: Head,
        ts: u64,
        rule: &mut dyn FnMut(&Head, u64) -> BodyRule,
        out: &mut Vec<Parsed>,
    ) {
        let body_rule = rule(&head, self.buf_ts);
        out.push(Parsed::Head {
            off: self.buf_off,
            head: head.clone(),
        });
        self.msg = Some(Message {
            head,
            off: self.buf_off,
            first_ts: self.buf_ts,
            last_ts: ts,
            body: Body::default(),
            ending: Ending::Complete,
            trailers: Vec::new(),
            after_gap: std::mem::take(&mut self.after_gap),
        });
        match body_rule {
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
        self.state = State::Idle;
    }

    /// What began in `buf` is not a message: report it and look for the next start line from
    /// the byte after its first. Returns bytes to parse again when one is found.
    fn broken(&mut self, reason: &'static str, out: &mut Vec<Parsed>) -> Option<(Vec<u8>, u64)> {
        out.push(Parsed::Broken {
            off: self.buf_off,
            ts: self.buf_ts,
            reason,
        });
        if !self.buf.is_empty() {
            self.buf.drain(..1);
            self.buf_off += 1;
        }
        self.resync(false)
    }

    fn gap(&mut self, len: u64, ts: u64, out: &mut Vec<Parsed>) {
        match &mut self.state {
            State::Tunnel => {}
            State::Idle => {
                self.after_gap = true;
                self.buf.clear();
                self.state = State::Resync { from_start: true };
            }
            State::Head => {
                self.buf.clear();
                out.push(Parsed::Broken {
                    off: self.buf_off,
                    ts: self.buf_ts,
                    reason: "bytes missing in a header block",
                });
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
                                self.gap(len - n, ts, out);
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
        };
        let stop = CopyWant {
            credit_until: pos,
            skip: None,
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
                out.push(Parsed::Broken {
                    off: self.buf_off,
                    ts: self.buf_ts,
                    reason: "the connection ended inside a header block",
                });
                self.buf.clear();
            }
            _ => {}
        }
        self.state = State::Idle;
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
mod tests {
    use super::*;
    use crate::http::head::{request_body, response_body};

    fn data(off: u64, bytes: &[u8], ts: u64) -> Piece {
        Piece::Data {
            off,
            bytes: bytes.to_vec(),
            ts_ns: ts,
        }
    }

    fn gap(off: u64, len: u64) -> Piece {
        Piece::Gap {
            off,
            len,
            kind: GapKind::Lost,
            ts_ns: 0,
        }
    }

    /// Feeds `pieces` to a parser of requests (or of responses to GETs).
    fn run(requests: bool, pieces: &[Piece]) -> Vec<Parsed> {
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
    fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Piece> {
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

    fn ends(out: &[Parsed]) -> Vec<&Message> {
        out.iter()
            .filter_map(|p| match p {
                Parsed::End(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn target(m: &Message) -> String {
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
            assert_eq!(out[0], Parsed::Begin { off: 0, ts: first });
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
        assert!(out.iter().any(|p| matches!(
            p,
            Parsed::Broken {
                off: 0,
                reason: "bytes missing in a header block",
                ..
            }
        )));
        let msgs = ends(&out);
        assert_eq!(msgs.len(), 1);
        assert_eq!(target(msgs[0]), "GET /found");
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
                skip: None
            }
        );
        let head = b"PUT /f HTTP/1.1\r\nContent-Length: 1000\r\n\r\n";
        let h = head.len() as u64;
        p.feed(&data(0, head, 1), &mut rule, &mut out);
        assert_eq!(
            p.copy_want(100),
            CopyWant {
                credit_until: h + 100,
                skip: None
            },
            "preview first"
        );
        p.feed(&data(h, b"abcdef", 2), &mut rule, &mut out);
        assert_eq!(
            p.copy_want(100),
            CopyWant {
                credit_until: h + 1000 + 100,
                skip: Some((h + 6, h + 1000))
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
        // Close-delimited and tunnels: nothing more.
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
                skip: None
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
}
