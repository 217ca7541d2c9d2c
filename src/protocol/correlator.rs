//! The pending-request map: hands each response to the caller waiting for it.
//!
//! A caller thread [`register`](RequestCorrelator::register)s an id *before* it
//! sends the request (so a fast response cannot beat the registration), sends,
//! then [`wait`](PendingRequest::wait)s. The connection thread feeds every
//! response to [`complete`](RequestCorrelator::complete), and on a disconnect
//! calls [`fail_all`](RequestCorrelator::fail_all). No I/O happens here.
//!
//! ```
//! use std::time::Duration;
//! use serde_json::json;
//! use zen_websocket::protocol::correlator::{Completion, RequestCorrelator};
//! use zen_websocket::protocol::jsonrpc::{RequestId, Response};
//!
//! let correlator = RequestCorrelator::new();
//! let pending = correlator.register(RequestId::Number(1), "public/get_time")?;
//!
//! // The connection thread, when the response arrives:
//! let done = correlator.complete(Response::ok(RequestId::Number(1), json!(42)));
//! assert!(matches!(done, Completion::Delivered));
//!
//! // The caller:
//! assert_eq!(pending.wait(Duration::from_secs(1))?, json!(42));
//! # Ok::<(), zen_websocket::Error>(())
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde_json::Value;

use super::jsonrpc::{RequestId, Response, RpcError};
use crate::{Error, Result, TimeoutKind};

/// How many round-trip samples [`RequestCorrelator::latency`] keeps.
pub const LATENCY_SAMPLES: usize = 1024;

/// How many timed-out (or abandoned) ids are remembered, to tell a late
/// response from one with an id we never sent.
pub const RECENT_TIMEOUTS: usize = 256;

/// What [`RequestCorrelator::complete`] did with a response.
#[derive(Debug)]
pub enum Completion {
    /// The waiting caller has it (or, for a request nobody waits for, such
    /// as the connection thread's own resubscribe, it was consumed).
    Delivered,
    /// No one is waiting for it: its caller timed out or gave up, or its id was
    /// never registered. The caller of `complete` should surface it as an event
    /// (requests are never re-sent, so the user may want to know it was
    /// processed after all). Both cases come back as `Late`;
    /// [`RequestCorrelator::complete`] logs which one it was.
    Late(Response),
}

/// Round-trip statistics of completed requests (register to complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencyStats {
    /// How many samples the percentiles are computed from (at most [`LATENCY_SAMPLES`]).
    pub count: usize,
    /// Median round trip; `None` without samples.
    pub p50: Option<Duration>,
    /// 99th percentile round trip; `None` without samples.
    pub p99: Option<Duration>,
}

/// What travels to the waiting caller. Kept separate from `crate::Result` so
/// that an undeliverable response can be handed back intact as `Late`.
enum Reply {
    Outcome(std::result::Result<Value, RpcError>),
    Failed(Error),
}

struct Pending {
    /// `None` for a detached registration: nobody waits, the answer is consumed.
    tx: Option<Sender<Reply>>,
    method: String,
    started: Instant,
}

#[derive(Default)]
struct State {
    pending: HashMap<RequestId, Pending>,
    /// Ids whose caller stopped waiting, oldest first; `recent_set` mirrors it
    /// for O(1) lookups.
    recent: VecDeque<RequestId>,
    recent_set: HashSet<RequestId>,
    /// Ring of the last round trips; `next` is the slot to overwrite once full.
    samples: Vec<Duration>,
    next: usize,
}

