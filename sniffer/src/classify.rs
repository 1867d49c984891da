//! Telling early that a connection does not speak HTTP/1.x, and what it speaks when that is
//! obvious: a traced service's MySQL, memcached, Redis and AMQP connections are set aside at
//! their first bytes, so the kernel sends nothing more of them.
//!
//! HTTP/1.x starts with the client's request line (RFC 9112 §3: a method token, SP) and the
//! server's status line (§4: `HTTP/1.x`); a uwsgi packet (mod_proxy_uwsgi) starts with its
//! modifier bytes; TLS with a handshake record. Anything else cannot become HTTP: a server that
//! speaks first, a binary first byte, a first line that is neither request nor status line.

use std::fmt;

/// What a connection that is not HTTP speaks, where its first bytes say so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Mysql,
    Redis,
    Memcached,
    Amqp,
    Tls,
    Other,
}

impl Protocol {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Mysql => "mysql",
            Self::Redis => "redis",
            Self::Memcached => "memcached",
            Self::Amqp => "amqp",
            Self::Tls => "tls",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The verdict on a stream's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Too few bytes to tell yet.
    Undecided,
    /// HTTP (or a uwsgi packet, or TLS handled elsewhere) may follow.
    MaybeHttp,
    /// Cannot be HTTP/1.x.
    NotHttp(Protocol),
}

/// Which side of the connection wrote the bytes: the one that sends requests (the client),
/// or the one that answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Requests,
    Responses,
}

/// Bytes looked at, at most: a request line's method is short.
const LOOK: usize = 24;

/// RFC 9110 §5.6.2 tchar.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Memcached's text commands (protocol.txt), lower case, followed by a space or CRLF.
const MEMCACHED: &[&str] = &[
    "get",
    "gets",
    "gat",
    "gats",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "delete",
    "incr",
    "decr",
    "touch",
    "stats",
    "version",
    "flush_all",
    "verbosity",
    "quit",
    "mn",
    "mg",
    "ms",
    "md",
    "ma",
];

/// The verdict on the first bytes of a stream written by `side`. `first_of_connection`: no
/// byte went the other way before (a server that speaks first is not HTTP).
pub fn first_bytes(bytes: &[u8], side: Side, first_of_connection: bool) -> Verdict {
    let b = &bytes[..bytes.len().min(LOOK)];
    let Some(&c0) = b.first() else {
        return Verdict::Undecided;
    };
    // TLS record header (RFC 8446 §5.1).
    if matches!(b, [20..=23, 3, 0..=4, ..]) {
        return Verdict::NotHttp(Protocol::Tls);
    }
    if b.len() >= 5 && &b[..5] == b"AMQP\0" {
        return Verdict::NotHttp(Protocol::Amqp);
    }
    match side {
        Side::Responses => {
            // The MySQL server's greeting, first on the connection: a 3-byte length,
            // sequence 0, protocol version 10.
            if b.len() >= 5 && b[3] == 0 && b[4] == 10 && first_of_connection {
                return Verdict::NotHttp(Protocol::Mysql);
            }
            if b"HTTP/1.".starts_with(&b[..b.len().min(7)]) {
                return if b.len() >= 7 {
                    Verdict::MaybeHttp
                } else {
                    Verdict::Undecided
                };
            }
            // A server speaking before any request, or answering with no status line.
            Verdict::NotHttp(guess(b))
        }
        Side::Requests => {
            // mod_proxy_uwsgi's packet: modifier1 0, a little-endian size, modifier2 0.
            if c0 == 0 {
                return if b.len() < 4 {
                    Verdict::Undecided
                } else if b[3] == 0 {
                    Verdict::MaybeHttp
                } else {
                    Verdict::NotHttp(Protocol::Other)
                };
            }
            if matches!(c0, b'*' | b'$' | b'+' | b'-' | b':') {
                return Verdict::NotHttp(Protocol::Redis);
            }
            if matches!(c0, 0x80 | 0x81) {
                return Verdict::NotHttp(Protocol::Memcached);
            }
            // A request line: a method token, then a space.
            let token = b.iter().take_while(|&&x| tchar(x)).count();
            if token == b.len() {
                return if token >= LOOK {
                    Verdict::NotHttp(Protocol::Other)
                } else {
                    Verdict::Undecided
                };
            }
            if token == 0 || b[token] != b' ' {
                return Verdict::NotHttp(guess(b));
            }
            let word = std::str::from_utf8(&b[..token]).unwrap_or("");
            // HTTP methods are case-sensitive and, registered or not, upper case in practice;
            // memcached's commands are lower case.
            if MEMCACHED.contains(&word) {
                return Verdict::NotHttp(Protocol::Memcached);
            }
            Verdict::MaybeHttp
        }
    }
}

/// The protocol a well-known service port speaks (MySQL/MariaDB, Redis, memcached, AMQP), for
/// connections that began before tracing: their first bytes seen may be the middle of
/// anything, so they are set aside only on such a port or with [`unmistakable`] bytes.
pub const fn by_port(port: u16) -> Option<Protocol> {
    match port {
        3306 => Some(Protocol::Mysql),
        6379 => Some(Protocol::Redis),
        11211 => Some(Protocol::Memcached),
        5671 | 5672 => Some(Protocol::Amqp),
        _ => None,
    }
}

