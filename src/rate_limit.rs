//! Outbound rate limiting: a token bucket with per-message costs.
//!
//! A bucket holds up to `capacity` tokens and gains `refill_per_sec` tokens a
//! second. Each outgoing message costs tokens, as the [`CostFn`] decides (1
//! per message unless told otherwise). When there are not enough tokens the
//! [`RateLimitMode`] decides: reject at once with [`Error::RateLimited`], or
//! block for a bounded time.
//!
//! The bucket is a plain data structure behind one mutex: the time comes
//! from a clock that tests replace ([`TokenBucket::with_clock`]), so refill
//! is tested exactly, without sleeping.
//!
//! ```
//! use zen_websocket::rate_limit::{MessageInfo, MessageKind, RateLimit, TokenBucket};
//! use zen_websocket::Error;
//!
//! // Two messages at once, then one every 100 ms.
//! let bucket = TokenBucket::new(RateLimit::new(2.0, 10.0))?;
//! let msg = MessageInfo::new(MessageKind::Text, 5);
//! bucket.acquire(&msg)?;
//! bucket.acquire(&msg)?;
//! match bucket.acquire(&msg) {
//!     Err(Error::RateLimited { retry_after }) => assert!(retry_after.as_millis() <= 100),
//!     other => panic!("expected a rate limit, got {other:?}"),
//! }
//! # Ok::<(), zen_websocket::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::{ConfigError, Error, Result, TimeoutKind};

/// What kind of outgoing message is being charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// A text message sent by the user.
    Text,
    /// A binary message sent by the user.
    Binary,
    /// A JSON-RPC request (`Client::request`).
    Request,
    /// A subscribe, unsubscribe or restore message.
    Subscription,
    /// An answer to a platform heartbeat (Deribit's `public/test`).
    Heartbeat,
}

/// The outgoing message a [`CostFn`] prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo<'a> {
    /// The JSON-RPC `"method"` of the message, if it has one.
    pub method: Option<&'a str>,
    /// The payload length in bytes.
    pub len: usize,
    /// What kind of message it is.
    pub kind: MessageKind,
}

impl<'a> MessageInfo<'a> {
    /// A message of `kind` and `len` bytes, without a method.
    pub fn new(kind: MessageKind, len: usize) -> Self {
        MessageInfo {
            method: None,
            len,
            kind,
        }
    }

    /// The same message, with its JSON-RPC method.
    pub fn with_method(mut self, method: &'a str) -> Self {
        self.method = Some(method);
        self
    }
}

/// Prices an outgoing message in tokens. Must return a finite number `>= 0`
/// and no more than the capacity; a cost of 0 is never limited.
pub type CostFn = Arc<dyn Fn(&MessageInfo<'_>) -> f64 + Send + Sync>;

/// What to do when a message costs more tokens than are available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitMode {
    /// Wait for the tokens, but never longer than `max_wait` in total. When
    /// the wait needed right away is already longer, fail at once with
    /// [`Error::RateLimited`]; when other senders keep taking the refilled
    /// tokens until `max_wait` has been spent waiting, fail with
    /// [`Error::Timeout`]`(`[`TimeoutKind::RateLimit`]`)`.
    Block {
        /// The longest total wait.
        max_wait: Duration,
    },
    /// Fail at once with [`Error::RateLimited`], saying how long to wait.
    Reject,
}

/// A rate limit: bucket size, refill rate, mode and cost function.
///
/// Build it with [`RateLimit::new`] and the setters, or take a preset
/// ([`RateLimit::deribit_non_matching_engine`], [`RateLimit::deribit_matching_engine`]).
#[derive(Clone)]
pub struct RateLimit {
    /// The most tokens the bucket holds (the burst). Must be finite and `> 0`.
    pub capacity: f64,
    /// Tokens regained per second (the sustained rate). Must be finite and `> 0`.
    pub refill_per_sec: f64,
    /// Reject or block when tokens run out.
    pub mode: RateLimitMode,
    /// The price of each message.
    pub cost: CostFn,
    // Costs declared through `method_costs`, checked by `validate` (a closure
    // set with `cost_fn` can only be checked when it is called).
    declared_costs: Vec<f64>,
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("capacity", &self.capacity)
            .field("refill_per_sec", &self.refill_per_sec)
            .field("mode", &self.mode)
            .field("cost", &"<fn>")
            .finish()
    }
}

