//! Ring buffer reader: kernel records in, typed events out. No parsing of payloads here.
//!
//! Records are decoded with length checks (never transmuted). When a process exits, its
//! sockets vanish without close(2) calls we could see, so the reader reads their final stream
//! offsets from the kernel's sockets map and hands them on with the exit: a stream whose last
//! events were lost still ends at the right byte.
use std::{
    collections::HashSet,
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use aya::maps::{HashMap, MapData, RingBuf};
use sniffer_common::{
    CHUNK_SIZE, DataHeader, ProcEvent, SockAddr, SockEvent, SockKey, SockState, Syscall,
    data_flags, dir, family, kind, role,
};
use tokio::io::unix::AsyncFd;

/// Direction of bytes, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    Recv,
    Send,
}

impl Dir {
    pub const fn index(self) -> usize {
        match self {
            Self::Recv => 0,
            Self::Send => 1,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Recv => "recv",
            Self::Send => "send",
        }
    }
}

/// What a chunk's bytes are, for TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tls {
    /// Bytes on the wire, nothing known about TLS.
    #[default]
    No,
    /// Bytes on the wire of a socket whose TLS library is read: ciphertext, counted only.
    Ciphertext,
    /// Plaintext from the TLS library (SSL_read/SSL_write): `off` counts the plaintext stream.
    Plaintext,
}

/// A piece of one socket's byte stream: `len` bytes at `off`, of which `data` holds the first
/// `data.len()` (the rest were not copied by the kernel). `data` lies in the ring buffer's
/// record, read where it lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub sk: u64,
    pub dir: Dir,
    pub syscall: Syscall,
    pub off: u64,
    pub len: u64,
    pub syscall_len: u64,
    pub data: &'a [u8],
    pub tls: Tls,
}

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Inet(SocketAddr),
    /// A unix socket path; abstract names start with `@`.
    Unix(String),
    /// Not known (unbound unix socket, or the kernel could not read it).
    Unknown,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inet(SocketAddr::V4(a)) => {
                // What std writes, without its detour through a second formatter (~1,600
                // instructions a call: a peer with no name is formatted for each exchange).
                let mut buf = [0u8; 21];
                let mut n = 0;
                let mut put = |piece: &[u8]| {
                    buf[n..n + piece.len()].copy_from_slice(piece);
                    n += piece.len();
                };
                let mut digits = itoa::Buffer::new();
                let [o0, o1, o2, o3] = a.ip().octets();
                for (octet, after) in [(o0, b"."), (o1, b"."), (o2, b"."), (o3, b":")] {
                    put(digits.format(octet).as_bytes());
                    put(after);
                }
                put(digits.format(a.port()).as_bytes());
                // Digits and punctuation only: ASCII.
                f.pad(std::str::from_utf8(&buf[..n]).unwrap_or("?"))
            }
            Self::Inet(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{p}"),
            Self::Unknown => f.write_str("?"),
        }
    }
}

/// How the kernel side learnt about a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Seen first at a read or write.
    Unknown,
    /// connect(2)ed by the process.
    Client,
    /// accept(2)ed by the process.
    Server,
}

impl Role {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// Transport of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tcp6,
    Unix,
    Other(u16),
}

impl Transport {
    pub fn name(self) -> String {
        match self {
            Self::Tcp => "tcp".into(),
            Self::Tcp6 => "tcp6".into(),
            Self::Unix => "unix".into(),
            Self::Other(f) => format!("family-{f}"),
        }
    }
}

/// A socket the kernel started or stopped tracking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockInfo {
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub sk: u64,
    pub peer_sk: u64,
    /// A unix peer's process (SO_PEERCRED; 0 when unknown).
    pub peer_tgid: u32,
    /// The socket's network namespace (its inode number; 0 when unknown).
    pub netns: u32,
    pub role: Role,
    pub transport: Transport,
    pub local: Endpoint,
    pub peer: Endpoint,
    /// Bytes sent and received on it so far (its stream offsets).
    pub sent: u64,
    pub received: u64,
    /// TLS plaintext sent and received so far (0 without TLS library calls).
    pub tls_sent: u64,
    pub tls_received: u64,
}

