//! Written exchanges kept for a view still to come.
//!
//! With both ends traced, one end's view of a message can come long after the other's: a
//! client that reads its response seconds after the server wrote it (busy elsewhere, a loaded
//! host, a body streamed to disk) delivers its view of the response then. By that time the
//! exchange was written from the server's view. It stays, slimmed, until that view comes (and
//! joins it: nothing is written again), or that end's connection ends, or [`MAX_LATE`] newer
//! ones push it out; never by age.
use super::{Exchange, LogSink, Stitcher};
use crate::http::message::Message;

/// Written exchanges with both ends kept for one end's late view, at most (the oldest go first;
/// a view that comes after that is an orphan).
pub const MAX_LATE: usize = 8192;

impl<L: LogSink> Stitcher<L> {
    /// Whether one end of written exchange `e`, seen from both ends, has yet to bring the
    /// response it will bring: its connection is live and its view of the response has not
    /// come.
    fn awaits_late_view(&self, e: &Exchange) -> bool {
        let (Some(c), Some(s)) = (&e.client, &e.server) else {
            return false;
        };
        e.written[1]
            && [c.conn, s.conn].iter().any(|id| {
                !e.answered_by.contains(id) && self.conns.get(id).is_some_and(|i| i.ended.is_none())
            })
    }

    /// Exchange `x` was just written whole: keep it while a view of it may still come, else
    /// forget it. Both ends seen: until the late end's view of the response comes. One end
    /// seen: while a traced other end may still be stitched to it (for a moment, see
    /// `expire`).
    pub(super) fn keep_or_forget(&mut self, x: u64) {
        let Some(e) = self.exchanges.get(&x) else {
            return;
        };
        let one_view_done = e
            .done_at
            .filter(|_| e.client.is_none() || e.server.is_none());
        let keep = match (&e.client, &e.server) {
            (Some(_), Some(_)) => {
                let late = self.awaits_late_view(e);
                if late {
                    self.keep_late(x);
                }
                late
            }
            (Some(v), None) | (None, Some(v)) => self
                .conns
                .get(&v.conn)
                .is_some_and(|info| !self.peer_conns(info).is_empty()),
            (None, None) => false,
        };
        if !keep {
            self.forget(x);
        } else if let Some(t) = one_view_done {
            // `expire` forgets it after a while.
            self.done.push_back((t, x));
        }
    }

    /// Keeps written exchange `x` for a late view: what is needed to join it (its keys and
    /// views) stays, the header fields go.
    fn keep_late(&mut self, x: u64) {
        if let Some(e) = self.exchanges.get_mut(&x)
            && let Some(h) = e.head.as_mut()
        {
            *h = std::sync::Arc::new(crate::http::head::Head {
                start: h.start.clone(),
                headers: Default::default(),
                len: h.len,
                cgi: Vec::new(),
            });
        }
        self.late.push_back(x);
        while self.late.len() > MAX_LATE {
            if let Some(old) = self.late.pop_front()
                && self
                    .exchanges
                    .get(&old)
                    .is_some_and(|e| e.done_at.is_some())
            {
                tracing::debug!(x = old, "late view no longer awaited: too many kept");
                self.forget(old);
            }
        }
    }

    /// A kept exchange whose awaited view can no longer come (its connection ended) goes.
    pub(super) fn recheck_late(&mut self, x: u64) {
        let Some(e) = self.exchanges.get(&x) else {
            return;
        };
        if e.done_at.is_some()
            && e.client.is_some()
            && e.server.is_some()
            && !self.awaits_late_view(e)
        {
            self.forget(x);
        }
    }

    /// One end's view of the response of written exchange `x` came late: it joins the
    /// exchange, which was written from the other end's view. Nothing is written again.
    pub(super) fn late_response(&mut self, x: u64, conn: u64, msg: Message) {
        let Some(e) = self.exchanges.get_mut(&x) else {
            return;
        };
        tracing::debug!(
            x,
            conn,
            late_ns = msg
                .first_ts
                .saturating_sub(e.response_ts.unwrap_or(msg.first_ts)),
            "a late view of a written response joins its exchange"
        );
        if !e.answered_by.contains(&conn) {
            e.answered_by.push(conn);
        }
        drop(msg);
        self.recheck_late(x);
    }
}
