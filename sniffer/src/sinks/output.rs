//! Writing an output while the capture runs. A write that fails (a full disk, a closed pipe)
//! stops neither the capture nor the other outputs: it is reported on stderr when it happens,
//! once per distinct error, the records it held are counted as not written, and the next
//! records are tried again (a disk with room again takes them). The summary and the exit code
//! come from the counts ([`Outputs::failures`]).
//!
//! A record is what a reader counts (a log message, a JSONL exchange, a raw event line, stream
//! bytes). Records are buffered and written together; one the write did not reach whole counts
//! as not written.
use std::{
    fmt,
    io::{self, Write},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use super::safe_open::Place;

/// Buffered bytes that make a write (what a `BufWriter` holds), for an output of which a run
/// has many (a dump's file per stream).
const FLUSH_AT: usize = 8 << 10;
/// The same for a run's few main outputs (the log, the JSONL, a dump's index): under load a
/// write per 8 KiB of the log was half of sniffer's system time (ext4's cost per call).
/// Records still reach the file at each tick (100 ms) at the latest.
const MAIN_FLUSH_AT: usize = 64 << 10;

/// How one output fared: shared by its writers (a dump's many stream files share one) and the
/// end-of-run summary.
#[derive(Debug)]
pub struct Health {
    name: String,
    unit: &'static str,
    written: AtomicU64,
    failed: AtomicU64,
    /// The error last reported, so that a disk that stays full is reported once.
    error: Mutex<Option<String>>,
    reports: AtomicU64,
}

impl Health {
    pub fn new(name: impl fmt::Display, unit: &'static str) -> Self {
        Self {
            name: name.to_string(),
            unit,
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            error: Mutex::new(None),
            reports: AtomicU64::new(0),
        }
    }

    pub fn written(&self, units: u64) {
        self.written.fetch_add(units, Ordering::Relaxed);
    }

    /// `units` could not be written because of `e`: counted, and said on stderr unless this
    /// error was the last one said.
    pub fn failed(&self, units: u64, e: &io::Error) {
        self.failed.fetch_add(units, Ordering::Relaxed);
        let text = e.to_string();
        let mut last = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_deref() != Some(text.as_str()) {
            tracing::error!(
                "cannot write {}: {text}; the capture goes on, and what cannot be written is \
                 counted",
                self.name
            );
            self.reports.fetch_add(1, Ordering::Relaxed);
            *last = Some(text);
        }
    }

    /// How it went, when anything could not be written.
    pub fn failure(&self) -> Option<Failure> {
        let failed = self.failed.load(Ordering::Relaxed);
        (failed > 0).then(|| Failure {
            name: self.name.clone(),
            unit: self.unit,
            failed,
            total: failed + self.written.load(Ordering::Relaxed),
            error: self
                .error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or_default(),
        })
    }

    /// How many lines were said on stderr.
    pub fn reports(&self) -> u64 {
        self.reports.load(Ordering::Relaxed)
    }
}

/// An output that lost records, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub unit: &'static str,
    pub failed: u64,
    pub total: u64,
    /// The last error met.
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} of {} {} could not be written ({})",
            self.name, self.failed, self.total, self.unit, self.error
        )
    }
}

/// Every output of a run, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    list: Arc<Mutex<Vec<Arc<Health>>>>,
}

impl Outputs {
    /// A new output to account for.
    pub fn track(&self, name: impl fmt::Display, unit: &'static str) -> Arc<Health> {
        let h = Arc::new(Health::new(name, unit));
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(h.clone());
        h
    }

    /// A writer for a new output.
    pub fn writer(
        &self,
        out: Box<dyn Write + Send>,
        name: impl fmt::Display,
        unit: &'static str,
    ) -> Output {
        let mut o = Output::new(out, self.track(name, unit));
        o.flush_at = MAIN_FLUSH_AT;
        o
    }

    /// The outputs that lost records.
    pub fn failures(&self) -> Vec<Failure> {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|h| h.failure())
            .collect()
    }
}

/// What an output file may take of its disk, for a run left going (`--rotate-mib`,
/// `--rotate-keep`, `--min-free-mib`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskLimits {
    /// Bytes a file takes before it is rotated (renamed NAME.1, a new NAME begun); None: never.
    pub rotate_at: Option<u64>,
    /// Rotated files kept (NAME.1 the newest).
    pub keep: u32,
    /// Bytes its filesystem keeps free: records that would take it under that are not written
    /// (counted as such) until there is room again. Lowered to half of what was free when the
    /// output was opened, so that a run on a fuller disk still writes.
    pub min_free: u64,
}

