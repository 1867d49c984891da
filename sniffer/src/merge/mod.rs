//! `sniffer merge`: several hosts' captures (their JSONL) as one story. A call from a client on
//! one host to a server on another was seen by each host's sniffer from its end; the two views
//! pair by the TCP 4-tuple and the request ([`pair`]), give each host's clock offset
//! ([`clock`]), and become one exchange named from both hosts, numbered in corrected time
//! order ([`assemble`]). What only one host saw stays as it was.
pub mod assemble;
pub mod clock;
pub mod pair;

use std::collections::HashMap;

use crate::record::{ExchangeRecord, Host};

pub use assemble::{Joint, Side};
pub use clock::Offset;

/// One capture's records.
pub struct Input {
    /// How the user named it (the file).
    pub name: String,
    pub records: Vec<ExchangeRecord>,
}

/// A host of the merged capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    pub host: Host,
    /// Its name in `name@host` and in reports: the hostname, with the boot id's start when
    /// two hosts share one.
    pub label: String,
}

/// The merged capture.
pub struct Merged {
    pub hosts: Vec<HostInfo>,
    /// The host whose clock the others are corrected to (the first input's).
    pub reference: usize,
    /// Per host, indexed like `hosts`.
    pub offsets: Vec<Offset>,
    /// In the order of their first message.
    pub exchanges: Vec<Joint>,
    pub stats: Stats,
    /// What the user should know about the inputs (an input without host names).
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub records: usize,
    /// Exchanges whose two ends came from two captures, on two hosts and on one.
    pub joined_across_hosts: usize,
    pub joined_on_one_host: usize,
    /// Exchanges seen from one end only.
    pub one_ended: usize,
    pub messages: u64,
}

/// One record's place: its capture and the hosts of its two ends.
#[derive(Clone, Copy, Debug)]
struct Placed {
    file: usize,
    client_host: usize,
    server_host: usize,
}

/// Host ids for every end of every record. An input whose records name no host (written by a
/// sniffer before hosts were recorded) is one host named after the input.
fn place(inputs: &[Input]) -> (Vec<Host>, Vec<Vec<Placed>>, Vec<String>) {
    let mut hosts: Vec<Host> = Vec::new();
    let mut ids: HashMap<Host, usize> = HashMap::new();
    let mut warnings = Vec::new();
    let mut id = |h: &Host, hosts: &mut Vec<Host>| {
        *ids.entry(h.clone()).or_insert_with(|| {
            hosts.push(h.clone());
            hosts.len() - 1
        })
    };
    let mut placed = Vec::new();
    for (file, input) in inputs.iter().enumerate() {
        let named = input
            .records
            .iter()
            .flat_map(|r| [&r.client, &r.server])
            .find_map(|e| e.as_ref().and_then(|e| e.host.clone()));
        let default = named.unwrap_or_else(|| {
            let stem = std::path::Path::new(&input.name)
                .file_stem()
                .map_or_else(|| input.name.clone(), |s| s.to_string_lossy().into_owned());
            warnings.push(format!(
                "{}: no host recorded (written by an older sniffer): its host is called {stem:?}",
                input.name
            ));
            Host {
                name: stem,
                boot_id: String::new(),
            }
        });
        let default_id = id(&default, &mut hosts);
        let mut of_file = Vec::new();
        for r in &input.records {
            let mut host_of = |e: &Option<crate::record::EndRecord>| {
                e.as_ref()
                    .and_then(|e| e.host.as_ref())
                    .map_or(default_id, |h| id(h, &mut hosts))
            };
            let client_host = host_of(&r.client);
            let server_host = if r.server.is_some() {
                host_of(&r.server)
            } else {
                client_host
            };
            let client_host = if r.client.is_some() {
                client_host
            } else {
                server_host
            };
            of_file.push(Placed {
                file,
                client_host,
                server_host,
            });
        }
        placed.push(of_file);
    }
    (hosts, placed, warnings)
}

/// Labels: the hostname, unless two hosts (two boots) share it.
fn labels(hosts: &[Host]) -> Vec<HostInfo> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let shared = hosts.iter().filter(|o| o.name == h.name).count() > 1;
            let label = match (shared, h.boot_id.get(..8)) {
                (false, _) => h.name.clone(),
                (true, Some(b)) if !h.boot_id.is_empty() => format!("{}-{b}", h.name),
                (true, _) => format!("{}-{}", h.name, i + 1),
            };
            HostInfo {
                host: h.clone(),
                label,
            }
        })
        .collect()
}

