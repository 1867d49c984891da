//! The only contract between sniffer's BPF programs and its userspace daemon.
//!
//! Everything that crosses the kernel boundary (ring buffer records, map keys and values, the
//! configuration userspace computes at start) is a `#[repr(C)]` struct here, with no `bool`, no
//! implicit padding and a size pinned by a const assert, so both sides agree byte for byte.
#![no_std]

/// Map names, as the BPF side declares them (`#[map]` takes the static's name) and as userspace
/// looks them up, with their capacities next to them.
pub mod maps {
    /// Ring buffer of every event (data, socket, process).
    pub const EVENTS: &str = "EVENTS";
    /// Default ring buffer size; `--ring-mib` overrides it at load time.
    pub const EVENTS_DEFAULT_BYTES: u32 = 8 << 20;

    /// tgid -> [`crate::Target`]: the processes whose sockets are traced.
    pub const TARGETS: &str = "TARGETS";
    pub const TARGETS_CAPACITY: u32 = 16384;

    /// cgroup v2 ids (`--unit`, `--cgroup`, `--devstack`) whose processes become targets at
    /// their first traced syscall: cgroup id (u64, the directory's inode number) -> 1.
    pub const CGROUPS: &str = "CGROUPS";
    pub const CGROUPS_CAPACITY: u32 = 1024;
    /// The value a process found through [`CGROUPS`] gets in [`TARGETS`].
    pub const TARGET_BY_CGROUP: u32 = 16;

    /// Process names (`comm`, 16 bytes, NUL padded) that become targets when they exec.
    pub const COMMS: &str = "COMMS";
    pub const COMMS_CAPACITY: u32 = 64;

    /// (tgid, fd) -> socket state, including the per-direction byte offsets.
    pub const SOCKETS: &str = "SOCKETS";
    pub const SOCKETS_CAPACITY: u32 = 65536;

    /// (tgid, fd, dir) -> what userspace wants copied of that stream (bounded copy).
    pub const COPY_CTL: &str = "COPY_CTL";
    pub const COPY_CTL_CAPACITY: u32 = 2 * SOCKETS_CAPACITY;

    /// Who connected (an untraced process), by a hash of the TCP connection: written at its
    /// connect's exit, read when a traced server accepts it. A power of two.
    pub const CONNECTORS: &str = "CONNECTORS";
    pub const CONNECTORS_CAPACITY: u32 = 16384;

    /// tid -> the socket a data syscall's enter saw, for its exit, when the thread's slot in
    /// [`ENTERED`] belongs to another thread (see [`crate::entered`]).
    pub const PENDING: &str = "PENDING";
    pub const PENDING_CAPACITY: u32 = 16384;

    /// The data syscalls in progress, one u64 slot per thread by its tid's low bits (see
    /// [`crate::entered`]). A power of two.
    pub const ENTERED: &str = "ENTERED";
    pub const ENTERED_CAPACITY: u32 = 65536;

    /// Per-CPU staging buffer for one data event.
    pub const SCRATCH: &str = "SCRATCH";

    /// Program array whose slot 0 is [`crate::programs::COPY_MORE`] (kernels without bpf_loop).
    pub const COPY_TAIL: &str = "COPY_TAIL";
    /// The same for the TLS return probe: [`crate::programs::COPY_MORE_TLS`].
    pub const COPY_TAIL_TLS: &str = "COPY_TAIL_TLS";

    /// tid -> the TLS library call in progress ([`crate::TlsArgs`]).
    pub const TLS_CALLS: &str = "TLS_CALLS";
    pub const TLS_CALLS_CAPACITY: u32 = 16384;

    /// (`SSL *`, tgid) -> the fd of its socket, learnt from its calls' syscalls.
    pub const SSL_FDS: &str = "SSL_FDS";
    pub const SSL_FDS_CAPACITY: u32 = 65536;

    /// Per-CPU counters of what the kernel side could not do, indexed by [`crate::counters`].
    pub const COUNTERS: &str = "COUNTERS";

    /// One [`crate::Config`], written by userspace before any program is attached.
    pub const CONFIG: &str = "CONFIG";
}

