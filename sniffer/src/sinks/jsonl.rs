//! `--jsonl FILE`: one JSON object per exchange, for tools (the diagram converter reads it).
use std::io::{self, Write};

use serde::Serialize;

use crate::{
    http::{
        head::StartLine,
        parser::{Ending, Message},
    },
    render,
    stitch::{Exchange, LogSink, View, Which},
};

#[derive(Serialize)]
struct EndRecord {
    pid: u32,
    local: String,
    peer: String,
    transport: String,
}

#[derive(Serialize)]
struct MessageRecord {
    number: Option<u64>,
    first_ts_ns: u64,
    last_ts_ns: u64,
    headers: Vec<(String, String)>,
    body_size: u64,
    body_missing: u64,
    body_truncated: bool,
    /// The body as the log shows it.
    body: String,
    complete: bool,
    broken: Option<&'static str>,
    after_gap: bool,
}

#[derive(Serialize)]
struct ExchangeRecord<'a> {
    id: u64,
    from: &'a str,
    to: &'a str,
    client: Option<EndRecord>,
    server: Option<EndRecord>,
    method: &'a str,
    url: &'a str,
    status: Option<u16>,
    reason: Option<&'a str>,
    request: Option<MessageRecord>,
    response: Option<MessageRecord>,
    interim_statuses: Vec<u16>,
    incomplete: bool,
    orphan: bool,
    unanswered: bool,
    broken: Option<&'static str>,
}

pub struct Jsonl {
    out: Box<dyn Write + Send>,
    redact: bool,
    text_limit: usize,
    error: Option<io::Error>,
}

fn end(v: &Option<View>) -> Option<EndRecord> {
    v.as_ref().map(|v| EndRecord {
        pid: v.pid,
        local: v.local.to_string(),
        peer: v.peer.to_string(),
        transport: v.transport.name(),
    })
}

impl Jsonl {
    pub fn new(out: Box<dyn Write + Send>, redact: bool, text_limit: usize) -> Self {
        Self {
            out,
            redact,
            text_limit,
            error: None,
        }
    }

    fn message_record(&self, x: &Exchange, which: Which, m: &Message) -> MessageRecord {
        MessageRecord {
            number: x.numbers[which as usize],
            first_ts_ns: m.first_ts,
            last_ts_ns: m.last_ts,
            headers: m
                .head
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.clone(),
                        render::header_value(&h.name, &h.value, self.redact),
                    )
                })
                .collect(),
            body_size: m.body.len,
            body_missing: m.body.missing,
            body_truncated: !m.body.preview_is_whole(),
            body: render::body(&m.head, &m.body, self.redact, self.text_limit),
            complete: m.ending == Ending::Complete,
            broken: match m.ending {
                Ending::Broken(r) => Some(r),
                _ => None,
            },
            after_gap: m.after_gap,
        }
    }

    fn record(&mut self, x: &Exchange) -> io::Result<()> {
        let (status, reason) = match x.response.as_ref().map(|m| &m.head.start) {
            Some(StartLine::Response { status, reason, .. }) => {
                (Some(*status), Some(reason.as_str()))
            }
            _ => (None, None),
        };
        let rec = ExchangeRecord {
            id: x.id,
            from: &x.from,
            to: &x.to,
            client: end(&x.client),
            server: end(&x.server),
            method: x.method(),
            url: &x.url,
            status,
            reason,
            request: x
                .request
                .as_ref()
                .map(|m| self.message_record(x, Which::Request, m)),
            response: x
                .response
                .as_ref()
                .map(|m| self.message_record(x, Which::Response, m)),
            interim_statuses: x.interim.iter().filter_map(|m| m.head.status()).collect(),
            incomplete: x.is_incomplete(),
            orphan: x.orphan,
            unanswered: x.unanswered,
            broken: x.broken,
        };
        serde_json::to_writer(&mut self.out, &rec)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

impl LogSink for Jsonl {
    fn message(&mut self, _e: &crate::stitch::Entry<'_>) {}

    fn exchange(&mut self, x: &Exchange) {
        if self.error.is_none()
            && let Err(e) = self.record(x)
        {
            self.error = Some(e);
        }
    }

    fn close(&mut self) -> io::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        }
    }
}

/// Several log sinks fed in turn.
#[derive(Default)]
pub struct LogFanout {
    pub sinks: Vec<Box<dyn LogSink>>,
}

impl LogSink for LogFanout {
    fn message(&mut self, e: &crate::stitch::Entry<'_>) {
        for s in &mut self.sinks {
            s.message(e);
        }
    }

    fn exchange(&mut self, x: &Exchange) {
        for s in &mut self.sinks {
            s.exchange(x);
        }
    }

    fn close(&mut self) -> io::Result<()> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            let r = s.close();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
