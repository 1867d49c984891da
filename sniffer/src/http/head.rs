//! Message heads (start line + header fields, RFC 9112 §2-5) and finding the next start line,
//! as small pure functions over bytes. How long a body is: [`super::framing`].

use std::borrow::Cow;

/// A header field as it was sent (name case kept, value raw).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

/// A head's header fields, in order, in one buffer: the bytes that hold their names and values
/// (for a parsed head, its field lines as sent: one copy), then each field's span. A message
/// has a dozen fields and they are read in order (a lookup is a walk): one allocation for all.
#[derive(Clone, Default)]
pub struct Fields {
    /// `text` bytes, then `count` spans of [`SPAN`] bytes: where the field's name starts and
    /// ends and where its value starts and ends in the text (`u32`s: a head is at most 64 KiB,
    /// MAX_HEAD, and a uwsgi packet too).
    buf: Vec<u8>,
    text: usize,
    count: usize,
}

/// Bytes of a field's span.
const SPAN: usize = 16;

/// The same fields in the same order, however they are held.
impl PartialEq for Fields {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.raw().eq(other.raw())
    }
}

impl Eq for Fields {}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|h| (h.name, String::from_utf8_lossy(h.value))),
            )
            .finish()
    }
}

impl Fields {
    /// Room for `fields` fields of `bytes` bytes of names and values in all.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes + fields * SPAN),
            text: 0,
            count: 0,
        }
    }

    /// The fields httparse found in `wire`: the bytes from the first name to the last value
    /// are copied once, and each field is a span of them.
    fn from_wire(wire: &[u8], hs: &[httparse::Header<'_>]) -> Self {
        Self::spans_of(wire, hs).unwrap_or_else(|| {
            // Not slices of `wire` in order (httparse's are): copied field by field instead.
            let mut fields = Self::default();
            for h in hs {
                fields.push(h.name, h.value);
            }
            fields
        })
    }

    /// [`Self::from_wire`], where every field lies in `wire`, in order.
    fn spans_of(wire: &[u8], hs: &[httparse::Header<'_>]) -> Option<Self> {
        let base = wire.as_ptr() as usize;
        // Where a slice of `wire` starts and ends in it (None: not in it).
        let span = |s: &[u8]| {
            let start = (s.as_ptr() as usize).checked_sub(base)?;
            let end = start.checked_add(s.len())?;
            (end <= wire.len()).then_some((start, end))
        };
        let (Some(first), Some(last)) = (hs.first(), hs.last()) else {
            return Some(Self::default());
        };
        let (from, _) = span(first.name.as_bytes())?;
        let (_, to) = span(last.value)?;
        let text = wire.get(from..to)?;
        let mut buf = Vec::with_capacity(text.len() + hs.len() * SPAN);
        buf.extend_from_slice(text);
        for h in hs {
            let (ns, ne) = span(h.name.as_bytes())?;
            let (vs, ve) = span(h.value)?;
            if ns < from || vs < from || ne > to || ve > to {
                return None;
            }
            buf.extend_from_slice(&span_bytes([ns - from, ne - from, vs - from, ve - from]));
        }
        Some(Self {
            buf,
            text: to - from,
            count: hs.len(),
        })
    }

    pub fn push(&mut self, name: &str, value: &[u8]) {
        // The text grows in front of the spans (a field pushed is built, not parsed: uwsgi
        // vars, a broken head's last good line).
        let at = self.text;
        let bytes = name.bytes().chain(value.iter().copied());
        self.buf.splice(at..at, bytes);
        self.text += name.len() + value.len();
        let name_end = at + name.len();
        self.buf
            .extend_from_slice(&span_bytes([at, name_end, name_end, self.text]));
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Header<'_>> + '_ {
        self.raw().map(|(name, value)| {
            // SAFETY: names are copied whole from a `&str` (pushed) or from httparse's
            // `&str` (parsed), and each span falls on a name's ends.
            let name = unsafe { std::str::from_utf8_unchecked(name) };
            Header { name, value }
        })
    }

    /// [`Self::iter`], with each value as text: borrowed when the fields' bytes are UTF-8 (the
    /// usual case, checked once for all of them: a value's ends lie next to ASCII delimiters
    /// or at a name's ends, so they fall on character boundaries), else read lossily.
    pub fn iter_text(&self) -> impl Iterator<Item = (Header<'_>, Cow<'_, str>)> + '_ {
        let bytes = &self.buf[..self.text];
        let text = std::str::from_utf8(bytes).ok();
        self.iter().map(move |h| {
            // The value is a slice of the text: its place there.
            let at = h.value.as_ptr() as usize - bytes.as_ptr() as usize;
            let shown = match text.and_then(|t| t.get(at..at + h.value.len())) {
                Some(v) => Cow::Borrowed(v),
                None => String::from_utf8_lossy(h.value),
            };
            (h, shown)
        })
    }

    /// The values of the fields named `name` (case-insensitive), in order.
    pub fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.raw()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    /// The first value of the field named `name` (case-insensitive).
    pub fn value(&self, name: &str) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// Each field's name and value bytes, in order.
    fn raw(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let (text, spans) = self.buf.split_at(self.text);
        spans
            .as_chunks::<SPAN>()
            .0
            .iter()
            .filter_map(move |s| field(text, s))
    }

    /// RFC 9112 §5.2: a recipient of a folded response field replaces each obs-fold with SP
    /// before interpreting it (only a folded value holds CR or LF; names cannot).
    fn unfold(&mut self) {
        let (text, spans) = self.buf.split_at_mut(self.text);
        // A line break between each two fields, none inside a value unless it folds.
        if memchr::memchr_iter(b'\n', text).count() < self.count {
            return;
        }
        for s in spans.as_chunks::<SPAN>().0 {
            let [_, _, from, to] = span_of(s);
            if let Some(value) = text.get_mut(from..to) {
                for b in value {
                    if *b == b'\r' || *b == b'\n' {
                        *b = b' ';
                    }
                }
            }
        }
    }
}

/// A span as stored.
#[inline]
fn span_bytes(span: [usize; 4]) -> [u8; SPAN] {
    let mut bytes = [0; SPAN];
    for (chunk, at) in bytes.as_chunks_mut::<4>().0.iter_mut().zip(span) {
        *chunk = (at as u32).to_ne_bytes();
    }
    bytes
}

/// A field's span: its name's start and end, its value's start and end.
#[inline]
fn span_of(s: &[u8; SPAN]) -> [usize; 4] {
    let words = s.as_chunks::<4>().0;
    std::array::from_fn(|i| u32::from_ne_bytes(words[i]) as usize)
}

/// A field's name and value in `text`, by its span (None: the span is not in the text).
#[inline]
fn field<'a>(text: &'a [u8], s: &[u8; SPAN]) -> Option<(&'a [u8], &'a [u8])> {
    let [ns, ne, vs, ve] = span_of(s);
    Some((text.get(ns..ne)?, text.get(vs..ve)?))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request {
        /// The usual methods are shared, not allocated per message ([`shared`]).
        method: Cow<'static, str>,
        target: String,
        /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
        version: u8,
    },
    Response {
        status: u16,
        /// The usual reason phrases are shared, not allocated per message ([`shared`]).
        reason: Cow<'static, str>,
        version: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub start: StartLine,
    pub headers: Fields,
    /// Bytes of the head, up to and including the empty line (a uwsgi packet: its size).
    pub len: usize,
    /// CGI vars of a uwsgi request packet that are not header fields (REMOTE_ADDR, REMOTE_PORT,
    /// SCRIPT_NAME...); empty for HTTP.
    pub cgi: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.value(name)
    }

    /// Every value of header `name`, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.values(name)
    }

    /// A CGI var of a uwsgi packet.
    pub fn cgi_var(&self, name: &str) -> Option<&str> {
        self.cgi
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }
}

