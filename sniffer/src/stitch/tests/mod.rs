use std::net::SocketAddr;

use super::*;
use crate::{
    conns::ConnSink as _,
    events::{Dir, Role},
    exchange::Exchanges,
    stream::{Piece, Stream},
};

/// A writer into a buffer the test keeps.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records the numbered titles, the numbered log as written, and the JSONL records.
struct Titles {
    lines: Vec<String>,
    exchanges: Vec<(u64, bool)>,
    log: crate::sinks::log::NumberedLog,
    text: Shared,
    /// The JSONL records, unless `records` is off (they cost in long runs).
    records: Vec<serde_json::Value>,
    keep_records: bool,
}

impl Default for Titles {
    fn default() -> Self {
        let text = Shared::default();
        Self {
            lines: Vec::new(),
            exchanges: Vec::new(),
            log: crate::sinks::log::NumberedLog::new(
                crate::sinks::output::Output::new(
                    Box::new(text.clone()),
                    std::sync::Arc::new(crate::sinks::output::Health::new("log", "messages")),
                ),
                true,
                4096,
            ),
            text,
            records: Vec::new(),
            keep_records: true,
        }
    }
}

impl Titles {
    /// The numbered log as a user reads it.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.0.lock().expect("lock")).into_owned()
    }
}

impl LogSink for Titles {
    fn message(&mut self, e: &Entry<'_>) {
        self.lines.push(crate::sinks::log::title(
            e.number, e.which, e.exchange, e.msg,
        ));
        self.log.message(e);
        // The log's output holds records until asked: the text is read between messages.
        self.log.flush();
    }
    fn exchange(&mut self, x: &Exchange) {
        self.exchanges
            .push((x.id, x.client.is_some() && x.server.is_some()));
        if !self.keep_records {
            return;
        }
        let rec = crate::sinks::records::Recorder {
            redact: true,
            text_limit: 4096,
            unix_offset_ns: 0,
            host: None,
            clock_shift_ns: 0,
        };
        let record = serde_json::to_value(rec.record(x)).expect("a JSON value");
        self.records.push(record);
    }
}

fn addr(s: &str) -> Endpoint {
    Endpoint::Inet(s.parse::<SocketAddr>().unwrap())
}

fn conn(id: u64, pid: u32, role: Role, local: &str, peer: &str) -> Conn {
    Conn {
        id,
        tgid: pid,
        fd: id as i32,
        sk: id,
        peer_sk: 0,
        peer_tgid: 0,
        role,
        transport: Transport::Tcp,
        local: addr(local),
        peer: addr(peer),
        opened_ns: 0,
        last_ns: 0,
        ended: None,
        streams: [Stream::new(), Stream::new()],
        open_lost: false,
        end_known: true,
        tls: None,
        not_http: None,
        total: None,
        netns: 0,
    }
}

impl Conn {
    fn clone_for_test(&self) -> Conn {
        conn(
            self.id,
            self.tgid,
            self.role,
            &self.local.to_string(),
            &self.peer.to_string(),
        )
    }
}

struct World {
    http: Exchanges<Stitcher<Titles>>,
    procs: ProcTable,
    conns: Vec<Conn>,
    off: HashMap<(u64, usize), u64>,
}

impl World {
    /// openstack (100) -> glance-api (200) -> keystone (300), all on loopback.
    fn new(filter: Option<Filter>) -> Self {
        let mut procs = ProcTable::new();
        procs.on_fork(100, 1, "openstack");
        procs.on_fork(200, 1, "glance-api");
        procs.on_fork(300, 1, "keystone");
        let conns = vec![
            conn(1, 100, Role::Client, "127.0.0.1:40000", "127.0.0.1:9292"),
            conn(2, 200, Role::Server, "127.0.0.1:9292", "127.0.0.1:40000"),
            conn(3, 200, Role::Client, "127.0.0.1:40001", "127.0.0.1:5000"),
            conn(4, 300, Role::Server, "127.0.0.1:5000", "127.0.0.1:40001"),
        ];
        let mut st = Stitcher::new(Titles::default(), Names::default(), filter);
        st.slack = order::Slack::fixed(100);
        Self {
            http: Exchanges::new(st, 4096),
            procs,
            conns,
            off: HashMap::default(),
        }
    }

