//! Exchanges as OpenTelemetry spans: a CLIENT span for the caller's end and a SERVER span for
//! the callee's (one of them when only one end was seen), with the HTTP semantic conventions'
//! attributes, and a call a service makes while it serves a request as a child of that
//! request's SERVER span ([`Tracer`]), so a trace has the diagram's shape.
use std::collections::{BTreeMap, HashMap};

use sha2::{Digest as _, Sha256};

use crate::record::{EndRecord, ExchangeRecord};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

/// Who produced a span: a participant on a host (OTLP's resource).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    pub service: String,
    pub host: String,
    pub pid: u32,
}

impl Resource {
    /// `service.name`, `host.name`, `process.pid` (0: not known, left out).
    pub fn attributes(&self) -> Vec<(&'static str, Value)> {
        let mut a = vec![
            ("service.name", Value::Str(self.service.clone())),
            ("host.name", Value::Str(self.host.clone())),
        ];
        if self.pid != 0 {
            a.push(("process.pid", Value::Int(i64::from(self.pid))));
        }
        a
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: StatusCode,
    pub status_message: String,
    pub resource: Resource,
}

/// One end of an exchange, for its span.
#[derive(Clone, Copy, Debug)]
pub struct End<'a> {
    /// The participant's name.
    pub service: &'a str,
    pub host: &'a str,
    pub pid: u32,
    /// When this end saw the request's first byte and the exchange's last (ns since the Unix
    /// epoch).
    pub start_unix_ns: i128,
    pub end_unix_ns: i128,
    /// Its socket's addresses.
    pub socket: Option<&'a EndRecord>,
}

impl<'a> End<'a> {
    /// An end whose times are the record's (a run's record: both ends on one clock).
    pub fn of_record(
        r: &ExchangeRecord,
        service: &'a str,
        host: &'a str,
        socket: Option<&'a EndRecord>,
    ) -> Self {
        let start = r
            .request
            .as_ref()
            .or(r.response.as_ref())
            .map_or(0, |m| m.first_unix_ns);
        let end = r
            .response
            .as_ref()
            .or(r.request.as_ref())
            .map_or(start, |m| m.last_unix_ns());
        Self {
            service,
            host,
            pid: socket.map_or(0, |s| s.pid),
            start_unix_ns: start,
            end_unix_ns: end,
            socket,
        }
    }
}

/// A span's identity in its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub trace: [u8; 16],
    pub client: [u8; 8],
    pub server: [u8; 8],
    /// The SERVER span of the exchange this one was made while serving.
    pub parent: Option<[u8; 8]>,
}

/// `http://host:port/path?q` in parts: (scheme, host, port, path with query).
fn split_url(url: &str) -> (&str, &str, Option<u16>, &str) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let path = if path.is_empty() { "/" } else { path };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (v6, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                (h, p.parse().ok())
            }
            _ => (authority, None),
        }
    };
    (scheme, host, port, path)
}

/// Whether a path segment is an identifier (a UUID, 32 hex digits, `AUTH_` and those, or a
/// number): span names use a template, not every id.
fn is_id(seg: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = seg.len() == 36
        && seg.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let hex32 = |s: &str| s.len() == 32 && hex(s);
    uuid || hex32(seg)
        || seg.strip_prefix("AUTH_").is_some_and(hex32)
        || (!seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()))
}

/// The path without its query and with ids as `{<segment before>_id}` (`{account}` for swift's
/// `AUTH_...`, `{id}` after anything else): a low-cardinality span name.
pub fn route(path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(segs.len());
    for (i, s) in segs.iter().enumerate() {
        if !is_id(s) {
            out.push((*s).to_owned());
            continue;
        }
        let before = i
            .checked_sub(1)
            .map(|j| segs[j])
            .map(|b| b.strip_suffix('s').unwrap_or(b));
        out.push(match before {
            _ if s.starts_with("AUTH_") => "{account}".to_owned(),
            Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_alphabetic() || c == b'_') => {
                format!("{{{b}_id}}")
            }
            _ => "{id}".to_owned(),
        });
    }
    out.join("/")
}

