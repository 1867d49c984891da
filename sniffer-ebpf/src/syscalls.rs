//! The syscalls: one program on the kernel's `sys_enter` and one on `sys_exit` (BTF
//! tracepoints, no perf record per call), for every syscall of every process.
//!
//! Their first instructions are the filter every syscall pays: the syscall number against the
//! dozen sniffer reads (a bit mask, no map), then whether the process is traced (one hash
//! lookup). Past that, the enter of a traced thread's read or write notes which socket it is
//! on, in the thread's slot (`sniffer_common::entered`); the exit takes it back, reads the
//! arguments from the registers, advances the stream offset and copies what moved. connect and
//! accept give a socket its role and addresses at their exit; close ends a socket at its enter.
//!
//! The exit program comes in three variants, for the kernel features they need (see
//! `sniffer_common::Variant`); userspace probes the kernel and loads one of them.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sniffer_common::{
    Config, DataHeader, MAX_IOVECS, SockKey, SslKey, Syscall, Target, config_flags, copy_flags,
    counters, data_flags, dir, entered, kind, role, sock_flags,
};

use crate::{
    atomic::{fetch_add, read_then_add},
    callers, copy,
    maps::{
        COPY_TAIL, SOCKETS, SSL_FDS, TARGETS, TLS_CALLS, config, count, current_target_entry,
        enter_call, fds_changed, fds_changing, fds_replaced, is_target, take_call, take_pending,
    },
    ring::{emit_proc, emit_uncopied},
    sockets::{emit_sock, fd_holds, track_socket},
};

const MSG_PEEK: u64 = 2;
const EINPROGRESS: i64 = 115;
const PROT_EXEC: u64 = 4;

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const DUP2: u64 = 33;
    pub const DUP3: u64 = 292;
    pub const CLOSE_RANGE: u64 = 436;
    pub const MMAP: u64 = 9;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const CONNECT: u64 = 42;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;

    /// The numbers below 64 sniffer reads, as bits.
    pub const LOW_MASK: u64 = 1 << READ
        | 1 << WRITE
        | 1 << CLOSE
        | 1 << DUP2
        | 1 << MMAP
        | 1 << READV
        | 1 << WRITEV
        | 1 << SENDFILE
        | 1 << CONNECT
        | 1 << ACCEPT
        | 1 << SENDTO
        | 1 << RECVFROM
        | 1 << SENDMSG
        | 1 << RECVMSG;
}

/// Whether syscall `id` is one sniffer reads: the first test of every syscall of every process.
#[inline(always)]
fn wanted(id: u64) -> bool {
    if id < 64 {
        nr::LOW_MASK & (1 << id) != 0
    } else {
        id == nr::ACCEPT4 || id == nr::DUP3 || id == nr::CLOSE_RANGE
    }
}

/// A u64 of user memory, 0 when unreadable.
#[inline(always)]
fn user_u64(addr: u64) -> u64 {
    // SAFETY: helper-checked user read.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// The syscall's registers: the tracepoint's first argument, a pointer the verifier knows by
/// its BTF type, so its members are plain loads.
#[inline(always)]
fn regs(ctx: &BtfTracePointContext) -> *const pt_regs {
    ctx.arg(0)
}

/// Argument `n` (0..5) of the syscall, by the x86_64 syscall convention (rdi, rsi, rdx, r10,
/// r8).
#[inline(always)]
fn arg(regs: *const pt_regs, n: u32) -> u64 {
    // SAFETY: a BTF pointer to the syscall's pt_regs, valid during the tracepoint.
    unsafe {
        match n {
            0 => (*regs).rdi,
            1 => (*regs).rsi,
            2 => (*regs).rdx,
            3 => (*regs).r10,
            _ => (*regs).r8,
        }
    }
}

// ---- enter: remember the socket ----------------------------------------------------------

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    if !wanted(id) {
        return 0;
    }
    // Here a process of a traced cgroup becomes a target, at its first syscall sniffer reads;
    // the exit only asks.
    let Some((tgid, tid, target)) = current_target_entry() else {
        return 0;
    };
    let Some(cfg) = config() else { return 0 };
    let regs = regs(&ctx);
    match data_syscall(id) {
        Some(sc) => enter_data(cfg, regs, tgid, tid, sc, target),
        None if id == nr::CLOSE => {
            fds_changing(target, tid);
            enter_close(cfg, regs, tgid, tid)
        }
        // Another file may take an fd's number without a close we see: at the enter, so that
        // a data syscall of another thread entering after it looks at its fd again.
        None if changes_fds(id) => {
            fds_changing(target, tid);
            fds_replaced(target);
            0
        }
        // connect, accept and mmap are read at their exit.
        None => 0,
    }
}