/// Where a socket's two streams ended, for sockets that ended without a close(2) we saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalOffsets {
    pub tgid: u32,
    pub fd: i32,
    pub sk: u64,
    pub sent: u64,
    pub received: u64,
    pub tls_sent: u64,
    pub tls_received: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Data(Chunk<'a>),
    SockOpen(SockInfo),
    SockClose(SockInfo),
    Fork {
        ts_ns: u64,
        pid: u32,
        ppid: u32,
        comm: String,
    },
    Exec {
        ts_ns: u64,
        pid: u32,
        old_tid: u32,
        comm: String,
    },
    Exit {
        ts_ns: u64,
        pid: u32,
        code: i32,
        sockets: Vec<FinalOffsets>,
    },
    /// The process mapped executable code from a file (a library): look for a TLS library.
    MapExec {
        ts_ns: u64,
        pid: u32,
    },
}

impl Event<'_> {
    pub const fn ts_ns(&self) -> u64 {
        match self {
            Self::Data(c) => c.ts_ns,
            Self::SockOpen(s) | Self::SockClose(s) => s.ts_ns,
            Self::Fork { ts_ns, .. }
            | Self::Exec { ts_ns, .. }
            | Self::Exit { ts_ns, .. }
            | Self::MapExec { ts_ns, .. } => *ts_ns,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("record kind {0} is unknown")]
    Kind(u32),
    #[error("data record: {0}")]
    Data(&'static str),
}

/// Reads a `T` from the front of `bytes` after checking the length.
fn read<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: T is Pod (any bit pattern is valid) and the length was checked; read_unaligned
    // needs no alignment.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// A NUL-padded C string as text.
fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn endpoint(fam: u16, a: &SockAddr) -> Endpoint {
    match fam {
        family::INET => {
            let ip = Ipv4Addr::new(a.addr[0], a.addr[1], a.addr[2], a.addr[3]);
            Endpoint::Inet(SocketAddr::new(IpAddr::V4(ip), a.port))
        }
        family::INET6 => {
            // An IPv6 socket talking IPv4 shows ::ffff:a.b.c.d; name it as the IPv4 it is.
            let ip = IpAddr::V6(Ipv6Addr::from(a.addr)).to_canonical();
            Endpoint::Inet(SocketAddr::new(ip, a.port))
        }
        family::UNIX => {
            let n = usize::from(a.path_len).min(a.path.len());
            match &a.path[..n] {
                [] => Endpoint::Unknown,
                [0, rest @ ..] => Endpoint::Unix(format!("@{}", c_str(rest))),
                p => Endpoint::Unix(c_str(p)),
            }
        }
        _ => Endpoint::Unknown,
    }
}

fn sock_info(ev: &SockEvent) -> SockInfo {
    SockInfo {
        ts_ns: ev.ts_ns,
        tgid: ev.tgid,
        tid: ev.tid,
        fd: ev.fd,
        sk: ev.sk,
        peer_sk: ev.peer_sk,
        peer_tgid: ev.peer_tgid,
        netns: ev.netns,
        role: match ev.role {
            role::CLIENT => Role::Client,
            role::SERVER => Role::Server,
            _ => Role::Unknown,
        },
        transport: match ev.family {
            family::INET => Transport::Tcp,
            family::INET6 => Transport::Tcp6,
            family::UNIX => Transport::Unix,
            f => Transport::Other(f),
        },
        local: endpoint(ev.family, &ev.local),
        peer: endpoint(ev.family, &ev.peer),
        sent: ev.send_off,
        received: ev.recv_off,
        tls_sent: ev.tls_send_off,
        tls_received: ev.tls_recv_off,
    }
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let k: u32 = read(bytes)?;
    match k {
        kind::DATA | kind::TLS_DATA => {
            let h: DataHeader = read(bytes)?;
            let cap = h.cap as usize;
            if cap > CHUNK_SIZE || u64::from(h.cap) > h.len {
                return Err(DecodeError::Data(
                    "captured length exceeds the covered length",
                ));
            }
            let payload = &bytes[size_of::<DataHeader>()..];
            if payload.len() < cap {
                return Err(DecodeError::Data("record shorter than its captured length"));
            }
            let syscall =
                Syscall::from_u32(h.syscall).ok_or(DecodeError::Data("unknown syscall"))?;
            let dir = match h.dir {
                dir::RECV => Dir::Recv,
                dir::SEND => Dir::Send,
                _ => return Err(DecodeError::Data("unknown direction")),
            };
            Ok(Event::Data(Chunk {
                ts_ns: h.ts_ns,
                tgid: h.tgid,
                tid: h.tid,
                fd: h.fd,
                sk: h.sk,
                dir,
                syscall,
                off: h.off,
                len: h.len,
                syscall_len: h.syscall_len,
                data: &payload[..cap],
                tls: if k == kind::TLS_DATA {
                    Tls::Plaintext
                } else if h.flags & data_flags::CIPHERTEXT != 0 {
                    Tls::Ciphertext
                } else {
                    Tls::No
                },
            }))
        }
        kind::SOCK_OPEN | kind::SOCK_CLOSE => {
            let ev: SockEvent = read(bytes)?;
            let info = sock_info(&ev);
            Ok(if k == kind::SOCK_OPEN {
                Event::SockOpen(info)
            } else {
                Event::SockClose(info)
            })
        }
        kind::PROC_MAP_EXEC => {
            let ev: ProcEvent = read(bytes)?;
            Ok(Event::MapExec {
                ts_ns: ev.ts_ns,
                pid: ev.pid,
            })
        }
        kind::PROC_FORK | kind::PROC_EXEC | kind::PROC_EXIT => {
            let ev: ProcEvent = read(bytes)?;
            let comm = c_str(&ev.comm);
            Ok(match k {
                kind::PROC_FORK => Event::Fork {
                    ts_ns: ev.ts_ns,
                    pid: ev.pid,
                    ppid: ev.ppid,
                    comm,
                },
                kind::PROC_EXEC => Event::Exec {
                    ts_ns: ev.ts_ns,
                    pid: ev.pid,
                    old_tid: ev.ppid,
                    comm,
                },
                _ => Event::Exit {
                    ts_ns: ev.ts_ns,
                    pid: ev.pid,
                    code: ev.exit_code,
                    sockets: Vec::new(),
                },
            })
        }
        other => Err(DecodeError::Kind(other)),
    }
}

/// What one [`Reader::drain`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    pub records: usize,
    /// It stopped at its bound: records may still wait.
    pub more: bool,
}

