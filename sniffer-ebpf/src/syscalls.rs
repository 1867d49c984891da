//! The socket syscall tracepoints: enter programs save the arguments of traced processes'
//! calls on sockets, exit programs advance the stream offsets and copy what moved;
//! connect/accept give a socket its role and addresses, close ends it.
//!
//! Each data exit program comes in three variants, for the kernel features they need (see
//! `sniffer_common::variant`); userspace probes the kernel and loads one of them.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use sniffer_common::{
    Config, DataHeader, MAX_IOVECS, Pending, SockKey, StreamKey, Syscall, dir, kind, role,
};

use crate::{
    atomic::{fetch_add, read_then_add},
    copy::{self, Copy},
    maps::{COPY_CTL, COPY_STATE, SOCKETS, config, current_target, save_pending, take_pending},
    sockets::{emit_sock, track_socket},
};

const MSG_PEEK: u64 = 2;
const EINPROGRESS: i64 = 115;

/// A u64 of user memory, 0 when unreadable.
#[inline(always)]
fn user_u64(addr: u64) -> u64 {
    // SAFETY: helper-checked user read.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn arg(ctx: &TracePointContext, cfg: &Config, n: u32) -> u64 {
    // SAFETY: read of the tracepoint record at an offset from its tracefs format.
    unsafe { ctx.read_at::<u64>((cfg.tp.sys_enter_args + 8 * n) as usize) }.unwrap_or(0)
}

// ---- enter: remember the arguments ---------------------------------------------------------

/// Enter of a data syscall: the socket is argument 0, `buf` argument 1, `count` argument 2
/// (sendfile has no user buffer); `flags_arg` is the index of a recv flags argument to check
/// for MSG_PEEK (peeked bytes are read again later).
#[inline(always)]
fn enter_data(ctx: &TracePointContext, sc: Syscall, flags_arg: Option<u32>) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    if let Some(i) = flags_arg
        && arg(ctx, cfg, i) & MSG_PEEK != 0
    {
        return 0;
    }
    let fd = arg(ctx, cfg, 0) as i32;
    let Some(sk) = track_socket(cfg, tgid, tid, fd, None) else {
        return 0;
    };
    let (buf, count) = if sc == Syscall::Sendfile {
        (0, 0)
    } else {
        (arg(ctx, cfg, 1), arg(ctx, cfg, 2))
    };
    save_pending(
        tid,
        &Pending {
            sk,
            buf,
            count,
            fd,
            syscall: sc as u32,
        },
    );
    0
}

/// Enter of connect/accept: only the fd (the listening fd for accept) matters.
#[inline(always)]
fn enter_sock(ctx: &TracePointContext, sc: Syscall) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some((_, tid)) = current_target() else {
        return 0;
    };
    save_pending(
        tid,
        &Pending {
            sk: 0,
            buf: 0,
            count: 0,
            fd: arg(ctx, cfg, 0) as i32,
            syscall: sc as u32,
        },
    );
    0
}

macro_rules! enter_programs {
    ($($name:ident => $sc:expr, $flags:expr;)*) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            enter_data(&ctx, $sc, $flags)
        }
    )*};
}

enter_programs! {
    sys_enter_read => Syscall::Read, None;
    sys_enter_readv => Syscall::Readv, None;
    sys_enter_recvfrom => Syscall::Recvfrom, Some(3);
    sys_enter_recvmsg => Syscall::Recvmsg, Some(2);
    sys_enter_write => Syscall::Write, None;
    sys_enter_writev => Syscall::Writev, None;
    sys_enter_sendto => Syscall::Sendto, None;
    sys_enter_sendmsg => Syscall::Sendmsg, None;
}

/// sendfile64(out_fd, in_fd, offset, count): the socket is argument 0, there is no user buffer.
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    enter_data(&ctx, Syscall::Sendfile, None)
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    enter_sock(&ctx, Syscall::Connect)
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter_sock(&ctx, Syscall::Accept)
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_sock(&ctx, Syscall::Accept)
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let key = SockKey {
        tgid,
        fd: arg(&ctx, cfg, 0) as i32,
    };
    // SAFETY: copied out before the entry is removed.
    if let Some(st) = unsafe { SOCKETS.get(key) } {
        let st = *st;
        // When the close event is lost the entry stays: its final offsets then reach userspace
        // when the fd is reused, the process exits, or the sniffer stops.
        if emit_sock(cfg, kind::SOCK_CLOSE, &key, &st, tid, false) {
            let _ = SOCKETS.remove(key);
        }
    }
    0
}

// ---- exit: copy what moved ----------------------------------------------------------------

/// What every syscall exit starts from: the config, (tgid, tid), the arguments its enter saved
/// (none: the enter was not ours), and the return value.
#[inline(always)]
fn exit_start(ctx: &TracePointContext) -> Option<(&'static Config, u32, u32, Pending, i64)> {
    let cfg = config()?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let p = take_pending(tid)?;
    // SAFETY: read of the tracepoint record at an offset from its tracefs format.
    let ret = unsafe { ctx.read_at::<i64>(cfg.tp.sys_exit_ret as usize) }.unwrap_or(-1);
    Some((cfg, tgid, tid, p, ret))
}

