//! Who called whom, and the URL: the ends of an exchange named (traced processes, owners of
//! untraced sockets, devstack's URL rules, through proxies), the filters applied.
use super::{ConnInfo, Exchange, LogSink, Stitcher};

/// How long an untraced process's name read from /proc is used without reading it again.
pub(super) const UNTRACED_NAME_NS: u64 = 100_000_000;
use crate::{
    events::Endpoint,
    filter::Subject,
    http::head::StartLine,
    names::{devstack_service, participant},
    owners::read_proc,
    procs::ProcTable,
};

impl<L: LogSink> Stitcher<L> {
    /// The name of a process we may not trace. An untraced one's is read from /proc at most
    /// once per [`UNTRACED_NAME_NS`] (a client opening a connection per request would
    /// otherwise have it read per connection).
    pub(super) fn pid_name(&mut self, pid: u32, procs: &ProcTable) -> String {
        if procs.get(pid).is_some() {
            return self.names.of(pid, procs);
        }
        let now = self.now;
        if let Some((at, name)) = self.untraced_names.get(&pid)
            && now.saturating_sub(*at) < UNTRACED_NAME_NS
        {
            return name.clone();
        }
        let name = read_proc(pid).map_or_else(|| format!("pid {pid}"), |p| participant(&p));
        self.untraced_names.insert(pid, (now, name.clone()));
        name
    }

    /// Forgets the untraced processes' names read long ago.
    pub(super) fn expire_names(&mut self) {
        let now = self.now;
        self.untraced_names
            .retain(|_, (at, _)| now.saturating_sub(*at) < UNTRACED_NAME_NS);
    }

    /// The untraced other end of a connection: the local process owning it, if any (a unix
    /// socket's peer process the kernel read).
    pub(super) fn far_name(&mut self, c: &ConnInfo, procs: &ProcTable) -> Option<String> {
        // Socket tables (sock_diag, /proc/net) are sniffer's own namespace's: an address in
        // another namespace could name a stranger there.
        // The kernel's word (a unix peer's credentials, a TCP client's connect) is any
        // namespace's.
        let owners = self.owners.as_mut()?;
        let peer_tgid = match (&c.peer, &c.local) {
            (Endpoint::Inet(peer), Endpoint::Inet(local)) if c.peer_tgid == 0 && !c.client => {
                owners.connector(c.netns, *peer, *local).unwrap_or(0)
            }
            _ => c.peer_tgid,
        };
        let elsewhere = c.netns != 0 && self.own_netns != 0 && c.netns != self.own_netns;
        if elsewhere && peer_tgid == 0 {
            return None;
        }
        let pid = match c.peer {
            _ if peer_tgid != 0 => Some(peer_tgid),
            Endpoint::Inet(peer) if c.client => owners.listener(peer),
            Endpoint::Inet(peer) => match c.local {
                Endpoint::Inet(local) => owners.owner_of(peer, local),
                _ => owners.owner(peer),
            },
            _ => return None,
        };
        tracing::debug!(client = c.client, peer = %c.peer, ?pid, "owner of the untraced end");
        let pid = pid?;
        Some(self.pid_name(pid, procs))
    }

    /// The other end of connection `c` by name: who owns it when it is not traced, else the
    /// traced process on the connection's other end (whose view of an exchange may come after
    /// the exchange was written from this end's).
    fn other_end_name(&self, c: &ConnInfo, procs: &ProcTable) -> Option<String> {
        c.far_name.clone().or_else(|| {
            let peer = self.peer_conns(c).into_iter().next()?;
            let peer = self.conns.get(&peer)?;
            Some(self.names.of(peer.tgid, procs))
        })
    }

    /// The server of an exchange by name: its own view, else who is at the far end.
    pub(super) fn server_name(&self, e: &Exchange, procs: &ProcTable) -> Option<String> {
        match (&e.server, &e.client) {
            (Some(s), _) => Some(self.names.of(s.pid, procs)),
            (None, Some(c)) => self
                .conns
                .get(&c.conn)
                .and_then(|i| self.other_end_name(i, procs)),
            _ => None,
        }
    }

    /// Names the ends and the URL of an exchange. Behind a reverse proxy the callee is the
    /// service: by devstack's URL rules, else the server of the folded upstream hop; a service
    /// that saw only the proxy names the caller the proxy forwarded, when it can be known.
    pub(super) fn resolve(&mut self, x: u64, procs: &ProcTable) {
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
                let far = info.and_then(|i| self.other_end_name(i, procs));
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
            Some(StartLine::Request { target, .. }) => target.as_str(),
            _ => "",
        };
        let host = head
            .and_then(|h| h.header("host"))
            .map(String::from_utf8_lossy);
        let server_addr = match (&e.client, &e.server) {
            (Some(c), _) => c.peer.clone(),
            (None, Some(s)) => s.local.clone(),
            _ => Endpoint::Unknown,
        };
        let tls = [&e.client, &e.server]
            .into_iter()
            .flatten()
            .any(|v| self.conns.get(&v.conn).is_some_and(|i| i.tls));
        let url = if e.orphan {
            String::new()
        } else {
            let authority = match &host {
                Some(h) => std::borrow::Cow::Borrowed(h.as_ref()),
                None => std::borrow::Cow::Owned(server_addr.to_string()),
            };
            crate::http::target::url(target, &authority, tls)
        };
        let port = match &server_addr {
            Endpoint::Inet(a) => Some(a.port()),
            _ => None,
        };
        let path = target
            .split("://")
            .nth(1)
            .map_or(target, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
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
                    .or(host.map(|h| h.into_owned()))
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
            e.tls = tls;
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
}
