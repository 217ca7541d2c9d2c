//! A pool of supervised clients with health-based routing.
//!
//! [`Pool::builder`] takes one [`Config`] per client ([`PoolBuilder::client`])
//! or one config and a count ([`PoolBuilder::clients`]); [`PoolBuilder::start`]
//! connects them, puts them under supervision and starts the router thread.
//!
//! ```
//! use std::time::Duration;
//! use zen_websocket::pool::{Pool, PoolEvent};
//! use zen_websocket::testing::MockServer;
//! use zen_websocket::{Config, Event, Message};
//!
//! let a = MockServer::start()?; // local echo servers
//! let b = MockServer::start()?;
//! let pool = Pool::builder()
//!     .client(Config::new(a.url())?)
//!     .client(Config::new(b.url())?)
//!     .start()?;
//! let id = pool.send_balanced("hello")?; // written by the healthiest client
//! let events = pool.events();
//! loop {
//!     match events.recv_timeout(Duration::from_secs(5)) {
//!         Ok((from, PoolEvent::Client(Event::Message(Message::Text(t))))) => {
//!             assert_eq!((from, t.as_str()), (id, "hello"));
//!             break;
//!         }
//!         Ok(_) => continue, // Connected events and the like
//!         Err(e) => panic!("no echo: {e}"),
//!     }
//! }
//! assert_eq!(pool.health().len(), 2);
//! pool.shutdown()?; // closes every client, joins the router
//! # Ok::<(), zen_websocket::Error>(())
//! ```
//!
//! # Threads
//!
//! | thread | name | does | ends |
//! | --- | --- | --- | --- |
//! | router | `zen-ws-pool-router` | merges events, keeps the health table, supervises | [`Pool::shutdown`] / drop |
//! | restart | `zen-ws-pool-restart-<id>` | one `Client::connect` of a restart | after that connect; joined by the router |
//! | connect | `zen-ws-pool-connect-<id>` | the connects of `start`, in parallel (scoped) | before `start` returns |
//! | close | `zen-ws-pool-close-<id>` | the closes of `shutdown`, in parallel (scoped) | before `shutdown` returns |
//!
//! Each client keeps its own connection thread (`zen-ws-conn-<n>`). Restarts
//! connect on a thread of their own so that a slow dial (bounded by
//! `connect_timeout`) never stops the router from forwarding the other
//! clients' events.
//!
//! # Merging events
//!
//! There is no forwarding thread per client. The router waits in one
//! crossbeam [`Select`](crossbeam_channel::Select) over its control channel
//! and every client's event receiver, with a timeout to the next health
//! refresh or scheduled restart. A ready receiver is drained in a burst (at
//! most 256 events) into the merged channel, tagged with the [`ClientId`];
//! pool events ([`PoolEvent::Restarted`], ...) go into the same channel, after
//! the client events they follow. The `Select` is built afresh at each
//! wake-up, which costs O(clients); the burst spreads that over many events,
//! and an idle pool wakes only for its health refresh.
//!
//! The merged channel is bounded ([`PoolBuilder::event_capacity`]). Under
//! [`EventPolicy::Block`] (the default) a full channel makes the router stop
//! reading the clients' receivers; the clients' own channels then fill and
//! their connection threads wait, which pushes back on the servers over TCP:
//! nothing is lost. While blocked the router still serves its control
//! channel and refreshes health, and it notices a client that ended (its
//! state is `Closed`) without reading its events, so supervision does not
//! wait for the consumer. Under [`EventPolicy::DropNewest`] messages that do
//! not fit are dropped and counted ([`PoolStats::dropped_events`]); lifecycle
//! and pool events are never dropped. Choose `DropNewest` if you never read
//! [`Pool::events`].
//!
//! # Routing
//!
//! [`Pool::send_balanced`] routes on the caller's thread: it reads the health
//! table under a shared lock (an atomic score per client, stored by the
//! router), picks the best connected client, takes turns among equal scores,
//! clones that client's handle, releases the lock and sends. There is no
//! thread hop, and the only allocation is the copy of the message kept while
//! a failover is possible (a failed send does not hand the message back).
//! The router refreshes every score each
//! [`PoolBuilder::health_interval`] and at once when a client reports a
//! lifecycle event; routing also checks each candidate's live state, so a
//! client that has just dropped is skipped before its score catches up.
//!
//! A send that did not reach the wire ([`Error::NotConnected`],
//! [`Error::Closed`], [`Error::RateLimited`], [`Error::Timeout`]`(RateLimit)`
//! and [`Error::Config`]: all raised before a byte is written) is tried on the
//! next best client, up to `max_attempts`; then the result is
//! [`PoolError::AttemptsExhausted`] with every cause. A send that reached the
//! wire (`Ok`, or an error of the write itself such as [`Error::Io`] or
//! [`Error::Timeout`]`(Write)`) is never sent again: such an error is
//! returned as it is. Requests ([`Pool::request_balanced`]) follow the same
//! rule, so a request is never sent twice.
//!
//! The health score is described in [`health`].
//!
//! # Supervision
//!
//! A client is *down* when its connection gave up ([`Event::GaveUp`]), ended
//! with a close the pool did not ask for ([`Event::Closed`], for instance a
//! peer close with reconnection off), or its connect failed at start or at a
//! restart. The pool then restarts it with a fresh [`Client::connect`] after a
//! [`Backoff`](crate::Backoff) delay ([`PoolBuilder::restart_delay`]),
//! reporting [`PoolEvent::Restarting`], then [`PoolEvent::Restarted`] or
//! [`PoolEvent::RestartFailed`]. More than [`PoolBuilder::max_restarts`]
//! attempts within [`PoolBuilder::restart_window`], or a cause that retrying
//! cannot cure ([`Recovery::Stop`](crate::Recovery::Stop)), mark it
//! [`Supervision::Failed`] with a [`PoolEvent::Failed`] that says why; it stays
//! in the pool (score 0) until [`Pool::remove`]d. The pool keeps serving with
//! the clients that are up. A client of [`Pool::clients`] closed by hand ends
//! as failed too (a user close says "stop"); use [`Pool::remove`] instead.
//!
//! At [`PoolBuilder::start`], a client that cannot connect does not fail the
//! start: it is down from the beginning, and supervision restarts it. Only
//! when every client fails does `start` fail, with
//! [`PoolError::AttemptsExhausted`] listing each client's cause.
//!
//! # Lock order
//!
//! `Inner::table` (a read-write lock), then a slot's `view` or `errors`
//! mutex (never both). No lock is held across I/O, a blocking channel send, a
//! connect or a close: routing clones the chosen client's handle and releases
//! the table before it sends.

