//! cgroup v2 directories the tests make themselves (no systemd needed): found wherever cgroup2
//! is mounted (/sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup in the VMs), removed on
//! drop with their processes killed.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// The cgroup2 mount point, from /proc/self/mountinfo. Panics when there is none: a test that
/// needs one must not pass without it.
pub fn root() -> PathBuf {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            (right.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| PathBuf::from(f[4]))
        })
        .expect(
            "no cgroup2 filesystem is mounted (the cgroup tests need one: mount -t cgroup2 \
             none /sys/fs/cgroup)",
        )
}

/// A cgroup directory of the test's; rmdir'd on drop, after killing what is in it.
pub struct Dir {
    pub path: PathBuf,
}

impl Dir {
    /// Makes `root/rel` (and the directories above it).
    pub fn new(rel: &str) -> Self {
        let path = root().join(rel);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// Moves process `pid` into it.
    pub fn adopt(&self, pid: u32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path.display()));
    }

    /// Makes `cmd` start in this cgroup, before its first instruction.
    pub fn spawn_inside(&self, cmd: &mut Command) {
        let procs = self.path.join("cgroup.procs");
        let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: open/write/close are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The pids in it.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
}

/// Kills everything in `dir` and below, then removes the directories, deepest first.
fn remove(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        for &p in &pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if (pids.is_empty() && fs::remove_dir(dir).is_ok()) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        remove(&self.path);
    }
}