/// Program names: each BPF program is named after the tracepoint it attaches to.
pub mod programs {
    /// BTF tracepoint on every syscall's entry (`sys_enter`): the program filters by syscall
    /// number and traced process first.
    pub const SYS_ENTER: &str = "sys_enter";
    /// BTF tracepoint on every syscall's exit; its program comes in the variants of
    /// [`crate::Variant`], named `sys_exit<suffix>`.
    pub const SYS_EXIT: &str = "sys_exit";
    /// Category of the process lifecycle tracepoints.
    pub const SCHED: &str = "sched";
    /// Classic tracepoints in [`SCHED`].
    pub const SCHED_TRACEPOINTS: &[&str] = &["sched_process_exec", "sched_process_exit"];
    /// BTF tracepoint: it hands over the child's `task_struct`, which tells a new process from a
    /// new thread (the classic tracepoint only has the child's tid).
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    /// The BTF tracepoints, whose `btf_trace_<name>` types the kernel's BTF must have.
    pub const BTF_TRACEPOINTS: &[&str] = &[SYS_ENTER, SYS_EXIT, SCHED_PROCESS_FORK];
    /// The tail-called copy loop of the variants without bpf_loop (loaded for [`SYS_EXIT`],
    /// not attached).
    pub const COPY_MORE: &str = "copy_more";
    /// The same for the TLS return probe (a uretprobe, so a program of that kind).
    pub const COPY_MORE_TLS: &str = "copy_more_tls";
    /// The TLS return probe, on the return of every probed TLS function; comes in the
    /// variants of [`crate::Variant`], named `ssl_return<suffix>`.
    pub const SSL_RETURN: &str = "ssl_return";
    /// The return probe of the handshake functions.
    pub const SSL_HANDSHAKE_RETURN: &str = "ssl_handshake_return";
    /// OpenSSL's functions (libssl 1.1 and 3) with their entry probe and return probe
    /// (`None`: [`SSL_RETURN`] in the variant loaded).
    pub const SSL_FUNCTIONS: &[(&str, &str, Option<&str>)] = &[
        ("SSL_write", "ssl_write", None),
        ("SSL_write_ex", "ssl_write_ex", None),
        ("SSL_read", "ssl_read", None),
        ("SSL_read_ex", "ssl_read_ex", None),
        (
            "SSL_do_handshake",
            "ssl_handshake",
            Some(SSL_HANDSHAKE_RETURN),
        ),
        ("SSL_connect", "ssl_handshake", Some(SSL_HANDSHAKE_RETURN)),
        ("SSL_accept", "ssl_handshake", Some(SSL_HANDSHAKE_RETURN)),
    ];
}

/// Variants of the syscall exit program, for kernels without some BPF features. Userspace probes
/// the kernel (not its version string) and loads one; the events they send are the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// bpf_loop (5.17) and atomic fetch-and-add (5.12): up to [`MAX_LOOP_ITERATIONS`] chunks
    /// per syscall.
    Full,
    /// No bpf_loop: the copy continues in tail calls, [`TAIL_CALL_STEPS`] chunks per syscall
    /// at most.
    NoLoop,
    /// No bpf_loop and no atomic fetch-and-add (5.10, 5.11): tail calls, and the stream
    /// offset read before a plain atomic add.
    NoAtomic,
}

impl Variant {
    /// What the variant's program names add to the tracepoint's name.
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Full => "",
            Self::NoLoop => "_noloop",
            Self::NoAtomic => "_noatomic",
        }
    }

    /// Chunks one syscall's copy can take at most.
    pub const fn max_chunks(self) -> u32 {
        match self {
            Self::Full => MAX_LOOP_ITERATIONS,
            Self::NoLoop | Self::NoAtomic => TAIL_CALL_STEPS,
        }
    }
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counters {
    /// Data events the ring buffer had no room for.
    pub const DATA_EVENTS_LOST: u32 = 0;
    /// Payload bytes those lost data events covered.
    pub const DATA_BYTES_LOST: u32 = 1;
    /// Socket and process events the ring buffer had no room for.
    pub const CONTROL_EVENTS_LOST: u32 = 2;
    /// Syscalls (or TLS calls) not followed because the pending-arguments map (or the TLS
    /// calls map) was full.
    pub const PENDING_FULL: u32 = 3;
    /// Sockets not tracked because the sockets map was full.
    pub const SOCKETS_FULL: u32 = 4;
    /// Processes not followed because the targets map was full.
    pub const TARGETS_FULL: u32 = 5;
    /// Chunks whose user memory could not be read (sent as length-only).
    pub const USER_READ_FAULTS: u32 = 6;
    /// TLS library calls whose socket was not known (no syscall of theirs was seen yet).
    pub const TLS_NO_SOCKET: u32 = 7;
    /// Data syscalls on a traced socket whose enter was not seen (begun before the attach, or
    /// their thread's slot taken at the same instant): their bytes are a gap of known length.
    pub const ENTER_MISSED: u32 = 8;
    /// Number of counters.
    pub const COUNT: u32 = 9;

    /// Human names, indexed like the counters.
    pub const NAMES: [&str; COUNT as usize] = [
        "data events lost",
        "data bytes lost",
        "control events lost",
        "syscalls or TLS calls missed (pending map full)",
        "sockets missed (socket map full)",
        "processes missed (target map full)",
        "user memory read faults",
        "TLS calls on an unknown socket (plaintext not read)",
        "data syscalls whose enter was not seen (bytes counted, not read)",
    ];
}

