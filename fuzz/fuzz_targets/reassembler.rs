//! Arbitrary chunk sequences, out-of-order pieces, gaps, closes and the passing of time through
//! the whole userspace reassembly, on one connection or on both ends of one (both traced):
//! connection table -> ordered streams -> HTTP framing and pairing -> stitching, naming,
//! rendering, the numbered log and the JSONL. Nothing may panic or hang, and every stream must
//! come out contiguous. (The HAR conversion reads JSONL: its own target, `har`.)
//!
//! Input: a first byte, then operations.
//! - First byte: `% 3` is end A's role (client, server, unknown); bit 7 adds end B, A's peer
//!   (addresses reversed, the other role), traced too.
//! - Operation byte: bit 7 sends it to end B (to A when there is no B); `(op & 0x7f) % 7`:
//!   0/1 data on recv/send (next byte: length, then the bytes); 2/3 a gap on recv/send (next
//!   byte: length in KiB, + 1); 4 time passes (next byte: tens of ms), then holes expire and the
//!   stitcher ticks; 5 data (on recv if bit 6, else send) held back until the next data piece
//!   has landed (lost if none comes); 6 the end closes (data on it after that is a new socket,
//!   a connection per request).
//!
//! Per input only what the input drives is done: the process table is made once, the sinks
//! write to nowhere, nothing is read from the system.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use sniffer::{
    conns::{Conn, ConnSink, ConnTable},
    events::{Chunk, Dir, Endpoint, FinalOffsets, Role, SockInfo, Transport},
    exchange::Exchanges,
    names::Names,
    pipeline::Downstream,
    procs::ProcTable,
    sinks::{
        Fanout, LogFanout,
        jsonl::Jsonl,
        records::{Recorder, Records},
        log::NumberedLog,
        output::Outputs,
    },
    stitch::Stitcher,
    stream::Piece,
};
use sniffer_common::Syscall;

/// Checks that each stream is delivered contiguously from offset 0.
#[derive(Default)]
struct Contiguous {
    next: HashMap<(u64, usize), u64>,
}

impl ConnSink for Contiguous {
    fn pieces(&mut self, conn: &Conn, dir: Dir, pieces: &[Piece], _procs: &ProcTable) {
        let next = self.next.entry((conn.id, dir.index())).or_insert(0);
        for p in pieces {
            let (off, len) = match p {
                Piece::Data { off, bytes, .. } => (*off, bytes.len() as u64),
                Piece::Gap { off, len, .. } => (*off, *len),
            };
            assert_eq!(off, *next, "stream not contiguous");
            *next = off + len;
        }
    }
}

const RECORDER: Recorder = Recorder {
    redact: true,
    text_limit: 4096,
    unix_offset_ns: 0,
    host: None,
    clock_shift_ns: 0,
};

/// One traced end of the connection.
struct End {
    sock: SockInfo,
    /// Stream offsets: [recv, send].
    off: [u64; 2],
    open: bool,
    /// Sockets this end had (a new one after each close).
    generation: u16,
}

impl End {
    fn new(b: bool, role: Role) -> Self {
        let client = "127.0.0.1:40000".parse().expect("address");
        let server = "127.0.0.1:1".parse().expect("address");
        Self {
            sock: SockInfo {
                ts_ns: 0,
                tgid: 1 + u32::from(b),
                tid: 1 + u32::from(b),
                fd: 3 + i32::from(b),
                sk: 7 + u64::from(b),
                peer_sk: 0,
                peer_tgid: 0,
                netns: 0,
                role,
                transport: Transport::Tcp,
                local: Endpoint::Inet(if b { server } else { client }),
                peer: Endpoint::Inet(if b { client } else { server }),
                sent: 0,
                received: 0,
                tls_sent: 0,
                tls_received: 0,
            },
            off: [0, 0],
            open: false,
            generation: 0,
        }
    }

    /// A new socket for this end: the next client port, fresh streams.
    fn reopen(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        let port = 40000u16.wrapping_add(self.generation);
        let client = Endpoint::Inet(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        if self.sock.fd == 3 {
            self.sock.local = client;
        } else {
            self.sock.peer = client;
        }
        self.sock.sk += 2;
        self.off = [0, 0];
    }

    fn chunk<'a>(&self, dir: Dir, len: u64, data: &'a [u8], ts: u64) -> Chunk<'a> {
        Chunk {
            ts_ns: ts,
            tgid: self.sock.tgid,
            tid: self.sock.tid,
            fd: self.sock.fd,
            sk: self.sock.sk,
            dir,
            syscall: Syscall::Read,
            off: self.off[dir.index()],
            len,
            syscall_len: len,
            data,
            tls: sniffer::events::Tls::No,
        }
    }

    fn finals(&self) -> FinalOffsets {
        FinalOffsets {
            tgid: self.sock.tgid,
            fd: self.sock.fd,
            sk: self.sock.sk,
            sent: self.off[Dir::Send.index()],
            received: self.off[Dir::Recv.index()],
            tls_sent: 0,
            tls_received: 0,
        }
    }
}

