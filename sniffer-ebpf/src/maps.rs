//! Every map of the object (named as `sniffer_common::maps` names them) and the small accessors
//! all programs share: the configuration, the counters, whether the current process is traced.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use sniffer_common::{
    COMM_LEN, Config, CopyCtl, SockKey, SockState, SslKey, StreamKey, Target, TlsArgs,
    config_flags, connectors::Connector, counters, entered, maps, no_socket,
};

use crate::{
    atomic::atomic_add,
    copy::{Copy, Scratch},
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(maps::EVENTS_DEFAULT_BYTES, 0);
#[map]
pub static TARGETS: HashMap<u32, Target> = HashMap::with_max_entries(maps::TARGETS_CAPACITY, 0);
#[map]
pub static COMMS: HashMap<[u8; COMM_LEN], u32> = HashMap::with_max_entries(maps::COMMS_CAPACITY, 0);
/// cgroup v2 id -> 1: a process in one of these cgroups becomes a target at its first traced
/// syscall, wherever it came from (a unit restarted, a worker spawned, a process moved in).
#[map]
pub static CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(maps::CGROUPS_CAPACITY, 0);
#[map]
pub static SOCKETS: HashMap<SockKey, SockState> =
    HashMap::with_max_entries(maps::SOCKETS_CAPACITY, 0);
/// sk -> role: a socket keeps the role it got at connect/accept when another process uses it
/// (a forking server accepts in the parent and serves in the child). The value is the role in
/// the low 32 bits and the socket's inode number in the high ones: a closed socket's entry stays
/// (LRU bounds it), and a new socket the kernel puts at the same address must not take its
/// role. See [`crate::sockets::sk_role`].
#[map]
pub static SK_ROLES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(maps::SOCKETS_CAPACITY, 0);
#[map]
pub static COPY_CTL: HashMap<StreamKey, CopyCtl> =
    HashMap::with_max_entries(maps::COPY_CTL_CAPACITY, 0);
/// The data syscalls in progress, a slot per thread (see `sniffer_common::entered`).
#[map]
pub static ENTERED: Array<u64> = Array::with_max_entries(maps::ENTERED_CAPACITY, 0);
/// tid -> socket, for a thread whose `ENTERED` slot another thread holds. A plain hash (an
/// LRU's bookkeeping costs every lookup): an entry whose exit never comes goes when its thread
/// exits (`sched_process_exit`).
#[map]
pub static PENDING: HashMap<u32, u64> = HashMap::with_max_entries(maps::PENDING_CAPACITY, 0);
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
/// The chunk loop's state lives in a map, not on the stack: the verifier tracks stack values
/// exactly and would explore every bpf_loop iteration as a new state (1M-instruction limit);
/// map memory it treats as unknown, so one pass over the callback suffices.
#[map]
pub static COPY_STATE: PerCpuArray<Copy> = PerCpuArray::with_max_entries(1, 0);
/// Slot 0: `copy_more`, the tail-called copy loop of kernels without bpf_loop.
#[map]
pub static COPY_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// Slot 0: `copy_more_tls`, the same for the TLS return probe.
#[map]
pub static COPY_TAIL_TLS: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// tid -> the TLS library call in progress. A plain hash, as `PENDING` (an LRU's bookkeeping
/// costs every call): a call whose return never comes goes when its thread exits.
#[map]
pub static TLS_CALLS: HashMap<u32, TlsArgs> =
    HashMap::with_max_entries(maps::TLS_CALLS_CAPACITY, 0);
/// (`SSL *`, tgid) -> fd of its socket. LRU: SSL objects are freed without a call we see.
#[map]
pub static SSL_FDS: LruHashMap<SslKey, i32> =
    LruHashMap::with_max_entries(maps::SSL_FDS_CAPACITY, 0);
/// Who connected, by a hash of the connection (see [`crate::callers`]).
#[map]
pub static CONNECTORS: Array<Connector> = Array::with_max_entries(maps::CONNECTORS_CAPACITY, 0);
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn count(idx: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, valid for the program's run.
        unsafe { *c += n };
    }
}

