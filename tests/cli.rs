//! What a user who gets something wrong sees: one sentence naming the problem, exit code 2.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    process::{Command, Output},
};

use sniffer_tests::sniffer_bin;

fn run(args: &[&str]) -> Output {
    Command::new(sniffer_bin())
        .args(args)
        .output()
        .expect("run sniffer")
}

fn assert_usage_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code 2 expected; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr lacks {needle:?}:\n{stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one sentence, no backtrace:\n{stderr}"
    );
}

#[test]
fn nothing_to_trace_says_what_to_give() {
    assert_usage_error(
        &run(&["-o", "/dev/null"]),
        "nothing to trace: give --pid PID, --comm NAME, or a command after --",
    );
}

#[test]
fn a_pid_that_does_not_exist_is_named() {
    // Above the kernel's pid_max limit (4194304), so it cannot exist.
    assert_usage_error(
        &run(&["-o", "/dev/null", "--pid", "4194305"]),
        "no process with pid 4194305",
    );
}

#[test]
fn an_output_that_cannot_be_written_is_named() {
    assert_usage_error(
        &run(&["-o", "/nonexistent-dir/x.log", "--comm", "x"]),
        "cannot write /nonexistent-dir/x.log",
    );
}

#[test]
fn a_ring_size_that_is_not_a_power_of_two_is_refused() {
    let out = run(&["--ring-mib", "3", "--comm", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn without_root_it_says_to_run_as_root() {
    // As root, drop to nobody for this run; as another user, run as that user.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let bin = dir.path().join("sniffer");
    fs::copy(sniffer_bin(), &bin).expect("copy binary");
    let log = dir.path().join("out.log");
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd
        .arg("-o")
        .arg(&log)
        .args(["--comm", "x"])
        .current_dir(dir.path())
        .output()
        .expect("run sniffer");
    assert_usage_error(&out, "cannot load BPF programs: not root");
}

#[test]
fn a_filter_file_that_cannot_be_read_is_named() {
    assert_usage_error(
        &run(&[
            "-o",
            "/dev/null",
            "--comm",
            "x",
            "--filter",
            "/nonexistent/filters.json",
        ]),
        "cannot read filter file /nonexistent/filters.json",
    );
}

#[test]
fn a_malformed_filter_file_names_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("bad.json");
    fs::write(&f, "{\n  \"filters\": [\n    {\"from\": }\n  ]\n}\n").expect("write");
    let out = run(&[
        "-o",
        "/dev/null",
        "--comm",
        "x",
        "--filter",
        f.to_str().unwrap(),
    ]);
    assert_usage_error(
        &out,
        &format!("filter file {}, line 3 column 14:", f.display()),
    );
}
