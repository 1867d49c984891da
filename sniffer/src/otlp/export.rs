//! Sending spans without ever holding up the capture: a bounded queue that the capture only
//! ever offers to (a full queue drops, and counts), a thread that batches what comes (by size
//! or age) and POSTs it with retries as the OTLP/HTTP specification asks (429, 502, 503 and
//! 504 and lost connections are retried with exponential backoff or the server's
//! Retry-After; other answers are final), and counts of everything for the summary.
use std::{
    io,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

use super::{
    http::{self, Endpoint},
    proto,
    spans::Span,
};
use crate::sinks::output::Health;

/// How the exporter batches and retries.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Exchanges waiting to be sent at most (each is one or two spans).
    pub queue: usize,
    /// Spans per request at most.
    pub batch: usize,
    /// A batch is sent this long after its first span at the latest.
    pub linger: Duration,
    /// One request's time limit.
    pub timeout: Duration,
    /// Tries per batch.
    pub attempts: u32,
    /// The first retry's wait; it doubles each time, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queue: 4096,
            batch: 512,
            linger: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            attempts: 5,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// What the export did, for the summary.
#[derive(Debug, Default)]
pub struct Counts {
    pub offered: AtomicU64,
    pub sent: AtomicU64,
    /// Spans the full queue turned away.
    pub dropped: AtomicU64,
    /// Spans given up on: refused, or still failing after every retry or at the exit deadline.
    pub failed: AtomicU64,
    /// Spans the backend said it rejected (OTLP partial success).
    pub rejected: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
}

/// A snapshot of [`Counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub offered: u64,
    pub sent: u64,
    pub dropped: u64,
    pub failed: u64,
    pub rejected: u64,
    pub requests: u64,
    pub retries: u64,
    /// Spans still queued or in a batch when the exit deadline came.
    pub unsent: u64,
}

impl Summary {
    /// One line for the end of a run.
    pub fn line(&self, ep: &Endpoint) -> String {
        format!(
            "otlp {ep}: {} spans sent in {} requests ({} retries); {} dropped (queue full), {} \
             not delivered, {} rejected by the backend",
            self.sent,
            self.requests,
            self.retries,
            self.dropped,
            self.failed + self.unsent,
            self.rejected
        )
    }
}

pub struct Exporter {
    tx: Option<SyncSender<Vec<Span>>>,
    counts: Arc<Counts>,
    /// When set: the time by which the worker stops trying.
    deadline: Arc<Mutex<Option<Instant>>>,
    done: Receiver<()>,
    endpoint: Endpoint,
    health: Option<Arc<Health>>,
}

impl Exporter {
    /// Starts the sending thread. `health`, when given, counts spans written and lost like a
    /// file output's records (the summary and exit code take them up).
    pub fn start(
        endpoint: Endpoint,
        opts: Options,
        health: Option<Arc<Health>>,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(opts.queue.max(1));
        let (done_tx, done) = mpsc::channel();
        let counts = Arc::new(Counts::default());
        let deadline = Arc::new(Mutex::new(None));
        let worker = Worker {
            endpoint: endpoint.clone(),
            opts,
            counts: counts.clone(),
            deadline: deadline.clone(),
            health: health.clone(),
            warned: None,
        };
        thread::Builder::new().name("otlp".into()).spawn(move || {
            worker.run(rx);
            let _ = done_tx.send(());
        })?;
        Ok(Self {
            tx: Some(tx),
            counts,
            deadline,
            done,
            endpoint,
            health,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn lost(&self, n: u64, why: &str) {
        if let Some(h) = &self.health {
            h.failed(n, &io::Error::other(why.to_owned()));
        }
    }

    /// Offers an exchange's spans; never waits: a full queue drops them (counted).
    pub fn offer(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        self.counts.offered.fetch_add(n, Ordering::Relaxed);
        let Some(tx) = &self.tx else { return };
        match tx.try_send(spans) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counts.dropped.fetch_add(n, Ordering::Relaxed);
                self.lost(
                    n,
                    "the export queue was full (the backend is slower than the capture)",
                );
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counts.failed.fetch_add(n, Ordering::Relaxed);
                self.lost(n, "the export thread ended");
            }
        }
    }

    /// Queues spans, waiting while the queue is full (`sniffer merge`: nothing to hold up).
    pub fn send(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        self.counts.offered.fetch_add(n, Ordering::Relaxed);
        if let Some(tx) = &self.tx
            && tx.send(spans).is_err()
        {
            self.counts.failed.fetch_add(n, Ordering::Relaxed);
            self.lost(n, "the export thread ended");
        }
    }

    /// Sends what is queued, waiting `wait` at most; what is left then is counted unsent.
    pub fn finish(mut self, wait: Duration) -> Summary {
        let until = Instant::now() + wait;
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = Some(until);
        drop(self.tx.take());
        // The worker stops retrying at the deadline; a request under way has its own limit.
        let finished = self
            .done
            .recv_timeout(wait + Duration::from_secs(1))
            .is_ok();
        let c = &self.counts;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = Summary {
            offered: load(&c.offered),
            sent: load(&c.sent),
            dropped: load(&c.dropped),
            failed: load(&c.failed),
            rejected: load(&c.rejected),
            requests: load(&c.requests),
            retries: load(&c.retries),
            unsent: 0,
        };
        let accounted = s.sent + s.dropped + s.failed + s.rejected;
        s.unsent = s.offered.saturating_sub(accounted);
        if s.unsent > 0 {
            self.lost(
                s.unsent,
                if finished {
                    "not sent"
                } else {
                    "not sent before the exit deadline"
                },
            );
        }
        s
    }
}

struct Worker {
    endpoint: Endpoint,
    opts: Options,
    counts: Arc<Counts>,
    deadline: Arc<Mutex<Option<Instant>>>,
    health: Option<Arc<Health>>,
    /// The last failure said on stderr, so that a backend that stays down is said once.
    warned: Option<String>,
}

/// What one try came to.
enum Outcome {
    Done,
    Retry(Option<Duration>, String),
    Refused(String),
}

impl Worker {
    fn past_deadline(&self) -> bool {
        self.deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|d| Instant::now() >= d)
    }

