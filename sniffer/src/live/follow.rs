//! `--follow`: one line per exchange on stdout as the log writes it,
//!
//! ```text
//! [12] openstack -> glance-api  POST /v2/images  201 Created  120 ms  1.4 KiB
//!   [13] glance-api -> keystone  GET /v3/auth/tokens  200 OK  5.0 ms  3.1 KiB
//! ```
//!
//! with the calls a service makes while serving a request indented under that request. An
//! exchange is whole only after the calls inside it, so those wait for their outer line; when
//! the outer call takes longer than [`HOLD`] (a long upload), its line is printed without its
//! end (`...`) so the calls inside show as they happen, and printed again when it ends.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::term;
use crate::{
    diagram::model::path_of,
    http::{head::StartLine, message::Ending},
    stitch::{Entry, Exchange, LogSink, Which},
};

/// How long a finished inner call waits for its outer call's line.
pub const HOLD: Duration = Duration::from_secs(1);
/// Exchanges followed at most; past it, everything waiting is printed.
const MAX_OPEN: usize = 10_000;

/// `850 µs`, `5.2 ms`, `34 ms`, `1.2 s`.
pub fn duration(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms < 1.0 {
        format!("{} \u{b5}s", ns / 1000)
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// `0 B`, `512 B`, `1.2 KiB`, `20.0 MiB`.
pub fn size(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if n < 1024 {
        format!("{n} B")
    } else if f < K * K {
        format!("{:.1} KiB", f / K)
    } else if f < K * K * K {
        format!("{:.1} MiB", f / K / K)
    } else {
        format!("{:.1} GiB", f / K / K / K)
    }
}

/// What a line says of one exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Call {
    pub number: u64,
    pub from: String,
    pub to: String,
    pub method: String,
    pub path: String,
}

/// How it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct End {
    /// `200 OK`, or what is known instead (`no response`).
    pub status: String,
    pub took_ns: Option<u64>,
    pub sent: u64,
    pub received: u64,
    /// `[incomplete]`, `[broken]`.
    pub mark: Option<&'static str>,
}

/// The text of a line (without its indent); `end: None` for an outer call still running.
pub fn text(c: &Call, end: Option<&End>) -> String {
    let mut s = format!(
        "[{}] {} -> {}  {} {}",
        c.number, c.from, c.to, c.method, c.path
    );
    match end {
        None => s.push_str("  ..."),
        Some(e) => {
            s.push_str("  ");
            s.push_str(&e.status);
            if let Some(ns) = e.took_ns {
                s.push_str("  ");
                s.push_str(&duration(ns));
            }
            s.push_str("  ");
            if e.sent > 0 {
                s.push_str(&format!(
                    "\u{2191}{} \u{2193}{}",
                    size(e.sent),
                    size(e.received)
                ));
            } else {
                s.push_str(&size(e.received));
            }
            if let Some(m) = e.mark {
                s.push_str("  ");
                s.push_str(m);
            }
        }
    }
    s
}

#[derive(Debug)]
struct Node {
    call: Call,
    parent: Option<u64>,
    depth: usize,
    end: Option<End>,
    done_at: Option<Instant>,
    /// Its line (or its opening line) is out: what runs inside it may follow.
    printed: bool,
    children: Vec<u64>,
}

/// The calls in flight and the lines waiting for their outer call, by exchange id.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<u64, Node>,
}

impl Tree {
    /// A request was written: it runs inside the latest open call to its caller.
    pub fn opened(&mut self, id: u64, call: Call) {
        let parent = self
            .nodes
            .iter()
            .rev()
            .find(|(_, n)| n.end.is_none() && n.call.to == call.from)
            .map(|(&pid, n)| (pid, n.depth));
        if let Some((pid, _)) = parent
            && let Some(p) = self.nodes.get_mut(&pid)
        {
            p.children.push(id);
        }
        self.nodes.insert(
            id,
            Node {
                call,
                parent: parent.map(|p| p.0),
                depth: parent.map_or(0, |p| p.1 + 1),
                end: None,
                done_at: None,
                printed: false,
                children: Vec::new(),
            },
        );
    }

