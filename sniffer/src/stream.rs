//! One direction of one connection as an ordered byte stream with exact gaps.
//!
//! Events carry their byte offset in the stream (a counter the kernel keeps per socket and
//! direction), so pieces are put in order by offset, not by arrival: two threads on two CPUs
//! can land in the ring buffer out of order. A hole in the offsets is a lost event. It is
//! waited for a short while (its piece may still be in flight on another CPU), then reported
//! as a gap of exactly its size, so nothing downstream ever reads a shorter stream as whole.
use std::collections::BTreeMap;

/// Why bytes are missing from a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    /// The kernel counted them but did not copy them (per-syscall cap, sendfile, unreadable
    /// user memory).
    Uncaptured,
    /// Their events were lost (ring buffer full): only their count is known.
    Lost,
}

/// What the stream delivers, in stream order. `ts_ns` is the kernel time of the syscall that
/// moved the bytes (for a lost gap: of the next bytes that did arrive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Data {
        off: u64,
        bytes: Vec<u8>,
        ts_ns: u64,
    },
    Gap {
        off: u64,
        len: u64,
        kind: GapKind,
        ts_ns: u64,
    },
}

impl Piece {
    /// Stream offset of its first byte.
    pub const fn off(&self) -> u64 {
        match self {
            Piece::Data { off, .. } | Piece::Gap { off, .. } => *off,
        }
    }
}

/// Running totals of one stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    /// Bytes delivered, data and gaps: the stream's length so far.
    pub bytes: u64,
    pub captured: u64,
    pub uncaptured: u64,
    pub lost: u64,
    /// Bytes that arrived again for offsets already delivered (dropped).
    pub duplicate: u64,
}

/// A piece held until the bytes before it arrive.
#[derive(Debug)]
struct Held {
    len: u64,
    data: Vec<u8>,
    ts_ns: u64,
}

#[derive(Debug, Default)]
pub struct Stream {
    /// Offset of the next byte to deliver.
    next: u64,
    held: BTreeMap<u64, Held>,
    held_bytes: u64,
    pub stats: StreamStats,
}

/// Bytes held out of order per stream before a hole is given up on regardless of time.
pub const MAX_HELD_BYTES: u64 = 4 << 20;

