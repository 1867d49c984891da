//! Load and attach the BPF programs, configure them, and manage what they trace.
//!
//! Everything that talks to the kernel's BPF side lives here; the ring buffer itself is handed
//! to [`crate::events`] and never read here.
pub mod btf;
mod detach;
pub mod features;
pub mod offsets;
pub mod sites;
pub mod symbols;
pub mod tracefs;

pub use detach::Detacher;

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::Path,
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        BtfTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope},
    },
};
use sniffer_common::{
    CHUNK_SIZE, COMM_LEN, Config, CopyCtl, SockKey, SockState, StreamKey, Target, Variant,
    config_flags, counters, maps, programs,
};

pub use features::Features;

/// The BPF object built by `build.rs` from the sniffer-ebpf crate.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sniffer"));

/// How a target was added (the value in the targets map).
pub mod target_flags {
    pub const BY_PID: u32 = 1;
    pub const BY_COMM: u32 = 2;
    pub const BY_COMMAND: u32 = 8;
    /// Found by the kernel in a cgroup of `maps::CGROUPS`.
    pub const BY_CGROUP: u32 = sniffer_common::maps::TARGET_BY_CGROUP;
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "cannot load BPF programs: not root (run sniffer as root, e.g. with sudo; it needs \
         CAP_BPF and CAP_PERFMON to trace other processes)"
    )]
    NotRoot,
    #[error(
        "this sniffer binary was built without its BPF programs (SNIFFER_SKIP_BPF_BUILD); \
         build it with `cargo xtask build`"
    )]
    NoObject,
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetError),
    #[error(
        "the kernel refused to load sniffer's BPF programs: {0} (is the kernel locked down in \
         confidentiality mode, or BPF restricted by a security module?)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("BPF program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("BPF program {0} is missing from the object")]
    MissingProgram(String),
    #[error("reading kernel BTF for BTF tracepoints: {0}")]
    Btf(#[source] aya::BtfError),
    #[error("the TLS probes could not be loaded")]
    TlsNotLoaded,
    #[error("none of OpenSSL's functions is in it")]
    NoTlsFunctions,
    /// The process ended; the probes placed before it was seen gone, to release.
    #[error("the process ended")]
    ProcessGone(TlsLinks),
    #[error(transparent)]
    Symbols(#[from] symbols::SymbolError),
}

fn map_err(name: &str) -> impl FnOnce(aya::maps::MapError) -> ProbeError + '_ {
    move |source| ProbeError::Map {
        name: name.to_owned(),
        source,
    }
}

fn prog_err(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError + '_ {
    move |source| ProbeError::Program {
        name: name.to_owned(),
        source,
    }
}

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Payload bytes copied per syscall at most; the rest is counted, not copied.
    pub max_capture_per_syscall: u32,
    /// Trace unix stream sockets as well as TCP.
    pub unix: bool,
    /// Bytes of a stream copied before userspace widens the window (KiB; 0: copy everything).
    pub initial_credit_kib: u32,
    /// Turn the kernel side's diagnostics on (`-vv`), shown through `tracing` at debug level.
    pub kernel_log: bool,
    /// Count the programs' run time (see [`Probe::run_time`]).
    pub bpf_stats: bool,
    /// Load this variant of the data programs instead of the one the kernel's features choose
    /// (tests run the older kernels' variants on a new kernel with it).
    pub variant: Option<Variant>,
}

/// The loaded, attached programs and the maps userspace drives.
pub struct Probe {
    /// Keeps the programs and their attachments alive; dropping it detaches everything.
    ebpf: Ebpf,
    targets: HashMap<MapData, u32, Target>,
    comms: HashMap<MapData, [u8; COMM_LEN], u32>,
    cgroups: HashMap<MapData, u64, u32>,
    /// The configuration as written; `add_cgroup` turns the cgroup lookup on in it, and the
    /// first TLS library attached the TLS flag.
    config: Config,
    /// What the kernel can do, and the variant of the data programs loaded.
    pub features: Features,
    pub variant: Variant,
    /// The kernel side's diagnostics, when on.
    kernel_log: Option<aya_log::EbpfLogger<KernelLog>>,
    /// Keeps the kernel counting programs' run time while open (`--bpf-stats`).
    stats: Option<std::os::fd::OwnedFd>,
    /// The TLS probes loaded (not attached: they are attached per library found).
    tls_loaded: bool,
}

/// Where the TLS probes go in a library file ([`sites`]).
#[derive(Clone, Debug)]
pub struct TlsOffsets(Vec<sites::Site>);

