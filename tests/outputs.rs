//! The files sniffer writes as root, in a directory like /tmp that other users can write:
//! planted names are refused in one sentence (exit code 2) before anything is captured, what
//! is written is private, and a disk that fills during the run is reported when it happens,
//! counted, and said by the summary and the exit code (74) while the other outputs go on.
use std::{
    ffi::{CString, OsStr, OsString},
    fs,
    io::Read as _,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{MetadataExt as _, PermissionsExt as _, symlink},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use sniffer_tests::{Guard, Server, kernel_tests, sniffer_bin, workspace};

/// uid and gid of nobody: the other user.
const NOBODY: u32 = 65534;
const LIMIT: Duration = Duration::from_secs(120);
/// The exit code of a run whose outputs are incomplete.
const OUTPUT_INCOMPLETE: i32 = 74;

/// Runs sniffer with `args` to its end (a hang, on a FIFO say, fails the test): the exit code
/// and stderr.
fn sniffer<S: AsRef<OsStr>>(args: &[S]) -> (Option<i32>, String) {
    let mut cmd = Command::new(sniffer_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut g = Guard::spawn(&mut cmd);
    let mut err = g.child.stderr.take().expect("stderr");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = g.wait_timeout(LIMIT);
    (status.code(), reader.join().unwrap_or_default())
}

/// A directory like /tmp: sticky, everyone may write.
fn sticky_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
    d
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).expect("stat").mode() & 0o7777
}

fn write_0644(p: &Path, text: &str) {
    fs::write(p, text).expect("write");
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).expect("chmod");
}

fn chown(p: &Path, uid: u32) {
    let c = CString::new(p.as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, uid) }, 0, "chown");
}

fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Ways to run sniffer, each with a label: (label, arguments).
type Cases = Vec<(String, Vec<OsString>)>;

/// Every way sniffer names a file it writes, pointed at `path`; `dir` holds the rest (the
/// other outputs, the inputs, the marker the traced command leaves when a capture ran).
/// `--dump-streams` is left out: it names a directory (see [`dump_cases`]).
fn file_cases(path: &Path, dir: &Path) -> Cases {
    let (log, jsonl) = (log_input(), jsonl_input(dir));
    let p = path.as_os_str().to_owned();
    let os = |s: &str| OsString::from(s);
    let mut cases = Vec::new();
    for flag in ["-o", "--jsonl", "--har", "--connections", "--raw="] {
        let mut args = Vec::new();
        if flag != "-o" {
            args.extend([os("-o"), dir.join("default.log").into()]);
        }
        if let Some(f) = flag.strip_suffix('=') {
            let mut a = os(f);
            a.push("=");
            a.push(&p);
            args.push(a);
        } else {
            args.extend([os(flag), p.clone()]);
        }
        cases.push((flag.to_owned(), run_args(args, dir)));
    }
    cases.push((
        "diagram -o".into(),
        vec![os("diagram"), log.clone().into(), os("-o"), p.clone()],
    ));
    cases.push((
        "diagram --body".into(),
        vec![
            os("diagram"),
            log.into(),
            os("-o"),
            dir.join("d.md").into(),
            os("--body"),
            p.clone(),
        ],
    ));
    cases.push(("har -o".into(), vec![os("har"), jsonl.into(), os("-o"), p]));
    cases
}

/// A numbered log for `sniffer diagram` to read.
fn log_input() -> PathBuf {
    workspace().join("sniffer/src/diagram/fixtures/reference/image-list/requestshook.log")
}

/// A JSONL of one exchange, in `dir`, for `sniffer har` to read.
fn jsonl_input(dir: &Path) -> PathBuf {
    let jsonl = dir.join("in.jsonl");
    fs::write(
        &jsonl,
        r#"{"id":1,"from":"a","to":"b","method":"GET","url":"http://b/","status":200}"#,
    )
    .expect("write");
    jsonl
}

/// `--dump-streams path`.
fn dump_cases(path: &Path, dir: &Path) -> Cases {
    let args = vec![
        OsString::from("-o"),
        dir.join("default.log").into(),
        "--dump-streams".into(),
        path.into(),
    ];
    vec![("--dump-streams".into(), run_args(args, dir))]
}

