//! `--jsonl FILE`: one JSON object per exchange, for tools (the diagram converter reads it).
use std::io::Write as _;

use super::output::Output;
use crate::{
    har::HarStream,
    http::{
        head::StartLine,
        message::{Ending, Message},
    },
    record::{EndRecord, ExchangeRecord, Host, MessageRecord, UpstreamRecord},
    render,
    stitch::{Exchange, LogSink, View, Which},
};

/// Turns exchanges into their records (for JSONL, HAR and OTLP).
#[derive(Clone, Debug)]
pub struct Recorder {
    pub redact: bool,
    pub text_limit: usize,
    /// Unix time minus kernel monotonic time, in ns.
    pub unix_offset_ns: i128,
    /// The machine the run is on, named in every end's record.
    pub host: Option<Host>,
    /// Added to every kernel time recorded: a host whose clock is off, for tests of `sniffer
    /// merge` (`--clock-shift-ms`).
    pub clock_shift_ns: i64,
}

pub struct Jsonl {
    out: Output,
    rec: Recorder,
}

impl Recorder {
    fn end(&self, v: &Option<View>) -> Option<EndRecord> {
        v.as_ref().map(|v| EndRecord {
            pid: v.pid,
            local: v.local.to_string(),
            peer: v.peer.to_string(),
            transport: v.transport.name(),
            netns: (v.netns != 0).then_some(v.netns),
            host: self.host.clone(),
        })
    }

    fn shifted(&self, ts: u64) -> u64 {
        ts.saturating_add_signed(self.clock_shift_ns)
    }

    /// `first_ts`: where the message sits in the order, the first byte of the earlier view.
    fn message_record(
        &self,
        x: &Exchange,
        which: Which,
        m: &Message,
        first_ts: u64,
    ) -> MessageRecord {
        let first_ts = first_ts.min(m.first_ts);
        MessageRecord {
            number: x.numbers[which as usize],
            first_ts_ns: self.shifted(first_ts),
            last_ts_ns: self.shifted(m.last_ts.max(first_ts)),
            first_unix_ns: i128::from(first_ts)
                + self.unix_offset_ns
                + i128::from(self.clock_shift_ns),
            headers: m
                .head
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        render::header_value(h.name, h.value, self.redact).into_owned(),
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
                Ending::Broken(r) => Some(r.to_owned()),
                _ => None,
            },
            after_gap: m.after_gap,
            trailers: m
                .trailers
                .iter()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect(),
            lenient: m.lenient.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The record of an exchange.
    pub fn record(&self, x: &Exchange) -> ExchangeRecord {
        let (status, reason) = match x.response.as_ref().map(|m| &m.head.start) {
            Some(StartLine::Response { status, reason, .. }) => {
                (Some(*status), Some(reason.to_string()))
            }
            _ => (None, None),
        };
        ExchangeRecord {
            id: x.id,
            from: x.from.clone(),
            to: x.to.clone(),
            via: x.via.clone(),
            upstream: (x.upstream_view.is_some() || x.upstream_target.is_some()).then(|| {
                UpstreamRecord {
                    server: self.end(&x.upstream_view),
                    target: x.upstream_target.clone(),
                }
            }),
            client: self.end(&x.client),
            server: self.end(&x.server),
            method: x.method().to_owned(),
            url: x.url.clone(),
            status,
            reason,
            request: x
                .request
                .as_ref()
                .map(|m| self.message_record(x, Which::Request, m, x.request_ts)),
            response: x.response.as_ref().map(|m| {
                let ts = x.response_ts.unwrap_or(m.first_ts);
                self.message_record(x, Which::Response, m, ts)
            }),
            interim_statuses: x.interim.iter().filter_map(|m| m.head.status()).collect(),
            incomplete: x.is_incomplete(),
            orphan: x.orphan,
            unanswered: x.unanswered,
            broken: x.broken.map(str::to_owned),
            tls: x.tls,
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
        let record = self.rec.record(x);
        self.out.record(1, |b| {
            serde_json::to_writer(&mut *b, &record)?;
            b.write_all(b"\n")
        });
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

/// `--har FILE`: the exchanges as an HTTP Archive, each entry written as its exchange is (a
/// run left going holds none of them in memory), the document closed at the end.
pub struct HarSink {
    out: Output,
    rec: Recorder,
    doc: HarStream,
}

impl HarSink {
    /// `out` counts in exchanges.
    pub fn new(mut out: Output, rec: Recorder) -> Self {
        out.record(0, |b| {
            HarStream::head(b);
            Ok(())
        });
        Self {
            out,
            rec,
            doc: HarStream::default(),
        }
    }
}

impl LogSink for HarSink {
    fn message(&mut self, _e: &crate::stitch::Entry<'_>) {}

    fn exchange(&mut self, x: &Exchange) {
        let record = self.rec.record(x);
        let doc = &mut self.doc;
        self.out.record(1, |b| doc.entry(b, &record).map(drop));
    }

    fn flush(&mut self) {
        self.out.flush();
    }

    fn close(&mut self) {
        let doc = &self.doc;
        self.out.record(0, |b| {
            doc.tail(b);
            Ok(())
        });
        self.out.flush();
    }
}
