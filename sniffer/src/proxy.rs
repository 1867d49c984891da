//! Reverse proxies (devstack's Apache in front of keystone and glance): which processes are
//! proxies, and whether a request a proxy sent upstream is the one a client sent it.
//!
//! A proxy is a hop, not a participant: the diagram shows `openstack->>keystone`, the request
//! as the client sent it, and the proxy's upstream exchange folds into that one (unless
//! `--show-proxies`).
use std::net::SocketAddr;

use crate::{
    events::Endpoint,
    http::head::{Head, StartLine},
};

/// Process names taken for reverse proxies without being told.
pub const KNOWN: &[&str] = &["apache2", "httpd", "nginx", "haproxy"];

#[derive(Clone, Debug)]
pub struct Proxies {
    /// More names, from `--proxy NAME`.
    pub extra: Vec<String>,
    /// Fold a proxy's upstream hop into the client's exchange (no `--show-proxies`).
    pub fold: bool,
}

impl Default for Proxies {
    fn default() -> Self {
        Self {
            extra: Vec::new(),
            fold: true,
        }
    }
}

impl Proxies {
    pub fn is_proxy(&self, name: &str) -> bool {
        KNOWN.contains(&name) || self.extra.iter().any(|n| n == name)
    }
}

/// How sure a pairing of a client's request with a proxy's upstream request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Match {
    /// Same method, the upstream path is the client's with a prefix stripped (or the same).
    Weak,
    /// The upstream request names the client's socket (uwsgi REMOTE_ADDR and REMOTE_PORT).
    Strong,
}

fn target(h: &Head) -> Option<(&str, &str)> {
    match &h.start {
        StartLine::Request { method, target, .. } => Some((method, target)),
        StartLine::Response { .. } => None,
    }
}

/// The original client's socket address a proxy passed on: uwsgi REMOTE_ADDR + REMOTE_PORT
/// (RFC 3875 §4.1.8; REMOTE_PORT is the common extension). `X-Forwarded-For` has no port, so
/// it cannot name a socket.
pub fn forwarded_client(upstream: &Head) -> Option<SocketAddr> {
    let ip = upstream.cgi_var("REMOTE_ADDR")?.parse().ok()?;
    let port = upstream.cgi_var("REMOTE_PORT")?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// Whether `upstream`, sent by a proxy, forwards `client_req`, which a client at `client` sent
/// the proxy. A proxy keeps the method and query and may strip a path prefix (`ProxyPass
/// /image http://127.0.0.1:60999`: `/image/v2/images` -> `/v2/images`).
pub fn same_request(client_req: &Head, upstream: &Head, client: &Endpoint) -> Option<Match> {
    let (m1, t1) = target(client_req)?;
    let (m2, t2) = target(upstream)?;
    if m1 != m2 {
        return None;
    }
    if let Some(addr) = forwarded_client(upstream)
        && let Endpoint::Inet(c) = client
    {
        return (addr == *c).then_some(Match::Strong);
    }
    let (p1, q1) = t1.split_once('?').unwrap_or((t1, ""));
    let (p2, q2) = t2.split_once('?').unwrap_or((t2, ""));
    if q1 != q2 {
        return None;
    }
    let (p1, p2) = (p1.trim_end_matches('/'), p2.trim_end_matches('/'));
    let ok = if p2.is_empty() {
        // The proxied root: the client asked for the prefix itself (`/image`).
        p1.matches('/').count() <= 1
    } else {
        p1.ends_with(p2) && (p1.len() == p2.len() || p2.starts_with('/'))
    };
    ok.then_some(Match::Weak)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{
        head::{HeadParse, parse_head},
        uwsgi,
    };

    fn http(raw: &str) -> Head {
        match parse_head(raw.as_bytes()) {
            HeadParse::Complete(h) => h,
            other => panic!("{other:?}"),
        }
    }

    fn ep(s: &str) -> Endpoint {
        Endpoint::Inet(s.parse().unwrap())
    }

    #[test]
    fn known_and_named_proxies() {
        let p = Proxies {
            extra: vec!["envoy".into()],
            fold: true,
        };
        assert!(p.is_proxy("apache2") && p.is_proxy("nginx") && p.is_proxy("envoy"));
        assert!(!p.is_proxy("keystone"));
    }

    #[test]
    fn http_proxy_with_a_stripped_prefix() {
        let c = ep("127.0.0.1:40000");
        let client = http("GET /image/v2/images?limit=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let up = http("GET /v2/images?limit=2 HTTP/1.1\r\nHost: 127.0.0.1:60999\r\n\r\n");
        assert_eq!(same_request(&client, &up, &c), Some(Match::Weak));
        let other_query = http("GET /v2/images?limit=3 HTTP/1.1\r\n\r\n");
        assert_eq!(same_request(&client, &other_query, &c), None);
        let other_method = http("POST /v2/images?limit=2 HTTP/1.1\r\n\r\n");
        assert_eq!(same_request(&client, &other_method, &c), None);
        // `/images` is not a path suffix of `/image/v2/images` at a segment boundary... but
        // `/v2/images` is; `2/images` is not a path.
        let partial = http("GET 2/images?limit=2 HTTP/1.1\r\n\r\n");
        assert_eq!(same_request(&client, &partial, &c), None);
        // The prefix itself goes to the upstream root.
        let root = http("GET /image HTTP/1.1\r\n\r\n");
        let up_root = http("GET / HTTP/1.1\r\n\r\n");
        assert_eq!(same_request(&root, &up_root, &c), Some(Match::Weak));
        let deep = http("GET /image/v2 HTTP/1.1\r\n\r\n");
        assert_eq!(same_request(&deep, &up_root, &c), None);
    }

    #[test]
    fn uwsgi_upstream_names_the_client_socket() {
        let client = http("POST /identity/v3/auth/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let HeadParse::Complete(up) =
            uwsgi::parse_packet(&uwsgi::tests::packet(uwsgi::tests::KEYSTONE_POST))
        else {
            panic!()
        };
        assert_eq!(
            forwarded_client(&up),
            Some("127.0.0.1:40312".parse().unwrap())
        );
        assert_eq!(
            same_request(&client, &up, &ep("127.0.0.1:40312")),
            Some(Match::Strong)
        );
        // Same method and path from another client socket: not this one.
        assert_eq!(same_request(&client, &up, &ep("127.0.0.1:40313")), None);
        // Client address unknown: the path decides.
        assert_eq!(
            same_request(&client, &up, &Endpoint::Unknown),
            Some(Match::Weak)
        );
    }
}
