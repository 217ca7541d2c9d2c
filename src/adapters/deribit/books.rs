//! Order-book sequence checking, as a plain data structure.
//!
//! Deribit's `book.{instrument}.{interval}` notifications carry a `change_id`;
//! the first one after a subscribe is a full book (`"type": "snapshot"`), and
//! every later one is a change whose `prev_change_id` names the `change_id`
//! of the change before it. A change whose `prev_change_id` is not the last
//! `change_id` seen means at least one change was lost: the local copy of the
//! book is wrong from then on, and only a fresh snapshot (a resubscribe)
//! repairs it. [`BookSequences`] remembers the last `change_id` per channel
//! and judges each notification; the protocol drives it from the connection
//! thread, so nothing here touches a socket or a clock.
//!
//! Grouped books (`book.{instrument}.{group}.{depth}.{interval}`) carry a
//! `change_id` but no `prev_change_id`: every notification is a whole book,
//! which this module treats as a snapshot, so they are never reported as gaps.

use std::collections::HashMap;

use serde_json::Value;

/// True for Deribit's order-book channels (`book.*`), the only ones checked.
pub(super) fn is_book_channel(channel: &str) -> bool {
    channel.starts_with("book.")
}

/// What to do with one book notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Deliver it: a snapshot, a change that follows the last one, or a
    /// notification that is not checked (not a sequenced book, or a channel
    /// with no known baseline).
    Deliver,
    /// A change that does not follow the last one: report the gap, do not
    /// deliver it, and resubscribe. The channel now waits for a snapshot.
    Gap {
        /// The last `change_id` seen: what `prev_change_id` should have been.
        expected: u64,
        /// The `prev_change_id` that came instead.
        received: u64,
    },
    /// A change while the channel waits for its snapshot (after a gap or a
    /// subscribe): it builds on a book we do not have, so it is dropped.
    Stale,
}

/// Where one channel's sequence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Subscribed (or resubscribing after a gap): changes are dropped until a snapshot.
    AwaitingSnapshot,
    /// In sequence: the last `change_id` delivered.
    At(u64),
}

/// The last `change_id` of every sequenced book channel.
///
/// A channel enters when it is subscribed ([`subscribing`](Self::subscribing))
/// or when its first snapshot arrives, and leaves when it is unsubscribed;
/// [`clear`](Self::clear) forgets everything (a new connection starts over,
/// each subscription with its own snapshot).
#[derive(Debug, Default)]
pub(super) struct BookSequences {
    channels: HashMap<String, Sync>,
}

impl BookSequences {
    /// A subscribe for `channel` is about to be sent: its first notification
    /// will be a snapshot. A channel already in sequence keeps its place, since
    /// a duplicate subscribe is not guaranteed to bring a new snapshot and
    /// waiting for one could then drop its changes forever.
    pub(super) fn subscribing(&mut self, channel: &str) {
        if is_book_channel(channel) {
            self.channels
                .entry(channel.to_owned())
                .or_insert(Sync::AwaitingSnapshot);
        }
    }

    /// An unsubscribe for `channel` is about to be sent: forget it. Changes
    /// still in flight are delivered unchecked, like any other channel's data.
    pub(super) fn unsubscribed(&mut self, channel: &str) {
        self.channels.remove(channel);
    }

    /// Forget every channel (a new connection).
    pub(super) fn clear(&mut self) {
        self.channels.clear();
    }

    /// Judge one notification on `channel` and move its sequence on.
    pub(super) fn check(&mut self, channel: &str, data: &Value) -> Verdict {
        if !is_book_channel(channel) {
            return Verdict::Deliver;
        }
        let Some(change_id) = data.get("change_id").and_then(Value::as_u64) else {
            return Verdict::Deliver;
        };
        let prev = data
            .get("prev_change_id")
            .and_then(Value::as_u64)
            .filter(|_| data.get("type").and_then(Value::as_str) != Some("snapshot"));
        let Some(prev) = prev else {
            // A whole book: the baseline from now on, whatever came before.
            self.channels
                .insert(channel.to_owned(), Sync::At(change_id));
            return Verdict::Deliver;
        };
        let Some(sync) = self.channels.get_mut(channel) else {
            // No snapshot known for this channel (it was never subscribed
            // through the protocol, or was just unsubscribed): nothing to check against.
            return Verdict::Deliver;
        };
        match *sync {
            Sync::AwaitingSnapshot => Verdict::Stale,
            Sync::At(last) if last == prev => {
                *sync = Sync::At(change_id);
                Verdict::Deliver
            }
            Sync::At(last) => {
                *sync = Sync::AwaitingSnapshot;
                Verdict::Gap {
                    expected: last,
                    received: prev,
                }
            }
        }
    }

