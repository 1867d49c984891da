//! Message heads (start line + header fields, RFC 9112 §2-5) and finding the next start line,
//! as small pure functions over bytes. How long a body is: [`super::framing`].

/// A header field as it was sent (name case kept, value raw).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

/// A head's header fields, in order, in one buffer: each field is its name's length and its
/// value's length (`u32`s) then its name and its value. A message has a dozen fields and they
/// are read in order (a lookup is a walk): one allocation for them all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    buf: Vec<u8>,
    count: usize,
}

/// Bytes before each field's name: the two lengths.
const FIELD_LENGTHS: usize = 8;

impl Fields {
    /// Room for `fields` fields of `bytes` bytes of names and values in all.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes + fields * FIELD_LENGTHS),
            count: 0,
        }
    }

    #[inline]
    pub fn push(&mut self, name: &str, value: &[u8]) {
        // A head is at most 64 KiB (MAX_HEAD), a uwsgi packet too: lengths fit a u32.
        let mut lengths = [0; FIELD_LENGTHS];
        lengths[..4].copy_from_slice(&(name.len() as u32).to_ne_bytes());
        lengths[4..].copy_from_slice(&(value.len() as u32).to_ne_bytes());
        self.buf.extend_from_slice(&lengths);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(value);
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
            // SAFETY: `push` copied the name whole from a `&str`, and each field's lengths
            // fall on its name's and its value's ends.
            let name = unsafe { std::str::from_utf8_unchecked(name) };
            Header { name, value }
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
        let name = name.as_bytes();
        let mut rest = self.buf.as_slice();
        while let Some((n, value, after)) = split_field(rest) {
            if n.eq_ignore_ascii_case(name) {
                return Some(value);
            }
            rest = after;
        }
        None
    }

    /// Each field's name and value bytes, in order.
    fn raw(&self) -> RawFields<'_> {
        RawFields { rest: &self.buf }
    }

    /// RFC 9112 §5.2: a recipient of a folded response field replaces each obs-fold with SP
    /// before interpreting it (only a folded value holds CR or LF; names cannot).
    fn unfold(&mut self) {
        // A length's bytes can be CR or LF too: the first check only rules the walk out.
        if memchr::memchr2(b'\r', b'\n', &self.buf).is_none() {
            return;
        }
        let mut at = 0;
        while let Some((lengths, _)) = self.buf[at..].split_first_chunk::<FIELD_LENGTHS>() {
            let (name, value) = field_lengths(lengths);
            let end = (at + FIELD_LENGTHS + name + value).min(self.buf.len());
            let value_at = (at + FIELD_LENGTHS + name).min(end);
            for b in &mut self.buf[value_at..end] {
                if *b == b'\r' || *b == b'\n' {
                    *b = b' ';
                }
            }
            at = end;
        }
    }
}

/// A field's name and value lengths.
#[inline]
fn field_lengths(lengths: &[u8; FIELD_LENGTHS]) -> (usize, usize) {
    let [n0, n1, n2, n3, v0, v1, v2, v3] = *lengths;
    (
        u32::from_ne_bytes([n0, n1, n2, n3]) as usize,
        u32::from_ne_bytes([v0, v1, v2, v3]) as usize,
    )
}

/// The first field of `buf` (its name and its value) and the fields after it; None at the end.
#[inline]
fn split_field(buf: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (lengths, rest) = buf.split_first_chunk::<FIELD_LENGTHS>()?;
    let (name, value) = field_lengths(lengths);
    let (name, rest) = rest.split_at_checked(name)?;
    let (value, rest) = rest.split_at_checked(value)?;
    Some((name, value, rest))
}

struct RawFields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RawFields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (name, value, rest) = split_field(self.rest)?;
        self.rest = rest;
        Some((name, value))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: String,
        target: String,
        /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
        version: u8,
    },
    Response {
        status: u16,
        reason: String,
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

fn to_headers(hs: &[httparse::Header<'_>]) -> Fields {
    let bytes = hs.iter().map(|h| h.name.len() + h.value.len()).sum();
    let mut fields = Fields::with_capacity(hs.len(), bytes);
    for h in hs {
        fields.push(h.name, h.value);
    }
    fields.unfold();
    fields
}

/// Parses a request or response head at the start of `buf`.
///
/// RFC 9112 §2.2: empty lines before a request-line are ignored (callers skip them with
/// [`skip_leading_crlf`]). A status line starts with `HTTP/`; anything else is parsed as a
/// request line. A bare LF ends a line as CRLF does (§2.2 lets a recipient accept it); what
/// was accepted that way is told by [`lenient_notes`].
pub fn parse_head(buf: &[u8]) -> HeadParse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if buf.starts_with(b"HTTP/") || (buf.len() < 5 && b"HTTP/".starts_with(buf)) {
        let mut resp = httparse::Response::new(&mut headers);
        match response_config().parse_response(&mut resp, buf) {
            Ok(httparse::Status::Complete(len)) => HeadParse::Complete(Head {
                start: StartLine::Response {
                    status: resp.code.unwrap_or(0),
                    reason: resp.reason.unwrap_or("").to_owned(),
                    version: resp.version.unwrap_or(1),
                },
                headers: to_headers(resp.headers),
                len,
                cgi: Vec::new(),
            }),
            Ok(httparse::Status::Partial) => HeadParse::Partial,
            Err(e) => HeadParse::Invalid(parse_error(e, buf)),
        }
    } else {
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => HeadParse::Complete(Head {
                start: StartLine::Request {
                    method: req.method.unwrap_or("").to_owned(),
                    target: req.path.unwrap_or("").to_owned(),
                    version: req.version.unwrap_or(1),
                },
                headers: to_headers(req.headers),
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
    // One pass over the line ends (memchr): a bare LF, or a line that starts with SP/HTAB
    // after the start line (obs-fold).
    let mut bare_lf = false;
    let mut fold = false;
    for i in memchr::memchr_iter(b'\n', head_bytes) {
        bare_lf |= i == 0 || head_bytes[i - 1] != b'\r';
        fold |= matches!(head_bytes.get(i + 1), Some(b' ' | b'\t'));
        if bare_lf && fold {
            break;
        }
    }
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
    fn unfolding_leaves_lengths_that_read_as_cr_or_lf_alone() {
        // Field lengths of 10 and 13 are an LF and a CR byte in the fields' buffer: only the
        // folded value's line break becomes SP.
        let raw = b"HTTP/1.1 200 OK\r\nX-Ten: 0123456789\r\nX-Thirteen-Ab: 0123456789abc\r\nX-Fold: a\r\n b\r\n\r\n";
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
