//! Connections: (process, fd, kernel socket) -> addresses, role and the two byte streams.
//!
//! A connection is born from the kernel's socket-open event (connect, accept, or first use of a
//! socket that existed before tracing) and ends at close(2), at the owner's exit, or when the
//! sniffer stops; its streams are then finished up to the kernel's final offsets.
use foldhash::HashMap;
use sniffer_common::{CopyCtl, Syscall, copy_flags, dir as kernel_dir};

use crate::{
    classify::{self, Protocol, Side, Verdict},
    events::{Chunk, Dir, Endpoint, FinalOffsets, Role, SockInfo, Tls, Transport},
    probe::CopyHint,
    procs::ProcTable,
    stream::{GapKind, Piece, Stream, recycle},
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
    scratch: Vec<Piece<'static>>,
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
    pub fn data(&mut self, chunk: Chunk<'_>, sink: &mut dyn ConnSink, procs: &ProcTable) {
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
                if conn.tls.is_some() || (first && starts_tls_record(chunk.data)) {
                    conn.tls.get_or_insert_default().ciphertext[d] += len;
                    return;
                }
                if first
                    && !chunk.data.is_empty()
                    && let Some(p) = not_http(conn, chunk.dir, chunk.data)
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
        let mut out = recycle(std::mem::take(&mut self.scratch));
        // sendfile's bytes never pass through user memory: no window would bring them.
        let uncopied = if chunk.syscall == Syscall::Sendfile {
            GapKind::Uncopyable
        } else {
            GapKind::Uncaptured
        };
        conn.streams[chunk.dir.index()].push_kind(
            chunk.off,
            len,
            chunk.data,
            chunk.ts_ns,
            uncopied,
            &mut out,
        );
        if !out.is_empty() {
            sink.pieces(conn, chunk.dir, &out, procs);
        }
        self.scratch = recycle(out);
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
pub(crate) mod tests;
