//! The health table: what the router thread knows about each client, in a form
//! that callers of `send_balanced` read without a thread hop.
//!
//! Each row ([`Entry`]) pairs a [`Slot`] (one per pool client, for the life of
//! the pool) with the client's current incarnation (`None` while it is being
//! restarted or after supervision gave up). The router stores each client's
//! score in [`Slot::score`], an atomic that routing reads without a lock.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::health::DecayingCount;
use super::{ClientId, Supervision};
use crate::client::{Client, ConnectionState};
use crate::config::Config;

/// One pool client, for the life of the pool (across restarts).
///
/// Lock order: `view` and `errors` are taken after `Inner::table` (if at
/// all), never both at once, and never across I/O.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: ClientId,
    pub(crate) url: String,
    /// The configuration restarts connect with.
    pub(crate) config: Config,
    /// The routing score, stored by the router (0: never picked).
    pub(crate) score: AtomicU8,
    /// Recent errors, fed by the router (events) and by callers (failed
    /// balanced sends and requests).
    pub(crate) errors: Mutex<DecayingCount>,
    /// The router's last view of the client, as `Pool::health` reports it.
    pub(crate) view: Mutex<Snapshot>,
}

impl Slot {
    pub(crate) fn new(id: ClientId, config: Config, half_life: Duration) -> Slot {
        Slot {
            id,
            url: config.url(),
            config,
            score: AtomicU8::new(0),
            errors: Mutex::new(DecayingCount::new(half_life)),
            view: Mutex::new(Snapshot::default()),
        }
    }

    /// Count one error now.
    pub(crate) fn record_error(&self) {
        self.errors.lock().add(std::time::Instant::now());
    }
}

/// The router's last view of one client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) state: ConnectionState,
    pub(crate) supervision: Supervision,
    pub(crate) score: u8,
    pub(crate) pending: usize,
    pub(crate) rtt: Option<Duration>,
    pub(crate) rtt_p99: Option<Duration>,
    pub(crate) recent_errors: f64,
    pub(crate) restarts: u32,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            state: ConnectionState::Connecting,
            supervision: Supervision::Running,
            score: 0,
            pending: 0,
            rtt: None,
            rtt_p99: None,
            recent_errors: 0.0,
            restarts: 0,
        }
    }
}

/// One row of the table.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) slot: Arc<Slot>,
    /// The current incarnation; `None` while down.
    pub(crate) client: Option<Client>,
}

/// The rows, and whether the pool still takes clients.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) entries: Vec<Entry>,
    /// False once `shutdown` began: nothing may be added or installed.
    pub(crate) open: bool,
}

/// What routing found.
pub(crate) enum Pick {
    /// This client, and whether another candidate is left after it.
    Client {
        slot: Arc<Slot>,
        client: Client,
        others: bool,
    },
    /// The pool has no clients.
    Empty,
    /// No client is connected (or every connected one was tried already).
    NoneConnected,
}

impl Table {
    /// The healthiest connected client not in `tried`, rotating among equal
    /// scores with `turn`.
    pub(crate) fn pick(&self, tried: &[ClientId], turn: &AtomicUsize) -> Pick {
        if self.entries.is_empty() {
            return Pick::Empty;
        }
        let score_of = |i: usize| -> u8 {
            let e = &self.entries[i];
            if tried.contains(&e.slot.id) {
                return 0;
            }
            let score = e.slot.score.load(Ordering::Acquire);
            // The router's score may be up to one refresh old; the live state
            // (an atomic load) keeps a client that just dropped out of the pick.
            match &e.client {
                Some(c) if score > 0 && c.is_connected() => score,
                _ => 0,
            }
        };
        match pick_index(self.entries.len(), turn, score_of) {
            Some((i, candidates)) => {
                let e = &self.entries[i];
                match &e.client {
                    Some(client) => Pick::Client {
                        slot: e.slot.clone(),
                        client: client.clone(),
                        others: candidates > 1,
                    },
                    None => Pick::NoneConnected,
                }
            }
            None => Pick::NoneConnected,
        }
    }
}

/// Among `n` candidates scored by `score_of` (0: not a candidate), the index
/// of one with the highest score, taking turns among equal ones; and how many
/// candidates there are. Two passes instead of a collected list keep routing
/// free of allocations.
pub(crate) fn pick_index(
    n: usize,
    turn: &AtomicUsize,
    score_of: impl Fn(usize) -> u8,
) -> Option<(usize, usize)> {
    let mut best = 0u8;
    let mut ties = 0usize;
    let mut candidates = 0usize;
    let mut last_best = None;
    for i in 0..n {
        let s = score_of(i);
        if s == 0 {
            continue;
        }
        candidates += 1;
        if s > best {
            best = s;
            ties = 1;
            last_best = Some(i);
        } else if s == best {
            ties += 1;
            last_best = Some(i);
        }
    }
    let last_best = last_best?;
    if ties == 1 {
        return Some((last_best, candidates));
    }
    let k = turn.fetch_add(1, Ordering::Relaxed) % ties;
    let mut seen = 0;
    for i in 0..n {
        if score_of(i) == best {
            if seen == k {
                return Some((i, candidates));
            }
            seen += 1;
        }
    }
    // A score changed between the passes (the router refreshed it): the last
    // best of the first pass is as good a choice as any.
    Some((last_best, candidates))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(scores: &[u8], turn: &AtomicUsize) -> Option<usize> {
        pick_index(scores.len(), turn, |i| scores[i]).map(|(i, _)| i)
    }

    #[test]
    fn the_healthiest_client_is_picked() {
        let turn = AtomicUsize::new(0);
        for _ in 0..10 {
            assert_eq!(pick(&[40, 90, 70], &turn), Some(1));
        }
    }

    #[test]
    fn equal_scores_take_turns() {
        let turn = AtomicUsize::new(0);
        let mut counts = [0usize; 4];
        for _ in 0..300 {
            counts[pick(&[100, 80, 100, 100], &turn).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 0, 100, 100]);
    }

    #[test]
    fn a_client_scored_zero_is_never_picked() {
        let turn = AtomicUsize::new(0);
        for _ in 0..10 {
            assert_eq!(pick(&[0, 1, 0], &turn), Some(1));
        }
        assert_eq!(pick(&[0, 0, 0], &turn), None);
        assert_eq!(pick(&[], &turn), None);
    }

    #[test]
    fn the_candidate_count_says_whether_a_failover_is_possible() {
        let turn = AtomicUsize::new(0);
        let scores = [0u8, 50, 0, 20];
        assert_eq!(pick_index(scores.len(), &turn, |i| scores[i]), Some((1, 2)));
        let one = [0u8, 50];
        assert_eq!(pick_index(one.len(), &turn, |i| one[i]), Some((1, 1)));
    }
}