/// Methods and reason phrases that most messages carry.
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];
const REASONS: &[&str] = &[
    "OK",
    "Created",
    "Accepted",
    "No Content",
    "Partial Content",
    "Moved Permanently",
    "Found",
    "See Other",
    "Not Modified",
    "Temporary Redirect",
    "Bad Request",
    "Unauthorized",
    "Forbidden",
    "Not Found",
    "Method Not Allowed",
    "Conflict",
    "Request Entity Too Large",
    "Internal Server Error",
    "Bad Gateway",
    "Service Unavailable",
    "Gateway Timeout",
    "Continue",
    "Switching Protocols",
    "",
];

/// A request's method, shared when it is a usual one.
pub(crate) fn method(text: &str) -> Cow<'static, str> {
    shared(text, METHODS)
}

/// `text` as one of `known` (as sent: the comparison keeps case), else a copy.
fn shared(text: &str, known: &'static [&'static str]) -> Cow<'static, str> {
    match known.iter().find(|k| **k == text) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(text.to_owned()),
    }
}

/// Result of trying to parse a head from the bytes seen so far.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadParse {
    Complete(Head),
    /// More bytes are needed.
    Partial,
    /// Not an HTTP/1.x head.
    Invalid(&'static str),
}

/// Header fields per message we accept; more makes the message broken.
pub const MAX_HEADERS: usize = 128;

