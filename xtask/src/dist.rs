//! `cargo xtask dist`: one file to copy to a host that has no Rust toolchain (a devstack VM).
//!
//! A release build of sniffer for x86_64-unknown-linux-musl, statically linked, with the BPF
//! object embedded by sniffer/build.rs as in every build. The result is checked (static by its
//! ELF headers, `file` and `ldd`; `--version` runs) and copied to
//! `target/dist/sniffer-<version>-x86_64-linux` and `target/dist/sniffer`, each with a
//! `.sha256` beside it in `sha256sum` format, so `sha256sum -c` checks the copy on the host.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use sha2::{Digest as _, Sha256};

use crate::{cargo, run_cmd, setup, workspace};

const TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds, checks and copies the static binary; returns its versioned path.
pub fn dist() -> anyhow::Result<PathBuf> {
    setup::ensure()?;
    ensure_target()?;
    let mut cmd = cargo();
    cmd.args(["build", "--package", "sniffer", "--release"])
        .args(["--target", TARGET])
        // The BPF build is the point here, whatever the caller's environment says.
        .env_remove("SNIFFER_SKIP_BPF_BUILD");
    run_cmd(&mut cmd)?;
    let built = workspace()
        .join("target")
        .join(TARGET)
        .join("release")
        .join("sniffer");
    check_static(&built)?;
    // `sniffer 0.1.0 (git 0fdd985a1b2c, built 2026-11-30)`: it runs, and names its version.
    let said = version_of(&built)?;
    let version = said
        .strip_prefix("sniffer ")
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("unexpected --version output {said:?}"))?;
    eprintln!("xtask: {said}");

    let dir = workspace().join("target").join("dist");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let versioned = dir.join(format!("sniffer-{version}-x86_64-linux"));
    for path in [&versioned, &dir.join("sniffer")] {
        // Copied, then checked where it landed: that is the file the user takes away.
        fs::copy(&built, path)
            .with_context(|| format!("copying {} to {}", built.display(), path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("file name")?;
        let sum = dir.join(format!("{name}.sha256"));
        fs::write(&sum, format!("{hex}  {name}\n"))
            .with_context(|| format!("writing {}", sum.display()))?;
        ensure!(
            version_of(path)? == said,
            "{} differs from {}",
            path.display(),
            built.display()
        );
    }
    let shown = versioned
        .strip_prefix(workspace())
        .unwrap_or(&versioned)
        .display()
        .to_string();
    println!(
        "{shown}: {} bytes ({:.1} MiB), static x86_64 Linux, sha256 {hex}",
        bytes.len(),
        bytes.len() as f64 / (1024.0 * 1024.0)
    );
    println!("target/dist/sniffer: the same file (sha256sum -c sniffer.sha256 in target/dist)");
    Ok(versioned)
}

/// What `bin --version` prints, failing unless it runs and succeeds.
fn version_of(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success(),
        "{} --version failed ({}): {said}",
        bin.display(),
        out.status
    );
    Ok(said)
}

/// Adds the musl target to the toolchain that builds sniffer when its standard library is
/// missing (rustup downloads it from static.rust-lang.org).
fn ensure_target() -> anyhow::Result<()> {
    let libdir = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .current_dir(workspace())
        .output()
        .context("cannot run rustc")?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&libdir.stdout).trim());
    let has_std = fs::read_dir(&libdir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    });
    if !has_std {
        eprintln!("xtask: adding the {TARGET} target");
        run_cmd(
            Command::new("rustup")
                .args(["target", "add", TARGET])
                .current_dir(workspace()),
        )?;
    }
    // mimalloc, sniffer's allocator, is C: for musl it is compiled by musl-gcc.
    let has_musl_gcc = Command::new("musl-gcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_musl_gcc {
        bail!("musl-gcc is missing: install Debian's musl-tools (apt-get install musl-tools)");
    }
    Ok(())
}

/// Fails unless `bin` is statically linked: it must not ask for a dynamic loader (its ELF
/// program headers, checked here), and `file` and `ldd` must agree.
fn check_static(bin: &Path) -> anyhow::Result<()> {
    let elf = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    if let Some(loader) = interpreter(&elf)? {
        bail!("{} is dynamically linked (loader {loader})", bin.display());
    }
    let file: &[&str] = &["statically linked", "static-pie linked"];
    let ldd: &[&str] = &["not a dynamic executable", "statically linked"];
    for (tool, statics) in [("file", file), ("ldd", ldd)] {
        let out = Command::new(tool)
            .arg(bin)
            .output()
            .with_context(|| format!("cannot run {tool} (Debian's package {tool})"))?;
        // ldd says "not a dynamic executable" on stderr and exits 1 for a static binary.
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let said = said.trim();
        eprintln!("xtask: {tool}: {said}");
        ensure!(
            statics.iter().any(|s| said.contains(s)),
            "{tool} does not call {} static: {said}",
            bin.display()
        );
    }
    Ok(())
}

/// The dynamic loader a 64-bit little-endian ELF file asks for (its PT_INTERP), if any.
fn interpreter(elf: &[u8]) -> anyhow::Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().expect("8 bytes"))).ok())
    };
    ensure!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "not a 64-bit little-endian ELF file"
    );
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * usize::from(phentsize);
        let Some(kind) = u32_at(ph) else {
            bail!("truncated ELF program headers");
        };
        if kind == PT_INTERP {
            let (Some(offset), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
                bail!("truncated ELF program headers");
            };
            let end = offset.saturating_add(size);
            let name = elf.get(offset..end).unwrap_or_default();
            let name = String::from_utf8_lossy(name);
            return Ok(Some(name.trim_end_matches('\0').to_owned()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_loader() {
        // The test binary itself: linked against glibc, so it asks for ld-linux.
        let elf = fs::read(std::env::current_exe().unwrap()).unwrap();
        let loader = interpreter(&elf).unwrap();
        assert!(loader.is_some_and(|l| l.contains("ld-")), "no loader found");
    }

    #[test]
    fn what_is_not_elf_is_refused() {
        assert!(interpreter(b"#!/bin/sh\n").is_err());
        assert!(interpreter(b"\x7fELF\x02\x01\x01").is_err());
    }
}
