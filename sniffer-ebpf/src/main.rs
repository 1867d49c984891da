//! sniffer's kernel side.
//!
//! Syscall tracepoints on the socket send/recv family copy the plaintext bytes that target
//! processes move through stream sockets into one ring buffer; connect/accept/close and the
//! sched tracepoints keep the socket and process bookkeeping. Kernel struct members are read at
//! offsets userspace computed from BTF (rustc emits no CO-RE relocations), so one object runs on
//! any kernel whose BTF has the members.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core offers no `AtomicU64::fetch_add`, and the
// intrinsic comes out of LLVM 22 as a plain atomic add whose "result" is the addend: the fetch
// is written in assembly (see `fetch_add`).
#![feature(asm_experimental_arch)]

use core::{arch::asm, ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_loop, bpf_probe_read_kernel as raw_read_kernel,
            bpf_probe_read_user as raw_read_user, bpf_ringbuf_output,
        },
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use sniffer_common::{
    CHUNK_SIZE, COMM_LEN, Config, CopyCtl, DataEvent, DataHeader, KernelOffsets, MAX_IOVECS,
    MAX_LOOP_ITERATIONS, OFFSET_ABSENT, Pending, ProcEvent, SockAddr, SockEvent, SockKey,
    SockState, StreamKey, Syscall, UNIX_PATH_LEN, config_flags, counters, dir, family, kind, maps,
    role,
};

// Map statics are named as `sniffer_common::maps` names them.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(maps::EVENTS_DEFAULT_BYTES, 0);
#[map]
static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(maps::TARGETS_CAPACITY, 0);
#[map]
static COMMS: HashMap<[u8; COMM_LEN], u32> = HashMap::with_max_entries(maps::COMMS_CAPACITY, 0);
#[map]
static SOCKETS: HashMap<SockKey, SockState> = HashMap::with_max_entries(maps::SOCKETS_CAPACITY, 0);
// sk -> role: a socket keeps the role it got at connect/accept when another process uses it
// (a forking server accepts in the parent and serves in the child). LRU bounds it.
#[map]
static SK_ROLES: LruHashMap<u64, u32> = LruHashMap::with_max_entries(maps::SOCKETS_CAPACITY, 0);
#[map]
static COPY_CTL: HashMap<StreamKey, CopyCtl> =
    HashMap::with_max_entries(maps::COPY_CTL_CAPACITY, 0);
// LRU: an entry whose exit never comes (the thread died in the syscall) ages out.
#[map]
static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(maps::PENDING_CAPACITY, 0);
#[map]
static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);
// The chunk loop's state lives in a map, not on the stack: the verifier tracks stack values
// exactly and would explore every bpf_loop iteration as a new state (1M-instruction limit);
// map memory it treats as unknown, so one pass over the callback suffices.
#[map]
static COPY_STATE: PerCpuArray<Copy> = PerCpuArray::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const MSG_PEEK: u64 = 2;
const EINPROGRESS: i64 = 115;

/// Atomically adds `v` to `*p` and returns the value before (BPF_ATOMIC | BPF_ADD | BPF_FETCH,
/// BPF ISA v3, kernel 5.12+).
///
/// # Safety
/// `p` must point at a u64 in a map value.
#[inline(always)]
unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let mut val = v;
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

#[inline(always)]
fn count(idx: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, valid for the program's run.
        unsafe { *c += n };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    let c = CONFIG.get(0)?;
    (c.flags & config_flags::READY != 0).then_some(c)
}

/// The current process if it is a target: (tgid, tid).
#[inline(always)]
fn current_target() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    unsafe { TARGETS.get(tgid) }?;
    Some((tgid, id as u32))
}

