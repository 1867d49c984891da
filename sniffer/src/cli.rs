//! Command line.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// What `sniffer --version` prints after the name, e.g. `0.1.0 (git 0fdd985a1b2c, built
/// 2026-11-30)`: the git revision (`-dirty` for uncommitted changes) and the UTC build date come
/// from build.rs.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SNIFFER_GIT_REV"),
    ", built ",
    env!("SNIFFER_BUILD_DATE"),
    ")"
);

/// See every HTTP call behind a command, without touching a single service.
///
/// eBPF programs on the socket send/recv syscalls of the chosen processes (and their children)
/// stream the plaintext bytes to sniffer. Stop it with Ctrl-C, or give a command after `--`:
/// sniffer then traces that command, and stops and exits with its status when it ends.
#[derive(Debug, Parser)]
#[command(
    name = "sniffer",
    version = VERSION,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub tool: Option<Tool>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Converters of what a run wrote.
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Turn a numbered log (or a .jsonl) into a mermaid sequence diagram and a body page.
    Diagram(DiagramArgs),
    /// Turn a .jsonl into an HTTP Archive (HAR 1.2) for browser devtools and HAR viewers.
    Har(HarArgs),
    /// Merge several hosts' captures (their .jsonl) into one numbered log: a call from one
    /// host to another becomes one exchange with both ends' views, clocks are corrected from
    /// the exchanges themselves, and a name running on several hosts becomes NAME@HOST.
    Merge(MergeArgs),
    /// Turn a numbered log (or a .jsonl) into one self-contained HTML page: the sequence
    /// diagram drawn as SVG, every message clickable for its headers and body, search and
    /// filters. Opens from disk, loads nothing from the network.
    Report(ReportArgs),
    /// Show the whole idea in seconds: start a small chain of local HTTP services, trace them,
    /// write the log, the diagram and the report, print the diagram, stop everything.
    Demo(DemoArgs),
    /// One of the demo's processes (started by `sniffer demo`).
    #[command(hide = true)]
    DemoPart(DemoPartArgs),
    /// Can this host run a capture? One line per requirement (kernel, BTF, privileges,
    /// lockdown, tracefs, BPF features), then sniffer's programs loaded for real. Exit code 0
    /// when a capture will work, 2 when not.
    Check,
}

#[derive(Debug, Args)]
pub struct DiagramArgs {
    /// The numbered log (sniffer.log) or the JSONL (a name ending in .jsonl).
    pub log: PathBuf,
    /// Where the diagram goes ("-" for stdout).
    #[arg(short, long, value_name = "FILE", default_value = "diagram.md")]
    pub output: PathBuf,
    /// Also write the bodies page (mkdocs-material tabs) to FILE.
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// Replace ids in paths by names ({image_id}, {account}, {id1}...) and list them.
    #[arg(long)]
    pub placeholders: bool,
    /// A complete ```mermaid block with sequenceDiagram, autonumber and participants.
    #[arg(long)]
    pub standalone: bool,
    /// Leave out messages matching a should_not_hook.json file (the rest are numbered again).
    #[arg(long, value_name = "FILE")]
    pub filter: Option<PathBuf>,
    /// Which path an arrow through a reverse proxy shows: the one the client sent, or the one
    /// the service received (the proxy's upstream target; needs the .jsonl).
    #[arg(long, value_enum, default_value_t = Paths::Client)]
    pub paths: Paths,
}

pub use crate::diagram::model::Paths;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The numbered log (sniffer.log) or the JSONL (a name ending in .jsonl; it has times and
    /// sizes, which the log does not).
    pub log: PathBuf,
    /// Where the page goes ("-" for stdout).
    #[arg(short, long, value_name = "FILE", default_value = "report.html")]
    pub output: PathBuf,
    /// Leave out messages matching a should_not_hook.json file (the rest are numbered again).
    #[arg(long, value_name = "FILE")]
    pub filter: Option<PathBuf>,
    /// Replace ids in paths by names ({image_id}, {account}, {id1}...) and list them.
    #[arg(long)]
    pub placeholders: bool,
    /// Which path an arrow through a reverse proxy shows (see `sniffer diagram --paths`).
    #[arg(long, value_enum, default_value_t = Paths::Client)]
    pub paths: Paths,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo's log, JSONL, diagram and report go (created).
    #[arg(long, value_name = "DIR", default_value = "sniffer-demo")]
    pub dir: PathBuf,
}