/// Bytes copied at the start of each syscall past a stream's credit (bounded copy), so that
/// a message's head, which a sender writes at the start of a syscall, comes even when the
/// reader is too far behind to extend the credit: 2 KiB holds an OpenStack request's or
/// response's head with its tokens.
pub const HEAD_BYTES: u64 = 2048;

/// Bytes of payload one data event carries at most.
pub const CHUNK_SIZE: usize = 16384;
/// Default cap on the payload copied per syscall, in chunks; the rest is reported by length only.
pub const DEFAULT_MAX_CHUNKS_PER_SYSCALL: u32 = 256;
/// Hard bound on the chunk loop (bpf_loop iterations) per syscall; iovecs of length 0 use
/// iterations too.
pub const MAX_LOOP_ITERATIONS: u32 = 1024;
/// Copy steps one run of the tail-called copy loop takes (kernels without bpf_loop).
pub const STEPS_PER_TAIL_CALL: u32 = 2;
/// Chunks a syscall's copy can take on kernels without bpf_loop: the kernel allows 32 tail
/// calls in a row (33 from 5.17), each taking [`STEPS_PER_TAIL_CALL`] steps: 64 chunks, 1 MiB.
pub const TAIL_CALL_STEPS: u32 = 32 * STEPS_PER_TAIL_CALL;
/// Bound on iovecs walked per syscall (the kernel's UIO_MAXIOV).
pub const MAX_IOVECS: u64 = 1024;
/// Length of `task_struct.comm`.
pub const COMM_LEN: usize = 16;
/// Length of `sockaddr_un.sun_path`.
pub const UNIX_PATH_LEN: usize = 108;
/// "Not present in this kernel's BTF" in [`KernelOffsets`] and [`TracepointOffsets`].
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// Kinds of ring buffer records; every record starts with its kind as a `u32`.
pub mod kind {
    pub const DATA: u32 = 1;
    pub const SOCK_OPEN: u32 = 2;
    pub const SOCK_CLOSE: u32 = 3;
    pub const PROC_FORK: u32 = 4;
    pub const PROC_EXEC: u32 = 5;
    pub const PROC_EXIT: u32 = 6;
    /// A [`crate::DataHeader`] of TLS plaintext, read in the TLS library (SSL_read/SSL_write):
    /// `off` counts the socket's plaintext stream, not its bytes on the wire.
    pub const TLS_DATA: u32 = 7;
    /// A [`crate::ProcEvent`]: the process mapped a file as executable code (a library it
    /// loads, dlopen): userspace looks for TLS libraries to probe in it.
    pub const PROC_MAP_EXEC: u32 = 8;
}

/// Bits of [`DataHeader::flags`].
pub mod data_flags {
    /// Bytes on the wire of a socket whose TLS library sniffer reads: counted, never copied
    /// (the plaintext comes as [`crate::kind::TLS_DATA`]).
    pub const CIPHERTEXT: u32 = 1;
}

/// Bits of [`SockState::flags`].
pub mod sock_flags {
    /// A TLS library call on this socket was seen: its syscalls carry ciphertext.
    pub const TLS: u32 = 1;
    /// Userspace set the socket aside (not HTTP, [`crate::copy_flags::IGNORE`]): its data
    /// syscalls stop at the socket lookup, before the fd walk. Set by the exit program when it
    /// finds the word in the copy-control map.
    pub const IGNORED: u32 = 2;
}

/// Direction of a data event, seen from the traced process.
pub mod dir {
    /// Bytes the process received (read, recv*).
    pub const RECV: u32 = 0;
    /// Bytes the process sent (write, send*, sendfile).
    pub const SEND: u32 = 1;
}

/// How the kernel side learnt about a socket.
pub mod role {
    /// Found at its first read or write (it existed before tracing began, or came another way).
    pub const UNKNOWN: u32 = 0;
    /// The process called connect() on it.
    pub const CLIENT: u32 = 1;
    /// The process got it from accept().
    pub const SERVER: u32 = 2;
}

/// Address families the kernel side records (values of `sa_family_t`).
pub mod family {
    pub const UNIX: u16 = 1;
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// The syscall a data event came from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Read = 0,
    Readv = 1,
    Recvfrom = 2,
    Recvmsg = 3,
    Write = 4,
    Writev = 5,
    Sendto = 6,
    Sendmsg = 7,
    Sendfile = 8,
    Connect = 9,
    Accept = 10,
    /// SSL_read or SSL_read_ex: TLS plaintext received.
    SslRead = 11,
    /// SSL_write or SSL_write_ex: TLS plaintext sent.
    SslWrite = 12,
    /// mmap of executable code (only its enter's arguments are kept).
    Mmap = 13,
}