/// A response's header fields may fold (obs-fold, RFC 9112 §5.2); a request's may not.
fn response_config() -> httparse::ParserConfig {
    let mut c = httparse::ParserConfig::default();
    c.allow_obsolete_multiline_headers_in_responses(true);
    c
}

/// `folds`: the parser accepted obs-fold (responses only, see [`response_config`]).
fn to_headers(wire: &[u8], hs: &[httparse::Header<'_>], folds: bool) -> Fields {
    let mut fields = Fields::from_wire(wire, hs);
    if folds {
        fields.unfold();
    }
    fields
}

/// Parses a request or response head at the start of `buf`.
///
/// RFC 9112 §2.2: empty lines before a request-line are ignored (callers skip them with
/// [`skip_leading_crlf`]). A status line starts with `HTTP/`; anything else is parsed as a
/// request line. A bare LF ends a line as CRLF does (§2.2 lets a recipient accept it); what
/// was accepted that way is told by [`lenient_notes`].
pub fn parse_head(buf: &[u8]) -> HeadParse {
    // Room for the fields, not written before the parser fills it (4 KiB zeroed per head
    // otherwise).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    if buf.starts_with(b"HTTP/") || (buf.len() < 5 && b"HTTP/".starts_with(buf)) {
        let mut resp = httparse::Response::new(&mut []);
        match response_config().parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => HeadParse::Complete(Head {
                start: StartLine::Response {
                    status: resp.code.unwrap_or(0),
                    reason: shared(resp.reason.unwrap_or(""), REASONS),
                    version: resp.version.unwrap_or(1),
                },
                headers: to_headers(buf, resp.headers, true),
                len,
                cgi: Vec::new(),
            }),
            Ok(httparse::Status::Partial) => HeadParse::Partial,
            Err(e) => HeadParse::Invalid(parse_error(e, buf)),
        }
    } else {
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => HeadParse::Complete(Head {
                start: StartLine::Request {
                    method: method(req.method.unwrap_or("")),
                    target: req.path.unwrap_or("").to_owned(),
                    version: req.version.unwrap_or(1),
                },
                headers: to_headers(buf, req.headers, false),
                len,
                cgi: Vec::new(),
            }),
            Ok(httparse::Status::Partial) => HeadParse::Partial,
            Err(e) => HeadParse::Invalid(parse_error(e, buf)),
        }
    }
}

pub const BROKEN_FOLD: &str = "a header line starts with whitespace (obs-fold in a request, RFC 9112 §5.2, or whitespace after the start line, §2.2)";

fn parse_error(e: httparse::Error, buf: &[u8]) -> &'static str {
    match e {
        httparse::Error::HeaderName | httparse::Error::HeaderValue if folds(buf) => BROKEN_FOLD,
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status code",
        httparse::Error::Token => "invalid token in start line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "not HTTP/1.x",
    }
}

/// A line of the head (up to its first empty line) begins with SP or HTAB.
fn folds(buf: &[u8]) -> bool {
    head_lines(buf)
        .skip(1)
        .any(|l| l.starts_with(b" ") || l.starts_with(b"\t"))
}

/// The lines of a head, without their line endings, up to the empty line that ends it.
fn head_lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