/// Reads a `T` at `base + off` in kernel memory; `None` when the member is absent or unreadable.
#[inline(always)]
fn kread<T>(base: u64, off: u32) -> Option<T> {
    if off == OFFSET_ABSENT || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and returns an error on a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

/// A traced stream socket behind `fd` of the current task: (sk, family, type).
/// Walks task->files->fdt->fd[fd]->f_inode->i_mode and file->private_data->sk.
#[inline(always)]
fn fd_socket(k: &KernelOffsets, fd: i32, flags: u32) -> Option<(u64, u16, u16)> {
    if fd < 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kread(task, k.task_files)?;
    let fdt: u64 = kread(files, k.files_fdt)?;
    let max_fds: u32 = kread(fdt, k.fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array: u64 = kread(fdt, k.fdt_fd)?;
    let file: u64 = kread(fd_array + 8 * fd as u64, 0)?;
    let inode: u64 = kread(file, k.file_inode)?;
    let mode: u16 = kread(inode, k.inode_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = kread(file, k.file_private_data)?;
    let sock_type: i16 = kread(socket, k.socket_type)?;
    let sk: u64 = kread(socket, k.socket_sk)?;
    let fam: u16 = kread(sk, k.skc_family)?;
    let wanted = match fam {
        family::INET | family::INET6 => true,
        family::UNIX => flags & config_flags::UNIX != 0,
        _ => false,
    };
    (wanted && sock_type as u16 == SOCK_STREAM && sk != 0).then_some((sk, fam, sock_type as u16))
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
}

/// Emits a socket open/close event; `addresses` reads both ends from the kernel socket.
#[inline(always)]
/// Returns whether the event went out.
fn emit_sock(
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
        ptr::write_bytes(ev, 0, 1);
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
        if addresses {
            fill_addresses(&cfg.kernel, st.sk, st.family, ev);
        }
    }
    entry.submit(wakeup(size_of::<SockEvent>() as u64));
    true
}

/// Bytes waiting in the ring buffer past which the reader is woken up. Below it, records wait
/// for the reader's own short poll: one wakeup per record (the default) costs a context switch
/// per syscall traced, which a busy server pays for.
const WAKEUP_BYTES: u64 = 256 << 10;

/// Wakeup flag for a record of `size` bytes.
#[inline(always)]
fn wakeup(size: u64) -> u64 {
    let used = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if used + size >= WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Whether a data event of `size` bytes may use the ring buffer: data leaves the last eighth
/// free for socket and process events, which are few and small but carry what makes the data
/// readable (addresses, final stream lengths, who is who).
#[inline(always)]
fn room_for_data(size: u64) -> bool {
    let used = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let total = EVENTS.query(u64::from(BPF_RB_RING_SIZE));
    used + size + (total >> 3) <= total
}

/// The tracked state of `fd` in the current process, registering the socket when it is new or
/// when the fd now refers to a different socket than the one recorded (the fd was reused without
/// a close we saw: dup2, exec of a CLOEXEC socket). `role` is set when given (connect/accept).
#[inline(always)]
fn track_socket(cfg: &Config, tgid: u32, tid: u32, fd: i32, new_role: Option<u32>) -> Option<u64> {
    let key = SockKey { tgid, fd };
    let found = fd_socket(&cfg.kernel, fd, cfg.flags);
    if let Some(st) = SOCKETS.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid during this program run.
        let st = unsafe { &mut *st };
        match found {
            Some((sk, _, _)) if sk == st.sk => {
                if let Some(r) = new_role {
                    // connect/accept on a socket we already knew: addresses are known now.
                    let _ = SK_ROLES.insert(sk, r, 0);
                    st.role = r;
                    emit_sock(cfg, kind::SOCK_OPEN, &key, st, tid, true);
                }
                return Some(sk);
            }
            _ => {
                let old = *st;
                emit_sock(cfg, kind::SOCK_CLOSE, &key, &old, tid, false);
                let _ = SOCKETS.remove(key);
            }
        }
    }
    let (sk, fam, sock_type) = found?;
    let role = match new_role {
        Some(r) => {
            let _ = SK_ROLES.insert(sk, r, 0);
            r
        }
        // SAFETY: plain value read.
        None => unsafe { SK_ROLES.get(sk) }
            .copied()
            .unwrap_or(role::UNKNOWN),
    };
    let st = SockState {
        sk,
        send_off: 0,
        recv_off: 0,
        role,
        family: fam,
        sock_type,
    };
    if SOCKETS.insert(key, st, BPF_NOEXIST as u64).is_err() {
        count(counters::SOCKETS_FULL, 1);
        return None;
    }
    emit_sock(cfg, kind::SOCK_OPEN, &key, &st, tid, true);
    Some(sk)
}

// ---- syscall enter: remember the arguments ---------------------------------------------------

#[inline(always)]
fn arg(ctx: &TracePointContext, cfg: &Config, n: u32) -> u64 {
    // SAFETY: read of the tracepoint record at an offset from its tracefs format.
    unsafe { ctx.read_at::<u64>((cfg.tp.sys_enter_args + 8 * n) as usize) }.unwrap_or(0)
}

/// Enter of a data syscall: `buf` is argument 1, `count` argument 2; `flags_arg` is the index of
/// a recv flags argument to check for MSG_PEEK (peeked bytes are read again later).
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
    let p = Pending {
        sk,
        buf: arg(ctx, cfg, 1),
        count: arg(ctx, cfg, 2),
        fd,
        syscall: sc as u32,
    };
    if PENDING.insert(tid, p, 0).is_err() {
        count(counters::PENDING_FULL, 1);
    }
    0
}

/// Enter of connect/accept: only the fd (the listening fd for accept) matters.
#[inline(always)]
fn enter_sock(ctx: &TracePointContext, sc: Syscall) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some((_, tid)) = current_target() else {
        return 0;
    };
    let p = Pending {
        sk: 0,
        buf: 0,
        count: 0,
        fd: arg(ctx, cfg, 0) as i32,
        syscall: sc as u32,
    };
    if PENDING.insert(tid, p, 0).is_err() {
        count(counters::PENDING_FULL, 1);
    }
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
    let Some(cfg) = config() else { return 0 };
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    let fd = arg(&ctx, cfg, 0) as i32;
    let Some(sk) = track_socket(cfg, tgid, tid, fd, None) else {
        return 0;
    };
    let p = Pending {
        sk,
        buf: 0,
        count: 0,
        fd,
        syscall: Syscall::Sendfile as u32,
    };
    if PENDING.insert(tid, p, 0).is_err() {
        count(counters::PENDING_FULL, 1);
    }
    0
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

// ---- syscall exit: copy what moved ----------------------------------------------------------

/// State of the chunk loop, shared with the bpf_loop callback.
#[repr(C)]
pub struct Copy {
    hdr: DataHeader,
    /// User address of the next byte of the current segment.
    base: u64,
    /// Bytes left in the current segment.
    seg_left: u64,
    /// User address of the next iovec (0: a single buffer).
    iov: u64,
    /// iovecs left after the current one.
    iov_left: u64,
    /// Bytes of the syscall not yet covered by an event.
    remaining: u64,
    /// Chunks still allowed for this syscall.
    chunks_left: u64,
    /// Stream offsets of the bounded copy: skip `[skip_at, skip_to)`, stop copying at `stop_at`.
    skip_at: u64,
    skip_to: u64,
    stop_at: u64,
}

#[inline(always)]
fn take_pending(tid: u32) -> Option<Pending> {
    // SAFETY: copied out before removal.
    let p = unsafe { PENDING.get(tid) }.copied()?;
    let _ = PENDING.remove(tid);
    Some(p)
}

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

/// A length-only event: `len` bytes at `hdr.off` that were counted but not copied.
#[inline(always)]
fn emit_uncopied(mut hdr: DataHeader, len: u64) {
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

/// One bpf_loop iteration: step to the next iovec, or emit one chunk of at most CHUNK_SIZE.
extern "C" fn copy_chunk(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(c) = COPY_STATE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value, used by this program run only.
    let c = unsafe { &mut *c };
    if c.remaining == 0 || c.chunks_left == 0 || c.hdr.off >= c.stop_at {
        // The rest goes as one length-only event (see exit_data).
        return 1;
    }
    if c.seg_left == 0 {
        if c.iov == 0 || c.iov_left == 0 {
            return 1;
        }
        // struct iovec { void *iov_base; size_t iov_len; } (user ABI)
        // SAFETY: helper-checked user read.
        let Ok(iov) = (unsafe { bpf_probe_read_user(c.iov as *const [u64; 2]) }) else {
            return 1;
        };
        c.iov += 16;
        c.iov_left -= 1;
        c.base = iov[0];
        c.seg_left = if iov[1] < c.remaining {
            iov[1]
        } else {
            c.remaining
        };
        return 0;
    }
    let off = c.hdr.off;
    if off >= c.skip_at && off < c.skip_to {
        // A body beyond its preview: counted, not copied.
        let mut n = c.skip_to - off;
        if n > c.seg_left {
            n = c.seg_left;
        }
        emit_uncopied(c.hdr, n);
        c.hdr.off += n;
        c.base += n;
        c.seg_left -= n;
        c.remaining -= n;
        return 0;
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
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch value, exclusively ours during this run; n <= CHUNK_SIZE.
    unsafe {
        (*ev).hdr = c.hdr;
        (*ev).hdr.len = n;
        let r = raw_read_user(
            (*ev).data.as_mut_ptr().cast(),
            n as u32,
            c.base as *const c_void,
        );
        let cap = if r == 0 {
            n
        } else {
            count(counters::USER_READ_FAULTS, 1);
            0
        };
        (*ev).hdr.cap = cap as u32;
        let size = size_of::<DataHeader>() as u64 + cap;
        if !room_for_data(size)
            || bpf_ringbuf_output(
                ptr::addr_of!(EVENTS).cast_mut().cast(),
                ev.cast(),
                size,
                wakeup(size),
            ) < 0
        {
            count(counters::DATA_EVENTS_LOST, 1);
            count(counters::DATA_BYTES_LOST, n);
        }
    }
    c.hdr.off += n;
    c.base += n;
    c.seg_left -= n;
    c.remaining -= n;
    c.chunks_left -= 1;
    0
}

/// Exit of a data syscall: advance the socket's stream offset by the return value and send the
/// bytes as chunk events, then what the chunk cap left over as one length-only event.
#[inline(always)]
fn exit_data(ctx: &TracePointContext) -> u32 {
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
            ptr::addr_of_mut!((*st).send_off)
        } else {
            ptr::addr_of_mut!((*st).recv_off)
        };
        fetch_add(counter, ret)
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
            // SAFETY: helper-checked user reads.
            let iov = unsafe { bpf_probe_read_user((p.buf + 16) as *const u64) }.unwrap_or(0);
            let n = unsafe { bpf_probe_read_user((p.buf + 24) as *const u64) }.unwrap_or(0);
            c.iov = iov;
            c.iov_left = if n < MAX_IOVECS { n } else { MAX_IOVECS };
        }
        // sendfile: bytes come from a file, not user memory; length only.
        _ => c.chunks_left = 0,
    }
    if c.chunks_left > 0 {
        // SAFETY: the callback finds its state in COPY_STATE.
        unsafe {
            bpf_loop(
                MAX_LOOP_ITERATIONS,
                copy_chunk as *mut c_void,
                ptr::null_mut(),
                0,
            );
        }
    }
    // The callback changed the state behind `c`: read it afresh.
    // SAFETY: per-CPU map value, used by this program run only.
    let (hdr, remaining) = unsafe {
        (
            ptr::read_volatile(&raw const (*state).hdr),
            ptr::read_volatile(&raw const (*state).remaining),
        )
    };
    if remaining > 0 {
        emit_uncopied(hdr, remaining);
    }
    0
}