    fn run(mut self, rx: Receiver<Vec<Span>>) {
        let mut batch: Vec<Span> = Vec::new();
        let mut since: Option<Instant> = None;
        loop {
            let wait = since.map_or(Duration::from_secs(3600), |t| {
                self.opts.linger.saturating_sub(t.elapsed())
            });
            match rx.recv_timeout(wait) {
                Ok(spans) => {
                    since.get_or_insert_with(Instant::now);
                    batch.extend(spans);
                    if batch.len() >= self.opts.batch {
                        self.flush(&mut batch, false);
                        since = (!batch.is_empty()).then(Instant::now);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.flush(&mut batch, true);
                    since = None;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(&mut batch, true);
                    return;
                }
            }
        }
    }

    /// Sends full batches, and with `all` the rest too.
    fn flush(&mut self, batch: &mut Vec<Span>, all: bool) {
        while batch.len() >= self.opts.batch.max(1) || (all && !batch.is_empty()) {
            let rest = batch.split_off(batch.len().min(self.opts.batch));
            let now = std::mem::replace(batch, rest);
            self.send(&now);
        }
    }

    fn try_once(&self, body: &[u8], n: u64) -> Outcome {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        let reply = match http::post(
            &self.endpoint,
            "application/x-protobuf",
            body,
            self.opts.timeout,
        ) {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(None, e.to_string()),
        };
        match reply.status {
            200..=299 => {
                let partial = proto::export_response(&reply.body).unwrap_or_default();
                let rejected = u64::try_from(partial.rejected_spans).unwrap_or(0).min(n);
                self.counts.sent.fetch_add(n - rejected, Ordering::Relaxed);
                if let Some(h) = &self.health {
                    h.written(n - rejected);
                }
                if rejected > 0 {
                    self.counts.rejected.fetch_add(rejected, Ordering::Relaxed);
                    let why = format!(
                        "the backend rejected {rejected} spans: {}",
                        partial.error_message
                    );
                    if let Some(h) = &self.health {
                        h.failed(rejected, &io::Error::other(why));
                    }
                }
                Outcome::Done
            }
            429 | 502 | 503 | 504 => Outcome::Retry(
                reply.retry_after,
                format!("the backend answered {}", reply.status),
            ),
            s => Outcome::Refused(format!(
                "the backend answered {s}: {}",
                String::from_utf8_lossy(&reply.body).trim()
            )),
        }
    }

    fn send(&mut self, spans: &[Span]) {
        let n = spans.len() as u64;
        let body = proto::export_request(spans, "sniffer", env!("CARGO_PKG_VERSION"));
        let mut backoff = self.opts.backoff;
        if self.past_deadline() {
            return self.give_up(n, "not sent before the exit deadline");
        }
        for attempt in 1..=self.opts.attempts.max(1) {
            let (wait, why) = match self.try_once(&body, n) {
                Outcome::Done => {
                    self.warned = None;
                    return;
                }
                Outcome::Refused(why) => return self.give_up(n, &why),
                Outcome::Retry(wait, why) => (wait, why),
            };
            if attempt == self.opts.attempts.max(1) || self.past_deadline() {
                return self.give_up(n, &why);
            }
            self.counts.retries.fetch_add(1, Ordering::Relaxed);
            let wait = wait.unwrap_or(backoff).min(self.opts.max_backoff);
            tracing::debug!("otlp: {why}; retrying in {wait:?}");
            // Sleep in steps, so that the exit deadline cuts it short.
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.past_deadline() {
                thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
            }
            backoff = (backoff * 2).min(self.opts.max_backoff);
        }
    }

    fn give_up(&mut self, n: u64, why: &str) {
        self.counts.failed.fetch_add(n, Ordering::Relaxed);
        if let Some(h) = &self.health {
            h.failed(n, &io::Error::other(why.to_owned()));
        } else if self.warned.as_deref() != Some(why) {
            tracing::warn!("otlp {}: {n} spans not delivered: {why}", self.endpoint);
        }
        self.warned = Some(why.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpListener,
    };

    use super::*;
    use crate::otlp::spans::{Kind, Resource, StatusCode};

    fn span(i: u8) -> Span {
        Span {
            trace_id: [i; 16],
            span_id: [i; 8],
            parent: None,
            name: "GET /".into(),
            kind: Kind::Client,
            start_unix_ns: 1,
            end_unix_ns: 2,
            attributes: vec![],
            status: StatusCode::Unset,
            status_message: String::new(),
            resource: Resource {
                service: "s".into(),
                host: "h".into(),
                pid: 1,
            },
        }
    }

    /// A backend on loopback answering each request with the next of `answers` (the last
    /// one again when they run out); returns the bodies it got.
    fn backend(answers: Vec<&'static str>) -> (Endpoint, Arc<Mutex<Vec<Vec<u8>>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = Endpoint::parse(&format!(
            "http://127.0.0.1:{}",
            l.local_addr().unwrap().port()
        ))
        .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        thread::spawn(move || {
            for (i, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { return };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut b = [0u8; 65536];
                // Head, then Content-Length bytes.
                let body = loop {
                    let n = s.read(&mut b).unwrap_or(0);
                    if n == 0 {
                        break Vec::new();
                    }
                    buf.extend_from_slice(&b[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break buf[end + 4..end + 4 + len].to_vec();
                        }
                    }
                };
                keep.lock().unwrap().push(body);
                let a = answers[i.min(answers.len() - 1)];
                let _ = s.write_all(a.as_bytes());
            }
        });
        (ep, got)
    }

