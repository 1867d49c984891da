//! The merged exchanges: paired views joined into one record named from both hosts, times
//! corrected to the reference clock, participants that run on several hosts named
//! `name@host`, every message numbered in corrected time order.
use std::collections::{BTreeSet, HashMap};

use super::{
    HostInfo, Stats,
    clock::{Offset, Sample},
    pair::{self, Half},
};
use crate::record::{EndRecord, ExchangeRecord, MessageRecord};

/// A record as read, with where its ends were.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    pub rec: &'a ExchangeRecord,
    pub file: usize,
    pub client_host: usize,
    pub server_host: usize,
}

/// One end of a merged exchange: its host and process and, on the merged timeline (ns since
/// the Unix epoch, reference clock), when it saw the first and last bytes of each message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub host: usize,
    pub pid: u32,
    pub request: Option<(i128, i128)>,
    pub response: Option<(i128, i128)>,
}

/// An exchange of the merged capture.
#[derive(Clone, Debug)]
pub struct Joint {
    /// Names, messages (numbered), both ends; times on the merged timeline.
    pub record: ExchangeRecord,
    pub client: Option<Side>,
    pub server: Option<Side>,
    /// The hosts of the caller and the callee, where known (a one-ended exchange's other end
    /// by its address).
    pub client_host: Option<usize>,
    pub server_host: Option<usize>,
}

