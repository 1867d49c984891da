//! Connections: (process, fd, kernel socket) -> addresses, role and the two byte streams.
//!
//! A connection is born from the kernel's socket-open event (connect, accept, or first use of a
//! socket that existed before tracing) and ends at close(2), at the owner's exit, or when the
//! sniffer stops; its streams are then finished up to the kernel's final offsets.
use foldhash::HashMap;
use sniffer_common::{CopyCtl, copy_flags, dir as kernel_dir};

use crate::{
    classify::{self, Protocol, Side, Verdict},
    events::{Chunk, Dir, Endpoint, FinalOffsets, Role, SockInfo, Tls, Transport},
    probe::CopyHint,
    procs::ProcTable,
    stream::{Piece, Stream},
};

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// close(2).
    Closed,
    /// Its fd now refers to another socket (reused without a close we saw).
    Replaced,
    /// The owning process exited.
    ProcessExit,
    /// The sniffer stopped while it was open.
    Shutdown,
    /// Too many connections were tracked: the idlest was let go (counted).
    Evicted,
}

/// Connections tracked at once; past it the idlest is let go.
pub const MAX_CONNS: usize = 65536;

#[derive(Debug)]
pub struct Conn {
    /// Sequence number, in order of first sight.
    pub id: u64,
    pub tgid: u32,
    pub fd: i32,
    pub sk: u64,
    pub peer_sk: u64,
    /// A unix peer's process (SO_PEERCRED; 0 when unknown).
    pub peer_tgid: u32,
    /// The socket's network namespace (inode number; 0 when unknown).
    pub netns: u32,
    pub role: Role,
    pub transport: Transport,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub opened_ns: u64,
    /// Kernel time of its last bytes.
    pub last_ns: u64,
    pub ended: Option<(u64, End)>,
    /// Indexed by [`Dir::index`].
    pub streams: [Stream; 2],
    /// The socket-open event was lost: addresses are unknown.
    pub open_lost: bool,
    /// The kernel's final stream offsets were known at the end, so the streams' lengths are
    /// exact; false when the close event was lost and the kernel entry was gone too.
    pub end_known: bool,
    /// TLS, when the connection speaks it: its streams then hold the plaintext the TLS
    /// library moved, and its bytes on the wire are only counted.
    pub tls: Option<TlsConn>,
    /// Set aside as not HTTP at its first bytes: the kernel sends nothing more of it.
    pub not_http: Option<Protocol>,
    /// Bytes sent and received in all, by [`Dir::index`], as the kernel counted them at the
    /// end (known for a connection set aside, whose streams stop at its first bytes).
    pub total: Option<[u64; 2]>,
}

/// A TLS connection's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsConn {
    /// Ciphertext bytes on the wire, counted, by [`Dir::index`].
    pub ciphertext: [u64; 2],
    /// Plaintext came from the TLS library; false when it was only recognised on the wire (a
    /// library sniffer does not read: linked statically, or not OpenSSL).
    pub read: bool,
}

/// Whether `bytes`, the first of a stream, start a TLS record (RFC 8446 §5.1: content type
/// 20-23, legacy version 3.x): no HTTP/1.x message starts that way.
pub fn starts_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [20..=23, 3, 0..=4, ..])
}

