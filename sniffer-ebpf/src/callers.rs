//! Who connected: the process behind the client end of a TCP connection a traced server
//! accepts, when that client is not traced.
//!
//! Userspace could only find it by asking the socket tables and reading every process's fds,
//! which under connection churn cost most of its time and still missed most connections (a new
//! socket is in no snapshot yet). The kernel knows it for free: a TCP client's socket enters
//! SYN_SENT inside its `connect`, in its own process. That is remembered by socket, moved to
//! the connection's addresses once it is ESTABLISHED (its port is chosen by then), and read
//! when a traced process accepts the other end (`SockEvent::peer_tgid`).
//!
//! Every process pays this, traced or not, but per connection (three state changes), never
//! per read or write.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use sniffer_common::{KernelOffsets, SockAddr, family};

use crate::{
    maps::{CONNECTED, CONNECTING, config},
    sockets::kread,
};

/// include/net/tcp_states.h
const TCP_ESTABLISHED: u64 = 1;
const TCP_SYN_SENT: u64 = 2;
const TCP_CLOSE: u64 = 7;

/// A TCP connection as its client sees it, in its network namespace. Addresses in
/// `SockAddr`'s layout: IPv4 (or IPv4-mapped IPv6) in the first 4 bytes, the rest 0.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpKey {
    pub netns: u32,
    /// The client's port, then the server's (host order).
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
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

/// The key of the connection `sk` is the client end of (read at ESTABLISHED).
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
    // SAFETY: plain value read.
    unsafe { CONNECTED.get(key) }.copied().unwrap_or(0)
}

/// Every TCP state change of every socket: a client's connect is remembered (see the module).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk = ctx.arg::<*const c_void>(0) as u64;
    let old: u64 = ctx.arg::<u64>(1) & 0xffff_ffff;
    let new: u64 = ctx.arg::<u64>(2) & 0xffff_ffff;
    match (old, new) {
        // In connect(2), so in the connecting process.
        (_, TCP_SYN_SENT) => {
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            let _ = CONNECTING.insert(sk, tgid, 0);
        }
        // Possibly in softirq: the process is the one remembered.
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            // SAFETY: copied out before removal.
            let Some(tgid) = (unsafe { CONNECTING.get(sk) }).copied() else {
                return 0;
            };
            let _ = CONNECTING.remove(sk);
            let Some(cfg) = config() else { return 0 };
            if let Some(key) = client_key(&cfg.kernel, sk) {
                let _ = CONNECTED.insert(key, tgid, 0);
            }
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            let _ = CONNECTING.remove(sk);
        }
        _ => {}
    }
    0
}
