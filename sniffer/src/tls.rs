//! TLS libraries in traced processes: found where the processes map them, and probed.
//!
//! Every traced process is looked at when tracing starts, and again whenever the kernel says
//! it mapped executable code from a file (a library loaded at start, or by dlopen later:
//! Python loads `_ssl` and libssl on first use). Each distinct OpenSSL library (the system's,
//! or a copy in a venv or wheel) is known by its device and inode and probed through
//! `/proc/PID/root`, so that a process in another mount namespace is probed in its own file.
//! A library that cannot be probed (stripped, or not OpenSSL) is reported once.
//!
//! Probes sit on a traced process only ([`TlsScope::Traced`]): the kernel puts its breakpoints
//! in that process's memory and no other's, so a process not traced pays nothing for them
//! (probed for every process, an untraced nginx serving small HTTPS requests ran at 0.30 of
//! its speed: a trap into the kernel on every call). The system's OpenSSL is probed for a
//! process as soon as sniffer knows its program (at start, at its exec), before it maps the
//! library: a program makes its first TLS calls within milliseconds of loading it, sooner than
//! its mapping could be noticed. A child forked by a traced process that has OpenSSL mapped is
//! probed when its fork is read from the ring buffer, a millisecond or so later: TLS calls it
//! makes before that are not seen. The probes of an ended process come off on worker threads
//! (the kernel takes about 0.1 s per probe). With [`TlsScope::All`] (a traced command, whose
//! children may start TLS at once; cgroups, which processes join without sniffer hearing of
//! it) the probes sit on the library for every process, and the programs stop at once for a
//! process not traced.
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::PathBuf,
};

use crate::probe::{Detacher, Probe, ProbeError, TlsLinks, TlsOffsets};

/// A file mapped by a process, as /proc/PID/maps names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub dev: String,
    pub inode: u64,
    pub path: String,
}

/// Whether a mapped file is an OpenSSL TLS library by its name (libssl.so.3, libssl.so.1.1,
/// libssl-<hash>.so.3 as wheels bundle it; not NSS's libssl3.so).
pub fn is_libssl(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    (name.starts_with("libssl.so") || name.starts_with("libssl-")) && name.contains(".so")
}

/// The files of a /proc/PID/maps text whose names say OpenSSL, each once.
pub fn libssl_mappings(maps: &str) -> Vec<Mapped> {
    let mut out: Vec<Mapped> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut f = line.split_whitespace();
        let (Some(_), Some(_), Some(_), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.collect::<Vec<_>>().join(" ");
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if inode == 0 || !path.starts_with('/') || !is_libssl(&path) {
            continue;
        }
        let m = Mapped {
            dev: dev.to_owned(),
            inode,
            path,
        };
        if !out.iter().any(|o| o.dev == m.dev && o.inode == m.inode) {
            out.push(m);
        }
    }
    out
}

/// Which processes the TLS probes sit on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsScope {
    /// Each traced process, attached when sniffer learns of it.
    Traced,
    /// Every process running the library.
    All,
}

type Key = (String, u64);

/// Threads taking probes off: their waits for the kernel overlap.
const DETACH_WORKERS: usize = 8;

/// An OpenSSL library file found.
#[derive(Debug)]
struct Lib {
    /// Its path in its own mount namespace (as /proc/PID/maps names it).
    path: String,
    /// A path sniffer can open it at: the system's, or through /proc/PID/root.
    open_at: PathBuf,
    /// In the system's library directories: probed for every process traced.
    system: bool,
    /// Probed once at least (so a later failure is a process gone, not a bad library).
    ok: bool,
    /// Where its functions are, read at the first attach.
    offsets: Option<TlsOffsets>,
}

/// The TLS libraries found, the probes on them, and those that could not be probed.
#[derive(Debug)]
pub struct TlsLibs {
    scope: TlsScope,
    libs: HashMap<Key, Lib>,
    refused: HashSet<Key>,
    /// [`TlsScope::All`]: the libraries probed (for every process).
    everywhere: HashMap<Key, TlsLinks>,
    /// [`TlsScope::Traced`]: per process, the libraries probed for it.
    per_pid: HashMap<u32, Vec<(Key, TlsLinks)>>,
    /// Takes the probes of ended processes off, away from the event loop.
    detacher: Detacher,
}

