//! One sniffer run: attach, choose targets, start the command ([`command`]), pump events until
//! the end, flush, report ([`summary`]).
use std::{path::Path, process::ExitStatus, time::Duration};

use anyhow::Context as _;
use sniffer_common::CHUNK_SIZE;
use tokio::time::{Instant, MissedTickBehavior};

use std::io::IsTerminal as _;

use crate::{
    cgroups::{self, Spec, Watch},
    cli::{RunArgs, TlsProbes},
    conns::ConnSink,
    events::{Drained, Event, Reader},
    exchange::Exchanges,
    filter::Filter,
    live::{
        follow::Follow,
        status::{Counts, Status},
        term,
    },
    names::Names,
    otlp::{self, Endpoint, Exporter, sink::OtlpSink},
    pipeline::Pipeline,
    probe::{CopyControl, Probe, ProbeOptions, target_flags},
    procs::{self, ProcTable},
    proxy::Proxies,
    record::Host,
    sinks::{
        LogFanout,
        conn_log::ConnLog,
        dump::DumpSink,
        jsonl::{HarSink, Jsonl},
        log::NumberedLog,
        output::{DiskLimits, Output, Outputs},
        raw::RawSink,
        records::{Recorder, Records},
        safe_open::{self, OpenError, OutDir, Target},
    },
    stitch::Stitcher,
    tls::{TlsLibs, TlsScope},
};

mod command;
mod summary;

use command::{StopSignals, exit_code, spawn_traced, stop_requested, wait_child};
pub use summary::own_usage;
use summary::{outputs_summary, report_losses, summary};

/// A mistake in what the user asked for: reported in one sentence, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// How often pending work (lost-event checks, stream holes, output flush) is done.
const TICK: Duration = Duration::from_millis(100);
/// Ticks between two returns of freed heap memory to the system (5 s).
const TRIM_EVERY: u64 = 50;
/// How often the ring buffer is read without a wakeup while records flow: the kernel wakes the
/// reader only when much is waiting, so a quiet trickle is picked up by this poll.
const POLL: Duration = Duration::from_millis(10);
/// The poll's period grows (doubling) while it finds nothing, up to this: an idle sniffer wakes
/// about 20 times a second, not 110.
const POLL_IDLE: Duration = TICK;
/// At the end, how long to wait for the TLS probes to come off (each waits for the kernel).
const UNPROBE_WAIT: Duration = Duration::from_secs(5);
/// Ticks between two looks at the cgroup tree for `--unit`/`--cgroup`/`--devstack` (1 s).
const CGROUP_EVERY: u64 = 10;
/// Ticks between two counts of the traced processes for the status line (1 s).
const COUNT_TARGETS_EVERY: u64 = 10;

/// Records read by one pump at most (some milliseconds of work) before the loop's other work:
/// after a stall the ring can stay full for seconds while the reader catches up, and in that
/// time messages are released, the tick runs and signals are answered.
const PUMP_BYTES: usize = 256 << 10;

/// When to pump next: at once when the last pump stopped at its bound, else after `every`.
fn next_pump(every: Duration, d: Drained) -> Duration {
    if d.more { Duration::ZERO } else { every }
}

