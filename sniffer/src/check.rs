//! `sniffer check`: can this host run a capture? One line per requirement (ok, degraded,
//! missing) with what follows, then the proof: sniffer's programs loaded and attached for
//! real. Exit 0 when a capture will work, 2 when not.
use std::{fmt, fs, path::Path};

use sniffer_common::{CHUNK_SIZE, KernelOffsets, OFFSET_ABSENT, Variant, programs};

use crate::probe::{
    Features, Probe, ProbeOptions, TlsOffsets,
    offsets::{Layouts, VMLINUX_BTF},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Degraded,
    Missing,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Missing => "missing",
        })
    }
}

/// One requirement's verdict.
#[derive(Clone, Debug)]
pub struct Line {
    pub status: Status,
    pub what: &'static str,
    pub detail: String,
}

impl Line {
    fn new(status: Status, what: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            what,
            detail: detail.into(),
        }
    }
}

/// Runs every check, prints them, and returns the exit code (0 or 2).
pub fn run() -> u8 {
    let lines = checks();
    for l in &lines {
        println!("{:<9} {:<15} {}", l.status, l.what, l.detail);
    }
    let degraded = lines
        .iter()
        .filter(|l| l.status == Status::Degraded)
        .count();
    match lines.iter().find(|l| l.status == Status::Missing) {
        Some(l) => {
            println!(
                "sniffer check: no capture on this host: {}: {}",
                l.what, l.detail
            );
            2
        }
        None if degraded > 0 => {
            println!(
                "sniffer check: a capture will work here, with {degraded} degraded part{} (above)",
                if degraded == 1 { "" } else { "s" }
            );
            0
        }
        None => {
            println!("sniffer check: a capture will work here");
            0
        }
    }
}

fn checks() -> Vec<Line> {
    let mut lines = vec![kernel()];
    let root = privileges(&mut lines);
    let btf = btf(&mut lines);
    lines.push(lockdown(root));
    lines.push(tracefs(root));
    if let Some(layouts) = &btf {
        lines.push(btf_tracepoints(layouts));
    }
    if !root {
        lines.push(Line::new(
            Status::Missing,
            "BPF features",
            "not probed: probing loads BPF programs, which needs root",
        ));
        return lines;
    }
    let features = Features::probe();
    lines.extend(feature_lines(&features));
    lines.push(memlock());
    lines.push(tls_places());
    if lines.iter().all(|l| l.status != Status::Missing) {
        lines.push(load());
    }
    lines
}

/// Where the TLS probes would sit in the system's OpenSSL: on instructions the kernel emulates
/// after a breakpoint, or on ones it single-steps, a second trap per call (probe::sites).
fn tls_places() -> Line {
    let libs = crate::tls::system_libraries();
    if libs.is_empty() {
        return Line::new(
            Status::Ok,
            "TLS probes",
            "no OpenSSL in the system's library directories (a traced process's own is probed)",
        );
    }
    let mut stepped = false;
    let mut details = Vec::new();
    for lib in &libs {
        match TlsOffsets::read(lib) {
            Ok(o) => {
                // The handshake functions run once per connection; reads and writes per call.
                let slow: Vec<&str> = o
                    .sites()
                    .iter()
                    .filter(|s| !s.emulated && s.ret.is_none())
                    .map(|s| s.what.as_str())
                    .collect();
                let n = o.sites().len();
                details.push(if slow.is_empty() {
                    format!(
                        "{}: reads and writes on emulated instructions ({n} places)",
                        lib.display()
                    )
                } else {
                    stepped = true;
                    format!(
                        "{}: {} single-stepped (a second trap per call)",
                        lib.display(),
                        slow.join(", ")
                    )
                });
            }
            Err(e) => details.push(format!("{}: not probed: {e}", lib.display())),
        }
    }
    let status = if stepped {
        Status::Degraded
    } else {
        Status::Ok
    };
    Line::new(status, "TLS probes", details.join("; "))
}

fn kernel() -> Line {
    // SAFETY: uname fills the struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Line::new(Status::Ok, "kernel", "unknown (uname failed)");
    }
    let s = |f: &[libc::c_char]| {
        // SAFETY: uname's fields are NUL-terminated.
        unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    let (release, machine) = (s(&u.release), s(&u.machine));
    if machine != "x86_64" {
        return Line::new(
            Status::Missing,
            "kernel",
            format!("{release} on {machine}: this build of sniffer is for x86_64"),
        );
    }
    Line::new(Status::Ok, "kernel", format!("{release} ({machine})"))
}

/// Capability bits in /proc/self/status CapEff.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn privileges(lines: &mut Vec<Line>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let caps = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |c: u32| caps & (1 << c) != 0;
    if euid != 0 {
        lines.push(Line::new(
            Status::Missing,
            "privileges",
            format!("running as uid {euid}: run sniffer as root (sudo)"),
        ));
        return false;
    }
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        lines.push(Line::new(Status::Ok, "privileges", "root"));
    } else {
        lines.push(Line::new(
            Status::Missing,
            "privileges",
            "root without CAP_SYS_ADMIN, or CAP_BPF and CAP_PERFMON (a restricted container?)",
        ));
    }
    true
}

