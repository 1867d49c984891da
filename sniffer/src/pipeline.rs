//! The userspace pipeline after the ring buffer: typed events -> process table and
//! connections -> ordered streams -> HTTP exchanges -> stitching and naming -> sinks. One
//! direction: no step reaches back.
use crate::{
    conns::{Conn, ConnSink, ConnTable},
    events::{Dir, Drained, Event, FinalOffsets, Tls},
    exchange::Exchanges,
    procs::ProcTable,
    sinks::{Fanout, LogFanout, raw::RawSink},
    stitch::{MAX_ORDER_SLACK_NS, Stats, Stitcher},
    stream::Piece,
};

/// The HTTP steps: exchanges per connection, then stitching, naming and ordering.
pub type Http = Exchanges<Stitcher<LogFanout>>;

/// Everything downstream of the connection table: byte-stream sinks and the HTTP steps.
pub struct Downstream {
    pub streams: Fanout,
    pub http: Http,
}

impl ConnSink for Downstream {
    fn opened(&mut self, conn: &Conn, procs: &ProcTable) {
        self.streams.opened(conn, procs);
        self.http.opened(conn, procs);
    }

    fn pieces(&mut self, conn: &Conn, dir: Dir, pieces: &[Piece], procs: &ProcTable) {
        self.streams.pieces(conn, dir, pieces, procs);
        self.http.pieces(conn, dir, pieces, procs);
    }

    fn ended(&mut self, conn: &Conn, procs: &ProcTable) {
        self.streams.ended(conn, procs);
        self.http.ended(conn, procs);
    }

    fn close(&mut self) {
        self.streams.close();
        self.http.close();
    }
}

/// How long a hole in a stream is waited for before it is reported lost: pieces from other
/// CPUs land in the ring buffer a little out of order, lost ones never land.
pub const HOLE_WAIT_NS: u64 = 200_000_000;
/// How long a hole is waited for while the kernel has lately lost events (the ring was full):
/// the order's longest slack, past which a piece that filled it would be written out of order
/// anyway.
/// Waiting longer holds every message behind the hole (written out of order once it is given
/// up) and the stream's bytes after it (up to 4 MiB a stream).
const HOLE_WAIT_AFTER_LOSS_NS: u64 = MAX_ORDER_SLACK_NS;

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
    sinks: Downstream,
    pub totals: Totals,
    /// Kernel time of the last release of what waited (a tick or [`Pipeline::tick_if_due`]).
    last_release_ns: u64,
    /// The newest kernel time of an event read.
    newest_ns: u64,
    /// The kernel's count of lost events when last told ([`Pipeline::lost_events`]).
    lost_seen: u64,
    /// Holes are waited for [`HOLE_WAIT_AFTER_LOSS_NS`] only, up to this kernel time.
    losses_until_ns: u64,
}

/// How often events read between the app's ticks also release what waited long enough (see
/// [`Pipeline::tick_if_due`]): a fraction of the order's shortest slack, so that what waits
/// stays near that slack's worth of exchanges.
const RELEASE_EVERY_NS: u64 = 250_000;

impl Pipeline {
    pub fn new(
        procs: ProcTable,
        raw: Option<RawSink>,
        streams: Vec<Box<dyn ConnSink>>,
        http: Http,
    ) -> Self {
        Self {
            procs,
            conns: ConnTable::new(),
            raw,
            sinks: Downstream {
                streams: Fanout { sinks: streams },
                http,
            },
            totals: Totals::default(),
            last_release_ns: 0,
            newest_ns: 0,
            lost_seen: 0,
            losses_until_ns: 0,
        }
    }

    /// What the kernel should copy, decided since the last call (bounded copy).
    pub fn take_hints(&mut self) -> Vec<crate::probe::CopyHint> {
        let mut hints = std::mem::take(&mut self.conns.hints);
        hints.append(&mut self.sinks.http.hints);
        hints
    }

    /// Whether a hint waits to be taken.
    pub fn has_hints(&self) -> bool {
        !self.conns.hints.is_empty() || !self.sinks.http.hints.is_empty()
    }

    /// Exchanges, messages and breakage so far.
    pub fn http_stats(&self) -> Stats {
        self.sinks.http.sink.stats
    }