/// The kernel's header before each ring buffer record (its length and flags, 8 bytes).
const RECORD_HEADER: usize = 8;

/// Reads the ring buffer and keeps the kernel's sockets map tidy.
pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    books: Books,
    /// Records that did not decode (a bug on one side of the contract if ever non-zero).
    pub malformed: u64,
    /// Records read.
    pub records: u64,
}

/// Which kernel socket entries are live, kept beside the ring (a field apart from it, so that
/// an event is handled while its record is still borrowed).
struct Books {
    sockets: HashMap<MapData, SockKey, SockState>,
    /// fds with a live kernel socket entry, per process.
    live: foldhash::HashMap<u32, HashSet<i32>>,
    /// The last data event's (tgid, fd): runs of chunks skip the set insert.
    last_data: Option<(u32, i32)>,
}

impl Reader {
    pub fn new(
        ring: RingBuf<MapData>,
        sockets: HashMap<MapData, SockKey, SockState>,
    ) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for its whole life, and the AsyncFd owns the
        // RingBuf, so the fd stays open and the same until the AsyncFd is dropped.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        Ok(Self {
            ring,
            books: Books {
                sockets,
                live: foldhash::HashMap::default(),
                last_data: None,
            },
            malformed: 0,
            records: 0,
        })
    }

    /// Waits until the ring buffer has records.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.ring.readable().await?;
        // The drain that follows reads everything; a record that lands after it wakes us again
        // because the kernel notifies when the consumer has caught up.
        guard.clear_ready();
        Ok(())
    }

    /// Reads the records available now, in ring order, into `out`, until the ring is empty or
    /// `max_bytes` of records were read (under a load the reader barely outpaces the ring does
    /// not empty for seconds: the caller's other work, releasing what waits and answering
    /// signals, has to come between). Each event is handled while its record is held: a
    /// chunk's bytes are read where they lie, and the record's room goes back to the kernel
    /// when `out` returns.
    pub fn drain(&mut self, max_bytes: usize, out: &mut impl FnMut(Event<'_>)) -> Drained {
        let mut records = 0;
        let mut bytes = 0;
        let ring = self.ring.get_mut();
        while bytes < max_bytes
            && let Some(item) = ring.next()
        {
            records += 1;
            bytes += item.len() + RECORD_HEADER;
            match decode(&item) {
                Ok(ev) => out(self.books.bookkeep(ev)),
                Err(e) => {
                    self.malformed += 1;
                    tracing::warn!("skipping a malformed kernel record: {e}");
                }
            }
        }
        self.records += records as u64;
        Drained {
            records,
            more: bytes >= max_bytes,
        }
    }

    /// Final offsets of every socket still open, at shutdown.
    pub fn live_offsets(&self) -> Vec<FinalOffsets> {
        let b = &self.books;
        b.live
            .iter()
            .flat_map(|(&tgid, fds)| fds.iter().filter_map(move |&fd| b.offsets(tgid, fd)))
            .collect()
    }
}

