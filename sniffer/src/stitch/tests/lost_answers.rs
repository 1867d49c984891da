//! Answers that went missing with lost bytes: the exchange is written without one as soon as
//! that is known, not held until its connection ends (a pooled connection can live for hours).
use super::*;
use crate::stream::GapKind;

impl World {
    /// `len` bytes on connection `c` in direction `dir` that the kernel lost.
    fn lost(&mut self, c: u64, dir: Dir, ts: u64, len: usize) {
        let off = self.off.entry((c, dir.index())).or_insert(0);
        let p = Piece::Gap {
            off: *off,
            len: len as u64,
            kind: GapKind::Lost,
            ts_ns: ts,
        };
        *off += len as u64;
        let conn = &self.conns[(c - 1) as usize];
        self.http.pieces(conn, dir, &[p], &self.procs);
    }

    /// The exchanges handed to the per-exchange sinks so far: (URL, status, unanswered).
    fn done(&self) -> Vec<(String, Option<u64>, bool)> {
        self.http
            .sink
            .sink
            .records
            .iter()
            .map(|r| {
                (
                    r["url"].as_str().unwrap_or("").to_owned(),
                    r["status"].as_u64(),
                    r["unanswered"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }
}

const IMAGES_URL: &str = "http://127.0.0.1:9292/v2/images";
const IMAGE_URL: &str = "http://127.0.0.1:9292/v2/images/1";
const SECOND: &[u8] = b"GET /v2/images/1 HTTP/1.1\r\nHost: 127.0.0.1:9292\r\n\r\n";
const SECOND_OK: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

#[test]
fn an_answer_lost_on_the_only_view_writes_the_exchange_unanswered_while_the_connection_lives() {
    let mut w = World::new(None);
    w.bytes(1, Dir::Send, 10, IMAGES);
    w.lost(1, Dir::Recv, 20, IMAGES_OK.len());
    w.bytes(1, Dir::Send, 30, SECOND);
    w.bytes(1, Dir::Recv, 40, SECOND_OK);
    w.tick(1000);
    assert_eq!(
        w.done(),
        vec![
            (IMAGES_URL.to_owned(), None, true),
            (IMAGE_URL.to_owned(), Some(204), false)
        ]
    );
    assert_eq!(w.http.sink.exchanges.len(), 0, "nothing held");
    assert_eq!(
        w.http.sink.stats.answers_missing, 1,
        "counted for the summary"
    );
}

#[test]
fn an_answer_one_end_lost_comes_from_the_other_end_and_one_both_lost_is_unanswered() {
    for other_lost_too in [false, true] {
        let mut w = World::new(None);
        w.bytes(1, Dir::Send, 10, IMAGES);
        w.bytes(2, Dir::Recv, 11, IMAGES);
        // The client's view of the answer lost first: the server's may still bring it.
        w.lost(1, Dir::Recv, 21, IMAGES_OK.len());
        w.bytes(1, Dir::Send, 30, SECOND);
        w.bytes(1, Dir::Recv, 41, SECOND_OK);
        w.tick(35);
        assert!(w.done().is_empty(), "the server's view may bring it");
        if other_lost_too {
            w.lost(2, Dir::Send, 20, IMAGES_OK.len());
        } else {
            w.bytes(2, Dir::Send, 20, IMAGES_OK);
        }
        w.bytes(2, Dir::Recv, 31, SECOND);
        w.bytes(2, Dir::Send, 40, SECOND_OK);
        w.tick(1000);
        let first = if other_lost_too {
            (IMAGES_URL.to_owned(), None, true)
        } else {
            (IMAGES_URL.to_owned(), Some(200), false)
        };
        assert_eq!(
            w.done(),
            vec![first, (IMAGE_URL.to_owned(), Some(204), false)],
            "the server's view lost it too: {other_lost_too}"
        );
        assert_eq!(w.http.sink.stats.answers_missing, u64::from(other_lost_too));
    }
}
