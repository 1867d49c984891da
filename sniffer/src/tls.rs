//! TLS libraries in traced processes: found where the processes map them, probed once each.
//!
//! Every traced process is looked at when tracing starts, and again whenever the kernel says
//! it mapped executable code from a file (a library loaded at start, or by dlopen later:
//! Python loads `_ssl` and libssl on first use). Each distinct OpenSSL library (the system's,
//! or a copy in a venv or wheel) is probed once, by its device and inode, through
//! `/proc/PID/root` so that a process in another mount namespace is probed in its own file.
//! A library that cannot be probed (stripped, or not OpenSSL) is reported once.
//!
//! The system's own OpenSSL is probed when tracing starts, before any traced process maps it:
//! a process started later (`--comm`, `-- COMMAND`) makes its first TLS calls within
//! milliseconds of loading the library, sooner than its mapping could be noticed. Probes sit
//! on the library file, for every process that runs it; the programs stop at once for a
//! process not traced (a trap into the kernel, about a microsecond per call).
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::PathBuf,
};

use crate::probe::Probe;

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

/// The TLS libraries probed so far, and those that could not be.
#[derive(Debug, Default)]
pub struct TlsLibs {
    /// (device, inode) -> the path it was first seen at.
    probed: HashMap<(String, u64), String>,
    refused: HashSet<(String, u64)>,
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

/// `major:minor` of a device number, as /proc/PID/maps writes it.
fn dev_name(dev: u64) -> String {
    format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev))
}

impl TlsLibs {
    /// Probes the OpenSSL libraries in the system's library directories.
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
                // Named by the file itself, not a link to it.
                let real = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                let m = Mapped {
                    dev: dev_name(meta.dev()),
                    inode: meta.ino(),
                    path: real.display().to_string(),
                };
                self.attach(m, path, "the system's", probe);
            }
        }
    }

    fn attach(&mut self, m: Mapped, path: PathBuf, whose: &str, probe: &mut Probe) {
        let key = (m.dev.clone(), m.inode);
        if self.probed.contains_key(&key) || self.refused.contains(&key) {
            return;
        }
        match probe.attach_tls(&path) {
            Ok(n) => {
                tracing::info!(
                    "reading TLS plaintext through {} ({whose}, {n} functions probed)",
                    m.path
                );
                self.probed.insert(key, m.path);
            }
            Err(e) => {
                eprintln!(
                    "sniffer: {} ({whose}): its TLS functions cannot be probed ({e}); TLS \
                     connections through it are counted, not read",
                    m.path
                );
                self.refused.insert(key);
            }
        }
    }

    /// Looks at what process `pid` maps and probes the OpenSSL libraries not probed yet.
    pub fn scan(&mut self, pid: u32, probe: &mut Probe) {
        let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        for m in libssl_mappings(&maps) {
            let path = PathBuf::from(format!("/proc/{pid}/root{}", m.path));
            self.attach(m, path, &format!("pid {pid}"), probe);
        }
    }

    /// The libraries probed, by path.
    pub fn probed(&self) -> impl Iterator<Item = &str> {
        self.probed.values().map(String::as_str)
    }
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
