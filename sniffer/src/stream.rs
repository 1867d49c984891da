//! One direction of one connection as an ordered byte stream with exact gaps.
//!
//! Events carry their byte offset in the stream (a counter the kernel keeps per socket and
//! direction), so pieces are put in order by offset, not by arrival: two threads on two CPUs
//! can land in the ring buffer out of order. A hole in the offsets is a lost event. It is
//! waited for a short while (its piece may still be in flight on another CPU), then reported
//! as a gap of exactly its size, so nothing downstream ever reads a shorter stream as whole.
use std::{borrow::Cow, collections::BTreeMap};

/// Why bytes are missing from a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    /// The kernel counted them but did not copy them (bounded copy, the per-syscall cap,
    /// unreadable user memory).
    Uncaptured,
    /// Bytes no program could copy: `sendfile` moves them from a file to the socket inside the
    /// kernel, never through user memory. Written as `uncaptured`; unlike those, a bigger
    /// bounded-copy window would not bring them.
    #[serde(rename = "uncaptured")]
    Uncopyable,
    /// Their events were lost (ring buffer full): only their count is known.
    Lost,
}

/// What the stream delivers, in stream order. `ts_ns` is the kernel time of the syscall that
/// moved the bytes (for a lost gap: of the next bytes that did arrive). A piece delivered as
/// it came borrows its bytes from the ring buffer's record; one that waited owns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Data {
        off: u64,
        bytes: Cow<'a, [u8]>,
        ts_ns: u64,
    },
    Gap {
        off: u64,
        len: u64,
        kind: GapKind,
        ts_ns: u64,
    },
}

impl Piece<'_> {
    /// Stream offset of its first byte.
    pub const fn off(&self) -> u64 {
        match self {
            Piece::Data { off, .. } | Piece::Gap { off, .. } => *off,
        }
    }

    /// The piece with its bytes its own, to be kept.
    pub fn to_owned_piece(&self) -> Piece<'static> {
        match self {
            Piece::Data { off, bytes, ts_ns } => Piece::Data {
                off: *off,
                bytes: Cow::Owned(bytes.to_vec()),
                ts_ns: *ts_ns,
            },
            &Piece::Gap {
                off,
                len,
                kind,
                ts_ns,
            } => Piece::Gap {
                off,
                len,
                kind,
                ts_ns,
            },
        }
    }
}

