//! Developer tasks, so that people and CI run the same commands: `cargo xtask <verb>`.
//!
//! - `setup`: make this machine able to build the BPF programs (nightly with rust-src, and
//!   bpf-linker linked against the LLVM inside that nightly), skipping what is already there;
//! - `build [--release]`: the BPF object with nightly, embedded in `target/<profile>/sniffer`;
//! - `dist`: a static x86_64 Linux release binary with its sha256 in `target/dist/`;
//! - `run [--debug] -- ARGS`: build (release unless --debug), then run sniffer as root;
//! - `test`: setup, build, all unit and real-kernel integration tests;
//! - `lint`: rustfmt and clippy with warnings as errors;
//! - `fuzz [--seconds N] [--runs N]`: cargo fuzz on the reassembly, seeded from `fuzz/corpus/`;
//! - `e2e`: keystone + glance-api + the openstack CLI from PyPI, sniffed for real;
//! - `bench`: nginx + wrk, untraced vs traced in pairs, and a memory soak;
//! - `vm-test [--kernel 5.10]`: the kernel tests on Debian's kernels under qemu.
mod bench;
mod dist;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the BPF programs needs (idempotent).
    Setup,
    /// Build sniffer with its BPF programs embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// A static x86_64 Linux release binary to copy to a host, with its sha256, in target/dist/.
    Dist,
    /// Build the release binary, then run it as root with ARGS.
    Run {
        /// Build and run the debug binary instead (it falls behind on bulk transfers).
        #[arg(long, conflicts_with = "release")]
        debug: bool,
        /// The default; still accepted.
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The first thing to run: build the release binary, then `sniffer demo` as root (a small
    /// chain of local HTTP services traced; log, diagram and report in sniffer-demo/).
    Demo {
        /// More `sniffer demo` arguments (after --), e.g. `--dir DIR`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build, and run every test, including those on the real kernel.
    Test {
        /// Extra arguments for `cargo test` (after --), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt --check and clippy -D warnings on every crate, the BPF one included.
    Lint,
    /// What tracing costs: nginx + wrk on 127.0.0.1, untraced vs traced in pairs, and a soak.
    Bench {
        /// Seconds per load run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Untraced/traced pairs per case.
        #[arg(long, default_value_t = 3)]
        pairs: usize,
        /// Seconds of mixed traffic for the memory soak (0: none).
        #[arg(long, default_value_t = 600)]
        soak_seconds: u64,
        /// Size of the large download and upload, in MiB.
        #[arg(long, default_value_t = 1024)]
        big_mib: u64,
        /// Only the syscall loops (what one syscall costs, untraced and traced).
        #[arg(long)]
        syscalls_only: bool,
        /// Only the held-up reader (sniffer stopped under load: memory, losses).
        #[arg(long)]
        stall_only: bool,
    },
    /// The bench's syscall loop, run as a child that sniffer traces by pid.
    #[command(hide = true)]
    SyscallLoop,
    /// End to end on a real OpenStack: keystone, glance-api and the openstack CLI from PyPI.
    E2e {
        /// Extra arguments for `cargo test` (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The kernel tests on other kernels: Debian's cloud kernels booted under qemu.
    VmTest {
        /// A kernel of the matrix (`5.10`, `6.1`, `6.12`), repeatable; default: all.
        #[arg(long = "kernel", value_name = "VERSION")]
        kernels: Vec<String>,
        /// Minutes one guest may run before it counts as failed.
        #[arg(long, default_value_t = 30)]
        timeout_minutes: u64,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 3072)]
        memory_mib: u64,
        /// An extra guest kernel argument, repeatable (`loglevel=8` for every kernel message;
        /// a stuck CPU's backtrace shows at the default, loglevel=5).
        #[arg(long = "kernel-arg", value_name = "ARG")]
        kernel_args: Vec<String>,
        /// Guests run at once (each keeps one host CPU busy); default: one per host CPU, as many
        /// as fit in the memory the host has free.
        #[arg(long)]
        jobs: Option<usize>,
        /// Extra arguments for every test binary (after --), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz the userspace reassembly (cargo fuzz, nightly) for a bounded time or number of runs.
    Fuzz {
        /// How long to run, in seconds (at most, with --runs).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Stop after this many runs (libFuzzer -runs) instead of at the time limit alone.
        #[arg(long)]
        runs: Option<u64>,
        /// The fuzz target (fuzz/fuzz_targets/).
        #[arg(long, default_value = "reassembler")]
        target: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Build { release } => build(release).map(drop),
        Task::Dist => dist::dist().map(drop),
        Task::Run { debug, args, .. } => run(!debug, &args),
        Task::Demo { args } => {
            let mut all = vec!["demo".to_owned()];
            all.extend(args);
            run(true, &all)
        }
        Task::Test { args } => test(&args),
        Task::Lint => lint(),
        Task::Fuzz {
            seconds,
            runs,
            target,
        } => fuzz(seconds, runs, &target),
        Task::E2e { args } => e2e(&args),
        Task::VmTest {
            kernels,
            timeout_minutes,
            memory_mib,
            kernel_args,
            jobs,
            args,
        } => dist::dist().and_then(|bin| {
            // The one file users copy to a host is the one the guests run.
            vm::vm_test(
                &bin,
                &vm::Settings {
                    kernels,
                    test_args: args,
                    timeout_minutes,
                    memory_mib,
                    kernel_args,
                    jobs,
                },
            )
        }),
        Task::Bench {
            seconds,
            pairs,
            soak_seconds,
            big_mib,
            syscalls_only,
            stall_only,
        } => build(true).and_then(|bin| {
            bench::bench(
                &bin,
                &bench::Settings {
                    seconds,
                    pairs,
                    soak_seconds,
                    big_mib,
                    syscalls_only,
                    stall_only,
                },
            )
        }),
        Task::SyscallLoop => bench::syscall_loop(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, without a backtrace of xtask itself.
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, failing with its command line when it fails.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace())
        .env("PATH", setup::path_with_cargo_bin());
    cmd
}

/// Builds sniffer (after setup when a toolchain piece is missing); returns the binary's path.
fn build(release: bool) -> anyhow::Result<PathBuf> {
    setup::ensure()?;
    let mut cmd = cargo();
    cmd.args(["build", "--package", "sniffer"]);
    if release {
        cmd.arg("--release");
    }
    // The BPF build is the point here, whatever the caller's environment says.
    cmd.env_remove("SNIFFER_SKIP_BPF_BUILD");
    run_cmd(&mut cmd)?;
    let bin = workspace()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("sniffer");
    Ok(bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(release: bool, args: &[String]) -> anyhow::Result<()> {
    let bin = build(release)?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    };
    cmd.args(args);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let bin = build(false)?;
    // The OTLP tests send to a real trace store: Arize Phoenix.
    let phoenix = phoenix_venv()?;
    let mut cmd = cargo();
    // The default members: every crate but the BPF one, which only builds for BPF.
    cmd.arg("test")
        .args(args)
        .env("SNIFFER_BIN", &bin)
        .env("SNIFFER_PHOENIX_VENV", &phoenix)
        .env_remove("SNIFFER_SKIP_BPF_BUILD");
    run_cmd(&mut cmd)?;
    if !args.is_empty() {
        return Ok(());
    }
    // The data programs older kernels load, on this kernel: the capture and cgroup tests again
    // with each (`cargo xtask vm-test` runs them on the old kernels themselves).
    for variant in ["noloop", "noatomic"] {
        eprintln!(
            "xtask: capture and cgroup tests with the {variant} variant of the BPF data programs"
        );
        run_cmd(
            cargo()
                .args([
                    "test",
                    "--package",
                    "sniffer-tests",
                    "--test",
                    "capture",
                    "--test",
                    "tls",
                ])
                .args(["--test", "cgroups"])
                .env("SNIFFER_BIN", &bin)
                .env("SNIFFER_BPF_VARIANT", variant)
                .env_remove("SNIFFER_SKIP_BPF_BUILD"),
        )?;
    }
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    setup::ensure()?;
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Default members: every crate but the BPF one, linted below for its own target.
    run_cmd(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The end-to-end test only builds with its feature.
    run_cmd(cargo().args([
        "clippy",
        "--package",
        "sniffer-tests",
        "--features",
        "e2e",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The fuzz crate is a workspace of its own: make sure it still builds against the library.
    run_cmd(
        cargo()
            .args([
                "check",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--target-dir",
            ])
            .arg(workspace().join("target").join("fuzz-check"))
            .env("SNIFFER_SKIP_BPF_BUILD", "1"),
    )?;
    // The BPF crate only builds for the BPF target, with nightly.
    let toolchain = setup::bpf_toolchain();
    run_cmd(
        Command::new("rustup")
            .args([
                "run",
                &toolchain,
                "cargo",
                "clippy",
                "--package",
                "sniffer-ebpf",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .current_dir(workspace())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .env("PATH", setup::path_with_cargo_bin())
            .env(
                "CARGO_TARGET_DIR",
                workspace().join("target").join("bpf-clippy"),
            ),
    )
}

/// Runs a cargo-fuzz target for `seconds` (or `runs` runs), installing cargo-fuzz when
/// missing. New corpus entries go to target/fuzz-corpus, so the committed seeds stay as they
/// are; a crash is left in fuzz/artifacts/ and fails the run.
///
/// Built without a sanitizer: the code under test is safe Rust (no `unsafe` on the reassembly
/// path), so AddressSanitizer finds nothing the Rust checks do not, at ten times the cost per
/// run; overflow checks and debug assertions stay on (cargo fuzz's default). Without
/// comparison tracing either: with the HTTP dictionary (`fuzz/<target>.dict`) a run is 1.6
/// times cheaper and, measured over two minutes from the seeds, reached more edges (6,498
/// against 6,239).
fn fuzz(seconds: u64, runs: Option<u64>, target: &str) -> anyhow::Result<()> {
    let toolchain = setup::bpf_toolchain();
    setup::ensure()?;
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", setup::path_with_cargo_bin())
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        eprintln!("xtask: installing cargo-fuzz");
        run_cmd(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let ws = workspace();
    let scratch = ws.join("target").join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch)?;
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        &toolchain,
        "cargo",
        "fuzz",
        "run",
        "--sanitizer",
        "none",
        "--no-trace-compares",
        target,
    ])
    .arg(&scratch)
    .arg(ws.join("fuzz").join("corpus").join(target))
    .arg("--")
    .arg(format!("-max_total_time={seconds}"))
    .arg("-rss_limit_mb=4096")
    .arg("-print_final_stats=1");
    if let Some(runs) = runs {
        cmd.arg(format!("-runs={runs}"));
    }
    let dict = ws.join("fuzz").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    run_cmd(
        cmd.current_dir(&ws)
            .env("PATH", setup::path_with_cargo_bin())
            // The reassembly needs no BPF object.
            .env("SNIFFER_SKIP_BPF_BUILD", "1")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC"),
    )
}

/// Python packages of the OpenStack test bed (swiftclient: glance's swift store; PyMySQL for
/// MariaDB, python-memcached and pymemcache for the caches, as devstack installs them).
const OPENSTACK_PACKAGES: &[&str] = &[
    "keystone",
    "glance",
    "python-openstackclient",
    "python-swiftclient",
    "uwsgi",
    "PyMySQL",
    "python-memcached",
    "pymemcache",
];
/// Swift, in a venv of its own (its pins and glance's need not agree).
const SWIFT_PACKAGES: &[&str] = &[
    "swift",
    "python-swiftclient",
    "pyeclib",
    "keystonemiddleware",
    "python-memcached",
];

/// Arize Phoenix, a trace store that takes OTLP over HTTP, for the OTLP tests (its venv also
/// has the OpenTelemetry protobuf classes the strict test receiver parses with; a first
/// install takes a few minutes).
fn phoenix_venv() -> anyhow::Result<PathBuf> {
    venv("phoenix-venv", &["arize-phoenix"], &["bin/phoenix"], &[])
}

/// A venv under target/ with `packages`, made or completed when any of `ready` (paths under the
/// venv) is missing or a module of `imports` does not import (about 40 s from PyPI wheels).
fn venv(
    name: &str,
    packages: &[&str],
    ready: &[&str],
    imports: &[&str],
) -> anyhow::Result<PathBuf> {
    let venv = workspace().join("target").join(name);
    let imports_ok = || {
        Command::new(venv.join("bin").join("python"))
            .arg("-c")
            .arg(format!("import {}", imports.join(", ")))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready.iter().all(|p| venv.join(p).exists()) && (imports.is_empty() || imports_ok()) {
        return Ok(venv);
    }
    eprintln!(
        "xtask: installing {} into {}",
        packages.join(", "),
        venv.display()
    );
    if !venv.join("bin").join("pip").is_file() {
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_cmd(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages),
    )?;
    Ok(venv)
}

fn e2e(args: &[String]) -> anyhow::Result<()> {
    let openstack = venv(
        "openstack-venv",
        OPENSTACK_PACKAGES,
        &[
            "bin/openstack",
            "bin/uwsgi",
            "bin/keystone-manage",
            "bin/glance-manage",
            "bin/swift",
        ],
        &["pymysql", "memcache", "pymemcache"],
    )?;
    let swift = venv(
        "swift-venv",
        SWIFT_PACKAGES,
        &["bin/swift-proxy-server", "bin/swift-ring-builder"],
        &["memcache"],
    )?;
    // devstack's front: Debian's apache2 with mod_proxy_uwsgi (.ci/run installs them).
    for (path, package) in [
        ("/usr/sbin/apache2", "apache2"),
        (
            "/usr/lib/apache2/modules/mod_proxy_uwsgi.so",
            "libapache2-mod-proxy-uwsgi",
        ),
        ("/usr/lib/apache2/modules/mod_ssl.so", "apache2"),
        ("/usr/bin/openssl", "openssl"),
        ("/usr/sbin/mariadbd", "mariadb-server"),
        ("/usr/bin/memcached", "memcached"),
        ("/usr/bin/qemu-img", "qemu-utils"),
    ] {
        anyhow::ensure!(
            Path::new(path).exists(),
            "{path} is missing: install Debian's {package} (apt-get install {package})"
        );
    }
    let bin = build(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--package", "sniffer-tests", "--features", "e2e"])
        .args(["--test", "openstack", "--test", "openstack_swift"])
        .args([
            "--test",
            "openstack_apache",
            "--test",
            "openstack_tls",
            "--test",
            "openstack_multihost",
        ])
        .args(args)
        .env("SNIFFER_BIN", &bin)
        .env("SNIFFER_OPENSTACK_VENV", &openstack)
        .env("SNIFFER_SWIFT_VENV", &swift)
        .env_remove("SNIFFER_SKIP_BPF_BUILD");
    run_cmd(&mut cmd)
}