/// The poll's next period: back to [`POLL`] when records came, doubled (up to [`POLL_IDLE`])
/// when none did.
fn next_poll(every: Duration, records: usize) -> Duration {
    if records > 0 {
        POLL
    } else {
        (every * 2).min(POLL_IDLE)
    }
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's event timestamps (bpf_ktime_get_ns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock time in ns since the Unix epoch.
fn unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Runs the sniffer; returns the process exit code.
pub async fn run(cli: RunArgs) -> anyhow::Result<i32> {
    let specs = cgroup_specs(&cli);
    if cli.pids.is_empty() && cli.comms.is_empty() && cli.command.is_empty() && specs.is_empty() {
        return Err(UsageError(
            "nothing to trace: give --pid PID, --comm NAME, --unit NAME, --cgroup PATH, \
             --devstack, or a command after --"
                .into(),
        )
        .into());
    }
    if cli.follow && cli.output.as_os_str() == "-" {
        return Err(UsageError(
            "--follow and -o - would both write to stdout: give the log a file with -o".into(),
        )
        .into());
    }
    let mut watch = if specs.is_empty() {
        None
    } else {
        let root = cgroups::root().map_err(|e| UsageError(e.to_string()))?;
        let w = Watch::new(root, specs).map_err(|e| UsageError(e.to_string()))?;
        if w.names_own() {
            tracing::warn!(
                "sniffer runs in a cgroup --cgroup names; its own cgroup is left out (it would \
                 see its own reads)"
            );
        }
        Some(w)
    };
    let mut pids = Vec::new();
    for &pid in &cli.pids {
        let tgid =
            procs::tgid_of(pid).ok_or_else(|| UsageError(format!("no process with pid {pid}")))?;
        pids.push(tgid);
    }

    let otlp_endpoint = cli
        .otlp
        .as_deref()
        .map(Endpoint::parse)
        .transpose()
        .map_err(|e| UsageError(format!("--otlp {e}")))?;

    let filter = cli
        .filter
        .as_deref()
        .map(Filter::load)
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;

    // Every output is checked before any is written: one refused leaves the others as they
    // were, and nothing is captured.
    let usage = |e: OpenError| UsageError(e.to_string());
    let check = |path: &Path| Target::check(path).map_err(usage);
    let log_out = check(&cli.output)?;
    let jsonl_out = cli.jsonl.as_deref().map(check).transpose()?;
    let har_out = cli.har.as_deref().map(check).transpose()?;
    let conn_out = cli.connections.as_deref().map(check).transpose()?;
    let raw_out = cli.raw.as_deref().map(check).transpose()?;
    safe_open::distinct(
        [
            Some(&log_out),
            jsonl_out.as_ref(),
            har_out.as_ref(),
            conn_out.as_ref(),
            raw_out.as_ref(),
        ]
        .into_iter()
        .flatten(),
    )
    .map_err(usage)?;
    let dump_dir = cli
        .dump_streams
        .as_deref()
        .map(OutDir::open)
        .transpose()
        .map_err(usage)?;
    let outputs = Outputs::default();
    let limits = DiskLimits {
        rotate_at: cli.rotate_mib.map(|m| m << 20),
        keep: cli.rotate_keep,
        min_free: cli.min_free_mib.saturating_mul(1 << 20),
    };
    let writer_within = |target: Target, path: &Path, unit, limits| -> Result<Output, UsageError> {
        let name = if path.as_os_str() == "-" {
            "stdout".to_owned()
        } else {
            path.display().to_string()
        };
        let (out, place) = target.commit_placed().map_err(usage)?;
        let out = outputs.writer(out, name, unit);
        Ok(match place {
            Some(place) => out.on_disk(place, limits),
            None => out,
        })
    };
    let writer = |target: Target, path: &Path, unit| writer_within(target, path, unit, limits);

    let redact = !cli.no_redact;
    let preview = (cli.preview_kib as usize) << 10;
    let recorder = Recorder {
        redact,
        text_limit: preview,
        unix_offset_ns: unix_ns() - i128::from(monotonic_ns()),
        host: Some(Host::this(cli.host.as_deref())),
        clock_shift_ns: cli
            .clock_shift_ms
            .map_or(0, |ms| ms.saturating_mul(1_000_000)),
    };
    let mut logs = LogFanout::default();
    logs.sinks.push(Box::new(NumberedLog::new(
        writer(log_out, &cli.output, "messages")?,
        redact,
        preview,
    )));
    let mut records = Records::new(recorder.clone());
    if let (Some(out), Some(path)) = (jsonl_out, &cli.jsonl) {
        let out = writer(out, path, "exchanges")?;
        records.sinks.push(Box::new(Jsonl::new(out)));
    }
    if let (Some(out), Some(path)) = (har_out, &cli.har) {
        // One document: not rotated.
        let whole = DiskLimits {
            rotate_at: None,
            ..limits
        };
        let out = writer_within(out, path, "exchanges", whole)?;
        records.sinks.push(Box::new(HarSink::new(out)));
    }
    let otlp = match otlp_endpoint {
        Some(ep) => {
            let health = outputs.track(format!("otlp {ep}"), "spans");
            let exporter = Exporter::start(ep.clone(), otlp::Options::default(), Some(health))
                .context("starting the OTLP export thread")?;
            let (sink, summary) = OtlpSink::new(&recorder, exporter);
            records.sinks.push(Box::new(sink));
            Some((ep, summary))
        }
        None => None,
    };
    if !records.sinks.is_empty() {
        logs.sinks.push(Box::new(records));
    }
    if cli.follow {
        term::set_stdout_tty(std::io::stdout().is_terminal());
        logs.sinks.push(Box::new(Follow::new()));
    }
    let names = Names::new(cli.names.iter().cloned().collect());
    let full_capture = cli.full_capture || cli.dump_streams.is_some();
    let proxies = Proxies {
        extra: cli.proxies.clone(),
        fold: !cli.show_proxies,
    };
    let mut http = Exchanges::new(
        Stitcher::new(logs, names, filter).with_proxies(proxies),
        preview,
    );
    if !full_capture {
        http = http.with_bounded_copy(u64::from(cli.copy_window_kib) << 10);
    }
    let mut conn_sinks: Vec<Box<dyn ConnSink>> = Vec::new();
    if let (Some(out), Some(path)) = (conn_out, &cli.connections) {
        conn_sinks.push(Box::new(ConnLog::new(writer(out, path, "connections")?)));
    }
    if let Some(dir) = dump_dir {
        conn_sinks.push(Box::new(DumpSink::create(dir, &outputs).map_err(usage)?));
    }
    let raw_out = match (raw_out, &cli.raw) {
        (Some(out), Some(path)) => Some(writer(out, path, "events")?),
        _ => None,
    };

    let ring_bytes = (cli.ring_mib as usize) << 20;
    let mut probe = Probe::load(&ProbeOptions {
        ring_bytes: ring_bytes as u32,
        max_capture_per_syscall: (cli.max_capture_kib << 10).max(CHUNK_SIZE as u32),
        unix: !cli.no_unix,
        initial_credit_kib: if full_capture { 0 } else { cli.copy_window_kib },
        kernel_log: cli.verbose >= 2,
        bpf_stats: cli.bpf_stats,
        variant: cli.bpf_variant.map(Into::into),
    })?;
    let mut copy_control = probe.take_copy_control()?;
    http.sink.set_connectors(Box::new(probe.take_connectors()?));
    let mut reader = Reader::new(probe.take_events()?, probe.take_sockets()?)
        .context("watching the BPF ring buffer")?;
    let start_ns = monotonic_ns();

    let mut table = ProcTable::new();
    let mut tls = TlsLibs::new(tls_scope(&cli, watch.is_some()));
    tls.probe_system(&mut probe);
    // Processes that joined, mapped code or ended since the last look: TLS probes to place.
    let mut news = ProcNews::default();
    for comm in &cli.comms {
        let kept = probe.add_comm(comm)?;
        if kept != *comm {
            tracing::warn!("--comm {comm}: the kernel keeps 15 bytes of a name; matching {kept:?}");
        }
        pids.extend(procs::find_by_comm(&kept));
    }
    for &pid in &pids {
        let how = if cli.pids.contains(&pid) {
            target_flags::BY_PID
        } else {
            target_flags::BY_COMM
        };
        // Target first, so that a child forked while we look for children is followed.
        probe.add_target(pid, how)?;
        table.observe(pid);
        tls.follow(pid, &mut probe);
        for child in procs::descendants(pid) {
            probe.add_target(child, how)?;
            table.observe(child);
            tls.follow(child, &mut probe);
        }
    }

    if let Some(w) = &mut watch {
        apply_cgroups(&mut probe, w.refresh())?;
        for u in w.unmatched() {
            term::err_line(&format!(
                "sniffer: {u}: no such cgroup now (not running?); its processes are traced \
                 when it starts"
            ));
        }
    }

    let raw = raw_out.map(|out| RawSink::new(out, start_ns));
    let mut pipeline = Pipeline::new(table, raw, conn_sinks, http);
    pipeline.conns.tls_probes_per_process = tls.scope() == TlsScope::Traced;

    // Before anyone is told to stop it with Ctrl-C: a SIGINT right after "tracing" (a script
    // waiting for that line) would otherwise end sniffer with nothing written.
    let mut stops = StopSignals::install()?;
    let mut child = match cli.command.split_first() {
        Some((program, args)) => Some(spawn_traced(&mut probe, &mut tls, program, args)?),
        None => None,
    };
    if child.is_none() {
        term::err_line("sniffer: tracing; stop with Ctrl-C");
    }

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut poll_every = POLL;
    let poll = tokio::time::sleep(poll_every);
    tokio::pin!(poll);
    let mut exit_status: Option<ExitStatus> = None;
    let mut stop_at: Option<Instant> = None;
    let mut signals = 0;
    let mut ticks: u64 = 0;
    let mut lost_reported = 0;
    // A traced command owns the terminal it writes to: the line would run into its output.
    let mut status =
        Status::new(!cli.quiet && cli.command.is_empty() && std::io::stderr().is_terminal());
    let mut processes = 0;

    loop {
        let deadline = stop_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = reader.readable() => {
                r.context("waiting on the BPF ring buffer")?;
                let d = pump(&mut reader, &mut pipeline, &mut news, &mut copy_control, &mut tls, &mut probe);
                poll_every = POLL;
                poll.as_mut().reset(tokio::time::Instant::now() + next_pump(poll_every, d));
            }
            _ = &mut poll => {
                let d = pump(&mut reader, &mut pipeline, &mut news, &mut copy_control, &mut tls, &mut probe);
                poll_every = next_poll(poll_every, d.records);
                poll.as_mut().reset(tokio::time::Instant::now() + next_pump(poll_every, d));
            }
            _ = tick.tick() => {
                let d = reader.drain(PUMP_BYTES, &mut |ev| {
                    handle(&mut pipeline, &mut news, ev);
                    pipeline.release_read();
                });
                lost_reported = report_losses(&probe, lost_reported);
                pipeline.lost_events(lost_reported, monotonic_ns());
                pipeline.tick(pipeline.horizon(d, monotonic_ns()));
                ticks += 1;
                if ticks.is_multiple_of(TRIM_EVERY) {
                    // Bursts leave freed heap behind; give it back so memory follows the load.
                    crate::heap::trim();
                }
                for h in pipeline.take_hints() {
                    copy_control.apply(&h);
                }
                probe.flush_kernel_log();
                if ticks.is_multiple_of(CGROUP_EVERY)
                    && let Some(w) = &mut watch
                {
                    apply_cgroups(&mut probe, w.refresh())?;
                }
                let now = std::time::Instant::now();
                if status.due(now) {
                    if ticks.is_multiple_of(COUNT_TARGETS_EVERY) || processes == 0 {
                        processes = probe.target_count();
                    }
                    let h = pipeline.http_stats();
                    status.show(now, &Counts {
                        exchanges: h.exchanges,
                        messages: h.messages,
                        connections: pipeline.conns.created(),
                        lost_events: lost_reported,
                        processes,
                    });
                }
            }
            s = wait_child(&mut child), if child.is_some() && exit_status.is_none() => {
                let s = s.context("waiting for the command")?;
                exit_status = Some(s);
                stop_at = Some(Instant::now() + Duration::from_millis(cli.grace_ms));
            }
            _ = tokio::time::sleep_until(deadline), if stop_at.is_some() => break,
            sig = stops.recv() => {
                signals += 1;
                if !stop_requested(&mut child, &exit_status, signals, sig, &mut stop_at) { break; }
            }
        }
    }

    // What waited when the loop ended, at most a ring's worth: traced processes that go on
    // writing faster than this reads would otherwise hold the end off for ever.
    reader.drain(ring_bytes, &mut |ev| pipeline.handle(ev));
    tls.finish(UNPROBE_WAIT);
    let finals = reader.live_offsets();
    status.clear();
    pipeline.finish(monotonic_ns(), &finals);
    summary(&probe, &reader, &pipeline);
    if let Some((ep, summary)) = otlp {
        let s = *summary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = s {
            eprintln!("sniffer: {}", s.line(&ep));
        }
    }
    let status = exit_status.map(exit_code);
    Ok(outputs_summary(&outputs.failures(), status))
}

