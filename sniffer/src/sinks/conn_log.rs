//! The main output (`-o`) until HTTP exchanges are rebuilt: one entry per connection when it
//! ends, with who, where, how many bytes each way and every gap.
use std::io::{self, Write};

use super::output::Output;
use crate::{
    conns::{Conn, ConnSink},
    events::Dir,
    procs::ProcTable,
    stream::{GapKind, Piece},
};

pub struct ConnLog {
    out: Output,
    /// Gaps seen per live connection: (id, dir, off, len, kind).
    gaps: Vec<(u64, Dir, u64, u64, GapKind)>,
}

type GapList = [(u64, Dir, u64, u64, GapKind)];

impl ConnLog {
    /// `out` counts in connections.
    pub fn new(out: Output) -> Self {
        Self {
            out,
            gaps: Vec::new(),
        }
    }

    fn entry(out: &mut Vec<u8>, conn: &Conn, procs: &ProcTable, gaps: &GapList) -> io::Result<()> {
        let send = &conn.stream(Dir::Send).stats;
        let recv = &conn.stream(Dir::Recv).stats;
        writeln!(
            out,
            "[{}] {} (pid {}) fd {} {} {} {} -> {}",
            conn.id,
            procs.name(conn.tgid),
            conn.tgid,
            conn.fd,
            conn.role.name(),
            conn.transport.name(),
            conn.local,
            conn.peer
        )?;
        if let Some(p) = conn.not_http {
            let total = conn.total.map_or_else(
                || "bytes unknown".to_owned(),
                |t| {
                    format!(
                        "{} bytes sent, {} received",
                        t[Dir::Send.index()],
                        t[Dir::Recv.index()]
                    )
                },
            );
            writeln!(
                out,
                "    not HTTP ({p}): set aside at its first bytes, the kernel sent nothing more; \
                 {total}; ended: {}",
                conn.ended
                    .map_or("-".to_owned(), |e| format!("{:?}", e.1).to_lowercase())
            )?;
            return Ok(());
        }
        writeln!(
            out,
            "    {}sent {} bytes ({} captured), received {} bytes ({} captured); ended: {}",
            if conn.tls.is_some_and(|t| t.read) {
                "TLS plaintext: "
            } else {
                ""
            },
            send.bytes,
            send.captured,
            recv.bytes,
            recv.captured,
            conn.ended
                .map_or("-".to_owned(), |e| format!("{:?}", e.1).to_lowercase())
        )?;
        if let Some(t) = conn.tls {
            writeln!(
                out,
                "    TLS: {} bytes sent and {} received encrypted (counted, not parsed){}",
                t.ciphertext[Dir::Send.index()],
                t.ciphertext[Dir::Recv.index()],
                if t.read {
                    ""
                } else {
                    "; its plaintext was not read (the process's TLS library is not one sniffer \
                     probes)"
                }
            )?;
        }
        if !conn.end_known {
            writeln!(
                out,
                "    length unknown: the kernel's final byte counts were lost with its close event"
            )?;
        }
        for &(id, dir, off, len, kind) in gaps {
            if id == conn.id {
                writeln!(
                    out,
                    "    gap: {} {len} bytes at offset {off} ({})",
                    dir.name(),
                    match kind {
                        GapKind::Lost => "lost",
                        GapKind::Uncaptured | GapKind::Uncopyable => "not captured",
                    }
                )?;
            }
        }
        Ok(())
    }
}

impl ConnSink for ConnLog {
    fn pieces(&mut self, conn: &Conn, dir: Dir, pieces: &[Piece], _procs: &ProcTable) {
        for p in pieces {
            if let Piece::Gap { off, len, kind, .. } = *p {
                // Adjacent gaps of one cause are one gap to a reader.
                match self.gaps.last_mut() {
                    Some(g) if g.0 == conn.id && g.1 == dir && g.4 == kind && g.2 + g.3 == off => {
                        g.3 += len;
                    }
                    _ => self.gaps.push((conn.id, dir, off, len, kind)),
                }
            }
        }
    }

    fn ended(&mut self, conn: &Conn, procs: &ProcTable) {
        let gaps = &self.gaps;
        self.out.record(1, |b| Self::entry(b, conn, procs, gaps));
        self.gaps.retain(|g| g.0 != conn.id);
        self.out.flush();
    }

    fn close(&mut self) {
        self.out.flush();
    }
}
