//! Copying what a syscall moved: one ring buffer record per chunk of at most `CHUNK_SIZE`
//! bytes, walking a single buffer or an iovec array, leaving out what bounded copy skips, and
//! ending with one length-only record for what was not copied. Small iovecs that follow each
//! other go out in one record (a server's head and body in one `writev`: one record, not two),
//! up to `GATHER` bytes.
//!
//! Two loops drive the same step: `bpf_loop` (kernel 5.17 on, up to `MAX_LOOP_ITERATIONS`
//! chunks) and, on older kernels, tail calls: the `copy_more` program takes
//! `STEPS_PER_TAIL_CALL` steps and calls itself again, as many times as the kernel allows tail
//! calls in a row (32 or 33). A bounded loop would do on paper, but the verifier explores
//! every path of every unrolled step: 16 steps passed its million-instruction limit.

use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_loop, bpf_probe_read_user as raw_read_user, bpf_ringbuf_output},
    },
    macros::{btf_tracepoint, uretprobe},
    maps::ProgramArray,
    programs::{BtfTracePointContext, RetProbeContext},
};
use sniffer_common::{
    CHUNK_SIZE, Config, CopyCtl, DataHeader, HEAD_BYTES, MAX_LOOP_ITERATIONS, STEPS_PER_TAIL_CALL,
    StreamKey, copy_flags, counters,
};

use crate::{
    atomic::opaque,
    diag,
    maps::{COPY_CTL, COPY_STATE, COPY_TAIL, COPY_TAIL_TLS, EVENTS, SCRATCH, count},
    mem,
    ring::{data_limit, emit_uncopied, room_for_data},
};

/// Bytes of small iovecs gathered into one record at most: a piece that would take the record
/// past it goes into a record of its own. A power of two.
pub const GATHER: u64 = 2048;

/// A record being put together: the header, then the bytes. Room for `GATHER` bytes more than
/// a chunk, so that the verifier, which sees a gathered piece's place (below `GATHER`) and its
/// length (up to a chunk) apart, finds every write inside.
#[repr(C)]
pub struct Scratch {
    pub hdr: DataHeader,
    pub data: [u8; CHUNK_SIZE + GATHER as usize],
}

/// No word from userspace about a stream: `sk` 0 is no socket's.
const NO_CTL: CopyCtl = CopyCtl {
    sk: 0,
    credit_until: 0,
    skip_from: 0,
    skip_until: 0,
    flags: 0,
    _pad: 0,
};

/// What userspace said of the stream `hdr` belongs to (bounded copy, or set aside), when it
/// said something about this very socket; else [`NO_CTL`]. A plain struct, not an `Option`:
/// LLVM may read an `Option`'s payload on the `None` path (see `sockets::Found`).
#[inline(always)]
pub fn control(hdr: &DataHeader) -> CopyCtl {
    control_of(hdr.tgid, hdr.fd, hdr.dir, hdr.sk)
}

/// [`control`] of the stream of socket `sk`, fd `fd` of `tgid`, direction `dir`.
#[inline(always)]
pub fn control_of(tgid: u32, fd: i32, dir: u32, sk: u64) -> CopyCtl {
    let skey = StreamKey {
        tgid,
        fd,
        dir,
        _pad: 0,
    };
    // SAFETY: a map value's reference, valid during this program run.
    match unsafe { COPY_CTL.get(skey) } {
        // Field by field into registers: a copy of the struct would take a stack slot, and the
        // exit program's frame is near the verifier's limit with the copy loop's on top.
        Some(found) if found.sk == sk => CopyCtl {
            sk,
            credit_until: found.credit_until,
            skip_from: found.skip_from,
            skip_until: found.skip_until,
            flags: found.flags,
            _pad: 0,
        },
        _ => NO_CTL,
    }
}