thread_local! {
    /// No process is known: names come from what the events say.
    static PROCS: ProcTable = ProcTable::new();
}

fuzz_target!(|input: &[u8]| PROCS.with(|procs| run(input, procs)));

fn run(input: &[u8], procs: &ProcTable) {
    let Some((&first, mut ops)) = input.split_first() else {
        return;
    };
    let role = match first % 3 {
        0 => Role::Client,
        1 => Role::Server,
        _ => Role::Unknown,
    };
    let peer_role = match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
        Role::Unknown => Role::Unknown,
    };
    let mut ends = vec![End::new(false, role)];
    if first & 0x80 != 0 {
        ends.push(End::new(true, peer_role));
    }
    let mut logs = LogFanout::default();
    let outputs = Outputs::default();
    let sink = |unit| outputs.writer(Box::new(std::io::sink()), "sink", unit);
    logs.sinks.push(Box::new(NumberedLog::new(sink("messages"), true, 4096)));
    let mut records = Records::new(RECORDER);
    records.sinks.push(Box::new(Jsonl::new(sink("exchanges"))));
    logs.sinks.push(Box::new(records));
    let mut down = Downstream {
        streams: Fanout {
            sinks: vec![Box::new(Contiguous::default())],
        },
        http: Exchanges::new(Stitcher::new(logs, Names::default(), None).offline(), 4096),
    };
    let mut conns = ConnTable::new();
    for end in &mut ends {
        conns.open(&end.sock, &mut down, procs);
        end.open = true;
    }
    let mut ts = 1u64;
    let mut delayed: Option<Chunk> = None;
    let mut steps = 0;
    while let Some((&op, rest)) = ops.split_first() {
        steps += 1;
        if steps > 10_000 {
            break;
        }
        ops = rest;
        ts += 1000;
        let which = usize::from(op & 0x80 != 0).min(ends.len() - 1);
        let kind = (op & 0x7f) % 7;
        let dir = match kind {
            5 if op & 0x40 != 0 => Dir::Recv,
            5 => Dir::Send,
            k if k % 2 == 0 => Dir::Recv,
            _ => Dir::Send,
        };
        // Data on an end that closed is a new socket (a connection per request).
        if matches!(kind, 0..=3 | 5) && !ends[which].open {
            let end = &mut ends[which];
            end.reopen();
            end.sock.ts_ns = ts;
            conns.open(&end.sock, &mut down, procs);
            end.open = true;
        }
        let end = &mut ends[which];
        match kind {
            0 | 1 | 5 => {
                let Some((&n, rest)) = ops.split_first() else {
                    break;
                };
                let n = usize::from(n).min(rest.len());
                let c = end.chunk(dir, n as u64, &rest[..n], ts);
                end.off[dir.index()] += n as u64;
                ops = &rest[n..];
                if kind == 5 {
                    // Held back; one held already lands now.
                    if let Some(d) = delayed.replace(c) {
                        conns.data(d, &mut down, procs);
                    }
                } else {
                    conns.data(c, &mut down, procs);
                    // The held piece lands after this one.
                    if let Some(d) = delayed.take() {
                        conns.data(d, &mut down, procs);
                    }
                }
            }
            2 | 3 => {
                let Some((&n, rest)) = ops.split_first() else {
                    break;
                };
                ops = rest;
                // A piece the kernel counted but did not copy.
                let len = u64::from(n) * 1024 + 1;
                let c = end.chunk(dir, len, &[], ts);
                end.off[dir.index()] += len;
                conns.data(c, &mut down, procs);
            }
            4 => {
                let Some((&n, rest)) = ops.split_first() else {
                    break;
                };
                ops = rest;
                ts += u64::from(n) * 10_000_000;
                conns.expire(ts, &mut down, procs);
                down.http.sink.tick(ts, procs);
            }
            _ => {
                if end.open {
                    end.sock.ts_ns = ts;
                    end.sock.sent = end.off[Dir::Send.index()];
                    end.sock.received = end.off[Dir::Recv.index()];
                    conns.close(&end.sock, &mut down, procs);
                    end.open = false;
                }
            }
        }
    }
    let finals: Vec<FinalOffsets> = ends.iter().filter(|e| e.open).map(End::finals).collect();
    conns.finish(ts, &finals, &mut down, procs);
    down.http.sink.finish(ts + 1, procs);
    let _ = down.close();
}