/// Bytes that start a message of a protocol other than HTTP beyond doubt, wherever they fall:
/// a Redis array (`*2\r\n$`), AMQP's header, a memcached command with its key.
pub fn unmistakable(bytes: &[u8]) -> bool {
    let b = &bytes[..bytes.len().min(LOOK)];
    if b.starts_with(b"AMQP\0") {
        return true;
    }
    if let Some(rest) = b.strip_prefix(b"*") {
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        return digits > 0 && rest[digits..].starts_with(b"\r\n$");
    }
    let word_len = b
        .iter()
        .take_while(|c| c.is_ascii_lowercase() || **c == b'_')
        .count();
    word_len > 0
        && b.get(word_len) == Some(&b' ')
        && std::str::from_utf8(&b[..word_len]).is_ok_and(|w| MEMCACHED.contains(&w))
}

/// The protocol of bytes that are not HTTP, where obvious.
fn guess(b: &[u8]) -> Protocol {
    match b.first() {
        Some(b'*' | b'$' | b'+' | b'-' | b':') => Protocol::Redis,
        Some(0x80 | 0x81) => Protocol::Memcached,
        _ if b.len() >= 5 && b[3] <= 1 && b[4] == 10 => Protocol::Mysql,
        _ => {
            let line = b.split(|&x| x == b' ' || x == b'\r').next().unwrap_or(b);
            let word = std::str::from_utf8(line).unwrap_or("");
            if MEMCACHED.contains(&word) || word == "VALUE" || word == "STORED" || word == "END" {
                Protocol::Memcached
            } else {
                Protocol::Other
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(b: &[u8]) -> Verdict {
        first_bytes(b, Side::Requests, true)
    }

    fn resp(b: &[u8], first: bool) -> Verdict {
        first_bytes(b, Side::Responses, first)
    }

    #[test]
    fn http_requests_and_responses_may_follow() {
        assert_eq!(req(b"GET / HTTP/1.1\r\n"), Verdict::MaybeHttp);
        assert_eq!(req(b"M-SEARCH * HTTP/1.1\r\n"), Verdict::MaybeHttp);
        assert_eq!(req(b"PROPFIND /x HTTP/1.1"), Verdict::MaybeHttp);
        assert_eq!(resp(b"HTTP/1.1 200 OK\r\n", false), Verdict::MaybeHttp);
        // uwsgi: modifier1 0, size 0x0123, modifier2 0.
        assert_eq!(req(b"\x00\x23\x01\x00\x09\x00"), Verdict::MaybeHttp);
    }

    #[test]
    fn too_few_bytes_wait() {
        assert_eq!(req(b""), Verdict::Undecided);
        assert_eq!(req(b"GE"), Verdict::Undecided);
        assert_eq!(resp(b"HTT", false), Verdict::Undecided);
        assert_eq!(req(b"\x00\x23"), Verdict::Undecided);
    }

    #[test]
    fn the_issues_examples_are_set_aside_with_their_protocol() {
        assert_eq!(
            req(b"*3\r\n$3\r\nSET\r\n"),
            Verdict::NotHttp(Protocol::Redis)
        );
        assert_eq!(req(b"get key\r\n"), Verdict::NotHttp(Protocol::Memcached));
        assert_eq!(
            req(b"set k 0 0 5\r\nhello\r\n"),
            Verdict::NotHttp(Protocol::Memcached)
        );
        assert_eq!(
            req(b"AMQP\x00\x00\x09\x01"),
            Verdict::NotHttp(Protocol::Amqp)
        );
        // MySQL 8's greeting: length 0x4a, seq 0, protocol 10, "8.0.36\0".
        assert_eq!(
            resp(b"\x4a\x00\x00\x00\x0a8.0.36\x00", true),
            Verdict::NotHttp(Protocol::Mysql)
        );
        assert_eq!(
            req(&[0x80, 0x00, 0x00, 0x03]),
            Verdict::NotHttp(Protocol::Memcached)
        );
        assert_eq!(req(&[22, 3, 1, 2, 0]), Verdict::NotHttp(Protocol::Tls));
    }

    #[test]
    fn a_server_speaking_first_or_a_non_status_line_is_not_http() {
        assert_eq!(
            resp(b"220 smtp.example ESMTP\r\n", true),
            Verdict::NotHttp(Protocol::Other)
        );
        assert_eq!(resp(b"+OK\r\n", false), Verdict::NotHttp(Protocol::Redis));
        assert_eq!(
            resp(b"VALUE k 0 5\r\n", false),
            Verdict::NotHttp(Protocol::Memcached)
        );
    }

    #[test]
    fn unmistakable_bytes_and_ports() {
        assert!(unmistakable(b"*3\r\n$3\r\nSET\r\n"));
        assert!(unmistakable(b"get some_key\r\n"));
        assert!(unmistakable(b"AMQP\x00\x00\x09\x01"));
        assert!(!unmistakable(b"*not redis"));
        assert!(!unmistakable(b"\x89PNG\r\n"));
        assert!(!unmistakable(b"GET / HTTP/1.1"));
        assert!(!unmistakable(b"getaway"));
        assert_eq!(by_port(3306), Some(Protocol::Mysql));
        assert_eq!(by_port(80), None);
    }

    #[test]
    fn binary_or_malformed_request_lines_are_not_http() {
        assert_eq!(req(b"\x16hello"), Verdict::NotHttp(Protocol::Other));
        assert_eq!(req(b"GET\t/ HTTP/1.1"), Verdict::NotHttp(Protocol::Other));
        assert_eq!(
            req(b"AVERYLONGTOKENWITHOUTANYSPACEATALL"),
            Verdict::NotHttp(Protocol::Other)
        );
        assert_eq!(
            req(&[0x00, 0x01, 0x02, 0x05]),
            Verdict::NotHttp(Protocol::Other)
        );
    }
}