/// Sets up the copy of `hdr.syscall_len` bytes of a stream starting at `hdr.off`, with what
/// userspace wants copied of that stream (`ctl`, bounded copy) or, without word from it, a
/// first window. The caller then says where the bytes are (`base`/`seg_left` or
/// `iov`/`iov_left`).
#[inline(always)]
pub fn prepare(cfg: &Config, hdr: DataHeader, ctl: CopyCtl) -> Option<*mut Copy> {
    let (skip_at, skip_to, mut stop_at, heads) = if ctl.sk != 0 {
        (
            ctl.skip_from,
            ctl.skip_until,
            ctl.credit_until,
            ctl.flags & copy_flags::HEADS != 0,
        )
    } else if cfg.initial_credit_kib == 0 {
        (u64::MAX, u64::MAX, u64::MAX, false)
    } else {
        (
            u64::MAX,
            u64::MAX,
            u64::from(cfg.initial_credit_kib) << 10,
            true,
        )
    };
    // Past the credit, a syscall's first bytes still (a head starts a write): a reader behind
    // loses bodies, not messages.
    if heads && stop_at < hdr.off + HEAD_BYTES {
        stop_at = hdr.off + HEAD_BYTES;
    }
    let state = COPY_STATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value, used by this program run only. Field by field: a struct
    // assignment would zero its zero fields with the byte-loop memset.
    unsafe {
        mem::copy(&raw mut (*state).hdr, &hdr);
        for f in [
            &raw mut (*state).base,
            &raw mut (*state).seg_left,
            &raw mut (*state).iov,
            &raw mut (*state).iov_left,
        ] {
            ptr::write_volatile(f, 0);
        }
        ptr::write_volatile(&raw mut (*state).remaining, hdr.syscall_len);
        ptr::write_volatile(
            &raw mut (*state).chunks_left,
            u64::from(cfg.max_chunks_per_syscall),
        );
        ptr::write_volatile(&raw mut (*state).skip_at, skip_at);
        ptr::write_volatile(&raw mut (*state).skip_to, skip_to);
        ptr::write_volatile(&raw mut (*state).stop_at, stop_at);
        ptr::write_volatile(&raw mut (*state).ring_limit, data_limit(cfg.ring_bytes));
        ptr::write_volatile(&raw mut (*state).fill, 0);
    }
    Some(state)
}

/// State of the chunk loop, in a per-CPU map (see `maps::COPY_STATE`).
#[repr(C)]
pub struct Copy {
    pub hdr: DataHeader,
    /// User address of the next byte of the current segment.
    pub base: u64,
    /// Bytes left in the current segment.
    pub seg_left: u64,
    /// User address of the next iovec (0: a single buffer).
    pub iov: u64,
    /// iovecs left after the current one.
    pub iov_left: u64,
    /// Bytes of the syscall not yet covered by an event.
    pub remaining: u64,
    /// Chunks still allowed for this syscall.
    pub chunks_left: u64,
    /// Stream offsets of the bounded copy: skip `[skip_at, skip_to)`, stop copying at `stop_at`.
    pub skip_at: u64,
    pub skip_to: u64,
    pub stop_at: u64,
    /// Bytes waiting in the ring past which data records are dropped (`ring::data_limit`).
    pub ring_limit: u64,
    /// Bytes gathered in `SCRATCH` and not yet sent: the record covers the stream from
    /// `hdr.off - fill`.
    pub fill: u64,
}