    /// An exchange was written whole: the lines that can be printed now.
    pub fn done(&mut self, id: u64, call: Call, end: End, now: Instant) -> Vec<String> {
        if !self.nodes.contains_key(&id) {
            self.opened(id, call);
        }
        let mut out = Vec::new();
        let Some(n) = self.nodes.get_mut(&id) else {
            return out;
        };
        let reprint = n.printed;
        n.end = Some(end);
        n.done_at = Some(now);
        if reprint {
            // Its opening line went out earlier: this is its end.
            out.push(self.line(id));
            self.forget_finished(id);
            return out;
        }
        if self.parent_printed(id) {
            self.print(id, &mut out);
        }
        if self.nodes.len() > MAX_OPEN {
            self.flush_all(&mut out);
        }
        out
    }

    /// Inner calls that waited too long: their outer calls' opening lines, then them.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        let stale: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.printed && n.done_at.is_some_and(|t| now.duration_since(t) >= HOLD))
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            self.open_ancestors(id, &mut out);
            if self.nodes.get(&id).is_some_and(|n| !n.printed) && self.parent_printed(id) {
                self.print(id, &mut out);
            }
        }
        out
    }

    /// At the end: everything still waiting, and the calls that never ended as running.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.flush_all(&mut out);
        out
    }

    fn flush_all(&mut self, out: &mut Vec<String>) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if self
                .nodes
                .get(&id)
                .is_some_and(|n| !n.printed && n.end.is_some())
            {
                self.open_ancestors(id, out);
                if self.parent_printed(id) {
                    self.print(id, out);
                }
            }
        }
        self.nodes.retain(|_, n| n.end.is_none());
    }

    fn parent_printed(&self, id: u64) -> bool {
        match self.nodes.get(&id).and_then(|n| n.parent) {
            None => true,
            Some(p) => self.nodes.get(&p).is_none_or(|p| p.printed),
        }
    }

    /// Prints the opening lines of the unprinted calls above `id`, outermost first.
    fn open_ancestors(&mut self, id: u64, out: &mut Vec<String>) {
        let mut chain = Vec::new();
        let mut at = self.nodes.get(&id).and_then(|n| n.parent);
        while let Some(p) = at {
            match self.nodes.get(&p) {
                Some(n) if !n.printed => {
                    chain.push(p);
                    at = n.parent;
                }
                _ => break,
            }
        }
        for p in chain.into_iter().rev() {
            out.push(self.line(p));
            if let Some(n) = self.nodes.get_mut(&p) {
                n.printed = true;
            }
        }
    }

    fn line(&self, id: u64) -> String {
        self.nodes.get(&id).map_or_else(String::new, |n| {
            format!("{}{}", "  ".repeat(n.depth), text(&n.call, n.end.as_ref()))
        })
    }

    /// Prints `id` (ended) and then the ended calls inside it, in order.
    fn print(&mut self, id: u64, out: &mut Vec<String>) {
        out.push(self.line(id));
        let children = match self.nodes.get_mut(&id) {
            Some(n) => {
                n.printed = true;
                n.children.clone()
            }
            None => return,
        };
        for c in children {
            if self
                .nodes
                .get(&c)
                .is_some_and(|n| !n.printed && n.end.is_some())
            {
                self.print(c, out);
            }
        }
        self.forget_finished(id);
    }

    /// Drops `id` and its ancestors once they and everything inside them are printed.
    fn forget_finished(&mut self, id: u64) {
        let mut at = Some(id);
        while let Some(i) = at {
            let Some(n) = self.nodes.get(&i) else { break };
            let settled = n.end.is_some()
                && n.printed
                && n.children.iter().all(|c| !self.nodes.contains_key(c));
            if !settled {
                break;
            }
            at = n.parent;
            self.nodes.remove(&i);
        }
    }
}

/// The `--follow` sink: feeds the tree from what the log writes and prints its lines.
pub struct Follow {
    tree: Tree,
    /// stdout was closed (`| head`): stop printing.
    gone: bool,
}

impl Default for Follow {
    fn default() -> Self {
        Self::new()
    }
}

