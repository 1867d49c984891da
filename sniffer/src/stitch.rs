//! One exchange from both ends, named, in causal order, numbered.
//!
//! When the client and the server of a connection are both traced, each reports the exchange
//! from its side; the two views are stitched into one (the connections must be each other's
//! peers, the request heads must agree, and views pair in order). Each message is placed at the
//! kernel time of its first byte (the earliest of its views), so a call a server makes while it
//! serves a request sits inside that exchange. A message is written once it is complete and no
//! message that began before it can still arrive: events from other CPUs reach userspace a
//! little late, so the order is final after a short slack.
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::{
    conns::Conn,
    events::{Endpoint, Transport},
    exchange::{HttpEvent, HttpSink, MsgKey},
    filter::{Filter, Subject},
    http::{
        head::{Head, StartLine},
        parser::{Ending, Message},
    },
    names::{Names, devstack_service, participant},
    owners::{Owners, read_proc},
    procs::ProcTable,
    proxy::{self, Match, Proxies},
};

/// How long after a message's first byte its place in the order is taken as final.
pub const ORDER_SLACK_NS: u64 = 100_000_000;
/// Messages waiting for their place at most; past it the oldest are written as they are.
pub const MAX_QUEUED: usize = 100_000;
/// How long a written exchange with one end's view stays matchable for the other end's late
/// view (it comes within the order slack unless events were lost).
const KEEP_DONE_NS: u64 = 2_000_000_000;
/// Exchanges into or out of a reverse proxy waiting for their other hop, at most.
const MAX_HOP_CANDIDATES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Which {
    Request,
    Response,
}

/// One end's view of an exchange.
#[derive(Clone, Debug)]
pub struct View {
    pub pid: u32,
    pub conn: u64,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub transport: Transport,
    /// The socket's network namespace (0: unknown).
    pub netns: u32,
}

#[derive(Debug)]
pub struct Exchange {
    pub id: u64,
    pub client: Option<View>,
    pub server: Option<View>,
    pub request: Option<Message>,
    pub response: Option<Message>,
    /// 1xx responses before the final one (from one end's view).
    pub interim: Vec<Message>,
    interim_conn: Option<u64>,
    /// Kernel time of the request's and the response's first bytes.
    pub request_ts: u64,
    pub response_ts: Option<u64>,
    /// Why this exchange could not be read whole.
    pub broken: Option<&'static str>,
    /// A response whose request was not seen.
    pub orphan: bool,
    /// The connection ended with no response.
    pub unanswered: bool,
    pub from: String,
    pub to: String,
    pub url: String,
    pub numbers: [Option<u64>; 2],
    pub filtered: bool,
    /// The reverse proxy this exchange went through, when its upstream hop is folded into it
    /// or the callee was named through it.
    pub via: Option<String>,
    /// The service's end of the folded upstream hop, and the target it was sent (what the
    /// service saw: `/v2/images` for the client's `/image/v2/images`).
    pub upstream_view: Option<View>,
    pub upstream_target: Option<String>,
    /// A proxy's upstream hop folded into the client's exchange `folded_into`: not shown.
    pub folded_into: Option<u64>,
    /// The proxy's upstream hop folded into this exchange.
    upstream: Option<u64>,
    /// For a proxy's upstream hop seen only by the service: the client the proxy forwarded.
    caller: Option<String>,
    /// Waits in the stitcher's inbound or outbound list for its other hop.
    listed: bool,
    written: [bool; 2],
    head: Option<Head>,
    keys: Vec<MsgKey>,
    resolved: bool,
    done_at: Option<u64>,
}

impl Exchange {
    pub fn method(&self) -> &str {
        self.head.as_ref().and_then(Head::method).unwrap_or("")
    }

    pub fn message(&self, which: Which) -> Option<&Message> {
        match which {
            Which::Request => self.request.as_ref(),
            Which::Response => self.response.as_ref(),
        }
    }

    /// A message of this exchange that did not end complete, or the exchange is broken.
    pub fn is_incomplete(&self) -> bool {
        let bad = |m: &Option<Message>| m.as_ref().is_some_and(|m| m.ending != Ending::Complete);
        bad(&self.request) || bad(&self.response) || self.unanswered || self.broken.is_some()
    }
}

/// A message ready to be written, with its number.
pub struct Entry<'a> {
    pub number: u64,
    pub which: Which,
    pub exchange: &'a Exchange,
    pub msg: &'a Message,
}