impl TlsOffsets {
    /// Reads the library's symbols and code. An error when it is not ELF or has none of the
    /// functions.
    pub fn read(path: &Path) -> Result<Self, ProbeError> {
        let f = symbols::functions(path, &sites::names())?;
        let sites = sites::plan(&f);
        if sites.is_empty() {
            return Err(ProbeError::NoTlsFunctions);
        }
        for s in &sites {
            let how = if s.emulated {
                "emulated"
            } else {
                "single-stepped"
            };
            tracing::debug!("{}: {} at {:#x} ({how})", path.display(), s.what, s.offset);
        }
        Ok(Self(sites))
    }

    /// The places probed.
    pub fn sites(&self) -> &[sites::Site] {
        &self.0
    }
}

/// The TLS probes attached to one library for one process (or for all). Dropping it takes
/// them off, slowly: hand it to a [`Detacher`].
#[derive(Debug)]
pub struct TlsLinks {
    links: Vec<UProbeLink>,
    /// Places probed (a function, or the inner function of two).
    pub places: usize,
}

impl Probe {
    /// Loads the programs, configures them from this kernel's BTF and tracefs, and attaches them.
    pub fn load(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ProbeError::NotRoot);
        }
        if BPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        raise_memlock_limit();
        raise_file_limit();
        let tracefs_root = tracefs::ensure_mounted()?;
        let tp = tracefs::tracepoint_offsets(&tracefs_root)?;
        let kernel = offsets::Layouts::open(Path::new(offsets::VMLINUX_BTF))?.kernel_offsets()?;
        let mut flags = config_flags::READY;
        if opts.unix {
            flags |= config_flags::UNIX;
        }
        let features = Features::probe();
        let variant = opts.variant.unwrap_or_else(|| features.variant());
        tracing::info!(?features, ?variant, "kernel BPF features");
        let config = Config {
            kernel,
            tp,
            max_chunks_per_syscall: opts
                .max_capture_per_syscall
                .div_ceil(CHUNK_SIZE as u32)
                .min(variant.max_chunks()),
            flags,
            initial_credit_kib: opts.initial_credit_kib,
            ring_bytes: opts.ring_bytes,
        };
        tracing::debug!(?config, "BPF configuration");

        // aya-log's level lives in the object's read-only data: at 0 the verifier drops every
        // diagnostic as dead code.
        let log_level: u8 = if opts.kernel_log {
            aya_log::Level::Debug as u8
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::EVENTS, opts.ring_bytes)
            .override_global(aya_log::LEVEL, &log_level, true)
            .load(BPF_OBJECT)
            .map_err(ProbeError::Load)?;
        {
            let map = ebpf
                .map_mut(maps::CONFIG)
                .ok_or(ProbeError::MissingMap(maps::CONFIG))?;
            let mut cfg: Array<_, Config> = Array::try_from(map).map_err(map_err(maps::CONFIG))?;
            cfg.set(0, config, 0).map_err(map_err(maps::CONFIG))?;
        }
        let targets = take_map(&mut ebpf, maps::TARGETS)?;
        let targets = HashMap::try_from(targets).map_err(map_err(maps::TARGETS))?;
        let comms = take_map(&mut ebpf, maps::COMMS)?;
        let comms = HashMap::try_from(comms).map_err(map_err(maps::COMMS))?;
        let cgroups = take_map(&mut ebpf, maps::CGROUPS)?;
        let cgroups = HashMap::try_from(cgroups).map_err(map_err(maps::CGROUPS))?;

        for name in programs::SCHED_TRACEPOINTS {
            attach_tracepoint(&mut ebpf, programs::SCHED, name, name)?;
        }
        let btf = Btf::from_sys_fs().map_err(ProbeError::Btf)?;
        // The copy loop first: the exit program's tail calls find it from its first run.
        if variant != Variant::Full {
            load_copy_loop(&mut ebpf, &btf)?;
        }
        let exit = format!("{}{}", programs::SYS_EXIT, variant.suffix());
        for (prog, hook) in [
            (programs::SCHED_PROCESS_FORK, programs::SCHED_PROCESS_FORK),
            (programs::SYS_ENTER, programs::SYS_ENTER),
            (&exit, programs::SYS_EXIT),
        ] {
            attach_btf_tracepoint(&mut ebpf, &btf, prog, hook)?;
        }
        tracing::debug!("BPF programs attached");
        let kernel_log = if opts.kernel_log {
            match aya_log::EbpfLogger::init_with_logger(&mut ebpf, KernelLog) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!("kernel diagnostics unavailable: {e}");
                    None
                }
            }
        } else {
            None
        };
        // Parsing the kernel's BTF (here and in aya) took tens of MiB that are free now: give
        // them back rather than keep them as the process's high-water mark.
        crate::heap::trim();
        let tls_loaded = match load_tls(&mut ebpf, variant) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("TLS libraries will not be read: {e}");
                false
            }
        };
        let stats = if opts.bpf_stats {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!("the kernel will not count BPF run time: {e}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            ebpf,
            targets,
            comms,
            cgroups,
            config,
            features,
            variant,
            kernel_log,
            stats,
            tls_loaded,
        })
    }

    /// Attaches the TLS probes to OpenSSL's functions in the library at `path` (a path
    /// through /proc/PID/root, so any mount namespace's file), for process `pid` only (its
    /// threads, and what it execs; the kernel puts no breakpoint in other processes' memory) or
    /// for every process that runs the file (`None`). Returns the attachments, to detach when
    /// the process is gone; an error when the library has none of the functions (stripped, or
    /// not OpenSSL) or the process is gone.
    pub fn attach_tls(
        &mut self,
        path: &Path,
        offsets: &TlsOffsets,
        pid: Option<u32>,
    ) -> Result<TlsLinks, ProbeError> {
        if !self.tls_loaded {
            return Err(ProbeError::TlsNotLoaded);
        }
        let scope = match pid.and_then(std::num::NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        let ret = format!("{}{}", programs::SSL_RETURN, self.variant.suffix());
        let mut links = TlsLinks {
            links: Vec::new(),
            places: 0,
        };
        let mut first_err = None;
        for site in &offsets.0 {
            let (offset, ret_prog) = (site.offset, site.ret.unwrap_or(&ret));
            // The return probe first: an entry without its return would keep a stale call.
            let r = attach_uprobe(&mut self.ebpf, ret_prog, offset, path, scope).and_then(|r| {
                attach_uprobe(&mut self.ebpf, site.entry, offset, path, scope).map(|e| [r, e])
            });
            match r {
                Ok(pair) => {
                    links.links.extend(pair);
                    links.places += 1;
                }
                // The process ended: no other function will do better.
                Err(e) if pid.is_some() && is_no_such_process(&e) => {
                    return Err(ProbeError::ProcessGone(links));
                }
                Err(e) => {
                    tracing::debug!("{}: {}: {e:?}", path.display(), site.what);
                    first_err.get_or_insert(e);
                }
            }
        }
        if links.places == 0 {
            return Err(first_err.unwrap_or(ProbeError::NoTlsFunctions));
        }
        self.set_flag(config_flags::TLS)?;
        Ok(links)
    }

    /// Kernel time spent in sniffer's programs and how many times they ran, when counted.
    pub fn run_time(&self) -> Option<(std::time::Duration, u64)> {
        self.stats.as_ref()?;
        let mut total = (std::time::Duration::ZERO, 0);
        for (name, prog) in self.ebpf.programs() {
            if let Ok(info) = prog.info() {
                tracing::debug!(
                    program = name,
                    runs = info.run_count(),
                    ns_per_run = info.run_time().as_nanos() / u128::from(info.run_count().max(1)),
                    "BPF run time"
                );
                total.0 += info.run_time();
                total.1 += info.run_count();
            }
        }
        Some(total)
    }

    /// Shows the kernel side's diagnostics that arrived since the last call (`-vv`).
    pub fn flush_kernel_log(&mut self) {
        if let Some(l) = &mut self.kernel_log {
            l.flush();
        }
    }

    /// The ring buffer of events, for [`crate::events::Reader`]. Only the first call succeeds.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = take_map(&mut self.ebpf, maps::EVENTS)?;
        RingBuf::try_from(map).map_err(map_err(maps::EVENTS))
    }

    /// The sockets map, for the reader's final offsets of sockets that ended without a close.
    pub fn take_sockets(&mut self) -> Result<HashMap<MapData, SockKey, SockState>, ProbeError> {
        let map = take_map(&mut self.ebpf, maps::SOCKETS)?;
        HashMap::try_from(map).map_err(map_err(maps::SOCKETS))
    }

    /// The kernel's table of who connected, for the connections whose accept came first.
    pub fn take_connectors(&mut self) -> Result<Connectors, ProbeError> {
        let map = take_map(&mut self.ebpf, maps::CONNECTORS)?;
        Ok(Connectors(
            Array::try_from(map).map_err(map_err(maps::CONNECTORS))?,
        ))
    }

    /// The copy-control map, for the bounded copy.
    pub fn take_copy_control(&mut self) -> Result<CopyControl, ProbeError> {
        let map = take_map(&mut self.ebpf, maps::COPY_CTL)?;
        Ok(CopyControl {
            map: HashMap::try_from(map).map_err(map_err(maps::COPY_CTL))?,
            failed: 0,
        })
    }

    /// Traces process `tgid` (all its threads) from now on. A process the kernel side made a
    /// target already (a traced parent forked it) keeps its entry: its count of fd changes
    /// under way (`Target::fds_busy`) must not go back to 0 while one is.
    pub fn add_target(&mut self, tgid: u32, how: u32) -> Result<(), ProbeError> {
        match self.targets.insert(tgid, new_target(how), BPF_NOEXIST) {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            r => r.map_err(map_err(maps::TARGETS)),
        }
    }

    /// The targets map's fd, for a child to add itself between fork and exec.
    pub fn targets_fd(&self) -> RawFd {
        self.targets.map().fd().as_fd().as_raw_fd()
    }

    /// Makes every process of cgroup `id` (a cgroup v2 directory's inode number) a target at
    /// its first traced syscall: the kernel checks each process that is not a target yet, so
    /// processes that join the cgroup later are traced too. The first call turns that check on.
    pub fn add_cgroup(&mut self, id: u64) -> Result<(), ProbeError> {
        self.cgroups
            .insert(id, 1, 0)
            .map_err(map_err(maps::CGROUPS))?;
        self.set_flag(config_flags::CGROUPS)
    }

    /// Turns on a [`config_flags`] bit in the kernel's config, once.
    fn set_flag(&mut self, flag: u32) -> Result<(), ProbeError> {
        if self.config.flags & flag != 0 {
            return Ok(());
        }
        self.config.flags |= flag;
        let map = self
            .ebpf
            .map_mut(maps::CONFIG)
            .ok_or(ProbeError::MissingMap(maps::CONFIG))?;
        let mut cfg: Array<_, Config> = Array::try_from(map).map_err(map_err(maps::CONFIG))?;
        cfg.set(0, self.config, 0).map_err(map_err(maps::CONFIG))
    }

    /// Forgets cgroup `id` (its directory is gone: a stopped unit). Its processes that are
    /// targets stay targets until they exit.
    pub fn remove_cgroup(&mut self, id: u64) -> Result<(), ProbeError> {
        match self.cgroups.remove(&id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(maps::CGROUPS)(e)),
        }
    }

    /// How many processes are targets now (one map walk: call it now and then, not per event).
    pub fn target_count(&self) -> usize {
        self.targets.keys().filter(Result::is_ok).count()
    }

    /// Makes every process that execs with this name a target. Returns the name as the kernel
    /// keeps it (cut to 15 bytes).
    pub fn add_comm(&mut self, name: &str) -> Result<String, ProbeError> {
        let mut key = [0u8; COMM_LEN];
        let n = name.len().min(COMM_LEN - 1);
        key[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.comms.insert(key, 1, 0).map_err(map_err(maps::COMMS))?;
        Ok(String::from_utf8_lossy(&key[..n]).into_owned())
    }

    /// Sums of the per-CPU counters, indexed by [`sniffer_common::counters`].
    pub fn counters(&self) -> Result<[u64; counters::COUNT as usize], ProbeError> {
        let mut out = [0u64; counters::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.counter(i as u32)?;
        }
        Ok(out)
    }

    /// One per-CPU counter summed over the CPUs.
    fn counter(&self, key: u32) -> Result<u64, ProbeError> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or(ProbeError::MissingMap(maps::COUNTERS))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(map_err(maps::COUNTERS))?;
        let values = arr.get(&key, 0).map_err(map_err(maps::COUNTERS))?;
        Ok(values.iter().sum())
    }

    /// Events the kernel could not put in the ring buffer so far (data and control): two map
    /// reads, for the reader to check while it is behind.
    pub fn lost_events(&self) -> Result<u64, ProbeError> {
        Ok(self.counter(counters::DATA_EVENTS_LOST)?
            + self.counter(counters::CONTROL_EVENTS_LOST)?)
    }
}

