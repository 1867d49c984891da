//! Following processes: a target's children become targets, a process exec'ing a name given
//! with `--comm` becomes one, and a target's exit is reported and forgotten.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use sniffer_common::{COMM_LEN, OFFSET_ABSENT, counters, kind, maps};

use crate::{
    diag,
    maps::{
        COMMS, TARGETS, TLS_CALLS, config, count, current_target, fds_replaced, forget_call,
        new_target,
    },
    ring::emit_proc,
    sockets::kread,
};

#[inline(always)]
fn add_target(tgid: u32, how: u32) -> bool {
    // Never over an entry made meanwhile (see `maps::current_target_entry`).
    if TARGETS
        .insert(tgid, new_target(how), BPF_NOEXIST as u64)
        .is_err()
        // SAFETY: presence test only.
        && unsafe { TARGETS.get(tgid) }.is_none()
    {
        count(counters::TARGETS_FULL, 1);
        diag::map_full(maps::TARGETS);
        return false;
    }
    true
}

/// A target's child process becomes a target (threads are covered by their tgid already).
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let Some((parent, _)) = current_target() else {
        return 0;
    };
    let child: u64 = ctx.arg::<*const c_void>(1) as u64;
    let (Some(pid), Some(tgid)) = (
        kread::<i32>(child, cfg.kernel.task_pid),
        kread::<i32>(child, cfg.kernel.task_tgid),
    ) else {
        return 0;
    };
    if pid != tgid {
        return 0;
    }
    if add_target(tgid as u32, 4) {
        emit_proc(kind::PROC_FORK, tgid as u32, parent, 0);
    }
    0
}

/// A target that execs is reported (its name changes); any process whose new name is in COMMS
/// becomes a target.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    // SAFETY: read of the tracepoint record at an offset from its tracefs format.
    let old = unsafe { ctx.read_at::<i32>(cfg.tp.exec_old_pid as usize) }.unwrap_or(0) as u32;
    // After exec the caller is the thread group leader: current tgid is the process.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(t) = TARGETS.get_ptr_mut(tgid) {
        // The exec closed the close-on-exec fds: what the new program opens may take their
        // numbers, so every socket of the process gets its fd looked at again.
        fds_replaced(t);
    } else {
        let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        // SAFETY: presence test only.
        if unsafe { COMMS.get(comm) }.is_none() || !add_target(tgid, 2) {
            return 0;
        }
    }
    emit_proc(kind::PROC_EXEC, tgid, old, 0);
    0
}

/// The last thread of a target exited: forget it.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let group_dead = if cfg.tp.exit_group_dead == OFFSET_ABSENT {
        tgid == tid
    } else {
        // SAFETY: read of the tracepoint record at an offset from its tracefs format.
        unsafe { ctx.read_at::<u8>(cfg.tp.exit_group_dead as usize) }.unwrap_or(0) != 0
    };
    forget_call(tid);
    let _ = TLS_CALLS.remove(tid);
    if !group_dead {
        return 0;
    }
    // SAFETY: presence test only.
    if unsafe { TARGETS.get(tgid) }.is_none() {
        return 0;
    }
    let _ = TARGETS.remove(tgid);
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let code = kread::<i32>(task, cfg.kernel.task_exit_code).unwrap_or(0);
    emit_proc(kind::PROC_EXIT, tgid, 0, code);
    0
}
