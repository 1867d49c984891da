//! The numbered log (`-o`): one entry per message in the order the diagram numbers its arrows,
//! in the shape of the requestshook logs engineers already read.
//!
//! ```text
//! ### [1] (openstack) REQ >>> (keystone) : GET http://127.0.0.1:5000/v3
//! <request headers, one per line>
//!
//! <body>
//! ```
use super::output::Output;
use crate::{
    http::{
        head::StartLine,
        parser::{Ending, Message},
    },
    render,
    stitch::{Entry, Exchange, LogSink, Which},
};

pub struct NumberedLog {
    out: Output,
    redact: bool,
    text_limit: usize,
}

/// The `### [N] ...` line of an entry.
pub fn title(number: u64, which: Which, x: &Exchange, msg: &Message) -> String {
    let method = x.method();
    match (which, &msg.head.start) {
        (Which::Response, StartLine::Response { status, reason, .. }) => {
            let what = if x.orphan {
                "? (request not seen)".to_owned()
            } else {
                format!("{method} {}", x.url)
            };
            format!(
                "### [{number}] ({}) RESP <<< ({}) : {status} {reason} {what}",
                x.from, x.to
            )
        }
        _ => format!(
            "### [{number}] ({}) REQ >>> ({}) : {method} {}",
            x.from, x.to, x.url
        ),
    }
}

/// Bracketed notes on what is not whole about a message.
pub fn notes(x: &Exchange, which: Which, msg: &Message) -> Vec<String> {
    let mut n = Vec::new();
    match msg.ending {
        Ending::Complete => {}
        Ending::Incomplete => {
            n.push("[incomplete: the connection ended before this message did]".to_owned())
        }
        Ending::Broken(r) => n.push(format!("[broken: {r}]")),
    }
    if msg.after_gap {
        n.push("[bytes were lost on this connection before this message]".to_owned());
    }
    if which == Which::Response && x.orphan {
        n.push("[the request this answers was not seen]".to_owned());
    }
    // What the service behind a folded proxy hop received, for `diagram --paths served`.
    if let Some(target) = &x.upstream_target {
        let via = x.via.as_deref().unwrap_or("a proxy");
        n.push(crate::diagram::model::served_note(target, via));
    }
    n
}

impl NumberedLog {
    /// `out` counts in messages.
    pub fn new(out: Output, redact: bool, text_limit: usize) -> Self {
        Self {
            out,
            redact,
            text_limit,
        }
    }

    fn entry(&self, e: &Entry<'_>) -> String {
        let msg = e.msg;
        let mut s = String::new();
        s.push('\n');
        s.push_str(&title(e.number, e.which, e.exchange, msg));
        s.push('\n');
        for h in &msg.head.headers {
            s.push_str(&h.name);
            s.push_str(": ");
            s.push_str(&render::header_value(&h.name, &h.value, self.redact));
            s.push('\n');
        }
        s.push('\n');
        for n in notes(e.exchange, e.which, msg) {
            s.push_str(&n);
            s.push('\n');
        }
        s.push_str(&render::body(
            &msg.head,
            &msg.body,
            self.redact,
            self.text_limit,
        ));
        s.push('\n');
        for t in &msg.trailers {
            s.push_str("[trailer] ");
            s.push_str(&String::from_utf8_lossy(t));
            s.push('\n');
        }
        s.push('\n');
        s
    }
}

impl LogSink for NumberedLog {
    fn message(&mut self, e: &Entry<'_>) {
        let text = self.entry(e);
        self.out.record(1, |b| {
            b.extend_from_slice(text.as_bytes());
            Ok(())
        });
    }

    fn flush(&mut self) {
        self.out.flush();
    }

    fn close(&mut self) {
        self.out.flush();
    }
}
