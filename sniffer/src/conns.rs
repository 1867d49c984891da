//! Connections: (process, fd, kernel socket) -> addresses, role and the two byte streams.
//!
//! A connection is born from the kernel's socket-open event (connect, accept, or first use of a
//! socket that existed before tracing) and ends at close(2), at the owner's exit, or when the
//! sniffer stops; its streams are then finished up to the kernel's final offsets.
use std::collections::HashMap;

use crate::{
    events::{Chunk, Dir, Endpoint, FinalOffsets, Role, SockInfo, Transport},
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
            self.end(
                c,
                s.ts_ns,
                End::Closed,
                Some((s.sent, s.received)),
                sink,
                procs,
            );
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
        let mut out = std::mem::take(&mut self.scratch);
        let len = chunk.len;
        conn.last_ns = chunk.ts_ns;
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
                    .map(|f| (f.sent, f.received));
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
                .map(|f| (f.sent, f.received));
            self.end(c, ts_ns, End::Shutdown, end, sink, procs);
        }
    }

    fn end(
        &mut self,
        mut conn: Conn,
        ts_ns: u64,
        why: End,
        final_offsets: Option<(u64, u64)>,
        sink: &mut dyn ConnSink,
        procs: &ProcTable,
    ) {
        let mut out = std::mem::take(&mut self.scratch);
        for dir in [Dir::Recv, Dir::Send] {
            let end = final_offsets.map(|(sent, received)| match dir {
                Dir::Send => sent,
                Dir::Recv => received,
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
        }];
        t.exit(7, 9, &finals, &mut r, &ProcTable::new());
        assert_eq!(r.log[2], "#1 send @3 gap 2 Lost");
        assert_eq!(r.log[3], "end #1 Some(ProcessExit)");
    }
}