/// Deribit's documented cost of one request, in credits.
const DERIBIT_CREDITS_PER_REQUEST: f64 = 500.0;

impl RateLimit {
    /// `capacity` tokens, refilled at `refill_per_sec`; each message costs 1
    /// token and is rejected when the bucket is empty.
    pub fn new(capacity: f64, refill_per_sec: f64) -> Self {
        RateLimit {
            capacity,
            refill_per_sec,
            mode: RateLimitMode::Reject,
            cost: Arc::new(|_| 1.0),
            declared_costs: Vec::new(),
        }
    }

    /// Reject or block. Defaults to [`RateLimitMode::Reject`].
    pub fn mode(mut self, mode: RateLimitMode) -> Self {
        self.mode = mode;
        self
    }

    /// Price messages with `cost`. Defaults to 1 per message.
    pub fn cost_fn(
        mut self,
        cost: impl Fn(&MessageInfo<'_>) -> f64 + Send + Sync + 'static,
    ) -> Self {
        self.cost = Arc::new(cost);
        self.declared_costs.clear();
        self
    }

    /// Price messages by their JSON-RPC method: `costs[method]`, or `default`
    /// for a message whose method is not listed or that has none.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use zen_websocket::rate_limit::{MessageInfo, MessageKind, RateLimit};
    ///
    /// let limit = RateLimit::new(10.0, 1.0)
    ///     .method_costs(HashMap::from([("private/buy".to_string(), 5.0)]), 1.0);
    /// let buy = MessageInfo::new(MessageKind::Request, 80).with_method("private/buy");
    /// assert_eq!((limit.cost)(&buy), 5.0);
    /// assert_eq!((limit.cost)(&MessageInfo::new(MessageKind::Text, 3)), 1.0);
    /// ```
    pub fn method_costs(mut self, costs: HashMap<String, f64>, default: f64) -> Self {
        self.declared_costs = costs.values().copied().chain([default]).collect();
        self.cost = Arc::new(move |info: &MessageInfo<'_>| {
            info.method
                .and_then(|m| costs.get(m).copied())
                .unwrap_or(default)
        });
        self
    }

    /// Deribit's default limit for non-matching-engine requests (everything
    /// but order entry: market data, account queries, subscriptions, and
    /// session messages such as heartbeat answers), in Deribit's credits:
    /// each request costs **500 credits**, the pool holds at most **50,000
    /// credits** and refills **10,000 credits per second**: a burst of 100
    /// requests, 20 per second sustained.
    ///
    /// These are the defaults Deribit documents in its "Rate Limits" article
    /// (support.deribit.com, "Default Settings for Non-Matching Engine
    /// Requests"); an account may have others, which
    /// `private/get_account_summary` reports. Mode: block for at most 1 s,
    /// because Deribit answers an exceeded limit with `too_many_requests`
    /// (10028) *and terminates the session*, so a short wait is cheaper than
    /// the error.
    pub fn deribit_non_matching_engine() -> Self {
        RateLimit::new(50_000.0, 10_000.0)
            .cost_fn(|_| DERIBIT_CREDITS_PER_REQUEST)
            .mode(RateLimitMode::Block {
                max_wait: Duration::from_secs(1),
            })
    }

    /// Deribit's matching-engine limit (order entry: `private/buy`, `sell`,
    /// `edit`, `cancel*`, `close_position`, …) for the lowest volume tier,
    /// which every account starts in: a burst of **20 requests**, **5 per
    /// second** sustained.
    ///
    /// Deribit states matching-engine limits in requests; they are expressed
    /// here in the same credits as [`deribit_non_matching_engine`](Self::deribit_non_matching_engine)
    /// (500 per request): capacity 10,000 credits, refill 2,500 credits per
    /// second. Higher tiers (by 7-day volume) allow more; read yours from
    /// `private/get_account_summary` and build a [`RateLimit`] from it. Meant
    /// for a connection that carries order entry only, since one bucket prices
    /// every message the same. Mode: block for at most 1 s (see above).
    pub fn deribit_matching_engine() -> Self {
        RateLimit::new(
            20.0 * DERIBIT_CREDITS_PER_REQUEST,
            5.0 * DERIBIT_CREDITS_PER_REQUEST,
        )
        .cost_fn(|_| DERIBIT_CREDITS_PER_REQUEST)
        .mode(RateLimitMode::Block {
            max_wait: Duration::from_secs(1),
        })
    }

