//! `--raw`: every kernel event as one line, in arrival order, to check the capture by eye.
use std::io::{self, Write};

use super::{escape, output::Output};
use crate::{
    conns::Conn,
    events::Tls,
    events::{Chunk, Event, SockInfo},
    procs::ProcTable,
};

pub struct RawSink {
    out: Output,
    /// Kernel time of the sniffer's start: lines show seconds since then.
    start_ns: u64,
}

/// One line being written.
struct Line<'a> {
    out: &'a mut Vec<u8>,
    start_ns: u64,
}

impl RawSink {
    /// `out` counts in events.
    pub fn new(out: Output, start_ns: u64) -> Self {
        Self { out, start_ns }
    }

    /// One event; `conn` is the connection a data or close event belongs to, if known.
    pub fn event(&mut self, ev: &Event, conn: Option<&Conn>, procs: &ProcTable) {
        let start_ns = self.start_ns;
        self.out
            .record(1, |out| Line { out, start_ns }.event(ev, conn, procs));
    }

    pub fn flush(&mut self) {
        self.out.flush();
    }
}

impl Line<'_> {
    fn when(&self, ts_ns: u64) -> String {
        let d = ts_ns.saturating_sub(self.start_ns);
        format!("{:>4}.{:06}", d / 1_000_000_000, (d % 1_000_000_000) / 1000)
    }

    fn who(procs: &ProcTable, pid: u32, tid: u32) -> String {
        if pid == tid {
            format!("{}[{pid}]", procs.name(pid))
        } else {
            format!("{}[{pid}/{tid}]", procs.name(pid))
        }
    }

    fn event(&mut self, ev: &Event, conn: Option<&Conn>, procs: &ProcTable) -> io::Result<()> {
        match ev {
            Event::Data(c) => self.chunk(c, conn, procs),
            Event::SockOpen(s) => self.sock("open", s, None, procs),
            Event::SockClose(s) => self.sock("close", s, conn, procs),
            Event::Fork {
                ts_ns, pid, ppid, ..
            } => writeln!(
                self.out,
                "{} {} fork from {ppid}",
                self.when(*ts_ns),
                Self::who(procs, *pid, *pid)
            ),
            Event::Exec {
                ts_ns, pid, comm, ..
            } => writeln!(
                self.out,
                "{} {} exec {comm}",
                self.when(*ts_ns),
                Self::who(procs, *pid, *pid)
            ),
            Event::Exit {
                ts_ns, pid, code, ..
            } => writeln!(
                self.out,
                "{} {} exit {code}",
                self.when(*ts_ns),
                Self::who(procs, *pid, *pid)
            ),
            Event::MapExec { ts_ns, pid } => writeln!(
                self.out,
                "{} {} maps executable code",
                self.when(*ts_ns),
                Self::who(procs, *pid, *pid)
            ),
        }
    }

    fn chunk(&mut self, c: &Chunk, conn: Option<&Conn>, procs: &ProcTable) -> io::Result<()> {
        let addrs = conn.map_or_else(
            || "? -> ?".to_owned(),
            |k| format!("{} -> {}", k.local, k.peer),
        );
        let size = if c.len == c.syscall_len {
            format!("{}", c.len)
        } else {
            format!("{}/{}", c.len, c.syscall_len)
        };
        write!(
            self.out,
            "{} {} fd {} {addrs} {} {} {size} @{} ",
            self.when(c.ts_ns),
            Self::who(procs, c.tgid, c.tid),
            c.fd,
            c.dir.name(),
            c.syscall.name(),
            c.off
        )?;
        if !c.data.is_empty() {
            write!(self.out, "\"{}\"", escape(c.data))?;
        }
        match c.tls {
            // SSL_read/SSL_write name the plaintext already; the wire bytes say what they are.
            Tls::Ciphertext => write!(self.out, "[TLS ciphertext, counted]")?,
            Tls::Plaintext => write!(self.out, " (TLS plaintext)")?,
            Tls::No => {}
        }
        let missing = c.len - c.data.len() as u64;
        if missing > 0 && c.tls != Tls::Ciphertext {
            write!(self.out, " [{missing} bytes not captured]")?;
        }
        writeln!(self.out)
    }

    /// A socket event; a close names the addresses its connection had (the kernel sends none).
    fn sock(
        &mut self,
        what: &str,
        s: &SockInfo,
        conn: Option<&Conn>,
        procs: &ProcTable,
    ) -> io::Result<()> {
        let (local, peer) = conn.map_or((&s.local, &s.peer), |c| (&c.local, &c.peer));
        write!(
            self.out,
            "{} {} fd {} {local} -> {peer} {what} {} {}",
            self.when(s.ts_ns),
            Self::who(procs, s.tgid, s.tid),
            s.fd,
            s.role.name(),
            s.transport.name()
        )?;
        if what == "close" {
            write!(self.out, " (sent {}, received {})", s.sent, s.received)?;
        }
        writeln!(self.out)
    }
}
