//! A held-up reader: sniffer stopped (SIGSTOP) for a while under nginx keep-alive load, as a
//! busy host holds it off its CPU. The kernel goes on writing the ring; what the reader then
//! costs in memory while it catches up, and what is lost, broken or written out of order. A
//! 200 ms stop fits in the 8 MiB ring at this load; a 600 ms one overflows it. And a held-up
//! log: a slow download (20 MB/s) beside the same load, whose answer holds back every message
//! that began after it until it ends or the queue's bound is reached.
use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::anyhow;

use super::{Settings, Sniffer, Summary, wrk};

/// Stops of the reader, in ms.
const STOPS_MS: [u64; 2] = [200, 600];
/// When the stop begins, after the load's start.
const STOP_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Default, serde::Serialize)]
pub struct StallRun {
    /// 0: not stopped; a slow download beside the load instead.
    pub stop_ms: u64,
    /// wrk's completed requests.
    pub completed: u64,
    pub summary: Summary,
    /// Messages written before their place was final (the order queue at its bound).
    pub forced: u64,
    /// Messages written after messages that began later.
    pub out_of_order: u64,
}

/// The number before `what` on a line of sniffer's stderr that has it (0 without one).
fn count_before(text: &str, what: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let i = l.find(what)?;
            l[..i]
                .rsplit([' ', ','])
                .find(|w| !w.is_empty())?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub fn case(
    bin: &Path,
    dir: &Path,
    nginx_pid: u32,
    url: &str,
    big_url: &str,
    s: &Settings,
) -> anyhow::Result<Vec<StallRun>> {
    let mut runs = Vec::new();
    for stop_ms in STOPS_MS.into_iter().chain([0]) {
        for _ in 0..s.pairs {
            let sniffer = Sniffer::start(
                bin,
                &dir.join("stall.log"),
                &["--pid".into(), nginx_pid.to_string()],
            )?;
            let pid = sniffer.pid() as i32;
            let load_url = url.to_owned();
            let seconds = s.seconds.max(3);
            let download = (stop_ms == 0)
                .then(|| {
                    Command::new("curl")
                        .args(["-s", "-o", "/dev/null", "--limit-rate", "20M"])
                        .args(["--max-time", &(seconds + 1).to_string(), big_url])
                        .stdout(Stdio::null())
                        .spawn()
                })
                .transpose()?;
            // The download's answer begins first: it holds back what the load sends.
            thread::sleep(Duration::from_millis(500));
            let load = thread::spawn(move || wrk(&load_url, 10, 2, seconds, false));
            if stop_ms > 0 {
                thread::sleep(STOP_AFTER);
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                thread::sleep(Duration::from_millis(stop_ms));
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            let (completed, _) = load
                .join()
                .map_err(|_| anyhow!("the load's thread panicked"))??;
            if let Some(mut d) = download {
                // It ends at its --max-time, mid-answer unless the file is small.
                let _ = d.wait();
            }
            let (summary, text) = sniffer.stop_with_text()?;
            eprintln!(
                "xtask: stall {stop_ms} ms: {} of {completed} logged, {} lost, {} broken, peak rss {} KiB",
                summary.exchanges, summary.lost, summary.broken, summary.peak_rss_kib
            );
            runs.push(StallRun {
                stop_ms,
                completed,
                summary,
                forced: count_before(&text, " messages written before their time"),
                out_of_order: count_before(&text, " messages written out of order"),
            });
        }
    }
    Ok(runs)
}

pub fn table(runs: &[StallRun]) -> String {
    let mut t = String::from(
        "| sniffer held up under keep-alive | exchanges logged / completed | events lost | broken | written before their time / out of order | peak RSS |\n|---|---|---|---|---|---|\n",
    );
    for stop_ms in STOPS_MS.into_iter().chain([0]) {
        let of: Vec<&StallRun> = runs.iter().filter(|r| r.stop_ms == stop_ms).collect();
        let join = |f: &dyn Fn(&StallRun) -> String| {
            of.iter().map(|r| f(r)).collect::<Vec<_>>().join(", ")
        };
        let what = if stop_ms == 0 {
            "a 20 MB/s download beside it (the log held)".to_owned()
        } else {
            format!("stopped {stop_ms} ms")
        };
        t.push_str(&format!(
            "| {what} | {} | {} | {} | {} | {} MiB |\n",
            join(&|r| format!("{} / {}", r.summary.exchanges, r.completed)),
            join(&|r| r.summary.lost.to_string()),
            join(&|r| r.summary.broken.to_string()),
            join(&|r| format!("{} / {}", r.forced, r.out_of_order)),
            join(&|r| (r.summary.peak_rss_kib >> 10).to_string()),
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_on_sniffers_notes() {
        let text = "sniffer: 10 exchanges, 20 messages\nsniffer: memory bounds reached: 0 connections let go (idlest first), 83559 messages written before their time\nsniffer: 3045 messages written out of order: their events came";
        assert_eq!(
            count_before(text, " messages written before their time"),
            83559
        );
        assert_eq!(count_before(text, " messages written out of order"), 3045);
        assert_eq!(
            count_before("sniffer: 1 exchanges", " messages written out of order"),
            0
        );
    }
}