impl Follow {
    pub fn new() -> Self {
        Self {
            tree: Tree::default(),
            gone: false,
        }
    }

    fn print(&mut self, lines: Vec<String>) {
        for l in lines {
            if !self.gone && !term::out_line(&l) {
                self.gone = true;
            }
        }
    }
}

fn call(x: &Exchange) -> Call {
    Call {
        number: x.numbers[0].or(x.numbers[1]).unwrap_or(0),
        from: x.from.clone(),
        to: x.to.clone(),
        method: if x.orphan {
            "?".to_owned()
        } else {
            x.method().to_owned()
        },
        path: if x.orphan {
            "(request not seen)".to_owned()
        } else {
            path_of(&x.url)
        },
    }
}

fn end(x: &Exchange) -> End {
    let status = match x.response.as_ref().map(|m| &m.head.start) {
        Some(StartLine::Response { status, reason, .. }) => format!("{status} {reason}"),
        _ => "no response".to_owned(),
    };
    let took_ns = match (&x.request, &x.response) {
        (Some(q), Some(r)) => Some(r.last_ts.saturating_sub(q.first_ts)),
        _ => None,
    };
    let broken = x.broken.is_some()
        || [&x.request, &x.response].iter().any(|m| {
            m.as_ref()
                .is_some_and(|m| matches!(m.ending, Ending::Broken(_)))
        });
    End {
        status,
        took_ns,
        sent: x.request.as_ref().map_or(0, |m| m.body.len),
        received: x.response.as_ref().map_or(0, |m| m.body.len),
        mark: if broken {
            Some("[broken]")
        } else if x.is_incomplete() {
            Some("[incomplete]")
        } else {
            None
        },
    }
}

impl LogSink for Follow {
    fn message(&mut self, e: &Entry<'_>) {
        if e.which == Which::Request {
            self.tree.opened(e.exchange.id, call(e.exchange));
        }
    }

    fn exchange(&mut self, x: &Exchange) {
        if x.numbers.iter().all(Option::is_none) {
            return;
        }
        let lines = self.tree.done(x.id, call(x), end(x), Instant::now());
        self.print(lines);
    }

    fn flush(&mut self) {
        let lines = self.tree.tick(Instant::now());
        self.print(lines);
    }

    fn close(&mut self) {
        let lines = self.tree.finish();
        self.print(lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(n: u64, from: &str, to: &str, what: &str) -> Call {
        let (method, path) = what.split_once(' ').unwrap();
        Call {
            number: n,
            from: from.into(),
            to: to.into(),
            method: method.into(),
            path: path.into(),
        }
    }

    fn ok(ms: u64, received: u64) -> End {
        End {
            status: "200 OK".into(),
            took_ns: Some(ms * 1_000_000),
            sent: 0,
            received,
            mark: None,
        }
    }

    #[test]
    fn formats() {
        assert_eq!(duration(850_000), "850 \u{b5}s");
        assert_eq!(duration(5_240_000), "5.2 ms");
        assert_eq!(duration(34_400_000), "34 ms");
        assert_eq!(duration(1_250_000_000), "1.2 s");
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1229), "1.2 KiB");
        assert_eq!(size(20 << 20), "20.0 MiB");
        let c = call(
            12,
            "openstack",
            "glance-api",
            "GET /v2/images?visibility=all",
        );
        assert_eq!(
            text(&c, Some(&ok(34, 1229))),
            "[12] openstack -> glance-api  GET /v2/images?visibility=all  200 OK  34 ms  1.2 KiB"
        );
        let up = End {
            status: "204 No Content".into(),
            took_ns: Some(3_200_000_000),
            sent: 20 << 20,
            received: 0,
            mark: Some("[incomplete]"),
        };
        assert_eq!(
            text(&c, Some(&up)),
            "[12] openstack -> glance-api  GET /v2/images?visibility=all  204 No Content  3.2 s  \
             \u{2191}20.0 MiB \u{2193}0 B  [incomplete]"
        );
        assert_eq!(
            text(&c, None),
            "[12] openstack -> glance-api  GET /v2/images?visibility=all  ..."
        );
    }

