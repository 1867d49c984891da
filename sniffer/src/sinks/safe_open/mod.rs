//! Opening the files sniffer writes.
//!
//! sniffer runs as root and writes captured traffic, credentials included, to paths users
//! name, often in directories other users can write (/tmp). A name there may have been put
//! there by someone else, so:
//! - the last component is never followed when it is a symbolic link (the directories before
//!   it are: they are the path the user chose);
//! - only a regular file is written, never a FIFO (opening one for writing can block
//!   forever), a device (opening some has effects) or a directory; the null device is the one
//!   exception, since writing it does nothing;
//! - a file that belongs to another user, in a directory with the sticky bit or writable by
//!   everyone, is refused: that user may have created it to read what root writes into it;
//! - a file with a second hard link is refused: writing it would change the other name's file;
//! - what is written ends up private, 0600 (directories 0700), whether it was new or not, and
//!   an existing file is truncated only once every output passed its checks.
//!
//! Every check is made on an open descriptor, never on the name, so nothing can be swapped in
//! between a check and the write: the parent directory is opened first and the name looked up
//! inside it (`openat`); an existing file is opened with O_PATH (which neither follows a link
//! nor starts I/O on a FIFO or device), checked with fstat, and reopened for writing through
//! `/proc/self/fd`, which names that very inode, not the path. A directory is opened with
//! O_DIRECTORY|O_NOFOLLOW, and the files in it are created with O_EXCL|O_NOFOLLOW relative to
//! that descriptor.
use std::{
    ffi::{CStr, CString, OsStr},
    fs::{DirBuilder, File, Metadata, OpenOptions, Permissions},
    io::{self, Write},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
        },
    },
    path::{Path, PathBuf},
};

/// The mode of every file sniffer writes.
pub const FILE_MODE: u32 = 0o600;
/// The mode of the directory `--dump-streams` writes into.
pub const DIR_MODE: u32 = 0o700;

/// Tries when the name changes under an open (removed between the failed exclusive create and
/// the open of what was there); more means someone is playing with it.
const RACE_RETRIES: usize = 8;

/// Why an output cannot be written; each reads as one sentence naming the path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "cannot write {}: it is a symbolic link, which sniffer does not follow; remove it or \
         give the path it points to",
        .path.display()
    )]
    Symlink { path: PathBuf },
    #[error("cannot write {}: it is {what}, not {wanted}", .path.display())]
    WrongType {
        path: PathBuf,
        what: &'static str,
        wanted: &'static str,
    },
    #[error(
        "cannot write {}: it belongs to another user (uid {owner}) in a directory others can \
         write (mode {dir_mode:o}), who may have put it there to read the capture; remove it \
         or choose another name",
        .path.display()
    )]
    OthersFile {
        path: PathBuf,
        owner: u32,
        dir_mode: u32,
    },
    #[error(
        "cannot write {}: it has {links} hard links, and writing it would change the file \
         under its other names too",
        .path.display()
    )]
    HardLinked { path: PathBuf, links: u64 },
    #[error("cannot write both {} and {}: they are the same file", .a.display(), .b.display())]
    SameFile { a: PathBuf, b: PathBuf },
    #[error("cannot write {}: {error}", .path.display())]
    Io { path: PathBuf, error: io::Error },
}

/// What is being opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    File,
    Dir,
}

impl Want {
    fn name(self) -> &'static str {
        match self {
            Want::File => "a regular file",
            Want::Dir => "a directory",
        }
    }
}

/// What the checks look at, from fstat of an open descriptor.
#[derive(Clone, Copy, Debug)]
struct Facts {
    mode: u32,
    uid: u32,
    nlink: u64,
    rdev: u64,
    dev: u64,
    ino: u64,
}

impl From<&Metadata> for Facts {
    fn from(m: &Metadata) -> Self {
        Self {
            mode: m.mode(),
            uid: m.uid(),
            nlink: m.nlink(),
            rdev: m.rdev(),
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Write,
    /// The null device: written as is, its mode left alone.
    Null,
}

#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Symlink,
    WrongType(&'static str),
    OthersFile { owner: u32, dir_mode: u32 },
    HardLinked(u64),
}

impl Refusal {
    fn into_error(self, path: &Path, want: Want) -> OpenError {
        let path = path.to_owned();
        match self {
            Refusal::Symlink => OpenError::Symlink { path },
            Refusal::WrongType(what) => OpenError::WrongType {
                path,
                what,
                wanted: want.name(),
            },
            Refusal::OthersFile { owner, dir_mode } => OpenError::OthersFile {
                path,
                owner,
                dir_mode,
            },
            Refusal::HardLinked(links) => OpenError::HardLinked { path, links },
        }
    }
}

fn type_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFIFO => "a FIFO (named pipe)",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        _ => "a special file",
    }
}

