//! A merged capture's spans (`sniffer merge --otlp`): each end with its own host and its own
//! times on the merged timeline, nesting from the merged order.
use super::spans::{End, Party, Span, Tracer, spans};
use crate::merge::{Joint, Merged, Side};

fn end<'a>(m: &'a Merged, j: &'a Joint, side: &'a Side, client: bool) -> End<'a> {
    let first = side.request.or(side.response).map_or(0, |t| t.0);
    let last = side.response.or(side.request).map_or(first, |t| t.1);
    End {
        service: if client { &j.record.from } else { &j.record.to },
        host: m
            .hosts
            .get(side.host)
            .map_or("localhost", |h| h.label.as_str()),
        pid: side.pid,
        start_unix_ns: first,
        end_unix_ns: last,
        socket: if client {
            j.record.client.as_ref()
        } else {
            j.record.server.as_ref()
        },
    }
}

/// Every exchange's spans, in the order of its response (or request) in the merged log.
pub fn spans_of(m: &Merged) -> Vec<Vec<Span>> {
    let seed: String = m
        .hosts
        .iter()
        .map(|h| format!("{} {}\n", h.label, h.host.boot_id))
        .collect();
    let mut tracer = Tracer::new(seed.as_bytes());
    let party = |s: &Option<Side>| {
        s.as_ref().map(|s| Party {
            host: m
                .hosts
                .get(s.host)
                .map_or(String::new(), |h| h.label.clone()),
            pid: s.pid,
        })
    };
    let mut msgs: Vec<(u64, usize, bool)> = Vec::new();
    for (k, j) in m.exchanges.iter().enumerate() {
        for request in [true, false] {
            if let Some(n) = j.record.message(request).and_then(|m| m.number) {
                msgs.push((n, k, request));
            }
        }
    }
    msgs.sort_unstable();
    let mut done = vec![false; m.exchanges.len()];
    let mut out = Vec::new();
    let mut emit = |k: usize, tracer: &mut Tracer, done: &mut Vec<bool>| {
        let j = &m.exchanges[k];
        let ids = tracer.finish(j.record.id);
        let client = j.client.as_ref().map(|s| end(m, j, s, true));
        let server = j.server.as_ref().map(|s| end(m, j, s, false));
        out.push(spans(&j.record, &ids, client, server));
        done[k] = true;
    };
    for (_, k, request) in msgs {
        let j = &m.exchanges[k];
        let id = j.record.id;
        if request {
            let at = j.record.request.as_ref().map_or(0, |r| r.first_unix_ns);
            // An exchange never answered encloses nothing after its request.
            let until = match &j.record.response {
                Some(_) => None,
                None => j.record.request.as_ref().map(|r| r.last_unix_ns()),
            };
            tracer.begin(id, party(&j.client).as_ref(), party(&j.server), at, until);
        } else {
            tracer.answered(id);
            emit(k, &mut tracer, &mut done);
        }
    }
    for k in 0..m.exchanges.len() {
        if !done[k] {
            emit(k, &mut tracer, &mut done);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::spans::Kind;

    #[test]
    fn a_merged_capture_gives_traces_of_the_diagrams_shape_across_hosts() {
        let m = crate::merge::merge(&crate::merge::tests::scene(5_000));
        let all: Vec<Span> = spans_of(&m).into_iter().flatten().collect();
        // Spans of a kind, a service and a name; to the controller's address or not.
        let find = |kind: Kind, service: &str, name: &str| {
            let (name, local) = match name.strip_suffix(" (loopback)") {
                Some(n) => (n, true),
                None => (name, false),
            };
            let found: Vec<&Span> = all
                .iter()
                .filter(|s| s.kind == kind && s.resource.service == service && s.name == name)
                .filter(|s| {
                    s.attributes.iter().any(|(k, v)| {
                        *k == "server.address"
                            && (*v == crate::otlp::spans::Value::Str("127.0.0.1".into())) == local
                    })
                })
                .collect();
            assert_eq!(found.len(), 1, "{kind:?} {service} {name}: {all:#?}");
            found[0].clone()
        };
        // openstack (compute1) -> glance-api@controller -> keystone (controller).
        let cli = find(Kind::Client, "openstack", "GET /v2/images");
        let glance = find(Kind::Server, "glance-api@controller", "GET /v2/images");
        let to_ks = find(Kind::Client, "glance-api@controller", "GET /v3/auth/tokens");
        let ks = find(Kind::Server, "keystone", "GET /v3/auth/tokens");
        assert_eq!(cli.parent, None);
        assert_eq!(glance.parent, Some(cli.span_id));
        assert_eq!(to_ks.parent, Some(glance.span_id));
        assert_eq!(ks.parent, Some(to_ks.span_id));
        for s in [&glance, &to_ks, &ks] {
            assert_eq!(s.trace_id, cli.trace_id);
        }
        assert_eq!(cli.resource.host, "compute1");
        assert_eq!(glance.resource.host, "controller");
        // Each end's own times, corrected: the server span lies within the client's.
        assert!(cli.start_unix_ns <= glance.start_unix_ns && glance.end_unix_ns <= cli.end_unix_ns);
        // compute1's glance-api -> keystone on the controller: a child of compute1's glance.
        let glance2 = find(
            Kind::Server,
            "glance-api@compute1",
            "GET /v2/images (loopback)",
        );
        let to_ks2 = find(Kind::Client, "glance-api@compute1", "POST /v3/auth/tokens");
        let ks2 = find(Kind::Server, "keystone", "POST /v3/auth/tokens");
        assert_eq!(to_ks2.parent, Some(glance2.span_id));
        assert_eq!(
            (to_ks2.trace_id, ks2.parent),
            (glance2.trace_id, Some(to_ks2.span_id))
        );
        assert_eq!(
            (ks2.resource.host.as_str(), ks2.resource.pid),
            ("controller", 300)
        );
        // The call to an address no capture covers: one CLIENT span, a trace of its own.
        let lone = find(Kind::Client, "openstack", "HEAD /");
        assert_eq!(lone.parent, None);
        let traces: std::collections::HashSet<[u8; 16]> = all.iter().map(|s| s.trace_id).collect();
        assert_eq!(traces.len(), 3);
        assert_eq!(all.len(), 9);
    }
}