pub mod health;
mod router;
mod supervision;
mod table;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use crate::client::{Client, ConnectionState, Event};
use crate::config::{Config, EventPolicy};
use crate::error::{ConfigError, Error, PoolError, Result, TimeoutKind};
use crate::message::Message;

use health::HealthInputs;
use router::{Control, Router};
use table::{Entry, Pick, Slot, Table};

/// The id of a client in a [`Pool`]: pool-local, starting at 1, never reused
/// within a pool. It stays the same across restarts (the restarted client's
/// own [`Client::id`] changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(u64);

impl ClientId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the pool reports on [`Pool::events`], tagged with the [`ClientId`].
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolEvent {
    /// An event of the client: a message, or its own lifecycle (connected,
    /// reconnecting, closed, ...).
    Client(Event),
    /// The client is down and will be restarted after `delay`.
    Restarting {
        /// Restart attempt since the client was last up (1-based).
        attempt: u32,
        /// The backoff delay before this attempt (zero for the first).
        delay: Duration,
        /// Why the client is down.
        cause: Arc<Error>,
    },
    /// A restart attempt failed to connect; another follows unless
    /// [`PoolEvent::Failed`] comes next.
    RestartFailed {
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: Arc<Error>,
    },
    /// The client was restarted: a fresh connection is open.
    Restarted {
        /// Which attempt succeeded.
        attempt: u32,
    },
    /// Supervision gave up on this client (too many restarts, or a cause that
    /// retrying cannot cure). It stays in the pool with a score of 0 until
    /// [`Pool::remove`]d.
    Failed {
        /// Why, in words, with the last error.
        reason: String,
    },
    /// The client was removed by [`Pool::remove`]; the last event for this id.
    Removed,
}

