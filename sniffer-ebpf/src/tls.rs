//! TLS plaintext from the library: uprobes on OpenSSL's SSL_read/SSL_write (and their `_ex`
//! forms, OpenSSL 1.1.1 and 3; or on the inner function both forms call, which userspace
//! chooses when the kernel can emulate its first instruction), and on the handshake functions.
//!
//! An entry probe keeps the call's arguments per thread (`TLS_CALLS`). While the call runs,
//! the socket syscalls it makes tell which socket its `SSL *` uses (`syscalls::tls_socket`
//! fills `SSL_FDS` and marks the socket TLS, so its ciphertext is only counted). The return
//! probe then sends the plaintext as `TLS_DATA` records of that socket, at offsets of its own
//! plaintext stream, through the same copy loop and bounded copy as syscall data.
//!
//! Return probes are shared by several functions: `ssl_return` for the reads and writes,
//! `ssl_handshake_return` for the handshakes, which may run inside a read or write (and an
//! SSL_connect runs SSL_do_handshake): a handshake's probes never take a read's or write's
//! call away.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sniffer_common::{
    DataHeader, SockKey, SslKey, Syscall, TlsArgs, counters, dir, kind, maps, sock_flags, tls_call,
};

use crate::{
    atomic::{fetch_add, read_then_add},
    copy,
    maps::{COPY_TAIL_TLS, SOCKETS, SSL_FDS, TLS_CALLS, config, count, current_target},
};

/// Entry of a TLS call of a traced process: keep its arguments. `ex`: the `_ex` form, whose
/// fourth argument receives the byte count.
#[inline(always)]
fn entry(ctx: &ProbeContext, call: u32, ex: bool) -> u32 {
    let Some((_, tid)) = current_target() else {
        return 0;
    };
    let args = TlsArgs {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        out: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        call,
        _pad: 0,
    };
    // A handshake inside a read or write keeps the read's or write's entry.
    let flags = if call == tls_call::HANDSHAKE {
        u64::from(BPF_NOEXIST)
    } else {
        0
    };
    // A handshake inside a read or write finds the key there: that is no loss.
    if TLS_CALLS.insert(tid, args, flags).is_err() && call != tls_call::HANDSHAKE {
        count(counters::PENDING_FULL, 1);
        crate::diag::map_full(maps::TLS_CALLS);
    }
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    entry(&ctx, tls_call::WRITE, false)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    entry(&ctx, tls_call::WRITE, true)
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    entry(&ctx, tls_call::READ, false)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    entry(&ctx, tls_call::READ, true)
}

#[uprobe]
pub fn ssl_handshake(ctx: ProbeContext) -> u32 {
    entry(&ctx, tls_call::HANDSHAKE, false)
}

/// Return of a handshake function: forget its entry, not a read's or write's around it.
#[uretprobe]
pub fn ssl_handshake_return(_ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out of the map value.
    if let Some(call) = unsafe { TLS_CALLS.get(tid) }
        && call.call == tls_call::HANDSHAKE
    {
        let _ = TLS_CALLS.remove(tid);
    }
    0
}

/// Return of a read or write: send the plaintext it moved.
/// `BPF_LOOP`: copy with bpf_loop (5.17); `FETCH`: atomic fetch-and-add (5.12).
#[inline(always)]
fn ret<const BPF_LOOP: bool, const FETCH: bool>(ctx: &RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: copied out of the map value.
    let Some(call) = (unsafe { TLS_CALLS.get(tid) }).copied() else {
        return 0;
    };
    if call.call == tls_call::HANDSHAKE {
        return 0;
    }
    let _ = TLS_CALLS.remove(tid);
    // All return an int: the low 32 bits of the register, sign and all.
    let rc = i64::from(ctx.ret::<u64>() as u32 as i32);
    let n = if call.out != 0 {
        // SSL_read_ex/SSL_write_ex (1 on success) and the inner function they share with
        // SSL_read/SSL_write (> 0 on success, probe::sites): the count in *out.
        if rc <= 0 {
            return 0;
        }
        // SAFETY: helper-checked user read.
        unsafe { bpf_probe_read_user(call.out as *const u64) }.unwrap_or(0)
    } else {
        // SSL_read/SSL_write: the count, or <= 0.
        if rc <= 0 {
            return 0;
        }
        rc as u64
    };
    if n == 0 {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let key = SslKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    // SAFETY: copied out of the map value.
    let Some(fd) = (unsafe { SSL_FDS.get(key) }).copied() else {
        count(counters::TLS_NO_SOCKET, 1);
        return 0;
    };
    let Some(st) = SOCKETS.get_ptr_mut(SockKey { tgid, fd }) else {
        count(counters::TLS_NO_SOCKET, 1);
        return 0;
    };
    let (d, sc) = if call.call == tls_call::READ {
        (dir::RECV, Syscall::SslRead)
    } else {
        (dir::SEND, Syscall::SslWrite)
    };
    // SAFETY: map value pointer; the offset counter is shared by threads of the process.
    let (sk, off) = unsafe {
        (*st).flags |= sock_flags::TLS;
        let counter = if d == dir::SEND {
            &raw mut (*st).tls_send_off
        } else {
            &raw mut (*st).tls_recv_off
        };
        let off = if FETCH {
            fetch_add(counter, n)
        } else {
            read_then_add(counter, n)
        };
        ((*st).sk, off)
    };
    let hdr = DataHeader {
        kind: kind::TLS_DATA,
        dir: d,
        // A write's bytes left between its entry and return: its entry time is when the peer
        // could have them first. A read had them at its return.
        ts_ns: if d == dir::SEND {
            call.ts_ns
        } else {
            // SAFETY: no preconditions.
            unsafe { bpf_ktime_get_ns() }
        },
        tgid,
        tid,
        fd,
        syscall: sc as u32,
        sk,
        off,
        len: 0,
        syscall_len: n,
        cap: 0,
        flags: 0,
    };
    let Some(state) = copy::prepare(cfg, hdr, copy::control(&hdr)) else {
        return 0;
    };
    // SAFETY: per-CPU map value, used by this program run only.
    unsafe {
        (*state).base = call.buf;
        (*state).seg_left = n;
    }
    copy::run::<BPF_LOOP, _>(ctx, &COPY_TAIL_TLS, state);
    0
}

/// The full return probe: bpf_loop and atomic fetch-and-add.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    ret::<true, true>(&ctx)
}

/// For kernels without bpf_loop (before 5.17): the copy continues in tail calls.
#[uretprobe]
pub fn ssl_return_noloop(ctx: RetProbeContext) -> u32 {
    ret::<false, true>(&ctx)
}

/// For kernels without atomic fetch-and-add either (before 5.12).
#[uretprobe]
pub fn ssl_return_noatomic(ctx: RetProbeContext) -> u32 {
    ret::<false, false>(&ctx)
}