/// Where distributions keep shared libraries (Debian/Ubuntu multiarch, Rocky's lib64).
const SYSTEM_LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/local/lib",
    "/usr/lib",
];

/// The OpenSSL library files in the system's library directories, each once (links resolved).
pub fn system_libraries() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = SYSTEM_LIB_DIRS
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(is_libssl))
        .filter_map(|p| fs::canonicalize(p).ok())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `major:minor` of a device number, as /proc/PID/maps writes it.
fn dev_name(dev: u64) -> String {
    format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev))
}

/// The key /proc/PID/maps gives the file at `path` once mapped: on overlayfs (a container's
/// root, a VM booted on a shared one) stat() reports the overlay's device and inode while
/// the maps name the file underneath, which is also the file the kernel probes; keyed by
/// stat(), one library was probed twice for each process. The file is mapped for a moment and
/// found in this process's own maps.
fn mapped_key(path: &std::path::Path) -> Option<Key> {
    use std::os::fd::AsRawFd as _;
    let file = fs::File::open(path).ok()?;
    // SAFETY: a fresh private read-only mapping of one page of a file we hold open; unmapped
    // below, and nothing reads through it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return None;
    }
    let maps = fs::read_to_string("/proc/self/maps");
    // SAFETY: the mapping made above, one page.
    unsafe { libc::munmap(addr, 1) };
    key_at(&maps.ok()?, addr as usize)
}

/// Whether `path` lies on overlayfs (statfs's magic, linux/magic.h OVERLAYFS_SUPER_MAGIC):
/// only there do stat() and the maps disagree.
fn on_overlayfs(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs for the kernel to fill; c is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both outlive the call.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    // f_type is signed in glibc, unsigned in musl (the static build).
    #[allow(clippy::unnecessary_cast)]
    let f_type = st.f_type as u64;
    r == 0 && f_type == OVERLAYFS_SUPER_MAGIC
}

/// The (device, inode) of the mapping that starts at `addr` in a /proc/PID/maps text.
fn key_at(maps: &str, addr: usize) -> Option<Key> {
    let start = format!("{addr:x}-");
    let line = maps.lines().find(|l| l.starts_with(&start))?;
    let mut f = line.split_whitespace().skip(3);
    let dev = f.next()?.to_owned();
    let inode = f.next()?.parse().ok()?;
    Some((dev, inode))
}

impl TlsLibs {
    pub fn new(scope: TlsScope) -> Self {
        Self {
            scope,
            libs: HashMap::new(),
            refused: HashSet::new(),
            everywhere: HashMap::new(),
            per_pid: HashMap::new(),
            detacher: Detacher::new(DETACH_WORKERS),
        }
    }