    /// Processes `procs` and connections `conns` (ids 1, 2... in order).
    fn custom(procs: &[(u32, &str)], conns: Vec<Conn>, proxies: Proxies) -> Self {
        let mut table = ProcTable::new();
        for (pid, name) in procs {
            table.on_fork(*pid, 1, name);
        }
        let mut st = Stitcher::new(Titles::default(), Names::default(), None).with_proxies(proxies);
        st.slack = order::Slack::fixed(100);
        Self {
            http: Exchanges::new(st, 4096),
            procs: table,
            conns,
            off: HashMap::default(),
        }
    }

    /// `bytes` moved at time `ts` on connection `c` in direction `dir`.
    fn bytes(&mut self, c: u64, dir: Dir, ts: u64, bytes: &[u8]) {
        let off = self.off.entry((c, dir.index())).or_insert(0);
        let p = Piece::Data {
            off: *off,
            bytes: bytes.to_vec().into(),
            ts_ns: ts,
        };
        *off += bytes.len() as u64;
        let conn = &self.conns[(c - 1) as usize];
        self.http.pieces(conn, dir, &[p], &self.procs);
    }

    fn tick(&mut self, now: u64) {
        self.http.sink.tick(now, &self.procs);
    }

    fn end_all(&mut self, now: u64) -> Vec<String> {
        for c in &self.conns {
            self.http.ended(c, &self.procs);
        }
        self.http.sink.finish(now, &self.procs);
        self.http.sink.sink.lines.clone()
    }
}

const IMAGES: &[u8] = b"GET /v2/images HTTP/1.1\r\nHost: 127.0.0.1:9292\r\n\r\n";
const IMAGES_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
const TOKENS: &[u8] = b"GET /v3/auth/tokens HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n";
const TOKENS_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

const NESTED: [&str; 4] = [
    "### [1] (openstack) REQ >>> (glance-api) : GET http://127.0.0.1:9292/v2/images",
    "### [2] (glance-api) REQ >>> (keystone) : GET http://127.0.0.1:5000/v3/auth/tokens",
    "### [3] (glance-api) RESP <<< (keystone) : 200 OK GET http://127.0.0.1:5000/v3/auth/tokens",
    "### [4] (openstack) RESP <<< (glance-api) : 200 OK GET http://127.0.0.1:9292/v2/images",
];

#[test]
fn both_ends_traced_give_one_exchange_each_nested_in_causal_order() {
    let mut w = World::new(None);
    w.bytes(1, Dir::Send, 10, IMAGES);
    w.bytes(2, Dir::Recv, 11, IMAGES);
    w.bytes(3, Dir::Send, 20, TOKENS);
    w.bytes(4, Dir::Recv, 21, TOKENS);
    w.bytes(4, Dir::Send, 30, TOKENS_OK);
    w.bytes(3, Dir::Recv, 31, TOKENS_OK);
    w.bytes(2, Dir::Send, 40, IMAGES_OK);
    w.bytes(1, Dir::Recv, 41, IMAGES_OK);
    assert_eq!(w.end_all(1000), NESTED);
    let ex = &w.http.sink.sink.exchanges;
    assert_eq!(ex.len(), 2);
    assert!(
        ex.iter().all(|(_, both)| *both),
        "each exchange has both views"
    );
}

#[test]
fn views_arriving_out_of_order_still_number_in_kernel_time_order() {
    let mut w = World::new(None);
    // Servers' events reach userspace first, clients' later (other CPUs, held streams).
    w.bytes(4, Dir::Recv, 21, TOKENS);
    w.bytes(2, Dir::Recv, 11, IMAGES);
    w.bytes(4, Dir::Send, 30, TOKENS_OK);
    w.bytes(3, Dir::Send, 20, TOKENS);
    w.bytes(2, Dir::Send, 40, IMAGES_OK);
    w.bytes(1, Dir::Send, 10, IMAGES);
    w.bytes(3, Dir::Recv, 31, TOKENS_OK);
    w.bytes(1, Dir::Recv, 41, IMAGES_OK);
    assert_eq!(w.end_all(1000), NESTED);
}