    /// How many channels are followed (for tests and `Debug`).
    pub(super) fn len(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOOK: &str = "book.BTC-PERPETUAL.100ms";

    fn snapshot(change_id: u64) -> Value {
        json!({"type": "snapshot", "change_id": change_id, "bids": [], "asks": []})
    }

    fn change(prev: u64, change_id: u64) -> Value {
        json!({"type": "change", "prev_change_id": prev, "change_id": change_id, "bids": [], "asks": []})
    }

    #[test]
    fn changes_that_follow_the_snapshot_are_delivered() {
        let mut b = BookSequences::default();
        b.subscribing(BOOK);
        assert_eq!(b.check(BOOK, &snapshot(10)), Verdict::Deliver);
        assert_eq!(b.check(BOOK, &change(10, 11)), Verdict::Deliver);
        assert_eq!(b.check(BOOK, &change(11, 15)), Verdict::Deliver);
    }

    #[test]
    fn a_skipped_change_is_a_gap_and_later_changes_wait_for_a_snapshot() {
        let mut b = BookSequences::default();
        b.subscribing(BOOK);
        b.check(BOOK, &snapshot(10));
        b.check(BOOK, &change(10, 11));
        assert_eq!(
            b.check(BOOK, &change(12, 13)),
            Verdict::Gap {
                expected: 11,
                received: 12
            }
        );
        // Changes building on the lost one are dropped, and no second gap is
        // reported: one resubscribe is in flight.
        assert_eq!(b.check(BOOK, &change(13, 14)), Verdict::Stale);
        assert_eq!(b.check(BOOK, &change(99, 100)), Verdict::Stale);
        assert_eq!(b.check(BOOK, &snapshot(14)), Verdict::Deliver);
        assert_eq!(b.check(BOOK, &change(14, 15)), Verdict::Deliver);
    }

    #[test]
    fn after_a_subscribe_changes_are_dropped_until_the_snapshot() {
        let mut b = BookSequences::default();
        b.subscribing(BOOK);
        assert_eq!(b.check(BOOK, &change(1, 2)), Verdict::Stale);
        assert_eq!(b.check(BOOK, &snapshot(2)), Verdict::Deliver);
    }

    #[test]
    fn a_duplicate_subscribe_keeps_the_sequence() {
        let mut b = BookSequences::default();
        b.subscribing(BOOK);
        b.check(BOOK, &snapshot(10));
        b.subscribing(BOOK);
        assert_eq!(b.check(BOOK, &change(10, 11)), Verdict::Deliver);
    }

    #[test]
    fn unsubscribe_and_clear_forget_the_channel() {
        let mut b = BookSequences::default();
        b.subscribing(BOOK);
        b.check(BOOK, &snapshot(10));
        b.unsubscribed(BOOK);
        assert_eq!(b.len(), 0);
        // In-flight changes of an unsubscribed channel are not checked.
        assert_eq!(b.check(BOOK, &change(50, 51)), Verdict::Deliver);
        b.subscribing(BOOK);
        b.check(BOOK, &snapshot(60));
        b.clear();
        assert_eq!(b.len(), 0);
        assert_eq!(b.check(BOOK, &change(70, 71)), Verdict::Deliver);
    }

    #[test]
    fn a_first_snapshot_starts_checking_even_without_a_subscribe() {
        let mut b = BookSequences::default();
        assert_eq!(b.check(BOOK, &snapshot(5)), Verdict::Deliver);
        assert_eq!(
            b.check(BOOK, &change(6, 7)),
            Verdict::Gap {
                expected: 5,
                received: 6
            }
        );
    }

    #[test]
    fn grouped_books_and_other_channels_are_never_gaps() {
        let mut b = BookSequences::default();
        let grouped = "book.BTC-PERPETUAL.none.10.100ms";
        b.subscribing(grouped);
        for id in [3, 9, 4] {
            let data = json!({"change_id": id, "bids": [], "asks": []});
            assert_eq!(b.check(grouped, &data), Verdict::Deliver);
        }
        let ticker = "ticker.BTC-PERPETUAL.100ms";
        b.subscribing(ticker);
        assert_eq!(b.check(ticker, &change(1, 9)), Verdict::Deliver);
        assert_eq!(b.len(), 1, "only book channels are followed");
        // Malformed ids are not checked either.
        b.subscribing(BOOK);
        for data in [
            json!({"change_id": "7", "prev_change_id": 6}),
            json!({"change_id": -1}),
            json!(null),
            json!([1, 2]),
        ] {
            assert_eq!(b.check(BOOK, &data), Verdict::Deliver, "{data}");
        }
    }

    #[test]
    fn a_snapshot_with_a_prev_change_id_is_still_a_snapshot() {
        let mut b = BookSequences::default();
        b.subscribing(BOOK);
        let data = json!({"type": "snapshot", "change_id": 8, "prev_change_id": 3});
        assert_eq!(b.check(BOOK, &data), Verdict::Deliver);
        assert_eq!(b.check(BOOK, &change(8, 9)), Verdict::Deliver);
    }
}