/// The methods HTTP semantic conventions name; others are `_OTHER`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn ns(t: i128) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

/// The spans of an exchange: CLIENT for `client`, SERVER for `server`.
pub fn spans(
    r: &ExchangeRecord,
    ids: &Ids,
    client: Option<End<'_>>,
    server: Option<End<'_>>,
) -> Vec<Span> {
    let (scheme, host, port, path) = split_url(&r.url);
    let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    let method = r.method.as_str();
    let known = METHODS.contains(&method);
    let name = match (method.is_empty(), r.url.is_empty()) {
        (true, _) => "HTTP".to_owned(),
        (false, true) => method.to_owned(),
        (false, false) => format!("{method} {}", route(path)),
    };
    let trouble = if r.response.is_none() {
        Some(if r.orphan {
            "the request was not seen".to_owned()
        } else {
            "no response".to_owned()
        })
    } else {
        r.broken.clone()
    };
    let common = |kind: Kind, end: &End<'_>| {
        let mut a: Vec<(&'static str, Value)> = Vec::new();
        if !method.is_empty() {
            a.push((
                "http.request.method",
                Value::Str(if known { method } else { "_OTHER" }.to_owned()),
            ));
            if !known {
                a.push((
                    "http.request.method_original",
                    Value::Str(method.to_owned()),
                ));
            }
        }
        if !r.url.is_empty() {
            a.push(("url.full", Value::Str(r.url.clone())));
            a.push(("server.address", Value::Str(host.to_owned())));
            a.push(("server.port", Value::Int(i64::from(port))));
        }
        if let Some(s) = r.status {
            a.push(("http.response.status_code", Value::Int(i64::from(s))));
        }
        if kind == Kind::Server && !r.url.is_empty() {
            let (p, q) = path.split_once('?').unwrap_or((path, ""));
            a.push(("url.path", Value::Str(p.to_owned())));
            if !q.is_empty() {
                a.push(("url.query", Value::Str(q.to_owned())));
            }
            a.push(("url.scheme", Value::Str(scheme.to_owned())));
        }
        // The socket's other end: the server's address for a client, the client's for a
        // server (unix sockets have none).
        if let Some(peer) = end
            .socket
            .and_then(|s| s.peer.parse::<std::net::SocketAddr>().ok())
        {
            let (ak, pk) = match kind {
                Kind::Client => ("network.peer.address", "network.peer.port"),
                Kind::Server => ("client.address", "client.port"),
            };
            a.push((ak, Value::Str(peer.ip().to_string())));
            a.push((pk, Value::Int(i64::from(peer.port()))));
        }
        if kind == Kind::Client {
            a.push(("peer.service", Value::Str(r.to.clone())));
        }
        // The resource's names again, for backends that keep no resource (Phoenix).
        a.push(("service.name", Value::Str(end.service.to_owned())));
        a.push(("host.name", Value::Str(end.host.to_owned())));
        let numbers = [
            ("sniffer.log.request", &r.request),
            ("sniffer.log.response", &r.response),
        ];
        for (k, m) in numbers {
            if let Some(n) = m.as_ref().and_then(|m| m.number) {
                a.push((k, Value::Int(i64::try_from(n).unwrap_or(i64::MAX))));
            }
        }
        // HTTP semantic conventions: 4xx is an error for the client, not the server.
        let error = match (kind, r.status) {
            _ if trouble.is_some() => Some(trouble.clone().unwrap_or_default()),
            (Kind::Client, Some(s)) if s >= 400 => Some(String::new()),
            (Kind::Server, Some(s)) if s >= 500 => Some(String::new()),
            _ => None,
        };
        if error.is_some() {
            let what = match (r.status, &trouble) {
                (Some(s), None) => s.to_string(),
                (_, Some(t)) if t == "no response" => "no_response".to_owned(),
                _ => "broken".to_owned(),
            };
            a.push(("error.type", Value::Str(what)));
        }
        Span {
            trace_id: ids.trace,
            span_id: match kind {
                Kind::Client => ids.client,
                Kind::Server => ids.server,
            },
            parent: None,
            name: name.clone(),
            kind,
            start_unix_ns: ns(end.start_unix_ns),
            end_unix_ns: ns(end.end_unix_ns.max(end.start_unix_ns)),
            attributes: a,
            status: if error.is_some() {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: error.unwrap_or_default(),
            resource: Resource {
                service: end.service.to_owned(),
                host: end.host.to_owned(),
                pid: end.pid,
            },
        }
    };
    let mut out = Vec::new();
    if let Some(c) = &client {
        let mut s = common(Kind::Client, c);
        s.parent = ids.parent;
        out.push(s);
    }
    if let Some(sv) = &server {
        let mut s = common(Kind::Server, sv);
        s.parent = if client.is_some() {
            Some(ids.client)
        } else {
            ids.parent
        };
        out.push(s);
    }
    out
}

/// A process on a host: who serves an exchange, who makes a call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Party {
    pub host: String,
    pub pid: u32,
}

