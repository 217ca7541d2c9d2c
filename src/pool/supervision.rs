//! The restart policy of the pool's supervision (pure: the caller passes the time).
//!
//! A client is *down* when its connection gave up ([`crate::Event::GaveUp`]),
//! ended for good ([`crate::Event::Closed`] without the pool asking), or a
//! connect at start or restart failed. Each time, [`Restarts::on_down`]
//! decides: restart after a backoff delay, or give up. It gives up when the
//! cause cannot be cured by retrying ([`crate::Recovery::Stop`]: bad
//! credentials, TLS trust, a refused path) or when `max_restarts` restarts were
//! already made within the last `restart_window` (a crash loop). Every restart
//! *attempt* counts, failed or not, so a server that stays down for long ends
//! in `Failed` instead of being dialed forever.
//!
//! The delays come from [`Backoff`]: the first restart is immediate, then
//! `[0, min(max_restart_delay, restart_delay · 2^(n-1))]` with full jitter.
//! The backoff starts over after a successful restart; the window still
//! remembers the attempts, which is what stops a crash loop.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::connection::backoff::Backoff;
use crate::error::Error;

/// What to do with a client that went down.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Restart it after `delay`; this is restart attempt `attempt` since it was
    /// last up (1-based).
    Restart { attempt: u32, delay: Duration },
    /// Give up: the client is marked failed, for this reason.
    GiveUp { reason: String },
}

/// The restart history of one client.
#[derive(Debug, Clone)]
pub(crate) struct Restarts {
    max_restarts: u32,
    window: Duration,
    history: VecDeque<Instant>,
    backoff: Backoff,
    /// Attempts since the client was last up.
    attempt: u32,
}

impl Restarts {
    pub(crate) fn new(max_restarts: u32, window: Duration, backoff: Backoff) -> Restarts {
        Restarts {
            max_restarts,
            window,
            history: VecDeque::new(),
            backoff,
            attempt: 0,
        }
    }

    /// The client went down at `now` because of `cause`.
    pub(crate) fn on_down(&mut self, now: Instant, cause: &Error) -> Decision {
        if !cause.is_recoverable() {
            return Decision::GiveUp {
                reason: format!("not restarted, since retrying cannot help: {cause}"),
            };
        }
        while let Some(&oldest) = self.history.front() {
            if now.saturating_duration_since(oldest) >= self.window {
                self.history.pop_front();
            } else {
                break;
            }
        }
        if self.history.len() >= self.max_restarts as usize {
            return Decision::GiveUp {
                reason: format!(
                    "{} restarts within {:?}; last error: {cause}",
                    self.history.len(),
                    self.window
                ),
            };
        }
        self.history.push_back(now);
        self.attempt = self.attempt.saturating_add(1);
        Decision::Restart {
            attempt: self.attempt,
            delay: self.backoff.next_delay(),
        }
    }

    /// A restart succeeded: the next outage starts with an immediate restart.
    pub(crate) fn on_up(&mut self) {
        self.backoff.reset();
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn restarts(max: u32, window: Duration) -> Restarts {
        Restarts::new(max, window, Backoff::with_seed(100 * MS, 1000 * MS, 7))
    }

    fn refused() -> Error {
        Error::ConnectionRefused {
            addr: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn the_first_restart_is_immediate_and_later_ones_back_off() {
        let mut r = restarts(5, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(
            r.on_down(t0, &refused()),
            Decision::Restart {
                attempt: 1,
                delay: Duration::ZERO
            }
        );
        for n in 2..=5u32 {
            match r.on_down(t0, &refused()) {
                Decision::Restart { attempt, delay } => {
                    assert_eq!(attempt, n);
                    assert!(delay <= 1000 * MS, "{delay:?}");
                }
                other => panic!("attempt {n}: {other:?}"),
            }
        }
    }

    #[test]
    fn too_many_restarts_within_the_window_give_up_and_say_why() {
        let mut r = restarts(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(
                matches!(r.on_down(t0 + i * MS, &refused()), Decision::Restart { .. }),
                "restart {i}"
            );
        }
        match r.on_down(t0 + 10 * MS, &refused()) {
            Decision::GiveUp { reason } => {
                assert!(reason.contains("5 restarts within 60s"), "{reason}");
                assert!(reason.contains("refused"), "{reason}");
            }
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    #[test]
    fn restarts_older_than_the_window_are_forgotten() {
        let mut r = restarts(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(matches!(
            r.on_down(t0, &refused()),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            r.on_down(t0, &refused()),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            r.on_down(t0 + Duration::from_secs(9), &refused()),
            Decision::GiveUp { .. }
        ));
        assert!(matches!(
            r.on_down(t0 + Duration::from_secs(10), &refused()),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn a_successful_restart_starts_the_backoff_over_but_keeps_the_window() {
        let mut r = restarts(3, Duration::from_secs(60));
        let t0 = Instant::now();
        r.on_down(t0, &refused());
        r.on_down(t0, &refused());
        r.on_up();
        assert_eq!(
            r.on_down(t0, &refused()),
            Decision::Restart {
                attempt: 1,
                delay: Duration::ZERO
            }
        );
        assert!(matches!(r.on_down(t0, &refused()), Decision::GiveUp { .. }));
    }

    #[test]
    fn a_cause_that_retrying_cannot_cure_gives_up_at_once() {
        let mut r = restarts(5, Duration::from_secs(60));
        let auth = Error::Auth {
            detail: "bad key".into(),
        };
        match r.on_down(Instant::now(), &auth) {
            Decision::GiveUp { reason } => assert!(reason.contains("bad key"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_max_restarts_never_restarts() {
        let mut r = restarts(0, Duration::from_secs(60));
        assert!(matches!(
            r.on_down(Instant::now(), &refused()),
            Decision::GiveUp { .. }
        ));
    }
}
