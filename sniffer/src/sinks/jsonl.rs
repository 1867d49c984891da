//! `--jsonl FILE`: one JSON object per exchange, for tools (the diagram converter reads it);
//! `--har FILE`: the same records as an HTTP Archive.
use std::io::Write as _;

use super::{output::Output, records::RecordSink};
use crate::{har::HarStream, record::ExchangeRecord};

pub struct Jsonl {
    out: Output,
}

impl Jsonl {
    /// `out` counts in exchanges.
    pub fn new(out: Output) -> Self {
        Self { out }
    }
}

impl RecordSink for Jsonl {
    fn record(&mut self, r: &ExchangeRecord) {
        self.out.record(1, |b| {
            serde_json::to_writer(&mut *b, r)?;
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

/// `--har FILE`: the exchanges as an HTTP Archive, each entry written as its exchange is (a
/// run left going holds none of them in memory), the document closed at the end.
pub struct HarSink {
    out: Output,
    doc: HarStream,
}

impl HarSink {
    /// `out` counts in exchanges.
    pub fn new(mut out: Output) -> Self {
        out.record(0, |b| {
            HarStream::head(b);
            Ok(())
        });
        Self {
            out,
            doc: HarStream::default(),
        }
    }
}

impl RecordSink for HarSink {
    fn record(&mut self, r: &ExchangeRecord) {
        let doc = &mut self.doc;
        self.out.record(1, |b| doc.entry(b, r).map(drop));
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
