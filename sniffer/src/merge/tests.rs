//! Two hosts' captures of a small OpenStack: records as sniffer writes them, merged.
use super::*;
use crate::{
    record::{EndRecord, MessageRecord},
    sinks::log::record_entry,
};

const MS: i128 = 1_000_000;
/// Wall-clock time of the scene's start on the controller.
const T0: i128 = 1_800_000_000 * 1_000_000_000;

fn host(name: &str) -> Host {
    Host {
        name: name.into(),
        boot_id: "6f1c2a3b-0000-4000-8000-000000000001".into(),
    }
}

fn end(h: &str, pid: u32, local: &str, peer: &str) -> EndRecord {
    EndRecord {
        pid,
        local: local.into(),
        peer: peer.into(),
        transport: "tcp".into(),
        netns: Some(4026531840),
        host: Some(host(h)),
    }
}

/// A message from `first` to `last` ms after T0 on a clock `theta` ms ahead.
fn msg(first: f64, last: f64, theta: i128, body: &str) -> MessageRecord {
    let at = |ms: f64| T0 + (ms * 1e6) as i128 + theta * MS;
    MessageRecord {
        number: None,
        // Monotonic clock: this host booted at T0 - 1000 s.
        first_ts_ns: (at(first) - T0 + 1_000_000 * MS) as u64,
        last_ts_ns: (at(last) - T0 + 1_000_000 * MS) as u64,
        first_unix_ns: at(first),
        headers: vec![("Host".into(), "x".into())],
        body: body.into(),
        complete: true,
        ..MessageRecord::default()
    }
}

struct Ex {
    from: &'static str,
    to: &'static str,
    client: Option<EndRecord>,
    server: Option<EndRecord>,
    method: &'static str,
    url: &'static str,
    /// Request first/last, response first/last (ms on the true clock).
    t: [f64; 4],
}

fn record(x: &Ex, theta: i128) -> ExchangeRecord {
    ExchangeRecord {
        from: x.from.into(),
        to: x.to.into(),
        client: x.client.clone(),
        server: x.server.clone(),
        method: x.method.into(),
        url: x.url.into(),
        status: Some(200),
        reason: Some("OK".into()),
        request: Some(msg(x.t[0], x.t[1], theta, "none")),
        response: Some(msg(x.t[2], x.t[3], theta, "{}")),
        ..ExchangeRecord::default()
    }
}

/// Numbers in each capture's own order, as a run writes them.
fn numbered(mut recs: Vec<ExchangeRecord>) -> Vec<ExchangeRecord> {
    let mut msgs: Vec<(i128, usize, bool)> = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        msgs.push((r.request.as_ref().unwrap().first_unix_ns, i, true));
        msgs.push((r.response.as_ref().unwrap().first_unix_ns, i, false));
    }
    msgs.sort();
    for (n, (_, i, req)) in msgs.into_iter().enumerate() {
        let r = &mut recs[i];
        let m = if req { &mut r.request } else { &mut r.response };
        m.as_mut().unwrap().number = Some(n as u64 + 1);
        r.id = i as u64 + 1;
    }
    recs
}

const CTL: &str = "198.18.0.1";
const CMP: &str = "198.18.0.2";