/// Where a client stands with the pool's supervision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Supervision {
    /// The client runs (connected, or reconnecting by itself).
    Running,
    /// The client is down and being restarted by the pool.
    Restarting {
        /// Restart attempt since it was last up (1-based).
        attempt: u32,
    },
    /// Supervision gave up ([`PoolEvent::Failed`]).
    Failed,
}

/// The health of one pool client, as routing sees it (see [`Pool::health`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientHealth {
    /// The client's id in the pool.
    pub id: ClientId,
    /// The URL it connects to.
    pub url: String,
    /// Its connection state (`Reconnecting` while the pool restarts it,
    /// `Closed` once supervision gave up).
    pub state: ConnectionState,
    /// Where it stands with supervision.
    pub supervision: Supervision,
    /// The routing score, 0 to 100 (see [`health`]); 0 is never picked.
    pub score: u8,
    /// Requests waiting for a response.
    pub pending: usize,
    /// The smoothed ping round trip.
    pub rtt: Option<Duration>,
    /// The p99 ping round trip over the last [`health::RTT_WINDOW`] pongs.
    pub rtt_p99: Option<Duration>,
    /// Recent errors, decayed (each counts 1, halving every
    /// [`PoolBuilder::error_half_life`]).
    pub recent_errors: f64,
    /// Successful restarts by the pool so far.
    pub restarts: u32,
}

/// Counters of a pool (see [`Pool::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Balanced sends that went out.
    pub balanced_sends: u64,
    /// Balanced requests that went out (whatever their answer).
    pub balanced_requests: u64,
    /// Times a balanced send or request moved on to another client because
    /// the previous one could not send.
    pub failovers: u64,
    /// Balanced sends and requests that ended in
    /// [`PoolError::AttemptsExhausted`].
    pub exhausted: u64,
    /// Successful restarts by supervision.
    pub restarts: u64,
    /// Messages dropped from the merged event channel under
    /// [`EventPolicy::DropNewest`].
    pub dropped_events: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) balanced_sends: AtomicU64,
    pub(crate) balanced_requests: AtomicU64,
    pub(crate) failovers: AtomicU64,
    pub(crate) exhausted: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) dropped_events: AtomicU64,
}

/// The pool's settings, every default in [`Default`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_attempts: u32,
    pub(crate) max_restarts: u32,
    pub(crate) restart_window: Duration,
    pub(crate) restart_delay: Duration,
    pub(crate) max_restart_delay: Duration,
    pub(crate) health_interval: Duration,
    pub(crate) error_half_life: Duration,
    pub(crate) event_capacity: usize,
    pub(crate) event_policy: EventPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_attempts: 3,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            restart_delay: Duration::from_secs(1),
            max_restart_delay: Duration::from_secs(30),
            health_interval: Duration::from_millis(250),
            error_half_life: Duration::from_secs(30),
            event_capacity: 4096,
            event_policy: EventPolicy::Block,
        }
    }
}

