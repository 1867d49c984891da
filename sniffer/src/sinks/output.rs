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

/// A buffered writer that counts records written and not written instead of failing.
pub struct Output {
    out: Box<dyn Write + Send>,
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
            health,
            buf: Vec::new(),
            records: Vec::new(),
            flush_at: FLUSH_AT,
        }
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

    /// Writes what is buffered; what the write did not reach is counted as not written.
    pub fn flush(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let (done, mut err) = write_some(&mut *self.out, &self.buf);
        if err.is_none() {
            err = self.out.flush().err();
        }
        let all: u64 = self.records.iter().map(|r| r.1).sum();
        let whole: u64 = self
            .records
            .iter()
            .take_while(|r| r.0 <= done)
            .map(|r| r.1)
            .sum();
        self.health.written(whole);
        if let Some(e) = err {
            self.health.failed(all - whole, &e);
        }
        self.buf.clear();
        self.records.clear();
        if self.buf.capacity() > 2 * self.flush_at {
            self.buf.shrink_to(self.flush_at);
        }
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
}
