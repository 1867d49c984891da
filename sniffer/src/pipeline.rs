//! The userspace pipeline after the ring buffer: typed events -> process table and
//! connections -> ordered streams -> sinks. One direction: no step reaches back.
use crate::{
    conns::{ConnSink, ConnTable},
    events::{Event, FinalOffsets},
    procs::ProcTable,
    sinks::{Fanout, raw::RawSink},
};

/// How long a hole in a stream is waited for before it is reported lost: pieces from other
/// CPUs land in the ring buffer a little out of order, lost ones never land.
pub const HOLE_WAIT_NS: u64 = 200_000_000;

/// Totals for the end-of-run summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub events: u64,
    pub data_events: u64,
    pub bytes_captured: u64,
}

pub struct Pipeline {
    pub procs: ProcTable,
    pub conns: ConnTable,
    raw: Option<RawSink>,
    sinks: Fanout,
    pub totals: Totals,
    pub raw_error: Option<std::io::Error>,
}

impl Pipeline {
    pub fn new(procs: ProcTable, raw: Option<RawSink>, sinks: Vec<Box<dyn ConnSink>>) -> Self {
        Self {
            procs,
            conns: ConnTable::new(),
            raw,
            sinks: Fanout { sinks },
            totals: Totals::default(),
            raw_error: None,
        }
    }

    pub fn handle(&mut self, ev: Event) {
        self.totals.events += 1;
        // Name a process by what it became before printing its fork or exec.
        match &ev {
            Event::Fork {
                pid, ppid, comm, ..
            } => self.procs.on_fork(*pid, *ppid, comm),
            Event::Exec { pid, comm, .. } => self.procs.on_exec(*pid, comm),
            _ => {}
        }
        if let Some(raw) = &mut self.raw {
            let conn = match &ev {
                Event::Data(c) => self.conns.get(c.tgid, c.fd),
                Event::SockClose(s) => self.conns.get(s.tgid, s.fd),
                _ => None,
            };
            if let Err(e) = raw.event(&ev, conn, &self.procs)
                && self.raw_error.is_none()
            {
                self.raw_error = Some(e);
            }
        }
        match ev {
            Event::Data(c) => {
                self.totals.data_events += 1;
                self.totals.bytes_captured += c.data.len() as u64;
                self.procs.ensure(c.tgid);
                self.conns.data(c, &mut self.sinks, &self.procs);
            }
            Event::SockOpen(s) => {
                self.procs.ensure(s.tgid);
                self.conns.open(&s, &mut self.sinks, &self.procs);
            }
            Event::SockClose(s) => self.conns.close(&s, &mut self.sinks, &self.procs),
            Event::Fork { .. } | Event::Exec { .. } => {}
            Event::Exit {
                ts_ns,
                pid,
                code,
                sockets,
            } => {
                self.conns
                    .exit(pid, ts_ns, &sockets, &mut self.sinks, &self.procs);
                self.procs.on_exit(pid, code);
            }
        }
    }

    /// Periodic work: report stream holes that waited too long as lost.
    pub fn tick(&mut self, now_ns: u64) {
        self.conns.expire(
            now_ns.saturating_sub(HOLE_WAIT_NS),
            &mut self.sinks,
            &self.procs,
        );
        self.flush_raw();
    }

    fn flush_raw(&mut self) {
        if let Some(raw) = &mut self.raw
            && let Err(e) = raw.flush()
            && self.raw_error.is_none()
        {
            self.raw_error = Some(e);
        }
    }

    /// End of the run: every open connection ends at the kernel's final offsets; returns the
    /// first output error of any sink.
    pub fn finish(&mut self, now_ns: u64, finals: &[FinalOffsets]) -> std::io::Result<()> {
        self.conns
            .finish(now_ns, finals, &mut self.sinks, &self.procs);
        self.flush_raw();
        let sinks = self.sinks.close();
        match self.raw_error.take() {
            Some(e) => Err(e),
            None => sinks,
        }
    }
}
