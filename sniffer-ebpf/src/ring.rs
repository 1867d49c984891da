//! The ring buffer: when to wake the reader, how much room data may take, and the small
//! records (length-only data, process events).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
};
use sniffer_common::{COMM_LEN, DataHeader, ProcEvent, counters, kind};

use crate::maps::{EVENTS, count};

/// Bytes waiting in the ring buffer at which the reader is woken up, and again at each
/// multiple. Below it, records wait for the reader's own short poll: one wakeup per record (the
/// default) costs a context switch per syscall traced, which a busy server pays for.
const WAKEUP_SHIFT: u32 = 18;

/// Wakeup flag for a record of `size` bytes.
#[inline(always)]
pub fn wakeup(size: u64) -> u64 {
    wakeup_at(EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)), size)
}

/// Wakeup flag for a record of `size` bytes when `used` bytes wait in the ring: forced when the
/// record crosses a multiple of 256 KiB, not for every record past it. A woken reader takes a
/// while to run on a busy host, and a forced wakeup is an interrupt on the writer's CPU (a
/// self-IPI, a VM exit in a guest) for each record meanwhile.
#[inline(always)]
fn wakeup_at(used: u64, size: u64) -> u64 {
    if (used + size) >> WAKEUP_SHIFT != used >> WAKEUP_SHIFT {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Whether a data event of `size` bytes may use the ring buffer, and if so with which wakeup
/// flag (one query of what waits serves both): data stops at `limit` bytes waiting (the ring
/// less its last eighth, see [`data_limit`]), which stays free for socket and process events,
/// few and small but carrying what makes the data readable (addresses, final stream lengths,
/// who is who).
#[inline(always)]
pub fn room_for_data(size: u64, limit: u64) -> Option<u64> {
    let used = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    (used + size <= limit).then(|| wakeup_at(used, size))
}

/// The bytes data records may fill of a ring of `ring_bytes` (userspace's word, from the
/// configuration; asked of the ring when 0).
#[inline(always)]
pub fn data_limit(ring_bytes: u32) -> u64 {
    let total = if ring_bytes == 0 {
        EVENTS.query(u64::from(BPF_RB_RING_SIZE))
    } else {
        u64::from(ring_bytes)
    };
    total - (total >> 3)
}

/// A length-only event: `len` bytes at `hdr.off` that were counted but not copied.
#[inline(always)]
pub fn emit_uncopied(mut hdr: DataHeader, len: u64) {
    hdr.len = len;
    hdr.cap = 0;
    if EVENTS
        .output::<DataHeader>(&hdr, wakeup(size_of::<DataHeader>() as u64))
        .is_err()
    {
        count(counters::DATA_EVENTS_LOST, 1);
        count(counters::DATA_BYTES_LOST, len);
    }
}

/// A process event (fork, exec, exit) of the current task's name.
#[inline(always)]
pub fn emit_proc(ev_kind: u32, pid: u32, ppid: u32, exit_code: i32) {
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
        count(counters::CONTROL_EVENTS_LOST, 1);
        return;
    };
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    entry.write(ProcEvent {
        kind: ev_kind,
        pid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ppid,
        exit_code,
        comm,
    });
    // A process that joined (fork, exec) or mapped code gets its TLS probes from userspace:
    // wake it at once, before the process's first TLS calls; an exit can wait for the poll.
    let flags = if ev_kind == kind::PROC_EXIT {
        wakeup(size_of::<ProcEvent>() as u64)
    } else {
        u64::from(BPF_RB_FORCE_WAKEUP)
    };
    entry.submit(flags);
}
