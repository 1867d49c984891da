//! Causal order: every message waits in a queue at the kernel time of its first byte and is
//! written once it is complete and nothing that began before it can still arrive.
use super::{LogSink, MAX_QUEUED, Stitcher, Which};
use crate::exchange::MsgKey;
use crate::procs::ProcTable;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Item {
    Msg(u64, Which),
    /// A response whose first byte came; its exchange is known at its end.
    Pending(MsgKey),
}

impl<L: LogSink> Stitcher<L> {
    pub(super) fn enqueue(&mut self, ts: u64, item: Item) {
        if ts < self.written_to {
            // Its events came after messages that began later were written.
            self.stats.out_of_order += 1;
        }
        self.next_seq += 1;
        let pos = (ts, self.next_seq);
        self.queue.insert(pos, item);
        self.position.insert(item, pos);
    }

    pub(super) fn dequeue(&mut self, item: Item) -> Option<(u64, u64)> {
        let pos = self.position.remove(&item)?;
        self.queue.remove(&pos);
        Some(pos)
    }

    /// A message's first byte came: how far behind the latest one placed (the ring holds
    /// records in the order they were reserved, not of their kernel times).
    pub(super) fn placed(&mut self, ts: u64) {
        self.stats.reorder_ns = self.stats.reorder_ns.max(self.newest.saturating_sub(ts));
        self.newest = self.newest.max(ts);
    }

    /// Writes what is ready: messages at the front of the order that are complete and older
    /// than the slack (all of them when `force`).
    pub(super) fn release(&mut self, force_all: bool, procs: &ProcTable) {
        while let Some((&(ts, _), &item)) = self.queue.first_key_value() {
            let crowded = self.queue.len() > MAX_QUEUED;
            let force = force_all || crowded;
            if !force && ts.saturating_add(self.slack_ns) > self.now {
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