/// An empty vector of pieces on the allocation of `v`, for pieces of another lifetime: the
/// pieces of one chunk borrow its bytes, the vector is kept from chunk to chunk.
pub fn recycle<'b>(mut v: Vec<Piece<'_>>) -> Vec<Piece<'b>> {
    v.clear();
    // Collecting a vector's own iterator into elements of the same layout reuses its
    // allocation; with no element the closure never runs.
    v.into_iter().map(|_| unreachable!()).collect()
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
    /// What its bytes past `data` are.
    uncopied: GapKind,
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
    pub fn push<'a>(
        &mut self,
        off: u64,
        len: u64,
        data: &'a [u8],
        ts_ns: u64,
        out: &mut Vec<Piece<'a>>,
    ) {
        self.push_kind(off, len, data, ts_ns, GapKind::Uncaptured, out);
    }

    /// [`Self::push`], with what the bytes past `data` are (`Uncaptured` or `Uncopyable`).
    pub fn push_kind<'a>(
        &mut self,
        off: u64,
        len: u64,
        data: &'a [u8],
        ts_ns: u64,
        uncopied: GapKind,
        out: &mut Vec<Piece<'a>>,
    ) {
        if len == 0 {
            return;
        }
        // The common case: the next piece in order, nothing waiting: straight through, the
        // bytes not copied.
        if off == self.next && self.held.is_empty() {
            self.accept(off, len, Cow::Borrowed(data), ts_ns, uncopied, out);
            return;
        }
        self.held_bytes += len;
        let data = data.to_vec();
        let held = Held {
            len,
            data,
            ts_ns,
            uncopied,
        };
        if let Some(prev) = self.held.insert(off, held) {
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
    fn deliver(&mut self, out: &mut Vec<Piece<'_>>) {
        while let Some(entry) = self.held.first_entry() {
            let off = *entry.key();
            if off > self.next {
                break;
            }
            let Held {
                len,
                data,
                ts_ns,
                uncopied,
            } = entry.remove();
            self.held_bytes -= len;
            self.accept(off, len, Cow::Owned(data), ts_ns, uncopied, out);
        }
    }

    /// Delivers a piece starting at or before the next offset (its overlap is dropped).
    fn accept<'a>(
        &mut self,
        off: u64,
        len: u64,
        mut data: Cow<'a, [u8]>,
        ts_ns: u64,
        uncopied: GapKind,
        out: &mut Vec<Piece<'a>>,
    ) {
        let end = off + len;
        if end <= self.next {
            self.stats.duplicate += len;
            return;
        }
        // Overlap with what was delivered: keep only the new tail.
        let skip = self.next - off;
        self.stats.duplicate += skip;
        let skip_data = (skip as usize).min(data.len());
        match &mut data {
            Cow::Borrowed(b) => *b = &b[skip_data..],
            Cow::Owned(v) => {
                v.drain(..skip_data);
            }
        }
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
                kind: uncopied,
                ts_ns,
            });
        }
        self.next = end;
        self.stats.bytes = end;
    }

    /// Declares the hole before the first held piece lost and delivers on.
    fn skip_hole(&mut self, out: &mut Vec<Piece<'_>>) {
        let Some((&off, held)) = self.held.first_key_value() else {
            return;
        };
        if off > self.next {
            let ts_ns = held.ts_ns;
            self.lose(off, ts_ns, out);
        }
        self.deliver(out);
    }

    fn lose(&mut self, to: u64, ts_ns: u64, out: &mut Vec<Piece<'_>>) {
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
    pub fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Piece<'_>>) {
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
    pub fn finish(&mut self, end: Option<u64>, ts_ns: u64, out: &mut Vec<Piece<'_>>) {
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
                Piece::Data { off, bytes, .. } => P::D(*off, bytes.to_vec()),
                Piece::Gap { off, len, kind, .. } => P::G(*off, *len, *kind),
            })
            .collect()
    }

    #[test]
    fn in_order_pieces_flow_through() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(0, 4, b"GET ", 1, &mut out);
        s.push(4, 2, b"/ ", 2, &mut out);
        assert_eq!(strip(&out), vec![data(0, b"GET "), data(4, b"/ ")]);
        assert_eq!(s.stats.bytes, 6);
        assert_eq!(s.stats.captured, 6);
    }

    #[test]
    fn pieces_in_order_borrow_their_bytes_and_pieces_that_waited_own_them() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        let (first, second, third) = (b"GET ".to_vec(), b"/ ".to_vec(), b"HTTP".to_vec());
        s.push(0, 4, &first, 1, &mut out);
        s.push(6, 4, &third, 2, &mut out);
        s.push(4, 2, &second, 3, &mut out);
        let owned: Vec<bool> = out
            .iter()
            .map(|p| {
                matches!(
                    p,
                    Piece::Data {
                        bytes: Cow::Owned(_),
                        ..
                    }
                )
            })
            .collect();
        // The first went straight through; with a piece waiting, the one filling the hole is
        // put in order with it (both kept).
        assert_eq!(owned, [false, true, true]);
        assert!(
            matches!(&out[0], Piece::Data { bytes: Cow::Borrowed(b), .. } if b.as_ptr() == first.as_ptr())
        );
        assert_eq!(
            strip(&out),
            vec![data(0, b"GET "), data(4, b"/ "), data(6, b"HTTP")]
        );
        let kept = out[2].to_owned_piece();
        assert_eq!(kept, out[2]);
    }

    #[test]
    fn a_recycled_vector_of_pieces_keeps_its_allocation_and_holds_none() {
        let bytes = b"abc".to_vec();
        let mut v: Vec<Piece<'static>> = Vec::with_capacity(8);
        let at = v.as_ptr() as usize;
        v.push(gap_piece(0));
        let mut borrowed = recycle(v);
        assert!(borrowed.is_empty());
        borrowed.push(Piece::Data {
            off: 0,
            bytes: Cow::Borrowed(&bytes),
            ts_ns: 1,
        });
        let back: Vec<Piece<'static>> = recycle(borrowed);
        assert!(back.is_empty());
        assert_eq!(back.capacity(), 8);
        assert_eq!(back.as_ptr() as usize, at);
    }

    fn gap_piece(off: u64) -> Piece<'static> {
        Piece::Gap {
            off,
            len: 1,
            kind: GapKind::Lost,
            ts_ns: 0,
        }
    }

    #[test]
    fn out_of_order_pieces_are_reordered_by_offset() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(4, 2, b"/ ", 1, &mut out);
        assert!(out.is_empty());
        assert!(s.has_hole());
        s.push(0, 4, b"GET ", 2, &mut out);
        assert_eq!(strip(&out), vec![data(0, b"GET "), data(4, b"/ ")]);
        assert!(!s.has_hole());
    }

    #[test]
    fn uncaptured_tail_is_a_gap_of_exact_size() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(0, 10, b"abc", 1, &mut out);
        s.push(10, 1, b"z", 2, &mut out);
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

    /// sendfile's bytes are a gap of their own kind, also when they wait for a hole, and are
    /// written as uncaptured ones.
    #[test]
    fn uncopyable_bytes_keep_their_kind_through_a_hole() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push_kind(4, 6, b"", 2, GapKind::Uncopyable, &mut out);
        assert!(out.is_empty());
        s.push(0, 4, b"HEAD", 1, &mut out);
        assert_eq!(
            strip(&out),
            vec![data(0, b"HEAD"), gap(4, 6, GapKind::Uncopyable)]
        );
        assert_eq!(s.stats.uncaptured, 6);
        assert_eq!(
            serde_json::to_string(&GapKind::Uncopyable).unwrap(),
            "\"uncaptured\""
        );
    }

    #[test]
    fn hole_expires_into_a_lost_gap_and_the_stream_goes_on() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(0, 2, b"ab", 10, &mut out);
        s.push(5, 2, b"fg", 20, &mut out);
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
        s.push(2, 3, b"cde", 30, &mut out);
        assert!(out.is_empty());
        assert_eq!(s.stats.duplicate, 3);
    }

    #[test]
    fn finish_reports_the_lost_tail_up_to_the_kernel_offset() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(0, 3, b"abc", 1, &mut out);
        s.push(6, 1, b"g", 2, &mut out);
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
        s.push(0, 4, b"abcd", 1, &mut out);
        s.push(2, 4, b"cdef", 2, &mut out);
        assert_eq!(strip(&out), vec![data(0, b"abcd"), data(4, b"ef")]);
        assert_eq!(s.stats.duplicate, 2);
    }

    #[test]
    fn too_much_held_data_gives_up_on_the_hole() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        s.push(1, MAX_HELD_BYTES + 1, &[], 1, &mut out);
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