    /// How far the events read reach in kernel time, for releasing what waited: `now_ns` when
    /// the ring was read to its end, else the newest event read (a message that began before
    /// `now_ns` may still wait in the ring behind it: after a stall the reader runs seconds
    /// behind the kernel, and released by the clock every message would be out of order).
    pub fn horizon(&self, drained: Drained, now_ns: u64) -> u64 {
        if drained.more {
            self.newest_ns.min(now_ns)
        } else {
            now_ns
        }
    }

    /// After each event the reader handled: what waited long enough before the newest event
    /// read is released (every [`RELEASE_EVERY_NS`] of them), inside a drain too, where a
    /// message that began before it may still wait in the ring behind (see
    /// [`Pipeline::horizon`]). A drain of 256 KiB of records holds ~600 exchanges; released as
    /// they are read, those written are still in the cache.
    pub fn release_read(&mut self) {
        self.tick_if_due(self.newest_ns);
    }

    pub fn handle(&mut self, ev: Event) {
        self.totals.events += 1;
        self.newest_ns = self.newest_ns.max(ev.ts_ns());
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
            raw.event(&ev, conn, &self.procs);
        }
        match ev {
            Event::Data(c) => {
                self.totals.data_events += 1;
                if c.tls == Tls::Plaintext {
                    self.sinks.http.sink.tls_plaintext(c.ts_ns);
                }
                self.totals.bytes_captured += c.data.len() as u64;
                self.procs.ensure(c.tgid);
                self.conns.data(c, &mut self.sinks, &self.procs);
            }
            Event::SockOpen(s) => {
                self.procs.ensure(s.tgid);
                self.conns.open(&s, &mut self.sinks, &self.procs);
            }
            Event::SockClose(s) => self.conns.close(&s, &mut self.sinks, &self.procs),
            Event::Fork { .. } | Event::Exec { .. } | Event::MapExec { .. } => {}
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

    /// For reads between the app's ticks (every 100 ms): writes the messages whose place in the
    /// order is final when the last release is [`RELEASE_EVERY_NS`] old, so that they are
    /// written, and their memory freed, soon after (under load that keeps what is held at once
    /// near the order's slack). The rest of a tick (expiry, which walks every connection and
    /// exchange, and flushing the outputs) waits for the tick.
    pub fn tick_if_due(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_release_ns) >= RELEASE_EVERY_NS {
            self.last_release_ns = now_ns;
            if now_ns <= self.losses_until_ns {
                // Holes left by lost events are given up on as they are found, not at the tick.
                self.conns
                    .expire(self.hole_deadline(now_ns), &mut self.sinks, &self.procs);
            }
            self.sinks.http.sink.release_due(now_ns, &self.procs);
        }
    }

    /// The kernel's count of lost events so far, `total`, read at kernel time `now_ns`. When it
    /// grew, the holes found in the streams up to a while after `now_ns` are most likely its
    /// events, not pieces still on their way from another CPU: they are waited for
    /// [`HOLE_WAIT_AFTER_LOSS_NS`] only.
    pub fn lost_events(&mut self, total: u64, now_ns: u64) {
        if total > self.lost_seen {
            self.lost_seen = total;
            self.losses_until_ns = now_ns.saturating_add(HOLE_WAIT_NS);
        }
    }

    /// Holes whose next piece came before this are given up on at kernel time `now_ns`.
    fn hole_deadline(&self, now_ns: u64) -> u64 {
        let wait = if now_ns <= self.losses_until_ns {
            HOLE_WAIT_AFTER_LOSS_NS
        } else {
            HOLE_WAIT_NS
        };
        now_ns.saturating_sub(wait)
    }

    /// Periodic work: report stream holes that waited too long as lost, write the messages
    /// whose place in the order is final.
    pub fn tick(&mut self, now_ns: u64) {
        self.last_release_ns = now_ns;
        self.conns
            .expire(self.hole_deadline(now_ns), &mut self.sinks, &self.procs);
        self.sinks.http.sink.tick(now_ns, &self.procs);
        self.flush_raw();
    }

    fn flush_raw(&mut self) {
        if let Some(raw) = &mut self.raw {
            raw.flush();
        }
    }

