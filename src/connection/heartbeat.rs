//! Ping/pong bookkeeping (pure: the connection thread passes in `now`).

use std::time::{Duration, Instant};

/// What the connection thread should do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeartbeatAction {
    /// Nothing is due.
    Idle,
    /// Send a ping with this payload.
    Ping(Vec<u8>),
    /// The pong deadline passed: the peer is dead.
    PeerDead,
}

/// Tracks when to ping, which pong is awaited, and the round-trip times.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    interval: Option<Duration>,
    timeout: Duration,
    next_ping: Option<Instant>,
    awaiting: Option<(u64, Instant, Instant)>,
    sequence: u64,
    last_rtt: Option<Duration>,
    smoothed_rtt: Option<Duration>,
}

impl Heartbeat {
    pub(crate) fn new(interval: Option<Duration>, timeout: Duration, now: Instant) -> Heartbeat {
        Heartbeat {
            interval,
            timeout,
            next_ping: interval.map(|i| now + i),
            awaiting: None,
            sequence: 0,
            last_rtt: None,
            smoothed_rtt: None,
        }
    }

    /// Start over on a new connection (RTT history is kept).
    pub(crate) fn restart(&mut self, now: Instant) {
        self.next_ping = self.interval.map(|i| now + i);
        self.awaiting = None;
    }

    /// The next instant at which [`poll`](Self::poll) has something to do.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        match self.awaiting {
            Some((_, _, deadline)) => Some(match self.next_ping {
                Some(p) => p.min(deadline),
                None => deadline,
            }),
            None => self.next_ping,
        }
    }

    pub(crate) fn poll(&mut self, now: Instant) -> HeartbeatAction {
        if let Some((_, _, deadline)) = self.awaiting {
            if now >= deadline {
                return HeartbeatAction::PeerDead;
            }
        }
        match (self.interval, self.next_ping) {
            (Some(interval), Some(due)) if now >= due => {
                self.next_ping = Some(now + interval);
                if self.awaiting.is_some() {
                    // One ping at a time: its deadline still stands.
                    return HeartbeatAction::Idle;
                }
                self.sequence += 1;
                self.awaiting = Some((self.sequence, now, now + self.timeout));
                HeartbeatAction::Ping(payload(self.sequence))
            }
            _ => HeartbeatAction::Idle,
        }
    }

    /// A pong arrived; returns the round trip when it answers our ping.
    pub(crate) fn on_pong(&mut self, data: &[u8], now: Instant) -> Option<Duration> {
        let (seq, sent, _) = self.awaiting?;
        if data != payload(seq).as_slice() {
            return None;
        }
        self.awaiting = None;
        let rtt = now.saturating_duration_since(sent);
        self.last_rtt = Some(rtt);
        // Smoothed like TCP's SRTT (RFC 6298): 7/8 old + 1/8 new.
        self.smoothed_rtt = Some(match self.smoothed_rtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        Some(rtt)
    }

    /// Push the pong deadline back: time spent blocked on a full event channel is
    /// time we could not read, and must not count against the peer.
    pub(crate) fn extend(&mut self, by: Duration) {
        if let Some((_, _, deadline)) = self.awaiting.as_mut() {
            *deadline += by;
        }
    }

    pub(crate) fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    pub(crate) fn smoothed_rtt(&self) -> Option<Duration> {
        self.smoothed_rtt
    }
}

/// A unique payload per ping: a prefix and the sequence number.
fn payload(seq: u64) -> Vec<u8> {
    format!("zen-ws-{seq}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pings_come_every_interval_with_unique_payloads() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(Some(10 * S), 3 * S, t0);
        assert_eq!(h.next_wake(), Some(t0 + 10 * S));
        assert_eq!(h.poll(t0 + S), HeartbeatAction::Idle);
        let HeartbeatAction::Ping(p1) = h.poll(t0 + 10 * S) else {
            panic!("expected a ping")
        };
        assert_eq!(h.on_pong(&p1, t0 + 10 * S + S), Some(S));
        let HeartbeatAction::Ping(p2) = h.poll(t0 + 20 * S) else {
            panic!("expected a ping")
        };
        assert_ne!(p1, p2);
    }

    #[test]
    fn a_missing_pong_means_the_peer_is_dead_at_the_deadline() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(Some(10 * S), 3 * S, t0);
        assert!(matches!(h.poll(t0 + 10 * S), HeartbeatAction::Ping(_)));
        assert_eq!(h.next_wake(), Some(t0 + 13 * S));
        assert_eq!(h.poll(t0 + 12 * S), HeartbeatAction::Idle);
        assert_eq!(h.poll(t0 + 13 * S), HeartbeatAction::PeerDead);
    }

    #[test]
    fn a_pong_with_a_foreign_payload_does_not_count() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(Some(S), S, t0);
        assert!(matches!(h.poll(t0 + S), HeartbeatAction::Ping(_)));
        assert_eq!(h.on_pong(b"unsolicited", t0 + S), None);
        assert_eq!(h.poll(t0 + 2 * S), HeartbeatAction::PeerDead);
    }

    #[test]
    fn time_blocked_on_the_consumer_extends_the_deadline() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(Some(S), S, t0);
        assert!(matches!(h.poll(t0 + S), HeartbeatAction::Ping(_)));
        h.extend(5 * S);
        assert_eq!(h.poll(t0 + 3 * S), HeartbeatAction::Idle);
        assert_eq!(h.poll(t0 + 7 * S), HeartbeatAction::PeerDead);
    }

    #[test]
    fn smoothed_rtt_moves_an_eighth_toward_each_sample() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(Some(S), 10 * S, t0);
        let mut t = t0;
        for rtt in [8u64, 16] {
            t += S;
            let HeartbeatAction::Ping(p) = h.poll(t) else {
                panic!()
            };
            h.on_pong(&p, t + Duration::from_millis(rtt));
        }
        assert_eq!(h.last_rtt(), Some(Duration::from_millis(16)));
        assert_eq!(h.smoothed_rtt(), Some(Duration::from_millis(9)));
    }

    #[test]
    fn no_interval_means_no_wake_ups() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(None, S, t0);
        assert_eq!(h.next_wake(), None);
        assert_eq!(h.poll(t0 + 1000 * S), HeartbeatAction::Idle);
    }
}
