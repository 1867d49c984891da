//! `sniffer check` on the kernel it runs on: every requirement named, the BPF features probed
//! as this kernel has them (5.10's lack of bpf_loop and atomics shows as degraded), the
//! programs loaded for real; without root, exit code 2 and why.
use std::process::Command;

use sniffer_tests::{kernel_tests, sniffer_bin};

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The status word of the line about `what`.
fn status<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find(|l| l.get(10..).is_some_and(|r| r.starts_with(what)))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no line about {what:?} in:\n{out}"))
}

#[test]
fn check_passes_names_every_requirement_and_probes_this_kernels_features() {
    if !kernel_tests() {
        return;
    }
    let out = Command::new(sniffer_bin())
        .arg("check")
        .output()
        .expect("run sniffer check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sniffer check failed:\n{stdout}"
    );
    for what in [
        "kernel",
        "privileges",
        "BTF",
        "struct offsets",
        "lockdown",
        "BTF tracepoints",
        "ring buffer",
        "bpf_loop",
        "BPF atomics",
        "memlock",
    ] {
        assert_ne!(status(&stdout, what), "missing", "{what}:\n{stdout}");
    }
    // The system's OpenSSL, where there is one (Debian 12's 3.0 on the host): its reads and
    // writes are probed where the kernel emulates the instruction.
    if std::path::Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3").exists() {
        assert_eq!(status(&stdout, "TLS probes"), "ok", "{stdout}");
        assert!(
            stdout.contains("libssl.so.3: reads and writes on emulated instructions"),
            "{stdout}"
        );
    }
    // tracefs is either mounted (its tracepoints listed) or will be.
    assert!(
        stdout.contains("sched_process_exec, sched_process_exit present")
            || stdout.contains("not mounted: sniffer mounts it"),
        "{stdout}"
    );
    // Debian's kernels carry no backports of these: the version says what the probe must find.
    let v = kernel_version();
    let (want_loop, want_atomics) = (v >= (5, 17), v >= (5, 12));
    assert_eq!(
        status(&stdout, "bpf_loop"),
        if want_loop { "ok" } else { "degraded" },
        "kernel {v:?}:\n{stdout}"
    );
    assert_eq!(
        status(&stdout, "BPF atomics"),
        if want_atomics { "ok" } else { "degraded" },
        "kernel {v:?}:\n{stdout}"
    );
    let variant = match (want_loop, want_atomics) {
        (true, _) => "full",
        (false, true) => "no-bpf_loop",
        (false, false) => "no-atomics",
    };
    assert!(
        stdout.contains(&format!(
            "loaded and attached ({variant} variant of the data programs)"
        )),
        "kernel {v:?} should load the {variant} variant:\n{stdout}"
    );
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.starts_with("sniffer check: a capture will work here"),
        "{last}"
    );
}

#[test]
fn check_without_root_exits_2_and_says_why() {
    if !kernel_tests() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("sniffer");
    std::fs::copy(sniffer_bin(), &bin).expect("copy binary");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("check")
        .output()
        .expect("run sniffer check as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert_eq!(status(&stdout, "privileges"), "missing", "{stdout}");
    assert_eq!(
        stdout.lines().last().unwrap_or(""),
        "sniffer check: no capture on this host: privileges: running as uid 65534: run \
         sniffer as root (sudo)"
    );
}
