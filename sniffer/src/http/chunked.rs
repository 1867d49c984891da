//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally: any split of the bytes
//! across calls gives the same result.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```

/// Longest chunk-size line or trailer line we accept (size, extensions, CRLF).
pub const MAX_LINE: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line (kept in `line`).
    Size,
    /// In chunk data, with this many bytes left.
    Data(u64),
    /// The CRLF after chunk data; the number says how many of its 2 bytes were seen.
    DataEnd(u8),
    /// Reading trailer lines after the last chunk; an empty line ends the body.
    Trailer,
    Done,
}

/// What feeding bytes produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input consumed (the rest belongs to the next message when `done`).
    pub consumed: usize,
    /// Ranges of the input that are body data, in order.
    pub data: Vec<(usize, usize)>,
    /// The body ended (last chunk and trailers read).
    pub done: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("chunk size or trailer line too long")]
    LineTooLong,
    #[error("bytes missing where chunk framing was")]
    Gap,
}

#[derive(Clone, Debug)]
pub struct Chunked {
    state: State,
    line: Vec<u8>,
    /// Trailer fields, raw (`name: value` lines).
    pub trailers: Vec<Vec<u8>>,
    /// A line ended with a bare LF (accepted, RFC 9112 §2.2; the caller says so).
    pub bare_lf: bool,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

/// chunk-size = 1*HEXDIG, then optional `;ext` (RFC 9112 §7.1.1: extensions are ignored when not
/// understood), from a line without its CRLF.
fn parse_size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let size = line.split(|&b| b == b';').next().unwrap_or_default();
    let size = size.trim_ascii();
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(ChunkError::Size);
    }
    let s = std::str::from_utf8(size).map_err(|_| ChunkError::Size)?;
    u64::from_str_radix(s, 16).map_err(|_| ChunkError::Size)
}

impl Chunked {
    pub const fn new() -> Self {
        Self {
            state: State::Size,
            line: Vec::new(),
            trailers: Vec::new(),
            bare_lf: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of chunk data still expected in the current chunk (0 outside data).
    pub const fn data_left(&self) -> u64 {
        match self.state {
            State::Data(n) => n,
            _ => 0,
        }
    }

    /// Collects a line into `self.line`; returns the line (without CRLF) when it is complete.
    fn take_line(&mut self, input: &[u8], i: &mut usize) -> Result<Option<Vec<u8>>, ChunkError> {
        let rest = &input[*i..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                self.line.extend_from_slice(&rest[..nl]);
                *i += nl + 1;
                if self.line.len() > MAX_LINE {
                    return Err(ChunkError::LineTooLong);
                }
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                } else {
                    self.bare_lf = true;
                }
                Ok(Some(line))
            }
            None => {
                self.line.extend_from_slice(rest);
                *i = input.len();
                if self.line.len() > MAX_LINE {
                    return Err(ChunkError::LineTooLong);
                }
                Ok(None)
            }
        }
    }

    /// Feeds bytes; stops at the end of the body.
    pub fn feed(&mut self, input: &[u8]) -> Result<Fed, ChunkError> {
        let mut fed = Fed::default();
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            match self.state {
                State::Size => {
                    if let Some(line) = self.take_line(input, &mut i)? {
                        let n = parse_size_line(&line)?;
                        self.state = if n == 0 {
                            State::Trailer
                        } else {
                            State::Data(n)
                        };
                    }
                }
                State::Data(left) => {
                    let n = (left.min((input.len() - i) as u64)) as usize;
                    fed.data.push((i, i + n));
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd(0)
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd(seen) => {
                    let want: &[u8] = if seen == 0 { b"\r" } else { b"\n" };
                    if input[i] == want[0] {
                        i += 1;
                        self.state = if seen == 0 {
                            State::DataEnd(1)
                        } else {
                            State::Size
                        };
                    } else if seen == 0 && input[i] == b'\n' {
                        // A bare LF ends the line too (RFC 9112 §2.2 lets recipients accept it).
                        i += 1;
                        self.bare_lf = true;
                        self.state = State::Size;
                    } else {
                        return Err(ChunkError::DataEnd);
                    }
                }
                State::Trailer => {
                    if let Some(line) = self.take_line(input, &mut i)? {
                        if line.is_empty() {
                            self.state = State::Done;
                        } else {
                            self.trailers.push(line);
                        }
                    }
                }
                State::Done => {}
            }
        }
        fed.consumed = i;
        fed.done = self.state == State::Done;
        Ok(fed)
    }