/// One step: move to the next iovec when the current segment is used up, then copy one piece
/// (at most a chunk) into the record being put together, sending it unless the next iovec's
/// bytes may join it (or send one length-only record for a skipped body). `false` when nothing
/// more is to be copied; what was gathered is sent by then.
#[inline(always)]
fn step(c: &mut Copy) -> bool {
    if c.remaining == 0 || c.chunks_left == 0 || c.hdr.off >= c.stop_at {
        // The rest goes as one length-only event (see `finish`).
        send(c);
        return false;
    }
    if c.seg_left == 0 {
        if c.iov == 0 || c.iov_left == 0 {
            send(c);
            return false;
        }
        // struct iovec { void *iov_base; size_t iov_len; } (user ABI)
        // SAFETY: helper-checked user read.
        let Ok(iov) = (unsafe { bpf_probe_read_user(c.iov as *const [u64; 2]) }) else {
            send(c);
            return false;
        };
        c.iov += 16;
        c.iov_left -= 1;
        c.base = iov[0];
        c.seg_left = if iov[1] < c.remaining {
            iov[1]
        } else {
            c.remaining
        };
        if c.seg_left == 0 {
            // An empty iovec: the next step takes the one after it.
            return true;
        }
    }
    let off = c.hdr.off;
    if off >= c.skip_at && off < c.skip_to {
        // A body beyond its preview: counted, not copied.
        send(c);
        let mut n = c.skip_to - off;
        if n > c.seg_left {
            n = c.seg_left;
        }
        emit_uncopied(c.hdr, n);
        advance(c, n);
        return true;
    }
    let mut n = c.seg_left;
    if n > CHUNK_SIZE as u64 {
        n = CHUNK_SIZE as u64;
    }
    if off < c.skip_at && c.skip_at - off < n {
        n = c.skip_at - off;
    }
    if c.stop_at - off < n {
        n = c.stop_at - off;
    }
    if c.fill > 0 && c.fill + n > GATHER {
        // Too big to join what was gathered: that goes first.
        send(c);
        if c.chunks_left == 0 {
            return true;
        }
    }
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // The bounds again, where the verifier sees them: some verifiers lose the ones above. What
    // was gathered is below GATHER (else it went out).
    let mut n = opaque(n);
    if n > CHUNK_SIZE as u64 {
        n = CHUNK_SIZE as u64;
    }
    let at = opaque(c.fill) & (GATHER - 1);
    // SAFETY: per-CPU scratch value, exclusively ours during this run; at + n is within data.
    let r = unsafe {
        raw_read_user(
            (*ev).data.as_mut_ptr().add(at as usize).cast(),
            n as u32,
            c.base as *const c_void,
        )
    };
    if r != 0 {
        count(counters::USER_READ_FAULTS, 1);
        diag::user_read_fault(c.hdr.tgid, c.hdr.fd, n);
        // What was gathered before it, then this piece by length only.
        send(c);
        emit_uncopied(c.hdr, n);
        advance(c, n);
        return true;
    }
    c.fill = at + n;
    advance(c, n);
    // Gather on while the next iovec's bytes may join: this segment done, another to come.
    let more = c.seg_left == 0 && c.iov != 0 && c.iov_left > 0 && c.remaining > 0;
    if !more || c.fill >= GATHER {
        send(c);
    }
    true
}

/// `n` bytes of the current segment are dealt with.
#[inline(always)]
fn advance(c: &mut Copy, n: u64) {
    c.hdr.off += n;
    c.base += n;
    c.seg_left -= n;
    c.remaining -= n;
}

/// Sends the record gathered in `SCRATCH` (nothing when empty): `fill` bytes of the stream
/// ending at `hdr.off`.
#[inline(always)]
fn send(c: &mut Copy) {
    let fill = c.fill;
    if fill == 0 {
        return;
    }
    c.fill = 0;
    c.chunks_left = c.chunks_left.saturating_sub(1);
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let mut len = opaque(fill);
    if len > CHUNK_SIZE as u64 {
        len = CHUNK_SIZE as u64;
    }
    // SAFETY: per-CPU scratch value, exclusively ours during this run; len <= CHUNK_SIZE.
    unsafe {
        mem::copy(&raw mut (*ev).hdr, &c.hdr);
        (*ev).hdr.off = c.hdr.off - len;
        (*ev).hdr.len = len;
        (*ev).hdr.cap = len as u32;
        let size = size_of::<DataHeader>() as u64 + len;
        let sent = match room_for_data(size, c.ring_limit) {
            Some(flags) => {
                bpf_ringbuf_output(
                    ptr::addr_of!(EVENTS).cast_mut().cast(),
                    ev.cast(),
                    size,
                    flags,
                ) >= 0
            }
            None => false,
        };
        if !sent {
            count(counters::DATA_EVENTS_LOST, 1);
            count(counters::DATA_BYTES_LOST, len);
            diag::data_lost(c.hdr.tgid, c.hdr.fd, len);
        }
    }
}