fn btf(lines: &mut Vec<Line>) -> Option<Layouts> {
    let path = Path::new(VMLINUX_BTF);
    let layouts = match Layouts::open(path) {
        Ok(l) => l,
        Err(e) => {
            lines.push(Line::new(Status::Missing, "BTF", e.to_string()));
            return None;
        }
    };
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    lines.push(Line::new(
        Status::Ok,
        "BTF",
        format!(
            "{VMLINUX_BTF} ({:.1} MiB)",
            size as f64 / f64::from(1 << 20)
        ),
    ));
    lines.push(match layouts.kernel_offsets() {
        Ok(k) => offsets_line(&k),
        Err(e) => Line::new(Status::Missing, "struct offsets", e.to_string()),
    });
    Some(layouts)
}

/// Members the programs can do without, and what is lost without each.
fn optional_members(k: &KernelOffsets) -> [(u32, &'static str, &'static str); 12] {
    [
        (
            k.task_exit_code,
            "task_struct.exit_code",
            "exit codes not shown",
        ),
        (k.skc_v6_daddr, "skc_v6_daddr", "no IPv6 addresses"),
        (k.skc_v6_rcv_saddr, "skc_v6_rcv_saddr", "no IPv6 addresses"),
        (k.unix_addr, "unix_sock.addr", "no unix socket paths"),
        (k.unix_peer, "unix_sock.peer", "unix peers not paired"),
        (
            k.unix_address_len,
            "unix_address.len",
            "no unix socket paths",
        ),
        (
            k.unix_address_name,
            "unix_address.name",
            "no unix socket paths",
        ),
        (
            k.sk_peer_pid,
            "sock.sk_peer_pid",
            "unix peers named from /proc only",
        ),
        (
            k.pid_numbers,
            "pid.numbers",
            "unix peers named from /proc only",
        ),
        (k.upid_nr, "upid.nr", "unix peers named from /proc only"),
        (
            k.skc_net,
            "sock.skc_net",
            "network namespaces not told apart",
        ),
        (
            k.net_ns_inum,
            "net.ns.inum",
            "network namespaces not told apart",
        ),
    ]
}

fn offsets_line(k: &KernelOffsets) -> Line {
    let optional = optional_members(k);
    let absent: Vec<String> = optional
        .iter()
        .filter(|(v, _, _)| *v == OFFSET_ABSENT)
        .map(|(_, name, loss)| format!("{name} ({loss})"))
        .collect();
    // Every u32 of the struct is a member offset.
    let total = size_of::<KernelOffsets>() / 4;
    if absent.is_empty() {
        Line::new(
            Status::Ok,
            "struct offsets",
            format!("all {total} members sniffer reads found in BTF"),
        )
    } else {
        Line::new(
            Status::Degraded,
            "struct offsets",
            format!(
                "{} of {total} found; missing: {}",
                total - absent.len(),
                absent.join(", ")
            ),
        )
    }
}

fn lockdown(root: bool) -> Line {
    let path = "/sys/kernel/security/lockdown";
    let text = fs::read_to_string(path).ok().or_else(|| {
        // securityfs is often not mounted where systemd does not run: mount it for the look.
        (root && mount("securityfs", "/sys/kernel/security")).then(|| {
            let text = fs::read_to_string(path).ok();
            let dir = c"/sys/kernel/security";
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(dir.as_ptr(), 0) };
            text
        })?
    });
    let Some(text) = text else {
        return Line::new(
            Status::Ok,
            "lockdown",
            "not reported (no lockdown LSM, or securityfs not mounted)",
        );
    };
    // "none [integrity] confidentiality": the bracketed one is in force.
    let mode = text
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned())
        .unwrap_or_else(|| text.trim().to_owned());
    match mode.as_str() {
        "confidentiality" => Line::new(
            Status::Missing,
            "lockdown",
            "confidentiality: the kernel forbids BPF to read kernel memory (boot with \
             lockdown=integrity or none)",
        ),
        m => Line::new(
            Status::Ok,
            "lockdown",
            format!("{m}: BPF tracing is allowed"),
        ),
    }
}

/// Mounts filesystem type `fstype` at `dir`; whether it worked.
fn mount(fstype: &str, dir: &str) -> bool {
    let (Ok(src), Ok(dst), Ok(ty)) = (
        std::ffi::CString::new(fstype),
        std::ffi::CString::new(dir),
        std::ffi::CString::new(fstype),
    ) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings; no data argument.
    unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) == 0 }
}

