//! Where results go. Each sink is a [`ConnSink`] fed by the connection table, except the raw
//! chunk printer, which sees the kernel's events as they arrive. Every file is opened by
//! [`safe_open`] (no link followed, regular files only, private) and written through an
//! [`output::Output`] (a failed write is reported and counted; the capture goes on).
pub mod conn_log;
pub mod dump;
pub mod jsonl;
pub mod log;
pub mod output;
pub mod raw;
pub mod records;
pub mod safe_open;

use crate::{
    conns::{Conn, ConnSink},
    events::Dir,
    procs::ProcTable,
    stitch::{Entry, Exchange, LogSink},
    stream::Piece,
};

/// Several sinks fed in turn.
#[derive(Default)]
pub struct Fanout {
    pub sinks: Vec<Box<dyn ConnSink>>,
}

impl ConnSink for Fanout {
    fn opened(&mut self, conn: &Conn, procs: &ProcTable) {
        for s in &mut self.sinks {
            s.opened(conn, procs);
        }
    }

    fn pieces(&mut self, conn: &Conn, dir: Dir, pieces: &[Piece], procs: &ProcTable) {
        for s in &mut self.sinks {
            s.pieces(conn, dir, pieces, procs);
        }
    }

    fn ended(&mut self, conn: &Conn, procs: &ProcTable) {
        for s in &mut self.sinks {
            s.ended(conn, procs);
        }
    }

    fn close(&mut self) {
        for s in &mut self.sinks {
            s.close();
        }
    }
}

/// Several log sinks fed in turn.
#[derive(Default)]
pub struct LogFanout {
    pub sinks: Vec<Box<dyn LogSink>>,
}

impl LogSink for LogFanout {
    fn message(&mut self, e: &Entry<'_>) {
        for s in &mut self.sinks {
            s.message(e);
        }
    }

    fn exchange(&mut self, x: &Exchange) {
        for s in &mut self.sinks {
            s.exchange(x);
        }
    }

    fn flush(&mut self) {
        for s in &mut self.sinks {
            s.flush();
        }
    }

    fn close(&mut self) {
        for s in &mut self.sinks {
            s.close();
        }
    }
}

/// C-style escaping of captured bytes for one-line display: printable ASCII as is, `\r \n \t
/// \\ \"` as escapes, anything else as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(b as char),
            _ => {
                use std::fmt::Write as _;
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_is_one_line_and_reversible_by_eye() {
        assert_eq!(
            escape(b"GET / HTTP/1.1\r\nX: \"q\"\\\t\x00\xff"),
            "GET / HTTP/1.1\\r\\nX: \\\"q\\\"\\\\\\t\\x00\\xff"
        );
    }
}
