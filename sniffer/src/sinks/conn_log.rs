//! The main output (`-o`) until HTTP exchanges are rebuilt: one entry per connection when it
//! ends, with who, where, how many bytes each way and every gap.
use std::io::{self, Write};

use crate::{
    conns::{Conn, ConnSink},
    events::Dir,
    procs::ProcTable,
    stream::{GapKind, Piece},
};

pub struct ConnLog {
    out: Box<dyn Write + Send>,
    /// Gaps seen per live connection: (id, dir, off, len, kind).
    gaps: Vec<(u64, Dir, u64, u64, GapKind)>,
    error: Option<io::Error>,
}

impl ConnLog {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            gaps: Vec::new(),
            error: None,
        }
    }

    fn entry(&mut self, conn: &Conn, procs: &ProcTable) -> io::Result<()> {
        let send = &conn.stream(Dir::Send).stats;
        let recv = &conn.stream(Dir::Recv).stats;
        writeln!(
            self.out,
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
        writeln!(
            self.out,
            "    sent {} bytes ({} captured), received {} bytes ({} captured); ended: {}",
            send.bytes,
            send.captured,
            recv.bytes,
            recv.captured,
            conn.ended
                .map_or("-".to_owned(), |e| format!("{:?}", e.1).to_lowercase())
        )?;
        if !conn.end_known {
            writeln!(
                self.out,
                "    length unknown: the kernel's final byte counts were lost with its close event"
            )?;
        }
        let mut any = false;
        for &(id, dir, off, len, kind) in &self.gaps {
            if id == conn.id {
                any = true;
                writeln!(
                    self.out,
                    "    gap: {} {len} bytes at offset {off} ({})",
                    dir.name(),
                    match kind {
                        GapKind::Lost => "lost",
                        GapKind::Uncaptured => "not captured",
                    }
                )?;
            }
        }
        if any {
            self.gaps.retain(|g| g.0 != conn.id);
        }
        self.out.flush()
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
        if let Err(e) = self.entry(conn, procs)
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }

    fn close(&mut self) -> io::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        }
    }
}
