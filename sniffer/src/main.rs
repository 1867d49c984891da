use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use sniffer::{
    app,
    cli::{Cli, Tool},
    demo, exit,
    probe::ProbeError,
    tools,
};
use tracing_subscriber::EnvFilter;

/// mimalloc: the pipeline allocates and frees many small buffers per message; glibc's malloc
/// spent a sixth of the daemon's instructions on them, musl's (the static build) far more.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sniffer::heap::configure();
    let cli = Cli::parse();
    let (run, verbose) = match cli.tool {
        Some(Tool::DemoPart(a)) => {
            return match demo::roles::run(&a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sniffer demo-part {}: {e}", a.role);
                    ExitCode::from(exit::FAILURE)
                }
            };
        }
        Some(Tool::Demo(a)) => (Err(a), 0),
        Some(tool) => {
            return match tools::run(tool) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("sniffer: {e}");
                    ExitCode::from(e.exit_code())
                }
            };
        }
        None => {
            let v = cli.run.verbose;
            (Ok(cli.run), v)
        }
    };
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        // Through the terminal the status line shares, so no diagnostic lands inside it.
        .with_writer(sniffer::live::term::Stderr)
        // Colour codes only for a terminal: a user's `2> file` reads as plain lines.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sniffer: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = match run {
        Ok(args) => runtime.block_on(app::run(args)),
        Err(demo) => runtime.block_on(demo::run(demo)),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(exit::FAILURE)),
        Err(e) => {
            eprintln!("sniffer: {e:#}");
            // Bad input and an unusable machine are the user's to fix: exit code 2.
            let user_fixable = e.downcast_ref::<app::UsageError>().is_some()
                || e.downcast_ref::<ProbeError>().is_some();
            ExitCode::from(if user_fixable {
                exit::USAGE
            } else {
                exit::FAILURE
            })
        }
    }
}