/// Where numbered messages go.
pub trait LogSink {
    fn message(&mut self, e: &Entry<'_>);
    /// Every message of the exchange was written (or it ended without one).
    fn exchange(&mut self, _x: &Exchange) {}
    /// Periodically: push what was written so far out (the log streams).
    fn flush(&mut self) {}
    fn close(&mut self) {}
}

/// Totals for the end-of-run summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub exchanges: u64,
    pub messages: u64,
    pub body_bytes: u64,
    pub broken: u64,
    pub filtered: u64,
    /// Messages written before their time because too many waited ([`MAX_QUEUED`]).
    pub forced: u64,
    /// Proxies' upstream hops folded into their client's exchange.
    pub folded: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Item {
    Msg(u64, Which),
    /// A response whose first byte came; its exchange is known at its end.
    Pending(MsgKey),
}

#[derive(Debug)]
struct ConnInfo {
    local: Endpoint,
    peer: Endpoint,
    sk: u64,
    peer_sk: u64,
    peer_tgid: u32,
    /// The socket's network namespace (0: unknown).
    netns: u32,
    client: bool,
    transport: Transport,
    /// Exchanges of this connection, in order, for pairing with the other end's.
    exchanges: VecDeque<u64>,
    /// The other end's name, when it is not traced (looked up while it is alive).
    far_name: Option<String>,
    /// This end's process is a reverse proxy.
    near_proxy: bool,
    /// The untraced other end is a reverse proxy.
    far_proxy: bool,
    ended: Option<u64>,
}

pub struct Stitcher<L: LogSink> {
    exchanges: HashMap<u64, Exchange>,
    by_key: HashMap<MsgKey, u64>,
    queue: BTreeMap<(u64, u64), Item>,
    position: HashMap<Item, (u64, u64)>,
    conns: HashMap<u64, ConnInfo>,
    by_addr: HashMap<(Endpoint, Endpoint), Vec<u64>>,
    next_id: u64,
    next_seq: u64,
    next_number: u64,
    names: Names,
    /// Looks up untraced processes in /proc; None keeps the stitcher off the live system.
    owners: Option<Owners>,
    /// sniffer's own network namespace: the only one its socket lookups see (0: unknown).
    own_netns: u32,
    filter: Option<Filter>,
    proxies: Proxies,
    /// Exchanges into a proxy, and out of one, not yet folded with their other hop.
    inbound: VecDeque<u64>,
    outbound: VecDeque<u64>,
    slack_ns: u64,
    now: u64,
    pub stats: Stats,
    pub sink: L,
}

impl<L: LogSink> Stitcher<L> {
    pub fn new(sink: L, names: Names, filter: Option<Filter>) -> Self {
        Self {
            exchanges: HashMap::new(),
            by_key: HashMap::new(),
            queue: BTreeMap::new(),
            position: HashMap::new(),
            conns: HashMap::new(),
            by_addr: HashMap::new(),
            next_id: 0,
            next_seq: 0,
            next_number: 0,
            names,
            owners: Some(Owners::new()),
            own_netns: own_netns(),
            filter,
            proxies: Proxies::default(),
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
            slack_ns: ORDER_SLACK_NS,
            now: 0,
            stats: Stats::default(),
            sink,
        }
    }

    /// Which processes are reverse proxies, and whether their hops fold.
    pub fn with_proxies(mut self, proxies: Proxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// A stitcher that names only what its events say, without reading /proc (fuzzing).
    pub fn offline(mut self) -> Self {
        self.owners = None;
        self.own_netns = 0;
        self
    }

    fn enqueue(&mut self, ts: u64, item: Item) {
        self.next_seq += 1;
        let pos = (ts, self.next_seq);
        self.queue.insert(pos, item);
        self.position.insert(item, pos);
    }

    fn dequeue(&mut self, item: Item) -> Option<(u64, u64)> {
        let pos = self.position.remove(&item)?;
        self.queue.remove(&pos);
        Some(pos)
    }

    fn conn_info(&mut self, conn: &Conn, client: bool, procs: &ProcTable) {
        if self.conns.contains_key(&conn.id) {
            return;
        }
        let mut info = ConnInfo {
            local: conn.local.clone(),
            peer: conn.peer.clone(),
            sk: conn.sk,
            peer_sk: conn.peer_sk,
            peer_tgid: conn.peer_tgid,
            netns: conn.netns,
            client,
            transport: conn.transport,
            exchanges: VecDeque::new(),
            far_name: None,
            near_proxy: self.proxies.is_proxy(&self.names.of(conn.tgid, procs)),
            far_proxy: false,
            ended: None,
        };
        // Name the other end now, while its process is alive, unless it is traced too.
        if self.peer_conns(&info).is_empty() {
            info.far_name = self.far_name(&info, procs);
            info.far_proxy = info
                .far_name
                .as_deref()
                .is_some_and(|n| self.proxies.is_proxy(n));
        }
        self.by_addr
            .entry((conn.local.clone(), conn.peer.clone()))
            .or_default()
            .push(conn.id);
        self.conns.insert(conn.id, info);
    }

    /// Traced connections that are the other end of `c`.
    fn peer_conns(&self, c: &ConnInfo) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .by_addr
            .get(&(c.peer.clone(), c.local.clone()))
            .cloned()
            .unwrap_or_default();
        out.retain(|id| self.conns.get(id).is_some_and(|o| !other_namespace(c, o)));
        // Where both namespaces are known, the end in the same one first: two namespaces
        // joined by a veth pair are peers across namespaces, and the same addresses can be
        // reused by another pair of namespaces.
        let netns = |id: &u64| self.conns.get(id).map_or(0, |o| o.netns);
        out.sort_by_key(|id| c.netns == 0 || netns(id) != c.netns);
        // Unix ends know each other's kernel socket, whatever their names.
        if c.transport == Transport::Unix && (c.sk != 0 || c.peer_sk != 0) {
            out.extend(
                self.conns
                    .iter()
                    .filter(|(_, o)| {
                        o.transport == Transport::Unix
                            && ((c.peer_sk != 0 && o.sk == c.peer_sk)
                                || (o.peer_sk != 0 && o.peer_sk == c.sk))
                    })
                    .map(|(id, _)| *id),
            );
        }
        out.retain(|id| self.conns.get(id).is_some_and(|o| o.client != c.client));
        out
    }