/// Exchanges whose ids are held at most (the oldest go first): a live run forgets an exchange
/// when it is done, this bounds what a run's never-finished ones keep.
const MAX_HELD: usize = 65536;

/// Gives each exchange its span ids and, from the order in which requests begin, the
/// exchange it was made within: the latest begun, not yet answered exchange whose server is
/// the caller.
#[derive(Debug)]
pub struct Tracer {
    seed: Vec<u8>,
    /// Per server: (exchange, start, end when already known), in begin order.
    open: HashMap<Party, Vec<(u64, i128, Option<i128>)>>,
    held: BTreeMap<u64, (Ids, Option<Party>)>,
}

impl Tracer {
    /// `seed` makes the ids of one capture differ from another's.
    pub fn new(seed: &[u8]) -> Self {
        Self {
            seed: seed.to_vec(),
            open: HashMap::new(),
            held: BTreeMap::new(),
        }
    }

    fn id<const N: usize>(&self, x: u64, what: &[u8]) -> [u8; N] {
        let mut h = Sha256::new();
        h.update(&self.seed);
        h.update(x.to_le_bytes());
        h.update(what);
        let d = h.finalize();
        let mut out = [0u8; N];
        out.copy_from_slice(&d[..N]);
        // All zeroes is an invalid id in OTLP.
        if out.iter().all(|&b| b == 0) {
            out[N - 1] = 1;
        }
        out
    }

    /// Exchange `x`'s request began at `at`: `caller` made it, `callee` serves it (until
    /// `until`, when known already). Returns its ids.
    pub fn begin(
        &mut self,
        x: u64,
        caller: Option<&Party>,
        callee: Option<Party>,
        at: i128,
        until: Option<i128>,
    ) -> Ids {
        if let Some((ids, _)) = self.held.get(&x) {
            return *ids;
        }
        let within = caller.and_then(|c| {
            self.open.get(c).and_then(|list| {
                list.iter()
                    .filter(|(y, start, end)| {
                        *y != x && *start <= at && end.is_none_or(|e| e >= at)
                    })
                    .max_by_key(|(_, start, _)| *start)
                    .map(|(y, _, _)| *y)
            })
        });
        let parent = within.and_then(|y| self.held.get(&y)).map(|(ids, _)| *ids);
        let ids = Ids {
            trace: parent.map_or_else(|| self.id(x, b"trace"), |p| p.trace),
            client: self.id(x, b"client"),
            server: self.id(x, b"server"),
            parent: parent.map(|p| p.server),
        };
        if let Some(c) = &callee {
            self.open.entry(c.clone()).or_default().push((x, at, until));
        }
        self.held.insert(x, (ids, callee));
        while self.held.len() > MAX_HELD {
            if let Some((&old, _)) = self.held.iter().next() {
                self.finish(old);
            }
        }
        ids
    }

    /// Exchange `x` was answered: calls its server makes from now on are not within it.
    pub fn answered(&mut self, x: u64) {
        let Some((_, Some(callee))) = self.held.get(&x) else {
            return;
        };
        if let Some(list) = self.open.get_mut(callee) {
            list.retain(|(y, _, _)| *y != x);
            if list.is_empty() {
                self.open.remove(callee);
            }
        }
    }