/// A demo process: a service on 127.0.0.1 or the client.
#[derive(Debug, Args)]
pub struct DemoPartArgs {
    /// auth, store, api or client.
    pub role: String,
    /// The ports of the services it calls (api: auth and store; client: api).
    #[arg(long = "call", value_name = "PORT")]
    pub calls: Vec<u16>,
}

#[derive(Debug, Args)]
pub struct HarArgs {
    /// The JSONL a run wrote with --jsonl.
    pub jsonl: PathBuf,
    /// Where the HAR goes ("-" for stdout).
    #[arg(short, long, value_name = "FILE", default_value = "sniffer.har")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The JSONL each host's run wrote with --jsonl; the first one's host is the reference
    /// clock.
    #[arg(required = true, value_name = "JSONL")]
    pub inputs: Vec<PathBuf>,
    /// The merged numbered log ("-" for stdout).
    #[arg(short, long, value_name = "FILE", default_value = "merged.log")]
    pub output: PathBuf,
    /// Also write the merged exchanges as JSONL (times on the reference host's clock).
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<PathBuf>,
    /// Also send the merged exchanges as OpenTelemetry spans (OTLP over HTTP) to URL.
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
}

/// Tracing: what to trace and where the results go.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Trace this process with its threads and children, existing and future (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace every process with this name (as in /proc/PID/comm, 15 bytes at most), running now
    /// or exec'd later (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,

    /// Trace every process of systemd unit NAME (devstack@keystone, apache2), now and later:
    /// its cgroup v2 directory is watched by the kernel, so workers, restarts and processes
    /// started in it later are traced too (repeatable).
    #[arg(long = "unit", value_name = "NAME")]
    pub units: Vec<String>,

    /// Trace every process in cgroup v2 directory PATH and below it, now and later
    /// (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,

    /// Trace every running devstack@* unit and apache2.
    #[arg(long)]
    pub devstack: bool,

    /// Print one line per exchange on stdout as it is written (number, caller -> callee,
    /// method, path, status, time, size), nested calls indented under the call they happen in.
    #[arg(long)]
    pub follow: bool,

    /// No live status line on the terminal.
    #[arg(short, long)]
    pub quiet: bool,

    /// The numbered log: one entry per HTTP message, in causal order ("-" for stdout).
    #[arg(short, long, value_name = "FILE", default_value = "sniffer.log")]
    pub output: PathBuf,

    /// Also write one JSON object per exchange (times, ends, headers, bodies, flags) to FILE.
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<PathBuf>,

    /// Also write the exchanges as an HTTP Archive (HAR 1.2) to FILE at the end.
    #[arg(long, value_name = "FILE")]
    pub har: Option<PathBuf>,

    /// Leave out messages matching a should_not_hook.json filter file.
    #[arg(long, value_name = "FILE")]
    pub filter: Option<PathBuf>,

    /// Also send every exchange as OpenTelemetry spans (OTLP over HTTP, protobuf) to URL,
    /// e.g. http://127.0.0.1:4318 (/v1/traces is added to a URL without a path). Sent in
    /// batches from a queue that never holds up the capture; what it drops is counted.
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,

    /// Name this machine NAME in the JSONL (default: its hostname), for `sniffer merge` of
    /// several hosts' captures.
    #[arg(long = "host", value_name = "NAME")]
    pub host: Option<String>,

    /// Show tokens, passwords and cookies as they are (default: a sha256 fingerprint).
    #[arg(long)]
    pub no_redact: bool,

    /// Name the process PID (and the ones it forks) LABEL in logs and diagrams (repeatable).
    #[arg(long = "name", value_name = "PID=LABEL", value_parser = crate::names::parse_override)]
    pub names: Vec<(u32, String)>,
    /// Take processes named NAME for reverse proxies too (apache2, httpd, nginx and haproxy
    /// are): their hop is folded and the callee named by the service behind them.
    #[arg(long = "proxy", value_name = "NAME")]
    pub proxies: Vec<String>,
    /// Show a reverse proxy's two hops (client -> proxy, proxy -> service) instead of one.
    #[arg(long)]
    pub show_proxies: bool,

    /// Body bytes kept per message for the log's preview, in KiB.
    #[arg(long, value_name = "KIB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub preview_kib: u32,

    /// Also write one entry per connection (process, addresses, bytes each way, gaps) to FILE.
    #[arg(long, value_name = "FILE")]
    pub connections: Option<PathBuf>,

    /// Also print every captured chunk as one line (time, process, fd, addresses, direction,
    /// syscall, length, escaped bytes) to FILE, or to stdout without FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub raw: Option<PathBuf>,

    /// Rotate each output file (the log, --jsonl, --raw=FILE, --connections) when it reaches
    /// MIB: FILE becomes FILE.1 (FILE.1 becomes FILE.2, and so on) and a new FILE begins, for a
    /// run left going. Off by default.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=1048576))]
    pub rotate_mib: Option<u64>,

    /// Rotated files kept per output with --rotate-mib; older ones are removed.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub rotate_keep: u32,

    /// Leave MIB free on each output's filesystem (or half of what was free when sniffer
    /// started, if that is less): past it nothing more is written, and counted as not written,
    /// until there is room again. 0: write until the disk is full.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub min_free_mib: u64,

    /// Write each connection's two byte streams to files in DIR, with an index.jsonl.
    #[arg(long, value_name = "DIR")]
    pub dump_streams: Option<PathBuf>,

    /// Ring buffer size in MiB (a power of two). A bigger ring rides out longer bursts; it is
    /// mapped twice into sniffer's memory, so it counts double in its RSS.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = power_of_two)]
    pub ring_mib: u32,

    /// Bytes copied per syscall at most, in KiB; the rest is counted and shown as a gap.
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..=65536))]
    pub max_capture_kib: u32,

    /// Copy only what the log shows: heads, body previews, and this much credit ahead per
    /// stream (KiB); bodies beyond their preview are counted, not copied. Past the credit (sniffer
    /// behind), the first 2 KiB of each syscall, where heads start.
    #[arg(long, value_name = "KIB", default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..=1048576))]
    pub copy_window_kib: u32,

    /// Copy every byte of every stream (implied by --dump-streams).
    #[arg(long)]
    pub full_capture: bool,

    /// Do not trace unix stream sockets (TCP only).
    #[arg(long)]
    pub no_unix: bool,

    /// Which processes carry the TLS probes (breakpoints in OpenSSL): `traced` ones only (a
    /// process not traced pays nothing; one that makes TLS calls within a millisecond or so of
    /// being forked by a traced process is missed), or `all` that run the library (nothing
    /// missed; every TLS call of every process traps into the kernel). `auto`: `all` with a
    /// COMMAND (scripts fork TLS clients) or --cgroup/--unit/--devstack, `traced` otherwise.
    #[arg(long, value_enum, value_name = "WHICH", default_value_t = TlsProbes::Auto)]
    pub tls_probes: TlsProbes,

    /// After COMMAND exits, keep reading this long for the servers' last bytes (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = 300)]
    pub grace_ms: u64,

    /// More diagnostics on stderr (-v, -vv; -vv adds the kernel side's).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Have the kernel count the run time of sniffer's BPF programs (BPF_ENABLE_STATS, 5.8+)
    /// and show it in the summary; counting costs a little per program run (the bench).
    #[arg(long, hide = true)]
    pub bpf_stats: bool,

    /// Add MS milliseconds (may be negative) to every kernel time recorded in the JSONL: a
    /// host whose clock is off, for tests of `sniffer merge`.
    #[arg(long, value_name = "MS", hide = true, allow_hyphen_values = true)]
    pub clock_shift_ms: Option<i64>,

    /// Load this variant of the BPF data programs, not the one the kernel's features choose
    /// (for tests of older kernels' variants).
    #[arg(long, value_enum, hide = true, env = "SNIFFER_BPF_VARIANT")]
    pub bpf_variant: Option<BpfVariant>,

    /// The command to run and trace.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Whether the subcommands parse and stay apart from tracing options.