/// The controller (keystone 300, glance-api 200) and compute1 (openstack 100, glance-api
/// 400), compute1's clock `skew` ms ahead. compute1's openstack calls both glance-apis; each
/// glance-api asks keystone on the controller; compute1's openstack also calls an address no
/// capture covers.
pub(crate) fn scene(skew: i128) -> Vec<Input> {
    let g_ctl = format!("{CTL}:9292");
    let ks = format!("{CTL}:5000");
    let g_cmp = "127.0.0.1:9292";
    let cli_to_ctl = Ex {
        from: "openstack",
        to: "glance-api",
        client: Some(end("compute1", 100, &format!("{CMP}:40000"), &g_ctl)),
        server: None,
        method: "GET",
        url: "http://198.18.0.1:9292/v2/images",
        t: [0.0, 0.1, 9.0, 9.2],
    };
    let ctl_view = Ex {
        from: "198.18.0.2:40000",
        client: None,
        server: Some(end("controller", 200, &g_ctl, &format!("{CMP}:40000"))),
        t: [0.3, 0.35, 8.9, 9.0],
        ..cli_to_ctl
    };
    // glance on the controller asks keystone, both on the controller: stitched there.
    let ctl_glance_ks = Ex {
        from: "glance-api",
        to: "keystone",
        client: Some(end("controller", 200, &format!("{CTL}:41000"), &ks)),
        server: Some(end("controller", 300, &ks, &format!("{CTL}:41000"))),
        method: "GET",
        url: "http://198.18.0.1:5000/v3/auth/tokens",
        t: [1.0, 1.05, 4.0, 4.1],
    };
    // compute1's openstack calls compute1's glance over loopback: stitched on compute1.
    let cli_to_cmp = Ex {
        from: "openstack",
        to: "glance-api",
        client: Some(end("compute1", 100, "127.0.0.1:42000", g_cmp)),
        server: Some(end("compute1", 400, g_cmp, "127.0.0.1:42000")),
        method: "GET",
        url: "http://127.0.0.1:9292/v2/images",
        t: [20.0, 20.1, 30.0, 30.2],
    };
    // compute1's glance asks the controller's keystone: one view on each host.
    let cmp_glance_ks = Ex {
        from: "glance-api",
        to: "keystone",
        client: Some(end("compute1", 400, &format!("{CMP}:43000"), &ks)),
        server: None,
        method: "POST",
        url: "http://198.18.0.1:5000/v3/auth/tokens",
        t: [21.0, 21.1, 25.0, 25.3],
    };
    let ks_view = Ex {
        from: "198.18.0.2:43000",
        to: "keystone",
        client: None,
        server: Some(end("controller", 300, &ks, &format!("{CMP}:43000"))),
        t: [21.2, 21.25, 24.9, 25.0],
        ..cmp_glance_ks
    };
    let nowhere = Ex {
        from: "openstack",
        to: "198.18.0.9:8080",
        client: Some(end(
            "compute1",
            100,
            &format!("{CMP}:44000"),
            "198.18.0.9:8080",
        )),
        server: None,
        method: "HEAD",
        url: "http://198.18.0.9:8080/",
        t: [40.0, 40.1, 41.0, 41.1],
    };
    vec![
        Input {
            name: "controller.jsonl".into(),
            records: numbered(vec![
                record(&ctl_view, 0),
                record(&ctl_glance_ks, 0),
                record(&ks_view, 0),
            ]),
        },
        Input {
            name: "compute1.jsonl".into(),
            records: numbered(vec![
                record(&cli_to_ctl, skew),
                record(&cli_to_cmp, skew),
                record(&cmp_glance_ks, skew),
                record(&nowhere, skew),
            ]),
        },
    ]
}

fn titles(m: &Merged) -> Vec<String> {
    let mut entries: Vec<(u64, String)> = m
        .exchanges
        .iter()
        .flat_map(|j| {
            [true, false].into_iter().filter_map(|req| {
                let e = record_entry(&j.record, req)?;
                Some((j.record.message(req)?.number?, e))
            })
        })
        .collect();
    entries.sort();
    entries
        .into_iter()
        .map(|(_, e)| e.lines().nth(1).unwrap_or("").to_owned())
        .collect()
}

const MERGED: [&str; 10] = [
    "### [1] (openstack) REQ >>> (glance-api@controller) : GET http://198.18.0.1:9292/v2/images",
    "### [2] (glance-api@controller) REQ >>> (keystone) : GET http://198.18.0.1:5000/v3/auth/tokens",
    "### [3] (glance-api@controller) RESP <<< (keystone) : 200 OK GET http://198.18.0.1:5000/v3/auth/tokens",
    "### [4] (openstack) RESP <<< (glance-api@controller) : 200 OK GET http://198.18.0.1:9292/v2/images",
    "### [5] (openstack) REQ >>> (glance-api@compute1) : GET http://127.0.0.1:9292/v2/images",
    "### [6] (glance-api@compute1) REQ >>> (keystone) : POST http://198.18.0.1:5000/v3/auth/tokens",
    "### [7] (glance-api@compute1) RESP <<< (keystone) : 200 OK POST http://198.18.0.1:5000/v3/auth/tokens",
    "### [8] (openstack) RESP <<< (glance-api@compute1) : 200 OK GET http://127.0.0.1:9292/v2/images",
    "### [9] (openstack) REQ >>> (198.18.0.9:8080) : HEAD http://198.18.0.9:8080/",
    "### [10] (openstack) RESP <<< (198.18.0.9:8080) : 200 OK HEAD http://198.18.0.9:8080/",
];

