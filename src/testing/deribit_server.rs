//! [`DeribitServer`]: a local WebSocket server that speaks enough of Deribit's
//! API v2 for tests and examples: authentication with tokens and refresh,
//! platform heartbeats (`test_request`), public and private subscriptions with
//! notifications on demand, order books with change ids (and injected gaps),
//! a simple `private/buy`, cancel-on-disconnect, injected errors, and abrupt
//! disconnects.
//!
//! How it is built: one acceptor thread (`zen-ws-deribit-accept`) and, per
//! connection, a thread that serves it (`zen-ws-deribit-conn-N`) and one that
//! reads its socket (`zen-ws-deribit-read-N`, the same reader as
//! [`MockServer`](super::MockServer)'s). The serving thread sleeps on three
//! things at once: bytes from the reader, commands from the handle (published
//! notifications), and the next heartbeat deadline; an idle connection costs
//! nothing. What the server answers is decided by pure code over [`State`]
//! (the request handler at the bottom of this file), under one short lock that
//! is never held across I/O.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TryRecvError};
use parking_lot::{Condvar, Mutex};
use serde_json::{json, Map, Value};
use tungstenite::{Message as WireMessage, WebSocket};

use super::pipe::{self, Pipe, Transport};
use super::tls::TestCertificates;
use crate::{Error, Result};

/// The path of Deribit's WebSocket API, which [`DeribitServer::url`] uses
/// (the server accepts any path).
const PATH: &str = "/ws/api/v2";
/// The version `public/test` and `public/hello` report.
const API_VERSION: &str = "1.2.26";
/// How long the TLS and WebSocket handshakes may take together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages read in a row before commands and heartbeats get a turn.
const READ_BURST: usize = 64;
/// The most requests kept for [`DeribitServer::requests`]; older ones are
/// dropped, so a long-running example cannot grow without bound.
const MAX_RECORDED_REQUESTS: usize = 10_000;
/// Deribit's smallest `public/set_heartbeat` interval, in seconds.
const MIN_HEARTBEAT_SECS: f64 = 10.0;
/// The `change_id` of an order book's first snapshot.
const FIRST_CHANGE_ID: u64 = 1_000;
/// Keys whose values are replaced in [`RecordedRequest::params`].
const SECRET_KEYS: [&str; 4] = [
    "client_secret",
    "refresh_token",
    "access_token",
    "signature",
];
/// How long after a failing `accept` the acceptor waits before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// When WebSocket pings follow an answer (see
/// [`DeribitServerBuilder::ping_after_replies`]), measured from the answer.
const NUDGES: [Duration; 3] = [
    Duration::from_millis(5),
    Duration::from_millis(50),
    Duration::from_millis(500),
];

/// Deribit's error codes that this server answers with.
mod code {
    pub(super) const PARSE_ERROR: i64 = -32700;
    pub(super) const INVALID_REQUEST: i64 = -32600;
    pub(super) const METHOD_NOT_FOUND: i64 = -32601;
    pub(super) const INVALID_PARAMS: i64 = -32602;
    pub(super) const INVALID_CREDENTIALS: i64 = 13004;
    pub(super) const UNAUTHORIZED: i64 = 13009;
}

/// One request the server received, for assertions.
///
/// Secret values (`client_secret`, `refresh_token`, `access_token`,
/// `signature`) are replaced by `"[REDACTED]"` before it is stored, so that a
/// test printing its requests leaks nothing; `grant_type` and the rest are kept.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The connection it came on (see [`ConnectionInfo::id`]).
    pub connection: u64,
    /// The method, e.g. `"public/auth"`.
    pub method: String,
    /// The params, secrets redacted (`{}` when absent).
    pub params: Value,
}

/// What the server knows about one connection (open or closed).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// 1 for the first connection the server accepted, then 2, 3, …
    pub id: u64,
    /// Still open.
    pub open: bool,
    /// A `public/auth` succeeded on it.
    pub authenticated: bool,
    /// The channels it is subscribed to, in the order subscribed.
    pub subscriptions: Vec<String>,
    /// The methods it called, in order (failed calls included).
    pub methods: Vec<String>,
    /// The interval at which it gets `test_request`s (after
    /// `public/set_heartbeat`, or the override), `None` before.
    pub heartbeat_interval: Option<Duration>,
    /// `private/enable_cancel_on_disconnect` is in force.
    pub cancel_on_disconnect: bool,
    /// `test_request` heartbeats sent to it.
    pub heartbeats_sent: u64,
    /// `public/test` calls it made (the answers to `test_request`).
    pub test_answers: u64,
}

impl ConnectionInfo {
    fn new(id: u64) -> ConnectionInfo {
        ConnectionInfo {
            id,
            open: true,
            authenticated: false,
            subscriptions: Vec::new(),
            methods: Vec::new(),
            heartbeat_interval: None,
            cancel_on_disconnect: false,
            heartbeats_sent: 0,
            test_answers: 0,
        }
    }

    /// The position of the first call of `method` in [`methods`](Self::methods).
    pub fn position(&self, method: &str) -> Option<usize> {
        self.methods.iter().position(|m| m == method)
    }
}

/// Fixed at start.
struct Settings {
    client_id: String,
    client_secret: String,
    expires_in: Duration,
    heartbeat_override: Option<Duration>,
    ping_after_replies: bool,
}

/// What the handle asks a connection thread to do.
enum Command {
    /// Send this text (a published notification).
    Send(String),
    /// Send this order-book notification, made for the connection's
    /// subscription `epoch` of `channel`; dropped if that subscription has
    /// ended meanwhile (Deribit sends nothing of a subscription after its
    /// unsubscribe, and a fresh subscription starts with its own snapshot).
    Book {
        channel: String,
        epoch: u64,
        text: String,
    },
}

/// One connection's subscription to one order book.
struct BookSub {
    /// Unique per subscription, so that notifications made for an earlier
    /// one can be recognised and dropped.
    epoch: u64,
    /// Its snapshot was sent: the next notification is a change.
    synced: bool,
}

/// One accepted connection, as the handle sees it.
struct Live {
    /// Dropping it (removing the entry) tells the thread to end.
    commands: Sender<Command>,
    /// A clone, to shut the socket down while the thread is blocked.
    socket: TcpStream,
    upgraded: bool,
}

/// An injected error.
#[derive(Clone)]
struct Failure {
    code: i64,
    message: String,
}

/// Everything the server knows, behind one lock.
#[derive(Default)]
struct State {
    /// False once stopping: no connection may register.
    accepting: bool,
    live: HashMap<u64, Live>,
    conns: BTreeMap<u64, ConnectionInfo>,
    requests: VecDeque<RecordedRequest>,
    failures: HashMap<String, Failure>,
    refresh_tokens: HashSet<String>,
    /// The last `change_id` of every order book published, by channel.
    books: HashMap<String, u64>,
    /// Subscriptions to `book.*` channels, by (connection, channel).
    book_subs: HashMap<(u64, String), BookSub>,
    /// The last [`BookSub::epoch`] handed out.
    book_epochs: u64,
    /// Orders placed with `private/buy`.
    orders: u64,
    tokens_issued: u64,
    auths: u64,
    refreshes: u64,
    auth_failures: u64,
    test_answers: u64,
    heartbeats_sent: u64,
    total_connections: usize,
    /// Bumped on every change, so waiters can tell "changed" from "spurious".
    version: u64,
}

/// Shared by the handle and every thread.
struct Shared {
    settings: Settings,
    state: Mutex<State>,
    changed: Condvar,
    next_conn_id: AtomicU64,
}

impl Shared {
    /// Change the state and wake every waiter.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock();
        let r = f(&mut state);
        state.version = state.version.wrapping_add(1);
        drop(state);
        self.changed.notify_all();
        r
    }
}

/// Configures and starts a [`DeribitServer`]; made by [`DeribitServer::builder`].
pub struct DeribitServerBuilder {
    client_id: String,
    client_secret: String,
    expires_in: Duration,
    heartbeat_override: Option<Duration>,
    ping_after_replies: bool,
    tls: bool,
}

impl Default for DeribitServerBuilder {
    fn default() -> Self {
        DeribitServerBuilder {
            client_id: DeribitServer::DEMO_CLIENT_ID.to_owned(),
            client_secret: DeribitServer::DEMO_CLIENT_SECRET.to_owned(),
            expires_in: Duration::from_secs(900),
            heartbeat_override: None,
            ping_after_replies: false,
            tls: false,
        }
    }
}