    /// The name of a process we may not trace.
    fn pid_name(&self, pid: u32, procs: &ProcTable) -> String {
        if procs.get(pid).is_some() {
            self.names.of(pid, procs)
        } else {
            read_proc(pid).map_or_else(|| format!("pid {pid}"), |p| participant(&p))
        }
    }

    /// The untraced other end of a connection: the local process owning it, if any (a unix
    /// socket's peer process the kernel read).
    fn far_name(&mut self, c: &ConnInfo, procs: &ProcTable) -> Option<String> {
        // Socket tables (sock_diag, /proc/net) are sniffer's own namespace's: an address in
        // another namespace could name a stranger there.
        let elsewhere = c.netns != 0 && self.own_netns != 0 && c.netns != self.own_netns;
        if elsewhere && !(c.transport == Transport::Unix && c.peer_tgid != 0) {
            return None;
        }
        let owners = self.owners.as_mut()?;
        let pid = match c.peer {
            _ if c.transport == Transport::Unix && c.peer_tgid != 0 => Some(c.peer_tgid),
            Endpoint::Inet(peer) if c.client => owners.listener(peer),
            Endpoint::Inet(peer) => owners.owner(peer),
            _ => return None,
        };
        tracing::debug!(client = c.client, peer = %c.peer, ?pid, "owner of the untraced end");
        let pid = pid?;
        Some(self.pid_name(pid, procs))
    }

    fn new_exchange(&mut self, view: View, client: bool, ts: u64) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let (c, s) = if client {
            (Some(view), None)
        } else {
            (None, Some(view))
        };
        self.exchanges.insert(
            id,
            Exchange {
                id,
                client: c,
                server: s,
                request: None,
                response: None,
                interim: Vec::new(),
                interim_conn: None,
                request_ts: ts,
                response_ts: None,
                broken: None,
                orphan: false,
                unanswered: false,
                from: String::new(),
                to: String::new(),
                url: String::new(),
                numbers: [None, None],
                filtered: false,
                via: None,
                upstream_view: None,
                upstream_target: None,
                folded_into: None,
                upstream: None,
                caller: None,
                listed: false,
                written: [false, false],
                head: None,
                keys: Vec::new(),
                resolved: false,
                done_at: None,
            },
        );
        id
    }

    fn view(conn: &Conn) -> View {
        View {
            pid: conn.tgid,
            conn: conn.id,
            local: conn.local.clone(),
            peer: conn.peer.clone(),
            transport: conn.transport,
            netns: conn.netns,
        }
    }

    /// Looks for the other end's view of exchange `x` and merges the two: on a peer
    /// connection, an exchange without a view from this end whose request head is the same;
    /// failing that, when one end lost what the other saw (events dropped), an exchange that
    /// has only a response on one end and only a request (or a matching response) on the other.
    fn stitch(&mut self, x: u64) {
        let Some(ex) = self.exchanges.get(&x) else {
            return;
        };
        let (mine, client) = match (&ex.client, &ex.server) {
            (Some(v), None) => (v.conn, true),
            (None, Some(v)) => (v.conn, false),
            _ => return,
        };
        let head = ex.head.clone();
        let orphan = ex.orphan && head.is_none();
        let request_ts = ex.request_ts;
        let response_ts = ex.response_ts.unwrap_or(u64::MAX);
        let status = ex.response.as_ref().and_then(|m| m.head.status());
        let Some(info) = self.conns.get(&mine) else {
            return;
        };
        let peers = self.peer_conns(info);
        let unpaired = |e: &Exchange| {
            if client {
                e.client.is_none()
            } else {
                e.server.is_none()
            }
        };
        let same_head =
            |e: &Exchange| matches!((&head, &e.head), (Some(a), Some(b)) if a.start == b.start);
        let adopts = |e: &Exchange| {
            let e_status = e.response.as_ref().and_then(|m| m.head.status());
            if orphan {
                // This end saw only the response: the other end's exchange began before it, or
                // the other end lost the request too and has the same response.
                let answered = e_status.is_none() || e_status == status;
                (e.head.is_some() && e.request_ts <= response_ts && answered)
                    || (e.orphan && e.head.is_none() && e_status == status)
            } else {
                // The other end saw only a response, after this request began.
                e.orphan && e.head.is_none() && e.response_ts.is_some_and(|t| t >= request_ts)
            }
        };
        for pass in [&same_head as &dyn Fn(&Exchange) -> bool, &adopts] {
            for peer in &peers {
                let Some(pinfo) = self.conns.get(peer) else {
                    continue;
                };
                let found = pinfo.exchanges.iter().copied().find(|y| {
                    *y != x
                        && self
                            .exchanges
                            .get(y)
                            .is_some_and(|e| unpaired(e) && pass(e))
                });
                if let Some(y) = found {
                    self.merge(x, y);
                    return;
                }
            }
        }
    }

