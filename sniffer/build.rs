//! Builds the BPF programs (the `sniffer-ebpf` crate) so that `include_bytes_aligned!` can embed
//! the object in the `sniffer` binary, which is then all a user needs to run.
//!
//! The BPF crate needs a nightly toolchain (`-Z build-std=core` for `bpfel-unknown-none`) and
//! bpf-linker, while everything else builds with stable. Cargo cannot express that as a
//! dependency (artifact dependencies cannot use build-std: rust-lang/cargo#12374, #12375), so
//! this script runs a nested cargo with its own target directory (a shared one would deadlock on
//! cargo's lock, rust-lang/cargo#6412). It does what aya-build does, plus `-C target-cpu=v3`:
//! the per-socket stream offsets need BPF's atomic fetch-and-add, which the default CPU lacks.
//! `cargo xtask setup` installs the toolchain pieces; `SNIFFER_BPF_TOOLCHAIN` names another
//! nightly than `nightly`.
//!
//! `SNIFFER_SKIP_BPF_BUILD=1` writes an empty object instead, so `cargo check`, clippy and the
//! unit tests of userspace logic stay fast and need no nightly. A binary built that way says so
//! and refuses to load.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const SKIP: &str = "SNIFFER_SKIP_BPF_BUILD";
const TOOLCHAIN: &str = "SNIFFER_BPF_TOOLCHAIN";
const BPF_CRATE: &str = "sniffer-ebpf";
const BPF_BIN: &str = "sniffer";

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("{name} not set"))
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    println!("cargo:rerun-if-env-changed={TOOLCHAIN}");
    let out_dir = env_path("OUT_DIR")?;
    let object = out_dir.join(BPF_BIN);
    if env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(&object, b"").with_context(|| format!("writing stub {}", object.display()))?;
        return Ok(());
    }
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("no workspace above {}", manifest_dir.display()))?;
    for dir in [BPF_CRATE, "sniffer-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let toolchain = env::var(TOOLCHAIN).unwrap_or_else(|_| "nightly".to_owned());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let target_dir = out_dir.join("bpf-target");
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        "-Ctarget-cpu=v3".to_owned(),
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "build", "--package", BPF_CRATE])
        .args(["--bin", BPF_BIN, "--release", "--target", target])
        .args(["-Z", "build-std=core", "--color", "never"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo's compiler settings must not leak into the nightly build.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(key);
    }
    let output = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is rustup installed?)"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    forward_diagnostics(&stderr, !output.status.success());
    if !output.status.success() {
        bail!(
            "building the BPF programs failed ({}); run `cargo xtask setup` if the {toolchain} \
             toolchain, its rust-src or bpf-linker is missing",
            output.status
        );
    }
    let built = target_dir.join(target).join("release").join(BPF_BIN);
    copy(&built, &object)
}

/// Shows the nested build's warnings (all of its output when it failed) as cargo warnings.
fn forward_diagnostics(stderr: &str, all: bool) {
    let mut in_block = false;
    for line in stderr.lines() {
        if line.starts_with("warning") || line.starts_with("error") {
            in_block = !line.starts_with("warning: unused manifest key");
        } else if line.is_empty() {
            in_block = false;
        }
        if all || in_block {
            println!("cargo:warning={line}");
        }
    }
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}
