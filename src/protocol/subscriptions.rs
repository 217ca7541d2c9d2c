//! Which channels the server has confirmed, so they can be restored after a reconnect.
//!
//! A channel is tracked when the server *confirms* it, not when it is asked
//! for: a subscription the server refused must not be replayed on every
//! reconnect. The connection thread tells the tracker what it sent
//! ([`requested`](SubscriptionTracker::requested)) and what came back
//! ([`confirmed`](SubscriptionTracker::confirmed)); after a reconnect it sends
//! one message with [`restore_plan`](SubscriptionTracker::restore_plan).
//!
//! ```
//! use zen_websocket::protocol::jsonrpc::RequestId;
//! use zen_websocket::protocol::subscriptions::SubscriptionTracker;
//!
//! let mut subs = SubscriptionTracker::new();
//! let channels = vec!["ticker.BTC-PERPETUAL.raw".to_string(), "bogus".to_string()];
//! subs.requested(&channels, RequestId::Number(7));
//! assert_eq!(subs.restore_plan(), None); // nothing confirmed yet
//!
//! // The server confirmed only one of them:
//! subs.confirmed(&RequestId::Number(7), Some(vec!["ticker.BTC-PERPETUAL.raw".into()]));
//! assert_eq!(subs.restore_plan(), Some(vec!["ticker.BTC-PERPETUAL.raw".to_string()]));
//! ```

use std::collections::{HashMap, HashSet};

use super::jsonrpc::RequestId;

/// Whether a pending request adds or removes channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Subscribe,
    Unsubscribe,
}

/// The tracked (confirmed) channels, in the order they were first confirmed,
/// without duplicates, plus the subscribe and unsubscribe requests still
/// waiting for their confirmation.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionTracker {
    // Insertion order is kept (a Vec) because a restore should ask for the
    // channels in the order the user did; the set makes lookups O(1) for
    // clients with thousands of channels.
    order: Vec<String>,
    tracked: HashSet<String>,
    pending: HashMap<RequestId, (Op, Vec<String>)>,
}