impl Syscall {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Read,
            1 => Self::Readv,
            2 => Self::Recvfrom,
            3 => Self::Recvmsg,
            4 => Self::Write,
            5 => Self::Writev,
            6 => Self::Sendto,
            7 => Self::Sendmsg,
            8 => Self::Sendfile,
            9 => Self::Connect,
            10 => Self::Accept,
            11 => Self::SslRead,
            12 => Self::SslWrite,
            13 => Self::Mmap,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Readv => "readv",
            Self::Recvfrom => "recvfrom",
            Self::Recvmsg => "recvmsg",
            Self::Write => "write",
            Self::Writev => "writev",
            Self::Sendto => "sendto",
            Self::Sendmsg => "sendmsg",
            Self::Sendfile => "sendfile",
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::SslRead => "SSL_read",
            Self::SslWrite => "SSL_write",
            Self::Mmap => "mmap",
        }
    }

    /// Direction of the bytes this syscall moves.
    pub const fn dir(self) -> u32 {
        match self {
            Self::Read | Self::Readv | Self::Recvfrom | Self::Recvmsg | Self::SslRead => dir::RECV,
            _ => dir::SEND,
        }
    }
}

/// Header of a data event. The event covers bytes `[off, off + len)` of the socket's stream in
/// direction `dir`; the first `cap` of them follow the header, the rest were not copied (over the
/// per-syscall cap, sendfile, or unreadable user memory). Bytes of the stream that no event
/// covers were lost (the ring buffer was full): userspace sees the hole in the offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataHeader {
    pub kind: u32,
    pub dir: u32,
    /// bpf_ktime_get_ns() at syscall exit.
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// A [`Syscall`] value.
    pub syscall: u32,
    /// Kernel address of the `struct sock`: tells sockets apart when fds are reused.
    pub sk: u64,
    /// Offset of this event's first byte in the stream (per socket and direction).
    pub off: u64,
    /// Bytes of the stream this event covers.
    pub len: u64,
    /// Bytes the whole syscall moved (its return value).
    pub syscall_len: u64,
    /// Bytes of payload that follow this header (`cap <= len`, `cap <= CHUNK_SIZE`).
    pub cap: u32,
    /// Bits of [`data_flags`].
    pub flags: u32,
}

impl DataHeader {
    /// All zero, to fill in.
    pub const EMPTY: Self = Self {
        kind: 0,
        dir: 0,
        ts_ns: 0,
        tgid: 0,
        tid: 0,
        fd: 0,
        syscall: 0,
        sk: 0,
        off: 0,
        len: 0,
        syscall_len: 0,
        cap: 0,
        flags: 0,
    };
}

/// A data event as staged in the per-CPU scratch map; only `size_of::<DataHeader>() + cap` bytes
/// of it go into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub hdr: DataHeader,
    pub data: [u8; CHUNK_SIZE],
}

/// One end of a socket: an IP address and port, or a unix socket path.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockAddr {
    /// IPv4 in the first 4 bytes (network order), or IPv6.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// Bytes used in `path` (unix sockets); a leading NUL marks an abstract address.
    pub path_len: u16,
    pub _pad: u32,
    pub path: [u8; UNIX_PATH_LEN],
    pub _pad2: u32,
}

/// A socket the kernel side started or stopped tracking.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockEvent {
    /// [`kind::SOCK_OPEN`] or [`kind::SOCK_CLOSE`].
    pub kind: u32,
    /// A [`role`] value.
    pub role: u32,
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// A [`family`] value (0 when unknown).
    pub family: u16,
    /// SOCK_STREAM etc.
    pub sock_type: u16,
    pub sk: u64,
    /// For unix sockets: the peer's `struct sock` address (0 when unknown).
    pub peer_sk: u64,
    /// For unix sockets: the process at the other end when it connected, or the one that
    /// listened (the kernel's SO_PEERCRED pid). For a TCP socket a traced server accepted: the
    /// process that connected from this host while sniffer was attached. 0 when unknown.
    pub peer_tgid: u32,
    /// Inode number of the socket's network namespace (`sock->sk_net->ns.inum`, what
    /// `/proc/PID/ns/net` links to; 0 when unknown): two namespaces can reuse one address.
    pub netns: u32,
    /// Stream offsets at this moment: the total bytes sent and received so far.
    pub send_off: u64,
    pub recv_off: u64,
    /// The same for TLS plaintext (0 on a socket without TLS library calls).
    pub tls_send_off: u64,
    pub tls_recv_off: u64,
    pub local: SockAddr,
    pub peer: SockAddr,
}