impl Settings {
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        for (field, d) in [
            ("restart_window", self.restart_window),
            ("restart_delay", self.restart_delay),
            ("max_restart_delay", self.max_restart_delay),
            ("health_interval", self.health_interval),
            ("error_half_life", self.error_half_life),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        if self.max_restart_delay < self.restart_delay {
            return Err(ConfigError::new(
                "max_restart_delay",
                "must be at least restart_delay",
            ));
        }
        if self.event_capacity == 0 {
            return Err(ConfigError::new(
                "event_capacity",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// State shared by the [`Pool`] handle, the router and restart threads.
///
/// Lock order: `table` first, then a slot's `view` or `errors` (see the
/// module documentation); none is held across I/O.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) table: RwLock<Table>,
    /// Turns among equally healthy clients.
    pub(crate) turn: AtomicUsize,
    pub(crate) next_id: AtomicU64,
    pub(crate) control: Sender<Control>,
    pub(crate) settings: Settings,
    pub(crate) counters: Counters,
}

impl Inner {
    /// Put a restarted client into its row; false when the row is gone
    /// (removed, or the pool is shutting down), and the caller closes it.
    pub(crate) fn install(&self, id: ClientId, client: &Client) -> bool {
        let mut table = self.table.write();
        if !table.open {
            return false;
        }
        match table.entries.iter_mut().find(|e| e.slot.id == id) {
            Some(entry) => {
                entry.client = Some(client.clone());
                true
            }
            None => false,
        }
    }
}

/// Configures and starts a [`Pool`]; made by [`Pool::builder`].
#[must_use = "a builder does nothing until `start` is called"]
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    configs: Vec<Config>,
    settings: Settings,
}

impl PoolBuilder {
    /// Add one client with this configuration. Defaults to no clients.
    pub fn client(mut self, config: Config) -> Self {
        self.configs.push(config);
        self
    }

    /// Add `n` clients with the same configuration.
    pub fn clients(mut self, config: Config, n: usize) -> Self {
        self.configs.extend(std::iter::repeat_n(config, n));
        self
    }

    /// How many clients a balanced send or request tries before it gives up
    /// with [`PoolError::AttemptsExhausted`]. Defaults to 3.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.settings.max_attempts = n;
        self
    }

    /// Restart attempts allowed per client within [`restart_window`](Self::restart_window);
    /// one more marks it failed. Defaults to 5.
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.settings.max_restarts = n;
        self
    }

    /// The window [`max_restarts`](Self::max_restarts) counts in. Defaults to 60 s.
    pub fn restart_window(mut self, d: Duration) -> Self {
        self.settings.restart_window = d;
        self
    }

    /// Base delay of the restart backoff (the first restart is immediate).
    /// Defaults to 1 s.
    pub fn restart_delay(mut self, d: Duration) -> Self {
        self.settings.restart_delay = d;
        self
    }

    /// Cap of the restart backoff. Defaults to 30 s.
    pub fn max_restart_delay(mut self, d: Duration) -> Self {
        self.settings.max_restart_delay = d;
        self
    }

    /// How often the router refreshes every client's score (lifecycle events
    /// refresh a client's score at once). Defaults to 250 ms.
    pub fn health_interval(mut self, d: Duration) -> Self {
        self.settings.health_interval = d;
        self
    }

    /// Half-life of the recent-error count in the health score. Defaults to 30 s.
    pub fn error_half_life(mut self, d: Duration) -> Self {
        self.settings.error_half_life = d;
        self
    }

    /// Capacity of the merged event channel. Defaults to 4096.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.settings.event_capacity = n;
        self
    }

    /// What the router does when the merged event channel is full. Defaults
    /// to [`EventPolicy::Block`] (back-pressure, nothing lost).
    pub fn event_policy(mut self, policy: EventPolicy) -> Self {
        self.settings.event_policy = policy;
        self
    }

    /// Connect every client (in parallel), start supervision and the router.
    ///
    /// - [`Error::Config`] for an invalid setting (the field is named);
    /// - [`PoolError::Empty`] without clients;
    /// - [`PoolError::AttemptsExhausted`] when *every* client failed to
    ///   connect, with one `(client id, error)` per client. When only some
    ///   fail, the pool starts, and supervision restarts those
    ///   ([`PoolEvent::Restarting`] follows on [`Pool::events`]).
    pub fn start(self) -> Result<Pool> {
        self.settings.validate()?;
        if self.configs.is_empty() {
            return Err(PoolError::Empty.into());
        }
        let settings = self.settings;
        let ids: Vec<ClientId> = (1..=self.configs.len() as u64).map(ClientId).collect();
        let results = connect_all(&ids, &self.configs);
        if results.iter().all(|r| r.is_err()) {
            let causes = ids
                .iter()
                .zip(results)
                .filter_map(|(id, r)| r.err().map(|e| (id.get(), e)))
                .collect();
            return Err(PoolError::AttemptsExhausted(causes).into());
        }
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let (out_tx, out_rx) = crossbeam_channel::bounded(settings.event_capacity);
        let half_life = settings.error_half_life;
        let mut entries = Vec::with_capacity(ids.len());
        let mut members = Vec::with_capacity(ids.len());
        for ((id, config), result) in ids.iter().zip(self.configs).zip(results) {
            let slot = Arc::new(Slot::new(*id, config, half_life));
            let client = result.as_ref().ok().cloned();
            if client.is_some() {
                publish_fresh(&slot);
            }
            entries.push(Entry {
                slot: slot.clone(),
                client,
            });
            members.push((slot, result));
        }
        let inner = Arc::new(Inner {
            table: RwLock::new(Table {
                entries,
                open: true,
            }),
            turn: AtomicUsize::new(0),
            next_id: AtomicU64::new(ids.len() as u64 + 1),
            control: control_tx,
            settings,
            counters: Counters::default(),
        });
        let router = Router::new(inner.clone(), control_rx, out_tx, members);
        let spawned = std::thread::Builder::new()
            .name("zen-ws-pool-router".into())
            .spawn(move || router.run());
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                // Nothing runs yet: close what connected and report.
                let clients = take_all(&inner);
                close_all(clients);
                return Err(Error::io("spawning the pool's router thread", e));
            }
        };
        Ok(Pool {
            inner,
            events: out_rx,
            router: Mutex::new(Some(thread)),
        })
    }
}