impl fmt::Debug for DeribitServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeribitServerBuilder")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("expires_in", &self.expires_in)
            .field("heartbeat_override", &self.heartbeat_override)
            .field("ping_after_replies", &self.ping_after_replies)
            .field("tls", &self.tls)
            .finish()
    }
}

impl DeribitServerBuilder {
    /// The one API key `public/auth` accepts. Defaults to
    /// [`DeribitServer::DEMO_CLIENT_ID`] and [`DeribitServer::DEMO_CLIENT_SECRET`].
    pub fn credentials(mut self, client_id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self.client_secret = secret.into();
        self
    }

    /// The `expires_in` of issued tokens (a short one makes clients refresh
    /// soon). Sent in whole seconds when it is whole, else fractional.
    /// Defaults to 900 s, as Deribit.
    pub fn token_expiry(mut self, expires_in: Duration) -> Self {
        self.expires_in = expires_in;
        self
    }

    /// Send `test_request`s at this interval, whatever `public/set_heartbeat`
    /// asked (Deribit's minimum of 10 s is too slow for tests). The request's
    /// own interval is still validated. Defaults to none: the requested interval.
    pub fn heartbeat_interval_override(mut self, interval: Duration) -> Self {
        self.heartbeat_override = Some(interval).filter(|d| !d.is_zero());
        self
    }

    /// Send a WebSocket ping 5 ms, 50 ms and 500 ms after each answer (pings
    /// that a burst of answers schedules are coalesced; clients answer them
    /// with pongs by themselves and never see them).
    ///
    /// Useful to give a client's connection thread extra inbound traffic
    /// (a regression check for waits that miss an already-read answer).
    /// Defaults to `false`.
    pub fn ping_after_replies(mut self, on: bool) -> Self {
        self.ping_after_replies = on;
        self
    }

    /// Serve `wss://` with a certificate from the test CA (trust
    /// [`DeribitServer::ca_certificate_pem`] in the client). Defaults to
    /// `false` (plain `ws://`).
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Bind `127.0.0.1:0` and start the acceptor thread.
    ///
    /// Fails with [`Error::Io`] if nothing can be bound and [`Error::Tls`] if
    /// the test certificates cannot be made.
    pub fn start(self) -> Result<DeribitServer> {
        let (acceptor, ca_pem) = if self.tls {
            let certs = TestCertificates::shared()?;
            (Some(certs.acceptor()?), Some(certs.ca_pem))
        } else {
            (None, None)
        };
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("binding the Deribit test server", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("binding the Deribit test server", e))?;
        let shared = Arc::new(Shared {
            settings: Settings {
                client_id: self.client_id,
                client_secret: self.client_secret,
                expires_in: self.expires_in,
                heartbeat_override: self.heartbeat_override,
                ping_after_replies: self.ping_after_replies,
            },
            state: Mutex::new(State {
                accepting: true,
                ..State::default()
            }),
            changed: Condvar::new(),
            next_conn_id: AtomicU64::new(1),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (shutdown, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let ctx = AcceptContext {
            shared: shared.clone(),
            stop: stop.clone(),
            shutdown: shutdown_rx,
            tls: acceptor,
        };
        let acceptor = thread::Builder::new()
            .name("zen-ws-deribit-accept".to_owned())
            .spawn(move || accept_loop(listener, ctx))
            .map_err(|e| Error::io("spawning the Deribit test server's acceptor", e))?;
        Ok(DeribitServer {
            shared,
            addr,
            ca_pem,
            running: Some(Running {
                acceptor,
                stop,
                _shutdown: shutdown,
            }),
        })
    }
}

/// The acceptor thread, and what stops it.
struct Running {
    acceptor: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    /// Never sent on: dropping it wakes an acceptor backing off after an error.
    _shutdown: Sender<()>,
}

/// A local server speaking enough of Deribit's API v2 for tests (feature `testing`).
///
/// Methods: `public/auth` (grant `client_credentials` with the configured key
/// → tokens, a wrong key → 13004 `invalid_credentials`; grant `refresh_token`
/// with an issued refresh token → new tokens, else 13009), `public/set_heartbeat`
/// (then `test_request`s at that interval, or the
/// [override](DeribitServerBuilder::heartbeat_interval_override)),
/// `public/disable_heartbeat`, `public/test`, `public/get_time`,
/// `public/hello`, `public/subscribe` and `private/subscribe` (private channels,
/// `user.*`, need `private/subscribe`, and every `private/*` method needs a
/// successful auth on the same connection, else 13009 `unauthorized`),
/// `public/unsubscribe`, `private/unsubscribe`, `*/unsubscribe_all`,
/// `private/enable_cancel_on_disconnect`, `private/disable_cancel_on_disconnect`,
/// `private/get_cancel_on_disconnect` and `private/buy` (see
/// [`MARK_PRICE`](Self::MARK_PRICE)). Anything else is -32601 (method not
/// found); malformed input gets a JSON-RPC error, never a panic. Batches are
/// answered as batches. Unanswered `test_request`s are counted, not enforced.
///
/// Faults and data on demand: [`fail_method`](Self::fail_method),
/// [`publish`](Self::publish), order books with [`publish_book`](Self::publish_book)
/// and [`publish_book_gap`](Self::publish_book_gap),
/// [`disconnect_all`](Self::disconnect_all).
/// Records: counters, [`connections`](Self::connections) (per connection:
/// methods in order, subscriptions, heartbeat) and [`requests`](Self::requests).
/// [`stop`](Self::stop) (and drop) closes every connection and joins every thread.
///
/// ```
/// use serde_json::json;
/// use zen_websocket::testing::DeribitServer;
///
/// let server = DeribitServer::start()?;
/// let (mut ws, _) = tungstenite::connect(server.url())?;
/// let auth = json!({"jsonrpc": "2.0", "id": 1, "method": "public/auth", "params": {
///     "grant_type": "client_credentials",
///     "client_id": DeribitServer::DEMO_CLIENT_ID,
///     "client_secret": DeribitServer::DEMO_CLIENT_SECRET}});
/// ws.send(tungstenite::Message::text(auth.to_string()))?;
/// let answer: serde_json::Value = serde_json::from_str(ws.read()?.to_text()?)?;
/// assert_eq!(answer["id"], 1);
/// assert!(answer["result"]["access_token"].is_string());
/// assert_eq!(server.auth_count(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DeribitServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    running: Option<Running>,
}

impl fmt::Debug for DeribitServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeribitServer")
            .field("url", &self.url())
            .field("running", &self.is_running())
            .field("connections", &self.connection_count())
            .finish()
    }
}

/// The deadline `timeout` from now (far in the future if that overflows).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

impl DeribitServer {
    /// The client id [`DeribitServer::start`] accepts.
    pub const DEMO_CLIENT_ID: &'static str = "zen-demo-client";
    /// The client secret [`DeribitServer::start`] accepts.
    pub const DEMO_CLIENT_SECRET: &'static str = "zen-demo-secret";
    /// The price at which `private/buy` fills, for every instrument.
    ///
    /// `private/buy` (it needs `public/auth` on the connection, else 13009)
    /// takes `instrument_name`, a positive `amount`, `type` (`"limit"`, the
    /// default, or `"market"`), `price` (a limit order's, required) and an
    /// optional `label`, and answers Deribit's shape, `{"order": {…},
    /// "trades": […]}`, with `order_id`, `instrument_name`, `direction`,
    /// `amount`, `price`, `order_type`, `order_state`, `filled_amount`,
    /// `average_price`, `label` and timestamps. A market order, or a limit
    /// order priced at or above this, is `"filled"` at this price with one
    /// trade; a lower limit order rests `"open"` with none.
    ///
    /// ```
    /// use serde_json::json;
    /// use zen_websocket::adapters::deribit::{DeribitClient, DeribitConfig};
    /// use zen_websocket::testing::DeribitServer;
    ///
    /// let server = DeribitServer::start()?;
    /// let config = DeribitConfig::builder()
    ///     .url(server.url())
    ///     .credentials(DeribitServer::DEMO_CLIENT_ID, DeribitServer::DEMO_CLIENT_SECRET)
    ///     .build()?;
    /// let client = DeribitClient::connect(config)?;
    /// let bought = client.request("private/buy", json!({
    ///     "instrument_name": "BTC-PERPETUAL", "amount": 10, "type": "limit", "price": 41_000.0}))?;
    /// assert_eq!(bought["order"]["order_state"], "open");
    /// assert!(bought["order"]["order_id"].is_string());
    /// assert_eq!(server.order_count(), 1);
    /// # Ok::<(), zen_websocket::Error>(())
    /// ```
    pub const MARK_PRICE: f64 = 42_000.0;

