//! What a run says at its end: totals, losses, what its outputs could not write.
use sniffer_common::counters;

use crate::{events::Reader, exit, pipeline::Pipeline, probe::Probe, sinks::output::Failure};

/// Says which outputs lost what; returns the exit code: the command's status (0 without
/// one), unless an output is incomplete.
pub(super) fn outputs_summary(failures: &[Failure], status: Option<i32>) -> i32 {
    for f in failures {
        eprintln!("sniffer: {f}");
    }
    if failures.is_empty() {
        return status.unwrap_or(0);
    }
    let command = status.map_or(String::new(), |s| format!(" (the command exited with {s})"));
    eprintln!(
        "sniffer: exit code {}: the outputs above are incomplete{command}",
        exit::OUTPUT_INCOMPLETE
    );
    i32::from(exit::OUTPUT_INCOMPLETE)
}

/// Warns when the kernel side dropped events since the last check; returns the new count.
pub(super) fn report_losses(probe: &Probe, reported: u64) -> u64 {
    let Ok(c) = probe.counters() else {
        return reported;
    };
    let lost = c[counters::DATA_EVENTS_LOST as usize] + c[counters::CONTROL_EVENTS_LOST as usize];
    if lost > reported {
        tracing::warn!(
            "the kernel dropped {} events so far (ring buffer full); the streams they belong to \
             show exact 'lost' gaps; a bigger --ring-mib helps",
            lost
        );
    }
    lost
}

/// CPU seconds in user space and in the kernel, and peak resident memory (bytes), of this
/// process so far.
pub fn own_usage() -> (f64, f64, u64) {
    // SAFETY: getrusage fills a zeroed rusage struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(ru.ru_utime),
        secs(ru.ru_stime),
        ru.ru_maxrss as u64 * 1024,
    )
}

/// `, 41 connections set aside as not HTTP (redis 40, mysql 1)`, or nothing.
fn set_aside(by: &std::collections::BTreeMap<crate::classify::Protocol, u64>) -> String {
    let n: u64 = by.values().sum();
    if n == 0 {
        return String::new();
    }
    let mut each: Vec<String> = by.iter().map(|(p, k)| format!("{p} {k}")).collect();
    each.sort();
    format!(
        ", {n} connection{} set aside as not HTTP ({})",
        if n == 1 { "" } else { "s" },
        each.join(", ")
    )
}

pub(super) fn summary(probe: &Probe, reader: &Reader, pipeline: &Pipeline) {
    let t = pipeline.totals;
    let (user, sys, rss) = own_usage();
    let cpu = user + sys;
    let h = pipeline.http_stats();
    // The kernel time of sniffer's programs, when --bpf-stats asked the kernel to count it.
    let bpf = probe
        .run_time()
        .map(|(t, runs)| format!(", bpf {:.1} ms in {runs} runs", t.as_secs_f64() * 1e3))
        .unwrap_or_default();
    let counters = probe.counters().unwrap_or_default();
    let lost = counters[counters::DATA_EVENTS_LOST as usize]
        + counters[counters::CONTROL_EVENTS_LOST as usize];
    eprintln!(
        "sniffer: {} exchanges, {} messages, {} body bytes, {} events lost, {} broken \
         ({} connections, {} kernel events, {} payload bytes captured, cpu {cpu:.2} s (user \
         {user:.2}, sys {sys:.2}){bpf}, peak rss {} KiB{})",
        h.exchanges,
        h.messages,
        h.body_bytes,
        lost,
        h.broken,
        pipeline.conns.created(),
        t.events,
        t.bytes_captured,
        rss >> 10,
        [
            (h.filtered, "exchanges filtered out"),
            (h.folded, "proxy hops folded"),
            (pipeline.conns.tls_read, "TLS connections read"),
            (pipeline.conns.tls_unread, "TLS connections not read")
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!(", {n} {what}"))
        .collect::<String>()
            + &set_aside(&pipeline.conns.set_aside)
    );
    let nonzero: Vec<String> = counters
        .iter()
        .zip(counters::NAMES)
        .filter(|(v, _)| **v > 0)
        .map(|(v, name)| format!("{name}: {v}"))
        .collect();
    if !nonzero.is_empty() {
        eprintln!("sniffer: kernel side: {}", nonzero.join(", "));
    }
    if reader.malformed > 0 {
        eprintln!(
            "sniffer: {} malformed kernel records skipped",
            reader.malformed
        );
    }
    if pipeline.conns.evicted > 0 || h.forced > 0 {
        eprintln!(
            "sniffer: memory bounds reached: {} connections let go (idlest first), {} messages \
             written before their time",
            pipeline.conns.evicted, h.forced
        );
    }
    if h.answers_missing > 0 {
        eprintln!(
            "sniffer: {} requests without their answer: it was in bytes sniffer did not get \
             (not copied: it fell more than --copy-window-kib behind on a busy stream; or lost \
             with the events above)",
            h.answers_missing
        );
    }
    if h.out_of_order > 0 {
        eprintln!(
            "sniffer: {} messages written out of order: their events came later than the order's \
             slack (at most {} µs in this run) after their kernel time, once messages that began \
             later were written",
            h.out_of_order,
            h.slack_ns / 1000
        );
    }
    tracing::info!(
        "order: first bytes came at most {} µs behind the latest one placed; the order's slack \
         was at most {} µs",
        h.reorder_ns / 1000,
        h.slack_ns / 1000
    );
    if pipeline.conns.opens_lost > 0 {
        eprintln!(
            "sniffer: {} connections had their open event lost (addresses unknown)",
            pipeline.conns.opens_lost
        );
    }
}
