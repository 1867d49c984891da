//! Kernel-side diagnostics, shown by `sniffer -vv` through aya-log.
//!
//! Userspace sets `AYA_LOG_LEVEL` in the object's read-only data before loading: below -vv it
//! is 0, the verifier sees every branch below as dead and removes it, so these cost nothing.
//! Each is about something the counters only count: which fd, how many bytes.

use aya_log_ebpf::debug;

/// A socket's `struct socket` or `struct sock` could not be read at the offsets from BTF.
#[inline(always)]
pub fn socket_unreadable(tgid: u32, fd: i32) {
    debug!(
        (),
        "pid {} fd {}: a socket whose kernel structs could not be read", tgid, fd
    );
}

/// A map had no room for a new entry.
#[inline(always)]
pub fn map_full(map: &str) {
    debug!((), "map {} is full", map);
}

/// User memory of a syscall's buffer could not be read (sent as length only).
#[inline(always)]
pub fn user_read_fault(tgid: u32, fd: i32, len: u64) {
    debug!(
        (),
        "pid {} fd {}: {} bytes of user memory could not be read", tgid, fd, len
    );
}

/// The ring buffer had no room for a data chunk.
#[inline(always)]
pub fn data_lost(tgid: u32, fd: i32, len: u64) {
    debug!(
        (),
        "pid {} fd {}: ring buffer full, {} bytes lost", tgid, fd, len
    );
}

/// A syscall's copy ended before its bytes did (per-syscall cap, bounded copy's window, or
/// the loop bound); the rest is counted, not copied.
#[inline(always)]
pub fn copy_cut_short(tgid: u32, fd: i32, remaining: u64) {
    debug!(
        (),
        "pid {} fd {}: {} bytes counted, not copied", tgid, fd, remaining
    );
}