impl State {
    fn remember_gone(&mut self, id: RequestId) {
        if self.recent_set.contains(&id) {
            return;
        }
        if self.recent.len() >= RECENT_TIMEOUTS {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        self.recent_set.insert(id.clone());
        self.recent.push_back(id);
    }

    fn forget_gone(&mut self, id: &RequestId) -> bool {
        if self.recent_set.remove(id) {
            self.recent.retain(|r| r != id);
            true
        } else {
            false
        }
    }

    fn record(&mut self, rtt: Duration) {
        if self.samples.len() < LATENCY_SAMPLES {
            self.samples.push(rtt);
        } else {
            self.samples[self.next] = rtt;
        }
        self.next = (self.next + 1) % LATENCY_SAMPLES;
    }
}

struct Inner {
    // One lock for the whole state: every critical section is a few map
    // operations and a non-blocking `try_send`, never I/O.
    state: Mutex<State>,
}

impl Inner {
    /// Free a slot whose caller stopped waiting (or is told to stop). True
    /// when it was still pending.
    fn cancel(&self, id: &RequestId) -> bool {
        let mut st = self.state.lock();
        match st.pending.remove(id) {
            Some(p) => {
                st.remember_gone(id.clone());
                // A caller still waiting (cancelled by the connection thread's
                // deadline rather than by its own `wait`) learns it timed out,
                // instead of seeing a dropped channel as a disconnect.
                if let Some(tx) = &p.tx {
                    let _ = tx.try_send(Reply::Failed(Error::Timeout(TimeoutKind::Request)));
                }
                true
            }
            None => false,
        }
    }
}

/// The requests waiting for a response, shared by the caller threads and the
/// connection thread. Cheap to clone: clones share one map.
///
/// It holds one lock (the map, the recent-timeouts set and the latency ring
/// together); it is never held while waiting or doing I/O.
#[derive(Clone)]
pub struct RequestCorrelator {
    inner: Arc<Inner>,
}

impl Default for RequestCorrelator {
    fn default() -> Self {
        RequestCorrelator::new()
    }
}

impl fmt::Debug for RequestCorrelator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("RequestCorrelator")
            .field("pending", &st.pending.len())
            .field("recently_timed_out", &st.recent.len())
            .field("latency_samples", &st.samples.len())
            .finish()
    }
}