    /// Bytes missing from the stream: fine inside chunk data (skipped by count), fatal to the
    /// framing anywhere else. Returns how many of `len` fell in data.
    pub fn skip(&mut self, len: u64) -> Result<(), ChunkError> {
        match self.state {
            State::Data(left) if len <= left => {
                let left = left - len;
                self.state = if left == 0 {
                    State::DataEnd(0)
                } else {
                    State::Data(left)
                };
                Ok(())
            }
            _ => Err(ChunkError::Gap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in the given pieces; returns (body, consumed, done).
    fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut body = Vec::new();
        let mut consumed = 0;
        let mut done = false;
        for p in pieces {
            let fed = c.feed(p)?;
            for (a, b) in fed.data {
                body.extend_from_slice(&p[a..b]);
            }
            consumed += fed.consumed;
            done = fed.done;
            if done {
                break;
            }
        }
        Ok((body, consumed, done))
    }

    const BODY: &[u8] = b"4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0;last\r\nExpires: never\r\nX-Sum: 1\r\n\r\nNEXT";

    #[test]
    fn extensions_and_trailers() {
        let mut c = Chunked::new();
        let fed = c.feed(BODY).unwrap();
        let body: Vec<u8> = fed
            .data
            .iter()
            .flat_map(|&(a, b)| BODY[a..b].to_vec())
            .collect();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert!(fed.done);
        assert_eq!(
            &BODY[fed.consumed..],
            b"NEXT",
            "stops at the end of the body"
        );
        assert_eq!(
            c.trailers,
            vec![b"Expires: never".to_vec(), b"X-Sum: 1".to_vec()]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_body() {
        let whole = &BODY[..BODY.len() - 4];
        for cut in 0..=whole.len() {
            let (body, consumed, done) = decode(&[&whole[..cut], &whole[cut..]]).unwrap();
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.", "cut {cut}");
            assert_eq!(consumed, whole.len(), "cut {cut}");
            assert!(done);
        }
    }

    #[test]
    fn byte_at_a_time() {
        let whole = &BODY[..BODY.len() - 4];
        let pieces: Vec<&[u8]> = whole.chunks(1).collect();
        let (body, _, done) = decode(&pieces).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert!(done);
    }

    #[test]
    fn bad_framing_is_an_error() {
        assert_eq!(decode(&[b"zz\r\n"]), Err(ChunkError::Size));
        assert_eq!(decode(&[b"3\r\nabcX"]), Err(ChunkError::DataEnd));
        assert_eq!(
            decode(&[&[b'1'; MAX_LINE + 2][..]]),
            Err(ChunkError::LineTooLong)
        );
        assert_eq!(decode(&[b"\r\n"]), Err(ChunkError::Size), "empty size line");
    }

    #[test]
    fn gaps_inside_data_are_skipped_by_count_elsewhere_fatal() {
        let mut c = Chunked::new();
        let fed = c.feed(b"a\r\n0123").unwrap();
        assert_eq!(fed.data, vec![(3, 7)]);
        assert_eq!(c.data_left(), 6);
        c.skip(6).unwrap();
        let fed = c.feed(b"\r\n0\r\n\r\n").unwrap();
        assert!(fed.done);
        let mut c = Chunked::new();
        c.feed(b"a\r\n").unwrap();
        assert_eq!(c.skip(11), Err(ChunkError::Gap), "past the chunk's end");
        let mut c = Chunked::new();
        assert_eq!(c.skip(1), Err(ChunkError::Gap), "in a size line");
    }
}