/// The one-ended exchanges that are two ends of one: (client item, server item).
pub fn pairs(items: &[Item<'_>]) -> Vec<(usize, usize)> {
    let (mut ci, mut clients, mut si, mut servers) = (vec![], vec![], vec![], vec![]);
    for (n, i) in items.iter().enumerate() {
        let r = i.rec;
        let Some(req) = r.request.as_ref() else {
            continue;
        };
        let (end, host, list, idx) = match (&r.client, &r.server) {
            (Some(c), None) => (c, i.client_host, &mut clients, &mut ci),
            (None, Some(s)) => (s, i.server_host, &mut servers, &mut si),
            _ => continue,
        };
        idx.push(n);
        list.push(Half {
            file: i.file,
            host,
            end,
            method: &r.method,
            url: &r.url,
            status: r.status,
            at: req.first_unix_ns,
        });
    }
    pair::pair(&clients, &servers)
        .into_iter()
        .map(|(c, s)| (ci[c], si[s]))
        .collect()
}

fn times(m: &Option<MessageRecord>) -> Option<(i128, i128)> {
    m.as_ref().map(|m| (m.first_unix_ns, m.last_unix_ns()))
}

/// What a pair on two hosts tells of their clocks.
pub fn sample(c: &Item<'_>, s: &Item<'_>) -> Option<Sample> {
    if c.client_host == s.server_host {
        return None;
    }
    let (creq, sreq) = (times(&c.rec.request)?, times(&s.rec.request)?);
    let response = times(&c.rec.response)
        .zip(times(&s.rec.response))
        .map(|(cr, sr)| (sr.1, cr.1));
    Some(Sample {
        client_host: c.client_host,
        server_host: s.server_host,
        request: (creq.1, sreq.1),
        response,
    })
}

/// Of two views of one message, the one that shows more (as the live stitcher chooses).
fn better<'a>(a: &'a MessageRecord, b: &'a MessageRecord) -> &'a MessageRecord {
    let rank = |m: &MessageRecord| (m.complete, std::cmp::Reverse(m.body_missing), m.body.len());
    if rank(b) > rank(a) { b } else { a }
}

/// A message moved to the merged timeline: first byte at `first` (the earlier view), last at
/// its own view's last byte, corrected by `shift`.
fn corrected(m: &MessageRecord, shift: i128, first: i128) -> MessageRecord {
    let last = (m.last_unix_ns() - shift).max(first);
    let ns = |t: i128| u64::try_from(t).unwrap_or(0);
    MessageRecord {
        first_ts_ns: ns(first),
        last_ts_ns: ns(last),
        first_unix_ns: first,
        ..m.clone()
    }
}

fn shifted(t: Option<(i128, i128)>, shift: i128) -> Option<(i128, i128)> {
    t.map(|(a, b)| (a - shift, b - shift))
}

/// Joins two views (the client's item `c`, the server's `s`) into one record.
fn join(c: &Item<'_>, s: &Item<'_>, offsets: &[Offset]) -> Joint {
    let (cs, ss) = (offsets[c.client_host].ns, offsets[s.server_host].ns);
    let (cr, sr) = (c.rec, s.rec);
    let message = |cm: &Option<MessageRecord>, sm: &Option<MessageRecord>| match (cm, sm) {
        (Some(a), Some(b)) => {
            let first = (a.first_unix_ns - cs).min(b.first_unix_ns - ss);
            let (m, shift) = if std::ptr::eq(better(a, b), a) {
                (a, cs)
            } else {
                (b, ss)
            };
            Some((corrected(m, shift, first), std::ptr::eq(m, b)))
        }
        (Some(a), None) => Some((corrected(a, cs, a.first_unix_ns - cs), false)),
        (None, Some(b)) => Some((corrected(b, ss, b.first_unix_ns - ss), true)),
        (None, None) => None,
    };
    let request = message(&cr.request, &sr.request);
    let response = message(&cr.response, &sr.response);
    // Status and reason from the view whose response is shown.
    let from_server = response.as_ref().is_some_and(|(_, s)| *s);
    let answer = if from_server { sr } else { cr };
    let request = request.map(|(m, _)| m);
    let response = response.map(|(m, _)| m);
    let incomplete = [&request, &response]
        .iter()
        .any(|m| m.as_ref().is_some_and(|m| !m.complete))
        || response.is_none()
        || cr.broken.is_some()
        || sr.broken.is_some();
    let record = ExchangeRecord {
        id: 0,
        from: cr.from.clone(),
        to: sr.to.clone(),
        via: cr.via.clone().or_else(|| sr.via.clone()),
        upstream: sr.upstream.clone().or_else(|| cr.upstream.clone()),
        client: cr.client.clone(),
        server: sr.server.clone(),
        method: cr.method.clone(),
        url: cr.url.clone(),
        status: answer.status,
        reason: answer.reason.clone(),
        request,
        response,
        interim_statuses: if cr.interim_statuses.is_empty() {
            sr.interim_statuses.clone()
        } else {
            cr.interim_statuses.clone()
        },
        incomplete,
        orphan: false,
        unanswered: cr.unanswered && sr.unanswered,
        broken: cr.broken.clone().or_else(|| sr.broken.clone()),
        tls: cr.tls || sr.tls,
    };
    Joint {
        record,
        client: Some(Side {
            host: c.client_host,
            pid: cr.client.as_ref().map_or(0, |e| e.pid),
            request: shifted(times(&cr.request), cs),
            response: shifted(times(&cr.response), cs),
        }),
        server: Some(Side {
            host: s.server_host,
            pid: sr.server.as_ref().map_or(0, |e| e.pid),
            request: shifted(times(&sr.request), ss),
            response: shifted(times(&sr.response), ss),
        }),
        client_host: Some(c.client_host),
        server_host: Some(s.server_host),
    }
}

/// A record seen from one end, or from both on one host, moved to the merged timeline.
fn alone(i: &Item<'_>, offsets: &[Offset]) -> Joint {
    // One host's clock for the whole record (a stitched record's two ends share it).
    let shift = offsets[i.client_host].ns;
    let r = i.rec;
    let fix = |m: &Option<MessageRecord>| {
        m.as_ref()
            .map(|m| corrected(m, shift, m.first_unix_ns - shift))
    };
    let side = |e: &Option<EndRecord>, host: usize| {
        e.as_ref().map(|e| Side {
            host,
            pid: e.pid,
            request: shifted(times(&r.request), shift),
            response: shifted(times(&r.response), shift),
        })
    };
    Joint {
        record: ExchangeRecord {
            request: fix(&r.request),
            response: fix(&r.response),
            ..r.clone()
        },
        client: side(&r.client, i.client_host),
        server: side(&r.server, i.server_host),
        client_host: r.client.as_ref().map(|_| i.client_host),
        server_host: r.server.as_ref().map(|_| i.server_host),
    }
}

/// The host each global address belongs to, from the ends that were seen (an address two
/// hosts claim names neither).
fn address_hosts(joints: &[Joint]) -> HashMap<std::net::IpAddr, usize> {
    let mut seen: HashMap<std::net::IpAddr, Option<usize>> = HashMap::new();
    for j in joints {
        let ends = [
            (&j.record.client, j.client.as_ref()),
            (&j.record.server, j.server.as_ref()),
        ];
        for (end, side) in ends {
            let (Some(e), Some(side)) = (end, side) else {
                continue;
            };
            if let Some(a) = pair::global(&e.local) {
                let slot = seen.entry(a.ip()).or_insert(Some(side.host));
                if *slot != Some(side.host) {
                    *slot = None;
                }
            }
        }
    }
    seen.into_iter()
        .filter_map(|(ip, h)| Some((ip, h?)))
        .collect()
}

/// Fills in the hosts of one-ended exchanges' other ends from their addresses, then names a
/// participant that runs on several hosts `name@host`.
fn name(joints: &mut [Joint], hosts: &[HostInfo]) {
    let by_addr = address_hosts(joints);
    let host_of = |addr: &Option<EndRecord>| {
        addr.as_ref()
            .and_then(|e| pair::global(&e.peer))
            .and_then(|a| by_addr.get(&a.ip()).copied())
    };
    for j in joints.iter_mut() {
        if j.client_host.is_none() {
            j.client_host = host_of(&j.record.server);
        }
        if j.server_host.is_none() {
            j.server_host = host_of(&j.record.client);
        }
    }
    let mut on: HashMap<String, BTreeSet<usize>> = HashMap::new();
    for j in joints.iter() {
        for (n, h) in [
            (&j.record.from, j.client_host),
            (&j.record.to, j.server_host),
        ] {
            if let Some(h) = h {
                on.entry(n.clone()).or_default().insert(h);
            }
        }
    }
    let rename = |n: &mut String, h: Option<usize>| {
        if let Some(h) = h
            && on.get(n.as_str()).is_some_and(|s| s.len() > 1)
        {
            *n = format!("{n}@{}", hosts[h].label);
        }
    };
    for j in joints.iter_mut() {
        rename(&mut j.record.from, j.client_host);
        rename(&mut j.record.to, j.server_host);
    }
}

/// The merged exchanges in the order of their first message, numbered, with totals.
pub fn assemble(
    items: &[Item<'_>],
    pairs: &[(usize, usize)],
    offsets: &[Offset],
    hosts: &[HostInfo],
) -> (Vec<Joint>, Stats) {
    let mut stats = Stats {
        records: items.len(),
        ..Stats::default()
    };
    let mut used = vec![false; items.len()];
    // (joint, first item's file, first item's original request/response numbers)
    let mut joints: Vec<(Joint, usize, [Option<u64>; 2])> = Vec::new();
    let numbers = |r: &ExchangeRecord| {
        [
            r.request.as_ref().and_then(|m| m.number),
            r.response.as_ref().and_then(|m| m.number),
        ]
    };
    for &(c, s) in pairs {
        used[c] = true;
        used[s] = true;
        if items[c].client_host == items[s].server_host {
            stats.joined_on_one_host += 1;
        } else {
            stats.joined_across_hosts += 1;
        }
        let first = items[c].file.min(items[s].file);
        joints.push((
            join(&items[c], &items[s], offsets),
            first,
            numbers(items[c].rec),
        ));
    }
    for (n, i) in items.iter().enumerate() {
        if !used[n] {
            if i.rec.client.is_none() || i.rec.server.is_none() {
                stats.one_ended += 1;
            }
            joints.push((alone(i, offsets), i.file, numbers(i.rec)));
        }
    }
    // Every message by its corrected first byte; ties keep each capture's own order.
    let mut msgs: Vec<(i128, usize, u64, usize, bool)> = Vec::new();
    for (k, (j, file, num)) in joints.iter().enumerate() {
        for (idx, request) in [(0, true), (1, false)] {
            if let Some(m) = j.record.message(request) {
                msgs.push((
                    m.first_unix_ns,
                    *file,
                    num[idx].unwrap_or(u64::MAX),
                    k,
                    request,
                ));
            }
        }
    }
    msgs.sort();
    let mut first_number = vec![u64::MAX; joints.len()];
    for (n, &(_, _, _, k, request)) in msgs.iter().enumerate() {
        let number = n as u64 + 1;
        let rec = &mut joints[k].0.record;
        let m = if request {
            rec.request.as_mut()
        } else {
            rec.response.as_mut()
        };
        if let Some(m) = m {
            m.number = Some(number);
        }
        first_number[k] = first_number[k].min(number);
    }
    stats.messages = msgs.len() as u64;
    let mut order: Vec<usize> = (0..joints.len()).collect();
    order.sort_by_key(|&k| first_number[k]);
    let mut slots: Vec<Option<Joint>> = joints.into_iter().map(|(j, _, _)| Some(j)).collect();
    let mut out: Vec<Joint> = order.into_iter().filter_map(|k| slots[k].take()).collect();
    for (n, j) in out.iter_mut().enumerate() {
        j.record.id = n as u64 + 1;
    }
    name(&mut out, hosts);
    (out, stats)
}