    /// Merges two views of one exchange into one.
    fn merge(&mut self, a: u64, b: u64) {
        let (Some(ea), Some(eb)) = (self.exchanges.get(&a), self.exchanges.get(&b)) else {
            return;
        };
        // Keep the one already written from, else the earlier.
        let a_first = (ea.written[0], std::cmp::Reverse(ea.request_ts))
            >= (eb.written[0], std::cmp::Reverse(eb.request_ts));
        let (keep, gone) = if a_first { (a, b) } else { (b, a) };
        let Some(g) = self.exchanges.remove(&gone) else {
            return;
        };
        for k in &g.keys {
            self.by_key.insert(*k, keep);
        }
        for info in self.conns.values_mut() {
            for e in info.exchanges.iter_mut() {
                if *e == gone {
                    *e = keep;
                }
            }
        }
        let gone_req = self.dequeue(Item::Msg(gone, Which::Request));
        let gone_resp = self.dequeue(Item::Msg(gone, Which::Response));
        let Some(k) = self.exchanges.get_mut(&keep) else {
            return;
        };
        k.client = k.client.take().or(g.client);
        k.server = k.server.take().or(g.server);
        k.keys.extend(g.keys);
        if k.interim.is_empty() {
            k.interim = g.interim;
            k.interim_conn = g.interim_conn;
        }
        k.written[0] |= g.written[0];
        k.written[1] |= g.written[1];
        k.request = better(k.request.take(), g.request);
        k.response = better(k.response.take(), g.response);
        k.broken = k.broken.or(g.broken);
        k.head = k.head.take().or(g.head);
        k.upstream = k.upstream.or(g.upstream);
        k.folded_into = k.folded_into.or(g.folded_into);
        k.caller = k.caller.take().or(g.caller);
        let linked = g.upstream.is_some() || g.folded_into.is_some();
        let listed = g.listed;
        k.listed |= g.listed;
        k.orphan &= g.orphan;
        k.unanswered &= g.unanswered;
        let earlier_req = gone_req.is_some_and(|p| p.0 < k.request_ts);
        k.request_ts = k.request_ts.min(g.request_ts);
        if let Some(ts) = g.response_ts {
            k.response_ts = Some(k.response_ts.map_or(ts, |t| t.min(ts)));
        }
        let written = k.written;
        let response_ts = k.response_ts;
        let request_ts = k.request_ts;
        if linked {
            for e in self.exchanges.values_mut() {
                if e.upstream == Some(gone) {
                    e.upstream = Some(keep);
                }
                if e.folded_into == Some(gone) {
                    e.folded_into = Some(keep);
                }
            }
        }
        if listed {
            for list in [&mut self.inbound, &mut self.outbound] {
                for i in list.iter_mut() {
                    if *i == gone {
                        *i = keep;
                    }
                }
            }
        }
        // The merged messages take the earlier of the two places.
        if earlier_req && !written[0] {
            self.dequeue(Item::Msg(keep, Which::Request));
            self.enqueue(request_ts, Item::Msg(keep, Which::Request));
        }
        if gone_resp.is_some() && !written[1] {
            let had = self.dequeue(Item::Msg(keep, Which::Response));
            let ts = match (had, gone_resp) {
                (Some(h), Some(g)) => h.0.min(g.0),
                (None, Some(g)) => g.0,
                _ => response_ts.unwrap_or(request_ts),
            };
            self.enqueue(ts, Item::Msg(keep, Which::Response));
        }
    }

    fn info_of(&self, v: &Option<View>) -> Option<&ConnInfo> {
        v.as_ref().and_then(|v| self.conns.get(&v.conn))
    }

    /// The exchange's server end is a reverse proxy (its own view, else what the client's
    /// connection leads to).
    fn goes_into_proxy(&self, e: &Exchange) -> bool {
        match (self.info_of(&e.server), self.info_of(&e.client)) {
            (Some(s), _) => s.near_proxy,
            (None, Some(c)) => c.far_proxy,
            _ => false,
        }
    }

    /// The exchange's client end is a reverse proxy.
    fn comes_from_proxy(&self, e: &Exchange) -> bool {
        match (self.info_of(&e.client), self.info_of(&e.server)) {
            (Some(c), _) => c.near_proxy,
            (None, Some(s)) => s.far_proxy,
            _ => false,
        }
    }

    /// Whether `inb` (into a proxy) and `out` (out of it) are one request's two hops.
    fn hops_match(inb: &Exchange, out: &Exchange) -> Option<Match> {
        if inb.folded_into.is_some() || inb.upstream.is_some() || out.folded_into.is_some() {
            return None;
        }
        // The proxy sends upstream after the request came in, and answers after the upstream
        // answer began.
        if out.request_ts < inb.request_ts || inb.response_ts.is_some_and(|t| t < out.request_ts) {
            return None;
        }
        // The same proxy process, where it is traced on both hops.
        if let (Some(a), Some(b)) = (&inb.server, &out.client)
            && a.pid != b.pid
        {
            return None;
        }
        let client = match (&inb.client, &inb.server) {
            (Some(c), _) => c.local.clone(),
            (None, Some(s)) => s.peer.clone(),
            _ => Endpoint::Unknown,
        };
        proxy::same_request(inb.head.as_ref()?, out.head.as_ref()?, &client)
    }

