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
//!
//! It also gives `sniffer --version` the git revision and the build date ([`version`]).
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
    version()?;
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

/// `SNIFFER_GIT_REV` and `SNIFFER_BUILD_DATE` for `sniffer --version`.
///
/// The revision is `git rev-parse --short=12 HEAD`, with `-dirty` when tracked files differ from
/// it, or `unknown` outside a git checkout (or without git). The date is UTC, `YYYY-MM-DD`, from
/// `SOURCE_DATE_EPOCH` when set (reproducible builds), else today. The script reruns when HEAD
/// or the branch it names moves, and when this crate's sources change (so `-dirty` follows
/// edits to them); edits elsewhere in the tree show at the next rerun.
fn version() -> anyhow::Result<()> {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("--no-optional-locks")
            .args(args)
            .current_dir(&manifest_dir)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        out.status.success().then_some(text)
    };
    let rev = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            // HEAD, and the branch it names: a loose ref, else (after `git pack-refs`) the
            // packed ones. Only files that exist: cargo reruns every time for a missing one.
            let mut watch = vec!["HEAD".to_owned()];
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.extend([branch, "packed-refs".to_owned()]);
            }
            for name in watch {
                let Some(path) = git(&["rev-parse", "--git-path", &name]) else {
                    continue;
                };
                let path = manifest_dir.join(path);
                if path.is_file() {
                    println!("cargo:rerun-if-changed={}", path.display());
                    if name.starts_with("refs/") {
                        break;
                    }
                }
            }
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|changes| !changes.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        None => "unknown".to_owned(),
    };
    for own in ["src", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(own).display()
        );
    }
    println!("cargo:rustc-env=SNIFFER_GIT_REV={rev}");

    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let seconds = match env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs()
            .try_into()
            .context("the clock is too far ahead")?,
    };
    let (y, m, d) = civil_from_days(seconds.div_euclid(86_400));
    println!("cargo:rustc-env=SNIFFER_BUILD_DATE={y:04}-{m:02}-{d:02}");
    Ok(())
}

/// The (year, month, day) of a count of days since 1970-01-01 in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the 400-year era, [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
