//! Reverse proxies: a proxy's upstream hop folded into the client's exchange, and the caller a
//! proxy forwarded named from what it passed on.
use super::{ConnInfo, Exchange, LogSink, MAX_HOP_CANDIDATES, Stitcher, View};
use crate::{
    events::Endpoint,
    procs::ProcTable,
    proxy::{self, Match},
};

impl<L: LogSink> Stitcher<L> {
    pub(super) fn info_of(&self, v: &Option<View>) -> Option<&ConnInfo> {
        v.as_ref()
            .and_then(|v| self.conns.get(&v.conn).map(|c| &**c))
    }

    /// The exchange's server end is a reverse proxy (its own view, else what the client's
    /// connection leads to).
    pub(super) fn goes_into_proxy(&self, e: &Exchange) -> bool {
        match (self.info_of(&e.server), self.info_of(&e.client)) {
            (Some(s), _) => s.near_proxy,
            (None, Some(c)) => c.far_proxy,
            _ => false,
        }
    }

    /// The exchange's client end is a reverse proxy.
    pub(super) fn comes_from_proxy(&self, e: &Exchange) -> bool {
        match (self.info_of(&e.client), self.info_of(&e.server)) {
            (Some(c), _) => c.near_proxy,
            (None, Some(s)) => s.far_proxy,
            _ => false,
        }
    }

    /// Whether `inb` (into a proxy) and `out` (out of it) are one request's two hops.
    pub(super) fn hops_match(inb: &Exchange, out: &Exchange) -> Option<Match> {
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
    pub(super) fn fold(&mut self, x: u64) {
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
    pub(super) fn forwarded_caller(&mut self, x: u64, procs: &ProcTable) {
        let Some(e) = self.exchanges.get(&x) else {
            return;
        };
        if e.client.is_some() || e.caller.is_some() || !self.comes_from_proxy(e) {
            return;
        }
        let Some(addr) = e.head.as_deref().and_then(proxy::forwarded_client) else {
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
}