/// An output's file on disk, with its limits.
struct OnDisk {
    place: Place,
    limits: DiskLimits,
    /// Bytes in the current file.
    in_file: u64,
}

impl OnDisk {
    /// Why nothing more may be written now: the filesystem is at its floor.
    fn no_room(&self, bytes: usize) -> Option<io::Error> {
        if self.limits.min_free == 0 {
            return None;
        }
        let free = self.place.free_bytes().ok()?;
        (free < self.limits.min_free.saturating_add(bytes as u64)).then(|| {
            let floor = self.limits.min_free;
            let floor = if floor >= 1 << 20 {
                format!("{} MiB", floor >> 20)
            } else {
                format!("{} KiB", floor >> 10)
            };
            io::Error::other(format!(
                "its filesystem has no more than {floor} free, which sniffer leaves to the host \
                 (--min-free-mib)"
            ))
        })
    }

    /// Bytes the current file takes before it is rotated.
    fn budget(&self) -> u64 {
        self.limits
            .rotate_at
            .map_or(u64::MAX, |at| at.saturating_sub(self.in_file))
    }
}

/// A buffered writer that counts records written and not written instead of failing.
pub struct Output {
    out: Box<dyn Write + Send>,
    disk: Option<OnDisk>,
    health: Arc<Health>,
    buf: Vec<u8>,
    /// Per buffered record: where it ends in `buf`, and how many units it holds.
    records: Vec<(usize, u64)>,
    /// Buffered bytes that make a write; a buffer grown past twice this by a large record
    /// shrinks back after the write.
    flush_at: usize,
}

impl Output {
    pub fn new(out: Box<dyn Write + Send>, health: Arc<Health>) -> Self {
        Self {
            out,
            disk: None,
            health,
            buf: Vec::new(),
            records: Vec::new(),
            flush_at: FLUSH_AT,
        }
    }

    /// Writes to the file at `place` within `limits` (the file is the one `out` writes).
    pub fn on_disk(mut self, place: Place, mut limits: DiskLimits) -> Self {
        if let Ok(free) = place.free_bytes() {
            limits.min_free = limits.min_free.min(free / 2);
        }
        self.disk = Some(OnDisk {
            place,
            limits,
            in_file: 0,
        });
        self
    }

    /// One record of `units`, formatted by `f` into the buffer.
    pub fn record(&mut self, units: u64, f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) {
        let start = self.buf.len();
        if let Err(e) = f(&mut self.buf) {
            self.buf.truncate(start);
            self.health.failed(units, &e);
            return;
        }
        self.records.push((self.buf.len(), units));
        if self.buf.len() >= self.flush_at {
            self.flush();
        }
    }

    /// Bytes counted one by one (a stream's).
    pub fn bytes(&mut self, data: &[u8]) {
        self.record(data.len() as u64, |b| {
            b.extend_from_slice(data);
            Ok(())
        });
    }

    /// Writes what is buffered; what the write did not reach is counted as not written. A file
    /// with a size limit is rotated between records; a filesystem at its floor takes nothing.
    pub fn flush(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let all: u64 = self.records.iter().map(|r| r.1).sum();
        if let Some(e) = self.disk.as_ref().and_then(|d| d.no_room(self.buf.len())) {
            self.health.failed(all, &e);
        } else {
            self.write_records(all);
        }
        self.buf.clear();
        self.records.clear();
        if self.buf.capacity() > 2 * self.flush_at {
            self.buf.shrink_to(self.flush_at);
        }
    }

    /// Writes the buffered records, file by file when the file is rotated.
    fn write_records(&mut self, all: u64) {
        let (mut from, mut i, mut done_units) = (0, 0, 0);
        while i < self.records.len() {
            let budget = self.disk.as_ref().map_or(u64::MAX, OnDisk::budget);
            let fresh = self.disk.as_ref().is_none_or(|d| d.in_file == 0);
            // The records that fit in this file; a record larger than a whole file goes into
            // a fresh one alone.
            let mut j = i;
            while j < self.records.len()
                && ((self.records[j].0 - from) as u64 <= budget || (j == i && fresh))
            {
                j += 1;
            }
            if j == i {
                if let Err(e) = self.rotate() {
                    self.health.failed(all - done_units, &e);
                    return;
                }
                continue;
            }
            let end = self.records[j - 1].0;
            let (done, mut err) = write_some(&mut *self.out, &self.buf[from..end]);
            if err.is_none() {
                err = self.out.flush().err();
            }
            if let Some(d) = &mut self.disk {
                d.in_file += done as u64;
            }
            let whole: u64 = self.records[i..j]
                .iter()
                .take_while(|r| r.0 <= from + done)
                .map(|r| r.1)
                .sum();
            self.health.written(whole);
            done_units += whole;
            if let Some(e) = err {
                self.health.failed(all - done_units, &e);
                return;
            }
            from = end;
            i = j;
        }
    }