/// The configuration, once userspace wrote it.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let c = CONFIG.get(0)?;
    (c.flags & config_flags::READY != 0).then_some(c)
}

/// A new target's entry, made at kernel time now.
#[inline(always)]
pub fn new_target(how: u32) -> Target {
    Target {
        how,
        _pad: 0,
        // SAFETY: no preconditions.
        replaced_ns: unsafe { bpf_ktime_get_ns() },
        fds_gen: 0,
        fds_busy: 0,
        no_socket: [0; no_socket::NOTES],
    }
}

/// Notes in target `t` that its fds may hold other files now (see `Target::replaced_ns`). The
/// later time wins when two threads race here.
#[inline(always)]
pub fn fds_replaced(t: *mut Target) {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: map value pointer, valid during this program run; aligned u64 loads and stores.
    unsafe {
        if (*t).replaced_ns < now {
            (*t).replaced_ns = now;
        }
        // The notes of fds holding no socket go too (an exec's close-on-exec fds).
        atomic_add(&raw mut (*t).fds_gen, 1);
    }
}

/// The enter of a syscall of target `t` that may free an fd's number or put another file
/// behind one (close, dup2, dup3, close_range): the notes of fds holding no socket are neither
/// made nor trusted until its exit ([`fds_changed`]), and those made before it are void. The
/// thread's slot remembers it for the exit, which then knows the count went up.
#[inline(always)]
pub fn fds_changing(t: *mut Target, tid: u32) {
    // SAFETY: map value pointer, valid during this program run; aligned u64s. Busy first, then
    // the generation (`NoSocket::look` reads them the other way round).
    unsafe {
        atomic_add(&raw mut (*t).fds_busy, 1);
        atomic_add(&raw mut (*t).fds_gen, 1);
    }
    enter_call(tid, 0);
}

/// The exit of a syscall [`fds_changing`] saw enter (this thread's slot, or the hash, says so):
/// what it did is done, the notes made during it are void.
///
/// Not inlined: the exit program's frame, stacked with the copy loop's, is at 6.1's 512-byte
/// limit (see `callers::connector`).
#[inline(never)]
pub fn fds_changed(t: *mut Target, tid: u32) {
    if take_call(tid).is_none() && take_pending(tid).is_none() {
        // Its enter was not seen (begun before the process became a target): the count never
        // went up for it.
        return;
    }
    // SAFETY: as in `fds_changing`.
    unsafe {
        atomic_add(&raw mut (*t).fds_busy, u64::MAX);
        atomic_add(&raw mut (*t).fds_gen, 1);
    }
}

/// Whether an fd of a target holds no socket, by the notes ([`Target::no_socket`]): looked
/// at before the fd table is walked, noted after a walk found no socket.
pub struct NoSocket {
    t: *mut Target,
    fd: i32,
    /// The note that would say so now; 0: no note may be made or trusted now.
    note: u64,
}

impl NoSocket {
    /// Reads the process's state before the walk: the generation, then whether a syscall that
    /// changes fds is under way.
    #[inline(always)]
    pub fn look(t: *mut Target, fd: i32) -> Self {
        // SAFETY: map value pointer, valid during this program run; aligned u64 loads.
        let (fds_gen, busy) = unsafe {
            let g = (&raw const (*t).fds_gen).read_volatile();
            (g, (&raw const (*t).fds_busy).read_volatile())
        };
        let note = if busy == 0 && (0..no_socket::MAX_FD).contains(&fd) {
            no_socket::note(fd, fds_gen)
        } else {
            0
        };
        Self { t, fd, note }
    }

    /// Whether the fd was found holding no socket with nothing changed since.
    #[inline(always)]
    pub fn holds_none(&self) -> bool {
        // SAFETY: as in `look`; the index is below NOTES.
        self.note != 0
            && unsafe { (&raw const (*self.t).no_socket[self.slot()]).read_volatile() } == self.note
    }