    /// End of the run: every open connection ends at the kernel's final offsets, and every
    /// output writes what it holds (what it could not is counted by its [`Health`]).
    ///
    /// [`Health`]: crate::sinks::output::Health
    pub fn finish(&mut self, now_ns: u64, finals: &[FinalOffsets]) {
        self.conns
            .finish(now_ns, finals, &mut self.sinks, &self.procs);
        self.sinks.http.sink.finish(now_ns, &self.procs);
        self.flush_raw();
        self.sinks.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        conns::tests::{chunk, sock},
        events::{Chunk, Dir, Event, Tls},
        names::Names,
        sinks::LogFanout,
        stitch::{MAX_ORDER_SLACK_NS, MIN_ORDER_SLACK_NS, Stitcher},
    };

    const MS: u64 = 1_000_000;

    /// A pipeline with an offline stitcher and 64 KiB previews.
    fn pipeline() -> Pipeline {
        let http = Exchanges::new(
            Stitcher::new(LogFanout::default(), Names::default(), None).offline(),
            64 << 10,
        );
        Pipeline::new(ProcTable::new(), None, Vec::new(), http)
    }

    /// A pipeline with the client socket `sock(3, 0xa, ..)` open, and the time of its tick.
    fn opened() -> (Pipeline, u64) {
        let mut p = pipeline();
        let t0 = 1_000 * MS;
        p.handle(Event::SockOpen(sock(3, 0xa, 0, 0)));
        p.tick(t0);
        (p, t0)
    }

    /// [`exchange`] read by the reader, which then releases what waited long enough.
    fn read(p: &mut Pipeline, ts: u64, off: &mut [u64; 2]) {
        exchange(p, ts, off);
        p.release_read();
    }

    /// One exchange on the client socket `sock(3, 0xa, ..)`, both messages at `ts`.
    fn exchange(p: &mut Pipeline, ts: u64, off: &mut [u64; 2]) {
        let request: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let response: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
        for (dir, bytes) in [(Dir::Send, request), (Dir::Recv, response)] {
            let o = &mut off[dir.index()];
            p.handle(Event::Data(Chunk {
                ts_ns: ts,
                ..chunk(3, 0xa, dir, *o, bytes)
            }));
            *o += bytes.len() as u64;
        }
    }

    #[test]
    fn reads_between_ticks_release_what_waited_once_the_release_interval_passed() {
        let mut p = pipeline();
        let t0 = 1_000 * MS;
        let half = RELEASE_EVERY_NS / 2;
        p.handle(Event::SockOpen(sock(3, 0xa, 0, 0)));
        p.tick(t0);
        let mut off = [0; 2];
        exchange(&mut p, t0 + 1, &mut off);
        exchange(&mut p, t0 + 1 + half, &mut off);
        // The first exchange's place is final (the order's slack passed: the longest, in a run's
        // first seconds), the second's not yet.
        let first = t0 + 1 + MAX_ORDER_SLACK_NS;
        p.tick_if_due(first);
        assert_eq!(p.http_stats().messages, 2);
        // The second one's is now, but the last release was less than the interval ago.
        p.tick_if_due(first + half + 1);
        assert_eq!(p.http_stats().messages, 2);
        p.tick_if_due(first + RELEASE_EVERY_NS);
        assert_eq!(p.http_stats().messages, 4);
    }

    #[test]
    fn with_nothing_late_a_message_is_written_the_shortest_slack_after_it_began() {
        let (mut p, t0) = opened();
        let mut off = [0; 2];
        read(&mut p, t0 + 1, &mut off);
        read(
            &mut p,
            t0 + 1 + MIN_ORDER_SLACK_NS + RELEASE_EVERY_NS,
            &mut off,
        );
        assert_eq!(
            p.http_stats().messages,
            0,
            "a run's first seconds: the longest slack"
        );
        // Three seconds on, nothing came late: the reader releases what waited the shortest slack
        // as it reads.
        let t1 = t0 + 3_000 * MS;
        read(&mut p, t1, &mut off);
        assert_eq!(p.http_stats().messages, 4);
        read(&mut p, t1 + MIN_ORDER_SLACK_NS - 1, &mut off);
        assert_eq!(p.http_stats().messages, 4);
        read(&mut p, t1 + MIN_ORDER_SLACK_NS + RELEASE_EVERY_NS, &mut off);
        assert_eq!(p.http_stats().messages, 6);
        assert_eq!(p.http_stats().out_of_order, 0);
    }