    /// Start a plain `ws://` server accepting the demo key, with every default.
    pub fn start() -> Result<DeribitServer> {
        DeribitServer::builder().start()
    }

    /// A builder for credentials, token expiry, a heartbeat override or TLS.
    pub fn builder() -> DeribitServerBuilder {
        DeribitServerBuilder::default()
    }

    /// The URL clients connect to: `ws://127.0.0.1:PORT/ws/api/v2`, or for TLS
    /// `wss://localhost:PORT/ws/api/v2`.
    pub fn url(&self) -> String {
        match self.ca_pem {
            Some(_) => format!("wss://localhost:{}{PATH}", self.addr.port()),
            None => format!("ws://{}{PATH}", self.addr),
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA to trust for a TLS server; `None` for `ws://`.
    pub fn ca_certificate_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// From now on, answer every call of `method` with this error (e.g.
    /// `fail_method("public/get_time", 10028, "too_many_requests")`), on every
    /// connection, until [`clear_failures`](Self::clear_failures). The call is
    /// still recorded.
    pub fn fail_method(&self, method: &str, code: i64, message: &str) {
        let failure = Failure {
            code,
            message: message.to_owned(),
        };
        self.shared.update(|s| {
            s.failures.insert(method.to_owned(), failure);
        });
    }

    /// Stop injecting errors.
    pub fn clear_failures(&self) {
        self.shared.update(|s| s.failures.clear());
    }

    /// Send a subscription notification
    /// `{"jsonrpc":"2.0","method":"subscription","params":{"channel":…,"data":…}}`
    /// to every open connection subscribed to `channel`; returns to how many.
    pub fn publish(&self, channel: &str, data: Value) -> usize {
        let text = json!({
            "jsonrpc": "2.0",
            "method": "subscription",
            "params": {"channel": channel, "data": data},
        })
        .to_string();
        let state = self.shared.state.lock();
        // Sending on an unbounded channel never blocks, so the lock is short.
        state
            .conns
            .values()
            .filter(|c| c.open && c.subscriptions.iter().any(|s| s == channel))
            .filter_map(|c| state.live.get(&c.id))
            .filter(|l| l.upgraded)
            .filter(|l| l.commands.send(Command::Send(text.clone())).is_ok())
            .count()
    }

    /// Publish the next state of the order book on `channel` (a `book.*`
    /// channel, e.g. `book.BTC-PERPETUAL.100ms`) to every open connection
    /// subscribed to it; returns to how many.
    ///
    /// The book's `change_id` goes up by one with every call (the first is
    /// 1000). A connection's first notification of a subscription is a
    /// snapshot (`"type": "snapshot"`, the full book, no `prev_change_id`);
    /// after it, each is a change (`"type": "change"`) whose `prev_change_id`
    /// is the previous `change_id`, as Deribit's `book.{instrument}.{interval}`
    /// does. A connection that subscribes to a book already published gets its
    /// snapshot at once, right after the subscribe answer; one that
    /// unsubscribes gets nothing of that subscription any more.
    ///
    /// ```
    /// use serde_json::json;
    /// use zen_websocket::testing::DeribitServer;
    ///
    /// let server = DeribitServer::start()?;
    /// let (mut ws, _) = tungstenite::connect(server.url())?;
    /// let sub = json!({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe",
    ///                  "params": {"channels": ["book.BTC-PERPETUAL.100ms"]}});
    /// ws.send(tungstenite::Message::text(sub.to_string()))?;
    /// let mut read = || -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    ///     Ok(serde_json::from_str(ws.read()?.to_text()?)?)
    /// };
    /// assert_eq!(read()?["id"], 1);
    /// server.publish_book("book.BTC-PERPETUAL.100ms");
    /// server.publish_book("book.BTC-PERPETUAL.100ms");
    /// server.publish_book_gap("book.BTC-PERPETUAL.100ms");
    /// let ids = |v: serde_json::Value| {
    ///     let d = &v["params"]["data"];
    ///     (d["type"].clone(), d["prev_change_id"].as_u64(), d["change_id"].as_u64())
    /// };
    /// assert_eq!(ids(read()?), (json!("snapshot"), None, Some(1000)));
    /// assert_eq!(ids(read()?), (json!("change"), Some(1000), Some(1001)));
    /// // Change 1002 is skipped: the next change names it as its predecessor.
    /// assert_eq!(ids(read()?), (json!("change"), Some(1002), Some(1003)));
    /// assert_eq!(server.book_change_id("book.BTC-PERPETUAL.100ms"), Some(1003));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publish_book(&self, channel: &str) -> usize {
        self.shared.update(|s| s.advance_book(channel, 1))
    }

    /// Like [`publish_book`](Self::publish_book), but one change id is
    /// skipped: the book moves on by two, and subscribers past their snapshot
    /// get a change whose `prev_change_id` is the skipped id, which they never
    /// saw, as if a notification had been lost on the way. Subscribers still
    /// waiting for their snapshot get the snapshot. Returns to how many
    /// connections it was sent. On a book never published, this is its
    /// first snapshot.
    pub fn publish_book_gap(&self, channel: &str) -> usize {
        self.shared.update(|s| s.advance_book(channel, 2))
    }

    /// The last `change_id` of the order book on `channel`; `None` before its
    /// first [`publish_book`](Self::publish_book).
    pub fn book_change_id(&self, channel: &str) -> Option<u64> {
        self.shared.state.lock().books.get(channel).copied()
    }

    /// Orders placed with `private/buy` on every connection.
    pub fn order_count(&self) -> u64 {
        self.shared.state.lock().orders
    }

    /// Drop every open connection abruptly (TCP shutdown, no close frame), as
    /// a crashing gateway does; returns how many. The server keeps accepting,
    /// so clients reconnect.
    pub fn disconnect_all(&self) -> usize {
        let dropped: Vec<Live> = self.shared.update(|s| {
            let ids: Vec<u64> = s
                .live
                .iter()
                .filter(|(_, l)| l.upgraded)
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                if let Some(c) = s.conns.get_mut(id) {
                    c.open = false;
                }
            }
            ids.iter().filter_map(|id| s.live.remove(id)).collect()
        });
        // Dropping the entries ends their threads' command channels; the
        // shutdown makes the end visible to the client at once.
        for live in &dropped {
            let _ = live.socket.shutdown(Shutdown::Both);
        }
        dropped.len()
    }

    /// Successful `public/auth` calls with grant `client_credentials`.
    pub fn auth_count(&self) -> u64 {
        self.shared.state.lock().auths
    }

    /// Successful `public/auth` calls with grant `refresh_token`.
    pub fn refresh_count(&self) -> u64 {
        self.shared.state.lock().refreshes
    }

    /// Refused `public/auth` calls (wrong key, unknown refresh token).
    pub fn auth_failures(&self) -> u64 {
        self.shared.state.lock().auth_failures
    }

    /// `public/test` calls on every connection (the answers to `test_request`).
    pub fn test_answers(&self) -> u64 {
        self.shared.state.lock().test_answers
    }

    /// `test_request` heartbeats sent on every connection.
    pub fn heartbeats_sent(&self) -> u64 {
        self.shared.state.lock().heartbeats_sent
    }

    /// Open (upgraded) connections now.
    pub fn connection_count(&self) -> usize {
        self.shared
            .state
            .lock()
            .live
            .values()
            .filter(|l| l.upgraded)
            .count()
    }

    /// Upgrades accepted since the start.
    pub fn total_connections(&self) -> usize {
        self.shared.state.lock().total_connections
    }