pub const NOTE_BARE_LF: &str = "a bare LF ends a line where CRLF belongs (RFC 9112 §2.2)";
pub const NOTE_OBS_FOLD: &str = "a folded header line (obs-fold), unfolded with SP (RFC 9112 §5.2)";

/// What a complete head (its `len` bytes) was read leniently with: line endings without CR,
/// folded response fields. Each is invalid for a sender; a strict parser may read the bytes
/// otherwise, so the log says it.
pub fn lenient_notes(head_bytes: &[u8]) -> Vec<&'static str> {
    let mut notes = Vec::new();
    // A bare LF, or a line that starts with SP/HTAB after the start line (obs-fold): each
    // byte beside the next, without branches, which the compiler turns into vector code (a
    // head is a few hundred bytes with a dozen line ends: cheaper than a search per LF).
    let pairs = head_bytes
        .iter()
        .zip(&head_bytes[1.min(head_bytes.len())..]);
    let (bare_lf, fold) = pairs.fold(
        (head_bytes.first() == Some(&b'\n'), false),
        |(bare_lf, fold), (&a, &b)| {
            (
                bare_lf | ((b == b'\n') & (a != b'\r')),
                fold | ((a == b'\n') & ((b == b' ') | (b == b'\t'))),
            )
        },
    );
    if bare_lf {
        notes.push(NOTE_BARE_LF);
    }
    if fold {
        notes.push(NOTE_OBS_FOLD);
    }
    notes
}

/// The head of a message that broke before its head was complete, when its start line can be
/// read: the start line and the header fields before the first bad line. None when the bytes
/// do not begin with a start line of the kind expected (`requests`).
pub fn partial_head(buf: &[u8], requests: bool) -> Option<Head> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let mut start = Vec::with_capacity(line.len() + 4);
    start.extend_from_slice(line);
    start.extend_from_slice(b"\r\n\r\n");
    let HeadParse::Complete(mut head) = parse_head(&start) else {
        return None;
    };
    if head.is_request() != requests {
        return None;
    }
    for l in head_lines(&buf[nl + 1..]).take(MAX_HEADERS) {
        let mut field = Vec::with_capacity(l.len() + 4);
        field.extend_from_slice(l);
        field.extend_from_slice(b"\r\n\r\n");
        let mut one = [httparse::EMPTY_HEADER; 1];
        match httparse::parse_headers(&field, &mut one) {
            Ok(httparse::Status::Complete((_, [h]))) => head.headers.push(h.name, h.value),
            _ => break,
        }
    }
    head.len = buf.len();
    Some(head)
}

/// RFC 9112 §2.2: a server SHOULD ignore at least one empty line received before the
/// request-line. Returns how many leading CR/LF bytes to skip.
pub fn skip_leading_crlf(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Whether `line` (bytes from a line start) could begin a request line: `token SP` with an
/// upper-case method (RFC 9112 §3: method = token; in practice methods are upper case, which
/// keeps resynchronisation from locking onto body text).
fn looks_like_request_line(line: &[u8]) -> bool {
    let method_len = line.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == 0 || method_len > 16 || line.get(method_len) != Some(&b' ') {
        return false;
    }
    // ... SP request-target SP HTTP/1.x CRLF, on this line.
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let line = &line[..end];
    line.windows(7).any(|w| w == b" HTTP/1")
}

/// Whether `line` could begin a status line: `HTTP/1.x SP 3DIGIT` (RFC 9112 §4).
fn looks_like_status_line(line: &[u8]) -> bool {
    line.len() >= 12
        && line.starts_with(b"HTTP/1.")
        && line[8] == b' '
        && line[9..12].iter().all(u8::is_ascii_digit)
}

/// Where the next plausible start line begins in `buf` (at a line start, after the first byte),
/// for resynchronising after bytes that are not HTTP. Only complete lines are judged.
pub fn find_start_line(buf: &[u8], requests: bool) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = buf[i..].iter().position(|&b| b == b'\n') {
        let start = i + nl + 1;
        let rest = &buf[start..];
        if !rest.contains(&b'\n') {
            return None;
        }
        let ok = if requests {
            looks_like_request_line(rest)
        } else {
            looks_like_status_line(rest)
        };
        if ok {
            return Some(start);
        }
        i = start;
    }
    None
}