/// Which processes carry the TLS probes (`--tls-probes`).
fn tls_scope(cli: &RunArgs, cgroups: bool) -> TlsScope {
    match cli.tls_probes {
        // Processes that join a cgroup are added by the kernel at their first syscall, unheard
        // of here: probes placed per process would miss them.
        TlsProbes::Traced if cgroups => {
            term::err_line(
                "sniffer: --tls-probes traced: processes join the traced cgroups without sniffer \
                 hearing of it, so the TLS probes sit on every process running OpenSSL",
            );
            TlsScope::All
        }
        TlsProbes::Traced => TlsScope::Traced,
        TlsProbes::All => TlsScope::All,
        // A command is often a script whose children start TLS right after their fork.
        TlsProbes::Auto if cgroups || !cli.command.is_empty() => TlsScope::All,
        TlsProbes::Auto => TlsScope::Traced,
    }
}

/// What `--unit`, `--cgroup` and `--devstack` name.
fn cgroup_specs(cli: &RunArgs) -> Vec<Spec> {
    let mut v: Vec<Spec> = cli.units.iter().cloned().map(Spec::Unit).collect();
    v.extend(cli.cgroups.iter().cloned().map(Spec::Path));
    if cli.devstack {
        v.push(Spec::Devstack);
    }
    v
}

