//! One exchange from both ends, named, in causal order, numbered.
//!
//! When the client and the server of a connection are both traced, each reports the exchange
//! from its side; the two views are stitched into one (the connections must be each other's
//! peers, the request heads must agree, and views pair in order). Each message is placed at the
//! kernel time of its first byte (the earliest of its views), so a call a server makes while it
//! serves a request sits inside that exchange. A message is written once it is complete and no
//! message that began before it can still arrive: events from other CPUs reach userspace a
//! little late, so the order is final after a short slack, a few times as long as the furthest
//! a first byte came late in the last seconds. One end's view can come much later
//! than the other's (a client reading its response late): it joins the written exchange.
mod few;
mod fold;
mod late;
mod model;
mod naming;
mod order;
#[cfg(test)]
mod tests;
mod views;

use std::collections::VecDeque;

use foldhash::HashMap;

use model::better;
pub use model::{Entry, Exchange, LogSink, Stats, View, Which};
use order::Item;

use crate::{
    conns::Conn,
    events::{Endpoint, Transport},
    exchange::{HttpEvent, HttpSink, MsgKey},
    filter::Filter,
    http::message::Message,
    names::Names,
    owners::Owners,
    procs::ProcTable,
    proxy::Proxies,
};

/// How long after a message's first byte its place in the order is taken as final, at least
/// and at most: a few times the furthest a first byte came late in the last seconds (see
/// `order::Slack`). At least 10 ms: the other end's view of an exchange and a proxy's hop come
/// as late as the other process takes to read (a busy worker's wakeup, milliseconds), and are
/// stitched or folded only if they come before the message is written. A floor of 1 ms
/// (2026-12-07) broke Apache's folds and the naming of its hops under load (e2e, twice).
pub const MIN_ORDER_SLACK_NS: u64 = 10_000_000;
pub const MAX_ORDER_SLACK_NS: u64 = 20_000_000;
/// What the messages waiting for their place may hold at most, by their weights (their bytes
/// and ~1 KiB each); past it the oldest are written as they are. A long message at the front
/// (a download, an upload) holds back all that came after it: 16 MiB are ~10,000 small
/// messages, minutes of a devstack's calls, a fraction of a second of a load test.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;
/// How long a written exchange with one end's view only stays matchable for the other end's
/// view (it comes within the order slack unless events were lost). Exchanges seen from both
/// ends wait for a late view differently: see [`late`].
const KEEP_DONE_NS: u64 = 2_000_000_000;
/// How long an ended connection stays for the other end's views of its exchanges to be
/// stitched to: they come within the order slack of its end unless the other end reads a
/// request that long after this end hung up (or events were lost); such a view is then
/// written on its own. Under connection churn ended connections are most of the heap (tens of
/// thousands a second, ~350 bytes each with their addresses).
const KEEP_ENDED_NS: u64 = 500_000_000;
/// Forgotten exchanges' boxes kept for the next ones, at most (~1 KiB each). Exchanges come
/// and go in order, so without them whole pages of the allocator fall free at once, go back to
/// the kernel and are faulted in again (0.33 page faults per keep-alive exchange, 0.04 with).
const SPARE_EXCHANGES: usize = 1024;
/// Exchanges into or out of a reverse proxy waiting for their other hop, at most.
const MAX_HOP_CANDIDATES: usize = 4096;

#[derive(Debug)]
struct ConnInfo {
    /// The process at this end.
    tgid: u32,
    local: Endpoint,
    peer: Endpoint,
    sk: u64,
    peer_sk: u64,
    peer_tgid: u32,
    /// The socket's network namespace (0: unknown).
    netns: u32,
    client: bool,
    transport: Transport,
    /// Exchanges of this connection, in order.
    exchanges: VecDeque<u64>,
    /// Those of them with this end's view only, in order: what the other end's views pair
    /// with. Paired ones wait in `exchanges` until written, thousands on a busy keep-alive
    /// connection traced at both ends; a search for a partner goes through these only.
    unpaired: VecDeque<u64>,
    /// The other end's name, when it is not traced (looked up while it is alive).
    far_name: Option<String>,
    /// This end's process is a reverse proxy.
    near_proxy: bool,
    /// The untraced other end is a reverse proxy.
    far_proxy: bool,
    ended: Option<u64>,
    /// The connection speaks TLS (its HTTP is the plaintext the TLS library moved).
    tls: bool,
}