/// A run's arguments: `args`, then a traced command that leaves a marker if it ever runs.
fn run_args(mut args: Vec<OsString>, dir: &Path) -> Vec<OsString> {
    args.extend(["--".into(), "touch".into(), dir.join("ran").into()]);
    args
}

/// Each case against a fresh sticky directory: `plant` puts the hazard at the output's path
/// (and returns a check that it and what it points to were left alone); sniffer must refuse
/// in one sentence saying `why`, with exit code 2, before any capture.
fn assert_refused(
    cases: fn(&Path, &Path) -> Cases,
    plant: impl Fn(&Path, &Path) -> Box<dyn Fn()>,
    why: &str,
) {
    let count = cases(Path::new("x"), sticky_dir().path()).len();
    for i in 0..count {
        let scene = sticky_dir();
        let dir = scene.path();
        let out = dir.join("out");
        let left_alone = plant(dir, &out);
        let (label, args) = cases(&out, dir).swap_remove(i);
        let (code, stderr) = sniffer(&args);
        assert_eq!(
            code,
            Some(2),
            "{label}: exit code 2 expected; stderr:\n{stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{label}: one sentence:\n{stderr}"
        );
        let expected = format!("sniffer: cannot write {}: {why}", out.display());
        assert!(
            stderr.starts_with(&expected),
            "{label}: {expected:?} expected:\n{stderr}"
        );
        assert!(
            !dir.join("ran").exists() && !stderr.contains("tracing"),
            "{label}: the capture started"
        );
        left_alone();
    }
}

#[test]
fn a_symlink_to_a_file_is_refused_and_the_file_left_alone() {
    let plant = |dir: &Path, out: &Path| -> Box<dyn Fn()> {
        let victim = dir.join("victim");
        write_0644(&victim, "precious");
        symlink(&victim, out).expect("symlink");
        Box::new(move || {
            assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
            assert_eq!(mode(&victim), 0o644);
        })
    };
    let why = "it is a symbolic link, which sniffer does not follow";
    assert_refused(file_cases, plant, why);
    assert_refused(dump_cases, plant, why);
}

#[test]
fn a_symlink_to_a_directory_is_refused_and_the_directory_left_alone() {
    let plant = |dir: &Path, out: &Path| -> Box<dyn Fn()> {
        let victim = dir.join("victim");
        fs::create_dir(&victim).expect("mkdir");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).expect("chmod");
        symlink(&victim, out).expect("symlink");
        Box::new(move || {
            assert_eq!(fs::read_dir(&victim).expect("ls").count(), 0);
            assert_eq!(mode(&victim), 0o755);
        })
    };
    let why = "it is a symbolic link, which sniffer does not follow";
    assert_refused(file_cases, plant, why);
    assert_refused(dump_cases, plant, why);
}

#[test]
fn a_fifo_is_refused_without_waiting_for_a_reader() {
    let plant = |_: &Path, out: &Path| -> Box<dyn Fn()> {
        mkfifo(out);
        let out = out.to_owned();
        Box::new(move || {
            use std::os::unix::fs::FileTypeExt as _;
            assert!(
                fs::symlink_metadata(&out)
                    .expect("stat")
                    .file_type()
                    .is_fifo()
            );
            assert_eq!(mode(&out), 0o644);
        })
    };
    assert_refused(
        file_cases,
        plant,
        "it is a FIFO (named pipe), not a regular file",
    );
    assert_refused(
        dump_cases,
        plant,
        "it is a FIFO (named pipe), not a directory",
    );
}