/// Exit of a data syscall: advance the socket's stream offset by the return value and send the
/// bytes as chunk events, then what was not copied as one length-only event.
/// `BPF_LOOP`: copy with bpf_loop (5.17); `FETCH`: atomic fetch-and-add (5.12).
#[inline(always)]
fn exit_data<const BPF_LOOP: bool, const FETCH: bool>(ctx: &TracePointContext) -> u32 {
    let Some((cfg, tgid, tid, p, ret)) = exit_start(ctx) else {
        return 0;
    };
    if ret <= 0 {
        return 0;
    }
    let ret = ret as u64;
    let Some(sc) = Syscall::from_u32(p.syscall) else {
        return 0;
    };
    let key = SockKey { tgid, fd: p.fd };
    let Some(st) = SOCKETS.get_ptr_mut(key) else {
        return 0;
    };
    let d = sc.dir();
    // SAFETY: map value pointer; the offset counter is shared by threads of the process.
    let off = unsafe {
        if (*st).sk != p.sk {
            return 0;
        }
        let counter = if d == dir::SEND {
            &raw mut (*st).send_off
        } else {
            &raw mut (*st).recv_off
        };
        if FETCH {
            fetch_add(counter, ret)
        } else {
            read_then_add(counter, ret)
        }
    };
    // What userspace wants copied of this stream; without word from it, a first window.
    let skey = StreamKey {
        tgid,
        fd: p.fd,
        dir: d,
        _pad: 0,
    };
    // SAFETY: copied out of the map value.
    let (skip_at, skip_to, stop_at) = match unsafe { COPY_CTL.get(skey) } {
        Some(ctl) if ctl.sk == p.sk => (ctl.skip_from, ctl.skip_until, ctl.credit_until),
        _ if cfg.initial_credit_kib == 0 => (u64::MAX, u64::MAX, u64::MAX),
        _ => (u64::MAX, u64::MAX, u64::from(cfg.initial_credit_kib) << 10),
    };
    let Some(state) = COPY_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU map value, used by this program run only.
    let c = unsafe { &mut *state };
    *c = Copy {
        hdr: DataHeader {
            kind: kind::DATA,
            dir: d,
            // SAFETY: no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid,
            tid,
            fd: p.fd,
            syscall: p.syscall,
            sk: p.sk,
            off,
            len: 0,
            syscall_len: ret,
            cap: 0,
            _pad: 0,
        },
        base: 0,
        seg_left: 0,
        iov: 0,
        iov_left: 0,
        remaining: ret,
        chunks_left: u64::from(cfg.max_chunks_per_syscall),
        skip_at,
        skip_to,
        stop_at,
    };
    match sc {
        Syscall::Read | Syscall::Write | Syscall::Recvfrom | Syscall::Sendto => {
            c.base = p.buf;
            c.seg_left = ret;
        }
        Syscall::Readv | Syscall::Writev => {
            c.iov = p.buf;
            c.iov_left = if p.count < MAX_IOVECS {
                p.count
            } else {
                MAX_IOVECS
            };
        }
        Syscall::Recvmsg | Syscall::Sendmsg => {
            // struct msghdr { name; namelen; iov @16; iovlen @24; ... } (user ABI, 64-bit)
            let iov = user_u64(p.buf + 16);
            let n = user_u64(p.buf + 24);
            c.iov = iov;
            c.iov_left = if n < MAX_IOVECS { n } else { MAX_IOVECS };
        }
        // sendfile: bytes come from a file, not user memory; length only.
        _ => c.chunks_left = 0,
    }
    copy::run::<BPF_LOOP>(ctx, state);
    0
}

/// Three programs per data exit tracepoint: the full one (bpf_loop and atomic fetch-and-add),
/// `_noloop` (bounded loop) and `_noatomic` (bounded loop, read then add).
macro_rules! exit_programs {
    ($($full:ident, $noloop:ident, $noatomic:ident;)*) => {$(
        #[tracepoint]
        pub fn $full(ctx: TracePointContext) -> u32 {
            exit_data::<true, true>(&ctx)
        }
        #[tracepoint]
        pub fn $noloop(ctx: TracePointContext) -> u32 {
            exit_data::<false, true>(&ctx)
        }
        #[tracepoint]
        pub fn $noatomic(ctx: TracePointContext) -> u32 {
            exit_data::<false, false>(&ctx)
        }
    )*};
}

exit_programs! {
    sys_exit_read, sys_exit_read_noloop, sys_exit_read_noatomic;
    sys_exit_readv, sys_exit_readv_noloop, sys_exit_readv_noatomic;
    sys_exit_recvfrom, sys_exit_recvfrom_noloop, sys_exit_recvfrom_noatomic;
    sys_exit_recvmsg, sys_exit_recvmsg_noloop, sys_exit_recvmsg_noatomic;
    sys_exit_write, sys_exit_write_noloop, sys_exit_write_noatomic;
    sys_exit_writev, sys_exit_writev_noloop, sys_exit_writev_noatomic;
    sys_exit_sendto, sys_exit_sendto_noloop, sys_exit_sendto_noatomic;
    sys_exit_sendmsg, sys_exit_sendmsg_noloop, sys_exit_sendmsg_noatomic;
    sys_exit_sendfile64, sys_exit_sendfile64_noloop, sys_exit_sendfile64_noatomic;
}

/// Exit of connect (0 or -EINPROGRESS: the socket's addresses are set) and accept (the new fd).
#[inline(always)]
fn exit_sock(ctx: &TracePointContext) -> u32 {
    let Some((cfg, tgid, tid, p, ret)) = exit_start(ctx) else {
        return 0;
    };
    match Syscall::from_u32(p.syscall) {
        Some(Syscall::Connect) if ret == 0 || ret == -EINPROGRESS => {
            track_socket(cfg, tgid, tid, p.fd, Some(role::CLIENT));
        }
        Some(Syscall::Accept) if ret >= 0 => {
            track_socket(cfg, tgid, tid, ret as i32, Some(role::SERVER));
        }
        _ => {}
    }
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    exit_sock(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    exit_sock(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_sock(&ctx)
}