/// The score and view of a client that has just connected (no RTT, no errors
/// yet), so that routing can use it before the router's first refresh.
fn publish_fresh(slot: &Slot) {
    let inputs = HealthInputs {
        state: ConnectionState::Connected,
        pending: 0,
        rtt: None,
        rtt_p99: None,
        recent_errors: slot.errors.lock().value(Instant::now()),
    };
    let score = health::score(&inputs);
    {
        let mut view = slot.view.lock();
        view.state = ConnectionState::Connected;
        view.score = score;
        view.recent_errors = inputs.recent_errors;
    }
    slot.score.store(score, Ordering::Release);
}

/// How many connects (or closes) run at once at start (or shutdown).
const PARALLEL: usize = 16;

/// Connect every config, up to [`PARALLEL`] at a time, each on a scoped thread.
fn connect_all(ids: &[ClientId], configs: &[Config]) -> Vec<Result<Client>> {
    let mut results = Vec::with_capacity(configs.len());
    for (ids, configs) in ids.chunks(PARALLEL).zip(configs.chunks(PARALLEL)) {
        if configs.len() == 1 {
            results.push(Client::connect(configs[0].clone()));
            continue;
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .zip(configs)
                .map(|(id, config)| {
                    let config = config.clone();
                    std::thread::Builder::new()
                        .name(format!("zen-ws-pool-connect-{id}"))
                        .spawn_scoped(s, move || Client::connect(config))
                })
                .collect();
            for (handle, config) in handles.into_iter().zip(configs) {
                let result = match handle {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Err(Error::io(
                            "connecting a pool client",
                            std::io::Error::other("the connect thread panicked"),
                        ))
                    }),
                    // No thread to spare: connect here instead.
                    Err(_) => Client::connect(config.clone()),
                };
                results.push(result);
            }
        });
    }
    results
}

/// Take every client out of the table and close it to new ones.
fn take_all(inner: &Inner) -> Vec<Client> {
    let mut table = inner.table.write();
    table.open = false;
    std::mem::take(&mut table.entries)
        .into_iter()
        .filter_map(|e| e.client)
        .collect()
}

/// Close clients, up to [`PARALLEL`] at a time: a close waits for the peer's
/// close reply (bounded by `close_timeout`), and one slow peer should not add
/// its wait to everyone else's.
fn close_all(clients: Vec<Client>) {
    for chunk in clients.chunks(PARALLEL) {
        if chunk.len() == 1 {
            let _ = chunk[0].close();
            continue;
        }
        std::thread::scope(|s| {
            for client in chunk {
                let spawned = std::thread::Builder::new()
                    .name(format!("zen-ws-pool-close-{}", client.id()))
                    .spawn_scoped(s, move || {
                        let _ = client.close();
                    });
                if spawned.is_err() {
                    // No thread to spare: close here instead.
                    let _ = client.close();
                }
            }
        });
    }
}

/// True for the errors a send or request returns before any byte of it
/// reaches the socket: trying another client cannot send it twice.
pub(crate) fn not_sent(error: &Error) -> bool {
    matches!(
        error,
        Error::NotConnected
            | Error::Closed
            | Error::RateLimited { .. }
            | Error::Timeout(TimeoutKind::RateLimit)
            | Error::Config(_)
    )
}

