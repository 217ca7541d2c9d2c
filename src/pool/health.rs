//! The health score of a pooled client (pure: no clock, no I/O).
//!
//! The router thread feeds [`score`] with what it knows about a client and
//! stores the result in the health table that [`Pool::send_balanced`] reads.
//!
//! # The formula
//!
//! ```text
//! score = 0                                        if state != Connected
//! score = clamp(round(100 - Pq - Pr - Pt - Pe), 1, 100)         otherwise
//!
//! Pq = 30 * q / (q + 10)                      q = pending requests
//! Pr = 30 * clamp((r - 10 ms) / 90 ms, 0, 1)  r = smoothed ping RTT
//! Pt = 10 * clamp((t - 100 ms) / 400 ms, 0, 1) t = p99 ping RTT (last 64 pongs)
//! Pe = 30 * min(e / 3, 1)                     e = recent errors, decayed
//!
//! e = sum over errors of 2^(-age / half_life)     half_life = 30 s by default
//! ```
//!
//! - **State**: a client that is not connected scores 0 and is never picked.
//!   A connected client scores at least 1, so that a struggling connection
//!   still beats none.
//! - **Pending requests** cost up to 30 points, with diminishing steps: one
//!   pending request costs 2.7 points (so an idle client wins a tie), ten cost
//!   15.
//! - **Smoothed RTT** costs nothing up to 10 ms, then 1 point per 3 ms, all 30
//!   points from 100 ms. The dead band is there on purpose: on a busy machine,
//!   ping times below 10 ms are scheduler noise, and a score that followed them
//!   would flip the "best" client back and forth instead of rotating among
//!   equally healthy ones.
//! - **p99 RTT** (nearest rank over the last [`RTT_WINDOW`] pongs the router
//!   saw) costs up to 10 points, from 100 ms to 500 ms: it catches a
//!   connection that stalls now and then while its average looks fine. Over
//!   64 samples the nearest-rank p99 is the slowest pong, so its dead band is
//!   wide: one scheduling hiccup on a busy machine must not cost points.
//! - **Recent errors** cost 10 points each, up to 30. Each error counts 1 when
//!   it happens and halves every `half_life` (see [`DecayingCount`]): one
//!   error is forgotten (less than half a point) after about 2 minutes.
//!   Errors are connection losses and failed reconnection or restart attempts
//!   seen by the router, and failed balanced sends and requests seen by the
//!   callers (see [`counts_against_health`]).
//! - An unknown RTT (no pong yet, or heartbeats off) costs nothing.
//!
//! [`Pool::send_balanced`]: crate::pool::Pool::send_balanced

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::client::ConnectionState;
use crate::error::{Error, ErrorCategory};

/// How many ping round trips the router keeps per client for the p99.
pub const RTT_WINDOW: usize = 64;

/// What the score is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthInputs {
    /// The client's connection state.
    pub state: ConnectionState,
    /// Requests waiting for a response.
    pub pending: usize,
    /// The smoothed ping round trip, if measured.
    pub rtt: Option<Duration>,
    /// The p99 ping round trip over the router's window, if measured.
    pub rtt_p99: Option<Duration>,
    /// Recent errors, decayed (see [`DecayingCount`]).
    pub recent_errors: f64,
}

/// The health score, 0 to 100, of a client with these inputs (see the module
/// documentation for the formula).
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::pool::health::{score, HealthInputs};
/// use zen_websocket::ConnectionState;
///
/// let healthy = HealthInputs {
///     state: ConnectionState::Connected,
///     pending: 0,
///     rtt: Some(Duration::from_millis(1)),
///     rtt_p99: Some(Duration::from_millis(2)),
///     recent_errors: 0.0,
/// };
/// assert_eq!(score(&healthy), 100);
/// let down = HealthInputs { state: ConnectionState::Reconnecting, ..healthy.clone() };
/// assert_eq!(score(&down), 0);
/// ```
pub fn score(inputs: &HealthInputs) -> u8 {
    if inputs.state != ConnectionState::Connected {
        return 0;
    }
    let penalty = pending_penalty(inputs.pending)
        + rtt_penalty(inputs.rtt)
        + tail_penalty(inputs.rtt_p99)
        + error_penalty(inputs.recent_errors);
    // Finite: every penalty is bounded, and a NaN error count reads as zero.
    (100.0 - penalty).round().clamp(1.0, 100.0) as u8
}