/// A traced process forked, exec'd or exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    /// [`kind::PROC_FORK`], [`kind::PROC_EXEC`] or [`kind::PROC_EXIT`].
    pub kind: u32,
    /// The process (tgid): the child for a fork.
    pub pid: u32,
    pub ts_ns: u64,
    /// Fork: the parent's tgid. Exec: the tid that called exec. Exit: 0.
    pub ppid: u32,
    /// Exit: the exit code as the kernel keeps it (`task_struct.exit_code`), when known.
    pub exit_code: i32,
    /// The process name after the event.
    pub comm: [u8; COMM_LEN],
}

/// Key of the sockets map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub tgid: u32,
    pub fd: i32,
}

/// Value of the targets map: a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// How it became one (userspace's target flags, [`maps::TARGET_BY_CGROUP`]).
    pub how: u32,
    pub _pad: u32,
    /// Kernel time (CLOCK_MONOTONIC, ns) of the last thing that may have put another file
    /// behind one of its fds without a close(2) the programs see: becoming a target, an exec
    /// (which closes close-on-exec fds), dup2/dup3, close_range. A socket whose fd was found
    /// holding it after that ([`SockState::checked_ns`]) needs no new look at the fd table.
    pub replaced_ns: u64,
    /// Moves (an atomic add) at the enter and at the exit of each of the process's syscalls
    /// that may free an fd's number or put another file behind it (close, dup2, dup3,
    /// close_range) and at an exec: a note in [`Target::no_socket`] stands while it has not
    /// moved since the note's fd was found holding no socket.
    pub fds_gen: u64,
    /// Those syscalls under way (added to at their enter, taken from at their exit when the
    /// thread's slot says its enter added): while any is, no note is made or trusted. An entry
    /// is never written over (both sides insert with BPF_NOEXIST), so the count stays exact; an
    /// enter whose slot could not be recorded leaves it above 0, and the process's notes are
    /// then never used: the safe side.
    pub fds_busy: u64,
    /// Fds found holding no socket (a file the process reads or writes: each such syscall
    /// would walk the fd table again), [`no_socket::note`] of the fd and `fds_gen`, at index
    /// `fd % NO_SOCKET_NOTES`; 0: none.
    pub no_socket: [u64; no_socket::NOTES],
}

/// The notes of fds holding no socket ([`Target::no_socket`]).
pub mod no_socket {
    /// Notes per process, a power of two (a process mostly reads or writes a file or two
    /// between its sockets: the output a client writes, the file an upload reads).
    pub const NOTES: usize = 4;
    /// Fds below this are noted; the rest are walked every time.
    pub const MAX_FD: i32 = 1 << 16;

    /// The note of `fd` (below [`MAX_FD`]) found holding no socket at generation `gen`; never 0.
    #[inline(always)]
    pub const fn note(fd: i32, fds_gen: u64) -> u64 {
        ((fds_gen + 1) << 16) | (fd as u64 & 0xffff)
    }
}

/// Value of the sockets map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockState {
    pub sk: u64,
    /// Kernel time the fd was last found holding this socket (see [`Target::replaced_ns`]).
    pub checked_ns: u64,
    /// Bytes sent so far: the offset of the next byte sent.
    pub send_off: u64,
    /// Bytes received so far.
    pub recv_off: u64,
    /// TLS plaintext sent and received so far, through the TLS library.
    pub tls_send_off: u64,
    pub tls_recv_off: u64,
    pub role: u32,
    pub family: u16,
    pub sock_type: u16,
    /// Bits of [`sock_flags`].
    pub flags: u32,
    pub _pad: u32,
}

/// Key of the copy-control map: one direction of one socket of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub tgid: u32,
    pub fd: i32,
    /// A [`dir`] value.
    pub dir: u32,
    pub _pad: u32,
}

/// What userspace wants copied of a stream, in stream offsets: everything before
/// `credit_until`, except `[skip_from, skip_until)` (a body beyond its preview), and with
/// [`copy_flags::HEADS`] past `credit_until` the first [`HEAD_BYTES`] of each syscall. Bytes
/// not copied are still counted, in length-only events. Without an entry the kernel copies up
/// to [`Config::initial_credit_kib`], and the first [`HEAD_BYTES`] of each syscall past it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyCtl {
    /// The socket this is for (an fd reused for another socket does not inherit it).
    pub sk: u64,
    pub credit_until: u64,
    pub skip_from: u64,
    pub skip_until: u64,
    /// Bits of [`copy_flags`].
    pub flags: u32,
    pub _pad: u32,
}

/// Bits of [`CopyCtl::flags`].
pub mod copy_flags {
    /// Not HTTP: send nothing of this socket's syscalls any more (its close still comes). The
    /// exit program marks the socket [`crate::sock_flags::IGNORED`], which the enter program
    /// checks first, before it looks at the fd.
    pub const IGNORE: u32 = 1;
    /// Heads are expected at the start of the stream's syscalls: past the credit, copy the
    /// first [`crate::HEAD_BYTES`] of each one still. A reader that fell behind then misses
    /// bodies, not whole messages. Not set where the stream's bytes are unwanted (a tunnel, a
    /// body read until the close, bytes that are not HTTP).
    pub const HEADS: u32 = 2;
}

