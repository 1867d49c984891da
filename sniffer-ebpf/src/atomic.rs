//! The per-socket stream offsets: add a syscall's byte count and learn where its bytes start.
//!
//! Kernels from 5.12 have BPF's atomic fetch-and-add (BPF_ATOMIC | BPF_ADD | BPF_FETCH, ISA
//! v3). Older ones only have the plain atomic add (BPF_XADD) and refuse any program holding the
//! fetching form, even unreachable: the `_noatomic` program variants read the counter first and
//! then add. Two threads moving bytes on one socket in one direction at the same instant could
//! then get overlapping offsets; HTTP/1.x peers never write one connection from two threads.

use core::arch::asm;

/// Adds `v` to `*p` and returns the value before.
///
/// # Safety
/// `p` must point at a u64 in a map value.
#[inline(always)]
pub unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let mut val = v;
    // The BPF target has no compare-and-swap, so core offers no `AtomicU64::fetch_add`, and the
    // intrinsic comes out of LLVM 22 as a plain atomic add whose "result" is the addend.
    // SAFETY: the caller guarantees `p`; the instruction reads and writes only `*p` and `val`.
    unsafe {
        asm!(
            "{val} = atomic_fetch_add((u64 *)({p} + 0), {val})",
            p = in(reg) p,
            val = inout(reg) val,
            options(nostack),
        );
    }
    val
}

/// Reads `*p`, then adds `v` to it atomically (no fetch): for kernels before 5.12.
///
/// # Safety
/// `p` must point at a u64 in a map value.
#[inline(always)]
pub unsafe fn read_then_add(p: *mut u64, v: u64) -> u64 {
    // SAFETY: the caller guarantees `p`.
    let before = unsafe { core::ptr::read_volatile(p) };
    // SAFETY: as above.
    unsafe { atomic_add(p, v) };
    before
}

/// Adds `v` to `*p` atomically, without the value before (BPF_XADD: every kernel with BPF).
///
/// # Safety
/// `p` must point at a u64 in a map value.
#[inline(always)]
pub unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller guarantees `p`; BPF_STX | BPF_XADD | BPF_DW with imm 0, known to every
    // kernel with BPF.
    unsafe {
        asm!(
            "lock *(u64 *)({p} + 0) += {val}",
            p = in(reg) p,
            val = in(reg) v,
            options(nostack),
        );
    }
}

/// Hides `v` from the optimiser, so that a bound checked after it stays in the program: the
/// verifier of some kernels (6.1) loses a bound LLVM proved earlier and then refuses a helper
/// call whose size argument it cannot bound.
#[inline(always)]
pub fn opaque(v: u64) -> u64 {
    let mut v = v;
    // A register move onto itself: LLVM must assume `v` changed. (An empty template would leave
    // two line-info records at one instruction, which the kernel refuses.)
    // SAFETY: moves a register onto itself.
    unsafe { asm!("{v} = {v}", v = inout(reg) v, options(nostack, nomem, preserves_flags)) };
    v
}