/// Tells the kernel about cgroups that appeared and went, and the user about the units.
fn apply_cgroups(probe: &mut Probe, ch: cgroups::Changes) -> anyhow::Result<()> {
    let tops = |list: &[(std::path::PathBuf, cgroups::Traced)]| -> Vec<String> {
        list.iter()
            .filter(|(p, _)| !list.iter().any(|(q, _)| p != q && p.starts_with(q)))
            .map(|(p, t)| {
                format!(
                    "{} ({}, {} processes now)",
                    t.label,
                    p.display(),
                    cgroups::process_count(p)
                )
            })
            .collect()
    };
    for (_, t) in &ch.added {
        probe
            .add_cgroup(t.id)
            .context("adding a cgroup to the kernel's map")?;
    }
    for (_, t) in &ch.removed {
        probe
            .remove_cgroup(t.id)
            .context("removing a cgroup from the kernel's map")?;
    }
    for t in tops(&ch.added) {
        term::err_line(&format!("sniffer: tracing the processes of {t}"));
    }
    for (p, t) in &ch.removed {
        if !ch.added.iter().any(|(q, _)| q == p)
            && !ch.removed.iter().any(|(q, _)| p != q && p.starts_with(q))
        {
            term::err_line(&format!("sniffer: {} ({}) is gone", t.label, p.display()));
        }
    }
    Ok(())
}

