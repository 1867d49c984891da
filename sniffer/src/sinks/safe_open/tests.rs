use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink},
    time::{Duration, Instant},
};

use super::*;

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).expect("stat").mode() & 0o7777
}

fn write_0644(p: &Path, text: &str) {
    fs::write(p, text).expect("write");
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).expect("chmod");
}

fn facts(mode: u32, uid: u32, nlink: u64) -> Facts {
    Facts {
        mode,
        uid,
        nlink,
        rdev: 0,
        dev: 1,
        ino: 2,
    }
}

const REG: u32 = libc::S_IFREG | 0o644;
const DIR: u32 = libc::S_IFDIR | 0o755;

#[test]
fn another_users_file_is_refused_where_others_can_write_only() {
    let sticky = libc::S_IFDIR | 0o1777;
    let world = libc::S_IFDIR | 0o777;
    let sticky_only = libc::S_IFDIR | 0o1755;
    let private = libc::S_IFDIR | 0o755;
    let theirs = facts(REG, 65534, 1);
    for (dir_mode, octal) in [(sticky, 0o1777), (world, 0o777), (sticky_only, 0o1755)] {
        assert_eq!(
            judge(&theirs, Want::File, dir_mode, 0),
            Err(Refusal::OthersFile {
                owner: 65534,
                dir_mode: octal
            })
        );
    }
    assert_eq!(judge(&theirs, Want::File, private, 0), Ok(Verdict::Write));
    assert_eq!(
        judge(&facts(REG, 0, 1), Want::File, sticky, 0),
        Ok(Verdict::Write),
        "one's own file in /tmp is fine"
    );
    assert_eq!(
        judge(&facts(DIR, 65534, 2), Want::Dir, sticky, 0),
        Err(Refusal::OthersFile {
            owner: 65534,
            dir_mode: 0o1777
        })
    );
}

#[test]
fn links_pipes_devices_and_hard_links_are_refused_the_null_device_is_not() {
    let dir = libc::S_IFDIR | 0o755;
    let cases = [
        (libc::S_IFLNK | 0o777, Err(Refusal::Symlink)),
        (
            libc::S_IFIFO | 0o644,
            Err(Refusal::WrongType("a FIFO (named pipe)")),
        ),
        (libc::S_IFSOCK | 0o755, Err(Refusal::WrongType("a socket"))),
        (
            libc::S_IFBLK | 0o660,
            Err(Refusal::WrongType("a block device")),
        ),
        (DIR, Err(Refusal::WrongType("a directory"))),
    ];
    for (m, want) in cases {
        assert_eq!(judge(&facts(m, 0, 1), Want::File, dir, 0), want, "{m:o}");
    }
    let mut tty = facts(libc::S_IFCHR | 0o666, 0, 1);
    tty.rdev = libc::makedev(5, 0);
    assert_eq!(
        judge(&tty, Want::File, dir, 0),
        Err(Refusal::WrongType("a character device"))
    );
    let mut null = tty;
    null.rdev = libc::makedev(1, 3);
    assert_eq!(judge(&null, Want::File, dir, 0), Ok(Verdict::Null));
    assert_eq!(
        judge(&facts(REG, 0, 2), Want::File, dir, 0),
        Err(Refusal::HardLinked(2))
    );
    assert_eq!(
        judge(&facts(REG, 0, 1), Want::Dir, dir, 0),
        Err(Refusal::WrongType("a regular file"))
    );
}

#[test]
fn a_new_file_is_created_private() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join("new.log");
    let mut w = Target::open(&p).expect("open");
    w.write_all(b"x").expect("write");
    drop(w);
    assert_eq!(mode(&p), 0o600);
    assert_eq!(fs::read(&p).expect("read"), b"x");
}

#[test]
fn an_existing_file_is_made_private_and_emptied_only_at_commit() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join("old.log");
    write_0644(&p, "old content");
    let checked = Target::check(&p).expect("check");
    assert_eq!(fs::read_to_string(&p).expect("read"), "old content");
    assert_eq!(mode(&p), 0o644, "nothing changes before commit");
    let mut w = checked.commit().expect("commit");
    assert_eq!(mode(&p), 0o600);
    assert_eq!(fs::read_to_string(&p).expect("read"), "");
    w.write_all(b"new").expect("write");
    drop(w);
    assert_eq!(fs::read_to_string(&p).expect("read"), "new");
}

