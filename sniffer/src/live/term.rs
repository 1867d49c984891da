//! The terminal shared by the status line (stderr, redrawn in place), `--follow` lines
//! (stdout) and diagnostics (stderr): whatever prints a line first takes the status line off,
//! then puts it back, so no line is written into the middle of another.
use std::{
    io::{self, Write as _},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

/// The status line's text while one is on screen (empty: none).
static STATUS: Mutex<String> = Mutex::new(String::new());
/// Whether stdout is the same terminal (follow lines then go around the status line too).
static STDOUT_TTY: AtomicBool = AtomicBool::new(false);

/// `\r` and "erase to end of line" (ECMA-48 EL).
const CLEAR: &str = "\r\x1b[K";

/// Columns of the terminal on stderr (80 when unknown).
pub fn width() -> usize {
    // SAFETY: TIOCGWINSZ fills a zeroed winsize.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer for the ioctl.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// Cuts `s` to `cols - 1` characters, so the line never wraps (a wrapped line cannot be
/// erased with `\r`).
pub fn fit(s: &str, cols: usize) -> String {
    let max = cols.saturating_sub(1).max(10);
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('\u{2026}');
        t
    }
}

pub fn set_stdout_tty(yes: bool) {
    STDOUT_TTY.store(yes, Ordering::Relaxed);
}

fn lock() -> std::sync::MutexGuard<'static, String> {
    STATUS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Draws (or redraws) the status line.
pub fn show_status(text: &str) {
    let mut s = lock();
    let line = fit(text, width());
    let mut err = io::stderr().lock();
    let _ = write!(err, "{CLEAR}{line}");
    let _ = err.flush();
    *s = line;
}

/// Takes the status line off for good.
pub fn clear_status() {
    let mut s = lock();
    if !s.is_empty() {
        let mut err = io::stderr().lock();
        let _ = write!(err, "{CLEAR}");
        let _ = err.flush();
        s.clear();
    }
}

/// Runs `write` with the status line off the screen, then puts it back.
fn around_status(to_stdout: bool, write: impl FnOnce()) {
    let s = lock();
    let shown = !s.is_empty() && (!to_stdout || STDOUT_TTY.load(Ordering::Relaxed));
    if shown {
        let mut err = io::stderr().lock();
        let _ = write!(err, "{CLEAR}");
        let _ = err.flush();
    }
    write();
    if shown {
        let mut err = io::stderr().lock();
        let _ = write!(err, "{s}");
        let _ = err.flush();
    }
}

/// Prints a line on stdout (a `--follow` line). Returns false when stdout is gone (a closed
/// pipe), so the caller can stop.
pub fn out_line(line: &str) -> bool {
    let mut ok = true;
    around_status(true, || {
        let mut out = io::stdout().lock();
        ok = writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
    });
    ok
}

/// Prints a line on stderr (sniffer's own messages).
pub fn err_line(line: &str) {
    around_status(false, || {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "{line}");
        let _ = err.flush();
    });
}

/// stderr for `tracing`: each event is written with the status line off.
pub struct Stderr;

impl io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut r = Ok(0);
        around_status(false, || r = io::stderr().lock().write(buf));
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_to_the_terminal() {
        assert_eq!(fit("abc", 80), "abc");
        assert_eq!(fit("abcdefghijklmnop", 12), "abcdefghij\u{2026}");
        assert_eq!(fit("abcdefghijklmnop", 3).chars().count(), 10);
    }
}