    /// Every connection the server upgraded, open or closed, by id.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.state.lock().conns.values().cloned().collect()
    }

    /// The connection with this id.
    pub fn connection(&self, id: u64) -> Option<ConnectionInfo> {
        self.shared.state.lock().conns.get(&id).cloned()
    }

    /// The most recent requests (up to 10,000), oldest first, secrets redacted.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.iter().cloned().collect()
    }

    /// Wait until `pred` holds (it is asked again after every change of the
    /// server's state). Fails with [`Error::Assertion`] naming `what` after
    /// `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&DeribitServer) -> bool,
    ) -> Result<()> {
        let deadline = deadline_after(timeout);
        loop {
            let version = self.shared.state.lock().version;
            // `pred` reads the state through the handle: it runs unlocked.
            if pred(self) {
                return Ok(());
            }
            let mut state = self.shared.state.lock();
            while state.version == version {
                if self
                    .shared
                    .changed
                    .wait_until(&mut state, deadline)
                    .timed_out()
                {
                    drop(state);
                    if pred(self) {
                        return Ok(());
                    }
                    return Err(Error::Assertion(format!(
                        "{what}: not seen within {timeout:?}"
                    )));
                }
            }
        }
    }

    /// Wait until at least `total` connections were upgraded since the start.
    pub fn wait_for_connections(&self, total: usize, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, &format!("{total} connection(s)"), |s| {
            s.total_connections() >= total
        })
    }

    /// Wait until at least `n` `public/test` answers came, on all connections.
    pub fn wait_for_test_answers(&self, n: u64, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, &format!("{n} public/test answer(s)"), |s| {
            s.test_answers() >= n
        })
    }

    /// Wait until at least `n` refresh-token grants succeeded.
    pub fn wait_for_refreshes(&self, n: u64, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, &format!("{n} token refresh(es)"), |s| {
            s.refresh_count() >= n
        })
    }

    /// Wait until at least `n` open connections are subscribed to `channel`.
    pub fn wait_for_subscribers(&self, channel: &str, n: usize, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, &format!("{n} subscriber(s) of {channel}"), |s| {
            let state = s.shared.state.lock();
            state
                .conns
                .values()
                .filter(|c| c.open && c.subscriptions.iter().any(|x| x == channel))
                .count()
                >= n
        })
    }

    /// True until [`stop`](Self::stop).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Close every connection abruptly, stop accepting, join every thread.
    /// Idempotent; dropping the server calls it.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::SeqCst);
        let entries: Vec<Live> = self.shared.update(|s| {
            s.accepting = false;
            for c in s.conns.values_mut() {
                c.open = false;
            }
            s.live.drain().map(|(_, l)| l).collect()
        });
        for live in entries {
            let _ = live.socket.shutdown(Shutdown::Both);
        }
        // The acceptor blocks in `accept`: a connection of our own wakes it to
        // see the flag. If even connecting fails, `accept` fails alike and the
        // acceptor sees the flag then.
        for _ in 0..10 {
            if running.acceptor.is_finished()
                || TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                break;
            }
        }
        // The acceptor joins every connection thread before it ends.
        if running.acceptor.join().is_err() {
            log::error!(target: "zen_websocket", "the Deribit test server's acceptor panicked");
        }
    }
}

impl Drop for DeribitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// The acceptor thread.

struct AcceptContext {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    /// Disconnected by `stop`; the backoff after a failed accept sleeps on it.
    shutdown: Receiver<()>,
    tls: Option<native_tls::TlsAcceptor>,
}

fn accept_loop(listener: TcpListener, ctx: AcceptContext) {
    let mut children: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accepted = listener.accept();
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        match accepted {
            Ok((stream, _)) => {
                // Finished threads need no join; keep the list short on long runs.
                children.retain(|h| !h.is_finished());
                match spawn_connection(stream, &ctx) {
                    Ok(Some(child)) => children.push(child),
                    Ok(None) => break,
                    Err(e) => log::warn!(
                        target: "zen_websocket",
                        "Deribit test server: cannot start a connection: {e}"
                    ),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                // Out of descriptors or similar: back off instead of spinning.
                if let Err(RecvTimeoutError::Disconnected) =
                    ctx.shutdown.recv_timeout(ACCEPT_BACKOFF)
                {
                    break;
                }
            }
        }
    }
    drop(listener);
    for child in children {
        if child.join().is_err() {
            log::error!(target: "zen_websocket", "a Deribit test server connection thread panicked");
        }
    }
}