fn tracefs(root: bool) -> Line {
    let mounted = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find(|p| Path::new(p).join("events").is_dir());
    let Some(dir) = mounted else {
        return if root {
            Line::new(
                Status::Ok,
                "tracefs",
                "not mounted: sniffer mounts it at /sys/kernel/tracing",
            )
        } else {
            Line::new(
                Status::Missing,
                "tracefs",
                "not mounted, and only root can mount it",
            )
        };
    };
    let events = Path::new(dir).join("events");
    let missing: Vec<String> = programs::SCHED_TRACEPOINTS
        .iter()
        .filter(|t| {
            !events
                .join(programs::SCHED)
                .join(t)
                .join("format")
                .is_file()
        })
        .map(|t| format!("{}:{t}", programs::SCHED))
        .collect();
    if missing.is_empty() {
        Line::new(
            Status::Ok,
            "tracepoints",
            format!(
                "tracefs at {dir}; {} present",
                programs::SCHED_TRACEPOINTS.join(", ")
            ),
        )
    } else {
        Line::new(
            Status::Missing,
            "tracepoints",
            format!("tracefs at {dir} lacks {}", missing.join(", ")),
        )
    }
}

fn btf_tracepoints(layouts: &Layouts) -> Line {
    let missing: Vec<&str> = programs::BTF_TRACEPOINTS
        .iter()
        .copied()
        .filter(|t| !layouts.has_type(&format!("btf_trace_{t}")))
        .collect();
    if missing.is_empty() {
        Line::new(
            Status::Ok,
            "BTF tracepoints",
            programs::BTF_TRACEPOINTS.join(", "),
        )
    } else {
        Line::new(
            Status::Missing,
            "BTF tracepoints",
            format!(
                "BTF has no btf_trace_ type for {}: sniffer attaches there",
                missing.join(", ")
            ),
        )
    }
}

fn feature_lines(f: &Features) -> Vec<Line> {
    let mut lines = Vec::new();
    lines.push(if f.ring_buf {
        Line::new(Status::Ok, "ring buffer", "BPF_MAP_TYPE_RINGBUF")
    } else {
        Line::new(
            Status::Missing,
            "ring buffer",
            "no BPF ring buffer (kernels before 5.8): sniffer cannot send events",
        )
    });
    if !f.tracepoint {
        lines.push(Line::new(
            Status::Missing,
            "tracepoint BPF",
            "BPF programs on tracepoints are refused (CONFIG_BPF_EVENTS off?)",
        ));
    }
    let kib = (f.variant().max_chunks() as usize * CHUNK_SIZE) >> 10;
    lines.push(if f.bpf_loop {
        Line::new(
            Status::Ok,
            "bpf_loop",
            "present: --max-capture-kib (4096) bounds what one syscall copies",
        )
    } else {
        Line::new(
            Status::Degraded,
            "bpf_loop",
            format!(
                "missing (kernels before 5.17): the copy loop runs in tail calls, at most \
                 {kib} KiB copied per syscall whatever --max-capture-kib says; the rest is \
                 counted, not copied (bodies beyond their preview are not copied anyway, so \
                 the log is the same; --full-capture and --dump-streams show gaps)"
            ),
        )
    });
    lines.push(if f.atomic_fetch {
        Line::new(
            Status::Ok,
            "BPF atomics",
            "fetch-and-add: exact stream offsets",
        )
    } else {
        Line::new(
            Status::Degraded,
            "BPF atomics",
            "no fetch-and-add (kernels before 5.12): stream offsets are read, then added; two \
             threads writing one socket at the same instant could overlap (HTTP/1.x clients \
             and servers do not)",
        )
    });
    lines
}

fn memlock() -> Line {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return Line::new(Status::Ok, "memlock", "unknown");
    }
    if r.rlim_cur == libc::RLIM_INFINITY {
        return Line::new(Status::Ok, "memlock", "unlimited");
    }
    let want = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid struct; sniffer does the same at start.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) } == 0 {
        return Line::new(
            Status::Ok,
            "memlock",
            format!(
                "{} KiB, raised to unlimited (as sniffer does)",
                r.rlim_cur >> 10
            ),
        );
    }
    Line::new(
        Status::Ok,
        "memlock",
        format!(
            "{} KiB and cannot be raised: kernels before 5.11 charge BPF maps to it (the \
             load below tells whether they fit)",
            r.rlim_cur >> 10
        ),
    )
}

/// The proof: load and attach everything as a capture would, then detach.
fn load() -> Line {
    let opts = ProbeOptions {
        ring_bytes: sniffer_common::maps::EVENTS_DEFAULT_BYTES,
        max_capture_per_syscall: 4096 << 10,
        unix: true,
        initial_credit_kib: 512,
        kernel_log: false,
        bpf_stats: false,
        variant: None,
    };
    match Probe::load(&opts) {
        Ok(p) => Line::new(
            Status::Ok,
            "BPF programs",
            format!(
                "loaded and attached ({} variant of the data programs), then detached",
                match p.variant {
                    Variant::Full => "full",
                    Variant::NoLoop => "no-bpf_loop",
                    Variant::NoAtomic => "no-atomics",
                }
            ),
        ),
        Err(e) => {
            // The verifier's log follows the first line; the first line says what failed.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("").to_owned();
            Line::new(Status::Missing, "BPF programs", first)
        }
    }
}