/// Which TLS library call a [`TlsArgs`] belongs to.
pub mod tls_call {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    /// SSL_do_handshake, SSL_connect, SSL_accept: only the socket is learnt.
    pub const HANDSHAKE: u32 = 3;
}

/// Value of the TLS call map (per thread): a TLS library call in progress, from its entry to
/// its return. While it is there, the thread's socket syscalls tell which socket the `SSL *`
/// uses.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsArgs {
    /// The `SSL *`.
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// SSL_read_ex/SSL_write_ex: where the byte count goes (`size_t *`); 0 for SSL_read and
    /// SSL_write, which return it.
    pub out: u64,
    /// bpf_ktime_get_ns() at the call's entry.
    pub ts_ns: u64,
    /// A [`tls_call`] value.
    pub call: u32,
    pub _pad: u32,
}

/// Key of the `SSL *` -> socket map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SslKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Byte offsets of the kernel struct members the BPF side reads, computed by userspace from
/// /sys/kernel/btf/vmlinux at start (rustc emits no CO-RE relocations). [`OFFSET_ABSENT`] turns
/// the feature that needs a member off.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_exit_code: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    /// `inode.i_ino`: tells a socket from the one that was at the same address before.
    pub inode_ino: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub unix_addr: u32,
    pub unix_peer: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// `sock.sk_peer_pid`, `pid.numbers`, `upid.nr`: a unix peer's process (SO_PEERCRED).
    pub sk_peer_pid: u32,
    pub pid_numbers: u32,
    pub upid_nr: u32,
    /// `sock.__sk_common.skc_net.net` and `net.ns.inum`: the socket's network namespace.
    pub skc_net: u32,
    pub net_ns_inum: u32,
}

/// Field offsets inside the classic tracepoints' records, read from tracefs `format` files.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TracepointOffsets {
    /// `old_pid` of sched_process_exec: the tid that called exec.
    pub exec_old_pid: u32,
    /// `group_dead` of sched_process_exit, [`OFFSET_ABSENT`] on kernels without it.
    pub exit_group_dead: u32,
}

/// Everything userspace tells the BPF side before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub kernel: KernelOffsets,
    pub tp: TracepointOffsets,
    /// Payload chunks copied per syscall at most; the rest goes as a length-only event.
    pub max_chunks_per_syscall: u32,
    /// Bit flags, see [`config_flags`].
    pub flags: u32,
    /// Bytes of a stream copied before userspace says more (KiB; 0: no limit).
    pub initial_credit_kib: u32,
    /// The ring buffer's size in bytes (`EVENTS`' max_entries, set at load): data records
    /// leave its last eighth free, checked against what waits without asking the size.
    pub ring_bytes: u32,
}

/// Who connected: the kernel's table of the untraced processes that connected, by a hash of
/// the connection (written at a `connect`'s exit, read at a traced server's accept and by
/// userspace when that accept came first). Shared so both sides hash and check alike.
pub mod connectors {
    use core::mem::size_of;