/// The protocol of a connection whose first bytes in direction `dir` cannot start HTTP/1.x
/// (nor a uwsgi packet), by the side they come from (a role not known: neither side's).
fn not_http(conn: &Conn, dir: Dir, bytes: &[u8]) -> Option<Protocol> {
    let other_untouched = match dir {
        Dir::Send => conn.streams[Dir::Recv.index()].is_untouched(),
        Dir::Recv => conn.streams[Dir::Send.index()].is_untouched(),
    };
    let verdict = |side| classify::first_bytes(bytes, side, other_untouched);
    let sides: &[Side] = match (conn.role, dir) {
        (Role::Client, Dir::Send) | (Role::Server, Dir::Recv) => &[Side::Requests],
        (Role::Client, Dir::Recv) | (Role::Server, Dir::Send) => &[Side::Responses],
        (Role::Unknown, _) => &[Side::Requests, Side::Responses],
    };
    let mut protocol = None;
    for &side in sides {
        match verdict(side) {
            Verdict::NotHttp(p) => {
                protocol.get_or_insert(p);
            }
            Verdict::MaybeHttp | Verdict::Undecided => return None,
        }
    }
    if conn.role == Role::Unknown {
        // A connection older than the tracing: its first bytes seen may fall anywhere in a
        // message. Only a well-known service port or unmistakable bytes set it aside.
        let port = |e: &Endpoint| match e {
            Endpoint::Inet(a) => classify::by_port(a.port()),
            _ => None,
        };
        if let Some(p) = port(&conn.peer).or_else(|| port(&conn.local)) {
            return Some(p);
        }
        if !classify::unmistakable(bytes) {
            return None;
        }
    }
    protocol
}

/// Where a connection's streams end, as the kernel counted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub sent: u64,
    pub received: u64,
    pub tls_sent: u64,
    pub tls_received: u64,
}

impl Ends {
    fn of_sock(s: &SockInfo) -> Self {
        Self {
            sent: s.sent,
            received: s.received,
            tls_sent: s.tls_sent,
            tls_received: s.tls_received,
        }
    }

    fn of_final(f: &FinalOffsets) -> Self {
        Self {
            sent: f.sent,
            received: f.received,
            tls_sent: f.tls_sent,
            tls_received: f.tls_received,
        }
    }
}

impl Conn {
    pub fn stream(&self, dir: Dir) -> &Stream {
        &self.streams[dir.index()]
    }
}

/// What a downstream step receives from the connection table.
/// `procs` names the processes at both ends.
pub trait ConnSink {
    fn opened(&mut self, _conn: &Conn, _procs: &ProcTable) {}
    /// Pieces of one stream, in stream order.
    fn pieces(&mut self, _conn: &Conn, _dir: Dir, _pieces: &[Piece], _procs: &ProcTable) {}
    fn ended(&mut self, _conn: &Conn, _procs: &ProcTable) {}
    /// End of the run: write what is buffered (failures are counted by the outputs).
    fn close(&mut self) {}
}

#[derive(Debug, Default)]
pub struct ConnTable {
    live: HashMap<(u32, i32), Conn>,
    next_id: u64,
    /// Connections whose socket-open event never came.
    pub opens_lost: u64,
    /// Connections let go because [`MAX_CONNS`] were tracked.
    pub evicted: u64,
    /// TLS connections ended whose plaintext came from the library, and those only
    /// recognised on the wire.
    pub tls_read: u64,
    pub tls_unread: u64,
    /// Processes already warned about for a TLS connection that could not be read.
    tls_warned: std::collections::HashSet<u32>,
    /// The TLS probes sit on traced processes only (`--tls-probes traced`): a process that
    /// made TLS calls right after its fork may have been missed.
    pub tls_probes_per_process: bool,
    /// Connections set aside as not HTTP, by protocol.
    pub set_aside: std::collections::BTreeMap<Protocol, u64>,
    /// What the kernel should stop sending (connections set aside), for the probe to apply.
    pub hints: Vec<CopyHint>,
    max_conns: usize,
    scratch: Vec<Piece>,
}

impl ConnTable {
    pub fn new() -> Self {
        Self {
            max_conns: MAX_CONNS,
            ..Self::default()
        }
    }

    /// Tracks at most `n` connections at once (tests).
    pub fn with_max_conns(mut self, n: usize) -> Self {
        self.max_conns = n;
        self
    }