#[test]
fn messages_are_written_as_soon_as_their_place_is_final() {
    let mut w = World::new(None);
    w.bytes(1, Dir::Send, 10, IMAGES);
    w.bytes(2, Dir::Recv, 11, IMAGES);
    w.tick(50);
    assert!(
        w.http.sink.sink.lines.is_empty(),
        "within the slack nothing is final"
    );
    w.tick(111);
    assert_eq!(w.http.sink.sink.lines, NESTED[..1]);
    w.bytes(3, Dir::Send, 200, TOKENS);
    w.bytes(4, Dir::Recv, 201, TOKENS);
    w.tick(350);
    assert_eq!(
        w.http.sink.sink.lines,
        NESTED[..2],
        "streamed, not only at exit"
    );
}

#[test]
fn a_message_placed_after_later_ones_were_written_is_counted_out_of_order() {
    let mut w = World::new(None);
    w.bytes(3, Dir::Send, 20, TOKENS);
    w.bytes(4, Dir::Recv, 21, TOKENS);
    w.tick(150);
    assert_eq!(
        w.http.sink.sink.lines,
        ["### [1] (glance-api) REQ >>> (keystone) : GET http://127.0.0.1:5000/v3/auth/tokens"]
    );
    assert_eq!(w.http.sink.stats.out_of_order, 0);
    // The client's request to glance began at 10 but its events came after 150: later than
    // the slack, behind a message already written.
    w.bytes(1, Dir::Send, 10, IMAGES);
    assert_eq!(w.http.sink.stats.out_of_order, 1);
    assert_eq!(w.http.sink.stats.reorder_ns, 11);
    w.tick(300);
    assert_eq!(
        w.http.sink.sink.lines.len(),
        2,
        "still written, after the later one"
    );
}

fn unix(id: u64, pid: u32, role: Role, sk: u64, peer_sk: u64) -> Conn {
    let mut c = conn(id, pid, role, "127.0.0.1:1", "127.0.0.1:1");
    c.transport = Transport::Unix;
    c.local = Endpoint::Unix("/run/keystone.sock".into());
    c.peer = Endpoint::Unknown;
    (c.sk, c.peer_sk) = (sk, peer_sk);
    c
}

/// openstack (100) -> apache2 (400) -> keystone (300) over a unix socket in uwsgi, and
/// apache2 -> glance-api (200) in HTTP with the `/image` prefix stripped; every end traced.
fn through_apache(proxies: Proxies) -> World {
    World::custom(
        &[
            (100, "openstack"),
            (200, "glance-api"),
            (300, "keystone"),
            (400, "apache2"),
        ],
        vec![
            conn(1, 100, Role::Client, "127.0.0.1:40000", "127.0.0.1:80"),
            conn(2, 400, Role::Server, "127.0.0.1:80", "127.0.0.1:40000"),
            unix(3, 400, Role::Client, 30, 40),
            unix(4, 300, Role::Server, 40, 30),
            conn(5, 400, Role::Client, "127.0.0.1:50000", "127.0.0.1:60999"),
            conn(6, 200, Role::Server, "127.0.0.1:60999", "127.0.0.1:50000"),
        ],
        proxies,
    )
}

/// One request through the proxy: client conn 1 <-> proxy conn 2, proxy conn `up` <->
/// service conn `up + 1`, at times from `t`.
fn hop(w: &mut World, t: u64, req: &[u8], upstream: &[u8], resp: &[u8], up: u64) {
    w.bytes(1, Dir::Send, t, req);
    w.bytes(2, Dir::Recv, t + 1, req);
    w.bytes(up, Dir::Send, t + 2, upstream);
    w.bytes(up + 1, Dir::Recv, t + 3, upstream);
    w.bytes(up + 1, Dir::Send, t + 4, resp);
    w.bytes(up, Dir::Recv, t + 5, resp);
    w.bytes(2, Dir::Send, t + 6, resp);
    w.bytes(1, Dir::Recv, t + 7, resp);
}

const CREATED: &[u8] = b"HTTP/1.1 201 CREATED\r\nContent-Length: 2\r\n\r\n{}";

