//! The process table: who the traced processes are (pid, parent, name, command line).
//!
//! Filled from /proc for processes traced at start and kept current from the kernel's
//! fork/exec/exit events, so a process that lives for 5 ms is still named. Participant naming
//! rules build on [`Proc`].
use std::{collections::HashMap, fs, path::Path};

/// What we know of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// The kernel's name for it (at most 15 bytes).
    pub comm: String,
    /// argv, when /proc could still be read.
    pub cmdline: Vec<String>,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Default)]
pub struct ProcTable {
    procs: HashMap<u32, Proc>,
}

impl ProcTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    /// The process's name for display: its comm, or `pid N` when unknown.
    pub fn name(&self, pid: u32) -> String {
        match self.procs.get(&pid) {
            Some(p) if !p.comm.is_empty() => p.comm.clone(),
            _ => format!("pid {pid}"),
        }
    }

    /// Records a process that exists now, from /proc.
    pub fn observe(&mut self, pid: u32) {
        let (comm, ppid) = read_stat(pid).unwrap_or_default();
        self.procs.insert(
            pid,
            Proc {
                pid,
                ppid,
                comm,
                cmdline: read_cmdline(pid),
                exit_code: None,
            },
        );
    }

    /// A traced process forked `pid`: it starts as a copy of its parent.
    pub fn on_fork(&mut self, pid: u32, ppid: u32, comm: &str) {
        let cmdline = self
            .procs
            .get(&ppid)
            .map(|p| p.cmdline.clone())
            .unwrap_or_default();
        self.procs.insert(
            pid,
            Proc {
                pid,
                ppid,
                comm: comm.to_owned(),
                cmdline,
                exit_code: None,
            },
        );
    }

    /// `pid` exec'd: new name, new command line (read now, while it runs).
    pub fn on_exec(&mut self, pid: u32, comm: &str) {
        let cmdline = read_cmdline(pid);
        let p = self.procs.entry(pid).or_insert_with(|| Proc {
            pid,
            ppid: read_stat(pid).map(|(_, ppid)| ppid).unwrap_or(0),
            ..Proc::default()
        });
        p.comm = comm.to_owned();
        if !cmdline.is_empty() {
            p.cmdline = cmdline;
        }
    }

    /// `pid` exited; it stays known so that its last connections are still named.
    pub fn on_exit(&mut self, pid: u32, code: i32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exit_code = Some(code);
        }
    }

    /// A process seen only through its sockets (its fork or exec event was lost).
    pub fn ensure(&mut self, pid: u32) {
        if !self.procs.contains_key(&pid) {
            self.observe(pid);
        }
    }
}

/// `(comm, ppid)` from the text of /proc/PID/stat. The comm is in parentheses and may itself
/// hold spaces and parentheses, so the fields after it are found from the last `)`.
pub fn parse_stat(text: &str) -> Option<(String, u32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, ppid))
}

/// argv from the NUL-separated text of /proc/PID/cmdline.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The `Tgid:` line of /proc/PID/status.
pub fn parse_tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn read_stat(pid: u32) -> Option<(String, u32)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn read_cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| parse_cmdline(&b))
        .unwrap_or_default()
}

/// The process (thread group) that `pid` belongs to, or None when it does not exist.
pub fn tgid_of(pid: u32) -> Option<u32> {
    parse_tgid(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Every process now: pid -> (comm, ppid).
fn all_processes() -> HashMap<u32, (String, u32)> {
    let Ok(dir) = fs::read_dir(Path::new("/proc")) else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

/// Processes descending from `root` now (children, grandchildren...), not `root` itself.
pub fn descendants(root: u32) -> Vec<u32> {
    let all = all_processes();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, (_, ppid)) in &all {
        children.entry(*ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if c != root && !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// Processes whose comm is `comm` now.
pub fn find_by_comm(comm: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = all_processes()
        .into_iter()
        .filter(|(_, (c, _))| c == comm)
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let text = "4242 (uwsgi (worker 1)) S 4200 4242 4242 0 -1 4194560 1 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(("uwsgi (worker 1)".to_owned(), 4200))
        );
    }

    #[test]
    fn stat_plain() {
        assert_eq!(
            parse_stat("1 (systemd) S 0 1 1 0 -1"),
            Some(("systemd".to_owned(), 0))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(
            parse_cmdline(b"/usr/bin/python3\0/usr/local/bin/openstack\0image\0list\0"),
            vec![
                "/usr/bin/python3",
                "/usr/local/bin/openstack",
                "image",
                "list"
            ]
        );
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn tgid_from_status() {
        let status = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1234\nNgid:\t0\nPid:\t1240\n";
        assert_eq!(parse_tgid(status), Some(1234));
        assert_eq!(parse_tgid("Name:\tx\n"), None);
    }

    #[test]
    fn table_follows_fork_exec_exit() {
        let mut t = ProcTable::new();
        t.procs.insert(
            10,
            Proc {
                pid: 10,
                ppid: 1,
                comm: "bash".into(),
                cmdline: vec!["bash".into()],
                exit_code: None,
            },
        );
        t.on_fork(4_000_000, 10, "bash");
        assert_eq!(t.get(4_000_000).unwrap().cmdline, vec!["bash"]);
        // pid 4_000_000 does not exist: exec keeps the inherited command line.
        t.on_exec(4_000_000, "curl");
        assert_eq!(t.name(4_000_000), "curl");
        t.on_exit(4_000_000, 0);
        assert_eq!(t.get(4_000_000).unwrap().exit_code, Some(0));
        assert_eq!(t.name(99), "pid 99");
    }
}