#[test]
fn two_hosts_one_story_whatever_the_skew() {
    for skew in [0, 5_000, -3_000, 86_400_000] {
        let m = merge(&scene(skew));
        assert_eq!(titles(&m), MERGED, "skew {skew} ms");
        assert_eq!(m.hosts.len(), 2);
        assert_eq!(m.hosts[m.reference].label, "controller");
        let o = m.offsets[1];
        // The truth is within the bounds: openstack -> glance gives [skew − 0.25, skew + 0.2]
        // ms, glance -> keystone [skew − 0.15, skew + 0.3] ms: together skew + 0.025 ms
        // ± 0.175 ms.
        assert_eq!(o.ns, skew * MS + 25_000, "skew {skew} ms");
        assert_eq!(o.uncertainty_ns, Some(175_000));
        assert_eq!((o.samples, o.against, o.crossed), (2, Some(0), false));
        assert_eq!(
            m.stats,
            Stats {
                records: 7,
                joined_across_hosts: 2,
                joined_on_one_host: 0,
                one_ended: 1,
                messages: 10
            }
        );
    }
}

#[test]
fn a_joined_exchange_keeps_both_ends_and_their_own_times() {
    let m = merge(&scene(5_000));
    let j = &m.exchanges[0];
    let (c, s) = (j.client.as_ref().unwrap(), j.server.as_ref().unwrap());
    assert_eq!((c.host, c.pid, s.host, s.pid), (1, 100, 0, 200));
    let r = &j.record;
    assert_eq!(r.client.as_ref().unwrap().host, Some(host("compute1")));
    assert_eq!(r.server.as_ref().unwrap().host, Some(host("controller")));
    // On the merged timeline (the controller's clock, corrected by the estimate).
    let fix = -25_000;
    assert_eq!(c.request, Some((T0 + fix, T0 + MS / 10 + fix)));
    assert_eq!(s.request, Some((T0 + 3 * MS / 10, T0 + 35 * MS / 100)));
    // The log's message starts at the earlier view.
    assert_eq!(r.request.as_ref().unwrap().first_unix_ns, T0 + fix);
    assert_eq!(r.request.as_ref().unwrap().first_ts_ns, (T0 + fix) as u64);
    assert_eq!(r.id, 1);
    // The one-ended call keeps its one end.
    let lone = &m.exchanges[4];
    assert!(lone.server.is_none() && lone.server_host.is_none());
    assert_eq!(lone.record.to, "198.18.0.9:8080");
}

#[test]
fn the_report_names_hosts_offsets_and_uncertainty() {
    let m = merge(&scene(5_000));
    assert_eq!(
        m.report(),
        [
            "2 hosts, 5 exchanges: 2 seen from both ends on two hosts, 0 from both ends in two \
             captures of one host, 1 from one end",
            "host controller (boot 6f1c2a3b): the reference clock",
            "host compute1 (boot 6f1c2a3b): clock +5.000025 s against controller (± 175 µs, \
             from 2 exchanges with controller)",
        ]
    );
}

#[test]
fn one_capture_alone_comes_back_as_it_was() {
    let inputs = scene(0);
    let alone = vec![Input {
        name: "compute1.jsonl".into(),
        records: inputs[1].records.clone(),
    }];
    let m = merge(&alone);
    // Its own numbers, names as the run gave them (no host has a second glance-api here).
    let mut expected: Vec<(u64, String)> = inputs[1]
        .records
        .iter()
        .flat_map(|r| {
            [true, false]
                .into_iter()
                .filter_map(|q| Some((r.message(q)?.number?, record_entry(r, q)?)))
        })
        .collect();
    expected.sort();
    let got: Vec<String> = titles(&m);
    let want: Vec<String> = expected
        .iter()
        .map(|(_, e)| e.lines().nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(got, want);
    assert_eq!(m.offsets[0].uncertainty_ns, Some(0));
}

#[test]
fn inputs_without_hosts_are_named_after_their_file() {
    let mut inputs = scene(0);
    for r in &mut inputs[1].records {
        for e in [&mut r.client, &mut r.server].into_iter().flatten() {
            e.host = None;
        }
    }
    let m = merge(&inputs);
    assert_eq!(m.hosts[1].label, "compute1");
    assert_eq!(m.hosts[1].host.boot_id, "");
    assert_eq!(m.warnings.len(), 1);
    assert!(m.warnings[0].starts_with("compute1.jsonl: no host recorded"));
}
