//! `cargo xtask vm-test`: sniffer's kernel tests on other kernels, in virtual machines.
//!
//! Debian's cloud kernels stand for the kernels devstack hosts run (5.10 bullseye, 6.1 bookworm
//! = Debian 12, 6.12 trixie). Each one is fetched with `apt-get download` through a private
//! sources list under `target/vm/apt` (the system's stays as it is), unpacked with `dpkg-deb`,
//! and booted under `qemu-system-x86_64` with software emulation (`-accel tcg`: nested KVM
//! hangs on these machines). The guest sees the host's root filesystem read-only through
//! virtiofs (the cloud kernels have no 9p) with a tmpfs overlay on top, so it runs the very
//! test binaries, python3 and curl the host has. A small initramfs of our own (busybox and the
//! kernel's virtio, virtiofs and overlay modules) mounts that and runs a guest script, which
//! prints one marker line per test binary on the serial console; the host reads them back.
//! The sniffer under test is `cargo xtask dist`'s static binary: the file users copy to a host.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{run_cmd, workspace};

/// One kernel of the matrix: its `major.minor`, the Debian suite that ships it, and the
/// distributions whose kernels it stands for.
pub struct Kernel {
    pub version: &'static str,
    pub suite: &'static str,
    pub stands_for: &'static str,
}

/// Oldest first; CI runs the first and the last.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        version: "5.10",
        suite: "bullseye",
        stands_for: "Debian 11; the oldest kernel supported (Rocky 9's 5.14 and Ubuntu 22.04's \
                     5.15 lie between this and 6.1)",
    },
    Kernel {
        version: "6.1",
        suite: "bookworm",
        stands_for: "Debian 12",
    },
    Kernel {
        version: "6.12",
        suite: "trixie",
        stands_for: "Debian 13; Ubuntu 24.04's 6.8 lies between 6.1 and this",
    },
];

/// The integration test binaries that need a kernel (the OpenStack end-to-end ones stay on the
/// host: they need minutes of CPU that software emulation would turn into an hour).
const TEST_BINARIES: &[&str] = &[
    "capture",
    "cgroups",
    "check",
    "cli",
    "http",
    "lifecycle",
    "not_http",
    "outputs",
    "tls",
    "live",
    "tracefs",
];

/// Settings of one `vm-test` run.
pub struct Settings {
    /// Kernels to run (`major.minor`); empty: all of [`KERNELS`].
    pub kernels: Vec<String>,
    /// Extra arguments for every test binary (a name filter, `--skip X`).
    pub test_args: Vec<String>,
    /// Minutes a guest may run before it is stopped and counted as failed.
    pub timeout_minutes: u64,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Extra guest kernel arguments, after the defaults (a later `loglevel=` wins).
    pub kernel_args: Vec<String>,
    /// Guests booted at once; `None`: one per host CPU, as many as fit in free memory.
    pub jobs: Option<usize>,
}

/// What one guest run gave.
struct Outcome {
    kernel: String,
    stands_for: &'static str,
    release: String,
    passed: u64,
    failed: u64,
    /// Test binaries that did not report a result (crashed, timed out, guest died).
    missing: Vec<String>,
    elapsed: Duration,
    check: String,
}