/// Register `stream` and start its thread; `Ok(None)` when stopping.
fn spawn_connection(stream: TcpStream, ctx: &AcceptContext) -> io::Result<Option<JoinHandle<()>>> {
    let id = ctx.shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (commands, commands_rx) = crossbeam_channel::unbounded();
    let live = Live {
        commands,
        socket: stream.try_clone()?,
        upgraded: false,
    };
    let registered = ctx.shared.update(|s| {
        if s.accepting {
            s.live.insert(id, live);
            true
        } else {
            false
        }
    });
    if !registered {
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(None);
    }
    let conn = ConnContext {
        id,
        shared: ctx.shared.clone(),
        commands: commands_rx,
        tls: ctx.tls.clone(),
    };
    let spawned = thread::Builder::new()
        .name(format!("zen-ws-deribit-conn-{id}"))
        .spawn(move || run_connection(stream, conn));
    match spawned {
        Ok(child) => Ok(Some(child)),
        Err(e) => {
            ctx.shared.update(|s| s.live.remove(&id));
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------
// One connection thread.

struct ConnContext {
    id: u64,
    shared: Arc<Shared>,
    /// Disconnected when the handle drops the connection.
    commands: Receiver<Command>,
    tls: Option<native_tls::TlsAcceptor>,
}

fn run_connection(stream: TcpStream, ctx: ConnContext) {
    if let Err(e) = start_connection(&stream, &ctx) {
        log::debug!(target: "zen_websocket", "Deribit test server connection {}: {e}", ctx.id);
    }
    let _ = stream.shutdown(Shutdown::Both);
    ctx.shared.update(|s| {
        s.live.remove(&ctx.id);
        s.book_subs.retain(|(conn, _), _| *conn != ctx.id);
        if let Some(c) = s.conns.get_mut(&ctx.id) {
            c.open = false;
        }
    });
}

fn start_connection(stream: &TcpStream, ctx: &ConnContext) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    // Both clones before the spawn: once the reader runs, nothing may return early.
    let reader_socket = stream.try_clone()?;
    let writer_socket = stream.try_clone()?;
    let (bytes, incoming) = crossbeam_channel::bounded(pipe::QUEUED_CHUNKS);
    let reader = thread::Builder::new()
        .name(format!("zen-ws-deribit-read-{}", ctx.id))
        .spawn(move || pipe::run_reader(reader_socket, bytes))?;
    let ready = incoming.clone();
    let pipe = Pipe::new(incoming, writer_socket, Instant::now() + HANDSHAKE_TIMEOUT);
    match &ctx.tls {
        Some(acceptor) => match acceptor.accept(pipe) {
            Ok(tls) => upgrade(tls, &ready, ctx),
            Err(e) => log::debug!(
                target: "zen_websocket",
                "Deribit test server connection {}: TLS handshake failed: {e}",
                ctx.id
            ),
        },
        None => upgrade(pipe, &ready, ctx),
    }
    // The pipe went with the WebSocket; without receivers a reader blocked on a
    // full channel wakes, and one blocked in `read` wakes at the shutdown.
    drop(ready);
    let _ = stream.shutdown(Shutdown::Both);
    if reader.join().is_err() {
        log::error!(target: "zen_websocket", "Deribit test server connection {}: reader panicked", ctx.id);
    }
    Ok(())
}

fn upgrade<S: Transport>(stream: S, ready: &Receiver<Vec<u8>>, ctx: &ConnContext) {
    let mut ws = match tungstenite::accept(stream) {
        Ok(ws) => ws,
        Err(e) => {
            log::debug!(
                target: "zen_websocket",
                "Deribit test server connection {}: upgrade failed: {e}",
                ctx.id
            );
            return;
        }
    };
    let pipe = ws.get_mut().pipe();
    pipe.set_nonblocking();
    if pipe.socket().set_write_timeout(None).is_err() {
        return;
    }
    // Registered here, before the first message is read, so the client's first
    // request already finds its connection record.
    let open = ctx.shared.update(|s| {
        let Some(live) = s.live.get_mut(&ctx.id) else {
            return false; // stopped or disconnected meanwhile
        };
        live.upgraded = true;
        s.total_connections += 1;
        s.conns.insert(ctx.id, ConnectionInfo::new(ctx.id));
        true
    });
    if open {
        serve(ws, ready, ctx);
    }
}

/// The `test_request` Deribit sends after `public/set_heartbeat`.
fn test_request() -> String {
    json!({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}}).to_string()
}

/// The pings due after the last answer (see
/// [`DeribitServerBuilder::ping_after_replies`]).
#[derive(Default)]
struct Nudges {
    answered_at: Option<Instant>,
    sent: usize,
}

impl Nudges {
    fn answered(&mut self, now: Instant) {
        self.answered_at = Some(now);
        self.sent = 0;
    }

    fn next(&self) -> Option<Instant> {
        let at = self.answered_at?;
        NUDGES.get(self.sent).map(|d| at + *d)
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The upgraded connection's loop: commands, heartbeat, a burst of reads,
/// then sleep until bytes, a command or the next heartbeat or ping deadline.
fn serve<S: Transport>(mut ws: WebSocket<S>, ready: &Receiver<Vec<u8>>, ctx: &ConnContext) {
    // (period, next deadline) once the client asked for heartbeats.
    let mut heartbeat: Option<(Duration, Instant)> = None;
    let mut nudges = Nudges::default();
    let nudge = ctx.shared.settings.ping_after_replies;
    loop {
        loop {
            match ctx.commands.try_recv() {
                Ok(Command::Send(text)) => {
                    if !alive(ws.write(WireMessage::text(text))) {
                        return;
                    }
                }
                Ok(Command::Book {
                    channel,
                    epoch,
                    text,
                }) => {
                    let current = ctx
                        .shared
                        .state
                        .lock()
                        .book_subs
                        .get(&(ctx.id, channel))
                        .is_some_and(|b| b.epoch == epoch);
                    if current && !alive(ws.write(WireMessage::text(text))) {
                        return;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        if let Some((period, due)) = heartbeat.as_mut() {
            let now = Instant::now();
            if now >= *due {
                if !alive(ws.write(WireMessage::text(test_request()))) {
                    return;
                }
                ctx.shared.update(|s| {
                    s.heartbeats_sent += 1;
                    if let Some(c) = s.conns.get_mut(&ctx.id) {
                        c.heartbeats_sent += 1;
                    }
                });
                // Missed beats are not made up: one per period, as Deribit.
                *due = now + *period;
            }
        }
        if nudges.next().is_some_and(|at| Instant::now() >= at) {
            if !alive(ws.write(WireMessage::Ping(Vec::new().into()))) {
                return;
            }
            nudges.sent += 1;
        }
        let mut idle = false;
        for _ in 0..READ_BURST {
            match ws.read() {
                Ok(WireMessage::Text(text)) => {
                    let settings = &ctx.shared.settings;
                    let handled = ctx
                        .shared
                        .update(|s| s.handle_text(settings, ctx.id, text.as_str()));
                    if let Some(change) = handled.heartbeat {
                        heartbeat = change.map(|p| (p, Instant::now() + p));
                    }
                    if let Some(reply) = handled.reply {
                        if !alive(ws.write(WireMessage::text(reply))) {
                            return;
                        }
                        if nudge {
                            nudges.answered(Instant::now());
                        }
                    }
                    // Snapshots of books just subscribed, after the answer.
                    for text in handled.notifications {
                        if !alive(ws.write(WireMessage::text(text))) {
                            return;
                        }
                    }
                }
                // Deribit speaks text only; pongs to pings are queued by
                // tungstenite and go out with the flush below.
                Ok(_) => {}
                Err(e) if no_frame_yet(&e) => {
                    idle = true;
                    break;
                }
                // A close (tungstenite queued the reply), end of stream, or garbage.
                Err(_) => {
                    let _ = ws.flush();
                    return;
                }
            }
        }
        if !alive(ws.flush()) {
            return;
        }
        if idle {
            let mut select = Select::new();
            select.recv(ready);
            select.recv(&ctx.commands);
            match earliest(heartbeat.map(|(_, due)| due), nudges.next()) {
                Some(due) => {
                    let _ = select.ready_deadline(due);
                }
                None => {
                    select.ready();
                }
            }
        }
    }
}

/// True when the connection survives this result (a write that would block
/// stays buffered in tungstenite and goes out with a later flush).
fn alive(result: tungstenite::Result<()>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => no_frame_yet(&e),
    }
}

/// Nothing to read right now (the pipe's `WouldBlock`).
fn no_frame_yet(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(
        io.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    ))
}

// ---------------------------------------------------------------------------
// The request handler: pure code over `State`.

/// What one inbound text leads to.
#[derive(Debug, Default, PartialEq)]
struct Handled {
    /// The answer to send, if any.
    reply: Option<String>,
    /// `Some(Some(period))`: send heartbeats at `period` from now on;
    /// `Some(None)`: stop them.
    heartbeat: Option<Option<Duration>>,
    /// Notifications to send after the answer (snapshots of order books
    /// just subscribed).
    notifications: Vec<String>,
}

/// An error answer: code, message, data.
type Fault = (i64, String, Option<Value>);

fn fault(code: i64, message: &str) -> Fault {
    (code, message.to_owned(), None)
}

fn invalid_params(param: &str, reason: &str) -> Fault {
    (
        code::INVALID_PARAMS,
        "Invalid params".to_owned(),
        Some(json!({"param": param, "reason": reason})),
    )
}

fn unauthorized(reason: &str) -> Fault {
    (
        code::UNAUTHORIZED,
        "unauthorized".to_owned(),
        Some(json!({"reason": reason})),
    )
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A response in Deribit's shape (with `usIn`, `usOut`, `usDiff`, `testnet`).
fn response(id: Value, outcome: std::result::Result<Value, Fault>, us_in: u64) -> Value {
    let mut obj = Map::new();
    obj.insert("jsonrpc".into(), json!("2.0"));
    obj.insert("id".into(), id);
    match outcome {
        Ok(result) => {
            obj.insert("result".into(), result);
        }
        Err((code, message, data)) => {
            let mut error = Map::new();
            error.insert("code".into(), json!(code));
            error.insert("message".into(), json!(message));
            if let Some(data) = data {
                error.insert("data".into(), data);
            }
            obj.insert("error".into(), Value::Object(error));
        }
    }
    let us_out = now_micros().max(us_in);
    obj.insert("usIn".into(), json!(us_in));
    obj.insert("usOut".into(), json!(us_out));
    obj.insert("usDiff".into(), json!(us_out - us_in));
    obj.insert("testnet".into(), json!(true));
    Value::Object(obj)
}

/// `params` with secret values replaced, at any depth.
fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if SECRET_KEYS.contains(&k.as_str()) {
                        json!("[REDACTED]")
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// The `channels` param: a non-empty list of strings.
fn channels_param(params: &Value) -> std::result::Result<Vec<String>, Fault> {
    let list = params
        .get("channels")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid_params("channels", "must be a list of channel names"))?;
    let channels: Option<Vec<String>> =
        list.iter().map(|c| c.as_str().map(str::to_owned)).collect();
    match channels {
        Some(c) if !c.is_empty() => Ok(c),
        _ => Err(invalid_params(
            "channels",
            "must be a non-empty list of channel names",
        )),
    }
}

/// A notification of the order book on `channel` at `change_id`: a change
/// following `prev`, or (without `prev`) a snapshot. The levels are made up
/// around [`DeribitServer::MARK_PRICE`], in Deribit's `[action, price, amount]` form.
fn book_notification(channel: &str, prev: Option<u64>, change_id: u64) -> String {
    let instrument = channel.split('.').nth(1).unwrap_or_default();
    let mark = DeribitServer::MARK_PRICE;
    // Amounts vary with the change id, so consecutive notifications differ.
    let amount = 10.0 * ((change_id % 10) + 1) as f64;
    let mut data = json!({
        "timestamp": now_micros() / 1000,
        "instrument_name": instrument,
        "change_id": change_id,
    });
    match prev {
        Some(prev) => {
            data["type"] = json!("change");
            data["prev_change_id"] = json!(prev);
            data["bids"] = json!([["change", mark - 0.5, amount]]);
            data["asks"] = json!([]);
        }
        None => {
            data["type"] = json!("snapshot");
            data["bids"] = json!([["new", mark - 0.5, amount], ["new", mark - 1.0, 20.0]]);
            data["asks"] = json!([["new", mark + 0.5, amount], ["new", mark + 1.0, 20.0]]);
        }
    }
    json!({
        "jsonrpc": "2.0",
        "method": "subscription",
        "params": {"channel": channel, "data": data},
    })
    .to_string()
}

fn whole_or_fractional_secs(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

impl State {
    /// The connection's record (made on the fly for a connection the state
    /// has not seen, which only unit tests do).
    fn conn(&mut self, id: u64) -> &mut ConnectionInfo {
        self.conns
            .entry(id)
            .or_insert_with(|| ConnectionInfo::new(id))
    }

    /// Answer one inbound text of connection `conn`. Total: any input gets an
    /// answer or none, never a panic.
    fn handle_text(&mut self, settings: &Settings, conn: u64, text: &str) -> Handled {
        let us_in = now_micros();
        let mut handled = Handled::default();
        let parsed: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                let r = response(
                    Value::Null,
                    Err(fault(code::PARSE_ERROR, "Parse error")),
                    us_in,
                );
                handled.reply = Some(r.to_string());
                return handled;
            }
        };
        let reply = match &parsed {
            Value::Array(items) if items.is_empty() => Some(response(
                Value::Null,
                Err(fault(code::INVALID_REQUEST, "Invalid Request")),
                us_in,
            )),
            Value::Array(items) => {
                let answers: Vec<Value> = items
                    .iter()
                    .filter_map(|item| self.handle_value(settings, conn, item, us_in, &mut handled))
                    .collect();
                (!answers.is_empty()).then_some(Value::Array(answers))
            }
            single => self.handle_value(settings, conn, single, us_in, &mut handled),
        };
        handled.reply = reply.map(|r| r.to_string());
        handled
    }

    /// Answer one request object; `None` for a notification (no `id`) and for
    /// what looks like a response from the client.
    fn handle_value(
        &mut self,
        settings: &Settings,
        conn: u64,
        value: &Value,
        us_in: u64,
        handled: &mut Handled,
    ) -> Option<Value> {
        let Some(obj) = value.as_object() else {
            let f = fault(code::INVALID_REQUEST, "Invalid Request");
            return Some(response(Value::Null, Err(f), us_in));
        };
        let id = obj.get("id").cloned().filter(|id| !id.is_null());
        let Some(method) = obj.get("method").and_then(Value::as_str) else {
            if obj.contains_key("result") || obj.contains_key("error") {
                return None;
            }
            let f = fault(code::INVALID_REQUEST, "Invalid Request");
            return Some(response(id.unwrap_or(Value::Null), Err(f), us_in));
        };
        let params = match obj.get("params") {
            None | Some(Value::Null) => json!({}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                let f = invalid_params("params", "must be an object");
                return id.map(|id| response(id, Err(f), us_in));
            }
        };
        self.record(conn, method, &params);
        let outcome = match self.failures.get(method) {
            Some(f) => Err((f.code, f.message.clone(), None)),
            None => self.call(settings, conn, method, &params, handled),
        };
        id.map(|id| response(id, outcome, us_in))
    }

    fn record(&mut self, conn: u64, method: &str, params: &Value) {
        self.conn(conn).methods.push(method.to_owned());
        if self.requests.len() >= MAX_RECORDED_REQUESTS {
            self.requests.pop_front();
        }
        self.requests.push_back(RecordedRequest {
            connection: conn,
            method: method.to_owned(),
            params: redact(params),
        });
    }

    fn call(
        &mut self,
        settings: &Settings,
        conn: u64,
        method: &str,
        params: &Value,
        handled: &mut Handled,
    ) -> std::result::Result<Value, Fault> {
        if method.starts_with("private/") && !self.conn(conn).authenticated {
            return Err(unauthorized("private methods need public/auth first"));
        }
        match method {
            "public/auth" => self.auth(settings, conn, params),
            "public/set_heartbeat" => {
                let secs = params
                    .get("interval")
                    .and_then(Value::as_f64)
                    .filter(|s| *s >= MIN_HEARTBEAT_SECS && *s <= 86_400.0)
                    .ok_or_else(|| {
                        invalid_params("interval", "must be a number of seconds, at least 10")
                    })?;
                let period = settings
                    .heartbeat_override
                    .unwrap_or_else(|| Duration::from_secs_f64(secs));
                self.conn(conn).heartbeat_interval = Some(period);
                handled.heartbeat = Some(Some(period));
                Ok(json!("ok"))
            }
            "public/disable_heartbeat" => {
                self.conn(conn).heartbeat_interval = None;
                handled.heartbeat = Some(None);
                Ok(json!("ok"))
            }
            "public/test" => {
                self.test_answers += 1;
                self.conn(conn).test_answers += 1;
                Ok(json!({ "version": API_VERSION }))
            }
            "public/hello" => Ok(json!({ "version": API_VERSION })),
            "public/get_time" => Ok(json!(now_micros() / 1000)),
            "public/subscribe" | "private/subscribe" => {
                let channels = channels_param(params)?;
                if method == "public/subscribe" && channels.iter().any(|c| c.starts_with("user.")) {
                    return Err(unauthorized("private channels need private/subscribe"));
                }
                let info = self.conn(conn);
                let mut added = Vec::new();
                for c in &channels {
                    if !info.subscriptions.contains(c) {
                        info.subscriptions.push(c.clone());
                        added.push(c.clone());
                    }
                }
                for c in added.into_iter().filter(|c| c.starts_with("book.")) {
                    if let Some(text) = self.subscribe_book(conn, c) {
                        handled.notifications.push(text);
                    }
                }
                let mut confirmed = channels;
                confirmed.dedup();
                Ok(json!(confirmed))
            }
            "public/unsubscribe" | "private/unsubscribe" => {
                let channels = channels_param(params)?;
                let info = self.conn(conn);
                let removed: Vec<String> = channels
                    .into_iter()
                    .filter(|c| info.subscriptions.contains(c))
                    .collect();
                info.subscriptions.retain(|c| !removed.contains(c));
                for c in &removed {
                    self.book_subs.remove(&(conn, c.clone()));
                }
                Ok(json!(removed))
            }
            "public/unsubscribe_all" | "private/unsubscribe_all" => {
                self.conn(conn).subscriptions.clear();
                self.book_subs.retain(|(c, _), _| *c != conn);
                Ok(json!("ok"))
            }
            "private/buy" => self.buy(params),
            "private/enable_cancel_on_disconnect" => {
                self.conn(conn).cancel_on_disconnect = true;
                Ok(json!("ok"))
            }
            "private/disable_cancel_on_disconnect" => {
                self.conn(conn).cancel_on_disconnect = false;
                Ok(json!("ok"))
            }
            "private/get_cancel_on_disconnect" => {
                let enabled = self.conn(conn).cancel_on_disconnect;
                Ok(json!({"scope": "connection", "enabled": enabled}))
            }
            _ => Err(fault(code::METHOD_NOT_FOUND, "Method not found")),
        }
    }

    /// A new subscription of `conn` to the book `channel`; its snapshot, if
    /// the book was published already.
    fn subscribe_book(&mut self, conn: u64, channel: String) -> Option<String> {
        self.book_epochs += 1;
        let snapshot = self
            .books
            .get(&channel)
            .map(|id| book_notification(&channel, None, *id));
        let sub = BookSub {
            epoch: self.book_epochs,
            synced: snapshot.is_some(),
        };
        self.book_subs.insert((conn, channel), sub);
        snapshot
    }

    /// Move the book on `channel` on by `step` change ids and queue its
    /// notification to every open subscriber; returns to how many.
    fn advance_book(&mut self, channel: &str, step: u64) -> usize {
        let (prev, change_id) = match self.books.get(channel) {
            // The change follows the id just before it: with a step of 2 that
            // is the skipped one, which no subscriber saw.
            Some(last) => (Some(last + step - 1), last + step),
            None => (None, FIRST_CHANGE_ID),
        };
        self.books.insert(channel.to_owned(), change_id);
        let State {
            book_subs,
            conns,
            live,
            ..
        } = self;
        let mut sent = 0;
        for ((conn, _), sub) in book_subs.iter_mut().filter(|((_, c), _)| c == channel) {
            if !conns.get(conn).is_some_and(|c| c.open) {
                continue;
            }
            let Some(live) = live.get(conn).filter(|l| l.upgraded) else {
                continue;
            };
            let prev = prev.filter(|_| sub.synced);
            let command = Command::Book {
                channel: channel.to_owned(),
                epoch: sub.epoch,
                text: book_notification(channel, prev, change_id),
            };
            // Unbounded: never blocks, so holding the state lock is fine.
            if live.commands.send(command).is_ok() {
                sub.synced = true;
                sent += 1;
            }
        }
        sent
    }

    /// `private/buy`: see [`DeribitServer::MARK_PRICE`].
    fn buy(&mut self, params: &Value) -> std::result::Result<Value, Fault> {
        let instrument = params
            .get("instrument_name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid_params("instrument_name", "is required"))?;
        let positive = |key: &str| {
            params
                .get(key)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x > 0.0)
        };
        let amount =
            positive("amount").ok_or_else(|| invalid_params("amount", "must be positive"))?;
        let order_type = params
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("limit");
        let price = match order_type {
            "market" => DeribitServer::MARK_PRICE,
            "limit" => positive("price")
                .ok_or_else(|| invalid_params("price", "a limit order needs a positive price"))?,
            _ => {
                return Err(invalid_params(
                    "type",
                    "DeribitServer supports limit and market orders",
                ))
            }
        };
        let filled = price >= DeribitServer::MARK_PRICE;
        self.orders += 1;
        let n = self.orders;
        let order_id = format!("zen-order-{n:06}");
        let now_ms = now_micros() / 1000;
        let trades = if filled {
            json!([{
                "trade_id": format!("zen-trade-{n:06}"),
                "order_id": order_id,
                "instrument_name": instrument,
                "direction": "buy",
                "amount": amount,
                "price": DeribitServer::MARK_PRICE,
                "timestamp": now_ms,
            }])
        } else {
            json!([])
        };
        let order = json!({
            "order_id": order_id,
            "instrument_name": instrument,
            "direction": "buy",
            "amount": amount,
            "price": price,
            "order_type": order_type,
            "order_state": if filled { "filled" } else { "open" },
            "filled_amount": if filled { amount } else { 0.0 },
            "average_price": if filled { DeribitServer::MARK_PRICE } else { 0.0 },
            "label": params.get("label").and_then(Value::as_str).unwrap_or(""),
            "time_in_force": "good_til_cancelled",
            "post_only": false,
            "reduce_only": false,
            "api": true,
            "creation_timestamp": now_ms,
            "last_update_timestamp": now_ms,
        });
        Ok(json!({"order": order, "trades": trades}))
    }

    fn auth(
        &mut self,
        settings: &Settings,
        conn: u64,
        params: &Value,
    ) -> std::result::Result<Value, Fault> {
        let text = |key: &str| params.get(key).and_then(Value::as_str);
        match text("grant_type") {
            Some("client_credentials") => {
                if text("client_id") == Some(settings.client_id.as_str())
                    && text("client_secret") == Some(settings.client_secret.as_str())
                {
                    Ok(self.issue(settings, conn, false))
                } else {
                    self.auth_failures += 1;
                    Err(fault(code::INVALID_CREDENTIALS, "invalid_credentials"))
                }
            }
            Some("refresh_token") => match text("refresh_token") {
                Some(t) if self.refresh_tokens.contains(t) => Ok(self.issue(settings, conn, true)),
                _ => {
                    self.auth_failures += 1;
                    Err(unauthorized("invalid_token"))
                }
            },
            Some(_) => Err(invalid_params(
                "grant_type",
                "DeribitServer supports client_credentials and refresh_token",
            )),
            None => Err(invalid_params("grant_type", "is required")),
        }
    }

    /// New tokens for `conn`, which is authenticated from now on.
    fn issue(&mut self, settings: &Settings, conn: u64, refresh: bool) -> Value {
        self.tokens_issued += 1;
        let n = self.tokens_issued;
        let access_token = format!("zen-access-{n:06}");
        let refresh_token = format!("zen-refresh-{n:06}");
        self.refresh_tokens.insert(refresh_token.clone());
        if refresh {
            self.refreshes += 1;
        } else {
            self.auths += 1;
        }
        self.conn(conn).authenticated = true;
        json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expires_in": whole_or_fractional_secs(settings.expires_in),
            "token_type": "bearer",
            "scope": "connection mainaccount",
            "enabled_features": [],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> Settings {
        Settings {
            client_id: "id".into(),
            client_secret: "s3cret".into(),
            expires_in: Duration::from_secs(900),
            heartbeat_override: None,
            ping_after_replies: false,
        }
    }

    fn call(state: &mut State, conn: u64, id: u64, method: &str, params: Value) -> Value {
        let text = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let h = state.handle_text(&settings(), conn, &text.to_string());
        serde_json::from_str(&h.reply.expect("an answer")).unwrap()
    }

    fn auth(state: &mut State, conn: u64) -> Value {
        call(
            state,
            conn,
            1,
            "public/auth",
            json!({"grant_type": "client_credentials", "client_id": "id", "client_secret": "s3cret"}),
        )
    }

    #[test]
    fn client_credentials_issue_tokens_and_a_wrong_secret_is_13004() {
        let mut s = State::default();
        let r = auth(&mut s, 1);
        assert_eq!(r["id"], 1);
        assert_eq!(r["result"]["expires_in"], 900);
        assert_eq!(r["result"]["token_type"], "bearer");
        assert!(r["usIn"].is_u64() && r["testnet"] == true);
        assert!(s.conns[&1].authenticated);
        let r = call(
            &mut s,
            2,
            2,
            "public/auth",
            json!({"grant_type": "client_credentials", "client_id": "id", "client_secret": "nope"}),
        );
        assert_eq!(r["error"]["code"], 13004);
        assert_eq!(r["error"]["message"], "invalid_credentials");
        assert!(!s.conns[&2].authenticated);
        assert_eq!((s.auths, s.auth_failures), (1, 1));
    }

    #[test]
    fn refresh_tokens_are_exchanged_and_unknown_ones_refused() {
        let mut s = State::default();
        let rt = auth(&mut s, 1)["result"]["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = call(
            &mut s,
            1,
            2,
            "public/auth",
            json!({"grant_type": "refresh_token", "refresh_token": rt}),
        );
        assert_ne!(r["result"]["refresh_token"], json!(rt));
        assert_eq!(s.refreshes, 1);
        let r = call(
            &mut s,
            1,
            3,
            "public/auth",
            json!({"grant_type": "refresh_token", "refresh_token": "forged"}),
        );
        assert_eq!(r["error"]["code"], 13009);
        // Secrets never reach the records.
        let shown = format!("{:?}", s.requests);
        assert!(
            !shown.contains("s3cret") && !shown.contains("zen-refresh"),
            "{shown}"
        );
        assert!(shown.contains("refresh_token"), "{shown}");
    }

    #[test]
    fn private_methods_and_channels_need_auth() {
        let mut s = State::default();
        let channels = json!({"channels": ["user.orders.any.any.raw"]});
        let r = call(&mut s, 1, 1, "private/subscribe", channels.clone());
        assert_eq!(r["error"]["code"], 13009);
        let r = call(&mut s, 1, 2, "public/subscribe", channels.clone());
        assert_eq!(r["error"]["code"], 13009);
        let r = call(
            &mut s,
            1,
            3,
            "private/enable_cancel_on_disconnect",
            json!({}),
        );
        assert_eq!(r["error"]["code"], 13009);
        auth(&mut s, 1);
        let r = call(&mut s, 1, 4, "private/subscribe", channels);
        assert_eq!(r["result"], json!(["user.orders.any.any.raw"]));
        let r = call(
            &mut s,
            1,
            5,
            "private/enable_cancel_on_disconnect",
            json!({}),
        );
        assert_eq!(r["result"], "ok");
        assert!(s.conns[&1].cancel_on_disconnect);
    }

    #[test]
    fn subscriptions_are_tracked_per_connection_and_removed() {
        let mut s = State::default();
        let r = call(
            &mut s,
            1,
            1,
            "public/subscribe",
            json!({"channels": ["a", "b"]}),
        );
        assert_eq!(r["result"], json!(["a", "b"]));
        call(&mut s, 2, 1, "public/subscribe", json!({"channels": ["a"]}));
        let r = call(
            &mut s,
            1,
            2,
            "public/unsubscribe",
            json!({"channels": ["a", "zzz"]}),
        );
        assert_eq!(r["result"], json!(["a"]));
        assert_eq!(s.conns[&1].subscriptions, ["b"]);
        assert_eq!(s.conns[&2].subscriptions, ["a"]);
        let r = call(&mut s, 1, 3, "public/subscribe", json!({"channels": []}));
        assert_eq!(r["error"]["code"], -32602);
    }

    #[test]
    fn set_heartbeat_validates_and_honours_the_override() {
        let mut s = State::default();
        let r = call(&mut s, 1, 1, "public/set_heartbeat", json!({"interval": 5}));
        assert_eq!(r["error"]["code"], -32602);
        let text = json!({"id": 2, "method": "public/set_heartbeat", "params": {"interval": 10}});
        let h = s.handle_text(&settings(), 1, &text.to_string());
        assert_eq!(h.heartbeat, Some(Some(Duration::from_secs(10))));
        let mut fast = settings();
        fast.heartbeat_override = Some(Duration::from_millis(50));
        let h = s.handle_text(&fast, 1, &text.to_string());
        assert_eq!(h.heartbeat, Some(Some(Duration::from_millis(50))));
        assert_eq!(
            s.conns[&1].heartbeat_interval,
            Some(Duration::from_millis(50))
        );
    }

    #[test]
    fn injected_failures_answer_any_method_and_are_recorded() {
        let mut s = State::default();
        s.failures.insert(
            "public/get_time".into(),
            Failure {
                code: 10028,
                message: "too_many_requests".into(),
            },
        );
        let r = call(&mut s, 1, 9, "public/get_time", json!({}));
        assert_eq!(r["id"], 9);
        assert_eq!(r["error"]["code"], 10028);
        assert_eq!(s.conns[&1].methods, ["public/get_time"]);
    }

    #[test]
    fn malformed_input_gets_json_rpc_errors_and_notifications_no_answer() {
        let mut s = State::default();
        let answer = |s: &mut State, text: &str| {
            s.handle_text(&settings(), 1, text)
                .reply
                .map(|r| serde_json::from_str::<Value>(&r).unwrap())
        };
        assert_eq!(answer(&mut s, "not json").unwrap()["error"]["code"], -32700);
        assert_eq!(answer(&mut s, "[]").unwrap()["error"]["code"], -32600);
        assert_eq!(answer(&mut s, "42").unwrap()["error"]["code"], -32600);
        assert_eq!(
            answer(&mut s, r#"{"id":1,"method":"x/y"}"#).unwrap()["error"]["code"],
            -32601
        );
        assert_eq!(
            answer(&mut s, r#"{"id":1,"method":"public/test","params":[1]}"#).unwrap()["error"]
                ["code"],
            -32602
        );
        assert_eq!(answer(&mut s, r#"{"method":"public/test"}"#), None);
        assert_eq!(answer(&mut s, r#"{"id":1,"result":1}"#), None);
        let batch = answer(
            &mut s,
            r#"[{"id":1,"method":"public/test"},{"id":2,"method":"public/get_time"}]"#,
        )
        .unwrap();
        assert_eq!(batch.as_array().map(Vec::len), Some(2));
        assert_eq!(s.test_answers, 2);
    }

    #[test]
    fn buy_needs_auth_and_fills_at_or_above_the_mark_price() {
        let mut s = State::default();
        let limit = |price: f64| {
            json!({"instrument_name": "BTC-PERPETUAL", "amount": 10, "type": "limit",
                   "price": price, "label": "l-1"})
        };
        let r = call(&mut s, 1, 1, "private/buy", limit(41_000.0));
        assert_eq!(r["error"]["code"], 13009);
        assert_eq!(s.orders, 0);
        auth(&mut s, 1);

        let r = call(&mut s, 1, 2, "private/buy", limit(41_000.0));
        let order = &r["result"]["order"];
        assert_eq!(order["order_id"], "zen-order-000001");
        assert_eq!(order["instrument_name"], "BTC-PERPETUAL");
        assert_eq!(
            (order["amount"].as_f64(), order["price"].as_f64()),
            (Some(10.0), Some(41_000.0))
        );
        assert_eq!(
            (order["order_state"].as_str(), order["label"].as_str()),
            (Some("open"), Some("l-1"))
        );
        assert_eq!(r["result"]["trades"], json!([]));

        let r = call(&mut s, 1, 3, "private/buy", limit(43_000.0));
        assert_eq!(r["result"]["order"]["order_state"], "filled");
        assert_eq!(
            r["result"]["order"]["average_price"],
            DeribitServer::MARK_PRICE
        );
        let market = json!({"instrument_name": "ETH-PERPETUAL", "amount": 1, "type": "market"});
        let r = call(&mut s, 1, 4, "private/buy", market);
        assert_eq!(r["result"]["order"]["order_state"], "filled");
        assert_eq!(r["result"]["order"]["price"], DeribitServer::MARK_PRICE);
        assert_eq!(r["result"]["trades"][0]["order_id"], "zen-order-000003");

        for bad in [
            json!({"amount": 10, "price": 1.0}),
            json!({"instrument_name": "BTC-PERPETUAL", "amount": 0, "price": 1.0}),
            json!({"instrument_name": "BTC-PERPETUAL", "amount": 10}),
            json!({"instrument_name": "BTC-PERPETUAL", "amount": 10, "type": "stop_limit", "price": 1.0}),
        ] {
            let r = call(&mut s, 1, 5, "private/buy", bad.clone());
            assert_eq!(r["error"]["code"], -32602, "{bad}");
        }
        assert_eq!(s.orders, 3);
    }

    #[test]
    fn a_book_subscription_gets_the_snapshot_after_its_answer_and_ends_on_unsubscribe() {
        let mut s = State::default();
        let book = "book.BTC-PERPETUAL.100ms";
        let subscribe =
            json!({"id": 1, "method": "public/subscribe", "params": {"channels": [book]}})
                .to_string();
        // Not published yet: nothing to send with the answer.
        let h = s.handle_text(&settings(), 1, &subscribe);
        assert!(h.reply.is_some() && h.notifications.is_empty());
        assert!(!s.book_subs[&(1, book.to_owned())].synced);

        // No live connections in a unit test: the book moves, nobody is sent to.
        assert_eq!(s.advance_book(book, 1), 0);
        assert_eq!(s.books[book], FIRST_CHANGE_ID);
        assert_eq!(s.advance_book(book, 2), 0);
        assert_eq!(s.books[book], FIRST_CHANGE_ID + 2);

        let h = s.handle_text(&settings(), 2, &subscribe);
        assert_eq!(h.notifications.len(), 1);
        let note: Value = serde_json::from_str(&h.notifications[0]).unwrap();
        assert_eq!(note["params"]["channel"], book);
        let data = &note["params"]["data"];
        assert_eq!(data["type"], "snapshot");
        assert_eq!(data["change_id"], FIRST_CHANGE_ID + 2);
        assert_eq!(data["instrument_name"], "BTC-PERPETUAL");
        assert!(data.get("prev_change_id").is_none());
        let epoch = s.book_subs[&(2, book.to_owned())].epoch;
        assert!(s.book_subs[&(2, book.to_owned())].synced);

        // Subscribing again while subscribed changes nothing.
        let h = s.handle_text(&settings(), 2, &subscribe);
        assert!(h.notifications.is_empty());
        assert_eq!(s.book_subs[&(2, book.to_owned())].epoch, epoch);

        call(
            &mut s,
            2,
            3,
            "public/unsubscribe",
            json!({"channels": [book]}),
        );
        assert!(!s.book_subs.contains_key(&(2, book.to_owned())));
        call(&mut s, 1, 4, "public/unsubscribe_all", json!({}));
        assert!(s.book_subs.is_empty());
    }

    #[test]
    fn book_notifications_chain_their_change_ids() {
        let text = book_notification("book.ETH-PERPETUAL.raw", Some(7), 8);
        let v: Value = serde_json::from_str(&text).unwrap();
        let data = &v["params"]["data"];
        assert_eq!(v["method"], "subscription");
        assert_eq!(
            (
                data["type"].as_str(),
                data["prev_change_id"].as_u64(),
                data["change_id"].as_u64()
            ),
            (Some("change"), Some(7), Some(8))
        );
        assert_eq!(data["instrument_name"], "ETH-PERPETUAL");
        // A channel without an instrument part still makes valid JSON.
        let v: Value = serde_json::from_str(&book_notification("book", None, 1)).unwrap();
        assert_eq!(v["params"]["data"]["instrument_name"], "");
    }

    #[test]
    fn recorded_requests_are_bounded() {
        let mut s = State::default();
        for i in 0..(MAX_RECORDED_REQUESTS + 5) {
            s.record(1, &format!("m{i}"), &json!({}));
        }
        assert_eq!(s.requests.len(), MAX_RECORDED_REQUESTS);
        assert_eq!(s.requests[0].method, "m5");
    }

    proptest! {
        #[test]
        fn the_handler_never_panics_on_arbitrary_text(text in ".{0,200}") {
            let _ = State::default().handle_text(&settings(), 1, &text);
        }

        #[test]
        fn the_handler_never_panics_on_arbitrary_json(v in crate::protocol::jsonrpc::tests::arb_json()) {
            let mut s = State::default();
            let _ = s.handle_text(&settings(), 1, &v.to_string());
            let req = json!({"id": 1, "method": "public/auth", "params": v.clone()});
            let _ = s.handle_text(&settings(), 1, &req.to_string());
            let req = json!({"id": 1, "method": "public/subscribe", "params": {"channels": v}});
            let _ = s.handle_text(&settings(), 1, &req.to_string());
        }
    }
}