#[cfg(test)]
mod tool_tests {
    use super::*;

    #[test]
    fn diagram_and_har_subcommands() {
        let cli = Cli::try_parse_from([
            "sniffer",
            "diagram",
            "x.log",
            "--body",
            "b.md",
            "--placeholders",
        ])
        .unwrap();
        match cli.tool {
            Some(Tool::Diagram(d)) => {
                assert_eq!(d.log, PathBuf::from("x.log"));
                assert_eq!(d.output, PathBuf::from("diagram.md"));
                assert_eq!(d.body, Some(PathBuf::from("b.md")));
                assert!(d.placeholders && !d.standalone);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Cli::try_parse_from(["sniffer", "har", "x.jsonl", "-o", "-"])
                .unwrap()
                .tool,
            Some(Tool::Har(_))
        ));
        assert!(Cli::try_parse_from(["sniffer", "--pid", "1", "diagram", "x"]).is_err());
    }

    #[test]
    fn merge_takes_one_or_more_captures() {
        let cli = Cli::try_parse_from(["sniffer", "merge", "a.jsonl", "b.jsonl", "--jsonl", "m"])
            .unwrap();
        match cli.tool {
            Some(Tool::Merge(m)) => {
                assert_eq!(
                    m.inputs,
                    [PathBuf::from("a.jsonl"), PathBuf::from("b.jsonl")]
                );
                assert_eq!(m.output, PathBuf::from("merged.log"));
                assert_eq!(m.jsonl, Some(PathBuf::from("m")));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["sniffer", "merge"]).is_err());
    }
}