impl SubscriptionTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        SubscriptionTracker::default()
    }

    /// A subscribe request `id` asking for `channels` was sent.
    pub fn requested(&mut self, channels: &[String], id: RequestId) {
        self.pending.insert(id, (Op::Subscribe, channels.to_vec()));
    }

    /// An unsubscribe request `id` for `channels` was sent; they are untracked
    /// when it is confirmed.
    pub fn requested_unsubscribe(&mut self, channels: &[String], id: RequestId) {
        self.pending
            .insert(id, (Op::Unsubscribe, channels.to_vec()));
    }

    /// The request `id` succeeded. Returns the channels it confirmed (tracked
    /// now, whether or not they were before) or untracked, or
    /// `None` when `id` is not a pending subscribe or unsubscribe request (so
    /// the caller can tell a subscription confirmation from other responses).
    ///
    /// For a subscribe, `confirmed_channels` (what the server listed, see
    /// [`Protocol::confirmed_channels`](crate::protocol::Protocol::confirmed_channels))
    /// is tracked when given, else every requested channel. For an
    /// unsubscribe, the *requested* channels are untracked whatever the server
    /// listed: the user asked to drop them, and venues differ on whether the
    /// list means "removed" or "still subscribed".
    pub fn confirmed(
        &mut self,
        id: &RequestId,
        confirmed_channels: Option<Vec<String>>,
    ) -> Option<Vec<String>> {
        let (op, requested) = self.pending.remove(id)?;
        match op {
            Op::Subscribe => {
                let channels = confirmed_channels.unwrap_or(requested);
                for c in &channels {
                    self.track(c);
                }
                Some(channels)
            }
            Op::Unsubscribe => {
                self.unsubscribed(&requested);
                Some(requested)
            }
        }
    }

    /// The request `id` failed (error response, timeout, disconnect): forget it
    /// without tracking anything. True when it was pending.
    pub fn failed(&mut self, id: &RequestId) -> bool {
        self.pending.remove(id).is_some()
    }

    /// Forget every pending request (their answers will never come after a
    /// disconnect). Tracked channels stay, for the restore.
    pub fn clear_pending(&mut self) {
        self.pending.clear();
    }

    /// True when `id` is a subscribe or unsubscribe request waiting for its answer.
    pub fn is_pending(&self, id: &RequestId) -> bool {
        self.pending.contains_key(id)
    }

    /// Stop tracking `channels` (unknown ones are ignored).
    pub fn unsubscribed(&mut self, channels: &[String]) {
        let mut removed = false;
        for c in channels {
            removed |= self.tracked.remove(c);
        }
        if removed {
            let tracked = &self.tracked;
            self.order.retain(|c| tracked.contains(c));
        }
    }

    /// The tracked channels, in the order first confirmed.
    pub fn channels(&self) -> Vec<String> {
        self.order.clone()
    }

    /// True when `channel` is tracked.
    pub fn contains(&self, channel: &str) -> bool {
        self.tracked.contains(channel)
    }

    /// How many channels are tracked.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no channel is tracked.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Every tracked channel, for the one restore message after a reconnect;
    /// `None` when there is nothing to restore.
    ///
    /// The channels stay tracked while the restore is in flight: send it with
    /// [`requested`](Self::requested), and a channel the server no longer
    /// confirms stays tracked for the next reconnect rather than being
    /// silently dropped (the user may be told through the response).
    pub fn restore_plan(&self) -> Option<Vec<String>> {
        if self.order.is_empty() {
            None
        } else {
            Some(self.order.clone())
        }
    }

    /// Forget everything: tracked channels and pending requests.
    pub fn clear(&mut self) {
        self.order.clear();
        self.tracked.clear();
        self.pending.clear();
    }

    fn track(&mut self, channel: &str) {
        if self.tracked.insert(channel.to_owned()) {
            self.order.push(channel.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn id(n: u64) -> RequestId {
        RequestId::Number(n)
    }

    #[test]
    fn a_channel_is_tracked_only_once_the_server_confirms_it() {
        let mut t = SubscriptionTracker::new();
        t.requested(&v(&["a", "b"]), id(1));
        assert!(t.is_empty());
        assert!(t.is_pending(&id(1)));
        assert_eq!(t.confirmed(&id(1), None), Some(v(&["a", "b"])));
        assert_eq!(t.channels(), v(&["a", "b"]));
        assert!(!t.is_pending(&id(1)));
    }

    #[test]
    fn the_server_list_wins_over_the_requested_channels() {
        let mut t = SubscriptionTracker::new();
        t.requested(&v(&["a", "bad"]), id(1));
        t.confirmed(&id(1), Some(v(&["a"])));
        assert_eq!(t.channels(), v(&["a"]));
    }

    #[test]
    fn a_refused_subscription_is_never_tracked() {
        let mut t = SubscriptionTracker::new();
        t.requested(&v(&["a"]), id(1));
        assert!(t.failed(&id(1)));
        assert_eq!(t.confirmed(&id(1), None), None);
        assert_eq!(t.restore_plan(), None);
    }

    #[test]
    fn channels_stay_in_confirmation_order_without_duplicates() {
        let mut t = SubscriptionTracker::new();
        t.requested(&v(&["c", "a"]), id(1));
        t.requested(&v(&["a", "b", "c"]), id(2));
        t.confirmed(&id(1), None);
        t.confirmed(&id(2), None);
        assert_eq!(t.channels(), v(&["c", "a", "b"]));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn unsubscribing_untracks_and_keeps_the_order_of_the_rest() {
        let mut t = SubscriptionTracker::new();
        t.requested(&v(&["a", "b", "c"]), id(1));
        t.confirmed(&id(1), None);
        t.unsubscribed(&v(&["b", "unknown"]));
        assert_eq!(t.channels(), v(&["a", "c"]));
        assert!(!t.contains("b"));
    }

    #[test]
    fn a_confirmed_unsubscribe_untracks_what_was_requested() {
        let mut t = SubscriptionTracker::new();
        t.requested(&v(&["a", "b"]), id(1));
        t.confirmed(&id(1), None);
        t.requested_unsubscribe(&v(&["a"]), id(2));
        assert_eq!(
            t.channels(),
            v(&["a", "b"]),
            "untracked only once confirmed"
        );
        // Whatever the server lists (here: what is left), "a" goes.
        assert_eq!(t.confirmed(&id(2), Some(v(&["b"]))), Some(v(&["a"])));
        assert_eq!(t.channels(), v(&["b"]));
    }

    #[test]
    fn the_restore_plan_is_one_list_of_every_tracked_channel() {
        let mut t = SubscriptionTracker::new();
        assert_eq!(t.restore_plan(), None);
        t.requested(&v(&["a"]), id(1));
        t.requested(&v(&["b"]), id(2));
        t.confirmed(&id(1), None);
        t.confirmed(&id(2), None);
        assert_eq!(t.restore_plan(), Some(v(&["a", "b"])));
    }

    #[test]
    fn a_disconnect_forgets_pending_requests_but_keeps_tracked_channels() {
        let mut t = SubscriptionTracker::new();
        t.requested(&v(&["a"]), id(1));
        t.confirmed(&id(1), None);
        t.requested(&v(&["b"]), id(2));
        t.clear_pending();
        assert_eq!(t.confirmed(&id(2), None), None);
        assert_eq!(t.restore_plan(), Some(v(&["a"])));
    }

    #[test]
    fn a_restore_that_is_partly_refused_keeps_every_channel_for_next_time() {
        let mut t = SubscriptionTracker::new();
        t.requested(&v(&["a", "b"]), id(1));
        t.confirmed(&id(1), None);
        let plan = t.restore_plan().unwrap();
        t.requested(&plan, id(2));
        t.confirmed(&id(2), Some(v(&["a"])));
        assert_eq!(t.channels(), v(&["a", "b"]));
    }

    #[test]
    fn clear_forgets_everything() {
        let mut t = SubscriptionTracker::new();
        t.requested(&v(&["a"]), id(1));
        t.confirmed(&id(1), None);
        t.requested(&v(&["b"]), id(2));
        t.clear();
        assert!(t.is_empty());
        assert!(!t.is_pending(&id(2)));
        assert_eq!(t.restore_plan(), None);
    }

    #[test]
    fn an_unknown_response_id_is_not_a_confirmation() {
        let mut t = SubscriptionTracker::new();
        assert_eq!(t.confirmed(&id(5), Some(v(&["a"]))), None);
        assert!(t.is_empty());
    }
}
