//! Which one-ended exchanges of two captures are the two ends of one exchange: the client's
//! socket is the server's with the addresses reversed (the TCP 4-tuple), the request line is
//! the same, and on a connection carrying several such requests they pair in order.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use crate::record::EndRecord;

/// One end's view of an exchange whose other end its capture did not see.
#[derive(Clone, Copy, Debug)]
pub struct Half<'a> {
    /// The capture (input file) it comes from.
    pub file: usize,
    pub host: usize,
    pub end: &'a EndRecord,
    pub method: &'a str,
    pub url: &'a str,
    pub status: Option<u16>,
    /// The request's first byte on this host's clock: the order on a connection.
    pub at: i128,
}

/// An address that names the same socket on every host: an IP address, not loopback, not
/// unspecified.
pub fn global(addr: &str) -> Option<SocketAddr> {
    let a: SocketAddr = addr.parse().ok()?;
    let ip = a.ip();
    let local = ip.is_loopback()
        || ip.is_unspecified()
        || matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
    (!local).then_some(a)
}

/// Whether a client's and a server's view can be one connection's two ends, besides their
/// addresses: from two captures; on two hosts only over addresses that mean the same on both;
/// on one host, not in two network namespaces.
fn compatible(c: &Half<'_>, s: &Half<'_>) -> bool {
    if c.file == s.file {
        return false;
    }
    let addresses_global = global(&c.end.local).is_some() && global(&c.end.peer).is_some();
    let place = if c.host == s.host {
        !matches!((c.end.netns, s.end.netns), (Some(a), Some(b)) if a != b)
    } else {
        addresses_global
    };
    let status = !matches!((c.status, s.status), (Some(a), Some(b)) if a != b);
    place && status
}

/// Pairs of (client index, server index), each half in one pair at most.
pub fn pair(clients: &[Half<'_>], servers: &[Half<'_>]) -> Vec<(usize, usize)> {
    type Key<'a> = (&'a str, &'a str, &'a str, &'a str);
    // Servers by (client address, server address, method, URL), in their time order.
    let mut by_key: HashMap<Key<'_>, Vec<usize>> = HashMap::new();
    for (i, s) in servers.iter().enumerate() {
        by_key
            .entry((&s.end.peer, &s.end.local, s.method, s.url))
            .or_default()
            .push(i);
    }
    for list in by_key.values_mut() {
        list.sort_by_key(|&i| (servers[i].at, i));
    }
    let mut order: Vec<usize> = (0..clients.len()).collect();
    order.sort_by_key(|&i| (clients[i].at, i));
    let mut out = Vec::new();
    for ci in order {
        let c = &clients[ci];
        let Some(list) = by_key.get_mut(&(&c.end.local, &c.end.peer, c.method, c.url)) else {
            continue;
        };
        if let Some(pos) = list.iter().position(|&si| compatible(c, &servers[si])) {
            out.push((ci, list.remove(pos)));
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(local: &str, peer: &str, netns: Option<u32>) -> EndRecord {
        EndRecord {
            pid: 1,
            local: local.into(),
            peer: peer.into(),
            transport: "tcp".into(),
            netns,
            host: None,
        }
    }

    fn half<'a>(file: usize, host: usize, end: &'a EndRecord, url: &'a str, at: i128) -> Half<'a> {
        Half {
            file,
            host,
            end,
            method: "GET",
            url,
            status: Some(200),
            at,
        }
    }

    const C: &str = "198.18.0.2:40000";
    const S: &str = "198.18.0.1:5000";
    const V3: &str = "http://198.18.0.1:5000/v3";

    #[test]
    fn the_four_tuple_and_the_request_pair_two_hosts_views_in_order() {
        let ce = end(C, S, Some(1));
        let se = end(S, C, Some(2));
        let other = end("198.18.0.2:40001", S, Some(1));
        let clients = [
            half(0, 0, &ce, V3, 10),
            half(0, 0, &ce, V3, 20),
            half(0, 0, &other, V3, 15),
        ];
        // The server's clock is far ahead; its views come in its own order.
        let servers = [
            half(1, 1, &se, V3, 5_000_021),
            half(1, 1, &se, V3, 5_000_011),
        ];
        assert_eq!(pair(&clients, &servers), [(0, 1), (1, 0)]);
    }

    #[test]
    fn different_requests_statuses_or_captures_do_not_pair() {
        let ce = end(C, S, None);
        let se = end(S, C, None);
        let servers = [half(1, 1, &se, V3, 1)];
        assert!(pair(&[half(0, 0, &ce, "http://198.18.0.1:5000/v2", 1)], &servers).is_empty());
        let mut failed = half(0, 0, &ce, V3, 1);
        failed.status = Some(500);
        assert!(pair(&[failed], &servers).is_empty());
        // The same capture already had its chance to stitch them.
        assert!(pair(&[half(1, 1, &ce, V3, 1)], &servers).is_empty());
        // An unanswered request pairs with the answered view.
        let mut unanswered = half(0, 0, &ce, V3, 1);
        unanswered.status = None;
        assert_eq!(pair(&[unanswered], &servers), [(0, 0)]);
    }

    #[test]
    fn loopback_pairs_only_on_one_host_and_within_one_namespace() {
        let (lc, ls) = ("127.0.0.1:40000", "127.0.0.1:5000");
        let url = "http://127.0.0.1:5000/v3";
        let ce = end(lc, ls, Some(7));
        let se = end(ls, lc, Some(7));
        let se_elsewhere = end(ls, lc, Some(9));
        // Two hosts' loopbacks are two places.
        assert!(pair(&[half(0, 0, &ce, url, 1)], &[half(1, 1, &se, url, 2)]).is_empty());
        // One host, two captures: the same namespace pairs, another does not.
        assert_eq!(
            pair(&[half(0, 0, &ce, url, 1)], &[half(1, 0, &se, url, 2)]),
            [(0, 0)]
        );
        assert!(
            pair(
                &[half(0, 0, &ce, url, 1)],
                &[half(1, 0, &se_elsewhere, url, 2)]
            )
            .is_empty()
        );
        // Unix sockets and unknown addresses never cross hosts.
        let ue = end("unix:/run/k.sock", "?", None);
        let us = end("?", "unix:/run/k.sock", None);
        assert!(pair(&[half(0, 0, &ue, url, 1)], &[half(1, 1, &us, url, 2)]).is_empty());
    }

    #[test]
    fn global_addresses() {
        assert!(global("198.18.0.1:5000").is_some());
        assert!(global("[2001:db8::1]:80").is_some());
        for a in [
            "127.0.0.1:1",
            "[::1]:1",
            "0.0.0.0:1",
            "[fe80::1]:1",
            "unix:/x",
            "?",
        ] {
            assert!(global(a).is_none(), "{a}");
        }
    }
}
