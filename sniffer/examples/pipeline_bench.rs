//! The userspace pipeline's cost per exchange, without a kernel: the events a traced nginx
//! worker's keep-alive connections produce (a request read, a response written), replayed
//! through the whole pipeline (connections, streams, HTTP, stitching, the numbered log and the
//! JSONL, to nowhere). `cargo run --release --example pipeline_bench [EXCHANGES] [--jsonl]
//! [--har]` (the numbered log only, as `cargo xtask bench` runs sniffer, unless `--jsonl` or
//! `--har`: each exchange's record is built once for both); under
//! `valgrind --tool=callgrind` its instruction counts are repeatable on a busy machine.
use std::time::Instant;

use sniffer::{
    events::{Chunk, Dir, Endpoint, Event, Role, SockInfo, Tls, Transport},
    exchange::Exchanges,
    names::Names,
    pipeline::Pipeline,
    procs::ProcTable,
    sinks::{
        LogFanout,
        jsonl::{HarSink, Jsonl},
        log::NumberedLog,
        output::Outputs,
        records::{Recorder, Records},
    },
    stitch::Stitcher,
};
use sniffer_common::Syscall;
use std::{
    alloc::{GlobalAlloc, Layout},
    sync::atomic::{AtomicU64, Ordering},
};

const CONNS: u64 = 10;

/// mimalloc, as the daemon has it, counting the blocks it hands out (allocations and
/// reallocations): allocations per exchange are the bench's second figure.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes to mimalloc's own implementation with the caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is GlobalAlloc's, passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    sniffer::heap::configure();
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let outputs = Outputs::default();
    let sink = |unit| outputs.writer(Box::new(std::io::sink()), "sink", unit);
    let mut logs = LogFanout::default();
    logs.sinks
        .push(Box::new(NumberedLog::new(sink("messages"), true, 64 << 10)));
    let rec = Recorder {
        redact: true,
        text_limit: 64 << 10,
        unix_offset_ns: 0,
        host: None,
        clock_shift_ns: 0,
    };
    let mut records = Records::new(rec);
    if std::env::args().any(|a| a == "--jsonl") {
        records.sinks.push(Box::new(Jsonl::new(sink("exchanges"))));
    }
    if std::env::args().any(|a| a == "--har") {
        records
            .sinks
            .push(Box::new(HarSink::new(sink("exchanges"))));
    }
    logs.sinks.push(Box::new(records));
    let http = Exchanges::new(
        Stitcher::new(logs, Names::default(), None).offline(),
        64 << 10,
    )
    .with_bounded_copy(512 << 10);
    let mut p = Pipeline::new(ProcTable::new(), None, Vec::new(), http);
    let request: &[u8] =
        b"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n";
    let response: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 07:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 36\r\nLast-Modified: Mon, 30 Nov 2026 06:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"6789-24\"\r\nAccept-Ranges: bytes\r\n\r\nhello from nginx, traced by sniffer\n";
    let mut ts = 1_000_000_000u64;
    let mut off = vec![[0u64; 2]; CONNS as usize];
    for c in 0..CONNS {
        p.handle(Event::SockOpen(SockInfo {
            ts_ns: ts,
            tgid: 100,
            tid: 100,
            fd: 10 + c as i32,
            sk: 0x1000 + c,
            peer_sk: 0,
            peer_tgid: 0,
            role: Role::Server,
            transport: Transport::Tcp,
            local: Endpoint::Inet("127.0.0.1:8080".parse().unwrap()),
            peer: Endpoint::Inet(format!("127.0.0.1:{}", 40000 + c).parse().unwrap()),
            sent: 0,
            received: 0,
            tls_sent: 0,
            tls_received: 0,
            netns: 0,
        }));
    }
    let start = Instant::now();
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..n {
        let c = i % CONNS;
        for (dir, bytes) in [(Dir::Recv, request), (Dir::Send, response)] {
            ts += 10_000;
            let o = &mut off[c as usize][dir.index()];
            p.handle(Event::Data(Chunk {
                ts_ns: ts,
                tgid: 100,
                tid: 100,
                fd: 10 + c as i32,
                sk: 0x1000 + c,
                dir,
                syscall: if dir == Dir::Recv {
                    Syscall::Recvfrom
                } else {
                    Syscall::Writev
                },
                off: *o,
                len: bytes.len() as u64,
                syscall_len: bytes.len() as u64,
                data: bytes,
                tls: Tls::No,
            }));
            // As the daemon's reader: what waited long enough is written as events are read.
            p.release_read();
            *o += bytes.len() as u64;
        }
        if i % 2000 == 0 {
            // The daemon's 100 ms tick, in event time.
            p.tick(ts);
            let _ = p.take_hints();
        }
    }
    p.finish(ts + 1_000_000_000, &[]);
    let el = start.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    let s = p.http_stats();
    println!(
        "{} exchanges ({} messages) in {:.3} s: {:.2} us per exchange, {:.1} allocations per \
         exchange",
        s.exchanges,
        s.messages,
        el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / s.exchanges.max(1) as f64,
        allocations as f64 / s.exchanges.max(1) as f64
    );
}