fn pending_penalty(q: usize) -> f64 {
    let q = q as f64;
    30.0 * q / (q + 10.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rtt_penalty(rtt: Option<Duration>) -> f64 {
    rtt.map_or(0.0, |r| 30.0 * ((ms(r) - 10.0) / 90.0).clamp(0.0, 1.0))
}

fn tail_penalty(p99: Option<Duration>) -> f64 {
    p99.map_or(0.0, |t| 10.0 * ((ms(t) - 100.0) / 400.0).clamp(0.0, 1.0))
}

fn error_penalty(e: f64) -> f64 {
    // NaN (which no decayed count produces) is read as "no errors".
    if e.is_nan() || e <= 0.0 {
        return 0.0;
    }
    30.0 * (e / 3.0).min(1.0)
}

/// Whether an error seen by a balanced send or request says something about
/// the client's health. A JSON-RPC error is the server's answer (the link is
/// fine), and a bad argument is the caller's fault: neither counts.
pub fn counts_against_health(error: &Error) -> bool {
    !matches!(
        error.category(),
        ErrorCategory::Server | ErrorCategory::Config | ErrorCategory::Storage
    )
}

/// A count of events that decays exponentially: each event adds 1, and the
/// total halves every `half_life`. Time is passed in, so it is tested without
/// sleeping.
///
/// ```
/// use std::time::{Duration, Instant};
/// use zen_websocket::pool::health::DecayingCount;
///
/// let t0 = Instant::now();
/// let mut errors = DecayingCount::new(Duration::from_secs(30));
/// errors.add(t0);
/// let later = errors.value(t0 + Duration::from_secs(30));
/// assert!((later - 0.5).abs() < 1e-9);
/// ```
#[derive(Debug, Clone)]
pub struct DecayingCount {
    half_life: Duration,
    value: f64,
    at: Option<Instant>,
}

impl DecayingCount {
    /// An empty count that halves every `half_life` (a zero half-life forgets at once).
    pub fn new(half_life: Duration) -> DecayingCount {
        DecayingCount {
            half_life,
            value: 0.0,
            at: None,
        }
    }

    /// Count one event at `now`.
    pub fn add(&mut self, now: Instant) {
        self.value = self.value(now) + 1.0;
        // A `now` older than the last update (two threads reading the clock
        // before taking the lock in the other order) keeps the newer instant.
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
    }

    /// The decayed count at `now`.
    pub fn value(&self, now: Instant) -> f64 {
        let Some(at) = self.at else {
            return 0.0;
        };
        if self.half_life.is_zero() {
            return 0.0;
        }
        let age = now.saturating_duration_since(at).as_secs_f64();
        self.value * (-age / self.half_life.as_secs_f64()).exp2()
    }
}

/// The last [`RTT_WINDOW`] ping round trips, for a p99.
#[derive(Debug, Clone, Default)]
pub struct RttWindow {
    samples: VecDeque<Duration>,
}

impl RttWindow {
    /// An empty window.
    pub fn new() -> RttWindow {
        RttWindow::default()
    }

    /// Add one round trip; the oldest goes when the window is full.
    pub fn push(&mut self, rtt: Duration) {
        if self.samples.len() == RTT_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(rtt);
    }

    /// Forget every sample (a new connection).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// How many samples the window holds.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when the window holds no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The nearest-rank 99th percentile, `None` without samples.
    pub fn p99(&self) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        // ceil(0.99 · n) as a 1-based rank, in integers.
        let rank = (99 * sorted.len()).div_ceil(100).max(1);
        sorted.get(rank - 1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn connected() -> HealthInputs {
        HealthInputs {
            state: ConnectionState::Connected,
            pending: 0,
            rtt: None,
            rtt_p99: None,
            recent_errors: 0.0,
        }
    }

    #[test]
    fn a_client_that_is_not_connected_scores_zero_whatever_else() {
        for state in [
            ConnectionState::Connecting,
            ConnectionState::Reconnecting,
            ConnectionState::Closing,
            ConnectionState::Closed,
        ] {
            let inputs = HealthInputs {
                state,
                ..connected()
            };
            assert_eq!(score(&inputs), 0, "{state:?}");
        }
    }

    #[test]
    fn a_connected_idle_client_with_a_fast_link_scores_100() {
        assert_eq!(score(&connected()), 100);
        let fast = HealthInputs {
            rtt: Some(3 * MS),
            rtt_p99: Some(9 * MS),
            ..connected()
        };
        assert_eq!(score(&fast), 100);
    }

    #[test]
    fn rtt_noise_below_ten_ms_does_not_move_the_score() {
        // The dead band keeps equally healthy clients tied, so they rotate.
        for r in [0u32, 1, 5, 10, 11] {
            let inputs = HealthInputs {
                rtt: Some(r * MS),
                rtt_p99: Some(90 * MS),
                ..connected()
            };
            assert_eq!(score(&inputs), 100, "rtt {r} ms");
        }
    }

    #[test]
    fn rtt_costs_one_point_per_three_ms_up_to_thirty() {
        let at = |r: u32| {
            score(&HealthInputs {
                rtt: Some(r * MS),
                ..connected()
            })
        };
        assert_eq!(at(40), 90);
        assert_eq!(at(70), 80);
        assert_eq!(at(100), 70);
        assert_eq!(at(10_000), 70);
    }

    #[test]
    fn the_p99_catches_stalls_the_average_hides() {
        let at = |t: u32| {
            score(&HealthInputs {
                rtt: Some(2 * MS),
                rtt_p99: Some(t * MS),
                ..connected()
            })
        };
        assert_eq!(at(100), 100);
        assert_eq!(at(300), 95);
        assert_eq!(at(500), 90);
        assert_eq!(at(60_000), 90);
    }

    #[test]
    fn pending_requests_cost_with_diminishing_steps() {
        let at = |q: usize| {
            score(&HealthInputs {
                pending: q,
                ..connected()
            })
        };
        assert_eq!(at(1), 97);
        assert_eq!(at(10), 85);
        assert!(at(1_000_000) >= 70);
        assert!(at(2) < at(1) && at(1) < at(0));
    }

    #[test]
    fn errors_cost_ten_points_each_up_to_thirty() {
        let at = |e: f64| {
            score(&HealthInputs {
                recent_errors: e,
                ..connected()
            })
        };
        assert_eq!(at(1.0), 90);
        assert_eq!(at(2.0), 80);
        assert_eq!(at(3.0), 70);
        assert_eq!(at(50.0), 70);
        assert_eq!(at(f64::NAN), 100);
        assert_eq!(at(-1.0), 100);
    }

    #[test]
    fn a_connected_client_never_scores_below_one() {
        let worst = HealthInputs {
            state: ConnectionState::Connected,
            pending: usize::MAX,
            rtt: Some(Duration::from_secs(3600)),
            rtt_p99: Some(Duration::from_secs(3600)),
            recent_errors: f64::INFINITY,
        };
        assert_eq!(score(&worst), 1);
        let bad = HealthInputs {
            pending: 1_000_000,
            rtt: Some(Duration::from_secs(1)),
            rtt_p99: Some(Duration::from_secs(1)),
            recent_errors: 10.0,
            ..connected()
        };
        assert_eq!(score(&bad), 1);
    }

    #[test]
    fn decaying_errors_halve_every_half_life() {
        let t0 = Instant::now();
        let mut c = DecayingCount::new(Duration::from_secs(30));
        assert_eq!(c.value(t0), 0.0);
        c.add(t0);
        c.add(t0);
        assert!((c.value(t0) - 2.0).abs() < 1e-9);
        assert!((c.value(t0 + Duration::from_secs(30)) - 1.0).abs() < 1e-9);
        assert!((c.value(t0 + Duration::from_secs(60)) - 0.5).abs() < 1e-9);
        // An error a minute later adds 1 to what is left.
        c.add(t0 + Duration::from_secs(60));
        assert!((c.value(t0 + Duration::from_secs(60)) - 1.5).abs() < 1e-9);
        // Forgotten (under half a point of score) after a few minutes.
        assert!(c.value(t0 + Duration::from_secs(300)) < 0.05);
    }

    #[test]
    fn a_clock_read_out_of_order_never_inflates_the_count() {
        let t0 = Instant::now();
        let mut c = DecayingCount::new(Duration::from_secs(30));
        c.add(t0 + Duration::from_secs(10));
        c.add(t0);
        assert!((c.value(t0 + Duration::from_secs(10)) - 2.0).abs() < 1e-9);
        assert!(c.value(t0 + Duration::from_secs(40)) <= 1.0 + 1e-9);
    }

    #[test]
    fn a_zero_half_life_forgets_at_once() {
        let t0 = Instant::now();
        let mut c = DecayingCount::new(Duration::ZERO);
        c.add(t0);
        assert_eq!(c.value(t0), 0.0);
    }

    #[test]
    fn the_rtt_window_keeps_the_last_samples_and_ranks_the_p99() {
        let mut w = RttWindow::new();
        assert_eq!(w.p99(), None);
        w.push(7 * MS);
        assert_eq!(w.p99(), Some(7 * MS));
        w.clear();
        for n in 1..=100u32 {
            w.push(n * MS);
        }
        assert_eq!(w.len(), RTT_WINDOW);
        // The window holds 37..=100 ms; rank ceil(0.99 · 64) = 64 is the max.
        assert_eq!(w.p99(), Some(100 * MS));
        for _ in 0..RTT_WINDOW {
            w.push(MS);
        }
        assert_eq!(w.p99(), Some(MS));
    }

    #[test]
    fn only_link_trouble_counts_as_an_error() {
        assert!(counts_against_health(&Error::NotConnected));
        assert!(counts_against_health(&Error::Timeout(
            crate::TimeoutKind::Request
        )));
        assert!(counts_against_health(&Error::RateLimited {
            retry_after: MS
        }));
        assert!(!counts_against_health(&Error::Rpc {
            code: -32601,
            message: "no such method".into(),
            data: None
        }));
        assert!(!counts_against_health(&Error::Config(
            crate::ConfigError::new("x", "y")
        )));
    }
}
