//! A traced service's connections that are not HTTP: Debian's redis-server traced, under
//! redis-benchmark (SET and GET, 20 connections). sniffer sets each connection aside at its
//! first bytes, so the server should run at nearly its untraced speed, with nothing lost or
//! broken; the table also gives sniffer's CPU per 10,000 requests.
use std::{
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Proc, Settings, Sniffer, Summary, free_port, median};

#[derive(Debug, Default, serde::Serialize)]
pub struct RedisResult {
    pub ratios: Vec<f64>,
    pub untraced: Vec<f64>,
    pub traced: Vec<f64>,
    pub requests: Vec<u64>,
    pub summaries: Vec<Summary>,
}

/// redis-benchmark's requests per second over SET and GET (their mean), and requests made.
fn benchmark(port: u16, requests: u64) -> anyhow::Result<(f64, u64)> {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-c", "20", "-t", "set,get", "-q"])
        .args(["-n", &requests.to_string()])
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `SET: 41493.78 requests per second, p50=...` (after \r-separated progress).
    let rates: Vec<f64> = text
        .split(['\r', '\n'])
        .filter_map(|l| l.split_once(": ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split(" requests per second").next())
        .filter(|r| !r.contains("rps="))
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    if rates.len() != 2 {
        bail!("redis-benchmark said:\n{text}");
    }
    Ok((rates.iter().sum::<f64>() / 2.0, 2 * requests))
}

pub fn case(bin: &Path, dir: &Path, s: &Settings) -> anyhow::Result<RedisResult> {
    let port = free_port()?;
    let server = Proc(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not listen on {port}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    // About as long a run as the other cases: redis-benchmark makes a fixed number of requests.
    let requests = (s.seconds * 15_000).max(20_000);
    let mut r = RedisResult::default();
    for pair in 0..s.pairs {
        let (base, _) = benchmark(port, requests)?;
        let sniffer = Sniffer::start(
            bin,
            &dir.join(format!("redis-{pair}.log")),
            &[
                "--pid".into(),
                server.0.id().to_string(),
                "--bpf-stats".into(),
            ],
        )?;
        let (rate, n) = benchmark(port, requests)?;
        thread::sleep(Duration::from_millis(500));
        let sum = sniffer.stop()?;
        eprintln!(
            "xtask: redis pair {pair}: untraced {base:.0}/s, traced {rate:.0}/s, {} lost, {} broken, cpu {:.2} s",
            sum.lost, sum.broken, sum.cpu_s
        );
        r.untraced.push(base);
        r.traced.push(rate);
        r.ratios.push(if base > 0.0 { rate / base } else { 0.0 });
        r.requests.push(n);
        r.summaries.push(sum);
    }
    Ok(r)
}

pub fn table(r: &RedisResult) -> String {
    let requests: u64 = r.requests.iter().sum();
    let cpu: f64 = r.summaries.iter().map(|s| s.cpu_s + s.bpf_s).sum();
    let lost: u64 = r.summaries.iter().map(|s| s.lost).sum();
    let broken: u64 = r.summaries.iter().map(|s| s.broken).sum();
    let exchanges: u64 = r.summaries.iter().map(|s| s.exchanges).sum();
    format!(
        "redis-server traced under redis-benchmark (-c 20, SET and GET): throughput {:.2} of \
         untraced (median of {}), {exchanges} exchanges logged, {lost} events lost, {broken} \
         broken; sniffer CPU {:.3} s per 10k requests (user + sys + BPF)\n",
        median(&r.ratios),
        r.ratios
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        if requests > 0 {
            cpu * 10_000.0 / requests as f64
        } else {
            0.0
        }
    )
}