    /// Rotates the file (see [`Place::rotate`]); writes go to the new one.
    fn rotate(&mut self) -> io::Result<()> {
        let Some(d) = &mut self.disk else {
            return Ok(());
        };
        let file = d.place.rotate(d.limits.keep)?;
        self.out = Box::new(file);
        d.in_file = 0;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes as much of `buf` as the writer takes: the bytes written, and the error that stopped
/// it.
fn write_some(w: &mut dyn Write, buf: &[u8]) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return (done, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A disk of `room` bytes: writes what fits, then ENOSPC; `room` can grow meanwhile.
    struct Disk {
        data: Arc<Mutex<Vec<u8>>>,
        room: Arc<AtomicU64>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut data = self.data.lock().unwrap();
            let left = self.room.load(Ordering::Relaxed) as usize - data.len();
            if left == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(left);
            data.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A disk, with what was written to it and its room.
    type Probe = (Arc<Mutex<Vec<u8>>>, Arc<AtomicU64>);

    fn disk(room: u64) -> (Box<dyn Write + Send>, Probe) {
        let data = Arc::new(Mutex::new(Vec::new()));
        let room = Arc::new(AtomicU64::new(room));
        let d = Disk {
            data: data.clone(),
            room: room.clone(),
        };
        (Box::new(d), (data, room))
    }

    fn line(o: &mut Output, s: &str) {
        o.record(1, |b| {
            b.extend_from_slice(s.as_bytes());
            Ok(())
        });
    }

    #[test]
    fn a_full_disk_counts_the_records_it_cut_and_reports_once() {
        let outputs = Outputs::default();
        let (w, (data, room)) = disk(25);
        let mut o = outputs.writer(w, "/mnt/sniffer.log", "messages");
        for i in 0..5 {
            line(&mut o, &format!("message {i}\n"));
        }
        o.flush();
        // 10 bytes a message: two fit, the third is cut.
        assert_eq!(
            String::from_utf8_lossy(&data.lock().unwrap()),
            "message 0\nmessage 1\nmessa"
        );
        for i in 5..8 {
            line(&mut o, &format!("message {i}\n"));
            o.flush();
        }
        let f = outputs.failures();
        assert_eq!(
            f,
            vec![Failure {
                name: "/mnt/sniffer.log".into(),
                unit: "messages",
                failed: 6,
                total: 8,
                error: io::Error::from_raw_os_error(libc::ENOSPC).to_string(),
            }]
        );
        assert_eq!(
            f[0].to_string(),
            "/mnt/sniffer.log: 6 of 8 messages could not be written (No space left on device \
             (os error 28))"
        );
        assert_eq!(o.health.reports(), 1, "a disk that stays full is said once");
        // Room again: the next records are written.
        room.store(1000, Ordering::Relaxed);
        line(&mut o, "message 8\n");
        drop(o);
        assert!(String::from_utf8_lossy(&data.lock().unwrap()).ends_with("messamessage 8\n"));
        assert_eq!(outputs.failures()[0].total, 9);
        assert_eq!(outputs.failures()[0].failed, 6);
    }

    #[test]
    fn outputs_that_lost_nothing_are_not_failures_and_units_add_up() {
        let outputs = Outputs::default();
        let (w, (data, _)) = disk(1 << 20);
        let mut ok = outputs.writer(w, "a.jsonl", "exchanges");
        line(&mut ok, "{}\n");
        ok.flush();
        let (w, _) = disk(4);
        let mut streams = outputs.writer(w, "streams/", "stream bytes");
        streams.bytes(b"0123456789");
        streams.bytes(b"abc");
        streams.flush();
        assert_eq!(&data.lock().unwrap()[..], b"{}\n");
        let f = outputs.failures();
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].name.as_str(), f[0].failed, f[0].total),
            ("streams/", 13, 13)
        );
    }