    const OK: &str =
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
    const BUSY: &str =
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n";
    const BAD: &str = "HTTP/1.1 400 Bad Request\r\nContent-Length: 4\r\n\r\nnope";

    fn quick() -> Options {
        Options {
            linger: Duration::from_millis(50),
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(2),
            ..Options::default()
        }
    }

    #[test]
    fn spans_go_out_in_batches_and_busy_answers_are_retried() {
        let (ep, got) = backend(vec![BUSY, OK]);
        let e = Exporter::start(
            ep,
            Options {
                batch: 3,
                ..quick()
            },
            None,
        )
        .unwrap();
        for i in 0..4 {
            e.offer(vec![span(i), span(i + 100)]);
        }
        let s = e.finish(Duration::from_secs(5));
        assert_eq!(
            (s.offered, s.sent, s.dropped, s.failed, s.unsent),
            (8, 8, 0, 0, 0)
        );
        assert_eq!(s.retries, 1);
        let bodies = got.lock().unwrap().clone();
        // The first batch twice (refused once), then the rest in batches of 3 at most.
        assert_eq!(bodies[0], bodies[1]);
        let all: Vec<Span> = (0..4).flat_map(|i| [span(i), span(i + 100)]).collect();
        assert_eq!(
            bodies[1],
            proto::export_request(&all[..3], "sniffer", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(bodies.len(), 1 + 3);
    }

    #[test]
    fn refused_batches_are_not_retried_and_count_as_lost() {
        let (ep, got) = backend(vec![BAD]);
        let health = Arc::new(Health::new("otlp", "spans"));
        let e = Exporter::start(ep, quick(), Some(health.clone())).unwrap();
        e.offer(vec![span(1)]);
        let s = e.finish(Duration::from_secs(5));
        assert_eq!((s.sent, s.failed, s.retries), (0, 1, 0));
        assert_eq!(got.lock().unwrap().len(), 1);
        let f = health.failure().unwrap();
        assert_eq!((f.failed, f.total), (1, 1));
        assert!(f.error.contains("400"), "{f:?}");
    }

    #[test]
    fn a_full_queue_drops_without_waiting_and_a_dead_backend_ends_at_the_deadline() {
        // Nothing listens here: every try fails to connect, and retries wait.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = Endpoint::parse(&format!(
            "http://127.0.0.1:{}",
            l.local_addr().unwrap().port()
        ))
        .unwrap();
        drop(l);
        let opts = Options {
            queue: 2,
            batch: 1,
            backoff: Duration::from_millis(200),
            ..quick()
        };
        let e = Exporter::start(ep, opts, None).unwrap();
        let t0 = Instant::now();
        for i in 0..50 {
            e.offer(vec![span(i)]);
        }
        assert!(
            t0.elapsed() < Duration::from_millis(200),
            "offering never waits"
        );
        let s = e.finish(Duration::from_millis(500));
        assert!(t0.elapsed() < Duration::from_secs(4));
        assert!(s.dropped >= 45, "{s:?}");
        assert_eq!(s.sent, 0);
        assert_eq!(s.dropped + s.failed + s.unsent, 50, "{s:?}");
    }
}
