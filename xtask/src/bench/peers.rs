//! Side by side with what a user would run instead: the passive HTTP sniffers that read
//! packets, httpry and tshark (Debian's), on `lo` against the same nginx + wrk load as sniffer.
//! Per tool: the throughput ratio (with the tool running / without) and how many of wrk's
//! completed requests it recorded.
use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::Context as _;

use super::{Proc, Settings, Sniffer, median, wrk};

/// The load of the comparison: one nginx worker, wrk with one thread and 32 keep-alive
/// connections (what a trial by hand used).
const CONNS: u32 = 32;
const THREADS: u32 = 1;

#[derive(Debug, Default, serde::Serialize)]
pub struct PeerResult {
    pub tool: String,
    pub records: String,
    pub ratios: Vec<f64>,
    pub completed: Vec<u64>,
    pub recorded: Vec<u64>,
}

/// A packet sniffer started on lo for nginx's port, writing to `out`.
fn start_tool(tool: &str, port: u16, out: &Path) -> anyhow::Result<Proc> {
    let filter = format!("tcp port {port}");
    let file = fs::File::create(out)?;
    let mut cmd = match tool {
        // One line per request and per response; -F flushes each line.
        "httpry" => {
            let mut c = Command::new("httpry");
            c.args(["-i", "lo", "-q", "-F", "-o"]).arg(out).arg(&filter);
            c.stdout(Stdio::null());
            c
        }
        // The HTTP dissector, requests only, one line each, line-buffered.
        "tshark" => {
            let mut c = Command::new("tshark");
            c.args(["-i", "lo", "-n", "-l", "-f", &filter])
                .args([
                    "-Y",
                    "http.request",
                    "-T",
                    "fields",
                    "-e",
                    "http.request.method",
                ])
                .stdout(file);
            c
        }
        other => anyhow::bail!("no peer tool {other}"),
    };
    let child = cmd
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {tool}"))?;
    // Both open the capture device before they see a packet: give them a moment.
    thread::sleep(Duration::from_secs(2));
    Ok(Proc(child))
}

/// Requests a tool's output records.
fn count(tool: &str, out: &Path) -> u64 {
    let text = fs::read_to_string(out).unwrap_or_default();
    match tool {
        // Tab-separated; a request line has its method in a field of its own.
        "httpry" => text.lines().filter(|l| l.contains("\tGET\t")).count() as u64,
        _ => text.lines().filter(|l| l.trim() == "GET").count() as u64,
    }
}

pub fn compare(
    bin: &Path,
    dir: &Path,
    nginx_pid: u32,
    port: u16,
    s: &Settings,
) -> anyhow::Result<Vec<PeerResult>> {
    let url = format!("http://127.0.0.1:{port}/small.txt");
    let mut results = Vec::new();
    for tool in ["sniffer", "httpry", "tshark"] {
        let mut r = PeerResult {
            tool: tool.to_owned(),
            records: match tool {
                "sniffer" => "headers and bodies of both messages",
                "httpry" => "request line and status line",
                _ => "the dissector's fields",
            }
            .to_owned(),
            ..PeerResult::default()
        };
        for pair in 0..s.pairs {
            let (_, base) = wrk(&url, CONNS, THREADS, s.seconds, false)?;
            let (done, rate, recorded) = if tool == "sniffer" {
                let sn = Sniffer::start(
                    bin,
                    &dir.join(format!("peers-sniffer-{pair}.log")),
                    &["--pid".into(), nginx_pid.to_string()],
                )?;
                let (done, rate) = wrk(&url, CONNS, THREADS, s.seconds, false)?;
                thread::sleep(Duration::from_millis(500));
                (done, rate, sn.stop()?.exchanges)
            } else {
                let out = dir.join(format!("peers-{tool}-{pair}.txt"));
                let proc_ = start_tool(tool, port, &out)?;
                let (done, rate) = wrk(&url, CONNS, THREADS, s.seconds, false)?;
                // Let it catch up with what it buffered, then stop it as a user would.
                thread::sleep(Duration::from_secs(2));
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(proc_.0.id() as i32, libc::SIGINT) };
                drop(proc_);
                (done, rate, count(tool, &out))
            };
            eprintln!(
                "xtask: peers {tool} pair {pair}: untraced {base:.0}/s, with it {rate:.0}/s, \
                 {recorded} of {done} requests recorded"
            );
            r.ratios.push(rate / base);
            r.completed.push(done);
            r.recorded.push(recorded);
        }
        results.push(r);
    }
    Ok(results)
}

pub fn table(results: &[PeerResult]) -> String {
    let mut t = format!(
        "nginx (1 worker) + wrk -t{THREADS} -c{CONNS} keep-alive on lo, each tool against the \
         same load:\n\n| tool | throughput with it / without (median) | requests recorded / \
         completed | what it records |\n|---|---|---|---|\n"
    );
    for r in results {
        let done: u64 = r.completed.iter().sum();
        let rec: u64 = r.recorded.iter().sum();
        let _ = writeln!(
            t,
            "| {} | {:.2} ({}) | {rec} / {done} ({:.0}%) | {} |",
            r.tool,
            median(&r.ratios),
            r.ratios
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            if done > 0 {
                rec as f64 * 100.0 / done as f64
            } else {
                0.0
            },
            r.records
        );
    }
    t
}