    #[test]
    fn while_tls_plaintext_flows_the_order_keeps_its_longest_slack() {
        let (mut p, t0) = opened();
        p.handle(Event::SockOpen(sock(4, 0xb, 0, 0)));
        let mut off = [0; 2];
        read(&mut p, t0 + 1, &mut off);
        // Three seconds on, an exchange of TLS plaintext on another connection (each direction's
        // stream from 0).
        let t1 = t0 + 3_000 * MS;
        let request: &[u8] = b"GET /tls HTTP/1.1\r\nHost: x\r\n\r\n";
        let response: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
        for (dir, bytes) in [(Dir::Send, request), (Dir::Recv, response)] {
            p.handle(Event::Data(Chunk {
                ts_ns: t1,
                tls: Tls::Plaintext,
                ..chunk(4, 0xb, dir, 0, bytes)
            }));
        }
        read(&mut p, t1, &mut off);
        read(&mut p, t1 + MIN_ORDER_SLACK_NS + RELEASE_EVERY_NS, &mut off);
        assert_eq!(
            p.http_stats().messages,
            2,
            "the first exchange; the longest slack for the rest"
        );
        read(&mut p, t1 + MAX_ORDER_SLACK_NS + RELEASE_EVERY_NS, &mut off);
        // The TLS exchange and the one at t1; the one just after waits the longest slack.
        assert_eq!(p.http_stats().messages, 6);
        assert_eq!(p.http_stats().out_of_order, 0);
    }

    #[test]
    fn a_drain_cut_short_releases_only_to_the_newest_event_read() {
        let (mut p, t0) = opened();
        let mut off = [0; 2];
        exchange(&mut p, t0 + 1, &mut off);
        // The reader is a second behind: the clock says both messages' places are final, but
        // events of messages that began within the slack before them may still be in the ring.
        let now = t0 + 1_000 * MS;
        let behind = Drained {
            records: 2,
            more: true,
        };
        assert_eq!(p.horizon(behind, now), t0 + 1);
        p.tick_if_due(p.horizon(behind, now));
        assert_eq!(p.http_stats().messages, 0);
        // The reader reads on: the newest event is past the first exchange's slack, which is
        // released; the second waits for the reader to get past its own.
        exchange(
            &mut p,
            t0 + 1 + MAX_ORDER_SLACK_NS + RELEASE_EVERY_NS,
            &mut off,
        );
        p.tick_if_due(p.horizon(behind, now));
        assert_eq!(p.http_stats().messages, 2);
        let caught_up = Drained {
            records: 2,
            more: false,
        };
        assert_eq!(p.horizon(caught_up, now), now);
        p.tick_if_due(p.horizon(caught_up, now));
        assert_eq!(p.http_stats().messages, 4);
        assert_eq!(p.http_stats().out_of_order, 0);
    }

    #[test]
    fn after_lost_events_a_hole_is_given_up_on_within_the_order_slack() {
        for lost in [false, true] {
            let mut p = pipeline();
            let t0 = 1_000 * MS;
            p.handle(Event::SockOpen(sock(3, 0xa, 0, 0)));
            p.tick(t0);
            // The first 100 bytes received never come (their event lost, or late).
            p.handle(Event::Data(Chunk {
                ts_ns: t0 + 1,
                ..chunk(3, 0xa, Dir::Recv, 100, b"HTTP/1.1 200 OK\r\n")
            }));
            if lost {
                p.lost_events(1, t0 + 2);
            }
            let hole = |p: &Pipeline| {
                p.conns.get(7, 3).expect("the connection").streams[Dir::Recv.index()].has_hole()
            };
            p.tick_if_due(t0 + 1 + MAX_ORDER_SLACK_NS + RELEASE_EVERY_NS);
            assert_eq!(hole(&p), !lost, "between ticks, lost: {lost}");
            p.tick(t0 + 1 + 50 * MS);
            assert_eq!(hole(&p), !lost, "at a tick, lost: {lost}");
            // Without word of a loss it is waited for longer: a piece from another CPU.
            p.tick(t0 + 1 + HOLE_WAIT_NS + MS);
            assert!(!hole(&p));
        }
    }
}