/// dup2, dup3 and close_range: they put another file behind an fd (or free its number)
/// without a close(2) of it.
#[inline(always)]
fn changes_fds(id: u64) -> bool {
    id == nr::DUP2 || id == nr::DUP3 || id == nr::CLOSE_RANGE
}

/// The data syscall of number `id`.
#[inline(always)]
fn data_syscall(id: u64) -> Option<Syscall> {
    Some(match id {
        nr::READ => Syscall::Read,
        nr::READV => Syscall::Readv,
        nr::RECVFROM => Syscall::Recvfrom,
        nr::RECVMSG => Syscall::Recvmsg,
        nr::WRITE => Syscall::Write,
        nr::WRITEV => Syscall::Writev,
        nr::SENDTO => Syscall::Sendto,
        nr::SENDMSG => Syscall::Sendmsg,
        nr::SENDFILE => Syscall::Sendfile,
        _ => return None,
    })
}

/// Enter of a data syscall (the socket is argument 0): which socket it is on, for the exit,
/// which reads the other arguments from the registers. Recorded for every data syscall of a
/// traced thread, 0 when not on a socket sniffer reads, so that the exit knows it.
#[inline(always)]
fn enter_data(
    cfg: &Config,
    regs: *const pt_regs,
    tgid: u32,
    tid: u32,
    sc: Syscall,
    target: *mut Target,
) -> i32 {
    let fd = arg(regs, 0) as i32;
    let sk = if peeks(regs, sc) {
        0
    } else {
        track_socket(cfg, tgid, tid, fd, None, Some(target)).unwrap_or(0)
    };
    if sk != 0 && cfg.flags & config_flags::TLS != 0 {
        tls_socket(tgid, tid, fd);
    }
    enter_call(tid, sk);
    0
}

/// A recv with MSG_PEEK: its bytes are read again later.
#[inline(always)]
fn peeks(regs: *const pt_regs, sc: Syscall) -> bool {
    let flags = match sc {
        Syscall::Recvfrom => arg(regs, 3),
        Syscall::Recvmsg => arg(regs, 2),
        _ => 0,
    };
    flags & MSG_PEEK != 0
}

/// A socket syscall inside a TLS library call: that call's `SSL *` uses this socket, whose
/// bytes are ciphertext from now on.
#[inline(always)]
fn tls_socket(tgid: u32, tid: u32, fd: i32) {
    // SAFETY: copied out of the map value.
    let Some(call) = (unsafe { TLS_CALLS.get(tid) }).copied() else {
        return;
    };
    let key = SslKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    // Written only when new or changed: an LRU insert takes a fresh node and frees the old one,
    // and every read and write a TLS call makes lands here.
    // SAFETY: plain value read.
    if unsafe { SSL_FDS.get(key) }.copied() != Some(fd) {
        let _ = SSL_FDS.insert(key, fd, 0);
    }
    if let Some(st) = SOCKETS.get_ptr_mut(SockKey { tgid, fd }) {
        // SAFETY: map value pointer, valid during this program run.
        unsafe { (*st).flags |= sock_flags::TLS };
    }
}

#[inline(always)]
fn enter_close(cfg: &Config, regs: *const pt_regs, tgid: u32, tid: u32) -> i32 {
    let key = SockKey {
        tgid,
        fd: arg(regs, 0) as i32,
    };
    // SAFETY: copied out before the entry is removed.
    if let Some(st) = unsafe { SOCKETS.get(key) } {
        let st = *st;
        // When the close event is lost the entry stays: its final offsets then reach userspace
        // when the fd is reused, the process exits, or the sniffer stops.
        if emit_sock(cfg, kind::SOCK_CLOSE, &key, &st, tid, false) {
            let _ = SOCKETS.remove(key);
        } else if let Some(st) = SOCKETS.get_ptr_mut(key) {
            // The entry outlives its fd: whatever takes the number next is looked at.
            // SAFETY: map value pointer, valid during this program run.
            unsafe { (*st).checked_ns = 0 };
        }
    }
    0
}