#[test]
fn another_users_file_in_a_sticky_directory_is_refused() {
    if !kernel_tests() {
        return;
    }
    let why = format!("it belongs to another user (uid {NOBODY}) in a directory others can write");
    assert_refused(
        file_cases,
        |_: &Path, out: &Path| -> Box<dyn Fn()> {
            write_0644(out, "theirs");
            chown(out, NOBODY);
            let out = out.to_owned();
            Box::new(move || {
                assert_eq!(fs::read_to_string(&out).expect("read"), "theirs");
                assert_eq!(fs::metadata(&out).expect("stat").uid(), NOBODY);
                assert_eq!(mode(&out), 0o644);
            })
        },
        &why,
    );
    assert_refused(
        dump_cases,
        |_: &Path, out: &Path| -> Box<dyn Fn()> {
            fs::create_dir(out).expect("mkdir");
            fs::set_permissions(out, fs::Permissions::from_mode(0o755)).expect("chmod");
            chown(out, NOBODY);
            let out = out.to_owned();
            Box::new(move || {
                assert_eq!(fs::read_dir(&out).expect("ls").count(), 0);
                assert_eq!(mode(&out), 0o755);
            })
        },
        &why,
    );
}

#[test]
fn one_file_named_for_two_outputs_is_refused() {
    let scene = sticky_dir();
    let p = scene.path().join("both");
    let args: Vec<OsString> = run_args(
        vec![
            "-o".into(),
            p.clone().into(),
            "--jsonl".into(),
            p.clone().into(),
        ],
        scene.path(),
    );
    let (code, stderr) = sniffer(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "sniffer: cannot write both {0} and {0}: they are the same file",
            p.display()
        )
    );
}

#[test]
fn a_refused_output_leaves_the_others_as_they_were() {
    let scene = sticky_dir();
    let log = scene.path().join("sniffer.log");
    write_0644(&log, "yesterday's capture");
    let fifo = scene.path().join("fifo");
    mkfifo(&fifo);
    let args = run_args(
        vec![
            "-o".into(),
            log.clone().into(),
            "--jsonl".into(),
            fifo.into(),
        ],
        scene.path(),
    );
    let (code, stderr) = sniffer(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        fs::read_to_string(&log).expect("read"),
        "yesterday's capture"
    );
    assert_eq!(mode(&log), 0o644);
}

/// A directory with index.html, served by the test server.
fn www() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    fs::write(d.path().join("index.html"), "hello\n").expect("write");
    d
}