/// One bpf_loop iteration.
extern "C" fn loop_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(c) = COPY_STATE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value, used by this program run only.
    if step(unsafe { &mut *c }) { 0 } else { 1 }
}

/// Runs the copy set up in `COPY_STATE`, then sends what is left as one length-only record.
/// `BPF_LOOP`: with the bpf_loop helper (5.17); else through tail calls of the program in slot
/// 0 of `tail` (`copy_more`, or `copy_more_tls` for the TLS return probe).
#[inline(always)]
pub fn run<const BPF_LOOP: bool, C: EbpfContext>(ctx: &C, tail: &ProgramArray, state: *mut Copy) {
    if BPF_LOOP {
        // SAFETY: the callback finds its state in COPY_STATE.
        unsafe {
            bpf_loop(
                MAX_LOOP_ITERATIONS,
                loop_step as *mut c_void,
                ptr::null_mut(),
                0,
            );
        }
    } else {
        // SAFETY: slot 0 holds the copy loop (userspace puts it there); on success this never
        // returns, and the loop finishes the copy.
        unsafe { tail.tail_call(ctx, 0) };
    }
    finish(state);
}

/// Sends what the steps left of the syscall as one length-only record, from the bytes they
/// gathered and did not send (only when the loop's bound came first: then those go by length
/// too, which keeps the record's sending out of the exit program's frame, at 6.1's limit).
#[inline(always)]
fn finish(state: *mut Copy) {
    // The steps changed the state behind `state`: read it afresh.
    // SAFETY: per-CPU map value, used by this program run only.
    let (mut hdr, remaining, fill) = unsafe {
        (
            ptr::read_volatile(&raw const (*state).hdr),
            ptr::read_volatile(&raw const (*state).remaining),
            ptr::read_volatile(&raw const (*state).fill),
        )
    };
    let remaining = remaining + fill;
    hdr.off -= fill;
    if remaining > 0 {
        diag::copy_cut_short(hdr.tgid, hdr.fd, remaining);
        emit_uncopied(hdr, remaining);
    }
}

/// The copy loop of kernels without bpf_loop: a few steps, then this program again (a tail
/// call, which the kernel allows 32 or 33 times in a row), until the copy is done or the tail
/// calls run out; then the rest as length-only.
///
/// Loaded for `sys_exit` like the exit programs (a tail call only reaches a program of the
/// same type and hook), never attached.
#[btf_tracepoint(function = "sys_exit")]
pub fn copy_more(ctx: BtfTracePointContext) -> i32 {
    more(&ctx, &COPY_TAIL);
    0
}

/// `copy_more` for the TLS return probe (a uretprobe's tail call reaches a uretprobe).
#[uretprobe]
pub fn copy_more_tls(ctx: RetProbeContext) -> u32 {
    more(&ctx, &COPY_TAIL_TLS);
    0
}

#[inline(always)]
fn more<C: EbpfContext>(ctx: &C, tail: &ProgramArray) {
    let Some(state) = COPY_STATE.get_ptr_mut(0) else {
        return;
    };
    for _ in 0..STEPS_PER_TAIL_CALL {
        // SAFETY: per-CPU map value, used by this program run (and its tail calls) only.
        if !step(unsafe { &mut *state }) {
            finish(state);
            return;
        }
    }
    // SAFETY: as in `run`.
    unsafe { tail.tail_call(ctx, 0) };
    finish(state);
}