    /// Finds the OpenSSL libraries in the system's library directories; with
    /// [`TlsScope::All`] probes them now.
    pub fn probe_system(&mut self, probe: &mut Probe) {
        use std::os::unix::fs::MetadataExt as _;
        for dir in SYSTEM_LIB_DIRS {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_str().is_some_and(is_libssl))
                .collect();
            names.sort();
            for path in names {
                // Symbolic links (libssl.so -> libssl.so.3) lead to the same file: by inode.
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                let key = on_overlayfs(&path)
                    .then(|| mapped_key(&path))
                    .flatten()
                    .unwrap_or_else(|| (dev_name(meta.dev()), meta.ino()));
                if self.libs.contains_key(&key) {
                    continue;
                }
                // Named by the file itself, not a link to it.
                let real = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                self.libs.insert(
                    key.clone(),
                    Lib {
                        path: real.display().to_string(),
                        open_at: path,
                        system: true,
                        ok: false,
                        offsets: None,
                    },
                );
                if self.scope == TlsScope::All {
                    self.attach(&key, None, "the system's", probe);
                }
            }
        }
    }

    /// Probes `key` for process `pid` (`None`: every process). False when it cannot be.
    fn attach(&mut self, key: &Key, pid: Option<u32>, whose: &str, probe: &mut Probe) -> bool {
        if self.refused.contains(key) {
            return false;
        }
        let Some(lib) = self.libs.get_mut(key) else {
            return false;
        };
        let offsets = match &lib.offsets {
            Some(o) => Ok(o.clone()),
            None => TlsOffsets::read(&lib.open_at),
        };
        let t = std::time::Instant::now();
        let attached = offsets.and_then(|o| {
            let r = probe.attach_tls(&lib.open_at, &o, pid);
            lib.offsets = Some(o);
            r
        });
        tracing::debug!("{} ({whose}): probes placed in {:?}", lib.path, t.elapsed());
        match attached {
            Ok(links) => {
                if !lib.ok {
                    tracing::info!(
                        "reading TLS plaintext through {} ({whose}, {} places probed)",
                        lib.path,
                        links.places
                    );
                    lib.ok = true;
                }
                match pid {
                    Some(pid) => self
                        .per_pid
                        .entry(pid)
                        .or_default()
                        .push((key.clone(), links)),
                    None => {
                        self.everywhere.insert(key.clone(), links);
                    }
                }
                true
            }
            Err(ProbeError::ProcessGone(placed)) => {
                self.detacher.release(placed);
                tracing::debug!("{} ({whose}): the process ended", lib.path);
                false
            }
            // The process ended before its probes went on, or its namespace's file is gone.
            Err(e) if lib.ok || pid.is_some_and(|p| !alive(p)) => {
                tracing::debug!("{} ({whose}): {}", lib.path, chain(&e));
                false
            }
            Err(e) => {
                eprintln!(
                    "sniffer: {} ({whose}): its TLS functions cannot be probed ({}); TLS \
                     connections through it are counted, not read",
                    lib.path,
                    chain(&e)
                );
                self.refused.insert(key.clone());
                false
            }
        }
    }

    fn probed_for(&self, key: &Key, pid: u32) -> bool {
        match self.scope {
            TlsScope::All => self.everywhere.contains_key(key),
            TlsScope::Traced => self
                .per_pid
                .get(&pid)
                .is_some_and(|v| v.iter().any(|(k, _)| k == key)),
        }
    }

    /// A process joined the traced set with a program of its own (at start, exec'd, started by
    /// sniffer): the system's libraries are probed for it before it maps them, then those it
    /// maps already. A forked child only needs [`Self::scan`]: it has its parent's mappings.
    pub fn follow(&mut self, pid: u32, probe: &mut Probe) {
        if self.scope == TlsScope::Traced {
            let system: Vec<Key> = self
                .libs
                .iter()
                .filter(|(_, l)| l.system)
                .map(|(k, _)| k.clone())
                .collect();
            for key in system {
                if !self.probed_for(&key, pid) {
                    self.attach(&key, Some(pid), &format!("pid {pid}"), probe);
                }
            }
        }
        self.scan(pid, probe);
    }

    /// Looks at what process `pid` maps and probes the OpenSSL libraries not probed for it.
    pub fn scan(&mut self, pid: u32, probe: &mut Probe) {
        let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        for m in libssl_mappings(&maps) {
            let key = (m.dev.clone(), m.inode);
            if self.probed_for(&key, pid) || self.refused.contains(&key) {
                continue;
            }
            let open_at = PathBuf::from(format!("/proc/{pid}/root{}", m.path));
            let lib = self.libs.entry(key.clone()).or_insert(Lib {
                path: m.path,
                open_at: open_at.clone(),
                system: false,
                ok: false,
                offsets: None,
            });
            // This process's view of the file: another's may be gone.
            if !lib.system {
                lib.open_at = open_at;
            }
            let target = (self.scope == TlsScope::Traced).then_some(pid);
            self.attach(&key, target, &format!("pid {pid}"), probe);
        }
    }

    /// A traced process ended: its probes come off.
    pub fn forget(&mut self, pid: u32) {
        for (_, links) in self.per_pid.remove(&pid).unwrap_or_default() {
            self.detacher.release(links);
        }
    }

    /// sniffer stops: every probe comes off, side by side, within `limit`.
    pub fn finish(mut self, limit: std::time::Duration) {
        for (_, links) in self.per_pid.drain().flat_map(|(_, v)| v) {
            self.detacher.release(links);
        }
        for (_, links) in self.everywhere.drain() {
            self.detacher.release(links);
        }
        self.detacher.finish(limit);
    }

    pub fn scope(&self) -> TlsScope {
        self.scope
    }
}

