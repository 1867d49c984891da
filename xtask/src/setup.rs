//! `cargo xtask setup`: what building the BPF programs needs, derived from the toolchain.
//!
//! The BPF crate is compiled by a nightly rustc (`-Z build-std`) and linked by bpf-linker,
//! which must load the very LLVM that nightly was built with: it links bitcode that rustc
//! produced. Nightly ships that LLVM as `lib/libLLVM.so.<major>.<minor>-rust-<version>` in its
//! sysroot, so bpf-linker is built against it: a prefix directory under CARGO_HOME (not /tmp:
//! bpf-linker's RUNPATH points at it for good) holds `lib/libLLVM.so` and the versioned name as
//! symlinks into the sysroot, and `cargo install bpf-linker --features llvm-<major>` runs with
//! `LLVM_PREFIX` set to it. Nothing here hard-codes a version: the LLVM major and file name are
//! read from `rustc -vV` and the sysroot. A later nightly with another LLVM gets a new prefix
//! and a rebuilt bpf-linker.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

use crate::run_cmd;

/// The toolchain that builds the BPF crate (`SNIFFER_BPF_TOOLCHAIN`, default `nightly`).
pub fn bpf_toolchain() -> String {
    env::var("SNIFFER_BPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".to_owned())
}

/// CARGO_HOME, where cargo installs binaries.
pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

/// PATH with CARGO_HOME/bin first, so that the BPF build finds the bpf-linker we installed.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let bin = cargo_home().join("bin");
    let mut paths = vec![bin.clone()];
    if let Some(p) = env::var_os("PATH") {
        paths.extend(env::split_paths(&p).filter(|p| *p != bin));
    }
    env::join_paths(paths).unwrap_or_default()
}

/// A rustup toolchain as far as the BPF build is concerned.
struct Toolchain {
    name: String,
    sysroot: PathBuf,
    llvm_major: u32,
    /// The LLVM shared library inside the sysroot.
    libllvm: PathBuf,
}

fn rustc(toolchain: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc"])
        .args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `22` from the `LLVM version: 22.1.4` line of `rustc -vV`.
fn llvm_major(verbose_version: &str) -> Option<u32> {
    verbose_version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The versioned LLVM shared library among a sysroot's lib/ entries, e.g.
/// `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn libllvm_name<'a>(names: impl IntoIterator<Item = &'a str>, major: u32) -> Option<&'a str> {
    let prefix = format!("libLLVM.so.{major}.");
    names.into_iter().find(|n| n.starts_with(&prefix))
}

fn probe_toolchain(name: &str) -> anyhow::Result<Option<Toolchain>> {
    let Some(vv) = rustc(name, &["-vV"]) else {
        return Ok(None);
    };
    let llvm_major =
        llvm_major(&vv).ok_or_else(|| anyhow!("`rustc +{name} -vV` names no LLVM version"))?;
    let sysroot = rustc(name, &["--print", "sysroot"])
        .map(|s| PathBuf::from(s.trim()))
        .ok_or_else(|| anyhow!("`rustc +{name} --print sysroot` failed"))?;
    let lib = sysroot.join("lib");
    let names: Vec<String> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let file = libllvm_name(names.iter().map(String::as_str), llvm_major).ok_or_else(|| {
        anyhow!(
            "toolchain {name} ships no libLLVM.so.{llvm_major}.* in {}; bpf-linker needs the \
             LLVM of the rustc that compiles the BPF crate",
            lib.display()
        )
    })?;
    Ok(Some(Toolchain {
        name: name.to_owned(),
        llvm_major,
        libllvm: lib.join(file),
        sysroot,
    }))
}

impl Toolchain {
    fn has_rust_src(&self) -> bool {
        self.sysroot
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .is_file()
    }

    /// The LLVM_PREFIX for building bpf-linker against this toolchain's LLVM.
    fn llvm_prefix(&self) -> PathBuf {
        let file = self.libllvm.file_name().unwrap_or_default();
        cargo_home().join("sniffer-llvm").join(file)
    }
}

/// The first `name` on PATH (CARGO_HOME/bin first).
fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&path_with_cargo_bin())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether `bpf-linker` runs and loads exactly the toolchain's libLLVM.
fn bpf_linker_matches(tc: &Toolchain) -> bool {
    let Some(linker) = which("bpf-linker") else {
        return false;
    };
    let runs = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runs {
        return false;
    }
    let Ok(out) = Command::new("ldd").arg(&linker).output() else {
        return false;
    };
    let want = fs::canonicalize(&tc.libllvm).ok();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        // "\tlibLLVM.so.22.1-rust-1.97.0-nightly => /path/to/it (0x...)"
        l.contains("libLLVM")
            && l.split("=>")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| fs::canonicalize(p).ok())
                .is_some_and(|p| Some(p) == want)
    })
}

/// Setup when something is missing; cheap when all is there.
pub fn ensure() -> anyhow::Result<()> {
    let name = bpf_toolchain();
    match probe_toolchain(&name)? {
        Some(tc) if tc.has_rust_src() && bpf_linker_matches(&tc) => Ok(()),
        _ => setup(),
    }
}

pub fn setup() -> anyhow::Result<()> {
    let name = bpf_toolchain();
    let tc = match probe_toolchain(&name)? {
        Some(tc) => tc,
        None => {
            eprintln!("xtask: installing the {name} toolchain");
            run_cmd(
                Command::new("rustup")
                    .args(["toolchain", "install", &name, "--profile", "minimal"])
                    .args(["--component", "rust-src"]),
            )
            .with_context(|| {
                format!(
                    "no {name} toolchain and rustup cannot install one; install a nightly \
                     whose LLVM major bpf-linker supports and set SNIFFER_BPF_TOOLCHAIN to it"
                )
            })?;
            probe_toolchain(&name)?
                .ok_or_else(|| anyhow!("toolchain {name} still missing after install"))?
        }
    };
    eprintln!(
        "xtask: BPF toolchain {} (LLVM {}, {})",
        tc.name,
        tc.llvm_major,
        tc.libllvm.display()
    );
    if !tc.has_rust_src() {
        eprintln!("xtask: adding rust-src to {}", tc.name);
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &tc.name,
        ]))?;
    }
    if bpf_linker_matches(&tc) {
        eprintln!("xtask: bpf-linker already links this LLVM");
        return Ok(());
    }
    let prefix = tc.llvm_prefix();
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file = tc.libllvm.file_name().unwrap_or_default();
    for link in [lib.join("libLLVM.so"), lib.join(file)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&tc.libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), tc.libllvm.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker against LLVM {} (about a minute)",
        tc.llvm_major
    );
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(
        Command::new(cargo)
            .args(["install", "bpf-linker", "--force", "--no-default-features"])
            .args(["--features", &format!("llvm-{}", tc.llvm_major)])
            .env("LLVM_PREFIX", &prefix),
    )
    .with_context(|| {
        format!(
            "installing bpf-linker with LLVM {}; if bpf-linker has no llvm-{} feature, use a \
             nightly whose LLVM it supports (SNIFFER_BPF_TOOLCHAIN)",
            tc.llvm_major, tc.llvm_major
        )
    })?;
    if !bpf_linker_matches(&tc) {
        bail!(
            "bpf-linker was installed but does not load {}; is {} on PATH ahead of another \
             bpf-linker?",
            tc.libllvm.display(),
            cargo_home().join("bin").display()
        );
    }
    eprintln!("xtask: setup done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_verbose_version() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn libllvm_is_the_versioned_shared_object() {
        let names = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "rustlib",
        ];
        assert_eq!(
            libllvm_name(names, 22),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(libllvm_name(names, 21), None);
    }
}