/// A pool of supervised clients with health-based routing. See the [module
/// documentation](self) for the threads, the merging of events, routing,
/// supervision and the lock order.
///
/// `Pool` is `Send + Sync`: share it (`Arc<Pool>`, or scoped threads) to send
/// from many threads. [`shutdown`](Self::shutdown), or dropping the pool,
/// closes every client and joins the router; no thread outlives the pool.
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::pool::Pool;
/// use zen_websocket::testing::{MockServer, Reply};
/// use zen_websocket::Config;
///
/// let servers = [MockServer::start()?, MockServer::start()?, MockServer::start()?];
/// let mut builder = Pool::builder();
/// for s in &servers {
///     s.set_handler(|_| Reply::None); // count, do not echo
///     builder = builder.client(Config::new(s.url())?);
/// }
/// let pool = builder.start()?;
/// for i in 0..30 {
///     pool.send_balanced(format!("m{i}"))?;
/// }
/// // Equally healthy clients take turns.
/// for s in &servers {
///     s.wait_for_received(10, Duration::from_secs(5))?;
/// }
/// let total: usize = servers.iter().map(|s| s.received_count()).sum();
/// assert_eq!(total, 30);
/// # Ok::<(), zen_websocket::Error>(())
/// ```
pub struct Pool {
    inner: Arc<Inner>,
    events: Receiver<(ClientId, PoolEvent)>,
    router: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.inner.table.read();
        let ids: Vec<ClientId> = table.entries.iter().map(|e| e.slot.id).collect();
        f.debug_struct("Pool")
            .field("clients", &ids)
            .field("open", &table.open)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Start building a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Connect one more client (on the calling thread) and put it under
    /// supervision. A failed connect returns its error and leaves the pool as
    /// it was; after [`shutdown`](Self::shutdown), [`Error::Closed`].
    pub fn add(&self, config: Config) -> Result<ClientId> {
        if !self.inner.table.read().open {
            return Err(Error::Closed);
        }
        let client = Client::connect(config.clone())?;
        let id = ClientId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let slot = Arc::new(Slot::new(id, config, self.inner.settings.error_half_life));
        publish_fresh(&slot);
        {
            let mut table = self.inner.table.write();
            if table.open {
                table.entries.push(Entry {
                    slot: slot.clone(),
                    client: Some(client.clone()),
                });
            } else {
                drop(table);
                let _ = client.close();
                return Err(Error::Closed);
            }
        }
        // The router holds the control receiver until the pool shuts down,
        // and the table was open, so this cannot fail; if it did, the client
        // would stay routable without supervision.
        let _ = self.inner.control.send(Control::Add { slot, client });
        Ok(id)
    }

    /// Remove a client: it leaves routing at once, is closed (close handshake,
    /// joined) on the calling thread, and [`PoolEvent::Removed`] follows its
    /// last event. [`PoolError::UnknownClient`] if no client has this id.
    pub fn remove(&self, id: ClientId) -> Result<()> {
        let entry = {
            let mut table = self.inner.table.write();
            match table.entries.iter().position(|e| e.slot.id == id) {
                Some(i) => table.entries.remove(i),
                None => return Err(PoolError::UnknownClient(id.get()).into()),
            }
        };
        // Tell the router first, so that the close below is not taken for an
        // outage to restart from.
        let _ = self.inner.control.send(Control::Removing(id));
        if let Some(client) = entry.client {
            client.close()?;
        }
        Ok(())
    }

    /// The clients that have a connection object now (every client except
    /// those being restarted or failed), with their ids.
    pub fn clients(&self) -> Vec<(ClientId, Client)> {
        self.inner
            .table
            .read()
            .entries
            .iter()
            .filter_map(|e| e.client.clone().map(|c| (e.slot.id, c)))
            .collect()
    }

    /// How many clients the pool has (up, restarting or failed).
    pub fn len(&self) -> usize {
        self.inner.table.read().entries.len()
    }

    /// True when the pool has no clients.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The merged events of every client, tagged with its id, and the pool's
    /// own events. Every call returns a handle to the same channel; each event
    /// goes to one receiver. The channel ends (after its last event) once the
    /// pool has shut down.
    pub fn events(&self) -> Receiver<(ClientId, PoolEvent)> {
        self.events.clone()
    }