    /// Check the limit; the error names the field (`rate_limit.capacity`,
    /// `rate_limit.refill_per_sec`, `rate_limit.cost`) and the rule.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        if !(self.capacity.is_finite() && self.capacity > 0.0) {
            return Err(ConfigError::new(
                "rate_limit.capacity",
                format!(
                    "must be a finite number greater than zero (got {})",
                    self.capacity
                ),
            ));
        }
        if !(self.refill_per_sec.is_finite() && self.refill_per_sec > 0.0) {
            return Err(ConfigError::new(
                "rate_limit.refill_per_sec",
                format!(
                    "must be a finite number greater than zero (got {})",
                    self.refill_per_sec
                ),
            ));
        }
        for &cost in &self.declared_costs {
            check_cost(cost, self.capacity)?;
        }
        Ok(())
    }
}

/// A cost must be finite, `>= 0`, and fit in the bucket (else the message could never go).
fn check_cost(cost: f64, capacity: f64) -> std::result::Result<(), ConfigError> {
    if !(cost.is_finite() && cost >= 0.0) {
        return Err(ConfigError::new(
            "rate_limit.cost",
            format!("must be a finite number of at least zero (got {cost})"),
        ));
    }
    if cost > capacity {
        return Err(ConfigError::new(
            "rate_limit.cost",
            format!(
                "a message costing {cost} exceeds the capacity {capacity} and could never be sent"
            ),
        ));
    }
    Ok(())
}

/// A source of the current time; tests pass one they can advance by hand.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket enforcing a [`RateLimit`]. Shared by every sender of a
/// client; exact under concurrency (one mutex guards the refill and the take
/// together, so two senders can never both spend the same token).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::{Duration, Instant};
/// use zen_websocket::rate_limit::{RateLimit, TokenBucket};
///
/// // A hand-driven clock: refill without sleeping.
/// let now = Arc::new(Mutex::new(Instant::now()));
/// let clock = { let now = now.clone(); Arc::new(move || *now.lock().unwrap()) };
/// let bucket = TokenBucket::with_clock(RateLimit::new(1.0, 4.0), clock)?;
///
/// assert_eq!(bucket.try_acquire(1.0), Ok(()));
/// assert_eq!(bucket.try_acquire(1.0), Err(Duration::from_millis(250)));
/// *now.lock().unwrap() += Duration::from_millis(250);
/// assert_eq!(bucket.try_acquire(1.0), Ok(()));
/// # Ok::<(), zen_websocket::Error>(())
/// ```
pub struct TokenBucket {
    limit: RateLimit,
    clock: Clock,
    state: Mutex<Bucket>,
}

impl fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBucket")
            .field("limit", &self.limit)
            .field("available", &self.available())
            .finish()
    }
}

impl TokenBucket {
    /// A full bucket for `limit`, on the system clock. Fails with
    /// [`Error::Config`] when the limit is invalid.
    pub fn new(limit: RateLimit) -> Result<TokenBucket> {
        TokenBucket::with_clock(limit, Arc::new(Instant::now))
    }

    /// A full bucket for `limit` that reads the time from `clock`.
    pub fn with_clock(limit: RateLimit, clock: Clock) -> Result<TokenBucket> {
        limit.validate()?;
        let now = clock();
        Ok(TokenBucket {
            state: Mutex::new(Bucket {
                tokens: limit.capacity,
                last: now,
            }),
            limit,
            clock,
        })
    }

    /// The limit this bucket enforces.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Take `cost` tokens now, or say how long until they are there.
    ///
    /// A cost that can never be paid (more than the capacity, negative, not
    /// finite) gives `Err(Duration::MAX)`; [`acquire`](Self::acquire) reports
    /// it as a config error instead.
    pub fn try_acquire(&self, cost: f64) -> std::result::Result<(), Duration> {
        if check_cost(cost, self.limit.capacity).is_err() {
            return Err(Duration::MAX);
        }
        let now = (self.clock)();
        let mut b = self.state.lock();
        self.refill(&mut b, now);
        // Refill is floating point: without a little slack, 0.1 s · 10/s can
        // come out a hair under the 1 token it means. The slack is far below
        // one token, so it cannot grant a message early in any sense that
        // matters, and tokens never go below zero.
        let slack = self.limit.capacity * 1e-9;
        if b.tokens + slack >= cost {
            b.tokens = (b.tokens - cost).max(0.0);
            Ok(())
        } else {
            Err(wait_for(cost - b.tokens, self.limit.refill_per_sec))
        }
    }