fn keystone_upstream() -> Vec<u8> {
    let mut p = crate::http::uwsgi::tests::packet(&[
        ("REQUEST_METHOD", "POST"),
        ("REQUEST_URI", "/identity/v3/auth/tokens"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("HTTP_HOST", "127.0.0.1"),
        ("CONTENT_LENGTH", "2"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
    ]);
    p.extend_from_slice(b"{}");
    p
}

const AUTH: &[u8] =
    b"POST /identity/v3/auth/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}";
const LIST: &[u8] = b"GET /image/v2/images HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
const LIST_UP: &[u8] =
    b"GET /v2/images HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n";

#[test]
fn a_reverse_proxy_hop_folds_into_the_clients_exchange() {
    let mut w = through_apache(Proxies::default());
    hop(&mut w, 10, AUTH, &keystone_upstream(), CREATED, 3);
    hop(&mut w, 100, LIST, LIST_UP, IMAGES_OK, 5);
    assert_eq!(
        w.end_all(1000),
        vec![
            "### [1] (openstack) REQ >>> (keystone) : POST http://127.0.0.1/identity/v3/auth/tokens",
            "### [2] (openstack) RESP <<< (keystone) : 201 CREATED POST http://127.0.0.1/identity/v3/auth/tokens",
            "### [3] (openstack) REQ >>> (glance-api) : GET http://127.0.0.1/image/v2/images",
            "### [4] (openstack) RESP <<< (glance-api) : 200 OK GET http://127.0.0.1/image/v2/images",
        ]
    );
    assert_eq!(w.http.sink.stats.folded, 2);
    // Two exchanges reach the exchange sinks, each with both ends of the client's hop.
    assert_eq!(w.http.sink.sink.exchanges.len(), 2);
    assert!(w.http.sink.sink.exchanges.iter().all(|(_, both)| *both));
}

#[test]
fn show_proxies_keeps_both_hops() {
    let mut w = through_apache(Proxies {
        extra: Vec::new(),
        fold: false,
    });
    hop(&mut w, 10, AUTH, &keystone_upstream(), CREATED, 3);
    assert_eq!(
        w.end_all(1000),
        vec![
            "### [1] (openstack) REQ >>> (apache2) : POST http://127.0.0.1/identity/v3/auth/tokens",
            "### [2] (apache2) REQ >>> (keystone) : POST http://127.0.0.1/identity/v3/auth/tokens",
            "### [3] (apache2) RESP <<< (keystone) : 201 CREATED POST http://127.0.0.1/identity/v3/auth/tokens",
            "### [4] (openstack) RESP <<< (apache2) : 201 CREATED POST http://127.0.0.1/identity/v3/auth/tokens",
        ]
    );
}

#[test]
fn a_named_proxy_with_no_url_rule_is_named_by_its_upstream() {
    let mut w = World::custom(
        &[(100, "curl"), (200, "app"), (400, "envoy")],
        vec![
            conn(1, 100, Role::Client, "127.0.0.1:40000", "127.0.0.1:8000"),
            conn(2, 400, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000"),
            conn(3, 400, Role::Client, "127.0.0.1:50000", "127.0.0.1:9000"),
            conn(4, 200, Role::Server, "127.0.0.1:9000", "127.0.0.1:50000"),
        ],
        Proxies {
            extra: vec!["envoy".into()],
            fold: true,
        },
    );
    let req = b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n";
    let other = b"GET /api/y HTTP/1.1\r\nHost: a\r\n\r\n";
    // The upstream request differs: not the same request, nothing folds.
    hop(&mut w, 10, req, other, IMAGES_OK, 3);
    hop(&mut w, 100, req, req, IMAGES_OK, 3);
    let lines = w.end_all(1000);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert!(lines[0].contains("(curl) REQ >>> (envoy)"), "{lines:#?}");
    assert!(
        lines[1].contains("(envoy) REQ >>> (app) : GET http://a/api/y"),
        "{lines:#?}"
    );
    assert_eq!(
        lines[4], "### [5] (curl) REQ >>> (app) : GET http://a/api/x",
        "{lines:#?}"
    );
}

#[test]
fn only_the_client_traced_names_the_server_by_url() {
    let mut w = World::new(None);
    w.conns[0] = conn(1, 100, Role::Client, "127.0.0.1:40000", "127.0.0.1:1");
    w.bytes(
        1,
        Dir::Send,
        10,
        b"GET /identity/v3 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    w.bytes(
        1,
        Dir::Recv,
        20,
        b"HTTP/1.1 300 Multiple Choices\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(
        w.end_all(1000),
        vec![
            "### [1] (openstack) REQ >>> (keystone) : GET http://127.0.0.1/identity/v3",
            "### [2] (openstack) RESP <<< (keystone) : 300 Multiple Choices GET http://127.0.0.1/identity/v3",
        ]
    );
}

#[test]
fn filtered_exchanges_are_left_out_and_not_numbered() {
    let f = Filter::parse(
        r#"{"filters": [{"from": "glance-api", "to": "keystone"}]}"#,
        "f",
    )
    .unwrap();
    let mut w = World::new(Some(f));
    w.bytes(1, Dir::Send, 10, IMAGES);
    w.bytes(2, Dir::Recv, 11, IMAGES);
    w.bytes(3, Dir::Send, 20, TOKENS);
    w.bytes(4, Dir::Recv, 21, TOKENS);
    w.bytes(4, Dir::Send, 30, TOKENS_OK);
    w.bytes(3, Dir::Recv, 31, TOKENS_OK);
    w.bytes(2, Dir::Send, 40, IMAGES_OK);
    w.bytes(1, Dir::Recv, 41, IMAGES_OK);
    assert_eq!(
        w.end_all(1000),
        vec![
            "### [1] (openstack) REQ >>> (glance-api) : GET http://127.0.0.1:9292/v2/images",
            "### [2] (openstack) RESP <<< (glance-api) : 200 OK GET http://127.0.0.1:9292/v2/images",
        ]
    );
    assert_eq!(w.http.sink.stats.filtered, 1);
}

#[test]
fn a_request_one_end_lost_is_taken_from_the_other_end() {
    for client_first in [true, false] {
        let mut w = World::new(None);
        // The client's events for its request were dropped (ring full); the server saw all.
        if client_first {
            w.bytes(1, Dir::Recv, 41, IMAGES_OK);
            let c = w.conns[0].clone_for_test();
            w.http.ended(&c, &w.procs);
        }
        w.bytes(2, Dir::Recv, 11, IMAGES);
        w.bytes(2, Dir::Send, 40, IMAGES_OK);
        if !client_first {
            w.bytes(1, Dir::Recv, 41, IMAGES_OK);
        }
        let lines = w.end_all(1000);
        assert_eq!(
            lines,
            vec![
                "### [1] (openstack) REQ >>> (glance-api) : GET http://127.0.0.1:9292/v2/images",
                "### [2] (openstack) RESP <<< (glance-api) : 200 OK GET http://127.0.0.1:9292/v2/images",
            ],
            "client view first: {client_first}"
        );
    }
}

#[test]
fn a_response_without_its_request_is_shown_as_such() {
    let mut w = World::new(None);
    w.conns[0] = conn(1, 100, Role::Unknown, "127.0.0.1:40000", "127.0.0.1:9292");
    // Attached mid-connection: only a response is seen, then the connection ends.
    w.bytes(
        1,
        Dir::Recv,
        10,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    let lines = w.end_all(1000);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0],
        "### [1] (openstack) RESP <<< (127.0.0.1:9292) : 200 OK ? (request not seen)"
    );
}

#[test]
fn two_namespaces_reusing_one_loopback_four_tuple_pair_within_each() {
    // a and b: a client and a server in each of two network namespaces, the same
    // 127.0.0.1:40000 -> 127.0.0.1:8000 in both; b's server reads first, while both
    // clients' requests wait: by addresses alone it would take a's client.
    let ns = |mut c: Conn, netns: u32| {
        c.netns = netns;
        c
    };
    let conns = vec![
        ns(
            conn(1, 100, Role::Client, "127.0.0.1:40000", "127.0.0.1:8000"),
            7,
        ),
        ns(
            conn(2, 200, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000"),
            7,
        ),
        ns(
            conn(3, 300, Role::Client, "127.0.0.1:40000", "127.0.0.1:8000"),
            9,
        ),
        ns(
            conn(4, 400, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000"),
            9,
        ),
    ];
    let procs = [
        (100, "client-a"),
        (200, "server-a"),
        (300, "client-b"),
        (400, "server-b"),
    ];
    let mut w = World::custom(&procs, conns, Proxies::default());
    let get = b"GET /same HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n";
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    w.bytes(1, Dir::Send, 10, get);
    w.bytes(3, Dir::Send, 11, get);
    w.bytes(4, Dir::Recv, 12, get);
    w.bytes(2, Dir::Recv, 13, get);
    w.bytes(4, Dir::Send, 20, ok);
    w.bytes(3, Dir::Recv, 21, ok);
    w.bytes(2, Dir::Send, 30, ok);
    w.bytes(1, Dir::Recv, 31, ok);
    let lines = w.end_all(1000);
    let url = "GET http://127.0.0.1:8000/same";
    assert_eq!(
        lines,
        [
            format!("### [1] (client-a) REQ >>> (server-a) : {url}"),
            format!("### [2] (client-b) REQ >>> (server-b) : {url}"),
            format!("### [3] (client-b) RESP <<< (server-b) : 200 OK {url}"),
            format!("### [4] (client-a) RESP <<< (server-a) : 200 OK {url}"),
        ]
    );
    assert!(w.http.sink.sink.exchanges.iter().all(|(_, both)| *both));
}

/// The log, the JSONL and the HAR of one run agree: the JSONL's records give back the log's
/// entries, and the HAR written live from the same shared records is `sniffer har` of the JSONL.
#[test]
fn records_give_back_the_log_entries_byte_for_byte() {
    use crate::sinks::{
        LogFanout,
        jsonl::{HarSink, Jsonl},
        log::{NumberedLog, record_entry},
        output::Outputs,
        records::{Recorder, Records},
    };
    let (log, jsonl, har) = (Shared::default(), Shared::default(), Shared::default());
    let outputs = Outputs::default();
    let rec = Recorder {
        redact: true,
        text_limit: 4096,
        unix_offset_ns: 0,
        host: None,
        clock_shift_ns: 0,
    };
    let mut fan = LogFanout::default();
    fan.sinks.push(Box::new(NumberedLog::new(
        outputs.writer(Box::new(log.clone()), "log", "messages"),
        true,
        4096,
    )));
    let mut records = Records::new(rec);
    records.sinks.push(Box::new(Jsonl::new(outputs.writer(
        Box::new(jsonl.clone()),
        "jsonl",
        "exchanges",
    ))));
    records.sinks.push(Box::new(HarSink::new(outputs.writer(
        Box::new(har.clone()),
        "har",
        "exchanges",
    ))));
    fan.sinks.push(Box::new(records));
    let mut procs = ProcTable::new();
    procs.on_fork(100, 1, "openstack");
    procs.on_fork(200, 1, "glance-api");
    let conns = vec![
        conn(1, 100, Role::Client, "127.0.0.1:40000", "127.0.0.1:9292"),
        conn(2, 200, Role::Server, "127.0.0.1:9292", "127.0.0.1:40000"),
    ];
    let mut st = Stitcher::new(fan, Names::default(), None);
    st.slack = order::Slack::fixed(100);
    let mut http = Exchanges::new(st, 4096);
    let mut off = [[0u64; 2]; 2];
    let mut send = |c: usize, dir: Dir, ts: u64, b: &[u8], http: &mut Exchanges<_>| {
        let p = Piece::Data {
            off: off[c][dir.index()],
            bytes: b.to_vec().into(),
            ts_ns: ts,
        };
        off[c][dir.index()] += b.len() as u64;
        http.pieces(&conns[c], dir, &[p], &procs);
    };
    let post = b"POST /v2/images HTTP/1.1\r\nHost: 127.0.0.1:9292\r\nX-Auth-Token: secret\r\nContent-Length: 25\r\n\r\n{\"name\": \"cirros\", \"a\":1}";
    let chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n";
    // A JSON body with a token, a chunked answer with a trailer, then a request the
    // connection's end leaves incomplete.
    send(0, Dir::Send, 10, post, &mut http);
    send(1, Dir::Recv, 11, post, &mut http);
    send(1, Dir::Send, 20, chunked, &mut http);
    send(0, Dir::Recv, 21, chunked, &mut http);
    send(
        0,
        Dir::Send,
        30,
        b"PUT /v2/images/1/file HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        &mut http,
    );
    for c in &conns {
        http.ended(c, &procs);
    }
    http.sink.finish(1000, &procs);
    http.sink.close();
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let records =
        crate::record::read_jsonl(&String::from_utf8(jsonl.0.lock().unwrap().clone()).unwrap())
            .unwrap();
    let mut entries: Vec<(u64, String)> = records
        .iter()
        .flat_map(|r| {
            [true, false]
                .into_iter()
                .filter_map(move |req| Some((r.message(req)?.number?, record_entry(r, req)?)))
        })
        .collect();
    entries.sort();
    let from_records: String = entries.into_iter().map(|(_, e)| e).collect();
    assert!(log.contains("[trailer] X-Trailer: 1"), "{log}");
    assert!(log.contains("[incomplete: "), "{log}");
    assert!(log.contains("<redacted sha256:"), "{log}");
    assert_eq!(from_records, log);
    assert_eq!(records.len(), 2);
    let har = har.0.lock().unwrap().clone();
    assert_eq!(
        String::from_utf8(har).unwrap(),
        String::from_utf8(crate::har::document(&records).unwrap()).unwrap()
    );
}

mod bounds;
mod late_views;
mod lost_answers;
mod marks;

#[test]
fn ended_connections_and_one_view_exchanges_are_forgotten_after_the_keep_time() {
    let mut w = World::new(None);
    // Both views of one exchange, then one the server's view of is missing (its events lost).
    w.bytes(1, Dir::Send, 10, IMAGES);
    w.bytes(2, Dir::Recv, 11, IMAGES);
    w.bytes(2, Dir::Send, 40, IMAGES_OK);
    w.bytes(1, Dir::Recv, 41, IMAGES_OK);
    w.bytes(1, Dir::Send, 50, IMAGES);
    w.bytes(1, Dir::Recv, 60, IMAGES_OK);
    w.tick(1_000);
    assert_eq!(w.http.sink.sink.lines.len(), 4);
    let st = &w.http.sink;
    assert_eq!(
        st.exchanges.len(),
        1,
        "the one-view exchange waits for its other view"
    );
    for c in [1, 2] {
        let conn = w.conns[c - 1].clone_for_test();
        w.http.ended(&conn, &w.procs);
    }
    w.tick(1_000 + KEEP_ENDED_NS);
    let st = &w.http.sink;
    assert_eq!(
        (st.exchanges.len(), st.conns.len()),
        (1, 2),
        "both kept for the shorter keep time"
    );
    w.tick(1_001 + KEEP_ENDED_NS);
    let st = &w.http.sink;
    assert_eq!(
        (st.exchanges.len(), st.conns.len()),
        (1, 0),
        "the ended connections forgotten after it"
    );
    assert!(st.by_addr.is_empty() && st.ended.is_empty());
    w.tick(1_000 + KEEP_DONE_NS);
    assert_eq!(w.http.sink.exchanges.len(), 1, "kept for the keep time");
    w.tick(1_001 + KEEP_DONE_NS);
    let st = &w.http.sink;
    assert_eq!(st.exchanges.len(), 0, "forgotten after it");
    assert!(st.done.is_empty());
}

#[test]
fn unix_ends_are_found_by_their_sockets_and_forgotten_with_their_connections() {
    let mut w = through_apache(Proxies::default());
    hop(&mut w, 10, AUTH, &keystone_upstream(), CREATED, 3);
    w.tick(1_000);
    let st = &w.http.sink;
    // apache2's unix client (socket 30, peer 40) and keystone's server end (40, peer 30).
    assert_eq!(st.peer_conns(&st.conns[&3]), [4]);
    assert_eq!(st.peer_conns(&st.conns[&4]), [3]);
    assert_eq!((st.unix_by_sk.len(), st.unix_by_peer.len()), (2, 2));
    assert!(
        st.by_addr
            .keys()
            .all(|(l, _)| matches!(l, Endpoint::Inet(_)))
    );
    for c in &w.conns {
        w.http.ended(c, &w.procs);
    }
    w.tick(1_001 + KEEP_ENDED_NS);
    let st = &w.http.sink;
    assert!(st.conns.is_empty() && st.by_addr.is_empty());
    assert!(st.unix_by_sk.is_empty() && st.unix_by_peer.is_empty());
}

#[test]
fn a_unix_socket_address_reused_names_the_new_connection_only() {
    let mut w = through_apache(Proxies::default());
    hop(&mut w, 10, AUTH, &keystone_upstream(), CREATED, 3);
    w.tick(1_000);
    for c in [2, 3] {
        w.http.ended(&w.conns[c], &w.procs);
    }
    // apache2's next unix client socket got the freed address of the first one (30), while
    // that connection is still kept for late views.
    w.conns.push(unix(7, 400, Role::Client, 30, 50));
    w.conns.push(unix(8, 300, Role::Server, 50, 30));
    let up = keystone_upstream();
    w.bytes(7, Dir::Send, 1_100, &up);
    w.bytes(8, Dir::Recv, 1_101, &up);
    let st = &w.http.sink;
    assert_eq!(st.peer_conns(&st.conns[&8]), [7]);
    assert_eq!(st.peer_conns(&st.conns[&7]), [8]);
    assert_eq!(
        st.peer_conns(&st.conns[&4]),
        [3],
        "the ended pair still pairs"
    );
}

#[test]
fn a_busy_connection_traced_at_both_ends_pairs_each_view_without_a_search_of_the_paired() {
    let mut w = World::new(None);
    // The same request again and again on one keep-alive connection, both ends traced, with
    // no tick: every exchange stays listed on its connections until the next tick writes it.
    let n = 2_000;
    let mut longest_unpaired = 0;
    for i in 0..n {
        let t = 100 + i * 10;
        w.bytes(1, Dir::Send, t, IMAGES);
        w.bytes(2, Dir::Recv, t + 1, IMAGES);
        w.bytes(2, Dir::Send, t + 2, IMAGES_OK);
        w.bytes(1, Dir::Recv, t + 3, IMAGES_OK);
        for c in [1, 2] {
            longest_unpaired = longest_unpaired.max(w.http.sink.conns[&c].unpaired.len());
        }
    }
    let listed = w.http.sink.conns[&2].exchanges.len();
    assert!(
        listed > n as usize / 2,
        "the paired exchanges wait listed ({listed})"
    );
    assert!(
        longest_unpaired <= 1,
        "a view waits unpaired only until the other end's comes ({longest_unpaired})"
    );
    let lines = w.end_all(1_000_000);
    assert_eq!(lines.len(), 2 * n as usize);
    let ex = &w.http.sink.sink.exchanges;
    assert_eq!(ex.len(), n as usize);
    assert!(ex.iter().all(|(_, both)| *both), "each has both views");
    let st = &w.http.sink;
    assert!(st.conns.values().all(|c| c.unpaired.is_empty()));
}

#[test]
fn exchanges_boxes_are_reused_bounded_and_given_back_when_idle() {
    let mut w = World::new(None);
    // One end traced: each exchange is forgotten once written, and its box serves a later one.
    // Two requests in turn, so that a reused box showing anything of the one before would
    // show it in the log.
    let n = 3 * SPARE_EXCHANGES as u64;
    let mut most_spare = 0;
    for i in 0..n {
        let t = 1_000 + i * 10;
        let (req, resp) = if i % 2 == 0 {
            (IMAGES, IMAGES_OK)
        } else {
            (TOKENS, TOKENS_OK)
        };
        w.bytes(1, Dir::Send, t, req);
        w.bytes(1, Dir::Recv, t + 1, resp);
        most_spare = most_spare.max(w.http.sink.spare.len());
        if i % 500 == 499 {
            w.tick(t + 2);
        }
    }
    let lines = w.end_all(1_000_000_000);
    assert_eq!(lines.len(), 2 * n as usize);
    for (i, pair) in lines.chunks(2).enumerate() {
        let url = if i % 2 == 0 {
            "GET http://127.0.0.1:9292/v2/images"
        } else {
            "GET http://127.0.0.1:5000/v3/auth/tokens"
        };
        assert!(pair.iter().all(|l| l.ends_with(url)), "{pair:?}");
    }
    assert!(
        most_spare > 0,
        "forgotten exchanges' boxes are kept for reuse"
    );
    assert!(most_spare <= SPARE_EXCHANGES);
    w.tick(2_000_000_000);
    assert!(w.http.sink.exchanges.is_empty());
    assert!(w.http.sink.spare.is_empty(), "idle: the spare boxes go");
}
