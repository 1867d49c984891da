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
    record::ExchangeRecord,
    render,
    stitch::{Entry, Exchange, LogSink, Which},
};

pub struct NumberedLog {
    out: Output,
    redact: bool,
    text_limit: usize,
}

/// Appends the `### [N] ...` line of an entry to `b`; `response`: its status and reason.
/// Written piece by piece (no `format!`): one runs per message logged.
fn write_title(
    b: &mut Vec<u8>,
    number: u64,
    response: Option<(u16, &str)>,
    x: (&str, &str, &str, &str),
    orphan: bool,
) {
    let (from, to, method, url) = x;
    b.extend_from_slice(b"### [");
    push_decimal(b, number);
    b.extend_from_slice(b"] (");
    b.extend_from_slice(from.as_bytes());
    match response {
        Some((status, reason)) => {
            b.extend_from_slice(b") RESP <<< (");
            b.extend_from_slice(to.as_bytes());
            b.extend_from_slice(b") : ");
            push_decimal(b, u64::from(status));
            b.push(b' ');
            b.extend_from_slice(reason.as_bytes());
            b.push(b' ');
            if orphan {
                b.extend_from_slice(b"? (request not seen)");
                return;
            }
        }
        None => {
            b.extend_from_slice(b") REQ >>> (");
            b.extend_from_slice(to.as_bytes());
            b.extend_from_slice(b") : ");
        }
    }
    b.extend_from_slice(method.as_bytes());
    b.push(b' ');
    b.extend_from_slice(url.as_bytes());
}

/// Appends `n` in decimal.
fn push_decimal(b: &mut Vec<u8>, n: u64) {
    b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn title_text(
    number: u64,
    response: Option<(u16, &str)>,
    x: (&str, &str, &str, &str),
    orphan: bool,
) -> String {
    let mut b = Vec::with_capacity(64);
    write_title(&mut b, number, response, x, orphan);
    String::from_utf8(b).expect("written from str pieces")
}

fn response_of(which: Which, msg: &Message) -> Option<(u16, &str)> {
    match (which, &msg.head.start) {
        (Which::Response, StartLine::Response { status, reason, .. }) => {
            Some((*status, reason.as_ref()))
        }
        _ => None,
    }
}

/// The `### [N] ...` line of an entry.
pub fn title(number: u64, which: Which, x: &Exchange, msg: &Message) -> String {
    title_text(
        number,
        response_of(which, msg),
        (&x.from, &x.to, x.method(), &x.url),
        x.orphan,
    )
}

/// Bracketed notes on what is not whole about a message, and what was read leniently.
fn notes_text<'a>(
    complete: bool,
    broken: Option<&str>,
    lenient: impl IntoIterator<Item = &'a str>,
    after_gap: bool,
    orphan: bool,
    served: Option<(&str, Option<&str>)>,
) -> Vec<String> {
    let mut n = Vec::new();
    match (complete, broken) {
        (true, _) => {}
        (false, None) => {
            n.push("[incomplete: the connection ended before this message did]".to_owned())
        }
        (false, Some(r)) => n.push(format!("[broken: {r}]")),
    }
    for what in lenient {
        n.push(format!("[lenient: {what}]"));
    }
    if after_gap {
        n.push("[bytes were lost on this connection before this message]".to_owned());
    }
    if orphan {
        n.push("[the request this answers was not seen]".to_owned());
    }
    // What the service behind a folded proxy hop received, for `diagram --paths served`.
    if let Some((target, via)) = served {
        let via = via.unwrap_or("a proxy");
        n.push(crate::diagram::model::served_note(target, via));
    }
    n
}

/// Bracketed notes on what is not whole about a message.
pub fn notes(x: &Exchange, which: Which, msg: &Message) -> Vec<String> {
    let broken = match msg.ending {
        Ending::Broken(r) => Some(r),
        _ => None,
    };
    notes_text(
        msg.ending == Ending::Complete,
        broken,
        msg.lenient.iter().copied(),
        msg.after_gap,
        which == Which::Response && x.orphan,
        x.upstream_target
            .as_deref()
            .map(|target| (target, x.via.as_deref())),
    )
}