pub struct Stitcher<L: LogSink> {
    /// Boxed: an exchange is ~1 KiB, and a map of them inline doubles (and copies) ~1 KiB
    /// per slot as it grows under load; boxed, a slot is 16 bytes.
    exchanges: HashMap<u64, Box<Exchange>>,
    /// Boxes of forgotten exchanges, reused (see [`SPARE_EXCHANGES`]): the boxes themselves
    /// are the point, the memory the map's entries move in and out of.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Exchange>>,
    by_key: HashMap<MsgKey, u64>,
    order: order::Order,
    /// Boxed, as exchanges are: under connection churn thousands of ended connections wait
    /// here for late views, and an inline map doubled and copied them as it grew.
    conns: HashMap<u64, Box<ConnInfo>>,
    by_addr: HashMap<(Endpoint, Endpoint), Vec<u64>>,
    /// Unix connections by their kernel socket, and by their peer's: the newest under each.
    /// A unix path names the listening socket, shared by every connection to it, so unix
    /// connections are found by these (the kernel's own links), never by `by_addr`. The
    /// kernel reuses a freed socket's address at once, so only the newest is kept: a live
    /// socket's peer is held by it and cannot be reused under it.
    unix_by_sk: HashMap<u64, u64>,
    unix_by_peer: HashMap<u64, u64>,
    next_id: u64,
    next_number: u64,
    names: Names,
    /// Looks up untraced processes in /proc; None keeps the stitcher off the live system.
    owners: Option<Owners>,
    /// Untraced processes' names by pid, with the kernel time they were read (see
    /// `pid_name`).
    untraced_names: HashMap<u32, (u64, String)>,
    /// sniffer's own network namespace: the only one its socket lookups see (0: unknown).
    own_netns: u32,
    filter: Option<Filter>,
    proxies: Proxies,
    /// Exchanges into a proxy, and out of one, not yet folded with their other hop.
    inbound: VecDeque<u64>,
    /// Written exchanges kept for one end's late view, oldest first (see [`late`]).
    late: VecDeque<u64>,
    /// Exchanges kept with one end's view after they were written whole, by that time, oldest
    /// first: what `expire` forgets (a walk of every exchange and connection each tick cost a
    /// tenth of sniffer's time under connection churn).
    pub(super) done: VecDeque<(u64, u64)>,
    /// Connections by the time they ended, oldest first, for `expire` likewise.
    ended: VecDeque<(u64, u64)>,
    outbound: VecDeque<u64>,
    slack: order::Slack,
    now: u64,
    /// The place (kernel time) of the last message the order wrote.
    written_to: u64,
    /// The latest first byte placed so far.
    newest: u64,
    pub stats: Stats,
    pub sink: L,
}

impl ConnInfo {
    /// Lists a new exchange of this connection, which has this end's view only.
    fn list(&mut self, x: u64) {
        self.exchanges.push_back(x);
        self.unpaired.push_back(x);
    }
}

impl<L: LogSink> Stitcher<L> {
    pub fn new(sink: L, names: Names, filter: Option<Filter>) -> Self {
        Self {
            exchanges: HashMap::default(),
            spare: Vec::new(),
            by_key: HashMap::default(),
            order: order::Order::default(),
            conns: HashMap::default(),
            by_addr: HashMap::default(),
            unix_by_sk: HashMap::default(),
            unix_by_peer: HashMap::default(),
            next_id: 0,
            next_number: 0,
            names,
            owners: Some(Owners::new()),
            untraced_names: HashMap::default(),
            own_netns: own_netns(),
            filter,
            proxies: Proxies::default(),
            inbound: VecDeque::new(),
            late: VecDeque::new(),
            done: VecDeque::new(),
            ended: VecDeque::new(),
            outbound: VecDeque::new(),
            slack: order::Slack::default(),
            now: 0,
            written_to: 0,
            newest: 0,
            stats: Stats::default(),
            sink,
        }
    }