    /// The walk found no socket: noted with the generation read before it. A syscall that
    /// changed fds since has moved the generation, and the note never matches.
    #[inline(always)]
    pub fn remember(&self) {
        if self.note != 0 {
            // SAFETY: as in `holds_none`; an aligned u64 store is whole.
            unsafe { (&raw mut (*self.t).no_socket[self.slot()]).write_volatile(self.note) };
        }
    }

    #[inline(always)]
    fn slot(&self) -> usize {
        self.fd as usize & (no_socket::NOTES - 1)
    }
}

/// The current process if it is a target: (tgid, tid). A process that is not one yet becomes
/// one here when its cgroup is in CGROUPS (only looked up when userspace said CGROUPS is used,
/// so untraced processes pay nothing for it otherwise).
#[inline(always)]
pub fn current_target() -> Option<(u32, u32)> {
    current_target_entry().map(|(tgid, tid, _)| (tgid, tid))
}

/// [`current_target`], with its entry in the targets map.
#[inline(always)]
pub fn current_target_entry() -> Option<(u32, u32, *mut Target)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if let Some(t) = TARGETS.get_ptr_mut(tgid) {
        return Some((tgid, id as u32, t));
    }
    let cfg = config()?;
    if cfg.flags & config_flags::CGROUPS == 0 {
        return None;
    }
    // SAFETY: no preconditions (the task's cgroup on the v2 hierarchy, since 4.18).
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: presence test only.
    unsafe { CGROUPS.get(cgroup) }?;
    // Never over an entry another thread of the process made meanwhile (its count of fd
    // changes under way, `Target::fds_busy`, would be lost).
    let _ = TARGETS.insert(tgid, new_target(maps::TARGET_BY_CGROUP), BPF_NOEXIST as u64);
    let Some(t) = TARGETS.get_ptr_mut(tgid) else {
        count(counters::TARGETS_FULL, 1);
        crate::diag::map_full(maps::TARGETS);
        return None;
    };
    Some((tgid, id as u32, t))
}

/// Whether the process of `pid_tgid` (as `bpf_get_current_pid_tgid` gives it) is a target;
/// unlike [`current_target`], never makes it one.
#[inline(always)]
pub fn is_target(pid_tgid: u64) -> bool {
    // SAFETY: presence test only.
    unsafe { TARGETS.get((pid_tgid >> 32) as u32) }.is_some()
}

/// Records the enter of thread `tid`'s data syscall on socket `sk` (0: not a socket sniffer
/// reads), for its exit: the thread's slot when free, else the hash.
#[inline(always)]
pub fn enter_call(tid: u32, sk: u64) {
    let Some(slot) = ENTERED.get_ptr_mut(entered::slot(tid)) else {
        return;
    };
    // SAFETY: array value pointer, valid during this program run; an aligned u64, so a load or
    // store of it is whole.
    unsafe {
        if entered::free_for(slot.read_volatile(), tid) {
            slot.write_volatile(entered::pack(tid, sk));
            return;
        }
    }
    if PENDING.insert(tid, sk, 0).is_err() {
        count(counters::PENDING_FULL, 1);
        crate::diag::map_full(maps::PENDING);
    }
}

/// Takes back what the enter of thread `tid`'s data syscall recorded from its slot: the fold
/// of its socket (0: not one sniffer reads). `None`: the slot is not this thread's.
#[inline(always)]
pub fn take_call(tid: u32) -> Option<u64> {
    let slot = ENTERED.get_ptr_mut(entered::slot(tid))?;
    // SAFETY: as in `enter_call`.
    unsafe {
        let fold = entered::fold_of(slot.read_volatile(), tid)?;
        slot.write_volatile(0);
        Some(fold)
    }
}

/// Takes what the enter of this thread's data syscall recorded in the hash, as a fold.
#[inline(always)]
pub fn take_pending(tid: u32) -> Option<u64> {
    // SAFETY: copied out before removal.
    let sk = unsafe { PENDING.get(tid) }.copied()?;
    let _ = PENDING.remove(tid);
    Some(entered::fold(sk))
}

/// Forgets thread `tid`'s call in progress (the thread exited).
#[inline(always)]
pub fn forget_call(tid: u32) {
    let _ = take_call(tid);
    let _ = PENDING.remove(tid);
}
