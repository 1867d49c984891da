//! `--jsonl FILE`: one JSON object per exchange, for tools (the diagram converter reads it).
use std::io::{self, Write};

use serde::Serialize;

use super::output::Output;
use crate::{
    http::{
        head::StartLine,
        message::{Ending, Message},
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
struct UpstreamRecord<'a> {
    server: Option<EndRecord>,
    target: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageRecord {
    number: Option<u64>,
    /// Kernel (CLOCK_MONOTONIC) times of the first and last bytes.
    first_ts_ns: u64,
    last_ts_ns: u64,
    /// The same first byte in ns since the Unix epoch.
    first_unix_ns: i128,
    headers: Vec<(String, String)>,
    body_size: u64,
    body_missing: u64,
    body_lost: u64,
    body_truncated: bool,
    /// The body as the log shows it.
    body: String,
    complete: bool,
    broken: Option<&'static str>,
    after_gap: bool,
    /// What the RFCs call invalid that was read anyway (a bare LF, ...).
    lenient: Vec<&'static str>,
}

#[derive(Serialize)]
struct ExchangeRecord<'a> {
    id: u64,
    from: &'a str,
    to: &'a str,
    /// The reverse proxy between the two, its hop folded into this exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'a str>,
    /// The proxy's upstream hop folded into this exchange: the service's end and the target
    /// the proxy sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<UpstreamRecord<'a>>,
    client: Option<EndRecord>,
    server: Option<EndRecord>,
    method: &'a str,
    url: &'a str,
    /// Read as TLS plaintext in the TLS library.
    tls: bool,
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

/// Turns exchanges into JSON records (for JSONL and HAR).
#[derive(Clone, Copy, Debug)]
pub struct Recorder {
    pub redact: bool,
    pub text_limit: usize,
    /// Unix time minus kernel monotonic time, in ns.
    pub unix_offset_ns: i128,
}

pub struct Jsonl {
    out: Output,
    rec: Recorder,
}

fn end(v: &Option<View>) -> Option<EndRecord> {
    v.as_ref().map(|v| EndRecord {
        pid: v.pid,
        local: v.local.to_string(),
        peer: v.peer.to_string(),
        transport: v.transport.name(),
    })
}

impl Recorder {
    fn message_record(&self, x: &Exchange, which: Which, m: &Message) -> MessageRecord {
        MessageRecord {
            number: x.numbers[which as usize],
            first_ts_ns: m.first_ts,
            last_ts_ns: m.last_ts,
            first_unix_ns: i128::from(m.first_ts) + self.unix_offset_ns,
            headers: m
                .head
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.clone(),
                        render::header_value(&h.name, &h.value, self.redact).into_owned(),
                    )
                })
                .collect(),
            body_size: m.body.len,
            body_missing: m.body.missing,
            body_lost: m.body.lost,
            body_truncated: !m.body.preview_is_whole(),
            body: render::body(&m.head, &m.body, self.redact, self.text_limit),
            complete: m.ending == Ending::Complete,
            broken: match m.ending {
                Ending::Broken(r) => Some(r),
                _ => None,
            },
            after_gap: m.after_gap,
            lenient: m.lenient.clone(),
        }
    }

    /// The record of an exchange, as a JSON value (for the HAR).
    pub fn record(&self, x: &Exchange) -> serde_json::Value {
        serde_json::to_value(self.exchange_record(x)).unwrap_or_default()
    }

    /// Writes the record of an exchange as one JSON line, without making a JSON value first.
    pub fn write_line(&self, x: &Exchange, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, &self.exchange_record(x))?;
        out.write_all(b"\n")
    }

    fn exchange_record<'a>(&self, x: &'a Exchange) -> ExchangeRecord<'a> {
        let (status, reason) = match x.response.as_ref().map(|m| &m.head.start) {
            Some(StartLine::Response { status, reason, .. }) => {
                (Some(*status), Some(reason.as_str()))
            }
            _ => (None, None),
        };
        ExchangeRecord {
            id: x.id,
            from: &x.from,
            to: &x.to,
            via: x.via.as_deref(),
            upstream: (x.upstream_view.is_some() || x.upstream_target.is_some()).then(|| {
                UpstreamRecord {
                    server: end(&x.upstream_view),
                    target: x.upstream_target.as_deref(),
                }
            }),
            client: end(&x.client),
            server: end(&x.server),
            method: x.method(),
            url: &x.url,
            tls: x.tls,
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
        }
    }
}

impl Jsonl {
    /// `out` counts in exchanges.
    pub fn new(out: Output, rec: Recorder) -> Self {
        Self { out, rec }
    }
}

impl LogSink for Jsonl {
    fn message(&mut self, _e: &crate::stitch::Entry<'_>) {}

    fn exchange(&mut self, x: &Exchange) {
        let rec = &self.rec;
        self.out.record(1, |b| rec.write_line(x, b));
    }

    fn flush(&mut self) {
        self.out.flush();
    }

    fn close(&mut self) {
        self.out.flush();
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

    fn flush(&mut self) {
        for s in &mut self.sinks {
            s.flush();
        }
    }

    fn close(&mut self) {
        for s in &mut self.sinks {
            s.close();
        }
    }
}

/// `--har FILE`: the exchanges as an HTTP Archive, written at the end.
pub struct HarSink {
    out: Output,
    rec: Recorder,
    records: Vec<serde_json::Value>,
}

impl HarSink {
    /// `out` counts in exchanges.
    pub fn new(out: Output, rec: Recorder) -> Self {
        Self {
            out,
            rec,
            records: Vec::new(),
        }
    }
}

impl LogSink for HarSink {
    fn message(&mut self, _e: &crate::stitch::Entry<'_>) {}

    fn exchange(&mut self, x: &Exchange) {
        self.records.push(self.rec.record(x));
    }

    fn close(&mut self) {
        let har = crate::har::from_records(&self.records);
        self.out.record(self.records.len() as u64, |b| {
            serde_json::to_writer_pretty(&mut *b, &har)?;
            b.write_all(b"\n")
        });
        self.out.flush();
    }
}