/// Whether an existing `f`, in a directory of mode `dir_mode`, may be written by `euid`.
fn judge(f: &Facts, want: Want, dir_mode: u32, euid: u32) -> Result<Verdict, Refusal> {
    let kind = f.mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        return Err(Refusal::Symlink);
    }
    if want == Want::File && kind == libc::S_IFCHR && f.rdev == libc::makedev(1, 3) {
        return Ok(Verdict::Null);
    }
    let wanted = match want {
        Want::File => libc::S_IFREG,
        Want::Dir => libc::S_IFDIR,
    };
    if kind != wanted {
        return Err(Refusal::WrongType(type_name(f.mode)));
    }
    if f.uid != euid && dir_mode & (libc::S_ISVTX | libc::S_IWOTH) != 0 {
        return Err(Refusal::OthersFile {
            owner: f.uid,
            dir_mode: dir_mode & 0o7777,
        });
    }
    if want == Want::File && f.nlink > 1 {
        return Err(Refusal::HardLinked(f.nlink));
    }
    Ok(Verdict::Write)
}

/// Makes an I/O error one about `path`.
fn io_error(path: &Path) -> impl Fn(io::Error) -> OpenError + Copy + '_ {
    move |error| OpenError::Io {
        path: path.to_owned(),
        error,
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// `openat(2)` relative to `dir`, close-on-exec.
fn openat(dir: &File, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The parent directory of `path`, opened with O_PATH, and the last component.
fn split(path: &Path, want: Want) -> Result<(File, CString), OpenError> {
    let io_err = io_error(path);
    let mut bytes = path.as_os_str().as_bytes();
    if want == Want::Dir {
        // `dump/` is the directory `dump`.
        while bytes.len() > 1 && bytes.ends_with(b"/") {
            bytes = &bytes[..bytes.len() - 1];
        }
    }
    let (parent, name): (&[u8], &[u8]) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(0) => (b"/", &bytes[1..]),
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (b".", bytes),
    };
    if name.is_empty() || name == b"." || name == b".." {
        if want == Want::Dir {
            // `.` or `..`: named by the user, no link; the real name has a parent to check.
            let real = std::fs::canonicalize(path).map_err(io_err)?;
            if real.parent().is_some() {
                return split(&real, want);
            }
        }
        return Err(io_err(io::Error::from_raw_os_error(libc::EISDIR)));
    }
    let parent = Path::new(OsStr::from_bytes(parent));
    if want == Want::Dir {
        // As `mkdir -p`: the directories above it are the user's path, not the output.
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)
            .map_err(io_err)?;
    }
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(parent)
        .map_err(io_err)?;
    let name = CString::new(name).map_err(|_| io_err(io::ErrorKind::InvalidInput.into()))?;
    Ok((dir, name))
}

