//! Arbitrary chunk sequences, out-of-order pieces and gaps through the whole userspace
//! reassembly: connection table -> ordered streams -> HTTP framing and pairing -> stitching,
//! naming, rendering. Nothing may panic or hang, and every stream must come out contiguous.
//!
//! Input: a role byte, then operations. `op % 6`: 0/1 data on recv/send (next byte: length),
//! 2/3 a gap on recv/send (next byte: length in KiB), 4 time passes, 5 the next data piece
//! arrives before the one in front of it (out of order).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use sniffer::{
    conns::{Conn, ConnSink, ConnTable},
    events::{Chunk, Dir, Endpoint, Role, SockInfo, Transport},
    exchange::Exchanges,
    names::Names,
    pipeline::Downstream,
    procs::ProcTable,
    sinks::{
        Fanout,
        jsonl::{HarSink, Jsonl, LogFanout, Recorder},
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

fuzz_target!(|input: &[u8]| {
    let Some((&role, mut ops)) = input.split_first() else { return };
    let role = match role % 3 {
        0 => Role::Client,
        1 => Role::Server,
        _ => Role::Unknown,
    };
    let procs = ProcTable::new();
    let mut logs = LogFanout::default();
    let outputs = Outputs::default();
    let sink = |unit| outputs.writer(Box::new(std::io::sink()), "sink", unit);
    logs.sinks.push(Box::new(NumberedLog::new(sink("messages"), true, 4096)));
    let rec = Recorder {
        redact: true,
        text_limit: 4096,
        unix_offset_ns: 0,
        host: None,
        clock_shift_ns: 0,
    };
    logs.sinks.push(Box::new(Jsonl::new(sink("exchanges"), rec.clone())));
    logs.sinks.push(Box::new(HarSink::new(sink("exchanges"), rec)));
    let mut down = Downstream {
        streams: Fanout { sinks: vec![Box::new(Contiguous::default())] },
        http: Exchanges::new(Stitcher::new(logs, Names::default(), None).offline(), 4096),
    };
    let mut conns = ConnTable::new();
    let sock = SockInfo {
        ts_ns: 0,
        tgid: 1,
        tid: 1,
        fd: 3,
        sk: 7,
        peer_sk: 0,
        peer_tgid: 0,
        netns: 0,
        role,
        transport: Transport::Tcp,
        local: Endpoint::Inet("127.0.0.1:40000".parse().unwrap()),
        peer: Endpoint::Inet("127.0.0.1:1".parse().unwrap()),
        sent: 0,
        received: 0,
    };
    conns.open(&sock, &mut down, &procs);
    let mut off = [0u64; 2];
    let mut ts = 1u64;
    let mut delayed: Option<Chunk> = None;
    let chunk = |dir: Dir, off: u64, len: u64, data: Vec<u8>, ts: u64| Chunk {
        ts_ns: ts,
        tgid: 1,
        tid: 1,
        fd: 3,
        sk: 7,
        dir,
        syscall: Syscall::Read,
        off,
        len,
        syscall_len: len,
        data,
    };
    let mut steps = 0;
    while let Some((&op, rest)) = ops.split_first() {
        steps += 1;
        if steps > 10_000 {
            break;
        }
        ops = rest;
        ts += 1000;
        let dir = if op % 2 == 0 { Dir::Recv } else { Dir::Send };
        match op % 6 {
            0 | 1 => {
                let Some((&n, rest)) = ops.split_first() else { break };
                let n = (n as usize).min(rest.len());
                let data = rest[..n].to_vec();
                ops = &rest[n..];
                let c = chunk(dir, off[dir.index()], n as u64, data, ts);
                off[dir.index()] += n as u64;
                match delayed.take() {
                    // The held piece lands after this one.
                    Some(d) => {
                        conns.data(c, &mut down, &procs);
                        conns.data(d, &mut down, &procs);
                    }
                    None => conns.data(c, &mut down, &procs),
                }
            }
            2 | 3 => {
                let Some((&n, rest)) = ops.split_first() else { break };
                ops = rest;
                // A piece the kernel counted but did not copy.
                let len = u64::from(n) * 1024 + 1;
                let c = chunk(dir, off[dir.index()], len, Vec::new(), ts);
                off[dir.index()] += len;
                conns.data(c, &mut down, &procs);
            }
            4 => {
                conns.expire(ts, &mut down, &procs);
                down.http.sink.tick(ts + 1_000_000_000, &procs);
            }
            _ => {
                // Hold the next data piece back (or lose it, if nothing follows).
                let Some((&n, rest)) = ops.split_first() else { break };
                let n = (n as usize).min(rest.len());
                let c = chunk(dir, off[dir.index()], n as u64, rest[..n].to_vec(), ts);
                off[dir.index()] += n as u64;
                ops = &rest[n..];
                if let Some(d) = delayed.replace(c) {
                    conns.data(d, &mut down, &procs);
                }
            }
        }
    }
    let finals = [sniffer::events::FinalOffsets {
        tgid: 1,
        fd: 3,
        sk: 7,
        sent: off[Dir::Send.index()],
        received: off[Dir::Recv.index()],
    }];
    conns.finish(ts, &finals, &mut down, &procs);
    down.http.sink.finish(ts + 1, &procs);
    let _ = down.close();
});
