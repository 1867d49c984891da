//! The status line: on a terminal, what sniffer has seen so far, redrawn in place at most
//! [`EVERY`] apart, so a user can tell at once whether anything is caught.
use std::time::{Duration, Instant};

use super::term;

/// Redraws at most this often.
pub const EVERY: Duration = Duration::from_millis(250);

/// The counts the line shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub exchanges: u64,
    pub messages: u64,
    pub connections: u64,
    pub lost_events: u64,
    pub processes: usize,
}

/// `1:05`, `1:02:03`.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The line's text for a terminal `cols` wide: in words when they fit, else short.
pub fn line(elapsed_for: Duration, c: &Counts, cols: usize) -> String {
    let long = format!(
        "sniffer {} | {} | {} | {} | {} | {} traced",
        elapsed(elapsed_for),
        plural(c.exchanges, "exchange", "exchanges"),
        plural(c.messages, "message", "messages"),
        plural(c.connections, "connection", "connections"),
        plural(c.lost_events, "lost event", "lost events"),
        plural(c.processes as u64, "process", "processes"),
    );
    if long.chars().count() < cols {
        return long;
    }
    format!(
        "sniffer {} | {} exch | {} msgs | {} conns | {} lost | {} procs",
        elapsed(elapsed_for),
        c.exchanges,
        c.messages,
        c.connections,
        c.lost_events,
        c.processes
    )
}

/// The status line of one run; off when stderr is not a terminal or with `-q`.
pub struct Status {
    on: bool,
    start: Instant,
    last: Option<Instant>,
}

impl Status {
    pub fn new(on: bool) -> Self {
        Self {
            on,
            start: Instant::now(),
            last: None,
        }
    }

    pub fn on(&self) -> bool {
        self.on
    }

    /// Whether it is time to redraw (the caller then gathers the counts).
    pub fn due(&self, now: Instant) -> bool {
        self.on && self.last.is_none_or(|l| now.duration_since(l) >= EVERY)
    }

    pub fn show(&mut self, now: Instant, c: &Counts) {
        if self.on {
            self.last = Some(now);
            term::show_status(&line(now.duration_since(self.start), c, term::width()));
        }
    }

    /// Off the screen before the summary.
    pub fn clear(&mut self) {
        if self.on {
            term::clear_status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line() {
        let c = Counts {
            exchanges: 12,
            messages: 24,
            connections: 1,
            lost_events: 0,
            processes: 7,
        };
        assert_eq!(
            line(Duration::from_secs(65), &c, 200),
            "sniffer 1:05 | 12 exchanges | 24 messages | 1 connection | 0 lost events | 7 \
             processes traced"
        );
        assert_eq!(
            line(Duration::from_secs(65), &c, 80),
            "sniffer 1:05 | 12 exch | 24 msgs | 1 conns | 0 lost | 7 procs"
        );
        assert_eq!(elapsed(Duration::from_secs(3723)), "1:02:03");
    }

    #[test]
    fn redraws_are_spaced() {
        let mut s = Status::new(true);
        let t = Instant::now();
        assert!(s.due(t));
        s.last = Some(t);
        assert!(!s.due(t + Duration::from_millis(100)));
        assert!(s.due(t + EVERY));
        assert!(!Status::new(false).due(t));
    }
}
