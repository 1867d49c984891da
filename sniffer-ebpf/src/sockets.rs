//! Sockets of traced processes: from an fd to the kernel's `struct sock` (through
//! `task->files`), both ends' addresses, and the per-(process, fd) state with the stream
//! offsets. Member offsets come from userspace (BTF), see `sniffer_common::KernelOffsets`.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_probe_read_kernel as raw_read_kernel,
    },
};
use sniffer_common::{
    Config, KernelOffsets, OFFSET_ABSENT, SockAddr, SockEvent, SockKey, SockState, Target,
    UNIX_PATH_LEN, config_flags, counters, family, kind, maps, role, sock_flags,
};

use crate::{
    diag,
    maps::{EVENTS, NoSocket, SK_ROLES, SOCKETS, count},
    mem,
    ring::wakeup,
};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;

/// Reads a `T` at `base + off` in kernel memory; `None` when the member is absent or unreadable.
#[inline(always)]
pub fn kread<T>(base: u64, off: u32) -> Option<T> {
    if off == OFFSET_ABSENT || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and returns an error on a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

/// A socket as `fd_socket` finds it; `sk == 0`: none.
///
/// A plain struct, not an `Option` of a tuple: LLVM may read an `Option`'s payload on the
/// `None` path too (it is undefined there, so any value will do), from a stack slot nothing
/// wrote, and verifiers before 5.11 refuse any read of uninitialised stack.
#[derive(Clone, Copy)]
struct Found {
    sk: u64,
    family: u16,
    sock_type: u16,
    /// The socket inode's number (its low 32 bits: sockets take theirs from `get_next_ino`).
    ino: u32,
}

const NOT_FOUND: Found = Found {
    sk: 0,
    family: 0,
    sock_type: 0,
    ino: 0,
};

/// A traced stream socket behind `fd` of the current task, or [`NOT_FOUND`].
#[inline(always)]
fn fd_socket(k: &KernelOffsets, tgid: u32, fd: i32, flags: u32) -> Found {
    match fd_socket_walk(k, tgid, fd, flags) {
        Some((sk, family, sock_type, ino)) => Found {
            sk,
            family,
            sock_type,
            ino,
        },
        None => NOT_FOUND,
    }
}

/// The TCP socket (IPv4 or IPv6) behind `fd` of the current task, 0 when none.
#[inline(always)]
pub fn inet_stream_sk(k: &KernelOffsets, tgid: u32, fd: i32) -> u64 {
    // Without config_flags::UNIX: only IPv4 and IPv6 stream sockets are found.
    fd_socket(k, tgid, fd, 0).sk
}

/// The `struct file` behind `fd` of the current task (task->files->fdt->fd[fd]), 0 when none.
#[inline(always)]
fn fd_file(k: &KernelOffsets, fd: i32) -> u64 {
    if fd < 0 {
        return 0;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let Some(fdt) = kread::<u64>(task, k.task_files).and_then(|f| kread::<u64>(f, k.files_fdt))
    else {
        return 0;
    };
    match kread::<u32>(fdt, k.fdt_max_fds) {
        Some(max) if (fd as u32) < max => {}
        _ => return 0,
    }
    kread::<u64>(fdt, k.fdt_fd)
        .and_then(|a| kread::<u64>(a + 8 * fd as u64, 0))
        .unwrap_or(0)
}

/// Whether `fd` still holds socket `sk`: the short walk, file->private_data->sk, without the
/// inode, type and family reads that only a new socket needs (7 kernel reads, not 12). Only a
/// match means anything: anything else goes to the full walk.
#[inline(always)]
pub fn fd_holds(k: &KernelOffsets, fd: i32, sk: u64) -> bool {
    let file = fd_file(k, fd);
    sk != 0
        && kread::<u64>(file, k.file_private_data)
            .and_then(|socket| kread::<u64>(socket, k.socket_sk))
            == Some(sk)
}

/// Walks task->files->fdt->fd[fd]->f_inode->i_mode and file->private_data->sk.
#[inline(always)]
fn fd_socket_walk(
    k: &KernelOffsets,
    tgid: u32,
    fd: i32,
    flags: u32,
) -> Option<(u64, u16, u16, u32)> {
    let file = fd_file(k, fd);
    let inode: u64 = kread(file, k.file_inode)?;
    let mode: u16 = kread(inode, k.inode_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    // A socket: from here on a failed read means offsets that do not fit this kernel.
    let Some(socket) = kread::<u64>(file, k.file_private_data) else {
        diag::socket_unreadable(tgid, fd);
        return None;
    };
    let (Some(sock_type), Some(sk)) = (
        kread::<i16>(socket, k.socket_type),
        kread::<u64>(socket, k.socket_sk),
    ) else {
        diag::socket_unreadable(tgid, fd);
        return None;
    };
    let Some(fam) = kread::<u16>(sk, k.skc_family) else {
        diag::socket_unreadable(tgid, fd);
        return None;
    };
    let wanted = match fam {
        family::INET | family::INET6 => true,
        family::UNIX => flags & config_flags::UNIX != 0,
        _ => false,
    };
    if !(wanted && sock_type as u16 == SOCK_STREAM && sk != 0) {
        return None;
    }
    let ino = kread::<u64>(inode, k.inode_ino).unwrap_or(0) as u32;
    Some((sk, fam, sock_type as u16, ino))
}

/// Fills one end's address from a unix_sock's `addr` (struct unix_address *).
#[inline(always)]
fn unix_path(k: &KernelOffsets, usk: u64, out: &mut SockAddr) {
    let Some(ua) = kread::<u64>(usk, k.unix_addr) else {
        return;
    };
    let Some(len) = kread::<i32>(ua, k.unix_address_len) else {
        return;
    };
    // unix_address.len counts sun_family (2 bytes) too.
    let mut n = len as i64 - 2;
    if n <= 0 || k.unix_address_name == OFFSET_ABSENT {
        return;
    }
    if n > UNIX_PATH_LEN as i64 {
        n = UNIX_PATH_LEN as i64;
    }
    let src = ua + u64::from(k.unix_address_name) + 2;
    // SAFETY: helper-checked kernel read into a buffer of UNIX_PATH_LEN bytes, n <= that.
    let r =
        unsafe { raw_read_kernel(out.path.as_mut_ptr().cast(), n as u32, src as *const c_void) };
    if r == 0 {
        out.path_len = n as u16;
    }
}

/// Fills local and peer addresses of `sk` into a socket event.
#[inline(always)]
fn fill_addresses(k: &KernelOffsets, sk: u64, fam: u16, ev: &mut SockEvent) {
    // possible_net_t is a struct holding one pointer (none without CONFIG_NET_NS: absent).
    if let Some(net) = kread::<u64>(sk, k.skc_net)
        && let Some(inum) = kread::<u32>(net, k.net_ns_inum)
    {
        ev.netns = inum;
    }
    match fam {
        family::INET => {
            if let Some(a) = kread::<[u8; 4]>(sk, k.skc_rcv_saddr) {
                ev.local.addr[..4].copy_from_slice(&a);
            }
            if let Some(a) = kread::<[u8; 4]>(sk, k.skc_daddr) {
                ev.peer.addr[..4].copy_from_slice(&a);
            }
        }
        family::INET6 => {
            if let Some(a) = kread::<[u8; 16]>(sk, k.skc_v6_rcv_saddr) {
                ev.local.addr = a;
            }
            if let Some(a) = kread::<[u8; 16]>(sk, k.skc_v6_daddr) {
                ev.peer.addr = a;
            }
        }
        family::UNIX => {
            unix_path(k, sk, &mut ev.local);
            if let Some(peer) = kread::<u64>(sk, k.unix_peer) {
                ev.peer_sk = peer;
                unix_path(k, peer, &mut ev.peer);
            }
            // SO_PEERCRED: sk_peer_pid->numbers[0].nr, the peer's pid in the root namespace.
            if k.pid_numbers != OFFSET_ABSENT
                && let Some(pid) = kread::<u64>(sk, k.sk_peer_pid)
                && let Some(nr) = kread::<i32>(pid + u64::from(k.pid_numbers), k.upid_nr)
            {
                ev.peer_tgid = nr as u32;
            }
            return;
        }
        _ => return,
    }
    ev.local.port = kread::<u16>(sk, k.skc_num).unwrap_or(0);
    ev.peer.port = u16::from_be(kread::<u16>(sk, k.skc_dport).unwrap_or(0));
    if ev.role == role::SERVER {
        ev.peer_tgid = crate::callers::connector(ev.netns, &ev.local, &ev.peer);
    }
}

/// Emits a socket open/close event; `addresses` reads both ends from the kernel socket.
/// Returns whether the event went out.
#[inline(always)]
pub fn emit_sock(
    cfg: &Config,
    ev_kind: u32,
    key: &SockKey,
    st: &SockState,
    tid: u32,
    addresses: bool,
) -> bool {
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        count(counters::CONTROL_EVENTS_LOST, 1);
        return false;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned SockEvent-sized record.
    unsafe {
        mem::zero(ev);
        let ev = &mut *ev;
        ev.kind = ev_kind;
        ev.role = st.role;
        ev.ts_ns = bpf_ktime_get_ns();
        ev.tgid = key.tgid;
        ev.tid = tid;
        ev.fd = key.fd;
        ev.family = st.family;
        ev.sock_type = st.sock_type;
        ev.sk = st.sk;
        ev.send_off = st.send_off;
        ev.recv_off = st.recv_off;
        ev.tls_send_off = st.tls_send_off;
        ev.tls_recv_off = st.tls_recv_off;
        if addresses {
            fill_addresses(&cfg.kernel, st.sk, st.family, ev);
        }
    }
    entry.submit(wakeup(size_of::<SockEvent>() as u64));
    true
}

/// Remembers the role `sk` got at connect/accept, for other processes using the socket.
#[inline(always)]
fn set_sk_role(sk: u64, ino: u32, role: u32) {
    let _ = SK_ROLES.insert(sk, (u64::from(ino) << 32) | u64::from(role), 0);
}

/// The role recorded for `sk`, if it was recorded for this very socket: the kernel reuses a
/// closed socket's memory, and an accept begun before the attach records nothing for the new
/// one (its role was the old socket's, and its exchanges were read backwards).
#[inline(always)]
fn sk_role(sk: u64, ino: u32) -> u32 {
    // SAFETY: plain value read.
    match unsafe { SK_ROLES.get(sk) } {
        Some(v) if (*v >> 32) as u32 == ino => *v as u32,
        _ => role::UNKNOWN,
    }
}

/// The tracked state of `fd` in the current process, registering the socket when it is new or
/// when the fd now refers to a different socket than the one recorded (the fd was reused without
/// a close we saw: dup2, exec of a CLOEXEC socket). `role` is set when given (connect/accept).
#[inline(always)]
pub fn track_socket(
    cfg: &Config,
    tgid: u32,
    tid: u32,
    fd: i32,
    new_role: Option<u32>,
    target: Option<*mut Target>,
) -> Option<u64> {
    let key = SockKey { tgid, fd };
    let known = SOCKETS.get_ptr_mut(key);
    if new_role.is_none()
        && let Some(st) = known
    {
        // SAFETY: map value pointer, valid during this program run.
        let replaced_ns = target.map_or(u64::MAX, |t| unsafe { (*t).replaced_ns });
        // SAFETY: map value pointer, valid during this program run.
        let (flags, sk, checked_ns) = unsafe { ((*st).flags, (*st).sk, (*st).checked_ns) };
        // A socket set aside: nothing to do, not even the fd walk. (Its close still ends it;
        // an fd replaced without a close we see, by dup2, stays ignored until then.)
        if flags & sock_flags::IGNORED != 0 {
            return None;
        }
        // The steady state: nothing could have put another file behind the fd since it was
        // last found holding this socket (a close we see removes the entry; the rest moves
        // the process's `replaced_ns`), so the fd table is not read at all.
        if checked_ns > replaced_ns {
            return Some(sk);
        }
        if fd_holds(&cfg.kernel, fd, sk) {
            // SAFETY: as above; no preconditions for the time.
            unsafe { (*st).checked_ns = bpf_ktime_get_ns() };
            return Some(sk);
        }
    }
    // An fd a data syscall of the process found holding a file, with nothing changed since:
    // no walk (a client writing what it downloads, an upload reading its file).
    let no_socket = match (known, target) {
        (None, Some(t)) => {
            let n = NoSocket::look(t, fd);
            if n.holds_none() {
                return None;
            }
            Some(n)
        }
        _ => None,
    };
    let found = fd_socket(&cfg.kernel, tgid, fd, cfg.flags);
    if found.sk == 0
        && let Some(n) = &no_socket
    {
        n.remember();
    }
    if let Some(st) = known {
        // SAFETY: map value pointer, valid during this program run.
        let st = unsafe { &mut *st };
        if found.sk != 0 && found.sk == st.sk {
            // SAFETY: no preconditions.
            st.checked_ns = unsafe { bpf_ktime_get_ns() };
            if let Some(r) = new_role {
                // connect/accept on a socket we already knew: addresses are known now.
                set_sk_role(found.sk, found.ino, r);
                st.role = r;
                emit_sock(cfg, kind::SOCK_OPEN, &key, st, tid, true);
            }
            return Some(found.sk);
        }
        let old = *st;
        emit_sock(cfg, kind::SOCK_CLOSE, &key, &old, tid, false);
        let _ = SOCKETS.remove(key);
    }
    if found.sk == 0 {
        return None;
    }
    let Found {
        sk,
        family: fam,
        sock_type,
        ino,
    } = found;
    let role = match new_role {
        Some(r) => {
            set_sk_role(sk, ino, r);
            r
        }
        None => sk_role(sk, ino),
    };
    let st = SockState {
        sk,
        // SAFETY: no preconditions.
        checked_ns: unsafe { bpf_ktime_get_ns() },
        send_off: 0,
        recv_off: 0,
        tls_send_off: 0,
        tls_recv_off: 0,
        role,
        family: fam,
        sock_type,
        flags: 0,
        _pad: 0,
    };
    if SOCKETS.insert(key, st, BPF_NOEXIST as u64).is_err() {
        count(counters::SOCKETS_FULL, 1);
        diag::map_full(maps::SOCKETS);
        return None;
    }
    emit_sock(cfg, kind::SOCK_OPEN, &key, &st, tid, true);
    Some(sk)
}