    /// Folds a proxy's upstream hop into the client's exchange, when `x` is one of the two and
    /// the other is known: the strongest match, the earliest among equals.
    fn fold(&mut self, x: u64) {
        if !self.proxies.fold {
            return;
        }
        let Some(e) = self.exchanges.get(&x) else {
            return;
        };
        if e.head.is_none() || e.folded_into.is_some() || e.upstream.is_some() {
            return;
        }
        let (inbound, outbound) = (self.goes_into_proxy(e), self.comes_from_proxy(e));
        if inbound == outbound {
            return;
        }
        let others = if inbound {
            &self.outbound
        } else {
            &self.inbound
        };
        // The strongest match; among equals the earliest (the first found on a tie).
        let best = others
            .iter()
            .filter(|&&y| y != x)
            .filter_map(|&y| {
                let o = self.exchanges.get(&y)?;
                let m = if inbound {
                    Self::hops_match(e, o)
                } else {
                    Self::hops_match(o, e)
                }?;
                Some((std::cmp::Reverse(m), o.request_ts, y))
            })
            .min_by_key(|&(m, ts, _)| (m, ts));
        let Some((_, _, y)) = best else {
            if !e.listed {
                let exchanges = &self.exchanges;
                let list = if inbound {
                    &mut self.inbound
                } else {
                    &mut self.outbound
                };
                // Written exchanges no longer wait (a hop begins while its client's is open).
                while list
                    .front()
                    .is_some_and(|f| exchanges.get(f).is_none_or(|e| e.done_at.is_some()))
                {
                    list.pop_front();
                }
                list.push_back(x);
                if list.len() > MAX_HOP_CANDIDATES {
                    list.pop_front();
                }
                if let Some(e) = self.exchanges.get_mut(&x) {
                    e.listed = true;
                }
            }
            return;
        };
        let (inb, out) = if inbound { (x, y) } else { (y, x) };
        self.inbound.retain(|i| *i != inb);
        self.outbound.retain(|i| *i != out);
        if let Some(o) = self.exchanges.get_mut(&out) {
            o.folded_into = Some(inb);
        }
        if let Some(i) = self.exchanges.get_mut(&inb) {
            i.upstream = Some(out);
        }
        tracing::debug!(inb, out, "proxy hop folded");
    }

    /// A proxy's upstream hop seen by the service only: the client the proxy forwarded, from
    /// the request itself (uwsgi REMOTE_ADDR and REMOTE_PORT), looked up while it is alive.
    fn forwarded_caller(&mut self, x: u64, procs: &ProcTable) {
        let Some(e) = self.exchanges.get(&x) else {
            return;
        };
        if e.client.is_some() || e.caller.is_some() || !self.comes_from_proxy(e) {
            return;
        }
        let Some(addr) = e.head.as_ref().and_then(proxy::forwarded_client) else {
            return;
        };
        let Some(pid) = self.owners.as_mut().and_then(|o| o.owner(addr)) else {
            return;
        };
        let name = self.pid_name(pid, procs);
        if let Some(e) = self.exchanges.get_mut(&x) {
            e.caller = Some(name);
        }
    }

    fn on_begin(&mut self, conn: &Conn, key: MsgKey, ts: u64) {
        if key.request {
            let x = self.new_exchange(Self::view(conn), key.client_view, ts);
            if let Some(e) = self.exchanges.get_mut(&x) {
                e.keys.push(key);
            }
            self.by_key.insert(key, x);
            if let Some(info) = self.conns.get_mut(&conn.id) {
                info.exchanges.push_back(x);
            }
            self.enqueue(ts, Item::Msg(x, Which::Request));
        } else {
            self.enqueue(ts, Item::Pending(key));
        }
    }

    fn on_response(
        &mut self,
        conn: &Conn,
        key: MsgKey,
        msg: Message,
        request: Option<MsgKey>,
        interim: bool,
    ) {
        let pending = self.dequeue(Item::Pending(key));
        let ts = pending.map_or(msg.first_ts, |p| p.0);
        let x = match request.and_then(|r| self.by_key.get(&r).copied()) {
            Some(x) => x,
            None => {
                // No request to pair with: an exchange of its own, shown as such unless the
                // other end saw the request (stitched below, once the response is in).
                let x = self.new_exchange(Self::view(conn), key.client_view, ts);
                if let Some(e) = self.exchanges.get_mut(&x) {
                    e.orphan = true;
                    e.keys.push(key);
                }
                if let Some(info) = self.conns.get_mut(&conn.id) {
                    info.exchanges.push_back(x);
                }
                x
            }
        };
        let orphan = self.exchanges.get(&x).is_some_and(|e| e.orphan);
        self.by_key.insert(key, x);
        let Some(e) = self.exchanges.get_mut(&x) else {
            return;
        };
        if !e.keys.contains(&key) {
            e.keys.push(key);
        }
        if interim {
            // Both ends see the same 1xx: keep one end's.
            if e.interim_conn.is_none_or(|c| c == conn.id) {
                e.interim_conn = Some(conn.id);
                e.interim.push(msg);
            }
            return;
        }
        let first = e.response.is_none();
        e.response = better(e.response.take(), Some(msg));
        e.response_ts = Some(e.response_ts.map_or(ts, |t| t.min(ts)));
        let written = e.written[1];
        if first {
            self.enqueue(ts, Item::Msg(x, Which::Response));
            if orphan {
                self.stitch(x);
            }
        } else if !written {
            // The other end's view of a response already placed: keep the earlier place.
            if let Some(pos) = self.position.get(&Item::Msg(x, Which::Response)).copied()
                && ts < pos.0
            {
                self.dequeue(Item::Msg(x, Which::Response));
                self.enqueue(ts, Item::Msg(x, Which::Response));
            }
        }
    }

    fn on_broken(&mut self, key: MsgKey, reason: &'static str) {
        self.stats.broken += 1;
        if self.dequeue(Item::Pending(key)).is_some() {
            return;
        }
        let Some(x) = self.by_key.get(&key).copied() else {
            return;
        };
        let Some(e) = self.exchanges.get_mut(&x) else {
            return;
        };
        e.broken = Some(reason);
        if e.request.is_none() && e.head.is_none() {
            // Nothing readable began: no entry.
            self.dequeue(Item::Msg(x, Which::Request));
            self.exchanges.remove(&x);
            self.by_key.remove(&key);
        }
    }