impl Books {
    fn bookkeep<'a>(&mut self, ev: Event<'a>) -> Event<'a> {
        match ev {
            // A socket whose open event was lost is known from its data.
            Event::Data(ref c) if self.last_data != Some((c.tgid, c.fd)) => {
                self.live.entry(c.tgid).or_default().insert(c.fd);
                self.last_data = Some((c.tgid, c.fd));
                ev
            }
            Event::SockOpen(ref s) => {
                self.last_data = None;
                self.live.entry(s.tgid).or_default().insert(s.fd);
                ev
            }
            Event::SockClose(ref s) => {
                self.last_data = None;
                if let Some(fds) = self.live.get_mut(&s.tgid) {
                    fds.remove(&s.fd);
                }
                ev
            }
            Event::Exit {
                ts_ns, pid, code, ..
            } => {
                self.last_data = None;
                let fds = self.live.remove(&pid).unwrap_or_default();
                let sockets = fds
                    .into_iter()
                    .filter_map(|fd| self.take_socket(pid, fd))
                    .collect();
                Event::Exit {
                    ts_ns,
                    pid,
                    code,
                    sockets,
                }
            }
            ev => ev,
        }
    }

    /// The kernel's current offsets of a socket.
    fn offsets(&self, tgid: u32, fd: i32) -> Option<FinalOffsets> {
        let st = self.sockets.get(&SockKey { tgid, fd }, 0).ok()?;
        Some(FinalOffsets {
            tgid,
            fd,
            sk: st.sk,
            sent: st.send_off,
            received: st.recv_off,
            tls_sent: st.tls_send_off,
            tls_received: st.tls_recv_off,
        })
    }

    /// The final offsets of a socket of an exited process; its kernel entry goes.
    fn take_socket(&mut self, tgid: u32, fd: i32) -> Option<FinalOffsets> {
        let f = self.offsets(tgid, fd)?;
        let _ = self.sockets.remove(&SockKey { tgid, fd });
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_reads_as_std_writes_its_address() {
        for (ip, port) in [
            ([0, 0, 0, 0], 0),
            ([127, 0, 0, 1], 8080),
            ([198, 18, 0, 10], 65535),
            ([255, 255, 255, 255], 1),
            ([10, 200, 3, 99], 443),
        ] {
            let a = SocketAddr::from((Ipv4Addr::from(ip), port));
            assert_eq!(Endpoint::Inet(a).to_string(), a.to_string());
            assert_eq!(format!("{:>24}", Endpoint::Inet(a)), format!("{a:>24}"));
        }
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 5000));
        assert_eq!(Endpoint::Inet(v6).to_string(), "[::1]:5000");
        assert_eq!(
            Endpoint::Unix("/run/x.sock".into()).to_string(),
            "unix:/run/x.sock"
        );
    }

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) value as bytes.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(cap: u32, len: u64) -> DataHeader {
        DataHeader {
            kind: kind::DATA,
            dir: dir::SEND,
            ts_ns: 7,
            tgid: 100,
            tid: 101,
            fd: 5,
            syscall: Syscall::Sendto as u32,
            sk: 0xffff_8880_0000_1000,
            off: 40,
            len,
            syscall_len: len,
            cap,
            flags: 0,
        }
    }

    #[test]
    fn data_record_decodes_with_payload() {
        let mut bytes = as_bytes(&header(4, 10));
        bytes.extend_from_slice(b"GET ");
        let Event::Data(c) = decode(&bytes).unwrap() else {
            panic!("not data")
        };
        assert_eq!(c.data, b"GET ");
        assert_eq!(
            (c.off, c.len, c.dir, c.syscall),
            (40, 10, Dir::Send, Syscall::Sendto)
        );
        assert_eq!((c.tgid, c.tid, c.fd), (100, 101, 5));
    }

    #[test]
    fn data_record_shorter_than_cap_is_rejected() {
        let mut bytes = as_bytes(&header(8, 8));
        bytes.extend_from_slice(b"GET");
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::Data("record shorter than its captured length"))
        );
    }

    #[test]
    fn data_record_cap_over_len_is_rejected() {
        let mut bytes = as_bytes(&header(4, 2));
        bytes.extend_from_slice(b"GET ");
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn short_and_unknown_records_are_rejected() {
        assert_eq!(decode(&[1, 0]), Err(DecodeError::Short(2)));
        assert_eq!(
            decode(&[99, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Kind(99))
        );
        assert_eq!(
            decode(&as_bytes(&header(0, 1))[..20]),
            Err(DecodeError::Short(20))
        );
    }

    fn sock_addr(addr: [u8; 16], port: u16, path: &[u8]) -> SockAddr {
        let mut p = [0u8; 108];
        p[..path.len()].copy_from_slice(path);
        SockAddr {
            addr,
            port,
            path_len: path.len() as u16,
            _pad: 0,
            path: p,
            _pad2: 0,
        }
    }

    #[test]
    fn endpoints_of_each_family() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            endpoint(family::INET, &sock_addr(v4, 8080, b"")).to_string(),
            "127.0.0.1:8080"
        );
        let mapped = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 2).octets();
        assert_eq!(
            endpoint(family::INET6, &sock_addr(mapped, 5000, b"")).to_string(),
            "127.0.0.2:5000"
        );
        let lo6 = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(
            endpoint(family::INET6, &sock_addr(lo6, 80, b"")).to_string(),
            "[::1]:80"
        );
        assert_eq!(
            endpoint(family::UNIX, &sock_addr([0; 16], 0, b"/run/k.sock\0")).to_string(),
            "unix:/run/k.sock"
        );
        assert_eq!(
            endpoint(family::UNIX, &sock_addr([0; 16], 0, b"\0abstract")).to_string(),
            "unix:@abstract"
        );
        assert_eq!(
            endpoint(family::UNIX, &sock_addr([0; 16], 0, b"")),
            Endpoint::Unknown
        );
    }

    #[test]
    fn proc_records_decode() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let ev = ProcEvent {
            kind: kind::PROC_EXEC,
            pid: 42,
            ts_ns: 9,
            ppid: 43,
            exit_code: 0,
            comm,
        };
        assert_eq!(
            decode(&as_bytes(&ev)).unwrap(),
            Event::Exec {
                ts_ns: 9,
                pid: 42,
                old_tid: 43,
                comm: "curl".into()
            }
        );
    }
}