    #[test]
    fn a_record_that_cannot_be_formatted_is_counted_and_leaves_no_bytes() {
        let outputs = Outputs::default();
        let (w, (data, _)) = disk(1 << 20);
        let mut o = outputs.writer(w, "x", "exchanges");
        line(&mut o, "a\n");
        o.record(1, |b| {
            b.extend_from_slice(b"half");
            Err(io::Error::other("bad record"))
        });
        line(&mut o, "b\n");
        o.flush();
        assert_eq!(&data.lock().unwrap()[..], b"a\nb\n");
        assert_eq!(outputs.failures()[0].failed, 1);
        assert_eq!(outputs.failures()[0].total, 3);
    }

    #[test]
    fn a_different_error_is_reported_again() {
        let h = Health::new("x", "messages");
        h.failed(1, &io::Error::from_raw_os_error(libc::ENOSPC));
        h.failed(1, &io::Error::from_raw_os_error(libc::ENOSPC));
        h.failed(1, &io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(h.reports(), 2);
    }

    /// An output on a real file in `dir`, with `limits`.
    fn file_output(dir: &std::path::Path, limits: DiskLimits) -> (Output, Outputs) {
        let outputs = Outputs::default();
        let target = super::super::safe_open::Target::check(&dir.join("s.log")).unwrap();
        let (w, place) = target.commit_placed().unwrap();
        let o = outputs.writer(w, "s.log", "messages");
        (o.on_disk(place.unwrap(), limits), outputs)
    }

    fn read(dir: &std::path::Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|_| "<none>".into())
    }

    #[test]
    fn a_file_is_rotated_between_records_and_keeps_its_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let limits = DiskLimits {
            rotate_at: Some(25),
            keep: 2,
            min_free: 0,
        };
        let (mut o, outputs) = file_output(dir.path(), limits);
        // 10 bytes a record: two fit in a file of 25, a third begins the next.
        for i in 0..5 {
            line(&mut o, &format!("message {i}\n"));
        }
        o.flush();
        assert_eq!(read(dir.path(), "s.log.2"), "message 0\nmessage 1\n");
        assert_eq!(read(dir.path(), "s.log.1"), "message 2\nmessage 3\n");
        assert_eq!(read(dir.path(), "s.log"), "message 4\n");
        // A record larger than a file goes alone into a fresh one; the oldest file goes.
        let big = "a record of forty bytes, more than a file\n";
        line(&mut o, big);
        line(&mut o, "message 5\n");
        drop(o);
        assert_eq!(read(dir.path(), "s.log.2"), "message 4\n");
        assert_eq!(read(dir.path(), "s.log.1"), big);
        assert_eq!(read(dir.path(), "s.log"), "message 5\n");
        assert_eq!(read(dir.path(), "s.log.3"), "<none>");
        assert!(outputs.failures().is_empty());
        for name in ["s.log", "s.log.1", "s.log.2"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600,
                "{name}"
            );
        }
    }

    #[test]
    fn a_filesystem_at_its_floor_takes_nothing_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        // A floor of more than the disk has: lowered to half of what is free, so the first
        // flush writes; then records that would pass it are refused.
        let limits = DiskLimits {
            rotate_at: None,
            keep: 0,
            min_free: u64::MAX,
        };
        let (mut o, outputs) = file_output(dir.path(), limits);
        let floor = o.disk.as_ref().unwrap().limits.min_free;
        let free = o.disk.as_ref().unwrap().place.free_bytes().unwrap();
        assert!(floor <= free / 2 + (1 << 20) && floor >= free / 2 - (1 << 20));
        line(&mut o, "message 0\n");
        o.flush();
        assert_eq!(read(dir.path(), "s.log"), "message 0\n");
        // As if the disk had filled up to the floor.
        o.disk.as_mut().unwrap().limits.min_free = free * 2;
        line(&mut o, "message 1\n");
        o.flush();
        line(&mut o, "message 2\n");
        o.flush();
        assert_eq!(read(dir.path(), "s.log"), "message 0\n");
        let f = outputs.failures();
        assert_eq!((f[0].failed, f[0].total), (2, 3));
        assert!(
            f[0].error
                .contains("free, which sniffer leaves to the host (--min-free-mib)"),
            "{}",
            f[0].error
        );
        assert_eq!(o.health.reports(), 1);
        // Room again.
        o.disk.as_mut().unwrap().limits.min_free = 0;
        line(&mut o, "message 3\n");
        drop(o);
        assert_eq!(read(dir.path(), "s.log"), "message 0\nmessage 3\n");
    }
}