    /// The server of an exchange by name: its own view, else who owns the far end.
    fn server_name(&self, e: &Exchange, procs: &ProcTable) -> Option<String> {
        match (&e.server, &e.client) {
            (Some(s), _) => Some(self.names.of(s.pid, procs)),
            (None, Some(c)) => self.conns.get(&c.conn).and_then(|i| i.far_name.clone()),
            _ => None,
        }
    }

    /// Names the ends and the URL of an exchange. Behind a reverse proxy the callee is the
    /// service: by devstack's URL rules, else the server of the folded upstream hop; a service
    /// that saw only the proxy names the caller the proxy forwarded, when it can be known.
    fn resolve(&mut self, x: u64, procs: &ProcTable) {
        self.fold(x);
        let Some(e) = self.exchanges.get(&x) else {
            return;
        };
        if e.resolved {
            return;
        }
        let fold = self.proxies.fold;
        let from = match (&e.client, &e.server) {
            (Some(c), _) => self.names.of(c.pid, procs),
            (None, Some(s)) => {
                let info = self.conns.get(&s.conn);
                let far = info.and_then(|i| i.far_name.clone());
                let forwarded = info.is_some_and(|i| i.far_proxy) && fold;
                if forwarded {
                    e.caller.clone().or(far)
                } else {
                    far
                }
                .unwrap_or_else(|| s.peer.to_string())
            }
            (None, None) => "?".into(),
        };
        let head = e.head.as_ref().or(e.request.as_ref().map(|m| &m.head));
        let target = match head.map(|h| &h.start) {
            Some(StartLine::Request { target, .. }) => target.clone(),
            _ => String::new(),
        };
        let host = head
            .and_then(|h| h.header("host"))
            .map(|h| String::from_utf8_lossy(h).into_owned());
        let server_addr = match (&e.client, &e.server) {
            (Some(c), _) => c.peer.clone(),
            (None, Some(s)) => s.local.clone(),
            _ => Endpoint::Unknown,
        };
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target.clone()
        } else if e.orphan {
            String::new()
        } else {
            let authority = host.clone().unwrap_or_else(|| server_addr.to_string());
            format!("http://{authority}{target}")
        };
        let port = match &server_addr {
            Endpoint::Inet(a) => Some(a.port()),
            _ => None,
        };
        let path = target.split("://").nth(1).map_or(target.as_str(), |rest| {
            rest.find('/').map_or("/", |i| &rest[i..])
        });
        let rule = devstack_service(port, path).map(str::to_owned);
        let near = self.server_name(e, procs);
        let behind_proxy = fold && self.goes_into_proxy(e);
        let (to, via) = if behind_proxy {
            let upstream = e
                .upstream
                .and_then(|u| self.exchanges.get(&u))
                .and_then(|u| self.server_name(u, procs))
                .filter(|n| !self.proxies.is_proxy(n));
            let to = rule
                .or(upstream)
                .or(near.clone())
                .unwrap_or_else(|| server_addr.to_string());
            let via = near.filter(|n| *n != to);
            (to, via)
        } else {
            let to = match (&e.server, &e.client) {
                (Some(_), _) => near.unwrap_or_default(),
                (None, Some(_)) => near
                    .or(rule)
                    .or(host)
                    .unwrap_or_else(|| server_addr.to_string()),
                (None, None) => "?".into(),
            };
            (to, None)
        };
        let folded = fold && e.folded_into.is_some();
        let up = e.upstream.and_then(|u| self.exchanges.get(&u));
        let upstream_view = up.and_then(|u| u.server.clone());
        let upstream_target = up
            .and_then(|u| u.head.as_ref())
            .and_then(|h| match &h.start {
                StartLine::Request { target, .. } => Some(target.clone()),
                StartLine::Response { .. } => None,
            });
        let filtered = !folded
            && self.filter.as_ref().is_some_and(|f| {
                f.excludes(&Subject {
                    from: &from,
                    to: &to,
                    method: e.method(),
                    url: &url,
                })
            });
        if let Some(e) = self.exchanges.get_mut(&x) {
            e.from = from;
            e.to = to;
            e.url = url;
            e.via = via;
            e.upstream_view = upstream_view;
            e.upstream_target = upstream_target;
            e.filtered = filtered || folded;
            e.resolved = true;
            if filtered {
                self.stats.filtered += 1;
            }
            if folded {
                self.stats.folded += 1;
            }
        }
    }

    fn write(&mut self, x: u64, which: Which, procs: &ProcTable) {
        self.resolve(x, procs);
        let Some(e) = self.exchanges.get_mut(&x) else {
            return;
        };
        let idx = which as usize;
        if e.written[idx] {
            return;
        }
        e.written[idx] = true;
        let body_len = e.message(which).map(|m| m.body.len);
        if !e.filtered
            && let Some(body_len) = body_len
        {
            self.next_number += 1;
            e.numbers[idx] = Some(self.next_number);
            self.stats.messages += 1;
            self.stats.body_bytes += body_len;
            if which == Which::Request || e.orphan {
                self.stats.exchanges += 1;
            }
            let e = &self.exchanges[&x];
            let msg = e.message(which).expect("checked above");
            self.sink.message(&Entry {
                number: self.next_number,
                which,
                exchange: e,
                msg,
            });
        }
        self.maybe_done(x);
    }

    /// An exchange whose messages are all written goes to the per-exchange sinks.
    fn maybe_done(&mut self, x: u64) {
        let now = self.now;
        let Some(e) = self.exchanges.get_mut(&x) else {
            return;
        };
        if e.done_at.is_some() {
            return;
        }
        let req_done = e.written[0] || e.request.is_none();
        let resp_done = e.written[1] || (e.response.is_none() && e.unanswered);
        if req_done && resp_done && (e.written[0] || e.written[1]) {
            e.done_at = Some(now);
            if !e.filtered {
                self.sink.exchange(e);
            }
            // Written: the messages are no longer needed. The exchange itself stays a moment
            // only if the other end is traced and its view may still come.
            e.request = None;
            e.response = None;
            e.interim.clear();
            let view = match (&e.client, &e.server) {
                (Some(_), Some(_)) => None,
                (Some(v), None) | (None, Some(v)) => Some(v.conn),
                (None, None) => None,
            };
            let partner_possible = view
                .and_then(|c| self.conns.get(&c))
                .is_some_and(|info| !self.peer_conns(info).is_empty());
            if !partner_possible {
                self.forget(x);
            }
        }
    }

    /// Drops an exchange and its keys.
    fn forget(&mut self, x: u64) {
        if let Some(e) = self.exchanges.remove(&x) {
            for k in e.keys {
                self.by_key.remove(&k);
            }
            for v in [e.client, e.server].into_iter().flatten() {
                if let Some(info) = self.conns.get_mut(&v.conn) {
                    info.exchanges.retain(|i| *i != x);
                }
            }
        }
    }

    /// Writes what is ready: messages at the front of the order that are complete and older
    /// than the slack (all of them when `force`).
    fn release(&mut self, force_all: bool, procs: &ProcTable) {
        while let Some((&(ts, _), &item)) = self.queue.first_key_value() {
            let crowded = self.queue.len() > MAX_QUEUED;
            let force = force_all || crowded;
            if !force && ts.saturating_add(self.slack_ns) > self.now {
                break;
            }
            if crowded && !force_all {
                self.stats.forced += 1;
            }
            match item {
                Item::Pending(_) => {
                    if !force {
                        break;
                    }
                    self.dequeue(item);
                }
                Item::Msg(x, which) => {
                    let ready = self
                        .exchanges
                        .get(&x)
                        .is_some_and(|e| e.message(which).is_some());
                    if !ready && !force {
                        break;
                    }
                    self.dequeue(item);
                    if ready {
                        self.write(x, which, procs);
                    }
                }
            }
        }
    }

    /// Forgets exchanges written long ago and connections ended long ago.
    fn expire(&mut self) {
        let now = self.now;
        let old: Vec<u64> = self
            .exchanges
            .values()
            .filter(|e| e.done_at.is_some_and(|t| t + KEEP_DONE_NS < now))
            .map(|e| e.id)
            .collect();
        for x in old {
            self.forget(x);
        }
        let gone: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ended.is_some_and(|t| t + KEEP_DONE_NS < now))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(c) = self.conns.remove(&id)
                && let Some(v) = self.by_addr.get_mut(&(c.local.clone(), c.peer.clone()))
            {
                v.retain(|i| *i != id);
                if v.is_empty() {
                    self.by_addr.remove(&(c.local, c.peer));
                }
            }
        }
        for c in self.conns.values_mut() {
            let live = &self.exchanges;
            c.exchanges.retain(|x| live.contains_key(x));
        }
    }

    /// Periodic work at kernel time `now_ns`.
    pub fn tick(&mut self, now_ns: u64, procs: &ProcTable) {
        self.now = now_ns;
        self.release(false, procs);
        self.expire();
        self.sink.flush();
    }

    /// The end: everything still waiting is written.
    pub fn finish(&mut self, now_ns: u64, procs: &ProcTable) {
        self.now = now_ns;
        self.release(true, procs);
        let ids: Vec<u64> = self.exchanges.keys().copied().collect();
        for x in ids {
            if let Some(e) = self.exchanges.get_mut(&x) {
                e.unanswered |= e.response.is_none();
            }
            self.maybe_done(x);
        }
    }
}