/// What the ring said of processes since the last look, for the TLS probes.
#[derive(Default)]
struct ProcNews {
    /// Exec'd (a target, or a process with a traced name): a new program, which may load
    /// OpenSSL at any moment.
    joined: Vec<u32>,
    /// Mapped code from a file (a library, dlopen), or forked by a target (a copy of its
    /// parent's mappings: OpenSSL only if the parent had it).
    mapped: Vec<u32>,
    /// Ended.
    ended: Vec<u32>,
}

/// Hands an event to the pipeline, noting what processes did (for TLS libraries).
fn handle(pipeline: &mut Pipeline, news: &mut ProcNews, ev: Event) {
    let (list, pid) = match &ev {
        Event::Exec { pid, .. } => (&mut news.joined, *pid),
        Event::Fork { pid, .. } | Event::MapExec { pid, .. } => (&mut news.mapped, *pid),
        Event::Exit { pid, .. } => (&mut news.ended, *pid),
        _ => return pipeline.handle(ev),
    };
    if !list.contains(&pid) {
        list.push(pid);
    }
    pipeline.handle(ev);
}

/// Reads the records the ring holds, at most [`PUMP_BYTES`] of them, into the pipeline, tells
/// the kernel what to copy from now on, and places the TLS probes of processes that joined or
/// mapped code (taking those of the ended off).
fn pump(
    reader: &mut Reader,
    pipeline: &mut Pipeline,
    news: &mut ProcNews,
    copy_control: &mut CopyControl,
    tls: &mut TlsLibs,
    probe: &mut Probe,
) -> Drained {
    let d = reader.drain(PUMP_BYTES, &mut |ev| {
        handle(pipeline, news, ev);
        pipeline.release_read();
        // At once, not after the drain: a drain of a full ring can take longer than a busy
        // stream's credit lasts in the kernel (bounded copy), whose bytes would then go uncopied.
        if pipeline.has_hints() {
            for h in pipeline.take_hints() {
                copy_control.apply(&h);
            }
        }
    });
    if d.more
        && let Ok(lost) = probe.lost_events()
    {
        // Behind: the ring may have been full.
        pipeline.lost_events(lost, monotonic_ns());
    }
    if d.records > 0 {
        pipeline.tick_if_due(pipeline.horizon(d, monotonic_ns()));
    }
    for h in pipeline.take_hints() {
        copy_control.apply(&h);
    }
    place_tls_probes(tls, probe, news);
    d
}

/// Probes the TLS libraries of processes that joined or mapped code; unprobes those that ended.
fn place_tls_probes(tls: &mut TlsLibs, probe: &mut Probe, news: &mut ProcNews) {
    for pid in news.joined.drain(..) {
        // Gone already: a probe placed on an ended process costs a wait for the kernel.
        if !news.ended.contains(&pid) {
            tls.follow(pid, probe);
        }
    }
    for pid in news.mapped.drain(..) {
        if !news.ended.contains(&pid) {
            tls.scan(pid, probe);
        }
    }
    for pid in news.ended.drain(..) {
        tls.forget(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_backs_off_while_idle_and_returns_at_the_first_record() {
        let mut every = POLL;
        let mut seen = vec![];
        for _ in 0..6 {
            every = next_poll(every, 0);
            seen.push(every.as_millis());
        }
        assert_eq!(seen, [20, 40, 80, 100, 100, 100]);
        assert_eq!(next_poll(every, 1), POLL);
    }
}