/// Opens the existing file `name` in `dir` for writing after checking it; `None` when it
/// vanished meanwhile.
fn open_existing_file(
    dir: &File,
    name: &CStr,
    dir_mode: u32,
    path: &Path,
) -> Result<Option<(File, Verdict)>, OpenError> {
    let io_err = io_error(path);
    let handle = match openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
        Ok(fd) => File::from(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let facts = Facts::from(&handle.metadata().map_err(io_err)?);
    let verdict =
        judge(&facts, Want::File, dir_mode, euid()).map_err(|r| r.into_error(path, Want::File))?;
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(|e| {
            io_err(if e.raw_os_error() == Some(libc::ENOENT) {
                io::Error::other(
                    "/proc is not mounted, and sniffer reopens what it checked through \
                     /proc/self/fd",
                )
            } else {
                e
            })
        })?;
    let now = Facts::from(&file.metadata().map_err(io_err)?);
    if (now.dev, now.ino) != (facts.dev, facts.ino) {
        return Err(io_err(io::Error::other(
            "it was replaced while sniffer opened it",
        )));
    }
    Ok(Some((file, verdict)))
}

/// Opens the directory `name` in `parent` and checks it; `None` when it vanished meanwhile.
/// O_DIRECTORY|O_NOFOLLOW: nothing but a directory is opened, and no link is followed (opening
/// a directory has no effect, so it needs no O_PATH step).
fn open_dir(
    parent: &File,
    name: &CStr,
    parent_mode: u32,
    path: &Path,
) -> Result<Option<File>, OpenError> {
    let io_err = io_error(path);
    let check = |f: &File| -> Result<(), OpenError> {
        let facts = Facts::from(&f.metadata().map_err(io_err)?);
        judge(&facts, Want::Dir, parent_mode, euid())
            .map(drop)
            .map_err(|r| r.into_error(path, Want::Dir))
    };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    match openat(parent, name, flags, 0) {
        Ok(fd) => {
            let dir = File::from(fd);
            check(&dir)?;
            Ok(Some(dir))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            // A link or not a directory: what it is, for the refusal.
            match openat(parent, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(fd) => check(&File::from(fd)).map(|()| None),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
                Err(e) => Err(io_err(e)),
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// An output file opened and checked, not written yet (an existing one still has its content).
#[derive(Debug)]
pub struct CheckedFile {
    path: PathBuf,
    file: File,
    null: bool,
    id: (u64, u64),
    /// Its directory and name, for rotation and the free-space guard.
    place: Place,
}

impl CheckedFile {
    fn new(path: &Path, file: File, verdict: Verdict, place: Place) -> Result<Self, OpenError> {
        let m = file.metadata().map_err(io_error(path))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            null: verdict == Verdict::Null,
            id: (m.dev(), m.ino()),
            place,
        })
    }

    /// Makes it private (0600) and empty: what it held is gone from here on.
    pub fn commit(self) -> Result<File, OpenError> {
        if !self.null {
            let io_err = io_error(&self.path);
            self.file
                .set_permissions(Permissions::from_mode(FILE_MODE))
                .map_err(io_err)?;
            self.file.set_len(0).map_err(io_err)?;
        }
        Ok(self.file)
    }
}

/// Where an output goes, checked: stdout (`-`) or a file.
#[derive(Debug)]
pub enum Target {
    Stdout,
    File(CheckedFile),
}

impl Target {
    /// Opens and checks an output (see the module's rules); nothing is written or truncated
    /// yet, so that one refused output leaves every other as it was.
    pub fn check(path: &Path) -> Result<Self, OpenError> {
        if path.as_os_str() == "-" {
            return Ok(Target::Stdout);
        }
        let io_err = io_error(path);
        if path.as_os_str().as_bytes().ends_with(b"/") {
            return Err(io_err(io::Error::from_raw_os_error(libc::EISDIR)));
        }
        let (dir, name) = split(path, Want::File)?;
        let dir_mode = dir.metadata().map_err(io_err)?.mode();
        let create =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_NOCTTY;
        for _ in 0..RACE_RETRIES {
            match openat(&dir, &name, create, FILE_MODE) {
                Ok(fd) => {
                    let place = Place { dir, name };
                    return Ok(Target::File(CheckedFile::new(
                        path,
                        fd.into(),
                        Verdict::Write,
                        place,
                    )?));
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(io_err(e)),
            }
            if let Some((file, verdict)) = open_existing_file(&dir, &name, dir_mode, path)? {
                let place = Place { dir, name };
                return Ok(Target::File(CheckedFile::new(path, file, verdict, place)?));
            }
        }
        Err(io_err(io::Error::other(
            "it kept changing while sniffer opened it",
        )))
    }

    /// Checks `path` and commits it at once, for a single output.
    pub fn open(path: &Path) -> Result<Box<dyn Write + Send>, OpenError> {
        Self::check(path)?.commit()
    }

    /// Ready to write: stdout, or the file made private and empty ([`CheckedFile::commit`]).
    pub fn commit(self) -> Result<Box<dyn Write + Send>, OpenError> {
        Ok(self.commit_placed()?.0)
    }

    /// As [`Target::commit`], with the file's place (not for stdout or the null device).
    pub fn commit_placed(self) -> Result<(Box<dyn Write + Send>, Option<Place>), OpenError> {
        Ok(match self {
            Target::Stdout => (Box::new(io::stdout()), None),
            Target::File(f) => {
                let place = if f.null {
                    None
                } else {
                    let dir = f.place.dir.try_clone().map_err(io_error(&f.path))?;
                    Some(Place {
                        dir,
                        name: f.place.name.clone(),
                    })
                };
                (Box::new(f.commit()?), place)
            }
        })
    }

    /// The file it names, when writing it twice would mix two outputs.
    fn identity(&self) -> Option<((u64, u64), &Path)> {
        match self {
            Target::File(f) if !f.null => Some((f.id, &f.path)),
            _ => None,
        }
    }
}

/// Refuses two outputs that are one file (`-o x --jsonl x`, or a hard link of it).
pub fn distinct<'a>(targets: impl IntoIterator<Item = &'a Target>) -> Result<(), OpenError> {
    let mut seen: Vec<((u64, u64), &Path)> = Vec::new();
    for (id, path) in targets.into_iter().filter_map(Target::identity) {
        if let Some((_, first)) = seen.iter().find(|(i, _)| *i == id) {
            return Err(OpenError::SameFile {
                a: first.to_path_buf(),
                b: path.to_path_buf(),
            });
        }
        seen.push((id, path));
    }
    Ok(())
}

/// Where an output file lives: its directory (open, so that renames and creates happen in the
/// directory that was checked, whatever its path names later) and its name.
#[derive(Debug)]
pub struct Place {
    dir: File,
    name: CString,
}

impl Place {
    fn numbered(&self, n: u32) -> CString {
        let mut v = self.name.as_bytes().to_vec();
        v.extend_from_slice(format!(".{n}").as_bytes());
        // The name held no NUL, nor does the suffix.
        CString::new(v).unwrap_or_default()
    }

    fn rename(&self, from: &CStr, to: &CStr) -> io::Result<()> {
        let fd = self.dir.as_raw_fd();
        // SAFETY: a valid directory descriptor and NUL-terminated names.
        if unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Rotation: NAME.(keep-1) becomes NAME.keep (the oldest, NAME.keep, goes), ..., NAME becomes
    /// NAME.1, and a new NAME is created (0600, never through a link: whatever took the name
    /// meanwhile is removed first). With `keep` 0 the old file is just removed. Renames stay in
    /// the directory, so the files keep their owner and mode.
    pub fn rotate(&self, keep: u32) -> io::Result<File> {
        if keep == 0 {
            self.unlink(&self.name)?;
        } else {
            for n in (1..keep).rev() {
                self.rename(&self.numbered(n), &self.numbered(n + 1))?;
            }
            self.rename(&self.name, &self.numbered(1))?;
        }
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_NOCTTY;
        let fd = match openat(&self.dir, &self.name, flags, FILE_MODE) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.unlink(&self.name)?;
                openat(&self.dir, &self.name, flags, FILE_MODE)?
            }
            r => r?,
        };
        let file = File::from(fd);
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
        Ok(file)
    }

    fn unlink(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Bytes free for an unprivileged writer on the file's filesystem (root may go on into the
    /// reserve, which is what the reserve is for: the services' own writes).
    pub fn free_bytes(&self) -> io::Result<u64> {
        // SAFETY: statvfs is plain data; zeroed is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a valid out pointer.
        if unsafe { libc::fstatvfs(self.dir.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
}

/// A directory sniffer writes files into (`--dump-streams`): opened without following a link,
/// checked like a file, private (0700).
#[derive(Debug)]
pub struct OutDir {
    path: PathBuf,
    dir: File,
}

impl OutDir {
    /// Creates the directory (and missing parents) or opens the existing one, checked.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let io_err = io_error(path);
        let (parent, name) = split(path, Want::Dir)?;
        let parent_mode = parent.metadata().map_err(io_err)?.mode();
        for _ in 0..RACE_RETRIES {
            // SAFETY: a valid directory descriptor and a NUL-terminated name.
            if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), DIR_MODE) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(io_err(e));
                }
            }
            if let Some(dir) = open_dir(&parent, &name, parent_mode, path)? {
                dir.set_permissions(Permissions::from_mode(DIR_MODE))
                    .map_err(io_err)?;
                return Ok(Self {
                    path: path.to_owned(),
                    dir,
                });
            }
        }
        Err(io_err(io::Error::other(
            "it kept changing while sniffer opened it",
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `name` in the directory (0600). Whatever had that name (a file of an earlier
    /// run, or a link someone put there) is removed, never followed or written through.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_NOCTTY;
        let fd = match openat(&self.dir, &c, flags, FILE_MODE) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // SAFETY: a valid directory descriptor and a NUL-terminated name.
                if unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        return Err(e);
                    }
                }
                openat(&self.dir, &c, flags, FILE_MODE)?
            }
            r => r?,
        };
        let file = File::from(fd);
        // The umask may have taken bits away; the mode is exactly 0600 either way.
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests;