/// Whether `b` cannot be the other end of `a` because they live in different network
/// namespaces where that matters: loopback addresses and unix socket names are each
/// namespace's own (abstract unix names are; paths are the mount namespace's, and unix ends
/// pair by their kernel sockets anyway).
fn other_namespace(a: &ConnInfo, b: &ConnInfo) -> bool {
    if a.netns == 0 || b.netns == 0 || a.netns == b.netns {
        return false;
    }
    match (&a.local, &a.peer) {
        (Endpoint::Inet(l), Endpoint::Inet(p)) => l.ip().is_loopback() || p.ip().is_loopback(),
        _ => a.transport == Transport::Unix,
    }
}

/// The inode of sniffer's own network namespace (0 when /proc does not tell).
fn own_netns() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino() as u32)
}

/// Of two views of one message, the one that shows more.
fn better(a: Option<Message>, b: Option<Message>) -> Option<Message> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let rank = |m: &Message| {
                (
                    m.ending == Ending::Complete,
                    std::cmp::Reverse(m.body.missing),
                    m.body.preview.len(),
                )
            };
            Some(if rank(&b) > rank(&a) { b } else { a })
        }
        (a, b) => a.or(b),
    }
}

impl<L: LogSink> HttpSink for Stitcher<L> {
    fn event(&mut self, conn: &Conn, ev: HttpEvent, procs: &ProcTable) {
        match ev {
            HttpEvent::Begin { key, ts } => {
                self.conn_info(conn, key.client_view, procs);
                self.on_begin(conn, key, ts);
            }
            HttpEvent::RequestHead { key, head } => {
                if let Some(x) = self.by_key.get(&key).copied() {
                    if let Some(e) = self.exchanges.get_mut(&x) {
                        e.head = Some(head);
                    }
                    self.stitch(x);
                    // Stitching may have kept the other end's exchange.
                    if let Some(x) = self.by_key.get(&key).copied() {
                        self.forwarded_caller(x, procs);
                        self.fold(x);
                    }
                }
            }
            HttpEvent::Request { key, msg } => {
                if let Some(x) = self.by_key.get(&key).copied()
                    && let Some(e) = self.exchanges.get_mut(&x)
                {
                    if e.head.is_none() {
                        e.head = Some(msg.head.clone());
                    }
                    e.request = better(e.request.take(), Some(msg));
                }
            }
            HttpEvent::Response {
                key,
                msg,
                request,
                interim,
            } => {
                self.conn_info(conn, key.client_view, procs);
                self.on_response(conn, key, msg, request, interim);
            }
            HttpEvent::Broken { key, reason, .. } => self.on_broken(key, reason),
        }
    }

