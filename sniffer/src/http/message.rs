//! A message as read from one direction: its head, what of its body was seen, how it ended,
//! and what was read leniently.
use super::head::Head;

/// The body of a message as seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    /// Body length: payload bytes (chunked: decoded data), captured or not.
    pub len: u64,
    /// The first body bytes, up to the preview limit and the first missing byte.
    pub preview: Vec<u8>,
    /// Body bytes the capture does not have (not copied by the kernel, or lost).
    pub missing: u64,
    /// Of those, the ones whose events were lost (ring buffer full).
    pub lost: u64,
}

impl Body {
    /// The preview holds the whole body.
    pub fn preview_is_whole(&self) -> bool {
        self.missing == 0 && self.preview.len() as u64 == self.len
    }
}

/// How a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Its framing said it was complete.
    Complete,
    /// The connection ended (or the sniffer stopped) before it was complete.
    Incomplete,
    /// Its framing broke (a bad header line, bytes missing in chunk framing, an invalid chunk):
    /// what is shown is what was read until then.
    Broken(&'static str),
}

/// A message whose head was parsed (for a broken head: its start line and the fields before the
/// fault).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Shared with the head's event and the exchange: heads are not copied.
    pub head: std::sync::Arc<Head>,
    /// Stream offset of its first byte.
    pub off: u64,
    /// Kernel time of its first and last bytes.
    pub first_ts: u64,
    pub last_ts: u64,
    pub body: Body,
    pub ending: Ending,
    /// Chunked trailer fields, raw.
    pub trailers: Vec<Vec<u8>>,
    /// Bytes were missing right before this message: something may have been lost before it.
    pub after_gap: bool,
    /// What the RFCs call invalid that was read anyway (a bare LF, a repeated Content-Length,
    /// ...): a strict parser could read these bytes otherwise.
    pub lenient: Vec<&'static str>,
}

impl Message {
    /// Says that something in this message was read leniently (once).
    pub fn note(&mut self, what: &'static str) {
        if !self.lenient.contains(&what) {
            self.lenient.push(what);
        }
    }
}