impl Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Offset of the next byte the stream expects.
    pub const fn position(&self) -> u64 {
        self.next
    }

    /// Whether no byte of the stream arrived yet.
    pub fn is_untouched(&self) -> bool {
        self.next == 0 && self.held.is_empty()
    }

    /// Adds `len` bytes at `off`, of which `data` holds the first `data.len()`; appends what
    /// became deliverable to `out`.
    pub fn push(&mut self, off: u64, len: u64, data: Vec<u8>, ts_ns: u64, out: &mut Vec<Piece>) {
        if len == 0 {
            return;
        }
        // The common case: the next piece in order, nothing waiting: straight through.
        if off == self.next && self.held.is_empty() {
            self.accept(off, len, data, ts_ns, out);
            return;
        }
        self.held_bytes += len;
        if let Some(prev) = self.held.insert(off, Held { len, data, ts_ns }) {
            // The same offset twice: keep the newer, count the older as duplicate.
            self.held_bytes -= prev.len;
            self.stats.duplicate += prev.len;
        }
        self.deliver(out);
        if self.held_bytes > MAX_HELD_BYTES {
            self.skip_hole(out);
        }
    }

    /// Delivers held pieces that start at or before the next offset.
    fn deliver(&mut self, out: &mut Vec<Piece>) {
        while let Some(entry) = self.held.first_entry() {
            let off = *entry.key();
            if off > self.next {
                break;
            }
            let Held { len, data, ts_ns } = entry.remove();
            self.held_bytes -= len;
            self.accept(off, len, data, ts_ns, out);
        }
    }

    /// Delivers a piece starting at or before the next offset (its overlap is dropped).
    fn accept(&mut self, off: u64, len: u64, mut data: Vec<u8>, ts_ns: u64, out: &mut Vec<Piece>) {
        let end = off + len;
        if end <= self.next {
            self.stats.duplicate += len;
            return;
        }
        // Overlap with what was delivered: keep only the new tail.
        let skip = self.next - off;
        self.stats.duplicate += skip;
        let skip_data = (skip as usize).min(data.len());
        data.drain(..skip_data);
        let start = self.next;
        let len = end - start;
        let copied = data.len() as u64;
        if copied > 0 {
            self.stats.captured += copied;
            out.push(Piece::Data {
                off: start,
                bytes: data,
                ts_ns,
            });
        }
        if copied < len {
            self.stats.uncaptured += len - copied;
            out.push(Piece::Gap {
                off: start + copied,
                len: len - copied,
                kind: GapKind::Uncaptured,
                ts_ns,
            });
        }
        self.next = end;
        self.stats.bytes = end;
    }

    /// Declares the hole before the first held piece lost and delivers on.
    fn skip_hole(&mut self, out: &mut Vec<Piece>) {
        let Some((&off, held)) = self.held.first_key_value() else {
            return;
        };
        if off > self.next {
            let ts_ns = held.ts_ns;
            self.lose(off, ts_ns, out);
        }
        self.deliver(out);
    }

    fn lose(&mut self, to: u64, ts_ns: u64, out: &mut Vec<Piece>) {
        let len = to - self.next;
        out.push(Piece::Gap {
            off: self.next,
            len,
            kind: GapKind::Lost,
            ts_ns,
        });
        self.stats.lost += len;
        self.next = to;
        self.stats.bytes = to;
    }

    /// Gives up on holes whose next piece has waited since before `deadline_ns` (kernel time).
    pub fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Piece>) {
        while let Some((_, held)) = self.held.first_key_value() {
            if held.ts_ns > deadline_ns {
                break;
            }
            self.skip_hole(out);
        }
    }

    /// Whether pieces wait for a hole to fill.
    pub fn has_hole(&self) -> bool {
        !self.held.is_empty()
    }

    /// Ends the stream at kernel time `ts_ns`: delivers everything held, and reports as lost
    /// any hole, including a tail up to `end` (the kernel's final offset) when it is known.
    pub fn finish(&mut self, end: Option<u64>, ts_ns: u64, out: &mut Vec<Piece>) {
        while self.has_hole() {
            self.skip_hole(out);
        }
        if let Some(end) = end
            && end > self.next
        {
            self.lose(end, ts_ns, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces without their times, to compare.
    #[derive(Debug, PartialEq)]
    enum P {
        D(u64, Vec<u8>),
        G(u64, u64, GapKind),
    }

    fn data(off: u64, b: &[u8]) -> P {
        P::D(off, b.to_vec())
    }

    fn gap(off: u64, len: u64, kind: GapKind) -> P {
        P::G(off, len, kind)
    }

    fn strip(out: &[Piece]) -> Vec<P> {
        out.iter()
            .map(|p| match p {
                Piece::Data { off, bytes, .. } => P::D(*off, bytes.clone()),
                Piece::Gap { off, len, kind, .. } => P::G(*off, *len, *kind),
            })
            .collect()
    }

    #[test]
    fn in_order_pieces_flow_through() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(0, 4, b"GET ".to_vec(), 1, &mut out);
        s.push(4, 2, b"/ ".to_vec(), 2, &mut out);
        assert_eq!(strip(&out), vec![data(0, b"GET "), data(4, b"/ ")]);
        assert_eq!(s.stats.bytes, 6);
        assert_eq!(s.stats.captured, 6);
    }

    #[test]
    fn out_of_order_pieces_are_reordered_by_offset() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(4, 2, b"/ ".to_vec(), 1, &mut out);
        assert!(out.is_empty());
        assert!(s.has_hole());
        s.push(0, 4, b"GET ".to_vec(), 2, &mut out);
        assert_eq!(strip(&out), vec![data(0, b"GET "), data(4, b"/ ")]);
        assert!(!s.has_hole());
    }

    #[test]
    fn uncaptured_tail_is_a_gap_of_exact_size() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(0, 10, b"abc".to_vec(), 1, &mut out);
        s.push(10, 1, b"z".to_vec(), 2, &mut out);
        assert_eq!(
            strip(&out),
            vec![
                data(0, b"abc"),
                gap(3, 7, GapKind::Uncaptured),
                data(10, b"z")
            ]
        );
        assert_eq!(s.stats.uncaptured, 7);
        assert_eq!(s.stats.bytes, 11);
    }

    #[test]
    fn hole_expires_into_a_lost_gap_and_the_stream_goes_on() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(0, 2, b"ab".to_vec(), 10, &mut out);
        s.push(5, 2, b"fg".to_vec(), 20, &mut out);
        out.clear();
        s.expire(19, &mut out);
        assert!(
            out.is_empty(),
            "the hole's next piece is newer than the deadline"
        );
        s.expire(20, &mut out);
        assert_eq!(strip(&out), vec![gap(2, 3, GapKind::Lost), data(5, b"fg")]);
        assert_eq!(s.stats.lost, 3);
        // A late piece for the lost range is a duplicate, not a rewrite of history.
        out.clear();
        s.push(2, 3, b"cde".to_vec(), 30, &mut out);
        assert!(out.is_empty());
        assert_eq!(s.stats.duplicate, 3);
    }

    #[test]
    fn finish_reports_the_lost_tail_up_to_the_kernel_offset() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(0, 3, b"abc".to_vec(), 1, &mut out);
        s.push(6, 1, b"g".to_vec(), 2, &mut out);
        out.clear();
        s.finish(Some(10), 3, &mut out);
        assert_eq!(
            strip(&out),
            vec![
                gap(3, 3, GapKind::Lost),
                data(6, b"g"),
                gap(7, 3, GapKind::Lost)
            ]
        );
        assert_eq!(s.stats.bytes, 10);
        assert_eq!(s.stats.lost, 6);
    }

    #[test]
    fn overlapping_piece_delivers_only_new_bytes() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(0, 4, b"abcd".to_vec(), 1, &mut out);
        s.push(2, 4, b"cdef".to_vec(), 2, &mut out);
        assert_eq!(strip(&out), vec![data(0, b"abcd"), data(4, b"ef")]);
        assert_eq!(s.stats.duplicate, 2);
    }

    #[test]
    fn too_much_held_data_gives_up_on_the_hole() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(1, MAX_HELD_BYTES + 1, Vec::new(), 1, &mut out);
        assert_eq!(
            strip(&out),
            vec![
                gap(0, 1, GapKind::Lost),
                gap(1, MAX_HELD_BYTES + 1, GapKind::Uncaptured)
            ]
        );
        assert!(!s.has_hole());
    }
}