/// Whether a direction's first bytes are a response (a status line) rather than a request.
pub fn starts_like_response(buf: &[u8]) -> Option<bool> {
    let b = &buf[skip_leading_crlf(buf)..];
    if b.len() < 5 {
        return None;
    }
    Some(b.starts_with(b"HTTP/"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The head at the start of `bytes`, which must be complete.
    pub(crate) fn head(bytes: &[u8]) -> Head {
        match parse_head(bytes) {
            HeadParse::Complete(h) => h,
            other => panic!("not a complete head: {other:?}"),
        }
    }

    #[test]
    fn lenient_notes_find_bare_lfs_and_folds_anywhere_in_the_head() {
        assert!(lenient_notes(b"GET / HTTP/1.1\r\nA: b\r\n\r\n").is_empty());
        assert_eq!(lenient_notes(b"\nGET / HTTP/1.1\r\n\r\n"), [NOTE_BARE_LF]);
        assert_eq!(
            lenient_notes(b"GET / HTTP/1.1\r\nA: b\r\n\n"),
            [NOTE_BARE_LF]
        );
        assert_eq!(
            lenient_notes(b"HTTP/1.1 200 OK\r\nA: b\r\n\tc\r\n\r\n"),
            [NOTE_OBS_FOLD]
        );
        assert_eq!(
            lenient_notes(b"HTTP/1.1 200 OK\nA: b\r\n c\r\n\r\n"),
            [NOTE_BARE_LF, NOTE_OBS_FOLD]
        );
        assert!(lenient_notes(b"").is_empty());
        assert_eq!(lenient_notes(b"\n"), [NOTE_BARE_LF]);
    }

    #[test]
    fn field_values_read_as_text_are_borrowed_unless_a_byte_is_not_utf8() {
        let h = head("GET / HTTP/1.1\r\nA: caf\u{e9}\r\nB: x\r\n\r\n".as_bytes());
        let shown: Vec<_> = h.headers.iter_text().collect();
        assert_eq!(shown.len(), 2);
        assert!(matches!(&shown[0].1, Cow::Borrowed("caf\u{e9}")));
        assert_eq!((shown[1].0.name, shown[1].1.as_ref()), ("B", "x"));
        let h = head(b"GET / HTTP/1.1\r\nA: a\xffb\r\nB: x\r\n\r\n");
        let shown: Vec<_> = h.headers.iter_text().map(|(h, t)| (h.name, t)).collect();
        assert_eq!(shown[0].1, "a\u{fffd}b");
        assert_eq!(shown[0].0, "A");
        assert_eq!(shown[1].1, "x");
        let mut pushed = Fields::default();
        pushed.push("N", "\u{2603}".as_bytes());
        pushed.push("M", b"\xe2\x98");
        let shown: Vec<_> = pushed.iter_text().map(|(_, t)| t.into_owned()).collect();
        assert_eq!(shown, ["\u{2603}", "\u{fffd}"]);
    }

    #[test]
    fn request_head_keeps_names_values_and_length() {
        let raw = b"GET /v3?x=1 HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nX-Auth-Token: abc\r\n\r\nBODY";
        let h = head(raw);
        assert_eq!(
            h.start,
            StartLine::Request {
                method: "GET".into(),
                target: "/v3?x=1".into(),
                version: 1
            }
        );
        assert_eq!(h.header("host"), Some(&b"127.0.0.1:5000"[..]));
        assert_eq!(
            h.headers.iter().collect::<Vec<_>>(),
            [
                Header {
                    name: "Host",
                    value: b"127.0.0.1:5000"
                },
                Header {
                    name: "X-Auth-Token",
                    value: b"abc"
                }
            ]
        );
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.len, raw.len() - 4);
    }

    #[test]
    fn response_head_and_partial_prefixes() {
        let raw = b"HTTP/1.1 300 MULTIPLE CHOICES\r\nContent-Length: 2\r\n\r\n";
        let h = head(raw);
        assert_eq!(h.status(), Some(300));
        assert!(
            matches!(h.start, StartLine::Response { ref reason, .. } if reason == "MULTIPLE CHOICES")
        );
        for cut in 1..raw.len() {
            assert_eq!(parse_head(&raw[..cut]), HeadParse::Partial, "cut at {cut}");
        }
    }

    #[test]
    fn folded_values_are_unfolded_and_the_field_lines_kept_apart() {
        // Only the folded value's line break becomes SP; the line breaks between fields,
        // which the fields' buffer holds as sent, are no value's.
        let raw = b"HTTP/1.1 200 OK\r\nX-Ten: 0123456789\r\nX-Thirteen-Ab:0123456789abc \r\nX-Fold: a\r\n b\r\n\r\n";
        let h = head(raw);
        let fields: Vec<(&str, &[u8])> = h.headers.iter().map(|f| (f.name, f.value)).collect();
        assert_eq!(
            fields,
            [
                ("X-Ten", &b"0123456789"[..]),
                ("X-Thirteen-Ab", &b"0123456789abc"[..]),
                ("X-Fold", &b"a   b"[..]),
            ]
        );
        assert_eq!(h.header("x-fold"), Some(&b"a   b"[..]));
        assert_eq!(h.headers_named("X-TEN").count(), 1);
        // The same fields built one by one are equal, and more can follow either.
        let mut built = Fields::default();
        for (name, value) in &fields {
            built.push(name, value);
        }
        assert_eq!(built, h.headers);
        let mut parsed = h.headers.clone();
        parsed.push("Late", b"1");
        built.push("Late", b"1");
        assert_eq!(parsed, built);
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed.value("late"), Some(&b"1"[..]));
        assert_eq!(parsed.value("x-ten"), Some(&b"0123456789"[..]));
    }

    #[test]
    fn empty_values_and_a_lone_field_keep_their_place() {
        let h = head(b"GET / HTTP/1.1\r\nX-Empty:\r\nHost: a\r\nX-Last: \r\n\r\n");
        let fields: Vec<(&str, &[u8])> = h.headers.iter().map(|f| (f.name, f.value)).collect();
        assert_eq!(
            fields,
            [
                ("X-Empty", &b""[..]),
                ("Host", &b"a"[..]),
                ("X-Last", &b""[..])
            ]
        );
        assert_eq!(h.header("x-empty"), Some(&b""[..]));
        let h = head(b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n");
        assert_eq!(h.headers.len(), 1);
        assert_eq!(h.header("date"), Some(&b"x"[..]));
        assert!(head(b"HTTP/1.1 204 No Content\r\n\r\n").headers.is_empty());
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(
            parse_head(b"\x16\x03\x01\x02\x00\x01"),
            HeadParse::Invalid(_)
        ));
        assert!(matches!(
            parse_head(b"HTTP/9.9 200 OK\r\n\r\n"),
            HeadParse::Invalid(_)
        ));
    }

    #[test]
    fn resync_finds_the_next_start_line_at_a_line_start() {
        let buf = b"\x00garbage\r\nmore GET junk\r\nGET /x HTTP/1.1\r\nHost: a\r\n";
        let at = find_start_line(buf, true).unwrap();
        assert!(buf[at..].starts_with(b"GET /x HTTP/1.1"));
        let buf = b"xx\r\nbody text\r\nHTTP/1.1 200 OK\r\n";
        let at = find_start_line(buf, false).unwrap();
        assert!(buf[at..].starts_with(b"HTTP/1.1 200"));
        // A start line not yet complete is not judged.
        assert_eq!(find_start_line(b"junk\nGET /x HTTP/1.1", true), None);
        assert_eq!(
            find_start_line(b"junk\nlowercase /x HTTP/1.1\r\n", true),
            None
        );
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        assert_eq!(skip_leading_crlf(b"\r\n\r\nGET"), 4);
        assert_eq!(skip_leading_crlf(b"GET"), 0);
        assert_eq!(starts_like_response(b"\r\nHTTP/1.1 200"), Some(true));
        assert_eq!(starts_like_response(b"GET / HTTP/1.1"), Some(false));
        assert_eq!(starts_like_response(b"GE"), None);
    }
}