macro_rules! exit_programs {
    ($($name:ident),*) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            exit_data(&ctx)
        }
    )*};
}

exit_programs!(
    sys_exit_read,
    sys_exit_readv,
    sys_exit_recvfrom,
    sys_exit_recvmsg,
    sys_exit_write,
    sys_exit_writev,
    sys_exit_sendto,
    sys_exit_sendmsg,
    sys_exit_sendfile64
);

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

// ---- processes ------------------------------------------------------------------------------

#[inline(always)]
fn emit_proc(ev_kind: u32, pid: u32, ppid: u32, exit_code: i32) {
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
        count(counters::CONTROL_EVENTS_LOST, 1);
        return;
    };
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    entry.write(ProcEvent {
        kind: ev_kind,
        pid,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ppid,
        exit_code,
        comm,
    });
    entry.submit(wakeup(size_of::<ProcEvent>() as u64));
}

#[inline(always)]
fn add_target(tgid: u32, how: u32) -> bool {
    if TARGETS.insert(tgid, how, 0).is_err() {
        count(counters::TARGETS_FULL, 1);
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
    // SAFETY: presence tests only.
    let known = unsafe { TARGETS.get(tgid) }.is_some();
    if !known {
        let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
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
    let _ = PENDING.remove(tid);
    if !group_dead {
        return 0;
    }
    // SAFETY: presence test only.
    if unsafe { TARGETS.get(tgid) }.is_none() {
        return 0;
    }
    let _ = TARGETS.remove(tgid);
    let task = unsafe { bpf_get_current_task() };
    let code = kread::<i32>(task, cfg.kernel.task_exit_code).unwrap_or(0);
    emit_proc(kind::PROC_EXIT, tgid, 0, code);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