pub fn vm_test(sniffer: &Path, settings: &Settings) -> anyhow::Result<()> {
    let kernels: Vec<&Kernel> = if settings.kernels.is_empty() {
        KERNELS.iter().collect()
    } else {
        settings
            .kernels
            .iter()
            .map(|v| {
                KERNELS.iter().find(|k| k.version == v).ok_or_else(|| {
                    anyhow!(
                        "no kernel {v} in the matrix (have {})",
                        KERNELS
                            .iter()
                            .map(|k| k.version)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86")?;
    let busybox = static_busybox()?;
    let virtiofsd = virtiofsd()?;
    let tests = test_binaries()?;
    let root = workspace().join("target").join("vm");
    let apt = Apt::new(&root.join("apt"))?;
    // Kernels are fetched and their initramfs written one after the other (apt-get holds a
    // lock on its directory), then booted side by side.
    let mut ready = Vec::new();
    for k in &kernels {
        let unpacked = apt.kernel(k, &root.join("kernels"))?;
        let initrd = root.join(format!("initrd-{}.cpio", unpacked.release));
        write_initramfs(&unpacked, &busybox, &initrd)?;
        ready.push((*k, unpacked, initrd));
    }
    // A guest emulates both its vCPUs in one host thread (tcg,thread=single), so it keeps one
    // host CPU busy: as many guests at once as there are CPUs, and as fit in the memory the
    // host has free. On a 2-core machine the two kernels of CI take the time of the slower one
    // rather than the sum.
    let jobs = settings.jobs.unwrap_or_else(|| {
        let cpus = thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        guests_at_once(cpus, mem_available_mib(), settings.memory_mib)
    });
    let jobs = jobs.clamp(1, ready.len().max(1));
    println!(
        "xtask: {} kernel(s), {jobs} guest(s) at a time",
        ready.len()
    );
    let mut outcomes = Vec::new();
    for batch in ready.chunks(jobs) {
        let results: Vec<anyhow::Result<Outcome>> = thread::scope(|scope| {
            let running: Vec<_> = batch
                .iter()
                .map(|(k, unpacked, initrd)| {
                    let (qemu, virtiofsd, tests, root) = (&qemu, &virtiofsd, &tests, &root);
                    scope.spawn(move || {
                        boot_and_test(
                            qemu, virtiofsd, sniffer, tests, k, unpacked, initrd, root, settings,
                        )
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a guest's thread panicked")))
                })
                .collect()
        });
        for r in results {
            outcomes.push(r?);
        }
    }
    let table = table(&outcomes);
    println!("\n{table}");
    fs::write(root.join("results.md"), &table)?;
    let bad: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.failed > 0 || !o.missing.is_empty() || o.passed == 0)
        .collect();
    if !bad.is_empty() {
        bail!(
            "kernel tests failed on {}",
            bad.iter()
                .map(|o| o.kernel.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Guests to boot at once: one per CPU, each with its memory and a quarter more (qemu's own,
/// virtiofsd, the page cache the tests need), never fewer than one.
fn guests_at_once(cpus: usize, available_mib: Option<u64>, guest_mib: u64) -> usize {
    let by_memory = available_mib.map_or(usize::MAX, |m| {
        usize::try_from(m / (guest_mib + guest_mib / 4).max(1)).unwrap_or(usize::MAX)
    });
    cpus.min(by_memory).max(1)
}

/// The host's MemAvailable, in MiB.
fn mem_available_mib() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| kernel | release | stands for | tests passed | failed | not run | time | sniffer check |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.0} s | {} |",
            o.kernel,
            o.release,
            o.stands_for,
            o.passed,
            o.failed,
            if o.missing.is_empty() {
                "-".to_owned()
            } else {
                o.missing.join(" ")
            },
            o.elapsed.as_secs_f64(),
            o.check
        );
    }
    s
}

fn require_tool(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    which(name).ok_or_else(|| {
        anyhow!("{name} is missing: install Debian's {package} (apt-get install {package})")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A statically linked busybox for the initramfs (it runs before any library is reachable).
fn static_busybox() -> anyhow::Result<PathBuf> {
    let bb = require_tool("busybox", "busybox-static")?;
    let out = Command::new("file").arg("-L").arg(&bb).output();
    if let Ok(o) = out
        && String::from_utf8_lossy(&o.stdout).contains("dynamically linked")
    {
        bail!(
            "{} is dynamically linked: install Debian's busybox-static",
            bb.display()
        );
    }
    Ok(bb)
}

/// The Rust virtiofsd: Debian's package from trixie on, else built from crates.io once (it
/// needs libseccomp-dev and libcap-ng-dev). Bookworm's qemu carries the older C daemon in
/// /usr/lib/qemu, with other options; it is not used.
fn virtiofsd() -> anyhow::Result<PathBuf> {
    let debian = Path::new("/usr/libexec/virtiofsd");
    if debian.is_file() {
        return Ok(debian.to_path_buf());
    }
    let installed = crate::setup::cargo_home().join("bin").join("virtiofsd");
    if installed.is_file() {
        return Ok(installed);
    }
    eprintln!("xtask: installing virtiofsd from crates.io (about two minutes, once)");
    run_cmd(
        Command::new("cargo")
            .args(["install", "virtiofsd", "--version", "1.14.0", "--locked"])
            .env("PATH", crate::setup::path_with_cargo_bin()),
    )
    .context(
        "building virtiofsd needs libseccomp-dev and libcap-ng-dev (apt-get install \
         libseccomp-dev libcap-ng-dev)",
    )?;
    Ok(installed)
}

/// The kernel test binaries, built on the host (`cargo test --no-run`), by name.
fn test_binaries() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace())
        .args(["test", "--package", "sniffer-tests", "--no-run"])
        .args(["--message-format", "json-render-diagnostics"])
        .env("PATH", crate::setup::path_with_cargo_bin())
        .stderr(Stdio::inherit());
    for t in TEST_BINARIES {
        cmd.args(["--test", t]);
    }
    let out = cmd.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        else {
            continue;
        };
        if TEST_BINARIES.contains(&name) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    for t in TEST_BINARIES {
        if !found.contains_key(*t) {
            bail!("cargo built no test binary {t}");
        }
    }
    Ok(found)
}

/// apt-get with a private sources list, lists and cache under one directory.
struct Apt {
    dir: PathBuf,
}

/// An unpacked kernel package.
struct Unpacked {
    /// `uname -r` of the kernel, e.g. 6.1.0-50-cloud-amd64.
    release: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

impl Apt {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let mut list = String::new();
        for k in KERNELS {
            let _ = writeln!(
                list,
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/debian {} main",
                k.suite
            );
        }
        fs::write(dir.join("sources.list"), list)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn options(&self) -> Vec<String> {
        let d = |s: &str| self.dir.join(s).display().to_string();
        vec![
            format!("-oDir::Etc::sourcelist={}", d("sources.list")),
            "-oDir::Etc::sourceparts=-".to_owned(),
            format!("-oDir::State::Lists={}", d("lists")),
            format!("-oDir::Cache={}", d("cache")),
            // The lists belong to this directory alone.
            "-oAPT::Get::List-Cleanup=0".to_owned(),
            "-oDebug::NoLocking=1".to_owned(),
            // Downloads land in a directory of ours, which apt's own user cannot write.
            "-oAPT::Sandbox::User=root".to_owned(),
        ]
    }

    fn update(&self) -> anyhow::Result<()> {
        let stamp = self.dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or(Duration::MAX) < Duration::from_secs(86400));
        if fresh {
            return Ok(());
        }
        eprintln!(
            "xtask: apt-get update (private sources list {})",
            self.dir.display()
        );
        run_cmd(
            Command::new("apt-get")
                .args(self.options())
                .args(["-qq", "update"]),
        )?;
        fs::write(stamp, b"")?;
        Ok(())
    }

    /// The newest `linux-image-<version>.*-cloud-amd64-unsigned` package, downloaded and
    /// unpacked under `into` (reused when already there).
    fn kernel(&self, k: &Kernel, into: &Path) -> anyhow::Result<Unpacked> {
        let dir = into.join(k.version);
        if let Some(u) = unpacked(&dir)? {
            return Ok(u);
        }
        self.update()?;
        let out = Command::new("apt-cache")
            .args(self.options())
            .args(["search", "--names-only"])
            .arg(format!(
                "^linux-image-{}\\.[0-9.+a-z-]*-cloud-amd64-unsigned$",
                k.version.replace('.', "\\.")
            ))
            .output()
            .context("apt-cache search")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let package = text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .max_by(|a, b| version_cmp(a, b))
            .ok_or_else(|| {
                anyhow!(
                    "Debian's {} has no linux-image-{}*-cloud-amd64-unsigned",
                    k.suite,
                    k.version
                )
            })?
            .to_owned();
        eprintln!("xtask: downloading {package}");
        let debs = self.dir.join("debs");
        run_cmd(
            Command::new("apt-get")
                .args(self.options())
                .args(["-qq", "download", &package])
                .current_dir(&debs),
        )?;
        let deb = fs::read_dir(&debs)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")))
            })
            .ok_or_else(|| anyhow!("apt-get download left no {package}_*.deb"))?;
        let tmp = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir)?;
        unpacked(&dir)?.ok_or_else(|| anyhow!("{} holds no kernel", deb.display()))
    }
}

/// The kernel and modules in an unpacked package directory, if it is complete.
fn unpacked(dir: &Path) -> anyhow::Result<Option<Unpacked>> {
    let boot = dir.join("boot");
    let Ok(entries) = fs::read_dir(&boot) else {
        return Ok(None);
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(release) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        // usr-merged packages (trixie) keep modules under usr/lib.
        for m in ["lib/modules", "usr/lib/modules"] {
            let modules = dir.join(m).join(release);
            if modules.is_dir() {
                return Ok(Some(Unpacked {
                    release: release.to_owned(),
                    vmlinuz: e.path(),
                    modules,
                }));
            }
        }
    }
    Ok(None)
}

/// Debian package names compared by their numeric parts (5.10.0-32 > 5.10.0-30).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let nums = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    nums(a).cmp(&nums(b))
}

/// Modules the guest loads to reach the host's files, in an order that loads dependencies
/// first. Those built into the kernel are simply not found.
const GUEST_MODULES: &[&str] = &["virtio_pci", "virtiofs", "overlay"];

/// Every `.ko` under the modules tree, by module name (`-` and `_` are one to the kernel).
fn module_files(modules: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.split(".ko").next().filter(|_| name.contains(".ko")) {
                out.insert(stem.replace('-', "_"), p);
            }
        }
    }
    Ok(out)
}

/// A module file's bytes, decompressed (busybox's insmod takes plain ELF).
fn module_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(t) => {
            let out = Command::new(t)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("{t} -dc {}", path.display()))?;
            if !out.status.success() {
                bail!("{t} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
    }
}

/// The `depends=` field of a module's .modinfo.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    ko.windows(key.len())
        .position(|w| w == key)
        .map(|at| {
            let rest = &ko[at + key.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Modules `wanted` and their dependencies, dependencies first, with their bytes.
fn module_closure(modules: &Path, wanted: &[&str]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let files = module_files(modules)?;
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        order: &mut Vec<(String, Vec<u8>)>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if depth > 16 || order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        // Not a module file: built into the kernel.
        let Some(path) = files.get(name) else {
            return Ok(());
        };
        let bytes = module_bytes(path)?;
        for dep in module_depends(&bytes) {
            visit(&dep, files, order, depth + 1)?;
        }
        if !order.iter().any(|(n, _)| n == name) {
            order.push((name.to_owned(), bytes));
        }
        Ok(())
    }
    for w in wanted {
        visit(w, &files, &mut order, 0)?;
    }
    Ok(order)
}

/// The guest's first process: load the modules, mount the host's root read-only with a tmpfs
/// overlay, and run the guest script (named on the kernel command line) inside it.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /host /rw /newroot
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do
  insmod /modules/$m.ko || echo "VMTEST-INIT insmod $m failed"
done
fail() { echo "VMTEST-INIT $1"; poweroff -f; }
mount -t virtiofs -o ro hostroot /host || fail "cannot mount the host's root (virtiofs)"
mount -t tmpfs -o mode=755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || fail "cannot mount the overlay"
script=$(sed -n 's/.*vmtest=\([^ ]*\).*/\1/p' /proc/cmdline)
chroot /newroot /bin/bash "$script"
echo "VMTEST-DONE $?"
sync
poweroff -f
"#;

/// Writes the initramfs (an uncompressed newc cpio archive) for one kernel.
fn write_initramfs(k: &Unpacked, busybox: &Path, out: &Path) -> anyhow::Result<()> {
    let mut cpio = Cpio::default();
    for d in ["bin", "modules"] {
        cpio.dir(d);
    }
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("bin/busybox", 0o755, &fs::read(busybox)?);
    let mods = module_closure(&k.modules, GUEST_MODULES)?;
    let mut order = String::new();
    for (name, bytes) in &mods {
        cpio.file(&format!("modules/{name}.ko"), 0o644, bytes);
        let _ = writeln!(order, "{name}");
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as an initramfs.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

/// The script the guest runs inside the host's tree: a machine like a lab host (proc, sys,
/// devpts, loopback up), `sniffer check`, then every test binary, one marker line each.
fn guest_script(sniffer: &Path, tests: &BTreeMap<String, PathBuf>, args: &[String]) -> String {
    let mut s = String::from(
        r#"set -u
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /tmp and /run stay the overlay's (writes land in its tmpfs): a tmpfs over them would hide a
# workspace there, and with it the binaries under test.
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export RUST_BACKTRACE=1 CARGO_TERM_COLOR=never
echo "VMTEST-KERNEL $(uname -r)"
"#,
    );
    let _ = writeln!(
        s,
        "export SNIFFER_BIN={}",
        sh_quote(&sniffer.display().to_string())
    );
    let _ = writeln!(s, "\"$SNIFFER_BIN\" check; echo \"VMTEST-CHECK $?\"");
    let _ = writeln!(s, "cd {}", sh_quote(&workspace().display().to_string()));
    let extra: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
    for (name, exe) in tests {
        let _ = writeln!(
            s,
            "start=$(date +%s); {} --test-threads=1 {} 2>&1 | tee /tmp/{name}.out; \
             echo \"VMTEST-RESULT {name} $(grep -E '^test result:' /tmp/{name}.out | tail -1) \
             secs=$(( $(date +%s) - start ))\"",
            sh_quote(&exe.display().to_string()),
            extra.join(" ")
        );
    }
    s
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[allow(clippy::too_many_arguments)]
fn boot_and_test(
    qemu: &Path,
    virtiofsd: &Path,
    sniffer: &Path,
    tests: &BTreeMap<String, PathBuf>,
    k: &Kernel,
    unpacked: &Unpacked,
    initrd: &Path,
    root: &Path,
    settings: &Settings,
) -> anyhow::Result<Outcome> {
    let run_dir = root.join("run").join(k.version);
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;
    let script = run_dir.join("guest.sh");
    fs::write(&script, guest_script(sniffer, tests, &settings.test_args))?;
    let socket = run_dir.join("virtiofs.sock");
    let mut fsd = ChildGuard(
        Command::new(virtiofsd)
            .arg(format!("--socket-path={}", socket.display()))
            .args(["--shared-dir=/", "--readonly", "--sandbox=none"])
            // Host mounts under / (proc, sys) would be automounts the overlay refuses to cross.
            // cache=always: the guest keeps what it looked up and read without asking again (the
            // host's tree does not change while guests run: everything is built before they
            // boot, and their writes land in the overlay). With cache=auto every exec and open
            // asked virtiofsd again: measured in a 5.10 guest, /bin/true 0.70 -> 0.11 s,
            // `python3 -c pass` 2.2-4.9 -> 0.5-1.3 s, importing http.server 6.4 -> 2.1 s.
            .args([
                "--cache=always",
                "--no-announce-submounts",
                "--log-level=error",
            ])
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", virtiofsd.display()))?,
    );
    let start = Instant::now();
    while !socket.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("virtiofsd made no socket at {}", socket.display());
        }
        if let Ok(Some(st)) = fsd.0.try_wait() {
            bail!("virtiofsd exited: {st}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let mem = format!("{}M", settings.memory_mib);
    eprintln!(
        "xtask: booting {} ({}) under qemu (software emulation)",
        unpacked.release, k.suite
    );
    let console = run_dir.join("console.log");
    let mut qemu_child = ChildGuard(
        Command::new(qemu)
            // thread=single: both vCPUs emulated in one host thread. Under multi-threaded TCG
            // a guest panicked with `Oops: int3` at a static key's NOP in `__schedule` (6.12)
            // and soft-locked on both CPUs (5.10) while sniffer attached and detached its
            // tracepoints, which patch kernel text (INT3, then IPIs); taken for code one vCPU
            // ran stale while the other patched it. Single-threaded, 5.10 and 6.12 ran 64/64 in
            // 501 s and 534 s (two guests side by side), as fast as before.
            .args([
                "-accel",
                "tcg,thread=single",
                "-cpu",
                "max",
                "-smp",
                "2",
                "-m",
                &mem,
            ])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&unpacked.vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            // tsc=reliable: with two emulated CPUs the kernel finds the TSCs unsynchronised and
            // falls back to the HPET, whose every read is an emulated MMIO access; on a loaded
            // host the guest then spent its time in timer interrupts (soft lockups on both
            // CPUs, read_hpet in every backtrace). The TSC of one qemu process is consistent.
            // loglevel=5: warnings, and the backtrace a soft lockup report prints (at the
            // default level, 4), reach the console; notices and below do not.
            .arg(format!(
                "console=ttyS0 panic=-1 quiet loglevel=5 tsc=reliable vmtest={} {}",
                script.display(),
                settings.kernel_args.join(" ")
            ))
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            ])
            .args(["-numa", "node,memdev=mem"])
            .args([
                "-chardev",
                &format!("socket,id=vfs,path={}", socket.display()),
            ])
            .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting qemu")?,
    );
    let stdout = qemu_child
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no qemu stdout"))?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = fs::File::create(&console)?;
    let deadline = Instant::now() + Duration::from_secs(settings.timeout_minutes * 60);
    let mut outcome = Outcome {
        kernel: k.version.to_owned(),
        stands_for: k.stands_for,
        release: unpacked.release.clone(),
        passed: 0,
        failed: 0,
        missing: Vec::new(),
        elapsed: Duration::ZERO,
        check: "not run".to_owned(),
    };
    let mut reported = Vec::new();
    let mut check_lines: Vec<String> = Vec::new();
    let mut in_check = false;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                writeln!(log, "{line}")?;
                if std::env::var_os("SNIFFER_VM_VERBOSE").is_some() {
                    println!("[{}] {line}", k.version);
                }
                if let Some(rest) = line.strip_prefix("VMTEST-RESULT ") {
                    println!("[{}] {rest}", k.version);
                    let name = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let (p, f) = parse_result(rest);
                    match p {
                        Some(p) => {
                            outcome.passed += p;
                            outcome.failed += f.unwrap_or(0);
                            reported.push(name);
                        }
                        None => println!("[{}] {name}: no result line", k.version),
                    }
                } else if let Some(at) = line.find("VMTEST-KERNEL ") {
                    // The console's first line starts with the firmware's escape codes.
                    println!("[{}] {}", k.version, &line[at..]);
                    in_check = true;
                } else if let Some(code) = line.strip_prefix("VMTEST-CHECK ") {
                    in_check = false;
                    outcome.check = match code.trim() {
                        "0" => "exit 0".to_owned(),
                        c => format!("exit {c}"),
                    };
                    // "degraded  bpf_loop        missing (kernels before 5.17)...": the
                    // status, then the requirement in the next 15 columns.
                    let parts: Vec<String> = check_lines
                        .iter()
                        .filter(|l| l.starts_with("degraded") || l.starts_with("missing"))
                        .map(|l| {
                            let status = l.split_whitespace().next().unwrap_or("");
                            let what = l.get(10..25).unwrap_or("").trim();
                            format!("{status}: {what}")
                        })
                        .collect();
                    if !parts.is_empty() {
                        outcome.check = format!("{} ({})", outcome.check, parts.join(", "));
                    }
                } else if in_check {
                    println!("[{}] check: {line}", k.version);
                    check_lines.push(line.clone());
                } else if line.starts_with("VMTEST-INIT ") || line.contains("Kernel panic") {
                    println!("[{}] {line}", k.version);
                } else if line.starts_with("VMTEST-DONE") {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        println!(
            "[{}] stopped after {} minutes",
            k.version, settings.timeout_minutes
        );
    }
    let _ = qemu_child.0.kill();
    let _ = qemu_child.0.wait();
    let _ = fsd.0.kill();
    outcome.elapsed = start.elapsed();
    outcome.missing = tests
        .keys()
        .filter(|t| !reported.contains(t))
        .cloned()
        .collect();
    println!(
        "[{}] console: {} ({:.0} s)",
        k.version,
        console.display(),
        outcome.elapsed.as_secs_f64()
    );
    Ok(outcome)
}

/// "capture test result: ok. 11 passed; 0 failed; ..." -> (passed, failed).
fn parse_result(rest: &str) -> (Option<u64>, Option<u64>) {
    let num_before = |word: &str| -> Option<u64> {
        let at = rest.find(word)?;
        rest[..at].split_whitespace().last()?.parse().ok()
    };
    (num_before(" passed"), num_before(" failed"))
}

/// Kills the child when dropped (an error or a panic must not leave a VM running).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        assert_eq!(
            parse_result("cli test result: ok. 7 passed; 0 failed; 0 ignored; secs=3"),
            (Some(7), Some(0))
        );
        assert_eq!(
            parse_result("capture test result: FAILED. 9 passed; 2 failed; 0 ignored"),
            (Some(9), Some(2))
        );
        assert_eq!(parse_result("capture  secs=40"), (None, None));
    }

    #[test]
    fn guests_fit_the_cpus_and_the_memory() {
        // 2 cores, 23 GiB free, 3 GiB guests: both cores.
        assert_eq!(guests_at_once(2, Some(23_000), 3072), 2);
        // 8 cores but 8 GiB free: two guests of 3 GiB (3.75 with qemu's share).
        assert_eq!(guests_at_once(8, Some(8192), 3072), 2);
        // Too little for one: one anyway (as before, one at a time).
        assert_eq!(guests_at_once(4, Some(1000), 3072), 1);
        assert_eq!(guests_at_once(3, None, 3072), 3);
        // This host's free memory is read.
        assert!(mem_available_mib().is_some_and(|m| m > 0));
    }

    #[test]
    fn kernel_packages_newest_first() {
        let mut v = [
            "linux-image-5.10.0-30-cloud-amd64-unsigned",
            "linux-image-5.10.0-32-cloud-amd64-unsigned",
            "linux-image-5.10.0-9-cloud-amd64-unsigned",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v[2], "linux-image-5.10.0-32-cloud-amd64-unsigned");
    }

    #[test]
    fn modinfo_depends() {
        let ko = b"\x7fELF...license=GPL\0depends=fuse,virtio-ring\0vermagic=6.1\0";
        assert_eq!(module_depends(ko), ["fuse", "virtio_ring"]);
        assert!(module_depends(b"depends=\0").is_empty());
    }

    #[test]
    fn cpio_is_newc_and_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"abc");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("init\0"));
        assert!(s.contains("TRAILER!!!\0"));
    }
}