/// An error and its causes, one after the other.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Whether process `pid` still runs (then an error attaching is the file's, not its end).
fn alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a2e000 r--p 00000000 fe:01 1180107                    /usr/bin/python3.11
7f3a1c000000-7f3a1c021000 rw-p 00000000 00:00 0 
7f3a1e2d5000-7f3a1e2f3000 r--p 00000000 fe:01 1049163                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f3a1e2f3000-7f3a1e34f000 r-xp 0001e000 fe:01 1049163                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f3a1e400000-7f3a1e600000 r-xp 00000000 fe:01 1049160                    /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f3a1e700000-7f3a1e710000 r-xp 00000000 fe:01 2222222                    /opt/venv/lib/python3.11/site-packages/cryptography.libs/libssl-8a4b2c.so.3
7f3a1e800000-7f3a1e810000 r-xp 00000000 fe:01 3333333                    /home/u/my libssl.so.1.1 (deleted)
7ffd1a1f0000-7ffd1a211000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn libssl_found_once_per_file_with_spaces_and_bundled_copies() {
        let m = libssl_mappings(MAPS);
        let paths: Vec<&str> = m.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/opt/venv/lib/python3.11/site-packages/cryptography.libs/libssl-8a4b2c.so.3",
            ]
        );
        assert_eq!((m[0].dev.as_str(), m[0].inode), ("fe:01", 1049163));
    }

    #[test]
    fn a_mapping_is_found_by_its_start_address() {
        assert_eq!(
            key_at(MAPS, 0x7f3a1e2f3000),
            Some(("fe:01".to_owned(), 1049163))
        );
        assert_eq!(key_at(MAPS, 0x7f3a1e2f3001), None);
    }

    /// A library on overlayfs (a container's root, a VM's): its key is the one a process that
    /// loads it shows in its maps. (On this host's kernel the two agree; on the VMs' kernels
    /// of vm-test, whose root is an overlay, stat() named the overlay's device and the maps
    /// the file underneath.)
    #[test]
    fn a_library_on_overlayfs_is_keyed_as_processes_map_it() {
        use std::os::unix::fs::MetadataExt as _;
        let Some(lib) = SYSTEM_LIB_DIRS
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_str().is_some_and(is_libssl) && p.is_file())
        else {
            eprintln!("no libssl: skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|d| dir.path().join(d));
        for d in [&lower, &upper, &work, &merged] {
            fs::create_dir(d).unwrap();
        }
        fs::copy(&lib, lower.join("libssl.so.3")).unwrap();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let mounted = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("cannot mount overlayfs here: skipped");
            return;
        }
        let on_overlay = merged.join("libssl.so.3");
        assert!(on_overlayfs(&on_overlay));
        let key = mapped_key(&on_overlay);
        // A process that loads the library, and what its maps say.
        let shown = std::process::Command::new("python3")
            .args([
                "-c",
                "import ctypes, sys; ctypes.CDLL(sys.argv[1]); print(open('/proc/self/maps').read())",
            ])
            .arg(&on_overlay)
            .output();
        let _ = std::process::Command::new("umount").arg(&merged).status();
        let Ok(shown) = shown else {
            eprintln!("no python3: skipped");
            return;
        };
        let maps = String::from_utf8_lossy(&shown.stdout);
        let m = libssl_mappings(&maps);
        assert_eq!(m.len(), 1, "{maps}");
        assert_eq!(key, Some((m[0].dev.clone(), m[0].inode)));
        // A plain file: the same key as stat() gives.
        let plain = mapped_key(&lib).unwrap();
        let meta = fs::metadata(&lib).unwrap();
        assert_eq!(plain, (dev_name(meta.dev()), meta.ino()));
    }

    #[test]
    fn names() {
        assert!(is_libssl("/lib/libssl.so.1.1"));
        assert!(is_libssl("libssl.so"));
        assert!(!is_libssl("/usr/lib/libcrypto.so.3"));
        assert!(!is_libssl("/usr/lib/libssl_helper.a"));
        assert!(!is_libssl("/usr/lib/x86_64-linux-gnu/libgnutls.so.30"));
        assert!(!is_libssl("/usr/lib/x86_64-linux-gnu/libssl3.so"), "NSS's");
        assert!(!is_libssl("/usr/lib/x86_64-linux-gnu/libssl.a"));
    }
}