#[test]
fn a_symlink_to_a_file_is_refused_and_the_file_left_alone() {
    let d = tempfile::tempdir().expect("tempdir");
    let victim = d.path().join("victim");
    write_0644(&victim, "precious");
    let link = d.path().join("sniffer.log");
    symlink(&victim, &link).expect("symlink");
    let e = Target::check(&link).expect_err("refused");
    assert!(matches!(e, OpenError::Symlink { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "cannot write {}: it is a symbolic link, which sniffer does not follow; remove \
             it or give the path it points to",
            link.display()
        )
    );
    assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
    assert_eq!(mode(&victim), 0o644);
}

#[test]
fn a_dangling_symlink_is_refused_and_its_target_not_created() {
    let d = tempfile::tempdir().expect("tempdir");
    let target = d.path().join("cron-entry");
    let link = d.path().join("sniffer.log");
    symlink(&target, &link).expect("symlink");
    let e = Target::check(&link).expect_err("refused");
    assert!(matches!(e, OpenError::Symlink { .. }), "{e}");
    assert!(!target.exists());
}

#[test]
fn a_symlink_to_a_directory_is_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let target = d.path().join("elsewhere");
    fs::create_dir(&target).expect("mkdir");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).expect("chmod");
    let link = d.path().join("out");
    symlink(&target, &link).expect("symlink");
    let e = Target::check(&link).expect_err("refused");
    assert!(matches!(e, OpenError::Symlink { .. }), "{e}");
    let e = OutDir::open(&link).expect_err("refused as a dump directory too");
    assert!(matches!(e, OpenError::Symlink { .. }), "{e}");
    assert_eq!(fs::read_dir(&target).expect("ls").count(), 0);
    assert_eq!(mode(&target), 0o755, "its mode left alone");
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join("pipe");
    let c = CString::new(p.as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    let start = Instant::now();
    let e = Target::check(&p).expect_err("refused");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        e.to_string(),
        format!(
            "cannot write {}: it is a FIFO (named pipe), not a regular file",
            p.display()
        )
    );
}

#[test]
fn a_directory_a_trailing_slash_and_dot_are_not_files() {
    let d = tempfile::tempdir().expect("tempdir");
    let e = Target::check(d.path()).expect_err("refused");
    assert!(
        e.to_string()
            .ends_with("it is a directory, not a regular file"),
        "{e}"
    );
    for p in [
        d.path().join("new/"),
        d.path().join("."),
        d.path().join(".."),
    ] {
        assert!(Target::check(&p).is_err(), "{}", p.display());
    }
    assert!(!d.path().join("new").exists());
}

#[test]
fn a_hard_linked_file_is_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let victim = d.path().join("victim");
    write_0644(&victim, "precious");
    let p = d.path().join("sniffer.log");
    fs::hard_link(&victim, &p).expect("link");
    let e = Target::check(&p).expect_err("refused");
    assert!(matches!(e, OpenError::HardLinked { links: 2, .. }), "{e}");
    assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
}

#[test]
fn the_null_device_is_written_and_its_mode_left_alone() {
    let before = mode(Path::new("/dev/null"));
    let mut w = Target::open(Path::new("/dev/null")).expect("open");
    w.write_all(b"gone").expect("write");
    assert_eq!(mode(Path::new("/dev/null")), before);
}

#[test]
fn dash_is_stdout() {
    assert!(matches!(
        Target::check(Path::new("-")).expect("check"),
        Target::Stdout
    ));
}

#[test]
fn one_file_named_twice_is_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let a = d.path().join("a.log");
    let b = d.path().join("./a.log");
    let other = d.path().join("b.log");
    let targets = [
        Target::check(&a).expect("a"),
        Target::check(&other).expect("other"),
        Target::check(&b).expect("b"),
        Target::check(Path::new("/dev/null")).expect("null"),
        Target::check(Path::new("/dev/null")).expect("null again"),
        Target::Stdout,
        Target::Stdout,
    ];
    let e = distinct(&targets).expect_err("refused");
    assert_eq!(
        e.to_string(),
        format!(
            "cannot write both {} and {}: they are the same file",
            a.display(),
            b.display()
        )
    );
    assert!(distinct(&targets[..2]).is_ok());
    assert!(
        distinct(&targets[3..]).is_ok(),
        "null and stdout may repeat"
    );
}

#[test]
fn a_dump_directory_is_created_or_made_private() {
    let d = tempfile::tempdir().expect("tempdir");
    let new = d.path().join("a/b/streams");
    let dir = OutDir::open(&new).expect("create");
    assert_eq!(mode(&new), 0o700);
    assert_eq!(dir.path(), new);
    let old = d.path().join("old");
    fs::create_dir(&old).expect("mkdir");
    fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).expect("chmod");
    OutDir::open(&d.path().join("old/")).expect("open");
    assert_eq!(mode(&old), 0o700);
    let file = d.path().join("file");
    write_0644(&file, "x");
    let e = OutDir::open(&file).expect_err("refused");
    assert!(
        e.to_string()
            .ends_with("it is a regular file, not a directory"),
        "{e}"
    );
}

#[test]
fn files_in_a_dump_directory_replace_what_was_there_without_following_it() {
    let d = tempfile::tempdir().expect("tempdir");
    let victim = d.path().join("victim");
    write_0644(&victim, "precious");
    let streams = d.path().join("streams");
    fs::create_dir(&streams).expect("mkdir");
    symlink(&victim, streams.join("index.jsonl")).expect("symlink");
    write_0644(&streams.join("00001-curl.send"), "stale");
    let dir = OutDir::open(&streams).expect("open");
    for name in ["index.jsonl", "00001-curl.send", "00002-new.recv"] {
        let mut f = dir.create_file(name).expect("create");
        f.write_all(name.as_bytes()).expect("write");
        let p = streams.join(name);
        assert!(fs::symlink_metadata(&p).expect("stat").is_file(), "{name}");
        assert_eq!(mode(&p), 0o600, "{name}");
        let mut s = String::new();
        fs::File::open(&p)
            .and_then(|mut f| f.read_to_string(&mut s))
            .expect("read");
        assert_eq!(s, name);
    }
    assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
    assert_eq!(mode(&victim), 0o644);
}
