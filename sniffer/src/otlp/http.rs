//! A small HTTP/1.1 client for OTLP/HTTP: one POST per connection (`Connection: close`),
//! every step bounded in time, the answer framed by sniffer's own RFC 9112 rules
//! ([`crate::http`]). Plain HTTP only: a collector on the host forwards over TLS if needed.
use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    time::{Duration, Instant},
};

use crate::http::{
    chunked::Chunked,
    framing::{BodyRule, response_body},
    head::{HeadParse, parse_head},
};

/// Bytes of an answer read at most (an OTLP answer is a few bytes).
const MAX_REPLY: usize = 1 << 20;

/// Where spans go: `http://host:port/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The request target, `/v1/traces` unless the URL names another path.
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error(
        "{0}: only http:// is supported (OTLP over plain HTTP); send to a local OpenTelemetry \
         Collector to forward over TLS"
    )]
    Scheme(String),
    #[error("{0}: no host in the URL")]
    Host(String),
    #[error("{0}: the port is not a number from 1 to 65535")]
    Port(String),
}

impl Endpoint {
    /// `http://host[:port][/path]`. A URL without a path (or `/`) gets OTLP's `/v1/traces`, as
    /// an SDK's OTEL_EXPORTER_OTLP_ENDPOINT does; any other path is used as it is.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| UrlError::Scheme(url.to_owned()))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, p) = v6
                    .split_once(']')
                    .ok_or_else(|| UrlError::Host(url.to_owned()))?;
                (h, p.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.is_empty() || host.contains('@') {
            return Err(UrlError::Host(url.to_owned()));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| UrlError::Port(url.to_owned()))?,
        };
        let path = match path.split('#').next().unwrap_or("") {
            "" | "/" => "/v1/traces".to_owned(),
            p if p.starts_with('?') => format!("/v1/traces{p}"),
            p => p.to_owned(),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// The backend's answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// `Retry-After` in seconds, when given.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not an HTTP answer: {0}")]
    Malformed(&'static str),
    #[error("the answer is larger than {MAX_REPLY} bytes")]
    TooLarge,
}

fn left(deadline: Instant, limit: Duration) -> Result<Duration, HttpError> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(HttpError::Timeout(limit))
    } else {
        Ok(d)
    }
}

/// POSTs `body` as `content_type`; the whole exchange takes `limit` at most.
pub fn post(
    ep: &Endpoint,
    content_type: &str,
    body: &[u8],
    limit: Duration,
) -> Result<Reply, HttpError> {
    let deadline = Instant::now() + limit;
    let addrs: Vec<SocketAddr> = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(|_| HttpError::Resolve(ep.host.clone()))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, left(deadline, limit)?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut s) = stream else {
        return Err(match last {
            Some(e) => HttpError::Connect(ep.authority(), e),
            None => HttpError::Resolve(ep.host.clone()),
        });
    };
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(left(deadline, limit)?))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sniffer/{}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        ep.path,
        ep.authority(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).map_err(|e| timed_out(e, limit))?;
    read_reply(&mut s, deadline, limit)
}

fn timed_out(e: io::Error, limit: Duration) -> HttpError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout(limit),
        _ => HttpError::Io(e),
    }
}