    /// Makes room for one more connection by ending the idlest one.
    fn make_room(&mut self, ts_ns: u64, sink: &mut dyn ConnSink, procs: &ProcTable) {
        while self.live.len() >= self.max_conns.max(1) {
            let Some(key) = self
                .live
                .iter()
                .min_by_key(|(_, c)| c.last_ns)
                .map(|(k, _)| *k)
            else {
                return;
            };
            if let Some(c) = self.live.remove(&key) {
                self.evicted += 1;
                self.end(c, ts_ns, End::Evicted, None, sink, procs);
            }
        }
    }

    pub fn get(&self, tgid: u32, fd: i32) -> Option<&Conn> {
        self.live.get(&(tgid, fd))
    }

    /// Connections seen so far.
    pub const fn created(&self) -> u64 {
        self.next_id
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn create(&mut self, s: &SockInfo, open_lost: bool) -> Conn {
        self.next_id += 1;
        Conn {
            id: self.next_id,
            tgid: s.tgid,
            fd: s.fd,
            sk: s.sk,
            peer_sk: s.peer_sk,
            peer_tgid: s.peer_tgid,
            netns: s.netns,
            role: s.role,
            transport: s.transport,
            local: s.local.clone(),
            peer: s.peer.clone(),
            opened_ns: s.ts_ns,
            last_ns: s.ts_ns,
            ended: None,
            streams: [Stream::new(), Stream::new()],
            open_lost,
            end_known: false,
            tls: None,
            not_http: None,
            total: None,
        }
    }

    /// The kernel started tracking a socket, or learnt its addresses (connect/accept on a
    /// socket it already tracked).
    pub fn open(&mut self, s: &SockInfo, sink: &mut dyn ConnSink, procs: &ProcTable) {
        let key = (s.tgid, s.fd);
        if let Some(c) = self.live.get_mut(&key) {
            if c.sk == s.sk {
                c.role = s.role;
                c.local = s.local.clone();
                c.peer = s.peer.clone();
                c.peer_sk = s.peer_sk;
                c.peer_tgid = s.peer_tgid;
                c.netns = s.netns;
                return;
            }
            if let Some(old) = self.live.remove(&key) {
                self.end(old, s.ts_ns, End::Replaced, None, sink, procs);
            }
        }
        self.make_room(s.ts_ns, sink, procs);
        let conn = self.create(s, false);
        sink.opened(&conn, procs);
        self.live.insert(key, conn);
    }

    /// close(2) of a tracked socket; `s` carries the final stream offsets.
    pub fn close(&mut self, s: &SockInfo, sink: &mut dyn ConnSink, procs: &ProcTable) {
        let key = (s.tgid, s.fd);
        if self.live.get(&key).is_some_and(|c| c.sk == s.sk)
            && let Some(c) = self.live.remove(&key)
        {
            self.end(c, s.ts_ns, End::Closed, Some(Ends::of_sock(s)), sink, procs);
        }
    }

    /// Bytes moved on a socket.
    pub fn data(&mut self, chunk: Chunk, sink: &mut dyn ConnSink, procs: &ProcTable) {
        let key = (chunk.tgid, chunk.fd);
        let known = self.live.get(&key).is_some_and(|c| c.sk == chunk.sk);
        if !known {
            // The open event was lost (ring buffer full): keep the bytes, addresses unknown.
            let s = SockInfo {
                ts_ns: chunk.ts_ns,
                tgid: chunk.tgid,
                tid: chunk.tid,
                fd: chunk.fd,
                sk: chunk.sk,
                peer_sk: 0,
                peer_tgid: 0,
                netns: 0,
                role: Role::Unknown,
                transport: Transport::Other(0),
                local: Endpoint::Unknown,
                peer: Endpoint::Unknown,
                sent: 0,
                received: 0,
                tls_sent: 0,
                tls_received: 0,
            };
            if let Some(old) = self.live.remove(&key) {
                self.end(old, chunk.ts_ns, End::Replaced, None, sink, procs);
            }
            self.opens_lost += 1;
            self.make_room(chunk.ts_ns, sink, procs);
            let conn = self.create(&s, true);
            sink.opened(&conn, procs);
            self.live.insert(key, conn);
        }
        let Some(conn) = self.live.get_mut(&key) else {
            return;
        };
        let len = chunk.len;
        conn.last_ns = chunk.ts_ns;
        let d = chunk.dir.index();
        match chunk.tls {
            // The kernel knows the socket's TLS library: the wire bytes are only counted.
            Tls::Ciphertext => {
                conn.tls.get_or_insert_default().ciphertext[d] += len;
                return;
            }
            Tls::Plaintext => conn.tls.get_or_insert_default().read = true,
            Tls::No => {
                if conn.not_http.is_some() {
                    // Bytes the kernel sent before it was told to stop.
                    return;
                }
                // Before the kernel knew (the library was probed late) or without a library
                // it reads: TLS by its first bytes, counted, never parsed as HTTP.
                let first = conn.streams[d].is_untouched() && chunk.off == 0;
                if conn.tls.is_some() || (first && starts_tls_record(&chunk.data)) {
                    conn.tls.get_or_insert_default().ciphertext[d] += len;
                    return;
                }
                if first
                    && !chunk.data.is_empty()
                    && let Some(p) = not_http(conn, chunk.dir, &chunk.data)
                {
                    conn.not_http = Some(p);
                    *self.set_aside.entry(p).or_default() += 1;
                    tracing::info!(
                        "{} (pid {}) fd {} to {}: not HTTP ({p}), set aside",
                        procs.name(conn.tgid),
                        conn.tgid,
                        conn.fd,
                        conn.peer
                    );
                    for dir in [kernel_dir::RECV, kernel_dir::SEND] {
                        self.hints.push(CopyHint {
                            tgid: conn.tgid,
                            fd: conn.fd,
                            dir,
                            ctl: Some(CopyCtl {
                                sk: conn.sk,
                                credit_until: 0,
                                skip_from: u64::MAX,
                                skip_until: u64::MAX,
                                flags: copy_flags::IGNORE,
                                _pad: 0,
                            }),
                        });
                    }
                    return;
                }
            }
        }
        let mut out = std::mem::take(&mut self.scratch);
        conn.streams[chunk.dir.index()].push(chunk.off, len, chunk.data, chunk.ts_ns, &mut out);
        if !out.is_empty() {
            sink.pieces(conn, chunk.dir, &out, procs);
        }
        out.clear();
        self.scratch = out;
    }

    /// A process exited: its connections end at the offsets the kernel had for them.
    pub fn exit(
        &mut self,
        pid: u32,
        ts_ns: u64,
        finals: &[FinalOffsets],
        sink: &mut dyn ConnSink,
        procs: &ProcTable,
    ) {
        let keys: Vec<(u32, i32)> = self.live.keys().filter(|k| k.0 == pid).copied().collect();
        for key in keys {
            if let Some(c) = self.live.remove(&key) {
                let end = finals
                    .iter()
                    .find(|f| f.fd == c.fd && f.sk == c.sk)
                    .map(Ends::of_final);
                self.end(c, ts_ns, End::ProcessExit, end, sink, procs);
            }
        }
    }

    /// Gives up on stream holes older than `deadline_ns` (kernel clock).
    pub fn expire(&mut self, deadline_ns: u64, sink: &mut dyn ConnSink, procs: &ProcTable) {
        let mut out = std::mem::take(&mut self.scratch);
        for conn in self.live.values_mut() {
            for dir in [Dir::Recv, Dir::Send] {
                if conn.streams[dir.index()].has_hole() {
                    conn.streams[dir.index()].expire(deadline_ns, &mut out);
                    if !out.is_empty() {
                        sink.pieces(conn, dir, &out, procs);
                        out.clear();
                    }
                }
            }
        }
        self.scratch = out;
    }

    /// The sniffer stops: every connection still open ends now.
    pub fn finish(
        &mut self,
        ts_ns: u64,
        finals: &[FinalOffsets],
        sink: &mut dyn ConnSink,
        procs: &ProcTable,
    ) {
        let mut conns: Vec<Conn> = self.live.drain().map(|(_, c)| c).collect();
        conns.sort_by_key(|c| c.id);
        for c in conns {
            let end = finals
                .iter()
                .find(|f| f.tgid == c.tgid && f.fd == c.fd && f.sk == c.sk)
                .map(Ends::of_final);
            self.end(c, ts_ns, End::Shutdown, end, sink, procs);
        }
    }

    fn end(
        &mut self,
        mut conn: Conn,
        ts_ns: u64,
        why: End,
        final_offsets: Option<Ends>,
        sink: &mut dyn ConnSink,
        procs: &ProcTable,
    ) {
        match conn.tls {
            Some(t) if t.read => self.tls_read += 1,
            Some(_) => {
                self.tls_unread += 1;
                if self.tls_warned.insert(conn.tgid) {
                    let or_early = if self.tls_probes_per_process {
                        ", or it made TLS calls before its probes were placed (within a \
                         millisecond or so of its fork: --tls-probes all probes every process)"
                    } else {
                        ""
                    };
                    eprintln!(
                        "sniffer: {} (pid {}) speaks TLS with {} through no OpenSSL library \
                         sniffer could probe (OpenSSL linked statically, or Go crypto/tls, \
                         GnuTLS, NSS, rustls{or_early}): its TLS connections are counted, not \
                         read",
                        procs.name(conn.tgid),
                        conn.tgid,
                        conn.peer
                    );
                }
            }
            None => {}
        }
        if conn.not_http.is_some() {
            // Its streams stopped at its first bytes, on purpose: no gap to report.
            conn.total = final_offsets.map(|e| {
                let mut t = [0; 2];
                t[Dir::Send.index()] = e.sent;
                t[Dir::Recv.index()] = e.received;
                t
            });
            conn.end_known = final_offsets.is_some();
            conn.ended = Some((ts_ns, why));
            sink.ended(&conn, procs);
            return;
        }
        let mut out = std::mem::take(&mut self.scratch);
        // A TLS connection's streams are its plaintext: they end at the plaintext's offsets.
        let tls = conn.tls.is_some();
        for dir in [Dir::Recv, Dir::Send] {
            let end = final_offsets.map(|e| match (dir, tls) {
                (Dir::Send, false) => e.sent,
                (Dir::Recv, false) => e.received,
                (Dir::Send, true) => e.tls_sent,
                (Dir::Recv, true) => e.tls_received,
            });
            conn.streams[dir.index()].finish(end, ts_ns, &mut out);
            if !out.is_empty() {
                sink.pieces(&conn, dir, &out, procs);
                out.clear();
            }
        }
        self.scratch = out;
        conn.end_known = final_offsets.is_some();
        conn.ended = Some((ts_ns, why));
        sink.ended(&conn, procs);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use sniffer_common::Syscall;

    use super::*;

    #[derive(Default)]
    struct Record {
        log: Vec<String>,
    }

    impl ConnSink for Record {
        fn opened(&mut self, c: &Conn, _: &ProcTable) {
            self.log
                .push(format!("open #{} {} -> {}", c.id, c.local, c.peer));
        }
        fn pieces(&mut self, c: &Conn, dir: Dir, pieces: &[Piece], _: &ProcTable) {
            for p in pieces {
                match p {
                    Piece::Data { off, bytes, .. } => self.log.push(format!(
                        "#{} {} @{off} {:?}",
                        c.id,
                        dir.name(),
                        String::from_utf8_lossy(bytes)
                    )),
                    Piece::Gap { off, len, kind, .. } => self.log.push(format!(
                        "#{} {} @{off} gap {len} {kind:?}",
                        c.id,
                        dir.name()
                    )),
                }
            }
        }
        fn ended(&mut self, c: &Conn, _: &ProcTable) {
            self.log
                .push(format!("end #{} {:?}", c.id, c.ended.map(|e| e.1)));
        }
    }

    fn sock(fd: i32, sk: u64, sent: u64, received: u64) -> SockInfo {
        SockInfo {
            ts_ns: 1,
            tgid: 7,
            tid: 7,
            fd,
            sk,
            peer_sk: 0,
            peer_tgid: 0,
            netns: 0,
            role: Role::Client,
            transport: Transport::Tcp,
            local: Endpoint::Inet("127.0.0.1:40000".parse::<SocketAddr>().unwrap()),
            peer: Endpoint::Inet("127.0.0.1:8000".parse::<SocketAddr>().unwrap()),
            sent,
            received,
            tls_sent: 0,
            tls_received: 0,
        }
    }

    fn chunk(fd: i32, sk: u64, dir: Dir, off: u64, data: &[u8]) -> Chunk {
        Chunk {
            ts_ns: 2,
            tgid: 7,
            tid: 7,
            fd,
            sk,
            dir,
            syscall: Syscall::Write,
            off,
            len: data.len() as u64,
            syscall_len: data.len() as u64,
            data: data.to_vec(),
            tls: Tls::No,
        }
    }

    #[test]
    fn open_data_close_with_lost_tail() {
        let mut t = ConnTable::new();
        let mut r = Record::default();
        t.open(&sock(3, 0xa, 0, 0), &mut r, &ProcTable::new());
        t.data(
            chunk(3, 0xa, Dir::Send, 0, b"GET / HTTP/1.1\r\n\r\n"),
            &mut r,
            &ProcTable::new(),
        );
        t.data(
            chunk(3, 0xa, Dir::Recv, 0, b"HTTP/1.1 200 OK\r\n"),
            &mut r,
            &ProcTable::new(),
        );
        // The kernel says 20 bytes were received in all: 3 were lost at the end.
        t.close(&sock(3, 0xa, 18, 20), &mut r, &ProcTable::new());
        assert_eq!(
            r.log,
            vec![
                "open #1 127.0.0.1:40000 -> 127.0.0.1:8000",
                "#1 send @0 \"GET / HTTP/1.1\\r\\n\\r\\n\"",
                "#1 recv @0 \"HTTP/1.1 200 OK\\r\\n\"",
                "#1 recv @17 gap 3 Lost",
                "end #1 Some(Closed)",
            ]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn fd_reused_for_another_socket_starts_a_new_connection() {
        let mut t = ConnTable::new();
        let mut r = Record::default();
        t.open(&sock(3, 0xa, 0, 0), &mut r, &ProcTable::new());
        t.data(chunk(3, 0xa, Dir::Send, 0, b"a"), &mut r, &ProcTable::new());
        t.open(&sock(3, 0xb, 0, 0), &mut r, &ProcTable::new());
        t.data(chunk(3, 0xb, Dir::Send, 0, b"b"), &mut r, &ProcTable::new());
        assert_eq!(
            r.log,
            vec![
                "open #1 127.0.0.1:40000 -> 127.0.0.1:8000",
                "#1 send @0 \"a\"",
                "end #1 Some(Replaced)",
                "open #2 127.0.0.1:40000 -> 127.0.0.1:8000",
                "#2 send @0 \"b\"",
            ]
        );
    }

    #[test]
    fn data_without_open_keeps_bytes_and_counts_the_lost_open() {
        let mut t = ConnTable::new();
        let mut r = Record::default();
        t.data(chunk(4, 0xc, Dir::Recv, 0, b"x"), &mut r, &ProcTable::new());
        assert_eq!(r.log, vec!["open #1 ? -> ?", "#1 recv @0 \"x\""]);
        assert_eq!(t.opens_lost, 1);
        assert!(t.get(7, 4).unwrap().open_lost);
    }

    #[test]
    fn past_the_cap_the_idlest_connection_is_let_go() {
        let mut t = ConnTable::new().with_max_conns(2);
        let mut r = Record::default();
        let p = ProcTable::new();
        t.open(&sock(3, 0xa, 0, 0), &mut r, &p);
        t.open(&sock(4, 0xb, 0, 0), &mut r, &p);
        t.data(chunk(3, 0xa, Dir::Send, 0, b"busy"), &mut r, &p);
        t.open(&sock(5, 0xc, 0, 0), &mut r, &p);
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted, 1);
        assert!(t.get(7, 4).is_none(), "fd 4 was the idlest");
        assert!(
            r.log.contains(&"end #2 Some(Evicted)".to_owned()),
            "{:?}",
            r.log
        );
    }

    #[test]
    fn exit_ends_connections_at_kernel_offsets() {
        let mut t = ConnTable::new();
        let mut r = Record::default();
        t.open(&sock(3, 0xa, 0, 0), &mut r, &ProcTable::new());
        t.data(
            chunk(3, 0xa, Dir::Send, 0, b"abc"),
            &mut r,
            &ProcTable::new(),
        );
        let finals = [FinalOffsets {
            tgid: 7,
            fd: 3,
            sk: 0xa,
            sent: 5,
            received: 0,
            tls_sent: 0,
            tls_received: 0,
        }];
        t.exit(7, 9, &finals, &mut r, &ProcTable::new());
        assert_eq!(r.log[2], "#1 send @3 gap 2 Lost");
        assert_eq!(r.log[3], "end #1 Some(ProcessExit)");
    }

    fn tls_chunk(dir: Dir, off: u64, data: &[u8], tls: Tls) -> Chunk {
        Chunk {
            tls,
            ..chunk(3, 0xa, dir, off, data)
        }
    }

    #[test]
    fn tls_ciphertext_is_counted_and_the_plaintext_is_the_stream() {
        let mut t = ConnTable::new();
        let mut r = Record::default();
        let p = ProcTable::new();
        t.open(&sock(3, 0xa, 0, 0), &mut r, &p);
        // The handshake on the wire, flagged by the kernel: counted only.
        t.data(
            tls_chunk(Dir::Send, 0, &[22, 3, 1, 0, 5], Tls::Ciphertext),
            &mut r,
            &p,
        );
        t.data(
            tls_chunk(Dir::Recv, 0, &[0; 100], Tls::Ciphertext),
            &mut r,
            &p,
        );
        // The plaintext from the library, at its own offsets.
        t.data(
            tls_chunk(Dir::Send, 0, b"GET / ", Tls::Plaintext),
            &mut r,
            &p,
        );
        t.data(
            tls_chunk(Dir::Send, 6, b"HTTP/1.1", Tls::Plaintext),
            &mut r,
            &p,
        );
        let c = t.get(7, 3).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.ciphertext, [100, 5]);
        assert!(tls.read);
        assert_eq!(c.streams[Dir::Send.index()].stats.bytes, 14);
        assert_eq!(
            r.log,
            [
                "open #1 127.0.0.1:40000 -> 127.0.0.1:8000",
                "#1 send @0 \"GET / \"",
                "#1 send @6 \"HTTP/1.1\""
            ]
        );
        // The close carries both kinds of offsets: the streams end at the plaintext's.
        let mut s = sock(3, 0xa, 105, 100);
        s.tls_sent = 14;
        t.close(&s, &mut r, &p);
        assert_eq!(r.log.last().unwrap(), "end #1 Some(Closed)");
        assert_eq!(
            r.log.len(),
            4,
            "no gap up to the ciphertext's length: {:?}",
            r.log
        );
    }

    #[test]
    fn tls_on_the_wire_without_the_library_is_recognised_and_counted() {
        let mut t = ConnTable::new();
        let mut r = Record::default();
        let p = ProcTable::new();
        t.open(&sock(3, 0xa, 0, 0), &mut r, &p);
        // A ClientHello the kernel did not flag (no library probed): never parsed as HTTP.
        t.data(
            tls_chunk(Dir::Send, 0, &[22, 3, 1, 2, 0, 1], Tls::No),
            &mut r,
            &p,
        );
        t.data(
            tls_chunk(Dir::Recv, 0, &[22, 3, 3, 0, 7], Tls::No),
            &mut r,
            &p,
        );
        t.data(
            tls_chunk(Dir::Send, 6, b"GET / HTTP/1.1", Tls::No),
            &mut r,
            &p,
        );
        let c = t.get(7, 3).unwrap();
        assert_eq!(c.tls.unwrap().ciphertext, [5, 20]);
        assert!(!c.tls.unwrap().read);
        assert_eq!(r.log, ["open #1 127.0.0.1:40000 -> 127.0.0.1:8000"]);
    }

    #[test]
    fn a_connection_that_is_not_http_is_set_aside_and_the_kernel_told() {
        let mut t = ConnTable::new();
        let mut r = Record::default();
        let p = ProcTable::new();
        t.open(&sock(3, 0xa, 0, 0), &mut r, &p);
        t.data(
            chunk(3, 0xa, Dir::Send, 0, b"*3\r\n$3\r\nSET\r\n"),
            &mut r,
            &p,
        );
        t.data(chunk(3, 0xa, Dir::Recv, 0, b"+OK\r\n"), &mut r, &p);
        let c = t.get(7, 3).unwrap();
        assert_eq!(c.not_http, Some(Protocol::Redis));
        assert_eq!(
            r.log,
            ["open #1 127.0.0.1:40000 -> 127.0.0.1:8000"],
            "nothing delivered"
        );
        assert_eq!(t.set_aside.get(&Protocol::Redis), Some(&1));
        let dirs: Vec<u32> = t.hints.iter().map(|h| h.dir).collect();
        assert_eq!(dirs, [kernel_dir::RECV, kernel_dir::SEND]);
        for h in &t.hints {
            let ctl = h.ctl.unwrap();
            assert_eq!((h.tgid, h.fd, ctl.sk), (7, 3, 0xa));
            assert_eq!(ctl.flags, copy_flags::IGNORE);
        }
        // Its close: no gap reported, the totals kept.
        t.close(&sock(3, 0xa, 14, 5), &mut r, &p);
        assert_eq!(r.log.last().unwrap(), "end #1 Some(Closed)");
        assert_eq!(r.log.len(), 2);
    }

    #[test]
    fn an_older_connection_is_set_aside_only_on_sure_grounds() {
        let mut t = ConnTable::new();
        let mut r = Record::default();
        let p = ProcTable::new();
        let mut s = sock(3, 0xa, 0, 0);
        s.role = Role::Unknown;
        t.open(&s, &mut r, &p);
        // The middle of some binary body: could be anything, HTTP included. Read on.
        t.data(
            chunk(3, 0xa, Dir::Recv, 0, &[0x89, b'P', b'N', b'G']),
            &mut r,
            &p,
        );
        assert_eq!(t.get(7, 3).unwrap().not_http, None);
        assert!(t.hints.is_empty());
    }

    #[test]
    fn plain_http_is_not_taken_for_tls() {
        assert!(!starts_tls_record(b"GET / HTTP/1.1"));
        assert!(!starts_tls_record(b"HTTP/1.1 200 OK"));
        assert!(!starts_tls_record(&[22, 2, 0]));
        assert!(!starts_tls_record(&[24, 3, 1]));
        assert!(starts_tls_record(&[23, 3, 3, 0, 40]));
        assert!(!starts_tls_record(&[22]));
    }
}
