//! Message heads (start line + header fields) and the body-length rules of RFC 9112, as small
//! pure functions over bytes.

/// A header field as it was sent (name case kept, value raw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
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
    pub headers: Vec<Header>,
    /// Bytes of the head, up to and including the empty line (a uwsgi packet: its size).
    pub len: usize,
    /// CGI vars of a uwsgi request packet that are not header fields (REMOTE_ADDR, REMOTE_PORT,
    /// SCRIPT_NAME...); empty for HTTP.
    pub cgi: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// Every value of header `name`, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
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

/// Parses a request or response head at the start of `buf`.
///
/// RFC 9112 §2.2: empty lines before a request-line are ignored (callers skip them with
/// [`skip_leading_crlf`]). A status line starts with `HTTP/`; anything else is parsed as a
/// request line.
pub fn parse_head(buf: &[u8]) -> HeadParse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let to_headers = |hs: &[httparse::Header<'_>]| -> Vec<Header> {
        hs.iter()
            .map(|h| Header {
                name: h.name.to_owned(),
                value: h.value.to_vec(),
            })
            .collect()
    };
    if buf.starts_with(b"HTTP/") || (buf.len() < 5 && b"HTTP/".starts_with(buf)) {
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
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
            Err(e) => HeadParse::Invalid(parse_error(e)),
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
            Err(e) => HeadParse::Invalid(parse_error(e)),
        }
    }
}

const fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status code",
        httparse::Error::Token => "invalid token in start line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "not HTTP/1.x",
    }
}

/// RFC 9112 §2.2: a server SHOULD ignore at least one empty line received before the
/// request-line. Returns how many leading CR/LF bytes to skip.
pub fn skip_leading_crlf(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyRule {
    /// No body at all.
    None,
    Length(u64),
    Chunked,
    /// The body runs until the connection closes.
    UntilClose,
    /// The connection stops being HTTP after this message (CONNECT, Upgrade).
    Tunnel,
    /// The framing cannot be trusted: the message is broken.
    Invalid(&'static str),
}

/// The `chunked` coding is the final transfer coding of `te` (a Transfer-Encoding value).
fn chunked_is_last(te: &[u8]) -> bool {
    te.split(|&b| b == b',')
        .map(|c| c.trim_ascii())
        .rfind(|c| !c.is_empty())
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
}

/// RFC 9112 §6.3 rule 5: a Content-Length that is a list of one repeated value is that value;
/// differing values or non-digits are an unrecoverable error.
fn content_length(head: &Head) -> Option<Result<u64, &'static str>> {
    let mut found: Option<u64> = None;
    for v in head.headers_named("content-length") {
        for part in v.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Some(Err("invalid Content-Length"));
            }
            let n = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let Some(n) = n else {
                return Some(Err("invalid Content-Length"));
            };
            match found {
                Some(prev) if prev != n => return Some(Err("conflicting Content-Length")),
                _ => found = Some(n),
            }
        }
    }
    found.map(Ok)
}

/// Body of a request (RFC 9112 §6.3 rules 3-7).
pub fn request_body(head: &Head) -> BodyRule {
    if let Some(te) = head.header("transfer-encoding") {
        // Rule 4: chunked last -> chunked; a request whose final coding is not chunked has no
        // determinable length (the server answers 400 and closes).
        return if chunked_is_last(te) {
            BodyRule::Chunked
        } else {
            BodyRule::Invalid("request Transfer-Encoding without final chunked")
        };
    }
    match content_length(head) {
        // Rule 6.
        Some(Ok(n)) => BodyRule::Length(n),
        // Rule 5.
        Some(Err(e)) => BodyRule::Invalid(e),
        // Rule 7: no Transfer-Encoding and no Content-Length: no body.
        None => BodyRule::None,
    }
}

/// Body of a response to a request with `method` (None when the request is unknown).
pub fn response_body(head: &Head, method: Option<&str>) -> BodyRule {
    let status = head.status().unwrap_or(0);
    // RFC 9110 §15.2.2: 101 Switching Protocols: the connection becomes the new protocol.
    if status == 101 {
        return BodyRule::Tunnel;
    }
    // RFC 9112 §6.3 rule 1: responses to HEAD, and 1xx, 204, 304 end at the head.
    if method == Some("HEAD") || (100..200).contains(&status) || status == 204 || status == 304 {
        return BodyRule::None;
    }
    // Rule 2: a 2xx response to CONNECT switches to a tunnel.
    if method == Some("CONNECT") && (200..300).contains(&status) {
        return BodyRule::Tunnel;
    }
    if let Some(te) = head.header("transfer-encoding") {
        // Rule 4: chunked last -> chunked, otherwise read until the connection closes.
        return if chunked_is_last(te) {
            BodyRule::Chunked
        } else {
            BodyRule::UntilClose
        };
    }
    match content_length(head) {
        Some(Ok(n)) => BodyRule::Length(n),
        Some(Err(e)) => BodyRule::Invalid(e),
        // Rule 8: otherwise the body runs until the connection closes.
        None => BodyRule::UntilClose,
    }
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
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Head {
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
        assert_eq!(h.headers[1].name, "X-Auth-Token");
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
    fn request_body_rules() {
        let r = |s: &[u8]| request_body(&head(s));
        assert_eq!(r(b"GET / HTTP/1.1\r\n\r\n"), BodyRule::None);
        assert_eq!(
            r(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            BodyRule::Length(12)
        );
        assert_eq!(
            r(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"),
            BodyRule::Chunked,
            "Transfer-Encoding overrides Content-Length"
        );
        assert!(matches!(
            r(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            BodyRule::Invalid(_)
        ));
        assert_eq!(
            r(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            BodyRule::Length(5)
        );
        assert!(matches!(
            r(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            BodyRule::Invalid("conflicting Content-Length")
        ));
        assert!(matches!(
            r(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            BodyRule::Invalid("invalid Content-Length")
        ));
    }

    #[test]
    fn response_body_rules() {
        let r = |s: &[u8], m: Option<&str>| response_body(&head(s), m);
        let ok_len = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(r(ok_len, Some("GET")), BodyRule::Length(10));
        assert_eq!(
            r(ok_len, Some("HEAD")),
            BodyRule::None,
            "HEAD: no body whatever it says"
        );
        assert_eq!(
            r(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                Some("DELETE")
            ),
            BodyRule::None
        );
        assert_eq!(
            r(b"HTTP/1.1 304 Not Modified\r\n\r\n", Some("GET")),
            BodyRule::None
        );
        assert_eq!(
            r(b"HTTP/1.1 100 Continue\r\n\r\n", Some("PUT")),
            BodyRule::None
        );
        assert_eq!(
            r(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                Some("GET")
            ),
            BodyRule::Tunnel
        );
        assert_eq!(
            r(
                b"HTTP/1.1 200 Connection established\r\n\r\n",
                Some("CONNECT")
            ),
            BodyRule::Tunnel
        );
        assert_eq!(
            r(
                b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n",
                Some("CONNECT")
            ),
            BodyRule::Length(0)
        );
        assert_eq!(
            r(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some("GET")
            ),
            BodyRule::Chunked
        );
        assert_eq!(
            r(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Some("GET")
            ),
            BodyRule::UntilClose
        );
        assert_eq!(
            r(b"HTTP/1.0 200 OK\r\n\r\n", Some("GET")),
            BodyRule::UntilClose
        );
        assert_eq!(r(ok_len, None), BodyRule::Length(10));
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
