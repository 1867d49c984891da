//! Taking TLS probes off away from the event loop. Closing a uprobe waits for the kernel's RCU
//! grace periods (0.07-0.18 s each here, 14 probes per process and library): on the loop that
//! would stall reading the ring for seconds whenever a traced process ends. Workers close them
//! side by side, so the waits overlap; they start with the first probe to take off.

use std::{
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::uprobe::UProbeLink;

use super::TlsLinks;

#[derive(Debug)]
pub struct Detacher {
    workers: usize,
    tx: Option<mpsc::Sender<UProbeLink>>,
    threads: Vec<JoinHandle<()>>,
}

impl Detacher {
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            tx: None,
            threads: Vec::new(),
        }
    }

    fn start(&mut self) {
        let (tx, rx) = mpsc::channel::<UProbeLink>();
        let rx = Arc::new(Mutex::new(rx));
        self.threads = (0..self.workers)
            .filter_map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("unprobe-{i}"))
                    .spawn(move || {
                        loop {
                            let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                            // Dropping the link closes its perf event: the slow part.
                            let Ok(link) = next else { break };
                            drop(link);
                        }
                    })
                    .ok()
            })
            .collect();
        self.tx = Some(tx);
    }

    pub fn release(&mut self, links: TlsLinks) {
        if self.tx.is_none() {
            self.start();
        }
        for link in links.links {
            match &self.tx {
                Some(tx) if !self.threads.is_empty() => {
                    // No worker left (none could start): the link is closed here instead.
                    if let Err(mpsc::SendError(link)) = tx.send(link) {
                        drop(link);
                    }
                }
                _ => drop(link),
            }
        }
    }

    /// Waits, up to `limit`, for every probe released to be off. What is left is closed by
    /// the kernel when sniffer exits.
    pub fn finish(mut self, limit: Duration) {
        self.tx = None;
        let deadline = Instant::now() + limit;
        while self.threads.iter().any(|w| !w.is_finished()) {
            if Instant::now() >= deadline {
                tracing::debug!("TLS probes still being taken off after {limit:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