    /// A TCP connection as its client sees it, in its network namespace. Addresses in
    /// `SockAddr`'s layout: IPv4 (or IPv4-mapped IPv6) in the first 4 bytes, the rest 0.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    pub struct TcpKey {
        pub netns: u32,
        /// The client's port, then the server's (host order).
        pub sport: u16,
        pub dport: u16,
        pub saddr: [u8; 16],
        pub daddr: [u8; 16],
    }

    /// The key's size in 8-byte words; a [`Connector`] is these, one word of `tgid` (low half,
    /// little-endian) and `check` (high half), and one word `at`.
    pub const KEY_WORDS: usize = size_of::<TcpKey>() / 8;

    /// Slots per set: a connection may sit in either slot of its set.
    pub const WAYS: u32 = 2;

    /// One slot of [`crate::maps::CONNECTORS`]: who connected, the connection, a check over
    /// both, and when it was written.
    ///
    /// The table is a hash table of fixed sets of [`WAYS`] slots (the set is a hash of the
    /// connection): a write is a few stores into the set's older slot, where an LRU hash took a
    /// node, evicted others under churn and cost about 1 µs a connect. A connect is lost only
    /// when two later connects of its set come before its accept (or userspace) reads it; a
    /// table of one slot per set lost it at the first (then the name is looked up in /proc,
    /// which misses a client that closed meanwhile). A slot read while another CPU writes it
    /// may mix two entries: `check` then does not match and the slot counts as empty, never as
    /// a wrong process.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    pub struct Connector {
        pub key: TcpKey,
        pub tgid: u32,
        pub check: u32,
        /// When it was written (bpf_ktime_get_ns): the set's older slot takes the next write,
        /// and of two slots holding the same connection (its port reused) the newer counts.
        pub at: u64,
    }

    /// Word `i` (< KEY_WORDS) of the key, for hashing and comparing (a derived comparison or an
    /// array copy would be a byte loop).
    #[inline(always)]
    fn word(key: &TcpKey, i: usize) -> u64 {
        // SAFETY: TcpKey is plain data of KEY_WORDS 8-byte words, 8-byte aligned; i < KEY_WORDS.
        unsafe { (key as *const TcpKey).cast::<u64>().add(i).read() }
    }

    /// Whether two keys are the same connection.
    #[inline(always)]
    fn same(a: &TcpKey, b: &TcpKey) -> bool {
        let mut diff = 0;
        for i in 0..KEY_WORDS {
            diff |= word(a, i) ^ word(b, i);
        }
        diff == 0
    }

    /// (first slot of its set, check base) of a connection: it may sit in that slot or in the
    /// [`WAYS`]` - 1` after it.
    #[inline(always)]
    pub fn slot_of(key: &TcpKey) -> (u32, u32) {
        let mut h: u64 = 0;
        for i in 0..KEY_WORDS {
            h = (h ^ word(key, i)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
        }
        (
            ((h >> 32) as u32) & (crate::maps::CONNECTORS_CAPACITY - WAYS),
            h as u32,
        )
    }

    /// Which slot of a set a write takes, given when each slot was written (0: never): the
    /// older one (the first when both are as old).
    #[inline(always)]
    pub fn way_to_write(at: [u64; WAYS as usize]) -> u32 {
        u32::from(at[1] < at[0])
    }

    /// The process that made connection `key` (hash check `check`), from the slots of its set:
    /// the newer of the slots that hold it whole.
    #[inline(always)]
    pub fn find(set: &[Connector; WAYS as usize], key: &TcpKey, check: u32) -> Option<u32> {
        let mut best: Option<(u64, u32)> = None;
        for slot in set {
            if let Some(tgid) = slot.tgid_for(key, check)
                && best.is_none_or(|(at, _)| slot.at > at)
            {
                best = Some((slot.at, tgid));
            }
        }
        best.map(|(_, tgid)| tgid)
    }

    /// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 one: a dual-stack server's
    /// socket sees an IPv4 client that way.
    #[inline(always)]
    pub fn plain(a: [u8; 16]) -> [u8; 16] {
        let mapped = a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff;
        if !mapped {
            return a;
        }
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&a[12..]);
        out
    }

    impl Connector {
        pub const EMPTY: Connector = Connector {
            key: TcpKey {
                netns: 0,
                sport: 0,
                dport: 0,
                saddr: [0; 16],
                daddr: [0; 16],
            },
            tgid: 0,
            check: 0,
            at: 0,
        };

        /// The process in this slot if it holds connection `key` whose hash gave `check`
        /// (see [`slot_of`]), whole (not mixed with another write).
        #[inline(always)]
        pub fn tgid_for(&self, key: &TcpKey, check: u32) -> Option<u32> {
            (same(&self.key, key) && self.check == check ^ self.tgid && self.tgid != 0)
                .then_some(self.tgid)
        }
    }
}

/// The data syscalls in progress: at a traced thread's enter of a read or write on a socket,
/// one u64 in a direct-mapped table, (tid + 1) in the high bits and a fold of the socket's
/// address in the low ones; its exit takes it back and reads the arguments from the syscall's
/// registers (x86_64 leaves them as they were). One store and one load, where a hash map took
/// an insert, a lookup and a delete, each under a lock, on every read and write.
///
/// A slot holding another live thread's call is left to it, and the thread takes the
/// [`crate::maps::PENDING`] hash instead. Two threads of the same low bits entering at the same
/// instant may both write the slot: the one whose value was overwritten finds neither at its
/// exit, and its bytes go out by length only as a gap (counted), never under another socket
/// (the fold is checked against the socket the fd holds at the exit).
pub mod entered {
    /// Bits of the socket fold; the tid + 1 (at most 2^22, Linux's PID_MAX_LIMIT) sits above.
    const FOLD_BITS: u32 = 40;
    const FOLD_MASK: u64 = (1 << FOLD_BITS) - 1;

    /// The slot of thread `tid`.
    #[inline(always)]
    pub const fn slot(tid: u32) -> u32 {
        tid & (crate::maps::ENTERED_CAPACITY - 1)
    }

