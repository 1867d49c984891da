//! Exchanges as records ([`ExchangeRecord`]), the one shape `--jsonl`, `--har` and `--otlp`
//! write: [`Records`] builds each exchange's record once and hands it to every record sink.
use crate::{
    http::{
        head::StartLine,
        message::{Ending, Message},
    },
    record::{EndRecord, ExchangeRecord, Host, MessageRecord, UpstreamRecord},
    render,
    stitch::{Entry, Exchange, LogSink, View, Which},
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

/// A sink of exchanges' records (JSONL, HAR, OTLP).
pub trait RecordSink {
    /// A message was written (OTLP gives a request its place in a trace then).
    fn message(&mut self, _e: &Entry<'_>) {}
    /// The record of an exchange that ended.
    fn record(&mut self, r: &ExchangeRecord);
    fn flush(&mut self) {}
    fn close(&mut self) {}
}

/// The log sink in front of the record sinks: each exchange's record is built once, however
/// many of them are on (building it, headers and bodies rendered, cost as much as writing it).
pub struct Records {
    rec: Recorder,
    pub sinks: Vec<Box<dyn RecordSink>>,
}

impl Records {
    pub fn new(rec: Recorder) -> Self {
        Self {
            rec,
            sinks: Vec::new(),
        }
    }
}

impl LogSink for Records {
    fn message(&mut self, e: &Entry<'_>) {
        for s in &mut self.sinks {
            s.message(e);
        }
    }

    fn exchange(&mut self, x: &Exchange) {
        if self.sinks.is_empty() {
            return;
        }
        let r = self.rec.record(x);
        for s in &mut self.sinks {
            s.record(&r);
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