/// What one direction of one socket should copy from now on; `ctl: None` forgets the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyHint {
    pub tgid: u32,
    pub fd: i32,
    /// A [`sniffer_common::dir`] value.
    pub dir: u32,
    pub ctl: Option<CopyCtl>,
}

/// Tells the kernel how much of each stream to copy (see [`sniffer_common::CopyCtl`]).
pub struct CopyControl {
    map: HashMap<MapData, StreamKey, CopyCtl>,
    /// Updates the kernel refused (map full): those streams keep the first window.
    pub failed: u64,
}

impl CopyControl {
    pub fn apply(&mut self, hint: &CopyHint) {
        let key = StreamKey {
            tgid: hint.tgid,
            fd: hint.fd,
            dir: hint.dir,
            _pad: 0,
        };
        let r = match &hint.ctl {
            Some(ctl) => self.map.insert(key, ctl, 0),
            None => self.map.remove(&key),
        };
        if r.is_err() && hint.ctl.is_some() {
            self.failed += 1;
        }
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// Loads program `name` and attaches it to tracepoint `category:tracepoint`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    category: &str,
    tracepoint: &str,
    name: &str,
) -> Result<(), ProbeError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::MissingProgram(name.to_owned()))?
        .try_into()
        .map_err(prog_err(name))?;
    let t = std::time::Instant::now();
    prog.load().map_err(prog_err(name))?;
    tracing::debug!("loaded {name} in {:?}", t.elapsed());
    prog.attach(category, tracepoint).map_err(prog_err(name))?;
    Ok(())
}