    /// A socket address folded to [`FOLD_BITS`] bits (kernel objects are 8-byte aligned, and
    /// the bits above the fold's width are xor-ed in).
    #[inline(always)]
    pub const fn fold(sk: u64) -> u64 {
        ((sk >> 3) ^ (sk >> (3 + FOLD_BITS))) & FOLD_MASK
    }

    /// The slot value of a call of thread `tid` on socket `sk`; never 0 (an empty slot).
    #[inline(always)]
    pub const fn pack(tid: u32, sk: u64) -> u64 {
        ((tid as u64 + 1) << FOLD_BITS) | fold(sk)
    }

    /// Whether slot value `v` is free for thread `tid`: empty, or its own (an earlier call
    /// whose exit was not seen).
    #[inline(always)]
    pub const fn free_for(v: u64, tid: u32) -> bool {
        v == 0 || v >> FOLD_BITS == tid as u64 + 1
    }

    /// The fold of the socket thread `tid` entered its call on, if `v` is that thread's.
    #[inline(always)]
    pub const fn fold_of(v: u64, tid: u32) -> Option<u64> {
        if v != 0 && v >> FOLD_BITS == tid as u64 + 1 {
            Some(v & FOLD_MASK)
        } else {
            None
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_slot_names_its_thread_and_socket() {
            let sk = 0xffff_8881_0a2b_3c40;
            let v = pack(4_194_303, sk);
            // (4194303 + 1) << 40, and (sk >> 3) ^ (sk >> 43) in the low 40 bits.
            assert_eq!(v, 0x4000_0010_215a_9879);
            assert_eq!(fold_of(v, 4_194_303), Some(fold(sk)));
            assert_eq!(fold_of(v, 4_194_302), None);
            // Thread 0 (the idle task never traced, but tid + 1 keeps it apart from empty).
            assert_ne!(pack(0, 0), 0);
            assert_eq!(fold_of(0, 0), None);
        }

        #[test]
        fn a_slot_is_free_when_empty_or_the_threads_own() {
            let v = pack(70_000, 0xffff_8881_0000_0040);
            assert!(free_for(0, 70_000));
            assert!(free_for(v, 70_000));
            // 70000 and 4464 share slot 4464 (70000 - 65536).
            assert_eq!(slot(70_000), slot(4464));
            assert!(!free_for(v, 4464));
        }

        #[test]
        fn sockets_apart_fold_apart() {
            let a = 0xffff_8881_0a2b_3c40;
            assert_ne!(fold(a), fold(a + 64));
            // 8 TiB apart: the high bits are xor-ed in.
            assert_ne!(fold(a), fold(a + (1 << 43)));
        }
    }
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// The config was written (a zeroed map means userspace did not configure the programs).
    pub const READY: u32 = 1;
    /// Trace unix stream sockets too, not only TCP.
    pub const UNIX: u32 = 2;
    /// TLS library probes are attached: traced socket syscalls look for a TLS call around them.
    pub const TLS: u32 = 4;
    /// `maps::CGROUPS` is in use: a process that is not a target has its cgroup looked up.
    pub const CGROUPS: u32 = 8;
}

// Pin the layouts: a change here must be a deliberate change of the contract on both sides.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<DataHeader>() == 72);
    assert!(size_of::<DataEvent>() == 72 + CHUNK_SIZE);
    assert!(size_of::<SockAddr>() == 136);
    assert!(size_of::<SockEvent>() == 88 + 2 * 136);
    assert!(size_of::<ProcEvent>() == 40);
    assert!(size_of::<SockKey>() == 8);
    assert!(size_of::<SockState>() == 64);
    assert!(size_of::<Target>() == 64);
    assert!(size_of::<TlsArgs>() == 40);
    assert!(size_of::<SslKey>() == 16);
    assert!(size_of::<KernelOffsets>() == 116);
    assert!(size_of::<TracepointOffsets>() == 8);
    assert!(size_of::<Config>() == 140);
    assert!(size_of::<StreamKey>() == 16);
    assert!(size_of::<CopyCtl>() == 40);
    assert!(align_of::<DataEvent>() == 8);
    assert!(align_of::<SockEvent>() == 8);
    assert!(size_of::<connectors::TcpKey>() == 40);
    assert!(size_of::<connectors::Connector>() == 56);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made only of integers and integer arrays, with no
    // implicit padding (pinned by the size asserts above): every bit pattern is valid.
    unsafe impl aya::Pod for DataHeader {}
    unsafe impl aya::Pod for SockEvent {}
    unsafe impl aya::Pod for ProcEvent {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockState {}
    unsafe impl aya::Pod for Target {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for StreamKey {}
    unsafe impl aya::Pod for connectors::Connector {}
    unsafe impl aya::Pod for CopyCtl {}
    unsafe impl aya::Pod for TlsArgs {}
    unsafe impl aya::Pod for SslKey {}
}
