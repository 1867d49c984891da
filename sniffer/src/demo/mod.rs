//! `sniffer demo`: the whole idea in seconds on any machine. Three small services on
//! 127.0.0.1 and a client, each a process of this binary (`sniffer demo-part ROLE`):
//!
//! - `auth` issues tokens (`POST /v3/auth/tokens` with a password in a JSON body answers with
//!   an `X-Subject-Token` header) and checks them, like keystone;
//! - `store` keeps items;
//! - `api` serves the client: it gets its own service token from auth the first time (the
//!   diagram's `opt api token issue` block), checks the client's token, and calls store, all
//!   over keep-alive connections.
//!
//! sniffer traces the three services by pid and the client as its command, with `--follow`,
//! then writes the diagram and the report and prints the diagram. Tokens and the password show
//! redacted in every output.
pub mod roles;
pub mod wire;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Parser as _;

use crate::{
    cli::{Cli, DemoArgs},
    diagram::{mermaid, model::Paths},
    report, tools,
};

/// A demo service, stopped when dropped.
struct Service {
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(exe: &Path, role: &str, calls: &[u16]) -> anyhow::Result<Service> {
    let mut cmd = Command::new(exe);
    cmd.args(["demo-part", role]);
    for p in calls {
        cmd.arg("--call").arg(p.to_string());
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the demo's {role}"))?;
    let out = child.stdout.take().context("the service's stdout")?;
    let mut service = Service { child, port: 0 };
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .with_context(|| format!("reading the port of the demo's {role}"))?;
    service.port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the demo's {role} did not say its port: {line:?}"))?;
    Ok(service)
}

/// Runs the demo; returns sniffer's exit code.
pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(crate::probe::ProbeError::NotRoot.into());
    }
    let exe = std::env::current_exe().context("finding sniffer's own binary")?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| crate::app::UsageError(format!("cannot make {}: {e}", args.dir.display())))?;
    let dir = args.dir.canonicalize().unwrap_or(args.dir.clone());
    let file = |name: &str| dir.join(name);

    let auth = start(&exe, "auth", &[])?;
    let store = start(&exe, "store", &[])?;
    let api = start(&exe, "api", &[auth.port, store.port])?;
    println!(
        "sniffer demo: auth on 127.0.0.1:{}, store on 127.0.0.1:{}, api on 127.0.0.1:{}; the \
         client calls auth, then api, which calls auth and store",
        auth.port, store.port, api.port
    );

    let me = std::process::id();
    let mut argv: Vec<String> = vec!["sniffer".into()];
    for (s, name) in [(&auth, "auth"), (&store, "store"), (&api, "api")] {
        let pid = s.child.id();
        argv.extend(["--pid".into(), pid.to_string()]);
        argv.extend(["--name".into(), format!("{pid}={name}")]);
    }
    // The client is sniffer's child: named through its parent.
    argv.extend(["--name".into(), format!("{me}=client")]);
    let path = |p: PathBuf| p.display().to_string();
    argv.extend([
        "-o".into(),
        path(file("sniffer.log")),
        "--jsonl".into(),
        path(file("exchanges.jsonl")),
        "--follow".into(),
        "--".into(),
        path(exe.clone()),
        "demo-part".into(),
        "client".into(),
        "--call".into(),
        auth.port.to_string(),
        "--call".into(),
        api.port.to_string(),
    ]);
    let cli = Cli::try_parse_from(&argv).context("the demo's own arguments")?;
    let started = Instant::now();
    let code = crate::app::run(cli.run).await?;
    drop((api, store, auth));
    if code != 0 {
        bail!("the demo's client or sniffer failed (exit code {code})");
    }

    let log = file("sniffer.log");
    let jsonl = file("exchanges.jsonl");
    let msgs = tools::messages(&jsonl, None, Paths::Client).map_err(|e| anyhow::anyhow!("{e}"))?;
    let diagram = mermaid::draw(
        &msgs,
        mermaid::Options {
            placeholders: true,
            standalone: true,
            paths: Paths::Client,
        },
    );
    let page = report::page(
        &msgs,
        &report::Options {
            placeholders: true,
            paths: Paths::Client,
            source: "sniffer demo".into(),
        },
    );
    let (diagram_md, report_html) = (file("diagram.md"), file("report.html"));
    tools::write(&[(&diagram_md, &diagram.text), (&report_html, &page)])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("\n{}", diagram.text);
    println!(
        "sniffer demo: {} messages in {:.1} s; the files:\n  {}  the numbered log (tokens and \
         the password redacted)\n  {}  one JSON object per exchange\n  {}  the mermaid \
         diagram above\n  {}  open it in a browser: the diagram, every message clickable",
        msgs.len(),
        started.elapsed().as_secs_f64(),
        log.display(),
        jsonl.display(),
        diagram_md.display(),
        report_html.display()
    );
    Ok(0)
}
