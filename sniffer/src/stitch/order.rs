//! Causal order: every message waits in a queue at the kernel time of its first byte and is
//! written once it is complete and nothing that began before it can still arrive.
use std::collections::VecDeque;

use foldhash::HashMap;

use super::{LogSink, MAX_ORDER_SLACK_NS, MAX_QUEUED_BYTES, MIN_ORDER_SLACK_NS, Stitcher, Which};
use crate::exchange::MsgKey;
use crate::http::message::Message;
use crate::procs::ProcTable;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Item {
    Msg(u64, Which),
    /// A response whose first byte came; its exchange is known at its end.
    Pending(MsgKey),
}

/// A place in the order: the kernel time of the first byte, then the order of arrival.
type Place = (u64, u64);

/// The messages waiting for their place, sorted. First bytes come nearly in order (a ring
/// record is at most tens of microseconds behind the newest), so a place is found from the
/// back and the queue is a sorted deque, not a tree (a tree allocated and rebalanced for every
/// message). A message taken out before its turn leaves a hole, skipped once it is at the
/// front; the front is never a hole.
#[derive(Debug, Default)]
pub(super) struct Order {
    slots: VecDeque<(Place, Option<Item>)>,
    /// Each waiting message's place and weight (what it holds in memory, roughly).
    places: HashMap<Item, (Place, usize)>,
    next_seq: u64,
    /// The waiting messages' weights summed.
    weight: usize,
}

/// What a waiting message holds besides its bytes, roughly: its exchange's box (shared by the
/// two messages), map entries, names (measured: ~1.3 KiB of RSS per waiting keep-alive
/// message of ~400 bytes).
const MESSAGE_OVERHEAD: usize = 1024;

/// A waiting message's weight: `msg`'s head and kept body bytes, once it came.
pub(super) fn weight(msg: Option<&Message>) -> usize {
    MESSAGE_OVERHEAD
        + msg.map_or(0, |m| {
            m.head.len + m.body.preview.capacity() + m.trailers.iter().map(Vec::len).sum::<usize>()
        })
}

/// The slack is this many times the furthest a first byte came late.
const LATE_FACTOR: u64 = 4;
/// How long a first byte's lateness counts for the slack: this window of kernel time and the
/// one before it.
const LATE_WINDOW_NS: u64 = 2_000_000_000;

/// How long after its first byte a message's place is final: [`LATE_FACTOR`] times the
/// furthest a first byte came behind the latest one placed, over the last 2-4 s, within
/// [`MIN_ORDER_SLACK_NS`] and [`MAX_ORDER_SLACK_NS`]; the longest in a run's first 2 s, before
/// anything is known, and while TLS plaintext flows (see `Stitcher::tls_plaintext`). Late first
/// bytes come from a thread preempted between its timestamp and its ring record (tens of
/// microseconds), or from a TLS write, whose record carries the time its call began and comes
/// at its return (milliseconds when the writer is preempted inside the call on a busy host,
/// longer when the call blocks). Never shorter than the time another process takes to read
/// what was sent to it (see [`MIN_ORDER_SLACK_NS`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Slack {
    min_ns: u64,
    max_ns: u64,
    /// The furthest a first byte came late in the window before this one, and in this one.
    late_ns: [u64; 2],
    /// Kernel time this window began (`None`: nothing placed yet).
    window_from: Option<u64>,
}

impl Default for Slack {
    fn default() -> Self {
        Self {
            min_ns: MIN_ORDER_SLACK_NS,
            max_ns: MAX_ORDER_SLACK_NS,
            // Nothing known: the longest, through the first window.
            late_ns: [u64::MAX, 0],
            window_from: None,
        }
    }
}

impl Slack {
    /// A slack that does not follow lateness.
    #[cfg(test)]
    pub(super) fn fixed(ns: u64) -> Self {
        Self {
            min_ns: ns,
            max_ns: ns,
            ..Self::default()
        }
    }

    pub(super) fn ns(&self) -> u64 {
        let late = self.late_ns[0].max(self.late_ns[1]);
        late.saturating_mul(LATE_FACTOR)
            .clamp(self.min_ns, self.max_ns)
    }

    /// A first byte came `late_ns` behind the latest one placed, `newest`.
    pub(super) fn saw(&mut self, newest: u64, late_ns: u64) {
        let from = *self.window_from.get_or_insert(newest);
        if newest >= from.saturating_add(LATE_WINDOW_NS) {
            let before = if newest >= from.saturating_add(2 * LATE_WINDOW_NS) {
                0
            } else {
                self.late_ns[1]
            };
            self.late_ns = [before, 0];
            self.window_from = Some(newest);
        }
        self.late_ns[1] = self.late_ns[1].max(late_ns);
    }
}

/// Slots kept allocated when the queue empties (a burst's are given back).
const KEEP_SLOTS: usize = 1 << 14;