/// Loads program `name` for BTF tracepoint `hook` and attaches it.
fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &str,
    hook: &str,
) -> Result<(), ProbeError> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::MissingProgram(name.to_owned()))?
        .try_into()
        .map_err(prog_err(name))?;
    let t = std::time::Instant::now();
    prog.load(hook, btf).map_err(prog_err(name))?;
    tracing::debug!("loaded {name} in {:?}", t.elapsed());
    prog.attach().map_err(prog_err(name))?;
    Ok(())
}

/// Loads the TLS probes (entries, returns, and the return's copy loop on kernels without
/// bpf_loop); they are attached per library by [`Probe::attach_tls`].
fn load_tls(ebpf: &mut Ebpf, variant: Variant) -> Result<(), ProbeError> {
    let ret = format!("{}{}", programs::SSL_RETURN, variant.suffix());
    let mut names: Vec<&str> = programs::SSL_FUNCTIONS.iter().map(|f| f.1).collect();
    names.sort_unstable();
    names.dedup();
    names.push(programs::SSL_HANDSHAKE_RETURN);
    names.push(&ret);
    if variant != Variant::Full {
        names.push(programs::COPY_MORE_TLS);
    }
    for name in names {
        let prog: &mut UProbe = ebpf
            .program_mut(name)
            .ok_or_else(|| ProbeError::MissingProgram(name.to_owned()))?
            .try_into()
            .map_err(prog_err(name))?;
        let t = std::time::Instant::now();
        prog.load().map_err(prog_err(name))?;
        tracing::debug!("loaded {name} in {:?}", t.elapsed());
    }
    if variant != Variant::Full {
        let name = programs::COPY_MORE_TLS;
        let prog: &mut UProbe = ebpf
            .program_mut(name)
            .ok_or_else(|| ProbeError::MissingProgram(name.to_owned()))?
            .try_into()
            .map_err(prog_err(name))?;
        let fd = prog
            .fd()
            .map_err(prog_err(name))?
            .try_clone()
            .map_err(|e| ProbeError::Program {
                name: name.to_owned(),
                source: e.into(),
            })?;
        let map = ebpf
            .map_mut(maps::COPY_TAIL_TLS)
            .ok_or(ProbeError::MissingMap(maps::COPY_TAIL_TLS))?;
        let mut array = ProgramArray::try_from(map).map_err(map_err(maps::COPY_TAIL_TLS))?;
        array.set(0, &fd, 0).map_err(map_err(maps::COPY_TAIL_TLS))?;
    }
    Ok(())
}