impl RequestCorrelator {
    /// An empty correlator.
    pub fn new() -> Self {
        RequestCorrelator {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Start waiting for the response to `id`. Call it before sending the request.
    ///
    /// Fails with [`Error::DuplicateRequestId`] when `id` is already pending
    /// (nothing should be sent then). `method` is kept for logs.
    pub fn register(&self, id: RequestId, method: &str) -> Result<PendingRequest> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut st = self.inner.state.lock();
        if st.pending.contains_key(&id) {
            return Err(Error::DuplicateRequestId(id.to_string()));
        }
        // A reused id is awaited again: its next response is not late.
        st.forget_gone(&id);
        st.pending.insert(
            id.clone(),
            Pending {
                tx: Some(tx),
                method: method.to_owned(),
                started: Instant::now(),
            },
        );
        drop(st);
        Ok(PendingRequest {
            id,
            rx,
            correlator: Arc::downgrade(&self.inner),
        })
    }

    /// Register `id` for a request whose answer nobody waits for (the
    /// connection thread's resubscribe after a sequence gap, which it writes
    /// without waiting): when the answer comes, [`complete`](Self::complete)
    /// consumes it and returns [`Completion::Delivered`] rather than `Late`,
    /// logging an error answer at `warn`. There is no timeout, since nothing
    /// waits: the slot is freed by the answer, or by
    /// [`fail_all`](Self::fail_all) on a disconnect. It counts in
    /// [`pending`](Self::pending). A pending id is refused, as by
    /// [`register`](Self::register).
    pub(crate) fn register_detached(&self, id: RequestId, method: &str) -> Result<()> {
        let mut st = self.inner.state.lock();
        if st.pending.contains_key(&id) {
            return Err(Error::DuplicateRequestId(id.to_string()));
        }
        st.forget_gone(&id);
        st.pending.insert(
            id,
            Pending {
                tx: None,
                method: method.to_owned(),
                started: Instant::now(),
            },
        );
        Ok(())
    }

    /// Hand a response to its waiting caller.
    ///
    /// [`Completion::Late`] gives the response back when nobody waits for it.
    pub fn complete(&self, resp: Response) -> Completion {
        let mut st = self.inner.state.lock();
        let Some(pending) = st.pending.remove(&resp.id) else {
            if st.forget_gone(&resp.id) {
                log::debug!("late response for timed-out request {}", resp.id);
            } else {
                log::debug!("response with unknown id {}", resp.id);
            }
            return Completion::Late(resp);
        };
        let rtt = pending.started.elapsed();
        let Some(tx) = pending.tx else {
            // Detached: nobody waits, and the answer must not come back as
            // `Late` (it would surface as a `LateResponse` event).
            st.record(rtt);
            drop(st);
            match &resp.outcome {
                Ok(_) => log::debug!(
                    target: "zen_websocket",
                    "{} (id {}, sent without waiting) succeeded",
                    pending.method,
                    resp.id
                ),
                Err(e) => log::warn!(
                    target: "zen_websocket",
                    "{} (id {}, sent without waiting) failed: {} ({})",
                    pending.method,
                    resp.id,
                    e.message,
                    e.code
                ),
            }
            return Completion::Delivered;
        };
        let id = resp.id;
        // Sent under the lock on purpose: `PendingRequest::wait`, after a
        // timeout, cancels under this lock and then looks at the channel once
        // more, so a response is either in the channel or still in the map,
        // never in between. `try_send` on an empty bounded(1) channel cannot
        // block.
        match tx.try_send(Reply::Outcome(resp.outcome)) {
            Ok(()) => {
                st.record(rtt);
                Completion::Delivered
            }
            // The PendingRequest was dropped without cancelling (it cancels on
            // drop, so only a race with that drop gets here): nobody waits.
            // `Full` cannot happen (one send per registration) but is the same case.
            Err(e) => {
                log::debug!("response for abandoned request {id} ({})", pending.method);
                let outcome = match e.into_inner() {
                    Reply::Outcome(outcome) => outcome,
                    // We sent an `Outcome` just above; keep the compiler happy without a panic.
                    Reply::Failed(err) => Err(RpcError::new(0, err.to_string())),
                };
                Completion::Late(Response { id, outcome })
            }
        }
    }

    /// Fail every pending request at once with `make()` (normally
    /// [`Error::Disconnected`]). Returns how many were failed.
    pub fn fail_all(&self, make: impl Fn() -> Error) -> usize {
        let drained: Vec<Pending> = {
            let mut st = self.inner.state.lock();
            st.pending.drain().map(|(_, p)| p).collect()
        };
        // Outside the lock: `make` is user code.
        let n = drained.len();
        for p in drained {
            // A caller that already gave up is fine to miss; a detached
            // registration has nobody to tell.
            if let Some(tx) = &p.tx {
                let _ = tx.try_send(Reply::Failed(make()));
            }
        }
        n
    }

    /// Stop waiting for `id` and free the slot: a caller still in
    /// [`wait`](PendingRequest::wait) gets
    /// [`Error::Timeout`]`(`[`TimeoutKind::Request`]`)` at once, and a response
    /// arriving later comes back from [`complete`](Self::complete) as `Late`.
    /// For a connection thread that keeps request deadlines itself; `wait`
    /// calls it on its own timeout.
    pub fn cancel(&self, id: &RequestId) {
        self.inner.cancel(id);
    }

    /// How many requests are waiting for a response.
    pub fn pending(&self) -> usize {
        self.inner.state.lock().pending.len()
    }

    /// True when `id` is waiting for a response.
    pub fn is_pending(&self, id: &RequestId) -> bool {
        self.inner.state.lock().pending.contains_key(id)
    }

    /// Round-trip percentiles of the last [`LATENCY_SAMPLES`] delivered responses.
    pub fn latency(&self) -> LatencyStats {
        let mut samples = self.inner.state.lock().samples.clone();
        // Sorting outside the lock: up to 1024 entries, not worth blocking
        // the connection thread for.
        samples.sort_unstable();
        LatencyStats {
            count: samples.len(),
            p50: percentile(&samples, 50),
            p99: percentile(&samples, 99),
        }
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // ceil(p/100 · n) as a 1-based rank, in integers.
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// A registered request, waiting for its response. Dropping it without
/// waiting frees its slot in the correlator.
pub struct PendingRequest {
    id: RequestId,
    rx: Receiver<Reply>,
    // Weak: a request must not keep a dropped client's correlator alive; when
    // it goes, the sender goes with it and `wait` fails at once.
    correlator: Weak<Inner>,
}

impl fmt::Debug for PendingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingRequest")
            .field("id", &self.id)
            .finish()
    }
}

impl PendingRequest {
    /// The request's id.
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// Wait up to `timeout` for the response.
    ///
    /// - the result value on success;
    /// - [`Error::Rpc`] when the server answered with an error;
    /// - [`Error::Timeout`]`(`[`TimeoutKind::Request`]`)` when nothing came in
    ///   time; the slot is freed, and a response arriving later is `Late`;
    /// - whatever [`RequestCorrelator::fail_all`] made (normally
    ///   [`Error::Disconnected`]), or `Disconnected` when the correlator was dropped.
    pub fn wait(self, timeout: Duration) -> Result<Value> {
        match self.rx.recv_timeout(timeout) {
            Ok(reply) => into_result(reply),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Disconnected),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(inner) = self.correlator.upgrade() {
                    inner.cancel(&self.id);
                }
                // `complete` sends under the lock `cancel` just took, so a
                // response that won the race is in the channel now; it is
                // better delivered than reported late.
                match self.rx.try_recv() {
                    Ok(reply) => into_result(reply),
                    Err(_) => Err(Error::Timeout(TimeoutKind::Request)),
                }
            }
        }
        // `Drop` runs next and finds nothing left to cancel.
    }
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        if let Some(inner) = self.correlator.upgrade() {
            inner.cancel(&self.id);
        }
    }
}