impl Order {
    /// Messages waiting (holes not counted).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.places.len()
    }

    /// The waiting messages' weights summed.
    pub(super) fn weight(&self) -> usize {
        self.weight
    }

    pub(super) fn place_of(&self, item: Item) -> Option<Place> {
        self.places.get(&item).map(|&(place, _)| place)
    }

    /// A waiting message's weight is now `weight` (its bytes came).
    pub(super) fn weigh(&mut self, item: Item, weight: usize) {
        if let Some((_, w)) = self.places.get_mut(&item) {
            self.weight = self.weight - *w + weight;
            *w = weight;
        }
    }

    pub(super) fn first(&self) -> Option<(Place, Item)> {
        self.slots
            .front()
            .and_then(|&(place, item)| Some((place, item?)))
    }

    pub(super) fn insert(&mut self, ts: u64, item: Item, weight: usize) {
        self.next_seq += 1;
        let place = (ts, self.next_seq);
        self.weight += weight;
        if let Some((old, w)) = self.places.insert(item, (place, weight)) {
            self.weight -= w;
            self.hole(old);
        }
        let at = match self.slots.back() {
            Some((last, _)) if *last > place => self.slots.partition_point(|(p, _)| *p < place),
            _ => self.slots.len(),
        };
        self.slots.insert(at, (place, Some(item)));
    }

    pub(super) fn remove(&mut self, item: Item) -> Option<Place> {
        let (place, w) = self.places.remove(&item)?;
        self.weight -= w;
        self.hole(place);
        Some(place)
    }

    /// Empties the slot at `place`, and the holes that reach the front.
    fn hole(&mut self, place: Place) {
        // Mostly the front's own turn: no search.
        let at = if self.slots.front().is_some_and(|(p, _)| *p == place) {
            0
        } else {
            self.slots.partition_point(|(p, _)| *p < place)
        };
        if let Some(slot) = self.slots.get_mut(at)
            && slot.0 == place
        {
            slot.1 = None;
        }
        while self.slots.front().is_some_and(|(_, item)| item.is_none()) {
            self.slots.pop_front();
        }
        if self.slots.is_empty() && self.slots.capacity() > KEEP_SLOTS {
            self.slots.shrink_to(KEEP_SLOTS);
        }
    }
}

impl<L: LogSink> Stitcher<L> {
    /// Places `item` at `ts`, weighed by its exchange's message as it is now.
    pub(super) fn enqueue(&mut self, ts: u64, item: Item) {
        let w = match item {
            Item::Msg(x, which) => weight(self.exchanges.get(&x).and_then(|e| e.message(which))),
            Item::Pending(_) => weight(None),
        };
        self.enqueue_weighed(ts, item, w);
    }

    /// Places `item` at `ts` with weight `w` (a first byte: no message yet, no lookup).
    pub(super) fn enqueue_weighed(&mut self, ts: u64, item: Item, w: usize) {
        if ts < self.written_to {
            // Its events came after messages that began later were written.
            self.stats.out_of_order += 1;
        }
        self.order.insert(ts, item, w);
    }

    pub(super) fn dequeue(&mut self, item: Item) -> Option<Place> {
        self.order.remove(item)
    }

    /// A message's first byte came: how far behind the latest one placed (the ring holds
    /// records in the order they were reserved, not of their kernel times).
    pub(super) fn placed(&mut self, ts: u64) {
        let late = self.newest.saturating_sub(ts);
        self.stats.reorder_ns = self.stats.reorder_ns.max(late);
        self.newest = self.newest.max(ts);
        self.slack.saw(self.newest, late);
    }

    /// TLS plaintext came at kernel time `ts`: a TLS write's record carries the time its call
    /// began and comes at its return, as late as the call took (a blocking write waits for its
    /// peer to read), so the order keeps its longest slack while TLS traffic flows (for 2-4 s
    /// after the last of it).
    pub fn tls_plaintext(&mut self, ts: u64) {
        self.slack.saw(ts, u64::MAX);
    }

