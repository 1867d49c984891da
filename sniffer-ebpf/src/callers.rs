//! Who connected: the process behind the client end of a TCP connection a traced server
//! accepts, when that client is not traced.
//!
//! Userspace could only find it by asking the socket tables and reading every process's fds,
//! which under connection churn cost most of its time and still missed most connections (a new
//! socket is in no snapshot yet). The kernel knows it: at the exit of a `connect` the socket
//! has both addresses, in the connecting process. The syscall exit program, which every
//! process's syscalls pass anyway, remembers the process by the connection's addresses, and
//! the accept of a traced server reads it (`SockEvent::peer_tgid`).
//!
//! Every process pays this, traced or not, but per `connect` (an fd walk and a few stores),
//! never per read or write. (A program on the `inet_sock_set_state` tracepoint did it first:
//! ten runs a connection and LRU maps cost 1.7 µs of BPF time per connection; the exit with an
//! LRU map 1.2 µs.)
//!
//! A server can accept before its client's `connect` returns (loopback completes the
//! handshake inside it): that connection is not found here, and userspace looks it up in /proc.

use core::mem::size_of;

use sniffer_common::{Config, KernelOffsets, SockAddr, family, maps};

use crate::{
    maps::CONNECTORS,
    mem,
    sockets::{inet_stream_sk, kread},
};

const EINPROGRESS: i64 = 115;

/// A TCP connection as its client sees it, in its network namespace. Addresses in
/// `SockAddr`'s layout: IPv4 (or IPv4-mapped IPv6) in the first 4 bytes, the rest 0.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct TcpKey {
    pub netns: u32,
    /// The client's port, then the server's (host order).
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

const KEY_WORDS: usize = size_of::<TcpKey>() / 8;

/// One slot of [`CONNECTORS`]: who connected, the connection, and a check over both.
///
/// The table is direct-mapped (the slot is a hash of the connection): a write is a few stores,
/// where an LRU hash took a node, evicted others under churn and cost about 1 µs a connect.
/// A connect whose slot another one took before the accept read it is not found (the name is
/// then looked up in /proc). A slot read while another CPU writes it may mix two entries:
/// `check` then does not match and the slot counts as empty, never as a wrong process.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Connector {
    key: TcpKey,
    tgid: u32,
    check: u32,
}

/// Word `i` (< KEY_WORDS) of the key, for hashing and comparing (a derived comparison or an
/// array copy would be a byte loop).
#[inline(always)]
fn word(key: &TcpKey, i: usize) -> u64 {
    // SAFETY: TcpKey is plain data of KEY_WORDS 8-byte words, 8-byte aligned; i < KEY_WORDS.
    unsafe { (key as *const TcpKey).cast::<u64>().add(i).read() }
}

/// Whether two keys are the same connection.
#[inline(always)]
fn same(a: &TcpKey, b: &TcpKey) -> bool {
    let mut diff = 0;
    for i in 0..KEY_WORDS {
        diff |= word(a, i) ^ word(b, i);
    }
    diff == 0
}

/// (slot, check base) of a connection.
#[inline(always)]
fn slot_of(key: &TcpKey) -> (u32, u32) {
    let mut h: u64 = 0;
    for i in 0..KEY_WORDS {
        h = (h ^ word(key, i)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    (
        ((h >> 32) as u32) & (maps::CONNECTORS_CAPACITY - 1),
        h as u32,
    )
}

/// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 one: a dual-stack server's
/// socket sees an IPv4 client that way.
#[inline(always)]
fn plain(a: [u8; 16]) -> [u8; 16] {
    let mapped = a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff;
    if !mapped {
        return a;
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a[12..]);
    out
}

/// The key of the connection `sk` is the client end of.
#[inline(always)]
fn client_key(k: &KernelOffsets, sk: u64) -> Option<TcpKey> {
    let fam = kread::<u16>(sk, k.skc_family)?;
    let mut key = TcpKey {
        netns: 0,
        sport: kread::<u16>(sk, k.skc_num)?,
        dport: u16::from_be(kread::<u16>(sk, k.skc_dport)?),
        saddr: [0; 16],
        daddr: [0; 16],
    };
    match fam {
        family::INET => {
            key.saddr[..4].copy_from_slice(&kread::<[u8; 4]>(sk, k.skc_rcv_saddr)?);
            key.daddr[..4].copy_from_slice(&kread::<[u8; 4]>(sk, k.skc_daddr)?);
        }
        family::INET6 => {
            key.saddr = plain(kread::<[u8; 16]>(sk, k.skc_v6_rcv_saddr)?);
            key.daddr = plain(kread::<[u8; 16]>(sk, k.skc_v6_daddr)?);
        }
        _ => return None,
    }
    if let Some(net) = kread::<u64>(sk, k.skc_net)
        && let Some(inum) = kread::<u32>(net, k.net_ns_inum)
    {
        key.netns = inum;
    }
    Some(key)
}

/// The process that connected to the server socket whose ends are `local` and `peer`, in
/// namespace `netns`, while sniffer was attached (0: not known).
#[inline(always)]
pub fn connector(netns: u32, local: &SockAddr, peer: &SockAddr) -> u32 {
    let key = TcpKey {
        netns,
        sport: peer.port,
        dport: local.port,
        saddr: plain(peer.addr),
        daddr: plain(local.addr),
    };
    let (idx, check) = slot_of(&key);
    let Some(slot) = CONNECTORS.get_ptr(idx) else {
        return 0;
    };
    let mut c = Connector {
        key: TcpKey {
            netns: 0,
            sport: 0,
            dport: 0,
            saddr: [0; 16],
            daddr: [0; 16],
        },
        tgid: 0,
        check: 0,
    };
    // SAFETY: a map value and a stack value, both Connectors (8-byte aligned).
    unsafe { mem::copy(&mut c, slot) };
    if !same(&c.key, &key) || c.check != check ^ c.tgid {
        return 0;
    }
    c.tgid
}

/// The exit of an untraced process's `connect` on `fd` that returned `ret`: remember who
/// connected, by the connection's addresses (its local port is chosen by now, also when a
/// non-blocking connect is still in progress).
#[inline(always)]
pub fn connected(cfg: &Config, tgid: u32, fd: i32, ret: i64) {
    if ret != 0 && ret != -EINPROGRESS {
        return;
    }
    let sk = inet_stream_sk(&cfg.kernel, tgid, fd);
    if sk == 0 {
        return;
    }
    let Some(key) = client_key(&cfg.kernel, sk) else {
        return;
    };
    let (idx, check) = slot_of(&key);
    if let Some(slot) = CONNECTORS.get_ptr_mut(idx) {
        let c = Connector {
            key,
            tgid,
            check: check ^ tgid,
        };
        // SAFETY: a map value and a stack value, both Connectors (8-byte aligned).
        unsafe { mem::copy(slot, &c) };
    }
}