    /// The health of every client, in id order, as routing sees it: the
    /// router's last refresh, at most [`PoolBuilder::health_interval`] old
    /// (a lifecycle event refreshes its client at once).
    pub fn health(&self) -> Vec<ClientHealth> {
        let slots: Vec<Arc<Slot>> = self
            .inner
            .table
            .read()
            .entries
            .iter()
            .map(|e| e.slot.clone())
            .collect();
        let mut out: Vec<ClientHealth> = slots
            .iter()
            .map(|slot| {
                let view = slot.view.lock().clone();
                ClientHealth {
                    id: slot.id,
                    url: slot.url.clone(),
                    state: view.state,
                    supervision: view.supervision,
                    score: view.score,
                    pending: view.pending,
                    rtt: view.rtt,
                    rtt_p99: view.rtt_p99,
                    recent_errors: view.recent_errors,
                    restarts: view.restarts,
                }
            })
            .collect();
        out.sort_by_key(|h| h.id);
        out
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        PoolStats {
            balanced_sends: c.balanced_sends.load(Ordering::Relaxed),
            balanced_requests: c.balanced_requests.load(Ordering::Relaxed),
            failovers: c.failovers.load(Ordering::Relaxed),
            exhausted: c.exhausted.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            dropped_events: c.dropped_events.load(Ordering::Relaxed),
        }
    }

    /// Send a message through the healthiest connected client, failing over
    /// to the next one while the send did not reach the wire, up to the
    /// pool's `max_attempts` (3 by default). Returns the id of the client that
    /// sent it.
    ///
    /// - [`PoolError::Empty`]: the pool has no clients;
    /// - [`PoolError::NoneConnected`]: no client is connected;
    /// - [`PoolError::AttemptsExhausted`]: every attempt failed before the
    ///   message reached the wire (one cause per attempt); nothing was sent;
    /// - any other error is the write's own (the message may have reached the
    ///   server): it is returned as is and the message is not sent again.
    pub fn send_balanced(&self, message: impl Into<Message>) -> Result<ClientId> {
        self.send_balanced_with(message, self.inner.settings.max_attempts)
    }

    /// [`send_balanced`](Self::send_balanced) with its own attempt limit
    /// (at least 1).
    pub fn send_balanced_with(
        &self,
        message: impl Into<Message>,
        max_attempts: u32,
    ) -> Result<ClientId> {
        let mut message = Some(message.into());
        self.balanced(max_attempts, |client, last| {
            // The client consumes the message and a failed send does not hand
            // it back: keep a copy while another attempt may follow.
            let m = if last {
                message.take()
            } else {
                message.clone()
            };
            match m {
                Some(m) => client.send(m),
                // Unreachable: the message is only taken by the last attempt.
                None => Err(Error::Closed),
            }
        })
        .map(|(id, ())| {
            self.inner
                .counters
                .balanced_sends
                .fetch_add(1, Ordering::Relaxed);
            id
        })
    }

    /// A JSON-RPC request ([`Client::request`]) through the healthiest
    /// connected client. It fails over only while the request was not sent
    /// (the same errors as [`send_balanced`](Self::send_balanced)); once sent
    /// it is never sent again, so a timeout or a disconnect while waiting is
    /// returned as is.
    pub fn request_balanced(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let mut params = Some(params);
        let result = self.balanced(self.inner.settings.max_attempts, |client, last| {
            let p = if last { params.take() } else { params.clone() };
            match p {
                Some(p) => client.request(method, p),
                None => Err(Error::Closed),
            }
        });
        match result {
            Ok((_, value)) => {
                self.count_request();
                Ok(value)
            }
            Err(e) => {
                if !matches!(e, Error::Pool(_)) {
                    // Sent, and then failed (timeout, disconnect, RPC error).
                    self.count_request();
                }
                Err(e)
            }
        }
    }