#[test]
fn existing_world_readable_outputs_are_made_private_and_replaced() {
    if !kernel_tests() {
        return;
    }
    let www = www();
    let server = Server::start(www.path(), &[]);
    let scene = sticky_dir();
    let dir = scene.path();
    let old = "old capture with a token";
    let files = ["a.log", "b.jsonl", "c.har", "d.raw", "e.conns"].map(|n| dir.join(n));
    for f in &files {
        write_0644(f, old);
    }
    let streams = dir.join("streams");
    fs::create_dir(&streams).expect("mkdir");
    fs::set_permissions(&streams, fs::Permissions::from_mode(0o755)).expect("chmod");
    let victim = dir.join("victim");
    write_0644(&victim, "precious");
    symlink(&victim, streams.join("index.jsonl")).expect("symlink");

    let mut args: Vec<OsString> = vec!["-o".into(), files[0].clone().into()];
    for (flag, f) in ["--jsonl", "--har", "--raw=", "--connections"]
        .iter()
        .zip(&files[1..])
    {
        match flag.strip_suffix('=') {
            Some(f0) => args.push(format!("{f0}={}", f.display()).into()),
            None => args.extend([OsString::from(*flag), f.into()]),
        }
    }
    args.extend(["--dump-streams".into(), streams.clone().into()]);
    args.extend([
        "--".into(),
        "curl".into(),
        "-s".into(),
        format!("http://127.0.0.1:{}/index.html", server.port).into(),
    ]);
    let (code, stderr) = sniffer(&args);
    assert_eq!(code, Some(0), "{stderr}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
        let text = fs::read_to_string(f).expect("read");
        assert!(
            !text.contains(old),
            "{}: old content kept:\n{text}",
            f.display()
        );
    }
    assert!(
        fs::read_to_string(&files[0])
            .expect("read")
            .contains("GET http://127.0.0.1:"),
        "{stderr}"
    );
    assert_eq!(mode(&streams), 0o700);
    let index = streams.join("index.jsonl");
    assert!(fs::symlink_metadata(&index).expect("stat").is_file());
    assert_eq!(mode(&index), 0o600);
    assert!(!fs::read_to_string(&index).expect("read").is_empty());
    for e in fs::read_dir(&streams).expect("ls") {
        let p = e.expect("entry").path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
    assert_eq!(mode(&victim), 0o644);
}

#[test]
fn the_converters_make_existing_outputs_private_and_replace_them() {
    let scene = sticky_dir();
    let dir = scene.path();
    let old = "old diagram";
    let [md, body, har] = ["d.md", "body.md", "x.har"].map(|n| dir.join(n));
    for f in [&md, &body, &har] {
        write_0644(f, old);
    }
    let (log, jsonl) = (log_input(), jsonl_input(dir));
    let diagram: [&OsStr; 6] = [
        "diagram".as_ref(),
        log.as_os_str(),
        "-o".as_ref(),
        md.as_os_str(),
        "--body".as_ref(),
        body.as_os_str(),
    ];
    let har_args: [&OsStr; 4] = [
        "har".as_ref(),
        jsonl.as_os_str(),
        "-o".as_ref(),
        har.as_os_str(),
    ];
    for args in [&diagram[..], &har_args[..]] {
        let (code, stderr) = sniffer(args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    for f in [&md, &body, &har] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
        let text = fs::read_to_string(f).expect("read");
        assert!(
            !text.contains(old) && !text.is_empty(),
            "{}: {text}",
            f.display()
        );
    }
}

/// A small tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(kib: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "cannot mount a tmpfs on {}",
            dir.path().display()
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy: detach it now, the kernel frees it when the last user goes.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// `"... 12 messages ..."` -> 12: the number before `what` in `line`.
fn number_before(line: &str, what: &str) -> u64 {
    line.split(what)
        .next()
        .and_then(|s| s.trim_end().rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line:?}"))
}

#[test]
fn a_disk_filled_during_the_run_is_reported_when_it_happens_and_counted() {
    if !kernel_tests() {
        return;
    }
    const REQUESTS: usize = 12;
    // 30 kB of text a response: the log shows every byte, so a few fill 64 KiB.
    let www = big_www();
    let server = Server::start(www.path(), &[]);
    let full = Tmpfs::mount(64);
    let scene = tempfile::tempdir().expect("tempdir");
    let dir = scene.path();
    let log = full.path().join("sniffer.log");
    let jsonl = dir.join("x.jsonl");
    let conns = dir.join("conns.txt");
    let errors = dir.join("stderr.txt");
    let saw = dir.join("saw-the-error");
    let url = format!("http://127.0.0.1:{}/big.txt", server.port);
    // The traced command makes the traffic, then waits (10 s at most) for sniffer's error
    // line: the marker says the error was reported while the capture ran.
    let script = format!(
        "for i in $(seq {REQUESTS}); do curl -s -o /dev/null {url}; done; \
         for i in $(seq 100); do \
           if grep -q 'cannot write {log}' {errors}; then touch {saw}; exit 0; fi; \
           sleep 0.1; \
         done; exit 3",
        log = log.display(),
        errors = errors.display(),
        saw = saw.display(),
    );
    let err_file = fs::File::create(&errors).expect("stderr file");
    let mut cmd = Command::new(sniffer_bin());
    // No floor of free space: the disk is let fill up.
    cmd.arg("-o")
        .arg(&log)
        .arg("--jsonl")
        .arg(&jsonl)
        .arg("--connections")
        .arg(&conns)
        .args(["--min-free-mib", "0"])
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    let mut g = Guard::spawn(&mut cmd);
    let status = g.wait_timeout(LIMIT);
    let stderr = fs::read_to_string(&errors).expect("read stderr");

    assert!(
        saw.exists(),
        "the error was not reported during the run:\n{stderr}"
    );
    assert_eq!(
        status.code(),
        Some(OUTPUT_INCOMPLETE),
        "exit code 74 expected:\n{stderr}"
    );
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&format!("cannot write {}: ", log.display())))
        .collect();
    assert_eq!(reports.len(), 1, "reported once:\n{stderr}");
    assert!(reports[0].contains("No space left on device"), "{stderr}");

    // The summary: how many messages, and how many of them the log lost.
    let totals = stderr
        .lines()
        .find(|l| l.contains(" exchanges, ") && l.contains(" messages, "))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    let messages = number_before(totals, " messages,");
    assert_eq!(messages, 2 * REQUESTS as u64, "{stderr}");
    let lost_line = format!("sniffer: {}: ", log.display());
    let lost = stderr
        .lines()
        .find(|l| l.starts_with(&lost_line))
        .unwrap_or_else(|| panic!("no count of what the log lost:\n{stderr}"));
    let failed = number_before(lost, " of ");
    assert!(
        lost.contains(&format!(
            " of {messages} messages could not be written (No space left on device"
        )),
        "{lost}"
    );
    assert!(failed > 0 && failed < messages, "{failed} of {messages}");
    assert!(
        stderr.contains(
            "sniffer: exit code 74: the outputs above are incomplete (the command exited with 0)"
        ),
        "{stderr}"
    );
    // What reached the disk is whole messages, and one cut by the full disk at most.
    let written = fs::read_to_string(&log)
        .expect("read log")
        .matches("\n### [")
        .count() as u64;
    assert!(
        written == messages - failed || written == messages - failed + 1,
        "{written} titles on disk, {failed} of {messages} counted lost"
    );

    // The other outputs went on.
    let lines = fs::read_to_string(&jsonl).expect("read jsonl");
    assert_eq!(lines.lines().count(), REQUESTS, "{lines}");
    assert!(
        lines
            .lines()
            .all(|l| l.contains("\"status\":200") && l.contains("/big.txt")),
        "{lines}"
    );
    let conns = fs::read_to_string(&conns).expect("read connections");
    assert!(conns.matches("(pid ").count() >= REQUESTS, "{conns}");
}