// ---- exit: copy what moved ----------------------------------------------------------------

/// Exit of any syscall: a data syscall of a traced thread goes on with what its enter
/// recorded, connect, accept and mmap are read here.
/// `BPF_LOOP`: copy with bpf_loop (5.17); `FETCH`: atomic fetch-and-add (5.12).
#[inline(always)]
fn exit<const BPF_LOOP: bool, const FETCH: bool>(ctx: &BtfTracePointContext) -> i32 {
    let regs = regs(ctx);
    // SAFETY: a BTF pointer to the syscall's pt_regs, valid during the tracepoint.
    let id = unsafe { (*regs).orig_rax };
    if !wanted(id) {
        return 0;
    }
    let ret: i64 = ctx.arg(1);
    let Some(sc) = data_syscall(id) else {
        exit_other(regs, id, ret);
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // What the enter recorded: the thread's slot, else (a traced thread only) the hash.
    let entered = match take_call(tid) {
        Some(fold) => Some(fold),
        None => {
            if !is_target(pid_tgid) {
                return 0;
            }
            take_pending(tid)
        }
    };
    // Not on a socket sniffer reads, or nothing moved.
    if entered == Some(0) || ret <= 0 {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let tgid = (pid_tgid >> 32) as u32;
    exit_data::<BPF_LOOP, FETCH>(ctx, cfg, regs, tgid, tid, sc, ret as u64, entered);
    0
}

/// Exit of connect, accept and mmap: a traced process's socket gets its role and addresses,
/// an untraced process's connect is noted for a traced server's accept, executable code
/// mapped from a file is reported.
#[inline(always)]
fn exit_other(regs: *const pt_regs, id: u64, ret: i64) {
    let Some(cfg) = config() else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if id == nr::CLOSE || changes_fds(id) {
        if let Some(t) = TARGETS.get_ptr_mut(tgid) {
            fds_changed(t, tid);
        }
        return;
    }
    let target = is_target(pid_tgid).then_some((tgid, tid));
    match id {
        nr::CONNECT => match target {
            // 0 or -EINPROGRESS: the socket's addresses are set.
            Some((tgid, tid)) => {
                if ret == 0 || ret == -EINPROGRESS {
                    track_socket(
                        cfg,
                        tgid,
                        tid,
                        arg(regs, 0) as i32,
                        Some(role::CLIENT),
                        None,
                    );
                }
            }
            // An untraced process connected: who it was, for a traced server's accept.
            None => callers::connected(cfg, tgid, arg(regs, 0) as i32, ret),
        },
        nr::ACCEPT | nr::ACCEPT4 => {
            if let Some((tgid, tid)) = target
                && ret >= 0
            {
                track_socket(cfg, tgid, tid, ret as i32, Some(role::SERVER), None);
            }
        }
        nr::MMAP => {
            // Executable code from a file (a library loaded, dlopen), mapped: an address, not
            // -errno. Userspace looks for a TLS library in it.
            if let Some((tgid, _)) = target
                && !(-4095..0).contains(&ret)
                && arg(regs, 2) & PROT_EXEC != 0
                && arg(regs, 4) as i32 >= 0
            {
                emit_proc(kind::PROC_MAP_EXEC, tgid, 0, 0);
            }
        }
        _ => {}
    }
}

/// Exit of a data syscall on fd argument 0 that moved `ret` bytes: advance the socket's stream
/// offset and send the bytes as chunk events, then what was not copied as one length-only
/// event. `entered`: the fold of the socket its enter saw; `None` when no enter was seen (begun
/// before the attach, or its slot lost), and then the bytes of a socket the fd still holds go
/// out by length only, a gap of known length.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn exit_data<const BPF_LOOP: bool, const FETCH: bool>(
    ctx: &BtfTracePointContext,
    cfg: &Config,
    regs: *const pt_regs,
    tgid: u32,
    tid: u32,
    sc: Syscall,
    ret: u64,
    entered: Option<u64>,
) {
    let fd = arg(regs, 0) as i32;
    let key = SockKey { tgid, fd };
    let Some(st) = SOCKETS.get_ptr_mut(key) else {
        return;
    };
    let d = sc.dir();
    // SAFETY: map value pointer, valid during this program run.
    let (sk, flags) = unsafe { ((*st).sk, (*st).flags) };
    match entered {
        // The fd holds another socket than at the enter (closed and reused meanwhile).
        Some(fold) if entered::fold(sk) != fold => return,
        Some(_) => {}
        None => {
            if flags & sock_flags::IGNORED != 0 || peeks(regs, sc) || !fd_holds(&cfg.kernel, fd, sk)
            {
                return;
            }
            count(counters::ENTER_MISSED, 1);
        }
    }
    let ctl = copy::control_of(tgid, fd, d, sk);
    if ctl.flags & copy_flags::IGNORE != 0 {
        // Set aside (not HTTP): nothing more of it, and its enters stop at the lookup.
        // SAFETY: as above.
        unsafe { (*st).flags |= sock_flags::IGNORED };
        return;
    }
    // SAFETY: map value pointer; the offset counter is shared by threads of the process.
    let (off, tls) = unsafe {
        let counter = if d == dir::SEND {
            &raw mut (*st).send_off
        } else {
            &raw mut (*st).recv_off
        };
        let off = if FETCH {
            fetch_add(counter, ret)
        } else {
            read_then_add(counter, ret)
        };
        (off, (*st).flags & sock_flags::TLS != 0)
    };
    let mut hdr = DataHeader {
        kind: kind::DATA,
        dir: d,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        tid,
        fd,
        syscall: sc as u32,
        sk,
        off,
        len: 0,
        syscall_len: ret,
        cap: 0,
        flags: 0,
    };
    if tls {
        // Ciphertext: its plaintext comes from the TLS library's probes. Counted only.
        hdr.flags = data_flags::CIPHERTEXT;
    }
    if tls || sc == Syscall::Sendfile || entered.is_none() {
        // Bytes from a file, not user memory, or a call whose arguments may not be this
        // socket's: length only, without setting up a copy.
        emit_uncopied(hdr, ret);
        return;
    }
    let Some(state) = copy::prepare(cfg, hdr, ctl) else {
        return;
    };
    // SAFETY: per-CPU map value, used by this program run only.
    let c = unsafe { &mut *state };
    let (buf, count) = (arg(regs, 1), arg(regs, 2));
    match sc {
        Syscall::Read | Syscall::Write | Syscall::Recvfrom | Syscall::Sendto => {
            c.base = buf;
            c.seg_left = ret;
        }
        Syscall::Readv | Syscall::Writev => {
            c.iov = buf;
            c.iov_left = if count < MAX_IOVECS {
                count
            } else {
                MAX_IOVECS
            };
        }
        Syscall::Recvmsg | Syscall::Sendmsg => {
            // struct msghdr { name; namelen; iov @16; iovlen @24; ... } (user ABI, 64-bit)
            let iov = user_u64(buf + 16);
            let n = user_u64(buf + 24);
            c.iov = iov;
            c.iov_left = if n < MAX_IOVECS { n } else { MAX_IOVECS };
        }
        // sendfile went out above.
        _ => c.chunks_left = 0,
    }
    copy::run::<BPF_LOOP, _>(ctx, &COPY_TAIL, state);
}

/// The full exit program: bpf_loop and atomic fetch-and-add.
#[btf_tracepoint(function = "sys_exit")]
#[inline(always)]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    exit::<true, true>(&ctx)
}

/// For kernels without bpf_loop (before 5.17): the copy continues in tail calls.
#[btf_tracepoint(function = "sys_exit")]
#[inline(always)]
pub fn sys_exit_noloop(ctx: BtfTracePointContext) -> i32 {
    exit::<false, true>(&ctx)
}

/// For kernels without atomic fetch-and-add either (before 5.12).
#[btf_tracepoint(function = "sys_exit")]
#[inline(always)]
pub fn sys_exit_noatomic(ctx: BtfTracePointContext) -> i32 {
    exit::<false, false>(&ctx)
}
