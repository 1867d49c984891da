//! How long a message's body is (RFC 9112 §6.3), from its head and, for a response, the request
//! it answers: small pure functions over a parsed head.
//!
//! What the RFCs call invalid but can still be framed one way only is framed and said (a note
//! the log and the JSONL show); what cannot be framed breaks the message, as a server would
//! answer 400 and close.
use super::head::Head;

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyRule {
    /// No body at all.
    None,
    Length(u64),
    Chunked,
    /// The body runs until the connection closes.
    UntilClose,
    /// The connection stops being HTTP after this message (a 2xx to CONNECT, 101).
    Tunnel,
    /// The framing cannot be trusted: the message is broken.
    Invalid(&'static str),
}

/// A body rule, with what was read leniently and whether the answer may switch protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub rule: BodyRule,
    /// What the RFCs call invalid in this head that was framed anyway.
    pub note: Option<&'static str>,
    /// A request whose answer may end HTTP on the connection (CONNECT, Upgrade): what the
    /// client sends after it waits for that answer.
    pub switch_on_answer: bool,
}

impl Framing {
    const fn rule(rule: BodyRule) -> Self {
        Self {
            rule,
            note: None,
            switch_on_answer: false,
        }
    }

    const fn noted(rule: BodyRule, note: &'static str) -> Self {
        Self {
            rule,
            note: Some(note),
            switch_on_answer: false,
        }
    }
}

pub const NOTE_TE_AND_CL: &str = "Content-Length beside Transfer-Encoding, which wins (RFC 9112 §6.3: a sender must not send both)";
pub const NOTE_CL_LIST: &str =
    "Content-Length as a list of one repeated value, read as that value (RFC 9110 §8.6)";
pub const NOTE_CHUNKED_TWICE: &str =
    "chunked applied more than once (RFC 9112 §6.1), framed by the outer one";
pub const NOTE_TE_HTTP10: &str = "Transfer-Encoding in an HTTP/1.0 response: faulty framing, read until the connection closes (RFC 9112 §6.1)";
pub const NOTE_CONNECT_CONTENT: &str = "Content-Length or Transfer-Encoding on a CONNECT request, which has no content (RFC 9110 §9.3.6)";

/// The transfer codings of a message: every Transfer-Encoding field line's list, in order, as
/// one list (RFC 9110 §5.3), each coding by its name (RFC 9112 §7: parameters after `;`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Codings {
    /// A Transfer-Encoding field is present (even empty).
    present: bool,
    /// How many times chunked is applied.
    chunked: usize,
    /// The final coding is chunked.
    chunked_last: bool,
}

fn codings(head: &Head) -> Codings {
    let mut c = Codings::default();
    for value in head.headers_named("transfer-encoding") {
        c.present = true;
        for element in value.split(|&b| b == b',') {
            let name = element
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            // RFC 9110 §5.6.1: empty list elements do not count.
            if name.is_empty() {
                continue;
            }
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            c.chunked += usize::from(chunked);
            c.chunked_last = chunked;
        }
    }
    c
}

/// A Content-Length: its value, and whether it came as a list of one repeated value.
#[derive(Debug, PartialEq, Eq)]
struct ContentLength {
    n: u64,
    listed: bool,
}