fn into_result(reply: Reply) -> Result<Value> {
    match reply {
        Reply::Outcome(o) => o.map_err(RpcError::into_error),
        Reply::Failed(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::thread;

    fn id(n: u64) -> RequestId {
        RequestId::Number(n)
    }

    #[test]
    fn a_response_reaches_its_waiting_caller() {
        let c = RequestCorrelator::new();
        let p = c.register(id(1), "m").unwrap();
        let c2 = c.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            c2.complete(Response::ok(id(1), json!("pong")))
        });
        assert_eq!(p.wait(Duration::from_secs(5)).unwrap(), json!("pong"));
        assert!(matches!(t.join().unwrap(), Completion::Delivered));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn responses_go_to_the_right_callers_in_any_order() {
        let c = RequestCorrelator::new();
        let ps: Vec<_> = (1..=3).map(|n| c.register(id(n), "m").unwrap()).collect();
        for n in [3, 1, 2] {
            assert!(matches!(
                c.complete(Response::ok(id(n), json!(n))),
                Completion::Delivered
            ));
        }
        for (n, p) in (1..=3).zip(ps) {
            assert_eq!(p.wait(Duration::ZERO).unwrap(), json!(n));
        }
    }

    #[test]
    fn an_error_response_returns_an_rpc_error() {
        let c = RequestCorrelator::new();
        let p = c.register(id(1), "m").unwrap();
        c.complete(Response::err(
            id(1),
            RpcError::new(-32601, "no such method"),
        ));
        match p.wait(Duration::from_secs(1)) {
            Err(Error::Rpc { code, message, .. }) => {
                assert_eq!(code, -32601);
                assert_eq!(message, "no such method");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pending_id_cannot_be_registered_twice() {
        let c = RequestCorrelator::new();
        let _p = c.register(id(1), "m").unwrap();
        assert!(matches!(c.register(id(1), "m"), Err(Error::DuplicateRequestId(s)) if s == "1"));
        // Number and string ids are different ids.
        assert!(c.register(RequestId::from("1"), "m").is_ok());
    }

    #[test]
    fn a_timeout_frees_the_slot_and_the_late_answer_comes_back() {
        let c = RequestCorrelator::new();
        let p = c.register(id(1), "m").unwrap();
        let start = Instant::now();
        assert!(matches!(
            p.wait(Duration::from_millis(30)),
            Err(Error::Timeout(TimeoutKind::Request))
        ));
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(c.pending(), 0);
        match c.complete(Response::ok(id(1), json!(1))) {
            Completion::Late(r) => assert_eq!(r.id, id(1)),
            other => panic!("{other:?}"),
        }
        // The id may be used again once it is no longer pending.
        assert!(c.register(id(1), "m").is_ok());
    }

    #[test]
    fn a_detached_answer_is_consumed_not_late() {
        let c = RequestCorrelator::new();
        c.register_detached(id(1), "public/unsubscribe").unwrap();
        c.register_detached(id(2), "public/subscribe").unwrap();
        assert!(matches!(
            c.register_detached(id(1), "m"),
            Err(Error::DuplicateRequestId(_))
        ));
        assert!(matches!(
            c.register(id(2), "m"),
            Err(Error::DuplicateRequestId(_))
        ));
        assert_eq!(c.pending(), 2);
        assert!(matches!(
            c.complete(Response::ok(id(1), json!(["book.x"]))),
            Completion::Delivered
        ));
        // An error answer is consumed too (and logged).
        assert!(matches!(
            c.complete(Response::err(id(2), RpcError::new(11050, "bad_request"))),
            Completion::Delivered
        ));
        assert_eq!(c.pending(), 0);
        // A second answer with the same id is unknown again.
        assert!(matches!(
            c.complete(Response::ok(id(1), json!(1))),
            Completion::Late(_)
        ));
    }

    #[test]
    fn a_disconnect_frees_detached_registrations() {
        let c = RequestCorrelator::new();
        c.register_detached(id(1), "m").unwrap();
        let p = c.register(id(2), "m").unwrap();
        assert_eq!(c.fail_all(|| Error::Disconnected), 2);
        assert_eq!(c.pending(), 0);
        assert!(matches!(p.wait(Duration::ZERO), Err(Error::Disconnected)));
    }

    #[test]
    fn an_unknown_id_comes_back_late() {
        let c = RequestCorrelator::new();
        assert!(matches!(
            c.complete(Response::ok(id(99), json!(1))),
            Completion::Late(_)
        ));
    }

    #[test]
    fn disconnect_fails_every_pending_request() {
        let c = RequestCorrelator::new();
        let ps: Vec<_> = (1..=5).map(|n| c.register(id(n), "m").unwrap()).collect();
        let waiters: Vec<_> = ps
            .into_iter()
            .map(|p| thread::spawn(move || p.wait(Duration::from_secs(10))))
            .collect();
        thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        assert_eq!(c.fail_all(|| Error::Disconnected), 5);
        for w in waiters {
            assert!(matches!(w.join().unwrap(), Err(Error::Disconnected)));
        }
        // At once: nobody waited out their 10 s timeout.
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn dropping_a_pending_request_frees_its_slot() {
        let c = RequestCorrelator::new();
        drop(c.register(id(1), "m").unwrap());
        assert_eq!(c.pending(), 0);
        assert!(matches!(
            c.complete(Response::ok(id(1), json!(1))),
            Completion::Late(_)
        ));
    }

    #[test]
    fn a_dropped_correlator_fails_the_wait_at_once() {
        let c = RequestCorrelator::new();
        let p = c.register(id(1), "m").unwrap();
        drop(c);
        assert!(matches!(
            p.wait(Duration::from_secs(10)),
            Err(Error::Disconnected)
        ));
    }

    #[test]
    fn cancel_makes_the_response_late() {
        let c = RequestCorrelator::new();
        let p = c.register(id(1), "m").unwrap();
        c.cancel(&id(1));
        assert!(!c.is_pending(&id(1)));
        assert!(matches!(
            c.complete(Response::ok(id(1), json!(1))),
            Completion::Late(_)
        ));
        // The waiter learns at once, without waiting out its own timeout.
        let start = Instant::now();
        assert!(matches!(
            p.wait(Duration::from_secs(10)),
            Err(Error::Timeout(TimeoutKind::Request))
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_recent_timeout_set_stays_bounded() {
        let c = RequestCorrelator::new();
        for n in 0..(RECENT_TIMEOUTS as u64 * 3) {
            drop(c.register(id(n), "m").unwrap());
        }
        let st = c.inner.state.lock();
        assert_eq!(st.recent.len(), RECENT_TIMEOUTS);
        assert_eq!(st.recent_set.len(), RECENT_TIMEOUTS);
    }

    #[test]
    fn latency_counts_delivered_round_trips_in_a_bounded_ring() {
        let c = RequestCorrelator::new();
        assert_eq!(c.latency(), LatencyStats::default());
        for n in 0..(LATENCY_SAMPLES as u64 + 10) {
            let p = c.register(id(n), "m").unwrap();
            c.complete(Response::ok(id(n), json!(null)));
            p.wait(Duration::ZERO).unwrap();
        }
        let s = c.latency();
        assert_eq!(s.count, LATENCY_SAMPLES);
        assert!(s.p50.unwrap() <= s.p99.unwrap());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 50), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&ms, 99), Some(Duration::from_millis(99)));
        let one = [Duration::from_millis(7)];
        assert_eq!(percentile(&one, 50), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 99), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn racing_timeouts_and_responses_never_lose_or_duplicate_an_answer() {
        // Every response is either delivered to its caller or handed back late,
        // exactly once, however the timeout and the response interleave.
        let c = RequestCorrelator::new();
        let n = 400u64;
        let pending: Vec<_> = (0..n).map(|i| c.register(id(i), "m").unwrap()).collect();
        let waiters: Vec<_> = pending
            .into_iter()
            .map(|p| thread::spawn(move || p.wait(Duration::from_micros(200)).is_ok()))
            .collect();
        let c2 = c.clone();
        let completer = thread::spawn(move || {
            (0..n)
                .filter(|i| {
                    matches!(
                        c2.complete(Response::ok(id(*i), json!(i))),
                        Completion::Late(_)
                    )
                })
                .count()
        });
        let late = completer.join().unwrap();
        let delivered = waiters
            .into_iter()
            .map(|w| w.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(delivered + late, n as usize);
        assert_eq!(c.pending(), 0);
    }
}