    fn count_request(&self) {
        self.inner
            .counters
            .balanced_requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Pick, try, fail over: the routing loop of every balanced call.
    /// `attempt(client, last)` runs once per client; `last` says no other
    /// attempt will follow.
    fn balanced<T>(
        &self,
        max_attempts: u32,
        mut attempt: impl FnMut(&Client, bool) -> Result<T>,
    ) -> Result<(ClientId, T)> {
        if max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1").into());
        }
        let mut causes: Vec<(u64, Error)> = Vec::new();
        let mut tried: Vec<ClientId> = Vec::new();
        loop {
            // The lock is released before the send: the pick clones the handle.
            let pick = self.inner.table.read().pick(&tried, &self.inner.turn);
            let (slot, client, others) = match pick {
                Pick::Client {
                    slot,
                    client,
                    others,
                } => (slot, client, others),
                Pick::Empty if causes.is_empty() => return Err(PoolError::Empty.into()),
                Pick::NoneConnected if causes.is_empty() => {
                    return Err(PoolError::NoneConnected.into())
                }
                Pick::Empty | Pick::NoneConnected => return Err(self.exhausted(causes)),
            };
            if !causes.is_empty() {
                self.inner
                    .counters
                    .failovers
                    .fetch_add(1, Ordering::Relaxed);
            }
            let last = !others || causes.len() + 1 >= max_attempts as usize;
            match attempt(&client, last) {
                Ok(value) => return Ok((slot.id, value)),
                Err(e) => {
                    if health::counts_against_health(&e) {
                        slot.record_error();
                    }
                    if !not_sent(&e) {
                        return Err(e);
                    }
                    causes.push((slot.id.get(), e));
                    tried.push(slot.id);
                    if last {
                        return Err(self.exhausted(causes));
                    }
                }
            }
        }
    }

    fn exhausted(&self, causes: Vec<(u64, Error)>) -> Error {
        self.inner
            .counters
            .exhausted
            .fetch_add(1, Ordering::Relaxed);
        PoolError::AttemptsExhausted(causes).into()
    }

    /// Close every client (in parallel), stop supervision and join the router.
    /// A restart in progress is waited for (it is bounded by its
    /// `connect_timeout`). Idempotent; dropping the pool does the same.
    /// Balanced calls fail with [`PoolError::Empty`] afterwards, and
    /// [`add`](Self::add) with [`Error::Closed`]. The merged event channel
    /// ends after the clients' last events.
    pub fn shutdown(&self) -> Result<()> {
        let Some(router) = self.router.lock().take() else {
            return Ok(());
        };
        // Out of the table first: routing stops picking them, restarts in
        // flight find their row gone and close what they connected, and the
        // router takes the closes below for what they are.
        let clients = take_all(&self.inner);
        close_all(clients);
        let _ = self.inner.control.send(Control::Shutdown);
        if router.join().is_err() {
            log::error!(target: "zen_websocket", "pool: the router thread panicked");
        }
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Errors here can only mean "already shut down".
        let _ = self.shutdown();
    }
}

// Pools are shared across sending threads by design.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_raised_before_the_write_fail_over_and_write_errors_do_not() {
        for e in [
            Error::NotConnected,
            Error::Closed,
            Error::RateLimited {
                retry_after: Duration::from_millis(5),
            },
            Error::Timeout(TimeoutKind::RateLimit),
            Error::Config(ConfigError::new("cost", "exceeds the capacity")),
        ] {
            assert!(not_sent(&e), "{e:?}");
        }
        // These may have put bytes on the wire (or the request went out and
        // its answer is what failed): never sent again.
        for e in [
            Error::io("sending", std::io::Error::other("broken pipe")),
            Error::Timeout(TimeoutKind::Write),
            Error::Timeout(TimeoutKind::Request),
            Error::Disconnected,
            Error::Rpc {
                code: -32000,
                message: "no".into(),
                data: None,
            },
        ] {
            assert!(!not_sent(&e), "{e:?}");
        }
    }

    #[test]
    fn client_ids_show_as_their_number() {
        assert_eq!(ClientId(7).to_string(), "7");
        assert_eq!(ClientId(7).get(), 7);
        assert!(ClientId(1) < ClientId(2));
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let field = |s: Settings| s.validate().map_err(|e| e.field).err();
        assert_eq!(field(Settings::default()), None);
        let s = Settings {
            max_attempts: 0,
            ..Settings::default()
        };
        assert_eq!(field(s), Some("max_attempts"));
        let s = Settings {
            restart_window: Duration::ZERO,
            ..Settings::default()
        };
        assert_eq!(field(s), Some("restart_window"));
        let s = Settings {
            restart_delay: Duration::from_secs(10),
            max_restart_delay: Duration::from_secs(1),
            ..Settings::default()
        };
        assert_eq!(field(s), Some("max_restart_delay"));
        let s = Settings {
            event_capacity: 0,
            ..Settings::default()
        };
        assert_eq!(field(s), Some("event_capacity"));
    }
}