/// RFC 9110 §8.6 and RFC 9112 §6.3 rule 5: a Content-Length that is a list of one repeated
/// value is that value; differing values or non-digits are an unrecoverable error.
fn content_length(head: &Head) -> Option<Result<ContentLength, &'static str>> {
    let mut found: Option<u64> = None;
    let mut parts = 0;
    for v in head.headers_named("content-length") {
        for part in v.split(|&b| b == b',') {
            let part = part.trim_ascii();
            parts += 1;
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
    found.map(|n| {
        Ok(ContentLength {
            n,
            listed: parts > 1,
        })
    })
}

fn minor_version(head: &Head) -> u8 {
    match head.start {
        super::head::StartLine::Request { version, .. }
        | super::head::StartLine::Response { version, .. } => version,
    }
}

/// Whether the answer to this request may end HTTP on the connection: CONNECT (RFC 9110
/// §9.3.6), or an Upgrade field in HTTP/1.1 (RFC 9110 §7.8: ignored in HTTP/1.0).
pub fn may_switch(head: &Head) -> bool {
    head.method() == Some("CONNECT")
        || (minor_version(head) >= 1 && head.header("upgrade").is_some())
}

/// Body of a request (RFC 9112 §6.3 rules 3-7; RFC 9110 §9.3.6 for CONNECT).
pub fn request_body(head: &Head) -> Framing {
    let te = codings(head);
    let cl = content_length(head);
    let switch_on_answer = may_switch(head);
    let mut f = if head.method() == Some("CONNECT") {
        // RFC 9110 §9.3.6: a CONNECT request has no content, whatever it says; what follows
        // is the tunnel's once a 2xx accepts it.
        if te.present || cl.is_some() {
            Framing::noted(BodyRule::None, NOTE_CONNECT_CONTENT)
        } else {
            Framing::rule(BodyRule::None)
        }
    } else if te.present {
        if minor_version(head) == 0 {
            // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
            Framing::rule(BodyRule::Invalid(
                "Transfer-Encoding in an HTTP/1.0 request",
            ))
        } else if te.chunked > 1 {
            // RFC 9112 §6.1: a sender must not apply chunked more than once.
            Framing::rule(BodyRule::Invalid(
                "request Transfer-Encoding applies chunked more than once",
            ))
        } else if !te.chunked_last {
            // Rule 4: a request whose final coding is not chunked cannot be framed (the
            // server answers 400 and closes).
            Framing::rule(BodyRule::Invalid(
                "request Transfer-Encoding whose final coding is not chunked",
            ))
        } else if cl.is_some() {
            // Rule 3: Transfer-Encoding overrides Content-Length.
            Framing::noted(BodyRule::Chunked, NOTE_TE_AND_CL)
        } else {
            Framing::rule(BodyRule::Chunked)
        }
    } else {
        // Rules 5 and 6; rule 7: neither field, no body.
        by_length(cl, BodyRule::None)
    };
    f.switch_on_answer = switch_on_answer && !matches!(f.rule, BodyRule::Invalid(_));
    f
}

/// Body of a response to a request with `method` (None when the request is unknown).
pub fn response_body(head: &Head, method: Option<&str>) -> Framing {
    let status = head.status().unwrap_or(0);
    // RFC 9110 §15.2.2: 101 Switching Protocols: the connection becomes the new protocol.
    if status == 101 {
        return Framing::rule(BodyRule::Tunnel);
    }
    // RFC 9112 §6.3 rule 1: responses to HEAD, and 1xx, 204, 304 end at the head.
    if method == Some("HEAD") || (100..200).contains(&status) || status == 204 || status == 304 {
        return Framing::rule(BodyRule::None);
    }
    // Rule 2: a 2xx response to CONNECT switches to a tunnel.
    if method == Some("CONNECT") && (200..300).contains(&status) {
        return Framing::rule(BodyRule::Tunnel);
    }
    let te = codings(head);
    let cl = content_length(head);
    if te.present {
        if minor_version(head) == 0 {
            // RFC 9112 §6.1: faulty framing; the connection closes after this message.
            return Framing::noted(BodyRule::UntilClose, NOTE_TE_HTTP10);
        }
        // Rule 4: chunked last -> chunked, otherwise read until the connection closes.
        let rule = if te.chunked_last {
            BodyRule::Chunked
        } else {
            BodyRule::UntilClose
        };
        return if te.chunked > 1 && te.chunked_last {
            Framing::noted(rule, NOTE_CHUNKED_TWICE)
        } else if cl.is_some() {
            Framing::noted(rule, NOTE_TE_AND_CL)
        } else {
            Framing::rule(rule)
        };
    }
    // Rules 5 and 6; rule 8: neither field, the body runs until the connection closes.
    by_length(cl, BodyRule::UntilClose)
}

/// A message without Transfer-Encoding: framed by its Content-Length (RFC 9112 §6.3 rule 6),
/// broken by an invalid one (rule 5), else by `otherwise`.
fn by_length(cl: Option<Result<ContentLength, &'static str>>, otherwise: BodyRule) -> Framing {
    match cl {
        Some(Ok(ContentLength { n, listed: false })) => Framing::rule(BodyRule::Length(n)),
        Some(Ok(ContentLength { n, listed: true })) => {
            Framing::noted(BodyRule::Length(n), NOTE_CL_LIST)
        }
        Some(Err(e)) => Framing::rule(BodyRule::Invalid(e)),
        None => Framing::rule(otherwise),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::tests::head;

    fn req(bytes: &[u8]) -> BodyRule {
        request_body(&head(bytes)).rule
    }

    fn resp(bytes: &[u8], method: Option<&str>) -> BodyRule {
        response_body(&head(bytes), method).rule
    }

    #[test]
    fn request_body_rules() {
        assert_eq!(req(b"GET / HTTP/1.1\r\n\r\n"), BodyRule::None);
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            BodyRule::Length(12)
        );
        let te_cl = head(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(
            request_body(&te_cl),
            Framing::noted(BodyRule::Chunked, NOTE_TE_AND_CL),
            "Transfer-Encoding overrides Content-Length, said"
        );
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            BodyRule::Invalid("request Transfer-Encoding whose final coding is not chunked")
        );
        assert_eq!(
            request_body(&head(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n")),
            Framing::noted(BodyRule::Length(5), NOTE_CL_LIST)
        );
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            BodyRule::Invalid("conflicting Content-Length")
        );
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            BodyRule::Invalid("invalid Content-Length")
        );
    }

    #[test]
    fn transfer_encoding_is_one_list_across_field_lines() {
        // RFC 9110 §5.3: `deflate` then `chunked` on two lines is `deflate, chunked`.
        assert_eq!(
            request_body(&head(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"
            )),
            Framing::rule(BodyRule::Chunked)
        );
        // Chunked not final on a request: broken, never framed as chunked (smuggling).
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: deflate\r\n\r\n"),
            BodyRule::Invalid("request Transfer-Encoding whose final coding is not chunked")
        );
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            BodyRule::Invalid("request Transfer-Encoding applies chunked more than once")
        );
        // Empty elements and parameters do not count; names are case-insensitive.
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip;q=1, ,\r\nTransfer-Encoding: CHUNKED ,\r\n\r\n"),
            BodyRule::Chunked
        );
        // A response with chunked not final is read until the connection closes.
        assert_eq!(
            resp(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
                Some("GET")
            ),
            BodyRule::UntilClose
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some("GET")
            ),
            BodyRule::Chunked
        );
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
        assert_eq!(
            req(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            BodyRule::Invalid("Transfer-Encoding in an HTTP/1.0 request")
        );
        assert_eq!(
            response_body(
                &head(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
                Some("GET")
            ),
            Framing::noted(BodyRule::UntilClose, NOTE_TE_HTTP10)
        );
    }

    #[test]
    fn connect_has_no_content_and_may_switch() {
        let f = request_body(&head(
            b"CONNECT foo.bar.com:443 HTTP/1.1\r\nHost: foo.bar.com:443\r\nContent-Length: 10\r\n\r\n",
        ));
        assert_eq!(
            f,
            Framing {
                rule: BodyRule::None,
                note: Some(NOTE_CONNECT_CONTENT),
                switch_on_answer: true
            }
        );
        let up = request_body(&head(
            b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        ));
        assert_eq!((up.rule, up.switch_on_answer), (BodyRule::None, true));
        // RFC 9110 §7.8: Upgrade in HTTP/1.0 is ignored.
        let old = request_body(&head(b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n"));
        assert!(!old.switch_on_answer);
        assert!(!request_body(&head(b"GET / HTTP/1.1\r\n\r\n")).switch_on_answer);
    }

    #[test]
    fn response_body_rules() {
        let ok_len = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(resp(ok_len, Some("GET")), BodyRule::Length(10));
        assert_eq!(
            resp(ok_len, Some("HEAD")),
            BodyRule::None,
            "HEAD: no body whatever it says"
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                Some("DELETE")
            ),
            BodyRule::None
        );
        assert_eq!(
            resp(b"HTTP/1.1 304 Not Modified\r\n\r\n", Some("GET")),
            BodyRule::None
        );
        assert_eq!(
            resp(b"HTTP/1.1 100 Continue\r\n\r\n", Some("PUT")),
            BodyRule::None
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                Some("GET")
            ),
            BodyRule::Tunnel
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 200 Connection established\r\n\r\n",
                Some("CONNECT")
            ),
            BodyRule::Tunnel
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n",
                Some("CONNECT")
            ),
            BodyRule::Length(0)
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some("GET")
            ),
            BodyRule::Chunked
        );
        assert_eq!(
            resp(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Some("GET")
            ),
            BodyRule::UntilClose
        );
        assert_eq!(
            resp(b"HTTP/1.0 200 OK\r\n\r\n", Some("GET")),
            BodyRule::UntilClose
        );
        assert_eq!(resp(ok_len, None), BodyRule::Length(10));
        assert_eq!(
            response_body(
                &head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
                Some("GET")
            ),
            Framing::noted(BodyRule::Chunked, NOTE_CHUNKED_TWICE)
        );
    }
}
