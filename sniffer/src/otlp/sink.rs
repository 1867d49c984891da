//! The live run's OTLP output: a log sink that gives each exchange its place in a trace when
//! its request is written (the calls its server is making then are its parents) and offers
//! its spans to the exporter when it is done.
use std::sync::{Arc, Mutex, PoisonError};

use super::{
    Exporter,
    export::Summary,
    spans::{End, Party, Tracer, spans},
};
use crate::{
    record::ExchangeRecord,
    sinks::records::{RecordSink, Recorder},
    stitch::{Entry, Which},
};

/// How long the end of a run waits for the last spans to go out.
pub const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct OtlpSink {
    host: String,
    tracer: Tracer,
    exporter: Option<Exporter>,
    /// The export's summary, filled in at close.
    summary: Arc<Mutex<Option<Summary>>>,
}

impl OtlpSink {
    /// Spans of exchanges recorded by `rec` (whose host names them) go to `exporter`; the
    /// returned handle holds the summary once the sink is closed.
    pub fn new(rec: &Recorder, exporter: Exporter) -> (Self, Arc<Mutex<Option<Summary>>>) {
        let host = rec
            .host
            .as_ref()
            .map_or_else(|| "localhost".to_owned(), |h| h.name.clone());
        let seed = format!(
            "{host} {} {}",
            rec.host.as_ref().map_or("", |h| h.boot_id.as_str()),
            rec.unix_offset_ns
        );
        let summary = Arc::new(Mutex::new(None));
        (
            Self {
                tracer: Tracer::new(seed.as_bytes()),
                host,
                exporter: Some(exporter),
                summary: summary.clone(),
            },
            summary,
        )
    }

    fn party(&self, pid: Option<u32>) -> Option<Party> {
        pid.map(|pid| Party {
            host: self.host.clone(),
            pid,
        })
    }
}

impl RecordSink for OtlpSink {
    fn message(&mut self, e: &Entry<'_>) {
        let x = e.exchange;
        match e.which {
            Which::Request => {
                let caller = self.party(x.client.as_ref().map(|v| v.pid));
                let callee = self.party(x.server.as_ref().map(|v| v.pid));
                let at = i128::from(x.request_ts);
                self.tracer.begin(x.id, caller.as_ref(), callee, at, None);
            }
            Which::Response => self.tracer.answered(x.id),
        }
    }

    fn record(&mut self, r: &ExchangeRecord) {
        let ids = self.tracer.finish(r.id);
        let host = self.host.as_str();
        let client = r
            .client
            .as_ref()
            .map(|c| End::of_record(r, &r.from, host, Some(c)));
        let server = r
            .server
            .as_ref()
            .map(|s| End::of_record(r, &r.to, host, Some(s)));
        let out = spans(r, &ids, client, server);
        if let Some(e) = &self.exporter
            && !out.is_empty()
        {
            e.offer(out);
        }
    }

    fn close(&mut self) {
        if let Some(e) = self.exporter.take() {
            let s = e.finish(FINISH_WAIT);
            *self.summary.lock().unwrap_or_else(PoisonError::into_inner) = Some(s);
        }
    }
}