/// Attaches the loaded uprobe or uretprobe `name` at `offset` in the file at `path`, for the
/// processes of `scope` (the programs check the traced processes themselves). The link is
/// sniffer's to drop (see [`Detacher`]), not the program's.
fn attach_uprobe(
    ebpf: &mut Ebpf,
    name: &str,
    offset: u64,
    path: &Path,
    scope: UProbeScope,
) -> Result<UProbeLink, ProbeError> {
    let prog: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::MissingProgram(name.to_owned()))?
        .try_into()
        .map_err(prog_err(name))?;
    let id = prog
        .attach(UProbeAttachLocation::AbsoluteOffset(offset), path, scope)
        .map_err(prog_err(name))?;
    prog.take_link(id).map_err(prog_err(name))
}

/// perf_event_open(2) said ESRCH: the process to probe is gone.
fn is_no_such_process(e: &ProbeError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(libc::ESRCH)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Loads the tail-called copy loop and puts it in slot 0 of its program array.
fn load_copy_loop(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), ProbeError> {
    let name = programs::COPY_MORE;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::MissingProgram(name.to_owned()))?
        .try_into()
        .map_err(prog_err(name))?;
    // Loaded for sys_exit like the exit program: a tail call only reaches its own kind.
    prog.load(programs::SYS_EXIT, btf).map_err(prog_err(name))?;
    let fd = prog
        .fd()
        .map_err(prog_err(name))?
        .try_clone()
        .map_err(|e| ProbeError::Program {
            name: name.to_owned(),
            source: e.into(),
        })?;
    let map = ebpf
        .map_mut(maps::COPY_TAIL)
        .ok_or(ProbeError::MissingMap(maps::COPY_TAIL))?;
    let mut array = ProgramArray::try_from(map).map_err(map_err(maps::COPY_TAIL))?;
    array.set(0, &fd, 0).map_err(map_err(maps::COPY_TAIL))
}