    /// Charge `info` as the limit's cost function prices it, applying the mode.
    ///
    /// - [`Error::Config`] (`rate_limit.cost`) when the cost is invalid or
    ///   larger than the capacity: it could never be sent, so waiting is useless;
    /// - [`RateLimitMode::Reject`]: [`Error::RateLimited`]`{retry_after}` when
    ///   the tokens are not there;
    /// - [`RateLimitMode::Block`]: sleeps until they are. When the wait
    ///   needed is longer than `max_wait`, fails at once with
    ///   `RateLimited{retry_after}` (no point sleeping to fail); when other
    ///   senders win the refilled tokens until `max_wait` is spent, fails
    ///   with [`Error::Timeout`]`(`[`TimeoutKind::RateLimit`]`)`. Waiters are
    ///   not served in order.
    pub fn acquire(&self, info: &MessageInfo<'_>) -> Result<()> {
        self.acquire_cost((self.limit.cost)(info))
    }

    /// Acquire the summed cost of several messages sent as one frame (a JSON-RPC
    /// batch) in one step, under the bucket's mode: the venue counts each
    /// request, so the bucket must too.
    pub fn acquire_all(&self, infos: &[MessageInfo<'_>]) -> Result<()> {
        self.acquire_cost(infos.iter().map(|i| (self.limit.cost)(i)).sum())
    }

    fn acquire_cost(&self, cost: f64) -> Result<()> {
        check_cost(cost, self.limit.capacity)?;
        match self.limit.mode {
            RateLimitMode::Reject => self
                .try_acquire(cost)
                .map_err(|retry_after| Error::RateLimited { retry_after }),
            RateLimitMode::Block { max_wait } => {
                // Count the time asked to sleep rather than reading the clock,
                // so the loop ends even with a clock that does not move.
                let mut waited = Duration::ZERO;
                loop {
                    match self.try_acquire(cost) {
                        Ok(()) => return Ok(()),
                        Err(wait) if waited.is_zero() && wait > max_wait => {
                            return Err(Error::RateLimited { retry_after: wait })
                        }
                        Err(wait) => {
                            if waited.saturating_add(wait) > max_wait {
                                return Err(Error::Timeout(TimeoutKind::RateLimit));
                            }
                            std::thread::sleep(wait);
                            waited += wait;
                        }
                    }
                }
            }
        }
    }

    /// Tokens available right now.
    pub fn available(&self) -> f64 {
        let now = (self.clock)();
        let mut b = self.state.lock();
        self.refill(&mut b, now);
        b.tokens
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        // A clock that steps back (a test clock, or two threads reading the
        // clock before taking the lock in the other order) adds nothing.
        if now > b.last {
            let secs = now.duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + secs * self.limit.refill_per_sec).min(self.limit.capacity);
            b.last = now;
        }
    }
}