    #[test]
    fn inner_calls_wait_for_their_outer_call_and_print_under_it() {
        let t0 = Instant::now();
        let mut t = Tree::default();
        t.opened(1, call(1, "openstack", "glance-api", "POST /v2/images"));
        t.opened(2, call(2, "glance-api", "keystone", "GET /v3/auth/tokens"));
        // An unrelated call goes by at once.
        t.opened(3, call(4, "curl", "nginx", "GET /"));
        assert_eq!(
            t.done(3, call(4, "curl", "nginx", "GET /"), ok(1, 10), t0),
            ["[4] curl -> nginx  GET /  200 OK  1.0 ms  10 B"]
        );
        assert!(
            t.done(
                2,
                call(2, "glance-api", "keystone", "GET /v3/auth/tokens"),
                ok(5, 3174),
                t0
            )
            .is_empty()
        );
        t.opened(4, call(6, "glance-api", "swift", "PUT /v1/x"));
        t.opened(5, call(7, "swift", "keystone", "GET /v3"));
        assert!(
            t.done(5, call(7, "swift", "keystone", "GET /v3"), ok(2, 5), t0)
                .is_empty()
        );
        assert!(
            t.done(4, call(6, "glance-api", "swift", "PUT /v1/x"), ok(9, 0), t0)
                .is_empty()
        );
        assert_eq!(
            t.done(
                1,
                call(1, "openstack", "glance-api", "POST /v2/images"),
                ok(120, 1434),
                t0
            ),
            [
                "[1] openstack -> glance-api  POST /v2/images  200 OK  120 ms  1.4 KiB",
                "  [2] glance-api -> keystone  GET /v3/auth/tokens  200 OK  5.0 ms  3.1 KiB",
                "  [6] glance-api -> swift  PUT /v1/x  200 OK  9.0 ms  0 B",
                "    [7] swift -> keystone  GET /v3  200 OK  2.0 ms  5 B",
            ]
        );
        assert!(t.nodes.is_empty(), "{:?}", t.nodes);
    }

    #[test]
    fn a_long_outer_call_opens_after_the_hold_and_ends_later() {
        let t0 = Instant::now();
        let mut t = Tree::default();
        t.opened(1, call(1, "openstack", "glance-api", "PUT /file"));
        t.opened(2, call(2, "glance-api", "swift", "PUT /obj"));
        assert!(
            t.done(
                2,
                call(2, "glance-api", "swift", "PUT /obj"),
                ok(900, 0),
                t0
            )
            .is_empty()
        );
        assert!(t.tick(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(
            t.tick(t0 + HOLD),
            [
                "[1] openstack -> glance-api  PUT /file  ...",
                "  [2] glance-api -> swift  PUT /obj  200 OK  900 ms  0 B",
            ]
        );
        // Calls inside it now print as they end.
        t.opened(3, call(4, "glance-api", "keystone", "GET /v3"));
        assert_eq!(
            t.done(
                3,
                call(4, "glance-api", "keystone", "GET /v3"),
                ok(1, 1),
                t0
            ),
            ["  [4] glance-api -> keystone  GET /v3  200 OK  1.0 ms  1 B"]
        );
        assert_eq!(
            t.done(
                1,
                call(1, "openstack", "glance-api", "PUT /file"),
                ok(2000, 0),
                t0
            ),
            ["[1] openstack -> glance-api  PUT /file  200 OK  2.0 s  0 B"]
        );
        assert!(t.nodes.is_empty());
    }

    #[test]
    fn the_end_prints_what_waits_under_a_call_that_never_ended() {
        let t0 = Instant::now();
        let mut t = Tree::default();
        t.opened(1, call(1, "a", "b", "GET /slow"));
        t.opened(2, call(2, "b", "c", "GET /x"));
        assert!(
            t.done(2, call(2, "b", "c", "GET /x"), ok(1, 1), t0)
                .is_empty()
        );
        assert_eq!(
            t.finish(),
            [
                "[1] a -> b  GET /slow  ...",
                "  [2] b -> c  GET /x  200 OK  1.0 ms  1 B"
            ]
        );
    }
}
