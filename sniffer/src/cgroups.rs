//! Targets by service: `--unit NAME`, `--cgroup PATH` and `--devstack` name cgroup v2
//! directories; their ids go into the kernel's CGROUPS map ([`crate::probe::Probe::add_cgroup`]),
//! where every process that is not a target yet is checked at its first traced syscall.
//!
//! A unit is found by its directory's name in the cgroup v2 tree (`devstack@keystone.service`
//! under `system.slice/system-devstack.slice/`), so it needs no systemd client and works with
//! any slice layout. A restarted unit gets a new directory with a new id: [`Watch::refresh`]
//! walks the tree again (once a second) and says which ids came and went.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// statfs(2) magic of cgroup2 (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Directories deeper than this below the root are not searched (systemd nests 3-5 deep).
const MAX_DEPTH: usize = 12;
/// Directories looked at in one walk at most (a host has hundreds).
const MAX_DIRS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (no cgroup2 line in /proc/self/mountinfo); mount one, \
         e.g. `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] std::io::Error),
    #[error("--cgroup {path}: {reason}")]
    NotCgroup { path: PathBuf, reason: String },
}

/// What the user named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// A systemd unit (`devstack@g-api`, `apache2`, `foo.service`).
    Unit(String),
    /// A cgroup v2 directory.
    Path(PathBuf),
    /// Every `devstack@*.service` and `apache2.service`.
    Devstack,
}

/// The unit's directory name: `apache2` -> `apache2.service`; a name with a unit suffix stays.
pub fn unit_dir_name(name: &str) -> String {
    const SUFFIXES: &[&str] = &[".service", ".scope", ".slice", ".socket", ".mount"];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        name.to_owned()
    } else {
        format!("{name}.service")
    }
}

/// Whether a directory name is one `--devstack` takes.
pub fn is_devstack_dir(name: &str) -> bool {
    name == "apache2.service"
        || name
            .strip_prefix("devstack@")
            .and_then(|r| r.strip_suffix(".service"))
            .is_some_and(|s| !s.is_empty())
}

/// The name devstack gives a unit's directory: `devstack@g-api.service` -> `devstack@g-api`.
pub fn unit_label(dir_name: &str) -> &str {
    dir_name.strip_suffix(".service").unwrap_or(dir_name)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount point of the first cgroup2 filesystem in the text of /proc/self/mountinfo
/// (proc(5): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        // Only the hierarchy's root mounted there shows every cgroup.
        let point = fields.get(4)?;
        (fields.get(3) == Some(&"/")).then(|| PathBuf::from(unescape(point)))
    })
}

/// Where cgroup v2 is mounted on this machine (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
/// hybrid systems).
pub fn root() -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
    cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2)
}

/// The id the kernel's `bpf_get_current_cgroup_id()` gives processes of cgroup v2 directory
/// `dir`: its inode number (kernfs node id, 64-bit since 5.5). Checks that it is one.
pub fn id_of(dir: &Path) -> Result<u64, String> {
    let meta = fs::metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| "a NUL in the path".to_owned())?;
    // SAFETY: statfs fills a zeroed struct from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(
            "not in a cgroup v2 hierarchy (cgroup v1 and other filesystems are not \
                    supported)"
                .into(),
        );
    }
    Ok(meta.ino())
}

/// The cgroup v2 directory of process `pid` (`0::/path` in /proc/PID/cgroup), under `root`.
pub fn of_process(root: &Path, pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(rel.trim_start_matches('/')))
}

/// Every directory below `root` (itself included), links not followed.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = todo.pop() {
        if out.len() >= MAX_DIRS {
            break;
        }
        if depth < MAX_DEPTH
            && let Ok(rd) = fs::read_dir(&dir)
        {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push((e.path(), depth + 1));
                }
            }
        }
        out.push(dir);
    }
    out
}

/// One cgroup directory being traced: why (the user's words) and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traced {
    pub id: u64,
    pub label: String,
}

/// What changed since the last refresh.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<(PathBuf, Traced)>,
    pub removed: Vec<(PathBuf, Traced)>,
}

/// The specs the user gave and the directories they name now.
#[derive(Debug)]
pub struct Watch {
    root: PathBuf,
    specs: Vec<Spec>,
    /// sniffer's own cgroup: never traced (sniffer would see its own reads).
    own: Option<PathBuf>,
    pub current: BTreeMap<PathBuf, Traced>,
}

impl Watch {
    /// Checks the `--cgroup` paths (a mistake there is the user's to fix, now).
    pub fn new(root: PathBuf, specs: Vec<Spec>) -> Result<Self, CgroupError> {
        for s in &specs {
            if let Spec::Path(p) = s {
                id_of(p).map_err(|reason| CgroupError::NotCgroup {
                    path: p.clone(),
                    reason,
                })?;
            }
        }
        let own = of_process(&root, std::process::id());
        Ok(Self {
            root,
            specs,
            own,
            current: BTreeMap::new(),
        })
    }

    /// The directories the specs name now, with their descendants.
    fn resolve(&self) -> BTreeMap<PathBuf, Traced> {
        let needs_walk = self.specs.iter().any(|s| !matches!(s, Spec::Path(_)));
        let all = if needs_walk { walk(&self.root) } else { vec![] };
        let user_slice = |p: &Path| p.components().any(|c| c.as_os_str() == "user.slice");
        let mut bases: Vec<(PathBuf, String)> = Vec::new();
        for s in &self.specs {
            match s {
                Spec::Path(p) => bases.push((p.clone(), p.display().to_string())),
                Spec::Unit(u) => {
                    let name = unit_dir_name(u);
                    let found: Vec<&PathBuf> = all
                        .iter()
                        .filter(|p| p.file_name().is_some_and(|n| *n == *name))
                        .collect();
                    // The system manager's unit before a user manager's of the same name.
                    let system: Vec<&PathBuf> =
                        found.iter().copied().filter(|p| !user_slice(p)).collect();
                    let pick = if system.is_empty() { found } else { system };
                    bases.extend(pick.into_iter().map(|p| (p.clone(), u.clone())));
                }
                Spec::Devstack => bases.extend(all.iter().filter_map(|p| {
                    let n = p.file_name()?.to_str()?;
                    (is_devstack_dir(n) && !user_slice(p))
                        .then(|| (p.clone(), unit_label(n).to_owned()))
                })),
            }
        }
        let mut out = BTreeMap::new();
        for (base, label) in bases {
            for dir in walk(&base) {
                if self.own.as_deref() == Some(dir.as_path()) {
                    continue;
                }
                if let Ok(id) = id_of(&dir) {
                    out.entry(dir).or_insert(Traced {
                        id,
                        label: label.clone(),
                    });
                }
            }
        }
        out
    }

    /// Looks again; returns the directories that appeared (or were made anew) and vanished.
    pub fn refresh(&mut self) -> Changes {
        let now = self.resolve();
        let mut ch = Changes::default();
        for (p, t) in &self.current {
            if now.get(p).is_none_or(|n| n.id != t.id) {
                ch.removed.push((p.clone(), t.clone()));
            }
        }
        for (p, t) in &now {
            if self.current.get(p).is_none_or(|c| c.id != t.id) {
                ch.added.push((p.clone(), t.clone()));
            }
        }
        self.current = now;
        ch
    }

    /// Whether sniffer's own cgroup is one the specs name (it is left out).
    pub fn names_own(&self) -> bool {
        let Some(own) = &self.own else { return false };
        self.specs.iter().any(|s| match s {
            Spec::Path(p) => own.starts_with(p),
            _ => false,
        })
    }

    /// The specs that name nothing now (a unit not running).
    pub fn unmatched(&self) -> Vec<String> {
        self.specs
            .iter()
            .filter(|s| {
                !self.current.values().any(|t| match s {
                    Spec::Unit(u) => t.label == *u,
                    Spec::Path(p) => t.label == p.display().to_string(),
                    Spec::Devstack => true,
                })
            })
            .map(|s| match s {
                Spec::Unit(u) => format!("--unit {u}"),
                Spec::Path(p) => format!("--cgroup {}", p.display()),
                Spec::Devstack => "--devstack".to_owned(),
            })
            .collect()
    }
}

/// Processes in cgroup directory `dir` now (its cgroup.procs).
pub fn process_count(dir: &Path) -> usize {
    fs::read_to_string(dir.join("cgroup.procs")).map_or(0, |t| t.lines().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mount_from_mountinfo() {
        // A hybrid host (this project's machine) and a VM: v1 controllers first, then cgroup2.
        let hybrid = "25 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                      31 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                      33 31 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let vm = "20 1 0:5 / / rw - overlay overlay rw\n\
                  40 20 0:30 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(vm), Some(PathBuf::from("/sys/fs/cgroup")));
        // A container's view (a sub-tree mounted) does not show every cgroup; a space escaped.
        let nested = "40 20 0:30 /lxc/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                      41 20 0:31 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(nested), Some(PathBuf::from("/mnt/cg two")));
        assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
    }

    #[test]
    fn unit_names_to_directories() {
        assert_eq!(unit_dir_name("apache2"), "apache2.service");
        assert_eq!(unit_dir_name("devstack@g-api"), "devstack@g-api.service");
        assert_eq!(unit_dir_name("foo.scope"), "foo.scope");
        assert!(is_devstack_dir("devstack@keystone.service"));
        assert!(is_devstack_dir("apache2.service"));
        assert!(!is_devstack_dir("devstack@.service"));
        assert!(!is_devstack_dir("devstack.service"));
        assert!(!is_devstack_dir("devstack@keystone.scope"));
        assert_eq!(unit_label("devstack@g-api.service"), "devstack@g-api");
    }

    #[test]
    fn directories_off_a_cgroup_filesystem_are_refused() {
        let err = id_of(Path::new("/tmp")).unwrap_err();
        assert!(err.contains("not in a cgroup v2 hierarchy"), "{err}");
        let err = id_of(Path::new("/nonexistent/x")).unwrap_err();
        assert!(err.contains("No such file"), "{err}");
        assert!(matches!(
            Watch::new(PathBuf::from("/"), vec![Spec::Path(PathBuf::from("/tmp"))]),
            Err(CgroupError::NotCgroup { .. })
        ));
    }
}
