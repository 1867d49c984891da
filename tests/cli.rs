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
        "nothing to trace: give --pid PID, --comm NAME, --unit NAME, --cgroup PATH, --devstack, \
         or a command after --",
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

#[test]
fn version_names_the_revision_and_the_build_date() {
    let out = run(&["--version"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--version failed: {out:?}");
    // sniffer 0.1.0 (git 0fdd985a1b2c, built 2026-11-30)
    let line = stdout.trim();
    let fields = line
        .strip_prefix(concat!("sniffer ", env!("CARGO_PKG_VERSION"), " (git "))
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.split_once(", built "));
    let Some((rev, date)) = fields else {
        panic!("not `sniffer VERSION (git REV, built DATE)`: {line:?}");
    };
    let hash = rev.strip_suffix("-dirty").unwrap_or(rev);
    // A build from a checkout names its commit; only one from elsewhere may say unknown.
    let from_checkout = sniffer_tests::workspace().join(".git").exists();
    assert!(
        (hash.len() >= 12 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            || (!from_checkout && rev == "unknown"),
        "revision {rev:?} in {line:?}"
    );
    let b = date.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    assert!(
        b.len() == 10
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10),
        "date {date:?} is not YYYY-MM-DD in {line:?}"
    );
    let (month, day): (u32, u32) = (date[5..7].parse().unwrap(), date[8..10].parse().unwrap());
    assert!(
        (1..=12).contains(&month) && (1..=31).contains(&day),
        "date {date:?}"
    );
}

#[test]
fn merge_names_the_input_it_cannot_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.jsonl");
    assert_usage_error(
        &run(&["merge", missing.to_str().unwrap(), "-o", "/dev/null"]),
        &format!("cannot read {}", missing.display()),
    );
    let bad = dir.path().join("bad.jsonl");
    fs::write(&bad, "{\"id\": 1}\n{\"id\": \"two\"}\n").expect("write");
    assert_usage_error(
        &run(&["merge", bad.to_str().unwrap(), "-o", "/dev/null"]),
        &format!("{}: line 2: not an exchange record", bad.display()),
    );
    let empty = dir.path().join("empty.jsonl");
    fs::write(&empty, "\n").expect("write");
    assert_usage_error(
        &run(&["merge", empty.to_str().unwrap(), "-o", "/dev/null"]),
        "no exchange records in it",
    );
    // A binary file is bad input too, not a crash.
    let binary = dir.path().join("binary.jsonl");
    fs::write(&binary, [0xff, 0xfe, 0x00, 0x01]).expect("write");
    assert_usage_error(
        &run(&["merge", binary.to_str().unwrap(), "-o", "/dev/null"]),
        "cannot read",
    );
}

#[test]
fn an_otlp_url_sniffer_cannot_use_is_named() {
    assert_usage_error(
        &run(&[
            "--otlp",
            "https://collector:4318",
            "--comm",
            "x",
            "-o",
            "/dev/null",
        ]),
        "--otlp https://collector:4318: only http:// is supported",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let one = dir.path().join("one.jsonl");
    fs::write(&one, "{\"id\": 1}\n").expect("write");
    assert_usage_error(
        &run(&[
            "merge",
            one.to_str().unwrap(),
            "-o",
            "/dev/null",
            "--otlp",
            "http://h:0",
        ]),
        "the port is not a number from 1 to 65535",
    );
}

#[test]
fn follow_with_the_log_on_stdout_is_refused() {
    assert_usage_error(
        &run(&["--follow", "-o", "-", "--comm", "x"]),
        "--follow and -o - would both write to stdout: give the log a file with -o",
    );
}
