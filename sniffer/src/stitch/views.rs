//! Both ends' views of one exchange found and merged into one.
use super::{Item, LogSink, Stitcher, Which, better};
use crate::stitch::Exchange;

impl<L: LogSink> Stitcher<L> {
    /// Looks for the other end's view of exchange `x` and merges the two: on a peer
    /// connection, an exchange without a view from this end whose request head is the same;
    /// failing that, when one end lost what the other saw (events dropped), an exchange that
    /// has only a response on one end and only a request (or a matching response) on the other.
    pub(super) fn stitch(&mut self, x: u64) {
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
                let found = pinfo.unpaired.iter().copied().find(|y| {
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
    pub(super) fn merge(&mut self, a: u64, b: u64) {
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
        // The gone exchange is listed on the connections of its views only, once, and near
        // the end: it began late, or it would have been kept.
        for v in [&g.client, &g.server].into_iter().flatten() {
            if let Some(info) = self.conns.get_mut(&v.conn) {
                if let Some(e) = info.exchanges.iter_mut().rev().find(|e| **e == gone) {
                    *e = keep;
                }
                if let Some(e) = info.unpaired.iter_mut().rev().find(|e| **e == gone) {
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
        // Both views now: nothing more pairs with it.
        let paired = (k.client.as_ref())
            .zip(k.server.as_ref())
            .map(|(c, s)| [c.conn, s.conn]);
        let written = k.written;
        let response_ts = k.response_ts;
        let request_ts = k.request_ts;
        for conn in paired.into_iter().flatten() {
            if let Some(info) = self.conns.get_mut(&conn) {
                info.unpaired.retain(|e| *e != keep);
            }
        }
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
}