/// One entry as the log shows it, appended to `b`: the title, the header fields, a blank
/// line, the notes, the body, the trailer fields, framed by blank lines.
pub fn write_entry<'a, V: AsRef<str>>(
    b: &mut Vec<u8>,
    title: impl FnOnce(&mut Vec<u8>),
    headers: impl IntoIterator<Item = (&'a str, V)>,
    notes: &[String],
    body: impl FnOnce(&mut Vec<u8>),
    trailers: impl IntoIterator<Item = &'a str>,
) {
    b.push(b'\n');
    title(b);
    b.push(b'\n');
    for (name, value) in headers {
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(value.as_ref().as_bytes());
        b.push(b'\n');
    }
    b.push(b'\n');
    for n in notes {
        b.extend_from_slice(n.as_bytes());
        b.push(b'\n');
    }
    body(b);
    b.push(b'\n');
    for t in trailers {
        b.extend_from_slice(b"[trailer] ");
        b.extend_from_slice(t.as_bytes());
        b.push(b'\n');
    }
    b.push(b'\n');
}

/// The entry of a recorded message (`sniffer merge` writes its log from records); None when
/// the message is not numbered.
pub fn record_entry(r: &ExchangeRecord, request: bool) -> Option<String> {
    let m = r.message(request)?;
    let number = m.number?;
    let response = if request {
        None
    } else {
        Some((r.status.unwrap_or(0), r.reason.as_deref().unwrap_or("")))
    };
    let title = |b: &mut Vec<u8>| {
        write_title(
            b,
            number,
            response,
            (&r.from, &r.to, &r.method, &r.url),
            r.orphan,
        )
    };
    let notes = notes_text(
        m.complete,
        m.broken.as_deref(),
        m.lenient.iter().map(String::as_str),
        m.after_gap,
        !request && r.orphan,
        r.upstream
            .as_ref()
            .and_then(|u| u.target.as_deref())
            .map(|target| (target, r.via.as_deref())),
    );
    let mut b = Vec::new();
    write_entry(
        &mut b,
        title,
        m.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        &notes,
        |b| b.extend_from_slice(m.body.as_bytes()),
        m.trailers.iter().map(String::as_str),
    );
    String::from_utf8(b).ok()
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
        let trailers: Vec<String> = msg
            .trailers
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        let x = e.exchange;
        write_entry(
            b,
            |b: &mut Vec<u8>| {
                write_title(
                    b,
                    e.number,
                    response_of(e.which, msg),
                    (&x.from, &x.to, x.method(), &x.url),
                    x.orphan,
                )
            },
            msg.head
                .headers
                .iter_text()
                .map(|(h, text)| (h.name, render::header_shown(&h, text, redact))),
            &notes(e.exchange, e.which, msg),
            |b| render::write_body(b, &msg.head, &msg.body, redact, text_limit),
            trailers.iter().map(String::as_str),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_written_as_the_log_shows_them() {
        let x = ("openstack", "keystone", "GET", "http://127.0.0.1:5000/v3");
        assert_eq!(
            title_text(1, None, x, false),
            "### [1] (openstack) REQ >>> (keystone) : GET http://127.0.0.1:5000/v3"
        );
        assert_eq!(
            title_text(20, Some((300, "Multiple Choices")), x, false),
            "### [20] (openstack) RESP <<< (keystone) : 300 Multiple Choices GET http://127.0.0.1:5000/v3"
        );
        assert_eq!(
            title_text(u64::MAX, Some((0, "")), x, true),
            "### [18446744073709551615] (openstack) RESP <<< (keystone) : 0  ? (request not seen)"
        );
        let mut b = Vec::new();
        for n in [0, 9, 10, 99, 100, 1_000_007] {
            push_decimal(&mut b, n);
            b.push(b',');
        }
        assert_eq!(b, b"0,9,10,99,100,1000007,");
    }
}