/// The time `missing` tokens take to refill, rounded up to the nanosecond so
/// that waiting it out is enough. A value a rounding error away from a whole
/// nanosecond is taken as that nanosecond (250 ms, not 250 ms + 1 ns); the
/// grant slack in `try_acquire` covers the difference.
fn wait_for(missing: f64, refill_per_sec: f64) -> Duration {
    let exact = missing / refill_per_sec * 1e9;
    let nearest = exact.round();
    let nanos = if (exact - nearest).abs() < 1e-3 {
        nearest
    } else {
        exact.ceil()
    };
    if nanos.is_finite() && nanos >= 0.0 && nanos < u64::MAX as f64 {
        Duration::from_nanos(nanos as u64)
    } else {
        Duration::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    /// A clock moved by hand.
    fn manual_clock() -> (Arc<Mutex<Instant>>, Clock) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let n = now.clone();
        (now, Arc::new(move || *n.lock()))
    }

    fn text() -> MessageInfo<'static> {
        MessageInfo::new(MessageKind::Text, 1)
    }

    #[test]
    fn a_full_bucket_grants_its_capacity_then_rejects() {
        let (_, clock) = manual_clock();
        let b = TokenBucket::with_clock(RateLimit::new(3.0, 1.0), clock).unwrap();
        for _ in 0..3 {
            b.acquire(&text()).unwrap();
        }
        match b.acquire(&text()) {
            Err(Error::RateLimited { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refill_is_exact_with_a_manual_clock() {
        let (now, clock) = manual_clock();
        let b = TokenBucket::with_clock(RateLimit::new(10.0, 10.0), clock).unwrap();
        assert_eq!(b.try_acquire(10.0), Ok(()));
        assert_eq!(b.available(), 0.0);
        *now.lock() += Duration::from_millis(350);
        assert!((b.available() - 3.5).abs() < 1e-9);
        assert_eq!(b.try_acquire(4.0), Err(Duration::from_millis(50)));
        *now.lock() += Duration::from_millis(50);
        assert_eq!(b.try_acquire(4.0), Ok(()));
    }

    #[test]
    fn refill_never_exceeds_the_capacity() {
        let (now, clock) = manual_clock();
        let b = TokenBucket::with_clock(RateLimit::new(5.0, 100.0), clock).unwrap();
        *now.lock() += Duration::from_secs(3600);
        assert_eq!(b.available(), 5.0);
    }

    #[test]
    fn a_clock_stepping_back_adds_nothing() {
        let (now, clock) = manual_clock();
        let b = TokenBucket::with_clock(RateLimit::new(5.0, 1.0), clock).unwrap();
        b.try_acquire(5.0).unwrap();
        *now.lock() -= Duration::from_secs(10);
        assert_eq!(b.available(), 0.0);
    }

    #[test]
    fn sustained_rate_matches_the_refill() {
        // 100 ms steps at 10 tokens/s: exactly one message per step, however
        // the float arithmetic rounds.
        let (now, clock) = manual_clock();
        let b = TokenBucket::with_clock(RateLimit::new(1.0, 10.0), clock).unwrap();
        b.try_acquire(1.0).unwrap();
        for step in 0..1000 {
            *now.lock() += Duration::from_millis(100);
            assert_eq!(b.try_acquire(1.0), Ok(()), "step {step}");
            assert!(b.try_acquire(1.0).is_err(), "step {step}");
        }
    }

    #[test]
    fn bucket_never_grants_more_than_capacity_under_contention() {
        let limit = RateLimit::new(100.0, 1e-9);
        let b = Arc::new(TokenBucket::new(limit).unwrap());
        let granted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (b, granted) = (b.clone(), granted.clone());
                thread::spawn(move || {
                    for _ in 0..1000 {
                        if b.try_acquire(1.0).is_ok() {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(granted.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn a_cost_larger_than_the_capacity_is_a_config_error_at_once() {
        let limit = RateLimit::new(10.0, 1.0)
            .cost_fn(|_| 11.0)
            .mode(RateLimitMode::Block {
                max_wait: Duration::from_secs(60),
            });
        let b = TokenBucket::new(limit).unwrap();
        let start = Instant::now();
        match b.acquire(&text()) {
            Err(Error::Config(e)) => assert_eq!(e.field, "rate_limit.cost"),
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(b.try_acquire(11.0), Err(Duration::MAX));
    }

    #[test]
    fn invalid_costs_from_a_cost_function_are_config_errors() {
        for bad in [f64::NAN, -1.0, f64::INFINITY] {
            let b = TokenBucket::new(RateLimit::new(10.0, 1.0).cost_fn(move |_| bad)).unwrap();
            assert!(matches!(b.acquire(&text()), Err(Error::Config(_))), "{bad}");
        }
    }

    #[test]
    fn a_zero_cost_is_never_limited() {
        let (_, clock) = manual_clock();
        let b = TokenBucket::with_clock(RateLimit::new(1.0, 1.0).cost_fn(|_| 0.0), clock).unwrap();
        for _ in 0..100 {
            b.acquire(&text()).unwrap();
        }
    }

    #[test]
    fn validation_names_the_field() {
        let field = |l: RateLimit| l.validate().unwrap_err().field;
        assert_eq!(field(RateLimit::new(0.0, 1.0)), "rate_limit.capacity");
        assert_eq!(field(RateLimit::new(f64::NAN, 1.0)), "rate_limit.capacity");
        assert_eq!(
            field(RateLimit::new(f64::INFINITY, 1.0)),
            "rate_limit.capacity"
        );
        assert_eq!(field(RateLimit::new(1.0, 0.0)), "rate_limit.refill_per_sec");
        assert_eq!(
            field(RateLimit::new(1.0, -5.0)),
            "rate_limit.refill_per_sec"
        );
        let costs = HashMap::from([("a".to_string(), 2.0)]);
        assert_eq!(
            field(RateLimit::new(1.0, 1.0).method_costs(costs, 1.0)),
            "rate_limit.cost"
        );
        let costs = HashMap::new();
        assert_eq!(
            field(RateLimit::new(1.0, 1.0).method_costs(costs, -1.0)),
            "rate_limit.cost"
        );
        assert!(matches!(
            TokenBucket::new(RateLimit::new(-1.0, 1.0)),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn method_costs_price_by_method() {
        let (_, clock) = manual_clock();
        let costs = HashMap::from([("private/buy".to_string(), 4.0)]);
        let b = TokenBucket::with_clock(RateLimit::new(5.0, 1.0).method_costs(costs, 1.0), clock)
            .unwrap();
        let buy = MessageInfo::new(MessageKind::Request, 10).with_method("private/buy");
        b.acquire(&buy).unwrap();
        b.acquire(&MessageInfo::new(MessageKind::Request, 10).with_method("public/test"))
            .unwrap();
        assert!(matches!(b.acquire(&buy), Err(Error::RateLimited { .. })));
    }

    #[test]
    fn block_waits_for_the_refill() {
        let limit = RateLimit::new(1.0, 50.0).mode(RateLimitMode::Block {
            max_wait: Duration::from_secs(2),
        });
        let b = TokenBucket::new(limit).unwrap();
        b.acquire(&text()).unwrap();
        let start = Instant::now();
        b.acquire(&text()).unwrap();
        let waited = start.elapsed();
        // One token at 50/s is 20 ms; allow for a slow machine.
        assert!(waited >= Duration::from_millis(15), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn block_fails_at_once_when_the_wait_would_exceed_max_wait() {
        let (_, clock) = manual_clock();
        let limit = RateLimit::new(1.0, 1.0).mode(RateLimitMode::Block {
            max_wait: Duration::from_millis(100),
        });
        let b = TokenBucket::with_clock(limit, clock).unwrap();
        b.acquire(&text()).unwrap();
        let start = Instant::now();
        match b.acquire(&text()) {
            Err(Error::RateLimited { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn block_gives_up_with_a_timeout_when_it_keeps_losing_the_tokens() {
        // A clock that never moves: every sleep is in vain, as when other
        // senders win each refilled token. The loop must still end.
        let (_, clock) = manual_clock();
        let limit = RateLimit::new(1.0, 100.0).mode(RateLimitMode::Block {
            max_wait: Duration::from_millis(50),
        });
        let b = TokenBucket::with_clock(limit, clock).unwrap();
        b.acquire(&text()).unwrap();
        assert!(matches!(
            b.acquire(&text()),
            Err(Error::Timeout(TimeoutKind::RateLimit))
        ));
    }

    #[test]
    fn deribit_presets_use_the_documented_credits() {
        let ne = RateLimit::deribit_non_matching_engine();
        assert_eq!((ne.capacity, ne.refill_per_sec), (50_000.0, 10_000.0));
        assert_eq!((ne.cost)(&text()), 500.0);
        let me = RateLimit::deribit_matching_engine();
        assert_eq!(
            (me.capacity / 500.0, me.refill_per_sec / 500.0),
            (20.0, 5.0)
        );
        assert_eq!((me.cost)(&text()), 500.0);

        // Burst 100, then 20 per second.
        let (now, clock) = manual_clock();
        let b = TokenBucket::with_clock(ne.mode(RateLimitMode::Reject), clock).unwrap();
        for _ in 0..100 {
            b.acquire(&text()).unwrap();
        }
        assert!(b.acquire(&text()).is_err());
        *now.lock() += Duration::from_secs(1);
        for _ in 0..20 {
            b.acquire(&text()).unwrap();
        }
        assert!(b.acquire(&text()).is_err());
    }

    #[test]
    fn waits_round_up_and_never_overflow() {
        assert_eq!(wait_for(1.0, 3.0), Duration::from_nanos(333_333_334));
        assert_eq!(wait_for(1.0, 1e-30), Duration::MAX);
        assert_eq!(wait_for(0.0, 1.0), Duration::ZERO);
    }

    #[test]
    fn debug_does_not_try_to_print_the_cost_function() {
        let s = format!("{:?}", TokenBucket::new(RateLimit::new(1.0, 1.0)).unwrap());
        assert!(s.contains("<fn>"), "{s}");
    }
}
