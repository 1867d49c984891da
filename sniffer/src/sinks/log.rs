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
        message::{Ending, Message},
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
    for what in &msg.lenient {
        n.push(format!("[lenient: {what}]"));
    }
    if msg.after_gap {
        n.push("[bytes were lost on this connection before this message]".to_owned());
    }
    if which == Which::Response && x.orphan {
        n.push("[the request this answers was not seen]".to_owned());
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

    /// Writes the entry of `e` straight into the output's buffer.
    fn entry(redact: bool, text_limit: usize, e: &Entry<'_>, b: &mut Vec<u8>) {
        let msg = e.msg;
        b.push(b'\n');
        b.extend_from_slice(title(e.number, e.which, e.exchange, msg).as_bytes());
        b.push(b'\n');
        for h in &msg.head.headers {
            b.extend_from_slice(h.name.as_bytes());
            b.extend_from_slice(b": ");
            b.extend_from_slice(render::header_value(&h.name, &h.value, redact).as_bytes());
            b.push(b'\n');
        }
        b.push(b'\n');
        for n in notes(e.exchange, e.which, msg) {
            b.extend_from_slice(n.as_bytes());
            b.push(b'\n');
        }
        b.extend_from_slice(render::body(&msg.head, &msg.body, redact, text_limit).as_bytes());
        b.push(b'\n');
        for t in &msg.trailers {
            b.extend_from_slice(b"[trailer] ");
            b.extend_from_slice(String::from_utf8_lossy(t).as_bytes());
            b.push(b'\n');
        }
        b.push(b'\n');
    }
}

impl LogSink for NumberedLog {
    fn message(&mut self, e: &Entry<'_>) {
        let (redact, limit) = (self.redact, self.text_limit);
        self.out.record(1, |b| {
            Self::entry(redact, limit, e, b);
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