/// Reads until the answer is framed whole (or the peer closes, for a body that runs to the
/// close).
fn read_reply(s: &mut TcpStream, deadline: Instant, limit: Duration) -> Result<Reply, HttpError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    let mut fill = |buf: &mut Vec<u8>, eof: &mut bool| -> Result<(), HttpError> {
        s.set_read_timeout(Some(left(deadline, limit)?))?;
        let n = s.read(&mut chunk).map_err(|e| timed_out(e, limit))?;
        if n == 0 {
            *eof = true;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REPLY {
            return Err(HttpError::TooLarge);
        }
        Ok(())
    };
    let head = loop {
        match parse_head(&buf) {
            HeadParse::Complete(h) if h.status().is_some_and(|s| s >= 200) => break h,
            // An interim 1xx: skip it.
            HeadParse::Complete(h) => {
                buf.drain(..h.len);
            }
            HeadParse::Partial if !eof => fill(&mut buf, &mut eof)?,
            HeadParse::Partial => return Err(HttpError::Malformed("the answer ended early")),
            HeadParse::Invalid(why) => return Err(HttpError::Malformed(why)),
        }
    };
    let status = head.status().unwrap_or(0);
    let retry_after = head
        .header("retry-after")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut rest = buf.split_off(head.len);
    let body = match response_body(&head, Some("POST")).rule {
        BodyRule::None | BodyRule::Tunnel => Vec::new(),
        BodyRule::Length(n) => {
            let n = usize::try_from(n).map_err(|_| HttpError::TooLarge)?;
            if n > MAX_REPLY {
                return Err(HttpError::TooLarge);
            }
            while rest.len() < n && !eof {
                fill(&mut rest, &mut eof)?;
            }
            if rest.len() < n {
                return Err(HttpError::Malformed("the answer ended early"));
            }
            rest.truncate(n);
            rest
        }
        BodyRule::Chunked => {
            let mut dec = Chunked::new();
            let mut body = Vec::new();
            let mut at = 0;
            loop {
                let fed = dec
                    .feed(&rest[at..])
                    .map_err(|_| HttpError::Malformed("bad chunked coding"))?;
                for (a, b) in fed.data {
                    body.extend_from_slice(&rest[at + a..at + b]);
                }
                at += fed.consumed;
                if fed.done {
                    break body;
                }
                if eof {
                    return Err(HttpError::Malformed("the answer ended early"));
                }
                fill(&mut rest, &mut eof)?;
            }
        }
        BodyRule::UntilClose => {
            while !eof {
                fill(&mut rest, &mut eof)?;
            }
            rest
        }
        BodyRule::Invalid(why) => return Err(HttpError::Malformed(why)),
    };
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, thread};

    use super::*;

    #[test]
    fn urls() {
        let ep = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.path.as_str()),
            ("127.0.0.1", 4318, "/v1/traces")
        );
        assert_eq!(ep.to_string(), "http://127.0.0.1:4318/v1/traces");
        let ep = Endpoint::parse("http://[::1]/otlp/v1/traces").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.path.as_str()),
            ("::1", 80, "/otlp/v1/traces")
        );
        assert_eq!(ep.to_string(), "http://[::1]/otlp/v1/traces");
        assert!(matches!(
            Endpoint::parse("https://x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            Endpoint::parse("x:4318"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            Endpoint::parse("http://:1/"),
            Err(UrlError::Host(_))
        ));
        assert!(matches!(
            Endpoint::parse("http://h:0"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            Endpoint::parse("http://h:99999"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            Endpoint::parse("http://u@h"),
            Err(UrlError::Host(_))
        ));
    }

    /// A one-shot server on loopback that answers `answer` after reading the request.
    fn serve(answer: &'static [u8]) -> (Endpoint, thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            while !got.ends_with(b"body!") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            s.write_all(answer).unwrap();
            got
        });
        (
            Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            t,
        )
    }

    #[test]
    fn a_post_and_its_answers() {
        let (ep, t) = serve(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcXYZ",
        );
        let r = post(
            &ep,
            "application/x-protobuf",
            b"body!",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let sent = t.join().unwrap();
        let head = String::from_utf8_lossy(&sent);
        assert!(
            head.starts_with("POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{head}"
        );
        assert!(head.contains("\r\nContent-Type: application/x-protobuf\r\nContent-Length: 5\r\n"));
        assert!(head.ends_with("\r\n\r\nbody!"));

        let (ep, _t) = serve(b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n");
        let r = post(&ep, "x", b"body!", Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(r.body, b"no");

        let (ep, _t) = serve(b"SSH-2.0-OpenSSH\r\n");
        assert!(matches!(
            post(&ep, "x", b"body!", Duration::from_secs(5)),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn silence_and_refusal_are_bounded_errors() {
        // Accepts, reads, never answers: the time limit ends it.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = Endpoint::parse(&format!(
            "http://127.0.0.1:{}",
            l.local_addr().unwrap().port()
        ))
        .unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            post(&ep, "x", b"body!", Duration::from_millis(300)),
            Err(HttpError::Timeout(_))
        ));
        assert!(t0.elapsed() < Duration::from_secs(3));
        drop(l);
        assert!(matches!(
            post(&ep, "x", b"body!", Duration::from_secs(2)),
            Err(HttpError::Connect(..))
        ));
    }
}