fn power_of_two(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && n <= 1024 {
        Ok(n)
    } else {
        Err("must be a power of two between 1 and 1024".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_after_double_dash() {
        let cli = Cli::try_parse_from(["sniffer", "--pid", "12", "--", "curl", "-s", "http://x"])
            .unwrap()
            .run;
        assert_eq!(cli.pids, vec![12]);
        assert_eq!(cli.command, vec!["curl", "-s", "http://x"]);
        assert_eq!(cli.output, PathBuf::from("sniffer.log"));
        assert!(cli.raw.is_none());
    }

    #[test]
    fn raw_without_file_is_stdout() {
        let cli = Cli::try_parse_from(["sniffer", "--comm", "curl", "--raw"])
            .unwrap()
            .run;
        assert_eq!(cli.raw, Some(PathBuf::from("-")));
        let cli = Cli::try_parse_from(["sniffer", "--raw=out.txt", "--comm", "x"])
            .unwrap()
            .run;
        assert_eq!(cli.raw, Some(PathBuf::from("out.txt")));
    }

    #[test]
    fn names_parse_as_pid_label() {
        let cli = Cli::try_parse_from(["sniffer", "--name", "42=glance-api", "--comm", "x"])
            .unwrap()
            .run;
        assert_eq!(cli.names, vec![(42, "glance-api".to_owned())]);
        assert!(Cli::try_parse_from(["sniffer", "--name", "glance", "--comm", "x"]).is_err());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert!(Cli::try_parse_from(["sniffer", "--ring-mib", "3", "--comm", "x"]).is_err());
        assert_eq!(
            Cli::try_parse_from(["sniffer", "--ring-mib", "64", "--comm", "x"])
                .unwrap()
                .run
                .ring_mib,
            64
        );
    }
}

/// `--tls-probes`: which processes carry the TLS probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsProbes {
    Auto,
    Traced,
    All,
}

/// `--bpf-variant`: the data programs' variants (see `sniffer_common::Variant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BpfVariant {
    Full,
    Noloop,
    Noatomic,
}

impl From<BpfVariant> for sniffer_common::Variant {
    fn from(v: BpfVariant) -> Self {
        match v {
            BpfVariant::Full => Self::Full,
            BpfVariant::Noloop => Self::NoLoop,
            BpfVariant::Noatomic => Self::NoAtomic,
        }
    }
}