/// A www directory with `big.txt`, 30 kB of text: the log shows every byte of it.
fn big_www() -> tempfile::TempDir {
    let www = www();
    fs::write(
        www.path().join("big.txt"),
        "0123456789abcdef\n".repeat(1800),
    )
    .expect("write");
    www
}

/// A server of [`big_www`], a scene directory for the outputs, and big.txt's URL.
fn big_scene() -> (tempfile::TempDir, Server, tempfile::TempDir, String) {
    let www = big_www();
    let server = Server::start(www.path(), &[]);
    let url = format!("http://127.0.0.1:{}/big.txt", server.port);
    (www, server, tempfile::tempdir().expect("tempdir"), url)
}

/// The numbers of the log's titles (`### [n] ...`), in file order.
fn title_numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("### ["))
        .filter_map(|l| l.split_once(']'))
        .map(|(n, _)| n.parse().expect("a title's number"))
        .collect()
}

#[test]
fn a_filesystem_at_its_floor_is_left_its_room_and_writing_resumes_when_there_is_more() {
    if !kernel_tests() {
        return;
    }
    let www = big_www();
    let server = Server::start(www.path(), &[]);
    // 2 MiB, half of it taken: sniffer starts with 1 MiB free, so its floor is 512 KiB (half
    // of what was free: the default 1 GiB is more than this disk has).
    let disk = Tmpfs::mount(2048);
    let filler = disk.path().join("filler");
    fs::write(&filler, vec![0u8; 1 << 20]).expect("filler");
    let scene = tempfile::tempdir().expect("tempdir");
    let dir = scene.path();
    let log = disk.path().join("sniffer.log");
    let errors = dir.join("stderr.txt");
    let url = format!("http://127.0.0.1:{}/big.txt", server.port);
    // 40 answers of 30 kB reach the floor; once sniffer said so, the filler goes (1 MiB more
    // room) and 3 more requests are made, each of which the log should show. One curl for
    // each group, on one keep-alive connection (a process a request is slow under vm-test's
    // emulated CPU).
    let before = vec![url.as_str(); 40].join(" ");
    let script = format!(
        "curl -s {before} > /dev/null; \
         for i in $(seq 100); do \
           if grep -q 'cannot write {log}' {errors}; then break; fi; sleep 0.1; \
         done; \
         df -k --output=avail {mnt} | tail -1 > {dir}/avail; \
         rm {filler}; \
         curl -s '{url}?after' '{url}?after' '{url}?after' > /dev/null; sleep 0.3",
        log = log.display(),
        errors = errors.display(),
        mnt = disk.path().display(),
        dir = dir.display(),
        filler = filler.display(),
    );
    let err_file = fs::File::create(&errors).expect("stderr file");
    let mut cmd = Command::new(sniffer_bin());
    cmd.arg("-o")
        .arg(&log)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    let mut g = Guard::spawn(&mut cmd);
    let status = g.wait_timeout(LIMIT);
    let stderr = fs::read_to_string(&errors).expect("read stderr");

    assert_eq!(status.code(), Some(OUTPUT_INCOMPLETE), "{stderr}");
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&format!("cannot write {}: ", log.display())))
        .collect();
    assert_eq!(reports.len(), 1, "reported once:\n{stderr}");
    assert!(
        reports[0].contains(
            "its filesystem has no more than 512 KiB free, which sniffer leaves to the host \
             (--min-free-mib)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("No space left"), "{stderr}");
    // The floor held while the disk filled: about 512 KiB were still free then.
    let avail: u64 = fs::read_to_string(dir.join("avail"))
        .expect("avail")
        .trim()
        .parse()
        .expect("a number");
    assert!(
        (400..=600).contains(&avail),
        "{avail} KiB free at the floor"
    );

    let totals = stderr
        .lines()
        .find(|l| l.contains(" exchanges, ") && l.contains(" messages, "))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    let messages = number_before(totals, " messages,");
    assert_eq!(messages, 2 * 43, "{stderr}");
    let lost = stderr
        .lines()
        .find(|l| l.starts_with(&format!("sniffer: {}: ", log.display())))
        .unwrap_or_else(|| panic!("no count of what the log lost:\n{stderr}"));
    let failed = number_before(lost, " of ");
    assert!(failed > 0 && failed < messages, "{lost}");
    // Whole messages only (nothing cut: what passes the floor is not begun), and the 6 of
    // the requests made after the room came back are among them.
    let text = fs::read_to_string(&log).expect("read log");
    assert_eq!(
        title_numbers(&text).len() as u64,
        messages - failed,
        "{lost}"
    );
    assert_eq!(text.matches("/big.txt?after").count(), 6, "{lost}");
}

#[test]
fn outputs_are_rotated_at_their_size_and_the_newest_files_kept() {
    if !kernel_tests() {
        return;
    }
    const REQUESTS: u64 = 120;
    let (_www, _server, scene, url) = big_scene();
    let dir = scene.path();
    let log = dir.join("s.log");
    let jsonl = dir.join("s.jsonl");
    // 120 answers of 30 kB: about 3.6 MB of log and of JSONL, rotated at each MiB.
    // One curl for them all (a process a request is slow under an emulated CPU, vm-test), a
    // connection each (the server's keep-alive waits out delayed ACKs: 40 ms a request).
    let script = format!(
        "curl -s -H 'Connection: close' {} > /dev/null",
        vec![url.as_str(); REQUESTS as usize].join(" ")
    );
    let (code, stderr) = sniffer(&[
        OsStr::new("-o"),
        log.as_os_str(),
        OsStr::new("--jsonl"),
        jsonl.as_os_str(),
        OsStr::new("--rotate-mib"),
        OsStr::new("1"),
        OsStr::new("--rotate-keep"),
        OsStr::new("2"),
        OsStr::new("--"),
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new(&script),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    // curl may send a request on a connection the server has just closed, and again on a
    // new one: the run's own counts, then.
    let totals = stderr
        .lines()
        .find(|l| l.contains(" exchanges, ") && l.contains(" messages, "))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    let (exchanges, messages) = (
        number_before(totals, " exchanges,"),
        number_before(totals, " messages,"),
    );
    assert!(messages >= 2 * REQUESTS, "{stderr}");
    for base in [&log, &jsonl] {
        let name = |n: u32| {
            let mut p = base.as_os_str().to_owned();
            if n > 0 {
                p.push(format!(".{n}"));
            }
            PathBuf::from(p)
        };
        // The newest file and two rotated ones; the oldest went.
        assert!(!name(3).exists(), "{} kept", name(3).display());
        for n in 0..3 {
            let m = fs::metadata(name(n)).unwrap_or_else(|e| panic!("{}: {e}", name(n).display()));
            assert!(
                m.len() <= 1 << 20,
                "{}: {} bytes",
                name(n).display(),
                m.len()
            );
            assert!(
                n == 0 || m.len() > 900 << 10,
                "{}: {} bytes",
                name(n).display(),
                m.len()
            );
            assert_eq!(m.mode() & 0o777, 0o600, "{}", name(n).display());
        }
        // Oldest to newest, the files take up where the one before ended.
        let numbers: Vec<Vec<u64>> = (0..3)
            .rev()
            .map(|n| {
                let text = fs::read_to_string(name(n)).expect("read");
                if base == &log {
                    title_numbers(&text)
                } else {
                    text.lines()
                        .map(|l| {
                            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
                            v["id"].as_u64().expect("an id")
                        })
                        .collect()
                }
            })
            .collect();
        let all: Vec<u64> = numbers.concat();
        assert!(
            all.windows(2).all(|w| w[1] == w[0] + 1),
            "{}: {all:?}",
            base.display()
        );
        let last = if base == &log { messages } else { exchanges };
        assert_eq!(all.last(), Some(&last), "{}", base.display());
        assert!(
            all[0] > 1,
            "{}: the oldest file was removed",
            base.display()
        );
    }
}

#[test]
fn the_har_is_written_as_the_exchanges_come_not_held_for_the_end() {
    if !kernel_tests() {
        return;
    }
    const REQUESTS: usize = 20;
    let (_www, _server, scene, url) = big_scene();
    let dir = scene.path();
    let har = dir.join("s.har");
    // While sniffer still runs, the entries are in the file already (a run left going holds
    // none of them in memory).
    // One curl, one keep-alive connection (a process a request is slow under vm-test).
    let script = format!(
        "curl -s {all} > /dev/null; sleep 0.5; \
         grep -c '\"url\": \"{url}\"' {har} > {dir}/during",
        all = vec![url.as_str(); REQUESTS].join(" "),
        har = har.display(),
        dir = dir.display(),
    );
    let (code, stderr) = sniffer(&[
        OsStr::new("-o"),
        dir.join("s.log").as_os_str(),
        OsStr::new("--har"),
        har.as_os_str(),
        OsStr::new("--"),
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new(&script),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let during = fs::read_to_string(dir.join("during")).expect("during");
    assert_eq!(during.trim(), REQUESTS.to_string(), "{stderr}");
    // And the document is whole at the end.
    let doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&har).expect("read har")).expect("HAR is JSON");
    let entries = doc["log"]["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), REQUESTS);
    assert!(
        entries
            .iter()
            .all(|e| e["response"]["status"] == 200 && e["request"]["url"] == url.as_str())
    );
    assert_eq!(doc["log"]["creator"]["name"], "sniffer");
}

#[test]
fn a_converter_that_cannot_write_says_so_with_exit_code_74() {
    if !kernel_tests() {
        return;
    }
    let full = Tmpfs::mount(64);
    fs::write(full.path().join("filler"), vec![b'x'; 64 << 10]).ok();
    let scene = tempfile::tempdir().expect("tempdir");
    let out = full.path().join("x.har");
    let jsonl = jsonl_input(scene.path());
    let (code, stderr) = sniffer(&[
        "har".as_ref(),
        jsonl.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, Some(OUTPUT_INCOMPLETE), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "sniffer: cannot write {}: No space left on device (os error 28)",
            out.display()
        )
    );
}