    /// Reads who connected from the kernel's table (see `Owners::connector`).
    pub fn set_connectors(&mut self, table: Box<dyn crate::owners::ConnectorTable>) {
        if let Some(o) = self.owners.as_mut() {
            o.set_connectors(table);
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

    fn conn_info(&mut self, conn: &Conn, client: bool, procs: &ProcTable) {
        if self.conns.contains_key(&conn.id) {
            return;
        }
        let mut info = ConnInfo {
            tgid: conn.tgid,
            local: conn.local.clone(),
            peer: conn.peer.clone(),
            sk: conn.sk,
            peer_sk: conn.peer_sk,
            peer_tgid: conn.peer_tgid,
            netns: conn.netns,
            client,
            transport: conn.transport,
            exchanges: VecDeque::new(),
            unpaired: VecDeque::new(),
            far_name: None,
            near_proxy: self.proxies.is_proxy(&self.names.of(conn.tgid, procs)),
            far_proxy: false,
            ended: None,
            tls: conn.tls.is_some(),
        };
        // Name the other end now, while its process is alive, unless it is traced too.
        if self.peer_conns(&info).is_empty() {
            info.far_name = self.far_name(&info, procs);
            info.far_proxy = info
                .far_name
                .as_deref()
                .is_some_and(|n| self.proxies.is_proxy(n));
        }
        if info.transport == Transport::Unix {
            for (index, sk) in [
                (&mut self.unix_by_sk, info.sk),
                (&mut self.unix_by_peer, info.peer_sk),
            ] {
                if sk != 0 {
                    index.insert(sk, conn.id);
                }
            }
        } else {
            self.by_addr
                .entry((conn.local.clone(), conn.peer.clone()))
                .or_default()
                .push(conn.id);
        }
        self.conns.insert(conn.id, Box::new(info));
    }

    /// Traced connections that are the other end of `c`.
    fn peer_conns(&self, c: &ConnInfo) -> Vec<u64> {
        if c.transport == Transport::Unix {
            return self.unix_peer_conns(c);
        }
        let mut out: Vec<u64> = self
            .by_addr
            .get(&(c.peer.clone(), c.local.clone()))
            .cloned()
            .unwrap_or_default();
        out.retain(|id| {
            self.conns
                .get(id)
                .is_some_and(|o| !other_namespace(c, o) && o.client != c.client)
        });
        // Where both namespaces are known, the end in the same one first: two namespaces
        // joined by a veth pair are peers across namespaces, and the same addresses can be
        // reused by another pair of namespaces.
        let netns = |id: &u64| self.conns.get(id).map_or(0, |o| o.netns);
        out.sort_by_key(|id| c.netns == 0 || netns(id) != c.netns);
        out
    }

    /// The other end of unix connection `c`: the connection on its peer socket, or the one
    /// whose peer is its socket, where every link both ends know agrees (a socket address
    /// reused since is another connection).
    fn unix_peer_conns(&self, c: &ConnInfo) -> Vec<u64> {
        let agree = |a: u64, b: u64| a == 0 || b == 0 || a == b;
        let mut out = Vec::new();
        for (index, sk) in [(&self.unix_by_sk, c.peer_sk), (&self.unix_by_peer, c.sk)] {
            let Some(&id) = index.get(&sk).filter(|_| sk != 0) else {
                continue;
            };
            if !out.contains(&id)
                && self.conns.get(&id).is_some_and(|o| {
                    o.transport == Transport::Unix
                        && o.client != c.client
                        && agree(c.peer_sk, o.sk)
                        && agree(o.peer_sk, c.sk)
                })
            {
                out.push(id);
            }
        }
        out
    }

    fn new_exchange(&mut self, view: View, client: bool, ts: u64) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let (c, s) = if client {
            (Some(view), None)
        } else {
            (None, Some(view))
        };
        let exchange = Exchange {
            id,
            client: c,
            server: s,
            request_ts: ts,
            ..Default::default()
        };
        let boxed = match self.spare.pop() {
            Some(mut b) => {
                *b = exchange;
                b
            }
            None => Box::new(exchange),
        };
        self.exchanges.insert(id, boxed);
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

    /// A message's first byte: its place in the order. A response that `answers` a request
    /// whose response was written already (from the other end's view) needs no place.
    fn on_begin(&mut self, conn: &Conn, key: MsgKey, ts: u64, answers: Option<MsgKey>) {
        if key.request {
            let x = self.new_exchange(Self::view(conn), key.client_view, ts);
            if let Some(e) = self.exchanges.get_mut(&x) {
                e.keys.push(key);
            }
            self.by_key.insert(key, x);
            if let Some(info) = self.conns.get_mut(&conn.id) {
                info.list(x);
            }
            self.placed(ts);
            self.enqueue_weighed(ts, Item::Msg(x, Which::Request), order::weight(None));
        } else {
            let written = answers
                .and_then(|r| self.by_key.get(&r))
                .and_then(|x| self.exchanges.get(x))
                .is_some_and(|e| e.written[1]);
            if !written {
                self.placed(ts);
                self.enqueue_weighed(ts, Item::Pending(key), order::weight(None));
            }
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
                    info.list(x);
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
        if e.done_at.is_some() {
            // The exchange was written: this is one end's late view of it.
            if !interim {
                self.late_response(x, conn.id, msg);
            }
            return;
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
        if !e.answered_by.contains(&conn.id) {
            e.answered_by.push(conn.id);
        }
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
            if let Some(pos) = self.order.place_of(Item::Msg(x, Which::Response))
                && ts < pos.0
            {
                self.dequeue(Item::Msg(x, Which::Response));
                self.enqueue(ts, Item::Msg(x, Which::Response));
            }
        }
    }

    /// What began as `key` is not a message (no start line): counted; it has no entry, unless
    /// the other end's view of it had one (then that entry says it).
    fn on_broken(&mut self, key: MsgKey, reason: &'static str) {
        if self.dequeue(Item::Pending(key)).is_some() {
            self.stats.broken += 1;
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
            self.stats.broken += 1;
            self.dequeue(Item::Msg(x, Which::Request));
            self.forget(x);
            self.by_key.remove(&key);
        }
    }

    /// The request `key`'s answer went missing on `conn`: the exchange is written without one,
    /// now rather than when the connection ends (a pooled connection lives for hours, and the
    /// exchange would be held all that time), unless the other end's view may still bring it.
    fn on_unanswered(&mut self, conn: u64, key: MsgKey) {
        let Some(x) = self.by_key.get(&key).copied() else {
            return;
        };
        let other = self.other_may_answer(x, conn);
        let Some(e) = self.exchanges.get_mut(&x) else {
            return;
        };
        if e.response.is_some() || e.done_at.is_some() {
            return;
        }
        if other {
            e.answer_lost_on = Some(conn);
            return;
        }
        e.unanswered = true;
        self.stats.answers_missing += 1;
        self.maybe_done(x);
    }

    /// Whether the other end's view of exchange `x` (not `conn`'s) may still bring its
    /// response: that end is seen, its connection goes on, and it did not say the answer went
    /// missing.
    fn other_may_answer(&self, x: u64, conn: u64) -> bool {
        let Some(e) = self.exchanges.get(&x) else {
            return false;
        };
        let (Some(c), Some(s)) = (&e.client, &e.server) else {
            return false;
        };
        let other = if c.conn == conn { s.conn } else { c.conn };
        e.answer_lost_on != Some(other) && self.conns.get(&other).is_some_and(|i| i.ended.is_none())
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
            if e.is_broken() {
                self.stats.broken += 1;
            }
            if !e.filtered {
                self.sink.exchange(e);
            }
            // Written: the messages are no longer needed. The exchange itself stays while a
            // view of it may still come.
            e.request = None;
            e.response = None;
            e.interim.clear();
            self.keep_or_forget(x);
        }
    }

    /// Drops an exchange and its keys.
    fn forget(&mut self, x: u64) {
        if let Some(e) = self.exchanges.remove(&x) {
            for k in &e.keys {
                self.by_key.remove(k);
            }
            for v in [&e.client, &e.server].into_iter().flatten() {
                if let Some(info) = self.conns.get_mut(&v.conn) {
                    // Exchanges go in the order they came, mostly: the front, not a scan.
                    for list in [&mut info.exchanges, &mut info.unpaired] {
                        if list.front() == Some(&x) {
                            list.pop_front();
                        } else {
                            list.retain(|i| *i != x);
                        }
                    }
                }
            }
            if self.spare.len() < SPARE_EXCHANGES {
                self.spare.push(e);
            }
        }
    }

    /// Forgets exchanges written long ago with one end's view only, and connections ended long
    /// ago: the oldest of each, from the front of their queues.
    fn expire(&mut self) {
        let now = self.now;
        let old = |t: u64, keep: u64| t.saturating_add(keep) < now;
        while let Some(&(t, x)) = self.done.front()
            && old(t, KEEP_DONE_NS)
        {
            self.done.pop_front();
            if self
                .exchanges
                .get(&x)
                .is_some_and(|e| e.done_at == Some(t) && (e.client.is_none() || e.server.is_none()))
            {
                self.forget(x);
            }
        }
        while let Some(&(t, id)) = self.ended.front()
            && old(t, KEEP_ENDED_NS)
        {
            self.ended.pop_front();
            if self.conns.get(&id).is_none_or(|c| c.ended != Some(t)) {
                continue;
            }
            let Some(c) = self.conns.remove(&id) else {
                continue;
            };
            if c.transport == Transport::Unix {
                for (index, sk) in [
                    (&mut self.unix_by_sk, c.sk),
                    (&mut self.unix_by_peer, c.peer_sk),
                ] {
                    if index.get(&sk) == Some(&id) {
                        index.remove(&sk);
                    }
                }
            } else if let Some(v) = self.by_addr.get_mut(&(c.local.clone(), c.peer.clone())) {
                v.retain(|i| *i != id);
                if v.is_empty() {
                    self.by_addr.remove(&(c.local, c.peer));
                }
            }
        }
    }

    /// Writes the messages whose place in the order is final at kernel time `now_ns`.
    pub fn release_due(&mut self, now_ns: u64, procs: &ProcTable) {
        self.now = now_ns;
        self.release(false, procs);
    }

    /// Periodic work at kernel time `now_ns`.
    pub fn tick(&mut self, now_ns: u64, procs: &ProcTable) {
        self.release_due(now_ns, procs);
        self.expire();
        self.expire_names();
        if self.exchanges.is_empty() {
            // Idle: the spare boxes (and what they still hold) go back.
            self.spare = Vec::new();
        }
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

impl<L: LogSink> HttpSink for Stitcher<L> {
    fn event(&mut self, conn: &Conn, ev: HttpEvent, procs: &ProcTable) {
        match ev {
            HttpEvent::Begin { key, ts, answers } => {
                self.conn_info(conn, key.client_view, procs);
                self.on_begin(conn, key, ts, answers);
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
                    let item = Item::Msg(x, Which::Request);
                    let (written, ts) = (e.written[0], e.request_ts);
                    let w = order::weight(e.request.as_ref());
                    if self.order.place_of(item).is_some() {
                        self.order.weigh(item, w);
                    } else if !written {
                        // Its place went while its bytes came (too much waited): it takes it
                        // again, behind messages that began later (counted out of order).
                        self.enqueue(ts, item);
                    }
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
            HttpEvent::Unanswered { key } => self.on_unanswered(conn.id, key),
        }
    }

    fn conn_ended(&mut self, conn: &Conn, _procs: &ProcTable) {
        let now = self.now;
        let Some(info) = self.conns.get_mut(&conn.id) else {
            return;
        };
        info.ended = Some(now);
        self.ended.push_back((now, conn.id));
        let xs: Vec<u64> = info.exchanges.iter().copied().collect();
        for x in xs {
            // Unless the other end's view still brings the response.
            let other = self.other_may_answer(x, conn.id);
            if let Some(e) = self.exchanges.get_mut(&x)
                && e.response.is_none()
                && !other
            {
                e.unanswered = true;
            }
            self.maybe_done(x);
            // A view this connection was to bring will not come now.
            self.recheck_late(x);
        }
    }

    fn close(&mut self) {
        self.sink.close()
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