    /// Writes what is ready: messages at the front of the order that are complete and older
    /// than the slack (all of them when `force`).
    pub(super) fn release(&mut self, force_all: bool, procs: &ProcTable) {
        let slack = self.slack.ns();
        self.stats.slack_ns = self.stats.slack_ns.max(slack);
        while let Some(((ts, _), item)) = self.order.first() {
            let crowded = self.order.weight() > MAX_QUEUED_BYTES;
            let force = force_all || crowded;
            if !force && ts.saturating_add(slack) > self.now {
                break;
            }
            if crowded && !force_all {
                self.stats.forced += 1;
            }
            match item {
                Item::Pending(_) => {
                    if !force {
                        break;
                    }
                    self.dequeue(item);
                }
                Item::Msg(x, which) => {
                    let ready = self
                        .exchanges
                        .get(&x)
                        .is_some_and(|e| e.message(which).is_some());
                    if !ready && !force {
                        break;
                    }
                    self.dequeue(item);
                    self.written_to = ts;
                    if ready {
                        self.write(x, which, procs);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(x: u64) -> Item {
        Item::Msg(x, Which::Request)
    }

    /// Takes the queue out in order, as `release` does.
    fn drain(o: &mut Order) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Some(((ts, _), Item::Msg(x, _))) = o.first() {
            o.remove(msg(x));
            out.push((ts, x));
        }
        out
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn the_slack_follows_the_latest_lateness_within_its_bounds() {
        const W: u64 = LATE_WINDOW_NS;
        let mut s = Slack::default();
        assert_eq!(s.ns(), MAX_ORDER_SLACK_NS, "nothing known yet");
        // The first window keeps the longest; then what it saw counts.
        s.saw(W, 50_000);
        assert_eq!(s.ns(), MAX_ORDER_SLACK_NS);
        s.saw(2 * W, 0);
        assert_eq!(
            s.ns(),
            MIN_ORDER_SLACK_NS,
            "preempted threads: tens of microseconds"
        );
        // A first byte 3 ms late: four times that.
        s.saw(2 * W + MS, 3 * MS);
        assert_eq!(s.ns(), 12 * MS);
        // A TLS write preempted for a second: no longer than the bound.
        s.saw(2 * W + 2 * MS, 1_000 * MS);
        assert_eq!(s.ns(), MAX_ORDER_SLACK_NS);
        // It counts in its window and the next one (2-4 s), then no more.
        s.saw(3 * W + 3 * MS, 0);
        assert_eq!(s.ns(), MAX_ORDER_SLACK_NS);
        s.saw(4 * W + 4 * MS, 10_000);
        assert_eq!(s.ns(), MIN_ORDER_SLACK_NS);
        // After a quiet spell longer than both windows, only what comes then counts.
        s.saw(4 * W + 5 * MS, 4 * MS);
        assert_eq!(s.ns(), 16 * MS);
        s.saw(7 * W, 0);
        assert_eq!(s.ns(), MIN_ORDER_SLACK_NS);
        assert_eq!(Slack::fixed(100).ns(), 100);
    }

    #[test]
    fn late_first_bytes_take_their_place_and_ties_keep_arrival() {
        let mut o = Order::default();
        for (ts, x) in [(10, 1), (30, 2), (20, 3), (5, 4), (30, 5), (40, 6), (35, 7)] {
            o.insert(ts, msg(x), 1);
        }
        assert_eq!(o.len(), 7);
        assert_eq!(
            drain(&mut o),
            [(5, 4), (10, 1), (20, 3), (30, 2), (30, 5), (35, 7), (40, 6)]
        );
        assert_eq!(o.len(), 0);
        assert!(o.slots.is_empty());
    }

    #[test]
    fn a_message_taken_out_early_leaves_a_hole_the_front_skips() {
        let mut o = Order::default();
        for x in 1..=5 {
            o.insert(x * 10, msg(x), 1);
        }
        assert_eq!(o.remove(msg(3)), Some((30, 3)));
        assert_eq!(o.remove(msg(3)), None);
        assert_eq!(o.remove(msg(1)), Some((10, 1)));
        // The hole at 30 stays inside; the front moved past 10 to 20.
        assert_eq!(o.first(), Some(((20, 2), msg(2))));
        assert_eq!(o.len(), 3);
        o.remove(msg(2));
        // 20 gone, the hole at 30 reaches the front and goes with it.
        assert_eq!(o.first(), Some(((40, 4), msg(4))));
        assert_eq!(o.slots.len(), 2);
    }

    #[test]
    fn placing_a_waiting_message_again_moves_it() {
        let mut o = Order::default();
        o.insert(10, msg(1), 1);
        o.insert(20, msg(2), 1);
        o.insert(5, msg(2), 1);
        assert_eq!(o.place_of(msg(2)), Some((5, 3)));
        assert_eq!(o.len(), 2);
        assert_eq!(drain(&mut o), [(5, 2), (10, 1)]);
        assert!(o.slots.is_empty());
    }

    #[test]
    fn pending_and_messages_share_the_order() {
        let mut o = Order::default();
        let key = MsgKey {
            conn: 7,
            request: false,
            seq: 1,
            client_view: false,
        };
        o.insert(10, msg(1), 1);
        o.insert(12, Item::Pending(key), 1);
        o.insert(15, msg(2), 1);
        assert_eq!(o.remove(Item::Pending(key)), Some((12, 2)));
        o.insert(12, Item::Msg(1, Which::Response), 1);
        let order: Vec<Item> = o.slots.iter().filter_map(|(_, i)| *i).collect();
        assert_eq!(order, [msg(1), Item::Msg(1, Which::Response), msg(2)]);
    }
}