/// Hands aya-log's records (the kernel side's diagnostics) to `tracing`.
struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "sniffer::kernel", "{}", record.args());
    }

    fn flush(&self) {}
}

/// The file limit sniffer started with, for the command it starts.
static INHERITED_FILE_LIMIT: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// The soft and hard file limits sniffer started with (before [`Probe::load`] raised them).
pub fn inherited_file_limit() -> Option<(u64, u64)> {
    INHERITED_FILE_LIMIT.get().copied()
}

/// Every TLS probe on a traced process is a file descriptor (14 per library and process): a
/// service with dozens of workers passes the usual soft limit of 1024. Up to the hard limit.
fn raise_file_limit() {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) != 0 || rlim.rlim_cur >= rlim.rlim_max {
            return;
        }
        let _ = INHERITED_FILE_LIMIT.set((rlim.rlim_cur, rlim.rlim_max));
        rlim.rlim_cur = rlim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
            tracing::debug!(
                "raising RLIMIT_NOFILE failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "raising RLIMIT_MEMLOCK failed: {}",
            io::Error::last_os_error()
        );
    }
}

/// bpf(2)'s map update flag: only when the key has no value yet (uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

/// A targets map entry for a process that becomes a target now: its fds are looked at afresh
/// (`Target::replaced_ns`, in the kernel's clock: CLOCK_MONOTONIC, as `bpf_ktime_get_ns`).
/// clock_gettime is async-signal-safe: [`add_self_to_targets`] calls this between fork and exec.
fn new_target(how: u32) -> Target {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given. CLOCK_MONOTONIC always exists;
    // were it to fail, u64::MAX still makes every socket's fd looked at.
    let replaced_ns = if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0 {
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    } else {
        u64::MAX
    };
    Target {
        how,
        _pad: 0,
        replaced_ns,
        fds_gen: 0,
        fds_busy: 0,
        no_socket: [0; sniffer_common::no_socket::NOTES],
    }
}

/// Adds the calling process to the targets map behind `fd` with the raw bpf(2) syscall.
///
/// For a child between fork and exec (`pre_exec`), where only async-signal-safe calls are
/// allowed: it makes the command a target before its first instruction runs, with no race.
pub fn add_self_to_targets(fd: RawFd) -> io::Result<()> {
    // union bpf_attr for BPF_MAP_UPDATE_ELEM (uapi/linux/bpf.h).
    #[repr(C)]
    struct MapUpdate {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let target = new_target(target_flags::BY_COMMAND);
    let attr = MapUpdate {
        map_fd: fd as u32,
        _pad: 0,
        key: std::ptr::from_ref(&pid) as u64,
        value: std::ptr::from_ref(&target) as u64,
        flags: 0,
    };
    // SAFETY: attr points at a valid bpf_attr prefix whose key and value point at a live u32
    // and a live Target.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            std::ptr::from_ref(&attr),
            size_of::<MapUpdate>() as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel's table of who connected (`sniffer_common::connectors`).
pub struct Connectors(Array<MapData, sniffer_common::connectors::Connector>);

impl crate::owners::ConnectorTable for Connectors {
    fn slot(&self, index: u32) -> Option<sniffer_common::connectors::Connector> {
        self.0.get(&index, 0).ok()
    }
}