    fn conn_ended(&mut self, conn: &Conn, _procs: &ProcTable) {
        let now = self.now;
        let Some(info) = self.conns.get_mut(&conn.id) else {
            return;
        };
        info.ended = Some(now);
        let xs: Vec<u64> = info.exchanges.iter().copied().collect();
        for x in xs {
            if let Some(e) = self.exchanges.get_mut(&x)
                && e.response.is_none()
            {
                // Unless the other end's view still brings the response.
                let other = if e.client.is_some() && e.server.is_some() {
                    let other_conn = if e.client.as_ref().is_some_and(|c| c.conn == conn.id) {
                        e.server.as_ref().map(|s| s.conn)
                    } else {
                        e.client.as_ref().map(|c| c.conn)
                    };
                    other_conn
                        .is_some_and(|c| self.conns.get(&c).is_some_and(|i| i.ended.is_none()))
                } else {
                    false
                };
                if !other {
                    e.unanswered = true;
                }
            }
            self.maybe_done(x);
        }
    }

    fn close(&mut self) {
        self.sink.close()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{
        conns::ConnSink as _,
        events::{Dir, Role},
        exchange::Exchanges,
        stream::{Piece, Stream},
    };

    /// Records the numbered titles.
    #[derive(Default)]
    struct Titles {
        lines: Vec<String>,
        exchanges: Vec<(u64, bool)>,
    }

    impl LogSink for Titles {
        fn message(&mut self, e: &Entry<'_>) {
            self.lines.push(crate::sinks::log::title(
                e.number, e.which, e.exchange, e.msg,
            ));
        }
        fn exchange(&mut self, x: &Exchange) {
            self.exchanges
                .push((x.id, x.client.is_some() && x.server.is_some()));
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
            netns: 0,
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
            st.slack_ns = 100;
            Self {
                http: Exchanges::new(st, 4096),
                procs,
                conns,
                off: HashMap::new(),
            }
        }

        /// Processes `procs` and connections `conns` (ids 1, 2... in order).
        fn custom(procs: &[(u32, &str)], conns: Vec<Conn>, proxies: Proxies) -> Self {
            let mut table = ProcTable::new();
            for (pid, name) in procs {
                table.on_fork(*pid, 1, name);
            }
            let mut st =
                Stitcher::new(Titles::default(), Names::default(), None).with_proxies(proxies);
            st.slack_ns = 100;
            Self {
                http: Exchanges::new(st, 4096),
                procs: table,
                conns,
                off: HashMap::new(),
            }
        }

        /// `bytes` moved at time `ts` on connection `c` in direction `dir`.
        fn bytes(&mut self, c: u64, dir: Dir, ts: u64, bytes: &[u8]) {
            let off = self.off.entry((c, dir.index())).or_insert(0);
            let p = Piece::Data {
                off: *off,
                bytes: bytes.to_vec(),
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

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_give_back_the_log_entries_byte_for_byte() {
        use crate::sinks::{
            jsonl::{Jsonl, LogFanout, Recorder},
            log::{NumberedLog, record_entry},
            output::Outputs,
        };
        let (log, jsonl) = (Shared::default(), Shared::default());
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
        fan.sinks.push(Box::new(Jsonl::new(
            outputs.writer(Box::new(jsonl.clone()), "jsonl", "exchanges"),
            rec,
        )));
        let mut procs = ProcTable::new();
        procs.on_fork(100, 1, "openstack");
        procs.on_fork(200, 1, "glance-api");
        let conns = vec![
            conn(1, 100, Role::Client, "127.0.0.1:40000", "127.0.0.1:9292"),
            conn(2, 200, Role::Server, "127.0.0.1:9292", "127.0.0.1:40000"),
        ];
        let mut st = Stitcher::new(fan, Names::default(), None);
        st.slack_ns = 100;
        let mut http = Exchanges::new(st, 4096);
        let mut off = [[0u64; 2]; 2];
        let mut send = |c: usize, dir: Dir, ts: u64, b: &[u8], http: &mut Exchanges<_>| {
            let p = Piece::Data {
                off: off[c][dir.index()],
                bytes: b.to_vec(),
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
}
