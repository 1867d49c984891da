//! The traced command: started so that its first syscalls are seen, waited for, stopped.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::ExitStatus,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    process::{Child, Command},
    signal::unix::{Signal, SignalKind, signal},
    time::Instant,
};

use super::UsageError;
use crate::{
    probe::{self, Probe},
    tls::TlsLibs,
};

/// After a stop signal, how long the traced command gets to finish.
const COMMAND_STOP_WAIT: Duration = Duration::from_secs(5);

/// Exit status of a command, shell style.
pub(super) fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Starts the traced command. Between fork and exec it adds itself to the targets, then waits
/// while its TLS probes are placed: even its first syscalls and TLS calls are seen (a program
/// such as curl is done with a TLS exchange on loopback before probes placed after its exec
/// could be on).
pub(super) fn spawn_traced(
    probe: &mut Probe,
    tls: &mut TlsLibs,
    program: &str,
    args: &[String],
) -> anyhow::Result<Child> {
    let fd = probe.targets_fd();
    // The command gets the file limit sniffer was given, not the one it raised for itself.
    let limit = probe::inherited_file_limit();
    // The child tells its pid on one pipe, then waits on the other for the word to exec.
    let (pid_r, pid_w) = pipe_cloexec().context("creating a pipe for the command")?;
    let (go_r, go_w) = pipe_cloexec().context("creating a pipe for the command")?;
    let (pid_wr, go_rd, go_wr) = (pid_w.as_raw_fd(), go_r.as_raw_fd(), go_w.as_raw_fd());
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: the closure only makes the setrlimit, bpf, close, getpid, write and read
    // syscalls, which are async-signal-safe, on descriptors this function keeps open until
    // the child has exec'd.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((cur, max)) = limit {
                let rlim = libc::rlimit {
                    rlim_cur: cur,
                    rlim_max: max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &rlim);
            }
            probe::add_self_to_targets(fd)?;
            // Its own copy of the write end would keep the read below from ever ending.
            libc::close(go_wr);
            let pid = libc::getpid();
            libc::write(
                pid_wr,
                std::ptr::from_ref(&pid).cast(),
                size_of::<libc::pid_t>(),
            );
            // A byte: the probes are on; end of file: sniffer gave up waiting. Exec either way.
            let mut b = 0u8;
            libc::read(go_rd, std::ptr::from_mut(&mut b).cast(), 1);
            Ok(())
        });
    }
    // spawn() returns once the child has exec'd, so it runs on a thread of its own while this
    // one places the probes. The pipe ends the child uses stay open until then.
    let rt = tokio::runtime::Handle::current();
    let spawner = std::thread::spawn(move || {
        let _rt = rt.enter();
        let r = cmd.spawn();
        drop((pid_w, go_r));
        r
    });
    let mut pid_file = std::fs::File::from(pid_r);
    let mut buf = [0u8; size_of::<libc::pid_t>()];
    // Nothing (end of file) when the child failed before it could say.
    if std::io::Read::read_exact(&mut pid_file, &mut buf).is_ok() {
        let pid = libc::pid_t::from_ne_bytes(buf);
        if let Ok(pid) = u32::try_from(pid) {
            tls.follow(pid, probe);
        }
    }
    drop(go_w);
    spawner
        .join()
        .map_err(|_| anyhow::anyhow!("starting {program}: the thread panicked"))?
        .map_err(|e| UsageError(format!("cannot start {program}: {e}")).into())
}

/// A pipe whose ends close on exec.
fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(super) async fn wait_child(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// The signals that stop sniffer: SIGINT (Ctrl-C), SIGTERM, and SIGHUP (the terminal, an ssh
/// session, went away). Installed before sniffer says how to stop it.
pub(super) struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    pub(super) fn install() -> anyhow::Result<Self> {
        let on = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Self {
            int: on(SignalKind::interrupt(), "SIGINT")?,
            term: on(SignalKind::terminate(), "SIGTERM")?,
            hup: on(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next one to come, by number.
    pub(super) async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

/// First stop signal while the command runs: give it time to end (Ctrl-C reached it too, from
/// the terminal; a SIGTERM is passed on). Otherwise, or on a second signal, stop now. Returns
/// whether to keep running.
pub(super) fn stop_requested(
    child: &mut Option<Child>,
    status: &Option<ExitStatus>,
    signals: u32,
    sig: i32,
    stop_at: &mut Option<Instant>,
) -> bool {
    match child.as_ref().and_then(Child::id) {
        Some(pid) if status.is_none() && signals == 1 => {
            if sig == libc::SIGTERM {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, sig) };
            }
            *stop_at = Some(Instant::now() + COMMAND_STOP_WAIT);
            true
        }
        _ => false,
    }
}
