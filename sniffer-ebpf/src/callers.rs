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
//! handshake inside it): that connection is not found here, and userspace reads the table
//! itself when it names the connection, by then long after. So a connect stays in the table
//! until two later ones of its set came (sets of two slots, the older one written; see
//! `sniffer_common::connectors::Connector`).

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::helpers::bpf_ktime_get_ns;

use sniffer_common::{
    Config, KernelOffsets, SockAddr,
    connectors::{KEY_WORDS, TcpKey, WAYS, plain, slot_of, way_to_write},
    family,
};

use crate::{
    maps::CONNECTORS,
    sockets::{inet_stream_sk, kread},
};

const EINPROGRESS: i64 = 115;

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
///
/// Not inlined, as `connected`: a function of its own has a stack frame of its own, and the
/// exit program's frame, stacked with the copy loop's, is at 6.1's 512-byte limit.
#[inline(never)]
pub fn connector(netns: u32, local: &SockAddr, peer: &SockAddr) -> u32 {
    let key = TcpKey {
        netns,
        sport: peer.port,
        dport: local.port,
        saddr: plain(peer.addr),
        daddr: plain(local.addr),
    };
    let (first, check) = slot_of(&key);
    // The newer of the set's slots that hold this connection whole.
    let (mut found, mut found_at) = (0, 0);
    for way in 0..WAYS {
        let Some(slot) = CONNECTORS.get_ptr(first + way) else {
            return 0;
        };
        // Read in place, each word once (volatile: another CPU may be writing the slot; a copy
        // on the stack would cost the exit program stack it does not have on 6.1's verifier).
        let slot = slot.cast::<u64>();
        let mine = (&key as *const TcpKey).cast::<u64>();
        let mut diff = 0;
        for i in 0..KEY_WORDS {
            // SAFETY: within the map value and the key, both 8-byte aligned.
            diff |= unsafe { read_volatile(slot.add(i)) ^ *mine.add(i) };
        }
        // SAFETY: the map value's last two words: tgid in the low half of the first and check
        // in its high one, then when it was written.
        let (last, at) = unsafe {
            (
                read_volatile(slot.add(KEY_WORDS)),
                read_volatile(slot.add(KEY_WORDS + 1)),
            )
        };
        let (tgid, got) = (last as u32, (last >> 32) as u32);
        if diff == 0 && tgid != 0 && got == check ^ tgid && (found == 0 || at > found_at) {
            (found, found_at) = (tgid, at);
        }
    }
    found
}

/// The exit of an untraced process's `connect` on `fd` that returned `ret`: remember who
/// connected, by the connection's addresses (its local port is chosen by now, also when a
/// non-blocking connect is still in progress).
#[inline(never)]
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
    let (first, check) = slot_of(&key);
    // The set's older slot (see `sniffer_common::connectors::Connector`).
    let mut at = [0u64; WAYS as usize];
    for (way, at) in at.iter_mut().enumerate() {
        if let Some(slot) = CONNECTORS.get_ptr(first + way as u32) {
            // SAFETY: the map value's last word.
            *at = unsafe { read_volatile(slot.cast::<u64>().add(KEY_WORDS + 1)) };
        }
    }
    if let Some(slot) = CONNECTORS.get_ptr_mut(first + way_to_write(at)) {
        // Written in place, word by word (see `connector`).
        let slot = slot.cast::<u64>();
        let mine = (&key as *const TcpKey).cast::<u64>();
        for i in 0..KEY_WORDS {
            // SAFETY: within the map value and the key, both 8-byte aligned.
            unsafe { write_volatile(slot.add(i), *mine.add(i)) };
        }
        let last = u64::from(tgid) | u64::from(check ^ tgid) << 32;
        // SAFETY: the map value's last two words.
        unsafe {
            write_volatile(slot.add(KEY_WORDS), last);
            write_volatile(slot.add(KEY_WORDS + 1), bpf_ktime_get_ns());
        }
    }
}