    /// Exchange `x` is done: its ids, forgotten here (ids for an exchange never begun, such
    /// as a response whose request was not seen: a trace of its own).
    pub fn finish(&mut self, x: u64) -> Ids {
        self.answered(x);
        match self.held.remove(&x) {
            Some((ids, _)) => ids,
            None => Ids {
                trace: self.id(x, b"trace"),
                client: self.id(x, b"client"),
                server: self.id(x, b"server"),
                parent: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MessageRecord;

    #[test]
    fn urls_split_into_their_parts() {
        assert_eq!(
            split_url("http://127.0.0.1:5000/v3/auth/tokens?nocatalog"),
            ("http", "127.0.0.1", Some(5000), "/v3/auth/tokens?nocatalog")
        );
        assert_eq!(split_url("http://[::1]:80"), ("http", "::1", Some(80), "/"));
        assert_eq!(
            split_url("http://localhost/identity"),
            ("http", "localhost", None, "/identity")
        );
        assert_eq!(split_url("https://h?x"), ("https", "h", None, "?x"));
    }

    #[test]
    fn routes_name_ids_by_what_they_follow() {
        assert_eq!(
            route("/v2/images/a42bfade-0f7e-4d6c-9b1e-3a6f1c2d4e5f/file?x=1"),
            "/v2/images/{image_id}/file"
        );
        assert_eq!(
            route("/v1/AUTH_0123456789abcdef0123456789abcdef/glance/42"),
            "/v1/{account}/glance/{glance_id}"
        );
        assert_eq!(route("/a-b/42"), "/a-b/{id}");
        assert_eq!(route("/v3/auth/tokens"), "/v3/auth/tokens");
        assert_eq!(route("/0123456789abcdef0123456789ABCDEF"), "/{id}");
    }

    fn record(status: Option<u16>) -> ExchangeRecord {
        let m = |first: i128, last: i128, number: u64| MessageRecord {
            number: Some(number),
            first_ts_ns: first as u64,
            last_ts_ns: last as u64,
            first_unix_ns: first,
            complete: true,
            ..MessageRecord::default()
        };
        ExchangeRecord {
            from: "glance-api".into(),
            to: "keystone".into(),
            client: Some(EndRecord {
                pid: 200,
                local: "127.0.0.1:41000".into(),
                peer: "127.0.0.1:5000".into(),
                transport: "tcp".into(),
                ..EndRecord::default()
            }),
            method: "GET".into(),
            url: "http://127.0.0.1:5000/v3/auth/tokens".into(),
            status,
            request: Some(m(1_000, 1_100, 3)),
            response: status.map(|_| m(2_000, 2_500, 4)),
            ..ExchangeRecord::default()
        }
    }

    #[test]
    fn a_client_and_a_server_span_with_the_conventions_attributes() {
        let r = record(Some(404));
        let ids = Ids {
            trace: [1; 16],
            client: [2; 8],
            server: [3; 8],
            parent: Some([9; 8]),
        };
        let c = End::of_record(&r, "glance-api", "controller", r.client.as_ref());
        let server_end = EndRecord {
            pid: 300,
            local: "127.0.0.1:5000".into(),
            peer: "127.0.0.1:41000".into(),
            ..EndRecord::default()
        };
        let s = End::of_record(&r, "keystone", "controller", Some(&server_end));
        let sp = spans(&r, &ids, Some(c), Some(s));
        assert_eq!(sp.len(), 2);
        let (client, server) = (&sp[0], &sp[1]);
        assert_eq!(client.name, "GET /v3/auth/tokens");
        assert_eq!((client.kind, client.parent), (Kind::Client, Some([9; 8])));
        assert_eq!((server.kind, server.parent), (Kind::Server, Some([2; 8])));
        assert_eq!((client.start_unix_ns, client.end_unix_ns), (1_000, 2_500));
        // 404: an error for the caller, not for the server.
        assert_eq!(client.status, StatusCode::Error);
        assert_eq!(server.status, StatusCode::Unset);
        let get = |s: &Span, k: &str| {
            s.attributes
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get(client, "http.request.method"),
            Some(Value::Str("GET".into()))
        );
        assert_eq!(
            get(client, "url.full"),
            Some(Value::Str("http://127.0.0.1:5000/v3/auth/tokens".into()))
        );
        assert_eq!(
            get(client, "http.response.status_code"),
            Some(Value::Int(404))
        );
        assert_eq!(
            get(client, "server.address"),
            Some(Value::Str("127.0.0.1".into()))
        );
        assert_eq!(get(client, "server.port"), Some(Value::Int(5000)));
        assert_eq!(
            get(client, "peer.service"),
            Some(Value::Str("keystone".into()))
        );
        assert_eq!(get(client, "error.type"), Some(Value::Str("404".into())));
        assert_eq!(get(client, "sniffer.log.request"), Some(Value::Int(3)));
        assert_eq!(get(server, "client.port"), Some(Value::Int(41000)));
        assert_eq!(
            get(server, "url.path"),
            Some(Value::Str("/v3/auth/tokens".into()))
        );
        assert_eq!(
            get(server, "service.name"),
            Some(Value::Str("keystone".into()))
        );
        assert_eq!(server.resource.pid, 300);
        assert_eq!(client.resource.service, "glance-api");
    }

    #[test]
    fn one_end_one_span_and_no_answer_is_an_error() {
        let r = record(None);
        let ids = Ids {
            trace: [1; 16],
            client: [2; 8],
            server: [3; 8],
            parent: None,
        };
        let c = End::of_record(&r, "glance-api", "h", r.client.as_ref());
        let sp = spans(&r, &ids, Some(c), None);
        assert_eq!(sp.len(), 1);
        assert_eq!(sp[0].status, StatusCode::Error);
        assert_eq!(sp[0].status_message, "no response");
        assert_eq!((sp[0].start_unix_ns, sp[0].end_unix_ns), (1_000, 1_100));
        // A server-only exchange's SERVER span takes the parent itself.
        let sp = spans(
            &r,
            &Ids {
                parent: Some([7; 8]),
                ..ids
            },
            None,
            Some(c),
        );
        assert_eq!(sp[0].parent, Some([7; 8]));
    }

    fn party(pid: u32) -> Party {
        Party {
            host: "h".into(),
            pid,
        }
    }

    #[test]
    fn calls_made_while_serving_are_children_of_that_server_span() {
        let mut t = Tracer::new(b"seed");
        // openstack (1) -> glance (2) [x1]; glance -> keystone (3) [x2] within it; then after
        // glance answered, glance -> keystone [x3] is a root.
        let x1 = t.begin(1, Some(&party(1)), Some(party(2)), 10, None);
        let x2 = t.begin(2, Some(&party(2)), Some(party(3)), 20, None);
        t.answered(2);
        assert_eq!(t.finish(2), x2);
        t.answered(1);
        let x3 = t.begin(3, Some(&party(2)), Some(party(3)), 50, None);
        assert_eq!(x1.parent, None);
        assert_eq!((x2.trace, x2.parent), (x1.trace, Some(x1.server)));
        assert_eq!(x3.parent, None);
        assert_ne!(x3.trace, x1.trace);
        // Ids depend on the seed and the exchange only.
        assert_eq!(
            Tracer::new(b"seed").begin(1, None, None, 0, None).client,
            x1.client
        );
        assert_ne!(Tracer::new(b"other").finish(1).client, x1.client);
    }

    #[test]
    fn known_ends_bound_the_window_and_the_latest_open_request_wins() {
        let mut t = Tracer::new(b"s");
        let a = t.begin(1, None, Some(party(2)), 0, Some(100));
        let b = t.begin(2, None, Some(party(2)), 10, Some(30));
        // At 20 both are open: the later one. At 50 only the first.
        assert_eq!(
            t.begin(3, Some(&party(2)), None, 20, None).parent,
            Some(b.server)
        );
        assert_eq!(
            t.begin(4, Some(&party(2)), None, 50, None).parent,
            Some(a.server)
        );
        assert_eq!(t.begin(5, Some(&party(2)), None, 150, None).parent, None);
        // Another process with the same name does not count: pids differ.
        assert_eq!(t.begin(6, Some(&party(9)), None, 20, None).parent, None);
    }
}