/// Merges the captures; the first input's host is the reference clock.
pub fn merge(inputs: &[Input]) -> Merged {
    let (hosts, placed, warnings) = place(inputs);
    let hosts = labels(&hosts);
    let reference = placed.iter().flatten().next().map_or(0, |p| p.client_host);
    let mut items = Vec::new();
    for (input, placed) in inputs.iter().zip(&placed) {
        for (r, p) in input.records.iter().zip(placed) {
            items.push(assemble::Item {
                rec: r,
                file: p.file,
                client_host: p.client_host,
                server_host: p.server_host,
            });
        }
    }
    let pairs = assemble::pairs(&items);
    let samples: Vec<clock::Sample> = pairs
        .iter()
        .filter_map(|&(c, s)| assemble::sample(&items[c], &items[s]))
        .collect();
    let offsets = clock::estimate(hosts.len(), reference, &samples);
    let (exchanges, stats) = assemble::assemble(&items, &pairs, &offsets, &hosts);
    Merged {
        hosts,
        reference,
        offsets,
        exchanges,
        stats,
        warnings,
    }
}

/// Seconds with 6 decimals and a sign.
fn seconds(ns: i128) -> String {
    let sign = if ns < 0 { "-" } else { "+" };
    let ns = ns.unsigned_abs();
    format!(
        "{sign}{}.{:06} s",
        ns / 1_000_000_000,
        ns % 1_000_000_000 / 1000
    )
}

/// A duration for humans: µs below a millisecond, else ms or s.
fn duration(ns: i128) -> String {
    let ns = ns.unsigned_abs();
    match ns {
        n if n < 1_000_000 => format!("{} µs", n.div_ceil(1000)),
        n if n < 1_000_000_000 => format!("{:.3} ms", n as f64 / 1e6),
        n => format!("{:.6} s", n as f64 / 1e9),
    }
}

impl Merged {
    /// What the merge found, a line each: the exchanges, then each host's clock.
    pub fn report(&self) -> Vec<String> {
        let s = &self.stats;
        let mut out = vec![format!(
            "{} hosts, {} exchanges: {} seen from both ends on two hosts, {} from both ends in \
             two captures of one host, {} from one end",
            self.hosts.len(),
            self.exchanges.len(),
            s.joined_across_hosts,
            s.joined_on_one_host,
            s.one_ended,
        )];
        let reference = &self.hosts[self.reference.min(self.hosts.len().saturating_sub(1))];
        for (i, (h, o)) in self.hosts.iter().zip(&self.offsets).enumerate() {
            let boot = h.host.boot_id.get(..8).unwrap_or("?");
            let clock = if i == self.reference {
                "the reference clock".to_owned()
            } else {
                match (o.against, o.uncertainty_ns) {
                    (None, _) => {
                        "no exchange with the other hosts: its clock is taken as it is".to_owned()
                    }
                    (Some(a), u) => format!(
                        "clock {} against {} ({}, from {} exchange{} with {}{})",
                        seconds(o.ns),
                        reference.label,
                        u.map_or("one-sided bound, uncertainty unknown".to_owned(), |u| {
                            format!("± {}", duration(u))
                        }),
                        o.samples,
                        if o.samples == 1 { "" } else { "s" },
                        self.hosts[a].label,
                        if o.crossed {
                            "; the causal bounds crossed by the syscall-exit times of a fast link"
                        } else {
                            ""
                        }
                    ),
                }
            };
            out.push(format!("host {} (boot {boot}): {clock}", h.label));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn report_numbers() {
        assert_eq!(seconds(5_000_012_345), "+5.000012 s");
        assert_eq!(seconds(-1_500), "-0.000001 s");
        assert_eq!(duration(41_001), "42 µs");
        assert_eq!(duration(2_500_000), "2.500 ms");
        assert_eq!(duration(-3_000_000_000), "3.000000 s");
    }

    #[test]
    fn hosts_sharing_a_name_are_told_apart_by_boot() {
        let h = |n: &str, b: &str| Host {
            name: n.into(),
            boot_id: b.into(),
        };
        let l = labels(&[
            h("devstack", "0123456789ab"),
            h("devstack", "fedcba987654"),
            h("compute1", "x"),
            h("c", ""),
            h("c", ""),
        ]);
        let names: Vec<&str> = l.iter().map(|h| h.label.as_str()).collect();
        assert_eq!(
            names,
            [
                "devstack-01234567",
                "devstack-fedcba98",
                "compute1",
                "c-4",
                "c-5"
            ]
        );
    }
}
